//! Messages exchanged between peers of one group. Names follow the Raft paper.
//!
//! Owns: the shape of every message. Must never: encode to bytes (the runtime's transport
//! does, and validates what it decodes before handing it to the core).

use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Term};
use crate::types::{Entry, SnapshotMeta};

/// A message whose term is more than this far ahead of the receiver's is dropped: no honest
/// group moves through four billion terms, and accepting any jump would let one message
/// push a group's term to the top of the range (a term of 2^64 - 1 once bricked a region for
/// good when the next term wrapped to 0).
pub const TERM_AHEAD_MAX: u64 = 1 << 32;

/// The highest term a message may carry or a peer may reach. A peer at it no longer
/// campaigns (no arithmetic on a term can then overflow); reaching it takes 2^30 maximal
/// jumps, each from a member.
pub const TERM_MAX: Term = Term(1 << 62);

/// The highest log index a message may name. No real log comes near it, and every sum of an
/// index and a count bounded by the codec's limits stays far below `u64::MAX`.
pub const INDEX_MAX: LogIndex = LogIndex(1 << 62);

/// A message from one peer to another, always stamped with the sender's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: PeerId,
    /// Recipient.
    pub to: PeerId,
    /// Sender's current term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// Contents.
    pub body: MessageBody,
}

/// Values a follower returns unchanged in its response so the leader can match a response
/// to the moment it sent the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Echo {
    /// Leader's tick when it sent the request (leader lease, Raft thesis §6.4.1).
    pub tick: u64,
    /// Leader's read-round sequence when it sent the request (ReadIndex, thesis §6.4).
    pub read_seq: u64,
}

/// The outcome of an AppendEntries at the follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log now matches the leader's up to `last_index` (durably).
    Success {
        /// Last index the request made durable and consistent.
        last_index: LogIndex,
    },
    /// The log did not contain `prev_log_index` with `prev_log_term`.
    Reject {
        /// The `prev_log_index` that did not match.
        rejected: LogIndex,
        /// Highest index at which the follower's log may still match (fast back-off).
        hint: LogIndex,
        /// Term of the follower's entry at `hint`. The leader skips back past every entry
        /// of its own log whose term is above it, so a follower holding a long suffix of an
        /// older term is repaired in one round trip per term, not one per entry (etcd's
        /// `RejectHint`/`LogTerm`; Raft paper §5.3, end).
        hint_term: Term,
    },
    /// The follower cannot take entries now (installing a snapshot, queue full).
    Busy,
    /// The follower joined the group empty and takes a snapshot before any entry
    /// ([`crate::Config::join_from_snapshot`]).
    NeedSnapshot,
}

/// Contents of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Pre-vote (thesis §9.6) or vote request (paper §5.2).
    RequestVote {
        /// A pre-vote: the recipient neither changes its term nor records a vote.
        pre_vote: bool,
        /// Candidate's last log index.
        last_log_index: LogIndex,
        /// Candidate's last log term.
        last_log_term: Term,
        /// Sent after TimeoutNow: voters grant even while they hear a live leader.
        leadership_transfer: bool,
    },
    /// Answer to a [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Answer to a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
        /// A refusal because a live leader is heard names that leader. A candidate whose
        /// configuration lacks it (its log is missing the entry that added it) then takes
        /// that leader's traffic in that term, on a member's word, and catches up; without
        /// it the member check would keep it from ever hearing a leader added after it fell
        /// behind.
        leader: Option<PeerId>,
    },
    /// Log replication (paper §5.3).
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry.
        prev_log_term: Term,
        /// Entries to store (possibly none: a probe).
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: LogIndex,
        /// Returned unchanged in the response.
        echo: Echo,
    },
    /// Answer to [`MessageBody::AppendEntries`]; sent once the entries are durable.
    AppendEntriesResponse {
        /// What happened.
        result: AppendResult,
        /// The request's echo.
        echo: Echo,
    },
    /// Keeps followers from electing and confirms leadership for reads and the lease.
    Heartbeat {
        /// `min(leader commit, follower's match index)`: safe for the follower to commit.
        commit: LogIndex,
        /// Returned unchanged in the response.
        echo: Echo,
        /// The leader's last heartbeat before it hibernates: it sends nothing more until
        /// woken. Sent only when every peer matched the leader's last index and `commit`
        /// equals it. A follower whose log ends at `commit` with the message's term
        /// hibernates too and does not answer; any other follower answers, which wakes the
        /// leader.
        hibernate: bool,
        /// The voter this leader is handing leadership to, while a transfer runs. A
        /// follower honours a vote flagged as a leadership transfer (granted despite a live
        /// leader) only from the target its leader announced, for the next term (a
        /// forged transfer vote once deposed a healthy leader).
        transfer_target: Option<PeerId>,
    },
    /// Answer to a [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The request's echo.
        echo: Echo,
    },
    /// Tells a follower to install the leader's snapshot; the runtime moves the data.
    InstallSnapshot {
        /// The snapshot to fetch and install.
        meta: SnapshotMeta,
    },
    /// Answer to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse {
        /// Snapshot index now installed (or already covered), or `None` if it failed.
        installed: Option<LogIndex>,
    },
    /// Leadership transfer: elect yourself now, without pre-vote (thesis §3.10).
    TimeoutNow,
    /// A follower or learner asks the leader for a read index on behalf of its readers.
    ReadIndexRequest {
        /// Identifies this batch of reads at the requester.
        batch: u64,
        /// The leader may answer from its lease if valid.
        lease: bool,
    },
    /// The leader's answer: the index readers must wait for, or why it cannot give one.
    ReadIndexResponse {
        /// The requester's batch id.
        batch: u64,
        /// Read index, or the error.
        result: Result<LogIndex, RaftError>,
    },
}

impl MessageBody {
    /// A short name, for traces and metrics.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndexRequest { .. } => "ReadIndexRequest",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}
