//! A test cluster for the KV state machine: node managers on temp dirs joined by a
//! `LocalTransport`, one KV engine per process (memory or fjall) shared by its regions.
//! (The small bits of flotilla-node's own test cluster this needs, rewritten for KV.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_kv::limits::SCAN_LIMIT_MAX;
use flotilla_kv::{
    FjallEngine, KvCommand, KvEngine, KvOutput, KvRegionHandle, KvStateMachine, MemoryEngine,
    Region,
};
use flotilla_node::{
    GroupId, LocalTransport, ManagerOptions, Node, NodeError, NodeManager, PeerId, RaftError,
};

use crate::util::TempDir;

pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Memory,
    Fjall,
}

pub struct Process {
    pub address: PeerId,
    pub dir: PathBuf,
    pub manager: Option<NodeManager>,
    pub engine: Option<Arc<dyn KvEngine>>,
    pub handles: BTreeMap<GroupId, KvRegionHandle>,
}

impl Process {
    pub fn engine_dir(&self) -> PathBuf {
        self.dir.join("kv")
    }
}

pub struct KvCluster {
    pub transport: LocalTransport,
    pub processes: Vec<Process>,
    pub peers: Vec<PeerId>,
    pub kind: EngineKind,
    _root: TempDir,
}

/// Manager options for tests: 10 ms ticks, a 100 ms election timeout, no periodic
/// snapshots.
fn test_options(address: PeerId, dir: PathBuf) -> ManagerOptions {
    let mut options = ManagerOptions::new(address, dir);
    options.tick = Duration::from_millis(10);
    options.raft.election_timeout_ticks = 10;
    options.raft.heartbeat_interval_ticks = 1;
    options.raft.snapshot_interval_ticks = 0;
    options.raft.read_timeout_ticks = 100;
    options
}

impl KvCluster {
    pub async fn new(name: &str, processes: usize, kind: EngineKind) -> KvCluster {
        let root = TempDir::new(name);
        let peers: Vec<PeerId> = (1..=processes)
            .map(|i| PeerId::new(&format!("127.0.0.1:{}", 9000 + i)))
            .collect();
        let mut cluster = KvCluster {
            transport: LocalTransport::new(),
            processes: peers
                .iter()
                .enumerate()
                .map(|(i, address)| Process {
                    address: address.clone(),
                    dir: root.path().join(format!("p{}", i + 1)),
                    manager: None,
                    engine: None,
                    handles: BTreeMap::new(),
                })
                .collect(),
            peers,
            kind,
            _root: root,
        };
        for i in 0..processes {
            cluster.start(i).await;
        }
        cluster
    }

