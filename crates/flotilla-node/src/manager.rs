//! [`NodeManager`]: every raft group of one process, driven in rounds (SOFAJRaft's
//! `NodeManager` plus the batching of TiKV's raftstore).
//!
//! Architecture: one thread per manager (`flotilla-round`) owns the whole driver state and
//! runs *rounds*: for every group with work, ticks, inbound messages and queued requests,
//! then one write and one fsync for all groups' entries, then the frames, the applies and
//! the answers. The files of the driver, each with what it owns:
//!
//! - `round`: the round thread and the order of a round (`Driver`, the write path);
//! - `wake_policy`: hibernation (on by default) — which groups sleep, what wakes them, and
//!   the one beacon per heartbeat interval between processes (not per group) so a dead
//!   leader's sleeping followers still wake and elect; `hibernation` holds the sleeping
//!   set and process liveness;
//! - `install`: snapshot copies from the leader, off the round, one per group at a time;
//! - `control`: adding, removing and describing groups on the round;
//! - `shared` (`ManagerShared`): what the handles and the round share; `wake`: how the
//!   round thread is woken.
//!
//! Owns: the manager handle — opening the data directory, starting the round thread,
//! queueing control requests to it, reading counters and metrics, and shutting down. Must
//! never: wait for a round except for an answer the round gives, or hold a lock across an
//! `.await`.
//!
//! Observability: [`NodeManager::metrics_text`] (per store) and
//! [`NodeManager::metrics_text_for`] (groups in detail) render what `metrics` records as
//! `exposition` lays it out, and [`NodeManager::describe`] asks the round for every group's
//! dump. Per-group work in the round runs in debug-level `tracing` spans carrying group,
//! peer and term.
//!
//! Known debt: each snapshot reset is its own fsync (a round's term/vote saves are one
//! journal write, `flotilla_storage::FileMetaStorage`); a round's write is
//! not pipelined with the next round's work; a sleeping follower whose leader's *group*
//! (not process) went away on a live process — stopped by a state machine failure — is not
//! woken by the beacons (a request or a message wakes it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_raft::PeerId;
use flotilla_storage::{FileMetaStorage, GroupId, SharedLog};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::exposition::{MetricsQuery, MetricsQueryError, ProcessCounters};
use crate::group::{storage_error, GroupSetup, GroupStart};
use crate::hibernation::{Liveness, Sleepers};
use crate::identity::Identity;
use crate::install::{InstallOptions, Installs};
use crate::metrics::ManagerMetrics;
use crate::node::{Node, Nodes};
use crate::options::ManagerOptions;
use crate::round::{run, Control, Driver};
use crate::shared::{lock, ManagerShared, Stats};
use crate::snapshot::SnapshotService;
use crate::state_machine::StateMachine;
use crate::transport::{Inbox, Transport};
use crate::wake::RoundWake;

/// Group creations queued to the round.
const CONTROL_QUEUE_MAX: usize = 64;

/// Counters of one manager, for tests, benchmarks and (later) metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    /// Rounds run.
    pub rounds: u64,
    /// Shared-log writes (each one write + one fsync).
    pub log_writes: u64,
    /// Entries written to the shared log.
    pub entries_written: u64,
    /// Group-writes covered by those log writes (a log write covering 5 groups counts 5).
    pub group_writes: u64,
    /// Term/vote saves (groups whose meta was saved; a round's are one fsynced write).
    pub meta_saves: u64,
    /// Frames handed to the transport.
    pub frames_sent: u64,
    /// Messages in those frames.
    pub messages_sent: u64,
    /// Snapshots fetched from a leader and installed.
    pub snapshots_installed: u64,
    /// Snapshot installs that failed (copy error, deadline, superseded).
    pub snapshot_installs_failed: u64,
    /// Groups hibernating as of the last round.
    pub groups_hibernating: u64,
    /// Hibernating groups woken, whatever the reason.
    pub group_wakes: u64,
    /// Liveness beacons sent (frames without messages).
    pub beacons_sent: u64,
}

