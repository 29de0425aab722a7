//! The storage engine behind every region of a store (docs/DESIGN.md, "Storage engines behind
//! one trait"): [`KvEngine`], its atomic [`WriteBatch`], an in-memory engine
//! ([`MemoryEngine`]: tests, the simulator) and fjall ([`FjallEngine`]: the durable default).
//!
//! One engine serves every region of a store, so data keys are the users' keys, unprefixed;
//! a region is a key range of it. Two key spaces are kept apart:
//!
//! - **data**: the users' keys ([`KvEngine::get`], [`KvEngine::scan`], the data operations
//!   of a [`WriteBatch`], export and import);
//! - **meta**: the store's own records — per-region applied state (see
//!   [`crate::state_machine`]), and later region metadata, sequences, locks and fencing
//!   tokens ([`KvEngine::meta_get`], [`KvEngine::meta_scan`], [`WriteBatch::meta_put`]).
//!   A meta write in the same batch as data writes is atomic with them. Each user of meta
//!   keys owns a prefix (see [`meta_keys`]).
//!
//! Owns: atomic batches, ordered scans both ways, range export/import in the checksummed
//! format of [`export`]. Must never: let a snapshot import write a key outside its range,
//! or apply half of a batch.

pub mod export;
mod fjall;
mod memory;

use std::io::{Read, Write};

use bytes::Bytes;

use crate::error::KvError;

pub use self::fjall::{FjallEngine, FjallOptions};
pub use self::memory::MemoryEngine;

/// Prefixes of the meta key space, one per owner.
pub mod meta_keys {
    /// Per-region applied state, `applied/` + region id (8 bytes, big endian); written by
    /// the KV state machine with every batch it applies.
    pub const APPLIED_PREFIX: &[u8] = b"applied/";
    /// A region's description as a merge step left it, `region/` + region id (8 bytes, big
    /// endian): its epoch moved without a range change the store records otherwise.
    pub const REGION_PREFIX: &[u8] = b"region/";
    /// A split applied whose store has not yet recorded it (`crate::split`).
    pub const SPLIT_PREFIX: &[u8] = b"split/";
    /// A frozen merge source's state, `merge/` + region id (`crate::merge::MergeState`).
    pub const MERGE_PREFIX: &[u8] = b"merge/";
    /// A merge applied whose store has not yet dropped the source, `merged/` + source id
    /// (`crate::merge::MergeRecord`).
    pub const MERGED_PREFIX: &[u8] = b"merged/";
    /// A sequence, `seq/` + its name (the key naming it), its next value as 8 bytes big
    /// endian (`crate::sequence`).
    pub const SEQUENCE_PREFIX: &[u8] = b"seq/";
    /// A lock, `lock/` + its name (`crate::lock::LockRecord`).
    pub const LOCK_PREFIX: &[u8] = b"lock/";
    /// A region's fence record, `fence/` + region id (8 bytes, big endian) + lock name
    /// (`crate::fence`).
    pub const FENCE_PREFIX: &[u8] = b"fence/";
    /// A lease at its home, `lease/` + its route key (`crate::lease::LeaseRecord`).
    pub const LEASE_PREFIX: &[u8] = b"lease/";
    /// The lease a data key follows, `lease-key/` + the key (8 bytes, big endian).
    pub const LEASE_KEY_PREFIX: &[u8] = b"lease-key/";
    /// Watch history, `watch/` + region id + log index (`crate::watch::WatchRecord`).
    pub const WATCH_HISTORY_PREFIX: &[u8] = b"watch/";
    /// A region's watch interest, `watch-interest/` + region id (`crate::watch::Interest`).
    pub const WATCH_INTEREST_PREFIX: &[u8] = b"watch-interest/";
    /// A replica's local floor of a region's watch history, `watch-floor/` + region id.
    pub const WATCH_FLOOR_PREFIX: &[u8] = b"watch-floor/";
    /// Where a merged source's keys went, `watch-merged/` + source id
    /// (`crate::watch::Merged`).
    pub const WATCH_MERGED_PREFIX: &[u8] = b"watch-merged/";
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets a data key.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes a data key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Removes every data key in `[start, end)`; an empty `end` is unbounded.
    DeleteRange {
        /// First key removed.
        start: Bytes,
        /// First key kept; empty = unbounded.
        end: Bytes,
    },
    /// Sets a meta key.
    MetaPut {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes a meta key.
    MetaDelete {
        /// The key.
        key: Bytes,
    },
}

/// The middle key of a walk over a range whose pairs total `total` bytes: see
/// [`KvEngine::middle_key`]. `pairs` yields each key with its pair's size, in order.
pub(crate) fn pick_middle<K, I>(total: u64, pairs: I) -> Result<Option<Bytes>, KvError>
where
    K: AsRef<[u8]>,
    I: IntoIterator<Item = Result<(K, u64), KvError>>,
{
    let half = total / 2;
    let mut seen = 0u64;
    for (position, pair) in pairs.into_iter().enumerate() {
        let (key, bytes) = pair?;
        seen += bytes;
        if position > 0 && seen >= half {
            return Ok(Some(Bytes::copy_from_slice(key.as_ref())));
        }
    }
    Ok(None)
}

/// What a key range holds, about ([`KvEngine::approximate_size`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeSize {
    /// Data keys.
    pub keys: u64,
    /// Bytes of those keys and their values.
    pub bytes: u64,
}

