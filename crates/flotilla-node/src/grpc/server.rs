//! The server side of the gRPC transport: [`GrpcServer`] binds the process's one address
//! and serves the `Raft` service there (every peer's frame stream, snapshot fetches), with
//! the CLI service and any added services next to it ([`super::dispatch`]); frames go to a
//! [`FrameSink`] (a manager's [`Inbox`]).
//!
//! Owns: decoding and checking every inbound frame before it reaches the sink (an
//! oversized, undecodable or misaddressed frame, or one from another sender than the
//! stream's, ends that stream only), the bound on snapshot parts served at once, and the
//! server's counters. Must never: allocate what a peer claims before checking it, block on
//! a full sink (the frame is dropped and counted), or let one misbehaving peer disturb the
//! other streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::PeerId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};

use super::cli::{self, CliNodes};
use super::dispatch::Dispatch;
use super::extra::ExtraService;
use super::{
    codec, listener, proto, roles, tls, TlsConfig, FRAME_BYTES_MAX, SNAPSHOT_DATA_BYTES_MAX,
};
use crate::metrics::{ConnectionClose, TransportMetrics};
use crate::snapshot::SnapshotService;
use crate::transport::{Frame, Inbox};

/// Snapshot parts a server reads at once (each on a blocking-pool thread); further requests
/// wait their turn.
pub const SNAPSHOT_SERVES_CONCURRENT_MAX: usize = 16;

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

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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
    /// Most messages a received frame may carry (≤ [`codec::FRAME_MESSAGES_MAX`]).
    frame_messages_max: usize,
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
            frame_messages_max: codec::FRAME_MESSAGES_MAX,
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

    /// Refuses frames of more than `messages_max` messages (clamped to 1 ..=
    /// [`codec::FRAME_MESSAGES_MAX`], the default): a stream that sends one is reset with a
    /// refusal naming the limit. Senders must cut to it ([`super::GrpcOptions`]'s
    /// `frame_messages_max`); tests lower both to prove they do.
    #[must_use]
    pub fn with_frame_messages_max(mut self, messages_max: usize) -> GrpcServer {
        self.frame_messages_max = messages_max.clamp(1, codec::FRAME_MESSAGES_MAX);
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
            frame_messages_max: self.frame_messages_max,
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
        let dispatch = Dispatch {
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
    /// Most messages a received frame may carry.
    frame_messages_max: usize,
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
            Receiving {
                sink: self.sink.clone(),
                counters: self.counters.clone(),
                frame_messages_max: self.frame_messages_max,
            },
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
        // A store installing its leader's snapshot, or an operator's backup.
        role.require(
            &[roles::Role::Store, roles::Role::Admin],
            "a snapshot fetch",
        )
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
/// What every stream's receiving task shares with the server.
struct Receiving {
    sink: Arc<dyn FrameSink>,
    counters: Arc<ServerCounters>,
    /// Most messages a frame may carry ([`GrpcServer::with_frame_messages_max`]).
    frame_messages_max: usize,
}

async fn receive(
    remote: String,
    certified: Option<String>,
    mut frames: Streaming<proto::Frame>,
    responses: mpsc::Sender<Result<proto::Ack, Status>>,
    receiving: Receiving,
    mut shutdown: watch::Receiver<bool>,
) {
    let Receiving {
        sink,
        counters,
        frame_messages_max,
    } = receiving;
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
        if wire.messages.len() > frame_messages_max {
            let why = format!(
                "{} messages in one frame, more than this server's limit of {frame_messages_max}",
                wire.messages.len()
            );
            refuse(&sender, Status::invalid_argument(why)).await;
            return;
        }
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
