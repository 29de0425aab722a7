//! Mutual TLS on the gRPC transport: a CA and certificates generated at test time (rcgen,
//! ring) into a temp dir; 3 managers committing over TLS and administered through a TLS
//! `CliClient`; a peer whose certificate another CA signed refused while the trusted ones
//! keep committing; plain-text clients refused by a TLS server (and a TLS client by a
//! plain one); the server name override; and `TlsConfig` errors naming the file and the
//! problem.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_node::grpc::tls::PemKind;
use flotilla_node::grpc::{
    codec, proto, CliClient, CliOptions, GrpcOptions, GrpcServer, GrpcTransport, ServerHandle,
    TlsConfig, TlsConfigError,
};
use flotilla_node::{AddressBook, Frame, NodeManager, PeerId, Transport};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::cluster::{add, sink_server, temp_root, test_options, value_of, Counter, WAIT};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A process certificate for `names` (IP addresses or DNS names) naming `role`
    /// (`flotilla://ROLE/NAME`, if given), usable as server and client: (certificate PEM,
    /// private key PEM).
    fn issue(&self, names: &[&str], role: Option<&str>) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        if let Some(role) = role {
            params
                .subject_alt_names
                .push(SanType::URI(role.try_into().expect("an IA5 URI")));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla process");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("signed");
        (certificate.pem(), key.serialize_pem())
    }
}

/// Writes the CA, a certificate for `names` naming `role` and its key under `dir` with the
/// prefix `name`, and loads them back through [`TlsConfig::from_pem_files`].
fn identity(
    dir: &Path,
    name: &str,
    trusted: &Ca,
    signer: &Ca,
    names: &[&str],
    role: &str,
) -> TlsConfig {
    std::fs::create_dir_all(dir).expect("tls dir");
    let (chain, key) = signer.issue(names, Some(role));
    let paths = [
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    ];
    for (path, text) in paths.iter().zip([trusted.pem(), chain, key]) {
        std::fs::write(path, text).expect("write pem");
    }
    TlsConfig::from_pem_files(&paths[0], &paths[1], &paths[2]).expect("tls config")
}

/// One process: a manager over a TLS transport, serving raft and CLI with TLS.
struct Process {
    id: PeerId,
    address: PeerId,
    manager: Arc<NodeManager>,
    transport: GrpcTransport,
    server: ServerHandle,
    counter: Arc<AtomicU64>,
}

/// Starts one process per TLS configuration, on 127.0.0.1 ports picked by the system, all
/// voters of group 1. Process `i` is named `p{i}` (its certificate names
/// `flotilla://store/p{i}`); an address book says where each is.
async fn start(root: &Path, configs: &[TlsConfig]) -> Vec<Process> {
    let mut listeners = Vec::new();
    for _ in configs {
        listeners.push(GrpcServer::bind("127.0.0.1:0").await.expect("bind"));
    }
    let peers: Vec<PeerId> = (0..configs.len())
        .map(|i| PeerId::new(&format!("p{i}")))
        .collect();
    let book = AddressBook::in_memory();
    for (peer, listener) in peers.iter().zip(&listeners) {
        book.set(peer, listener.address().as_str())
            .expect("address");
    }
    let mut processes = Vec::new();
    for (i, (listener, tls)) in listeners.into_iter().zip(configs).enumerate() {
        let address = listener.address().clone();
        let mut options = test_options(peers[i].clone(), root.join(format!("p{i}")));
        options.addresses = book.clone();
        // 500 ms, not 100 ms: `commit` checks exact totals, so a write whose outcome
        // became unknown when a loaded machine lost the leadership must not happen.
        options.raft.election_timeout_ticks = 50;
        options.raft.heartbeat_interval_ticks = 5;
        let transport = GrpcTransport::new(GrpcOptions {
            tls: Some(tls.clone()),
            backoff_max: Duration::from_millis(200),
            addresses: book.clone(),
            ..GrpcOptions::default()
        });
        let manager = Arc::new(
            NodeManager::open(options, Arc::new(transport.clone()))
                .await
                .expect("open manager"),
        );
        let server = listener
            .with_tls(tls.clone())
            .serve_with_cli(Arc::new(manager.inbox()), manager.clone());
        let counter = Arc::new(AtomicU64::new(0));
        manager
            .add_group(
                1,
                peers.clone(),
                Counter {
                    value: counter.clone(),
                },
            )
            .await
            .expect("add group");
        processes.push(Process {
            id: peers[i].clone(),
            address,
            manager,
            transport,
            server,
            counter,
        });
    }
    processes
}

