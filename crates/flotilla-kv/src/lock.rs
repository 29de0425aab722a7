//! RheaKV's distributed lock, decided by the region holding the lock's name: lease,
//! reentrancy, and a fencing token that grows with every new holder.
//!
//! **Time comes from the log.** A lock entry carries a time in milliseconds that the
//! region's leader stamps when it proposes the entry ([`LockClocks::stamp`]), and a lock's
//! clock is the maximum of the clock its record kept and the stamp: it never moves back,
//! whatever leaders, restarts or wall clocks do. The stamp is not the leader's wall clock
//! (one minutes ahead would end leases early): it is the lock's clock as this replica last
//! applied it, plus the monotonic time elapsed here since. A replica that never applied an
//! entry of the lock since it started stamps 0, which moves nothing; so after a leader
//! change or a restart a lock's time stands still until its next entry, and leases get
//! longer by that much, never shorter. Clock rates (±4 % in the chaos harness) change the
//! measured elapsed time by as much: a holder's own view of its lease must end that much
//! earlier ([`HOLDER_MARGIN_PERCENT`]).
//!
//! **Tokens** grow per lock name: the record keeps the last token handed out, free or
//! held, and a new holder gets the next one, or the leader's wall clock in milliseconds
//! when that is more (the entry carries it); a re-acquire by the holder (reentrancy) keeps
//! it. The wall clock never decides a lease and cannot make a token go back; it only makes
//! a fresh lock's first token about "now", so that tokens of different locks roughly follow
//! real time, which is what lets a region drop fence records for a floor (`crate::fence`). The record lives in the engine's meta space (`lock/` + name) and belongs to the
//! region holding the name, like a sequence: splits and merges need no copy, and region
//! snapshots carry the records of their range (file `locks`).
//!
//! Owns: the record's format, the rules of acquire, renew, release and status (pure:
//! [`apply`]), the stamps. Must never: hand a held, unexpired lock to another owner, let a
//! token go back, or let anyone but the holder renew or release.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::engine::{meta_keys, KvEngine, WriteBatch};
use crate::error::KvError;
use crate::region::Region;

/// Name of the snapshot file holding a region's lock records.
pub const SNAPSHOT_LOCKS_FILE: &str = "locks";
/// The lease of an acquire that names none (Redisson's watchdog default).
pub const LEASE_MS_DEFAULT: u64 = 30_000;
/// Longest lease (one hour): a dead holder blocks a lock at most this long.
pub const LEASE_MS_MAX: u64 = 3_600_000;
/// Longest owner id.
pub const OWNER_BYTES_MAX: usize = 256;
/// How much earlier than the store a holder must consider its lease over, in percent of the
/// lease: clock rates may differ by ±4 % on each side (the chaos harness's bound).
pub const HOLDER_MARGIN_PERCENT: u64 = 8;
/// The error kind of a renew or release by anyone but the holder.
pub const NOT_OWNER_KIND: &str = "NotOwner";
/// Prefix of a [`NOT_OWNER_KIND`] refusal's text.
pub const NOT_OWNER_PREFIX: &str = "NotOwner: ";
/// Lock clocks a replica remembers per region before it forgets them all (each forgotten
/// one only stands still until its next entry).
const CLOCKS_MAX: usize = 100_000;
const RECORD_VERSION: u8 = 1;

/// A lock's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockRecord {
    /// The last token handed out (0: never held).
    pub token: u64,
    /// The lock's clock: the largest time any of its entries carried.
    pub clock_ms: u64,
    /// The holder (empty: free).
    pub owner: Bytes,
    /// Acquires by the holder not yet released.
    pub count: u32,
    /// The holder's lease.
    pub lease_ms: u64,
    /// When the lease ends, on the lock's clock.
    pub deadline_ms: u64,
}

impl LockRecord {
    fn held_at(&self, clock: u64) -> bool {
        !self.owner.is_empty() && clock < self.deadline_ms
    }

