//! Leases in etcd's shape: a time to live shared by keys, kept alive by its owner, whose
//! end deletes them all.
//!
//! **Where a lease lives.** A lease id names a key of its own, [`route_key`] (the id's 8
//! bytes, big endian), and the lease belongs to the region holding that key, like a
//! sequence or a lock: its record is in the engine's meta space (`lease/` + the route
//! key), decided by that region's log (its *home*), carried by the home's snapshots (file
//! `leases`). The record keeps the lease's time to live, its deadline on the lease's own
//! clock (time carried in the log, as for locks: never a wall clock), and the keys
//! attached to it, wherever they are. A key attached to a lease is marked in its own region
//! (meta `lease-key/` + the key: the lease id), so a key's region knows which lease it
//! follows and answers it with the value; splits and merges need no copy, region
//! snapshots carry the marks (file `lease-keys`).
//!
//! **Keys in several regions.** Attaching is two steps: the home records the key
//! (`Attach`, refused for a lease that ended), then the key's region writes the value with
//! the mark. A reader sees a marked key only while its lease is alive at the home *after*
//! the read (a status through the home's log: the leader's time): a lease never comes back
//! once ended, so alive then means alive at the read. When a lease ends (revoked, or its
//! deadline passed on the home's clock), the store leading the home deletes its keys in
//! their regions in bounded batches (`LeaseDelete`: only if the key still follows that
//! lease), then forgets them at the home, and drops the record once none is left.
//!
//! Owns: the record's format and the rules of grant, keep-alive, revoke, attach, status,
//! expiry and forget (pure: [`apply`]). Must never: let a lease that ended come back, or
//! make a lease end before its deadline on its clock.

use bytes::Bytes;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::engine::{meta_keys, KvEngine};
use crate::error::KvError;
use crate::region::Region;

/// Name of the snapshot file holding the lease records whose route keys a region holds.
pub const SNAPSHOT_LEASES_FILE: &str = "leases";
/// Name of the snapshot file holding the lease marks of a region's keys.
pub const SNAPSHOT_LEASE_KEYS_FILE: &str = "lease-keys";
/// Shortest time to live.
pub const TTL_MS_MIN: u64 = 1_000;
/// Longest time to live (one day).
pub const TTL_MS_MAX: u64 = 86_400_000;
/// Most keys attached to one lease.
pub const KEYS_PER_LEASE_MAX: usize = 1_000;
/// Most bytes of keys attached to one lease.
pub const KEY_BYTES_PER_LEASE_MAX: usize = 256 * 1024;
/// Keys deleted per entry when a lease ended.
pub const DELETE_BATCH: usize = 128;
/// The error kind of an operation on a lease that does not exist or ended.
pub const NOT_FOUND_KIND: &str = "LeaseNotFound";
/// Prefix of a [`NOT_FOUND_KIND`] refusal's text.
pub const NOT_FOUND_PREFIX: &str = "LeaseNotFound: ";
const RECORD_VERSION: u8 = 1;

/// The key naming lease `id` (the region holding it is the lease's home).
#[must_use]
pub fn route_key(id: u64) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

/// The lease a route key names (its 8 bytes, big endian; anything else: 0, no lease).
#[must_use]
pub fn id_of(route: &[u8]) -> u64 {
    <[u8; 8]>::try_from(route).map_or(0, u64::from_be_bytes)
}

/// The meta key of lease `id`'s record.
#[must_use]
pub fn record_key(id: u64) -> Bytes {
    crate::sequence::prefixed(meta_keys::LEASE_PREFIX, &route_key(id))
}

/// The meta key of the mark of data key `key` (the lease it follows).
#[must_use]
pub fn mark_key(key: &[u8]) -> Bytes {
    crate::sequence::prefixed(meta_keys::LEASE_KEY_PREFIX, key)
}

/// The lease a mark names.
pub fn decode_mark(value: &[u8]) -> Result<u64, KvError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| KvError::Corrupt(format!("lease mark of {} bytes, expected 8", value.len())))
}

/// Refuses lease id 0 (etcd's "let the server choose").
pub fn check_id(id: u64) -> Result<(), KvError> {
    if id == 0 {
        return Err(KvError::Refused("lease id 0 is not a lease".into()));
    }
    Ok(())
}

