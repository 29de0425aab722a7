//! The network transport: raft frames between processes over gRPC (tonic, HTTP/2).
//!
//! docs/DESIGN.md, "One address per process, gRPC on it": a process listens on one address,
//! which is its peer id (`host:port`), and serves the `Raft` service of
//! `proto/raft.proto` there ([`GrpcServer`]). To send, a process opens ONE long-lived
//! bidirectional `Raft.Stream` call to each destination and writes its [`Frame`]s on it
//! ([`GrpcTransport`]); one stream per pair of processes keeps frames in order, so order is
//! kept per (group, peer) and pipelined AppendEntries are safe.
//!
//! Owns: the wire encoding ([`codec`]), per-destination queues and connection tasks,
//! reconnection with capped, jittered exponential back-off, and the limits below (derived
//! from [`crate::limits`]).
//! Must never: block [`Transport::send`] (a full queue drops the frame and counts it; raft
//! retransmits), write a frame the receiver would refuse (what is queued for a destination
//! is cut into frames of at most [`codec::FRAME_MESSAGES_MAX`] messages and
//! [`FRAME_BYTES_MAX`] bytes, in order; a message that alone exceeds a frame is dropped and
//! counted), allocate what a peer claims before checking it against
//! [`FRAME_BYTES_MAX`] (tonic checks the length prefix against its maximum decoding size
//! before buffering), or let one misbehaving peer disturb the others: a frame that is
//! oversized, undecodable or invalid ends that peer's stream with an error status and a
//! logged error, and the server keeps serving every other stream.
//!
//! Snapshot transfer: [`Transport::fetch_snapshot`] is one unary `Raft.FetchSnapshot` call
//! per part (manifest or chunk), on a connection of its own per destination (bulk chunks do
//! not queue behind, or ahead of, the raft stream), each call bounded by
//! [`GrpcOptions::snapshot_fetch_timeout`]. The server answers it with the
//! [`SnapshotService`] its sink offers ([`FrameSink::snapshot_service`]; a manager's
//! [`Inbox`] offers its own), on tokio's blocking pool, at most
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
//! Not yet: flow-control acknowledgements (`Ack` is reserved), and a limit on the number
//! of established inbound connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use flotilla_raft::{PeerId, Rng};

use crate::identity::AddressBook;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::metrics::{ConnectionClose, MessageDrop, TransportMetrics};
use crate::snapshot::{SnapshotFetch, SnapshotRequest, SnapshotService};
use crate::transport::{Frame, Inbox, Transport};

pub mod cli;
pub mod codec;
mod extra;
pub mod listener;
pub mod roles;
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
pub use extra::ExtraService;
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

/// Snapshot parts a server reads at once (each on a blocking-pool thread); further requests
/// wait their turn.
pub const SNAPSHOT_SERVES_CONCURRENT_MAX: usize = 16;

/// Frames one stream may hold between the connection task and HTTP/2 (the rest wait in the
/// destination's queue).
const STREAM_WINDOW_FRAMES: usize = 16;

/// A connection that lived this long resets the back-off to its initial delay.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Where a server hands the frames it received: a manager's [`Inbox`], or a test's sink.
pub trait FrameSink: Send + Sync + 'static {
    /// Hands `frame` over, or returns it when there is no room (it is then dropped and
    /// counted; raft retransmits). Must not block.
    fn deliver(&self, frame: Frame) -> Result<(), Frame>;

    /// Refuses a frame meant for another receiver (peer id or cluster), saying why: the
    /// server then ends the stream with `FAILED_PRECONDITION`. The default admits all.
    fn admit(&self, frame: &Frame) -> Result<(), String> {
        let _ = frame;
        Ok(())
    }

    /// The identity CLI calls must name (the manager's). The default: none, and CLI calls
    /// are not checked.
    fn identity(&self) -> Option<Arc<crate::identity::Identity>> {
        None
    }

    /// Records the address an admitted, delivered frame's sender announced. The default
    /// records nothing.
    fn learn_address(&self, frame: &Frame) {
        let _ = frame;
    }

    /// The service answering `FetchSnapshot` calls, if this sink's process serves
    /// snapshots. The default serves none: such a server answers `UNIMPLEMENTED`.
    fn snapshot_service(&self) -> Option<SnapshotService> {
        None
    }

    /// Where the server counts the connections it refuses and its accept errors: a
    /// manager's inbox offers the manager's transport counters, so they appear in its
    /// metrics. The default: the server keeps its own ([`ServerHandle::stats`]).
    fn transport_metrics(&self) -> Option<Arc<TransportMetrics>> {
        None
    }
}

impl FrameSink for Inbox {
    fn deliver(&self, frame: Frame) -> Result<(), Frame> {
        Inbox::deliver(self, frame)
    }

    fn admit(&self, frame: &Frame) -> Result<(), String> {
        Inbox::admit(self, frame)
    }

    fn identity(&self) -> Option<Arc<crate::identity::Identity>> {
        Some(Inbox::identity(self).clone())
    }

