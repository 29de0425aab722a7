//! The core's view of the replicated log: durable entries read through [`LogStore`], plus the
//! unstable tail the core has appended but storage has not yet reported durable.
//!
//! Owns: index arithmetic of the log (first, last, term at), the unstable buffer, the
//! durable watermark, and the commit index invariant `commit <= last_index`. Must never:
//! write to storage (it only emits what to persist) or decide what to commit.

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::{RaftError, StoreError};
use crate::ids::{LogIndex, Term};
use crate::types::{Entry, SnapshotMeta};

/// Read access to the durable log, implemented by the runtime's storage (and by
/// [`MemStorage`] for tests, the simulator and benchmarks).
///
/// The runtime writes what the core emits; the core only reads entries it has been told are
/// durable, so implementations need no synchronisation with in-flight writes.
pub trait LogStore {
    /// Index of the first entry still in the log (`snapshot index + 1` when empty).
    fn first_index(&self) -> LogIndex;
    /// Index of the last entry in the log (`first_index - 1` when empty).
    fn last_index(&self) -> LogIndex;
    /// Term of the entry at `index`; `first_index - 1` must answer with the term of the
    /// compaction point.
    fn term(&self, index: LogIndex) -> Result<Term, StoreError>;
    /// Entries in `[low, high)`, stopping early once `bytes_max` is exceeded (at least one
    /// entry is returned if any is available).
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError>;
    /// The latest snapshot's metadata (index 0 and the bootstrap configuration for a group
    /// that has none).
    fn snapshot_meta(&self) -> SnapshotMeta;
}

#[derive(Debug, Default)]
struct MemStorageInner {
    snapshot: SnapshotMeta,
    /// Index and term of the entry before `entries[0]` (the compaction point).
    offset: (LogIndex, Term),
    entries: Vec<Entry>,
}

/// An in-memory [`LogStore`], shared by handle. Used by tests, the simulator and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    inner: Rc<RefCell<MemStorageInner>>,
}

impl MemStorage {
    /// An empty log whose snapshot is `meta` (use index 0 to bootstrap a configuration).
    #[must_use]
    pub fn new(meta: SnapshotMeta) -> MemStorage {
        let storage = MemStorage::default();
        storage.install_snapshot(meta);
        storage
    }

    /// Appends `entries`, first removing any entry at or after `entries[0].index`.
    pub fn append(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut inner = self.inner.borrow_mut();
        let offset = inner.offset.0;
        assert!(
            first.index > offset,
            "append at {} before compaction point {offset}",
            first.index
        );
        let keep = (first.index.get() - offset.get() - 1) as usize;
        assert!(
            keep <= inner.entries.len(),
            "append at {} leaves a gap after {}",
            first.index,
            offset.plus(inner.entries.len() as u64)
        );
        inner.entries.truncate(keep);
        inner.entries.extend_from_slice(entries);
    }

    /// Drops entries up to and including `index`, remembering its term.
    pub fn compact(&self, index: LogIndex, term: Term) {
        let mut inner = self.inner.borrow_mut();
        if index <= inner.offset.0 {
            return;
        }
        let drop = (index.get() - inner.offset.0.get()) as usize;
        let drop = drop.min(inner.entries.len());
        inner.entries.drain(..drop);
        inner.offset = (index, term);
    }

    /// Drops every entry after `index`, as a damaged disk would (tests of recovery from a
    /// log that lost entries it had acknowledged).
    pub fn truncate_after(&self, index: LogIndex) {
        let mut inner = self.inner.borrow_mut();
        let keep = index.get().saturating_sub(inner.offset.0.get()) as usize;
        inner.entries.truncate(keep);
    }

    /// Records a snapshot taken locally (log unchanged).
    pub fn set_snapshot(&self, meta: SnapshotMeta) {
        self.inner.borrow_mut().snapshot = meta;
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install_snapshot(&self, meta: SnapshotMeta) {
        let mut inner = self.inner.borrow_mut();
        inner.offset = (meta.index, meta.term);
        inner.entries.clear();
        inner.snapshot = meta;
    }

    /// All entries currently stored (for checkers).
    #[must_use]
    pub fn all_entries(&self) -> Vec<Entry> {
        self.inner.borrow().entries.clone()
    }

    /// Deep copy (for a simulated crash that keeps only what is durable).
    #[must_use]
    pub fn deep_clone(&self) -> MemStorage {
        let inner = self.inner.borrow();
        MemStorage {
            inner: Rc::new(RefCell::new(MemStorageInner {
                snapshot: inner.snapshot.clone(),
                offset: inner.offset,
                entries: inner.entries.clone(),
            })),
        }
    }
}

impl LogStore for MemStorage {
    fn first_index(&self) -> LogIndex {
        self.inner.borrow().offset.0.next()
    }

