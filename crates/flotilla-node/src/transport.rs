//! How raft messages leave and enter a process: the [`Transport`] trait, the [`Inbox`] a
//! manager receives on, and [`LocalTransport`] for many managers in one process (tests).
//!
//! Owns: the unit of traffic — one [`Frame`] per destination process per round, carrying
//! messages of any number of groups (docs/DESIGN.md, "Batch at every hop") — and the
//! request/response path of snapshot transfers ([`Transport::fetch_snapshot`], served by
//! the [`crate::SnapshotService`] an [`Inbox`] carries). Must never: block the sender (a full
//! inbox drops the frame; raft retransmits), serve snapshot files on an async worker, or
//! grow without bound. A frame names its sender ([`Frame::from`]) and its receiver
//! ([`Frame::to`], [`Frame::cluster`]): a frame meant for another peer id or cluster is
//! refused before it is queued ([`Inbox::admit`], counted in
//! `flotilla_identity_refused_total`); the manager drops any message in a frame whose `from`
//! is another process (counted in
//! `flotilla_transport_messages_dropped_total{reason="sender_mismatch"}`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_raft::{Message, PeerId};
use flotilla_storage::GroupId;
use tokio::sync::mpsc;

use crate::identity::{AddressBook, Identity};
use crate::metrics::TransportMetrics;
use crate::snapshot::{SnapshotFetch, SnapshotRequest, SnapshotService};

/// Raft messages from one process to another, for any number of groups.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The sending process's peer id.
    pub from: PeerId,
    /// The receiving process's peer id: a process refuses frames naming another.
    pub to: PeerId,
    /// The cluster of both (0: none, for library users without cluster ids): a process
    /// refuses frames naming another.
    pub cluster: u64,
    /// Where the sender can be reached, as it announces itself (empty: not announced).
    /// Set by the transport; the receiver records it in its [`AddressBook`].
    pub from_address: String,
    /// Identifies this run of the sending process: new at every start, never 0 from a
    /// [`crate::NodeManager`] (0: not given). A frame without messages is a liveness
    /// beacon; see the manager's hibernation notes.
    pub incarnation: u64,
    /// `(group, message)` pairs, in the order the groups produced them (order is kept per
    /// (group, peer), which makes pipelined AppendEntries safe).
    pub messages: Vec<(GroupId, Message)>,
}

/// Sends frames to other processes. Implementations must not block: they queue or drop.
pub trait Transport: Send + Sync + 'static {
    /// Sends `frame` to the process `to` (a peer id; where it listens is the transport's
    /// business). Delivery is best effort: raft tolerates loss, duplication is not allowed.
    fn send(&self, to: &PeerId, frame: Frame);

    /// Asks the process at `to` for one part of a snapshot (a request/response call; the
    /// remote side answers with [`SnapshotService::serve`] of its [`Inbox`]). The receiver
    /// bounds the wait with its install deadline. The default refuses: a transport that
    /// cannot carry snapshots leaves followers that fell behind the leader's log stuck.
    fn fetch_snapshot(&self, to: &PeerId, request: SnapshotRequest) -> SnapshotFetch {
        let why = format!(
            "this transport cannot fetch snapshots (group {} from {to})",
            request.group
        );
        Box::pin(std::future::ready(Err(why)))
    }

    /// The counters this transport keeps of what it dropped, if any: a manager opened on it
    /// renders them with its own metrics and shares them with the server its inbox is
    /// served by. The default keeps none (the manager then keeps its own).
    fn metrics(&self) -> Option<Arc<TransportMetrics>> {
        None
    }
}

/// The receiving end a transport hands frames to: a bounded queue plus the manager's
/// wake-up, and the service answering snapshot fetches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    pub(crate) frames: mpsc::Sender<Frame>,
    pub(crate) wake: Arc<crate::wake::RoundWake>,
    pub(crate) snapshots: SnapshotService,
    pub(crate) transport_metrics: Arc<TransportMetrics>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) addresses: AddressBook,
}

impl Inbox {
    /// Serves this process's snapshots to the peers installing them (blocking calls).
    #[must_use]
    pub fn snapshot_service(&self) -> &SnapshotService {
        &self.snapshots
    }

    /// The manager's transport counters, for the server delivering to this inbox to count
    /// the connections it refuses.
    #[must_use]
    pub fn transport_metrics(&self) -> &Arc<TransportMetrics> {
        &self.transport_metrics
    }

