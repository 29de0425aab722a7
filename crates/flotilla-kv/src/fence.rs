//! Fenced writes (Kleppmann's storage-side check, which etcd's lock lacks): a write may
//! carry a lock name and the fencing token its writer holds (`flotilla lock acquire`), and
//! the region holding the written key refuses it if it already accepted a write with a
//! higher token for that lock. A late writer whose lease ended (paused, partitioned) is
//! refused, not merely detectable.
//!
//! Each region keeps, per lock name, the highest token it accepted: meta key `fence/` +
//! region id (8 bytes, big endian) + lock name, value the token (8 bytes, big endian). A
//! split copies the parent's records to the child (both halves refuse what the parent
//! refused); a merge gives the target the maximum of both; a region snapshot carries its
//! records (file `fences`).
//!
//! **Bound.** A region keeps at most [`FENCES_PER_REGION_MAX`] records; a fenced write
//! naming another lock there is refused (`FenceTableFull`), changing nothing. Records are
//! never dropped while their region lives: dropping one would let a write with an older
//! token through again, which is the one thing fencing exists to prevent.
//!
//! Owns: the records and the check. Must never: accept a fenced write whose token is below
//! one the region accepted for the same lock, or lose a record across a split, merge or
//! snapshot.

use bytes::Bytes;

use crate::engine::export::{ExportReader, ExportWriter};
use crate::engine::{meta_keys, KvEngine, WriteBatch};
use crate::error::KvError;
use crate::ids::RegionId;

/// Name of the snapshot file holding a region's fence records.
pub const SNAPSHOT_FENCES_FILE: &str = "fences";
/// Most lock names one region keeps a fence record for.
pub const FENCES_PER_REGION_MAX: usize = 4096;
/// The error kind of a fenced write refused for an older token.
pub const FENCED_KIND: &str = "Fenced";
/// Prefix of a [`FENCED_KIND`] refusal's text.
pub const FENCED_PREFIX: &str = "Fenced: ";
/// The error kind of a fenced write refused because the region's records are full.
pub const FULL_KIND: &str = "FenceTableFull";
/// Prefix of a [`FULL_KIND`] refusal's text.
pub const FULL_PREFIX: &str = "FenceTableFull: ";

fn region_prefix(region: RegionId) -> Vec<u8> {
    let mut out = Vec::with_capacity(meta_keys::FENCE_PREFIX.len() + 8);
    out.extend_from_slice(meta_keys::FENCE_PREFIX);
    out.extend_from_slice(&region.0.to_be_bytes());
    out
}

/// The meta key of `region`'s record for lock `lock`.
#[must_use]
pub fn record_key(region: RegionId, lock: &[u8]) -> Bytes {
    let mut out = region_prefix(region);
    out.extend_from_slice(lock);
    Bytes::from(out)
}

/// The token a record holds.
pub fn decode(value: &[u8]) -> Result<u64, KvError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| KvError::Corrupt(format!("fence record of {} bytes, expected 8", value.len())))
}

/// Every record of `region`: `(lock name, token)`, in name order.
pub fn records(engine: &dyn KvEngine, region: RegionId) -> Result<Vec<(Bytes, u64)>, KvError> {
    let prefix = region_prefix(region);
    let mut end = prefix.clone();
    // The prefix ends with the region id's bytes; the next id's prefix bounds it.
    let mut carry = true;
    for byte in end.iter_mut().rev().take(8) {
        if carry {
            let (next, overflow) = byte.overflowing_add(1);
            *byte = next;
            carry = overflow;
        }
    }
    if carry {
        end = {
            let mut past = meta_keys::FENCE_PREFIX.to_vec();
            if let Some(last) = past.last_mut() {
                *last += 1;
            }
            past
        };
    }
    let page = engine.meta_scan(&prefix, &end, FENCES_PER_REGION_MAX + 1)?;
    page.into_iter()
        .map(|(key, value)| Ok((key.slice(prefix.len()..), decode(&value)?)))
        .collect()
}

/// The refusal of a fenced write whose token is older than one accepted.
#[must_use]
pub fn fenced(region: RegionId, lock: &[u8], token: u64, accepted: u64) -> KvError {
    KvError::Node {
        kind: FENCED_KIND.into(),
        message: format!(
            "{FENCED_PREFIX}lock {}: token {token} is older than token {accepted}, which region \
             {region} already accepted a write with (the lock has had a newer holder)",
            crate::error::show(lock)
        ),
    }
}

