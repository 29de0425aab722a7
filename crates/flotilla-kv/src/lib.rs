//! # flotilla-kv: the multi-raft KV store's data layer
//!
//! RheaKV's store on Flotilla (`docs/DESIGN.md`, "Layers, as the code has them"):
//!
//! - [`ids`]: [`RegionId`] and [`Epoch`], a leaf every other module may name.
//! - [`region`]: [`Region`] (a key range `[start, end)` with its [`Epoch`]).
//! - [`command`]: [`KvCommand`], the writes that go through the raft log, and
//!   [`KvOutput`], their results, in a versioned binary format.
//! - [`engine`]: the [`KvEngine`] trait every region of a store shares, with
//!   [`MemoryEngine`] and [`FjallEngine`] (the durable default), and the checksummed range
//!   export that region snapshots carry.
//! - [`state_machine`]: [`KvStateMachine`], one region's replicated state machine over
//!   the Node runtime.
//! - [`limits`] and [`KvError`]: the named limits and the typed errors.
//!
//! - [`store`]: [`store::Store`], the store engine of one process: its data directory,
//!   static regions, request admission (region, epoch, range, limits) and shutdown. A store
//!   listens nowhere.
//! - [`service`]: the gRPC KV service (`proto/kv.proto`), and the protobuf messages the
//!   store, the service and the client share ([`service::proto`]).
//! - [`server`]: [`server::StoreServer`], the one place a store, its gRPC services (raft,
//!   CLI, KV, `GET /metrics`) and its listener are put together, started and stopped.
//! - [`client`]: [`client::KvClient`], routing by key, leader discovery, retries of
//!   definite failures only, batching of concurrent single-key requests.
//!
//! - [`split`] and [`merge`]: the rules a replica applies to split and merge entries, and
//!   the records a store finishes after a crash.
//!
//! Not yet: sequences and locks.

#![deny(missing_docs)]

pub mod backup;
pub mod client;
pub mod command;
pub mod engine;
pub mod error;
pub mod fence;
pub mod ids;
pub mod lease;
pub mod limits;
pub mod lock;
pub mod merge;
pub mod region;
pub mod sequence;
pub mod server;
pub mod service;
pub mod split;
pub mod state_machine;
pub mod store;
pub mod watch;

pub use command::{KvCommand, KvOutput};
pub use engine::{FjallEngine, KvEngine, MemoryEngine, WriteBatch, WriteOp};
pub use error::KvError;
pub use ids::{Epoch, RegionId};
pub use region::Region;
pub use state_machine::{KvRegionHandle, KvStateMachine};
