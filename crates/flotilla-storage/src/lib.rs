//! # flotilla-storage: durable state for many raft groups per process
//!
//! SOFAJRaft's three storage roles — a log store, a meta store (term and vote) and a
//! snapshot store — designed for many raft groups per process and for never losing an
//! acknowledged write (see `DESIGN.md`, "One log for many groups" and "Durability is not
//! optional").
//!
//! Work in progress (issue 3). In place: the file layer ([`fs`]) with a simulated file
//! system for crash and fault tests, the on-disk codec ([`codec`]), the storage contracts
//! ([`traits`]) and in-memory implementations ([`memory`]).

#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod fs;
pub mod log;
pub mod memory;
pub mod meta;
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
pub use traits::{GroupId, LogStorage, MetaStorage, RaftMeta};