/// The refusal of a fenced write naming a lock a full region keeps no record of.
#[must_use]
pub fn full(region: RegionId, lock: &[u8]) -> KvError {
    KvError::Node {
        kind: FULL_KIND.into(),
        message: format!(
            "{FULL_PREFIX}region {region} keeps fence records for {FENCES_PER_REGION_MAX} \
             locks already; a fenced write naming lock {} is refused",
            crate::error::show(lock)
        ),
    }
}

/// Adds to `batch` the copies of `from`'s records for `to` (a split's child), or for a
/// merge (`keep_max`) the maximum of each record of `from` and `to`'s own.
pub fn copy(
    engine: &dyn KvEngine,
    from: RegionId,
    to: RegionId,
    keep_max: bool,
    batch: &mut WriteBatch,
) -> Result<(), KvError> {
    let theirs = records(engine, from)?;
    if theirs.is_empty() {
        return Ok(());
    }
    let ours: std::collections::HashMap<Bytes, u64> = if keep_max {
        records(engine, to)?.into_iter().collect()
    } else {
        std::collections::HashMap::new()
    };
    for (lock, token) in theirs {
        let token = token.max(ours.get(&lock).copied().unwrap_or(0));
        batch.meta_put(
            record_key(to, &lock),
            Bytes::copy_from_slice(&token.to_be_bytes()),
        );
    }
    Ok(())
}

/// Writes `region`'s records to `out` (the snapshot file; keys: lock names).
pub fn export(
    engine: &dyn KvEngine,
    region: RegionId,
    out: &mut dyn std::io::Write,
) -> Result<u64, KvError> {
    let mut writer = ExportWriter::new(out, b"", b"")?;
    for (lock, token) in records(engine, region)? {
        if lock.is_empty() {
            return Err(KvError::Corrupt(format!(
                "region {region}: a fence record with an empty lock name"
            )));
        }
        writer.pair(&lock, &token.to_be_bytes())?;
    }
    writer.finish()
}

/// Adds to `batch` what replaces `region`'s records with those of `input` (a snapshot file,
/// read and checked in full first).
pub fn import(
    engine: &dyn KvEngine,
    region: RegionId,
    input: &mut dyn std::io::Read,
    batch: &mut WriteBatch,
) -> Result<u64, KvError> {
    let mut reader = ExportReader::new(input, b"", b"")?;
    let mut incoming = Vec::new();
    while let Some((lock, value)) = reader.next_pair()? {
        decode(&value)?;
        incoming.push((record_key(region, &lock), value));
    }
    if incoming.len() > FENCES_PER_REGION_MAX {
        return Err(KvError::Corrupt(format!(
            "region {region}: {} fence records, more than {FENCES_PER_REGION_MAX}",
            incoming.len()
        )));
    }
    for (lock, _) in records(engine, region)? {
        batch.meta_delete(record_key(region, &lock));
    }
    let count = incoming.len() as u64;
    for (key, value) in incoming {
        batch.meta_put(key, value);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;

    fn token(t: u64) -> Bytes {
        Bytes::copy_from_slice(&t.to_be_bytes())
    }

    #[test]
    fn records_are_per_region_copied_maxed_and_carried() {
        let engine = MemoryEngine::new();
        let (a, b, c) = (RegionId(1), RegionId(2), RegionId(u64::MAX));
        engine.meta_put(record_key(a, b"L"), token(5)).unwrap();
        engine.meta_put(record_key(a, b"M"), token(2)).unwrap();
        engine.meta_put(record_key(b, b"L"), token(9)).unwrap();
        engine.meta_put(record_key(c, b"Z"), token(1)).unwrap();
        assert_eq!(
            records(&engine, a).unwrap(),
            vec![(Bytes::from_static(b"L"), 5), (Bytes::from_static(b"M"), 2)]
        );
        assert_eq!(records(&engine, c).unwrap().len(), 1);
        // A merge of a into b keeps the maximum of each.
        let mut batch = WriteBatch::new();
        copy(&engine, a, b, true, &mut batch).unwrap();
        engine.write(batch).unwrap();
        assert_eq!(
            records(&engine, b).unwrap(),
            vec![(Bytes::from_static(b"L"), 9), (Bytes::from_static(b"M"), 2)]
        );
        // A snapshot of b into another engine replaces what it had.
        let mut file = Vec::new();
        assert_eq!(export(&engine, b, &mut file).unwrap(), 2);
        let other = MemoryEngine::new();
        other.meta_put(record_key(b, b"stale"), token(1)).unwrap();
        let mut batch = WriteBatch::new();
        import(&other, b, &mut file.as_slice(), &mut batch).unwrap();
        other.write(batch).unwrap();
        assert_eq!(records(&other, b).unwrap(), records(&engine, b).unwrap());
        assert!(decode(&[1, 2]).is_err());
    }
}
