//! Plain data shared by every module of the core: log entries, hard state, snapshot
//! metadata and roles. The ids they are made of (terms, indexes, peer ids) live in `ids`,
//! below the configuration, so that `membership` never depends on this file.
//!
//! These types own no behaviour beyond size and kind helpers.

use std::fmt;

use bytes::Bytes;

use crate::ids::{LogIndex, PeerId, Term};
use crate::membership::Configuration;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by a new leader so that an entry of its own term can commit (Raft thesis
    /// §6.4); never handed to the state machine's `apply` as data.
    NoOp,
    /// Application data, opaque to the core.
    Normal(Bytes),
    /// A configuration (stable or joint). It takes effect as soon as it is appended, as the
    /// thesis (§4.1) and SOFAJRaft do, and is reverted if the entry is truncated.
    Configuration(Configuration),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Contents.
    pub payload: EntryPayload,
}

/// Fixed per-entry overhead counted toward byte limits, approximating framing on the wire.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// Approximate size in bytes, used for message and batch byte limits.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        let body = match &self.payload {
            EntryPayload::NoOp => 0,
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::Configuration(conf) => conf.size_bytes(),
        };
        ENTRY_OVERHEAD_BYTES + body
    }

    /// True for configuration entries.
    #[must_use]
    pub fn is_configuration(&self) -> bool {
        matches!(self.payload, EntryPayload::Configuration(_))
    }
}

/// The state that must be durable before the core may act on it: term, vote and commit.
///
/// Term and vote are persisted (and fsynced) before a vote is requested or granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: Term,
    /// The peer this peer voted for in `term`, if any.
    pub vote: Option<PeerId>,
    /// Highest index known committed. Persisting it is an optimisation only: after a restart
    /// it is clamped to the durable log.
    pub commit: LogIndex,
}

/// Metadata of a snapshot: the last entry it covers and the configuration at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry included.
    pub index: LogIndex,
    /// Term of the last entry included.
    pub term: Term,
    /// Configuration in force at `index`.
    pub configuration: Configuration,
}

/// The role a peer currently plays in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Running a pre-vote (Raft thesis §9.6): asks whether it could win before bumping its term.
    PreCandidate,
    /// Running a real election in its current term.
    Candidate,
    /// Leads the group in its current term.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}
