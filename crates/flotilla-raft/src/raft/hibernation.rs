//! Hibernation of idle groups (docs/DESIGN.md, "Idle groups cost nothing"; TiKV's hibernate
//! regions are the model).
//!
//! Owns: when a leader and its followers stop ticking, and how they wake. A leader that has
//! had nothing to do for `Config::hibernate_idle_ticks` ticks sends one heartbeat marked
//! `hibernate` and then nothing. A follower whose log ends exactly where that heartbeat says
//! hibernates too: it does not answer, its election timer stands still, and it keeps
//! refusing votes (it still counts as hearing its leader). Anything that needs the group — a
//! proposal, a read, a membership change, a transfer, a message — wakes the peer it reaches:
//!
//! - a leader wakes with a fresh tick. Its clock stood still while it hibernated, so no echo
//!   of a message sent before counts toward its lease: reads are safe again only after a
//!   quorum answered a message sent since (a heartbeat it sends at once, or a ReadIndex
//!   round). Its check-quorum window restarts, so it does not step down for a silence it
//!   asked for.
//! - a follower restarts its election timer and vote guard as if it had just heard the
//!   leader (it was not told otherwise) and, unless the leader's own message woke it,
//!   answers the leader's hibernate heartbeat, which wakes the leader. So a follower never
//!   times out on a leader that is merely asleep.
//!
//! Liveness when the leader is gone belongs to the driver, which alone sees processes and
//! wall-clock time: it calls [`Raft::wake_and_campaign`] on a hibernating follower whose
//! leader's process went silent for an election timeout or restarted.
//!
//! Must never: hibernate a leader with anything in flight or unapplied, extend a lease with
//! echoes from before the leader's last wake, or let a follower campaign because its leader
//! is deliberately silent. Raft's safety does not depend on any of this: a hibernate mark
//! only stops timers, and a peer that misses one simply stays awake.

use super::planted_bugs::Planted;
use super::Raft;
use crate::ids::{LogIndex, PeerId, Term};
use crate::log::LogStore;
use crate::message::{Echo, Message, MessageBody};
use crate::progress::ProgressState;
use crate::types::Role;

impl<S: LogStore> Raft<S> {
    /// True while this peer hibernates: it sends nothing on its own and its timers stand
    /// still, so the driver need not tick it (ticks are harmless: they are only counted).
    /// It wakes by itself on any input that needs it; see the module documentation of
    /// `raft::hibernation` for the protocol.
    #[must_use]
    pub fn is_hibernating(&self) -> bool {
        self.hibernating
    }

    /// Wakes this peer if it hibernates (the driver's "something needs this group": a
    /// snapshot request, say). Proposals, reads, membership changes, transfers and
    /// messages wake it without this call.
    pub fn wake(&mut self) {
        if self.hibernating {
            self.wake_up(None);
        }
    }

    /// The driver judged this follower's leader gone: its process stopped answering for an
    /// election timeout, or restarted. The follower wakes if it hibernates, stops refusing
    /// votes on that leader's behalf, and campaigns now (pre-vote first, so a leader that is
    /// in fact alive keeps its term). Does nothing on a leader or candidate.
    ///
    /// Safe because a hibernating leader holds no lease (see the module documentation), and
    /// the driver waits as long as the vote guard would have.
    pub fn wake_and_campaign(&mut self) {
        if self.role != Role::Follower {
            return;
        }
        self.wake_to_elect();
        if self.may_campaign() && self.priority_allows_campaign() {
            self.campaign(false);
        }
    }

    /// As [`Raft::wake_and_campaign`], without campaigning now: the follower wakes, stops
    /// refusing votes on the gone leader's behalf and restarts its (randomised) election
    /// timer, so it votes for whichever peer campaigns first and campaigns itself only if
    /// no one wins within its timeout. A driver that wakes many groups at once picks one
    /// peer per group to campaign at once and wakes the others so: two survivors that
    /// campaign together split their votes and wait out another timeout.
    pub fn wake_to_elect(&mut self) {
        if self.role != Role::Follower {
            return;
        }
        self.stop_hibernating();
        self.vote_guard_until = self.now;
        self.reset_election_timer();
    }

