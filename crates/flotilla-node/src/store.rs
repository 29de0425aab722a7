//! The log a group's core reads: one group of the shared log plus the snapshot it starts
//! from (the shared log keeps no snapshot metadata; the snapshot store does).
//!
//! Owns: nothing but the pairing. Must never: write (the manager's round writes every
//! group in one batch).

use flotilla_raft::{Entry, LogIndex, LogStore, SnapshotMeta, StoreError, Term};
use flotilla_storage::GroupLog;

/// One group's durable log and starting snapshot, as the core's [`LogStore`].
#[derive(Clone, Debug)]
pub(crate) struct NodeStore {
    pub(crate) log: GroupLog,
    /// The newest durable snapshot, or the bootstrap configuration at index 0. Read by the
    /// core once, when it is created.
    pub(crate) snapshot: SnapshotMeta,
}

impl LogStore for NodeStore {
    fn first_index(&self) -> LogIndex {
        LogStore::first_index(&self.log)
    }

    fn last_index(&self) -> LogIndex {
        LogStore::last_index(&self.log)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StoreError> {
        LogStore::term(&self.log, index)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        self.log.entries(low, high, bytes_max)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }
}
