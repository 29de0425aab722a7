//! Optional mutual TLS for the gRPC transport and the CLI service (rustls, ring provider).
//!
//! A [`TlsConfig`] holds the CA certificate(s) that every process of the cluster trusts,
//! and this process's certificate chain and private key. With it, the server
//! ([`super::GrpcServer::with_tls`]) requires every connecting process to present a
//! certificate signed by one of those CAs (mutual TLS), and every client (the raft stream
//! and snapshot fetches of [`super::GrpcTransport`], [`super::CliClient`]) presents its own
//! certificate and checks the server's against the same CAs. Without a `TlsConfig`
//! everything stays plain text, as before.
//!
//! Names: peers are addressed as `host:port` (their peer id), so a client checks the
//! server's certificate against that `host`: the certificate must carry it as a subject
//! alternative name, an IP address SAN for `127.0.0.1:8081`, a DNS SAN for
//! `node-1.example:8081`. [`TlsConfig::with_server_name`] checks every server against one
//! fixed name instead (certificates shared by the whole cluster). A process's certificate
//! serves both ends of its connections, so its extended key usage, if present, must allow
//! both `serverAuth` and `clientAuth`. Any certificate the CAs signed is accepted from a
//! client: the CA is the trust boundary.
//!
//! Owns: reading and checking the PEM material (with errors naming the file and what was
//! wrong), the rustls configurations (TLS 1.3, ALPN `h2`, the ring provider named
//! explicitly so no other provider compiled into the program is picked by accident), the
//! server's handshakes (each within the handshake timeout, at most [`HANDSHAKE_TIMEOUT_MAX`];
//! how many run at once, in all and per source, is [`super::listener`]'s) and the client's
//! connector. A failed handshake is counted and logged
//! at `warn` once per peer and reason (repeats go to `debug` until a handshake with that
//! peer succeeds), so a misconfigured peer retrying with back-off does not flood the log.
//! Must never: crash the process or stop the listener on a failed handshake, hand a
//! connection whose handshake failed to the gRPC server, or print key material.
//!
//! Not yet: binding a frame's sender (`Frame::from`) to the identity in the client's
//! certificate (any certificate the CAs signed may speak for any peer), certificate
//! revocation lists, and reloading certificates without a restart.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_raft::PeerId;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;

use crate::metrics::{ConnectionClose, TransportMetrics};

/// TLS handshakes a server runs at once ([`super::listener::SETUPS_TLS_MAX`]); further
/// connections wait in the listen backlog. At most
/// [`super::listener::SETUPS_PER_SOURCE_MAX`] of them from one source address.
pub use super::listener::SETUPS_TLS_MAX as TLS_HANDSHAKES_CONCURRENT_MAX;

/// Largest PEM file read (1 MiB): certificate chains and keys are a few KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Longest a TLS handshake may take, on either side (a silent connection holds a handshake
/// slot at most this long).
pub const HANDSHAKE_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// Default limit on one TLS handshake: [`HANDSHAKE_TIMEOUT_MAX`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = HANDSHAKE_TIMEOUT_MAX;

/// Peers whose last failure is remembered for the once-per-reason warning; the memory is
/// cleared when it is full.
const WARNED_PEERS_MAX: usize = 1024;

/// The ALPN protocol gRPC runs on.
const ALPN_H2: &[u8] = b"h2";

/// The first byte of every TLS record that opens a handshake (content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Which of the three PEM inputs an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    /// The CA certificate(s) peers are verified against.
    CaCertificates,
    /// This process's certificate chain (its own certificate first).
    CertificateChain,
    /// This process's private key.
    PrivateKey,
}

impl fmt::Display for PemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemKind::CaCertificates => "CA certificates",
            PemKind::CertificateChain => "certificate chain",
            PemKind::PrivateKey => "private key",
        })
    }
}