/// Every raft group of one process. See the module documentation.
pub struct NodeManager {
    shared: Arc<ManagerShared>,
    /// Every group's handle (shared with the round, which fills it).
    nodes: Arc<Nodes>,
    control: mpsc::Sender<Control>,
    inbox: Inbox,
    fresh: bool,
    /// Answers (or is dropped) when the round thread has stopped every group and ended.
    task: Mutex<Option<oneshot::Receiver<()>>>,
}

impl std::fmt::Debug for NodeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeManager")
            .field("id", &self.shared.id)
            .field("fresh", &self.fresh)
            .finish_non_exhaustive()
    }
}

impl NodeManager {
    /// Opens (recovering) the data directory and starts the round task. Must be called
    /// within a tokio runtime. Frames for this process go to [`NodeManager::inbox`]; wire
    /// it to the transport (e.g. [`crate::LocalTransport::register`]).
    pub async fn open(
        options: ManagerOptions,
        transport: Arc<dyn Transport>,
    ) -> Result<NodeManager, NodeError> {
        options.raft.validate()?;
        options.check_wire_limits()?;
        if options.hibernation && options.hibernate_idle_ticks == 0 {
            return Err(NodeError::Raft(flotilla_raft::RaftError::InvalidArgument(
                "hibernate_idle_ticks must be at least 1 when hibernation is on".into(),
            )));
        }
        if options.request_queue_max == 0 || options.inbound_frames_max == 0 {
            return Err(NodeError::Raft(flotilla_raft::RaftError::InvalidArgument(
                "request_queue_max and inbound_frames_max must be at least 1".into(),
            )));
        }
        let opening = options.clone();
        let (fresh, log, meta) = tokio::task::spawn_blocking(move || open_storage(&opening))
            .await
            .map_err(|e| NodeError::Io(format!("opening storage panicked: {e}")))??;
        let wake = Arc::new(RoundWake::default());
        let transport_metrics = transport.metrics().unwrap_or_default();
        let identity = Arc::new(Identity::new(
            options.id.clone(),
            options.cluster,
            transport_metrics.clone(),
        ));
        let addresses = options.addresses.clone();
        let shared = Arc::new(ManagerShared {
            id: options.id.clone(),
            identity: identity.clone(),
            incarnation: incarnation(&options.id),
            wake: wake.clone(),
            requested: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            failed: Mutex::new(None),
            stats: Stats::default(),
            metrics: ManagerMetrics::with_transport(transport_metrics),
            snapshots: SnapshotService::with_identity(identity.clone()),
        });
        let nodes: Arc<Nodes> = Arc::new(Mutex::new(BTreeMap::new()));
        let runtime = tokio::runtime::Handle::current();
        let installs = Installs::new(
            transport.clone(),
            runtime.clone(),
            wake.clone(),
            InstallOptions {
                chunk_bytes: options.snapshot_chunk_bytes,
                deadline: options.snapshot_install_deadline,
                throttle: options.snapshot_throttle.clone(),
            },
        );
        let (frames_tx, frames_rx) = mpsc::channel(options.inbound_frames_max);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
        let driver = Driver {
            shared: shared.clone(),
            nodes: nodes.clone(),
            fresh,
            log,
            meta,
            groups: BTreeMap::new(),
            transport,
            inbound: frames_rx,
            control: control_rx,
            last_tick: Instant::now(),
            last_round: Instant::now(),
            more_work: false,
            awake: BTreeSet::new(),
            requests_left: BTreeSet::new(),
            sleepers: Sleepers::default(),
            watched: BTreeMap::new(),
            liveness: Liveness::default(),
            beacon_targets: BTreeSet::new(),
            beacon_targets_at: None,
            failed: None,
            runtime,
            installs,
            opened_groups: std::collections::BTreeSet::new(),
            options,
        };
        let (finished_tx, finished_rx) = oneshot::channel();
        let driver = Box::new(driver);
        std::thread::Builder::new()
            .name("flotilla-round".into())
            .spawn(move || run(driver, finished_tx))
            .map_err(|e| NodeError::Io(format!("cannot start the round thread: {e}")))?;
        Ok(NodeManager {
            inbox: Inbox {
                frames: frames_tx,
                wake,
                snapshots: shared.snapshots.clone(),
                transport_metrics: shared.metrics.transport.clone(),
                identity,
                addresses,
            },
            shared,
            nodes,
            control: control_tx,
            fresh,
            task: Mutex::new(Some(finished_rx)),
        })
    }

