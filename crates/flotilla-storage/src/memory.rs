//! In-memory storage for tests and the simulator: the same contracts, no durability.
//!
//! Owns: reference behaviour the durable implementations are checked against (the property
//! test compares the shared log with [`MemLogStorage`]). Must never: be used where data
//! must survive the process.

use std::collections::BTreeMap;

use flotilla_raft::{Entry, LogIndex, Term};

use crate::error::StorageError;
use crate::traits::{GroupId, LogStorage, MetaStorage, RaftMeta};

/// One group's log in memory.
#[derive(Clone, Debug, Default)]
pub struct MemLogStorage {
    /// Index and term of the compaction point.
    offset: (LogIndex, Term),
    entries: Vec<Entry>,
}

impl MemLogStorage {
    /// An empty log.
    #[must_use]
    pub fn new() -> MemLogStorage {
        MemLogStorage::default()
    }

    fn slot(&self, index: LogIndex) -> Result<usize, StorageError> {
        if index <= self.offset.0 {
            return Err(StorageError::Compacted {
                first_index: self.first_index(),
            });
        }
        let slot = (index.get() - self.offset.0.get() - 1) as usize;
        if slot >= self.entries.len() {
            return Err(StorageError::Unavailable { index });
        }
        Ok(slot)
    }
}

impl LogStorage for MemLogStorage {
    fn first_index(&self) -> LogIndex {
        self.offset.0.next()
    }

    fn last_index(&self) -> LogIndex {
        self.offset.0.plus(self.entries.len() as u64)
    }

    fn entry(&self, index: LogIndex) -> Result<Entry, StorageError> {
        Ok(self.entries[self.slot(index)?].clone())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.offset.0 {
            return Ok(self.offset.1);
        }
        Ok(self.entries[self.slot(index)?].term)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index.next() {
                return Err(StorageError::InvalidArgument(format!(
                    "entries not consecutive: {} after {}",
                    pair[1].index, pair[0].index
                )));
            }
        }
        if first.index <= self.offset.0 || first.index > self.last_index().next() {
            return Err(StorageError::InvalidArgument(format!(
                "append at {} outside [{}, {}]",
                first.index,
                self.first_index(),
                self.last_index().next()
            )));
        }
        let keep = (first.index.get() - self.offset.0.get() - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn truncate_prefix(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        if index <= self.offset.0 {
            return Ok(());
        }
        let drop = ((index.get() - self.offset.0.get()) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.offset = (index, term);
        Ok(())
    }

    fn truncate_suffix(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.offset.0 {
            return Err(StorageError::InvalidArgument(format!(
                "truncate suffix at {index} would cross the compaction point {}",
                self.offset.0
            )));
        }
        let keep = (index.get() - self.offset.0.get() - 1) as usize;
        self.entries.truncate(keep);
        Ok(())
    }

    fn reset(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        self.entries.clear();
        self.offset = (index, term);
        Ok(())
    }
}

/// Raft meta in memory.
#[derive(Clone, Debug, Default)]
pub struct MemMetaStorage {
    metas: BTreeMap<GroupId, RaftMeta>,
}

impl MetaStorage for MemMetaStorage {
    fn load(&self, group: GroupId) -> Result<RaftMeta, StorageError> {
        Ok(self.metas.get(&group).cloned().unwrap_or_default())
    }

    fn save(&mut self, group: GroupId, meta: &RaftMeta) -> Result<(), StorageError> {
        self.metas.insert(group, meta.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::EntryPayload;

    fn e(i: u64, t: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            term: Term(t),
            payload: EntryPayload::NoOp,
        }
    }

    #[test]
    fn append_overwrites_and_truncations_move_the_bounds() {
        let mut log = MemLogStorage::new();
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        log.append(&[e(2, 2)]).unwrap();
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.term(LogIndex(2)).unwrap(), Term(2));
        log.truncate_prefix(LogIndex(1), Term(1)).unwrap();
        assert_eq!(log.first_index(), LogIndex(2));
        assert_eq!(log.term(LogIndex(1)).unwrap(), Term(1));
        assert!(matches!(
            log.entry(LogIndex(1)),
            Err(StorageError::Compacted { .. })
        ));
        assert!(log.append(&[e(5, 2)]).is_err(), "a gap is refused");
        log.reset(LogIndex(10), Term(3)).unwrap();
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(11), LogIndex(10))
        );
    }
}
