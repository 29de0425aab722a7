//! The CLI service (SOFAJRaft's `CliService`) over gRPC, and [`CliClient`], its Rust client.
//!
//! The service (`proto/cli.proto`, `flotilla.cli.v1.Cli`) is served on the process's one
//! address next to the raft stream, when the server was given the manager
//! ([`crate::grpc::GrpcServer::serve_with_cli`]). Membership changes, transfers and the
//! leader-only queries are answered by the group's leader; others refuse with `NotLeader`
//! and the leader they know of, which the client follows.
//!
//! Errors: every refusal is a gRPC status whose metadata carries [`ERROR_KIND_KEY`] (the
//! [`RaftError`](crate::RaftError) / [`NodeError`](crate::NodeError) kind, or
//! `NoSuchGroup`) and, when known, [`LEADER_KEY`] (the leader's address). The code follows
//! the kind ([`status_of`]); an outcome that is unknown is `UNKNOWN`.
//!
//! Owns: validation of requests (peer ids, list sizes), the error mapping, the client's
//! leader discovery and bounded retries. Must never: retry an operation whose outcome is
//! unknown (the client answers [`CliError::Unknown`] instead), or trust a peer's answer
//! without checking it.
//!
//! TLS: a server given a [`super::TlsConfig`] serves the CLI service under mutual TLS too;
//! a client then needs one in [`CliOptions::tls`] (its certificate signed by the cluster's
//! CA), and a plain-text client is refused at the handshake.
//!
//! Not yet: `ResetLearners` is two changes (removals, then additions), not one atomic
//! change.
//!
//! Files, by what each owns: `metadata` (what calls and refusals carry in gRPC
//! metadata), `peers` (peer ids on the CLI wire), `service` (the server side), `client`
//! ([`CliClient`]), `retry` (its retry policy), `options` ([`CliOptions`]), `error`
//! ([`CliError`]) and `rebalance` (the executor of leader rebalancing; the planner is
//! [`crate::rebalance`]).

mod client;
mod error;
pub(crate) mod metadata;
mod options;
mod peers;
mod rebalance;
mod retry;
mod service;

/// The protobuf messages and the tonic client and server generated from `proto/cli.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flotilla.cli.v1");
}

pub use client::CliClient;
pub use error::CliError;
pub use metadata::{
    check_receiver, insert_leader, kind_of, status_of, Stamp, CLUSTER_KEY, ERROR_KIND_KEY,
    LEADER_ID_KEY, LEADER_KEY, STORE_KEY,
};
pub use options::CliOptions;
pub use peers::{PEER_ID_BYTES_MAX, REQUEST_PEERS_MAX};
pub use service::CliNodes;
pub(crate) use service::CliService;
