//! An in-process cluster driver for tests, scripted interaction tests and benchmarks.
//!
//! Owns: a set of cores over [`MemStorage`], a queue of messages between them, and a driver
//! that follows the [`Ready`] contract exactly (send, persist, send-after-persist, install,
//! apply). Persistence completes immediately unless a node is told to hold it back, and
//! messages move only when the test delivers them, so every test controls interleaving.
//! Must never: be used by production code paths; it keeps everything in memory and trusts
//! every input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::config::Config;
use crate::ids::{LogIndex, PeerId, Term};
use crate::log::{LogStore, MemStorage};
use crate::membership::Configuration;
use crate::message::{AppendResult, Message, MessageBody};
use crate::raft::Raft;
use crate::ready::{Event, ReadResult, Ready};
use crate::types::{Entry, EntryPayload, HardState, Role, SnapshotMeta};

/// One peer of a [`Cluster`]: its core, durable state and what it applied.
pub struct Node {
    /// The core.
    pub raft: Raft<MemStorage>,
    /// The durable log.
    pub storage: MemStorage,
    /// The durable hard state.
    pub hard_state: HardState,
    /// Data of every normal entry applied, in order, after the snapshot's data.
    pub applied: Vec<Bytes>,
    /// Index of the last applied entry.
    pub applied_index: LogIndex,
    /// The latest snapshot: its metadata and the applied data it covers.
    pub snapshot: Option<(SnapshotMeta, Vec<Bytes>)>,
    /// Reads that completed or failed, in order.
    pub reads: Vec<ReadResult>,
    /// Events, in order.
    pub events: Vec<Event>,
    /// Persisting is held back (writes wait in `pending_writes`) while true.
    pub hold_persist: bool,
    pending_writes: Vec<Ready>,
}

/// A cluster of cores with a message queue the test controls.
pub struct Cluster {
    /// Peers by id.
    pub nodes: BTreeMap<PeerId, Node>,
    /// Messages sent and not yet delivered or dropped, in send order.
    pub queue: VecDeque<Message>,
    /// Directed links that drop every message (`from`, `to`).
    pub cut: BTreeSet<(PeerId, PeerId)>,
    /// Options for peers added later.
    make_config: fn(PeerId) -> Config,
    /// Lines describing what happened, for interaction tests (when `trace` is on).
    pub trace: Vec<String>,
    /// Record delivered messages in `trace`.
    pub tracing: bool,
}

/// The default options of test peers: SOFAJRaft's in ticks, seed fixed.
#[must_use]
pub fn test_config(id: PeerId) -> Config {
    Config::new(id)
}

/// Quiet ticks after which test peers hibernate (see [`hibernating_test_config`]).
pub const TEST_HIBERNATE_IDLE_TICKS: u64 = 3;

/// [`test_config`] with hibernation on after [`TEST_HIBERNATE_IDLE_TICKS`] quiet ticks.
#[must_use]
pub fn hibernating_test_config(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.hibernate_idle_ticks = TEST_HIBERNATE_IDLE_TICKS;
    config
}

/// `n1`, `n2`, ... `nN`.
#[must_use]
pub fn peer_ids(n: usize) -> Vec<PeerId> {
    (1..=n).map(|i| PeerId::new(&format!("n{i}"))).collect()
}

impl Cluster {
    /// A cluster of `n` voters `n1..nN` bootstrapped with the same configuration.
    #[must_use]
    pub fn new(n: usize) -> Cluster {
        Cluster::with_config(n, test_config)
    }

