//! The write operations that go through the raft log ([`KvCommand`]) and their results
//! ([`KvOutput`]), with a versioned binary codec.
//!
//! Owns: the wire format of log entries and apply results, and the checks a command must
//! pass before it is proposed or applied (limits, valid ranges, keys inside the region).
//! Must never: allocate from a length it has not checked, accept trailing bytes, or nest a
//! batch inside a batch (bounded recursion: one level).

use bytes::Bytes;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::lease::{LeaseOp, LeaseState};
use crate::limits::{self, BATCH_KEYS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::lock::{LockOp, LockState};
use crate::merge::MergeState;
use crate::region::Region;

/// Version of the command and output formats; the first byte of every encoding.
const FORMAT_VERSION: u8 = 1;

/// Longest error text an encoded [`KvOutput::Batch`] element carries (longer ones are cut).
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;

/// A write operation, applied by every replica in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`. Output: [`KvOutput::Done`].
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes `key` (absent is fine). Output: [`KvOutput::Done`].
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Removes every key in `[start, end)`; an empty `end` is unbounded (up to the
    /// region's end). Output: [`KvOutput::Done`].
    DeleteRange {
        /// First key removed.
        start: Bytes,
        /// First key kept; empty = unbounded.
        end: Bytes,
    },
    /// Sets `key` to `value` only if its current value equals `expected` (`None` = the key
    /// must be absent). Output: [`KvOutput::Swapped`].
    CompareAndPut {
        /// The key.
        key: Bytes,
        /// The value it must hold; `None` = it must be absent.
        expected: Option<Bytes>,
        /// The new value.
        value: Bytes,
    },
    /// Sets `key` to `value` only if absent. Output: [`KvOutput::Previous`] with the value
    /// that was there (`None` = the put happened), as RheaKV's `putIfAbsent`.
    PutIfAbsent {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Sets `key` to `value`. Output: [`KvOutput::Previous`] with the value it replaced.
    GetAndPut {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Sets every pair, atomically. Output: [`KvOutput::Done`].
    BatchPut(Vec<(Bytes, Bytes)>),
    /// Removes every key, atomically. Output: [`KvOutput::Done`].
    BatchDelete(Vec<Bytes>),
    /// Client-side batching: the commands apply in order, each with its own result
    /// ([`KvOutput::Batch`]); a refused element changes nothing and the others still apply.
    /// Elements may not be batches themselves.
    Batch(Vec<KvCommand>),
    /// Splits the region at `key` (an admin entry: the store's `split_region` proposes it,
    /// never a client): the region keeps `[start, key)` and `child`, a new region id, takes
    /// `[key, end)` on the same stores, both at `version + 1`. Refused, changing nothing,
    /// unless the region is at `version` when the entry applies, `key` lies strictly
    /// inside it, and its configuration is not joint. Output: [`KvOutput::Done`].
    Split {
        /// The child's first key.
        key: Bytes,
        /// The child's region id (allocated by the placement driver).
        child: RegionId,
        /// The region's `version` the split was planned on.
        version: u64,
    },
    /// Freezes the region as the source of a merge into `target` (an admin entry: see
    /// `crate::merge`). Refused, changing nothing, unless the region is at `version`, touches
    /// `target`, is not merging already and its configuration is not joint. Output:
    /// [`KvOutput::Done`].
    PrepareMerge {
        /// The target, at the epoch the merge expects it at.
        target: Region,
        /// The region's `version` the merge was planned on.
        version: u64,
    },
    /// Extends the region (the target) over the frozen source the state describes. Refused
    /// unless the region is still at the state's target epoch, touches the source and has
    /// its members. Output: [`KvOutput::Done`].
    CommitMerge(Box<MergeState>),
    /// Moves the region's version if it is still at `expected`, so that no merge expecting
    /// that epoch commits into it after this entry. Output: [`KvOutput::Done`].
    FenceMerge {
        /// The epoch a merge into this region expected.
        expected: Epoch,
    },
    /// Hands out the next `step` values of the sequence named `key`: `[start, start + step)`,
    /// where `start` is where the previous range ended (0 for a new sequence). A sequence
    /// lives in its own key space (a `get` of `key` does not see it) and belongs to the
    /// region holding `key`. Refused, changing nothing: a `step` of 0 or over
    /// [`SEQUENCE_STEP_MAX`], or a range past `u64::MAX`. Output: [`KvOutput::Range`].
    SequenceNext {
        /// The sequence's name.
        key: Bytes,
        /// How many values.
        step: u64,
    },
    /// The value the sequence named `key` hands out next (0 for a new one), read through
    /// the log. Output: [`KvOutput::Counter`].
    SequenceLatest {
        /// The sequence's name.
        key: Bytes,
    },
    /// Resets the sequence named `key` to 0 (forgets it). Output: [`KvOutput::Done`].
    SequenceReset {
        /// The sequence's name.
        key: Bytes,
    },
    /// A data write fenced by lock `lock`'s token `token` (see `crate::fence`): refused,
    /// changing nothing, if the region already accepted a write fenced by a higher token of
    /// that lock. `command` is a single data write (no batch, no split, lock or sequence).
    /// Output: `command`'s.
    Fenced {
        /// The lock's name.
        lock: Bytes,
        /// The writer's token.
        token: u64,
        /// The write.
        command: Box<KvCommand>,
    },
    /// An operation on the lock named `name` (see `crate::lock`) at the time `now_ms` the
    /// leader stamped (the store overwrites whatever a client sent). Output:
    /// [`KvOutput::Lock`]; a renew or release by anyone but the holder is refused
    /// (`NotOwner`).
    Lock {
        /// The lock's name (a key: the region holding it decides).
        name: Bytes,
        /// What to do.
        op: LockOp,
        /// The leader's stamp.
        now_ms: u64,
        /// The leader's wall clock when it proposed, in ms since the Unix epoch: the least
        /// token a new holder gets (`crate::lock`), so that tokens of different locks
        /// roughly follow real time (what lets a region drop fence records safely,
        /// `crate::fence`). Never used to decide a lease.
        wall_ms: u64,
    },
    /// An operation on the lease whose route key is `key` (`crate::lease::route_key`: the
    /// id's 8 bytes; the region holding it is the lease's home) at the time `now_ms` the
    /// leader stamped. Output: [`KvOutput::Lease`]; an operation on a lease that does not
    /// exist or ended is refused (`LeaseNotFound`).
    Lease {
        /// The lease's route key.
        key: Bytes,
        /// What to do.
        op: LeaseOp,
        /// The leader's stamp.
        now_ms: u64,
    },
    /// A put whose key follows lease `lease` (marked in the key's region: the lease's home
    /// recorded the key first). `command` is a [`KvCommand::Put`]. Output: `command`'s.
    Leased {
        /// The lease id.
        lease: u64,
        /// The put.
        command: Box<KvCommand>,
    },
    /// Deletes `key` if it still follows lease `lease` (what an ended lease's home
    /// proposes for each of its keys). Output: [`KvOutput::Swapped`]: whether it did.
    LeaseDelete {
        /// The key.
        key: Bytes,
        /// The lease it must follow.
        lease: u64,
    },
    /// Starts, renews or ends the region's watch interest (`crate::watch`): proposed by the
    /// store serving a watch, or ending it, never by a client. Output: `Counter(since)` for
    /// an interest, `Swapped(ended)` for an end.
    Watch(crate::watch::WatchOp),
    /// Thaws the region, a frozen merge source at `version`, with its version moved.
    /// Proposed only once the target is fenced and did not absorb it. Output:
    /// [`KvOutput::Done`].
    RollbackMerge {
        /// The frozen region's `version`.
        version: u64,
    },
}

/// Tags of the encoded commands.
mod tag {
    pub const PUT: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const DELETE_RANGE: u8 = 3;
    pub const COMPARE_AND_PUT: u8 = 4;
    pub const PUT_IF_ABSENT: u8 = 5;
    pub const GET_AND_PUT: u8 = 6;
    pub const BATCH_PUT: u8 = 7;
    pub const BATCH_DELETE: u8 = 8;
    pub const BATCH: u8 = 9;
    pub const SPLIT: u8 = 10;
    pub const PREPARE_MERGE: u8 = 11;
    pub const COMMIT_MERGE: u8 = 12;
    pub const FENCE_MERGE: u8 = 13;
    pub const ROLLBACK_MERGE: u8 = 14;
    pub const SEQUENCE_NEXT: u8 = 15;
    pub const SEQUENCE_LATEST: u8 = 16;
    pub const SEQUENCE_RESET: u8 = 17;
    /// A lock operation as the first release with locks wrote it (no wall time).
    pub const LOCK: u8 = 18;
    pub const FENCED: u8 = 19;
    /// A lock operation with the leader's wall time.
    pub const LOCK_WALL: u8 = 20;
    pub const LEASE: u8 = 21;
    pub const LEASED: u8 = 22;
    pub const LEASE_DELETE: u8 = 23;
    pub const WATCH_INTEREST: u8 = 24;
    pub const WATCH_END: u8 = 25;
}

/// Tags of the encoded lock operations.
mod lock_tag {
    pub const ACQUIRE: u8 = 1;
    pub const RENEW: u8 = 2;
    pub const RELEASE: u8 = 3;
    pub const STATUS: u8 = 4;
}

/// Tags of the encoded lease operations.
mod lease_tag {
    pub const GRANT: u8 = 1;
    pub const KEEP_ALIVE: u8 = 2;
    pub const REVOKE: u8 = 3;
    pub const ATTACH: u8 = 4;
    pub const STATUS: u8 = 5;
    pub const EXPIRE: u8 = 6;
    pub const FORGET: u8 = 7;
}

/// Most values one [`KvCommand::SequenceNext`] hands out (2^32).
pub const SEQUENCE_STEP_MAX: u64 = 1 << 32;

/// Longest encoded region or merge state a merge entry carries.
const MERGE_FIELD_BYTES_MAX: usize = 64 * 1024;

/// Smallest encoding of one key (its u32 length).
const KEY_BYTES_MIN: usize = 4;
/// Smallest encoding of one command (tag + one empty key).
const COMMAND_BYTES_MIN: usize = 1 + KEY_BYTES_MIN;

impl KvCommand {
    /// Number of keys (pairs, or 1 per single-key command and per range) the command
    /// touches, counting every element of a batch.
    #[must_use]
    pub fn key_count(&self) -> usize {
        match self {
            KvCommand::BatchPut(pairs) => pairs.len(),
            KvCommand::BatchDelete(keys) => keys.len(),
            KvCommand::Batch(commands) => commands.iter().map(KvCommand::key_count).sum(),
            KvCommand::Fenced { command, .. } | KvCommand::Leased { command, .. } => {
                command.key_count()
            }
            _ => 1,
        }
    }

    /// The first key the command writes (a batch: its first element's), if any; `None`
    /// for a split, which writes no key.
    #[must_use]
    pub fn first_key(&self) -> Option<&Bytes> {
        match self {
            KvCommand::Put { key, .. }
            | KvCommand::Delete { key }
            | KvCommand::CompareAndPut { key, .. }
            | KvCommand::PutIfAbsent { key, .. }
            | KvCommand::GetAndPut { key, .. }
            | KvCommand::SequenceNext { key, .. }
            | KvCommand::SequenceLatest { key }
            | KvCommand::SequenceReset { key }
            | KvCommand::Lock { name: key, .. }
            | KvCommand::Lease { key, .. }
            | KvCommand::LeaseDelete { key, .. } => Some(key),
            KvCommand::DeleteRange { start, .. } => Some(start),
            KvCommand::BatchPut(pairs) => pairs.first().map(|(k, _)| k),
            KvCommand::BatchDelete(keys) => keys.first(),
            KvCommand::Batch(commands) => commands.iter().find_map(KvCommand::first_key),
            KvCommand::Fenced { command, .. } | KvCommand::Leased { command, .. } => {
                command.first_key()
            }
            KvCommand::Split { .. }
            | KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge(_)
            | KvCommand::FenceMerge { .. }
            | KvCommand::RollbackMerge { .. }
            | KvCommand::Watch(_) => None,
        }
    }

    /// Checks everything the engines require of a command before it is proposed or
    /// applied: no empty key in a write (the engines cannot store one), key and value
    /// sizes, batch sizes (at most [`BATCH_KEYS_MAX`] keys in all), valid ranges, no batch
    /// nested in a batch. The state machine runs it again on every decoded entry, so a
    /// command that slipped past admission (an older version's log) is refused, never
    /// handed to an engine that would panic.
    pub fn validate(&self) -> Result<(), KvError> {
        limits::check_batch_len(self.key_count())?;
        self.validate_element(true, limits::check_write_key)
    }

    /// The checks of the encoding alone (sizes, ranges, nesting), which the decoder runs:
    /// an empty key decodes, so that a log entry holding one is answered by the state
    /// machine as a refused operation ([`KvError::KeyEmpty`]) rather than as corrupt.
    fn validate_format(&self) -> Result<(), KvError> {
        limits::check_batch_len(self.key_count())?;
        self.validate_element(true, limits::check_key)
    }

    fn validate_element(
        &self,
        top: bool,
        check_key: fn(&[u8]) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        match self {
            KvCommand::Put { key, value }
            | KvCommand::PutIfAbsent { key, value }
            | KvCommand::GetAndPut { key, value } => {
                check_key(key)?;
                limits::check_value(value)
            }
            KvCommand::Delete { key }
            | KvCommand::SequenceLatest { key }
            | KvCommand::SequenceReset { key } => check_key(key),
            KvCommand::Lock { name, op, .. } => {
                crate::lock::check_name(name)?;
                crate::lock::validate(op)
            }
            KvCommand::Fenced { lock, command, .. } => {
                crate::lock::check_name(lock)?;
                let data_write = matches!(
                    **command,
                    KvCommand::Put { .. }
                        | KvCommand::Delete { .. }
                        | KvCommand::DeleteRange { .. }
                        | KvCommand::CompareAndPut { .. }
                        | KvCommand::PutIfAbsent { .. }
                        | KvCommand::GetAndPut { .. }
                        | KvCommand::BatchPut(_)
                        | KvCommand::BatchDelete(_)
                );
                if !data_write {
                    return Err(KvError::Corrupt(
                        "only a single data write may be fenced".into(),
                    ));
                }
                command.validate_element(false, check_key)
            }
            KvCommand::Lease { key, op, .. } => {
                if key.len() != 8 {
                    return Err(KvError::Corrupt(format!(
                        "a lease's route key has {} bytes, expected 8",
                        key.len()
                    )));
                }
                crate::lease::check_id(crate::lease::id_of(key))?;
                crate::lease::validate(op)
            }
            KvCommand::Leased { lease, command } => {
                crate::lease::check_id(*lease)?;
                if !matches!(**command, KvCommand::Put { .. }) {
                    return Err(KvError::Corrupt("only a put may follow a lease".into()));
                }
                command.validate_element(false, check_key)
            }
            KvCommand::LeaseDelete { key, lease } => {
                crate::lease::check_id(*lease)?;
                check_key(key)
            }
            KvCommand::SequenceNext { key, step } => {
                check_key(key)?;
                if *step == 0 || *step > SEQUENCE_STEP_MAX {
                    return Err(KvError::Refused(format!(
                        "sequence step {step}: must be 1 to {SEQUENCE_STEP_MAX}"
                    )));
                }
                Ok(())
            }
            // An empty start or end is a bound ("from the first key", "unbounded").
            KvCommand::DeleteRange { start, end } => {
                limits::check_key(start)?;
                limits::check_key(end)?;
                limits::check_range(start, end)
            }
            KvCommand::CompareAndPut {
                key,
                expected,
                value,
            } => {
                check_key(key)?;
                if let Some(expected) = expected {
                    limits::check_value(expected)?;
                }
                limits::check_value(value)
            }
            KvCommand::BatchPut(pairs) => pairs.iter().try_for_each(|(key, value)| {
                check_key(key)?;
                limits::check_value(value)
            }),
            KvCommand::BatchDelete(keys) => keys.iter().try_for_each(|key| check_key(key)),
            KvCommand::Batch(commands) => {
                if !top {
                    return Err(KvError::Corrupt(
                        "a batch of commands may not hold another batch".into(),
                    ));
                }
                commands
                    .iter()
                    .try_for_each(|c| c.validate_element(false, check_key))
            }
            KvCommand::Split { key, child, .. } => {
                if !top {
                    return Err(KvError::Corrupt("a split may not be batched".into()));
                }
                if child.0 == 0 {
                    return Err(KvError::Corrupt(
                        "a split's child may not be region 0".into(),
                    ));
                }
                check_key(key)
            }
            KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge(_)
            | KvCommand::FenceMerge { .. }
            | KvCommand::RollbackMerge { .. } => {
                if !top {
                    return Err(KvError::Corrupt("a merge step may not be batched".into()));
                }
                Ok(())
            }
            KvCommand::Watch(_) => {
                if !top {
                    return Err(KvError::Corrupt("a watch entry may not be batched".into()));
                }
                Ok(())
            }
        }
    }

    /// Whether the command is an admin entry applied on its own (a split or a merge step),
    /// not a data write.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            KvCommand::Split { .. }
                | KvCommand::PrepareMerge { .. }
                | KvCommand::CommitMerge(_)
                | KvCommand::FenceMerge { .. }
                | KvCommand::RollbackMerge { .. }
        )
    }

    /// Whether the command can add data to the store (a put of any kind), as opposed to
    /// only removing it: a store over its quota refuses the first kind only.
    #[must_use]
    pub fn adds_data(&self) -> bool {
        match self {
            KvCommand::Delete { .. }
            | KvCommand::DeleteRange { .. }
            | KvCommand::BatchDelete(_)
            | KvCommand::Split { .. }
            | KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge(_)
            | KvCommand::FenceMerge { .. }
            | KvCommand::RollbackMerge { .. }
            | KvCommand::SequenceLatest { .. }
            | KvCommand::SequenceReset { .. } => false,
            KvCommand::Lock { op, .. } => matches!(op, LockOp::Acquire { .. }),
            KvCommand::Lease { op, .. } => {
                matches!(op, LeaseOp::Grant { .. } | LeaseOp::Attach { .. })
            }
            KvCommand::Leased { .. } => true,
            KvCommand::LeaseDelete { .. } => false,
            // Interest makes history grow; an end only stops it.
            KvCommand::Watch(op) => matches!(op, crate::watch::WatchOp::Interest),
            KvCommand::Fenced { command, .. } => command.adds_data(),
            KvCommand::Batch(commands) => commands.iter().any(KvCommand::adds_data),
            KvCommand::Put { .. }
            | KvCommand::CompareAndPut { .. }
            | KvCommand::PutIfAbsent { .. }
            | KvCommand::GetAndPut { .. }
            | KvCommand::BatchPut(_)
            | KvCommand::SequenceNext { .. } => true,
        }
    }

    /// Refuses the command unless every key (and range) lies in `region`; for a
    /// [`KvCommand::Batch`], every element's. An unbounded `DeleteRange` end means "to the
    /// region's end", so it is allowed in any region.
    pub fn check_region(&self, region: &Region) -> Result<(), KvError> {
        match self {
            KvCommand::Put { key, .. }
            | KvCommand::Delete { key }
            | KvCommand::CompareAndPut { key, .. }
            | KvCommand::PutIfAbsent { key, .. }
            | KvCommand::GetAndPut { key, .. }
            | KvCommand::SequenceNext { key, .. }
            | KvCommand::SequenceLatest { key }
            | KvCommand::SequenceReset { key }
            | KvCommand::Lock { name: key, .. }
            | KvCommand::Lease { key, .. }
            | KvCommand::LeaseDelete { key, .. } => region.check_key(key),
            KvCommand::DeleteRange { start, end } => {
                let end = if end.is_empty() { &region.end } else { end };
                region.check_range(start, end)
            }
            KvCommand::BatchPut(pairs) => pairs.iter().try_for_each(|(k, _)| region.check_key(k)),
            KvCommand::BatchDelete(keys) => keys.iter().try_for_each(|k| region.check_key(k)),
            KvCommand::Batch(commands) => commands.iter().try_for_each(|c| c.check_region(region)),
            KvCommand::Fenced { command, .. } | KvCommand::Leased { command, .. } => {
                command.check_region(region)
            }
            // The split key must lie strictly inside: the parent keeps at least its start.
            KvCommand::Split { key, .. } => {
                if key == &region.start {
                    return Err(region.out_of_region(key));
                }
                region.check_key(key)
            }
            // Checked against the region when they apply (`crate::merge`).
            KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge(_)
            | KvCommand::FenceMerge { .. }
            | KvCommand::RollbackMerge { .. }
            | KvCommand::Watch(_) => Ok(()),
        }
    }

    /// The versioned binary form carried by a log entry.
    ///
    /// # Panics
    /// If a key, value or batch exceeds the u32 lengths of the format: [`KvCommand::validate`]
    /// refuses such a command first.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer = FieldWriter::with_capacity(self.encoded_len_hint());
        writer.u8(FORMAT_VERSION);
        self.encode_into(&mut writer);
        writer.finish()
    }

    fn encoded_len_hint(&self) -> usize {
        let pair = |k: &Bytes, v: &Bytes| 8 + k.len() + v.len();
        1 + match self {
            KvCommand::Put { key, value }
            | KvCommand::PutIfAbsent { key, value }
            | KvCommand::GetAndPut { key, value } => 1 + pair(key, value),
            KvCommand::Delete { key }
            | KvCommand::SequenceLatest { key }
            | KvCommand::SequenceReset { key } => 5 + key.len(),
            KvCommand::SequenceNext { key, .. } => 13 + key.len(),
            KvCommand::Fenced { lock, command, .. } => 13 + lock.len() + command.encoded_len_hint(),
            KvCommand::Leased { command, .. } => 9 + command.encoded_len_hint(),
            KvCommand::LeaseDelete { key, .. } => 13 + key.len(),
            KvCommand::Lease { key, op, .. } => {
                32 + key.len()
                    + match op {
                        LeaseOp::Attach { key } => key.len(),
                        LeaseOp::Forget { keys } => keys.iter().map(|k| 4 + k.len()).sum(),
                        _ => 0,
                    }
            }
            KvCommand::Lock { name, op, .. } => {
                40 + name.len()
                    + match op {
                        LockOp::Acquire { owner, .. }
                        | LockOp::Renew { owner }
                        | LockOp::Release { owner } => owner.len(),
                        LockOp::Status => 0,
                    }
            }
            KvCommand::DeleteRange { start, end } => 1 + pair(start, end),
            KvCommand::CompareAndPut {
                key,
                expected,
                value,
            } => 2 + pair(key, value) + expected.as_ref().map_or(0, |e| 4 + e.len()),
            KvCommand::BatchPut(pairs) => 5 + pairs.iter().map(|(k, v)| pair(k, v)).sum::<usize>(),
            KvCommand::BatchDelete(keys) => 5 + keys.iter().map(|k| 4 + k.len()).sum::<usize>(),
            KvCommand::Batch(commands) => {
                5 + commands
                    .iter()
                    .map(KvCommand::encoded_len_hint)
                    .sum::<usize>()
            }
            KvCommand::Split { key, .. } => 5 + key.len() + 16,
            KvCommand::PrepareMerge { target, .. } => 64 + target.start.len() + target.end.len(),
            KvCommand::CommitMerge(state) => {
                256 + 2 * (state.source.start.len() + state.source.end.len())
            }
            KvCommand::FenceMerge { .. } | KvCommand::RollbackMerge { .. } => 17,
            KvCommand::Watch(_) => 9,
        }
    }

    fn encode_into(&self, writer: &mut FieldWriter) {
        match self {
            KvCommand::Put { key, value } => {
                writer.u8(tag::PUT);
                writer.bytes(key);
                writer.bytes(value);
            }
            KvCommand::Delete { key } => {
                writer.u8(tag::DELETE);
                writer.bytes(key);
            }
            KvCommand::DeleteRange { start, end } => {
                writer.u8(tag::DELETE_RANGE);
                writer.bytes(start);
                writer.bytes(end);
            }
            KvCommand::CompareAndPut {
                key,
                expected,
                value,
            } => {
                writer.u8(tag::COMPARE_AND_PUT);
                writer.bytes(key);
                writer.option(expected.as_deref());
                writer.bytes(value);
            }
            KvCommand::PutIfAbsent { key, value } => {
                writer.u8(tag::PUT_IF_ABSENT);
                writer.bytes(key);
                writer.bytes(value);
            }
            KvCommand::GetAndPut { key, value } => {
                writer.u8(tag::GET_AND_PUT);
                writer.bytes(key);
                writer.bytes(value);
            }
            KvCommand::BatchPut(pairs) => {
                writer.u8(tag::BATCH_PUT);
                writer.count(pairs.len());
                for (key, value) in pairs {
                    writer.bytes(key);
                    writer.bytes(value);
                }
            }
            KvCommand::BatchDelete(keys) => {
                writer.u8(tag::BATCH_DELETE);
                writer.count(keys.len());
                for key in keys {
                    writer.bytes(key);
                }
            }
            KvCommand::Batch(commands) => {
                writer.u8(tag::BATCH);
                writer.count(commands.len());
                for command in commands {
                    command.encode_into(writer);
                }
            }
            KvCommand::Split {
                key,
                child,
                version,
            } => {
                writer.u8(tag::SPLIT);
                writer.bytes(key);
                writer.u64(child.0);
                writer.u64(*version);
            }
            KvCommand::PrepareMerge { target, version } => {
                writer.u8(tag::PREPARE_MERGE);
                writer.bytes(&target.encode());
                writer.u64(*version);
            }
            KvCommand::CommitMerge(state) => {
                writer.u8(tag::COMMIT_MERGE);
                writer.bytes(&state.encode());
            }
            KvCommand::FenceMerge { expected } => {
                writer.u8(tag::FENCE_MERGE);
                writer.u64(expected.conf_version);
                writer.u64(expected.version);
            }
            KvCommand::RollbackMerge { version } => {
                writer.u8(tag::ROLLBACK_MERGE);
                writer.u64(*version);
            }
            KvCommand::Watch(crate::watch::WatchOp::Interest) => writer.u8(tag::WATCH_INTEREST),
            KvCommand::Watch(crate::watch::WatchOp::End { renewals }) => {
                writer.u8(tag::WATCH_END);
                writer.u64(*renewals);
            }
            KvCommand::SequenceNext { key, step } => {
                writer.u8(tag::SEQUENCE_NEXT);
                writer.bytes(key);
                writer.u64(*step);
            }
            KvCommand::SequenceLatest { key } => {
                writer.u8(tag::SEQUENCE_LATEST);
                writer.bytes(key);
            }
            KvCommand::SequenceReset { key } => {
                writer.u8(tag::SEQUENCE_RESET);
                writer.bytes(key);
            }
            KvCommand::Fenced {
                lock,
                token,
                command,
            } => {
                writer.u8(tag::FENCED);
                writer.bytes(lock);
                writer.u64(*token);
                command.encode_into(writer);
            }
            KvCommand::Lock {
                name,
                op,
                now_ms,
                wall_ms,
            } => {
                writer.u8(tag::LOCK_WALL);
                writer.bytes(name);
                match op {
                    LockOp::Acquire { owner, lease_ms } => {
                        writer.u8(lock_tag::ACQUIRE);
                        writer.bytes(owner);
                        writer.u64(*lease_ms);
                    }
                    LockOp::Renew { owner } => {
                        writer.u8(lock_tag::RENEW);
                        writer.bytes(owner);
                    }
                    LockOp::Release { owner } => {
                        writer.u8(lock_tag::RELEASE);
                        writer.bytes(owner);
                    }
                    LockOp::Status => writer.u8(lock_tag::STATUS),
                }
                writer.u64(*now_ms);
                writer.u64(*wall_ms);
            }
            KvCommand::Lease { .. } | KvCommand::Leased { .. } | KvCommand::LeaseDelete { .. } => {
                self.encode_lease_into(writer);
            }
        }
    }

    /// The lease commands' part of [`KvCommand::encode_into`].
    fn encode_lease_into(&self, writer: &mut FieldWriter) {
        match self {
            KvCommand::Lease { key, op, now_ms } => {
                writer.u8(tag::LEASE);
                writer.bytes(key);
                encode_lease_op(op, writer);
                writer.u64(*now_ms);
            }
            KvCommand::Leased { lease, command } => {
                writer.u8(tag::LEASED);
                writer.u64(*lease);
                command.encode_into(writer);
            }
            KvCommand::LeaseDelete { key, lease } => {
                writer.u8(tag::LEASE_DELETE);
                writer.bytes(key);
                writer.u64(*lease);
            }
            _ => {}
        }
    }

    /// Decodes [`KvCommand::encode`]'s output: refuses another format version, unknown
    /// tags, short input, lengths over the limits (before allocating), a nested batch,
    /// more than [`BATCH_KEYS_MAX`] keys in all, and trailing bytes.
    pub fn decode(data: &[u8]) -> Result<KvCommand, KvError> {
        let mut reader = FieldReader::new(data, "command");
        let version = reader.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(KvError::Corrupt(format!(
                "command: format version {version}, expected {FORMAT_VERSION}"
            )));
        }
        let command = decode_command(&mut reader, true)?;
        reader.finish()?;
        if command.key_count() > BATCH_KEYS_MAX {
            return Err(KvError::Corrupt(format!(
                "command: {} keys in all exceed batch_keys_max ({BATCH_KEYS_MAX})",
                command.key_count()
            )));
        }
        // Ranges and the rest of the limits (lengths were checked while reading).
        command
            .validate_format()
            .map_err(|e| KvError::Corrupt(format!("command: {e}")))?;
        Ok(command)
    }
}

