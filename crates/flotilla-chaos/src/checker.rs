//! The checkers: linearizability of every register key (the checker the simulator uses,
//! `flotilla_linearizability`), stale reads, lost acknowledged writes (register final
//! reads and the set's final reads: each region's part on each of its voters), and the
//! set's other anomalies.
//!
//! Owns: turning histories into counts a run passes or fails on. Must never: count a key
//! whose search ran out of budget as a pass (it is `unknown`), or call something a stale
//! read or a lost write unless every linearization forbids it (both checks below use only
//! the real-time order "A completed before B was invoked", so what they report is certain).

use std::collections::{BTreeMap, BTreeSet};

use flotilla_linearizability::{Checker, Verdict};

use crate::history::{Outcome, RegisterEvent, RegisterOp, SetAdd, SetRead};
use crate::workload::set_key;

/// What the register checks found.
#[derive(Debug, Default)]
pub struct RegisterReport {
    /// Keys checked.
    pub keys: usize,
    /// Keys whose history no linearization explains, with why (a key with a stale read is
    /// here even when the search itself ran out of budget: the stale read proves it).
    pub violations: Vec<(u64, String)>,
    /// Keys the search could not decide within its budget (and nothing else convicts).
    pub unknown: Vec<u64>,
    /// Reads (during the workload or final) that returned a value every linearization
    /// forbids because a newer write had already been acknowledged.
    pub stale_reads: Vec<String>,
    /// Acknowledged writes that a final read, after every fault healed, proves lost.
    pub lost: Vec<String>,
}

/// A writer of one value of one key.
#[derive(Clone, Copy, Debug)]
struct Writer {
    index: usize,
    invoke: u64,
    /// `Some` only for acknowledged writes.
    acked_at: Option<u64>,
}

/// The acknowledged writers of a key sorted by completion, with the running maximum of
/// their invocation times: "of the writes acknowledged before time t, which started last".
struct AckedOrder {
    completes: Vec<u64>,
    /// (invoke, event index) of the latest-invoked writer among the first i+1.
    latest_invoked: Vec<(u64, usize)>,
    /// Event indexes in completion order.
    by_complete: Vec<usize>,
}

impl AckedOrder {
    fn new(events: &[&RegisterEvent], writers: &[Writer]) -> AckedOrder {
        let mut acked: Vec<&Writer> = writers.iter().filter(|w| w.acked_at.is_some()).collect();
        acked.sort_by_key(|w| (w.acked_at, w.index));
        let mut latest: Option<(u64, usize)> = None;
        let mut latest_invoked = Vec::with_capacity(acked.len());
        for w in &acked {
            if latest.is_none_or(|(invoke, _)| w.invoke > invoke) {
                latest = Some((w.invoke, w.index));
            }
            latest_invoked.extend(latest);
        }
        debug_assert!(acked
            .iter()
            .all(|w| events[w.index].complete_us >= w.invoke));
        AckedOrder {
            completes: acked.iter().filter_map(|w| w.acked_at).collect(),
            latest_invoked,
            by_complete: acked.iter().map(|w| w.index).collect(),
        }
    }

    /// How many acknowledged writes completed strictly before `t`.
    fn completed_before(&self, t: u64) -> usize {
        self.completes.partition_point(|&c| c < t)
    }
}

fn writes_value(event: &RegisterEvent) -> Option<u64> {
    match (&event.op, &event.outcome) {
        (_, Outcome::Failed) => None,
        (RegisterOp::Write { value }, Outcome::Written | Outcome::Unknown) => Some(*value),
        (RegisterOp::Cas { new, .. }, Outcome::Cas(true) | Outcome::Unknown) => Some(*new),
        _ => None,
    }
}

fn describe(event: &RegisterEvent) -> String {
    let what = match &event.op {
        RegisterOp::Read { mode } => format!("{mode} read"),
        RegisterOp::Write { value } => format!("write of {value}"),
        RegisterOp::Cas { expected, new } => format!(
            "cas {} -> {new}",
            expected.map_or("absent".to_string(), |v| v.to_string())
        ),
    };
    let outcome = match &event.outcome {
        Outcome::Read(v) => format!(
            "returned {}",
            v.map_or("absent".to_string(), |v| v.to_string())
        ),
        Outcome::Written => "acknowledged".into(),
        Outcome::Cas(true) => "swapped".into(),
        Outcome::Cas(false) => "did not swap".into(),
        Outcome::Failed => "failed".into(),
        Outcome::Unknown => "outcome unknown".into(),
    };
    format!(
        "{}{what} by client {} [{:.3} s, {:.3} s] {outcome}",
        if event.final_read { "final " } else { "" },
        event.client,
        event.invoke_us as f64 / 1e6,
        event.complete_us as f64 / 1e6,
    )
}

