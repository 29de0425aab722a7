//! One seeded simulation run: a cluster of cores, a simulated disk and network, a nemesis
//! injecting faults, a client workload, and safety checks after every step.
//!
//! Owns: the event loop and the order of everything, which depends only on the seed, so a
//! failing seed replays exactly. Must never: read a clock, use unseeded randomness, or
//! iterate a hash map (its order is not deterministic).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use flotilla_raft::{
    Config, Configuration, Echo, Entry, EntryPayload, Event, HardState, LogIndex, LogStore,
    MemStorage, Message, MessageBody, PeerId, Priority, Raft, RaftError, ReadMode, Rng, Role,
    SnapshotMeta, Term,
};
use flotilla_storage::{LogOptions, RaftMeta};

use crate::chain::{chain_hash, Chain};
use crate::kv::{Command, CommandKind};
use crate::network::{shuffle, Network, NetworkConfig, PartitionKind};
use crate::node::{
    write_batch, Disk, PendingWrite, Request, SharedDisk, SimNode, SimSnapshot, SimStore, GROUP,
};
use flotilla_linearizability::{Checker, OpKind, OpOutcome, Operation, Verdict};

/// Simulated time units per core tick (think milliseconds: a 100 ms tick).
pub const TICK: u64 = 100;

/// Bound on clock drift between nodes, in percent of the tick. Leases stay safe while the
/// drift is well under the 10% margin between the lease (90% of the election timeout) and
/// the followers' vote guard (a full election timeout).
pub const CLOCK_DRIFT_PERCENT: u64 = 3;

/// Which disk the simulated nodes run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// An in-memory log: a completed write updates it, a crash keeps it.
    #[default]
    Memory,
    /// The real storage module (`SharedLog` and `FileMetaStorage`) over a simulated file
    /// system: a crash keeps only fsynced bytes (sometimes plus a torn prefix of the write
    /// in flight), and every restart recovers the log and checks it against what was
    /// acknowledged as durable.
    SharedLog,
}

impl std::str::FromStr for StorageMode {
    type Err = String;

    fn from_str(s: &str) -> Result<StorageMode, String> {
        match s {
            "memory" => Ok(StorageMode::Memory),
            "shared-log" => Ok(StorageMode::SharedLog),
            other => Err(format!(
                "unknown storage mode {other:?}: expected memory or shared-log"
            )),
        }
    }
}

/// Segment size of the simulated shared log: small, so segments rotate and are reclaimed.
pub const SIM_SEGMENT_BYTES: u64 = 16 * 1024;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: everything else follows from it.
    pub seed: u64,
    /// Cluster size (3, 5 or 7 in the standard runs).
    pub nodes: usize,
    /// Length of the fault phase, in time units.
    pub fault_time: u64,
    /// After every fault heals, a leader must commit within this many ticks.
    pub liveness_bound_ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers the clients use.
    pub keys: u64,
    /// Budget of the linearizability search, per key.
    pub checker_states_max: u64,
    /// The nodes' disk.
    pub storage: StorageMode,
    /// Idle groups hibernate (`Config::hibernate_idle_ticks` drawn per seed), and the
    /// simulator drives them as the runtime does: a hibernating core is not ticked, and each
    /// node hears per-tick liveness beacons from the others (blocked by partitions, missing
    /// while a node is crashed or paused) and wakes a hibernating follower to campaign when
    /// its leader is silent for an election timeout or restarted, and a hibernating leader
    /// when a peer restarted.
    pub hibernation: bool,
    /// A hostile outsider (issue 12): a process that is no member of the group sends
    /// well-formed messages with inflated terms — votes (some flagged as leadership
    /// transfers), AppendEntries carrying forged writes and a commit, heartbeats, and
    /// TimeoutNow — to random members, throughout the run, the liveness phase included.
    /// Safety and liveness must hold as without it.
    pub outsider: bool,
    /// Planted protocol mistakes (planted-bug test only).
    #[cfg(feature = "planted-bugs")]
    pub bugs: flotilla_raft::PlantedBugs,
}

impl SimConfig {
    /// The standard run for `seed` on `nodes` nodes.
    #[must_use]
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            fault_time: 40_000,
            liveness_bound_ticks: 300,
            clients: 5,
            keys: 4,
            checker_states_max: 2_000_000,
            storage: StorageMode::Memory,
            hibernation: false,
            outsider: false,
            #[cfg(feature = "planted-bugs")]
            bugs: flotilla_raft::PlantedBugs::default(),
        }
    }
}

/// A broken invariant, with what is needed to replay it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// The numbers that disagree.
    pub detail: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Events processed.
    pub steps: u64,
    /// Client operations recorded.
    pub operations: usize,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// The linearizability search ran out of budget.
    pub unknown: bool,
    /// Ticks from the final heal to the first commit by a leader.
    pub recovery_ticks: Option<u64>,
    /// What happened, by kind (elections, crashes, snapshots installed, reads...).
    pub stats: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
enum EventKind {
    Tick(usize),
    Deliver(Message),
    PersistDone {
        node: usize,
        incarnation: u64,
    },
    /// A client's think time ended (`None`) or an operation's deadline came (`Some(op)`).
    ClientWake(usize, Option<u64>),
    Nemesis,
    Restart(usize),
    Resume(usize),
    HealNetwork,
    HealAll,
    /// The hostile outsider strikes (see [`SimConfig::outsider`]).
    Outsider,
}

