//! One durable, segmented, append-only log shared by every raft group of a process, with
//! group commit: a [`WriteBatch`] carrying appends and truncations of any number of groups
//! becomes one record, written with one write and made durable with one fsync (as TiKV's
//! raft-engine and dragonboat share one log; SOFAJRaft's one RocksDB per group pays an
//! fsync per group).
//!
//! Owns: the segment files of one directory, the in-memory index of where every entry of
//! every group lies, the entry cache, segment rotation and reclamation, and the rule that a
//! failed write or fsync fails the log for good. Must never: acknowledge a batch before its
//! record and every name it depends on are durable, acknowledge anything after a failed
//! write or fsync, or open a log with a bad record anywhere but a torn tail (see
//! [`format::classify_bad_tail`]).
//!
//! Layout of the directory: segment files `00000000000000000001.log`, ... (contiguous
//! sequences; the oldest are removed once no group has a live entry in them). Every segment
//! opens with a checkpoint record — each group's compaction point and last index when the
//! segment was created — so that removing older segments loses no compaction point and
//! recovery can start from the oldest segment kept. Byte layout: [`format`](mod@format).
//!
//! Snapshot metadata is not stored here: [`GroupLog`]'s `LogStore::snapshot_meta` answers
//! with an empty meta, and the runtime combines the log with the snapshot store.
//!
//! Known debt: a group that never compacts pins every segment after its oldest live entry
//! (raft-engine rewrites such entries forward; not done yet). Reads of entries not in the
//! cache take the index lock once per entry.

pub mod cache;
pub mod format;
pub mod index;
pub mod recovery;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_raft::{Entry, LogIndex, LogStore, SnapshotMeta, StoreError, Term};

use self::cache::EntryCache;
use self::format::{Op, KIND_BATCH, KIND_CHECKPOINT, RECORD_HEADER_BYTES};
use self::index::{check_shape, Location, LogIndexState, Shape};
pub use self::recovery::RecoveryReport;
use crate::error::StorageError;
use crate::fs::{FileSystem, ReadableFile, WritableFile};
use crate::traits::{GroupId, LogStorage};

/// Limits of a shared log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is closed and a new one started before a record would take it past this
    /// size (a segment always holds its checkpoint and at least one batch, so one batch
    /// larger than this makes a larger segment).
    pub segment_bytes_max: u64,
    /// Bytes of recent entries kept in memory across all groups.
    pub cache_bytes_max: u64,
    /// Largest batch record accepted; a larger batch is refused (and nothing written).
    pub record_bytes_max: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes_max: 64 << 20,
            cache_bytes_max: 64 << 20,
            record_bytes_max: 32 << 20,
        }
    }
}

/// Operations on any number of groups, written as one record with one fsync. Operations
/// apply in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<(GroupId, Op)>,
}

impl WriteBatch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Appends `entries` (consecutive) to `group`, first dropping every entry at or after
    /// the first one's index.
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) -> &mut WriteBatch {
        if !entries.is_empty() {
            self.ops.push((group, Op::Append(entries.to_vec())));
        }
        self
    }

    /// Drops entries of `group` at or before `index`; `(index, term)` becomes its
    /// compaction point.
    pub fn truncate_prefix(
        &mut self,
        group: GroupId,
        index: LogIndex,
        term: Term,
    ) -> &mut WriteBatch {
        self.ops.push((group, Op::TruncatePrefix(index, term)));
        self
    }

    /// Drops entries of `group` at or after `from`.
    pub fn truncate_suffix(&mut self, group: GroupId, from: LogIndex) -> &mut WriteBatch {
        self.ops.push((group, Op::TruncateSuffix(from)));
        self
    }

    /// Drops every entry of `group`; its log continues after `(index, term)`.
    pub fn reset(&mut self, group: GroupId, index: LogIndex, term: Term) -> &mut WriteBatch {
        self.ops.push((group, Op::Reset(index, term)));
        self
    }

    /// True if the batch holds no operation.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Removes every operation (to reuse the allocation).
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

/// What readers share: the index, the cache and a read handle per segment.
struct ReadState {
    index: LogIndexState,
    cache: EntryCache,
    /// sequence -> (path, read handle).
    segments: BTreeMap<u64, (PathBuf, Arc<dyn ReadableFile>)>,
}

