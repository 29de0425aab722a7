//! The lock workload and its checker (issue 19): a few clients take one lock, make fenced
//! writes to one register with the token they got, and release it, through every fault.
//!
//! Checks (Jepsen's for etcd's lock, and the store's fencing):
//! - a token is handed to one owner only, and tokens grow in real time: an acquire that
//!   completed before another began has a token no greater (equal only for the same owner);
//! - fenced writes are accepted in token order: a write acknowledged after another was
//!   acknowledged never carries a lower token;
//! - no acknowledged fenced write is lost: the register's final value comes from a write
//!   at least as recent, in token order, as the last one acknowledged.
//!
//! Reported, not failed: two holders' lock intervals overlapping in real time, which
//! pauses make unavoidable with any lease lock (the fencing above is what keeps the data
//! safe then).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Lock clients per run.
pub const LOCK_CLIENTS: u64 = 2;
/// The lease they ask for.
pub const LEASE_MS: u64 = 2_000;
/// How long an acquire waits while another holds the lock.
pub const ACQUIRE_WAIT: Duration = Duration::from_millis(1_000);

/// The lock's name (a key: the region holding it decides).
pub fn lock_name() -> Bytes {
    Bytes::from_static(b"\xfdchaos-lock")
}

/// The register the holders write, fenced (another region than the lock's, as likely).
pub fn register_key() -> Bytes {
    Bytes::from_static(b"\x21chaos-fenced")
}

/// What one lock-workload operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutcome {
    /// Acquired with this token.
    Acquired(u64),
    /// Another owner held it.
    NotAcquired,
    /// A fenced write or release acknowledged.
    Ok,
    /// A fenced write refused for an older token.
    Fenced,
    /// Refused otherwise (did not happen).
    Failed,
    /// May or may not have happened.
    Unknown,
    /// The final read: the register's value (`None`: never written).
    Read(Option<String>),
}

/// One operation of the lock workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEvent {
    /// The client (its owner id is `worker-N`).
    pub worker: u64,
    /// `acquire`, `write`, `release` or `final-read`.
    pub op: String,
    /// For a write: the token it carried and the value.
    pub token: u64,
    /// See `token`.
    pub value: String,
    /// Invocation, µs since the run started.
    pub invoke_us: u64,
    /// Completion, µs since the run started.
    pub complete_us: u64,
    /// What the client learned.
    pub outcome: LockOutcome,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct LockReport {
    /// Acquires that succeeded.
    pub acquired: usize,
    /// Fenced writes acknowledged, and refused as fenced.
    pub writes_acked: usize,
    /// See `writes_acked`.
    pub writes_fenced: usize,
    /// Token or order violations, in words.
    pub violations: Vec<String>,
    /// Acknowledged fenced writes the final value lost, in words.
    pub lost: Vec<String>,
    /// Whether the final read answered.
    pub final_read: bool,
    /// Pairs of holders whose intervals overlapped in real time (reported only).
    pub overlaps: usize,
}

impl LockReport {
    /// The journal's line for it.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "checked the lock workload: {} acquired, {} fenced writes acknowledged, {} refused \
             as fenced; {} violations, {} acknowledged writes lost; {} overlapping holds \
             (reported, not failed: pauses make them unavoidable with any lease lock)",
            self.acquired,
            self.writes_acked,
            self.writes_fenced,
            self.violations.len(),
            self.lost.len(),
            self.overlaps
        )
    }
}

/// The token a written value carries (`TOKEN:worker:n`).
fn token_of(value: &str) -> Option<u64> {
    value.split(':').next()?.parse().ok()
}

