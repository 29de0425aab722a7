//! The network transport: raft frames between processes over gRPC (tonic, HTTP/2).
//!
//! docs/DESIGN.md, "One address per process, gRPC on it": a process listens on one address,
//! which is its peer id (`host:port`), and serves the `Raft` service of
//! `proto/raft.proto` there ([`GrpcServer`]). To send, a process opens ONE long-lived
//! bidirectional `Raft.Stream` call to each destination and writes its [`Frame`](crate::Frame)s on it
//! ([`GrpcTransport`]); one stream per pair of processes keeps frames in order, so order is
//! kept per (group, peer) and pipelined AppendEntries are safe.
//!
//! Owns: the wire encoding ([`codec`]), per-destination queues and connection tasks,
//! reconnection with capped, jittered exponential back-off, and the limits below (derived
//! from [`crate::limits`]).
//! Must never: block [`Transport::send`](crate::Transport::send) (a full queue drops the frame and counts it; raft
//! retransmits), write a frame the receiver would refuse (what is queued for a destination
//! is cut into frames of at most [`codec::FRAME_MESSAGES_MAX`] messages and
//! [`FRAME_BYTES_MAX`] bytes, in order; a message that alone exceeds a frame is dropped and
//! counted), allocate what a peer claims before checking it against
//! [`FRAME_BYTES_MAX`] (tonic checks the length prefix against its maximum decoding size
//! before buffering), or let one misbehaving peer disturb the others: a frame that is
//! oversized, undecodable or invalid ends that peer's stream with an error status and a
//! logged error, and the server keeps serving every other stream.
//!
//! Snapshot transfer: [`Transport::fetch_snapshot`](crate::Transport::fetch_snapshot) is one unary `Raft.FetchSnapshot` call
//! per part (manifest or chunk), on a connection of its own per destination (bulk chunks do
//! not queue behind, or ahead of, the raft stream), each call bounded by
//! [`GrpcOptions::snapshot_fetch_timeout`]. The server answers it with the
//! [`SnapshotService`](crate::SnapshotService) its sink offers ([`FrameSink::snapshot_service`]; a manager's
//! [`Inbox`](crate::Inbox) offers its own), on tokio's blocking pool, at most
//! [`SNAPSHOT_SERVES_CONCURRENT_MAX`] at a time. The answer is checked before it is handed
//! on: no more bytes than the chunk asked for, error texts bounded.
//!
//! Mutual TLS ([`tls`]) is optional: with a [`TlsConfig`] in [`GrpcOptions::tls`] the
//! transport's connections (raft stream and snapshot fetches) present this process's
//! certificate and check the server's against the configured CAs, and a server given one
//! ([`GrpcServer::with_tls`]) accepts only clients whose certificate those CAs signed. A
//! failed handshake is counted ([`TransportStats::tls_handshake_failures`],
//! [`ServerStats::tls_handshakes_failed`]), logged once per peer and reason, and the
//! connection retried with the usual back-off; it never stops the server. Without a
//! `TlsConfig` everything is plain text.
//!
//! Inbound connections ([`listener`]): every accepted connection is set up (TLS handshake,
//! or for plain text its first complete request) within a time limit, with a cap on set-ups
//! in all and per source address, and accept errors back off; see the constants there.
//!
//! Files, by what each owns: `outbound` ([`GrpcTransport`], [`connect_channel`]: the
//! sending side and snapshot fetches), `server` ([`GrpcServer`], [`FrameSink`]: the
//! receiving side), `dispatch` (routing the calls on the one address), [`listener`]
//! (accepting connections), [`tls`] and [`roles`] (certificates and what they allow),
//! [`codec`] (the wire encoding), [`cli`] (the CLI service and client); this file keeps
//! the module's options ([`GrpcOptions`]) and re-exports.
//!
//! Not yet: flow-control acknowledgements (`Ack` is reserved), and a limit on the number
//! of established inbound connections.

use std::time::Duration;

use crate::identity::AddressBook;

