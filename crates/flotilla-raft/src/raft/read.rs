//! Linearizable reads: ReadIndex (thesis §6.4), lease reads (§6.4.1), and reads on
//! followers and learners through the leader (§6.4, "offloading reads").
//!
//! Owns: which reads wait for what. A read is answered only once the state machine applied
//! an index that the leader confirmed while it was still leader. Many reads share one
//! heartbeat round: reads that arrive before the next `ready` form one batch, as
//! SOFAJRaft's ReadOnlyService batches them. Must never: answer a ReadIndex read without a
//! quorum's confirmation, or a lease read when the lease is not valid.

use super::planted_bugs::Planted;
use super::read_state::{Pending, ReadOrigin, Round};
use super::Raft;
use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId};
use crate::log::LogStore;
use crate::message::{Echo, MessageBody};
use crate::quorum::quorum_value;
use crate::ready::{ReadMode, ReadResult};
use crate::types::Role;

impl<S: LogStore> Raft<S> {
    pub(super) fn start_read(&mut self, id: u64, mode: ReadMode) -> Result<(), RaftError> {
        let deadline = self.now + self.config.read_timeout_ticks;
        if self.role == Role::Leader {
            if mode == ReadMode::Lease && self.lease_valid() {
                let index = self.log.committed;
                self.wait_for_apply(id, index, deadline);
                return Ok(());
            }
            self.reads.unsent.push(Pending {
                origin: ReadOrigin::Local(id),
                deadline,
            });
            return Ok(());
        }
        match &self.leader {
            Some(leader) if *leader != self.id => {
                self.reads.unsent_remote.push((id, mode, deadline));
                Ok(())
            }
            _ => Err(RaftError::NotLeader { leader: None }),
        }
    }

    /// Tick at which the lease ends: the quorum's oldest confirmed send tick plus the lease;
    /// 0 (over) until a quorum confirmed a message sent since the leader last woke from
    /// hibernation.
    pub(super) fn lease_expiry(&self) -> u64 {
        let (me, now) = (&self.id, self.now);
        let confirmed = quorum_value(self.configurations.current(), |p| {
            if p == me {
                now
            } else {
                self.progress.get(p).map_or(0, |pr| pr.echoed_tick)
            }
        });
        if confirmed < self.lease_floor_tick {
            return 0;
        }
        confirmed.saturating_add(self.config.lease_ticks())
    }

    fn wait_for_apply(&mut self, id: u64, index: LogIndex, deadline: u64) {
        let applied = self.log.applied;
        if let Some(lag) = self.config.read_index_lag_max {
            if index.distance_from(applied) > lag {
                self.ready.reads.push(ReadResult {
                    id,
                    result: Err(RaftError::ReadLagging {
                        read_index: index,
                        applied,
                    }),
                });
                return;
            }
        }
        if applied >= index {
            self.ready.reads.push(ReadResult {
                id,
                result: Ok(index),
            });
        } else {
            self.reads.waiting_apply.push((id, index, deadline));
        }
    }

    pub(super) fn release_applied_reads(&mut self) {
        let applied = self.log.applied;
        let ready = &mut self.ready;
        self.reads.waiting_apply.retain(|(id, index, _)| {
            if *index <= applied {
                ready.reads.push(ReadResult {
                    id: *id,
                    result: Ok(*index),
                });
                false
            } else {
                true
            }
        });
    }

