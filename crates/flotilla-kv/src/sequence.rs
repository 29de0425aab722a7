//! Sequences (RheaKV's `getSequence`): a counter named by a key, in a key space of its own
//! in the engine's meta space (`seq/` + the key), so a `get` of the key never sees it. A
//! sequence belongs to the region holding its key: it splits and merges with the range
//! without being copied (both halves of a split, and both sides of a merge, are on the same
//! store), and a region snapshot carries the sequences of its range in a file of its own.
//!
//! Owns: the record's key and value (8 bytes, big endian: the next value handed out), the
//! snapshot file, and the rule that a range is never handed out twice: each
//! `SequenceNext` is a log entry, applied in order by every replica, and a range whose end
//! would pass `u64::MAX` is refused. Must never: hand out a value twice, or move a counter
//! back except by an explicit reset.

use bytes::Bytes;

use crate::engine::export::{ExportReader, ExportWriter};
use crate::engine::{meta_keys, KvEngine, WriteBatch};
use crate::error::KvError;
use crate::region::Region;

/// Name of the snapshot file holding a region's sequences, in the range export format
/// (keys: the sequences' names; values: their next values).
pub const SNAPSHOT_SEQUENCES_FILE: &str = "sequences";

/// Most sequence records read from the engine at a time.
const PAGE: usize = 1024;

/// `prefix` followed by `name`: the meta key of a record of a key space.
pub(crate) fn prefixed(prefix: &[u8], name: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + name.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(name);
    Bytes::from(out)
}

/// The meta key of the sequence named `key`.
#[must_use]
pub fn record_key(key: &[u8]) -> Bytes {
    prefixed(meta_keys::SEQUENCE_PREFIX, key)
}

/// The next value a record holds (a missing record: 0).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<u64, KvError> {
    match value {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes)
            .map(u64::from_be_bytes)
            .map_err(|_| {
                KvError::Corrupt(format!(
                    "sequence {}: a record of {} bytes, expected 8",
                    crate::error::show(key),
                    bytes.len()
                ))
            }),
    }
}

/// The meta-key range holding the records under `prefix` of `[start, end)` (an empty
/// `end`: to the end of the key space).
fn record_range(prefix: &[u8], start: &[u8], end: &[u8]) -> (Bytes, Bytes) {
    let with = |key: &[u8]| prefixed(prefix, key);
    let to = if end.is_empty() {
        let mut past = prefix.to_vec();
        if let Some(last) = past.last_mut() {
            *last += 1;
        }
        Bytes::from(past)
    } else {
        with(end)
    };
    (with(start), to)
}

/// A check of one record of a key space: its name and value.
pub(crate) type RecordCheck = fn(&[u8], &[u8]) -> Result<(), KvError>;

/// Every record under `prefix` named by a key of `region`, in key order: `(name, value)`,
/// each checked.
fn scan(
    engine: &dyn KvEngine,
    region: &Region,
    prefix: &[u8],
    check: RecordCheck,
) -> Result<Vec<(Bytes, Bytes)>, KvError> {
    let (mut from, to) = record_range(prefix, &region.start, &region.end);
    let mut out = Vec::new();
    loop {
        let page = engine.meta_scan(&from, &to, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            let mut next = last.to_vec();
            next.push(0);
            from = Bytes::from(next);
        }
        for (key, value) in page {
            let name = key.slice(prefix.len()..);
            check(&name, &value)?;
            out.push((name, value));
        }
        if !full {
            return Ok(out);
        }
    }
}

/// A key space of meta records named by data keys (sequences, locks, leases, lease marks):
/// its prefix and the check of one record; a region snapshot carries the records named by
/// the region's keys, in a file of their own.
pub(crate) struct KeySpace {
    /// The meta-key prefix.
    pub prefix: &'static [u8],
    /// The check of one record.
    pub check: RecordCheck,
}