    fn learn_address(&self, frame: &Frame) {
        Inbox::learn_address(self, frame);
    }

    fn snapshot_service(&self) -> Option<SnapshotService> {
        Some(Inbox::snapshot_service(self).clone())
    }

    fn transport_metrics(&self) -> Option<Arc<TransportMetrics>> {
        Some(Inbox::transport_metrics(self).clone())
    }
}

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
        }
    }
}

/// Counters of a [`GrpcTransport`], summed over destinations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Wire frames written to a stream (a queued frame cut in several counts each).
    pub frames_sent: u64,
    /// Frames dropped by `send` because the destination's queue was full.
    pub frames_dropped_queue_full: u64,
    /// Messages dropped because each alone encodes to more than a frame may hold
    /// ([`FRAME_BYTES_MAX`]); the rest of their frame is sent.
    pub messages_dropped_oversized: u64,
    /// Extra wire frames sent because a queued frame exceeded the receiver's limits
    /// ([`FRAME_BYTES_MAX`], [`codec::FRAME_MESSAGES_MAX`]) and was cut.
    pub frames_split: u64,
    /// Frames lost with a broken stream, or addressed to an invalid destination.
    pub frames_dropped_other: u64,
    /// Streams opened (first connections and reconnections).
    pub streams_opened: u64,
    /// Failed attempts to connect or to open the stream.
    pub connect_failures: u64,
    /// Snapshot parts received (valid answers carrying data).
    pub snapshot_parts_fetched: u64,
    /// Snapshot fetches that failed: call errors, time-outs, refusals by the peer, invalid
    /// answers.
    pub snapshot_fetch_failures: u64,
    /// Connection attempts that failed in TLS (raft stream and snapshot fetches): this side
    /// refused the server's certificate, the handshake timed out, or the server refused
    /// this side's certificate. Also counted in `connect_failures` (raft stream) or
    /// `snapshot_fetch_failures`.
    pub tls_handshake_failures: u64,
}

#[derive(Default)]
struct TransportCounters {
    snapshot_parts_fetched: AtomicU64,
    snapshot_fetch_failures: AtomicU64,
    frames_sent: AtomicU64,
    frames_dropped_queue_full: AtomicU64,
    frames_dropped_other: AtomicU64,
    streams_opened: AtomicU64,
    connect_failures: AtomicU64,
    tls_handshake_failures: AtomicU64,
    /// The last TLS failure warned about, per destination.
    tls_warnings: tls::HandshakeWarnings,
}

impl TransportCounters {
    /// Counts a TLS failure connecting to `to` and logs it: at `warn` the first time (and
    /// when the reason changes), at `debug` while it repeats.
    fn tls_failed(&self, to: &PeerId, reason: &str) {
        bump(&self.tls_handshake_failures);
        if self.tls_warnings.should_warn(to.as_str(), reason) {
            tracing::warn!(to = %to, error = %reason, "TLS handshake with peer failed: retrying with back-off");
        } else {
            tracing::debug!(to = %to, error = %reason, "TLS handshake with peer failed again");
        }
    }
}

/// The endpoint at `address` (`host:port`). The scheme stays `http` with TLS too:
/// [`tls::Connector`] runs the handshake under HTTP/2.
fn endpoint_at(address: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{address} is not a valid address: {e}"))
}

/// Where to dial the process `to`, from the address book.
fn address_of(addresses: &AddressBook, to: &PeerId) -> Result<String, String> {
    addresses
        .resolve(to)
        .ok_or_else(|| format!("no address is known for peer {to}"))
}

/// A channel over `endpoint`, through TLS when `tls` is set, connecting on first use.
fn lazy_channel(endpoint: &Endpoint, tls: Option<&TlsConfig>) -> Channel {
    match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(tls::Connector::new(tls.clone())),
        None => endpoint.connect_lazy(),
    }
}

