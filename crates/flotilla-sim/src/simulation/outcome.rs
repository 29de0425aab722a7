//! What a seed reports: the [`SeedReport`] (steps, operations, first [`Violation`], whether
//! the linearizability check ran out of budget, recovery time, stats). Plain data, below
//! the simulation that fills it in (`report.rs`).

use std::collections::BTreeMap;

/// A broken invariant, with what is needed to replay it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// The numbers that disagree.
    pub detail: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Events processed.
    pub steps: u64,
    /// Client operations recorded.
    pub operations: usize,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// The linearizability search ran out of budget.
    pub unknown: bool,
    /// Ticks from the final heal to the first commit by a leader.
    pub recovery_ticks: Option<u64>,
    /// What happened, by kind (elections, crashes, snapshots installed, reads...).
    pub stats: BTreeMap<&'static str, u64>,
}
