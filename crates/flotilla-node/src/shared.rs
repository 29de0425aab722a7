//! [`ManagerShared`]: what a manager's handles ([`crate::Node`], [`crate::NodeManager`]) and
//! its round share: the process's identity, the round's wake-up, the flags of groups with
//! queued requests, the stop and failure state, counters and metrics.
//!
//! Owns: the one place a handle reaches the round without a queue (flagging a group, asking
//! for a round, reading why the manager stopped). Must never: hold a lock across anything
//! but a short critical section, or know the driver's internals (groups, log, transport).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;

use crate::error::NodeError;
use crate::identity::Identity;
use crate::metrics::ManagerMetrics;
use crate::snapshot::SnapshotService;
use crate::wake::RoundWake;

/// The counters behind [`crate::ManagerStats`] (see there), bumped by the round.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) rounds: AtomicU64,
    pub(crate) log_writes: AtomicU64,
    pub(crate) entries_written: AtomicU64,
    pub(crate) group_writes: AtomicU64,
    pub(crate) meta_saves: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) snapshots_installed: AtomicU64,
    pub(crate) snapshot_installs_failed: AtomicU64,
}

/// Adds `by` to a counter of [`Stats`].
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What the handles and the round share.
pub(crate) struct ManagerShared {
    pub(crate) id: PeerId,
    /// The id and cluster traffic must name (shared with the inbox and snapshot service).
    pub(crate) identity: Arc<Identity>,
    /// Drawn at open, never 0: tells peers this process restarted.
    pub(crate) incarnation: u64,
    pub(crate) wake: Arc<RoundWake>,
    /// Groups whose handle queued a request since the round last polled them (each at most
    /// once while its flag is set, so at most one entry per group).
    pub(crate) requested: Mutex<Vec<GroupId>>,
    pub(crate) stopping: AtomicBool,
    /// Set once a write failed: every group stopped.
    pub(crate) failed: Mutex<Option<String>>,
    pub(crate) stats: Stats,
    pub(crate) metrics: ManagerMetrics,
    /// Serves this process's snapshots (every group's store is registered here).
    pub(crate) snapshots: SnapshotService,
}

/// Locks `mutex`, whatever a panicking holder left (every critical section here leaves its
/// data consistent at each step).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
