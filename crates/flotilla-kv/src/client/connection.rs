//! The connections of a [`super::KvClient`]: one cached gRPC channel per store address,
//! the stores that refused a connection lately (skipped for [`DOWN_FOR`] unless no other is
//! left), and the KV calls that go over them ([`Call`], [`Reply`]).
//!
//! Owns: connecting (TLS when configured, the connect timeout, keep-alives), forgetting a
//! channel that failed, and the message limits of every KV call. Must never: hold a lock
//! across a connect or a call.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flotilla_node::grpc::{connect_channel, TlsConfig};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::error::{error_chain, ClientError};
use super::options::ReadConsistency;
use crate::service::proto::{self, kv_client::KvClient as GrpcKvClient};
use crate::service::KV_MESSAGE_BYTES_MAX;

/// How long a store that refused a connection is skipped (unless no other is left).
const DOWN_FOR: Duration = Duration::from_millis(500);

/// A KV service client on `channel` with the server's message limits both ways
/// ([`KV_MESSAGE_BYTES_MAX`]): tonic's 4 MiB default decoding limit would refuse a scan
/// reply the server is allowed to send (five 1 MiB values).
pub(super) fn grpc_client(channel: Channel) -> GrpcKvClient<Channel> {
    GrpcKvClient::new(channel)
        .max_decoding_message_size(KV_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(KV_MESSAGE_BYTES_MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request of the KV service.
#[derive(Clone)]
pub(super) enum Call {
    Get(proto::GetRequest),
    MultiGet(proto::MultiGetRequest),
    Scan(proto::ScanRequest),
    Write(proto::WriteRequest),
}

/// The answer to a [`Call`].
pub(super) enum Reply {
    Get(proto::GetReply),
    MultiGet(proto::MultiGetReply),
    Scan(proto::ScanReply),
    Write(proto::WriteReply),
}

impl Call {
    pub(super) fn set_context(&mut self, context: proto::RegionContext) {
        let slot = match self {
            Call::Get(r) => &mut r.context,
            Call::MultiGet(r) => &mut r.context,
            Call::Scan(r) => &mut r.context,
            Call::Write(r) => &mut r.context,
        };
        *slot = Some(context);
    }

    pub(super) fn is_write(&self) -> bool {
        matches!(self, Call::Write(_))
    }

    pub(super) fn read(&self) -> Option<ReadConsistency> {
        let mode = match self {
            Call::Get(r) => r.read,
            Call::MultiGet(r) => r.read,
            Call::Scan(r) => r.read,
            Call::Write(_) => return None,
        };
        Some(if mode == proto::ReadMode::Follower as i32 {
            ReadConsistency::Follower
        } else if mode == proto::ReadMode::Lease as i32 {
            ReadConsistency::Lease
        } else {
            ReadConsistency::Index
        })
    }

    pub(super) async fn send(self, mut client: GrpcKvClient<Channel>) -> Result<Reply, Status> {
        Ok(match self {
            Call::Get(r) => Reply::Get(client.get(r).await?.into_inner()),
            Call::MultiGet(r) => Reply::MultiGet(client.multi_get(r).await?.into_inner()),
            Call::Scan(r) => Reply::Scan(client.scan(r).await?.into_inner()),
            Call::Write(r) => Reply::Write(client.write(r).await?.into_inner()),
        })
    }
}

/// The channels of a client and the stores it skips for now (shared by its clones).
pub(super) struct Connections {
    /// Limit on connecting to one store.
    connect_timeout: Duration,
    /// Mutual TLS; `None`: plain text.
    tls: Option<TlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Stores that refused a connection recently, and until when they are skipped.
    down: Mutex<HashMap<String, Instant>>,
}

impl Connections {
    /// No channel yet, no store down.
    pub(super) fn new(connect_timeout: Duration, tls: Option<TlsConfig>) -> Connections {
        Connections {
            connect_timeout,
            tls,
            channels: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        }
    }

    /// A connected channel to `address` (cached).
    pub(super) async fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        if let Some(channel) = lock(&self.channels).get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                ClientError::definite("InvalidArgument", format!("endpoint {address:?}: {e}"))
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        // Through TLS when configured (the connector does the handshake over plain TCP).
        let channel = connect_channel(&endpoint, self.tls.as_ref())
            .await
            .map_err(|e| {
                ClientError::definite(
                    "Unavailable",
                    format!("cannot connect to {address}: {}", error_chain(&e)),
                )
            })?;
        lock(&self.channels).insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops the channel to `address`: the next call reconnects.
    pub(super) fn forget(&self, address: &str) {
        lock(&self.channels).remove(address);
    }

    /// Whether `address` refused a connection less than [`DOWN_FOR`] ago.
    pub(super) fn is_down(&self, address: &str) -> bool {
        let mut down = lock(&self.down);
        match down.get(address) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(address);
                false
            }
            None => false,
        }
    }

    /// Skips `address` for [`DOWN_FOR`].
    pub(super) fn mark_down(&self, address: &str) {
        lock(&self.down).insert(address.to_string(), Instant::now() + DOWN_FOR);
    }
}