fn encode_lease_op(op: &LeaseOp, writer: &mut FieldWriter) {
    match op {
        LeaseOp::Grant { ttl_ms } => {
            writer.u8(lease_tag::GRANT);
            writer.u64(*ttl_ms);
        }
        LeaseOp::KeepAlive => writer.u8(lease_tag::KEEP_ALIVE),
        LeaseOp::Revoke => writer.u8(lease_tag::REVOKE),
        LeaseOp::Attach { key } => {
            writer.u8(lease_tag::ATTACH);
            writer.bytes(key);
        }
        LeaseOp::Status => writer.u8(lease_tag::STATUS),
        LeaseOp::Expire => writer.u8(lease_tag::EXPIRE),
        LeaseOp::Forget { keys } => {
            writer.u8(lease_tag::FORGET);
            writer.count(keys.len());
            for key in keys {
                writer.bytes(key);
            }
        }
    }
}

/// A lease's list of keys (a forget's, or a state's): at most
/// [`crate::lease::KEYS_PER_LEASE_MAX`].
fn lease_keys(reader: &mut FieldReader<'_>) -> Result<Vec<Bytes>, KvError> {
    let count = reader.count(
        "lease keys",
        crate::lease::KEYS_PER_LEASE_MAX,
        KEY_BYTES_MIN,
    )?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(reader.bytes("lease key", KEY_BYTES_MAX)?);
    }
    Ok(keys)
}

