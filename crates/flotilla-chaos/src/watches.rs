//! The watch workload and its check (issue 20): a writer puts unique values to a few keys
//! of a prefix, one at a time, while a watcher of the prefix is killed (its stream dropped)
//! every few seconds and resumed from the token of the last event it printed, through
//! every fault. After the final heal it catches up from its last token.
//!
//! Checks, per key:
//! - **exactly once**: no value is delivered twice (a resumed watcher repeats nothing);
//! - **nothing invented**: every value delivered was written (acknowledged, or with an
//!   unknown outcome);
//! - **in order**: of two acknowledged writes, the one acknowledged before the other was
//!   invoked is delivered first (commit order follows real time);
//! - **nothing lost**: every acknowledged write is delivered (counted as lost otherwise).
//!
//! A `Compacted` answer is followed by resuming from the position it names; whatever that
//! skipped shows up as lost writes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Keys the writer uses.
pub const KEYS: u64 = 4;

/// The watched prefix.
#[must_use]
pub fn prefix() -> bytes::Bytes {
    bytes::Bytes::from_static(b"\x24chaos-watch-")
}

/// The key numbered `k`.
#[must_use]
pub fn key_of(k: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!("\x24chaos-watch-{k:02}"))
}

/// The number of a key the watcher delivered, if it is one of the workload's.
#[must_use]
pub fn number_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(prefix().as_ref())?)
        .ok()?
        .parse()
        .ok()
}

/// What the writer learned of one put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Acknowledged.
    Ok,
    /// Refused (did not happen).
    Failed,
    /// May or may not have happened.
    Unknown,
}

/// One record of the watch workload's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEvent {
    /// A put of `value` (unique in the run) to key `key`.
    Write {
        /// The key's number.
        key: u64,
        /// The value.
        value: u64,
        /// Invocation, µs since the run started.
        invoke_us: u64,
        /// Completion.
        complete_us: u64,
        /// What the writer learned.
        outcome: WriteOutcome,
    },
    /// The watcher delivered a put of `value` to `key` (`value` 0: a value that did not
    /// parse).
    Seen {
        /// The key's number.
        key: u64,
        /// The value.
        value: u64,
        /// When, µs since the run started.
        at_us: u64,
    },
    /// The watcher was killed and resumed from its last token, or answered an error.
    Session {
        /// `resumed`, `compacted`, `error`.
        what: String,
        /// The error, if any.
        detail: String,
    },
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// Puts, and of them those acknowledged and those of unknown outcome.
    pub writes: usize,
    /// See `writes`.
    pub acked: usize,
    /// See `writes`.
    pub unknown: usize,
    /// Events delivered.
    pub seen: usize,
    /// Times the watcher was killed and resumed.
    pub resumed: usize,
    /// `Compacted` answers.
    pub compacted: usize,
    /// Repeated, invented or reordered events, in words.
    pub violations: Vec<String>,
    /// Acknowledged writes never delivered, in words.
    pub lost: Vec<String>,
}

impl WatchReport {
    /// The journal's line for it.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "checked the watch workload: {} writes ({} acknowledged, {} unknown), {} events \
             delivered over {} resumptions ({} compacted answers); {} violations (repeated, \
             invented or reordered), {} acknowledged writes never delivered",
            self.writes,
            self.acked,
            self.unknown,
            self.seen,
            self.resumed,
            self.compacted,
            self.violations.len(),
            self.lost.len()
        )
    }
}