    fn last_index(&self) -> LogIndex {
        let inner = self.inner.borrow();
        inner.offset.0.plus(inner.entries.len() as u64)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StoreError> {
        let inner = self.inner.borrow();
        let offset = inner.offset.0;
        if index < offset {
            return Err(StoreError::Compacted);
        }
        if index == offset {
            return Ok(inner.offset.1);
        }
        let slot = (index.get() - offset.get() - 1) as usize;
        inner
            .entries
            .get(slot)
            .map(|e| e.term)
            .ok_or(StoreError::Unavailable)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let inner = self.inner.borrow();
        let offset = inner.offset.0;
        if low <= offset {
            return Err(StoreError::Compacted);
        }
        let last = offset.plus(inner.entries.len() as u64);
        if high > last.next() {
            return Err(StoreError::Unavailable);
        }
        let from = (low.get() - offset.get() - 1) as usize;
        let to = (high.get() - offset.get() - 1) as usize;
        Ok(take_within_bytes(&inner.entries[from..to], bytes_max))
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.inner.borrow().snapshot.clone()
    }
}

/// Clones a prefix of `entries` whose total size stays within `bytes_max` (at least one).
fn take_within_bytes(entries: &[Entry], bytes_max: u64) -> Vec<Entry> {
    let mut size = 0;
    let mut count = 0;
    for entry in entries {
        size += entry.size_bytes();
        if count > 0 && size > bytes_max {
            break;
        }
        count += 1;
    }
    entries[..count].to_vec()
}

/// The core's log: durable entries via the store, the unstable tail in memory.
pub(crate) struct RaftLog<S: LogStore> {
    pub(crate) store: S,
    /// Entries not yet reported durable, starting at `unstable_offset`.
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// How many of `unstable` were already handed out to be persisted.
    unstable_handed_out: usize,
    /// Highest index known durable *and* consistent with this log. Entries at or before it
    /// are read from the store.
    durable_index: LogIndex,
    /// Highest index known committed. Invariant: `committed <= last_index()`.
    pub(crate) committed: LogIndex,
    /// Highest index handed to the application to apply. Invariant: `applying <= committed`.
    pub(crate) applying: LogIndex,
    /// Highest index the application reported applied. Invariant: `applied <= applying`.
    pub(crate) applied: LogIndex,
    /// Snapshot (or compaction point) the log starts after.
    pub(crate) compacted_index: LogIndex,
    pub(crate) compacted_term: Term,
}

impl<S: LogStore> RaftLog<S> {
    /// A view over `store`. Fails if the store is inconsistent (it comes from a disk, so it
    /// is checked rather than trusted).
    pub(crate) fn new(
        store: S,
        committed: LogIndex,
        applied: LogIndex,
    ) -> Result<RaftLog<S>, RaftError> {
        let first = store.first_index();
        let last = store.last_index();
        if last.next() < first {
            return Err(RaftError::Io(format!(
                "store reports last index {last} before first index {first}"
            )));
        }
        let compacted_index = first.prev();
        let compacted_term = store.term(compacted_index).map_err(|e| {
            RaftError::Io(format!(
                "store cannot give the term of its compaction point {compacted_index}: {e}"
            ))
        })?;
        // A committed index beyond the durable log may have been persisted ahead of its
        // entries; clamp it (it only ever grows again through the protocol).
        let committed = committed.min(last).max(compacted_index);
        let applied = applied.max(compacted_index).min(committed);
        Ok(RaftLog {
            store,
            unstable: Vec::new(),
            unstable_offset: last.next(),
            unstable_handed_out: 0,
            durable_index: last,
            committed,
            applying: applied,
            applied,
            compacted_index,
            compacted_term,
        })
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.compacted_index.next()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        if self.unstable.is_empty() {
            self.unstable_offset.prev()
        } else {
            self.unstable_offset.plus(self.unstable.len() as u64 - 1)
        }
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index())
            .unwrap_or_else(|e| panic!("last index {} has no term: {e}", self.last_index()))
    }

    pub(crate) fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    /// Term of the entry at `index`.
    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StoreError> {
        if index == self.compacted_index {
            return Ok(self.compacted_term);
        }
        if index < self.compacted_index {
            return Err(StoreError::Compacted);
        }
        if index >= self.unstable_offset {
            let slot = (index.get() - self.unstable_offset.get()) as usize;
            return self
                .unstable
                .get(slot)
                .map(|e| e.term)
                .ok_or(StoreError::Unavailable);
        }
        self.store.term(index)
    }