    /// This process's identity (what frames must name to be admitted).
    #[must_use]
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The address book the manager's transport dials from.
    #[must_use]
    pub fn addresses(&self) -> &AddressBook {
        &self.addresses
    }

    /// Refuses a frame meant for another peer id or cluster (counted, logged once per
    /// sender) with a sentence saying why. Transports call it before [`Inbox::deliver`].
    pub fn admit(&self, frame: &Frame) -> Result<(), String> {
        self.identity
            .check(
                frame.to.as_str(),
                frame.cluster,
                "raft frame",
                frame.from.as_str(),
            )
            .map_err(|refused| self.identity.describe(&refused))
    }

    /// Records the address an admitted frame's sender announced (a peer that moved is
    /// reached at its new address from now on).
    pub fn learn_address(&self, frame: &Frame) {
        if frame.from_address.is_empty() {
            return;
        }
        match self.addresses.set(&frame.from, &frame.from_address) {
            Ok(true) => {
                tracing::info!(peer = %frame.from, address = %frame.from_address, "peer announced a new address")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(peer = %frame.from, %error, "cannot record the address a peer announced")
            }
        }
    }

    /// Hands `frame` to the manager. Returns it back when the manager's inbound queue is
    /// full or the manager stopped (the caller drops it; raft retransmits).
    pub fn deliver(&self, frame: Frame) -> Result<(), Frame> {
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.wake.notify_one();
                Ok(())
            }
            Err(
                mpsc::error::TrySendError::Full(frame) | mpsc::error::TrySendError::Closed(frame),
            ) => Err(frame),
        }
    }
}

#[derive(Default)]
struct Registry {
    inboxes: BTreeMap<PeerId, Inbox>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(PeerId, PeerId)>,
}

/// Managers of one process reaching each other through their inboxes, with links that
/// tests can cut. Messages are handed over as values: no encoding.
#[derive(Clone, Default)]
pub struct LocalTransport {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.lock();
        f.debug_struct("LocalTransport")
            .field("processes", &registry.inboxes.keys().collect::<Vec<_>>())
            .field("cut", &registry.cut)
            .finish()
    }
}

impl LocalTransport {
    /// An empty registry.
    #[must_use]
    pub fn new() -> LocalTransport {
        LocalTransport::default()
    }

    // A short critical section with no await inside: a std mutex is right (as mini-redis
    // explains for its shared state).
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers (or replaces, after a restart) the inbox of the process at `address`.
    pub fn register(&self, address: &PeerId, inbox: Inbox) {
        self.lock().inboxes.insert(address.clone(), inbox);
    }

    /// Removes the process at `address`.
    pub fn unregister(&self, address: &PeerId) {
        self.lock().inboxes.remove(address);
    }

    /// Drops every frame from `from` to `to` until healed.
    pub fn cut(&self, from: &PeerId, to: &PeerId) {
        self.lock().cut.insert((from.clone(), to.clone()));
    }

    /// Cuts every link to and from `address`.
    pub fn isolate(&self, address: &PeerId) {
        let mut registry = self.lock();
        let others: Vec<PeerId> = registry.inboxes.keys().cloned().collect();
        for other in others.into_iter().filter(|o| o != address) {
            registry.cut.insert((address.clone(), other.clone()));
            registry.cut.insert((other, address.clone()));
        }
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: &PeerId, frame: Frame) {
        let inbox = {
            let registry = self.lock();
            if registry.cut.contains(&(frame.from.clone(), to.clone())) {
                return;
            }
            registry.inboxes.get(to).cloned()
        };
        match inbox {
            Some(inbox) => {
                if inbox.admit(&frame).is_err() {
                    return;
                }
                if let Err(frame) = inbox.deliver(frame) {
                    tracing::debug!(to = %to, messages = frame.messages.len(), "inbox full or closed: frame dropped");
                }
            }
            None => tracing::debug!(to = %to, "no such process: frame dropped"),
        }
    }

    /// Served on the blocking pool by the process at `to`. Cut links do not apply (the
    /// request does not name its sender); an unregistered process refuses.
    fn fetch_snapshot(&self, to: &PeerId, request: SnapshotRequest) -> SnapshotFetch {
        let service = self
            .lock()
            .inboxes
            .get(to)
            .map(|inbox| inbox.snapshots.clone());
        let to = to.clone();
        Box::pin(async move {
            let service = service.ok_or_else(|| format!("no process at {to}"))?;
            tokio::task::spawn_blocking(move || service.serve(&request))
                .await
                .map_err(|e| format!("serving the snapshot failed: {e}"))?
        })
    }
}
