//! Fenced writes (Kleppmann's storage-side check, which etcd's lock lacks): a write may
//! carry a lock name and the fencing token its writer holds (`flotilla lock acquire`), and
//! the region holding the written key refuses it if it already accepted a write with a
//! higher token for that lock. A late writer whose lease ended (paused, partitioned) is
//! refused, not merely detectable.
//!
//! Each region keeps, per lock name, the highest token it accepted: meta key `fence/` +
//! region id (8 bytes, big endian) + lock name, value the token (8 bytes, big endian); and
//! a **floor** under the empty name (no lock has it): a fenced write naming a lock the
//! region keeps no record of is refused below the floor. A lock's threshold in a region is
//! its record, or the floor when it has none; a write below the threshold is refused.
//!
//! **Bound, and the rule by which records are dropped.** A region keeps at most
//! [`FENCES_PER_REGION_MAX`] records. A fenced write naming another lock when the table is
//! full drops the record with the least token (the oldest, since a new holder's token is
//! at least the leader's wall time in ms, `crate::lock`) and raises the floor to that
//! token. Safe because no threshold ever goes down: the dropped lock's threshold becomes
//! the floor, at least its record; every other lock's is its record or a higher floor. So
//! a write the region refused before a drop is refused after it. The cost is liveness
//! only: a holder whose token is older than the floor (it held one token while thousands
//! of newer locks wrote to the region) is refused `Fenced` and must acquire the lock again,
//! which gives it a token of "now".
//!
//! A split copies the parent's records and floor to the child (both halves refuse what the
//! parent refused); a merge gives every lock the higher of its two thresholds and the
//! target the higher floor, dropping the oldest records again if the two tables together
//! hold more than the bound. A region snapshot carries its records (file `fences`) and its
//! floor (file `fence-floor`).
//!
//! Owns: the records, the floor and the check. Must never: lower a lock's threshold in a
//! region, by a drop, split, merge or snapshot.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::engine::export::{ExportReader, ExportWriter};
use crate::engine::{meta_keys, KvEngine, WriteBatch};
use crate::error::KvError;
use crate::ids::RegionId;

/// Name of the snapshot file holding a region's fence records.
pub const SNAPSHOT_FENCES_FILE: &str = "fences";
/// Name of the snapshot file holding a region's fence floor (8 bytes, big endian; absent:
/// 0).
pub const SNAPSHOT_FENCE_FLOOR_FILE: &str = "fence-floor";
/// Most lock names one region keeps a fence record for.
pub const FENCES_PER_REGION_MAX: usize = 4096;
/// The error kind of a fenced write refused for an older token.
pub const FENCED_KIND: &str = "Fenced";
/// Prefix of a [`FENCED_KIND`] refusal's text.
pub const FENCED_PREFIX: &str = "Fenced: ";

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

/// The meta key of `region`'s floor (the record of the empty name).
#[must_use]
pub fn floor_key(region: RegionId) -> Bytes {
    Bytes::from(region_prefix(region))
}

/// The token a record (or the floor) holds.
pub fn decode(value: &[u8]) -> Result<u64, KvError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| KvError::Corrupt(format!("fence record of {} bytes, expected 8", value.len())))
}

/// The bytes of a token as a record holds it.
#[must_use]
pub fn encode(token: u64) -> Bytes {
    Bytes::copy_from_slice(&token.to_be_bytes())
}

/// Every record of `region`: `(lock name, token)`, in name order (not the floor).
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
    // The floor comes first (the empty name); one more than the bound shows an overflow.
    let page = engine.meta_scan(&prefix, &end, FENCES_PER_REGION_MAX + 2)?;
    page.into_iter()
        .filter(|(key, _)| key.len() > prefix.len())
        .map(|(key, value)| Ok((key.slice(prefix.len()..), decode(&value)?)))
        .collect()
}