/// A lease's durable state, at its home.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The time to live it was granted with.
    pub ttl_ms: u64,
    /// The lease's clock: the largest time any of its entries carried.
    pub clock_ms: u64,
    /// When it ends, on its clock.
    pub deadline_ms: u64,
    /// Ended (revoked, or expired): its keys are being deleted.
    pub ended: bool,
    /// The keys attached, in order of attachment.
    pub keys: Vec<Bytes>,
}

impl LeaseRecord {
    fn alive_at(&self, clock: u64) -> bool {
        !self.ended && clock < self.deadline_ms
    }

    /// The encoded record.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let key_bytes: usize = self.keys.iter().map(|k| k.len() + 4).sum();
        let mut w = FieldWriter::with_capacity(40 + key_bytes);
        w.u8(RECORD_VERSION);
        w.u64(self.ttl_ms);
        w.u64(self.clock_ms);
        w.u64(self.deadline_ms);
        w.u8(u8::from(self.ended));
        w.u64(self.keys.len() as u64);
        for key in &self.keys {
            w.bytes(key);
        }
        w.finish()
    }

    /// Decodes [`LeaseRecord::encode`]'s output, refusing anything else.
    pub fn decode(data: &[u8]) -> Result<LeaseRecord, KvError> {
        let mut r = FieldReader::new(data, "lease record");
        let version = r.u8("format version")?;
        if version != RECORD_VERSION {
            return Err(KvError::Corrupt(format!(
                "lease record: format version {version}, expected {RECORD_VERSION}"
            )));
        }
        let ttl_ms = r.u64("ttl")?;
        let clock_ms = r.u64("clock")?;
        let deadline_ms = r.u64("deadline")?;
        let ended = match r.u8("ended")? {
            0 => false,
            1 => true,
            other => {
                return Err(KvError::Corrupt(format!(
                    "lease record: ended flag {other}"
                )))
            }
        };
        let count = r.u64("key count")?;
        if count > KEYS_PER_LEASE_MAX as u64 {
            return Err(KvError::Corrupt(format!(
                "lease record: {count} keys, more than {KEYS_PER_LEASE_MAX}"
            )));
        }
        let mut keys = Vec::with_capacity(count as usize);
        for _ in 0..count {
            keys.push(r.bytes("key", crate::limits::KEY_BYTES_MAX)?);
        }
        r.finish()?;
        Ok(LeaseRecord {
            ttl_ms,
            clock_ms,
            deadline_ms,
            ended,
            keys,
        })
    }
}

/// An operation on a lease, decided by its home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// Creates the lease with this time to live (refused if the id is taken).
    Grant {
        /// 1 s to 1 day.
        ttl_ms: u64,
    },
    /// Its deadline becomes now + its time to live.
    KeepAlive,
    /// Ends it: its keys are deleted.
    Revoke,
    /// Records a key attached to it (before the key's region writes it).
    Attach {
        /// The data key.
        key: Bytes,
    },
    /// What is left of it (and its keys).
    Status,
    /// Ends it if its deadline passed (what the home's leader proposes for leases it
    /// finds past their deadline).
    Expire,
    /// Forgets keys of an ended lease once they are deleted; the record goes with the
    /// last.
    Forget {
        /// Keys deleted.
        keys: Vec<Bytes>,
    },
}

/// Checks an operation's fields (before it is proposed, and again when it applies).
pub fn validate(op: &LeaseOp) -> Result<(), KvError> {
    match op {
        LeaseOp::Grant { ttl_ms } if !(TTL_MS_MIN..=TTL_MS_MAX).contains(ttl_ms) => {
            Err(KvError::Refused(format!(
                "lease time to live of {ttl_ms} ms: must be {TTL_MS_MIN} to {TTL_MS_MAX}"
            )))
        }
        LeaseOp::Attach { key } => crate::limits::check_write_key(key),
        LeaseOp::Forget { keys } if keys.len() > KEYS_PER_LEASE_MAX => {
            Err(KvError::Refused(format!(
                "lease forget of {} keys: at most {KEYS_PER_LEASE_MAX}",
                keys.len()
            )))
        }
        _ => Ok(()),
    }
}

