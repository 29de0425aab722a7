//! [`FjallEngine`]: the durable default engine, on fjall (an LSM tree in pure Rust).
//!
//! Two fjall partitions hold the two key spaces: `data` and `meta`. Durability comes from
//! the raft log, not from fjall: every batch reaches fjall's journal in the operating
//! system's buffers (it survives a process crash) but is not fsynced per write; after a
//! machine crash fjall recovers a prefix of its batches. The KV state machine writes its
//! applied index in the same batch as the data, so it always knows how far the engine
//! got, and replays the raft log from there (or loads the last snapshot, which replaces
//! the region's range, if the engine is behind it). [`KvEngine::flush`] fsyncs fjall's
//! journal when a caller needs the engine itself durable.
//!
//! Owns: atomic batches (one fjall batch, applied at one sequence number) and consistent
//! reads (every read goes through a snapshot at the keyspace's visible sequence number,
//! so it never sees half a batch). Must never: let two writers interleave a delete-range's
//! scan and its batch (one write lock serialises writes and imports).
//!
//! Known debt: fjall 2 has no range tombstone, so a delete-range writes one tombstone per
//! key present; `approximate_size` walks the range.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::export::{ExportReader, ExportWriter};
use super::{
    bounds, check_batch, check_scan, take_within, KvEngine, RangeSize, WriteBatch, WriteOp,
};
use crate::error::{show, KvError};

/// Tuning of a [`FjallEngine`].
#[derive(Debug, Clone)]
pub struct FjallOptions {
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// Size at which a partition's memtable is sealed and flushed. fjall's default is
    /// 16 MiB; 4 MiB is cheaper per write here: the memtable is a skiplist, and its insert
    /// (a search through it) took 30 % of a store's CPU under a write load with 16 MiB
    /// (three stores' memtables no longer fit the cache), for the same flush work per key.
    /// Partitions keep the size they were created with.
    pub memtable_bytes_max: u32,
    /// An import whose pairs fit in this many bytes is staged in memory and committed as
    /// one batch (on error nothing changed); a larger one is committed in batches of about
    /// this size, and an error part way leaves the range inconsistent (reported as
    /// [`KvError::RangeInconsistent`]).
    pub import_stage_bytes_max: usize,
}