/// Checks the watch workload's history (see the module docs).
#[must_use]
pub fn check(events: &[WatchEvent]) -> WatchReport {
    let mut report = WatchReport::default();
    // Per key: the writes by value, and the values delivered in order.
    let mut writes: BTreeMap<u64, HashMap<u64, (u64, u64, WriteOutcome)>> = BTreeMap::new();
    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for event in events {
        match event {
            WatchEvent::Write {
                key,
                value,
                invoke_us,
                complete_us,
                outcome,
            } => {
                report.writes += 1;
                match outcome {
                    WriteOutcome::Ok => report.acked += 1,
                    WriteOutcome::Unknown => report.unknown += 1,
                    WriteOutcome::Failed => {}
                }
                writes
                    .entry(*key)
                    .or_default()
                    .insert(*value, (*invoke_us, *complete_us, *outcome));
            }
            WatchEvent::Seen { key, value, .. } => {
                report.seen += 1;
                seen.entry(*key).or_default().push(*value);
            }
            WatchEvent::Session { what, detail } => match what.as_str() {
                "resumed" => report.resumed += 1,
                "compacted" => report.compacted += 1,
                _ => report
                    .violations
                    .push(format!("the watch failed: {detail}")),
            },
        }
    }
    let none = HashMap::new();
    for key in writes
        .keys()
        .chain(seen.keys())
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let written = writes.get(&key).unwrap_or(&none);
        let delivered = seen.get(&key).map_or(&[][..], Vec::as_slice);
        let mut position: HashMap<u64, usize> = HashMap::new();
        for (at, value) in delivered.iter().enumerate() {
            if position.insert(*value, at).is_some() {
                report
                    .violations
                    .push(format!("key {key}: value {value} delivered twice"));
            }
            match written.get(value) {
                Some((_, _, WriteOutcome::Ok | WriteOutcome::Unknown)) => {}
                Some((_, _, WriteOutcome::Failed)) => report.violations.push(format!(
                    "key {key}: value {value} delivered, but its write was refused"
                )),
                None => report
                    .violations
                    .push(format!("key {key}: value {value} delivered, never written")),
            }
        }
        let mut acked: Vec<(u64, u64, u64)> = written
            .iter()
            .filter(|(_, (_, _, outcome))| *outcome == WriteOutcome::Ok)
            .map(|(value, (invoke, complete, _))| (*invoke, *complete, *value))
            .collect();
        acked.sort_unstable();
        for (_, _, value) in &acked {
            if !position.contains_key(value) {
                report.lost.push(format!(
                    "key {key}: acknowledged value {value} never delivered"
                ));
            }
        }
        // Writes are one at a time: each acknowledged before the next is invoked.
        for pair in acked.windows(2) {
            let (_, first_done, first) = pair[0];
            let (second_invoked, _, second) = pair[1];
            if first_done > second_invoked {
                continue;
            }
            if let (Some(a), Some(b)) = (position.get(&first), position.get(&second)) {
                if a > b {
                    report.violations.push(format!(
                        "key {key}: value {second} delivered before {first}, written after it"
                    ));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: u64, value: u64, at: u64, outcome: WriteOutcome) -> WatchEvent {
        WatchEvent::Write {
            key,
            value,
            invoke_us: at,
            complete_us: at + 5,
            outcome,
        }
    }

    fn seen(key: u64, value: u64) -> WatchEvent {
        WatchEvent::Seen {
            key,
            value,
            at_us: 0,
        }
    }

    #[test]
    fn the_check_finds_repeats_inventions_reorders_and_losses() {
        let clean = [
            write(1, 10, 0, WriteOutcome::Ok),
            write(1, 11, 10, WriteOutcome::Unknown),
            write(1, 12, 20, WriteOutcome::Ok),
            seen(1, 10),
            seen(1, 12),
        ];
        let report = check(&clean);
        assert!(
            report.violations.is_empty() && report.lost.is_empty(),
            "{report:?}"
        );
        assert_eq!((report.acked, report.unknown, report.seen), (2, 1, 2));

        let mut twice = clean.to_vec();
        twice.push(seen(1, 12));
        assert_eq!(check(&twice).violations.len(), 1);
        let invented = [
            write(1, 10, 0, WriteOutcome::Failed),
            seen(1, 10),
            seen(2, 99),
        ];
        assert_eq!(check(&invented).violations.len(), 2);
        let reordered = [
            write(1, 10, 0, WriteOutcome::Ok),
            write(1, 12, 20, WriteOutcome::Ok),
            seen(1, 12),
            seen(1, 10),
        ];
        assert_eq!(check(&reordered).violations.len(), 1);
        let lost = [
            write(1, 10, 0, WriteOutcome::Ok),
            write(1, 12, 20, WriteOutcome::Ok),
            seen(1, 12),
        ];
        let report = check(&lost);
        assert_eq!((report.violations.len(), report.lost.len()), (0, 1));
        assert_eq!(number_of(&key_of(3)), Some(3));
        assert_eq!(number_of(b"other"), None);
    }
}