/// The lease commands (`tag::LEASE`, `LEASED`, `LEASE_DELETE`) after their tag.
fn decode_lease_command(found: u8, reader: &mut FieldReader<'_>) -> Result<KvCommand, KvError> {
    let key = |r: &mut FieldReader<'_>| r.bytes("key", KEY_BYTES_MAX);
    Ok(match found {
        tag::LEASE => {
            let route = key(reader)?;
            let op = match reader.u8("lease op")? {
                lease_tag::GRANT => LeaseOp::Grant {
                    ttl_ms: reader.u64("lease ttl")?,
                },
                lease_tag::KEEP_ALIVE => LeaseOp::KeepAlive,
                lease_tag::REVOKE => LeaseOp::Revoke,
                lease_tag::ATTACH => LeaseOp::Attach { key: key(reader)? },
                lease_tag::STATUS => LeaseOp::Status,
                lease_tag::EXPIRE => LeaseOp::Expire,
                lease_tag::FORGET => LeaseOp::Forget {
                    keys: lease_keys(reader)?,
                },
                other => {
                    return Err(KvError::Corrupt(format!(
                        "command: unknown lease op {other}"
                    )))
                }
            };
            KvCommand::Lease {
                key: route,
                op,
                now_ms: reader.u64("lease time")?,
            }
        }
        tag::LEASED => {
            let lease = reader.u64("lease id")?;
            let command = match decode_command(reader, false)? {
                put @ KvCommand::Put { .. } => put,
                _ => {
                    return Err(KvError::Corrupt(
                        "command: only a put may follow a lease".into(),
                    ))
                }
            };
            KvCommand::Leased {
                lease,
                command: Box::new(command),
            }
        }
        _ => KvCommand::LeaseDelete {
            key: key(reader)?,
            lease: reader.u64("lease id")?,
        },
    })
}