/// What a lease operation answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease's time to live.
    pub ttl_ms: u64,
    /// What is left of it, on its clock (0: ended).
    pub remaining_ms: u64,
    /// Whether it is alive (after the operation).
    pub alive: bool,
    /// The keys attached to it.
    pub keys: Vec<Bytes>,
}

impl LeaseState {
    fn of(record: &LeaseRecord, clock: u64) -> LeaseState {
        let alive = record.alive_at(clock);
        LeaseState {
            ttl_ms: record.ttl_ms,
            remaining_ms: if alive { record.deadline_ms - clock } else { 0 },
            alive,
            keys: record.keys.clone(),
        }
    }
}

/// What [`apply`] does to a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    Unchanged,
    /// Keep this record.
    Keep(LeaseRecord),
    /// Drop the record (an ended lease whose keys are all deleted).
    Drop,
}

/// The refusal of an operation on a lease that does not exist or ended.
#[must_use]
pub fn not_found(id: u64, why: &str) -> KvError {
    KvError::Node {
        kind: NOT_FOUND_KIND.into(),
        message: format!("{NOT_FOUND_PREFIX}lease {id}: {why}"),
    }
}

/// Applies `op` on lease `id` at the stamped time `now_ms` to its record (`None`: no
/// such lease): the change and the answer, or the refusal (nothing changes). Pure and
/// deterministic.
pub fn apply(
    id: u64,
    op: &LeaseOp,
    now_ms: u64,
    record: Option<LeaseRecord>,
) -> Result<(Change, LeaseState), KvError> {
    check_id(id)?;
    validate(op)?;
    let Some(mut record) = record else {
        return match op {
            LeaseOp::Grant { ttl_ms } => {
                let record = LeaseRecord {
                    ttl_ms: *ttl_ms,
                    clock_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(*ttl_ms),
                    ended: false,
                    keys: Vec::new(),
                };
                let state = LeaseState::of(&record, now_ms);
                Ok((Change::Keep(record), state))
            }
            // Forgetting what is gone already, or ending what does not exist: done.
            LeaseOp::Forget { .. } | LeaseOp::Expire => {
                Ok((Change::Unchanged, LeaseState::default()))
            }
            _ => Err(not_found(id, "no such lease")),
        };
    };
    let clock = record.clock_ms.max(now_ms);
    record.clock_ms = clock;
    let alive = record.alive_at(clock);
    match op {
        LeaseOp::Grant { .. } => Err(KvError::Refused(format!(
            "lease {id} exists already: grant another id"
        ))),
        LeaseOp::KeepAlive | LeaseOp::Attach { .. } | LeaseOp::Status if !alive => Err(not_found(
            id,
            "it ended (revoked, or its time to live ran out)",
        )),
        LeaseOp::KeepAlive => {
            record.deadline_ms = clock.saturating_add(record.ttl_ms);
            let state = LeaseState::of(&record, clock);
            Ok((Change::Keep(record), state))
        }
        LeaseOp::Attach { key } => {
            if !record.keys.contains(key) {
                let bytes: usize = record.keys.iter().map(Bytes::len).sum();
                if record.keys.len() >= KEYS_PER_LEASE_MAX
                    || bytes + key.len() > KEY_BYTES_PER_LEASE_MAX
                {
                    return Err(KvError::Refused(format!(
                        "lease {id} holds {} keys ({bytes} bytes) already: at most \
                         {KEYS_PER_LEASE_MAX} keys and {KEY_BYTES_PER_LEASE_MAX} bytes",
                        record.keys.len()
                    )));
                }
                record.keys.push(key.clone());
            }
            let state = LeaseState::of(&record, clock);
            Ok((Change::Keep(record), state))
        }
        LeaseOp::Status => {
            let state = LeaseState::of(&record, clock);
            Ok((Change::Keep(record), state))
        }
        LeaseOp::Revoke => {
            if record.ended {
                return Err(not_found(id, "it ended already"));
            }
            record.ended = true;
            let state = LeaseState::of(&record, clock);
            Ok((Change::Keep(record), state))
        }
        LeaseOp::Expire => {
            if !alive {
                record.ended = true;
            }
            let state = LeaseState::of(&record, clock);
            Ok((Change::Keep(record), state))
        }
        LeaseOp::Forget { keys } => {
            if !record.ended {
                return Err(KvError::Refused(format!(
                    "lease {id} is alive: its keys are not forgotten"
                )));
            }
            record.keys.retain(|k| !keys.contains(k));
            let state = LeaseState::of(&record, clock);
            if record.keys.is_empty() {
                Ok((Change::Drop, state))
            } else {
                Ok((Change::Keep(record), state))
            }
        }
    }
}

