//! The outbound side of the gRPC transport: [`GrpcTransport`] sends this process's frames to
//! other processes, one long-lived `Raft.Stream` call per destination, and fetches snapshot
//! parts from them (see the [`super`] module documentation for the rules it keeps).
//!
//! Owns: per-destination queues and connection tasks, reconnection with capped, jittered
//! exponential back-off, cutting queued frames to the receiver's limits, the snapshot-fetch
//! connections and the checks on their answers, and how a client connects
//! ([`connect_channel`]). Must never: block [`Transport::send`], write a frame the receiver
//! would refuse, or let one destination's trouble delay another's frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use flotilla_raft::{PeerId, Rng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::{codec, proto, tls, GrpcOptions, TlsConfig, FRAME_BYTES_MAX, SNAPSHOT_DATA_BYTES_MAX};
use crate::identity::AddressBook;
use crate::metrics::{MessageDrop, TransportMetrics};
use crate::snapshot::{SnapshotFetch, SnapshotRequest};
use crate::transport::{Frame, Transport};

/// Frames one stream may hold between the connection task and HTTP/2 (the rest wait in the
/// destination's queue).
const STREAM_WINDOW_FRAMES: usize = 16;

/// A connection that lived this long resets the back-off to its initial delay.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

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
/// is set: how [`GrpcTransport`] and [`CliClient`](super::CliClient) connect, for clients of further services
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
                if !send_cut(to, &frame, &tx, counters, metrics, options.frame_messages_max).await {
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
/// ([`FRAME_BYTES_MAX`], `messages_max` ≤ [`codec::FRAME_MESSAGES_MAX`]), in order; a
/// message that alone exceeds a frame is dropped and counted. Returns false if the stream
/// broke.
async fn send_cut(
    to: &PeerId,
    frame: &Frame,
    tx: &mpsc::Sender<proto::Frame>,
    counters: &TransportCounters,
    metrics: &TransportMetrics,
    messages_max: usize,
) -> bool {
    let messages_max = messages_max.clamp(1, codec::FRAME_MESSAGES_MAX);
    let encoded = codec::encode_frames(frame, FRAME_BYTES_MAX, messages_max);
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
