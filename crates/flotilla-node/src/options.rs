//! Options of a [`crate::NodeManager`] and its groups, with SOFAJRaft's defaults.
//!
//! Owns: every limit of the runtime, named with the qualifier last. Must never: hold an
//! unbounded queue size.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::{Config, PeerId, RaftError};
use flotilla_storage::fs::{FileSystem, StdFs};
use flotilla_storage::{LogOptions, Throttle};

use crate::error::NodeError;
use crate::identity::AddressBook;
use crate::limits::{APPEND_BYTES_MAX_LIMIT, FRAME_BYTES_MAX, SNAPSHOT_DATA_BYTES_MAX};

/// What a request does when its group's request queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueFullPolicy {
    /// Answer `Busy` at once (SOFAJRaft's default: the apply queue is a bounded ring buffer
    /// and a full one refuses the task).
    #[default]
    Busy,
    /// Wait for room (back-pressure reaches the caller's task).
    Block,
}

/// Options of one manager (one process).
#[derive(Clone)]
pub struct ManagerOptions {
    /// This process's peer id: the id of every peer it hosts (a store's id in the KV
    /// store; any stable name a library user gives it). Never an address: where the
    /// process listens may change, the id may not.
    pub id: PeerId,
    /// The cluster this process belongs to (0: none). Frames and snapshot fetches carry
    /// it; traffic naming another cluster is refused. Changed later with
    /// [`crate::NodeManager::set_cluster`].
    pub cluster: u64,
    /// Where the other processes are: shared with the transport that dials them, and
    /// filled from what incoming frames announce.
    pub addresses: AddressBook,
    /// Data directory: `log/` (the shared log), `meta/` (term and vote), `snapshots/<group>`.
    pub data_dir: PathBuf,
    /// File system (real by default; `SimFs` in tests).
    pub fs: Arc<dyn FileSystem>,
    /// Period of one core tick (SOFAJRaft's timeouts are 10 ticks of 100 ms).
    pub tick: Duration,
    /// Template of every group's core options; `id`, `random_seed`,
    /// `start_with_vote_guard` and `hibernate_idle_ticks` are set by the manager.
    pub raft: Config,
    /// Idle groups hibernate (docs/DESIGN.md, "Idle groups cost nothing"): a group whose leader
    /// had nothing to do for `hibernate_idle_ticks` stops ticking and heartbeating on every
    /// peer, and wakes on a request, a message, or its leader's process going silent or
    /// restarting (see the `hibernation` notes of [`crate::manager`]). On by default; every
    /// process of a cluster should use the same setting (a peer that does not hibernate
    /// keeps waking its leader).
    pub hibernation: bool,
    /// Quiet ticks after which a leader hibernates its group (default 20: two election
    /// timeouts with SOFAJRaft's defaults). At least 1.
    pub hibernate_idle_ticks: u64,
    /// Requests (apply, read, admin) queued per group before `QueueFullPolicy` applies.
    pub request_queue_max: usize,
    /// Requests taken from one group's queue per round (the rest wait for the next round).
    pub requests_per_round_max: usize,
    /// Inbound frames queued before further frames are dropped.
    pub inbound_frames_max: usize,
    /// Inbound frames taken per round.
    pub inbound_frames_per_round_max: usize,
    /// What a full request queue does.
    pub queue_full: QueueFullPolicy,
    /// Limits of the shared log.
    pub log: LogOptions,
    /// Longest a follower spends fetching one snapshot from its leader before the install
    /// fails (SOFAJRaft: 5 minutes). A later attempt resumes what was received.
    pub snapshot_install_deadline: Duration,
    /// Bytes asked per snapshot chunk (SOFAJRaft's 128 KiB).
    pub snapshot_chunk_bytes: u32,
    /// Rate limit shared by every snapshot this process receives (none by default).
    pub snapshot_throttle: Option<Arc<Throttle>>,
}

impl std::fmt::Debug for ManagerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOptions")
            .field("id", &self.id)
            .field("cluster", &format_args!("{:016x}", self.cluster))
            .field("data_dir", &self.data_dir)
            .field("tick", &self.tick)
            .field("hibernation", &self.hibernation)
            .field("hibernate_idle_ticks", &self.hibernate_idle_ticks)
            .field("request_queue_max", &self.request_queue_max)
            .field("queue_full", &self.queue_full)
            .field("snapshot_install_deadline", &self.snapshot_install_deadline)
            .finish_non_exhaustive()
    }
}

impl ManagerOptions {
    /// Refuses options under which a message the core builds could exceed a frame
    /// ([`crate::limits`]): an AppendEntries batch above
    /// [`crate::limits::APPEND_BYTES_MAX_LIMIT`], or snapshot chunks asked larger than a
    /// fetch answer may carry.
    pub(crate) fn check_wire_limits(&self) -> Result<(), NodeError> {
        let refuse = |why: String| Err(NodeError::Raft(RaftError::InvalidArgument(why)));
        if self.raft.append_bytes_max > APPEND_BYTES_MAX_LIMIT {
            return refuse(format!(
                "append_bytes_max of {} bytes, more than the limit of {APPEND_BYTES_MAX_LIMIT} \
                 (its batches must fit in a frame of {FRAME_BYTES_MAX} bytes)",
                self.raft.append_bytes_max
            ));
        }
        let chunk = usize::try_from(self.snapshot_chunk_bytes).unwrap_or(usize::MAX);
        if chunk == 0 || chunk > SNAPSHOT_DATA_BYTES_MAX {
            return refuse(format!(
                "snapshot_chunk_bytes of {chunk}, not within 1..={SNAPSHOT_DATA_BYTES_MAX} \
                 (a chunk must fit in one fetch answer)"
            ));
        }
        Ok(())
    }

    /// Defaults: real file system, 100 ms tick, SOFAJRaft's core defaults.
    #[must_use]
    pub fn new(id: PeerId, data_dir: impl Into<PathBuf>) -> ManagerOptions {
        ManagerOptions {
            raft: Config::new(id.clone()),
            id,
            cluster: 0,
            addresses: AddressBook::in_memory(),
            data_dir: data_dir.into(),
            fs: Arc::new(StdFs),
            tick: Duration::from_millis(100),
            hibernation: true,
            hibernate_idle_ticks: 20,
            request_queue_max: 1024,
            requests_per_round_max: 1024,
            inbound_frames_max: 1024,
            inbound_frames_per_round_max: 256,
            queue_full: QueueFullPolicy::Busy,
            log: LogOptions::default(),
            snapshot_install_deadline: Duration::from_secs(300),
            snapshot_chunk_bytes: 128 * 1024,
            snapshot_throttle: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_whose_messages_could_exceed_a_frame_are_refused() {
        let options = ManagerOptions::new(PeerId::new("a:1"), "/tmp/unused");
        assert!(options.check_wire_limits().is_ok(), "the defaults fit");
        let mut batch = options.clone();
        batch.raft.append_bytes_max = APPEND_BYTES_MAX_LIMIT + 1;
        let refused = batch.check_wire_limits().expect_err("batch too large");
        assert!(
            refused.to_string().contains("append_bytes_max"),
            "{refused}"
        );
        let mut chunk = options;
        chunk.snapshot_chunk_bytes = 0;
        let refused = chunk.check_wire_limits().expect_err("empty chunks");
        assert!(
            refused.to_string().contains("snapshot_chunk_bytes"),
            "{refused}"
        );
    }
}
