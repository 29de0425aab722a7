//! One group's runtime state inside the manager's round: its core, state machine,
//! snapshot store and the requests waiting for an answer.
//!
//! Owns: matching answers to requests — proposals by `(index, term)` as `propose` returned
//! them, reads by id, the one membership change and the one transfer in flight. Must never:
//! answer a proposal "failed" when its fate is unknown (leadership lost, node stopped), or
//! write to the log (the manager batches every group's write).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_raft::{
    Config, Configuration, Entry, EntryPayload, Event, LogIndex, LogStore, PeerId, Raft, RaftError,
    ReadResult, SnapshotMeta, Term,
};
use flotilla_storage::{
    FileMetaStorage, GroupId, GroupLog, MetaStorage, RaftMeta, SharedLog, SnapshotReader,
    SnapshotStore, WriteBatch,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::metrics::{GroupMetrics, ReplicatorSample};
use crate::request::{Membership, Request};
use crate::state_machine::{ApplyIter, Completion, StateMachine, Task};
use crate::status::{lock_status, NodeStatus};
use crate::store::NodeStore;

pub(crate) fn storage_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::Io(e.to_string())
}

type Answer<T> = oneshot::Sender<Result<T, NodeError>>;

fn answer<T>(done: Answer<T>, result: Result<T, NodeError>) {
    // The caller may have stopped waiting (dropped its future); nothing to do then.
    let _ = done.send(result);
}

/// True if the log does not continue from `snapshot` (it ends before it, or holds another
/// term at its index).
fn needs_reset(log: &GroupLog, snapshot: &SnapshotMeta) -> bool {
    if snapshot.index == LogIndex::ZERO {
        return false;
    }
    if LogStore::last_index(log) < snapshot.index {
        return true;
    }
    matches!(LogStore::term(log, snapshot.index), Ok(term) if term != snapshot.term)
}

/// The round's end of a group's request queue.
pub(crate) struct RequestQueue {
    pub(crate) receiver: mpsc::Receiver<Request>,
    /// Shared with the handle: set when it queues a request (see `Node`'s `requested`).
    pub(crate) requested: Arc<AtomicBool>,
}

/// What a group is created from.
pub(crate) struct GroupSetup {
    pub(crate) id: GroupId,
    /// Initial voters (used when the group has no snapshot; empty: a peer waiting to be
    /// added).
    pub(crate) peers: Vec<PeerId>,
    /// Where the group begins when it has no snapshot yet (instead of an empty log with
    /// `peers` as voters): a region split off another.
    pub(crate) start: Option<GroupStart>,
    pub(crate) state_machine: Box<dyn StateMachine>,
}

/// Where a new group's log begins: as if a snapshot at `index` (of `term`) holding
/// `configuration` were installed, the state machine's state at that index being already
/// in place. A region split off its parent starts so at the split entry, on every replica
/// alike; its own entries follow from `index + 1`, so configuration indexes (a region's
/// `conf_version`) keep growing past the parent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStart {
    /// The index the log starts after.
    pub index: LogIndex,
    /// The term of that index.
    pub term: Term,
    /// The configuration in force there.
    pub configuration: Configuration,
}

pub(crate) struct Group {
    pub(crate) id: GroupId,
    pub(crate) raft: Raft<NodeStore>,
    state_machine: Box<dyn StateMachine>,
    snapshots: SnapshotStore,
    requests: mpsc::Receiver<Request>,
    /// Term and vote as durable in the meta store.
    pub(crate) saved_meta: RaftMeta,
    /// Proposals accepted by this leader, by index, with the term `propose` returned.
    proposals: BTreeMap<LogIndex, (Term, Completion)>,
    reads: BTreeMap<u64, Answer<LogIndex>>,
    next_read_id: u64,
    change: Option<Answer<()>>,
    transfer: Option<Answer<PeerId>>,
    status: Arc<Mutex<NodeStatus>>,
    /// A snapshot copy into `snapshots` is running (the manager's): no local snapshot now.
    pub(crate) installing: bool,
    /// Recorded here, rendered by the manager's `metrics_text`.
    metrics: Arc<GroupMetrics>,
    /// Shared with the handle: a request was queued since the round last polled.
    requested: Arc<AtomicBool>,
    /// The configuration index the driver last saw (its beacon targets follow changes).
    pub(crate) beacon_configuration: LogIndex,
}