    /// The encoded record.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut w = FieldWriter::with_capacity(48 + self.owner.len());
        w.u8(RECORD_VERSION);
        w.u64(self.token);
        w.u64(self.clock_ms);
        w.bytes(&self.owner);
        w.u64(u64::from(self.count));
        w.u64(self.lease_ms);
        w.u64(self.deadline_ms);
        w.finish()
    }

    /// Decodes [`LockRecord::encode`]'s output, refusing anything else.
    pub fn decode(data: &[u8]) -> Result<LockRecord, KvError> {
        let mut r = FieldReader::new(data, "lock record");
        let version = r.u8("format version")?;
        if version != RECORD_VERSION {
            return Err(KvError::Corrupt(format!(
                "lock record: format version {version}, expected {RECORD_VERSION}"
            )));
        }
        let record = LockRecord {
            token: r.u64("token")?,
            clock_ms: r.u64("clock")?,
            owner: r.bytes("owner", OWNER_BYTES_MAX)?,
            count: u32::try_from(r.u64("count")?)
                .map_err(|_| KvError::Corrupt("lock record: count past u32".into()))?,
            lease_ms: r.u64("lease")?,
            deadline_ms: r.u64("deadline")?,
        };
        r.finish()?;
        Ok(record)
    }
}

/// What a lock operation answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// Acquire: whether the caller holds the lock now.
    pub acquired: bool,
    /// Whether anyone holds it (after the operation).
    pub held: bool,
    /// The holder (empty when free).
    pub owner: Bytes,
    /// The holder's token; when free, the last one handed out.
    pub token: u64,
    /// The holder's lease.
    pub lease_ms: u64,
    /// What is left of it, on the lock's clock.
    pub remaining_ms: u64,
    /// The holder's acquires not yet released.
    pub count: u32,
}

impl LockState {
    fn of(record: &LockRecord, clock: u64, acquired: bool) -> LockState {
        let held = record.held_at(clock);
        LockState {
            acquired,
            held,
            owner: if held {
                record.owner.clone()
            } else {
                Bytes::new()
            },
            token: record.token,
            lease_ms: if held { record.lease_ms } else { 0 },
            remaining_ms: if held { record.deadline_ms - clock } else { 0 },
            count: if held { record.count } else { 0 },
        }
    }
}

/// One lock operation, as its log entry carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOp {
    /// Take the lock for `owner` (again, if it holds it: the count grows, the lease
    /// restarts, the token stays).
    Acquire {
        /// Who.
        owner: Bytes,
        /// For how long.
        lease_ms: u64,
    },
    /// Restart the holder's lease.
    Renew {
        /// Who asks (must hold it).
        owner: Bytes,
    },
    /// Release one acquire of the holder's (the last one frees the lock).
    Release {
        /// Who asks (must hold it).
        owner: Bytes,
    },
    /// Only read it.
    Status,
}

/// Refuses a lock name that is empty (fence records and snapshot files use the empty name
/// for themselves) or longer than a key may be.
pub fn check_name(name: &[u8]) -> Result<(), KvError> {
    if name.is_empty() {
        return Err(KvError::Refused("a lock name may not be empty".into()));
    }
    crate::limits::check_key(name)
}

/// Checks an operation's fields (before it is proposed, and again when it applies).
pub fn validate(op: &LockOp) -> Result<(), KvError> {
    let owner = match op {
        LockOp::Acquire { owner, lease_ms } => {
            if *lease_ms == 0 || *lease_ms > LEASE_MS_MAX {
                return Err(KvError::Refused(format!(
                    "lock lease of {lease_ms} ms: must be 1 to {LEASE_MS_MAX}"
                )));
            }
            owner
        }
        LockOp::Renew { owner } | LockOp::Release { owner } => owner,
        LockOp::Status => return Ok(()),
    };
    if owner.is_empty() || owner.len() > OWNER_BYTES_MAX {
        return Err(KvError::Refused(format!(
            "lock owner of {} bytes: must be 1 to {OWNER_BYTES_MAX}",
            owner.len()
        )));
    }
    Ok(())
}

