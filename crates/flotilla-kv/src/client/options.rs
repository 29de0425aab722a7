//! What a [`super::KvClient`] is told: how reads are made linearizable
//! ([`ReadConsistency`]) and its tuning ([`ClientOptions`]).
//!
//! Owns: the defaults (RheaKV's batch sizes, the timeouts) and the protobuf read mode of a
//! consistency. Must never: depend on the rest of the client (every part of it reads these).

use std::time::Duration;

use flotilla_node::grpc::TlsConfig;

use crate::service::proto;

/// How reads are made linearizable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// ReadIndex on the leader (one heartbeat round to a quorum).
    #[default]
    Index,
    /// The leader's lease (ReadIndex when the lease is not valid).
    Lease,
    /// Any peer of the region, after a ReadIndex from the leader.
    Follower,
}

impl std::str::FromStr for ReadConsistency {
    type Err = String;

    fn from_str(text: &str) -> Result<ReadConsistency, String> {
        match text {
            "index" => Ok(ReadConsistency::Index),
            "lease" => Ok(ReadConsistency::Lease),
            "follower" => Ok(ReadConsistency::Follower),
            other => Err(format!(
                "unknown read mode {other:?}: expected index, lease or follower"
            )),
        }
    }
}

impl ReadConsistency {
    pub(super) fn proto(self) -> i32 {
        match self {
            ReadConsistency::Index => proto::ReadMode::ReadIndex as i32,
            ReadConsistency::Lease => proto::ReadMode::Lease as i32,
            ReadConsistency::Follower => proto::ReadMode::Follower as i32,
        }
    }
}

/// Tuning of a [`KvClient`](super::KvClient).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest one operation may take, retries included.
    pub timeout: Duration,
    /// Limit on connecting to one store.
    pub connect_timeout: Duration,
    /// Requests one operation may send (redirects and retries included; at least 1).
    pub attempts_max: usize,
    /// Batch concurrent single-key puts, deletes and gets per region.
    pub batching: bool,
    /// Most ops in one batch.
    pub batch_ops_max: usize,
    /// Most key and value bytes in one batch.
    pub batch_bytes_max: usize,
    /// Most batches of one region and class (writes, or gets of one read mode) in flight
    /// at once (at least 1).
    pub batches_in_flight_max: usize,
    /// Mutual TLS; `None`: plain text.
    pub tls: Option<TlsConfig>,
    /// Refresh the route table in the background this often, so that a client left idle
    /// while the stores are replaced one by one (containers moving) still knows current
    /// members when it is used again; `None`: only when a request needs it.
    pub route_refresh_every: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempts_max: 64,
            batching: true,
            batch_ops_max: 100,
            batch_bytes_max: 32 * 1024,
            batches_in_flight_max: 4,
            tls: None,
            route_refresh_every: Some(Duration::from_secs(5)),
        }
    }
}