    /// Like [`Cluster::new`], with options from `make_config`.
    #[must_use]
    pub fn with_config(n: usize, make_config: fn(PeerId) -> Config) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            make_config,
            trace: Vec::new(),
            tracing: false,
        };
        let ids = peer_ids(n);
        let configuration = Configuration::new(ids.iter().cloned());
        for id in ids {
            cluster.add_node(id, configuration.clone());
        }
        cluster
    }

    /// Adds a peer whose bootstrap configuration is `configuration` (empty = it waits to
    /// be added by a leader).
    pub fn add_node(&mut self, id: PeerId, configuration: Configuration) {
        self.insert_new_node(id, configuration, false);
    }

    /// Like [`Cluster::add_node`], but the peer holds back every write from its first
    /// `Ready` on (see [`Cluster::release_persist`]).
    pub fn add_node_holding_persist(&mut self, id: PeerId, configuration: Configuration) {
        self.insert_new_node(id, configuration, true);
    }

    fn insert_new_node(&mut self, id: PeerId, configuration: Configuration, hold_persist: bool) {
        let meta = SnapshotMeta {
            index: LogIndex::ZERO,
            term: Term::ZERO,
            configuration,
        };
        let storage = MemStorage::new(meta);
        let mut config = (self.make_config)(id.clone());
        // Never ran before: it acknowledged nobody, so it may vote at once.
        config.start_with_vote_guard = false;
        let raft = Raft::new(
            config,
            storage.clone(),
            HardState::default(),
            LogIndex::ZERO,
        )
        .unwrap_or_else(|e| panic!("cannot create peer {id}: {e}"));
        let node = Node {
            raft,
            storage,
            hard_state: HardState::default(),
            applied: Vec::new(),
            applied_index: LogIndex::ZERO,
            snapshot: None,
            reads: Vec::new(),
            events: Vec::new(),
            hold_persist,
            pending_writes: Vec::new(),
        };
        self.nodes.insert(id.clone(), node);
        self.process(&id);
    }

    /// Restarts `id` from its durable state, losing anything not persisted.
    pub fn restart(&mut self, id: &PeerId) {
        let make_config = self.make_config;
        let node = self.node_mut(id);
        node.pending_writes.clear();
        node.hold_persist = false;
        let (applied, applied_index) = match &node.snapshot {
            Some((meta, data)) => (data.clone(), meta.index),
            None => (Vec::new(), LogIndex::ZERO),
        };
        node.applied = applied;
        node.applied_index = applied_index;
        let raft = Raft::new(
            make_config(id.clone()),
            node.storage.clone(),
            node.hard_state.clone(),
            applied_index,
        )
        .unwrap_or_else(|e| panic!("cannot restart peer {id}: {e}"));
        node.raft = raft;
        self.process(id);
    }

    /// The node `id`.
    #[must_use]
    pub fn node(&self, id: &PeerId) -> &Node {
        self.nodes.get(id).unwrap_or_else(|| panic!("no peer {id}"))
    }

    /// The node `id`, mutably.
    pub fn node_mut(&mut self, id: &PeerId) -> &mut Node {
        self.nodes
            .get_mut(id)
            .unwrap_or_else(|| panic!("no peer {id}"))
    }

    /// The core of `id`.
    pub fn raft(&mut self, id: &PeerId) -> &mut Raft<MemStorage> {
        &mut self.node_mut(id).raft
    }

    /// The peer that is leader in the highest term, if any.
    #[must_use]
    pub fn leader(&self) -> Option<PeerId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.role() == Role::Leader)
            .max_by_key(|(_, n)| n.raft.term())
            .map(|(id, _)| id.clone())
    }

    /// Drives `id`'s pending work: takes its `Ready` and acts on it.
    pub fn process(&mut self, id: &PeerId) {
        loop {
            let node = self.node_mut(id);
            if !node.raft.has_ready() {
                return;
            }
            let mut ready = node.raft.ready();
            let messages = std::mem::take(&mut ready.messages);
            self.enqueue(messages);
            let node = self.node_mut(id);
            node.events.append(&mut ready.events);
            node.reads.append(&mut ready.reads);
            let committed = std::mem::take(&mut ready.committed_entries);
            if node.hold_persist {
                node.pending_writes.push(ready);
            } else {
                self.persist(id, ready);
            }
            self.apply(id, committed);
        }
    }

    /// Lets `id` persist what it held back, in order.
    pub fn release_persist(&mut self, id: &PeerId) {
        let node = self.node_mut(id);
        node.hold_persist = false;
        let writes = std::mem::take(&mut node.pending_writes);
        for ready in writes {
            self.persist(id, ready);
        }
        self.process(id);
    }

    fn persist(&mut self, id: &PeerId, mut ready: Ready) {
        let node = self.node_mut(id);
        if let Some(hs) = ready.hard_state.take() {
            node.hard_state = hs;
        }
        if let Some((index, term)) = ready.compact_to {
            node.storage.compact(index, term);
        }
        node.storage.append(&ready.entries);
        let after = std::mem::take(&mut ready.messages_after_persist);
        if let Some(last) = ready.entries.last() {
            let (index, term) = (last.index, last.term);
            node.raft.on_persisted(index, term);
        }
        self.enqueue(after);
        if let (Some(meta), Some(source)) = (ready.snapshot.take(), ready.snapshot_source.take()) {
            self.install_snapshot(id, &source, meta);
        }
    }

    fn install_snapshot(&mut self, id: &PeerId, source: &PeerId, meta: SnapshotMeta) {
        let data = self
            .nodes
            .get(source)
            .and_then(|n| n.snapshot.clone())
            .filter(|(m, _)| *m == meta);
        let node = self.node_mut(id);
        match data {
            Some((meta, data)) => {
                node.storage.install_snapshot(meta.clone());
                node.applied = data.clone();
                node.applied_index = meta.index;
                node.snapshot = Some((meta.clone(), data));
                node.raft.on_snapshot_installed(&meta);
            }
            None => node.raft.on_snapshot_install_failed(&meta),
        }
    }

    fn apply(&mut self, id: &PeerId, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let node = self.node_mut(id);
        for entry in entries {
            if let EntryPayload::Normal(data) = entry.payload {
                node.applied.push(data);
            }
        }
        node.applied_index = last;
        node.raft.on_applied(last);
    }

    fn enqueue(&mut self, messages: Vec<Message>) {
        self.queue.extend(messages);
    }

    /// Delivers the oldest queued message (dropping it if its link is cut). Returns it.
    pub fn deliver_one(&mut self) -> Option<Message> {
        let message = self.queue.pop_front()?;
        let cut = self
            .cut
            .contains(&(message.from.clone(), message.to.clone()));
        if self.tracing {
            let mark = if cut { " (dropped)" } else { "" };
            self.trace
                .push(format!("{}{mark}", describe_message(&message)));
        }
        if cut || !self.nodes.contains_key(&message.to) {
            return Some(message);
        }
        let to = message.to.clone();
        self.node_mut(&to).raft.step(message.clone());
        self.process(&to);
        Some(message)
    }

    /// Delivers messages until none are left. Returns how many were delivered.
    pub fn stabilize(&mut self) -> usize {
        let mut delivered = 0;
        while self.deliver_one().is_some() {
            delivered += 1;
            assert!(delivered < 10_000_000, "cluster does not stabilize");
        }
        delivered
    }

    /// Ticks one peer once.
    pub fn tick(&mut self, id: &PeerId) {
        self.raft(id).tick();
        self.process(id);
    }

    /// Ticks every peer once.
    pub fn tick_all(&mut self) {
        let ids: Vec<PeerId> = self.nodes.keys().cloned().collect();
        for id in ids {
            self.tick(&id);
        }
    }

    /// Makes `id` campaign now and delivers messages until quiet. Returns the leader.
    pub fn elect(&mut self, id: &PeerId) -> Option<PeerId> {
        self.raft(id).campaign_now();
        self.process(id);
        self.stabilize();
        self.leader()
    }

    /// Proposes `data` on `id` and delivers messages until quiet.
    pub fn propose(
        &mut self,
        id: &PeerId,
        data: &[u8],
    ) -> Result<(LogIndex, Term), crate::RaftError> {
        let result = self.raft(id).propose(Bytes::copy_from_slice(data), None);
        self.process(id);
        self.stabilize();
        result
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: &PeerId, b: &PeerId) {
        self.cut.insert((a.clone(), b.clone()));
        self.cut.insert((b.clone(), a.clone()));
    }

    /// Cuts `id` off from every other peer.
    pub fn isolate(&mut self, id: &PeerId) {
        let others: Vec<PeerId> = self.nodes.keys().filter(|p| *p != id).cloned().collect();
        for other in others {
            self.cut_both(id, &other);
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Takes a snapshot on `id` at its applied index.
    pub fn snapshot(&mut self, id: &PeerId) -> SnapshotMeta {
        let node = self.node_mut(id);
        let meta = node
            .raft
            .snapshot_meta_at(node.applied_index)
            .unwrap_or_else(|e| panic!("peer {id} cannot snapshot: {e}"));
        node.storage.set_snapshot(meta.clone());
        node.snapshot = Some((meta.clone(), node.applied.clone()));
        node.raft.on_snapshot_saved(meta.clone());
        self.process(id);
        meta
    }

    /// Every peer's applied data, for comparisons.
    #[must_use]
    pub fn applied_data(&self, id: &PeerId) -> Vec<Bytes> {
        self.node(id).applied.clone()
    }

    /// A compact state line per peer, for interaction tests.
    #[must_use]
    pub fn describe_states(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            let r = &node.raft;
            let configuration = r.configuration();
            let _ = write!(
                out,
                "{id}: {} term={} leader={} last={} commit={} applied={} voters={}",
                r.role(),
                r.term(),
                r.leader().map_or("-".to_string(), PeerId::to_string),
                r.last_index(),
                r.committed(),
                r.applied(),
                names(&configuration.voters),
            );
            if let Some(old) = &configuration.old_voters {
                let _ = write!(out, " old={}", names(old));
            }
            if !configuration.learners.is_empty() {
                let _ = write!(out, " learners={}", names(&configuration.learners));
            }
            if r.is_hibernating() {
                out.push_str(" hibernating");
            }
            out.push('\n');
        }
        out
    }
}