pub mod cli;
pub mod codec;
mod dispatch;
mod extra;
pub mod listener;
mod outbound;
pub mod roles;
mod server;
pub mod tls;

/// The protobuf messages and the tonic client and server generated from `proto/raft.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flotilla.raft.v1");
}

pub use cli::{
    check_receiver, kind_of, status_of, CliClient, CliError, CliNodes, CliOptions, CLUSTER_KEY,
    ERROR_KIND_KEY, LEADER_ID_KEY, LEADER_KEY, STORE_KEY,
};
pub use codec::DecodeError;
pub use extra::{ExtraService, HttpRefusal};
pub use tls::{TlsConfig, TlsConfigError};

/// Largest encoded frame either side accepts: [`crate::limits::FRAME_BYTES_MAX`] (16 MiB).
/// A sender cuts what is queued for a destination into frames within it (a single message
/// that alone exceeds it is dropped and counted); a receiver refuses a larger frame from its
/// length prefix, without allocating it, and ends the sender's stream.
pub use crate::limits::FRAME_BYTES_MAX;

/// Largest snapshot part (manifest or chunk) one `FetchSnapshot` answer may carry:
/// [`crate::limits::SNAPSHOT_DATA_BYTES_MAX`], the frame limit less room for the answer's
/// own encoding.
pub use crate::limits::SNAPSHOT_DATA_BYTES_MAX;
pub use outbound::{connect_channel, GrpcTransport, TransportStats};
pub use server::{
    FrameSink, GrpcServer, ServerHandle, ServerStats, SNAPSHOT_SERVES_CONCURRENT_MAX,
};

/// Tuning of [`GrpcTransport`].
#[derive(Clone, Debug)]
pub struct GrpcOptions {
    /// Frames queued per destination before `send` starts dropping (at least 1).
    pub queue_frames: usize,
    /// Limit on establishing a connection and opening the stream.
    pub connect_timeout: Duration,
    /// First reconnection delay.
    pub backoff_initial: Duration,
    /// Largest reconnection delay.
    pub backoff_max: Duration,
    /// Seed of the back-off jitter (mixed with the destination's address).
    pub seed: u64,
    /// HTTP/2 keep-alive ping interval, to notice a dead peer on an idle stream.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Limit on one `FetchSnapshot` call (one manifest or chunk), connecting included. The
    /// whole install is also bounded by the manager's install deadline.
    pub snapshot_fetch_timeout: Duration,
    /// Mutual TLS for every connection to a peer; `None` (the default): plain text. The
    /// peers' servers must then be given a matching [`TlsConfig`] too
    /// ([`GrpcServer::with_tls`]).
    pub tls: Option<TlsConfig>,
    /// Where peers are: the transport dials the address recorded for a frame's
    /// destination id (an id with no entry that has the shape `host:port` is dialled as
    /// itself). Share it with the manager ([`crate::ManagerOptions::addresses`]), which
    /// fills it from what incoming frames announce.
    pub addresses: AddressBook,
    /// The address this process announces in every frame (`host:port`; `None`: none).
    pub advertise: Option<String>,
    /// Most `(group, message)` pairs one outgoing frame carries: a round's messages for a
    /// peer are cut into frames of at most this many (1 ..= [`codec::FRAME_MESSAGES_MAX`];
    /// the default is the maximum). It must not exceed the receivers' limit
    /// ([`GrpcServer::with_frame_messages_max`]); lowered in tests so that a few dozen
    /// groups already need several frames.
    pub frame_messages_max: usize,
}

impl Default for GrpcOptions {
    fn default() -> GrpcOptions {
        GrpcOptions {
            queue_frames: 1024,
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            seed: 0x5eed_f107_1a00_0001,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            snapshot_fetch_timeout: Duration::from_secs(30),
            tls: None,
            addresses: AddressBook::in_memory(),
            advertise: None,
            frame_messages_max: codec::FRAME_MESSAGES_MAX,
        }
    }
}