/// Stale reads and lost writes of one key: (stale read descriptions, lost write
/// descriptions). A read of `v` is stale when some write acknowledged before the read was
/// invoked had itself been invoked after `v`'s write was acknowledged (so `v` was surely
/// overwritten, and values are never written twice), or, for a read of "absent", when any
/// write was acknowledged before the read was invoked (the workload never deletes). For a
/// final read, every such newer acknowledged write is lost.
fn stale_and_lost(key: u64, events: &[&RegisterEvent]) -> (Vec<String>, Vec<String>) {
    let mut writers = Vec::new();
    let mut writer_of: BTreeMap<u64, Writer> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let Some(value) = writes_value(event) else {
            continue;
        };
        let acked = matches!(event.outcome, Outcome::Written | Outcome::Cas(true));
        let writer = Writer {
            index,
            invoke: event.invoke_us,
            acked_at: acked.then_some(event.complete_us),
        };
        writers.push(writer);
        writer_of.entry(value).or_insert(writer);
    }
    let order = AckedOrder::new(events, &writers);
    let mut stale = Vec::new();
    let mut lost = Vec::new();
    for read in events.iter() {
        let Outcome::Read(value) = &read.outcome else {
            continue;
        };
        let before = order.completed_before(read.invoke_us);
        if before == 0 {
            continue;
        }
        // The value's own write must be acknowledged to place it in time; a read of a value
        // whose write is unknown (or that nobody wrote) is the linearizability check's job.
        let overwritten_after = match value {
            None => None,
            Some(v) => match writer_of.get(v).and_then(|w| w.acked_at) {
                Some(acked_at) => Some(acked_at),
                None => continue,
            },
        };
        let (latest_invoke, newer) = order.latest_invoked[before - 1];
        if overwritten_after.is_some_and(|acked_at| latest_invoke <= acked_at) {
            continue;
        }
        stale.push(format!(
            "key {key}: {} — stale: the {} before that read was invoked",
            describe(read),
            describe(events[newer])
        ));
        if read.final_read {
            for &index in &order.by_complete[..before] {
                let w = events[index];
                if overwritten_after.is_none_or(|acked_at| w.invoke_us > acked_at) {
                    lost.push(format!(
                        "key {key}: the {} is lost: the {}",
                        describe(w),
                        describe(read)
                    ));
                }
            }
        }
    }
    (stale, lost)
}

/// Checks every key of a register history.
pub fn check_register(events: &[RegisterEvent], checker: &Checker) -> RegisterReport {
    let mut by_key: BTreeMap<u64, Vec<&RegisterEvent>> = BTreeMap::new();
    for event in events {
        by_key.entry(event.key).or_default().push(event);
    }
    let mut report = RegisterReport {
        keys: by_key.len(),
        ..RegisterReport::default()
    };
    for (&key, events) in &by_key {
        let operations: Vec<_> = events.iter().map(|e| e.to_operation()).collect();
        let verdict = checker.check_key(key, &operations);
        let (stale, lost) = stale_and_lost(key, events);
        match verdict {
            Verdict::Linearizable if stale.is_empty() => {}
            Verdict::Linearizable => {
                // Cannot happen: a stale read is never linearizable. Report both.
                report.violations.push((
                    key,
                    format!(
                        "the linearizability search accepted key {key} but a read is provably stale: {}",
                        stale[0]
                    ),
                ));
            }
            Verdict::Violation { explanation, .. } => {
                report.violations.push((key, explanation));
            }
            Verdict::Unknown { .. } if stale.is_empty() => report.unknown.push(key),
            Verdict::Unknown { .. } => {
                report.violations.push((
                    key,
                    format!(
                        "search out of budget, but a read is provably stale: {}",
                        stale[0]
                    ),
                ));
            }
        }
        report.stale_reads.extend(stale);
        report.lost.extend(lost);
    }
    report
}

