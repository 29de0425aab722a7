//! Log replication: the leader's replicators, the follower's AppendEntries handling,
//! heartbeats, snapshot sending and installing, and the commit rule.
//!
//! Owns: what is sent to whom, how followers accept entries, and when an index commits.
//! Must never: count an entry of an earlier term as committed by its replicas (paper
//! §5.4.2), count learners or catching-up peers, or acknowledge an entry before it is durable.

use super::planted_bugs::Planted;
use super::Raft;
use crate::error::StoreError;
use crate::ids::{LogIndex, PeerId, Term};
use crate::log::LogStore;
use crate::message::{AppendResult, Echo, Message, MessageBody};
use crate::progress::ProgressState;
use crate::quorum::{committed_index, quorum_value};
use crate::ready::{Event, ReplicatorChange};
use crate::types::{Entry, EntryPayload, Role};

impl<S: LogStore> Raft<S> {
    // ----- leader ------------------------------------------------------------------------

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.tick_idle() {
            return; // hibernated: its last heartbeat went out marked `hibernate`
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        if self.check_quorum_lost() {
            return;
        }
        self.tick_replicators();
        self.tick_change();
        if self.role == Role::Leader {
            self.tick_transfer();
        }
    }

    /// SOFAJRaft's step-down: a leader that has not heard from a quorum (of both halves
    /// while joint) within its lease steps down (never sooner than two heartbeats, so a
    /// tiny election timeout cannot make it flap). Returns true if it did.
    fn check_quorum_lost(&mut self) -> bool {
        if self.quorum_heard_recently() {
            return false;
        }
        let term = self.term;
        self.become_follower(term, None);
        true
    }

    /// Whether this leader heard a quorum (of both halves while joint) within its lease
    /// (never less than two heartbeats). A hibernating leader hears nothing, so after a
    /// lease of sleep this is false even when its followers live.
    pub(super) fn quorum_heard_recently(&self) -> bool {
        let (me, now) = (&self.id, self.now);
        let heard = quorum_value(self.configurations.current(), |p| {
            if p == me {
                now
            } else {
                self.progress.get(p).map_or(0, |pr| pr.last_heard_tick)
            }
        });
        let window = self
            .config
            .lease_ticks()
            .max(2 * self.config.heartbeat_interval_ticks);
        heard + window > now
    }

    fn tick_replicators(&mut self) {
        let (now, timeout) = (self.now, self.config.election_timeout_ticks);
        let snapshot_timeout = self.config.snapshot_install_timeout_ticks;
        let last = self.log.last_index();
        let mut events = Vec::new();
        let mut resend_snapshot = Vec::new();
        for (peer, pr) in &mut self.progress {
            if *peer == self.id {
                continue;
            }
            if pr.last_heard_tick + timeout == now {
                events.push((peer.clone(), ReplicatorChange::Offline));
            }
            match pr.state {
                ProgressState::Snapshot { since_tick, .. }
                    if now >= since_tick + snapshot_timeout =>
                {
                    pr.become_probe();
                }
                // The InstallSnapshot may have been lost: repeat it every election timeout.
                // A follower already installing it ignores the repeat.
                ProgressState::Snapshot { since_tick, .. }
                    if now > since_tick && (now - since_tick) % timeout == 0 =>
                {
                    resend_snapshot.push(peer.clone());
                }
                // A pipelined message was lost: nothing will free the window, so go back to
                // probing once the peer has made no progress for half an election timeout.
                ProgressState::Replicate
                    if pr.match_index < last
                        && !pr.inflights.is_empty()
                        && now >= pr.last_progress_tick + timeout / 2 =>
                {
                    pr.become_probe();
                }
                _ => {}
            }
        }
        for (peer, change) in events {
            self.ready.events.push(Event::Replicator { peer, change });
        }
        for peer in resend_snapshot {
            let meta = self.latest_snapshot.clone();
            self.send(peer, MessageBody::InstallSnapshot { meta });
        }
    }

    fn echo(&self) -> Echo {
        Echo {
            tick: self.now,
            read_seq: self.reads.read_seq(),
        }
    }

