//! [`Node`]: the handle applications hold for one group on this process (SOFAJRaft's
//! `Node`). Cheap to clone, `Send + Sync`; every call is a request queued to the manager's
//! round, or a look at the status the last round published.
//!
//! Owns: turning calls into bounded requests and answers into typed results. Must never:
//! wait on anything but its own answer, or queue without bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use flotilla_raft::{LogIndex, PeerId, RaftError, ReadMode, Role, SnapshotMeta, Term};
use flotilla_storage::GroupId;
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::limits::ENTRY_BYTES_MAX;
use crate::metrics::GroupMetrics;
use crate::options::QueueFullPolicy;
use crate::request::{Membership, Request};
use crate::shared::ManagerShared;
use crate::status::{lock_status, NodeStatus};

/// Every group's handle on one process, by group: filled and emptied by the round, read by
/// the manager's handle ([`crate::NodeManager::node`], the metrics).
pub(crate) type Nodes = Mutex<BTreeMap<GroupId, Node>>;

/// What a [`Node`] handle holds: the group's request queue and published status, and the
/// state its manager's handles and round share.
pub(crate) struct NodeInner {
    pub(crate) group: GroupId,
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) shared: Arc<ManagerShared>,
    pub(crate) queue_full: QueueFullPolicy,
    pub(crate) tick_ms: u64,
    pub(crate) metrics: Arc<GroupMetrics>,
    /// Set when a request was queued and the round has not yet looked at the queue: the
    /// round polls only flagged queues, so a hibernating group costs nothing until asked.
    pub(crate) requested: Arc<AtomicBool>,
}

/// One group's peer on this process. See the module documentation.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("group", &self.inner.group)
            .field("peer", &self.inner.shared.id)
            .finish()
    }
}

impl Node {
    pub(crate) fn new(inner: NodeInner) -> Node {
        // From here on the group's latencies and counts also go to the store-wide totals
        // that `/metrics` shows by default.
        inner.metrics.attach(&inner.shared.metrics.group_totals);
        Node {
            inner: Arc::new(inner),
        }
    }

    /// The group.
    #[must_use]
    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// This peer (the process address).
    #[must_use]
    pub fn peer_id(&self) -> &PeerId {
        &self.inner.shared.id
    }

    /// Proposes `data`; answers with the state machine's result once the entry applied
    /// here. `expected_term`: refuse unless this leader's term is that one (SOFAJRaft's
    /// `Task::expectedTerm`). `Unknown` means the entry may or may not commit. `data` of
    /// more than [`ENTRY_BYTES_MAX`] bytes is refused at once with `InvalidArgument`.
    pub async fn apply(
        &self,
        data: Bytes,
        expected_term: Option<Term>,
    ) -> Result<Bytes, NodeError> {
        // Refused here, before raft: a larger entry would be written to the log and then
        // never fit in a frame, wedging the group (`crate::limits`).
        if data.len() > ENTRY_BYTES_MAX {
            self.inner.shared.metrics.entries_refused_too_large.add(1);
            return Err(NodeError::Raft(RaftError::InvalidArgument(format!(
                "entry of {} bytes, more than the limit of {ENTRY_BYTES_MAX} bytes \
                 (flotilla_node::limits::ENTRY_BYTES_MAX)",
                data.len()
            ))));
        }
        let started = Instant::now();
        let result = self
            .submit(
                |done| Request::Apply {
                    data,
                    expected_term,
                    done,
                },
                NodeError::Unknown("the node stopped before answering".into()),
            )
            .await;
        if result.is_ok() {
            let elapsed = started.elapsed();
            self.inner
                .metrics
                .proposal_seconds
                .observe_duration(elapsed);
        }
        result
    }

    /// A linearizable read point: answers once this peer's state machine has applied the
    /// read index (on a follower or learner too), so the caller may read its state machine.
    pub async fn read_index(&self, mode: ReadMode) -> Result<LogIndex, NodeError> {
        let started = Instant::now();
        let result = self
            .submit(|done| Request::Read { mode, done }, NodeError::ShutDown)
            .await;
        if result.is_ok() {
            let elapsed = started.elapsed();
            self.inner
                .metrics
                .read_index_seconds
                .observe_duration(elapsed);
        }
        result
    }

