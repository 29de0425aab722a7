//! One seeded simulation run: a cluster of cores, a simulated disk and network, a nemesis
//! injecting faults, a client workload, and safety checks after every step.
//!
//! Owns: the event loop and the order of everything, which depends only on the seed, so a
//! failing seed replays exactly. Must never: read a clock, use unseeded randomness, or
//! iterate a hash map (its order is not deterministic).
//!
//! The run is cut by what each part owns: `config` (what to simulate), `nodes` (driving the
//! cores and the simulated disk), `hibernation` (the runtime's liveness beacons and wakes),
//! `faults` (the nemesis and the outsider), `client` and `workload` (clients, the history,
//! the liveness probe), `invariants` (the checks after every step) and `report` (the trace,
//! the stats and the end-of-run linearizability check). This file owns the event queue and
//! the dispatch of every event, the one place that decides what happens next.

mod client;
mod config;
mod faults;
mod hibernation;
mod invariants;
mod nodes;
mod outcome;
mod report;
mod workload;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use flotilla_linearizability::Operation;
use flotilla_raft::{
    Config, Configuration, LogIndex, MemStorage, Message, PeerId, Priority, Rng, Role,
    SnapshotMeta, Term,
};
use flotilla_storage::LogOptions;

use crate::network::{Network, NetworkConfig};
use crate::node::{Disk, SharedDisk, SimNode};

use self::client::Client;
use self::config::random_raft_config;

pub use self::client::ClientOp;
pub use self::config::{SimConfig, StorageMode, CLOCK_DRIFT_PERCENT, SIM_SEGMENT_BYTES, TICK};
pub use self::outcome::{SeedReport, Violation};

/// What happens at a scheduled instant.
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

/// An event in the queue, ordered by time and then by scheduling order (`seq`), so that the
/// order never depends on anything but the seed.
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

    fn schedule(&mut self, delay: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            kind,
        });
    }

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
}