    /// Opens process `i`'s engine and manager from its directory.
    pub async fn start(&mut self, i: usize) {
        let kind = self.kind;
        let p = &mut self.processes[i];
        let engine: Arc<dyn KvEngine> = match kind {
            EngineKind::Memory => Arc::new(MemoryEngine::new()),
            EngineKind::Fjall => Arc::new(FjallEngine::open(p.engine_dir()).expect("open fjall")),
        };
        let options = test_options(p.address.clone(), p.dir.join("raft"));
        let manager = NodeManager::open(options, Arc::new(self.transport.clone()))
            .await
            .expect("open manager");
        self.transport.register(&p.address, manager.inbox());
        p.manager = Some(manager);
        p.engine = Some(engine);
        p.handles.clear();
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(manager) = self.processes[i].manager.take() {
            manager.shutdown().await;
        }
        self.transport.unregister(&self.processes[i].address);
        if let Some(engine) = self.processes[i].engine.take() {
            // The runtime drops the state machines (and their engine references) when it
            // shuts down; reopening a fjall directory still open would be unsafe.
            let deadline = tokio::time::Instant::now() + WAIT;
            while Arc::strong_count(&engine) > 1 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "process {i}'s engine still referenced after shutdown"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.processes[i].handles.clear();
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.processes.len() {
            self.stop(i).await;
        }
    }

    /// Replaces process `i`'s engine (before its regions start), e.g. with one that fails.
    pub fn set_engine(&mut self, i: usize, engine: Arc<dyn KvEngine>) {
        assert!(
            self.processes[i].handles.is_empty(),
            "regions already use the engine"
        );
        self.processes[i].engine = Some(engine);
    }

    /// Starts the peer of `region` on process `i` with `peers` as initial voters (empty:
    /// a peer waiting to be added).
    pub async fn add_region_on(&mut self, i: usize, region: &Region, peers: Vec<PeerId>) {
        let p = &mut self.processes[i];
        let engine = Arc::clone(p.engine.as_ref().expect("running"));
        let state_machine = KvStateMachine::new(region.clone(), engine);
        assert_eq!(state_machine.region(), *region);
        p.handles.insert(region.id.0, state_machine.handle());
        p.manager
            .as_ref()
            .expect("running")
            .add_group(region.id.0, peers, state_machine)
            .await
            .expect("add group");
    }

    /// Starts `region` on every running process, all of them voters.
    pub async fn add_region(&mut self, region: &Region) {
        for i in 0..self.processes.len() {
            if self.processes[i].manager.is_some() {
                let peers = self.peers.clone();
                self.add_region_on(i, region, peers).await;
            }
        }
    }

    pub fn node(&self, i: usize, group: GroupId) -> Option<Node> {
        self.processes[i].manager.as_ref()?.node(group)
    }

    pub fn engine(&self, i: usize) -> &dyn KvEngine {
        self.processes[i].engine.as_deref().expect("running")
    }

    pub fn handle(&self, i: usize, group: GroupId) -> &KvRegionHandle {
        &self.processes[i].handles[&group]
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

    pub async fn leader(&self, group: GroupId) -> usize {
        let all: Vec<usize> = (0..self.processes.len()).collect();
        self.leader_among(group, &all).await
    }

    /// Proposes `data` through whoever leads, retrying while no leader accepts it. `Ok`:
    /// the decoded output; `Err`: the state machine's refusal text.
    pub async fn propose_raw(&self, group: GroupId, data: Bytes) -> Result<KvOutput, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader(group).await;
            let node = self.node(leader, group).expect("leader node");
            match node.apply(data.clone(), None).await {
                Ok(output) => return Ok(KvOutput::decode(&output).expect("output decodes")),
                Err(NodeError::Raft(RaftError::StateMachine(why))) => return Err(why),
                Err(e @ NodeError::Unknown(_)) => panic!("outcome unknown: {e}"),
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

    pub async fn propose(&self, group: GroupId, command: KvCommand) -> Result<KvOutput, String> {
        self.propose_raw(group, command.encode()).await
    }

    /// Waits until every running replica of `group` applied what its leader applied (the
    /// leader's state machine records an entry before answering its proposer), then
    /// returns each replica's data in the region's range, asserting they agree.
    pub async fn converged(&self, group: GroupId) -> Vec<Vec<(Bytes, Bytes)>> {
        let leader = self.leader(group).await;
        let target = self.handle(leader, group).applied_index();
        let mut all = Vec::new();
        for i in 0..self.processes.len() {
            if self.processes[i].manager.is_none() {
                continue;
            }
            self.wait_applied(i, group, target).await;
            all.push(self.data(i, group));
        }
        for (i, data) in all.iter().enumerate().skip(1) {
            assert_eq!(*data, all[0], "replica {i} differs from the first");
        }
        all
    }

    /// Waits until process `i`'s state machine of `group` recorded entry `index`.
    pub async fn wait_applied(&self, i: usize, group: GroupId, index: flotilla_node::LogIndex) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.handle(i, group).applied_index() < index {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {i} group {group} applied {} < {index}",
                self.handle(i, group).applied_index()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Process `i`'s data in `group`'s region.
    pub fn data(&self, i: usize, group: GroupId) -> Vec<(Bytes, Bytes)> {
        let region = self.handle(i, group).region();
        self.engine(i)
            .scan(&region.start, &region.end, SCAN_LIMIT_MAX, false)
            .unwrap()
    }
}