/// What only the writer touches; held across the write and fsync of a batch.
struct Writer {
    active: Box<dyn WritableFile>,
    active_sequence: u64,
    /// Bytes in the active segment.
    active_len: u64,
    /// True once a batch record was written to the active segment.
    active_has_batches: bool,
    /// Oldest segment still on disk.
    oldest_sequence: u64,
    /// Set by the first failed write or fsync; every later write fails with it.
    failed: Option<String>,
}

struct Shared {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: LogOptions,
    /// Lock order: `writer` before `state`. `state` is only ever held for in-memory work.
    writer: Mutex<Writer>,
    state: Mutex<ReadState>,
    recovery: RecoveryReport,
}

/// The durable log of every group of a process. Cheap to clone (a handle); `Send + Sync`.
#[derive(Clone)]
pub struct SharedLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl SharedLog {
    /// Opens (or creates) the log in `dir`: replays every segment, cuts a torn tail, and
    /// starts a new segment for this run's writes.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<SharedLog, StorageError> {
        if options.segment_bytes_max == 0 || options.record_bytes_max == 0 {
            return Err(StorageError::InvalidArgument(format!(
                "log limits must be positive: {options:?}"
            )));
        }
        if !fs.exists(dir) {
            fs.create_dir_all(dir)
                .map_err(|e| StorageError::io("create dir", dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)
                    .map_err(|e| StorageError::io("fsync dir", parent, e))?;
            }
        }
        let recovered = recovery::recover(fs.as_ref(), dir)?;
        let mut segments = BTreeMap::new();
        for &sequence in &recovered.sequences {
            let path = dir.join(format::segment_name(sequence));
            let reader = fs
                .open_read(&path)
                .map_err(|e| StorageError::io("open", &path, e))?;
            segments.insert(sequence, (path, Arc::from(reader)));
        }
        let sequence = recovered.sequences.last().map_or(1, |s| s + 1);
        let oldest_sequence = recovered.sequences.first().copied().unwrap_or(sequence);
        let checkpoint = recovered.index.checkpoint();
        let created = create_segment(fs.as_ref(), dir, sequence, &checkpoint)?;
        segments.insert(
            sequence,
            (dir.join(format::segment_name(sequence)), created.reader),
        );
        let writer = Writer {
            active: created.file,
            active_sequence: sequence,
            active_len: created.len,
            active_has_batches: false,
            oldest_sequence,
            failed: None,
        };
        let state = ReadState {
            index: recovered.index,
            cache: EntryCache::new(options.cache_bytes_max),
            segments,
        };
        Ok(SharedLog {
            shared: Arc::new(Shared {
                fs,
                dir: dir.to_path_buf(),
                options,
                writer: Mutex::new(writer),
                state: Mutex::new(state),
                recovery: recovered.report,
            }),
        })
    }

    /// What recovery found when this log was opened (torn bytes cut, records replayed).
    #[must_use]
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Writes `batch` with one write and one fsync; durable on return. A batch that does
    /// not apply (a gap, a truncation across the compaction point, too large) is refused
    /// with [`StorageError::InvalidArgument`] and nothing is written. A failed write or
    /// fsync returns the error and fails the log: every later write returns
    /// [`StorageError::Failed`].
    pub fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        let mut writer = self.shared.lock_writer()?;
        if let Some(why) = &writer.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.shared.validate(batch)?;
        let (body, spans) = format::encode_batch(&batch.ops);
        let record = format::frame_record(KIND_BATCH, &body);
        if record.len() as u64 > self.shared.options.record_bytes_max {
            return Err(StorageError::InvalidArgument(format!(
                "batch record of {} bytes exceeds record_bytes_max {}",
                record.len(),
                self.shared.options.record_bytes_max
            )));
        }
        let result = self
            .shared
            .write_record(&mut writer, &record, batch, &spans);
        if let Err(e) = &result {
            writer.failed = Some(e.to_string());
        }
        result
    }

    /// The read (and single-group write) view of one group.
    #[must_use]
    pub fn group(&self, group: GroupId) -> GroupLog {
        GroupLog {
            log: self.clone(),
            group,
        }
    }

    /// Groups the log holds state for, ascending.
    #[must_use]
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared
            .read_state()
            .index
            .groups
            .keys()
            .copied()
            .collect()
    }

    /// Sequences of the segments on disk, ascending.
    #[must_use]
    pub fn segments(&self) -> Vec<u64> {
        self.shared.read_state().segments.keys().copied().collect()
    }

    /// Bytes of entries in the cache.
    #[must_use]
    pub fn cache_bytes(&self) -> u64 {
        self.shared.read_state().cache.bytes()
    }

    /// True once a write or fsync failed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        self.shared
            .lock_writer()
            .map_or(true, |w| w.failed.is_some())
    }
}

