//! The errors a caller of the Node API can match on.
//!
//! Owns: the meaning of every outcome a client sees. Must never: report a proposal whose
//! fate is unknown (it may still commit) as failed; that is [`NodeError::Unknown`].

use std::fmt;

use flotilla_raft::RaftError;

/// An operating error of the Node API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// The core refused or failed the request (not leader, busy, wrong term, timed out...).
    Raft(RaftError),
    /// The process's storage failed; every group of the manager stopped and nothing was
    /// acknowledged after the failure.
    Io(String),
    /// The node (or its manager) was shut down before the request was accepted.
    ShutDown,
    /// The request was accepted but its outcome is unknown: leadership was lost or the node
    /// stopped before it was applied here. It may still have committed; never treat this as
    /// "failed" (SOFAJRaft reports such tasks with EPERM/"unknown").
    Unknown(String),
}

impl NodeError {
    /// True for "queue full, retry later" (the request was not accepted).
    #[must_use]
    pub fn is_busy(&self) -> bool {
        matches!(self, NodeError::Raft(RaftError::Busy(_)))
    }

    /// The leader hint when this peer is not the leader.
    #[must_use]
    pub fn leader_hint(&self) -> Option<&flotilla_raft::PeerId> {
        match self {
            NodeError::Raft(RaftError::NotLeader { leader }) => leader.as_ref(),
            _ => None,
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Raft(e) => write!(f, "{e}"),
            NodeError::Io(why) => write!(f, "storage failed: {why}"),
            NodeError::ShutDown => write!(f, "shut down"),
            NodeError::Unknown(why) => write!(f, "outcome unknown: {why}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<RaftError> for NodeError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::ShutDown => NodeError::ShutDown,
            RaftError::Io(why) => NodeError::Io(why),
            other => NodeError::Raft(other),
        }
    }
}
