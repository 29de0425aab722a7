//! # flotilla-sim: a deterministic cluster simulator for flotilla-raft
//!
//! Runs clusters of real `flotilla-raft` cores against a simulated disk (writes become
//! durable only when their completion comes; a crash loses the rest) and a simulated
//! network (delay, loss, duplication, reordering, partitions of several shapes), with
//! crashes, restarts, pauses, membership changes, leadership transfers and snapshot
//! installs injected by a seeded nemesis while clients run reads (ReadIndex and lease, on
//! any peer), writes and compare-and-set on a few registers.
//!
//! After every step it checks: at most one leader per term; log matching; leader
//! completeness; state-machine safety; commit never decreasing; applied <= committed; and
//! nothing committed without a quorum of the configuration(s) in force. At the end of a seed
//! it checks the client history for linearizability and that, once every fault healed, a
//! leader committed within a bound. Everything follows from the seed: a failing seed
//! replays exactly with `--seed S`.
//!
//! [`StorageMode::SharedLog`] runs the nodes on the real storage module (`SharedLog` and
//! `FileMetaStorage` over a crashable simulated file system, with torn tails) and checks
//! at every restart that recovery returns exactly the log that was acknowledged durable.

#![deny(missing_docs)]

pub mod chain;
pub mod kv;
pub mod network;
pub mod node;
pub mod simulation;

/// The linearizability checker, which lives in its own crate (`flotilla-linearizability`) so
/// the chaos harness shares it without depending on the simulator; re-exported under its old
/// path.
pub use flotilla_linearizability as linearizability;

pub use simulation::{SeedReport, SimConfig, Simulation, StorageMode, Violation, TICK};

/// Runs one seed.
#[must_use]
pub fn run_seed(config: SimConfig) -> SeedReport {
    Simulation::new(config).run()
}

/// The cluster size used for `seed` when none is forced: 3, 5 and 7 in turn.
#[must_use]
pub fn nodes_for_seed(seed: u64) -> usize {
    [3, 5, 7][(seed % 3) as usize]
}
