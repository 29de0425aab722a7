//! # flotilla-kv: the multi-raft KV store's data layer
//!
//! RheaKV's store on Flotilla (`DESIGN.md`, "flotilla-kv"; the reference's §2):
//!
//! - [`region`]: [`Region`] (a key range `[start, end)` with its [`Epoch`]), [`RegionId`].
//! - [`command`]: [`KvCommand`], the writes that go through the raft log, and
//!   [`KvOutput`], their results, in a versioned binary format.
//! - [`engine`]: the [`KvEngine`] trait every region of a store shares, with
//!   [`MemoryEngine`] and [`FjallEngine`] (the durable default), and the checksummed range
//!   export that region snapshots carry.
//! - [`state_machine`]: [`KvStateMachine`], one region's replicated state machine over
//!   the Node runtime.
//! - [`limits`] and [`KvError`]: the named limits and the typed errors.
//!
//! Not yet: the store engine hosting regions, the gRPC KV service, the routing client,
//! splits, sequences and locks.

#![deny(missing_docs)]

mod codec;
pub mod command;
pub mod engine;
pub mod error;
pub mod limits;
pub mod region;
pub mod state_machine;

pub use command::{KvCommand, KvOutput};
pub use engine::{FjallEngine, KvEngine, MemoryEngine, WriteBatch, WriteOp};
pub use error::KvError;
pub use region::{Epoch, Region, RegionId};
pub use state_machine::{KvRegionHandle, KvStateMachine};