    async fn change(&self, change: Membership) -> Result<(), NodeError> {
        self.change_with(change, false).await
    }

    async fn change_with(&self, change: Membership, force: bool) -> Result<(), NodeError> {
        self.submit(
            |done| Request::Change {
                change,
                force,
                done,
            },
            NodeError::Unknown("the node stopped during the change".into()),
        )
        .await
    }

    /// Adds a voter (catch-up first, then joint consensus). Answers when the change is done.
    pub async fn add_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.change(Membership::AddPeer(peer)).await
    }

    /// Removes a voter.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.change(Membership::RemovePeer(peer)).await
    }

    /// Changes the voters to exactly `voters`.
    pub async fn change_peers(&self, voters: BTreeSet<PeerId>) -> Result<(), NodeError> {
        self.change(Membership::ChangePeers(voters)).await
    }

    /// [`Node::add_peer`] without the strict reconfiguration check: membership changes are
    /// otherwise refused when the new voters would include fewer live ones (heard by the
    /// leader within an election timeout, or new and caught up) than their majority.
    pub async fn add_peer_forced(&self, peer: PeerId) -> Result<(), NodeError> {
        self.change_with(Membership::AddPeer(peer), true).await
    }

    /// [`Node::remove_peer`] without the strict reconfiguration check.
    pub async fn remove_peer_forced(&self, peer: PeerId) -> Result<(), NodeError> {
        self.change_with(Membership::RemovePeer(peer), true).await
    }

    /// [`Node::change_peers`] without the strict reconfiguration check.
    pub async fn change_peers_forced(&self, voters: BTreeSet<PeerId>) -> Result<(), NodeError> {
        self.change_with(Membership::ChangePeers(voters), true)
            .await
    }

    /// Adds learners.
    pub async fn add_learners(&self, learners: Vec<PeerId>) -> Result<(), NodeError> {
        self.change(Membership::AddLearners(learners)).await
    }

    /// Removes learners.
    pub async fn remove_learners(&self, learners: Vec<PeerId>) -> Result<(), NodeError> {
        self.change(Membership::RemoveLearners(learners)).await
    }

    /// Promotes a learner to voter.
    pub async fn promote_learner(&self, learner: PeerId) -> Result<(), NodeError> {
        self.change(Membership::PromoteLearner(learner)).await
    }

    /// Unsafe, local: replaces the voters without consensus, to recover a group that lost
    /// its majority (SOFAJRaft's `resetPeers`). Refused while this peer leads or heard its
    /// leader within an election timeout, or while a majority of the current voters'
    /// processes (this one included) were heard from within an election timeout: the group
    /// still has a quorum, so a reset would make a second leader.
    pub async fn reset_peers(&self, voters: Vec<PeerId>) -> Result<(), NodeError> {
        self.change(Membership::ResetPeers(voters)).await
    }

    /// Transfers leadership to `target` (`None`: the most up-to-date peer). Answers with the
    /// new leader once this peer stepped down in its favour.
    pub async fn transfer_leadership(&self, target: Option<PeerId>) -> Result<PeerId, NodeError> {
        self.submit(
            |done| Request::Transfer { target, done },
            NodeError::Unknown("the node stopped during the transfer".into()),
        )
        .await
    }

    /// Starts an election now (with pre-vote), as if the election timer fired: a way to
    /// choose who leads a new group first (a bootstrap spreads its regions' first leaders
    /// over the stores). Nothing happens on a leader or a peer that may not campaign; the
    /// answer says only that the core took the request.
    pub async fn campaign(&self) -> Result<(), NodeError> {
        self.submit(|done| Request::Campaign { done }, NodeError::ShutDown)
            .await
    }

    /// Takes a snapshot now; answers with its index.
    pub async fn snapshot(&self) -> Result<LogIndex, NodeError> {
        self.snapshot_meta().await.map(|meta| meta.index)
    }

    /// Takes a snapshot now (or finds one already at the applied index); answers with its
    /// meta: what [`crate::SnapshotRequest`] names to fetch it (a backup does).
    pub async fn snapshot_meta(&self) -> Result<SnapshotMeta, NodeError> {
        self.submit(|done| Request::Snapshot { done }, NodeError::ShutDown)
            .await
    }

    /// A human-readable dump of the core (role, indexes, every replicator).
    pub async fn describe(&self) -> Result<String, NodeError> {
        self.submit(|done| Request::Describe { done }, NodeError::ShutDown)
            .await
    }

    /// Changes the election timeout (rounded down to whole ticks; at least two ticks).
    pub async fn set_election_timeout(&self, timeout_ms: u64) -> Result<(), NodeError> {
        let ticks = timeout_ms / self.inner.tick_ms.max(1);
        self.submit(
            |done| Request::SetElectionTimeout { ticks, done },
            NodeError::ShutDown,
        )
        .await
    }

    /// The leader this peer knows of.
    #[must_use]
    pub fn leader_id(&self) -> Option<PeerId> {
        lock_status(&self.inner.status).leader.clone()
    }

    /// Voters of the configuration in force.
    #[must_use]
    pub fn list_peers(&self) -> Vec<PeerId> {
        let status = lock_status(&self.inner.status);
        status.configuration.voters.iter().cloned().collect()
    }

    /// Learners of the configuration in force.
    #[must_use]
    pub fn list_learners(&self) -> Vec<PeerId> {
        let status = lock_status(&self.inner.status);
        status.configuration.learners.iter().cloned().collect()
    }

    /// Leader only: peers heard from within an election timeout.
    #[must_use]
    pub fn list_alive_peers(&self) -> Vec<PeerId> {
        lock_status(&self.inner.status).alive_peers.clone()
    }

    /// Last index in the log.
    #[must_use]
    pub fn last_log_index(&self) -> LogIndex {
        lock_status(&self.inner.status).last_index
    }

    /// Commit index.
    #[must_use]
    pub fn committed_index(&self) -> LogIndex {
        lock_status(&self.inner.status).committed
    }

    /// Applied index.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        lock_status(&self.inner.status).applied
    }

    /// Role of this peer.
    #[must_use]
    pub fn state(&self) -> Role {
        lock_status(&self.inner.status).role
    }

    /// Everything the last round published.
    #[must_use]
    pub fn status(&self) -> NodeStatus {
        lock_status(&self.inner.status).clone()
    }

    /// `f` over what the last round published, without copying it (keep `f` short: the
    /// round waits to publish).
    pub fn with_status<R>(&self, f: impl FnOnce(&NodeStatus) -> R) -> R {
        f(&lock_status(&self.inner.status))
    }

    /// True if this peer is the leader (as of the last round).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.state() == Role::Leader
    }

    /// Requests queued to the round and not yet taken.
    pub(crate) fn requests_queued(&self) -> u64 {
        let sender = &self.inner.requests;
        (sender.max_capacity() - sender.capacity()) as u64
    }

    pub(crate) fn metrics(&self) -> &Arc<GroupMetrics> {
        &self.inner.metrics
    }

    /// Queues one request and waits for its answer. `lost` answers when the round dropped
    /// the request unanswered (the manager stopped).
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Request,
        lost: NodeError,
    ) -> Result<T, NodeError> {
        let (done, answer) = oneshot::channel();
        let request = make(done);
        let queued = match self.inner.queue_full {
            QueueFullPolicy::Busy => match self.inner.requests.try_send(request) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(NodeError::Raft(RaftError::Busy(format!(
                        "request queue of group {} is full",
                        self.inner.group
                    ))))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            },
            QueueFullPolicy::Block => self.inner.requests.send(request).await.map_err(|_| ()),
        };
        if queued.is_err() {
            return Err(self.inner.shared.stopped_error());
        }
        self.inner
            .shared
            .note_request(self.inner.group, &self.inner.requested);
        self.inner.shared.wake.notify_one();
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(lost),
        }
    }
}
