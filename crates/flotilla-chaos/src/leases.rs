//! The lease workload and its TTL check (issue 20): a client grants a lease, attaches a key
//! of its own to it, keeps it alive a few times, then lets it run out while it reads the
//! key, through every fault.
//!
//! Checks, per lease (real time, microseconds since the run started):
//! - **not early**: a read that completed before the invocation of the lease's last
//!   acknowledged grant or keep-alive plus [`TTL_MS`] less [`CLOCK_MARGIN_PERCENT`] found
//!   the key (if its put was acknowledged): the lease's deadline is at least that far, on
//!   a clock that may run 4 % fast;
//! - **not late**: a read invoked after the completion of the lease's last grant, put or
//!   keep-alive that may have applied, plus [`TTL_MS`] and [`CLOCK_MARGIN_PERCENT`] and
//!   [`LATE_MARGIN_MS`], did not find it.
//!
//! The stated margin ([`LATE_MARGIN_MS`]): a lease's time stands still on a replica that
//! restarted until the lease's next entry there (the reaper's within half a second), so a
//! home led by a restarted replica keeps a lease up to one more time to live, plus a
//! second for the reaper and the read's own round trips. And a fault that restarts servers
//! may stop the lease's time from its start to its recovery (all the home's replicas
//! restarted, or the one leading it after): the late bound grows by every such fault
//! window it overlaps.

use serde::{Deserialize, Serialize};

/// The time to live of the workload's leases.
pub const TTL_MS: u64 = 2_000;
/// How far a home's clock may run from real time, each way, in percent (the chaos clock
/// nemesis changes rates by up to ±4 %), counted twice.
pub const CLOCK_MARGIN_PERCENT: u64 = 8;
/// How much longer than its deadline a lease may still be seen alive (see the module
/// docs).
pub const LATE_MARGIN_MS: u64 = TTL_MS + 1_000;

/// The key of the `n`th lease of the run.
#[must_use]
pub fn key_of(n: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!("\x22chaos-lease-{n:08}"))
}

/// What one lease-workload operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// Acknowledged.
    Ok,
    /// Refused (did not happen).
    Failed,
    /// May or may not have happened.
    Unknown,
    /// A read: whether the key was found.
    Read(bool),
}

/// One operation of the lease workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    /// The lease's number in the run (its key is [`key_of`]).
    pub n: u64,
    /// `grant`, `put`, `keep-alive` or `read`.
    pub op: String,
    /// Invocation, µs since the run started.
    pub invoke_us: u64,
    /// Completion, µs since the run started.
    pub complete_us: u64,
    /// What the client learned.
    pub outcome: LeaseOutcome,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct LeaseReport {
    /// Leases granted.
    pub leases: usize,
    /// Reads answered, and of them those that found the key.
    pub reads: usize,
    /// See `reads`.
    pub found: usize,
    /// Reads that found a key after its lease surely ended, or missed it while it surely
    /// lived, in words.
    pub violations: Vec<String>,
}

impl LeaseReport {
    /// The journal's line for it.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "checked the lease workload: {} leases, {} reads ({} found the key); {} violations \
             (a key read after its lease surely ended, or missed while it surely lived)",
            self.leases,
            self.reads,
            self.found,
            self.violations.len()
        )
    }
}

/// `bound` moved past each of `restarts` (fault windows, µs) that starts before it and
/// ends after `from`, by the part of the window after `from`.
fn extended(from: u64, bound: u64, restarts: &[(u64, u64)]) -> u64 {
    let mut windows = restarts.to_vec();
    windows.sort_unstable();
    let mut bound = bound;
    for (start, end) in windows {
        if start < bound && end > from {
            bound += end - start.max(from);
        }
    }
    bound
}

