//! How a seed's report is made: the trace of recent events kept for a violation, the
//! counters, and the end of a run, which checks the client history for
//! linearizability. It records; it must never change what the run does next (beyond stopping
//! it at the first violation).

use flotilla_linearizability::{Checker, OpOutcome, Verdict};
use flotilla_raft::LogStore;

use super::config::TICK;
use super::outcome::{SeedReport, Violation};
use super::Simulation;

/// How many recent events the trace keeps for a violation's report.
const TRACE_LEN: usize = 40;

impl Simulation {
    pub(super) fn finish(mut self) -> SeedReport {
        // Operations still open at the end have unknown outcomes.
        for client in 0..self.clients.len() {
            if let Some(op) = self.clients[client].op.take() {
                self.record(client, &op, OpOutcome::Indeterminate);
            }
        }
        let mut unknown = false;
        if self.violation.is_none() {
            let checker = Checker::new(self.config.checker_states_max);
            match checker.check(&self.history) {
                Verdict::Linearizable => {}
                Verdict::Violation { key, explanation } => {
                    self.violation = Some(Violation {
                        invariant: "linearizability",
                        detail: format!("key {key}: {explanation}"),
                        trace: self.trace.iter().cloned().collect(),
                    });
                }
                Verdict::Unknown { .. } => unknown = true,
            }
        }
        let recovery_ticks = match (self.healed_at, self.recovered_at) {
            (Some(h), Some(r)) => Some(r.saturating_sub(h) / TICK),
            _ => None,
        };
        SeedReport {
            seed: self.config.seed,
            nodes: self.config.nodes,
            steps: self.steps,
            operations: self.history.len(),
            violation: self.violation,
            unknown,
            recovery_ticks,
            stats: self.stats,
        }
    }

    pub(super) fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_insert(0) += 1;
    }

    pub(super) fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now));
    }

    pub(super) fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        let mut trace: Vec<String> = self.trace.iter().cloned().collect();
        trace.push(format!("t={} state of every node:", self.now));
        for n in &self.nodes {
            match &n.raft {
                Some(raft) => {
                    let paused = if n.paused { " (paused)" } else { "" };
                    for line in raft.describe().lines() {
                        trace.push(format!("  {line}{paused}"));
                    }
                    let front = n.pending.front().map(|w| w.done_at);
                    trace.push(format!(
                        "  writes pending={} first done at {front:?}; storage last={}",
                        n.pending.len(),
                        raft.store().last_index()
                    ));
                }
                None => trace.push(format!("  peer {} crashed", n.id)),
            }
        }
        self.violation = Some(Violation {
            invariant,
            detail,
            trace,
        });
    }

    // ----- events ----------------------------------------------------------------------
}
