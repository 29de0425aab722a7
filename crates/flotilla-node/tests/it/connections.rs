//! Bounded connections: silent TCP connections cannot keep TLS clients out (a
//! cap per source address on handshakes in flight, the oldest evicted by a newer one, a 2 s
//! handshake limit), and plain-text
//! connections that send nothing or half a request are closed within
//! `PLAIN_REQUEST_TIMEOUT`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_node::grpc::listener::{PLAIN_REQUEST_TIMEOUT, SETUPS_PER_SOURCE_MAX};
use flotilla_node::grpc::{codec, proto, GrpcOptions, GrpcTransport, TlsConfig};
use flotilla_node::{Frame, PeerId, Transport};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::cluster::{sink_server, temp_root};

fn beacon(from: &str) -> Frame {
    codec::decode_frame(proto::Frame {
        from: from.to_owned(),
        to: "to".to_owned(),
        cluster: 0,
        from_address: String::new(),
        incarnation: 1,
        messages: Vec::new(),
    })
    .expect("a valid frame")
}

/// A CA and a certificate for 127.0.0.1 it signed (a store's, named `127.0.0.1:1`), as a
/// [`TlsConfig`] (files under `dir`).
fn loopback_tls(dir: &Path) -> TlsConfig {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "flotilla connections test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    // The beacons below come from the store "127.0.0.1:1", which the certificate names.
    params.subject_alt_names.push(rcgen::SanType::URI(
        "flotilla://store/127.0.0.1:1".try_into().expect("ia5"),
    ));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let certificate = params.signed_by(&key, &ca).expect("signed");
    std::fs::create_dir_all(dir).expect("dir");
    let paths = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    for (path, text) in paths
        .iter()
        .zip([ca.pem(), certificate.pem(), key.serialize_pem()])
    {
        std::fs::write(path, text).expect("write pem");
    }
    TlsConfig::from_pem_files(&paths[0], &paths[1], &paths[2]).expect("tls config")
}

/// `count` TCP connections to `to` from the source address `from` that never send a byte.
async fn silent_connections(from: &str, to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("address"))
            .expect("bind the source address");
        connections.push(socket.connect(to).await.expect("connect"));
    }
    connections
}

/// How long a TLS transport takes to deliver one frame to `server`.
async fn time_to_deliver(
    tls: &TlsConfig,
    to: &PeerId,
    inbox: &mut mpsc::Receiver<Frame>,
) -> Duration {
    let started = Instant::now();
    let transport = GrpcTransport::new(GrpcOptions {
        tls: Some(tls.clone()),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..GrpcOptions::default()
    });
    transport.send(to, beacon("127.0.0.1:1"));
    let frame = tokio::time::timeout(Duration::from_secs(20), inbox.recv())
        .await
        .expect("the TLS client got through")
        .expect("sink open");
    assert_eq!(frame.from, PeerId::new("127.0.0.1:1"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_do_not_keep_tls_clients_out() {
    let root = temp_root("connections-tls");
    let tls = loopback_tls(&root);
    let (server, mut inbox) = sink_server(Some(tls.clone())).await;
    let to = server.address().clone();
    let address: SocketAddr = to.as_str().parse().expect("socket address");

    // 100 silent connections from another source: all 64 handshake slots, each held 10 s,
    // used to keep every new TLS client waiting.
    let silent = silent_connections("127.0.0.2", address, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = time_to_deliver(&tls, &to, &mut inbox).await;
    assert!(
        elapsed < Duration::from_millis(1500),
        "a TLS client took {elapsed:?} to get in: {:?}",
        server.stats()
    );
    let stats = server.stats();
    assert!(
        stats.connections_closed_source_cap >= (100 - SETUPS_PER_SOURCE_MAX) as u64,
        "{stats:?}"
    );

    // The same from the client's own address: the client's connection takes the place of
    // the oldest silent one, and gets in as quickly.
    let same_source = silent_connections("127.0.0.1", address, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = time_to_deliver(&tls, &to, &mut inbox).await;
    assert!(
        elapsed < Duration::from_millis(1500),
        "a TLS client took {elapsed:?} to get in: {:?}",
        server.stats()
    );
    // The silent connections left in their handshakes are closed after 2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().connections_closed_handshake_timeout < 2 * SETUPS_PER_SOURCE_MAX as u64 - 1
    {
        assert!(Instant::now() < deadline, "{:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
    drop(same_source);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// Reads until the server closes `connection` (EOF or a reset); returns when it did.
async fn closed_at(mut connection: TcpStream, limit: Duration) -> Instant {
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match connection.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closed the connection in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_half_sent_plain_text_connections_are_closed_in_time() {
    let (server, mut inbox) = sink_server(None).await;
    let to = server.address().clone();
    let started = Instant::now();
    let silent = TcpStream::connect(to.as_str()).await.expect("connect");
    let mut half_preface = TcpStream::connect(to.as_str()).await.expect("connect");
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    let mut half_head = TcpStream::connect(to.as_str()).await.expect("connect");
    half_head
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");

    // The server keeps serving others meanwhile.
    let transport = GrpcTransport::new(GrpcOptions::default());
    transport.send(&to, beacon("127.0.0.1:1"));
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a frame in time")
        .expect("sink open");

    let limit = PLAIN_REQUEST_TIMEOUT + Duration::from_secs(5);
    let closed = tokio::join!(
        closed_at(silent, limit),
        closed_at(half_preface, limit),
        closed_at(half_head, limit)
    );
    for at in [closed.0, closed.1, closed.2] {
        let after = at.duration_since(started);
        assert!(
            after >= PLAIN_REQUEST_TIMEOUT - Duration::from_millis(500),
            "closed after {after:?}, before its time"
        );
    }
    assert_eq!(
        server.stats().connections_closed_request_timeout,
        3,
        "{:?}",
        server.stats()
    );
    server.shutdown().await;
}
