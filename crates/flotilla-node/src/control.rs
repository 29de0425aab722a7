//! The round's side of the manager handle's control queue ([`crate::round::Control`]):
//! opening a group (and its handle), removing one that holds nothing, and the dump of
//! every group (`impl Driver` blocks of the round, [`crate::round`]).
//!
//! Owns: the rules for adding and removing a group on this process (never twice, never one
//! that holds something or whose snapshot copy still runs) and who starts with the vote
//! guard. Must never: remove a group that belongs to a configuration or holds entries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_raft::PeerId;
use flotilla_storage::{GroupId, SnapshotStore};
use tokio::sync::mpsc;

use crate::error::NodeError;
use crate::group::{storage_error, Group, GroupSetup, RequestQueue};
use crate::node::{Node, NodeInner};
use crate::round::{Control, Driver};
use crate::shared::lock;
use crate::status::NodeStatus;

impl Driver {
    /// Answers every control request queued since the last round (first thing in a round).
    pub(crate) fn accept_controls(&mut self) {
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
                Control::PurgeGroup { group, done } => {
                    let _ = done.send(self.purge_group(group));
                }
            }
        }
    }

    /// See [`crate::NodeManager::remove_group`].
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
        if self.installs.is_running(id) {
            return refused(format!("group {id} is installing a snapshot"));
        }
        self.drop_group(id);
        tracing::info!(group = id, "group removed (it held nothing)");
        Ok(())
    }

    /// Forgets group `id` on this process: its bookkeeping, its handles (they answer
    /// `ShutDown` from then on) and its snapshot store's registration.
    fn drop_group(&mut self, id: GroupId) {
        if let Some(mut group) = self.groups.remove(&id) {
            group.stop(None);
        }
        self.awake.remove(&id);
        if self.sleepers.remove(id) {
            self.publish_sleepers();
        }
        self.watched.remove(&id);
        self.requests_left.remove(&id);
        self.beacon_targets_at = None;
        self.shared.snapshots.unregister(id);
        lock(&self.nodes).remove(&id);
    }

    /// See [`crate::NodeManager::purge_group`].
    fn purge_group(&mut self, id: GroupId) -> Result<bool, NodeError> {
        if self.installs.is_running(id) {
            return Err(NodeError::Raft(flotilla_raft::RaftError::Busy(format!(
                "group {id} is installing a snapshot; retry shortly"
            ))));
        }
        let was_running = self.groups.contains_key(&id);
        self.drop_group(id);
        let mut batch = flotilla_storage::WriteBatch::new();
        batch.reset(id, flotilla_raft::LogIndex::ZERO, flotilla_raft::Term::ZERO);
        self.log.write(&batch).map_err(storage_error)?;
        let snapshots_dir = self.options.data_dir.join("snapshots").join(id.to_string());
        if self.options.fs.exists(&snapshots_dir) {
            self.options
                .fs
                .remove_dir_all(&snapshots_dir)
                .map_err(|e| NodeError::Io(format!("removing {}: {e}", snapshots_dir.display())))?;
        }
        tracing::info!(
            group = id,
            was_running,
            "group purged: its log and snapshots are deleted"
        );
        Ok(was_running)
    }

    /// See [`crate::NodeManager::describe`].
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

    /// See [`crate::NodeManager::add_group`].
    fn add_group(&mut self, setup: GroupSetup) -> Result<Node, NodeError> {
        let id = setup.id;
        if self.groups.contains_key(&id) {
            return Err(NodeError::Raft(flotilla_raft::RaftError::InvalidArgument(
                format!("group {id} already runs on {}", self.shared.id),
            )));
        }
        if self.installs.is_running(id) {
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
        self.beacon_targets_at = None;
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
        lock(&self.nodes).insert(id, node.clone());
        self.more_work = true;
        Ok(node)
    }
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
