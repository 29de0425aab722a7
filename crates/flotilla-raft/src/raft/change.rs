//! Membership changes by joint consensus (paper §6) with a catch-up stage (thesis §4.2.1),
//! and leadership transfer (thesis §3.10).
//!
//! Owns: the stages of a change on the leader — catch up new voters, append C(old,new),
//! append C(new) once the joint entry commits, finish (or hand off leadership if this
//! leader was removed) once C(new) commits — and the transfer handshake. Must never: start
//! a second change while one is in progress, or accept writes while transferring.

use std::collections::BTreeSet;

use super::change_state::{ChangeStage, MembershipChange, Transfer};
use super::Raft;
use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Priority};
use crate::log::LogStore;
use crate::membership::Configuration;
use crate::message::MessageBody;
use crate::progress::ProgressState;
use crate::ready::Event;
use crate::types::{Entry, EntryPayload, Role};

impl<S: LogStore> Raft<S> {
    /// Changes the configuration to `target` (voters, learners, priorities) through joint
    /// consensus. The outcome arrives as [`Event::MembershipChangeFinished`].
    ///
    /// Strict, as etcd's strict reconfiguration check: a change that would leave the group
    /// without a majority of live voters (see [`Raft::check_live_quorum`]) is refused;
    /// [`Raft::change_configuration_forced`] skips that check.
    pub fn change_configuration(&mut self, target: Configuration) -> Result<(), RaftError> {
        self.change_configuration_with(target, false)
    }

    /// [`Raft::change_configuration`] without the live-quorum check: for an operator who
    /// knows a voter counted as down will return.
    pub fn change_configuration_forced(&mut self, target: Configuration) -> Result<(), RaftError> {
        self.change_configuration_with(target, true)
    }

    /// A change whose target would have fewer live voters than its majority. New voters
    /// count as live (they must catch up before the change is made, which proves it);
    /// a voter kept from the current configuration counts if the leader heard it within
    /// an election timeout ([`Raft::alive_peers`]; right after an election or waking from
    /// hibernation every peer counts until that window passes).
    pub fn check_live_quorum(&self, target: &Configuration) -> Result<(), RaftError> {
        self.check_live_quorum_with(&target.voters, &|_| true)
    }

    /// [`Raft::check_live_quorum`] for the voters `target`, where a kept voter must also be
    /// live by the driver's judgement (`driver_live`: the runtime's liveness of processes,
    /// which keeps counting while the group hibernates, when this core has heard no one).
    pub fn check_live_quorum_with(
        &self,
        target: &BTreeSet<PeerId>,
        driver_live: &dyn Fn(&PeerId) -> bool,
    ) -> Result<(), RaftError> {
        let current = self.configurations.current();
        if *target == current.voters {
            return Ok(());
        }
        let is_down = |v: &PeerId| {
            current.is_voter(v)
                && *v != self.id
                && !(driver_live(v) && self.alive_peers_iter().any(|a| a == v))
        };
        let down: Vec<&PeerId> = target.iter().filter(|v| is_down(v)).collect();
        let live = target.len() - down.len();
        let needed = target.len() / 2 + 1;
        if live < needed {
            return Err(RaftError::InvalidArgument(format!(
                "the change would leave {live} live voters of {}, fewer than the majority of \
                 {needed} (not heard within an election timeout: {down:?}); force it only if \
                 they will return",
                target.len()
            )));
        }
        Ok(())
    }

    fn change_configuration_with(
        &mut self,
        target: Configuration,
        force: bool,
    ) -> Result<(), RaftError> {
        self.wake();
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        target.validate_target()?;
        if let Some(transfer) = &self.transfer {
            return Err(RaftError::Transferring {
                target: transfer.target.clone(),
            });
        }
        let current = self.configurations.current().clone();
        if self.change.is_some() || current.is_joint() {
            return Err(RaftError::Busy(
                "another configuration change is in progress".into(),
            ));
        }
        if !self.leader_started {
            return Err(RaftError::Busy(
                "leader has not committed an entry of its term".into(),
            ));
        }
        if self.configurations.current_index() > self.log.committed {
            return Err(RaftError::Busy(
                "the previous configuration has not committed".into(),
            ));
        }
        if !force {
            self.check_live_quorum(&target)?;
        }
        if target == current {
            self.ready.events.push(Event::MembershipChangeFinished {
                result: Ok(current),
            });
            return Ok(());
        }
        // A peer that already receives the log (a learner being promoted) may be caught up
        // already; in an idle group its match index would never move to say so.
        let new_voters: BTreeSet<PeerId> = target
            .voters
            .difference(&current.voters)
            .filter(|peer| !self.is_caught_up(peer))
            .cloned()
            .collect();
        self.change = Some(MembershipChange {
            target,
            stage: ChangeStage::CatchingUp { peers: new_voters },
        });
        self.sync_progress();
        let now = self.now;
        if let Some(change) = &self.change {
            for peer in change.catching_up() {
                if let Some(pr) = self.progress.get_mut(peer) {
                    pr.last_progress_tick = now;
                }
            }
        }
        self.advance_change();
        self.append_pending = true;
        Ok(())
    }