/// A segment just created: its append handle, length and read handle.
struct NewSegment {
    file: Box<dyn WritableFile>,
    len: u64,
    reader: Arc<dyn ReadableFile>,
}

/// Creates segment `sequence` holding its header and `checkpoint`, durable (file and name)
/// on return.
fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    sequence: u64,
    checkpoint: &[(GroupId, format::GroupCheckpoint)],
) -> Result<NewSegment, StorageError> {
    let path = dir.join(format::segment_name(sequence));
    if fs.exists(&path) {
        return Err(StorageError::InvalidArgument(format!(
            "{} exists already",
            path.display()
        )));
    }
    let mut bytes = format::segment_header(sequence);
    bytes.extend_from_slice(&format::frame_record(
        KIND_CHECKPOINT,
        &format::encode_checkpoint(checkpoint),
    ));
    let mut file = fs
        .open_append(&path)
        .map_err(|e| StorageError::io("create", &path, e))?;
    file.append(&bytes)
        .map_err(|e| StorageError::io("append", &path, e))?;
    file.sync()
        .map_err(|e| StorageError::io("fsync", &path, e))?;
    fs.sync_dir(dir)
        .map_err(|e| StorageError::io("fsync dir", dir, e))?;
    let reader = fs
        .open_read(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    Ok(NewSegment {
        file,
        len: bytes.len() as u64,
        reader: Arc::from(reader),
    })
}

impl Shared {
    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, StorageError> {
        // A writer panicked mid-write: what reached the disk is unknown, so the log is
        // failed, as after an I/O error.
        self.writer
            .lock()
            .map_err(|_| StorageError::Failed("a writer panicked while writing".into()))
    }

    fn lock_state(&self) -> Result<MutexGuard<'_, ReadState>, StorageError> {
        // A panic while the index was being updated may have left it half-applied.
        self.state.lock().map_err(|_| {
            StorageError::Failed("a thread panicked while updating the log index".into())
        })
    }

    /// For the infallible getters of `LogStore`: a poisoned index is a bug already reported
    /// by the panic that poisoned it; refuse to answer from a half-updated index.
    fn read_state(&self) -> MutexGuard<'_, ReadState> {
        self.lock_state()
            .unwrap_or_else(|e| panic!("shared log {}: {e}", self.dir.display()))
    }

    /// Checks that every operation applies, in order, to the current state.
    fn validate(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        let state = self.lock_state()?;
        let mut bounds: BTreeMap<GroupId, (LogIndex, LogIndex)> = BTreeMap::new();
        for (group, op) in &batch.ops {
            if let Op::Append(entries) = op {
                if let Some(pair) = entries.windows(2).find(|p| p[1].index != p[0].index.next()) {
                    return Err(StorageError::InvalidArgument(format!(
                        "group {group}: entries not consecutive: {} after {}",
                        pair[1].index, pair[0].index
                    )));
                }
            }
            let Some(shape) = Shape::of(op) else {
                continue;
            };
            let current = *bounds.entry(*group).or_insert_with(|| {
                state
                    .index
                    .groups
                    .get(group)
                    .map_or((LogIndex::ZERO, LogIndex::ZERO), |g| {
                        (g.prefix.0, g.last_index())
                    })
            });
            let next = check_shape(current, shape)
                .map_err(|why| StorageError::InvalidArgument(format!("group {group}: {why}")))?;
            bounds.insert(*group, next);
        }
        Ok(())
    }

    /// Writes and fsyncs one validated record, then applies it and reclaims segments.
    fn write_record(
        &self,
        writer: &mut Writer,
        record: &[u8],
        batch: &WriteBatch,
        spans: &[(usize, usize)],
    ) -> Result<(), StorageError> {
        if writer.active_has_batches
            && writer.active_len + record.len() as u64 > self.options.segment_bytes_max
        {
            self.rotate(writer)?;
        }
        let path = self.dir.join(format::segment_name(writer.active_sequence));
        let record_offset = writer.active_len;
        writer
            .active
            .append(record)
            .map_err(|e| StorageError::io("append", &path, e))?;
        writer.active_len += record.len() as u64;
        writer
            .active
            .sync()
            .map_err(|e| StorageError::io("fsync", &path, e))?;
        writer.active_has_batches = true;
        let body_offset = record_offset + RECORD_HEADER_BYTES as u64;
        let reclaimable = self.apply(writer, batch, spans, body_offset)?;
        for sequence in reclaimable {
            let path = self.dir.join(format::segment_name(sequence));
            self.fs
                .remove_file(&path)
                .map_err(|e| StorageError::io("remove", &path, e))?;
            // One directory fsync per removal, oldest first: whatever a crash keeps is a
            // contiguous run of segments.
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| StorageError::io("fsync dir", &self.dir, e))?;
            writer.oldest_sequence = sequence + 1;
        }
        Ok(())
    }

    /// Applies a durable batch to the index and cache; returns the segments to remove.
    fn apply(
        &self,
        writer: &Writer,
        batch: &WriteBatch,
        spans: &[(usize, usize)],
        body_offset: u64,
    ) -> Result<Vec<u64>, StorageError> {
        let mut state = self.lock_state()?;
        let state = &mut *state;
        let mut spans = spans.iter();
        let mut locations = Vec::new();
        for (group, op) in &batch.ops {
            let Some(shape) = Shape::of(op) else {
                continue;
            };
            locations.clear();
            if let Op::Append(entries) = op {
                for (entry, (at, len)) in entries.iter().zip(spans.by_ref()) {
                    locations.push(Location {
                        segment: writer.active_sequence,
                        offset: body_offset + *at as u64,
                        len: u32::try_from(*len).unwrap_or(u32::MAX),
                        term: entry.term,
                    });
                }
                assert_eq!(
                    locations.len(),
                    entries.len(),
                    "group {group}: fewer encoded entries than appended"
                );
            }
            if let Err(why) = state.index.apply(*group, shape, &locations) {
                panic!("group {group}: a validated operation did not apply: {why}");
            }
            match op {
                Op::Append(entries) => state.cache.append(*group, entries),
                Op::TruncatePrefix(index, _) => state.cache.truncate_prefix(*group, *index),
                Op::TruncateSuffix(from) => state.cache.truncate_suffix(*group, *from),
                Op::Reset(..) => state.cache.clear(*group),
            }
        }
        let mut reclaimable = Vec::new();
        let mut sequence = writer.oldest_sequence;
        while sequence < writer.active_sequence
            && state.index.live.get(&sequence).is_none_or(|l| l.is_empty())
        {
            state.index.live.remove(&sequence);
            state.segments.remove(&sequence);
            reclaimable.push(sequence);
            sequence += 1;
        }
        Ok(reclaimable)
    }

    fn rotate(&self, writer: &mut Writer) -> Result<(), StorageError> {
        let sequence = writer.active_sequence + 1;
        let checkpoint = self.lock_state()?.index.checkpoint();
        let created = create_segment(self.fs.as_ref(), &self.dir, sequence, &checkpoint)?;
        let path = self.dir.join(format::segment_name(sequence));
        self.lock_state()?
            .segments
            .insert(sequence, (path, created.reader));
        writer.active = created.file;
        writer.active_sequence = sequence;
        writer.active_len = created.len;
        writer.active_has_batches = false;
        Ok(())
    }

    fn first_index(&self, group: GroupId) -> LogIndex {
        let state = self.read_state();
        state
            .index
            .groups
            .get(&group)
            .map_or(LogIndex(1), |g| g.first_index())
    }

    fn last_index(&self, group: GroupId) -> LogIndex {
        let state = self.read_state();
        state
            .index
            .groups
            .get(&group)
            .map_or(LogIndex::ZERO, |g| g.last_index())
    }

    fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        let state = self.lock_state()?;
        match state.index.groups.get(&group) {
            Some(g) => g.term(index),
            None if index == LogIndex::ZERO => Ok(Term::ZERO),
            None => Err(StorageError::Unavailable { index }),
        }
    }

    /// The entry at `index`: from the cache, else one positioned read (outside the lock).
    fn entry(&self, group: GroupId, index: LogIndex) -> Result<Entry, StorageError> {
        let (location, path, file) = {
            let state = self.lock_state()?;
            let Some(g) = state.index.groups.get(&group) else {
                return Err(if index == LogIndex::ZERO {
                    StorageError::Compacted {
                        first_index: LogIndex(1),
                    }
                } else {
                    StorageError::Unavailable { index }
                });
            };
            let location = g.location(index)?;
            if let Some(entry) = state.cache.get(group, index) {
                return Ok(entry.clone());
            }
            let Some((path, file)) = state.segments.get(&location.segment) else {
                panic!(
                    "group {group} index {index} points into segment {}, which is not open",
                    location.segment
                );
            };
            (location, path.clone(), Arc::clone(file))
        };
        match read_entry(file.as_ref(), &path, location, index) {
            Ok(entry) => Ok(entry),
            Err(e) => {
                // Compacted or overwritten (and its segment removed) while we read?
                let state = self.lock_state()?;
                let now = state.index.groups.get(&group).map(|g| g.location(index));
                match now {
                    Some(Ok(l)) if l == location => Err(e),
                    Some(Err(moved)) => Err(moved),
                    _ => Err(StorageError::Unavailable { index }),
                }
            }
        }
    }

    fn entries(
        &self,
        group: GroupId,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        {
            let state = self.lock_state()?;
            let (prefix, last) = state
                .index
                .groups
                .get(&group)
                .map_or((LogIndex::ZERO, LogIndex::ZERO), |g| {
                    (g.prefix.0, g.last_index())
                });
            if low <= prefix {
                return Err(StorageError::Compacted {
                    first_index: prefix.next(),
                });
            }
            if high > last.next() {
                return Err(StorageError::Unavailable { index: high.prev() });
            }
        }
        let mut out = Vec::new();
        let mut size = 0;
        let mut index = low;
        while index < high {
            let entry = self.entry(group, index)?;
            size += entry.size_bytes();
            if !out.is_empty() && size > bytes_max {
                break;
            }
            out.push(entry);
            index = index.next();
        }
        Ok(out)
    }
}