fn not_owner(name: &[u8], why: String) -> KvError {
    KvError::Node {
        kind: NOT_OWNER_KIND.into(),
        message: format!("{NOT_OWNER_PREFIX}lock {}: {why}", crate::error::show(name)),
    }
}

/// Applies `op` on lock `name` at the stamped time `now_ms` (and the leader's wall time
/// `wall_ms`, the least token a new holder gets) to its record (`None`: never used): the
/// record to keep (`None`: unchanged) and the answer, or the refusal (nothing changes).
/// Pure and deterministic.
pub fn apply(
    name: &[u8],
    op: &LockOp,
    now_ms: u64,
    wall_ms: u64,
    record: Option<LockRecord>,
) -> Result<(Option<LockRecord>, LockState), KvError> {
    validate(op)?;
    let mut record = record.unwrap_or_default();
    let clock = record.clock_ms.max(now_ms);
    record.clock_ms = clock;
    let held = record.held_at(clock);
    match op {
        LockOp::Acquire { owner, lease_ms } => {
            let deadline = clock.saturating_add(*lease_ms);
            if held && record.owner != *owner {
                // Not ours: only the clock moves.
                let state = LockState::of(&record, clock, false);
                return Ok((Some(record), state));
            }
            if held {
                record.count = record.count.saturating_add(1);
            } else {
                record.token = record
                    .token
                    .checked_add(1)
                    .ok_or_else(|| {
                        KvError::Refused(format!(
                            "lock {}: no token left",
                            crate::error::show(name)
                        ))
                    })?
                    .max(wall_ms);
                record.owner = owner.clone();
                record.count = 1;
            }
            record.lease_ms = *lease_ms;
            record.deadline_ms = deadline;
            let state = LockState::of(&record, clock, true);
            Ok((Some(record), state))
        }
        LockOp::Renew { owner } | LockOp::Release { owner } => {
            if !held {
                return Err(not_owner(
                    name,
                    "nobody holds it (its lease ended, or it was released)".into(),
                ));
            }
            if record.owner != *owner {
                return Err(not_owner(
                    name,
                    format!(
                        "held by {}, not by {}",
                        crate::error::show(&record.owner),
                        crate::error::show(owner)
                    ),
                ));
            }
            if matches!(op, LockOp::Renew { .. }) {
                record.deadline_ms = clock.saturating_add(record.lease_ms);
            } else {
                record.count -= 1;
                if record.count == 0 {
                    record.owner = Bytes::new();
                    record.lease_ms = 0;
                    record.deadline_ms = 0;
                }
            }
            let state = LockState::of(&record, clock, false);
            Ok((Some(record), state))
        }
        LockOp::Status => {
            let state = LockState::of(&record, clock, false);
            Ok((Some(record), state))
        }
    }
}

/// The meta key of lock `name`'s record.
#[must_use]
pub fn record_key(name: &[u8]) -> Bytes {
    crate::sequence::prefixed(meta_keys::LOCK_PREFIX, name)
}

fn check_record(_name: &[u8], value: &[u8]) -> Result<(), KvError> {
    LockRecord::decode(value).map(|_| ())
}

/// Writes the lock records of `region` to `out` (the snapshot file); answers how many.
pub fn export(
    engine: &dyn KvEngine,
    region: &Region,
    out: &mut dyn std::io::Write,
) -> Result<u64, KvError> {
    LOCKS.export(engine, region, out)
}

/// The lock records (file `locks`).
pub(crate) const LOCKS: crate::sequence::KeySpace = crate::sequence::KeySpace {
    prefix: meta_keys::LOCK_PREFIX,
    check: check_record,
};

/// Adds to `batch` what replaces the lock records of `region` with those of `input` (a
/// snapshot file, checked in full first).
pub fn import(
    engine: &dyn KvEngine,
    region: &Region,
    input: &mut dyn std::io::Read,
    batch: &mut WriteBatch,
) -> Result<u64, KvError> {
    LOCKS.import(engine, region, input, batch)
}

