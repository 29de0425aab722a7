//! A test cluster: managers on temp dirs joined by a `LocalTransport`, and a counter state
//! machine whose value the tests can read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::{
    ApplyIter, GroupId, LocalTransport, ManagerOptions, Node, NodeError, NodeManager, PeerId,
    StateMachine,
};
use flotilla_storage::{SnapshotReader, SnapshotWriter};

/// Adds the little-endian u64 in each entry; answers with the new value.
pub struct Counter {
    pub value: Arc<AtomicU64>,
}

impl StateMachine for Counter {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        for task in iter {
            let mut add = [0u8; 8];
            add.copy_from_slice(&task.data[..8]);
            let value = self.value.load(Ordering::SeqCst) + u64::from_le_bytes(add);
            self.value.store(value, Ordering::SeqCst);
            if let Some(completion) = task.completion {
                completion.complete(Ok(Bytes::copy_from_slice(&value.to_le_bytes())));
            }
        }
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        let value = self.value.load(Ordering::SeqCst);
        writer
            .append("counter", &value.to_le_bytes())
            .map_err(|e| e.to_string())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let bytes = reader
            .read_chunk("counter", 0, 8)
            .map_err(|e| e.to_string())?;
        let array: [u8; 8] = bytes.try_into().map_err(|_| "short counter file")?;
        self.value
            .store(u64::from_le_bytes(array), Ordering::SeqCst);
        Ok(())
    }
}

/// A fresh directory under the system temp dir for one test (`name` keeps them apart).
pub fn temp_root(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "flotilla-node-{name}-{}-{nanos}",
        std::process::id()
    ))
}

/// Manager options for tests: 10 ms ticks, a 300 ms election timeout, no periodic
/// snapshots.
pub fn test_options(address: PeerId, dir: impl Into<std::path::PathBuf>) -> ManagerOptions {
    let mut options = ManagerOptions::new(address, dir);
    options.tick = Duration::from_millis(10);
    // 300 ms: short enough for quick failovers, long enough that a loaded 2-core machine
    // running tests in parallel does not lose leaderships by starving a round (100 ms did).
    options.raft.election_timeout_ticks = 30;
    options.raft.heartbeat_interval_ticks = 3;
    options.raft.snapshot_interval_ticks = 0;
    options
}

pub fn add(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_le_bytes())
}

pub fn value_of(result: &Bytes) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&result[..8]);
    u64::from_le_bytes(a)
}

pub const WAIT: Duration = Duration::from_secs(20);

/// One process of the test cluster.
pub struct Process {
    pub address: PeerId,
    pub dir: PathBuf,
    pub manager: Option<NodeManager>,
    /// Counter value per group.
    pub counters: std::collections::BTreeMap<GroupId, Arc<AtomicU64>>,
}

