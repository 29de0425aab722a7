//! What the core asks its driver to do after each input: the [`Ready`] batch.
//!
//! Owns: the contract between the core and whoever drives it (runtime, simulator, tests).
//! The driver must, in order: send `messages` now; persist `hard_state`, `entries` and
//! `compact_to` (one write, one fsync), then send `messages_after_persist` and call
//! `Raft::on_persisted`; install `snapshot` if any and call `Raft::on_snapshot_installed`;
//! apply `committed_entries` and call `Raft::on_applied`; answer `reads`; act on `events`.
//!
//! Writes complete in the order the `Ready`s were taken, and `messages_after_persist` of a
//! `Ready` leave only once every write handed out up to and including that `Ready` is
//! durable — even when that `Ready` itself has nothing to write. A driver may pipeline:
//! take the next `Ready` before the previous write completed, as long as that order holds.
//! Before trusting a lease read, the driver must have fed the core the ticks for the time
//! that has elapsed (after a pause, ticks first). The one exception is a hibernating core
//! (`Raft::is_hibernating`): it need not be ticked at all, since it holds no lease and wakes
//! on any input that needs it; with hibernation on, the driver must also wake a hibernating
//! follower whose leader's process went silent (`Raft::wake_and_campaign`).

use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Term};
use crate::membership::Configuration;
use crate::message::Message;
use crate::types::{Entry, HardState, SnapshotMeta};

/// How a read is made linearizable, chosen per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// Confirm leadership with one heartbeat round to a quorum (thesis §6.4).
    ReadIndex,
    /// Skip the round while the leader lease is valid (thesis §6.4.1); falls back to
    /// ReadIndex when it is not.
    Lease,
}

/// A read that completed: `Ok(index)` means the state machine has applied `index` and the
/// read may now be served from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The caller's id for the read.
    pub id: u64,
    /// Read index (already applied), or why the read failed.
    pub result: Result<LogIndex, RaftError>,
}

/// Something the application's callbacks should hear about (SOFAJRaft's state machine
/// callbacks and completion closures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This peer became leader and an entry of its term committed (`on_leader_start`).
    LeaderStart {
        /// Leader's term.
        term: Term,
    },
    /// This peer stopped leading (`on_leader_stop`).
    LeaderStop {
        /// The term it led.
        term: Term,
    },
    /// This peer follows `leader` (`on_start_following`).
    StartFollowing {
        /// The leader.
        leader: PeerId,
        /// Its term.
        term: Term,
    },
    /// This peer stopped following `leader` (`on_stop_following`).
    StopFollowing {
        /// The former leader.
        leader: PeerId,
        /// Its term.
        term: Term,
    },
    /// A configuration entry committed (`on_configuration_committed`).
    ConfigurationCommitted {
        /// Index of the entry.
        index: LogIndex,
        /// The configuration.
        configuration: Configuration,
    },
    /// A membership change requested on this leader finished.
    MembershipChangeFinished {
        /// The new configuration, or why the change failed.
        result: Result<Configuration, RaftError>,
    },
    /// A leadership transfer requested on this leader finished (succeeded: this peer stepped
    /// down in favour of `target`).
    TransferFinished {
        /// The transfer target.
        target: PeerId,
        /// Outcome.
        result: Result<(), RaftError>,
    },
    /// Periodic snapshot is due: take one at the applied index and report it with
    /// `Raft::on_snapshot_saved`.
    SnapshotDue,
    /// The state of a replicator changed (SOFAJRaft's replicator state listener).
    Replicator {
        /// The peer replicated to.
        peer: PeerId,
        /// What happened.
        change: ReplicatorChange,
    },
}

/// Replicator state listener events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicatorChange {
    /// The leader started replicating to the peer.
    Created,
    /// The peer answered after being unheard.
    Online,
    /// The peer has not been heard for an election timeout.
    Offline,
    /// The leader stopped replicating to the peer.
    Destroyed,
    /// The peer rejected entries it had acknowledged: its storage lost them (a damaged or
    /// restored disk). The leader forgot its match index and replicates them again.
    LostEntries,
}

/// Work for the driver, accumulated since the last call to `Raft::ready`.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Send now (the leader's AppendEntries go here: sent before its own fsync).
    pub messages: Vec<Message>,
    /// Persist, if set.
    pub hard_state: Option<HardState>,
    /// Persist after removing any stored entry at or after `entries[0].index`.
    pub entries: Vec<Entry>,
    /// Drop log entries up to and including this index (term given for the compaction point).
    pub compact_to: Option<(LogIndex, Term)>,
    /// Send once `hard_state` and `entries` are durable (votes and acknowledgements).
    pub messages_after_persist: Vec<Message>,
    /// Fetch this snapshot from `snapshot_source` and install it.
    pub snapshot: Option<SnapshotMeta>,
    /// The peer to fetch the snapshot from (the leader that sent it).
    pub snapshot_source: Option<PeerId>,
    /// Apply these in order.
    pub committed_entries: Vec<Entry>,
    /// Reads that completed or failed.
    pub reads: Vec<ReadResult>,
    /// Notifications for the application.
    pub events: Vec<Event>,
}

impl Ready {
    /// True if there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.compact_to.is_none()
            && self.messages_after_persist.is_empty()
            && self.snapshot.is_none()
            && self.committed_entries.is_empty()
            && self.reads.is_empty()
            && self.events.is_empty()
    }
}
