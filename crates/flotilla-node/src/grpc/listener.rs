//! The server's accept loop, for plain text and TLS alike: every accepted connection is set
//! up off the loop (a TLS handshake, or for plain text the wait for its first complete
//! request) within a time limit before the gRPC server sees it: connections are bounded.
//!
//! Owns: how many connections are being set up at once (in all: [`SETUPS_TLS_MAX`] or
//! [`SETUPS_PLAIN_MAX`]; per source address: [`SETUPS_PER_SOURCE_MAX`], beyond which a new
//! connection from that address evicts the oldest being set up), the time they may take
//! ([`super::tls::HANDSHAKE_TIMEOUT_MAX`], [`PLAIN_REQUEST_TIMEOUT`]), and the back-off after
//! accept errors (`AcceptBackoff`: at the file-descriptor limit the loop used to spin at
//! 85% CPU and log nothing). Must never: let one source's silent connections starve the
//! others, block the loop on one connection, log every error of a burst, or crash on a
//! failed accept.
//!
//! Established connections are bounded by the gRPC server's HTTP/2 keep-alive (a peer that
//! stops answering pings is dropped), not here.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use flotilla_raft::PeerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::roles::{role_of, ConnectionRole, PeerInfo};

use super::tls::TlsAccept;
use crate::metrics::{ConnectionClose, TransportMetrics};

/// Connections a TLS server sets up (handshakes) at once; further ones wait in the listen
/// backlog.
pub const SETUPS_TLS_MAX: usize = 64;

/// Connections a plain-text server sets up (waits for the first request of) at once.
pub const SETUPS_PLAIN_MAX: usize = 256;

/// Connections from one source address (IP) set up at once; a further one evicts the
/// oldest, which is closed and counted
/// (`flotilla_transport_connections_closed_total{reason="source_cap"}`), so that one
/// source's silent connections can take neither every slot nor the place of a real client
/// from the same address.
pub const SETUPS_PER_SOURCE_MAX: usize = 16;

/// How long a plain-text connection may take to send its first complete request: the whole
/// HTTP/2 preface, or an HTTP/1 request head. A connection that sends nothing, or half of
/// one, is closed after this and counted
/// (`flotilla_transport_connections_closed_total{reason="request_timeout"}`).
pub const PLAIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest first request read before handing the connection over regardless (hyper then
/// refuses an oversized HTTP/1 head itself).
const FIRST_REQUEST_BYTES_MAX: usize = 16 * 1024;

/// What every HTTP/2 connection opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// First delay after an accept error.
pub const ACCEPT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);

/// Longest delay between accept attempts while they keep failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections set up and waiting for the gRPC server to take them.
const ACCEPTED_QUEUE_CONNECTIONS: usize = 16;

/// The back-off of an accept loop after errors (out of file descriptors, out of memory):
/// [`ACCEPT_BACKOFF_INITIAL`] doubling to [`ACCEPT_BACKOFF_MAX`] while errors repeat,
/// reset by a successful accept. A burst of errors is logged once, when it starts, and once
/// more when it ends.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    /// Errors since the last successful accept.
    errors: u64,
    /// The delay after the next error.
    next: Option<Duration>,
}

impl AcceptBackoff {
    /// An accept failed: how long to wait before the next, and whether this error starts a
    /// burst (the one to log).
    pub(crate) fn failed(&mut self) -> (Duration, bool) {
        let delay = self.next.unwrap_or(ACCEPT_BACKOFF_INITIAL);
        self.next = Some((delay * 2).min(ACCEPT_BACKOFF_MAX));
        self.errors += 1;
        (delay, self.errors == 1)
    }

    /// An accept succeeded: the errors of the burst it ends, if there was one.
    pub(crate) fn succeeded(&mut self) -> Option<u64> {
        self.next = None;
        let errors = std::mem::take(&mut self.errors);
        (errors > 0).then_some(errors)
    }
}

/// Per source address, its connections being set up, oldest first: an id and the sender that
/// evicts it.
type SettingUp = HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>;