fn decode_command(reader: &mut FieldReader<'_>, top: bool) -> Result<KvCommand, KvError> {
    let key = |r: &mut FieldReader<'_>| r.bytes("key", KEY_BYTES_MAX);
    let value = |r: &mut FieldReader<'_>| r.bytes("value", VALUE_BYTES_MAX);
    let command = match reader.u8("tag")? {
        found @ (tag::LEASE | tag::LEASED | tag::LEASE_DELETE) => {
            decode_lease_command(found, reader)?
        }
        tag::PUT => KvCommand::Put {
            key: key(reader)?,
            value: value(reader)?,
        },
        tag::DELETE => KvCommand::Delete { key: key(reader)? },
        tag::DELETE_RANGE => KvCommand::DeleteRange {
            start: reader.bytes("range start", KEY_BYTES_MAX)?,
            end: reader.bytes("range end", KEY_BYTES_MAX)?,
        },
        tag::COMPARE_AND_PUT => KvCommand::CompareAndPut {
            key: key(reader)?,
            expected: reader.option("expected value", VALUE_BYTES_MAX)?,
            value: value(reader)?,
        },
        tag::PUT_IF_ABSENT => KvCommand::PutIfAbsent {
            key: key(reader)?,
            value: value(reader)?,
        },
        tag::GET_AND_PUT => KvCommand::GetAndPut {
            key: key(reader)?,
            value: value(reader)?,
        },
        tag::BATCH_PUT => {
            let count = reader.count("batch put pairs", BATCH_KEYS_MAX, 2 * KEY_BYTES_MIN)?;
            let mut pairs = Vec::with_capacity(count);
            for _ in 0..count {
                pairs.push((key(reader)?, value(reader)?));
            }
            KvCommand::BatchPut(pairs)
        }
        tag::BATCH_DELETE => {
            let count = reader.count("batch delete keys", BATCH_KEYS_MAX, KEY_BYTES_MIN)?;
            let mut keys = Vec::with_capacity(count);
            for _ in 0..count {
                keys.push(key(reader)?);
            }
            KvCommand::BatchDelete(keys)
        }
        tag::BATCH if top => {
            let count = reader.count("batch commands", BATCH_KEYS_MAX, COMMAND_BYTES_MIN)?;
            let mut commands = Vec::with_capacity(count);
            for _ in 0..count {
                commands.push(decode_command(reader, false)?);
            }
            KvCommand::Batch(commands)
        }
        tag::BATCH => {
            return Err(KvError::Corrupt(
                "command: a batch of commands may not hold another batch".into(),
            ))
        }
        tag::SPLIT => KvCommand::Split {
            key: key(reader)?,
            child: RegionId(reader.u64("split child")?),
            version: reader.u64("split version")?,
        },
        tag::PREPARE_MERGE => KvCommand::PrepareMerge {
            target: Region::decode(&reader.bytes("merge target", MERGE_FIELD_BYTES_MAX)?)?,
            version: reader.u64("merge version")?,
        },
        tag::COMMIT_MERGE => KvCommand::CommitMerge(Box::new(MergeState::decode(
            &reader.bytes("merge state", MERGE_FIELD_BYTES_MAX)?,
        )?)),
        tag::FENCE_MERGE => KvCommand::FenceMerge {
            expected: Epoch::new(
                reader.u64("fence conf version")?,
                reader.u64("fence version")?,
            ),
        },
        tag::ROLLBACK_MERGE => KvCommand::RollbackMerge {
            version: reader.u64("rollback version")?,
        },
        tag::WATCH_INTEREST => KvCommand::Watch(crate::watch::WatchOp::Interest),
        tag::WATCH_END => KvCommand::Watch(crate::watch::WatchOp::End {
            renewals: reader.u64("watch renewals")?,
        }),
        tag::SEQUENCE_NEXT => KvCommand::SequenceNext {
            key: key(reader)?,
            step: reader.u64("sequence step")?,
        },
        tag::SEQUENCE_LATEST => KvCommand::SequenceLatest { key: key(reader)? },
        tag::SEQUENCE_RESET => KvCommand::SequenceReset { key: key(reader)? },
        tag::FENCED => {
            let lock = key(reader)?;
            let token = reader.u64("fence token")?;
            // One level only: a fenced write holds a data write, never another wrapper.
            let command = match decode_command(reader, false)? {
                KvCommand::Fenced { .. } => {
                    return Err(KvError::Corrupt(
                        "command: a fenced write may not hold another".into(),
                    ))
                }
                other => other,
            };
            KvCommand::Fenced {
                lock,
                token,
                command: Box::new(command),
            }
        }
        found @ (tag::LOCK | tag::LOCK_WALL) => {
            let name = key(reader)?;
            let owner =
                |r: &mut FieldReader<'_>| r.bytes("lock owner", crate::lock::OWNER_BYTES_MAX);
            let op = match reader.u8("lock op")? {
                lock_tag::ACQUIRE => LockOp::Acquire {
                    owner: owner(reader)?,
                    lease_ms: reader.u64("lock lease")?,
                },
                lock_tag::RENEW => LockOp::Renew {
                    owner: owner(reader)?,
                },
                lock_tag::RELEASE => LockOp::Release {
                    owner: owner(reader)?,
                },
                lock_tag::STATUS => LockOp::Status,
                other => {
                    return Err(KvError::Corrupt(format!(
                        "command: unknown lock op {other}"
                    )))
                }
            };
            let now_ms = reader.u64("lock time")?;
            let wall_ms = if found == tag::LOCK_WALL {
                reader.u64("lock wall time")?
            } else {
                0
            };
            KvCommand::Lock {
                name,
                op,
                now_ms,
                wall_ms,
            }
        }
        unknown => {
            return Err(KvError::Corrupt(format!(
                "command: unknown tag {unknown} ({} bytes left)",
                reader.remaining()
            )))
        }
    };
    Ok(command)
}