/// `region`'s floor (0: none).
pub fn floor(engine: &dyn KvEngine, region: RegionId) -> Result<u64, KvError> {
    engine
        .meta_get(&floor_key(region))?
        .map_or(Ok(0), |value| decode(&value))
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

/// The refusal of a fenced write whose token is below the floor of a region that keeps no
/// record of its lock.
#[must_use]
pub fn below_floor(region: RegionId, lock: &[u8], token: u64, floor: u64) -> KvError {
    KvError::Node {
        kind: FENCED_KIND.into(),
        message: format!(
            "{FENCED_PREFIX}lock {}: token {token} is older than region {region}'s fence floor \
             {floor} (the region dropped the records of its oldest tokens to keep \
             {FENCES_PER_REGION_MAX}); acquire the lock again for a newer token",
            crate::error::show(lock)
        ),
    }
}

/// Drops from `table` the records with the least tokens (then names) until at most `keep`
/// remain: the names dropped, and the floor raised to their highest token.
pub fn drop_oldest(table: &mut BTreeMap<Bytes, u64>, keep: usize, floor: u64) -> (Vec<Bytes>, u64) {
    if table.len() <= keep {
        return (Vec::new(), floor);
    }
    let mut by_age: Vec<(u64, Bytes)> = table.iter().map(|(l, t)| (*t, l.clone())).collect();
    by_age.sort();
    let mut floor = floor;
    let mut dropped = Vec::with_capacity(table.len() - keep);
    for (token, lock) in by_age.into_iter().take(table.len() - keep) {
        floor = floor.max(token);
        table.remove(&lock);
        dropped.push(lock);
    }
    (dropped, floor)
}

/// Adds to `batch` the copies of `from`'s records and floor for `to` (a split's child), or
/// for a merge (`keep_max`) what gives `to` every lock's higher threshold of the two and
/// the higher floor, within the bound.
pub fn copy(
    engine: &dyn KvEngine,
    from: RegionId,
    to: RegionId,
    keep_max: bool,
    batch: &mut WriteBatch,
) -> Result<(), KvError> {
    let theirs: BTreeMap<Bytes, u64> = records(engine, from)?.into_iter().collect();
    let their_floor = floor(engine, from)?;
    let (ours, our_floor) = if keep_max {
        (
            records(engine, to)?.into_iter().collect(),
            floor(engine, to)?,
        )
    } else {
        (BTreeMap::new(), 0)
    };
    let mut table = BTreeMap::new();
    for lock in theirs.keys().chain(ours.keys()) {
        let threshold = |records: &BTreeMap<Bytes, u64>, floor: u64| {
            records.get(lock).copied().unwrap_or(floor)
        };
        let token = threshold(&theirs, their_floor).max(threshold(&ours, our_floor));
        table.insert(lock.clone(), token);
    }
    let (dropped, merged_floor) = drop_oldest(
        &mut table,
        FENCES_PER_REGION_MAX,
        their_floor.max(our_floor),
    );
    for lock in dropped {
        batch.meta_delete(record_key(to, &lock));
    }
    for (lock, token) in table {
        batch.meta_put(record_key(to, &lock), encode(token));
    }
    if merged_floor > 0 {
        batch.meta_put(floor_key(to), encode(merged_floor));
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
        writer.pair(&lock, &token.to_be_bytes())?;
    }
    writer.finish()
}

/// Adds to `batch` what replaces `region`'s records with those of `input` (a snapshot file,
/// read and checked in full first) and its floor with `floor` (0: none).
pub fn import(
    engine: &dyn KvEngine,
    region: RegionId,
    input: &mut dyn std::io::Read,
    floor: u64,
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
    if floor > 0 {
        batch.meta_put(floor_key(region), encode(floor));
    } else {
        batch.meta_delete(floor_key(region));
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
        import(&other, b, &mut file.as_slice(), 0, &mut batch).unwrap();
        other.write(batch).unwrap();
        assert_eq!(records(&other, b).unwrap(), records(&engine, b).unwrap());
        assert!(decode(&[1, 2]).is_err());
    }

    #[test]
    fn the_oldest_records_are_dropped_for_a_floor_that_only_rises() {
        let mut table: BTreeMap<Bytes, u64> = [("a", 7), ("b", 3), ("c", 9), ("d", 3)]
            .into_iter()
            .map(|(l, t)| (Bytes::from_static(l.as_bytes()), t))
            .collect();
        assert_eq!(drop_oldest(&mut table, 4, 1), (Vec::new(), 1));
        let (dropped, floor) = drop_oldest(&mut table, 2, 1);
        assert_eq!(
            dropped,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"d")]
        );
        assert_eq!((floor, table.len()), (3, 2));
        // A floor already higher stays.
        assert_eq!(drop_oldest(&mut table, 1, 50).1, 50);
    }

    #[test]
    fn a_merge_keeps_every_locks_higher_threshold_and_a_split_copies_the_floor() {
        let engine = MemoryEngine::new();
        let (target, source, child) = (RegionId(1), RegionId(2), RegionId(3));
        // The target knows L at 5 and has no floor; the source has no record of L but a
        // floor of 8 (it dropped L's record, or one older): the merged region must refuse
        // L's 5 to 7 as the source did.
        engine.meta_put(record_key(target, b"L"), token(5)).unwrap();
        engine
            .meta_put(record_key(source, b"M"), token(12))
            .unwrap();
        engine.meta_put(floor_key(source), token(8)).unwrap();
        let mut batch = WriteBatch::new();
        copy(&engine, source, target, true, &mut batch).unwrap();
        engine.write(batch).unwrap();
        assert_eq!(
            records(&engine, target).unwrap(),
            vec![
                (Bytes::from_static(b"L"), 8),
                (Bytes::from_static(b"M"), 12)
            ]
        );
        assert_eq!(floor(&engine, target).unwrap(), 8);
        // A split's child gets the records and the floor.
        let mut batch = WriteBatch::new();
        copy(&engine, target, child, false, &mut batch).unwrap();
        engine.write(batch).unwrap();
        assert_eq!(
            records(&engine, child).unwrap(),
            records(&engine, target).unwrap()
        );
        assert_eq!(floor(&engine, child).unwrap(), 8);
        // A snapshot import sets the floor it carries (and clears one when it carries none).
        let mut file = Vec::new();
        export(&engine, child, &mut file).unwrap();
        let mut batch = WriteBatch::new();
        import(&engine, child, &mut file.as_slice(), 0, &mut batch).unwrap();
        engine.write(batch).unwrap();
        assert_eq!(floor(&engine, child).unwrap(), 0);
    }

    #[test]
    fn a_merge_of_two_full_tables_keeps_the_bound() {
        let engine = MemoryEngine::new();
        let (target, source) = (RegionId(1), RegionId(2));
        for i in 0..FENCES_PER_REGION_MAX as u64 {
            engine
                .meta_put(
                    record_key(target, format!("t{i}").as_bytes()),
                    token(100 + 2 * i),
                )
                .unwrap();
            engine
                .meta_put(
                    record_key(source, format!("s{i}").as_bytes()),
                    token(101 + 2 * i),
                )
                .unwrap();
        }
        let mut batch = WriteBatch::new();
        copy(&engine, source, target, true, &mut batch).unwrap();
        engine.write(batch).unwrap();
        let kept = records(&engine, target).unwrap();
        assert_eq!(kept.len(), FENCES_PER_REGION_MAX);
        // The older half went into the floor: every kept token is above it.
        let floor = floor(&engine, target).unwrap();
        assert_eq!(floor, 100 + FENCES_PER_REGION_MAX as u64 - 1);
        assert!(kept.iter().all(|(_, t)| *t > floor));
    }
}
