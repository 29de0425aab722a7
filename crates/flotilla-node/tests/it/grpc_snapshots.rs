//! Snapshot transfer over gRPC: a peer added after the leader compacted its log installs
//! the snapshot through `Raft.FetchSnapshot` and then follows the log; fetches of a snapshot
//! that is not there, from a process that serves none, with an invalid request, or from a
//! peer that never answers fail with a clear error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_node::grpc::{proto, GrpcOptions, GrpcServer, GrpcTransport, ServerHandle};
use flotilla_node::{
    LogIndex, NodeManager, PeerId, SnapshotPart, SnapshotRequest, Term, Transport,
};
use tonic::Code;

use super::cluster::{add, retry, temp_root, test_options, value_of, Counter, WAIT};

const GROUP: u64 = 11;

struct Process {
    manager: NodeManager,
    server: ServerHandle,
    transport: GrpcTransport,
    counter: Option<Arc<AtomicU64>>,
}

/// Managers over gRPC on loopback, each serving its inbox (frames and snapshots).
struct GrpcCluster {
    peers: Vec<PeerId>,
    processes: Vec<Process>,
    root: std::path::PathBuf,
}

impl GrpcCluster {
    async fn new(name: &str, size: usize) -> GrpcCluster {
        let root = temp_root(&format!("grpc-{name}"));
        let mut listeners = Vec::new();
        for _ in 0..size {
            listeners.push(GrpcServer::bind("127.0.0.1:0").await.expect("bind"));
        }
        let peers: Vec<PeerId> = listeners.iter().map(|l| l.address().clone()).collect();
        let mut processes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut options = test_options(peers[i].clone(), root.join(format!("p{i}")));
            // Tiny chunks: the 8-byte counter file takes several fetches.
            options.snapshot_chunk_bytes = 3;
            let transport = GrpcTransport::new(GrpcOptions {
                snapshot_fetch_timeout: Duration::from_secs(5),
                ..GrpcOptions::default()
            });
            let manager = NodeManager::open(options, Arc::new(transport.clone()))
                .await
                .expect("open manager");
            let server = listener.serve(Arc::new(manager.inbox()));
            processes.push(Process {
                manager,
                server,
                transport,
                counter: None,
            });
        }
        GrpcCluster {
            peers,
            processes,
            root,
        }
    }

    async fn add_group(&mut self, i: usize, voters: Vec<PeerId>) {
        let value = Arc::new(AtomicU64::new(0));
        self.processes[i]
            .manager
            .add_group(
                GROUP,
                voters,
                Counter {
                    value: value.clone(),
                },
            )
            .await
            .expect("add group");
        self.processes[i].counter = Some(value);
    }

    fn counter(&self, i: usize) -> u64 {
        self.processes[i]
            .counter
            .as_ref()
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = (0..self.processes.len()).find(|&i| {
                self.processes[i]
                    .manager
                    .node(GROUP)
                    .is_some_and(|n| n.is_leader())
            }) {
                return i;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Applies `add(1)` through whoever leads; returns the counter value it produced.
    async fn apply(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            if let Some(node) = self.processes[leader].manager.node(GROUP) {
                if let Ok(result) = node.apply(add(1), None).await {
                    return value_of(&result);
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "apply kept failing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_counter(&self, i: usize, value: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.counter(i) < value {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {i} stuck at {} < {value}",
                self.counter(i)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.counter(i), value, "process {i} overshot");
    }

    async fn shutdown(self) {
        for p in self.processes {
            p.manager.shutdown().await;
            p.server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Three managers over gRPC; the leader snapshots twice (the log is kept back to the
/// previous snapshot, so the first entries are gone); a fourth manager added as a voter
/// must install the snapshot, fetched chunk by chunk over gRPC, then follows the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_peer_installs_a_snapshot_over_grpc() {
    let mut cluster = GrpcCluster::new("snap-install", 4).await;
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_group(i, voters.clone()).await;
    }
    for _ in 0..10 {
        cluster.apply().await;
    }
    let leader = cluster.leader().await;
    let node = cluster.processes[leader].manager.node(GROUP).expect("node");
    let first = node.snapshot().await.expect("first snapshot");
    for _ in 0..10 {
        cluster.apply().await;
    }
    let second = node.snapshot().await.expect("second snapshot");
    assert!(second > first, "snapshots at {first} then {second}");

    cluster.add_group(3, Vec::new()).await;
    let new_peer = cluster.peers[3].clone();
    retry("add_peer", || node.add_peer(new_peer.clone())).await;
    cluster.wait_counter(3, 20).await;
    let joined = cluster.processes[3].manager.node(GROUP).expect("node");
    assert!(
        joined.applied_index() >= second,
        "applied {} < snapshot {second}",
        joined.applied_index()
    );
    let stats = cluster.processes[3].manager.stats();
    assert!(stats.snapshots_installed >= 1, "{stats:?}");
    // The manifest and the 8-byte counter file in 3-byte chunks.
    let fetched = cluster.processes[3].transport.stats();
    assert!(fetched.snapshot_parts_fetched >= 4, "{fetched:?}");
    let served = cluster.processes[leader].server.stats();
    assert!(served.snapshot_parts_served >= 4, "{served:?}");

    // New writes reach the new peer through the log.
    for _ in 0..5 {
        cluster.apply().await;
    }
    for i in 0..4 {
        cluster.wait_counter(i, 25).await;
    }
    assert!(node.list_peers().contains(&new_peer));
    cluster.shutdown().await;
}

fn manifest_request(to: &PeerId, group: u64, index: u64, term: u64) -> SnapshotRequest {
    SnapshotRequest {
        to: to.clone(),
        cluster: 0,
        group,
        index: LogIndex(index),
        term: Term(term),
        part: SnapshotPart::Manifest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetching_a_snapshot_that_is_not_there_fails_clearly() {
    let mut cluster = GrpcCluster::new("snap-missing", 1).await;
    let me = cluster.peers[0].clone();
    cluster.add_group(0, vec![me.clone()]).await;
    cluster.apply().await;
    let node = cluster.processes[0].manager.node(GROUP).expect("node");
    let at = node.snapshot().await.expect("snapshot");
    let client = GrpcTransport::new(GrpcOptions::default());

    // The real one is served.
    let term = node.status().term.get();
    let manifest = client
        .fetch_snapshot(&me, manifest_request(&me, GROUP, at.get(), term))
        .await
        .expect("the snapshot that is there");
    assert!(!manifest.is_empty());

    // Another index, another group: refused by the peer, saying what is missing.
    let error = client
        .fetch_snapshot(&me, manifest_request(&me, GROUP, 999, 9))
        .await
        .expect_err("no such snapshot");
    assert!(
        error.contains(&format!(
            "group {GROUP} has no snapshot at index 999 term 9"
        )),
        "{error}"
    );
    let error = client
        .fetch_snapshot(&me, manifest_request(&me, GROUP + 1, at.get(), term))
        .await
        .expect_err("no such group");
    assert!(
        error.contains(&format!("group {} is not hosted here", GROUP + 1)),
        "{error}"
    );
    let error = client
        .fetch_snapshot(
            &me,
            SnapshotRequest {
                part: SnapshotPart::Chunk {
                    name: "no-such-file".into(),
                    offset: 0,
                    len_max: 16,
                },
                ..manifest_request(&me, GROUP, at.get(), term)
            },
        )
        .await
        .expect_err("no such file");
    assert!(error.contains("no-such-file"), "{error}");
    // A fetch meant for another peer id or cluster is refused, whatever it asks for.
    let error = client
        .fetch_snapshot(
            &me,
            SnapshotRequest {
                to: PeerId::new("0123456789abcdef"),
                ..manifest_request(&me, GROUP, at.get(), term)
            },
        )
        .await
        .expect_err("another peer's fetch");
    assert!(error.contains("meant for peer 0123456789abcdef"), "{error}");
    let error = client
        .fetch_snapshot(
            &me,
            SnapshotRequest {
                cluster: 42,
                ..manifest_request(&me, GROUP, at.get(), term)
            },
        )
        .await
        .expect_err("another cluster's fetch");
    assert!(
        error.contains("meant for cluster 000000000000002a"),
        "{error}"
    );
    let stats = client.stats();
    assert_eq!(stats.snapshot_parts_fetched, 1, "{stats:?}");
    assert_eq!(stats.snapshot_fetch_failures, 5, "{stats:?}");
    assert_eq!(
        cluster.processes[0].server.stats().snapshot_fetches_refused,
        5
    );

    // An invalid request (no part) is refused naming the field.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{me}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = proto::raft_client::RaftClient::new(channel);
    let status = raw
        .fetch_snapshot(proto::SnapshotChunkRequest {
            to: me.as_str().to_owned(),
            cluster: 0,
            group: GROUP,
            index: at.get(),
            term,
            part: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("snapshot_request: part is missing"),
        "{status:?}"
    );
    cluster.shutdown().await;
}

/// A server whose sink offers no snapshot service answers UNIMPLEMENTED; a peer that
/// accepts the connection but never answers runs into the per-call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_from_a_process_without_snapshots_or_a_silent_one_fail() {
    struct Drop;
    impl flotilla_node::grpc::FrameSink for Drop {
        fn deliver(&self, _frame: flotilla_node::Frame) -> Result<(), flotilla_node::Frame> {
            Ok(())
        }
    }
    let server = GrpcServer::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .serve(Arc::new(Drop));
    let to = server.address().clone();
    let client = GrpcTransport::new(GrpcOptions {
        snapshot_fetch_timeout: Duration::from_millis(300),
        ..GrpcOptions::default()
    });
    let error = client
        .fetch_snapshot(&to, manifest_request(&to, 1, 5, 1))
        .await
        .expect_err("no snapshot service");
    assert!(
        error.contains("Unimplemented") && error.contains("serves no snapshots"),
        "{error}"
    );
    server.shutdown().await;

    // Accepts TCP connections and never speaks HTTP/2.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_at = PeerId::new(&silent.local_addr().expect("addr").to_string());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let error = client
        .fetch_snapshot(&silent_at, manifest_request(&silent_at, 1, 5, 1))
        .await
        .expect_err("no answer");
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert!(error.to_lowercase().contains("time"), "{error}");
    holder.abort();
}