/// The result of applying one [`KvCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOutput {
    /// The write applied (put, delete, delete-range, batch put, batch delete).
    Done,
    /// Whether a compare-and-put swapped.
    Swapped(bool),
    /// The value before the write (get-and-put; put-if-absent, where `None` means the put
    /// happened).
    Previous(Option<Bytes>),
    /// One result per element of a [`KvCommand::Batch`], in order; an error is the
    /// refusal's message (that element changed nothing).
    Batch(Vec<Result<KvOutput, String>>),
    /// The values a [`KvCommand::SequenceNext`] handed out: `[start, end)`.
    Range {
        /// The first value.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A sequence's next value ([`KvCommand::SequenceLatest`]).
    Counter(u64),
    /// A lock's state after a [`KvCommand::Lock`].
    Lock(LockState),
    /// A lease's state after a [`KvCommand::Lease`].
    Lease(LeaseState),
}

mod output_tag {
    pub const DONE: u8 = 1;
    pub const SWAPPED: u8 = 2;
    pub const PREVIOUS: u8 = 3;
    pub const BATCH: u8 = 4;
    pub const RANGE: u8 = 5;
    pub const COUNTER: u8 = 6;
    pub const LOCK: u8 = 7;
    pub const LEASE: u8 = 8;
    pub const ELEMENT_OK: u8 = 0;
    pub const ELEMENT_ERR: u8 = 1;
}