/// Why a [`TlsConfig`] could not be built. Each error names the input (and its file, when
/// read from one) and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsConfigError {
    /// The file does not exist.
    Missing {
        /// Which input.
        kind: PemKind,
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, a directory, an I/O error).
    Unreadable {
        /// Which input.
        kind: PemKind,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The file is larger than [`PEM_FILE_BYTES_MAX`].
    TooLarge {
        /// Which input.
        kind: PemKind,
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A PEM section is broken (bad base64, a missing end line).
    NotPem {
        /// Which input.
        kind: PemKind,
        /// The file, or "the PEM given".
        origin: String,
        /// The parser's reason.
        reason: String,
    },
    /// No `CERTIFICATE` section: not PEM at all, or PEM holding something else.
    NoCertificate {
        /// Which input.
        kind: PemKind,
        /// The file, or "the PEM given".
        origin: String,
    },
    /// No private key section (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    NoPrivateKey {
        /// The file, or "the PEM given".
        origin: String,
    },
    /// A CA certificate cannot serve as a trust root (it does not parse as X.509).
    InvalidCaCertificate {
        /// The file, or "the PEM given".
        origin: String,
        /// Its position among the file's certificates, from 0.
        index: usize,
        /// The parser's reason.
        reason: String,
    },
    /// rustls refused the certificate chain and key together: the key does not match the
    /// certificate, or uses an algorithm the ring provider does not support.
    InvalidIdentity {
        /// Where the chain came from.
        chain: String,
        /// Where the key came from.
        key: String,
        /// rustls's reason.
        reason: String,
    },
    /// The name given to [`TlsConfig::with_server_name`] is neither a DNS name nor an IP
    /// address.
    InvalidServerName {
        /// The name given.
        name: String,
    },
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Missing { kind, path } => {
                write!(f, "TLS {kind} file {} does not exist", path.display())
            }
            TlsConfigError::Unreadable { kind, path, reason } => {
                write!(
                    f,
                    "cannot read the TLS {kind} file {}: {reason}",
                    path.display()
                )
            }
            TlsConfigError::TooLarge { kind, path, bytes } => write!(
                f,
                "TLS {kind} file {} has {bytes} bytes, more than the {PEM_FILE_BYTES_MAX} a \
                 PEM file may have",
                path.display()
            ),
            TlsConfigError::NotPem {
                kind,
                origin,
                reason,
            } => write!(f, "TLS {kind} in {origin} is not valid PEM: {reason}"),
            TlsConfigError::NoCertificate { kind, origin } => write!(
                f,
                "TLS {kind} in {origin}: no PEM CERTIFICATE section found (is it a PEM file?)"
            ),
            TlsConfigError::NoPrivateKey { origin } => write!(
                f,
                "TLS private key in {origin}: no PEM private key section (PRIVATE KEY, RSA \
                 PRIVATE KEY or EC PRIVATE KEY) found"
            ),
            TlsConfigError::InvalidCaCertificate {
                origin,
                index,
                reason,
            } => write!(
                f,
                "TLS CA certificate #{index} in {origin} cannot be a trust root: {reason}"
            ),
            TlsConfigError::InvalidIdentity { chain, key, reason } => write!(
                f,
                "TLS certificate chain in {chain} and private key in {key} refused: {reason}"
            ),
            TlsConfigError::InvalidServerName { name } => write!(
                f,
                "TLS server name {name:?} is neither a DNS name nor an IP address"
            ),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// Mutual-TLS settings of a process: the CAs its peers' certificates must chain to, and its
/// own certificate chain and key. Cheap to clone (the rustls configurations are shared).
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// When set, every server is checked against this name instead of its peer id's host.
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
    /// Where the material came from, for `Debug` (never the key itself).
    description: String,
    /// The role this process's own certificate names (see [`super::roles`]).
    role: Result<super::roles::PeerRole, String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("material", &self.description)
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// One PEM input: its bytes and where they came from.
struct Pem<'a> {
    kind: PemKind,
    bytes: &'a [u8],
    origin: String,
}