    /// Adds `peer` as a voter (it catches up first).
    pub fn add_peer(&mut self, peer: PeerId) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        target.learners.remove(&peer);
        target.voters.insert(peer);
        self.change_configuration(target)
    }

    /// Removes `peer` (voter or learner). Removing the leader hands leadership off once the
    /// change commits.
    pub fn remove_peer(&mut self, peer: &PeerId) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        if !target.voters.remove(peer) && !target.learners.remove(peer) {
            return Err(RaftError::InvalidArgument(format!(
                "peer {peer} is not in the group"
            )));
        }
        target.priorities.remove(peer);
        self.change_configuration(target)
    }

    /// Replaces the voters with `voters`, keeping learners that do not become voters.
    pub fn change_peers(&mut self, voters: BTreeSet<PeerId>) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        target.learners.retain(|l| !voters.contains(l));
        target.voters = voters;
        self.change_configuration(target)
    }

    /// [`Raft::change_peers`] without the strict reconfiguration check.
    pub fn change_peers_forced(&mut self, voters: BTreeSet<PeerId>) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        target.learners.retain(|l| !voters.contains(l));
        target.voters = voters;
        self.change_configuration_forced(target)
    }

    /// Adds learners.
    pub fn add_learners(&mut self, learners: &[PeerId]) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        for learner in learners {
            if target.voters.contains(learner) {
                return Err(RaftError::InvalidArgument(format!(
                    "peer {learner} is already a voter"
                )));
            }
            target.learners.insert(learner.clone());
        }
        self.change_configuration(target)
    }

    /// Removes learners.
    pub fn remove_learners(&mut self, learners: &[PeerId]) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        for learner in learners {
            if !target.learners.remove(learner) {
                return Err(RaftError::InvalidArgument(format!(
                    "peer {learner} is not a learner"
                )));
            }
        }
        self.change_configuration(target)
    }

    /// Replaces the learners.
    pub fn reset_learners(&mut self, learners: BTreeSet<PeerId>) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        if let Some(voter) = learners.intersection(&target.voters).next() {
            return Err(RaftError::InvalidArgument(format!(
                "peer {voter} is a voter"
            )));
        }
        target.learners = learners;
        self.change_configuration(target)
    }

    /// Promotes a learner to voter.
    pub fn promote_learner(&mut self, learner: &PeerId) -> Result<(), RaftError> {
        let mut target = self.configurations.current().leave_joint();
        if !target.learners.remove(learner) {
            return Err(RaftError::InvalidArgument(format!(
                "peer {learner} is not a learner"
            )));
        }
        target.voters.insert(learner.clone());
        self.change_configuration(target)
    }

    fn append_configuration(&mut self, configuration: Configuration) -> LogIndex {
        // One change at a time: the configuration in force is committed before the next is
        // proposed (C_old,new commits before C_new follows it), and only a leader proposes
        // a configuration, and only a valid one.
        debug_assert_eq!(
            self.role,
            Role::Leader,
            "only a leader appends a configuration"
        );
        debug_assert!(
            self.configurations.current_index() <= self.log.committed,
            "a configuration appended while the one at {} is uncommitted (commit {})",
            self.configurations.current_index(),
            self.log.committed
        );
        debug_assert!(
            configuration.validate().is_ok(),
            "an invalid configuration appended: {configuration:?}"
        );
        let index = self.log.last_index().next();
        self.configurations.push(index, configuration.clone());
        let entry = Entry {
            index,
            term: self.term,
            payload: EntryPayload::Configuration(configuration),
        };
        self.count_uncommitted(index, entry.size_bytes());
        self.log.append_one(entry);
        self.append_pending = true;
        self.target_priority = self.configurations.current().max_voter_priority();
        self.sync_progress();
        index
    }

    /// Moves a change (or a joint configuration inherited from a previous leader) forward.
    pub(super) fn advance_change(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let committed = self.log.committed;
        let current = self.configurations.current().clone();
        let current_index = self.configurations.current_index();
        // A committed joint configuration is always followed by the final one (paper §6),
        // whether this leader started the change or inherited it.
        if current.is_joint() && current_index <= committed && self.leader_started {
            let index = self.append_configuration(current.leave_joint());
            if let Some(change) = &mut self.change {
                change.stage = ChangeStage::Final { index };
            }
            return;
        }
        let Some(change) = &self.change else {
            return;
        };
        match &change.stage {
            ChangeStage::CatchingUp { peers } if peers.is_empty() => {
                let target = change.target.clone();
                let next = if target.voters == current.voters {
                    target // learners or priorities only: no joint stage needed
                } else {
                    Configuration {
                        old_voters: Some(current.voters.clone()),
                        ..target
                    }
                };
                let joint = next.is_joint();
                let index = self.append_configuration(next);
                if let Some(change) = &mut self.change {
                    change.stage = if joint {
                        ChangeStage::Joint { index }
                    } else {
                        ChangeStage::Final { index }
                    };
                }
            }
            ChangeStage::Final { index } if *index <= committed => {
                self.change = None;
                self.ready.events.push(Event::MembershipChangeFinished {
                    result: Ok(current.clone()),
                });
            }
            _ => {}
        }
        // A leader outside the committed configuration hands off, whether it made the change
        // or inherited it from the leader before it.
        let final_committed = !current.is_joint() && current_index <= committed;
        if self.role == Role::Leader
            && self.change.is_none()
            && final_committed
            && self.leader_started
            && !current.is_voter(&self.id)
        {
            self.hand_off_after_removal();
        }
    }

    /// The leader was removed and the change committed: wake the most up-to-date remaining
    /// voter with TimeoutNow and step down (thesis §4.2.2, SOFAJRaft).
    fn hand_off_after_removal(&mut self) {
        let successor = self.most_up_to_date_voter();
        let term = self.term;
        if let Some(successor) = successor {
            // Announce the successor first: voters grant a transfer's vote despite a live
            // leader only to the target their leader named.
            self.transfer = Some(Transfer {
                target: successor.clone(),
                deadline: self.now + self.config.transfer_timeout_ticks,
                timeout_now_sent: true,
            });
            self.broadcast_heartbeat();
            self.transfer = None;
            self.send(successor, MessageBody::TimeoutNow);
        }
        self.become_follower(term, None);
    }

    /// The voter (other than this leader) with the highest match index that may lead.
    fn most_up_to_date_voter(&self) -> Option<PeerId> {
        let configuration = self.configurations.current();
        self.progress
            .iter()
            .filter(|(p, _)| **p != self.id && configuration.voters.contains(*p))
            .filter(|(p, _)| configuration.priority(p) != Priority::NEVER)
            .max_by_key(|(_, pr)| pr.match_index)
            .map(|(p, _)| p.clone())
    }

    /// A new voter is caught up once it acknowledged entries (a match index only ever comes
    /// from an acknowledgement, and a new peer starts at zero) within `catchup_margin` of the
    /// leader's last index (SOFAJRaft: 1000 entries).
    fn is_caught_up(&self, peer: &PeerId) -> bool {
        let last = self.log.last_index();
        self.progress.get(peer).is_some_and(|pr| {
            pr.match_index > LogIndex::ZERO
                && pr.match_index.plus(self.config.catchup_margin) >= last
        })
    }

    /// A peer's match index advanced: it may have caught up for a change, or for a transfer.
    pub(super) fn on_peer_progress(&mut self, peer: &PeerId) {
        let last = self.log.last_index();
        let Some(matched) = self.progress.get(peer).map(|pr| pr.match_index) else {
            return;
        };
        let margin = self.config.catchup_margin;
        let mut caught_up = false;
        if let Some(MembershipChange {
            stage: ChangeStage::CatchingUp { peers },
            ..
        }) = &mut self.change
        {
            if peers.contains(peer) && matched.plus(margin) >= last {
                peers.remove(peer);
                caught_up = peers.is_empty();
            }
        }
        if caught_up {
            self.advance_change();
        }
        let transfer_ready = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target == *peer && !t.timeout_now_sent && matched >= last);
        if transfer_ready {
            self.send_timeout_now();
        }
    }

    /// Fails a change whose catching-up peer made no progress within the deadline.
    pub(super) fn tick_change(&mut self) {
        let Some(MembershipChange {
            stage: ChangeStage::CatchingUp { peers },
            ..
        }) = &self.change
        else {
            return;
        };
        // Peers that were caught up already when nothing new was being written.
        let done: Vec<PeerId> = peers
            .iter()
            .filter(|p| self.is_caught_up(p))
            .cloned()
            .collect();
        if !done.is_empty() {
            if let Some(MembershipChange {
                stage: ChangeStage::CatchingUp { peers },
                ..
            }) = &mut self.change
            {
                for peer in &done {
                    peers.remove(peer);
                }
            }
            self.advance_change();
            return;
        }
        // A peer receiving a snapshot gets the snapshot's deadline, not the catch-up one:
        // a big state machine would otherwise never let a voter join.
        let (catchup, snapshot) = (
            self.config.catchup_timeout_ticks,
            self.config.snapshot_install_timeout_ticks,
        );
        let stuck = peers.iter().find(|p| {
            self.progress.get(*p).is_some_and(|pr| match pr.state {
                ProgressState::Snapshot { since_tick, .. } => since_tick + snapshot <= self.now,
                _ => pr.last_progress_tick + catchup <= self.now,
            })
        });
        if let Some(peer) = stuck.cloned() {
            if let Some(change) = self.change.take() {
                change.fail(RaftError::CatchUpFailed { peer }, &mut self.ready);
            }
            self.sync_progress();
        }
    }

    /// Transfers leadership to `target`, or to the most up-to-date voter when `None`. The
    /// leader refuses writes until the transfer ends; the outcome arrives as
    /// [`Event::TransferFinished`]. Returns the chosen target.
    pub fn transfer_leadership(&mut self, target: Option<PeerId>) -> Result<PeerId, RaftError> {
        self.wake();
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if let Some(transfer) = &self.transfer {
            return Err(RaftError::Transferring {
                target: transfer.target.clone(),
            });
        }
        if self.change.is_some() || self.configurations.current().is_joint() {
            return Err(RaftError::Busy(
                "a configuration change is in progress".into(),
            ));
        }
        let target = match target {
            Some(t) => t,
            None => self.most_up_to_date_voter().ok_or_else(|| {
                RaftError::InvalidArgument("no other voter to transfer leadership to".into())
            })?,
        };
        if target == self.id {
            return Ok(target);
        }
        if !self.configurations.current().voters.contains(&target) {
            return Err(RaftError::InvalidArgument(format!(
                "transfer target {target} is not a voter"
            )));
        }
        if self.configurations.current().priority(&target) == Priority::NEVER {
            return Err(RaftError::InvalidArgument(format!(
                "transfer target {target} has priority 0 and never leads"
            )));
        }
        self.transfer = Some(Transfer {
            target: target.clone(),
            deadline: self.now + self.config.transfer_timeout_ticks,
            timeout_now_sent: false,
        });
        // Tell every voter whom it may vote for despite this live leader, before the
        // target is told to campaign.
        self.broadcast_heartbeat();
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|pr| pr.match_index >= self.log.last_index());
        if caught_up {
            self.send_timeout_now();
        } else {
            self.send_append(&target, false);
        }
        Ok(target)
    }

    fn send_timeout_now(&mut self) {
        // The target will campaign without waiting for the vote guard, so from now on no
        // lease of this term can be trusted (even if the transfer later times out).
        self.lease_disabled = true;
        if let Some(transfer) = &mut self.transfer {
            transfer.timeout_now_sent = true;
            let target = transfer.target.clone();
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    /// Abandons a transfer that did not complete in time; the leader resumes.
    pub(super) fn tick_transfer(&mut self) {
        let expired = self
            .transfer
            .as_ref()
            .is_some_and(|t| self.now >= t.deadline);
        if !expired {
            return;
        }
        if let Some(transfer) = self.transfer.take() {
            self.ready.events.push(Event::TransferFinished {
                target: transfer.target.clone(),
                result: Err(RaftError::TimedOut(format!(
                    "leadership transfer to {}",
                    transfer.target
                ))),
            });
        }
    }
}
