//! The round: the thread that drives every group of one manager ([`run`], [`Driver`]).
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
//! The rest of the driver's work sits in files of its own, as `impl Driver` blocks: which
//! groups sleep and what wakes them (`crate::wake_policy`), the manager handle's control
//! requests (`crate::control`); the snapshot copies running off the round are tracked by
//! [`Installs`] (`crate::install`), whose outcome this file takes at the start of a round.
//!
//! Owns: the order of that round and the rule that a failed write stops every group and
//! acknowledges nothing. Must never: acknowledge after a failed write, block an async
//! worker, run a snapshot copy on the round, or queue without bound.
//!
//! Per-group work in the round runs in debug-level `tracing` spans carrying group, peer and
//! term; durations are measured here with `Instant` (the runtime reads clocks, the core
//! never does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use flotilla_raft::{Message, PeerId, Ready, SnapshotMeta};
use flotilla_storage::{FileMetaStorage, GroupId, MetaStorage, RaftMeta, SharedLog, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::group::{storage_error, Group, GroupSetup};
use crate::hibernation::{Liveness, Sleepers, WakeReason};
use crate::install::{InstallDone, Installs};
use crate::metrics::MessageDrop;
use crate::node::{Node, Nodes};
use crate::options::ManagerOptions;
use crate::shared::{bump, lock, ManagerShared};
use crate::transport::{Frame, Transport};

/// Passes of steps 2-5 per round before yielding to new input.
const READY_PASSES_MAX: usize = 4;
/// Ticks fed in one round after a long pause (the rest of the pause is skipped: the core
/// only needs to know that its timeouts expired).
const TICKS_PER_ROUND_MAX: u64 = 1_000;

/// What the manager's handle asks of the round, besides the groups' requests (handled in
/// `crate::control`).
pub(crate) enum Control {
    /// Open a group and answer with its handle ([`crate::NodeManager::add_group`]).
    AddGroup {
        setup: GroupSetup,
        done: oneshot::Sender<Result<Node, NodeError>>,
    },
    /// Every group's dump, taken at the start of a round.
    Describe { done: oneshot::Sender<String> },
    /// Remove a group that holds nothing ([`crate::NodeManager::remove_group`]).
    RemoveGroup {
        group: GroupId,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
    /// Stop a group if it runs and delete its log and snapshots
    /// ([`crate::NodeManager::purge_group`]).
    PurgeGroup {
        group: GroupId,
        done: oneshot::Sender<Result<bool, NodeError>>,
    },
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
pub(crate) fn run(mut driver: Box<Driver>, finished: oneshot::Sender<()>) {
    let shared = driver.shared.clone();
    let nodes = driver.nodes.clone();
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
            lock(&nodes).clear();
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
pub(crate) struct Driver {
    pub(crate) shared: Arc<ManagerShared>,
    /// Every group's handle (shared with the manager's handle).
    pub(crate) nodes: Arc<Nodes>,
    pub(crate) options: ManagerOptions,
    pub(crate) fresh: bool,
    pub(crate) log: SharedLog,
    pub(crate) meta: FileMetaStorage,
    pub(crate) groups: BTreeMap<GroupId, Group>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) inbound: mpsc::Receiver<Frame>,
    pub(crate) control: mpsc::Receiver<Control>,
    /// When the last tick was fed (advanced by whole tick periods).
    pub(crate) last_tick: Instant,
    /// When the previous round started (a late one means this process stalled).
    pub(crate) last_round: Instant,
    /// The last round left work behind (queued requests or readies): run again at once.
    pub(crate) more_work: bool,
    /// Groups ticked and visited every round. Every group is here or in `sleepers`.
    pub(crate) awake: BTreeSet<GroupId>,
    /// Groups with more queued requests than one round takes.
    pub(crate) requests_left: BTreeSet<GroupId>,
    /// Groups that hibernate, by their leader's process.
    pub(crate) sleepers: Sleepers,
    /// Followers woken while asleep by something other than their leader, with that leader
    /// and when: they campaign if it turns out gone (see `note_if_woken`). At most one entry
    /// per group; entries end within a heartbeat interval of the leader being heard.
    pub(crate) watched: BTreeMap<GroupId, (PeerId, Instant)>,
    /// What this process knows of the processes it exchanges frames with.
    pub(crate) liveness: Liveness,
    /// Processes sharing a group with this one: they get a beacon when sent nothing else.
    pub(crate) beacon_targets: BTreeSet<PeerId>,
    /// When `beacon_targets` were last recomputed (`None`: due now).
    pub(crate) beacon_targets_at: Option<Instant>,
    pub(crate) failed: Option<NodeError>,
    /// Where install copies are spawned (the round runs on its own thread).
    pub(crate) runtime: tokio::runtime::Handle,
    /// Snapshot copies running, one per group, and their outcomes.
    pub(crate) installs: Installs,
    /// Groups opened since this process started: a group opened again (after it was
    /// stopped by a failure) may have acknowledged a leader, so it gets the vote guard.
    pub(crate) opened_groups: std::collections::BTreeSet<GroupId>,
}

/// Messages bundled per destination process.
#[derive(Default)]
pub(crate) struct Outbound {
    pub(crate) frames: BTreeMap<PeerId, Vec<(GroupId, Message)>>,
}

impl Outbound {
    /// Adds `group`'s messages to the frames of their destinations.
    pub(crate) fn push(&mut self, group: GroupId, messages: Vec<Message>) {
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
        if self.options.hibernation {
            self.note_configuration_changes(&active);
        }
        self.put_to_sleep(&active);
        self.more_work = !self.requests_left.is_empty()
            || !self.inbound.is_empty()
            || active
                .iter()
                .filter_map(|id| self.groups.get(id))
                .any(|g| g.raft.has_ready());
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
                // dropped before any group sees it (who the frame's sender really is, is
                // the transport's and the certificates' business).
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

    /// Step 3: every group's term/vote changes in one journal write with one fsync, then
    /// one log write with one fsync for every group.
    fn persist(
        &mut self,
        batch: &WriteBatch,
        metas: &[(GroupId, RaftMeta)],
        entries: u64,
        bytes: u64,
    ) -> Result<(), NodeError> {
        let metrics = &self.shared.metrics;
        if !metas.is_empty() {
            let started = Instant::now();
            self.meta.save_many(metas).map_err(storage_error)?;
            metrics
                .meta_save_seconds
                .observe_duration(started.elapsed());
            bump(&self.shared.stats.meta_saves, metas.len() as u64);
            for (id, meta) in metas {
                if let Some(group) = self.groups.get_mut(id) {
                    group.saved_meta = meta.clone();
                }
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
        if self.installs.supersede(id, &meta, &source) {
            return;
        }
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        group.installing = true;
        let cluster = self.shared.identity.cluster();
        let store = group.snapshot_store().clone();
        self.installs.start(id, meta, source, cluster, store);
    }

    /// Takes the finished copies: load the state machine, reset the log, tell the core.
    fn finish_installs(&mut self) {
        let finished = self.installs.take_finished();
        for done in finished {
            let next = self.installs.finished(done.group);
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

    /// One finished copy of a hosted group: on success the state machine loads it and the
    /// log is reset to it (fsynced) before the core hears; on failure the core hears that.
    fn install_finished(&mut self, done: InstallDone) {
        let InstallDone {
            group: id,
            meta,
            result,
            fetched_bytes,
        } = done;
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        group.metrics().snapshot_fetched_bytes.add(fetched_bytes);
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
        if let Err(why) = group.check_snapshot(&reader) {
            tracing::warn!(group = id, index = %meta.index, error = %why, "the state machine refused the snapshot (nothing changed); the leader will send one again");
            bump(&self.shared.stats.snapshot_installs_failed, 1);
            group.metrics().snapshot_install_failures.add(1);
            group.raft.on_snapshot_install_failed(&meta);
            return;
        }
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

    /// Hands one frame per destination to the transport (a frame without messages is a
    /// beacon).
    pub(crate) fn send(&mut self, outbound: Outbound) {
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
        lock(&self.nodes).remove(&id);
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
        self.installs.cancel_all();
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
                Control::PurgeGroup { done, .. } => {
                    let _ = done.send(Err(error.clone().unwrap_or(NodeError::ShutDown)));
                }
                // Dropped unanswered: the caller hears that the manager stopped.
                Control::Describe { .. } => {}
            }
        }
        lock(&self.nodes).clear();
    }
}