impl Default for FjallOptions {
    fn default() -> FjallOptions {
        FjallOptions {
            cache_bytes: 64 * 1024 * 1024,
            memtable_bytes_max: 4 * 1024 * 1024,
            import_stage_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// A [`KvEngine`] on fjall.
pub struct FjallEngine {
    keyspace: Keyspace,
    data: PartitionHandle,
    meta: PartitionHandle,
    /// Serialises writes and imports (a delete-range reads the keys it removes).
    write_lock: Mutex<()>,
    options: FjallOptions,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallEngine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn engine_error(what: &str, e: &fjall::Error) -> KvError {
    KvError::Engine(format!("fjall {what}: {e}"))
}

fn bytes_of(slice: &fjall::Slice) -> Bytes {
    Bytes::copy_from_slice(slice)
}

impl FjallEngine {
    /// Opens (creating if needed) an engine in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FjallEngine, KvError> {
        FjallEngine::open_with(dir, FjallOptions::default())
    }

    /// Opens (creating if needed) an engine in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, options: FjallOptions) -> Result<FjallEngine, KvError> {
        let dir = dir.as_ref();
        let keyspace = fjall::Config::new(dir)
            .cache_size(options.cache_bytes)
            .open()
            .map_err(|e| engine_error(&format!("opening {}", dir.display()), &e))?;
        let partition_options =
            || PartitionCreateOptions::default().max_memtable_size(options.memtable_bytes_max);
        let data = keyspace
            .open_partition("data", partition_options())
            .map_err(|e| engine_error("opening partition data", &e))?;
        let meta = keyspace
            .open_partition("meta", partition_options())
            .map_err(|e| engine_error("opening partition meta", &e))?;
        Ok(FjallEngine {
            keyspace,
            data,
            meta,
            write_lock: Mutex::new(()),
            options,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded state is fjall's, not ours: a panicking writer left nothing half
        // done here (fjall batches are atomic), so a poisoned lock is safe to take.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A read view at the last completely applied batch.
    fn view(&self, partition: &PartitionHandle) -> fjall::Snapshot {
        partition.snapshot_at(self.keyspace.instant())
    }

    fn scan_partition(
        &self,
        partition: &PartitionHandle,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        let view = self.view(partition);
        let range = view.range::<&[u8], _>(bounds(start, end));
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut push = |item: Result<(fjall::Slice, fjall::Slice), _>| {
            let (key, value) = item.map_err(|e: lsm_error::Error| lsm_error::convert("scan", e))?;
            out.push((bytes_of(&key), bytes_of(&value)));
            Ok::<(), KvError>(())
        };
        if reverse {
            for item in range.rev().take(limit) {
                push(item)?;
            }
        } else {
            for item in range.take(limit) {
                push(item)?;
            }
        }
        Ok(out)
    }

    /// Every data key in `[start, end)` as it is now (callers hold the write lock).
    fn keys_in(&self, start: &[u8], end: &[u8]) -> Result<Vec<Bytes>, KvError> {
        let view = self.view(&self.data);
        let mut keys = Vec::new();
        // fjall 2 snapshots have no keys-only range: values come along.
        for item in view.range::<&[u8], _>(bounds(start, end)) {
            let (key, _) = item.map_err(|e| lsm_error::convert("range scan", e))?;
            keys.push(bytes_of(&key));
        }
        Ok(keys)
    }

    /// Removes every data key of `[start, end)` in batches of at most
    /// `import_stage_bytes_max` bytes of keys.
    fn clear_range(&self, start: &[u8], end: &[u8]) -> Result<(), KvError> {
        let keys = self.keys_in(start, end)?;
        let mut batch = self.keyspace.batch();
        let mut batch_bytes = 0usize;
        for key in keys {
            batch_bytes += key.len();
            batch.remove(&self.data, key.as_ref());
            if batch_bytes >= self.options.import_stage_bytes_max {
                batch.commit().map_err(|e| engine_error("commit", &e))?;
                batch = self.keyspace.batch();
                batch_bytes = 0;
            }
        }
        batch.commit().map_err(|e| engine_error("commit", &e))
    }

    fn commit_pairs(&self, pairs: &[(Bytes, Bytes)]) -> Result<(), KvError> {
        let mut batch = self.keyspace.batch();
        for (key, value) in pairs {
            batch.insert(&self.data, key.as_ref(), value.as_ref());
        }
        batch.commit().map_err(|e| engine_error("commit", &e))
    }

    /// The rest of an import too large to stage: the old range is cleared, then the pairs
    /// are committed chunk by chunk. Any error leaves the range inconsistent.
    fn import_chunked(
        &self,
        start: &[u8],
        end: &[u8],
        reader: &mut ExportReader<'_>,
        mut staged: Vec<(Bytes, Bytes)>,
    ) -> Result<u64, KvError> {
        let result = (|| {
            self.clear_range(start, end)?;
            loop {
                self.commit_pairs(&staged)?;
                staged.clear();
                let mut staged_bytes = 0usize;
                while staged_bytes < self.options.import_stage_bytes_max {
                    match reader.next_pair()? {
                        Some((key, value)) => {
                            staged_bytes += key.len() + value.len();
                            staged.push((key, value));
                        }
                        None => {
                            self.commit_pairs(&staged)?;
                            return Ok(reader.count());
                        }
                    }
                }
            }
        })();
        result.map_err(|e: KvError| KvError::RangeInconsistent {
            start: show(start),
            end: show(end),
            reason: e.to_string(),
        })
    }
}

/// fjall's snapshot reads return lsm-tree errors; this keeps their conversion in one place.
mod lsm_error {
    use crate::error::KvError;

    pub(super) type Error = fjall::LsmError;

    pub(super) fn convert(what: &str, e: Error) -> KvError {
        KvError::Engine(format!("fjall {what}: {e}"))
    }
}

/// The final state of every key a batch touches, in key order: `None` = removed.
type Resolved = BTreeMap<Bytes, Option<Bytes>>;

impl KvEngine for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        let value = self
            .view(&self.data)
            .get(key)
            .map_err(|e| lsm_error::convert("get", e))?;
        Ok(value.as_ref().map(bytes_of))
    }

    fn multi_get(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, KvError> {
        crate::limits::check_batch_len(keys.len())?;
        // One view: the values are from one point in time.
        let view = self.view(&self.data);
        keys.iter()
            .map(|key| {
                let value = view.get(key).map_err(|e| lsm_error::convert("get", e))?;
                Ok(value.as_ref().map(bytes_of))
            })
            .collect()
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        check_scan(start, end, limit)?;
        self.scan_partition(&self.data, start, end, limit, reverse)
    }

    fn scan_within(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), KvError> {
        check_scan(start, end, limit)?;
        let view = self.view(&self.data);
        let range = view
            .range::<&[u8], _>(bounds(start, end))
            .map(|item| item.map_err(|e| lsm_error::convert("scan", e)));
        let size = |(k, v): &(fjall::Slice, fjall::Slice)| k.len() + v.len();
        let pair = |(k, v): (fjall::Slice, fjall::Slice)| (bytes_of(&k), bytes_of(&v));
        if reverse {
            take_within(range.rev(), limit, bytes_max, size, pair)
        } else {
            take_within(range, limit, bytes_max, size, pair)
        }
    }

    fn scan_keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        bytes_max: usize,
    ) -> Result<(Vec<Bytes>, bool), KvError> {
        check_scan(start, end, limit)?;
        // fjall 2 has no keys-only range (its own `keys()` maps a full iteration): values
        // are read with their block, as a reference-counted slice of it, and dropped here
        // without being copied out.
        let view = self.view(&self.data);
        let range = view.range::<&[u8], _>(bounds(start, end)).map(|item| {
            item.map(|(key, _)| key)
                .map_err(|e| lsm_error::convert("scan keys", e))
        });
        let size = |key: &fjall::Slice| key.len();
        let key = |key: fjall::Slice| bytes_of(&key);
        if reverse {
            take_within(range.rev(), limit, bytes_max, size, key)
        } else {
            take_within(range, limit, bytes_max, size, key)
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        check_batch(&batch)?;
        let _guard = self.lock();
        // fjall applies a batch's items at one sequence number, so two items on one key
        // would be ambiguous: resolve each key's final state first, in operation order.
        let mut data = Resolved::new();
        let mut meta = Resolved::new();
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { key, value } => {
                    data.insert(key, Some(value));
                }
                WriteOp::Delete { key } => {
                    data.insert(key, None);
                }
                WriteOp::DeleteRange { start, end } => {
                    for key in self.keys_in(&start, &end)? {
                        data.insert(key, None);
                    }
                    for (_, state) in data.range_mut::<[u8], _>(bounds(&start, &end)) {
                        *state = None;
                    }
                }
                WriteOp::MetaPut { key, value } => {
                    meta.insert(key, Some(value));
                }
                WriteOp::MetaDelete { key } => {
                    meta.insert(key, None);
                }
            }
        }
        let mut fjall_batch = self.keyspace.batch();
        for (partition, resolved) in [(&self.data, data), (&self.meta, meta)] {
            for (key, state) in resolved {
                match state {
                    Some(value) => fjall_batch.insert(partition, key.as_ref(), value.as_ref()),
                    None => fjall_batch.remove(partition, key.as_ref()),
                }
            }
        }
        fjall_batch.commit().map_err(|e| engine_error("commit", &e))
    }

    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<RangeSize, KvError> {
        crate::limits::check_range(start, end)?;
        let view = self.view(&self.data);
        let mut size = RangeSize::default();
        for item in view.range::<&[u8], _>(bounds(start, end)) {
            let (key, value) = item.map_err(|e| lsm_error::convert("count", e))?;
            size.keys += 1;
            size.bytes += (key.len() + value.len()) as u64;
        }
        Ok(size)
    }

    fn middle_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Bytes>, KvError> {
        let total = self.approximate_size(start, end)?.bytes;
        let view = self.view(&self.data);
        let pairs = view.range::<&[u8], _>(bounds(start, end)).map(|item| {
            let (key, value) = item.map_err(|e| lsm_error::convert("middle key", e))?;
            let bytes = (key.len() + value.len()) as u64;
            Ok((key, bytes))
        });
        super::pick_middle(total, pairs)
    }

    fn export_range(&self, start: &[u8], end: &[u8], out: &mut dyn Write) -> Result<u64, KvError> {
        crate::limits::check_range(start, end)?;
        // One view for the whole export: a point in time, streamed without a lock.
        let view = self.view(&self.data);
        let mut writer = ExportWriter::new(out, start, end)?;
        for item in view.range::<&[u8], _>(bounds(start, end)) {
            let (key, value) = item.map_err(|e| lsm_error::convert("export", e))?;
            writer.pair(&key, &value)?;
        }
        writer.finish()
    }

    fn import_range(&self, start: &[u8], end: &[u8], input: &mut dyn Read) -> Result<u64, KvError> {
        crate::limits::check_range(start, end)?;
        let _guard = self.lock();
        let mut reader = ExportReader::new(input, start, end)?;
        let mut staged = Vec::new();
        let mut staged_bytes = 0usize;
        while let Some((key, value)) = reader.next_pair()? {
            staged_bytes += key.len() + value.len();
            staged.push((key, value));
            if staged_bytes >= self.options.import_stage_bytes_max {
                return self.import_chunked(start, end, &mut reader, staged);
            }
        }
        // Everything verified and staged: one atomic batch (nothing changed on error).
        // Old keys also in the import are overwritten, not removed (one item per key).
        let mut batch = self.keyspace.batch();
        for key in self.keys_in(start, end)? {
            if staged.binary_search_by(|(k, _)| k.cmp(&key)).is_err() {
                batch.remove(&self.data, key.as_ref());
            }
        }
        for (key, value) in &staged {
            batch.insert(&self.data, key.as_ref(), value.as_ref());
        }
        batch.commit().map_err(|e| engine_error("commit", &e))?;
        Ok(reader.count())
    }

    fn flush(&self) -> Result<(), KvError> {
        self.keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| engine_error("journal fsync", &e))
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        let value = self
            .view(&self.meta)
            .get(key)
            .map_err(|e| lsm_error::convert("meta get", e))?;
        Ok(value.as_ref().map(bytes_of))
    }

    fn meta_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        check_scan(start, end, limit)?;
        self.scan_partition(&self.meta, start, end, limit, false)
    }
}