/// A connected channel over `endpoint` (`http://host:port`), through mutual TLS when `tls`
/// is set: how [`GrpcTransport`] and [`CliClient`] connect, for clients of further services
/// served on a process's address. With TLS the server's certificate is checked against the
/// endpoint's host (or [`TlsConfig::with_server_name`]); a handshake failure is an error of
/// the connection.
pub async fn connect_channel(
    endpoint: &Endpoint,
    tls: Option<&TlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        Some(tls) => {
            endpoint
                .connect_with_connector(tls::Connector::new(tls.clone()))
                .await
        }
        None => endpoint.connect().await,
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct TransportInner {
    options: GrpcOptions,
    runtime: tokio::runtime::Handle,
    counters: Arc<TransportCounters>,
    /// What was dropped or cut, shared with a manager opened on this transport.
    metrics: Arc<TransportMetrics>,
    /// Per destination, the queue its connection task drains.
    queues: Mutex<HashMap<PeerId, mpsc::Sender<Frame>>>,
    /// Per destination, the channel snapshot fetches use (connects lazily, reconnects on
    /// the next call after a failure).
    fetch_channels: Mutex<HashMap<PeerId, (String, Channel)>>,
}

impl TransportInner {
    /// The snapshot-fetch channel to `to`, created on first use. Must be called within the
    /// runtime (the channel spawns its worker).
    fn fetch_channel(&self, to: &PeerId) -> Result<Channel, String> {
        let mut channels = self
            .fetch_channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let address = address_of(&self.options.addresses, to)?;
        if let Some((at, channel)) = channels.get(to) {
            if *at == address {
                return Ok(channel.clone());
            }
        }
        let endpoint = endpoint_at(&address)?
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.snapshot_fetch_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.options.keepalive_interval)
            .keep_alive_timeout(self.options.keepalive_timeout);
        let channel = lazy_channel(&endpoint, self.options.tls.as_ref());
        channels.insert(to.clone(), (address, channel.clone()));
        Ok(channel)
    }

    /// One `FetchSnapshot` call to `to`, within the per-call timeout, its answer checked.
    async fn fetch_snapshot(&self, to: &PeerId, request: SnapshotRequest) -> Result<Bytes, String> {
        let limit = self.options.snapshot_fetch_timeout;
        let call = async {
            let channel = self.fetch_channel(to)?;
            let mut client = proto::raft_client::RaftClient::new(channel)
                .max_encoding_message_size(FRAME_BYTES_MAX)
                .max_decoding_message_size(FRAME_BYTES_MAX);
            let mut wire = Request::new(codec::encode_snapshot_request(&request));
            wire.set_timeout(limit);
            client.fetch_snapshot(wire).await.map_err(|status| {
                let tls_failure = self
                    .options
                    .tls
                    .as_ref()
                    .and_then(|_| tls::tls_failure(&status));
                if let Some(reason) = &tls_failure {
                    self.counters.tls_failed(to, reason);
                }
                format!(
                    "fetching group {}'s snapshot from {to} failed: {:?}: {}{}",
                    request.group,
                    status.code(),
                    status.message(),
                    tls_failure.map_or_else(String::new, |r| format!(" (TLS: {r})"))
                )
            })
        };
        let answer = tokio::time::timeout(limit, call).await.map_err(|_| {
            format!(
                "fetching group {}'s snapshot from {to} timed out after {limit:?}",
                request.group
            )
        })??;
        match codec::decode_snapshot_chunk(answer.into_inner(), &request, SNAPSHOT_DATA_BYTES_MAX) {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(why)) => Err(format!("{to} cannot serve the snapshot: {why}")),
            Err(error) => {
                tracing::error!(from = %to, group = request.group, %error, "invalid snapshot answer");
                Err(format!("{to} sent an invalid snapshot answer: {error}"))
            }
        }
    }
}

/// Sends frames to other processes over gRPC: per destination a bounded queue and a task
/// that connects, streams the frames in order, and reconnects with back-off.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<TransportInner>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("destinations", &self.lock().keys().collect::<Vec<_>>())
            .field("stats", &self.stats())
            .finish()
    }
}