/// Operations applied atomically and in order by [`KvEngine::write`]: a reader sees all of
/// them or none, and a later operation on a key wins over an earlier one (a put after a
/// delete-range covering its key survives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Sets data `key` to `value`.
    pub fn put(&mut self, key: Bytes, value: Bytes) {
        self.ops.push(WriteOp::Put { key, value });
    }

    /// Removes data `key`.
    pub fn delete(&mut self, key: Bytes) {
        self.ops.push(WriteOp::Delete { key });
    }

    /// Removes data keys in `[start, end)` (empty `end` = unbounded).
    pub fn delete_range(&mut self, start: Bytes, end: Bytes) {
        self.ops.push(WriteOp::DeleteRange { start, end });
    }

    /// Sets meta `key` to `value`.
    pub fn meta_put(&mut self, key: Bytes, value: Bytes) {
        self.ops.push(WriteOp::MetaPut { key, value });
    }

    /// Removes meta `key`.
    pub fn meta_delete(&mut self, key: Bytes) {
        self.ops.push(WriteOp::MetaDelete { key });
    }

    /// Number of operations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    #[must_use]
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Takes the operations, in order.
    #[must_use]
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }
}

/// A store's storage engine, shared by all its regions (RheaKV's `RawKVStore` underneath).
///
/// Ranges are `[start, end)` with an empty `end` unbounded; a range with `start > end` is
/// refused with [`KvError::InvalidRange`]. Every method may be called from any thread.
pub trait KvEngine: Send + Sync + 'static {
    /// The value of data `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError>;

    /// The values of `keys`, in order. Refuses more than
    /// [`crate::limits::BATCH_KEYS_MAX`] keys.
    fn multi_get(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, KvError> {
        crate::limits::check_batch_len(keys.len())?;
        keys.iter().map(|key| self.get(key)).collect()
    }

    /// Up to `limit` data pairs in `[start, end)`, ascending, or descending from the last
    /// key before `end` when `reverse`. Refuses a limit above
    /// [`crate::limits::SCAN_LIMIT_MAX`].
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError>;

    /// [`KvEngine::scan`] that also stops before the pairs' key and value bytes pass
    /// `bytes_max` (at least one pair is returned when there is one); the flag is true when
    /// it stopped for that reason, with pairs left in the range and under `limit`. Both
    /// engines here copy nothing past the budget (the default scans then cuts).
    fn scan_within(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), KvError> {
        let pairs = self.scan(start, end, limit, reverse)?;
        take_within(
            pairs.into_iter().map(Ok),
            limit,
            bytes_max,
            |(k, v)| k.len() + v.len(),
            |pair| pair,
        )
    }

    /// The keys of [`KvEngine::scan_within`]'s pairs (the budget counts keys only), without
    /// their values: an engine copies no value (the default drops the values
    /// [`KvEngine::scan`] copied; both engines here override it).
    fn scan_keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        bytes_max: usize,
    ) -> Result<(Vec<Bytes>, bool), KvError> {
        let pairs = self.scan(start, end, limit, reverse)?;
        take_within(
            pairs.into_iter().map(|(key, _)| Ok(key)),
            limit,
            bytes_max,
            Bytes::len,
            |key| key,
        )
    }

    /// Applies `batch` atomically (see [`WriteBatch`]).
    fn write(&self, batch: WriteBatch) -> Result<(), KvError>;

    /// About how many data keys `[start, end)` holds and how many bytes of keys and
    /// values (for the placement driver's balance by size and for split decisions; both
    /// engines count exactly today, in time linear in the range).
    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<RangeSize, KvError>;

    /// A key that divides `[start, end)` into two halves of about equal bytes of keys and
    /// values (a region's split key): the first key at which the bytes before it and it
    /// reach half, never the range's first key. `None` when the range holds fewer than two
    /// keys. Time linear in the range (two walks).
    fn middle_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Bytes>, KvError>;

    /// Writes every data pair of `[start, end)` to `out` in the [`export`] format, as of
    /// one point in time; returns how many pairs.
    fn export_range(&self, start: &[u8], end: &[u8], out: &mut dyn Write) -> Result<u64, KvError>;

    /// Replaces the data of `[start, end)` with the pairs [`KvEngine::export_range`] wrote
    /// for the same range; returns how many. Every record is checksummed and range-checked:
    /// a flipped byte, a truncated input or a key outside the range is refused. On error
    /// either nothing changed, or (an import too large to stage in memory failing part
    /// way) [`KvError::RangeInconsistent`] says the range must be imported again.
    fn import_range(&self, start: &[u8], end: &[u8], input: &mut dyn Read) -> Result<u64, KvError>;

    /// Makes every write so far durable on this engine's own storage (an fsync; a no-op
    /// for the memory engine).
    fn flush(&self) -> Result<(), KvError>;

    /// The value of meta `key`.
    fn meta_get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError>;

    /// Up to `limit` meta pairs in `[start, end)`, ascending. Refuses a limit above
    /// [`crate::limits::SCAN_LIMIT_MAX`].
    fn meta_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError>;

    /// Sets data `key` (a one-operation batch).
    fn put(&self, key: Bytes, value: Bytes) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Removes data `key` (a one-operation batch).
    fn delete(&self, key: Bytes) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch)
    }

    /// Removes data keys in `[start, end)` (a one-operation batch).
    fn delete_range(&self, start: Bytes, end: Bytes) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(start, end);
        self.write(batch)
    }

    /// Sets meta `key` (a one-operation batch).
    fn meta_put(&self, key: Bytes, value: Bytes) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        batch.meta_put(key, value);
        self.write(batch)
    }

    /// Removes meta `key` (a one-operation batch).
    fn meta_delete(&self, key: Bytes) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        batch.meta_delete(key);
        self.write(batch)
    }
}