    /// This process's peer id (the id of its peers in every group).
    #[must_use]
    pub fn id(&self) -> &PeerId {
        &self.shared.id
    }

    /// This process's identity: what frames, snapshot fetches and CLI calls must name.
    #[must_use]
    pub fn identity(&self) -> &Arc<Identity> {
        &self.shared.identity
    }

    /// The cluster this process belongs to (0: none).
    #[must_use]
    pub fn cluster(&self) -> u64 {
        self.shared.identity.cluster()
    }

    /// Sets the cluster frames and snapshot fetches carry and must name (a store that
    /// learns or makes its cluster after opening its runtime).
    pub fn set_cluster(&self, cluster: u64) {
        self.shared.identity.set_cluster(cluster);
    }

    /// The address book this process's transport dials from.
    #[must_use]
    pub fn addresses(&self) -> &crate::identity::AddressBook {
        &self.inbox.addresses
    }

    /// Where transports deliver frames for this process.
    #[must_use]
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// True if the data directory was empty when opened (its peers never acknowledged
    /// anyone, so they start without the vote guard).
    #[must_use]
    pub fn was_fresh(&self) -> bool {
        self.fresh
    }

    /// Starts (or restarts, from its durable state) the peer of `group` on this process.
    /// `peers`: the initial voters, used only when the group has no snapshot yet (the same
    /// list on every peer; empty for a peer that waits to be added).
    pub async fn add_group(
        &self,
        group: GroupId,
        peers: Vec<PeerId>,
        state_machine: impl StateMachine,
    ) -> Result<Node, NodeError> {
        self.add_group_setup(GroupSetup {
            id: group,
            peers,
            start: None,
            state_machine: Box::new(state_machine),
        })
        .await
    }

    /// Adds `group` beginning at `start` (a region split off its parent) instead of with an
    /// empty log: see [`GroupStart`]. Once the group has a snapshot of its own (it takes one
    /// as it opens) `start` is not read again, but a restart must pass the same one.
    pub async fn add_group_at(
        &self,
        group: GroupId,
        start: GroupStart,
        state_machine: impl StateMachine,
    ) -> Result<Node, NodeError> {
        self.add_group_setup(GroupSetup {
            id: group,
            peers: Vec::new(),
            start: Some(start),
            state_machine: Box::new(state_machine),
        })
        .await
    }

    async fn add_group_setup(&self, setup: GroupSetup) -> Result<Node, NodeError> {
        let (done, answer) = oneshot::channel();
        self.control
            .send(Control::AddGroup { setup, done })
            .await
            .map_err(|_| self.shared.stopped_error())?;
        self.shared.wake.notify_one();
        answer.await.map_err(|_| self.shared.stopped_error())?
    }