impl GrpcTransport {
    /// A transport whose connection tasks run on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(mut options: GrpcOptions) -> GrpcTransport {
        options.queue_frames = options.queue_frames.max(1);
        options.backoff_max = options.backoff_max.max(options.backoff_initial);
        GrpcTransport {
            inner: Arc::new(TransportInner {
                options,
                runtime: tokio::runtime::Handle::current(),
                counters: Arc::default(),
                metrics: Arc::default(),
                queues: Mutex::new(HashMap::new()),
                fetch_channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        TransportStats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_dropped_queue_full: c.frames_dropped_queue_full.load(Ordering::Relaxed),
            messages_dropped_oversized: self.inner.metrics.messages_dropped(MessageDrop::Oversized),
            frames_split: self.inner.metrics.frames_split.get(),
            frames_dropped_other: c.frames_dropped_other.load(Ordering::Relaxed),
            streams_opened: c.streams_opened.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            snapshot_parts_fetched: c.snapshot_parts_fetched.load(Ordering::Relaxed),
            snapshot_fetch_failures: c.snapshot_fetch_failures.load(Ordering::Relaxed),
            tls_handshake_failures: c.tls_handshake_failures.load(Ordering::Relaxed),
        }
    }

    // Short critical sections, no await inside: a std mutex is right.
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, mpsc::Sender<Frame>>> {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn_connection(&self, to: &PeerId) -> mpsc::Sender<Frame> {
        let (tx, rx) = mpsc::channel(self.inner.options.queue_frames);
        let seed = self.inner.options.seed ^ fnv1a(to.as_str().as_bytes());
        self.inner.runtime.spawn(connection(
            to.clone(),
            rx,
            self.inner.options.clone(),
            self.inner.counters.clone(),
            self.inner.metrics.clone(),
            seed,
        ));
        tx
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: &PeerId, mut frame: Frame) {
        if let Some(advertise) = &self.inner.options.advertise {
            frame.from_address.clone_from(advertise);
        }
        let mut queues = self.lock();
        let queue = match queues.get(to) {
            Some(queue) if !queue.is_closed() => queue,
            _ => {
                let queue = self.spawn_connection(to);
                queues.insert(to.clone(), queue);
                &queues[to]
            }
        };
        match queue.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                bump(&self.inner.counters.frames_dropped_queue_full);
                tracing::debug!(to = %to, messages = frame.messages.len(), "send queue full: frame dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                bump(&self.inner.counters.frames_dropped_other);
            }
        }
    }

    fn metrics(&self) -> Option<Arc<TransportMetrics>> {
        Some(self.inner.metrics.clone())
    }

    /// One unary `FetchSnapshot` call, bounded by [`GrpcOptions::snapshot_fetch_timeout`];
    /// the answer is refused if it carries more than the chunk asked for (or more than
    /// [`SNAPSHOT_DATA_BYTES_MAX`]) or an error text over the limit.
    fn fetch_snapshot(&self, to: &PeerId, request: SnapshotRequest) -> SnapshotFetch {
        let inner = self.inner.clone();
        let to = to.clone();
        Box::pin(async move {
            let result = inner.fetch_snapshot(&to, request).await;
            match &result {
                Ok(_) => bump(&inner.counters.snapshot_parts_fetched),
                Err(why) => {
                    bump(&inner.counters.snapshot_fetch_failures);
                    tracing::debug!(from = %to, error = %why, "snapshot fetch failed");
                }
            }
            result
        })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Exponential back-off, doubling up to a cap, each delay drawn uniformly from its upper
/// half (jitter, so peers that lost the same server do not reconnect in lockstep).
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: Rng,
}

impl Backoff {
    fn new(options: &GrpcOptions, seed: u64) -> Backoff {
        Backoff {
            initial: options.backoff_initial,
            max: options.backoff_max,
            next: options.backoff_initial,
            rng: Rng::new(seed),
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng.below(spread.saturating_add(1)))
    }
}

/// Why a stream ended.
enum Ended {
    /// The transport was dropped: the task ends.
    QueueClosed,
    /// Connecting failed or the stream broke: reconnect after a back-off.
    Broken,
}

/// The connection task of one destination: connect, stream, reconnect, until the
/// transport is dropped.
async fn connection(
    to: PeerId,
    mut queue: mpsc::Receiver<Frame>,
    options: GrpcOptions,
    counters: Arc<TransportCounters>,
    metrics: Arc<TransportMetrics>,
    seed: u64,
) {
    let mut backoff = Backoff::new(&options, seed);
    let mut unknown_logged = false;
    loop {
        let started = Instant::now();
        // Resolved at every attempt: a peer that moved is dialled at its new address.
        let resolved = address_of(&options.addresses, &to).and_then(|address| {
            endpoint_at(&address).map(|endpoint| {
                let endpoint = endpoint
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(options.keepalive_interval)
                    .keep_alive_timeout(options.keepalive_timeout)
                    .keep_alive_while_idle(true);
                (address, endpoint)
            })
        });
        match resolved {
            Ok((address, endpoint)) => {
                unknown_logged = false;
                let at = Destination {
                    id: &to,
                    address: &address,
                    addresses: &options.addresses,
                };
                match stream_to(&at, &endpoint, &mut queue, &options, &counters, &metrics).await {
                    Ended::QueueClosed => return,
                    Ended::Broken => {}
                }
            }
            Err(error) => {
                if !unknown_logged {
                    tracing::warn!(to = %to, %error, "cannot dial peer: its frames are dropped until its address is known");
                    unknown_logged = true;
                }
                // Drop what is queued (raft retransmits) until the address is learned.
                while let Ok(_frame) = queue.try_recv() {
                    bump(&counters.frames_dropped_other);
                }
                if queue.is_closed() && queue.is_empty() {
                    return;
                }
            }
        }
        if started.elapsed() >= STABLE_CONNECTION {
            backoff.reset();
        }
        let delay = backoff.delay();
        tracing::debug!(to = %to, ?delay, "reconnecting after back-off");
        tokio::time::sleep(delay).await;
    }
}

/// The peer a connection streams to, and where.
struct Destination<'a> {
    id: &'a PeerId,
    address: &'a str,
    addresses: &'a AddressBook,
}

impl Destination<'_> {
    /// True once the address book records another address for the peer (it moved).
    fn moved(&self, version: &mut u64) -> bool {
        let now = self.addresses.version();
        if now == *version {
            return false;
        }
        *version = now;
        self.addresses
            .resolve(self.id)
            .is_some_and(|address| address != self.address)
    }
}

/// Why opening a stream failed: the whole error chain, and the TLS failure in it, if any.
struct ConnectFailure {
    text: String,
    tls: Option<String>,
}