impl KeySpace {
    /// Writes the space's records of `region` to `out` (a snapshot file); how many.
    pub(crate) fn export(
        &self,
        engine: &dyn KvEngine,
        region: &Region,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, KvError> {
        export_space(engine, region, self.prefix, self.check, out)
    }

    /// Adds to `batch` what replaces the space's records of `region` with `input`'s.
    pub(crate) fn import(
        &self,
        engine: &dyn KvEngine,
        region: &Region,
        input: &mut dyn std::io::Read,
        batch: &mut WriteBatch,
    ) -> Result<u64, KvError> {
        import_space(engine, region, self.prefix, self.check, input, batch)
    }
}

/// Writes the records under `prefix` of `region` to `out` (a snapshot file in the range
/// export format, keys: the names); answers how many.
pub(crate) fn export_space(
    engine: &dyn KvEngine,
    region: &Region,
    prefix: &[u8],
    check: RecordCheck,
    out: &mut dyn std::io::Write,
) -> Result<u64, KvError> {
    let mut writer = ExportWriter::new(out, &region.start, &region.end)?;
    for (name, value) in scan(engine, region, prefix, check)? {
        writer.pair(&name, &value)?;
    }
    writer.finish()
}

/// Adds to `batch` what replaces the records under `prefix` of `region` with those of
/// `input` (a snapshot file, read and checked in full before anything is added).
pub(crate) fn import_space(
    engine: &dyn KvEngine,
    region: &Region,
    prefix: &[u8],
    check: RecordCheck,
    input: &mut dyn std::io::Read,
    batch: &mut WriteBatch,
) -> Result<u64, KvError> {
    let mut reader = ExportReader::new(input, &region.start, &region.end)?;
    let mut incoming = Vec::new();
    while let Some((name, value)) = reader.next_pair()? {
        check(&name, &value)?;
        incoming.push((prefixed(prefix, &name), value));
    }
    for (name, _) in scan(engine, region, prefix, check)? {
        batch.meta_delete(prefixed(prefix, &name));
    }
    let count = incoming.len() as u64;
    for (key, value) in incoming {
        batch.meta_put(key, value);
    }
    Ok(count)
}

fn check_sequence(name: &[u8], value: &[u8]) -> Result<(), KvError> {
    decode(name, Some(value)).map(|_| ())
}

/// Writes the sequences of `region` to `out` (the snapshot file); answers how many.
pub fn export(
    engine: &dyn KvEngine,
    region: &Region,
    out: &mut dyn std::io::Write,
) -> Result<u64, KvError> {
    export_space(
        engine,
        region,
        meta_keys::SEQUENCE_PREFIX,
        check_sequence,
        out,
    )
}

/// Adds to `batch` what replaces the sequences of `region` with those of `input` (a
/// snapshot file, verified here in full before anything is added): the current records
/// deleted, the snapshot's written.
pub fn import(
    engine: &dyn KvEngine,
    region: &Region,
    input: &mut dyn std::io::Read,
    batch: &mut WriteBatch,
) -> Result<u64, KvError> {
    import_space(
        engine,
        region,
        meta_keys::SEQUENCE_PREFIX,
        check_sequence,
        input,
        batch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;
    use crate::ids::{Epoch, RegionId};

    fn region(start: &'static [u8], end: &'static [u8]) -> Region {
        Region::new(
            RegionId(1),
            Bytes::from_static(start),
            Bytes::from_static(end),
            Epoch::new(1, 1),
        )
        .unwrap()
    }

    #[test]
    fn a_region_exports_and_imports_only_its_own_sequences() {
        let engine = MemoryEngine::new();
        for (name, value) in [(&b"a"[..], 5u64), (b"m", 7), (b"z", 9)] {
            engine
                .meta_put(
                    record_key(name),
                    Bytes::copy_from_slice(&value.to_be_bytes()),
                )
                .unwrap();
        }
        let left = region(b"", b"n");
        let mut file = Vec::new();
        assert_eq!(export(&engine, &left, &mut file).unwrap(), 2);
        // Into another engine holding a stale sequence in the range and one outside it.
        let other = MemoryEngine::new();
        other
            .meta_put(record_key(b"b"), Bytes::from_static(&[0; 8]))
            .unwrap();
        other
            .meta_put(
                record_key(b"x"),
                Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1]),
            )
            .unwrap();
        let mut batch = WriteBatch::new();
        assert_eq!(
            import(&other, &left, &mut file.as_slice(), &mut batch).unwrap(),
            2
        );
        other.write(batch).unwrap();
        let read = |name: &[u8]| {
            decode(name, other.meta_get(&record_key(name)).unwrap().as_deref()).unwrap()
        };
        assert_eq!(
            (read(b"a"), read(b"m"), read(b"b"), read(b"x")),
            (5, 7, 0, 1)
        );
        // A damaged file changes nothing.
        let mut damaged = file.clone();
        let last = damaged.len() - 6;
        damaged[last] ^= 1;
        let mut batch = WriteBatch::new();
        assert!(import(&other, &left, &mut damaged.as_slice(), &mut batch).is_err());
        assert!(batch.is_empty());
        assert!(decode(b"q", Some(&[1, 2, 3])).is_err());
    }
}
