//! # flotilla-node: the runtime that turns the core into a Raft library
//!
//! SOFAJRaft's node layer on tokio (`docs/DESIGN.md`, "Layers, as the code has them"; SOFAJRaft's
//! Node API and its many groups in one process):
//!
//! - [`NodeManager`] ([`manager`]): every group of one process, driven in rounds over one
//!   shared log — one write and one fsync per round for all groups, one frame per
//!   destination process.
//! - [`Node`]: the per-group handle applications call (apply, read_index, membership,
//!   transfer, snapshot, status).
//! - [`StateMachine`]: the application's callbacks, applied from a batched [`ApplyIter`].
//! - [`Transport`]: how frames travel; [`LocalTransport`] joins managers in one process.
//! - [`SnapshotService`] and [`Transport::fetch_snapshot`] ([`snapshot`]): followers pull
//!   the leader's snapshot in chunks, off the round, resumable and throttled.
//! - Observability: [`NodeManager::metrics_text`] (Prometheus text format, per store:
//!   latencies, batch sizes, queue depths, elections, snapshots, groups by role and health,
//!   lag across groups and the worst laggards), [`NodeManager::metrics_text_for`] (one group
//!   or every group in detail, [`exposition`]),
//!   [`NodeManager::describe`] (every group's dump) and debug-level `tracing` spans per
//!   group in the round.
//! - Hibernation (on by default, [`ManagerOptions::hibernation`]): an idle group stops
//!   ticking and exchanging messages on every peer and wakes on a request or a message;
//!   processes exchange one small liveness beacon per heartbeat interval, so the sleeping
//!   followers of a dead leader still elect (see [`manager`]).
//! - [`rebalance`]: leader rebalancing as a pure planner (state in, moves out), carried out
//!   by [`grpc::CliClient::rebalance`].
//!
//! - [`grpc`]: the network — one address per process serving the raft stream, snapshot
//!   fetches and the CLI service ([`grpc::CliClient`] finds the leader and retries on
//!   "not leader"); `examples/counter` is the quick-start built on this public API.
//!
//! `GET /metrics` is served next to them by [`grpc::ExtraService::metrics`]. Mutual TLS
//! (optional): [`grpc::tls`].

#![deny(missing_docs)]

mod control;
mod error;
pub mod exposition;
mod group;
pub mod grpc;
mod hibernation;
pub mod identity;
mod install;
pub mod limits;
pub mod manager;
mod metrics;
mod node;
mod options;
pub mod rebalance;
mod request;
mod round;
mod shared;
pub mod snapshot;
mod state_machine;
mod status;
mod store;
mod transport;
mod wake;
mod wake_policy;

pub use error::NodeError;
pub use exposition::{
    MetricsQuery, MetricsQueryError, LAGGARDS_MAX, LAGGING_ENTRIES_MIN, METRICS_QUERY_BYTES_MAX,
};
pub use group::GroupStart;
pub use identity::{AddressBook, Identity, StoreId};
pub use limits::{ENTRY_BYTES_MAX, FRAME_BYTES_MAX};
pub use manager::{ManagerStats, NodeManager};
pub use metrics::TransportMetrics;
pub use node::Node;
pub use options::{ManagerOptions, QueueFullPolicy};
pub use snapshot::{SnapshotFetch, SnapshotPart, SnapshotRequest, SnapshotService};
pub use state_machine::{ApplyIter, Completion, StateMachine, Task};
pub use status::NodeStatus;
pub use transport::{Frame, Inbox, LocalTransport, Transport};

pub use flotilla_raft::{
    Configuration, LogIndex, PeerId, RaftError, ReadMode, Role, SnapshotMeta, Term,
};
pub use flotilla_storage::{sealed, GroupId, SnapshotReader, SnapshotWriter};
