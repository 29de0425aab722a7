//! `KvError`: every operating error of the KV layer, typed so callers can match on it.
//!
//! Owns: the error vocabulary shared by engines, codecs, the state machine and (later) the
//! store and client. Must never: carry a broken invariant (those panic, STYLE.md §3).

use crate::ids::{Epoch, RegionId};

/// An operating error of the KV layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// An empty key in a write: the engines cannot store it (fjall asserts on it), and an
    /// empty key means "unbounded" in ranges and scans (etcd: "key is empty").
    #[error("key is empty")]
    KeyEmpty,
    /// A key longer than [`crate::limits::KEY_BYTES_MAX`].
    #[error("key of {size} bytes exceeds key_bytes_max ({limit} bytes)")]
    KeyTooLarge {
        /// Length of the key.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A value longer than [`crate::limits::VALUE_BYTES_MAX`].
    #[error("value of {size} bytes exceeds value_bytes_max ({limit} bytes)")]
    ValueTooLarge {
        /// Length of the value.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A batch with more keys or operations than [`crate::limits::BATCH_KEYS_MAX`].
    #[error("batch of {size} keys exceeds batch_keys_max ({limit})")]
    BatchTooLarge {
        /// Keys (or operations) in the batch.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A write whose encoded command is larger than the largest raft entry a store can
    /// replicate ([`crate::limits::COMMAND_BYTES_MAX`]).
    #[error("write of {size} bytes exceeds command_bytes_max ({limit} bytes, the largest entry a region replicates)")]
    CommandTooLarge {
        /// Bytes of the encoded command.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A scan limit above [`crate::limits::SCAN_LIMIT_MAX`].
    #[error("scan limit {size} exceeds scan_limit_max ({limit})")]
    ScanLimitTooLarge {
        /// The limit asked for.
        size: usize,
        /// The largest allowed.
        limit: usize,
    },
    /// A key outside the region (or the range) the operation is confined to.
    #[error("key {key:?} is outside region {region} [{start:?}, {end:?})")]
    KeyOutOfRegion {
        /// The region (`RegionId(0)` when the bound is a bare range, as in an import).
        region: RegionId,
        /// The offending key (escaped for display).
        key: String,
        /// The region's start key (escaped).
        start: String,
        /// The region's end key (escaped; empty = unbounded).
        end: String,
    },
    /// A range whose start lies after its end.
    #[error("invalid range: start {start:?} is after end {end:?}")]
    InvalidRange {
        /// The start key (escaped).
        start: String,
        /// The end key (escaped).
        end: String,
    },
    /// Bytes that do not decode (a command, an output, region metadata, a snapshot file).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The storage engine failed (I/O, the engine's own error).
    #[error("storage engine error: {0}")]
    Engine(String),
    /// An import failed after part of it was written: the range holds a mix of old and new
    /// data and must be re-imported before it is served.
    #[error("range [{start:?}, {end:?}) is inconsistent after a failed import: {reason}")]
    RangeInconsistent {
        /// Start of the range (escaped).
        start: String,
        /// End of the range (escaped).
        end: String,
        /// What failed.
        reason: String,
    },
    /// The request's epoch is not the region's current epoch (it was split or its
    /// configuration changed): refresh the route and retry.
    #[error("stale epoch for region {region}: given {given}, current {current}")]
    StaleEpoch {
        /// The region.
        region: RegionId,
        /// The region's current epoch.
        current: Epoch,
        /// The epoch the request carried.
        given: Epoch,
        /// The region as it is now on the store that answered, when it hosts it (encoded
        /// by `Region::encode`): a client swaps it into its routes and retries without
        /// asking for routes again.
        now: Option<bytes::Bytes>,
    },
    /// This store's peer of the region is not its leader.
    #[error("not leader of region {region}; leader: {}", leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The region.
        region: RegionId,
        /// The leader's address, if known.
        leader: Option<String>,
    },
    /// This store hosts no such region.
    #[error("no such region: {0}")]
    NoSuchRegion(RegionId),
    /// The store's data passed its quota (`--quota-bytes`): new data is refused until
    /// usage falls back below it, while reads, deletes and compaction go on (etcd's NOSPACE
    /// alarm).
    #[error(
        "no space: store {store} holds {used} bytes of data, over its quota of {quota} bytes; \
             writes that add data are refused until it falls below (delete keys or compact)"
    )]
    NoSpace {
        /// The store's address.
        store: String,
        /// Bytes of its data directory.
        used: u64,
        /// Its quota.
        quota: u64,
    },
    /// `OpenRegion` or `CloseRegion` refused: the region's description is not acceptable
    /// to this store (another cluster, a range over a region it hosts, a reused id, the
    /// cap), or the peer cannot be closed (a member, or it holds data). Nothing changed.
    #[error("region refused: {0}")]
    RegionRefused(String),
    /// A bounded queue is full; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The outcome of a write is not known (it may or may not have applied).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The state machine refused the whole command (nothing of it applied).
    #[error("refused by the state machine: {0}")]
    Refused(String),
    /// Another error of the region's raft group (`kind`: the node runtime's error kind,
    /// e.g. `LeaderNotReady`, `Transferring`, `ShutDown`, `TimedOut`).
    #[error("{message}")]
    Node {
        /// The runtime's error kind.
        kind: String,
        /// What happened.
        message: String,
    },
}

/// A field of a command, output or region that did not decode: its message already names
/// what was being read and the field (see [`flotilla_storage::fields`]).
impl From<flotilla_storage::fields::DecodeError> for KvError {
    fn from(error: flotilla_storage::fields::DecodeError) -> KvError {
        KvError::Corrupt(error.0)
    }
}

/// Escapes a key for an error message: printable ASCII as is, other bytes as `\xNN`,
/// at most 64 bytes shown.
pub(crate) fn show(key: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 64;
    let mut text: String = key
        .iter()
        .take(SHOWN_BYTES_MAX)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if key.len() > SHOWN_BYTES_MAX {
        text.push_str(&format!("...({} bytes)", key.len()));
    }
    text
}