    /// The driver judged this follower's leader `gone` (as for
    /// [`Raft::wake_and_campaign`]) and is waking many groups at once: the voter ranked
    /// first among the others by [`election_rank`] with `salt` (a driver's group id)
    /// campaigns now ([`Raft::wake_and_campaign`]), every other one only wakes to vote for
    /// it ([`Raft::wake_to_elect`]). Every peer ranks alike without a word exchanged, so
    /// thousands of groups waking together each get one candidate instead of several that
    /// split the vote, and new leaders spread over the survivors. Returns whether this peer
    /// campaigns.
    pub fn wake_to_replace(&mut self, gone: &PeerId, salt: u64) -> bool {
        let first = self
            .configuration()
            .voters
            .iter()
            .filter(|peer| *peer != gone)
            .min_by_key(|peer| (election_rank(salt, peer), peer.as_str()))
            .cloned();
        if first.as_ref() == Some(&self.id) {
            self.wake_and_campaign();
            true
        } else {
            self.wake_to_elect();
            false
        }
    }

    /// Leaves hibernation without sending anything (role changes, which send their own).
    pub(super) fn stop_hibernating(&mut self) {
        self.hibernating = false;
        self.idle_ticks = 0;
    }

    /// Leader tick: counts quiet ticks and hibernates at the threshold. Returns true if it
    /// hibernated now.
    pub(super) fn tick_idle(&mut self) -> bool {
        let threshold = self.config.hibernate_idle_ticks;
        if threshold == 0 {
            return false;
        }
        if !self.leader_quiescent() {
            self.idle_ticks = 0;
            return false;
        }
        self.idle_ticks += 1;
        if self.idle_ticks < threshold {
            return false;
        }
        self.hibernate_leader();
        true
    }

    /// Nothing for the leader to do or wait for: every entry committed, durable and
    /// applied; every voter and learner matches its last index with nothing in flight; no
    /// read, change, transfer or proposal pending.
    fn leader_quiescent(&self) -> bool {
        let last = self.log.last_index();
        let settled = self.role == Role::Leader
            && self.leader_started
            && !self.leader_term_unsure
            && self.change.is_none()
            && self.transfer.is_none()
            && !self.configurations.current().is_joint()
            && self.reads.is_idle()
            && !self.append_pending
            && self.uncommitted_batches.is_empty()
            && !self.log.has_unpersisted()
            && self.log.durable_index() == last
            && self.log.committed == last
            && self.log.applied == last;
        settled
            && self.progress.iter().all(|(peer, pr)| {
                pr.match_index == last
                    && (*peer == self.id
                        || (pr.state == ProgressState::Replicate && pr.inflights.is_empty()))
            })
    }

