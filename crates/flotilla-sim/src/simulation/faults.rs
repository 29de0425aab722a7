//! The nemesis and the hostile outsider: partitions, crashes, pauses, clock skew, leadership
//! transfers and membership changes drawn from the seed while the fault phase lasts, the
//! heals that end it, and forged messages from a non-member. It injects faults only through
//! the simulated network, disk and process lifecycle; it must never reach into a core.

use flotilla_raft::{Echo, Entry, EntryPayload, Message, MessageBody, PeerId, Raft, Term};

use crate::kv::{Command, CommandKind};
use crate::network::{shuffle, PartitionKind};
use crate::node::{write_batch, Disk};

use super::{EventKind, Simulation};

/// The hostile outsider's name: no member has it.
const OUTSIDER: &str = "outsider";

impl Simulation {
    /// The outsider sends one well-formed message to a random live member, with a term a
    /// little ahead of the member's (it sniffed the traffic), from its own name.
    pub(super) fn outsider_strikes(&mut self) {
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

    pub(super) fn heal_all(&mut self) {
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

    /// Power loss on `node`: the core, its in-flight writes and its volatile state are
    /// lost. On the shared log, the write in flight sometimes reached the disk in part (a
    /// torn tail: a random strict prefix of its record survives, never the whole of it, since
    /// it was not acknowledged); otherwise the crash is clean.
    pub(super) fn crash_node(&mut self, node: usize) {
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

    pub(super) fn nemesis(&mut self) {
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
    pub(super) fn nemesis_sleeping_leader(&mut self) -> bool {
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

    pub(super) fn nemesis_transfer(&mut self) {
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

    pub(super) fn nemesis_membership(&mut self) {
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
