//! The storage roles the runtime drives, as SOFAJRaft names them: a log per group, raft
//! meta (term and vote), and a snapshot store.
//!
//! Owns: the contracts. Every mutating call returns only once its effect is durable; a
//! failed write or fsync returns an error and leaves the store failed (every later call
//! fails), so nothing is acknowledged after it. Must never: acknowledge what a crash could
//! take back.

use flotilla_raft::{Entry, LogIndex, PeerId, Term};

use crate::error::StorageError;

/// Identifies a raft group within a process (in the KV store: a region id).
pub type GroupId = u64;

/// One group's log (SOFAJRaft's `LogStorage`).
pub trait LogStorage {
    /// First index still stored (`last_index + 1` when empty).
    fn first_index(&self) -> LogIndex;
    /// Last index stored (`first_index - 1` when empty).
    fn last_index(&self) -> LogIndex;
    /// The entry at `index`.
    fn entry(&self, index: LogIndex) -> Result<Entry, StorageError>;
    /// The term at `index`; `first_index - 1` answers with the compaction point's term.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;
    /// Appends `entries` (consecutive), first removing any stored entry at or after
    /// `entries[0].index`. Durable on return.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Drops every entry at or before `index`, remembering `term` as the compaction
    /// point's term. Durable on return.
    fn truncate_prefix(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError>;
    /// Drops every entry at or after `index`. Durable on return.
    fn truncate_suffix(&mut self, index: LogIndex) -> Result<(), StorageError>;
    /// Drops everything; the log continues after `(index, term)` (a snapshot was installed).
    fn reset(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError>;
}

/// Term and vote of one group, always written together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftMeta {
    /// Current term.
    pub term: Term,
    /// Vote in `term`.
    pub vote: Option<PeerId>,
}

/// Raft meta of the groups of a process (SOFAJRaft's `RaftMetaStorage`; unlike SOFAJRaft,
/// every save is fsynced).
pub trait MetaStorage {
    /// The stored meta of `group` (default if never saved).
    fn load(&self, group: GroupId) -> Result<RaftMeta, StorageError>;
    /// Saves term and vote atomically. Durable on return.
    fn save(&mut self, group: GroupId, meta: &RaftMeta) -> Result<(), StorageError>;
}
