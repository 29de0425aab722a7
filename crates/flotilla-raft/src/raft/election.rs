//! Elections: timeouts, pre-vote, votes, priority, and the term rules every message obeys.
//!
//! Owns: when a peer campaigns and whom it votes for. Must never: grant two votes in one
//! term, or grant anything while a live leader is heard (unless the leader itself asked,
//! through TimeoutNow).

use super::planted_bugs::Planted;
use super::Raft;
use crate::ids::Priority;
use crate::log::LogStore;
use crate::message::{Message, MessageBody, TERM_MAX};
use crate::quorum::{vote_result, VoteResult};
use crate::types::Role;

impl<S: LogStore> Raft<S> {
    /// Follower and candidate tick: campaign when the election timer fires.
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed < self.randomized_election_timeout {
            return;
        }
        self.reset_election_timer();
        if !self.may_campaign() || !self.priority_allows_campaign() {
            if self.role != Role::Follower {
                let term = self.term;
                self.become_follower(term, None);
            }
            return;
        }
        // SOFAJRaft: a candidate whose vote round timed out steps back to pre-vote rather
        // than bumping its term again (thesis §9.6).
        self.campaign(false);
    }

    /// Whether this peer may stand for election at all.
    pub(super) fn may_campaign(&self) -> bool {
        let configuration = self.configurations.current();
        configuration.is_voter(&self.id)
            && configuration.priority(&self.id) != Priority::NEVER
            && self.installing_snapshot.is_none()
            // At the term bound no election can start: its term could not be carried.
            && self.term < TERM_MAX
    }

    /// SOFAJRaft's priority election: a peer below the target priority waits; after a
    /// round without a better leader the target decays by `max(10, target / 5)`.
    pub(super) fn priority_allows_campaign(&mut self) -> bool {
        let mine = self.configurations.current().priority(&self.id);
        if !mine.is_enabled() || mine >= self.target_priority {
            return true;
        }
        self.priority_wait_rounds += 1;
        if self.priority_wait_rounds > 1 {
            let gap = (self.target_priority.0 / 5).max(10);
            self.target_priority = Priority((self.target_priority.0 - gap).max(1));
            self.priority_wait_rounds = 0;
        }
        false
    }

    /// Starts an election: a pre-vote round, or a real vote straight away when the leader
    /// asked for it (leadership transfer).
    pub(super) fn campaign(&mut self, leadership_transfer: bool) {
        if leadership_transfer {
            self.become_candidate(true);
        } else {
            self.become_pre_candidate();
        }
    }

    fn become_pre_candidate(&mut self) {
        if self.role == Role::Leader {
            self.stop_leading();
        }
        self.stop_hibernating();
        self.role = Role::PreCandidate;
        self.set_leader(None);
        self.votes.clear();
        self.votes.insert(self.id.clone(), true);
        if self.tally() == VoteResult::Won {
            self.become_candidate(false);
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let term = self.term.next();
        for peer in self.voters_except_me() {
            // A pre-vote changes nothing durable, so it goes out at once.
            self.ready.messages.push(Message {
                from: self.id.clone(),
                to: peer,
                term,
                body: MessageBody::RequestVote {
                    pre_vote: true,
                    last_log_index,
                    last_log_term,
                    leadership_transfer: false,
                },
            });
        }
    }

    fn become_candidate(&mut self, leadership_transfer: bool) {
        if self.role == Role::Leader {
            self.stop_leading();
        }
        self.stop_hibernating();
        self.term = self.term.next();
        self.vote = Some(self.id.clone());
        self.role = Role::Candidate;
        self.set_leader(None);
        self.reset_election_timer();
        self.votes.clear();
        self.votes.insert(self.id.clone(), true);
        if self.tally() == VoteResult::Won {
            self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voters_except_me() {
            // Term and vote must be durable before the request leaves (paper §5.2, Figure 2).
            self.send_after_persist(
                peer,
                MessageBody::RequestVote {
                    pre_vote: false,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                },
            );
        }
    }

    fn voters_except_me(&self) -> Vec<crate::ids::PeerId> {
        let c = self.configurations.current();
        let mut voters = c.voters.clone();
        if let Some(old) = &c.old_voters {
            voters.extend(old.iter().cloned());
        }
        voters.remove(&self.id);
        voters.into_iter().collect()
    }

    fn tally(&self) -> VoteResult {
        let configuration = self.quorum_configuration();
        vote_result(&configuration, |p| self.votes.get(p).copied())
    }

    /// True while this peer must refuse votes: it heard a live leader less than an election
    /// timeout ago, or it restarted less than an election timeout ago (thesis §4.2.3), or it
    /// hibernates with its leader (which is silent on purpose, not gone).
    pub(super) fn vote_guarded(&self) -> bool {
        (self.hibernating || self.now < self.vote_guard_until)
            && self.leader.as_ref() != Some(&self.id)
    }

    /// A vote flagged as a leadership transfer may be granted despite a live leader only
    /// when this peer's leader announced the candidate as its transfer target (in its
    /// heartbeats) and the vote is for the term right after the leader's: a transfer's
    /// election (thesis §3.10).
    pub(super) fn transfer_vote_allowed(&self, message: &Message) -> bool {
        let MessageBody::RequestVote {
            leadership_transfer: true,
            ..
        } = &message.body
        else {
            return false;
        };
        matches!(&self.announced_transfer,
            Some((term, target)) if *target == message.from && term.next() == message.term)
    }

    /// Rules for a message with a higher term (paper §5.1). Returns false if the message
    /// must be dropped.
    pub(super) fn accept_higher_term(&mut self, message: &Message) -> bool {
        match &message.body {
            MessageBody::RequestVote {
                pre_vote,
                leadership_transfer,
                ..
            } => {
                if *leadership_transfer && !self.transfer_vote_allowed(message) {
                    self.dropped.transfer_vote += 1;
                }
                if self.vote_guarded() && !self.transfer_vote_allowed(message) {
                    // A live leader is heard: refuse, without learning the term, so a
                    // partitioned peer that comes back cannot depose a healthy leader.
                    self.reply_vote(message, false);
                    return false;
                }
                if !pre_vote {
                    self.become_follower(message.term, None);
                }
                true
            }
            // A granted pre-vote carries the term the candidate would campaign in.
            MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted: true,
                ..
            } => true,
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(message.term, Some(message.from.clone()));
                true
            }
            _ => {
                self.become_follower(message.term, None);
                true
            }
        }
    }

    /// A message from an older term: tell a stale leader or candidate our term, drop the rest.
    pub(super) fn answer_lower_term(&mut self, message: Message) {
        match message.body {
            MessageBody::AppendEntries { echo, .. } | MessageBody::Heartbeat { echo, .. } => {
                self.send(message.from, MessageBody::HeartbeatResponse { echo });
            }
            MessageBody::InstallSnapshot { .. } => {
                self.send(
                    message.from,
                    MessageBody::InstallSnapshotResponse { installed: None },
                );
            }
            MessageBody::RequestVote { .. } => self.reply_vote(&message, false),
            _ => {}
        }
    }

    /// Answers a (pre-)vote request in the current term, or a pre-vote for the next one.
    pub(super) fn handle_request_vote(&mut self, message: &Message) {
        let MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            ..
        } = &message.body
        else {
            return;
        };
        let up_to_date = self.log.is_up_to_date(*last_log_index, *last_log_term);
        if *pre_vote {
            let granted = up_to_date
                && message.term > self.term
                && (!self.vote_guarded() || self.transfer_vote_allowed(message));
            self.reply_vote(message, granted);
            return;
        }
        debug_assert_eq!(message.term, self.term);
        let can_vote = match &self.vote {
            None => self.leader.is_none(),
            Some(v) => *v == message.from,
        };
        let can_vote = can_vote || (self.planted(Planted::DoubleVote) && self.leader.is_none());
        let granted = can_vote && up_to_date;
        if granted {
            self.vote = Some(message.from.clone());
            self.reset_election_timer();
        }
        self.reply_vote(message, granted);
    }

    /// Sends a vote answer. A granted real vote leaves only once the vote is durable.
    fn reply_vote(&mut self, request: &Message, granted: bool) {
        let MessageBody::RequestVote { pre_vote, .. } = request.body else {
            return;
        };
        // A granted pre-vote answers in the candidate's prospective term so the candidate
        // can tell it apart from stale answers; anything else carries our own term.
        let term = if pre_vote && granted {
            request.term
        } else {
            self.term
        };
        // A refusal on behalf of a live leader names it (see `RequestVoteResponse::leader`).
        let leader = if granted || !self.vote_guarded() {
            None
        } else {
            self.leader.clone()
        };
        let reply = Message {
            from: self.id.clone(),
            to: request.from.clone(),
            term,
            body: MessageBody::RequestVoteResponse {
                pre_vote,
                granted,
                leader,
            },
        };
        if granted && !pre_vote {
            self.ready.messages_after_persist.push(reply);
        } else {
            self.ready.messages.push(reply);
        }
    }

    /// Pre-candidate and candidate message handling.
    pub(super) fn step_candidate(&mut self, message: Message) {
        match &message.body {
            MessageBody::RequestVoteResponse {
                pre_vote, granted, ..
            } => {
                let expected_pre_vote = self.role == Role::PreCandidate;
                if *pre_vote != expected_pre_vote {
                    return;
                }
                if *pre_vote && message.term != self.term.next() && *granted {
                    return;
                }
                self.votes.entry(message.from.clone()).or_insert(*granted);
                match self.tally() {
                    VoteResult::Won if self.role == Role::PreCandidate => {
                        self.become_candidate(false);
                    }
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, None);
                    }
                    VoteResult::Pending => {}
                }
            }
            MessageBody::RequestVote { .. } => self.handle_request_vote(&message),
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // Someone won this term (paper §5.2): follow it.
                let term = self.term;
                self.become_follower(term, Some(message.from.clone()));
                self.step_follower(message);
            }
            _ => {}
        }
    }
}