/// Checks the lock workload's history (see the module docs).
pub fn check(events: &[LockEvent]) -> LockReport {
    let mut report = LockReport::default();
    // 1. One owner per token.
    let mut owner_of: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let acquires: Vec<&LockEvent> = events
        .iter()
        .filter(|e| e.op == "acquire" && matches!(e.outcome, LockOutcome::Acquired(_)))
        .collect();
    report.acquired = acquires.len();
    for e in &acquires {
        let LockOutcome::Acquired(token) = e.outcome else {
            continue;
        };
        match owner_of.insert(token, e.worker) {
            Some(other) if other != e.worker => report.violations.push(format!(
                "token {token} handed to worker-{other} and to worker-{}",
                e.worker
            )),
            _ => {}
        }
    }
    // 2. Tokens grow in real time.
    let token = |e: &LockEvent| match e.outcome {
        LockOutcome::Acquired(t) => t,
        _ => e.token,
    };
    real_time_order(&acquires, token, "acquire", &mut report.violations);
    // 3. Fenced writes accepted in token order.
    let writes: Vec<&LockEvent> = events
        .iter()
        .filter(|e| e.op == "write" && e.outcome == LockOutcome::Ok)
        .collect();
    report.writes_acked = writes.len();
    report.writes_fenced = events
        .iter()
        .filter(|e| e.op == "write" && e.outcome == LockOutcome::Fenced)
        .count();
    real_time_order(&writes, token, "fenced write", &mut report.violations);
    // 4. Nothing acknowledged lost.
    let final_value = events.iter().find_map(|e| match (&e.op[..], &e.outcome) {
        ("final-read", LockOutcome::Read(value)) => Some(value.clone()),
        _ => None,
    });
    report.final_read = final_value.is_some();
    if let (Some(value), Some(last)) = (&final_value, writes.iter().max_by_key(|w| w.complete_us)) {
        let written = |v: &str| {
            events
                .iter()
                .any(|e| e.op == "write" && e.value == v && e.outcome != LockOutcome::Fenced)
        };
        match value {
            None => report.lost.push(format!(
                "the register is empty, but a write with token {} was acknowledged",
                last.token
            )),
            Some(v) if !written(v) => report
                .violations
                .push(format!("the register holds {v:?}, which no write wrote")),
            Some(v) if token_of(v).unwrap_or(0) < last.token => report.lost.push(format!(
                "the register holds {v:?}, older than the acknowledged write {:?} (token {})",
                last.value, last.token
            )),
            Some(_) => {}
        }
    }
    // 5. Overlapping holds (reported).
    let mut holds: Vec<(u64, u64, u64)> = Vec::new();
    for e in &acquires {
        let release = events
            .iter()
            .filter(|r| r.op == "release" && r.worker == e.worker && r.invoke_us >= e.complete_us)
            .map(|r| r.invoke_us)
            .min();
        if let Some(end) = release {
            holds.push((e.complete_us, end, e.worker));
        }
    }
    holds.sort_unstable();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if b.0 >= a.1 {
                break;
            }
            if a.2 != b.2 {
                report.overlaps += 1;
            }
        }
    }
    report
}

/// Adds a violation for every event that began after another had completed yet carries a
/// lower token (an equal token is fine only for the same worker).
fn real_time_order(
    events: &[&LockEvent],
    token: impl Fn(&LockEvent) -> u64,
    what: &str,
    out: &mut Vec<String>,
) {
    let mut by_completion: Vec<&LockEvent> = events.to_vec();
    by_completion.sort_by_key(|e| e.complete_us);
    let mut by_invocation: Vec<&LockEvent> = events.to_vec();
    by_invocation.sort_by_key(|e| e.invoke_us);
    // The highest token among events completed so far, and who had it.
    let mut highest: Option<(u64, u64, u64)> = None;
    let mut done = 0;
    for b in by_invocation {
        while done < by_completion.len() && by_completion[done].complete_us < b.invoke_us {
            let a = by_completion[done];
            let t = token(a);
            if highest.is_none_or(|(h, _, _)| t > h) {
                highest = Some((t, a.worker, a.complete_us));
            }
            done += 1;
        }
        if let Some((h, worker, at)) = highest {
            let t = token(b);
            if t < h || (t == h && worker != b.worker) {
                out.push(format!(
                    "{what} with token {t} by worker-{} at {} µs, after one with token {h} by \
                     worker-{worker} completed at {at} µs",
                    b.worker, b.invoke_us
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(worker: u64, op: &str, token: u64, at: (u64, u64), outcome: LockOutcome) -> LockEvent {
        LockEvent {
            worker,
            op: op.into(),
            token,
            value: format!("{token}:{worker}:0"),
            invoke_us: at.0,
            complete_us: at.1,
            outcome,
        }
    }

    #[test]
    fn tokens_and_fenced_writes_in_order_pass_and_going_back_is_found() {
        let good = vec![
            event(1, "acquire", 0, (0, 10), LockOutcome::Acquired(1)),
            event(1, "write", 1, (11, 20), LockOutcome::Ok),
            event(1, "release", 0, (21, 30), LockOutcome::Ok),
            event(2, "acquire", 0, (31, 40), LockOutcome::Acquired(2)),
            event(2, "write", 2, (41, 50), LockOutcome::Ok),
            // The first holder, late: refused.
            event(1, "write", 1, (45, 55), LockOutcome::Fenced),
            LockEvent {
                op: "final-read".into(),
                outcome: LockOutcome::Read(Some("2:2:0".into())),
                ..event(9, "final-read", 0, (60, 70), LockOutcome::Ok)
            },
        ];
        let report = check(&good);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(report.lost.is_empty(), "{:?}", report.lost);
        assert_eq!(
            (report.acquired, report.writes_acked, report.writes_fenced),
            (2, 2, 1)
        );
        // A lower token accepted after a higher one was acknowledged.
        let mut late = good.clone();
        late[5] = event(1, "write", 1, (51, 55), LockOutcome::Ok);
        let report = check(&late);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(
            report.violations[0].contains("fenced write"),
            "{:?}",
            report.violations
        );
        // A token handed to two owners.
        let mut twice = good.clone();
        twice.push(event(3, "acquire", 0, (80, 90), LockOutcome::Acquired(2)));
        let report = check(&twice);
        assert!(
            report.violations.iter().any(|v| v.contains("handed to")),
            "{:?}",
            report.violations
        );
        // The final value older than the last acknowledged write.
        let mut lost = good.clone();
        lost[6].outcome = LockOutcome::Read(Some("1:1:0".into()));
        let report = check(&lost);
        assert_eq!(report.lost.len(), 1, "{:?}", report.lost);
    }
}