impl KvOutput {
    /// The versioned binary form returned through the proposer's completion. Error texts
    /// longer than [`ERROR_TEXT_BYTES_MAX`] are cut at a character boundary.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer = FieldWriter::with_capacity(16);
        writer.u8(FORMAT_VERSION);
        self.encode_into(&mut writer);
        writer.finish()
    }

    fn encode_into(&self, writer: &mut FieldWriter) {
        match self {
            KvOutput::Done => writer.u8(output_tag::DONE),
            KvOutput::Swapped(swapped) => {
                writer.u8(output_tag::SWAPPED);
                writer.u8(u8::from(*swapped));
            }
            KvOutput::Previous(previous) => {
                writer.u8(output_tag::PREVIOUS);
                writer.option(previous.as_deref());
            }
            KvOutput::Range { start, end } => {
                writer.u8(output_tag::RANGE);
                writer.u64(*start);
                writer.u64(*end);
            }
            KvOutput::Counter(value) => {
                writer.u8(output_tag::COUNTER);
                writer.u64(*value);
            }
            KvOutput::Lock(state) => {
                writer.u8(output_tag::LOCK);
                writer.u8(u8::from(state.acquired));
                writer.u8(u8::from(state.held));
                writer.bytes(&state.owner);
                writer.u64(state.token);
                writer.u64(state.lease_ms);
                writer.u64(state.remaining_ms);
                writer.u64(u64::from(state.count));
            }
            KvOutput::Lease(state) => {
                writer.u8(output_tag::LEASE);
                writer.u64(state.ttl_ms);
                writer.u64(state.remaining_ms);
                writer.u8(u8::from(state.alive));
                writer.count(state.keys.len());
                for key in &state.keys {
                    writer.bytes(key);
                }
            }
            KvOutput::Batch(results) => {
                writer.u8(output_tag::BATCH);
                writer.count(results.len());
                for result in results {
                    match result {
                        Ok(output) => {
                            writer.u8(output_tag::ELEMENT_OK);
                            output.encode_into(writer);
                        }
                        Err(why) => {
                            writer.u8(output_tag::ELEMENT_ERR);
                            writer.bytes(cut_text(why).as_bytes());
                        }
                    }
                }
            }
        }
    }

    /// Decodes [`KvOutput::encode`]'s output with the same refusals as
    /// [`KvCommand::decode`].
    pub fn decode(data: &[u8]) -> Result<KvOutput, KvError> {
        let mut reader = FieldReader::new(data, "output");
        let version = reader.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(KvError::Corrupt(format!(
                "output: format version {version}, expected {FORMAT_VERSION}"
            )));
        }
        let output = decode_output(&mut reader, true)?;
        reader.finish()?;
        Ok(output)
    }
}