    /// Every peer the leader replicates to, this one excluded.
    pub(super) fn replicated_peers(&self) -> Vec<PeerId> {
        self.progress
            .keys()
            .filter(|p| **p != self.id)
            .cloned()
            .collect()
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let echo = self.echo();
        let committed = self.log.committed;
        for peer in self.replicated_peers() {
            let commit = self
                .progress
                .get(&peer)
                .map_or(LogIndex::ZERO, |pr| committed.min(pr.match_index));
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
    }

    /// Sends new entries (and the commit index) to every peer that can take them.
    pub(super) fn broadcast_append(&mut self) {
        self.append_pending = false;
        let commit_changed = self.log.committed > self.commit_sent;
        self.commit_sent = self.log.committed;
        for peer in self.replicated_peers() {
            self.send_append(&peer, commit_changed);
        }
    }

    /// Sends `peer` the next AppendEntries if its replicator may send, or a snapshot if the
    /// entries it needs were compacted. With `even_if_empty`, an empty AppendEntries carries
    /// a new commit index. Returns true if something was sent.
    pub(super) fn send_append(&mut self, peer: &PeerId, even_if_empty: bool) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get(peer) else {
            return false;
        };
        if !pr.can_send() || (pr.next_index > last && !even_if_empty) {
            return false;
        }
        let next = pr.next_index;
        let prev_log_index = next.prev();
        let prev_log_term = match self.log.term(prev_log_index) {
            Ok(term) => term,
            Err(StoreError::Compacted) => return self.send_snapshot(peer),
            Err(e) => panic!("peer {} cannot read term at {prev_log_index}: {e}", self.id),
        };
        let high = next
            .plus(self.config.append_entries_max as u64)
            .min(last.next());
        let entries = match self.log.entries(next, high, self.config.append_bytes_max) {
            Ok(entries) => entries,
            Err(StoreError::Compacted) => return self.send_snapshot(peer),
            Err(e) => panic!("peer {} cannot read entries from {next}: {e}", self.id),
        };
        let echo = self.echo();
        let pr = self.progress.get_mut(peer).expect("checked above");
        if let Some(last_sent) = entries.last() {
            match pr.state {
                ProgressState::Replicate => {
                    pr.inflights.add(last_sent.index, bytes_of(&entries));
                    pr.next_index = last_sent.index.next();
                }
                ProgressState::Probe => pr.paused = true,
                ProgressState::Snapshot { .. } => unreachable!("can_send is false in snapshot"),
            }
        }
        let leader_commit = self.log.committed;
        self.send(
            peer.clone(),
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                echo,
            },
        );
        true
    }

    fn send_snapshot(&mut self, peer: &PeerId) -> bool {
        let meta = self.latest_snapshot.clone();
        let now = self.now;
        if let Some(pr) = self.progress.get_mut(peer) {
            pr.become_snapshot(meta.index, now);
        }
        self.send(peer.clone(), MessageBody::InstallSnapshot { meta });
        true
    }

    pub(super) fn step_leader(&mut self, message: Message) {
        let from = message.from.clone();
        // Only an answer to something this leader sent proves the peer still hears it; a
        // (pre-)vote request from a peer that no longer hears the leader must not count.
        let is_answer = matches!(
            message.body,
            MessageBody::AppendEntriesResponse { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::InstallSnapshotResponse { .. }
        );
        if let Some(pr) = self.progress.get_mut(&from).filter(|_| is_answer) {
            if pr.last_heard_tick + self.config.election_timeout_ticks <= self.now {
                self.ready.events.push(Event::Replicator {
                    peer: from.clone(),
                    change: ReplicatorChange::Online,
                });
            }
            pr.last_heard_tick = self.now;
        }
        match message.body {
            MessageBody::AppendEntriesResponse { result, echo } => {
                self.record_echo(&from, echo);
                self.handle_append_response(&from, result);
            }
            MessageBody::HeartbeatResponse { echo } => {
                self.record_echo(&from, echo);
                // A probed peer whose match is unknown gets an AppendEntries even when there
                // is nothing new to send: a peer added to an idle group starts with
                // `next_index = last + 1`, so without this empty probe it would never learn
                // the log (and a voter being added would fail to catch up). etcd does the
                // same on a heartbeat response.
                // A paused probe (the peer was busy, or the probe was lost) is retried once
                // per heartbeat answered, so an unreachable peer is not re-sent entries every
                // heartbeat.
                let last = self.log.last_index();
                let mut probe = false;
                if let Some(pr) = self.progress.get_mut(&from) {
                    if pr.state == ProgressState::Probe {
                        pr.paused = false;
                        probe = pr.match_index < last;
                        if pr.match_index == last {
                            // Known to match all of our log (after a snapshot or a busy
                            // spell in an idle group): nothing to probe for.
                            pr.become_replicate();
                        }
                    }
                }
                self.send_append(&from, probe);
            }
            MessageBody::InstallSnapshotResponse { installed } => {
                self.handle_snapshot_response(&from, installed);
            }
            MessageBody::RequestVote { .. } => {
                // This peer is the live leader: refuse (only pre-votes arrive here).
                let body = MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: false,
                    leader: Some(self.id.clone()),
                };
                self.send(from, body);
            }
            MessageBody::ReadIndexRequest { batch, lease } => {
                self.handle_remote_read(from, batch, lease);
            }
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                // Two leaders in one term cannot happen; if it does, both step down with a
                // higher term (SOFAJRaft) so a fresh election sorts it out.
                let term = self.term.next();
                self.become_follower(term, None);
                self.send(
                    from,
                    MessageBody::HeartbeatResponse {
                        echo: Echo::default(),
                    },
                );
            }
            _ => {}
        }
    }

    fn record_echo(&mut self, from: &PeerId, echo: Echo) {
        let Some(pr) = self.progress.get_mut(from) else {
            return;
        };
        // An echo of a message sent before the leader last woke from hibernation says
        // nothing about the time since: it never extends the lease.
        if echo.tick >= self.lease_floor_tick {
            pr.echoed_tick = pr.echoed_tick.max(echo.tick);
        }
        if echo.read_seq > pr.echoed_read_seq {
            pr.echoed_read_seq = echo.read_seq;
            self.confirm_read_rounds();
        }
    }

    fn handle_append_response(&mut self, from: &PeerId, result: AppendResult) {
        let now = self.now;
        let Some(pr) = self.progress.get_mut(from) else {
            return;
        };
        match result {
            AppendResult::Success { last_index } => {
                let advanced = pr.update_match(last_index, now);
                pr.inflights.free_to(last_index);
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot { index, .. } if pr.match_index >= index => {
                        pr.become_probe();
                    }
                    _ => {}
                }
                if advanced {
                    self.maybe_commit();
                    self.on_peer_progress(from);
                }
                while self.role == Role::Leader && self.send_append(from, false) {
                    let more = self.progress.get(from).is_some_and(|pr| {
                        pr.state == ProgressState::Replicate
                            && pr.next_index <= self.log.last_index()
                    });
                    if !more {
                        break;
                    }
                }
            }
            AppendResult::Reject {
                rejected,
                hint,
                hint_term,
            } => {
                // Leader half of fast back-off: the follower's log matches ours at most up
                // to the last of our entries whose term is not above `hint_term`.
                let hint = self.last_index_with_term_at_most(hint, hint_term);
                let Some(pr) = self.progress.get_mut(from) else {
                    return;
                };
                let matched = pr.match_index;
                if pr.back_off(rejected, hint) {
                    if pr.match_index < matched {
                        self.ready.events.push(Event::Replicator {
                            peer: from.clone(),
                            change: ReplicatorChange::LostEntries,
                        });
                    }
                    self.send_append(from, true);
                }
            }
            AppendResult::Busy => {
                // SOFAJRaft: pause the replicator for one heartbeat, then probe again.
                pr.become_probe();
                pr.paused = true;
            }
            AppendResult::NeedSnapshot => {
                if self.latest_snapshot.index > LogIndex::ZERO {
                    self.send_snapshot(from);
                    return;
                }
                // No snapshot to send yet: ask the driver for one, and probe again at the
                // next heartbeat answer (which then finds it).
                pr.become_probe();
                pr.paused = true;
                if self.log.applied > LogIndex::ZERO {
                    self.ready.events.push(Event::SnapshotDue);
                }
            }
        }
    }

    /// A joiner that has neither entries nor a snapshot yet, under
    /// [`crate::Config::join_from_snapshot`]: it takes no entry before a snapshot.
    fn awaits_first_snapshot(&self) -> bool {
        self.config.join_from_snapshot
            && self.latest_snapshot.index == LogIndex::ZERO
            && self.log.last_index() == LogIndex::ZERO
            && self.configurations.current().voters.is_empty()
    }

    fn handle_snapshot_response(&mut self, from: &PeerId, installed: Option<LogIndex>) {
        let now = self.now;
        let Some(pr) = self.progress.get_mut(from) else {
            return;
        };
        match installed {
            Some(index) => {
                let advanced = pr.update_match(index, now);
                pr.become_probe();
                if advanced {
                    self.maybe_commit();
                    self.on_peer_progress(from);
                }
                self.send_append(from, false);
            }
            None => {
                pr.become_probe();
                pr.paused = true;
            }
        }
    }

    /// Advances the commit index to what a quorum stores, if that entry is of this term
    /// (paper §5.4.2: entries of earlier terms commit only indirectly).
    pub(super) fn maybe_commit(&mut self) {
        // Borrowed, not cloned: this runs on every acknowledgement, and cloning the
        // configuration (four B-trees) cost more than the quorum computation itself.
        let configuration = self.quorum_configuration();
        let quorum_index = committed_index(&configuration, |p| {
            self.progress
                .get(p)
                .map_or(LogIndex::ZERO, |pr| pr.match_index)
        });
        if quorum_index <= self.log.committed {
            return;
        }
        let term = self.log.term(quorum_index).unwrap_or_else(|e| {
            panic!(
                "peer {} has no term for quorum index {quorum_index}: {e}",
                self.id
            )
        });
        let current_term_only = term == self.term || self.planted(Planted::CommitOldTerm);
        if !current_term_only {
            return;
        }
        self.log.commit_to(quorum_index);
        self.after_commit();
    }

    fn after_commit(&mut self) {
        let committed = self.log.committed;
        // Proposals whose last entry committed are no longer uncommitted. (This used to read
        // the newly committed entries back from the log, cloning each, to sum their sizes.)
        while let Some(&(last, bytes)) = self.uncommitted_batches.front() {
            if last > committed {
                break;
            }
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
            self.uncommitted_batches.pop_front();
        }
        if !self.leader_started && committed >= self.term_start_index {
            self.leader_started = true;
            self.ready
                .events
                .push(Event::LeaderStart { term: self.term });
            self.start_reads_after_leader_start();
        }
        self.advance_change();
        if self.config.commit_broadcast {
            self.append_pending = true;
        }
    }

    // ----- follower ----------------------------------------------------------------------

    pub(super) fn step_follower(&mut self, message: Message) {
        let from = message.from.clone();
        let term = message.term;
        match message.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                echo,
            } => {
                self.heard_from_leader(&from);
                self.leader_echo_tick = self.leader_echo_tick.max(echo.tick);
                self.handle_append_entries(
                    from,
                    (prev_log_index, prev_log_term),
                    entries,
                    leader_commit,
                    echo,
                );
            }
            MessageBody::Heartbeat {
                commit,
                echo,
                hibernate,
                transfer_target,
            } => {
                self.heard_from_leader(&from);
                self.announced_transfer = transfer_target.map(|target| (term, target));
                // Older than something the leader sent since: a hibernate mark on it is stale.
                let latest = echo.tick >= self.leader_echo_tick;
                self.leader_echo_tick = self.leader_echo_tick.max(echo.tick);
                let claimed = commit;
                self.log.commit_to(commit.min(self.log.last_index()));
                if hibernate && latest && self.may_hibernate_follower(claimed, term) {
                    // Not answered: the answer would wake the leader.
                    self.hibernate_follower(echo);
                    return;
                }
                if self.hibernating {
                    self.wake_up(Some(&from));
                }
                self.send(from, MessageBody::HeartbeatResponse { echo });
            }
            MessageBody::InstallSnapshot { meta } => {
                self.heard_from_leader(&from);
                self.handle_install_snapshot(from, meta);
            }
            MessageBody::RequestVote { .. } => self.handle_request_vote(&message),
            // Leadership transfer (thesis §3.10): elect ourselves now, skipping pre-vote.
            // `may_campaign` also keeps a priority-0 peer from ever leading.
            MessageBody::TimeoutNow if self.may_campaign() => {
                self.campaign(true);
            }
            MessageBody::ReadIndexRequest { batch, .. } => {
                let result = Err(self.not_leader());
                self.send(from, MessageBody::ReadIndexResponse { batch, result });
            }
            MessageBody::ReadIndexResponse { batch, result } => {
                self.handle_read_index_response(batch, result);
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, from: &PeerId) {
        self.election_elapsed = 0;
        self.vote_guard_until = self.now + self.config.election_timeout_ticks;
        if self.leader.as_ref() != Some(from) {
            self.set_leader(Some(from.clone()));
        }
    }

    fn handle_append_entries(
        &mut self,
        from: PeerId,
        prev: (LogIndex, Term),
        mut entries: Vec<Entry>,
        leader_commit: LogIndex,
        echo: Echo,
    ) {
        if self.installing_snapshot.is_some() || self.busy {
            let body = MessageBody::AppendEntriesResponse {
                result: AppendResult::Busy,
                echo,
            };
            self.send(from, body);
            return;
        }
        if self.awaits_first_snapshot() {
            let body = MessageBody::AppendEntriesResponse {
                result: AppendResult::NeedSnapshot,
                echo,
            };
            self.send(from, body);
            return;
        }
        let (mut prev_index, mut prev_term) = prev;
        let committed = self.log.committed;
        if prev_index < committed {
            // Everything up to our commit index is in every later leader's log (Leader
            // Completeness), so skip what we already committed.
            let skip = committed.distance_from(prev_index) as usize;
            if entries.len() <= skip {
                self.ack_append(from, committed, echo);
                return;
            }
            entries.drain(..skip);
            prev_index = committed;
            prev_term = self.log.term(committed).unwrap_or_else(|e| {
                panic!(
                    "peer {} has no term at its commit index {committed}: {e}",
                    self.id
                )
            });
        }
        if !self.log.matches(prev_index, prev_term) {
            let hint = self.reject_hint(prev_index, prev_term);
            let hint_term = self.log.term(hint).unwrap_or_else(|e| {
                panic!(
                    "peer {} has no term at its reject hint {hint} (commit {}): {e}",
                    self.id, self.log.committed
                )
            });
            let result = AppendResult::Reject {
                rejected: prev_index,
                hint,
                hint_term,
            };
            self.send(from, MessageBody::AppendEntriesResponse { result, echo });
            return;
        }
        let last_new = prev_index.plus(entries.len() as u64);
        let first_new = entries
            .iter()
            .position(|e| !self.log.matches(e.index, e.term));
        if let Some(position) = first_new {
            let conflict = entries[position].index;
            let new_entries = entries.split_off(position);
            self.append_from_leader(conflict, new_entries);
        }
        self.log.commit_to(leader_commit.min(last_new));
        self.ack_append(from, last_new, echo);
    }

    /// Stores entries starting at `first`, truncating a conflicting suffix (paper §5.3).
    fn append_from_leader(&mut self, first: LogIndex, entries: Vec<Entry>) {
        let mut kept_suffix: Vec<Entry> = Vec::new();
        if first <= self.log.last_index() {
            if self.planted(Planted::KeepConflictingSuffix) {
                let after = first.plus(entries.len() as u64);
                kept_suffix = self
                    .log
                    .entries(after, self.log.last_index().next(), u64::MAX)
                    .unwrap_or_default();
            }
            self.log.truncate_from(first);
            self.configurations.truncate_suffix(first);
        }
        for entry in entries.into_iter().chain(kept_suffix) {
            if let EntryPayload::Configuration(c) = &entry.payload {
                self.configurations.push(entry.index, c.clone());
            }
            self.log.append_one(entry);
        }
    }

    /// Fast back-off (SOFAJRaft, etcd): the highest index at or below `rejected` whose term
    /// is not above `prev_term`; the leader resumes probing there.
    fn reject_hint(&self, rejected: LogIndex, prev_term: Term) -> LogIndex {
        let mut hint = rejected.min(self.log.last_index());
        while hint > self.log.committed {
            match self.log.term(hint) {
                Ok(term) if term > prev_term => hint = hint.prev(),
                _ => break,
            }
        }
        hint
    }

    /// Leader half of fast back-off (etcd's `findConflictByTerm`): the highest index at or
    /// below `index` whose term in this log is at most `term`. A compacted index stops the
    /// search there; the next send then falls back to a snapshot.
    fn last_index_with_term_at_most(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut candidate = index.min(self.log.last_index());
        while candidate > LogIndex::ZERO {
            match self.log.term(candidate) {
                Ok(t) if t > term => candidate = candidate.prev(),
                _ => break,
            }
        }
        candidate
    }

    fn ack_append(&mut self, to: PeerId, last_index: LogIndex, echo: Echo) {
        // Acknowledged only once durable: the driver sends this after the persist of
        // everything handed out so far.
        let result = AppendResult::Success { last_index };
        self.send_after_persist(to, MessageBody::AppendEntriesResponse { result, echo });
    }

    fn handle_install_snapshot(&mut self, from: PeerId, meta: crate::types::SnapshotMeta) {
        if meta.index <= self.log.committed {
            let installed = Some(self.log.committed);
            self.send_after_persist(from, MessageBody::InstallSnapshotResponse { installed });
            return;
        }
        if let Some((installing, _)) = &self.installing_snapshot {
            if installing.index >= meta.index {
                return; // already installing this one or a newer one
            }
        }
        if self.log.matches(meta.index, meta.term) {
            // Our log already has the snapshot's last entry: just commit up to it.
            self.log.commit_to(meta.index);
            let installed = Some(meta.index);
            self.send_after_persist(from, MessageBody::InstallSnapshotResponse { installed });
            return;
        }
        // A newer install replaces an older one (SOFAJRaft).
        self.installing_snapshot = Some((meta.clone(), from.clone()));
        self.ready.snapshot = Some(meta);
        self.ready.snapshot_source = Some(from);
    }
}

fn bytes_of(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::size_bytes).sum()
}
