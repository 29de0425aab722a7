//! The fuzz targets: one per decoder that reads the network or a disk, and two driving the
//! raft core with arbitrary messages.
//!
//! Owns: the list `--target all` runs, in a fixed order. Must never: include the planted
//! target in that list.

mod kv;
mod pd;
pub mod planted;
mod raft;
mod storage;

use crate::Target;

/// Every real target, in the order `--target all` runs them.
#[must_use]
pub fn all() -> Vec<Target> {
    vec![
        raft::raft_frame(),
        raft::snapshot_fetch(),
        kv::kv_command(),
        kv::kv_output(),
        kv::kv_region(),
        kv::kv_export(),
        kv::store_meta(),
        kv::store_meta_log(),
        storage::log_segment(),
        storage::raft_meta(),
        storage::raft_meta_legacy(),
        storage::snapshot_manifest(),
        storage::snapshot_copy(),
        pd::pd_command(),
        pd::pd_state(),
        raft::raft_step(),
        raft::raft_step_generated(),
    ]
}

/// The real target called `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}