    /// True if the log holds an entry at `index` with `term`.
    pub(crate) fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Raft paper §5.4.1: is a candidate's log at least as up to date as ours?
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Entries in `[low, high)` within `bytes_max` (at least one if available).
    pub(crate) fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low <= self.compacted_index {
            return Err(StoreError::Compacted);
        }
        let mut out = Vec::new();
        if low < self.unstable_offset {
            let stable_high = high.min(self.unstable_offset);
            out = self.store.entries(low, stable_high, bytes_max)?;
            if out.len() as u64 != stable_high.distance_from(low) || high <= self.unstable_offset {
                return Ok(out);
            }
        }
        let used: u64 = out.iter().map(Entry::size_bytes).sum();
        let from = low.max(self.unstable_offset);
        let start = (from.get() - self.unstable_offset.get()) as usize;
        let end = (high.get() - self.unstable_offset.get()) as usize;
        let Some(slice) = self.unstable.get(start..end.min(self.unstable.len())) else {
            return Err(StoreError::Unavailable);
        };
        let mut size = used;
        let mut count = 0;
        for entry in slice {
            size += entry.size_bytes();
            if (!out.is_empty() || count > 0) && size > bytes_max {
                break;
            }
            count += 1;
        }
        // Count first, then clone the run in one go (one reservation): pushing one clone at
        // a time regrows `out` about ten times for a 1024-entry AppendEntries on the
        // leader's send path.
        out.extend_from_slice(&slice[..count]);
        Ok(out)
    }

    /// Appends one entry at the end (leader path, avoids a Vec).
    pub(crate) fn append_one(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index().next(), "append leaves a gap");
        self.unstable.push(entry);
    }

    /// Replaces everything at and after `from` (which must be > committed) with nothing.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        assert!(
            from > self.committed,
            "truncating at {from} would remove committed entries (commit {})",
            self.committed
        );
        if from >= self.unstable_offset {
            let keep = (from.get() - self.unstable_offset.get()) as usize;
            self.unstable.truncate(keep);
            self.unstable_handed_out = self.unstable_handed_out.min(keep);
        } else {
            // Conflict inside the durable part: the unstable tail restarts at `from`; the
            // store will be overwritten from there by the next persist.
            self.unstable.clear();
            self.unstable_offset = from;
            self.unstable_handed_out = 0;
            self.durable_index = self.durable_index.min(from.prev());
        }
    }

    /// Unstable entries not yet handed out to persist.
    pub(crate) fn take_unpersisted(&mut self) -> Vec<Entry> {
        let out = self.unstable[self.unstable_handed_out..].to_vec();
        self.unstable_handed_out = self.unstable.len();
        out
    }

    pub(crate) fn has_unpersisted(&self) -> bool {
        self.unstable_handed_out < self.unstable.len()
    }

    /// Storage reports everything up to `index` with `term` durable. Returns the new durable
    /// index if it advanced.
    pub(crate) fn on_persisted(&mut self, index: LogIndex, term: Term) -> Option<LogIndex> {
        if index < self.unstable_offset || index <= self.durable_index {
            return None;
        }
        let slot = (index.get() - self.unstable_offset.get()) as usize;
        if slot >= self.unstable_handed_out || self.unstable[slot].term != term {
            return None; // overwritten since it was handed out: a later persist will cover it
        }
        self.unstable.drain(..=slot);
        self.unstable_handed_out -= slot + 1;
        self.unstable_offset = index.next();
        self.durable_index = index;
        Some(index)
    }

    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Upper bound of what can be handed to the application: committed and durable here.
    pub(crate) fn applicable_index(&self) -> LogIndex {
        self.committed.min(self.durable_index)
    }

    /// The log was compacted up to `index` (a local snapshot); the store did it.
    pub(crate) fn compacted_to(&mut self, index: LogIndex, term: Term) {
        if index > self.compacted_index {
            self.compacted_index = index;
            self.compacted_term = term;
        }
    }

    /// The log was replaced by a snapshot received from the leader.
    pub(crate) fn restore(&mut self, index: LogIndex, term: Term) {
        self.unstable.clear();
        self.unstable_handed_out = 0;
        self.unstable_offset = index.next();
        self.durable_index = index;
        self.compacted_index = index;
        self.compacted_term = term;
        self.committed = self.committed.max(index);
        self.applying = index;
        self.applied = index;
    }
}