/// Checks the lease workload's history (see the module docs); `restarts` are the windows
/// of faults that restarted servers.
#[must_use]
pub fn check(events: &[LeaseEvent], restarts: &[(u64, u64)]) -> LeaseReport {
    let mut report = LeaseReport::default();
    let mut by_lease: std::collections::BTreeMap<u64, Vec<&LeaseEvent>> =
        std::collections::BTreeMap::new();
    for event in events {
        by_lease.entry(event.n).or_default().push(event);
    }
    let ttl_us = TTL_MS * 1000;
    let early_us = ttl_us * (100 - CLOCK_MARGIN_PERCENT) / 100;
    let late_us = ttl_us * (100 + CLOCK_MARGIN_PERCENT) / 100 + LATE_MARGIN_MS * 1000;
    for (n, events) in by_lease {
        let granted = events
            .iter()
            .any(|e| e.op == "grant" && e.outcome == LeaseOutcome::Ok);
        if !granted {
            continue;
        }
        report.leases += 1;
        let put_acked = events
            .iter()
            .any(|e| e.op == "put" && e.outcome == LeaseOutcome::Ok);
        // The deadline is at least this far (acknowledged renewals, from their start)...
        let alive_until = events
            .iter()
            .filter(|e| (e.op == "grant" || e.op == "keep-alive") && e.outcome == LeaseOutcome::Ok)
            .map(|e| e.invoke_us + early_us)
            .max();
        // ...and at most this far (anything that may have applied, from its end).
        let dead_after = events
            .iter()
            .filter(|e| e.op != "read" && e.outcome != LeaseOutcome::Failed)
            .map(|e| extended(e.complete_us, e.complete_us + late_us, restarts))
            .max();
        for read in events.iter().filter(|e| e.op == "read") {
            let LeaseOutcome::Read(found) = read.outcome else {
                continue;
            };
            report.reads += 1;
            report.found += usize::from(found);
            if found && dead_after.is_some_and(|t| read.invoke_us > t) {
                report.violations.push(format!(
                    "lease {n}: a read invoked at {} µs found its key, after the lease surely \
                     ended ({} µs)",
                    read.invoke_us,
                    dead_after.unwrap_or(0)
                ));
            }
            if !found && put_acked && alive_until.is_some_and(|t| read.complete_us < t) {
                report.violations.push(format!(
                    "lease {n}: a read completed at {} µs missed its key while the lease surely \
                     lived (until {} µs)",
                    read.complete_us,
                    alive_until.unwrap_or(0)
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        n: u64,
        op: &str,
        invoke_us: u64,
        complete_us: u64,
        outcome: LeaseOutcome,
    ) -> LeaseEvent {
        LeaseEvent {
            n,
            op: op.into(),
            invoke_us,
            complete_us,
            outcome,
        }
    }

    #[test]
    fn reads_are_held_to_the_lease_s_bounds() {
        let ms = 1000;
        let history = vec![
            event(1, "grant", 0, 10 * ms, LeaseOutcome::Ok),
            event(1, "put", 20 * ms, 30 * ms, LeaseOutcome::Ok),
            event(1, "keep-alive", 500 * ms, 510 * ms, LeaseOutcome::Ok),
            // Within the lease: found, fine.
            event(1, "read", 1_000 * ms, 1_010 * ms, LeaseOutcome::Read(true)),
            // Well after it: not found, fine.
            event(1, "read", 9_000 * ms, 9_010 * ms, LeaseOutcome::Read(false)),
        ];
        assert!(check(&history, &[]).violations.is_empty());
        // Missed while it surely lived (before 500 + 1,840 ms).
        let mut early = history.clone();
        early.push(event(
            1,
            "read",
            2_000 * ms,
            2_010 * ms,
            LeaseOutcome::Read(false),
        ));
        assert_eq!(check(&early, &[]).violations.len(), 1);
        // Found long after it surely ended (after 510 + 2,160 + 3,000 ms).
        let mut late = history.clone();
        late.push(event(
            1,
            "read",
            6_000 * ms,
            6_010 * ms,
            LeaseOutcome::Read(true),
        ));
        assert_eq!(check(&late, &[]).violations.len(), 1);
        // An unknown keep-alive may have applied late: it moves the late bound.
        late.push(event(
            1,
            "keep-alive",
            2_500 * ms,
            3_000 * ms,
            LeaseOutcome::Unknown,
        ));
        assert!(check(&late, &[]).violations.is_empty());
        // A restart window after the last renewal moves the late bound by its length.
        let mut restarted = history.clone();
        restarted.push(event(
            1,
            "read",
            8_000 * ms,
            8_010 * ms,
            LeaseOutcome::Read(true),
        ));
        assert_eq!(check(&restarted, &[]).violations.len(), 1);
        assert!(check(&restarted, &[(1_000 * ms, 4_000 * ms)])
            .violations
            .is_empty());
        // A lease never granted is not checked.
        let report = check(&[event(2, "read", 0, 1, LeaseOutcome::Read(true))], &[]);
        assert_eq!(report.leases, 0);
    }
}