impl ConnectFailure {
    fn of(error: &(dyn std::error::Error + 'static), with_tls: bool) -> ConnectFailure {
        ConnectFailure {
            text: tls::error_chain(error),
            tls: with_tls.then(|| tls::tls_failure(error)).flatten(),
        }
    }
}

/// One connection: opens the stream and writes queued frames on it until it breaks.
async fn stream_to(
    at: &Destination<'_>,
    endpoint: &Endpoint,
    queue: &mut mpsc::Receiver<Frame>,
    options: &GrpcOptions,
    counters: &TransportCounters,
    metrics: &TransportMetrics,
) -> Ended {
    let to = at.id;
    let mut version = at.addresses.version();
    let with_tls = options.tls.is_some();
    let opening = async {
        let channel = connect_channel(endpoint, options.tls.as_ref())
            .await
            .map_err(|e| ConnectFailure::of(&e, with_tls))?;
        let mut client = proto::raft_client::RaftClient::new(channel)
            .max_encoding_message_size(FRAME_BYTES_MAX)
            .max_decoding_message_size(FRAME_BYTES_MAX);
        let (tx, rx) = mpsc::channel::<proto::Frame>(STREAM_WINDOW_FRAMES);
        let responses = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|status| ConnectFailure::of(&status, with_tls))?
            .into_inner();
        Ok::<_, ConnectFailure>((tx, responses))
    };
    let (tx, mut responses) = match tokio::time::timeout(options.connect_timeout, opening).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(failure)) => {
            bump(&counters.connect_failures);
            match &failure.tls {
                Some(reason) => counters.tls_failed(to, reason),
                None => {
                    tracing::debug!(to = %to, address = at.address, error = %failure.text, "connecting failed")
                }
            }
            return Ended::Broken;
        }
        Err(_) => {
            bump(&counters.connect_failures);
            tracing::debug!(to = %to, "connecting timed out");
            return Ended::Broken;
        }
    };
    bump(&counters.streams_opened);
    counters.tls_warnings.succeeded(to.as_str());
    tracing::debug!(to = %to, "stream open");
    loop {
        tokio::select! {
            frame = queue.recv() => {
                let Some(frame) = frame else { return Ended::QueueClosed };
                if at.moved(&mut version) {
                    bump(&counters.frames_dropped_other);
                    tracing::info!(to = %to, from_address = at.address, "peer moved: reconnecting at its new address");
                    return Ended::Broken;
                }
                if !send_cut(to, &frame, &tx, counters, metrics).await {
                    return Ended::Broken;
                }
            }
            response = responses.message() => match response {
                Ok(Some(_ack)) => {}
                Ok(None) => {
                    tracing::warn!(to = %to, "peer ended the stream");
                    return Ended::Broken;
                }
                Err(status) => {
                    tracing::warn!(to = %to, address = at.address, code = ?status.code(), message = status.message(), "stream failed");
                    return Ended::Broken;
                }
            },
        }
    }
}

/// Writes `frame` on the stream as as many wire frames as the receiver's limits need
/// ([`FRAME_BYTES_MAX`], [`codec::FRAME_MESSAGES_MAX`]), in order; a message that alone
/// exceeds a frame is dropped and counted. Returns false if the stream broke.
async fn send_cut(
    to: &PeerId,
    frame: &Frame,
    tx: &mpsc::Sender<proto::Frame>,
    counters: &TransportCounters,
    metrics: &TransportMetrics,
) -> bool {
    let encoded = codec::encode_frames(frame, FRAME_BYTES_MAX, codec::FRAME_MESSAGES_MAX);
    for (group, size) in &encoded.oversized {
        metrics.message_dropped(MessageDrop::Oversized, 1);
        tracing::error!(to = %to, group, size, limit = FRAME_BYTES_MAX, "message larger than a frame: dropped");
    }
    let extra = encoded.frames.len().saturating_sub(1);
    metrics.frames_split.add(extra as u64);
    for wire in encoded.frames {
        if tx.send(wire).await.is_err() {
            bump(&counters.frames_dropped_other);
            tracing::warn!(to = %to, "stream closed while sending");
            return false;
        }
        bump(&counters.frames_sent);
    }
    true
}

/// Counters of a [`GrpcServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Streams opened by peers.
    pub streams_opened: u64,
    /// Frames decoded and handed to the sink.
    pub frames_delivered: u64,
    /// Frames decoded but dropped because the sink was full.
    pub frames_dropped_sink_full: u64,
    /// Streams ended because their peer sent an oversized, undecodable or invalid frame.
    pub streams_refused: u64,
    /// Snapshot parts served (answers carrying data).
    pub snapshot_parts_served: u64,
    /// Snapshot fetches answered with an error (no such snapshot, read failure) or refused
    /// (invalid request, no snapshot service).
    pub snapshot_fetches_refused: u64,
    /// TLS handshakes completed (a server with TLS only).
    pub tls_handshakes_completed: u64,
    /// Connections closed because their TLS handshake failed: no certificate, one the CAs
    /// did not sign, a plain-text client, a time-out (a server with TLS only).
    pub tls_handshakes_failed: u64,
    /// Connections closed while being set up because a newer one from the same source
    /// address took their place (at most [`listener::SETUPS_PER_SOURCE_MAX`] per address).
    pub connections_closed_source_cap: u64,
    /// Connections closed because their TLS handshake took longer than the limit (also
    /// counted in `tls_handshakes_failed`).
    pub connections_closed_handshake_timeout: u64,
    /// Plain-text connections closed because they sent no complete first request within
    /// [`listener::PLAIN_REQUEST_TIMEOUT`].
    pub connections_closed_request_timeout: u64,
    /// Errors accepting connections (each followed by a back-off).
    pub accept_errors: u64,
}