/// Connections being set up, per source address, oldest first. Entries are removed when
/// their connection's set-up ends, so the map holds at most as many addresses as
/// connections being set up.
#[derive(Debug, Default)]
struct Sources {
    setting_up: Mutex<SettingUp>,
    next_id: AtomicU64,
}

/// One connection being set up from a source: `evicted` fires when a newer connection from
/// the same source took its place; dropping it frees its place.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Sources {
    fn lock(&self) -> std::sync::MutexGuard<'_, SettingUp> {
        self.setting_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more connection from `ip`. If `ip` already has
    /// [`SETUPS_PER_SOURCE_MAX`] being set up, the oldest of them is evicted (its set-up
    /// ends and it is closed): returns true then. Evicting the oldest rather than refusing
    /// the newest means connections held open in silence cannot keep a real client from
    /// the same address out; they are what gets closed.
    fn enter(self: &Arc<Sources>, ip: IpAddr) -> (SourceSlot, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, evicted) = oneshot::channel();
        let mut map = self.lock();
        let queue = map.entry(ip).or_default();
        let mut evicted_one = false;
        if queue.len() >= SETUPS_PER_SOURCE_MAX {
            if let Some((_, oldest)) = queue.pop_front() {
                let _ = oldest.send(());
                evicted_one = true;
            }
        }
        queue.push_back((id, tx));
        let slot = SourceSlot {
            sources: self.clone(),
            ip,
            id,
            evicted,
        };
        (slot, evicted_one)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.sources.lock();
        if let Some(queue) = map.get_mut(&self.ip) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                map.remove(&self.ip);
            }
        }
    }
}

/// A connection set up and handed to the gRPC server, with the addresses tonic reports to
/// the services.
pub(crate) struct ServerIo {
    stream: Stream,
    info: PeerInfo,
}

