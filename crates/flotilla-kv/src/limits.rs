//! Named limits of the KV layer (STYLE.md §5) and the checks that enforce them.
//!
//! Owns: the sizes every gateway (decoders, the store, engines) checks before allocating or
//! proposing. Must never: be bypassed by a decoder (lengths are checked before allocation).

use crate::error::KvError;

/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 8 * 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest part of an entry's watch history (`crate::watch`): one change of the largest
/// key and value, and its framing. The engines take meta values this large for the watch
/// history only.
pub const WATCH_PART_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Most keys (or operations) in one batch command, multi-get or batch of commands.
pub const BATCH_KEYS_MAX: usize = 10_000;
/// Most regions one store hosts a peer of (`OpenRegion` refuses more). Each is a raft group
/// of the store's node runtime and a line of `store.meta`; TiKV stores host up to about
/// this many regions with hibernation, as this runtime's groups hibernate too.
pub const REGIONS_PER_STORE_MAX: usize = 100_000;
/// Most pairs one scan returns.
pub const SCAN_LIMIT_MAX: usize = 10_000;
/// Largest KV service request or answer, on the server and on the client alike (a batch of
/// large values; single values are limited to [`VALUE_BYTES_MAX`]).
pub const KV_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest encoded write command a store proposes: the largest raft entry the node runtime
/// accepts, which fits a raft frame with room for its framing by construction
/// (`flotilla_node::limits`). A larger write (a batch of large values within
/// [`KV_MESSAGE_BYTES_MAX`]) is refused with [`KvError::CommandTooLarge`] before it is
/// proposed: what is admitted can always be replicated.
pub const COMMAND_BYTES_MAX: usize = flotilla_node::ENTRY_BYTES_MAX;

/// Refuses an encoded command larger than [`COMMAND_BYTES_MAX`].
pub fn check_command_bytes(size: usize) -> Result<(), KvError> {
    if size > COMMAND_BYTES_MAX {
        return Err(KvError::CommandTooLarge {
            size,
            limit: COMMAND_BYTES_MAX,
        });
    }
    Ok(())
}

/// Most key and value bytes one scan answer carries: a scan stops there (after at least one
/// pair) and says there is more, so an answer always fits [`KV_MESSAGE_BYTES_MAX`] and a
/// store never copies more than this for one scan, whatever the limit asked.
pub const SCAN_REPLY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Protobuf framing of one pair in a scan answer, at most (tags and lengths).
const SCAN_PAIR_FRAMING_BYTES_MAX: usize = 16;

// Encoded lengths and counts are u32s: every key, value and batch length must fit one.
const _: () = assert!(KEY_BYTES_MAX < VALUE_BYTES_MAX);
// A single put of the largest key and value always fits an entry.
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + 1024 < COMMAND_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_KEYS_MAX <= u32::MAX as usize && SCAN_LIMIT_MAX <= u32::MAX as usize);
// A scan answer: the budget, plus the one pair that may cross it, plus every pair's framing.
const _: () = assert!(
    SCAN_REPLY_BYTES_MAX
        + KEY_BYTES_MAX
        + VALUE_BYTES_MAX
        + SCAN_LIMIT_MAX * SCAN_PAIR_FRAMING_BYTES_MAX
        < KV_MESSAGE_BYTES_MAX
);

/// Refuses a key longer than [`KEY_BYTES_MAX`].
pub fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::KeyTooLarge {
            size: key.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Refuses the key of a write: empty (the engines cannot store it; an empty key means
/// "unbounded" in ranges) or longer than [`KEY_BYTES_MAX`].
pub fn check_write_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::KeyEmpty);
    }
    check_key(key)
}

/// Refuses a value longer than [`VALUE_BYTES_MAX`].
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(KvError::ValueTooLarge {
            size: value.len(),
            limit: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

/// Refuses a batch of more than [`BATCH_KEYS_MAX`] keys or operations.
pub fn check_batch_len(len: usize) -> Result<(), KvError> {
    if len > BATCH_KEYS_MAX {
        return Err(KvError::BatchTooLarge {
            size: len,
            limit: BATCH_KEYS_MAX,
        });
    }
    Ok(())
}

/// Refuses a scan limit above [`SCAN_LIMIT_MAX`].
pub fn check_scan_limit(limit: usize) -> Result<(), KvError> {
    if limit > SCAN_LIMIT_MAX {
        return Err(KvError::ScanLimitTooLarge {
            size: limit,
            limit: SCAN_LIMIT_MAX,
        });
    }
    Ok(())
}

/// Refuses a range `[start, end)` whose start lies after its end (an empty `end` is
/// unbounded, so never before `start`).
pub fn check_range(start: &[u8], end: &[u8]) -> Result<(), KvError> {
    if !end.is_empty() && start > end {
        return Err(KvError::InvalidRange {
            start: crate::error::show(start),
            end: crate::error::show(end),
        });
    }
    Ok(())
}