/// Whether `key` lies in `[start, end)` (empty `end` = unbounded).
pub(crate) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Up to `limit` items, stopping before their `size`s pass `bytes_max` once one is taken;
/// the flag: stopped for the bytes with an item left. Items are converted only when taken.
pub(crate) fn take_within<T, U>(
    items: impl Iterator<Item = Result<T, KvError>>,
    limit: usize,
    bytes_max: usize,
    size: impl Fn(&T) -> usize,
    convert: impl Fn(T) -> U,
) -> Result<(Vec<U>, bool), KvError> {
    let mut taken = Vec::with_capacity(limit.min(1024));
    let mut bytes = 0usize;
    for item in items.take(limit) {
        let item = item?;
        let item_bytes = size(&item);
        if !taken.is_empty() && bytes.saturating_add(item_bytes) > bytes_max {
            return Ok((taken, true));
        }
        bytes = bytes.saturating_add(item_bytes);
        taken.push(convert(item));
    }
    Ok((taken, false))
}

/// The checks every engine's scan starts with.
pub(crate) fn check_scan(start: &[u8], end: &[u8], limit: usize) -> Result<(), KvError> {
    crate::limits::check_range(start, end)?;
    crate::limits::check_scan_limit(limit)
}

/// Refuses a batch holding an empty key (fjall asserts on one: a panic, not an error), a
/// key or value over the limits or an invalid range, before anything is written.
pub(crate) fn check_batch(batch: &WriteBatch) -> Result<(), KvError> {
    use crate::limits::{check_key, check_range, check_value, check_write_key};
    for op in batch.ops() {
        match op {
            // A part of an entry's watch history may hold one change of the largest key
            // and value with its framing (`crate::limits::WATCH_PART_BYTES_MAX`).
            WriteOp::MetaPut { key, value } if key.starts_with(meta_keys::WATCH_HISTORY_PREFIX) => {
                check_write_key(key)?;
                if value.len() > crate::limits::WATCH_PART_BYTES_MAX {
                    return Err(KvError::ValueTooLarge {
                        size: value.len(),
                        limit: crate::limits::WATCH_PART_BYTES_MAX,
                    });
                }
            }
            WriteOp::Put { key, value } | WriteOp::MetaPut { key, value } => {
                check_write_key(key)?;
                check_value(value)?;
            }
            WriteOp::Delete { key } | WriteOp::MetaDelete { key } => check_write_key(key)?,
            WriteOp::DeleteRange { start, end } => {
                check_key(start)?;
                check_key(end)?;
                check_range(start, end)?;
            }
        }
    }
    Ok(())
}

/// The bounds of `[start, end)` for `BTreeMap::range` and fjall's `range`.
pub(crate) fn bounds<'a>(
    start: &'a [u8],
    end: &'a [u8],
) -> (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>) {
    use std::ops::Bound;
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), upper)
}