enum Stream {
    /// Plain text: the bytes read while waiting for the first request come first.
    Plain {
        read: Bytes,
        tcp: TcpStream,
    },
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain { read, tcp } => {
                if read.is_empty() {
                    return Pin::new(tcp).poll_read(cx, buf);
                }
                let n = read.len().min(buf.remaining());
                buf.put_slice(&read[..n]);
                read.advance(n);
                Poll::Ready(Ok(()))
            }
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain { tcp, .. } => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How connections are set up: TLS handshakes, or plain text.
pub(crate) enum Setup {
    Plain,
    Tls(TlsAccept),
}

/// What the accept task shares with the set-up tasks.
struct Shared {
    setup: Setup,
    /// The server's address, for the logs.
    address: PeerId,
    metrics: Arc<TransportMetrics>,
    sources: Arc<Sources>,
    accepted: mpsc::Sender<io::Result<ServerIo>>,
}

/// Accepts TCP connections on `listener` and sets them up off the accept loop; those set up
/// come out of the returned stream, for tonic's `serve_with_incoming_shutdown`. The task
/// ends (closing the listener) when `shutdown` turns true or the stream is dropped.
pub(crate) fn serve_incoming(
    listener: TcpListener,
    setup: Setup,
    address: PeerId,
    metrics: Arc<TransportMetrics>,
    shutdown: watch::Receiver<bool>,
) -> (ReceiverStream<io::Result<ServerIo>>, JoinHandle<()>) {
    let (accepted, incoming) = mpsc::channel(ACCEPTED_QUEUE_CONNECTIONS);
    let setups_max = match setup {
        Setup::Plain => SETUPS_PLAIN_MAX,
        Setup::Tls(_) => SETUPS_TLS_MAX,
    };
    let shared = Arc::new(Shared {
        setup,
        address,
        metrics,
        sources: Arc::default(),
        accepted,
    });
    let task = tokio::spawn(accept_loop(listener, shared, setups_max, shutdown));
    (ReceiverStream::new(incoming), task)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    setups_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(setups_max));
    let mut backoff = AcceptBackoff::default();
    loop {
        let next = tokio::select! {
            stopping = shutdown.wait_for(|stop| *stop) => {
                drop(stopping);
                None
            }
            () = shared.accepted.closed() => None,
            permit = permits.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = next else { return };
        let accepted = tokio::select! {
            stopping = shutdown.wait_for(|stop| *stop) => {
                drop(stopping);
                return;
            }
            () = shared.accepted.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                if let Some(errors) = backoff.succeeded() {
                    tracing::info!(address = %shared.address, errors, "accepting connections again");
                }
                let (slot, evicted) = shared.sources.enter(remote.ip());
                if evicted {
                    shared.metrics.connection_closed(ConnectionClose::SourceCap);
                    tracing::debug!(address = %shared.address, remote = %remote, limit = SETUPS_PER_SOURCE_MAX, "too many connections being set up from this source: the oldest closed");
                }
                tokio::spawn(set_up(shared.clone(), tcp, remote, permit, slot));
            }
            Err(error) if transient(&error) => {}
            Err(error) => {
                drop(permit);
                shared.metrics.accept_errors.add(1);
                let (delay, first) = backoff.failed();
                if first {
                    tracing::warn!(address = %shared.address, %error, "accepting a connection failed: backing off (logged once until accepting works again)");
                } else {
                    tracing::debug!(address = %shared.address, %error, ?delay, "accepting a connection failed again");
                }
                tokio::select! {
                    stopping = shutdown.wait_for(|stop| *stop) => {
                        drop(stopping);
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Errors of one connection (it went away before it was accepted): the next accept is
/// unaffected.
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Sets up one connection within its time limit, unless a newer one from its source evicts
/// it first; on success hands it to the gRPC server, else closes it (counted and logged
/// where it failed).
async fn set_up(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
    mut slot: SourceSlot,
) {
    let mut info = PeerInfo {
        local: tcp.local_addr().ok(),
        remote: Some(remote),
        role: ConnectionRole::default(),
    };
    let _ = tcp.set_nodelay(true);
    let stream = tokio::select! {
        // Counted by the accept loop, which evicted it.
        _ = &mut slot.evicted => return,
        stream = set_up_stream(&shared, tcp, remote) => stream,
    };
    drop(slot);
    let Some(stream) = stream else { return };
    if let Stream::Tls(tls) = &stream {
        // The handshake verified the chain: what remains is the role it names.
        let role = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map_or_else(
                || Err("no client certificate".to_owned()),
                |certificate| role_of(certificate.as_ref()),
            );
        info.role = ConnectionRole { role: Some(role) };
    }
    // Waits while the server is behind (bounded queue, the global permit held); an error
    // means the server stopped.
    let _ = shared.accepted.send(Ok(ServerIo { stream, info })).await;
}

/// The TLS handshake, or for plain text the first complete request, within its time limit.
async fn set_up_stream(shared: &Shared, tcp: TcpStream, remote: SocketAddr) -> Option<Stream> {
    match &shared.setup {
        Setup::Tls(tls) => {
            let stream = tls
                .accept(tcp, remote, &shared.address, &shared.metrics)
                .await?;
            Some(Stream::Tls(Box::new(stream)))
        }
        Setup::Plain => {
            let deadline = tokio::time::Instant::now() + PLAIN_REQUEST_TIMEOUT;
            match first_request(tcp, deadline).await {
                FirstRequest::Complete(read, tcp) => Some(Stream::Plain { read, tcp }),
                FirstRequest::Closed => None,
                FirstRequest::TimedOut(tcp) => {
                    // Counted before the connection closes: whoever sees it closed sees it
                    // counted.
                    shared
                        .metrics
                        .connection_closed(ConnectionClose::RequestTimeout);
                    tracing::debug!(address = %shared.address, remote = %remote, timeout = ?PLAIN_REQUEST_TIMEOUT, "no complete first request in time: connection closed");
                    drop(tcp);
                    None
                }
            }
        }
    }
}

/// Reads until `tcp` has sent a complete first request (see [`first_request_complete`]);
/// `None` if it closed or failed first.
/// How waiting for a plain-text connection's first request ended.
enum FirstRequest {
    /// Read (the bytes so far, handed to the server first).
    Complete(Bytes, TcpStream),
    /// The peer closed or the connection failed.
    Closed,
    /// The deadline passed first.
    TimedOut(TcpStream),
}

async fn first_request(mut tcp: TcpStream, deadline: tokio::time::Instant) -> FirstRequest {
    let mut read = BytesMut::with_capacity(1024);
    while !first_request_complete(&read) {
        let mut chunk = (&mut tcp).take((FIRST_REQUEST_BYTES_MAX - read.len()) as u64);
        match tokio::time::timeout_at(deadline, chunk.read_buf(&mut read)).await {
            Ok(Ok(0) | Err(_)) => return FirstRequest::Closed,
            Ok(Ok(_)) => {}
            Err(_) => return FirstRequest::TimedOut(tcp),
        }
    }
    FirstRequest::Complete(read.freeze(), tcp)
}

/// True once `read` holds the whole HTTP/2 preface or a whole HTTP/1 request head (ended by
/// an empty line), or as much as is read before handing over regardless, or bytes that can
/// start neither (garbage, a TLS client: hyper refuses them at once, as before).
fn first_request_complete(read: &[u8]) -> bool {
    if read.len() >= FIRST_REQUEST_BYTES_MAX || read.starts_with(H2_PREFACE) {
        return true;
    }
    if H2_PREFACE.starts_with(read) {
        return false;
    }
    // An HTTP/1 request line starts with its method: upper-case letters, then a space.
    let method_len = read.iter().position(|&b| b == b' ').unwrap_or(read.len());
    let could_be_http1 = method_len > 0 && read[..method_len].iter().all(u8::is_ascii_uppercase);
    !could_be_http1 || read.windows(4).any(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_doubling_and_log_once_per_burst() {
        let mut backoff = AcceptBackoff::default();
        assert_eq!(backoff.succeeded(), None);
        let mut delays = Vec::new();
        let mut logged = 0;
        for _ in 0..12 {
            let (delay, log) = backoff.failed();
            delays.push(delay);
            logged += usize::from(log);
        }
        assert_eq!(logged, 1, "one log line per burst");
        assert_eq!(delays[0], ACCEPT_BACKOFF_INITIAL);
        assert_eq!(delays[1], ACCEPT_BACKOFF_INITIAL * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), ACCEPT_BACKOFF_MAX);
        // Spinning is impossible: a burst of 12 errors waits several seconds in all.
        assert!(delays.iter().sum::<Duration>() >= Duration::from_secs(5));
        assert_eq!(backoff.succeeded(), Some(12));
        let (delay, log) = backoff.failed();
        assert_eq!(delay, ACCEPT_BACKOFF_INITIAL, "a new burst starts over");
        assert!(log, "and is logged");
    }

    #[test]
    fn a_full_source_evicts_its_oldest_set_up() {
        let sources = Arc::new(Sources::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut slots: Vec<_> = (0..SETUPS_PER_SOURCE_MAX)
            .map(|_| {
                let (slot, evicted) = sources.enter(ip);
                assert!(!evicted, "within the cap");
                slot
            })
            .collect();
        let (newest, evicted) = sources.enter(ip);
        assert!(evicted, "over the cap");
        assert!(slots[0].evicted.try_recv().is_ok(), "the oldest goes");
        assert!(slots[1].evicted.try_recv().is_err(), "the others stay");
        let (_, evicted) = sources.enter(other);
        assert!(!evicted, "another source is not affected");
        drop(slots);
        drop(newest);
        assert_eq!(
            sources.lock().get(&ip).map(VecDeque::len),
            None,
            "no entry outlives its connections"
        );
    }

    #[test]
    fn first_requests_are_recognised() {
        assert!(!first_request_complete(b""));
        assert!(!first_request_complete(&H2_PREFACE[..10]));
        assert!(
            !first_request_complete(&H2_PREFACE[..18]),
            "contains an empty line"
        );
        assert!(first_request_complete(H2_PREFACE));
        assert!(!first_request_complete(b"GET /metrics HTTP/1.1\r\nHost: a"));
        assert!(first_request_complete(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        assert!(first_request_complete(&[b'X'; FIRST_REQUEST_BYTES_MAX]));
        assert!(!first_request_complete(b"G"), "a method begun");
        assert!(
            first_request_complete(b"this is not HTTP"),
            "garbage goes to hyper at once"
        );
        assert!(first_request_complete(&[0x16, 0x03, 0x01]), "a TLS client");
    }
}