/// Per store (shared by its regions, so a split's child or a merge's target goes on from
/// it): each lock's clock as this replica last applied it, and when (its own monotonic
/// clock): what its stamps continue from if it leads.
#[derive(Debug, Default)]
pub struct LockClocks {
    seen: Mutex<HashMap<Bytes, (u64, Instant)>>,
}

impl LockClocks {
    /// The time to stamp on an entry of lock `name` proposed now: its clock as last
    /// applied here plus the time elapsed here since; 0 (moves nothing) if no entry of it
    /// applied here since this replica started.
    pub fn stamp(&self, name: &[u8]) -> u64 {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(name).map_or(0, |(clock, at)| {
            clock.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// Records that an entry of lock `name` applied with the lock's clock at `clock_ms`.
    pub fn applied(&self, name: Bytes, clock_ms: u64) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= CLOCKS_MAX && !seen.contains_key(&name) {
            seen.clear();
        }
        seen.insert(name, (clock_ms, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str) -> Bytes {
        Bytes::copy_from_slice(name.as_bytes())
    }

    fn acquire(who: &str, lease_ms: u64) -> LockOp {
        LockOp::Acquire {
            owner: owner(who),
            lease_ms,
        }
    }

    /// Applies `op` at `now`, keeping the record in `kept`.
    fn step(kept: &mut Option<LockRecord>, op: &LockOp, now: u64) -> Result<LockState, KvError> {
        step_at(kept, op, now, 0)
    }

    /// [`step`] with the leader's wall time `wall`.
    fn step_at(
        kept: &mut Option<LockRecord>,
        op: &LockOp,
        now: u64,
        wall: u64,
    ) -> Result<LockState, KvError> {
        let (record, state) = apply(b"L", op, now, wall, kept.clone())?;
        if record.is_some() {
            *kept = record;
        }
        Ok(state)
    }

    #[test]
    fn tokens_grow_per_holder_and_reentry_keeps_them() {
        let mut kept = None;
        let a = step(&mut kept, &acquire("a", 1000), 10).unwrap();
        assert!(a.acquired && a.held);
        assert_eq!((a.token, a.count, a.remaining_ms), (1, 1, 1000));
        // Another owner, before the lease ends: refused, told who holds it.
        let b = step(&mut kept, &acquire("b", 1000), 500).unwrap();
        assert!(!b.acquired && b.held);
        assert_eq!((b.owner.as_ref(), b.token), (&b"a"[..], 1));
        // Re-entry: the same token, the count grows, the lease restarts.
        let again = step(&mut kept, &acquire("a", 1000), 600).unwrap();
        assert_eq!((again.token, again.count, again.remaining_ms), (1, 2, 1000));
        // Releases: the first only counts down.
        let r = step(&mut kept, &LockOp::Release { owner: owner("a") }, 700).unwrap();
        assert!(r.held);
        let r = step(&mut kept, &LockOp::Release { owner: owner("a") }, 800).unwrap();
        assert!(!r.held);
        // Free: the next holder gets the next token.
        let b = step(&mut kept, &acquire("b", 1000), 900).unwrap();
        assert!(b.acquired);
        assert_eq!(b.token, 2);
    }

    #[test]
    fn a_new_holders_token_is_at_least_the_leaders_wall_time_and_never_goes_back() {
        let mut kept = None;
        let release = LockOp::Release { owner: owner("a") };
        let a = step_at(&mut kept, &acquire("a", 1000), 0, 1_700_000_000_000).unwrap();
        assert_eq!(a.token, 1_700_000_000_000);
        // Re-entry keeps the token whatever the wall time says.
        let again = step_at(&mut kept, &acquire("a", 1000), 1, 1_800_000_000_000).unwrap();
        assert_eq!(again.token, a.token);
        step_at(&mut kept, &release, 2, 0).unwrap();
        step_at(&mut kept, &release, 3, 0).unwrap();
        // A leader whose wall clock is behind (or that sent none): the next token anyway.
        let b = step_at(&mut kept, &acquire("a", 1000), 4, 1_600_000_000_000).unwrap();
        assert_eq!(b.token, a.token + 1);
        step_at(&mut kept, &release, 5, 0).unwrap();
        // One ahead: its time.
        let c = step_at(&mut kept, &acquire("a", 1000), 6, 1_900_000_000_000).unwrap();
        assert_eq!(c.token, 1_900_000_000_000);
        // The wall time never decides the lease: the lock's clock does.
        assert_eq!(c.remaining_ms, 1000);
    }

    #[test]
    fn only_the_holder_renews_or_releases_and_leases_end_on_the_locks_clock() {
        let mut kept = None;
        step(&mut kept, &acquire("a", 1000), 0).unwrap();
        let refused = step(&mut kept, &LockOp::Release { owner: owner("b") }, 10).unwrap_err();
        assert!(matches!(&refused, KvError::Node { kind, .. } if kind == NOT_OWNER_KIND));
        assert!(
            refused.to_string().starts_with(NOT_OWNER_PREFIX),
            "{refused}"
        );
        let renewed = step(&mut kept, &LockOp::Renew { owner: owner("a") }, 900).unwrap();
        assert_eq!(renewed.remaining_ms, 1000);
        // Expired at 1900: b takes it with token 2; a can no longer renew.
        let b = step(&mut kept, &acquire("b", 1000), 1900).unwrap();
        assert!(b.acquired);
        assert_eq!(b.token, 2);
        assert!(step(&mut kept, &LockOp::Renew { owner: owner("a") }, 1950).is_err());
    }

    #[test]
    fn a_stamp_that_goes_back_moves_nothing() {
        let mut kept = None;
        step(&mut kept, &acquire("a", 1000), 5_000).unwrap();
        // A new leader whose stamps start at 0 (it applied nothing of this lock since it
        // started), or whose time is behind: the lock's clock stays at 5,000, so the lease
        // does not end early.
        for now in [0, 100, 4_999] {
            let b = step(&mut kept, &acquire("b", 1000), now).unwrap();
            assert!(!b.acquired, "taken at stamp {now}");
            assert_eq!(b.remaining_ms, 1000);
        }
        let status = step(&mut kept, &LockOp::Status, 5_999).unwrap();
        assert_eq!(status.remaining_ms, 1);
        assert!(
            step(&mut kept, &acquire("b", 1000), 6_000)
                .unwrap()
                .acquired
        );
    }

    #[test]
    fn bad_fields_and_records_are_refused() {
        assert!(validate(&acquire("a", 0)).is_err());
        assert!(validate(&acquire("a", LEASE_MS_MAX + 1)).is_err());
        assert!(validate(&acquire("", 10)).is_err());
        assert!(check_name(b"").is_err());
        assert!(check_name(b"job").is_ok());
        assert!(validate(&LockOp::Renew {
            owner: Bytes::from(vec![b'x'; OWNER_BYTES_MAX + 1])
        })
        .is_err());
        let record = LockRecord {
            token: 3,
            clock_ms: 7,
            owner: owner("a"),
            count: 2,
            lease_ms: 10,
            deadline_ms: 17,
        };
        assert_eq!(LockRecord::decode(&record.encode()).unwrap(), record);
        let mut damaged = record.encode().to_vec();
        damaged.push(0);
        assert!(LockRecord::decode(&damaged).is_err());
        assert!(LockRecord::decode(&[9]).is_err());
    }

    #[test]
    fn stamps_continue_from_the_last_applied_clock() {
        let clocks = LockClocks::default();
        assert_eq!(clocks.stamp(b"L"), 0);
        clocks.applied(Bytes::from_static(b"L"), 1_000);
        let stamp = clocks.stamp(b"L");
        assert!((1_000..1_000 + 60_000).contains(&stamp), "{stamp}");
    }
}