fn check_record(_name: &[u8], value: &[u8]) -> Result<(), KvError> {
    LeaseRecord::decode(value).map(|_| ())
}

fn check_mark(_name: &[u8], value: &[u8]) -> Result<(), KvError> {
    decode_mark(value).map(|_| ())
}

/// The lease records at their homes (file `leases`).
pub(crate) const LEASES: crate::sequence::KeySpace = crate::sequence::KeySpace {
    prefix: meta_keys::LEASE_PREFIX,
    check: check_record,
};

/// The marks of the keys that follow leases (file `lease-keys`).
pub(crate) const MARKS: crate::sequence::KeySpace = crate::sequence::KeySpace {
    prefix: meta_keys::LEASE_KEY_PREFIX,
    check: check_mark,
};

/// The leases of `region` (home records) that are past their deadline on a clock at
/// `clock_of(id)`, whose clock this replica has not seen (`clock_of` answers 0: an entry
/// makes it known), or that ended with keys left: `(id, record)`, at most `limit`.
pub fn due(
    engine: &dyn KvEngine,
    region: &Region,
    clock_of: impl Fn(u64) -> u64,
    limit: usize,
) -> Result<Vec<(u64, LeaseRecord)>, KvError> {
    let mut out = Vec::new();
    let from = crate::sequence::prefixed(meta_keys::LEASE_PREFIX, &region.start);
    let to = if region.end.is_empty() {
        let mut past = meta_keys::LEASE_PREFIX.to_vec();
        if let Some(last) = past.last_mut() {
            *last += 1;
        }
        Bytes::from(past)
    } else {
        crate::sequence::prefixed(meta_keys::LEASE_PREFIX, &region.end)
    };
    let mut cursor = from;
    loop {
        let page = engine.meta_scan(&cursor, &to, 1024)?;
        let full = page.len() == 1024;
        if let Some((last, _)) = page.last() {
            let mut next = last.to_vec();
            next.push(0);
            cursor = Bytes::from(next);
        }
        for (key, value) in page {
            let name = key.slice(meta_keys::LEASE_PREFIX.len()..);
            let Ok(id) = <[u8; 8]>::try_from(&name[..]).map(u64::from_be_bytes) else {
                continue;
            };
            let record = LeaseRecord::decode(&value)?;
            let seen = clock_of(id);
            if record.ended || seen == 0 || record.clock_ms.max(seen) >= record.deadline_ms {
                out.push((id, record));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    /// Applies `op` at `now`, keeping the record in `kept`.
    fn step(kept: &mut Option<LeaseRecord>, op: &LeaseOp, now: u64) -> Result<LeaseState, KvError> {
        let (change, state) = apply(7, op, now, kept.clone())?;
        match change {
            Change::Unchanged => {}
            Change::Keep(record) => *kept = Some(record),
            Change::Drop => *kept = None,
        }
        Ok(state)
    }

    #[test]
    fn a_lease_lives_while_kept_alive_and_ends_for_good() {
        let mut kept = None;
        let granted = step(&mut kept, &LeaseOp::Grant { ttl_ms: 5_000 }, 100).unwrap();
        assert_eq!((granted.ttl_ms, granted.remaining_ms), (5_000, 5_000));
        assert!(step(&mut kept, &LeaseOp::Grant { ttl_ms: 5_000 }, 200).is_err());
        step(&mut kept, &LeaseOp::Attach { key: key("a") }, 1_000).unwrap();
        step(&mut kept, &LeaseOp::Attach { key: key("a") }, 1_100).unwrap();
        let state = step(&mut kept, &LeaseOp::Attach { key: key("b") }, 1_200).unwrap();
        assert_eq!(state.keys, vec![key("a"), key("b")]);
        // Kept alive at 4,000: ends at 9,000, not 5,100.
        step(&mut kept, &LeaseOp::KeepAlive, 4_000).unwrap();
        assert_eq!(
            step(&mut kept, &LeaseOp::Status, 8_999)
                .unwrap()
                .remaining_ms,
            1
        );
        // Expire before the deadline does nothing.
        assert!(step(&mut kept, &LeaseOp::Expire, 8_000).unwrap().alive);
        // A stamp that goes back moves nothing.
        assert!(step(&mut kept, &LeaseOp::Status, 0).unwrap().alive);
        // Past it: not found for keep-alive, attach and status; expire ends it.
        let late = step(&mut kept, &LeaseOp::KeepAlive, 9_000).unwrap_err();
        assert!(late.to_string().starts_with(NOT_FOUND_PREFIX), "{late}");
        assert!(step(&mut kept, &LeaseOp::Attach { key: key("c") }, 9_001).is_err());
        let ended = step(&mut kept, &LeaseOp::Expire, 9_002).unwrap();
        assert!(!ended.alive);
        assert!(kept.as_ref().unwrap().ended);
        // Its keys are forgotten as they are deleted; the record goes with the last.
        step(
            &mut kept,
            &LeaseOp::Forget {
                keys: vec![key("a")],
            },
            9_003,
        )
        .unwrap();
        assert_eq!(kept.as_ref().unwrap().keys, vec![key("b")]);
        step(
            &mut kept,
            &LeaseOp::Forget {
                keys: vec![key("b")],
            },
            9_004,
        )
        .unwrap();
        assert!(kept.is_none());
        // Forgetting again is done, and the id can be granted anew.
        step(
            &mut kept,
            &LeaseOp::Forget {
                keys: vec![key("b")],
            },
            9_005,
        )
        .unwrap();
        assert!(step(&mut kept, &LeaseOp::Status, 9_006).is_err());
    }

    #[test]
    fn revoke_ends_a_live_lease_and_only_an_ended_one_forgets() {
        let mut kept = None;
        step(&mut kept, &LeaseOp::Grant { ttl_ms: 60_000 }, 0).unwrap();
        step(&mut kept, &LeaseOp::Attach { key: key("a") }, 1).unwrap();
        assert!(step(
            &mut kept,
            &LeaseOp::Forget {
                keys: vec![key("a")]
            },
            2
        )
        .is_err());
        assert!(!step(&mut kept, &LeaseOp::Revoke, 3).unwrap().alive);
        assert!(step(&mut kept, &LeaseOp::Revoke, 4).is_err());
        assert!(step(&mut kept, &LeaseOp::KeepAlive, 5).is_err());
        assert!(step(&mut kept, &LeaseOp::Status, 5).is_err());
    }

    #[test]
    fn bad_fields_and_records_are_refused() {
        assert!(validate(&LeaseOp::Grant { ttl_ms: 999 }).is_err());
        assert!(validate(&LeaseOp::Grant {
            ttl_ms: TTL_MS_MAX + 1
        })
        .is_err());
        assert!(validate(&LeaseOp::Attach { key: Bytes::new() }).is_err());
        assert!(apply(0, &LeaseOp::Status, 0, None).is_err());
        let mut kept = None;
        step(&mut kept, &LeaseOp::Grant { ttl_ms: 60_000 }, 0).unwrap();
        for i in 0..KEYS_PER_LEASE_MAX {
            step(
                &mut kept,
                &LeaseOp::Attach {
                    key: key(&format!("k{i}")),
                },
                1,
            )
            .unwrap();
        }
        let full = step(
            &mut kept,
            &LeaseOp::Attach {
                key: key("one-more"),
            },
            2,
        )
        .unwrap_err();
        assert!(full.to_string().contains("at most"), "{full}");
        let record = kept.unwrap();
        assert_eq!(LeaseRecord::decode(&record.encode()).unwrap(), record);
        let mut damaged = record.encode().to_vec();
        damaged.push(0);
        assert!(LeaseRecord::decode(&damaged).is_err());
        assert!(decode_mark(&[1]).is_err());
    }
}