impl TlsConfig {
    /// Builds the configuration from PEM text: `ca_pem` holds one or more CA certificates,
    /// `chain_pem` this process's certificate (then any intermediates), `key_pem` its
    /// private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsConfigError> {
        let origin = || "the PEM given".to_owned();
        TlsConfig::build(
            Pem {
                kind: PemKind::CaCertificates,
                bytes: ca_pem,
                origin: origin(),
            },
            Pem {
                kind: PemKind::CertificateChain,
                bytes: chain_pem,
                origin: origin(),
            },
            Pem {
                kind: PemKind::PrivateKey,
                bytes: key_pem,
                origin: origin(),
            },
        )
    }

    /// The role and name this process's certificate gives (`flotilla://ROLE/NAME`), or why
    /// it gives none. Peers under TLS accept only what that role allows.
    pub fn role(&self) -> Result<&super::roles::PeerRole, &str> {
        self.role.as_ref().map_err(String::as_str)
    }

    /// [`TlsConfig::from_pem`] from three files; errors name the file.
    pub fn from_pem_files(
        ca_path: impl AsRef<Path>,
        chain_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let (ca_path, chain_path, key_path) =
            (ca_path.as_ref(), chain_path.as_ref(), key_path.as_ref());
        let ca = read_pem_file(PemKind::CaCertificates, ca_path)?;
        let chain = read_pem_file(PemKind::CertificateChain, chain_path)?;
        let key = read_pem_file(PemKind::PrivateKey, key_path)?;
        let origin = |path: &Path| format!("file {}", path.display());
        TlsConfig::build(
            Pem {
                kind: PemKind::CaCertificates,
                bytes: &ca,
                origin: origin(ca_path),
            },
            Pem {
                kind: PemKind::CertificateChain,
                bytes: &chain,
                origin: origin(chain_path),
            },
            Pem {
                kind: PemKind::PrivateKey,
                bytes: &key,
                origin: origin(key_path),
            },
        )
    }

    /// The same configuration, checking every server's certificate against `name` (a DNS
    /// name or an IP address) instead of the host of the peer id dialled.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsConfig, TlsConfigError> {
        let parsed = ServerName::try_from(name.to_owned()).map_err(|_| {
            TlsConfigError::InvalidServerName {
                name: name.to_owned(),
            }
        })?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// The same configuration with another limit on one handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]; at least 1 ms, at most [`HANDSHAKE_TIMEOUT_MAX`]).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout.clamp(Duration::from_millis(1), HANDSHAKE_TIMEOUT_MAX);
        self
    }

    /// The limit on one handshake.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    fn build(ca: Pem<'_>, chain: Pem<'_>, key: Pem<'_>) -> Result<TlsConfig, TlsConfigError> {
        let ca_certificates = certificates(&ca)?;
        let chain_certificates = certificates(&chain)?;
        let private_key = PrivateKeyDer::from_pem_slice(key.bytes).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey {
                origin: key.origin.clone(),
            },
            other => TlsConfigError::NotPem {
                kind: key.kind,
                origin: key.origin.clone(),
                reason: other.to_string(),
            },
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for (index, certificate) in ca_certificates.iter().enumerate() {
            roots
                .add(certificate.clone())
                .map_err(|e| TlsConfigError::InvalidCaCertificate {
                    origin: ca.origin.clone(),
                    index,
                    reason: e.to_string(),
                })?;
        }
        let roots = Arc::new(roots);
        let refused = |reason: String| TlsConfigError::InvalidIdentity {
            chain: chain.origin.clone(),
            key: key.origin.clone(),
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| refused(format!("client verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain_certificates.clone(), private_key.clone_key())
            .map_err(|e| refused(e.to_string()))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain_certificates.clone(), private_key)
            .map_err(|e| refused(e.to_string()))?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        let role = chain_certificates.first().map_or_else(
            || Err("no certificate".to_owned()),
            |c| super::roles::role_of(c.as_ref()),
        );
        Ok(TlsConfig {
            role,
            server: Arc::new(server),
            client: Arc::new(client),
            server_name: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            description: format!(
                "{} CA certificate(s) from {}, a chain of {} from {}, the key from {}",
                ca_certificates.len(),
                ca.origin,
                chain_certificates.len(),
                chain.origin,
                key.origin
            ),
        })
    }
}

fn read_pem_file(kind: PemKind, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    use std::io::Read as _;
    let unreadable = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => TlsConfigError::Missing {
            kind,
            path: path.to_owned(),
        },
        _ => TlsConfigError::Unreadable {
            kind,
            path: path.to_owned(),
            reason: e.to_string(),
        },
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > PEM_FILE_BYTES_MAX {
        let bytes = std::fs::metadata(path).map_or(size, |m| m.len());
        return Err(TlsConfigError::TooLarge {
            kind,
            path: path.to_owned(),
            bytes,
        });
    }
    Ok(bytes)
}

fn certificates(pem: &Pem<'_>) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certificates = CertificateDer::pem_slice_iter(pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::NotPem {
            kind: pem.kind,
            origin: pem.origin.clone(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            kind: pem.kind,
            origin: pem.origin.clone(),
        });
    }
    Ok(certificates)
}

/// Handshake counters, shared by a server's (or a transport's) connections.
#[derive(Debug, Default)]
pub(crate) struct HandshakeCounters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Remembers, per peer, the last handshake failure warned about: a failure is logged at
/// `warn` when its reason differs from the last one for that peer, else at `debug`; a
/// success forgets the peer. Bounded by [`WARNED_PEERS_MAX`].
#[derive(Debug, Default)]
pub(crate) struct HandshakeWarnings {
    last: Mutex<HashMap<String, String>>,
}

impl HandshakeWarnings {
    /// Whether this failure of `peer` deserves a warning (it is then remembered).
    pub(crate) fn should_warn(&self, peer: &str, reason: &str) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.get(peer).is_some_and(|r| r == reason) {
            return false;
        }
        if last.len() >= WARNED_PEERS_MAX && !last.contains_key(peer) {
            last.clear();
        }
        last.insert(peer.to_owned(), reason.to_owned());
        true
    }

    /// A handshake with `peer` succeeded: its next failure is warned about again.
    pub(crate) fn succeeded(&self, peer: &str) {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(peer);
    }
}