/// What the set check found.
#[derive(Debug, Default)]
pub struct SetReport {
    /// Adds attempted.
    pub adds: usize,
    /// Adds acknowledged.
    pub acked: usize,
    /// Acknowledged elements missing from some store's final read (element, stores).
    pub lost: Vec<(u64, Vec<String>)>,
    /// Elements present on a store although never added, or added with a definite failure.
    pub unexpected: Vec<(u64, Vec<String>)>,
    /// Elements of unknown adds present on some stores and absent from others (after
    /// healing, every store's final read is linearizable and nothing is written any more,
    /// so they must agree).
    pub disagreements: Vec<u64>,
    /// Stores whose final read never answered (what they hold is unknown).
    pub unread: Vec<String>,
    /// Acknowledged elements in the range of no final read (no region read holds them:
    /// whether they survived is unknown).
    pub uncovered: Vec<u64>,
}

impl SetReport {
    /// Anomalies other than lost writes.
    pub fn violations(&self) -> usize {
        self.unexpected.len() + self.disagreements.len()
    }

    /// Lost acknowledged adds.
    pub fn lost_count(&self) -> usize {
        self.lost.len()
    }
}

/// Checks the set workload: every acknowledged add must be in every final read whose
/// range holds it (each read is a region's part of the set on one of its voters; a read
/// without a range covers everything); nothing else may be there except elements whose
/// add has an unknown outcome, and those must be in every read covering them or in none.
pub fn check_set(adds: &[SetAdd], reads: &[SetRead]) -> SetReport {
    let mut report = SetReport {
        adds: adds.len(),
        ..SetReport::default()
    };
    let mut acked = BTreeSet::new();
    let mut maybe = BTreeSet::new();
    for add in adds {
        match add.outcome {
            Outcome::Written => {
                acked.insert(add.element);
            }
            Outcome::Unknown => {
                maybe.insert(add.element);
            }
            _ => {}
        }
    }
    report.acked = acked.len();
    let keys: BTreeMap<u64, bytes::Bytes> = acked
        .iter()
        .chain(&maybe)
        .map(|&e| (e, set_key(e)))
        .collect();
    report.unread = reads
        .iter()
        .filter(|r| r.elements.is_none())
        .map(SetRead::label)
        .collect();
    report.uncovered = acked
        .iter()
        .copied()
        .filter(|e| !reads.iter().any(|r| r.covers(&keys[e])))
        .collect();
    let mut lost: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut unexpected: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut seen_maybe: BTreeMap<u64, usize> = BTreeMap::new();
    let answered: Vec<(&SetRead, BTreeSet<u64>)> = reads
        .iter()
        .filter_map(|r| {
            r.elements
                .as_ref()
                .map(|e| (r, e.iter().copied().collect()))
        })
        .collect();
    for (read, elements) in &answered {
        for element in acked.difference(elements) {
            if read.covers(&keys[element]) {
                lost.entry(*element).or_default().push(read.label());
            }
        }
        for element in elements {
            if acked.contains(element) {
                continue;
            }
            if maybe.contains(element) {
                *seen_maybe.entry(*element).or_default() += 1;
            } else {
                unexpected.entry(*element).or_default().push(read.label());
            }
        }
    }
    report.lost = lost.into_iter().collect();
    report.unexpected = unexpected.into_iter().collect();
    report.disagreements = seen_maybe
        .into_iter()
        .filter(|(element, seen)| {
            let covering = answered
                .iter()
                .filter(|(r, _)| r.covers(&keys[element]))
                .count();
            *seen != covering
        })
        .map(|(element, _)| element)
        .collect();
    report
}