fn names(peers: &BTreeSet<PeerId>) -> String {
    let list: Vec<&str> = peers.iter().map(PeerId::as_str).collect();
    format!("[{}]", list.join(","))
}

/// One line describing a message, stable across runs (used in checked-in test output).
#[must_use]
pub fn describe_message(m: &Message) -> String {
    let head = format!("{}->{} {} term={}", m.from, m.to, m.body.name(), m.term);
    let tail = match &m.body {
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            leadership_transfer,
            ..
        } => {
            let transfer = if *leadership_transfer {
                " transfer"
            } else {
                ""
            };
            format!(" last={last_log_index}@{last_log_term}{transfer}")
        }
        MessageBody::RequestVoteResponse {
            granted, leader, ..
        } => match leader {
            Some(leader) => format!(" granted={granted} leader={leader}"),
            None => format!(" granted={granted}"),
        },
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            ..
        } => {
            let list: Vec<String> = entries.iter().map(describe_entry).collect();
            format!(
                " prev={prev_log_index}@{prev_log_term} commit={leader_commit} entries=[{}]",
                list.join(",")
            )
        }
        MessageBody::AppendEntriesResponse { result, .. } => match result {
            AppendResult::Success { last_index } => format!(" ok last={last_index}"),
            AppendResult::Reject { rejected, hint, .. } => {
                format!(" reject rejected={rejected} hint={hint}")
            }
            AppendResult::Busy => " busy".to_string(),
            AppendResult::NeedSnapshot => " need-snapshot".to_string(),
        },
        MessageBody::Heartbeat {
            commit,
            echo,
            hibernate,
            transfer_target,
        } => {
            let hibernate = if *hibernate { " hibernate" } else { "" };
            let transfer = transfer_target
                .as_ref()
                .map_or_else(String::new, |t| format!(" transfer_to={t}"));
            format!(
                " commit={commit} read_seq={}{hibernate}{transfer}",
                echo.read_seq
            )
        }
        MessageBody::HeartbeatResponse { echo } => format!(" read_seq={}", echo.read_seq),
        MessageBody::InstallSnapshot { meta } => format!(" snapshot={}@{}", meta.index, meta.term),
        MessageBody::InstallSnapshotResponse { installed } => match installed {
            Some(i) => format!(" installed={i}"),
            None => " failed".to_string(),
        },
        MessageBody::TimeoutNow => String::new(),
        MessageBody::ReadIndexRequest { batch, lease } => format!(" batch={batch} lease={lease}"),
        MessageBody::ReadIndexResponse { batch, result } => match result {
            Ok(index) => format!(" batch={batch} index={index}"),
            Err(e) => format!(" batch={batch} error=\"{e}\""),
        },
    };
    head + &tail
}

/// One word describing an entry: `index@term:kind`.
#[must_use]
pub fn describe_entry(e: &Entry) -> String {
    let kind = match &e.payload {
        EntryPayload::NoOp => "noop".to_string(),
        EntryPayload::Normal(d) => String::from_utf8_lossy(d).into_owned(),
        EntryPayload::Configuration(c) => {
            let mut s = format!("conf{}", names(&c.voters));
            if let Some(old) = &c.old_voters {
                let _ = write!(s, "+old{}", names(old));
            }
            if !c.learners.is_empty() {
                let _ = write!(s, "+learners{}", names(&c.learners));
            }
            s
        }
    };
    format!("{}@{}:{kind}", e.index, e.term)
}

/// Reads the whole durable log of a storage (for assertions).
#[must_use]
pub fn durable_entries(storage: &MemStorage) -> Vec<Entry> {
    let (first, last) = (storage.first_index(), storage.last_index());
    storage
        .entries(first, last.next(), u64::MAX)
        .unwrap_or_default()
}
