//! # flotilla-storage: durable state for many raft groups per process
//!
//! SOFAJRaft's three storage roles — a log store, a meta store (term and vote) and a
//! snapshot store — designed for many raft groups per process and for never losing an
//! acknowledged write (see `docs/DESIGN.md`, "One log for many groups" and "Durability is not
//! optional").
//!
//! - [`SharedLog`] ([`log`]): one segmented, append-only log for every group of a process.
//!   A [`WriteBatch`] of appends and truncations for any number of groups is one write and
//!   one fsync (group commit). Records carry CRC32C; segments rotate and are reclaimed once
//!   every group compacted past them; an index and a byte-capped cache serve reads. On open
//!   a torn tail is cut (and reported), any other damage stops the open naming the file and
//!   offset. A failed write or fsync fails the log for good. [`GroupLog`] is one group's
//!   view: the core's `LogStore` and this crate's [`LogStorage`].
//! - [`FileMetaStorage`] ([`meta`]): term and vote of every group in one journal, a batch
//!   of groups one write and one fsync before `save_many` returns.
//! - [`SnapshotStore`] ([`snapshot`]): a directory per snapshot with a checksummed
//!   manifest, committed by rename; chunked, verified, resumable, throttled copy from a
//!   [`SnapshotSource`].
//! - [`fs`]: the file layer, real ([`fs::StdFs`]) and simulated ([`fs::SimFs`], with crash
//!   and failure injection) — every fault test runs on the simulated one.
//! - [`memory`]: in-memory log and meta for tests and the simulator
//!   ([`SnapshotStore::in_memory`] for snapshots).
//! - [`fields`]: the bounded field reader and writer the KV layer and the placement driver
//!   encode their commands, outputs and metadata with.

#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod fields;
pub mod fs;
pub mod log;
pub mod memory;
pub mod meta;
pub mod sealed;
pub mod snapshot;
pub mod traits;

pub use error::StorageError;
pub use log::{GroupLog, LogOptions, RecoveryReport, SharedLog, WriteBatch};
pub use memory::{MemLogStorage, MemMetaStorage};
pub use meta::FileMetaStorage;
pub use snapshot::{
    copy_snapshot, CopyOptions, CopyReport, SnapshotReader, SnapshotSource, SnapshotStore,
    SnapshotWriter, Throttle,
};
pub use traits::{GroupId, LogStorage, MetaStorage, RaftMeta, SnapshotStorage};
