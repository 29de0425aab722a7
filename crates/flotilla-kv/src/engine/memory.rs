//! [`MemoryEngine`]: both key spaces in `BTreeMap`s under one lock, for tests and the
//! simulator. Nothing survives the process.
//!
//! Owns: atomicity by holding the write lock for a whole batch or import. Must never: do
//! I/O while holding the lock (exports copy the range out first; imports verify the whole
//! input before taking it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::export::{ExportReader, ExportWriter};
use super::{
    bounds, check_batch, check_scan, take_within, KvEngine, RangeSize, WriteBatch, WriteOp,
};
use crate::error::KvError;

type Space = BTreeMap<Bytes, Bytes>;

#[derive(Debug, Default)]
struct Spaces {
    data: Space,
    meta: Space,
}

/// An in-memory [`KvEngine`].
#[derive(Debug, Default)]
pub struct MemoryEngine {
    spaces: RwLock<Spaces>,
}

impl MemoryEngine {
    /// An empty engine.
    #[must_use]
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Spaces>, KvError> {
        self.spaces.read().map_err(|_| poisoned())
    }

    fn write_lock(&self) -> Result<RwLockWriteGuard<'_, Spaces>, KvError> {
        self.spaces.write().map_err(|_| poisoned())
    }
}

fn poisoned() -> KvError {
    KvError::Engine("memory engine lock poisoned: a writer panicked mid-batch".into())
}

fn scan_space(
    space: &Space,
    start: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
) -> Vec<(Bytes, Bytes)> {
    let range = space.range::<[u8], _>(bounds(start, end));
    let pair = |(k, v): (&Bytes, &Bytes)| (k.clone(), v.clone());
    if reverse {
        range.rev().take(limit).map(pair).collect()
    } else {
        range.take(limit).map(pair).collect()
    }
}

fn remove_range(space: &mut Space, start: &[u8], end: &[u8]) {
    let doomed: Vec<Bytes> = space
        .range::<[u8], _>(bounds(start, end))
        .map(|(k, _)| k.clone())
        .collect();
    for key in doomed {
        space.remove(&key);
    }
}

impl KvEngine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        Ok(self.read()?.data.get(key).cloned())
    }

    fn multi_get(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, KvError> {
        crate::limits::check_batch_len(keys.len())?;
        let spaces = self.read()?;
        Ok(keys.iter().map(|k| spaces.data.get(k).cloned()).collect())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        check_scan(start, end, limit)?;
        Ok(scan_space(&self.read()?.data, start, end, limit, reverse))
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
        let spaces = self.read()?;
        let range = spaces.data.range::<[u8], _>(bounds(start, end)).map(Ok);
        let size = |(k, v): &(&Bytes, &Bytes)| k.len() + v.len();
        let pair = |(k, v): (&Bytes, &Bytes)| (k.clone(), v.clone());
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
        let spaces = self.read()?;
        let range = spaces
            .data
            .range::<[u8], _>(bounds(start, end))
            .map(|(k, _)| Ok(k));
        let size = |k: &&Bytes| k.len();
        let key = |k: &Bytes| k.clone();
        if reverse {
            take_within(range.rev(), limit, bytes_max, size, key)
        } else {
            take_within(range, limit, bytes_max, size, key)
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        check_batch(&batch)?;
        let mut spaces = self.write_lock()?;
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { key, value } => {
                    spaces.data.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    spaces.data.remove(&key);
                }
                WriteOp::DeleteRange { start, end } => remove_range(&mut spaces.data, &start, &end),
                WriteOp::MetaPut { key, value } => {
                    spaces.meta.insert(key, value);
                }
                WriteOp::MetaDelete { key } => {
                    spaces.meta.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<RangeSize, KvError> {
        crate::limits::check_range(start, end)?;
        let spaces = self.read()?;
        let mut size = RangeSize::default();
        for (key, value) in spaces.data.range::<[u8], _>(bounds(start, end)) {
            size.keys += 1;
            size.bytes += (key.len() + value.len()) as u64;
        }
        Ok(size)
    }

    fn middle_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Bytes>, KvError> {
        let total = self.approximate_size(start, end)?.bytes;
        let spaces = self.read()?;
        let pairs = spaces
            .data
            .range::<[u8], _>(bounds(start, end))
            .map(|(key, value)| Ok((key, (key.len() + value.len()) as u64)));
        super::pick_middle(total, pairs)
    }

    fn export_range(&self, start: &[u8], end: &[u8], out: &mut dyn Write) -> Result<u64, KvError> {
        crate::limits::check_range(start, end)?;
        // Copy out (reference counts only) so no I/O happens under the lock.
        let pairs = scan_space(&self.read()?.data, start, end, usize::MAX, false);
        let mut writer = ExportWriter::new(out, start, end)?;
        for (key, value) in &pairs {
            writer.pair(key, value)?;
        }
        writer.finish()
    }

    fn import_range(&self, start: &[u8], end: &[u8], input: &mut dyn Read) -> Result<u64, KvError> {
        crate::limits::check_range(start, end)?;
        // Verify everything before touching the map: on error nothing changed.
        let mut reader = ExportReader::new(input, start, end)?;
        let mut pairs = Vec::new();
        while let Some(pair) = reader.next_pair()? {
            pairs.push(pair);
        }
        let mut spaces = self.write_lock()?;
        remove_range(&mut spaces.data, start, end);
        let count = pairs.len() as u64;
        spaces.data.extend(pairs);
        Ok(count)
    }

    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        Ok(self.read()?.meta.get(key).cloned())
    }

    fn meta_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        check_scan(start, end, limit)?;
        Ok(scan_space(&self.read()?.meta, start, end, limit, false))
    }
}