/// Reads and verifies one entry: one positioned read of its encoding and CRC.
fn read_entry(
    file: &dyn ReadableFile,
    path: &Path,
    location: Location,
    index: LogIndex,
) -> Result<Entry, StorageError> {
    let mut buf = vec![0u8; location.len as usize + format::ENTRY_CRC_BYTES];
    file.read_exact_at(location.offset, &mut buf)
        .map_err(|e| StorageError::io("read", path, e))?;
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: location.offset,
        reason,
    };
    let entry = format::decode_entry(&buf).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
    if entry.index != index || entry.term != location.term {
        return Err(corrupt(format!(
            "expected entry {index} of term {}, read entry {} of term {}",
            location.term, entry.index, entry.term
        )));
    }
    Ok(entry)
}

/// One group's view of the shared log: the core's [`LogStore`] and the runtime's
/// [`LogStorage`] (each mutating call is a one-group [`WriteBatch`]).
#[derive(Clone, Debug)]
pub struct GroupLog {
    log: SharedLog,
    group: GroupId,
}

impl GroupLog {
    /// The group this view reads and writes.
    #[must_use]
    pub fn group_id(&self) -> GroupId {
        self.group
    }

    fn write_one(&self, op: impl FnOnce(&mut WriteBatch)) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        op(&mut batch);
        self.log.write(&batch)
    }
}