struct Scheduled {
    time: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// One client operation in flight.
#[derive(Clone, Debug)]
pub struct ClientOp {
    op_id: u64,
    key: u64,
    kind: OpKind,
    invoke: u64,
}

struct Client {
    op: Option<ClientOp>,
    last_seen: BTreeMap<u64, Option<u64>>,
    preferred: usize,
}

/// The hostile outsider's name: no member has it.
const OUTSIDER: &str = "outsider";

/// Key the liveness probe writes; clients never use it.
const PROBE_KEY: u64 = u64::MAX;
const TRACE_LEN: usize = 40;

/// A running simulation.
pub struct Simulation {
    config: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    steps: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    index_of: BTreeMap<PeerId, usize>,
    network: Network,
    net: NetworkConfig,
    persist_latency_max: u64,
    /// Each node's tick period: clocks drift by up to `CLOCK_DRIFT_PERCENT` either way.
    tick_periods: Vec<u64>,
    raft_config: Config,
    /// The snapshot every node starts from: index 0, the initial configuration.
    bootstrap: SnapshotMeta,
    clients: Vec<Client>,
    next_op: u64,
    history: Vec<Operation>,
    // ----- checker state
    /// Chain hash of every (index, term) ever emitted by any core.
    entry_hashes: BTreeMap<(LogIndex, Term), u64>,
    /// Chain hashes of the committed log (`None` where only a snapshot was seen).
    canon: Vec<Option<u64>>,
    leaders: BTreeMap<Term, usize>,
    violation: Option<Violation>,
    trace: VecDeque<String>,
    stats: BTreeMap<&'static str, u64>,
    // ----- phases
    faults_active: bool,
    healed_at: Option<u64>,
    probe: Option<(usize, LogIndex, Term)>,
    recovered_at: Option<u64>,
    end_at: Option<u64>,
    // ----- hibernation (the runtime's liveness beacons, see `SimConfig::hibernation`)
    /// `heard[m][n]`: when node `m` last heard from node `n` (a beacon or a message), and
    /// `n`'s incarnation as of its last beacon.
    heard: Vec<Vec<Option<(u64, u64)>>>,
    /// Whether each node's core hibernated when last observed (to count hibernations).
    asleep: Vec<bool>,
    /// A follower woken while asleep by something other than its leader: that leader and
    /// when. If the leader turns out silent, the follower campaigns as a sleeping one would
    /// have (the runtime's watch, see its `note_if_woken`).
    watched: Vec<Option<(usize, u64)>>,
    /// Clients start no operation before this time: a quiet spell in which the group can
    /// hibernate while the nemesis keeps striking (with hibernation only).
    quiet_until: u64,
}

impl Simulation {
    /// Builds the cluster for `config`; nothing runs until [`Simulation::run`].
    #[must_use]
    pub fn new(config: SimConfig) -> Simulation {
        assert!(config.nodes >= 1, "a cluster needs at least one node");
        let mut rng = Rng::new(config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
        let net = NetworkConfig {
            delay_min: 1,
            delay_max: 5 + rng.below(40),
            slow_percent: rng.below(10),
            loss_percent: rng.below(6),
            duplicate_percent: rng.below(6),
        };
        let mut raft_config = random_raft_config(&mut rng);
        if config.hibernation {
            // A separate stream, so that a seed's other draws do not depend on the flag.
            let mut hibernation_rng = Rng::new(config.seed ^ 0x4869_6265_726e_6174);
            raft_config.hibernate_idle_ticks = 1 + hibernation_rng.below(20);
        }
        // Half the seeds run without the commit broadcast, as the KV store does (a separate
        // stream too, so that the seed's other draws stay what they were).
        let mut commit_rng = Rng::new(config.seed ^ 0x636f_6d6d_6974_6273);
        raft_config.commit_broadcast = commit_rng.below(2) == 0;
        let ids: Vec<PeerId> = (1..=config.nodes)
            .map(|i| PeerId::new(&format!("n{i}")))
            .collect();
        let mut configuration = Configuration::new(ids.iter().cloned());
        if rng.below(4) == 0 {
            for id in &ids {
                let priority = Priority(1 + rng.below(30) as i32);
                configuration.priorities.insert(id.clone(), priority);
            }
        }
        let meta = SnapshotMeta {
            index: LogIndex::ZERO,
            term: Term::ZERO,
            configuration,
        };
        let log_options = LogOptions {
            segment_bytes_max: SIM_SEGMENT_BYTES,
            // A small cache, so that the core's reads also go to the (simulated) disk.
            cache_bytes_max: 32 * 1024,
            ..LogOptions::default()
        };
        let nodes: Vec<SimNode> = ids
            .iter()
            .map(|id| {
                let disk = match config.storage {
                    StorageMode::Memory => Disk::Memory(MemStorage::new(meta.clone())),
                    StorageMode::SharedLog => {
                        Disk::SharedLog(Box::new(SharedDisk::new(log_options.clone())))
                    }
                };
                SimNode::new(id.clone(), disk)
            })
            .collect();
        let index_of = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let clients = (0..config.clients)
            .map(|c| Client {
                op: None,
                last_seen: BTreeMap::new(),
                preferred: c % config.nodes,
            })
            .collect();
        let persist_latency_max = 1 + rng.below(30);
        let drift = TICK * CLOCK_DRIFT_PERCENT / 100;
        let tick_periods = (0..config.nodes)
            .map(|_| TICK - drift + rng.below(2 * drift + 1))
            .collect();
        Simulation {
            rng,
            now: 0,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            nodes,
            index_of,
            network: Network::default(),
            net,
            persist_latency_max,
            tick_periods,
            raft_config,
            bootstrap: meta,
            clients,
            next_op: 1,
            history: Vec::new(),
            entry_hashes: BTreeMap::new(),
            canon: Vec::new(),
            leaders: BTreeMap::new(),
            violation: None,
            trace: VecDeque::new(),
            stats: BTreeMap::new(),
            faults_active: true,
            healed_at: None,
            probe: None,
            recovered_at: None,
            end_at: None,
            heard: vec![vec![None; config.nodes]; config.nodes],
            asleep: vec![false; config.nodes],
            watched: vec![None; config.nodes],
            quiet_until: 0,
            config,
        }
    }

    /// Runs the seed to the end (or to the first violation) and checks the history.
    pub fn run(mut self) -> SeedReport {
        for node in 0..self.nodes.len() {
            self.start_node(node);
            let phase = self.rng.below(TICK);
            self.schedule(phase, EventKind::Tick(node));
        }
        for client in 0..self.clients.len() {
            let delay = self.rng.below(2_000);
            self.schedule(delay, EventKind::ClientWake(client, None));
        }
        let first_fault = 1_000 + self.rng.below(3_000);
        self.schedule(first_fault, EventKind::Nemesis);
        let fault_time = self.config.fault_time;
        self.schedule(fault_time, EventKind::HealAll);
        if self.config.outsider {
            let first = self.rng.below(500);
            self.schedule(first, EventKind::Outsider);
        }
        while let Some(event) = self.queue.pop() {
            self.now = event.time;
            self.steps += 1;
            self.handle(event.kind);
            if self.violation.is_some() {
                break;
            }
            if self.end_at.is_some_and(|end| self.now >= end) {
                break;
            }
            if let Some(healed) = self.healed_at {
                let bound = self.config.liveness_bound_ticks * TICK;
                if self.recovered_at.is_none() && self.now > healed + bound {
                    let detail = format!(
                        "no leader committed an entry within {} ticks after every fault healed",
                        self.config.liveness_bound_ticks
                    );
                    self.violate("liveness after heal", detail);
                    break;
                }
            }
        }
        self.finish()
    }

    fn finish(mut self) -> SeedReport {
        // Operations still open at the end have unknown outcomes.
        for client in 0..self.clients.len() {
            if let Some(op) = self.clients[client].op.take() {
                self.record(client, &op, OpOutcome::Indeterminate);
            }
        }
        let mut unknown = false;
        if self.violation.is_none() {
            let checker = Checker::new(self.config.checker_states_max);
            match checker.check(&self.history) {
                Verdict::Linearizable => {}
                Verdict::Violation { key, explanation } => {
                    self.violation = Some(Violation {
                        invariant: "linearizability",
                        detail: format!("key {key}: {explanation}"),
                        trace: self.trace.iter().cloned().collect(),
                    });
                }
                Verdict::Unknown { .. } => unknown = true,
            }
        }
        let recovery_ticks = match (self.healed_at, self.recovered_at) {
            (Some(h), Some(r)) => Some(r.saturating_sub(h) / TICK),
            _ => None,
        };
        SeedReport {
            seed: self.config.seed,
            nodes: self.config.nodes,
            steps: self.steps,
            operations: self.history.len(),
            violation: self.violation,
            unknown,
            recovery_ticks,
            stats: self.stats,
        }
    }

    fn schedule(&mut self, delay: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            kind,
        });
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_insert(0) += 1;
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now));
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        let mut trace: Vec<String> = self.trace.iter().cloned().collect();
        trace.push(format!("t={} state of every node:", self.now));
        for n in &self.nodes {
            match &n.raft {
                Some(raft) => {
                    let paused = if n.paused { " (paused)" } else { "" };
                    for line in raft.describe().lines() {
                        trace.push(format!("  {line}{paused}"));
                    }
                    let front = n.pending.front().map(|w| w.done_at);
                    trace.push(format!(
                        "  writes pending={} first done at {front:?}; storage last={}",
                        n.pending.len(),
                        raft.store().last_index()
                    ));
                }
                None => trace.push(format!("  peer {} crashed", n.id)),
            }
        }
        self.violation = Some(Violation {
            invariant,
            detail,
            trace,
        });
    }

    // ----- events ----------------------------------------------------------------------

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Tick(node) => {
                let period = self.tick_periods[node];
                self.schedule(period, EventKind::Tick(node));
                let n = &mut self.nodes[node];
                if n.raft.is_none() {
                    return;
                }
                if n.paused {
                    n.missed_ticks += 1;
                    return;
                }
                if let Some(raft) = n.raft.as_mut() {
                    // The runtime does not tick a hibernating group.
                    if !raft.is_hibernating() {
                        raft.tick();
                    }
                }
                self.process(node);
                if self.config.hibernation {
                    self.send_beacons(node);
                    self.watch_leader(node);
                }
                self.tick_probe(node);
            }
            EventKind::Deliver(message) => self.deliver(message),
            EventKind::PersistDone { node, incarnation } => {
                let n = &self.nodes[node];
                if n.incarnation == incarnation && !n.paused {
                    self.complete_writes(node);
                }
            }
            EventKind::ClientWake(client, deadline_of) => self.client_wake(client, deadline_of),
            EventKind::Nemesis => {
                if self.faults_active {
                    if self.config.hibernation && self.rng.below(3) == 0 {
                        let quiet = 3_000 + self.rng.below(12_000);
                        self.quiet_until = self.quiet_until.max(self.now + quiet);
                        self.note(format!("clients quiet for {quiet}"));
                        self.count("quiet spells");
                    }
                    if !(self.config.hibernation && self.nemesis_sleeping_leader()) {
                        self.nemesis();
                    }
                    let next = 500 + self.rng.below(3_000);
                    self.schedule(next, EventKind::Nemesis);
                }
            }
            EventKind::Restart(node) => {
                if self.nodes[node].raft.is_none() {
                    self.note(format!("restart {}", self.nodes[node].id));
                    self.start_node(node);
                }
            }
            EventKind::Resume(node) => self.resume(node),
            EventKind::HealNetwork => {
                if self.faults_active {
                    self.network.heal();
                    self.note("heal network".into());
                }
            }
            EventKind::HealAll => self.heal_all(),
            EventKind::Outsider => {
                self.outsider_strikes();
                let next = 50 + self.rng.below(400);
                self.schedule(next, EventKind::Outsider);
            }
        }
    }

    /// The outsider sends one well-formed message to a random live member, with a term a
    /// little ahead of the member's (it sniffed the traffic), from its own name.
    fn outsider_strikes(&mut self) {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        let (term, last) = (raft.term(), raft.last_index());
        let last_term = raft.last_term();
        let to = self.nodes[node].id.clone();
        let inflated = Term(term.get() + 1 + self.rng.below(3));
        let forged = Command {
            op_id: u64::MAX - self.rng.below(1_000),
            key: self.rng.below(self.config.keys),
            kind: CommandKind::Write(u64::MAX - self.rng.below(1_000)),
        };
        let (term, body) = match self.rng.below(5) {
            0 => (
                inflated,
                MessageBody::RequestVote {
                    pre_vote: self.rng.below(2) == 0,
                    last_log_index: last.plus(100),
                    last_log_term: inflated,
                    leadership_transfer: self.rng.below(2) == 0,
                },
            ),
            1 | 2 => (
                inflated,
                MessageBody::AppendEntries {
                    prev_log_index: last,
                    prev_log_term: last_term.min(inflated),
                    entries: vec![Entry {
                        index: last.next(),
                        term: inflated,
                        payload: EntryPayload::Normal(forged.encode()),
                    }],
                    leader_commit: last.next(),
                    echo: Echo::default(),
                },
            ),
            3 => (
                inflated,
                MessageBody::Heartbeat {
                    commit: last,
                    echo: Echo::default(),
                    hibernate: false,
                    transfer_target: Some(PeerId::new(OUTSIDER)),
                },
            ),
            _ => (term, MessageBody::TimeoutNow),
        };
        self.count("outsider messages");
        let message = Message {
            from: PeerId::new(OUTSIDER),
            to,
            term,
            body,
        };
        let delay = 1 + self.rng.below(20);
        self.schedule(delay, EventKind::Deliver(message));
    }

    fn heal_all(&mut self) {
        self.faults_active = false;
        self.network.heal();
        self.net.loss_percent = 0;
        self.net.duplicate_percent = 0;
        for node in 0..self.nodes.len() {
            if self.nodes[node].raft.is_none() {
                self.start_node(node);
            } else if self.nodes[node].paused {
                self.resume(node);
            }
        }
        self.healed_at = Some(self.now);
        self.note("heal everything; liveness phase".into());
    }

    fn start_node(&mut self, node: usize) {
        let mut config = self.raft_config.clone();
        config.id = self.nodes[node].id.clone();
        config.random_seed = self.config.seed ^ (node as u64).wrapping_mul(0x9e37_79b9);
        // Only the very first start is known to have acknowledged nobody.
        config.start_with_vote_guard = self.nodes[node].incarnation > 0;
        let bootstrap = self.bootstrap.clone();
        let n = &mut self.nodes[node];
        n.load_durable_state();
        let applied = n.applied_index;
        let (store, hard_state) = match &mut n.disk {
            Disk::Memory(storage) => (SimStore::Memory(storage.clone()), n.hard_state.clone()),
            Disk::SharedLog(disk) => {
                let meta = match disk.open() {
                    Ok(meta) => meta,
                    Err(e) => {
                        let detail = format!("node {} cannot recover its disk: {e}", n.id);
                        self.violate("storage recovery", detail);
                        return;
                    }
                };
                let Some(log) = disk.log.as_ref() else {
                    return;
                };
                let torn = log.recovery().torn_bytes_cut;
                let snapshot = n.snapshot.as_ref().map_or(bootstrap, |s| s.meta.clone());
                let store = SimStore::SharedLog {
                    log: log.group(GROUP),
                    snapshot,
                };
                // The commit index is not stored: the core clamps it up to the snapshot.
                let hard_state = HardState {
                    term: meta.term,
                    vote: meta.vote,
                    commit: LogIndex::ZERO,
                };
                if torn > 0 {
                    self.count("torn tails cut");
                }
                self.check_recovered(node, &store, &hard_state);
                if self.violation.is_some() {
                    return;
                }
                (store, hard_state)
            }
        };
        let n = &mut self.nodes[node];
        let raft = Raft::new(config, store, hard_state, applied);
        let raft = match raft {
            Ok(raft) => raft,
            Err(e) => {
                let detail = format!("node {} cannot restart from its durable state: {e}", n.id);
                self.violate("restart", detail);
                return;
            }
        };
        #[cfg(feature = "planted-bugs")]
        let raft = {
            let mut raft = raft;
            raft.set_planted_bugs(self.config.bugs);
            raft
        };
        let n = &mut self.nodes[node];
        n.raft = Some(raft);
        n.observed_commit = n.raft.as_ref().map_or(LogIndex::ZERO, Raft::committed);
        // A new process knows nothing of the others yet.
        self.heard[node] = vec![None; self.nodes.len()];
        self.watched[node] = None;
        self.process(node);
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let (Some(&from), Some(&to)) = (
                self.index_of.get(&message.from),
                self.index_of.get(&message.to),
            ) else {
                continue;
            };
            if self.network.is_blocked(from, to) || self.rng.below(100) < self.net.loss_percent {
                continue;
            }
            let mut delay =
                self.net.delay_min + self.rng.below(self.net.delay_max - self.net.delay_min + 1);
            if self.rng.below(100) < self.net.slow_percent {
                delay *= 1 + self.rng.below(20);
            }
            if self.rng.below(100) < self.net.duplicate_percent {
                let extra = delay + self.rng.below(self.net.delay_max * 4 + 1);
                self.schedule(extra, EventKind::Deliver(message.clone()));
            }
            self.schedule(delay, EventKind::Deliver(message));
        }
    }

    fn deliver(&mut self, message: Message) {
        let Some(&to) = self.index_of.get(&message.to) else {
            return;
        };
        let n = &mut self.nodes[to];
        if n.raft.is_none() {
            return;
        }
        if n.paused {
            n.inbox.push(message);
            return;
        }
        if let Some(&from) = self.index_of.get(&message.from) {
            // Any frame from a process says it is alive (its incarnation comes in beacons).
            let incarnation = self.heard[to][from].map_or(0, |(_, i)| i);
            self.heard[to][from] = Some((self.now, incarnation));
        }
        let from = self.index_of.get(&message.from).copied();
        let was_hibernating = self.is_hibernating(to);
        let n = &mut self.nodes[to];
        if let Some(raft) = n.raft.as_mut() {
            raft.step(message);
        }
        self.note_woken(to, was_hibernating, from);
        self.process(to);
    }

    fn is_hibernating(&self, node: usize) -> bool {
        self.nodes[node]
            .raft
            .as_ref()
            .is_some_and(Raft::is_hibernating)
    }

    /// After an input to `node`: if it was asleep, is awake now and follows a leader other
    /// than `by` (the sender of the message that woke it; `None`: a request), watch it.
    fn note_woken(&mut self, node: usize, was_hibernating: bool, by: Option<usize>) {
        if !self.config.hibernation || !was_hibernating || self.is_hibernating(node) {
            return;
        }
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        let leader = raft.leader().and_then(|l| self.index_of.get(l)).copied();
        if let Some(leader) = leader.filter(|l| *l != node && Some(*l) != by) {
            if raft.role() == Role::Follower {
                self.watched[node] = Some((leader, self.now));
            }
        }
    }

    // ----- hibernation: the runtime's liveness beacons ----------------------------------

    /// `node` sends its per-tick beacon: every live, running node it can reach hears it.
    fn send_beacons(&mut self, node: usize) {
        let incarnation = self.nodes[node].incarnation;
        for other in 0..self.nodes.len() {
            if other == node || !self.nodes[other].is_live() || self.network.is_blocked(node, other)
            {
                continue;
            }
            let previous = self.heard[other][node].replace((self.now, incarnation));
            if previous.is_some_and(|(_, i)| i != incarnation) {
                self.peer_restarted(other, node);
            }
        }
    }

    /// `node` learned that `restarted` came back with a new incarnation: a hibernating
    /// follower of it campaigns, a hibernating leader with it as a peer wakes.
    fn peer_restarted(&mut self, node: usize, restarted: usize) {
        let restarted_id = self.nodes[restarted].id.clone();
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            return;
        };
        if !raft.is_hibernating() {
            return;
        }
        if raft.leader() == Some(&restarted_id) {
            raft.wake_and_campaign();
            self.count("hibernation wakes (leader restarted)");
        } else if raft.role() == Role::Leader && raft.configuration().contains(&restarted_id) {
            raft.wake();
            self.count("hibernation wakes (peer restarted)");
        } else {
            return;
        }
        let id = self.nodes[node].id.clone();
        self.note(format!("{id} woken: {restarted_id} restarted"));
        self.process(node);
    }

    /// A hibernating follower whose leader has been silent for an election timeout
    /// campaigns (the runtime's verdict from missing beacons); so does a watched one (see
    /// `watched`) whose leader was not heard since it woke.
    fn watch_leader(&mut self, node: usize) {
        let timeout = self.raft_config.election_timeout_ticks * TICK;
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        if let Some((leader, woken_at)) = self.watched[node] {
            let still = !raft.is_hibernating()
                && raft.role() == Role::Follower
                && raft.leader() == Some(&self.nodes[leader].id);
            let heard = self.heard[node][leader].map(|(at, _)| at);
            if !still || heard.is_some_and(|at| at > woken_at) {
                self.watched[node] = None;
            } else if heard.is_none_or(|at| self.now.saturating_sub(at) >= timeout) {
                self.watched[node] = None;
                let id = self.nodes[node].id.clone();
                self.note(format!("{id} (woken) campaigns: its leader is silent"));
                self.count("woken followers campaigning (leader silent)");
                if let Some(raft) = self.nodes[node].raft.as_mut() {
                    raft.wake_and_campaign();
                }
                self.process(node);
                return;
            }
        }
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        if !raft.is_hibernating() || raft.role() == Role::Leader {
            return;
        }
        let Some(leader) = raft.leader().and_then(|l| self.index_of.get(l)).copied() else {
            return;
        };
        let silent = match self.heard[node][leader] {
            Some((at, _)) => self.now.saturating_sub(at) >= timeout,
            None => true,
        };
        if !silent {
            return;
        }
        let leader_id = self.nodes[leader].id.clone();
        let id = self.nodes[node].id.clone();
        self.note(format!("{id} woken to campaign: {leader_id} silent"));
        self.count("hibernation wakes (leader silent)");
        if let Some(raft) = self.nodes[node].raft.as_mut() {
            raft.wake_and_campaign();
        }
        self.process(node);
    }

    fn resume(&mut self, node: usize) {
        if !self.nodes[node].paused {
            return;
        }
        self.note(format!("resume {}", self.nodes[node].id));
        let n = &mut self.nodes[node];
        n.paused = false;
        let queued = std::mem::take(&mut n.queued_requests);
        let (lease_reads, others): (Vec<_>, Vec<_>) = queued
            .into_iter()
            .partition(|(_, op)| op.kind == OpKind::Read && read_mode(op.op_id) == ReadMode::Lease);
        // A resumed process may serve requests that waited in its socket before its timers
        // fire: the core must stay safe for writes and ReadIndex reads regardless.
        for (client, op) in others {
            if self.clients[client]
                .op
                .as_ref()
                .is_some_and(|o| o.op_id == op.op_id)
            {
                self.submit(node, client, &op);
            }
        }
        // Lease reads are different: the runtime contract is that elapsed time is fed to
        // the core (as ticks) before a lease is trusted, so the clock moves first.
        let missed = std::mem::take(&mut self.nodes[node].missed_ticks);
        for _ in 0..missed {
            if let Some(raft) = self.nodes[node].raft.as_mut() {
                if !raft.is_hibernating() {
                    raft.tick();
                }
            }
            self.process(node);
        }
        // The silence of others measured while this process stood still is its own (the
        // runtime forgives a late round the same way).
        let now = self.now;
        for entry in self.heard[node].iter_mut().flatten() {
            entry.0 = now;
        }
        for (client, op) in lease_reads {
            if self.clients[client]
                .op
                .as_ref()
                .is_some_and(|o| o.op_id == op.op_id)
            {
                self.submit(node, client, &op);
            }
        }
        self.complete_writes(node);
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        for message in inbox {
            if let Some(raft) = self.nodes[node].raft.as_mut() {
                raft.step(message);
            }
            self.process(node);
        }
    }

    // ----- the driver: the Ready contract ----------------------------------------------

    /// Drains the node's `Ready`s: send, queue writes, check, apply, answer reads.
    fn process(&mut self, node: usize) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 100_000 {
                let id = self.nodes[node].id.clone();
                self.violate("ready settles", format!("{id} keeps reporting work"));
                return;
            }
            let Some(raft) = self.nodes[node].raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                return;
            }
            let mut ready = raft.ready();
            self.send(std::mem::take(&mut ready.messages));
            self.record_emitted_entries(node, &ready.entries);
            let needs_write = ready.hard_state.is_some()
                || !ready.entries.is_empty()
                || ready.compact_to.is_some()
                || !ready.messages_after_persist.is_empty()
                || ready.snapshot.is_some();
            if needs_write {
                let latency = 1 + self.rng.below(self.persist_latency_max);
                let n = &mut self.nodes[node];
                let done_at = n
                    .pending
                    .back()
                    .map_or(self.now, |w| w.done_at)
                    .max(self.now + latency);
                let snapshot = ready.snapshot.take().zip(ready.snapshot_source.take());
                n.pending.push_back(PendingWrite {
                    hard_state: ready.hard_state.take(),
                    entries: std::mem::take(&mut ready.entries),
                    compact: ready.compact_to,
                    after: std::mem::take(&mut ready.messages_after_persist),
                    snapshot,
                    done_at,
                });
                let incarnation = n.incarnation;
                self.schedule(
                    done_at - self.now,
                    EventKind::PersistDone { node, incarnation },
                );
            }
            self.observe(node);
            if self.violation.is_some() {
                return;
            }
            self.apply(node, std::mem::take(&mut ready.committed_entries));
            for read in std::mem::take(&mut ready.reads) {
                self.complete_read(node, read.id, read.result.is_ok());
            }
            for event in std::mem::take(&mut ready.events) {
                self.on_event(node, event);
            }
        }
    }

    fn complete_writes(&mut self, node: usize) {
        while self.nodes[node]
            .pending
            .front()
            .is_some_and(|w| w.done_at <= self.now)
        {
            let Some(write) = self.nodes[node].pending.pop_front() else {
                break;
            };
            self.complete_write(node, write);
            if self.nodes[node].raft.is_none() {
                return;
            }
            self.process(node);
        }
    }

    fn complete_write(&mut self, node: usize, write: PendingWrite) {
        // The snapshot's data, if it is to be installed (fetched before the write, so that
        // the log is reset in the same batch).
        let snapshot = write
            .snapshot
            .as_ref()
            .map(|(meta, source)| (meta.clone(), self.fetch_snapshot(meta, source)));
        let n = &mut self.nodes[node];
        match &mut n.disk {
            Disk::Memory(storage) => {
                if let Some((index, term)) = write.compact {
                    storage.compact(index, term);
                }
                storage.append(&write.entries);
            }
            Disk::SharedLog(disk) => {
                let reset = snapshot
                    .as_ref()
                    .filter(|(_, data)| data.is_some())
                    .map(|(meta, _)| (meta.index, meta.term));
                let batch = write_batch(&write, reset);
                let meta = write
                    .hard_state
                    .as_ref()
                    .filter(|hs| (&hs.term, &hs.vote) != (&n.hard_state.term, &n.hard_state.vote))
                    .map(|hs| RaftMeta {
                        term: hs.term,
                        vote: hs.vote.clone(),
                    });
                let written = disk.write(&batch, meta.as_ref());
                let reclaimed = disk.take_reclaimed();
                if let Err(e) = written {
                    let detail = format!("{}: {e}", n.id);
                    self.violate("storage write", detail);
                    return;
                }
                for _ in 0..reclaimed {
                    self.count("segments reclaimed");
                }
            }
        }
        let n = &mut self.nodes[node];
        if let Some(hs) = write.hard_state {
            n.hard_state = hs;
        }
        if let Some(last) = write.entries.last() {
            n.durable.append(&write.entries);
            let (index, term) = (last.index, last.term);
            if let Some(raft) = n.raft.as_mut() {
                raft.on_persisted(index, term);
            }
        }
        self.send(write.after);
        if let Some((meta, data)) = snapshot {
            self.install_snapshot(node, meta, data);
        }
    }

    /// The snapshot `source` offers, if it is up and still holds `meta`.
    fn fetch_snapshot(&self, meta: &SnapshotMeta, source: &PeerId) -> Option<SimSnapshot> {
        self.index_of
            .get(source)
            .map(|&s| &self.nodes[s])
            .filter(|s| s.raft.is_some())
            .and_then(|s| s.snapshot.clone())
            .filter(|s| s.meta == *meta)
    }

    /// Installs a fetched snapshot (on the shared log, the log was already reset in the
    /// write that carried it).
    fn install_snapshot(&mut self, node: usize, meta: SnapshotMeta, data: Option<SimSnapshot>) {
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        let Some(snapshot) = data else {
            raft.on_snapshot_install_failed(&meta);
            return;
        };
        if let Disk::Memory(storage) = &n.disk {
            storage.install_snapshot(meta.clone());
        }
        n.kv = snapshot.kv.clone();
        n.applied_hash = snapshot.chain_hash;
        n.applied_index = meta.index;
        n.durable = Chain::new(meta.index, snapshot.chain_hash);
        n.view = n.durable.clone();
        n.snapshot = Some(snapshot);
        raft.on_snapshot_installed(&meta);
        let id = n.id.clone();
        self.note(format!("{id} installed snapshot at {}", meta.index));
        self.count("snapshots installed");
    }

    fn apply(&mut self, node: usize, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for entry in entries {
            self.apply_one(node, entry);
            if self.violation.is_some() {
                return;
            }
        }
        let n = &mut self.nodes[node];
        n.applied_index = last;
        if let Some(raft) = n.raft.as_mut() {
            raft.on_applied(last);
        }
    }

    fn apply_one(&mut self, node: usize, entry: Entry) {
        let n = &mut self.nodes[node];
        if entry.index != n.applied_index.next() {
            let detail = format!(
                "{} applied {} after {}: not in order",
                n.id, entry.index, n.applied_index
            );
            self.violate("state machine safety", detail);
            return;
        }
        n.applied_index = entry.index;
        n.applied_hash = chain_hash(n.applied_hash, &entry);
        let slot = entry.index.get() as usize - 1;
        match self.canon.get(slot).copied().flatten() {
            Some(h) if h != n.applied_hash => {
                let detail = format!(
                    "{} applied {}@{} which differs from the committed entry at that index",
                    n.id, entry.index, entry.term
                );
                self.violate("state machine safety", detail);
                return;
            }
            Some(_) => {}
            None => {
                if self.canon.len() <= slot {
                    self.canon.resize(slot + 1, None);
                }
                self.canon[slot] = Some(n.applied_hash);
            }
        }
        let EntryPayload::Normal(data) = &entry.payload else {
            return;
        };
        let Some(command) = Command::decode(data) else {
            return;
        };
        let swapped = n.kv.apply(&command);
        let proposal = n.proposals.remove(&entry.index);
        let Some((term, request)) = proposal else {
            return;
        };
        if command.key == PROBE_KEY {
            if term == entry.term && self.recovered_at.is_none() && self.healed_at.is_some() {
                self.recovered_at = Some(self.now);
                self.end_at = Some(self.now + 3_000);
            }
            return;
        }
        let outcome = if term == entry.term && command.op_id == request.op_id {
            match command.kind {
                CommandKind::Write(_) => OpOutcome::WriteOk,
                CommandKind::Cas { .. } => OpOutcome::CasOk(swapped),
            }
        } else {
            // Another entry took the index: ours was overwritten and can never commit.
            OpOutcome::Failed
        };
        self.complete_op(request.client, request.op_id, outcome);
    }

    fn on_event(&mut self, node: usize, event: Event) {
        match event {
            Event::SnapshotDue => self.take_snapshot(node),
            Event::LeaderStart { term } => {
                let id = self.nodes[node].id.clone();
                self.note(format!("{id} leader start term {term}"));
            }
            Event::MembershipChangeFinished { result } => {
                let id = self.nodes[node].id.clone();
                let text = match result {
                    Ok(c) => {
                        self.count("membership changes");
                        format!("ok voters={:?} learners={:?}", c.voters, c.learners)
                    }
                    Err(e) => format!("failed: {e}"),
                };
                self.note(format!("{id} membership change {text}"));
            }
            Event::TransferFinished { target, result } => {
                let id = self.nodes[node].id.clone();
                if result.is_ok() {
                    self.count("leadership transfers");
                }
                self.note(format!("{id} transfer to {target}: {result:?}"));
            }
            _ => {}
        }
    }

    fn take_snapshot(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        let Ok(meta) = raft.snapshot_meta_at(n.applied_index) else {
            return;
        };
        // Saved synchronously: the snapshot is durable before the core hears of it.
        if let Disk::Memory(storage) = &n.disk {
            storage.set_snapshot(meta.clone());
        }
        n.snapshot = Some(SimSnapshot {
            meta: meta.clone(),
            kv: n.kv.clone(),
            chain_hash: n.applied_hash,
        });
        raft.on_snapshot_saved(meta);
        self.process(node);
    }

    /// Power loss on `node`: the core, its in-flight writes and its volatile state are
    /// lost. On the shared log, the write in flight sometimes reached the disk in part (a
    /// torn tail: a random strict prefix of its record survives, never the whole of it, since
    /// it was not acknowledged); otherwise the crash is clean.
    fn crash_node(&mut self, node: usize) {
        let Simulation { nodes, rng, .. } = self;
        let n = &mut nodes[node];
        if let Disk::SharedLog(disk) = &mut n.disk {
            let in_flight = n
                .pending
                .front()
                .filter(|_| rng.below(3) != 0)
                .map(|w| write_batch(w, None));
            let mut torn_bytes = 0;
            disk.crash(in_flight.as_ref(), |unsynced| {
                let kept = if unsynced == 0 {
                    0
                } else {
                    rng.below(unsynced as u64) as usize
                };
                torn_bytes += kept;
                kept
            });
            if torn_bytes > 0 {
                self.count("torn tails");
            }
        }
        self.nodes[node].crash();
    }

    /// At a restart on the shared log: the recovered log holds exactly the durable log the
    /// simulator tracked (what was acknowledged to the core as persisted) from its first
    /// index on (entries compacted away are exempt), and the recovered term and vote are
    /// the acknowledged ones.
    fn check_recovered(&mut self, node: usize, store: &SimStore, hard_state: &HardState) {
        let n = &self.nodes[node];
        let id = n.id.clone();
        if (&hard_state.term, &hard_state.vote) != (&n.hard_state.term, &n.hard_state.vote) {
            let detail = format!(
                "{id} recovered term {} vote {:?}, but term {} vote {:?} was acknowledged",
                hard_state.term, hard_state.vote, n.hard_state.term, n.hard_state.vote
            );
            self.violate("recovery returns what was durable", detail);
            return;
        }
        let durable = &n.durable;
        let (first, last) = (store.first_index(), store.last_index());
        let Some(mut previous) = durable.hash_at(first.prev()) else {
            let detail = format!(
                "{id} recovered a log from {first} to {last}, but the durable log runs from {} \
                 to {}",
                durable.base_index().next(),
                durable.last_index()
            );
            self.violate("recovery returns what was durable", detail);
            return;
        };
        let compaction_term = store.term(first.prev());
        if let Some(expected) = durable.term_at(first.prev()) {
            if compaction_term != Ok(expected) {
                let detail = format!(
                    "{id} recovered compaction point {} of term {compaction_term:?}, durable \
                     term {expected}",
                    first.prev()
                );
                self.violate("recovery returns what was durable", detail);
                return;
            }
        }
        let entries = if first <= last {
            store.entries(first, last.next(), u64::MAX)
        } else {
            Ok(Vec::new())
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                let detail = format!("{id} cannot read its recovered log {first}..={last}: {e}");
                self.violate("recovery returns what was durable", detail);
                return;
            }
        };
        let mut differs = None;
        let mut expected_index = first;
        for entry in &entries {
            if entry.index != expected_index {
                differs = Some((expected_index, "is missing from the recovered log"));
                break;
            }
            previous = chain_hash(previous, entry);
            match durable.hash_at(entry.index) {
                Some(h) if h == previous => {}
                Some(_) => {
                    differs = Some((entry.index, "differs from the durable entry"));
                    break;
                }
                None => {
                    differs = Some((entry.index, "was recovered but never acknowledged"));
                    break;
                }
            }
            expected_index = expected_index.next();
        }
        if differs.is_none() && expected_index <= durable.last_index() {
            differs = Some((expected_index, "was acknowledged but not recovered"));
        }
        if let Some((index, what)) = differs {
            let detail = format!(
                "{id}: entry {index} {what} (recovered {first}..={last}, durable up to {})",
                durable.last_index()
            );
            self.violate("recovery returns what was durable", detail);
        }
    }

    // ----- invariants ------------------------------------------------------------------

    /// Log matching: the same (index, term) always carries the same history.
    fn record_emitted_entries(&mut self, node: usize, entries: &[Entry]) {
        let added = self.nodes[node].view.append(entries);
        for (index, term, hash) in added {
            match self.entry_hashes.get(&(index, term)) {
                Some(existing) if *existing != hash => {
                    let id = self.nodes[node].id.clone();
                    let detail = format!(
                        "{id} holds {index}@{term} with a history different from another peer's"
                    );
                    self.violate("log matching", detail);
                    return;
                }
                Some(_) => {}
                None => {
                    self.entry_hashes.insert((index, term), hash);
                }
            }
        }
    }

    /// Checks after every step: one leader per term, leader completeness, commit never
    /// decreasing, applied <= committed, every commit agreeing with the committed log and
    /// stored on a quorum of the configuration(s) in force.
    fn observe(&mut self, node: usize) {
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else {
            return;
        };
        let (role, term, committed, applied) =
            (raft.role(), raft.term(), raft.committed(), raft.applied());
        let id = n.id.clone();
        if applied > committed {
            self.violate(
                "applied <= committed",
                format!("{id} applied {applied} > {committed}"),
            );
            return;
        }
        if committed < n.observed_commit {
            let detail = format!("{id} commit went from {} to {committed}", n.observed_commit);
            self.violate("commit never decreases", detail);
            return;
        }
        let hibernating = raft.is_hibernating();
        let became_leader = role == Role::Leader && n.observed_role != (Role::Leader, term);
        let commit_advanced = committed > n.observed_commit;
        if hibernating && !self.asleep[node] {
            self.count("hibernations");
        }
        self.asleep[node] = hibernating;
        let n = &mut self.nodes[node];
        n.observed_role = (role, term);
        n.observed_commit = committed;
        if role == Role::Leader {
            if let Some(other) = self.leaders.insert(term, node) {
                if other != node {
                    let detail = format!("{} and {id} both led term {term}", self.nodes[other].id);
                    self.violate("one leader per term", detail);
                    return;
                }
            }
        }
        if became_leader {
            self.note(format!("{id} became leader of term {term}"));
            self.count("elections won");
            self.check_leader_completeness(node);
        }
        if commit_advanced {
            self.check_commit(node, committed);
            if role == Role::Leader {
                self.check_commit_quorum(node, committed);
                self.check_commit_term(node, committed, term);
            }
        }
    }

    /// Leader completeness (Raft paper §5.4.3): an entry committed in term T is in the log
    /// of every leader of a term above T. A leader elected late, in a term below entries
    /// committed meanwhile (its votes waited in a paused process while the others moved on),
    /// need not hold those: it can commit nothing and steps down at the first answer.
    fn check_leader_completeness(&mut self, node: usize) {
        let n = &self.nodes[node];
        let Some(term) = n.raft.as_ref().map(Raft::term) else {
            return;
        };
        // The newest committed entry of a term below the leader's (committed terms never
        // decrease along the log).
        let mut slot = self.canon.len();
        let expected = loop {
            if slot == 0 {
                return;
            }
            let Some(hash) = self.canon[slot - 1] else {
                return;
            };
            match self.committed_term(LogIndex(slot as u64), hash) {
                Some(t) if t >= term => slot -= 1,
                Some(_) => break hash,
                None => return,
            }
        };
        let last_committed = LogIndex(slot as u64);
        if n.view.base_index() > last_committed {
            return;
        }
        if n.view.hash_at(last_committed) != Some(expected) {
            let detail = format!(
                "{} became leader without committed entry {last_committed} (its log ends at {})",
                n.id,
                n.view.last_index()
            );
            self.violate("leader completeness", detail);
        }
    }

    /// The term of the entry at `index` whose chain hash is `hash`, if any core emitted it.
    fn committed_term(&self, index: LogIndex, hash: u64) -> Option<Term> {
        self.entry_hashes
            .range((index, Term::ZERO)..=(index, Term(u64::MAX)))
            .find(|(_, h)| **h == hash)
            .map(|((_, term), _)| *term)
    }

    fn check_commit(&mut self, node: usize, committed: LogIndex) {
        let n = &self.nodes[node];
        let Some(hash) = n.view.hash_at(committed) else {
            let detail = format!(
                "{} committed {committed} outside its log (base {}, last {})",
                n.id,
                n.view.base_index(),
                n.view.last_index()
            );
            self.violate("commit within log", detail);
            return;
        };
        let slot = committed.get() as usize;
        if slot == 0 {
            return;
        }
        if slot <= self.canon.len() {
            if let Some(known) = self.canon[slot - 1] {
                if known != hash {
                    let detail = format!(
                        "{} committed a different entry at {committed} than was committed before",
                        n.id
                    );
                    self.violate("state machine safety", detail);
                }
            } else {
                self.canon[slot - 1] = Some(hash);
            }
            return;
        }
        // Extend the committed log with this node's entries, after checking it agrees with
        // what was committed so far.
        let last = LogIndex(self.canon.len() as u64);
        if let Some(Some(known)) = self.canon.last().copied() {
            if n.view.base_index() <= last && n.view.hash_at(last) != Some(known) {
                let detail = format!(
                    "{} committed {committed} on a log that disagrees with committed entry {last}",
                    n.id
                );
                self.violate("state machine safety", detail);
                return;
            }
        }
        let mut index = last.next();
        while index <= committed {
            let h = n.view.hash_at(index);
            self.canon.push(h);
            index = index.next();
        }
    }

    /// Nothing commits unless a quorum of every configuration in force stores it durably.
    fn check_commit_quorum(&mut self, node: usize, committed: LogIndex) {
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else {
            return;
        };
        let Some(hash) = n.view.hash_at(committed) else {
            return;
        };
        let configuration = raft.configuration().clone();
        let stored = |peer: &PeerId| -> bool {
            self.index_of.get(peer).is_some_and(|&i| {
                let d = &self.nodes[i].durable;
                d.hash_at(committed) == Some(hash) || d.base_index() >= committed
            })
        };
        let halves = std::iter::once(&configuration.voters).chain(configuration.old_voters.iter());
        for voters in halves {
            let count = voters.iter().filter(|p| stored(p)).count();
            if count < voters.len() / 2 + 1 {
                let detail = format!(
                    "{} committed {committed} stored durably on {count} of voters {voters:?}",
                    n.id
                );
                self.violate("commit needs a quorum", detail);
                return;
            }
        }
    }

    /// Raft paper §5.4.2: a leader advances its commit index only to an entry of its own
    /// term; earlier entries commit indirectly.
    fn check_commit_term(&mut self, node: usize, committed: LogIndex, term: Term) {
        let n = &self.nodes[node];
        let entry_term = n.view.term_at(committed);
        if entry_term.is_some_and(|t| t != term) {
            let detail = format!(
                "leader {} of term {term} committed {committed} of term {:?} by counting",
                n.id, entry_term
            );
            self.violate("leader commits only its own term", detail);
        }
    }

    // ----- liveness probe ----------------------------------------------------------------

    fn tick_probe(&mut self, node: usize) {
        if self.healed_at.is_none() || self.recovered_at.is_some() {
            return;
        }
        if let Some((p, index, term)) = self.probe {
            let pending = self.nodes[p]
                .proposals
                .get(&index)
                .is_some_and(|(t, _)| *t == term);
            let still_leading = self.nodes[p]
                .raft
                .as_ref()
                .is_some_and(|r| r.term() == term && r.role() == Role::Leader);
            if pending && still_leading {
                return;
            }
        }
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        if raft.role() != Role::Leader {
            return;
        }
        let command = Command {
            op_id: 0,
            key: PROBE_KEY,
            kind: CommandKind::Write(0),
        };
        if let Ok((index, term)) = raft.propose(command.encode(), None) {
            let request = Request {
                client: usize::MAX,
                op_id: 0,
            };
            n.proposals.insert(index, (term, request));
            self.probe = Some((node, index, term));
            self.process(node);
        }
    }

    // ----- clients -----------------------------------------------------------------------

    fn client_wake(&mut self, client: usize, deadline_of: Option<u64>) {
        match (self.clients[client].op.clone(), deadline_of) {
            (None, None) => self.start_op(client),
            (Some(op), Some(op_id)) if op.op_id == op_id => {
                // The client gives up: a read tells nothing, a write may or may not happen.
                self.clients[client].op = None;
                let outcome = match op.kind {
                    OpKind::Read => OpOutcome::Failed,
                    _ => OpOutcome::Indeterminate,
                };
                self.record(client, &op, outcome);
                self.start_op(client);
            }
            _ => {} // a stale wake-up: the operation it was for already finished
        }
    }

    fn start_op(&mut self, client: usize) {
        if self.now < self.quiet_until {
            let resume = self.quiet_until - self.now + self.rng.below(2_000);
            self.schedule(resume, EventKind::ClientWake(client, None));
            return;
        }
        let op_id = self.next_op;
        self.next_op += 1;
        let key = self.rng.below(self.config.keys);
        let kind = match self.rng.below(100) {
            0..=39 => OpKind::Read,
            40..=74 => OpKind::Write(op_id),
            _ => {
                let expected = self.clients[client].last_seen.get(&key).copied().flatten();
                OpKind::Cas {
                    expected,
                    new: op_id,
                }
            }
        };
        let op = ClientOp {
            op_id,
            key,
            kind,
            invoke: self.now,
        };
        let node = if self.rng.below(100) < 70 {
            self.clients[client].preferred
        } else {
            self.rng.below(self.nodes.len() as u64) as usize
        };
        self.clients[client].op = Some(op.clone());
        self.schedule(30 * TICK, EventKind::ClientWake(client, Some(op_id)));
        let n = &mut self.nodes[node];
        if n.paused && n.raft.is_some() {
            // The request waits in the stopped process's socket.
            n.queued_requests.push((client, op));
            return;
        }
        self.submit(node, client, &op);
    }

    /// Hands a client's request to a node's core.
    fn submit(&mut self, node: usize, client: usize, op: &ClientOp) {
        let was_hibernating = self.is_hibernating(node);
        self.submit_to_core(node, client, op);
        self.note_woken(node, was_hibernating, None);
    }

    fn submit_to_core(&mut self, node: usize, client: usize, op: &ClientOp) {
        let request = Request {
            client,
            op_id: op.op_id,
        };
        let SimNode {
            raft,
            proposals,
            reads,
            ..
        } = &mut self.nodes[node];
        let accepted = match raft.as_mut() {
            None => Err(RaftError::ShutDown),
            Some(raft) => match &op.kind {
                OpKind::Read => raft.read(op.op_id, read_mode(op.op_id)).map(|()| {
                    reads.insert(op.op_id, request);
                }),
                OpKind::Write(v) => {
                    let kind = CommandKind::Write(*v);
                    propose(raft, proposals, op.op_id, op.key, kind, request)
                }
                OpKind::Cas { expected, new } => {
                    let kind = CommandKind::Cas {
                        expected: *expected,
                        new: *new,
                    };
                    propose(raft, proposals, op.op_id, op.key, kind, request)
                }
            },
        };
        match accepted {
            Ok(()) => self.process(node),
            Err(error) => {
                // Refused before anything was proposed: a definite failure. Follow the
                // leader hint if there is one, else try another node next time.
                let hinted = match &error {
                    RaftError::NotLeader { leader: Some(l) } => self.index_of.get(l).copied(),
                    _ => None,
                };
                self.complete_op(client, op.op_id, OpOutcome::Failed);
                if let Some(leader) = hinted {
                    self.clients[client].preferred = leader;
                }
            }
        }
    }

    fn complete_read(&mut self, node: usize, read_id: u64, ok: bool) {
        let Some(request) = self.nodes[node].reads.remove(&read_id) else {
            return;
        };
        let outcome = if ok {
            let Some(op) = self.clients[request.client].op.as_ref() else {
                return;
            };
            if op.op_id != request.op_id {
                return;
            }
            OpOutcome::ReadOk(self.nodes[node].kv.get(op.key))
        } else {
            OpOutcome::Failed
        };
        self.complete_op(request.client, request.op_id, outcome);
    }

    fn complete_op(&mut self, client: usize, op_id: u64, outcome: OpOutcome) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(op) = c.op.clone().filter(|op| op.op_id == op_id) else {
            return;
        };
        c.op = None;
        match (&op.kind, &outcome) {
            (_, OpOutcome::ReadOk(v)) => {
                c.last_seen.insert(op.key, *v);
            }
            (OpKind::Write(v), OpOutcome::WriteOk) => {
                c.last_seen.insert(op.key, Some(*v));
            }
            (OpKind::Cas { new, .. }, OpOutcome::CasOk(true)) => {
                c.last_seen.insert(op.key, Some(*new));
            }
            (_, OpOutcome::Failed) => {
                c.preferred = self.rng.below(self.nodes.len() as u64) as usize;
            }
            _ => {}
        }
        self.record(client, &op, outcome);
        let think = self.rng.below(60);
        self.schedule(think, EventKind::ClientWake(client, None));
    }

    fn record(&mut self, client: usize, op: &ClientOp, outcome: OpOutcome) {
        let what = match (&op.kind, &outcome) {
            (_, OpOutcome::Indeterminate) => "ops indeterminate",
            (_, OpOutcome::Failed) => "ops failed",
            (OpKind::Read, _) if read_mode(op.op_id) == ReadMode::Lease => "lease reads ok",
            (OpKind::Read, _) => "read-index reads ok",
            (OpKind::Write(_), _) => "writes ok",
            (OpKind::Cas { .. }, _) => "cas ok",
        };
        self.count(what);
        self.history.push(Operation {
            client: client as u64,
            key: op.key,
            kind: op.kind.clone(),
            invoke: op.invoke,
            complete: self.now,
            outcome,
        });
    }

    // ----- nemesis -----------------------------------------------------------------------

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_live())
            .filter_map(|(i, n)| n.raft.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(i, _)| i)
    }

    fn nemesis(&mut self) {
        let n = self.nodes.len();
        match self.rng.below(100) {
            0..=24 => {
                let kind = match self.rng.below(6) {
                    0 => PartitionKind::Halves,
                    1 => PartitionKind::Bridge,
                    2 => PartitionKind::MajorityRing,
                    3 => PartitionKind::OneWay,
                    4 => PartitionKind::Isolate(self.leader().unwrap_or(0)),
                    _ => PartitionKind::Isolate(self.rng.below(n as u64) as usize),
                };
                let text = self.network.partition(kind, n, &mut self.rng);
                self.note(text);
                self.count("partitions");
                let heal = 1_000 + self.rng.below(5_000);
                self.schedule(heal, EventKind::HealNetwork);
            }
            25..=39 => {
                let victims = 1 + self.rng.below(n.div_ceil(2) as u64) as usize;
                let mut order: Vec<usize> = (0..n).collect();
                shuffle(&mut order, &mut self.rng);
                for &victim in order.iter().take(victims) {
                    if self.nodes[victim].raft.is_some() {
                        self.note(format!("crash {}", self.nodes[victim].id));
                        self.count("crashes");
                        self.crash_node(victim);
                        let back = 500 + self.rng.below(5_000);
                        self.schedule(back, EventKind::Restart(victim));
                    }
                }
            }
            40..=51 => {
                let victim = if self.rng.below(2) == 0 {
                    self.leader().unwrap_or(0)
                } else {
                    self.rng.below(n as u64) as usize
                };
                if self.nodes[victim].is_live() {
                    self.note(format!("pause {}", self.nodes[victim].id));
                    self.count("pauses");
                    self.nodes[victim].paused = true;
                    let back = 200 + self.rng.below(4_000);
                    self.schedule(back, EventKind::Resume(victim));
                }
            }
            52..=61 => self.nemesis_transfer(),
            62..=79 => self.nemesis_membership(),
            80..=89 => {
                let node = self.rng.below(n as u64) as usize;
                if self.nodes[node].is_live() {
                    self.note(format!("snapshot on {}", self.nodes[node].id));
                    self.take_snapshot(node);
                }
            }
            _ => {
                self.net.loss_percent = self.rng.below(15);
                self.net.duplicate_percent = self.rng.below(10);
                let text = format!(
                    "network loss {}% duplication {}%",
                    self.net.loss_percent, self.net.duplicate_percent
                );
                self.note(text);
            }
        }
    }

    /// With hibernation: now and then, cut off a leader that hibernates and let the
    /// clients loose soon after, so that the others elect and write while the old leader
    /// still sleeps believing it leads — the case where a lease kept across hibernation
    /// would serve stale reads. Returns true if it struck.
    fn nemesis_sleeping_leader(&mut self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let sleeping = self.nodes[leader]
            .raft
            .as_ref()
            .is_some_and(Raft::is_hibernating);
        if !sleeping || self.rng.below(2) != 0 {
            return false;
        }
        let n = self.nodes.len();
        let text = self
            .network
            .partition(PartitionKind::Isolate(leader), n, &mut self.rng);
        self.note(format!("hibernating leader cut off: {text}"));
        self.count("hibernating leaders cut off");
        let heal = 3_000 + self.rng.below(6_000);
        self.schedule(heal, EventKind::HealNetwork);
        self.quiet_until = self.now + 1_500 + self.rng.below(1_500);
        true
    }

    fn nemesis_transfer(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let target = if self.rng.below(2) == 0 {
            None
        } else {
            let pick = self.rng.below(self.nodes.len() as u64) as usize;
            Some(self.nodes[pick].id.clone())
        };
        let Some(raft) = self.nodes[leader].raft.as_mut() else {
            return;
        };
        let result = raft.transfer_leadership(target.clone());
        let id = self.nodes[leader].id.clone();
        self.note(format!("transfer {id} -> {target:?}: {result:?}"));
        self.process(leader);
    }

    fn nemesis_membership(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let all: Vec<PeerId> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let pick = self.rng.below(all.len() as u64) as usize;
        let peer = all[pick].clone();
        let choice = self.rng.below(5);
        let Some(raft) = self.nodes[leader].raft.as_mut() else {
            return;
        };
        let configuration = raft.configuration().clone();
        let (what, result) = match choice {
            0 if configuration.voters.len() > 2 && configuration.voters.contains(&peer) => {
                ("remove", raft.remove_peer(&peer))
            }
            1 if !configuration.contains(&peer) => ("add", raft.add_peer(peer.clone())),
            2 if !configuration.contains(&peer) => (
                "add learner",
                raft.add_learners(std::slice::from_ref(&peer)),
            ),
            3 if configuration.is_learner(&peer) => ("promote", raft.promote_learner(&peer)),
            4 => {
                // Any set containing a majority of the current voters plus some others.
                let mut voters: Vec<PeerId> = configuration.voters.iter().cloned().collect();
                shuffle(&mut voters, &mut self.rng);
                voters.truncate(configuration.voters.len() / 2 + 1);
                for p in &all {
                    if self.rng.below(3) == 0 && !voters.contains(p) {
                        voters.push(p.clone());
                    }
                }
                ("change", raft.change_peers(voters.into_iter().collect()))
            }
            _ => return,
        };
        let id = self.nodes[leader].id.clone();
        self.note(format!("membership {what} {peer} on {id}: {result:?}"));
        self.process(leader);
    }
}