    /// Leader, at `ready`: one heartbeat round confirms every read queued since the last.
    pub(super) fn flush_reads_leader(&mut self) {
        if self.reads.unsent.is_empty() || !self.leader_started {
            return;
        }
        self.reads.read_seq += 1;
        let round = Round {
            seq: self.reads.read_seq,
            index: self.log.committed,
            reads: std::mem::take(&mut self.reads.unsent),
        };
        self.reads.rounds.push_back(round);
        if self.planted(Planted::ReadWithoutRound) {
            let rounds: Vec<Round> = self.reads.rounds.drain(..).collect();
            for round in rounds {
                self.answer_round(round);
            }
            return;
        }
        let echo = Echo {
            tick: self.now,
            read_seq: self.reads.read_seq,
        };
        let peers: Vec<PeerId> = self
            .configurations
            .current()
            .all_peers()
            .into_iter()
            .filter(|p| *p != self.id)
            .collect();
        for peer in peers {
            let commit = self
                .progress
                .get(&peer)
                .map_or(LogIndex::ZERO, |pr| pr.match_index.min(self.log.committed));
            let transfer_target = self.transfer.as_ref().map(|t| t.target.clone());
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit,
                    echo,
                    hibernate: false,
                    transfer_target,
                },
            );
        }
        self.confirm_read_rounds();
    }

    /// Answers every round a quorum has echoed.
    pub(super) fn confirm_read_rounds(&mut self) {
        if self.reads.rounds.is_empty() {
            return;
        }
        let configuration = self.quorum_configuration().into_owned();
        let (me, mine) = (&self.id, self.reads.read_seq);
        let acked = quorum_value(&configuration, |p| {
            if p == me {
                mine
            } else {
                self.progress.get(p).map_or(0, |pr| pr.echoed_read_seq)
            }
        });
        while self.reads.rounds.front().is_some_and(|r| r.seq <= acked) {
            let round = self.reads.rounds.pop_front().expect("front exists");
            self.answer_round(round);
        }
    }

    fn answer_round(&mut self, round: Round) {
        for pending in round.reads {
            match pending.origin {
                ReadOrigin::Local(id) => self.wait_for_apply(id, round.index, pending.deadline),
                ReadOrigin::Remote { peer, batch } => {
                    let result = Ok(round.index);
                    self.send(peer, MessageBody::ReadIndexResponse { batch, result });
                }
            }
        }
    }

    pub(super) fn handle_remote_read(&mut self, from: PeerId, batch: u64, lease: bool) {
        if lease && self.lease_valid() {
            let result = Ok(self.log.committed);
            self.send(from, MessageBody::ReadIndexResponse { batch, result });
            return;
        }
        let deadline = self.now + self.config.read_timeout_ticks;
        self.reads.unsent.push(Pending {
            origin: ReadOrigin::Remote { peer: from, batch },
            deadline,
        });
    }

    /// Follower, at `ready`: forward queued reads to the leader, one request per mode.
    pub(super) fn flush_reads_follower(&mut self) {
        if self.reads.unsent_remote.is_empty() {
            return;
        }
        let Some(leader) = self.leader.clone().filter(|l| *l != self.id) else {
            for (id, _, _) in std::mem::take(&mut self.reads.unsent_remote) {
                self.ready.reads.push(ReadResult {
                    id,
                    result: Err(RaftError::NotLeader { leader: None }),
                });
            }
            return;
        };
        let unsent = std::mem::take(&mut self.reads.unsent_remote);
        for mode in [ReadMode::ReadIndex, ReadMode::Lease] {
            let reads: Vec<(u64, u64)> = unsent
                .iter()
                .filter(|(_, m, _)| *m == mode)
                .map(|(id, _, deadline)| (*id, *deadline))
                .collect();
            if reads.is_empty() {
                continue;
            }
            self.reads.next_batch += 1;
            let batch = self.reads.next_batch;
            self.reads
                .remote_batches
                .insert(batch, (leader.clone(), reads));
            let lease = mode == ReadMode::Lease;
            self.send(
                leader.clone(),
                MessageBody::ReadIndexRequest { batch, lease },
            );
        }
    }

    pub(super) fn handle_read_index_response(
        &mut self,
        batch: u64,
        result: Result<LogIndex, RaftError>,
    ) {
        let Some((_, reads)) = self.reads.remote_batches.remove(&batch) else {
            return;
        };
        for (id, deadline) in reads {
            match &result {
                Ok(index) => self.wait_for_apply(id, *index, deadline),
                Err(e) => self.ready.reads.push(ReadResult {
                    id,
                    result: Err(e.clone()),
                }),
            }
        }
    }

    pub(super) fn start_reads_after_leader_start(&mut self) {
        // Reads queued before the first commit of this term go out at the next `ready`.
        debug_assert!(self.leader_started);
    }

    /// Fails reads whose deadline passed.
    pub(super) fn tick_reads(&mut self) {
        let now = self.now;
        let timed_out = |what: &str| RaftError::TimedOut(format!("read {what}"));
        let mut failed: Vec<u64> = Vec::new();
        let mut keep = |p: &Pending| {
            if p.deadline > now {
                return true;
            }
            if let ReadOrigin::Local(id) = p.origin {
                failed.push(id);
            }
            false
        };
        self.reads.unsent.retain(&mut keep);
        for round in &mut self.reads.rounds {
            round.reads.retain(&mut keep);
        }
        self.reads.rounds.retain(|r| !r.reads.is_empty());
        self.reads.waiting_apply.retain(|(id, _, deadline)| {
            if *deadline > now {
                return true;
            }
            failed.push(*id);
            false
        });
        self.reads.unsent_remote.retain(|(id, _, deadline)| {
            if *deadline > now {
                return true;
            }
            failed.push(*id);
            false
        });
        for (_, reads) in self.reads.remote_batches.values_mut() {
            reads.retain(|(id, deadline)| {
                if *deadline > now {
                    return true;
                }
                failed.push(*id);
                false
            });
        }
        self.reads
            .remote_batches
            .retain(|_, (_, reads)| !reads.is_empty());
        for id in failed {
            self.ready.reads.push(ReadResult {
                id,
                result: Err(timed_out("deadline passed")),
            });
        }
    }
}