impl LogStore for GroupLog {
    fn first_index(&self) -> LogIndex {
        self.log.shared.first_index(self.group)
    }

    fn last_index(&self) -> LogIndex {
        self.log.shared.last_index(self.group)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StoreError> {
        Ok(self.log.shared.term(self.group, index)?)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.log.shared.entries(self.group, low, high, bytes_max)?)
    }

    /// Always empty: snapshots live in the snapshot store, and the runtime answers the core
    /// with the snapshot store's meta combined with this log.
    fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta::default()
    }
}

impl LogStorage for GroupLog {
    fn first_index(&self) -> LogIndex {
        self.log.shared.first_index(self.group)
    }

    fn last_index(&self) -> LogIndex {
        self.log.shared.last_index(self.group)
    }

    fn entry(&self, index: LogIndex) -> Result<Entry, StorageError> {
        self.log.shared.entry(self.group, index)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.log.shared.term(self.group, index)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let group = self.group;
        self.write_one(|b| {
            b.append(group, entries);
        })
    }

    fn truncate_prefix(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        let group = self.group;
        self.write_one(|b| {
            b.truncate_prefix(group, index, term);
        })
    }

    fn truncate_suffix(&mut self, index: LogIndex) -> Result<(), StorageError> {
        let group = self.group;
        self.write_one(|b| {
            b.truncate_suffix(group, index);
        })
    }

    fn reset(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        let group = self.group;
        self.write_one(|b| {
            b.reset(group, index, term);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_log_is_send_and_sync() {
        assert_send_sync::<SharedLog>();
        assert_send_sync::<GroupLog>();
    }
}