/// Half the reads use ReadIndex, half the lease.
fn read_mode(op_id: u64) -> ReadMode {
    if op_id.is_multiple_of(2) {
        ReadMode::ReadIndex
    } else {
        ReadMode::Lease
    }
}

fn propose(
    raft: &mut Raft<SimStore>,
    proposals: &mut BTreeMap<LogIndex, (Term, Request)>,
    op_id: u64,
    key: u64,
    kind: CommandKind,
    request: Request,
) -> Result<(), RaftError> {
    let command = Command { op_id, key, kind };
    let (index, term) = raft.propose(command.encode(), None)?;
    proposals.insert(index, (term, request));
    Ok(())
}

/// Per-seed core options: small limits in some seeds so that message splitting, windows
/// and snapshots are exercised.
fn random_raft_config(rng: &mut Rng) -> Config {
    let mut config = Config::new(PeerId::new("template"));
    config.append_entries_max = [1, 3, 64, 1024][rng.below(4) as usize];
    config.append_bytes_max = [200, 4096, 512 * 1024][rng.below(3) as usize];
    config.inflight_msgs_max = [1, 4, 256][rng.below(3) as usize];
    config.snapshot_interval_ticks = [0, 30, 100][rng.below(3) as usize];
    config.snapshot_log_margin = [0, 20][rng.below(2) as usize];
    config.catchup_margin = [0, 10, 1000][rng.below(3) as usize];
    config.catchup_timeout_ticks = 20;
    config
}