pub struct Cluster {
    pub transport: LocalTransport,
    pub processes: Vec<Process>,
    pub peers: Vec<PeerId>,
    root: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Cluster {
    pub async fn new(name: &str, processes: usize) -> Cluster {
        let root = temp_root(name);
        let peers: Vec<PeerId> = (1..=processes)
            .map(|i| PeerId::new(&format!("127.0.0.1:{}", 8000 + i)))
            .collect();
        let mut cluster = Cluster {
            transport: LocalTransport::new(),
            processes: peers
                .iter()
                .enumerate()
                .map(|(i, address)| Process {
                    address: address.clone(),
                    dir: root.join(format!("p{}", i + 1)),
                    manager: None,
                    counters: Default::default(),
                })
                .collect(),
            peers,
            root,
        };
        for i in 0..processes {
            cluster.start(i).await;
        }
        cluster
    }

    /// Opens process `i`'s manager from its data directory.
    pub async fn start(&mut self, i: usize) {
        let p = &mut self.processes[i];
        let mut options = test_options(p.address.clone(), &p.dir);
        options.raft.read_timeout_ticks = 100;
        let manager = NodeManager::open(options, Arc::new(self.transport.clone()))
            .await
            .expect("open manager");
        self.transport.register(&p.address, manager.inbox());
        p.manager = Some(manager);
        p.counters.clear();
    }

    /// Starts `group` on every running process (a fresh counter each).
    pub async fn add_group(&mut self, group: GroupId) {
        for p in &mut self.processes {
            let Some(manager) = &p.manager else { continue };
            let value = Arc::new(AtomicU64::new(0));
            manager
                .add_group(
                    group,
                    self.peers.clone(),
                    Counter {
                        value: value.clone(),
                    },
                )
                .await
                .expect("add group");
            p.counters.insert(group, value);
        }
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(manager) = self.processes[i].manager.take() {
            manager.shutdown().await;
        }
        self.transport.unregister(&self.processes[i].address);
    }

    pub fn node(&self, i: usize, group: GroupId) -> Option<Node> {
        self.processes[i].manager.as_ref()?.node(group)
    }

    pub fn counter(&self, i: usize, group: GroupId) -> u64 {
        self.processes[i].counters[&group].load(Ordering::SeqCst)
    }

    /// Waits for a leader of `group` among running processes; returns its index.
    pub async fn leader(&self, group: GroupId) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for i in 0..self.processes.len() {
                if self.node(i, group).is_some_and(|n| n.is_leader()) {
                    return i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader for group {group}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Applies `add(n)` through whoever leads, retrying "not leader" / "unknown" until a
    /// definite answer. Returns the state machine's result.
    pub async fn apply(&self, group: GroupId, n: u64) -> Result<u64, NodeError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader(group).await;
            let node = self.node(leader, group).expect("leader node");
            match node.apply(add(n), None).await {
                Ok(result) => return Ok(value_of(&result)),
                Err(e @ NodeError::Unknown(_)) => return Err(e),
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "apply kept failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Waits until process `i`'s counter of `group` reaches `value`.
    pub async fn wait_counter(&self, i: usize, group: GroupId, value: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.counter(i, group) < value {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {i} group {group} counter stuck at {} < {value}",
                self.counter(i, group)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            self.counter(i, group),
            value,
            "process {i} group {group} overshot"
        );
    }
}

impl Cluster {
    /// Starts `group` on process `i` only (after a restart).
    pub async fn add_group_on(&mut self, i: usize, group: GroupId) {
        let peers = self.peers.clone();
        self.add_group_with(i, group, peers).await;
    }
}

impl Cluster {
    /// Starts `group` on process `i` with `peers` as its initial voters (empty: a peer
    /// waiting to be added as a voter or learner).
    pub async fn add_group_with(&mut self, i: usize, group: GroupId, peers: Vec<PeerId>) {
        let p = &mut self.processes[i];
        let manager = p.manager.as_ref().expect("running");
        let value = Arc::new(AtomicU64::new(0));
        manager
            .add_group(
                group,
                peers,
                Counter {
                    value: value.clone(),
                },
            )
            .await
            .expect("add group");
        p.counters.insert(group, value);
    }

    /// Starts `group` on process `i` at `start` (`add_group_at`), its counter at `value`:
    /// the state at the start.
    pub async fn add_group_at(
        &mut self,
        i: usize,
        group: GroupId,
        start: flotilla_node::GroupStart,
        value: u64,
    ) {
        let p = &mut self.processes[i];
        let manager = p.manager.as_ref().expect("running");
        let value = Arc::new(AtomicU64::new(value));
        manager
            .add_group_at(
                group,
                start,
                Counter {
                    value: value.clone(),
                },
            )
            .await
            .expect("add group at");
        p.counters.insert(group, value);
    }

    /// Waits for a leader of `group` among the processes in `among`.
    pub async fn leader_among(&self, group: GroupId, among: &[usize]) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for &i in among {
                if self.node(i, group).is_some_and(|n| n.is_leader()) {
                    return i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader for group {group} among {among:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.processes.len() {
            self.stop(i).await;
        }
    }
}

/// Retries `op` on errors that say "not now" (busy, not leader, catch-up failed...) until
/// it succeeds or the deadline passes.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} kept failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `n` processes' worth of gRPC: a listener bound on loopback for each and its manager
/// (test options, data under `root/p{i}`) over a gRPC transport, not serving yet; with
/// every listener's address, which is its manager's peer id.
pub async fn grpc_managers(
    root: &std::path::Path,
    n: usize,
) -> (
    Vec<PeerId>,
    Vec<(flotilla_node::grpc::GrpcServer, flotilla_node::NodeManager)>,
) {
    grpc_managers_with(root, n, |_| {}).await
}

/// [`grpc_managers`] with each manager's options changed by `tune` first.
pub async fn grpc_managers_with(
    root: &std::path::Path,
    n: usize,
    tune: fn(&mut ManagerOptions),
) -> (
    Vec<PeerId>,
    Vec<(flotilla_node::grpc::GrpcServer, flotilla_node::NodeManager)>,
) {
    use flotilla_node::grpc::{GrpcOptions, GrpcServer, GrpcTransport};
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(GrpcServer::bind("127.0.0.1:0").await.expect("bind"));
    }
    let peers: Vec<PeerId> = listeners.iter().map(|l| l.address().clone()).collect();
    let mut processes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut options = test_options(peers[i].clone(), root.join(format!("p{i}")));
        tune(&mut options);
        let transport = GrpcTransport::new(GrpcOptions::default());
        let manager = flotilla_node::NodeManager::open(options, Arc::new(transport))
            .await
            .expect("open manager");
        processes.push((listener, manager));
    }
    (peers, processes)
}

/// Serves every process of [`grpc_managers`] and starts a counter group `group` on each,
/// with every process a voter. Returns the managers, their servers and their counters.
pub async fn serve_counter_group(
    processes: Vec<(flotilla_node::grpc::GrpcServer, flotilla_node::NodeManager)>,
    peers: &[PeerId],
    group: GroupId,
) -> (
    Vec<flotilla_node::NodeManager>,
    Vec<flotilla_node::grpc::ServerHandle>,
    Vec<Arc<AtomicU64>>,
) {
    let mut managers = Vec::new();
    let mut servers = Vec::new();
    let mut counters = Vec::new();
    for (listener, manager) in processes {
        servers.push(listener.serve(Arc::new(manager.inbox())));
        let value = Arc::new(AtomicU64::new(0));
        manager
            .add_group(
                group,
                peers.to_vec(),
                Counter {
                    value: value.clone(),
                },
            )
            .await
            .expect("add group");
        counters.push(value);
        managers.push(manager);
    }
    (managers, servers, counters)
}

/// A test's inbox: a bounded queue of the frames a server received.
pub struct ChannelSink(pub tokio::sync::mpsc::Sender<flotilla_node::Frame>);

impl flotilla_node::grpc::FrameSink for ChannelSink {
    fn deliver(&self, frame: flotilla_node::Frame) -> Result<(), flotilla_node::Frame> {
        use tokio::sync::mpsc::error::TrySendError;
        self.0.try_send(frame).map_err(|e| match e {
            TrySendError::Full(f) | TrySendError::Closed(f) => f,
        })
    }
}

/// A gRPC server on a free loopback port (with `tls`, if given) whose frames go to the
/// returned queue (1,024 frames).
pub async fn sink_server(
    tls: Option<flotilla_node::grpc::TlsConfig>,
) -> (
    flotilla_node::grpc::ServerHandle,
    tokio::sync::mpsc::Receiver<flotilla_node::Frame>,
) {
    let mut server = flotilla_node::grpc::GrpcServer::bind("127.0.0.1:0")
        .await
        .expect("bind");
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    (server.serve(Arc::new(ChannelSink(tx))), rx)
}
