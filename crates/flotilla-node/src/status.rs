//! [`NodeStatus`]: what the round publishes of one group after every round it visits it,
//! for the cheap, synchronous queries of [`crate::Node`] and for the metrics.
//!
//! Owns: the published status and the one way to read it (`lock_status`). Must never: be
//! written by anything but the round (the group's `publish`), or be held locked for longer
//! than a copy.

use std::sync::{Mutex, MutexGuard};

use flotilla_raft::{Configuration, LogIndex, PeerId, Role, Term};

/// What the last round saw of one group (for cheap, synchronous queries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Role of this peer.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader.
    pub leader: Option<PeerId>,
    /// Configuration in force.
    pub configuration: Configuration,
    /// Leader only: peers heard from within an election timeout (this one included).
    pub alive_peers: Vec<PeerId>,
    /// Last index in the log.
    pub last_index: LogIndex,
    /// Commit index.
    pub committed: LogIndex,
    /// Index the state machine has applied.
    pub applied: LogIndex,
    /// The group hibernates on this process: idle, not ticked until something wakes it
    /// (the next request does).
    pub hibernating: bool,
}

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            role: Role::Follower,
            term: Term::ZERO,
            leader: None,
            configuration: Configuration::default(),
            alive_peers: Vec::new(),
            last_index: LogIndex::ZERO,
            committed: LogIndex::ZERO,
            applied: LogIndex::ZERO,
            hibernating: false,
        }
    }
}

/// The published status, whatever a panicking holder left (it is only ever replaced whole).
pub(crate) fn lock_status(status: &Mutex<NodeStatus>) -> MutexGuard<'_, NodeStatus> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
