//! The typed error model of the core: every operating error a caller may match on.
//!
//! Owns: the names and meanings of errors (SOFAJRaft's `RaftError` codes in Rust idiom).
//! Must never: carry a broken invariant; those panic where they are detected.

use std::fmt;

use crate::ids::{LogIndex, PeerId, Term};

/// An operating error returned by the core. Callers match on it; none of them is a bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftError {
    /// This peer is not the leader; `leader` is the current leader if known (a hint for retry).
    NotLeader {
        /// The leader this peer believes in, if any.
        leader: Option<PeerId>,
    },
    /// A bounded queue or window is full, or another change is in progress; retry later.
    Busy(String),
    /// The request did not complete within its deadline; its outcome may be unknown.
    TimedOut(String),
    /// The request was made under a leadership or configuration that no longer holds.
    Stale(String),
    /// A new peer did not catch up with the leader before its deadline.
    CatchUpFailed {
        /// The peer that fell behind.
        peer: PeerId,
    },
    /// This peer was removed from the group.
    Removed,
    /// A leadership transfer is in progress: writes are refused until it ends.
    Transferring {
        /// Transfer target.
        target: PeerId,
    },
    /// The requested entries were compacted into a snapshot.
    Compacted {
        /// First index still in the log.
        first_index: LogIndex,
    },
    /// The node was shut down.
    ShutDown,
    /// The caller's expected term does not match the leader's term (SOFAJRaft's EPERM).
    WrongTerm {
        /// Term the caller expected.
        expected: Term,
        /// Term of this leader.
        actual: Term,
    },
    /// A read could not be served because this peer's state machine lags too far behind the
    /// read index (`read_index_lag_max`).
    ReadLagging {
        /// Index the read must observe.
        read_index: LogIndex,
        /// Index this peer has applied.
        applied: LogIndex,
    },
    /// A leader has not yet committed an entry of its own term, so it cannot serve reads.
    LeaderNotReady,
    /// The state machine reported an error.
    StateMachine(String),
    /// Storage failed; the node must stop.
    Io(String),
    /// The request itself is malformed; the message names what was wrong.
    InvalidArgument(String),
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::NotLeader { leader: Some(l) } => write!(f, "not leader; leader is {l}"),
            RaftError::NotLeader { leader: None } => write!(f, "not leader; leader unknown"),
            RaftError::Busy(why) => write!(f, "busy: {why}"),
            RaftError::TimedOut(what) => write!(f, "timed out: {what}"),
            RaftError::Stale(what) => write!(f, "stale: {what}"),
            RaftError::CatchUpFailed { peer } => write!(f, "peer {peer} failed to catch up"),
            RaftError::Removed => write!(f, "this peer was removed from the group"),
            RaftError::Transferring { target } => {
                write!(f, "leadership transfer to {target} in progress")
            }
            RaftError::Compacted { first_index } => {
                write!(f, "log compacted; first index is {first_index}")
            }
            RaftError::ShutDown => write!(f, "shut down"),
            RaftError::WrongTerm { expected, actual } => {
                write!(f, "expected term {expected} but leader term is {actual}")
            }
            RaftError::ReadLagging {
                read_index,
                applied,
            } => write!(
                f,
                "read index {read_index} is too far ahead of applied index {applied}"
            ),
            RaftError::LeaderNotReady => {
                write!(f, "leader has not committed an entry of its term yet")
            }
            RaftError::StateMachine(why) => write!(f, "state machine error: {why}"),
            RaftError::Io(why) => write!(f, "I/O error: {why}"),
            RaftError::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

impl std::error::Error for RaftError {}

/// An error reading the log through [`crate::LogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The index is before the first retained entry.
    Compacted,
    /// The index is after the last entry.
    Unavailable,
    /// The storage failed.
    Io(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Compacted => write!(f, "entry compacted"),
            StoreError::Unavailable => write!(f, "entry not in the log"),
            StoreError::Io(why) => write!(f, "storage I/O error: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}