    /// Stops and forgets `group` on this process, which must hold nothing: refused while
    /// its peer belongs to a configuration or its log has an entry (a group created by
    /// mistake, never added to any configuration). Its handles answer `ShutDown` from then
    /// on; the id may be added again.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), NodeError> {
        let (done, answer) = oneshot::channel();
        self.control
            .send(Control::RemoveGroup { group, done })
            .await
            .map_err(|_| self.shared.stopped_error())?;
        self.shared.wake.notify_one();
        answer.await.map_err(|_| self.shared.stopped_error())?
    }

    /// Stops `group` if it runs on this process and deletes what it keeps here: its log
    /// entries (the shared log resets it to empty) and its snapshots. Its term and vote are
    /// kept, so a peer of the group opened here again never votes twice in a term. Answers
    /// whether the group was running. Unlike [`NodeManager::remove_group`] it does not check
    /// the group's configuration: the caller must know that this peer was removed from the
    /// group (a removed peer often never hears that its removal committed), or that the
    /// group's leftovers belong to no peer this process hosts. Refused while a snapshot
    /// install of the group runs.
    pub async fn purge_group(&self, group: GroupId) -> Result<bool, NodeError> {
        let (done, answer) = oneshot::channel();
        self.control
            .send(Control::PurgeGroup { group, done })
            .await
            .map_err(|_| self.shared.stopped_error())?;
        self.shared.wake.notify_one();
        answer.await.map_err(|_| self.shared.stopped_error())?
    }

    /// The handle of `group`, if this process hosts it.
    #[must_use]
    pub fn node(&self, group: GroupId) -> Option<Node> {
        lock(&self.nodes).get(&group).cloned()
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> ManagerStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ManagerStats {
            rounds: get(&s.rounds),
            log_writes: get(&s.log_writes),
            entries_written: get(&s.entries_written),
            group_writes: get(&s.group_writes),
            meta_saves: get(&s.meta_saves),
            frames_sent: get(&s.frames_sent),
            messages_sent: get(&s.messages_sent),
            snapshots_installed: get(&s.snapshots_installed),
            snapshot_installs_failed: get(&s.snapshot_installs_failed),
            groups_hibernating: self.shared.metrics.groups_hibernating.get(),
            group_wakes: self
                .shared
                .metrics
                .group_wakes
                .iter()
                .map(|c| c.get())
                .sum(),
            beacons_sent: self.shared.metrics.beacons_sent.get(),
        }
    }

    /// This process's metrics in the Prometheus text format (version 0.0.4), per store:
    /// process-wide counters and histograms and the groups summed up, the same size
    /// whatever the number of groups (`crate::exposition`). Never waits for a round.
    #[must_use]
    pub fn metrics_text(&self) -> String {
        self.metrics_text_for(MetricsQuery::Store)
            .expect("the store's metrics name no group and are never refused")
    }

    /// The metrics `query` asks for: the store ([`NodeManager::metrics_text`]), one group
    /// in detail, or every group in detail. Refuses a group this process does not run.
    pub fn metrics_text_for(&self, query: MetricsQuery) -> Result<String, MetricsQueryError> {
        let stats = self.stats();
        let counters = ProcessCounters {
            rounds: stats.rounds,
            log_writes: stats.log_writes,
            entries_written: stats.entries_written,
            group_writes: stats.group_writes,
            meta_saves: stats.meta_saves,
            frames_sent: stats.frames_sent,
            messages_sent: stats.messages_sent,
        };
        let nodes: Vec<Node> = lock(&self.nodes).values().cloned().collect();
        let metrics = &self.shared.metrics;
        crate::exposition::render(query, &counters, metrics, &self.shared.id, &nodes)
    }

    /// A human-readable dump of this process and every group it runs (the core's
    /// `describe` plus what the runtime holds), taken by the round in one pass at the start
    /// of its next round.
    pub async fn describe(&self) -> Result<String, NodeError> {
        let (done, answer) = oneshot::channel();
        self.control
            .send(Control::Describe { done })
            .await
            .map_err(|_| self.shared.stopped_error())?;
        self.shared.wake.notify_one();
        answer.await.map_err(|_| self.shared.stopped_error())
    }

    /// The storage failure that stopped the manager, if any.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// Stops every group (pending proposals answer "unknown", state machines hear
    /// `on_shutdown`) and waits for the round thread to finish. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            // An error only means the thread ended without answering (it logged why).
            let _ = task.await;
        }
    }
}

impl Drop for NodeManager {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

/// Opens the log and meta store; reports whether the data directory was empty.
fn open_storage(options: &ManagerOptions) -> Result<(bool, SharedLog, FileMetaStorage), NodeError> {
    let fs = options.fs.clone();
    let dir = &options.data_dir;
    let fresh = !fs.exists(dir) || fs.list(dir).map_err(storage_error)?.is_empty();
    fs.create_dir_all(dir).map_err(storage_error)?;
    let log = SharedLog::open(fs.clone(), &dir.join("log"), options.log.clone())
        .map_err(storage_error)?;
    let meta = FileMetaStorage::open(fs, dir.join("meta")).map_err(storage_error)?;
    Ok((fresh, log, meta))
}

/// This run's incarnation: different at every start (wall clock, process id, address),
/// never 0 (which means "not given" on the wire).
fn incarnation(address: &PeerId) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Two managers opened in one process within a clock tick still differ.
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let opened = OPENED.fetch_add(1, Ordering::Relaxed);
    let mut h: u64 = 0x6a09_e667_f3bc_c908 ^ u64::from(std::process::id()) ^ (opened << 32);
    for b in address.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h.max(1)
}