/// The `q`-quantile (0..=1) of `samples` (nearest rank), or `None` when empty.
pub fn quantile(samples: &[u64], q: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Ranges handed out twice: for each sequence, every pair of acknowledged ranges that
/// overlap (or a range whose end is before its start), in words.
pub fn check_sequences(ranges: &[crate::workload::SequenceRange]) -> Vec<String> {
    let mut by_sequence: std::collections::BTreeMap<u64, Vec<(u64, u64)>> =
        std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for r in ranges {
        if r.end <= r.start {
            out.push(format!(
                "sequence {}: an empty or reversed range [{}, {})",
                r.sequence, r.start, r.end
            ));
        }
        by_sequence
            .entry(r.sequence)
            .or_default()
            .push((r.start, r.end));
    }
    for (sequence, mut list) in by_sequence {
        list.sort_unstable();
        for pair in list.windows(2) {
            if pair[1].0 < pair[0].1 {
                out.push(format!(
                    "sequence {sequence}: [{}, {}) and [{}, {}) overlap: values handed out twice",
                    pair[0].0, pair[0].1, pair[1].0, pair[1].1
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{RegisterEvent, RegisterOp};

    fn op(
        client: u64,
        op: RegisterOp,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
    ) -> RegisterEvent {
        RegisterEvent {
            client,
            key: 1,
            op,
            invoke_us: invoke,
            complete_us: complete,
            outcome,
            final_read: false,
            error: None,
        }
    }

    fn write(client: u64, value: u64, invoke: u64, complete: u64) -> RegisterEvent {
        op(
            client,
            RegisterOp::Write { value },
            invoke,
            complete,
            Outcome::Written,
        )
    }

    fn read(
        client: u64,
        mode: &str,
        invoke: u64,
        complete: u64,
        value: Option<u64>,
    ) -> RegisterEvent {
        op(
            client,
            RegisterOp::Read { mode: mode.into() },
            invoke,
            complete,
            Outcome::Read(value),
        )
    }

    fn final_read(invoke: u64, complete: u64, value: Option<u64>) -> RegisterEvent {
        RegisterEvent {
            final_read: true,
            ..read(99, "index", invoke, complete, value)
        }
    }

    fn check(events: &[RegisterEvent]) -> RegisterReport {
        check_register(events, &Checker::default())
    }

    #[test]
    fn a_valid_history_passes_every_check() {
        let events = vec![
            write(1, 10, 0, 10),
            read(2, "lease", 5, 8, None), // concurrent with the write: may see the old value
            read(2, "index", 11, 20, Some(10)),
            op(
                3,
                RegisterOp::Cas {
                    expected: Some(10),
                    new: 11,
                },
                21,
                30,
                Outcome::Cas(true),
            ),
            op(1, RegisterOp::Write { value: 12 }, 31, 40, Outcome::Unknown),
            read(2, "follower", 41, 50, Some(11)), // the unknown write may apply later
            final_read(60, 70, Some(12)),          // ... and it did
        ];
        let report = check(&events);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(report.unknown.is_empty());
        assert!(report.stale_reads.is_empty(), "{:?}", report.stale_reads);
        assert!(report.lost.is_empty(), "{:?}", report.lost);
    }

    #[test]
    fn rejects_a_stale_read() {
        // 10 then 20 acknowledged one after the other; a lease read invoked after both
        // returns 10: stale (as an old leader answering from an expired lease would).
        let events = vec![
            write(1, 10, 0, 10),
            write(1, 20, 20, 30),
            read(2, "lease", 40, 45, Some(10)),
        ];
        let report = check(&events);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert_eq!(report.violations[0].0, 1);
        assert_eq!(report.stale_reads.len(), 1, "{report:?}");
        assert!(
            report.stale_reads[0].contains("lease read"),
            "{}",
            report.stale_reads[0]
        );
        assert!(
            report.stale_reads[0].contains("write of 20"),
            "{}",
            report.stale_reads[0]
        );
        assert!(
            report.lost.is_empty(),
            "a stale read during the run is not a lost write"
        );
        // A read of "absent" after an acknowledged write is stale too.
        let events = vec![write(1, 10, 0, 10), read(2, "follower", 11, 12, None)];
        let report = check(&events);
        assert_eq!((report.violations.len(), report.stale_reads.len()), (1, 1));
        // Not stale when the newer write overlaps the first one's acknowledgement.
        let events = vec![
            write(1, 10, 0, 10),
            write(3, 20, 5, 30),
            read(2, "lease", 40, 45, Some(10)),
        ];
        let report = check(&events);
        assert!(report.stale_reads.is_empty(), "{:?}", report.stale_reads);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn rejects_a_lost_write() {
        // 20 acknowledged after 10; after healing the final read finds 10: 20 is lost.
        let events = vec![
            write(1, 10, 0, 10),
            write(1, 20, 20, 30),
            final_read(100, 110, Some(10)),
        ];
        let report = check(&events);
        assert_eq!(report.lost.len(), 1, "{report:?}");
        assert!(report.lost[0].contains("write of 20"), "{}", report.lost[0]);
        assert_eq!(report.violations.len(), 1);
        // Every acknowledged write gone: both lost.
        let events = vec![
            write(1, 10, 0, 10),
            op(
                1,
                RegisterOp::Cas {
                    expected: Some(10),
                    new: 20,
                },
                20,
                30,
                Outcome::Cas(true),
            ),
            final_read(100, 110, None),
        ];
        let report = check(&events);
        assert_eq!(report.lost.len(), 2, "{report:?}");
    }

    #[test]
    fn set_lost_unexpected_and_disagreeing_elements() {
        let add = |element, outcome| SetAdd {
            client: 0,
            element,
            invoke_us: element * 10,
            complete_us: element * 10 + 5,
            outcome,
            error: None,
        };
        let adds = vec![
            add(1, Outcome::Written),
            add(2, Outcome::Written),
            add(3, Outcome::Unknown),
            add(4, Outcome::Failed),
            add(5, Outcome::Unknown),
        ];
        let read = |store: &str, elements: Option<Vec<u64>>| SetRead {
            store: store.into(),
            elements,
            error: None,
            region: None,
            start: None,
            end: None,
        };
        // Healthy: every acked element everywhere, unknown 3 nowhere, unknown 5 everywhere.
        let good = check_set(
            &adds,
            &[
                read("a", Some(vec![1, 2, 5])),
                read("b", Some(vec![1, 2, 5])),
            ],
        );
        assert_eq!((good.lost_count(), good.violations()), (0, 0), "{good:?}");
        // b lost 2, holds 4 (whose add failed) and 3 (unknown, absent from a).
        let bad = check_set(
            &adds,
            &[
                read("a", Some(vec![1, 2, 5])),
                read("b", Some(vec![1, 3, 4, 5])),
                read("c", None),
            ],
        );
        assert_eq!(bad.lost, vec![(2, vec!["b".to_string()])]);
        assert_eq!(bad.unexpected, vec![(4, vec!["b".to_string()])]);
        assert_eq!(bad.disagreements, vec![3]);
        assert_eq!(bad.unread, vec!["c".to_string()]);
        assert_eq!((bad.lost_count(), bad.violations()), (1, 2));
        assert!(bad.uncovered.is_empty());
    }

    #[test]
    fn set_reads_of_one_region_are_asked_only_for_its_elements() {
        let add = |element: u64, outcome: Outcome| SetAdd {
            client: 0,
            element,
            invoke_us: element * 10,
            complete_us: element * 10 + 5,
            outcome,
            error: None,
        };
        let adds: Vec<SetAdd> = (1..=40).map(|e| add(e, Outcome::Written)).collect();
        let region = |store: &str, id: u64, start: &str, end: &str, elements: Vec<u64>| SetRead {
            store: store.into(),
            elements: Some(elements),
            error: None,
            region: Some(id),
            start: Some(start.into()),
            end: Some(end.into()),
        };
        let low: Vec<u64> = (1..=40).filter(|&e| set_key(e)[0] < 0x80).collect();
        let high: Vec<u64> = (1..=40).filter(|&e| set_key(e)[0] >= 0x80).collect();
        assert!(!low.is_empty() && !high.is_empty());
        // Region 1 on a and b, region 2 on b and c: each read holds its region's part.
        let reads = vec![
            region("a", 1, "", "80", low.clone()),
            region("b", 1, "", "80", low.clone()),
            region("b", 2, "80", "", high.clone()),
            region("c", 2, "80", "", high.clone()),
        ];
        let good = check_set(&adds, &reads);
        assert_eq!((good.lost_count(), good.violations()), (0, 0), "{good:?}");
        assert!(good.uncovered.is_empty() && good.unread.is_empty());
        // c lost one of region 2's elements: lost there only.
        let mut bad_reads = reads.clone();
        bad_reads[3] = region("c", 2, "80", "", high[1..].to_vec());
        let bad = check_set(&adds, &bad_reads);
        assert_eq!(bad.lost, vec![(high[0], vec!["c (region 2)".to_string()])]);
        // Region 2 read nowhere: its elements are uncovered, not lost.
        let half = check_set(&adds, &reads[..2]);
        assert_eq!(half.lost_count(), 0);
        assert_eq!(half.uncovered, high);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[5], 0.5), Some(5));
        assert_eq!(quantile(&[4, 1, 3, 2], 0.5), Some(2));
        assert_eq!(quantile(&[4, 1, 3, 2], 1.0), Some(4));
    }

    #[test]
    fn sequence_ranges_handed_out_twice_are_found() {
        use crate::workload::SequenceRange;
        let r = |sequence, start, end| SequenceRange {
            sequence,
            start,
            end,
        };
        assert!(check_sequences(&[r(1, 0, 5), r(1, 5, 9), r(2, 0, 5)]).is_empty());
        let found = check_sequences(&[r(1, 0, 5), r(1, 4, 9), r(2, 3, 3)]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|f| f.contains("overlap")), "{found:?}");
    }
}
