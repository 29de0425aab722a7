//! [`NodeManager`]: every raft group of one process, driven in rounds (SOFAJRaft's
//! `NodeManager` plus the batching of TiKV's raftstore).
//!
//! Architecture: one thread per manager (`flotilla-round`) owns the whole driver state,
//! parks until there is work (a request, an inbound frame, the next tick; see
//! `RoundWake`) and then runs one *round*. A round is plain synchronous
//! code on that thread, so the fsync and the state machine callbacks never block an async
//! worker, and no lock is held across an `.await`. One round, for every group with work:
//!
//! 1. ticks for the time elapsed since the last round (first: a lease read is safe only
//!    once the core's clock is current), then inbound messages, then queued requests;
//! 2. `ready()`; `messages` leave at once, one [`Frame`] per destination process (the
//!    leader's AppendEntries go before its own fsync);
//! 3. one [`WriteBatch`] for every group's entries and compactions — one write, one fsync
//!    — preceded by the term/vote saves that changed (`FileMetaStorage`, fsynced);
//! 4. `messages_after_persist` leave, `on_persisted`;
//! 5. committed entries go through each group's state machine (in order), reads complete,
//!    events reach the callbacks.
//!
//! Steps 2-5 repeat (a bounded number of passes) while a group still has work, e.g. reads
//! released by the apply.
//!
//! Hibernation (module `hibernation`, on by default): a round visits only the groups that
//! are awake, plus those something reached this round — a request flagged by its handle, a
//! message, a liveness verdict. A group whose core hibernates and has nothing left to do
//! leaves the awake set and costs nothing until then; its peer processes exchange one
//! beacon per heartbeat interval (not per group) so a dead leader's sleeping followers
//! still wake and elect.
//!
//! Snapshot install (a `Ready::snapshot`): the copy from the leader runs as a blocking task
//! off the round ([`crate::snapshot`]), one per group at a time; a newer request cancels
//! the running copy and starts when it ends. While it runs the core answers AppendEntries
//! with busy. At the start of a later round the outcome is taken: the state machine loads
//! the snapshot, the group's log is reset to it (its own write + fsync, before the core
//! hears of it), then `on_snapshot_installed`; on failure `on_snapshot_install_failed`.
//!
//! Owns: the order of that round and the rule that a failed write stops every group and
//! acknowledges nothing. Must never: acknowledge after a failed write, block an async
//! worker, run a snapshot copy on the round, or queue without bound.
//!
//! Observability: [`NodeManager::metrics_text`] renders the `metrics` module's registry (durations are
//! measured here with `Instant`: the runtime reads clocks, the core never does) and
//! [`NodeManager::describe`] asks the round for every group's dump. Per-group work in the
//! round runs in debug-level `tracing` spans carrying group, peer and term.
//!
//! Known debt: each meta save and each snapshot reset is its own fsync; a round's write is
//! not pipelined with the next round's work; a sleeping follower whose leader's *group*
//! (not process) went away on a live process — stopped by a state machine failure — is not
//! woken by the beacons (a request or a message wakes it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flotilla_raft::{Message, PeerId, Ready, SnapshotMeta};
use flotilla_storage::{
    FileMetaStorage, GroupId, MetaStorage, RaftMeta, SharedLog, SnapshotStore, WriteBatch,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::group::{storage_error, Group, GroupSetup, RequestQueue};
use crate::hibernation::{Liveness, Sleepers, WakeReason};
use crate::identity::Identity;
use crate::metrics::{GroupView, ManagerMetrics, MessageDrop, ProcessCounters};
use crate::node::{Node, NodeInner, NodeStatus};
use crate::options::ManagerOptions;
use crate::snapshot::{run_install, InstallDone, InstallJob, InstallOptions, SnapshotService};
use crate::state_machine::StateMachine;
use crate::transport::{Frame, Inbox, Transport};
use crate::wake::RoundWake;

/// Passes of steps 2-5 per round before yielding to new input.
const READY_PASSES_MAX: usize = 4;
/// Ticks fed in one round after a long pause (the rest of the pause is skipped: the core
/// only needs to know that its timeouts expired).
const TICKS_PER_ROUND_MAX: u64 = 1_000;
/// Group creations queued to the round.
const CONTROL_QUEUE_MAX: usize = 64;
/// Rounds between two recomputations of the processes to send beacons to (also redone when
/// a group is added).
const BEACON_TARGETS_REFRESH_ROUNDS: u64 = 50;

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
    /// Term/vote saves (each fsynced).
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

#[derive(Default)]
struct Stats {
    rounds: AtomicU64,
    log_writes: AtomicU64,
    entries_written: AtomicU64,
    group_writes: AtomicU64,
    meta_saves: AtomicU64,
    frames_sent: AtomicU64,
    messages_sent: AtomicU64,
    snapshots_installed: AtomicU64,
    snapshot_installs_failed: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What the handles and the round share.
pub(crate) struct ManagerShared {
    pub(crate) id: PeerId,
    /// The id and cluster traffic must name (shared with the inbox and snapshot service).
    pub(crate) identity: Arc<Identity>,
    /// Drawn at open, never 0: tells peers this process restarted.
    incarnation: u64,
    pub(crate) wake: Arc<RoundWake>,
    /// Groups whose handle queued a request since the round last polled them (each at most
    /// once while its flag is set, so at most one entry per group).
    requested: Mutex<Vec<GroupId>>,
    stopping: AtomicBool,
    /// Set once a write failed: every group stopped.
    failed: Mutex<Option<String>>,
    stats: Stats,
    pub(crate) metrics: ManagerMetrics,
    nodes: Mutex<BTreeMap<GroupId, Node>>,
    /// Serves this process's snapshots (every group's store is registered here).
    snapshots: SnapshotService,
    /// Finished snapshot copies for the round to take; at most one per running copy.
    installed: Mutex<Vec<InstallDone>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ManagerShared {
    /// A request was queued for `group`: flag it for the next round (once until polled).
    pub(crate) fn note_request(&self, group: GroupId, flag: &AtomicBool) {
        if !flag.swap(true, Ordering::SeqCst) {
            lock(&self.requested).push(group);
        }
    }

    /// The error for a request the manager can no longer take.
    pub(crate) fn stopped_error(&self) -> NodeError {
        lock(&self.failed)
            .as_ref()
            .map_or(NodeError::ShutDown, |why| NodeError::Io(why.clone()))
    }
}

enum Control {
    AddGroup {
        setup: GroupSetup,
        done: oneshot::Sender<Result<Node, NodeError>>,
    },
    /// Every group's dump, taken at the start of a round.
    Describe { done: oneshot::Sender<String> },
    RemoveGroup {
        group: GroupId,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// Every raft group of one process. See the module documentation.
pub struct NodeManager {
    shared: Arc<ManagerShared>,
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
            nodes: Mutex::new(BTreeMap::new()),
            snapshots: SnapshotService::with_identity(identity.clone()),
            installed: Mutex::new(Vec::new()),
        });
        let (frames_tx, frames_rx) = mpsc::channel(options.inbound_frames_max);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
        let driver = Driver {
            shared: shared.clone(),
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
            beacon_targets_round: None,
            failed: None,
            runtime: tokio::runtime::Handle::current(),
            installs: BTreeMap::new(),
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
        let (done, answer) = oneshot::channel();
        let setup = GroupSetup {
            id: group,
            peers,
            state_machine: Box::new(state_machine),
        };
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

    /// The handle of `group`, if this process hosts it.
    #[must_use]
    pub fn node(&self, group: GroupId) -> Option<Node> {
        lock(&self.shared.nodes).get(&group).cloned()
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

    /// Every metric of this process in Prometheus text exposition format (version 0.0.4):
    /// process-wide counters and histograms, then per-group ones labelled `group`, then
    /// the replicators of the groups this process leads labelled `group` and `peer` (the
    /// follower). Reads atomics and each group's published status; never waits for a
    /// round.
    #[must_use]
    pub fn metrics_text(&self) -> String {
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
        let nodes: Vec<Node> = lock(&self.shared.nodes).values().cloned().collect();
        let statuses: Vec<_> = nodes.iter().map(Node::status).collect();
        let views: Vec<GroupView<'_>> = nodes
            .iter()
            .zip(&statuses)
            .map(|(node, status)| GroupView {
                group: node.group(),
                metrics: node.metrics(),
                status,
                requests_queued: node.requests_queued(),
            })
            .collect();
        crate::metrics::render(&counters, &self.shared.metrics, &views)
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

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// The round thread: wait for work, run a round, repeat; then stop every group and answer
/// `finished`.
fn run(mut driver: Box<Driver>, finished: oneshot::Sender<()>) {
    let shared = driver.shared.clone();
    // The round spawns onto the runtime (the transport's connections, snapshot copies) as
    // the blocking pool's threads could: enter its context for the thread's life.
    let runtime = driver.runtime.clone();
    let _context = runtime.enter();
    shared.wake.register();
    let tick = driver.options.tick;
    loop {
        if !driver.more_work {
            shared.wake.wait_until(driver.last_tick + tick);
        }
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.round()));
        if let Err(payload) = round {
            // A round panicked (a broken invariant): the groups' state cannot be trusted,
            // so they are dropped unanswered (their callers hear that the node stopped).
            let why = panic_text(payload.as_ref());
            tracing::error!(peer = %shared.id, error = %why, "round panicked; manager stopped");
            *lock(&shared.failed) = Some(format!("round panicked: {why}"));
            lock(&shared.nodes).clear();
            drop(driver);
            let _ = finished.send(());
            return;
        }
        if driver.failed.is_some() {
            break;
        }
    }
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || driver.stop_all()));
    if let Err(payload) = stopped {
        tracing::error!(peer = %shared.id, error = %panic_text(payload.as_ref()), "stopping the groups panicked");
    }
    let _ = finished.send(());
}

/// Everything a round owns; lives on the round thread.
struct Driver {
    shared: Arc<ManagerShared>,
    options: ManagerOptions,
    fresh: bool,
    log: SharedLog,
    meta: FileMetaStorage,
    groups: BTreeMap<GroupId, Group>,
    transport: Arc<dyn Transport>,
    inbound: mpsc::Receiver<Frame>,
    control: mpsc::Receiver<Control>,
    /// When the last tick was fed (advanced by whole tick periods).
    last_tick: Instant,
    /// When the previous round started (a late one means this process stalled).
    last_round: Instant,
    /// The last round left work behind (queued requests or readies): run again at once.
    more_work: bool,
    /// Groups ticked and visited every round. Every group is here or in `sleepers`.
    awake: BTreeSet<GroupId>,
    /// Groups with more queued requests than one round takes.
    requests_left: BTreeSet<GroupId>,
    /// Groups that hibernate, by their leader's process.
    sleepers: Sleepers,
    /// Followers woken while asleep by something other than their leader, with that leader
    /// and when: they campaign if it turns out gone (see `note_if_woken`). At most one entry
    /// per group; entries end within a heartbeat interval of the leader being heard.
    watched: BTreeMap<GroupId, (PeerId, Instant)>,
    /// What this process knows of the processes it exchanges frames with.
    liveness: Liveness,
    /// Processes sharing a group with this one: they get a beacon when sent nothing else.
    beacon_targets: BTreeSet<PeerId>,
    /// Round of the last recomputation of `beacon_targets` (`None`: due now).
    beacon_targets_round: Option<u64>,
    failed: Option<NodeError>,
    /// Where install copies are spawned (the round runs on its own thread).
    runtime: tokio::runtime::Handle,
    /// Snapshot copies running, one per group.
    installs: BTreeMap<GroupId, Install>,
    /// Groups opened since this process started: a group opened again (after it was
    /// stopped by a failure) may have acknowledged a leader, so it gets the vote guard.
    opened_groups: std::collections::BTreeSet<GroupId>,
}

/// A snapshot copy running for one group.
struct Install {
    meta: SnapshotMeta,
    cancel: Arc<AtomicBool>,
    /// A newer request that starts once this copy ends.
    next: Option<(SnapshotMeta, PeerId)>,
}

/// Messages bundled per destination process.
#[derive(Default)]
struct Outbound {
    frames: BTreeMap<PeerId, Vec<(GroupId, Message)>>,
}

impl Outbound {
    fn push(&mut self, group: GroupId, messages: Vec<Message>) {
        for message in messages {
            self.frames
                .entry(message.to.clone())
                .or_default()
                .push((group, message));
        }
    }
}

impl Driver {
    fn round(&mut self) {
        let started = Instant::now();
        let _round = tracing::debug_span!("round", peer = %self.shared.id).entered();
        self.round_inner();
        let metrics = &self.shared.metrics;
        metrics.round_seconds.observe_duration(started.elapsed());
        metrics.inbound_frames_queued.set(self.inbound.len() as u64);
    }

    fn round_inner(&mut self) {
        bump(&self.shared.stats.rounds, 1);
        let now = Instant::now();
        self.forgive_own_stall(now);
        self.accept_controls();
        self.finish_installs();
        if self.failed.is_some() {
            return;
        }
        let ticks = self.elapsed_ticks();
        for id in &self.awake {
            if let Some(group) = self.groups.get_mut(id) {
                for _ in 0..ticks {
                    group.raft.tick();
                }
            }
        }
        // The groups this round visits: the awake ones, and any that something reaches.
        let mut active = self.awake.clone();
        self.deliver_inbound(&mut active, now);
        self.take_requests(&mut active);
        if self.options.hibernation {
            self.send_beacons(now);
            self.wake_followers_of_silent_leaders(&mut active, now);
            self.campaign_watched_followers(&mut active, now);
        }
        for _ in 0..READY_PASSES_MAX {
            if !self.pass(&active) || self.failed.is_some() {
                break;
            }
        }
        if self.failed.is_some() {
            return;
        }
        for id in &active {
            if let Some(group) = self.groups.get(id) {
                group.publish();
            }
        }
        self.put_to_sleep(&active);
        self.more_work = !self.requests_left.is_empty()
            || !self.inbound.is_empty()
            || active
                .iter()
                .filter_map(|id| self.groups.get(id))
                .any(|g| g.raft.has_ready());
    }

    /// A round an election timeout late means this process stalled (a pause, a swapped-out
    /// process): the silence of others measured meanwhile is its own, and frames they sent
    /// may still wait in the inbox. Shorter delays are not forgiven, so that an overloaded
    /// process still notices a dead leader.
    fn forgive_own_stall(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_round);
        self.last_round = now;
        if gap >= self.silence_threshold() {
            tracing::info!(
                ?gap,
                "round came late: peer silence measured meanwhile forgiven"
            );
            self.liveness.forgive_all(now);
        }
    }

    /// An election timeout of the template options: how long a leader's process may be
    /// silent before its sleeping followers are woken (per group, their own timeout).
    fn silence_threshold(&self) -> Duration {
        self.ticks_duration(self.options.raft.election_timeout_ticks)
    }

    fn ticks_duration(&self, ticks: u64) -> Duration {
        self.options
            .tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// Takes the requests of every group whose handle flagged one (and of those with more
    /// left from the last round); a request wakes a sleeping group.
    fn take_requests(&mut self, active: &mut BTreeSet<GroupId>) {
        let mut flagged: Vec<GroupId> = std::mem::take(&mut *lock(&self.shared.requested));
        flagged.extend(std::mem::take(&mut self.requests_left));
        let per_round = self.options.requests_per_round_max;
        for id in flagged {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let _span = group.span("requests").entered();
            let (liveness, now) = (&self.liveness, Instant::now());
            let silence = self.options.tick.saturating_mul(
                u32::try_from(self.options.raft.election_timeout_ticks).unwrap_or(u32::MAX),
            );
            let live = |process: &PeerId| {
                liveness
                    .silence(process, now)
                    .is_some_and(|quiet| quiet < silence)
            };
            if group.take_requests(per_round, &live) {
                self.requests_left.insert(id);
            }
            active.insert(id);
            self.note_if_woken(id, WakeReason::Request, None);
        }
    }

    /// If `id` slept and its core is awake now, it counts as woken for `reason`. A
    /// follower woken by anything but its leader (a request, another peer's message: `by`)
    /// is watched: if its leader's process turns out silent, it campaigns as a sleeping
    /// follower would have (its core, woken, would wait out a fresh vote guard first).
    fn note_if_woken(&mut self, id: GroupId, reason: WakeReason, by: Option<&PeerId>) {
        let Some(group) = self.groups.get(&id) else {
            return;
        };
        if group.raft.is_hibernating() || !self.sleepers.remove(id) {
            return;
        }
        self.awake.insert(id);
        self.shared.metrics.group_wakes[reason.index()].add(1);
        self.publish_sleepers();
        let leader = group
            .raft
            .leader()
            .filter(|l| **l != self.shared.id && Some(*l) != by);
        if let Some(leader) = leader {
            if group.raft.role() == flotilla_raft::Role::Follower {
                self.watched.insert(id, (leader.clone(), Instant::now()));
            }
        }
    }

    /// The watched followers (see `note_if_woken`): those whose leader's process has been
    /// silent for their election timeout since before they woke campaign; a leader heard
    /// since, or a follower that moved on (new leader, campaigning, asleep again), ends the
    /// watch.
    fn campaign_watched_followers(&mut self, active: &mut BTreeSet<GroupId>, now: Instant) {
        if self.watched.is_empty() {
            return;
        }
        for (id, (leader, woken_at)) in std::mem::take(&mut self.watched) {
            let timeout = match self.groups.get(&id) {
                Some(g)
                    if !g.raft.is_hibernating()
                        && g.raft.role() == flotilla_raft::Role::Follower
                        && g.raft.leader() == Some(&leader) =>
                {
                    self.ticks_duration(g.election_timeout_ticks())
                }
                _ => continue,
            };
            let silence = match self.liveness.heard_at(&leader) {
                Some(heard) if heard > woken_at => continue,
                Some(heard) => now.saturating_duration_since(heard),
                None => Duration::MAX,
            };
            if silence < timeout {
                self.watched.insert(id, (leader, woken_at));
                continue;
            }
            tracing::info!(group = id, leader = %leader, ?silence, "woken follower's leader silent: campaigning");
            if let Some(group) = self.groups.get_mut(&id) {
                group.raft.wake_and_campaign();
                active.insert(id);
            }
        }
    }

    /// End of round: a visited group whose core hibernates with nothing left to do leaves
    /// the awake set; the others are (or stay) in it.
    fn put_to_sleep(&mut self, active: &BTreeSet<GroupId>) {
        let mut changed = false;
        for id in active {
            let Some(group) = self.groups.get(id) else {
                self.awake.remove(id);
                continue;
            };
            if group.raft.is_hibernating() && !group.raft.has_ready() {
                if self.awake.remove(id) || !self.sleepers.contains(*id) {
                    let leader = group.raft.leader().filter(|l| **l != self.shared.id);
                    self.sleepers.insert(*id, leader.cloned());
                    changed = true;
                }
            } else {
                self.awake.insert(*id);
                if self.sleepers.remove(*id) {
                    // Woken by something not attributed above (an install finishing).
                    changed = true;
                }
            }
        }
        if changed {
            self.publish_sleepers();
        }
    }

    fn publish_sleepers(&self) {
        let sleeping = self.sleepers.len() as u64;
        self.shared.metrics.groups_hibernating.set(sleeping);
    }

    /// One beacon (a frame without messages) to every process sharing a group with this
    /// one that was sent nothing else for a heartbeat interval.
    fn send_beacons(&mut self, now: Instant) {
        let round = self.shared.stats.rounds.load(Ordering::Relaxed);
        let stale = self
            .beacon_targets_round
            .is_none_or(|at| round >= at + BEACON_TARGETS_REFRESH_ROUNDS);
        if stale {
            self.beacon_targets = self.peer_processes();
            self.beacon_targets_round = Some(round);
        }
        let period = self.ticks_duration(self.options.raft.heartbeat_interval_ticks);
        let due = self.liveness.beacons_due(&self.beacon_targets, now, period);
        if due.is_empty() {
            return;
        }
        let mut outbound = Outbound::default();
        for to in due {
            outbound.frames.insert(to, Vec::new());
        }
        self.shared
            .metrics
            .beacons_sent
            .add(outbound.frames.len() as u64);
        self.send(outbound);
    }

    /// Every process with a peer in one of this process's groups.
    fn peer_processes(&self) -> BTreeSet<PeerId> {
        let mut peers = BTreeSet::new();
        for group in self.groups.values() {
            let c = group.raft.configuration();
            let old = c.old_voters.iter().flatten();
            for peer in c.voters.iter().chain(&c.learners).chain(old) {
                if *peer != self.shared.id && !peers.contains(peer) {
                    peers.insert(peer.clone());
                }
            }
        }
        peers
    }

    /// Wakes, to campaign, every sleeping follower whose leader's process has been silent
    /// for an election timeout: the template's, or the group's own if longer (a group whose
    /// timeout was lowered waits for the template's: slower to fail over, never sooner).
    fn wake_followers_of_silent_leaders(&mut self, active: &mut BTreeSet<GroupId>, now: Instant) {
        for process in self.liveness.silent(now, self.silence_threshold()) {
            let silence = self.liveness.silence(&process, now).unwrap_or_default();
            for id in self.sleepers.following(&process) {
                let timeout = match self.groups.get(&id) {
                    Some(group) => self.ticks_duration(group.election_timeout_ticks()),
                    None => continue,
                };
                if silence < timeout {
                    continue;
                }
                let Some(group) = self.groups.get_mut(&id) else {
                    continue;
                };
                tracing::info!(group = id, leader = %process, ?silence, "leader's process silent: waking to campaign");
                group.raft.wake_and_campaign();
                active.insert(id);
                self.note_if_woken(id, WakeReason::LeaderDown, None);
            }
        }
    }

    /// The process at `process` restarted: its peers' old state is gone. Sleeping followers
    /// of a leader there campaign now; sleeping leaders with a peer there wake, so the
    /// restarted peer hears them at once.
    fn wake_for_restart(&mut self, process: &PeerId, active: &mut BTreeSet<GroupId>) {
        let sleeping: Vec<(GroupId, Option<PeerId>)> = self
            .sleepers
            .all()
            .map(|(id, leader)| (id, leader.cloned()))
            .collect();
        for (id, leader) in sleeping {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let reason = match leader {
                Some(leader) if leader == *process => {
                    group.raft.wake_and_campaign();
                    WakeReason::LeaderRestarted
                }
                None if group.raft.configuration().contains(process) => {
                    group.raft.wake();
                    WakeReason::PeerRestarted
                }
                _ => continue,
            };
            tracing::info!(group = id, peer = %process, reason = reason.name(), "peer's process restarted: waking");
            active.insert(id);
            self.note_if_woken(id, reason, None);
        }
    }

    fn elapsed_ticks(&mut self) -> u64 {
        let tick = self.options.tick;
        let elapsed = self.last_tick.elapsed();
        let ticks = (elapsed.as_nanos() / tick.as_nanos().max(1)) as u64;
        if ticks > 0 {
            let whole = u32::try_from(ticks).unwrap_or(u32::MAX);
            self.last_tick += tick.saturating_mul(whole);
        }
        // Every elapsed tick must reach the cores before a lease is trusted (ready.rs), so
        // the cap is never below what ends the longest lease: one round of an election
        // timeout per group is plenty; the rest of a longer pause changes nothing.
        let lease_bound = self
            .awake
            .iter()
            .filter_map(|id| self.groups.get(id))
            .map(|g| g.election_timeout_ticks() + 1)
            .max()
            .unwrap_or(0);
        ticks.min(TICKS_PER_ROUND_MAX.max(lease_bound))
    }

    fn accept_controls(&mut self) {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::AddGroup { setup, done } => {
                    let result = self.add_group(setup);
                    let _ = done.send(result);
                }
                Control::Describe { done } => {
                    let _ = done.send(self.describe());
                }
                Control::RemoveGroup { group, done } => {
                    let _ = done.send(self.remove_group(group));
                }
            }
        }
    }

    /// See [`NodeManager::remove_group`].
    fn remove_group(&mut self, id: GroupId) -> Result<(), NodeError> {
        let refused = |why: String| {
            Err(NodeError::Raft(flotilla_raft::RaftError::InvalidArgument(
                why,
            )))
        };
        let Some(group) = self.groups.get(&id) else {
            return refused(format!("no group {id} runs on {}", self.shared.id));
        };
        let configuration = group.raft.configuration();
        if !configuration.is_empty() {
            return refused(format!(
                "group {id} belongs to a configuration ({:?}): remove its peer through the \
                 group's leader instead",
                configuration.all_peers()
            ));
        }
        if group.raft.last_index() != flotilla_raft::LogIndex::ZERO {
            return refused(format!(
                "group {id} holds log entries up to {}",
                group.raft.last_index()
            ));
        }
        if self.installs.contains_key(&id) {
            return refused(format!("group {id} is installing a snapshot"));
        }
        self.groups.remove(&id);
        self.awake.remove(&id);
        if self.sleepers.remove(id) {
            self.publish_sleepers();
        }
        self.watched.remove(&id);
        self.requests_left.remove(&id);
        self.beacon_targets_round = None;
        self.shared.snapshots.unregister(id);
        lock(&self.shared.nodes).remove(&id);
        tracing::info!(group = id, "group removed (it held nothing)");
        Ok(())
    }

    fn describe(&self) -> String {
        use std::fmt::Write;
        let stats = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "manager {} incarnation={:#x} groups={} hibernating={} rounds={} log_writes={} installs_running={} inbound_frames_queued={}",
            self.shared.id,
            self.shared.incarnation,
            self.groups.len(),
            self.sleepers.len(),
            get(&stats.rounds),
            get(&stats.log_writes),
            self.installs.len(),
            self.inbound.len()
        );
        for (id, group) in &self.groups {
            let _ = writeln!(out, "group {id}");
            for line in group.describe().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }

    fn add_group(&mut self, setup: GroupSetup) -> Result<Node, NodeError> {
        let id = setup.id;
        if self.groups.contains_key(&id) {
            return Err(NodeError::Raft(flotilla_raft::RaftError::InvalidArgument(
                format!("group {id} already runs on {}", self.shared.id),
            )));
        }
        if self.installs.contains_key(&id) {
            // A snapshot copy of the group's previous incarnation is still running: it would
            // land in the new one's store and log.
            return Err(NodeError::Raft(flotilla_raft::RaftError::Busy(format!(
                "group {id} is still finishing a snapshot install; retry shortly"
            ))));
        }
        let mut config = self.options.raft.clone();
        config.id = self.shared.id.clone();
        config.random_seed = random_seed(id, &self.shared.id);
        config.hibernate_idle_ticks = if self.options.hibernation {
            self.options.hibernate_idle_ticks
        } else {
            0
        };
        // Only a peer that never ran (empty data directory, first opening of the group in
        // this process) may vote at once.
        let first_opening = self.opened_groups.insert(id);
        config.start_with_vote_guard = !(self.fresh && first_opening);
        let (requests_tx, requests_rx) = mpsc::channel(self.options.request_queue_max);
        let requested = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(NodeStatus::default()));
        let snapshots_dir = self.options.data_dir.join("snapshots").join(id.to_string());
        let snapshots =
            SnapshotStore::open(self.options.fs.clone(), snapshots_dir).map_err(storage_error)?;
        self.shared.snapshots.register(id, snapshots.clone());
        let group = Group::open(
            setup,
            config,
            &self.log,
            &self.meta,
            snapshots,
            RequestQueue {
                receiver: requests_rx,
                requested: requested.clone(),
            },
            status.clone(),
        )?;
        let group_metrics = group.metrics().clone();
        self.groups.insert(id, group);
        self.awake.insert(id);
        self.beacon_targets_round = None;
        let tick_ms = u64::try_from(self.options.tick.as_millis()).unwrap_or(u64::MAX);
        let node = Node::new(NodeInner {
            group: id,
            requests: requests_tx,
            status,
            shared: self.shared.clone(),
            queue_full: self.options.queue_full,
            tick_ms,
            metrics: group_metrics,
            requested,
        });
        lock(&self.shared.nodes).insert(id, node.clone());
        self.more_work = true;
        Ok(node)
    }

    /// Steps inbound messages into their groups (waking sleeping ones) and notes who is
    /// alive; a frame without messages is a beacon.
    fn deliver_inbound(&mut self, active: &mut BTreeSet<GroupId>, now: Instant) {
        for _ in 0..self.options.inbound_frames_per_round_max {
            let Ok(frame) = self.inbound.try_recv() else {
                return;
            };
            let heard = self.liveness.heard(&frame.from, frame.incarnation, now);
            if heard.evicted {
                self.shared.metrics.liveness_processes_evicted.add(1);
            }
            if heard.restarted {
                tracing::info!(process = %frame.from, "peer process restarted");
                self.wake_for_restart(&frame.from, active);
            }
            for (group, message) in frame.messages {
                // A process speaks only for itself: a message naming another sender is
                // dropped before any group sees it (issue 12; who the frame's sender really
                // is, is the transport's and the certificates' business).
                if message.from != frame.from {
                    self.shared
                        .metrics
                        .transport
                        .message_dropped(MessageDrop::SenderMismatch, 1);
                    tracing::debug!(group, from = %frame.from, claimed = %message.from, "message from another sender than its frame's: dropped");
                    continue;
                }
                if message.to != self.shared.id {
                    self.shared
                        .metrics
                        .transport
                        .message_dropped(MessageDrop::WrongRecipient, 1);
                    tracing::debug!(group, from = %frame.from, to = %message.to, "message for another process: dropped");
                    continue;
                }
                match self.groups.get_mut(&group) {
                    Some(g) => {
                        self.shared.metrics.message_received(message.body.name());
                        let before = g.raft.dropped_messages().counts();
                        g.raft.step(message);
                        let after = g.raft.dropped_messages().counts();
                        if after != before {
                            self.shared.metrics.raft_dropped(before, after);
                            let why = g.raft.dropped_messages().last_reason.as_ref();
                            match why.filter(|_| after[0] == before[0]) {
                                Some(why) => {
                                    tracing::debug!(group, from = %frame.from, %why, "message dropped by the core")
                                }
                                None => {
                                    tracing::debug!(group, from = %frame.from, "message from a non-member or an unannounced transfer: dropped")
                                }
                            }
                        }
                        active.insert(group);
                        self.note_if_woken(group, WakeReason::Message, Some(&frame.from));
                    }
                    None => {
                        tracing::debug!(group, from = %frame.from, "message for a group not hosted here")
                    }
                }
            }
        }
    }

    /// One pass of steps 2-5 over the `active` groups with work. Returns false if none had
    /// any.
    fn pass(&mut self, active: &BTreeSet<GroupId>) -> bool {
        let mut outbound = Outbound::default();
        let mut batch = WriteBatch::new();
        let mut metas: Vec<(GroupId, RaftMeta)> = Vec::new();
        let mut readies: Vec<(GroupId, Ready)> = Vec::new();
        let mut entries = 0u64;
        let mut bytes = 0u64;
        for &id in active {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if !group.raft.has_ready() {
                continue;
            }
            let _span = group.span("ready").entered();
            let mut ready = group.raft.ready();
            outbound.push(id, std::mem::take(&mut ready.messages));
            if let Some((index, term)) = ready.compact_to {
                batch.truncate_prefix(id, index, term);
            }
            batch.append(id, &ready.entries);
            entries += ready.entries.len() as u64;
            bytes += ready
                .entries
                .iter()
                .map(flotilla_raft::Entry::size_bytes)
                .sum::<u64>();
            if let Some(hs) = &ready.hard_state {
                if (hs.term, &hs.vote) != (group.saved_meta.term, &group.saved_meta.vote) {
                    metas.push((
                        id,
                        RaftMeta {
                            term: hs.term,
                            vote: hs.vote.clone(),
                        },
                    ));
                }
            }
            readies.push((id, ready));
        }
        if readies.is_empty() {
            return false;
        }
        self.send(outbound);
        if let Err(e) = self.persist(&batch, &metas, entries, bytes) {
            self.fail(e);
            return false;
        }
        let mut outbound = Outbound::default();
        for (id, ready) in &mut readies {
            let group = self.groups.get_mut(id).expect("group of a ready");
            outbound.push(*id, std::mem::take(&mut ready.messages_after_persist));
            if let Some(last) = ready.entries.last() {
                group.raft.on_persisted(last.index, last.term);
            }
        }
        self.send(outbound);
        for (id, ready) in readies {
            self.finish_ready(id, ready);
        }
        true
    }

    /// Step 3: the term/vote saves, then one write with one fsync for every group.
    fn persist(
        &mut self,
        batch: &WriteBatch,
        metas: &[(GroupId, RaftMeta)],
        entries: u64,
        bytes: u64,
    ) -> Result<(), NodeError> {
        let metrics = &self.shared.metrics;
        for (id, meta) in metas {
            let started = Instant::now();
            self.meta.save(*id, meta).map_err(storage_error)?;
            metrics
                .meta_save_seconds
                .observe_duration(started.elapsed());
            bump(&self.shared.stats.meta_saves, 1);
            if let Some(group) = self.groups.get_mut(id) {
                group.saved_meta = meta.clone();
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.log.write(batch).map_err(storage_error)?;
        metrics
            .log_append_seconds
            .observe_duration(started.elapsed());
        metrics.round_entries.observe(entries);
        metrics.round_bytes.observe(bytes);
        metrics.round_groups.observe(batch.len() as u64);
        metrics.bytes_written.add(bytes);
        let stats = &self.shared.stats;
        bump(&stats.log_writes, 1);
        bump(&stats.entries_written, entries);
        bump(&stats.group_writes, batch.len() as u64);
        Ok(())
    }

    /// Step 5 for one group: snapshot, apply, reads, events.
    fn finish_ready(&mut self, id: GroupId, mut ready: Ready) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        if let Some(meta) = ready.snapshot.take() {
            match ready.snapshot_source.take() {
                Some(source) => self.request_install(id, meta, source),
                None => group.raft.on_snapshot_install_failed(&meta),
            }
        }
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let _span = group.span("apply").entered();
        if let Err(e) = group.apply(std::mem::take(&mut ready.committed_entries)) {
            tracing::error!(group = id, error = %e, "state machine failed; group stopped");
            let mut group = self.groups.remove(&id).expect("group present");
            group.stop(Some(&e));
            self.forget(id);
            return;
        }
        group.complete_reads(std::mem::take(&mut ready.reads));
        for event in std::mem::take(&mut ready.events) {
            group.on_event(event);
        }
    }

    /// A snapshot to fetch from `source`: starts the copy, or queues it behind the running
    /// one (which is cancelled: the newer request supersedes it).
    fn request_install(&mut self, id: GroupId, meta: SnapshotMeta, source: PeerId) {
        if let Some(install) = self.installs.get_mut(&id) {
            if install.meta.index < meta.index {
                install.cancel.store(true, Ordering::SeqCst);
                install.next = Some((meta, source));
            }
            return;
        }
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        group.installing = true;
        let cancel = Arc::new(AtomicBool::new(false));
        let job = InstallJob {
            transport: self.transport.clone(),
            runtime: self.runtime.clone(),
            peer: source,
            cluster: self.shared.identity.cluster(),
            group: id,
            meta: meta.clone(),
            store: group.snapshot_store().clone(),
            options: InstallOptions {
                chunk_bytes: self.options.snapshot_chunk_bytes,
                deadline: self.options.snapshot_install_deadline,
                throttle: self.options.snapshot_throttle.clone(),
            },
            cancel: cancel.clone(),
        };
        tracing::info!(group = id, index = %meta.index, "installing a snapshot from the leader");
        self.installs.insert(
            id,
            Install {
                meta,
                cancel,
                next: None,
            },
        );
        let shared = self.shared.clone();
        // The task's handle is not kept: it always reports through `installed`, and a
        // cancelled or abandoned copy ends at its next chunk.
        drop(self.runtime.spawn_blocking(move || {
            let done = run_install(job);
            lock(&shared.installed).push(done);
            shared.wake.notify_one();
        }));
    }

    /// Takes the finished copies: load the state machine, reset the log, tell the core.
    fn finish_installs(&mut self) {
        let finished = std::mem::take(&mut *lock(&self.shared.installed));
        for done in finished {
            let next = self
                .installs
                .remove(&done.group)
                .and_then(|install| install.next);
            let id = done.group;
            if self.groups.contains_key(&id) {
                self.install_finished(done);
                if self.failed.is_some() {
                    return;
                }
            }
            if let Some(group) = self.groups.get_mut(&id) {
                group.installing = false;
                if let Some((meta, source)) = next {
                    if meta.index > group.raft.applied() {
                        self.request_install(id, meta, source);
                    } else {
                        group.raft.on_snapshot_install_failed(&meta);
                    }
                }
            }
        }
    }

    fn install_finished(&mut self, done: InstallDone) {
        let InstallDone {
            group: id,
            meta,
            result,
        } = done;
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let reader = match result {
            // An older copy can still be taken if it moves the state machine forward.
            Ok(reader) if meta.index > group.raft.applied() => reader,
            Ok(_) => {
                group.raft.on_snapshot_install_failed(&meta);
                return;
            }
            Err(why) => {
                tracing::warn!(group = id, index = %meta.index, error = %why, "snapshot install failed");
                bump(&self.shared.stats.snapshot_installs_failed, 1);
                group.metrics().snapshot_install_failures.add(1);
                group.raft.on_snapshot_install_failed(&meta);
                return;
            }
        };
        if let Err(e) = group.load_snapshot(&reader) {
            tracing::error!(group = id, error = %e, "loading the snapshot failed; group stopped");
            let mut group = self.groups.remove(&id).expect("group present");
            group.stop(Some(&e));
            self.forget(id);
            return;
        }
        // The log must continue after the snapshot, durably, before the core (and through
        // it the leader) hears that the snapshot is installed.
        let mut batch = WriteBatch::new();
        batch.reset(id, meta.index, meta.term);
        if let Err(e) = self.log.write(&batch).map_err(storage_error) {
            self.fail(e);
            return;
        }
        bump(&self.shared.stats.log_writes, 1);
        bump(&self.shared.stats.group_writes, 1);
        let group = self.groups.get_mut(&id).expect("group present");
        group.raft.on_snapshot_installed(&meta);
        bump(&self.shared.stats.snapshots_installed, 1);
        group.metrics().snapshot_installs.add(1);
        tracing::info!(group = id, index = %meta.index, "snapshot installed");
    }

    fn send(&mut self, outbound: Outbound) {
        let stats = &self.shared.stats;
        let now = Instant::now();
        for (to, messages) in outbound.frames {
            bump(&stats.frames_sent, 1);
            bump(&stats.messages_sent, messages.len() as u64);
            self.liveness.sent(&to, now);
            let frame = Frame {
                from: self.shared.id.clone(),
                to: to.clone(),
                cluster: self.shared.identity.cluster(),
                from_address: String::new(),
                incarnation: self.shared.incarnation,
                messages,
            };
            self.transport.send(&to, frame);
        }
    }

    /// A stopped group's bookkeeping goes with it.
    fn forget(&mut self, id: GroupId) {
        lock(&self.shared.nodes).remove(&id);
        self.awake.remove(&id);
        self.requests_left.remove(&id);
        self.watched.remove(&id);
        if self.sleepers.remove(id) {
            self.publish_sleepers();
        }
    }

    /// A write failed: nothing more is acknowledged; every group stops.
    fn fail(&mut self, error: NodeError) {
        tracing::error!(peer = %self.shared.id, error = %error, "storage write failed; every group stops");
        *lock(&self.shared.failed) = Some(error.to_string());
        self.failed = Some(error);
    }

    fn stop_all(mut self: Box<Self>) {
        let error = self.failed.take();
        for install in self.installs.values() {
            install.cancel.store(true, Ordering::SeqCst);
        }
        for group in self.groups.values_mut() {
            group.stop(error.as_ref());
        }
        self.inbound.close();
        self.control.close();
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::AddGroup { done, .. } => {
                    let _ = done.send(Err(error.clone().unwrap_or(NodeError::ShutDown)));
                }
                Control::RemoveGroup { done, .. } => {
                    let _ = done.send(Err(error.clone().unwrap_or(NodeError::ShutDown)));
                }
                // Dropped unanswered: the caller hears that the manager stopped.
                Control::Describe { .. } => {}
            }
        }
        lock(&self.shared.nodes).clear();
    }
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

/// A per-(group, peer) seed so that peers of one group draw different election timeouts.
fn random_seed(group: GroupId, address: &PeerId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ group.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in address.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix in the wall clock so restarts do not replay the same timeouts.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h ^ u64::from(now.subsec_nanos()) ^ now.as_secs()
}