impl Group {
    /// Loads its state machine from the newest snapshot,
    /// and creates its core over the shared log.
    pub(crate) fn open(
        setup: GroupSetup,
        config: Config,
        log: &SharedLog,
        meta: &FileMetaStorage,
        snapshots: SnapshotStore,
        requests: RequestQueue,
        status: Arc<Mutex<NodeStatus>>,
    ) -> Result<Group, NodeError> {
        let RequestQueue {
            receiver: requests,
            requested,
        } = requests;
        let GroupSetup {
            id,
            peers,
            start,
            mut state_machine,
        } = setup;
        let saved_meta = meta.load(id).map_err(storage_error)?;
        let mut started_without_file = false;
        let (snapshot, applied) = match (snapshots.open_reader(), start) {
            (Some(reader), _) => {
                state_machine
                    .on_snapshot_load(&reader)
                    .map_err(|why| NodeError::Raft(RaftError::StateMachine(why)))?;
                (reader.meta().clone(), reader.meta().index)
            }
            (None, Some(start)) => {
                started_without_file = true;
                (
                    SnapshotMeta {
                        index: start.index,
                        term: start.term,
                        configuration: start.configuration,
                    },
                    start.index,
                )
            }
            (None, None) => (
                SnapshotMeta {
                    index: LogIndex::ZERO,
                    term: Term::ZERO,
                    configuration: Configuration::new(peers),
                },
                LogIndex::ZERO,
            ),
        };
        state_machine.on_configuration_applied(snapshot.index, &snapshot.configuration);
        let group_log = log.group(id);
        if needs_reset(&group_log, &snapshot) {
            // A snapshot copied from the leader became the newest, but the process stopped
            // before the log was reset to it: the log does not lead on from the snapshot.
            // Finish the install now (the reset is idempotent).
            let mut batch = WriteBatch::new();
            batch.reset(id, snapshot.index, snapshot.term);
            log.write(&batch).map_err(storage_error)?;
            tracing::info!(group = id, index = %snapshot.index, "log reset to an installed snapshot at restart");
        }
        // A group started at a split entry of some term has heard of that term: its term
        // never stays below its log's last term (its own entries would sort before it).
        let (term, vote) = if saved_meta.term < snapshot.term {
            (snapshot.term, None)
        } else {
            (saved_meta.term, saved_meta.vote.clone())
        };
        let store = NodeStore {
            log: group_log,
            snapshot,
        };
        // The commit index is not stored: the core clamps it up to the snapshot and learns
        // the rest from the leader.
        let hard_state = flotilla_raft::HardState {
            term,
            vote,
            commit: LogIndex::ZERO,
        };
        let raft = Raft::new(config, store, hard_state, applied)?;
        let saved_meta_term = saved_meta.term.get();
        let beacon_configuration = raft.configuration_index();
        let mut group = Group {
            id,
            raft,
            state_machine,
            snapshots,
            requests,
            saved_meta,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read_id: 1,
            change: None,
            transfer: None,
            status,
            installing: false,
            metrics: Arc::new(GroupMetrics::new(saved_meta_term)),
            requested,
            beacon_configuration,
        };
        if started_without_file {
            // A peer added later, with nothing, needs entries up to the start from a
            // snapshot: make one now, while the state machine is at the start.
            if let Err(e) = group.take_snapshot() {
                tracing::warn!(group = id, error = %e, "no snapshot at the group's start; the next periodic one will do");
            }
        }
        group.publish();
        Ok(group)
    }

    /// The group's metrics (shared with its handle).
    pub(crate) fn metrics(&self) -> &Arc<GroupMetrics> {
        &self.metrics
    }

