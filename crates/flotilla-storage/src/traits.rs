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
    /// Saves the metas of several groups, each atomically; all durable on return. A
    /// journal makes this one write and one fsync (the runtime saves a round's changes so).
    fn save_many(&mut self, metas: &[(GroupId, RaftMeta)]) -> Result<(), StorageError> {
        for (group, meta) in metas {
            self.save(*group, meta)?;
        }
        Ok(())
    }
}

/// A group's snapshot store (SOFAJRaft's `SnapshotStorage`): create a writer, open a reader
/// (whose manifest lists every file with its size and checksum), and copy a snapshot from a
/// remote source. Implemented by [`crate::SnapshotStore`]; its in-memory form runs the
/// same code over [`crate::fs::SimFs`] ([`crate::SnapshotStore::in_memory`]).
pub trait SnapshotStorage {
    /// Metadata of the newest complete snapshot, if any.
    fn newest(&self) -> Option<flotilla_raft::SnapshotMeta>;
    /// Starts writing a snapshot; it becomes the newest when the writer finishes.
    fn create_writer(
        &self,
        meta: flotilla_raft::SnapshotMeta,
    ) -> Result<crate::SnapshotWriter, StorageError>;
    /// Opens the newest snapshot for reading; it is kept on disk while the reader lives.
    fn open_reader(&self) -> Option<crate::SnapshotReader>;
    /// Copies the snapshot `source` offers (chunked, verified, resumable, throttled).
    fn copy_from(
        &self,
        source: &dyn crate::SnapshotSource,
        options: &crate::CopyOptions,
    ) -> Result<(crate::SnapshotReader, crate::CopyReport), StorageError>;
}

impl SnapshotStorage for crate::SnapshotStore {
    fn newest(&self) -> Option<flotilla_raft::SnapshotMeta> {
        self.newest_meta()
    }

    fn create_writer(
        &self,
        meta: flotilla_raft::SnapshotMeta,
    ) -> Result<crate::SnapshotWriter, StorageError> {
        crate::SnapshotStore::create_writer(self, meta)
    }

    fn open_reader(&self) -> Option<crate::SnapshotReader> {
        crate::SnapshotStore::open_reader(self)
    }

    fn copy_from(
        &self,
        source: &dyn crate::SnapshotSource,
        options: &crate::CopyOptions,
    ) -> Result<(crate::SnapshotReader, crate::CopyReport), StorageError> {
        crate::copy_snapshot(source, self, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::{Configuration, LogIndex, SnapshotMeta};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(1),
            configuration: Configuration::new([PeerId::new("a")]),
        }
    }

    /// The in-memory snapshot store behind the trait: write, read back, copy to another.
    #[test]
    fn in_memory_snapshot_storage_through_the_trait() {
        let leader = crate::SnapshotStore::in_memory().unwrap();
        let follower = crate::SnapshotStore::in_memory().unwrap();
        let store: &dyn SnapshotStorage = &leader;
        let mut writer = store.create_writer(meta(7)).unwrap();
        writer.append("data", b"registers").unwrap();
        writer.finish().unwrap();
        assert_eq!(store.newest().map(|m| m.index), Some(LogIndex(7)));
        let reader = store.open_reader().expect("a snapshot");
        let file = reader
            .manifest()
            .file("data")
            .expect("listed with its checksum");
        assert_eq!(file.size, 9);
        let target: &dyn SnapshotStorage = &follower;
        let (copied, _) = target
            .copy_from(&reader, &crate::CopyOptions::default())
            .unwrap();
        assert_eq!(copied.meta(), &meta(7));
        assert_eq!(target.newest(), Some(meta(7)));
    }
}