    /// Sends the last heartbeat, marked `hibernate`, and stops. The lease ends here.
    fn hibernate_leader(&mut self) {
        let last = self.log.last_index();
        assert!(
            self.log.committed == last && last > LogIndex::ZERO,
            "peer {} term {} hibernates with commit {} last {last}",
            self.id,
            self.term,
            self.log.committed
        );
        let echo = Echo {
            tick: self.now,
            read_seq: self.reads.read_seq(),
        };
        for peer in self.replicated_peers() {
            let hibernate = true;
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit: last,
                    echo,
                    hibernate,
                    transfer_target: None,
                },
            );
        }
        self.hibernating = true;
        self.hibernated_at = self.now;
        self.idle_ticks = 0;
        self.heartbeat_elapsed = 0;
        if !self.planted(Planted::LeaseAcrossHibernation) {
            for pr in self.progress.values_mut() {
                pr.echoed_tick = 0;
            }
        }
    }

    /// Follower, on a hibernate heartbeat from its leader in `term` claiming `commit` as its
    /// last index: hibernate only if this log ends there too, in that term, all of it
    /// committed, with no read, snapshot install or back-pressure pending.
    pub(super) fn may_hibernate_follower(&self, commit: LogIndex, term: Term) -> bool {
        self.config.hibernate_idle_ticks > 0
            && self.role == Role::Follower
            && self.leader.is_some()
            && term == self.term
            && self.log.last_index() == commit
            && self.log.last_term() == term
            && self.log.committed == commit
            && self.installing_snapshot.is_none()
            && !self.busy
            && self.reads.is_idle()
    }

    /// Follower: hibernates on the leader's hibernate heartbeat `echo`.
    pub(super) fn hibernate_follower(&mut self, echo: Echo) {
        debug_assert!(self.leader.is_some(), "peer {} term {}", self.id, self.term);
        self.hibernating = true;
        self.hibernated_echo = echo;
        self.idle_ticks = 0;
        self.reset_election_timer();
    }

    /// A hibernating peer received `message` (in its term or a later one, well formed).
    /// Returns false to drop it: an answer or heartbeat overtaken by the hibernation, which
    /// carries nothing new. Otherwise the message wakes the peer (a hibernate heartbeat from
    /// the leader is left to the follower's step, which may stay asleep) and is stepped.
    pub(super) fn hibernating_accepts(&mut self, message: &Message) -> bool {
        debug_assert!(message.term >= self.term);
        let current = message.term == self.term;
        let from_leader = current && self.leader.as_ref() == Some(&message.from);
        match &message.body {
            MessageBody::AppendEntriesResponse { echo, .. }
            | MessageBody::HeartbeatResponse { echo }
                if current && self.role == Role::Leader && echo.tick < self.hibernated_at =>
            {
                return false;
            }
            MessageBody::AppendEntries { echo, .. } | MessageBody::Heartbeat { echo, .. }
                if from_leader
                    && self.role == Role::Follower
                    && echo.tick < self.leader_echo_tick =>
            {
                return false;
            }
            MessageBody::Heartbeat {
                hibernate: true, ..
            } if from_leader && self.role == Role::Follower => return true,
            _ => {}
        }
        let from = message.from.clone();
        self.wake_up(Some(&from));
        true
    }

    /// Wakes a hibernating peer; `woken_by` is the peer whose message woke it, if any.
    pub(super) fn wake_up(&mut self, woken_by: Option<&PeerId>) {
        debug_assert!(self.hibernating, "peer {} is awake", self.id);
        self.stop_hibernating();
        match self.role {
            Role::Leader => self.wake_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.reset_election_timer();
                let guard = self.now + self.config.election_timeout_ticks;
                self.vote_guard_until = self.vote_guard_until.max(guard);
                match self.leader.clone() {
                    Some(leader) if woken_by != Some(&leader) => {
                        let echo = self.hibernated_echo;
                        self.send(leader, MessageBody::HeartbeatResponse { echo });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Leader: a fresh tick that voids every earlier echo for the lease, a new check-quorum
    /// window, and a heartbeat now so followers wake too.
    fn wake_leader(&mut self) {
        self.now += 1;
        let keep_lease = self.planted(Planted::LeaseAcrossHibernation);
        if !keep_lease {
            self.lease_floor_tick = self.now;
        }
        let now = self.now;
        for (peer, pr) in &mut self.progress {
            if !keep_lease {
                pr.echoed_tick = 0;
            }
            if *peer != self.id {
                pr.last_heard_tick = now;
                pr.last_progress_tick = now;
            }
        }
        self.heartbeat_elapsed = 0;
        self.broadcast_heartbeat();
    }
}

/// A peer's place in line to campaign when a leader is gone (lowest first): FNV-1a over
/// `salt` and the peer id, the same on every process.
#[must_use]
pub fn election_rank(salt: u64, peer: &PeerId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.to_le_bytes().iter().chain(peer.as_str().as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