    /// A debug-level span for this group's work in the round: group, peer and term.
    pub(crate) fn span(&self, what: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "group",
            what,
            group = self.id,
            peer = %self.raft.id(),
            term = self.raft.term().get()
        )
    }

    /// The core's dump plus what the runtime holds for the group.
    pub(crate) fn describe(&self) -> String {
        let mut out = self.raft.describe();
        out.push_str(&format!(
            "runtime proposals_pending={} reads_pending={} requests_queued={} change_in_flight={} transfer_in_flight={} installing={} hibernating={}\n",
            self.proposals.len(),
            self.reads.len(),
            self.requests.len(),
            self.change.is_some(),
            self.transfer.is_some(),
            self.installing,
            self.raft.is_hibernating()
        ));
        out
    }

    /// Feeds up to `max` queued requests to the core. Returns true if more are queued.
    /// `live` names the processes heard within an election timeout (for `reset_peers`).
    pub(crate) fn take_requests(&mut self, max: usize, live: &dyn Fn(&PeerId) -> bool) -> bool {
        // Cleared before polling: a request queued from now on flags the group again, and
        // one queued before is seen below.
        self.requested.store(false, Ordering::SeqCst);
        for _ in 0..max {
            match self.requests.try_recv() {
                Ok(request) => self.handle_request(request, live),
                Err(_) => return false,
            }
        }
        !self.requests.is_empty()
    }

    fn handle_request(&mut self, request: Request, live: &dyn Fn(&PeerId) -> bool) {
        match request {
            Request::Apply {
                data,
                expected_term,
                done,
            } => match self.raft.propose(data, expected_term) {
                Ok((index, term)) => {
                    let previous = self.proposals.insert(index, (term, Completion::new(done)));
                    assert!(
                        previous.is_none(),
                        "group {} proposal at {index} term {term} replaced an unanswered one",
                        self.id
                    );
                }
                Err(e) => answer(done, Err(e.into())),
            },
            Request::Read { mode, done } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                match self.raft.read(id, mode) {
                    Ok(()) => {
                        self.reads.insert(id, done);
                    }
                    Err(e) => answer(done, Err(e.into())),
                }
            }
            Request::Change {
                change,
                force,
                done,
            } => self.start_change(change, force, done, live),
            Request::Transfer { target, done } => match self.raft.transfer_leadership(target) {
                Ok(_) => {
                    if let Some(old) = self.transfer.replace(done) {
                        answer(
                            old,
                            Err(NodeError::Unknown("superseded by a newer transfer".into())),
                        );
                    }
                }
                Err(e) => answer(done, Err(e.into())),
            },
            Request::Snapshot { done } => {
                // The group must not sleep through its own snapshot (and compaction).
                self.raft.wake();
                answer(done, self.take_snapshot());
            }
            Request::Describe { done } => answer(done, Ok(self.raft.describe())),
            Request::Campaign { done } => {
                self.raft.campaign_now();
                answer(done, Ok(()));
            }
            Request::SetElectionTimeout { ticks, done } => {
                answer(
                    done,
                    self.raft
                        .set_election_timeout(ticks)
                        .map_err(NodeError::from),
                );
            }
        }
    }

    fn start_change(
        &mut self,
        change: Membership,
        force: bool,
        done: Answer<()>,
        live: &dyn Fn(&PeerId) -> bool,
    ) {
        // The voters a voter change would leave: on the leader, checked against the
        // runtime's liveness of processes too (a core just woken from hibernation has heard
        // no one yet and counts every peer live), or applied as they are when forced (a
        // follower answers NotLeader as usual).
        let voters_after = self.voters_after(&change);
        let leads = self.raft.role() == flotilla_raft::Role::Leader;
        if let (false, true, Some(voters)) = (force, leads, &voters_after) {
            if let Err(e) = self.raft.check_live_quorum_with(voters, live) {
                answer(done, Err(e.into()));
                return;
            }
        }
        let started = match change {
            Membership::AddPeer(_) | Membership::RemovePeer(_) | Membership::ChangePeers(_)
                if force && voters_after.is_some() =>
            {
                let voters = voters_after.unwrap_or_default();
                self.raft.change_peers_forced(voters)
            }
            Membership::AddPeer(peer) => self.raft.add_peer(peer),
            Membership::RemovePeer(peer) => self.raft.remove_peer(&peer),
            Membership::ChangePeers(voters) => self.raft.change_peers(voters),
            Membership::AddLearners(learners) => self.raft.add_learners(&learners),
            Membership::RemoveLearners(learners) => self.raft.remove_learners(&learners),
            Membership::PromoteLearner(learner) => self.raft.promote_learner(&learner),
            Membership::ResetPeers(voters) => {
                // Local and immediate: nothing to wait for.
                let result = match self.quorum_answers(live) {
                    Some(why) => Err(NodeError::Raft(RaftError::InvalidArgument(why))),
                    None => self.raft.reset_peers(voters).map_err(NodeError::from),
                };
                answer(done, result);
                return;
            }
        };
        match started {
            Ok(()) => {
                if let Some(old) = self.change.replace(done) {
                    answer(
                        old,
                        Err(NodeError::Unknown("superseded by a newer change".into())),
                    );
                }
            }
            Err(e) => answer(done, Err(e.into())),
        }
    }

    /// The voters a voter change would leave (`None` for a change of learners, or the
    /// removal of a peer that is no voter).
    fn voters_after(&self, change: &Membership) -> Option<BTreeSet<PeerId>> {
        let mut voters = self.raft.configuration().leave_joint().voters;
        match change {
            Membership::AddPeer(peer) => {
                voters.insert(peer.clone());
            }
            Membership::RemovePeer(peer) => {
                if !voters.remove(peer) {
                    return None;
                }
            }
            Membership::ChangePeers(target) => voters.clone_from(target),
            _ => return None,
        }
        Some(voters)
    }

    /// `Some(why)` when a majority of the current voters' processes (this one included)
    /// were heard within an election timeout (`live`, from the manager's liveness of
    /// processes), so the group still has a quorum and `reset_peers` must be refused.
    fn quorum_answers(&self, live: &dyn Fn(&PeerId) -> bool) -> Option<String> {
        let configuration = self.raft.configuration();
        let voters = configuration.leave_joint().voters;
        let live: Vec<&PeerId> = voters
            .iter()
            .filter(|v| **v == *self.raft.id() || live(v))
            .collect();
        (live.len() > voters.len() / 2).then(|| {
            format!(
                "reset-peers refused: {} of the {} voters answered within an election timeout \
                 ({live:?}), a quorum (change the membership through its leader instead)",
                live.len(),
                voters.len()
            )
        })
    }

    /// The core's election timeout, in ticks (bounds how many ticks a pause must feed).
    pub(crate) fn election_timeout_ticks(&self) -> u64 {
        self.raft.election_timeout_ticks()
    }

    /// Applies committed entries through the state machine, in order, handing each
    /// proposer's completion with its entry; then tells the core.
    pub(crate) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let batch = entries.len() as u64;
        let mut tasks = Vec::with_capacity(entries.len());
        for entry in entries {
            let completion = match self.proposals.remove(&entry.index) {
                Some((term, completion)) if term == entry.term => Some(completion),
                Some((term, completion)) => {
                    // Another leader's entry took the index: ours can never commit.
                    completion.fail(NodeError::Raft(RaftError::Stale(format!(
                        "entry {} of term {term} was replaced by one of term {}",
                        entry.index, entry.term
                    ))));
                    None
                }
                None => None,
            };
            match entry.payload {
                EntryPayload::Normal(data) => tasks.push(Task {
                    index: entry.index,
                    term: entry.term,
                    data,
                    completion,
                }),
                EntryPayload::Configuration(configuration) => {
                    // The entries before it apply first: the state machine sees each
                    // configuration at its place in the applied state.
                    self.apply_tasks(std::mem::take(&mut tasks), last)?;
                    self.state_machine
                        .on_configuration_applied(entry.index, &configuration);
                }
                EntryPayload::NoOp => {}
            }
        }
        self.apply_tasks(tasks, last)?;
        self.metrics.apply_entries.observe(batch);
        self.raft.on_applied(last);
        Ok(())
    }

    /// Hands `tasks` (part of the batch ending at `last`) to the state machine.
    fn apply_tasks(&mut self, tasks: Vec<Task>, last: LogIndex) -> Result<(), NodeError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut iter = ApplyIter::new(tasks);
        let started = Instant::now();
        self.state_machine.on_apply(&mut iter);
        self.metrics
            .apply_seconds
            .observe_duration(started.elapsed());
        if iter.remaining() > 0 {
            return Err(NodeError::Raft(RaftError::StateMachine(format!(
                "on_apply returned with {} of the batch ending at {last} unconsumed",
                iter.remaining()
            ))));
        }
        Ok(())
    }

    /// Answers finished reads. The published status is brought up to date first, so that a
    /// caller that reads `applied_index()` next sees at least the index it was answered.
    pub(crate) fn complete_reads(&mut self, reads: Vec<ReadResult>) {
        if reads.is_empty() {
            return;
        }
        self.publish();
        for read in reads {
            if let Some(done) = self.reads.remove(&read.id) {
                answer(done, read.result.map_err(NodeError::from));
            }
        }
    }

    pub(crate) fn on_event(&mut self, event: Event) {
        match event {
            Event::LeaderStart { term } => {
                self.metrics.leader_starts.add(1);
                self.metrics.leader_changes.add(1);
                self.state_machine.on_leader_start(term);
            }
            Event::LeaderStop { term } => {
                self.forget_pending("leadership was lost");
                self.state_machine.on_leader_stop(term);
            }
            Event::StartFollowing { leader, term } => {
                self.metrics.leader_changes.add(1);
                self.state_machine.on_start_following(&leader, term);
            }
            Event::StopFollowing { leader, term } => {
                self.state_machine.on_stop_following(&leader, term);
            }
            Event::ConfigurationCommitted {
                index,
                configuration,
            } => {
                self.state_machine
                    .on_configuration_committed_at(index, &configuration);
            }
            // The published status is brought up to date before the caller hears the
            // outcome, so that what it reads next (leader, peers) agrees with the answer.
            Event::MembershipChangeFinished { result } => {
                if let Some(done) = self.change.take() {
                    self.publish();
                    answer(done, result.map(|_| ()).map_err(NodeError::from));
                }
            }
            Event::TransferFinished { target, result } => {
                if let Some(done) = self.transfer.take() {
                    self.publish();
                    answer(done, result.map(|()| target).map_err(NodeError::from));
                }
            }
            Event::SnapshotDue => {
                if let Err(e) = self.take_snapshot() {
                    tracing::warn!(group = self.id, error = %e, "periodic snapshot failed");
                }
            }
            Event::Replicator { peer, change } => {
                self.metrics.replicator_events.add(1);
                if change == flotilla_raft::ReplicatorChange::LostEntries {
                    tracing::warn!(
                        group = self.id,
                        peer = %peer,
                        "the peer lost log entries it had acknowledged (damaged or restored \
                         storage); replicating them again"
                    );
                } else {
                    tracing::debug!(group = self.id, peer = %peer, ?change, "replicator");
                }
            }
        }
    }

    /// Proposals, the change and the transfer in flight have an unknown outcome now: they
    /// may still commit under the next leader.
    fn forget_pending(&mut self, why: &str) {
        for (_, (_, completion)) in std::mem::take(&mut self.proposals) {
            completion.fail(NodeError::Unknown(why.to_string()));
        }
        if let Some(done) = self.change.take() {
            answer(done, Err(NodeError::Unknown(why.to_string())));
        }
        if let Some(done) = self.transfer.take() {
            answer(done, Err(NodeError::Unknown(why.to_string())));
        }
    }

    /// Saves the state machine at the applied index into the snapshot store, then lets the
    /// core compact the log (back to the previous snapshot).
    fn take_snapshot(&mut self) -> Result<SnapshotMeta, NodeError> {
        if self.installing {
            return Err(NodeError::Raft(RaftError::Busy(
                "a snapshot from the leader is being installed".into(),
            )));
        }
        let applied = self.raft.applied();
        if let Some(newest) = self.snapshots.newest_meta() {
            if newest.index >= applied {
                return Ok(newest);
            }
        }
        let started = Instant::now();
        let meta = self.raft.snapshot_meta_at(applied)?;
        let mut writer = self
            .snapshots
            .create_writer(meta.clone())
            .map_err(storage_error)?;
        self.state_machine
            .on_snapshot_save(&mut writer)
            .map_err(|why| NodeError::Raft(RaftError::StateMachine(why)))?;
        writer.finish().map_err(storage_error)?;
        self.metrics
            .snapshot_save_seconds
            .observe_duration(started.elapsed());
        self.raft.on_snapshot_saved(meta.clone());
        Ok(meta)
    }

    /// The group's snapshot store (the manager copies installs into it).
    pub(crate) fn snapshot_store(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Replaces the state machine's state with an installed snapshot.
    /// Whether the state machine takes the snapshot `reader` holds (nothing changes either
    /// way).
    pub(crate) fn check_snapshot(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        self.state_machine.check_snapshot(reader)
    }

    pub(crate) fn load_snapshot(&mut self, reader: &SnapshotReader) -> Result<(), NodeError> {
        self.state_machine
            .on_snapshot_load(reader)
            .map_err(|why| NodeError::Raft(RaftError::StateMachine(why)))?;
        let meta = reader.meta();
        self.state_machine
            .on_configuration_applied(meta.index, &meta.configuration);
        Ok(())
    }

    /// Publishes the core's status for the handle's synchronous queries. Runs for every
    /// visited group every round, so it updates the published status in place and copies
    /// the configuration, the leader and the alive peers only when they changed.
    pub(crate) fn publish(&self) {
        let raft = &self.raft;
        let role = raft.role();
        let term = raft.term();
        {
            let mut status = lock_status(&self.status);
            status.role = role;
            status.term = term;
            if status.leader.as_ref() != raft.leader() {
                status.leader = raft.leader().cloned();
            }
            if status.configuration != *raft.configuration() {
                status.configuration = raft.configuration().clone();
            }
            if role == flotilla_raft::Role::Leader {
                let alive = raft.alive_peers_iter();
                if !status.alive_peers.iter().eq(alive.clone()) {
                    status.alive_peers = alive.cloned().collect();
                }
            } else if !status.alive_peers.is_empty() {
                status.alive_peers.clear();
            }
            status.last_index = raft.last_index();
            status.committed = raft.committed();
            status.applied = raft.applied();
            status.hibernating = raft.is_hibernating();
        }
        self.metrics.observe_term(term.get());
        self.publish_metrics();
    }

    /// Queue depths and, on a leader, its replicators (the core's progress of every peer
    /// but this one).
    fn publish_metrics(&self) {
        let m = &self.metrics;
        m.proposals_pending.set(self.proposals.len() as u64);
        m.reads_pending.set(self.reads.len() as u64);
        let leading = self.raft.role() == flotilla_raft::Role::Leader;
        m.set_replicators(|samples| {
            if !leading {
                return;
            }
            let me = self.raft.id();
            for (peer, pr) in self.raft.progress() {
                if peer == me {
                    continue;
                }
                samples.push(ReplicatorSample {
                    peer: peer.clone(),
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    inflight: pr.inflights.len(),
                    state: pr.state,
                });
            }
        });
    }

    /// Stops the group: every waiting request is answered (proposals "unknown"), queued
    /// requests are refused, and the state machine hears `on_error` (if any) and
    /// `on_shutdown`.
    pub(crate) fn stop(&mut self, error: Option<&NodeError>) {
        let why = error.map_or("the node shut down".to_string(), ToString::to_string);
        self.forget_pending(&why);
        for (_, done) in std::mem::take(&mut self.reads) {
            answer(done, Err(error.cloned().unwrap_or(NodeError::ShutDown)));
        }
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            let refusal = error.cloned().unwrap_or(NodeError::ShutDown);
            match request {
                Request::Apply { done, .. } => answer(done, Err(refusal)),
                Request::Read { done, .. } => answer(done, Err(refusal)),
                Request::Snapshot { done } => answer(done, Err(refusal)),
                Request::Change { done, .. }
                | Request::SetElectionTimeout { done, .. }
                | Request::Campaign { done } => {
                    answer(done, Err(refusal));
                }
                Request::Transfer { done, .. } => answer(done, Err(refusal)),
                Request::Describe { done } => answer(done, Err(refusal)),
            }
        }
        if let Some(error) = error {
            self.state_machine.on_error(error);
        }
        self.state_machine.on_shutdown();
        self.publish();
    }
}