#[derive(Default)]
struct ServerCounters {
    snapshot_parts_served: AtomicU64,
    snapshot_fetches_refused: AtomicU64,
    streams_opened: AtomicU64,
    frames_delivered: AtomicU64,
    frames_dropped_sink_full: AtomicU64,
    streams_refused: AtomicU64,
    tls: Arc<tls::HandshakeCounters>,
    /// Connections refused and accept errors (shared with the sink's manager, if any).
    metrics: Arc<TransportMetrics>,
}

/// The process's listener, bound but not yet serving: bind first to learn the address
/// (the peer id, e.g. after binding port 0), build the manager, then [`GrpcServer::serve`]
/// its inbox. Plain text unless given a [`TlsConfig`] ([`GrpcServer::with_tls`]).
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    address: PeerId,
    tls: Option<TlsConfig>,
}

impl GrpcServer {
    /// Binds `address` (`host:port`; port 0 picks a free port). Bind to the address other
    /// processes will dial: it becomes this process's peer id.
    pub async fn bind(address: &str) -> std::io::Result<GrpcServer> {
        let listener = TcpListener::bind(address).await?;
        let address = PeerId::new(&listener.local_addr()?.to_string());
        Ok(GrpcServer {
            listener,
            address,
            tls: None,
        })
    }

    /// Serves with mutual TLS: every connection must complete a TLS handshake in which the
    /// client presents a certificate signed by one of `tls`'s CAs; this server presents
    /// `tls`'s certificate, which must name this address's host (see [`tls`]). A failed
    /// handshake closes that connection only. The server-driven `Rebalance` of the CLI
    /// service dials the other processes with the same configuration.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> GrpcServer {
        self.tls = Some(tls);
        self
    }

    /// The bound address, `ip:port`: this process's peer id.
    #[must_use]
    pub fn address(&self) -> &PeerId {
        &self.address
    }

    /// Starts serving the `Raft` service, handing every decoded frame to `sink` and
    /// answering snapshot fetches with [`FrameSink::snapshot_service`] (a manager's
    /// [`Inbox`] serves its snapshots). Must be called within a tokio runtime.
    pub fn serve(self, sink: Arc<dyn FrameSink>) -> ServerHandle {
        self.serve_services(sink, None)
    }

    /// [`GrpcServer::serve`], plus the CLI service ([`cli`]) on the same address, answered
    /// with the groups `nodes` finds (a [`crate::NodeManager`] behind an `Arc`).
    pub fn serve_with_cli(
        self,
        sink: Arc<dyn FrameSink>,
        nodes: Arc<dyn CliNodes>,
    ) -> ServerHandle {
        let cli = proto_cli_server(nodes, self.tls.clone());
        self.serve_services(sink, Some(cli))
    }

    /// [`GrpcServer::serve`], plus the CLI service when `nodes` is given, plus `extra`
    /// services (further gRPC services, HTTP `GET` endpoints such as `/metrics`) on the same
    /// address. HTTP/1.1 is accepted too, for plain HTTP clients such as Prometheus.
    pub fn serve_with(
        self,
        sink: Arc<dyn FrameSink>,
        nodes: Option<Arc<dyn CliNodes>>,
        extra: Vec<ExtraService>,
    ) -> ServerHandle {
        let cli = nodes.map(|nodes| proto_cli_server(nodes, self.tls.clone()));
        self.serve_services_with(sink, cli, extra)
    }

    fn serve_services(
        self,
        sink: Arc<dyn FrameSink>,
        cli: Option<cli::proto::cli_server::CliServer<cli::CliService>>,
    ) -> ServerHandle {
        self.serve_services_with(sink, cli, Vec::new())
    }

    fn serve_services_with(
        self,
        sink: Arc<dyn FrameSink>,
        cli: Option<cli::proto::cli_server::CliServer<cli::CliService>>,
        extra: Vec<ExtraService>,
    ) -> ServerHandle {
        let accept_http1 = !extra.is_empty();
        let counters = Arc::new(ServerCounters {
            metrics: sink.transport_metrics().unwrap_or_default(),
            ..ServerCounters::default()
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let identity = sink.identity();
        let service = RaftService {
            snapshots: sink.snapshot_service(),
            snapshot_serves: Arc::new(Semaphore::new(SNAPSHOT_SERVES_CONCURRENT_MAX)),
            sink,
            counters: counters.clone(),
            shutdown: shutdown_rx.clone(),
        };
        let server = proto::raft_server::RaftServer::new(service)
            .max_decoding_message_size(FRAME_BYTES_MAX)
            .max_encoding_message_size(FRAME_BYTES_MAX);
        let address = self.address.clone();
        let mut signal = shutdown_rx.clone();
        let stopped = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        let dispatch = cli::Dispatch {
            raft: server,
            cli,
            extra: Arc::new(extra),
            identity,
        };
        let builder = Server::builder()
            .accept_http1(accept_http1)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let report = |address: &PeerId, served: Result<(), tonic::transport::Error>| {
            if let Err(error) = served {
                tracing::error!(address = %address, %error, "raft gRPC server failed");
            }
        };
        let setup = match &self.tls {
            None => listener::Setup::Plain,
            Some(tls) => listener::Setup::Tls(tls::TlsAccept::new(tls, counters.tls.clone())),
        };
        let (incoming, acceptor) = listener::serve_incoming(
            self.listener,
            setup,
            address.clone(),
            counters.metrics.clone(),
            shutdown_rx,
        );
        let task = tokio::spawn(async move {
            let served = builder
                .serve_with_incoming_shutdown(dispatch, incoming, stopped)
                .await;
            // The accept loop ends on the same signal, or once the server dropped its
            // connections' stream: wait for it, so that the listener is closed when
            // `shutdown` returns.
            let _ = acceptor.await;
            report(&address, served);
        });
        ServerHandle {
            address: self.address,
            counters,
            shutdown: shutdown_tx,
            task: Some(task),
        }
    }
}

fn proto_cli_server(
    nodes: Arc<dyn CliNodes>,
    tls: Option<TlsConfig>,
) -> cli::proto::cli_server::CliServer<cli::CliService> {
    cli::proto::cli_server::CliServer::new(cli::CliService::new(nodes).with_client_tls(tls))
        .max_decoding_message_size(1024 * 1024)
        .max_encoding_message_size(1024 * 1024)
}

/// A serving [`GrpcServer`]. Dropping it stops the server in the background.
#[derive(Debug)]
pub struct ServerHandle {
    address: PeerId,
    counters: Arc<ServerCounters>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCounters")
    }
}