/// The TLS failure somewhere in the chain of `error` (from a connection made with TLS), if
/// any: a handshake this side refused or that timed out ([`Connector`]'s own error), or an
/// alert by which the server refused this side's certificate after the handshake (TLS 1.3
/// clients learn it on their first read, inside HTTP/2). rustls reports every failure as an
/// `InvalidData` I/O error, and HTTP/2 keeps only that kind and the text on the way up, so
/// under TLS that kind is taken for the TLS layer's.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(failure) = error.downcast_ref::<HandshakeFailed>() {
            return Some(failure.reason.clone());
        }
        if let Some(refused) = error.downcast_ref::<rustls::Error>() {
            return Some(refused.to_string());
        }
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            // `io::Error::source` skips the error it wraps: look at it directly.
            if let Some(found) = io_error.get_ref().and_then(|inner| tls_failure(inner)) {
                return Some(found);
            }
            if io_error.kind() == io::ErrorKind::InvalidData {
                return Some(io_error.to_string());
            }
        }
        next = error.source();
    }
    None
}

/// Every message in `error`'s chain, joined by ": " (tonic's top-level messages alone,
/// such as "transport error", do not say what went wrong).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// A client-side TLS handshake that failed (or timed out).
#[derive(Debug)]
pub(crate) struct HandshakeFailed {
    peer: String,
    reason: String,
}

impl fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {} failed: {}",
            self.peer, self.reason
        )
    }
}

impl std::error::Error for HandshakeFailed {}

/// The client side: dials `host:port` over TCP and runs the TLS handshake, for
/// `Endpoint::connect_with_connector` (tonic's own TLS is not compiled in).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    tls: TlsConfig,
}

impl Connector {
    pub(crate) fn new(tls: TlsConfig) -> Connector {
        Connector { tls }
    }
}

type ClientIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl Service<Uri> for Connector {
    type Response = ClientIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ClientIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move { connect(&tls, &uri).await.map(TokioIo::new) })
    }
}

async fn connect(
    tls: &TlsConfig,
    uri: &Uri,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
    // An IPv6 host comes bracketed out of a URI.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(host.to_owned())
            .map_err(|_| invalid("the host is neither a DNS name nor an IP address"))?,
    };
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let handshake = tokio_rustls::TlsConnector::from(tls.client.clone()).connect(name, tcp);
    let failed = |reason: String| {
        io::Error::other(HandshakeFailed {
            peer: format!("{host}:{port}"),
            reason,
        })
    };
    let stream = match tokio::time::timeout(tls.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(failed(error.to_string())),
        Err(_) => {
            return Err(failed(format!(
                "timed out after {:?}",
                tls.handshake_timeout
            )))
        }
    };
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(failed(
            "the server did not agree to HTTP/2 (ALPN h2)".into(),
        ));
    }
    Ok(stream)
}

/// The server side of TLS: runs one connection's handshake within the timeout, counting and
/// logging a failure. The accept loop is [`super::listener`]'s.
pub(crate) struct TlsAccept {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    counters: Arc<HandshakeCounters>,
    warnings: HandshakeWarnings,
}

impl TlsAccept {
    pub(crate) fn new(tls: &TlsConfig, counters: Arc<HandshakeCounters>) -> TlsAccept {
        TlsAccept {
            acceptor: tokio_rustls::TlsAcceptor::from(tls.server.clone()),
            timeout: tls.handshake_timeout,
            counters,
            warnings: HandshakeWarnings::default(),
        }
    }

    /// One server-side handshake on `tcp` (from `remote`, to the server at `address`): the
    /// TLS stream on success; on failure (counted, logged) `None`, and the connection is
    /// closed.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
        address: &PeerId,
        metrics: &TransportMetrics,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        // Failures are remembered per remote host: a peer reconnects from a new port each
        // time.
        let peer = remote.ip().to_string();
        let accepting = async {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(0) => return Err("closed before the handshake".to_owned()),
                Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                    return Err(format!(
                        "not a TLS handshake (first byte {:#04x}): a plain-text client?",
                        first[0]
                    ))
                }
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
            self.acceptor
                .accept(tcp)
                .await
                .map_err(|error| error.to_string())
        };
        let outcome = match tokio::time::timeout(self.timeout, accepting).await {
            Ok(outcome) => outcome,
            Err(_) => {
                metrics.connection_closed(ConnectionClose::HandshakeTimeout);
                Err(format!("timed out after {:?}", self.timeout))
            }
        };
        match outcome {
            Ok(stream) => {
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                self.warnings.succeeded(&peer);
                Some(stream)
            }
            Err(reason) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if self.warnings.should_warn(&peer, &reason) {
                    tracing::warn!(address = %address, remote = %remote, error = %reason, "TLS handshake refused: connection closed");
                } else {
                    tracing::debug!(address = %address, remote = %remote, error = %reason, "TLS handshake refused again");
                }
                None
            }
        }
    }
}
