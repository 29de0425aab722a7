//! Integration tests of the node runtime: several managers in one process joined by
//! `LocalTransport`, on real temporary directories, with a counter state machine. No
//! assertion about speed: every wait is a generous deadline.

mod child;
mod cli;
mod cli_hints;
mod cluster;
mod connections;
mod grpc;
mod grpc_snapshots;
mod grpc_tls;
mod hibernation;
mod metrics_scale;
mod node_api;
mod observability;
mod process;
mod snapshots_membership;
mod transport_limits;