async fn stop(processes: Vec<Process>) {
    for process in &processes {
        process.manager.shutdown().await;
    }
    for process in processes {
        process.server.shutdown().await;
    }
}

/// Commits `1..=n` through whichever of `processes` leads group 1 (never one of
/// `never_leads`), each result checked, and returns the total.
async fn commit(processes: &[Process], never_leads: &[&Process], n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut total = 0;
    for k in 1..=n {
        loop {
            for rogue in never_leads {
                let node = rogue.manager.node(1).expect("group 1");
                assert!(!node.is_leader(), "{} became leader", rogue.address);
            }
            let leader = processes
                .iter()
                .filter_map(|p| p.manager.node(1))
                .find(|node| node.is_leader());
            if let Some(node) = leader {
                match node.apply(add(k), None).await {
                    Ok(result) => {
                        total += k;
                        assert_eq!(value_of(&result), total);
                        break;
                    }
                    // Applied or not: the exact totals checked here cannot be known.
                    Err(flotilla_node::NodeError::Unknown(why)) => {
                        panic!("add {k}: outcome unknown ({why}); the test cannot go on")
                    }
                    Err(_) => {}
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no commit over TLS");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    total
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_commit_over_mutual_tls_and_the_cli_works() {
    let root = temp_root("grpc-tls");
    let ca = Ca::new("flotilla test CA");
    let configs: Vec<TlsConfig> = (0..3)
        .map(|i| {
            identity(
                &root.join("tls"),
                &format!("p{i}"),
                &ca,
                &ca,
                &["127.0.0.1"],
                &format!("flotilla://store/p{i}"),
            )
        })
        .collect();
    let processes = start(&root, &configs).await;

    let total = commit(&processes, &[], 5).await;
    for process in &processes {
        until(&format!("{} applies every entry", process.address), || {
            process.counter.load(Ordering::SeqCst) == total
        })
        .await;
    }

    // An operator's certificate from the same CA administers the cluster.
    let operator = identity(
        &root.join("tls"),
        "operator",
        &ca,
        &ca,
        &["127.0.0.1"],
        "flotilla://admin/operator",
    );
    let addresses: Vec<PeerId> = processes.iter().map(|p| p.address.clone()).collect();
    let ids: Vec<PeerId> = processes.iter().map(|p| p.id.clone()).collect();
    let client = CliClient::new(addresses.clone(), 1)
        .expect("client")
        .with_options(CliOptions {
            tls: Some(operator),
            ..CliOptions::default()
        });
    let leader = client.get_leader().await.expect("leader over TLS");
    assert!(ids.contains(&leader), "{leader}");
    let mut voters = client.get_peers().await.expect("peers over TLS");
    voters.sort();
    assert_eq!(voters, ids);

    // A certificate of the same CA for another role or identity gets nothing a store's
    // certificate would: a client's is refused the CLI, and neither a client's nor another
    // store's may stream frames in a store's name.
    let client_cert = identity(
        &root.join("tls"),
        "app",
        &ca,
        &ca,
        &["127.0.0.1"],
        "flotilla://client/app",
    );
    let as_client = CliClient::new(addresses.clone(), 1)
        .expect("client")
        .with_options(CliOptions {
            tls: Some(client_cert.clone()),
            attempts_max: 2,
            ..CliOptions::default()
        });
    let error = as_client
        .get_peers()
        .await
        .expect_err("a client certificate");
    assert!(
        error
            .to_string()
            .contains("needs a store or admin certificate"),
        "{error}"
    );
    for (cert, what) in [
        (&configs[2], "p2's certificate sending as p1"),
        (&client_cert, "a client certificate sending as p1"),
    ] {
        let impostor = GrpcTransport::new(GrpcOptions {
            tls: Some(cert.clone()),
            backoff_max: Duration::from_millis(100),
            ..GrpcOptions::default()
        });
        let mut frame = empty_frame("p1");
        frame.to = processes[0].id.clone();
        let before = processes[0].server.stats().streams_refused;
        impostor.send(&processes[0].address, frame);
        until(&format!("{what}: refused"), || {
            processes[0].server.stats().streams_refused > before
        })
        .await;
        drop(impostor);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    for process in &processes {
        let server = process.server.stats();
        assert!(server.tls_handshakes_completed >= 1, "{server:?}");
        assert_eq!(server.tls_handshakes_failed, 0, "{server:?}");
        assert!(server.frames_delivered > 0, "{server:?}");
        let transport = process.transport.stats();
        assert_eq!(transport.tls_handshake_failures, 0, "{transport:?}");
        // A follower may only ever answer the leader: one stream.
        assert!(transport.streams_opened >= 1, "{transport:?}");
    }
    stop(processes).await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_whose_certificate_another_ca_signed_cannot_join() {
    let root = temp_root("grpc-tls-rogue");
    let ca = Ca::new("flotilla test CA");
    let rogue_ca = Ca::new("someone else's CA");
    let mut configs: Vec<TlsConfig> = (0..3)
        .map(|i| {
            identity(
                &root.join("tls"),
                &format!("p{i}"),
                &ca,
                &ca,
                &["127.0.0.1"],
                &format!("flotilla://store/p{i}"),
            )
        })
        .collect();
    // The rogue knows the cluster's CA certificate (it is public) but its own certificate
    // was signed by another CA.
    configs.push(identity(
        &root.join("tls"),
        "rogue",
        &ca,
        &rogue_ca,
        &["127.0.0.1"],
        "flotilla://store/p3",
    ));
    // Every process, the rogue included, lists the rogue as a voter: the trusted ones dial
    // it and it dials them, so both directions are refused.
    let processes = start(&root, &configs).await;
    let (trusted, rogue) = processes.split_at(3);
    let rogue = &rogue[0];

    // The rogue campaigns: every trusted server refuses its handshakes.
    for process in trusted {
        until(
            &format!("{} refuses the rogue's handshakes", process.address),
            || process.server.stats().tls_handshakes_failed > 0,
        )
        .await;
    }
    until("the rogue learns it was refused", || {
        rogue.transport.stats().tls_handshake_failures > 0
    })
    .await;

    // Three of four voters are a quorum: the trusted ones commit without the rogue.
    // Nor can the rogue's certificate administer the cluster.
    let rogue_cli = CliClient::new(vec![trusted[0].address.clone()], 1)
        .expect("client")
        .with_options(CliOptions {
            tls: Some(configs[3].clone()),
            attempts_max: 2,
            ..CliOptions::default()
        });
    let error = rogue_cli.get_leader().await.expect_err("rogue refused");
    // The server's alert, or the connection closed before the alert was read.
    assert!(
        matches!(error.kind(), "Unreachable" | "Transport"),
        "{error}"
    );

    let total = commit(trusted, &[rogue], 5).await;
    for process in trusted {
        until(&format!("{} applies every entry", process.address), || {
            process.counter.load(Ordering::SeqCst) == total
        })
        .await;
    }
    // The leader sends to every voter: it refuses the rogue's server certificate.
    let leader = trusted
        .iter()
        .find(|p| p.manager.node(1).is_some_and(|n| n.is_leader()))
        .expect("a trusted leader");
    until("the leader refuses the rogue's certificate", || {
        leader.transport.stats().tls_handshake_failures > 0
    })
    .await;
    let node = rogue.manager.node(1).expect("group 1");
    assert!(!node.is_leader());
    assert_eq!(
        node.committed_index().get(),
        0,
        "the rogue learned a commit"
    );
    assert_eq!(rogue.counter.load(Ordering::SeqCst), 0);
    assert_eq!(rogue.server.stats().frames_delivered, 0);
    assert_eq!(rogue.transport.stats().streams_opened, 0);
    for process in trusted {
        assert_eq!(process.server.stats().streams_opened, 2);
    }
    stop(processes).await;
    let _ = std::fs::remove_dir_all(&root);
}

/// A frame without messages from `from` (built through the decoder, so the test does not
/// depend on every field of `Frame`).
fn empty_frame(from: &str) -> Frame {
    codec::decode_frame(proto::Frame {
        from: from.to_owned(),
        to: "receiver".to_owned(),
        ..proto::Frame::default()
    })
    .expect("a valid frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_and_tls_do_not_mix() {
    let root = temp_root("grpc-tls-plain");
    let ca = Ca::new("flotilla test CA");
    // A TLS process serving raft and CLI, leading its own one-voter group (named by its
    // address, which its certificate names).
    let listener = GrpcServer::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.address().clone();
    let tls = identity(
        &root.join("tls"),
        "p0",
        &ca,
        &ca,
        &["127.0.0.1"],
        &format!("flotilla://store/{address}"),
    );
    let transport = GrpcTransport::new(GrpcOptions {
        tls: Some(tls.clone()),
        ..GrpcOptions::default()
    });
    let manager = Arc::new(
        NodeManager::open(
            test_options(address.clone(), root.join("p0")),
            Arc::new(transport),
        )
        .await
        .expect("open"),
    );
    let server = listener
        .with_tls(tls.clone())
        .serve_with_cli(Arc::new(manager.inbox()), manager.clone());
    manager
        .add_group(
            1,
            vec![address.clone()],
            Counter {
                value: Arc::new(AtomicU64::new(0)),
            },
        )
        .await
        .expect("group");

    // A plain-text CLI client is refused at the handshake...
    let quick = CliOptions {
        attempts_max: 2,
        ..CliOptions::default()
    };
    let plain = CliClient::new(vec![address.clone()], 1)
        .expect("client")
        .with_options(quick.clone());
    let error = plain.get_leader().await.expect_err("plain text refused");
    // Refused at connection time or on the first call, depending on timing.
    assert!(
        matches!(error.kind(), "Unreachable" | "Transport"),
        "{error}"
    );
    let after_cli = server.stats().tls_handshakes_failed;
    assert!(after_cli >= 1, "{:?}", server.stats());
    // ...while the same client with the cluster's TLS gets through.
    let secure = CliClient::new(vec![address.clone()], 1)
        .expect("client")
        .with_options(CliOptions {
            tls: Some(tls.clone()),
            ..quick
        });
    let leader = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match secure.get_leader().await {
                Ok(leader) => break leader,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(leader, address);

    // A plain-text transport never opens a stream to the TLS server.
    let plain_transport = GrpcTransport::new(GrpcOptions {
        backoff_max: Duration::from_millis(100),
        ..GrpcOptions::default()
    });
    plain_transport.send(&address, empty_frame("127.0.0.1:1"));
    until("the plain transport is refused twice", || {
        plain_transport.stats().connect_failures >= 2
    })
    .await;
    assert_eq!(plain_transport.stats().streams_opened, 0);
    assert!(server.stats().tls_handshakes_failed > after_cli);
    assert_eq!(server.stats().frames_delivered, 0);

    // And a TLS transport refuses a plain-text server, while a plain one reaches it.
    let (plain_server, mut inbox) = sink_server(None).await;
    let tls_transport = GrpcTransport::new(GrpcOptions {
        tls: Some(tls.clone()),
        backoff_max: Duration::from_millis(100),
        ..GrpcOptions::default()
    });
    tls_transport.send(plain_server.address(), empty_frame("127.0.0.1:2"));
    until("the TLS transport refuses the plain server", || {
        tls_transport.stats().tls_handshake_failures >= 2
    })
    .await;
    assert_eq!(tls_transport.stats().streams_opened, 0);
    plain_transport.send(plain_server.address(), empty_frame("127.0.0.1:1"));
    let frame = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(frame.from, PeerId::new("127.0.0.1:1"));

    manager.shutdown().await;
    server.shutdown().await;
    plain_server.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_name_is_the_peer_host_unless_overridden() {
    let root = temp_root("grpc-tls-name");
    let ca = Ca::new("flotilla test CA");
    // The server's certificate names a DNS name only, not 127.0.0.1.
    let named = identity(
        &root.join("tls"),
        "named",
        &ca,
        &ca,
        &["flotilla.test"],
        "flotilla://store/127.0.0.1:2",
    );
    let (server, mut inbox) = sink_server(Some(named.clone())).await;
    let to = server.address().clone();

    let by_address = GrpcTransport::new(GrpcOptions {
        tls: Some(named.clone()),
        backoff_max: Duration::from_millis(100),
        ..GrpcOptions::default()
    });
    by_address.send(&to, empty_frame("127.0.0.1:1"));
    until("a certificate without the IP is refused", || {
        by_address.stats().tls_handshake_failures >= 1
    })
    .await;
    assert_eq!(by_address.stats().streams_opened, 0);

    let by_name = GrpcTransport::new(GrpcOptions {
        tls: Some(named.with_server_name("flotilla.test").expect("name")),
        ..GrpcOptions::default()
    });
    by_name.send(&to, empty_frame("127.0.0.1:2"));
    let frame = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(frame.from, PeerId::new("127.0.0.1:2"));
    assert_eq!(by_name.stats().tls_handshake_failures, 0);
    assert_eq!(by_name.stats().streams_opened, 1);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn tls_config_errors_name_the_file_and_the_problem() {
    let dir = temp_root("grpc-tls-errors");
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = Ca::new("flotilla test CA");
    let (chain, key) = ca.issue(&["127.0.0.1"], None);
    let (other_chain, _) = ca.issue(&["127.0.0.1"], None);
    let ca_file = write(&dir, "ca.pem", ca.pem());
    let chain_file = write(&dir, "cert.pem", &chain);
    let key_file = write(&dir, "key.pem", &key);
    let text = |e: &TlsConfigError| e.to_string();

    let good = TlsConfig::from_pem_files(&ca_file, &chain_file, &key_file).expect("good files");
    let debug = format!("{good:?}");
    assert!(
        !debug.contains("PRIVATE KEY") && debug.contains("key.pem"),
        "{debug}"
    );
    TlsConfig::from_pem(ca.pem().as_bytes(), chain.as_bytes(), key.as_bytes()).expect("good");

    let missing = dir.join("missing.pem");
    let error = TlsConfig::from_pem_files(&missing, &chain_file, &key_file).expect_err("missing");
    assert_eq!(
        error,
        TlsConfigError::Missing {
            kind: PemKind::CaCertificates,
            path: missing.clone()
        }
    );
    assert!(text(&error).contains(&format!("{} does not exist", missing.display())));

    let error = TlsConfig::from_pem_files(&ca_file, &dir, &key_file).expect_err("a directory");
    assert!(
        matches!(&error, TlsConfigError::Unreadable { kind: PemKind::CertificateChain, path, .. } if *path == dir),
        "{error:?}"
    );

    let garbage = write(&dir, "garbage.pem", b"\x00\xffthis is not a certificate\n");
    let error = TlsConfig::from_pem_files(&ca_file, &garbage, &key_file).expect_err("garbage");
    assert!(
        matches!(
            &error,
            TlsConfigError::NoCertificate {
                kind: PemKind::CertificateChain,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        text(&error).contains(&garbage.display().to_string())
            && text(&error).contains("no PEM CERTIFICATE section"),
        "{error}"
    );

    // The certificate given where the key belongs.
    let error = TlsConfig::from_pem_files(&ca_file, &chain_file, &chain_file).expect_err("no key");
    assert!(
        matches!(&error, TlsConfigError::NoPrivateKey { .. }),
        "{error:?}"
    );
    assert!(
        text(&error).contains(&chain_file.display().to_string())
            && text(&error).contains("no PEM private key section"),
        "{error}"
    );

    let broken = write(
        &dir,
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    let error = TlsConfig::from_pem_files(&broken, &chain_file, &key_file).expect_err("broken");
    assert!(
        matches!(
            &error,
            TlsConfigError::NotPem {
                kind: PemKind::CaCertificates,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(text(&error).contains("is not valid PEM"), "{error}");

    let not_x509 = write(
        &dir,
        "not-x509.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let error = TlsConfig::from_pem_files(&not_x509, &chain_file, &key_file).expect_err("not x509");
    assert!(
        matches!(
            &error,
            TlsConfigError::InvalidCaCertificate { index: 0, .. }
        ),
        "{error:?}"
    );

    // Another certificate's key: rustls refuses the pair.
    let other_file = write(&dir, "other-cert.pem", &other_chain);
    let error = TlsConfig::from_pem_files(&ca_file, &other_file, &key_file).expect_err("mismatch");
    assert!(
        matches!(&error, TlsConfigError::InvalidIdentity { .. }),
        "{error:?}"
    );
    assert!(text(&error).contains("other-cert.pem"), "{error}");

    let huge = write(&dir, "huge.pem", vec![b'a'; 1024 * 1024 + 1]);
    let error = TlsConfig::from_pem_files(&huge, &chain_file, &key_file).expect_err("huge");
    assert!(
        matches!(&error, TlsConfigError::TooLarge { bytes, .. } if *bytes == 1024 * 1024 + 1),
        "{error:?}"
    );

    let error = good
        .clone()
        .with_server_name("not a name!")
        .expect_err("bad name");
    assert!(
        matches!(&error, TlsConfigError::InvalidServerName { .. }),
        "{error:?}"
    );
    let error = TlsConfig::from_pem(b"", chain.as_bytes(), key.as_bytes()).expect_err("empty");
    assert!(text(&error).contains("the PEM given"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
