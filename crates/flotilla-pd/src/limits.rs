//! Named limits on everything the placement driver decodes or keeps.
//!
//! Owns: the numbers, and the compile-time relations between them. Must never: be
//! bypassed by a decoder (every count and length read is checked against one of these).

/// Largest store address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Most labels on one store.
pub const LABELS_MAX: usize = 16;
/// Largest label key or value, in bytes.
pub const LABEL_BYTES_MAX: usize = 64;
/// Largest region boundary key: the KV store's key limit (`flotilla_kv::limits`).
pub const KEY_BYTES_MAX: usize = 4096;
/// Most voters plus learners of one region.
pub const PEERS_MAX: usize = 16;
/// Most steps in one operator.
pub const STEPS_MAX: usize = 16;
/// Largest configuration key or value, in bytes.
pub const CONFIG_BYTES_MAX: usize = 64;
/// Largest reason carried by a cancelled or timed-out operator, in bytes.
pub const REASON_BYTES_MAX: usize = 1024;
/// Most stores the placement driver records (tombstones included).
pub const STORES_MAX: usize = 10_000;
/// Most regions the placement driver records.
pub const REGIONS_MAX: usize = 1_000_000;
/// Finished operators kept for `admin pd status`, newest last.
pub const FINISHED_MAX: usize = 64;
/// Most ids one `AllocIds` command hands out.
pub const ALLOC_IDS_MAX: u32 = 1000;
/// The first id the allocator hands out: regions made at bootstrap are numbered
/// `1..=N` with N far below this, so an allocated id never collides with one of them.
pub const ALLOCATED_ID_FIRST: u64 = 1_000_000;
/// Largest `pd.state` snapshot file read (1,000,000 regions with short keys fit easily;
/// one with every key at its limit would not, and is refused rather than read unbounded).
pub const STATE_FILE_BYTES_MAX: u64 = 1 << 30;

const _: () = assert!(KEY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(
    PEERS_MAX >= 7 * 2,
    "max-replicas 7 plus a learner each must fit"
);
const _: () = assert!((ALLOC_IDS_MAX as u64) < ALLOCATED_ID_FIRST);