impl ServerHandle {
    /// The address served.
    #[must_use]
    pub fn address(&self) -> &PeerId {
        &self.address
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> ServerStats {
        let c = &self.counters;
        ServerStats {
            streams_opened: c.streams_opened.load(Ordering::Relaxed),
            frames_delivered: c.frames_delivered.load(Ordering::Relaxed),
            frames_dropped_sink_full: c.frames_dropped_sink_full.load(Ordering::Relaxed),
            streams_refused: c.streams_refused.load(Ordering::Relaxed),
            snapshot_parts_served: c.snapshot_parts_served.load(Ordering::Relaxed),
            snapshot_fetches_refused: c.snapshot_fetches_refused.load(Ordering::Relaxed),
            tls_handshakes_completed: c.tls.completed.load(Ordering::Relaxed),
            tls_handshakes_failed: c.tls.failed.load(Ordering::Relaxed),
            connections_closed_source_cap: c.metrics.connections_closed(ConnectionClose::SourceCap),
            connections_closed_handshake_timeout: c
                .metrics
                .connections_closed(ConnectionClose::HandshakeTimeout),
            connections_closed_request_timeout: c
                .metrics
                .connections_closed(ConnectionClose::RequestTimeout),
            accept_errors: c.metrics.accept_errors.get(),
        }
    }

    /// Ends every stream, stops accepting and closes the listener (within a few seconds at
    /// worst: a connection that does not close in time is abandoned).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct RaftService {
    sink: Arc<dyn FrameSink>,
    snapshots: Option<SnapshotService>,
    /// Bounds the blocking-pool threads snapshot reads may take.
    snapshot_serves: Arc<Semaphore>,
    counters: Arc<ServerCounters>,
    shutdown: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    type StreamStream = ReceiverStream<Result<proto::Ack, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<proto::Frame>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let remote = roles::remote_of(request.extensions());
        // Under TLS only a store certificate may stream frames, and only as the store it
        // names.
        let sender = roles::peer_info(request.extensions())
            .role
            .require(&[roles::Role::Store], "a raft stream")
            .map(|peer| peer.map(|p| p.name.clone()))
            .map_err(|why| {
                bump(&self.counters.streams_refused);
                tracing::warn!(remote = %remote, error = %why, "raft stream refused");
                Status::permission_denied(why)
            })?;
        let frames = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        bump(&self.counters.streams_opened);
        tokio::spawn(receive(
            remote,
            sender,
            frames,
            tx,
            self.sink.clone(),
            self.counters.clone(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_snapshot(
        &self,
        request: Request<proto::SnapshotChunkRequest>,
    ) -> Result<Response<proto::SnapshotChunk>, Status> {
        let remote = roles::remote_of(request.extensions());
        let role = roles::peer_info(request.extensions()).role;
        let refuse = |status: Status| {
            bump(&self.counters.snapshot_fetches_refused);
            tracing::warn!(remote = %remote, code = ?status.code(), error = status.message(), "snapshot fetch refused");
            status
        };
        role.require(&[roles::Role::Store], "a snapshot fetch")
            .map_err(|why| refuse(Status::permission_denied(why)))?;
        let Some(service) = self.snapshots.clone() else {
            return Err(refuse(Status::unimplemented(
                "this process serves no snapshots",
            )));
        };
        let request = codec::decode_snapshot_request(request.into_inner())
            .map_err(|e| refuse(Status::invalid_argument(e.to_string())))?;
        let _permit = self
            .snapshot_serves
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| refuse(Status::unavailable("server shutting down")))?;
        let group = request.group;
        let served = tokio::task::spawn_blocking(move || {
            let served = service.serve(&request);
            match served {
                Ok(data) if data.len() > SNAPSHOT_DATA_BYTES_MAX => Err(format!(
                    "group {group}: part of {} bytes, more than the wire limit of \
                     {SNAPSHOT_DATA_BYTES_MAX}",
                    data.len()
                )),
                other => other,
            }
        })
        .await
        .map_err(|e| {
            refuse(Status::internal(format!(
                "serving the snapshot failed: {e}"
            )))
        })?;
        match &served {
            Ok(_) => bump(&self.counters.snapshot_parts_served),
            Err(why) => {
                bump(&self.counters.snapshot_fetches_refused);
                tracing::debug!(remote = %remote, group, error = %why, "snapshot part not served");
            }
        }
        Ok(Response::new(codec::encode_snapshot_chunk(served)))
    }
}

/// Reads one peer's stream: decodes, validates and delivers each frame; on the first bad
/// frame, logs it, ends the stream with an error status and returns.
async fn receive(
    remote: String,
    certified: Option<String>,
    mut frames: Streaming<proto::Frame>,
    responses: mpsc::Sender<Result<proto::Ack, Status>>,
    sink: Arc<dyn FrameSink>,
    counters: Arc<ServerCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sender: Option<PeerId> = None;
    let refuse = |sender: &Option<PeerId>, status: Status| {
        bump(&counters.streams_refused);
        tracing::error!(remote = %remote, peer = ?sender, code = ?status.code(), error = status.message(), "refusing frame: stream ended");
        let responses = responses.clone();
        async move {
            let _ = responses.send(Err(status)).await;
        }
    };
    loop {
        let next = tokio::select! {
            stopping = shutdown.wait_for(|stop| *stop) => {
                drop(stopping);
                None
            }
            next = frames.message() => Some(next),
        };
        let Some(next) = next else {
            let _ = responses
                .send(Err(Status::unavailable("server shutting down")))
                .await;
            return;
        };
        let wire = match next {
            Ok(Some(wire)) => wire,
            Ok(None) => return,
            // Oversized (OutOfRange: refused from the length prefix) or undecodable
            // (Internal) frames; anything else is the connection going away.
            Err(status) if matches!(status.code(), Code::OutOfRange | Code::Internal) => {
                refuse(&sender, status).await;
                return;
            }
            Err(status) => {
                tracing::debug!(remote = %remote, code = ?status.code(), error = status.message(), "stream ended");
                return;
            }
        };
        let frame = match codec::decode_frame(wire) {
            Ok(frame) => frame,
            Err(error) => {
                refuse(&sender, Status::invalid_argument(error.to_string())).await;
                return;
            }
        };
        if let Some(certified) = certified.as_deref().filter(|c| *c != frame.from.as_str()) {
            let status = Status::permission_denied(format!(
                "frame from {} on a connection whose certificate names store {certified}",
                frame.from
            ));
            refuse(&sender, status).await;
            return;
        }
        match &sender {
            None => sender = Some(frame.from.clone()),
            Some(first) if *first != frame.from => {
                let status = Status::invalid_argument(format!(
                    "frame from {} on the stream of {first}",
                    frame.from
                ));
                refuse(&sender, status).await;
                return;
            }
            Some(_) => {}
        }
        if let Err(why) = sink.admit(&frame) {
            // The sender dialled an address that another peer holds now (or is of another
            // cluster): ending the stream tells it, and it retries after a back-off.
            let _ = responses.send(Err(Status::failed_precondition(why))).await;
            return;
        }
        sink.learn_address(&frame);
        match sink.deliver(frame) {
            Ok(()) => bump(&counters.frames_delivered),
            Err(frame) => {
                bump(&counters.frames_dropped_sink_full);
                tracing::debug!(from = %frame.from, messages = frame.messages.len(), "inbox full: frame dropped");
            }
        }
    }
}