fn decode_output(reader: &mut FieldReader<'_>, top: bool) -> Result<KvOutput, KvError> {
    match reader.u8("tag")? {
        output_tag::DONE => Ok(KvOutput::Done),
        output_tag::SWAPPED => match reader.u8("swapped flag")? {
            0 => Ok(KvOutput::Swapped(false)),
            1 => Ok(KvOutput::Swapped(true)),
            flag => Err(KvError::Corrupt(format!(
                "output: swapped flag {flag}, expected 0 or 1"
            ))),
        },
        output_tag::PREVIOUS => Ok(KvOutput::Previous(
            reader.option("previous value", VALUE_BYTES_MAX)?,
        )),
        output_tag::RANGE => {
            let start = reader.u64("range start")?;
            let end = reader.u64("range end")?;
            if end < start {
                return Err(KvError::Corrupt(format!(
                    "output: range end {end} before its start {start}"
                )));
            }
            Ok(KvOutput::Range { start, end })
        }
        output_tag::COUNTER => Ok(KvOutput::Counter(reader.u64("counter")?)),
        output_tag::LOCK => {
            let flag = |r: &mut FieldReader<'_>, what: &str| match r.u8(what)? {
                0 => Ok(false),
                1 => Ok(true),
                other => Err(KvError::Corrupt(format!(
                    "output: {what} {other}, expected 0 or 1"
                ))),
            };
            Ok(KvOutput::Lock(LockState {
                acquired: flag(reader, "lock acquired flag")?,
                held: flag(reader, "lock held flag")?,
                owner: reader.bytes("lock owner", crate::lock::OWNER_BYTES_MAX)?,
                token: reader.u64("lock token")?,
                lease_ms: reader.u64("lock lease")?,
                remaining_ms: reader.u64("lock remaining")?,
                count: u32::try_from(reader.u64("lock count")?)
                    .map_err(|_| KvError::Corrupt("output: lock count past u32".into()))?,
            }))
        }
        output_tag::LEASE => {
            let ttl_ms = reader.u64("lease ttl")?;
            let remaining_ms = reader.u64("lease remaining")?;
            let alive = match reader.u8("lease alive flag")? {
                0 => false,
                1 => true,
                other => {
                    return Err(KvError::Corrupt(format!(
                        "output: lease alive flag {other}, expected 0 or 1"
                    )))
                }
            };
            Ok(KvOutput::Lease(LeaseState {
                ttl_ms,
                remaining_ms,
                alive,
                keys: lease_keys(reader)?,
            }))
        }
        output_tag::BATCH if top => {
            let count = reader.count("batch results", BATCH_KEYS_MAX, 2)?;
            let mut results = Vec::with_capacity(count);
            for _ in 0..count {
                match reader.u8("batch result kind")? {
                    output_tag::ELEMENT_OK => results.push(Ok(decode_output(reader, false)?)),
                    output_tag::ELEMENT_ERR => {
                        let text = reader.bytes("error text", ERROR_TEXT_BYTES_MAX)?;
                        let text = String::from_utf8(text.to_vec()).map_err(|_| {
                            KvError::Corrupt("output: error text is not UTF-8".into())
                        })?;
                        results.push(Err(text));
                    }
                    kind => {
                        return Err(KvError::Corrupt(format!(
                            "output: batch result kind {kind}, expected 0 or 1"
                        )))
                    }
                }
            }
            Ok(KvOutput::Batch(results))
        }
        output_tag::BATCH => Err(KvError::Corrupt(
            "output: a batch result may not hold another batch".into(),
        )),
        unknown => Err(KvError::Corrupt(format!("output: unknown tag {unknown}"))),
    }
}

/// `text` cut to at most [`ERROR_TEXT_BYTES_MAX`] bytes at a character boundary.
fn cut_text(text: &str) -> &str {
    if text.len() <= ERROR_TEXT_BYTES_MAX {
        return text;
    }
    let mut end = ERROR_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
