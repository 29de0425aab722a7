//! Conversions between the core's types and the protobuf messages of `proto/raft.proto`.
//!
//! Owns: the wire shape of a [`Frame`] and the validation of everything decoded from a peer.
//! Must never: panic or allocate in proportion to a number a peer claims (protobuf decoding
//! is already bounded by [`super::FRAME_BYTES_MAX`]; the counts below bound what one frame
//! may ask the receiver to process). Protocol rules the core checks itself (entries following
//! `prev_log_index`, sane terms) are left to the core's gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use flotilla_raft::{
    AppendResult, Configuration, Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, PeerId,
    Priority, RaftError, SnapshotMeta, Term,
};

use flotilla_storage::GroupId;
use prost::Message as _;

use super::proto;
use crate::snapshot::{SnapshotPart, SnapshotRequest};
use crate::transport::Frame;

/// Most `(group, message)` pairs one frame may carry ([`crate::limits::FRAME_MESSAGES_MAX`]).
pub use crate::limits::FRAME_MESSAGES_MAX;
/// Most entries one AppendEntries may carry (the core sends at most 1024).
pub const MESSAGE_ENTRIES_MAX: usize = 65_536;
/// Most peers in one list of a configuration (voters, learners, old voters, priorities).
pub const CONFIGURATION_PEERS_MAX: usize = 1024;
/// Longest peer id, in bytes ([`crate::limits::PEER_ID_BYTES_MAX`]).
pub use crate::limits::PEER_ID_BYTES_MAX;
/// Longest text carried in a [`RaftError`] or a snapshot fetch's error, in bytes.
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;
/// Longest snapshot file name a fetch may ask for, in bytes (the storage allows 255).
pub const SNAPSHOT_FILE_NAME_BYTES_MAX: usize = 1024;

/// Why a decoded frame was refused: the path of the offending field and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The message the path starts from (`frame`, `snapshot_request`, ...).
    root: &'static str,
    path: Vec<String>,
    problem: String,
}

impl DecodeError {
    fn new(problem: impl Into<String>) -> DecodeError {
        DecodeError {
            root: "frame",
            path: Vec::new(),
            problem: problem.into(),
        }
    }

    fn rooted(mut self, root: &'static str) -> DecodeError {
        self.root = root;
        self
    }

    fn missing(field: &str) -> DecodeError {
        DecodeError::new(format!("{field} is missing (absent or of an unknown kind)"))
    }

    /// Prefixes the path with `segment` (callers add segments from the inside out).
    fn at(mut self, segment: impl Into<String>) -> DecodeError {
        self.path.push(segment.into());
        self
    }

    /// What was wrong, without the path.
    #[must_use]
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root)?;
        for segment in self.path.iter().rev() {
            write!(f, ".{segment}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

// ---- encoding (core -> wire): infallible ----

/// Encodes a frame for the wire.
#[must_use]
pub fn encode_frame(frame: &Frame) -> proto::Frame {
    proto::Frame {
        from: frame.from.as_str().to_owned(),
        to: frame.to.as_str().to_owned(),
        cluster: frame.cluster,
        from_address: frame.from_address.clone(),
        incarnation: frame.incarnation,
        messages: frame
            .messages
            .iter()
            .map(|(group, message)| proto::GroupMessage {
                group: *group,
                message: Some(encode_message(message)),
            })
            .collect(),
    }
}

/// A frame encoded for the wire, cut at the receiver's limits.
#[derive(Debug, Default)]
pub struct EncodedFrames {
    /// The wire frames, in the order their messages were queued: each within the limits
    /// given to [`encode_frames`]. One empty frame for a liveness beacon.
    pub frames: Vec<proto::Frame>,
    /// The messages left out because each alone exceeds the byte limit: their group and
    /// encoded size.
    pub oversized: Vec<(GroupId, usize)>,
}

/// Encodes `frame` as as many wire frames as it takes for each to hold at most
/// `messages_max` messages and encode to at most `bytes_max` bytes, keeping the messages'
/// order (every wire frame carries the same sender and incarnation). A message that would
/// exceed `bytes_max` in a frame of its own is left out and reported in
/// [`EncodedFrames::oversized`]. A frame without messages (a beacon) stays one frame.
#[must_use]
pub fn encode_frames(frame: &Frame, bytes_max: usize, messages_max: usize) -> EncodedFrames {
    let messages_max = messages_max.max(1);
    let empty = || proto::Frame {
        from: frame.from.as_str().to_owned(),
        to: frame.to.as_str().to_owned(),
        cluster: frame.cluster,
        from_address: frame.from_address.clone(),
        incarnation: frame.incarnation,
        messages: Vec::new(),
    };
    let mut out = EncodedFrames::default();
    let base = empty().encoded_len();
    if frame.messages.is_empty() {
        out.frames.push(empty());
        return out;
    }
    let mut current = empty();
    let mut current_bytes = base;
    for (group, message) in &frame.messages {
        let pair = proto::GroupMessage {
            group: *group,
            message: Some(encode_message(message)),
        };
        // The pair as field 2 of the frame: key, length prefix and body.
        let size = prost::encoding::message::encoded_len(2, &pair);
        if base + size > bytes_max {
            out.oversized.push((*group, base + size));
            continue;
        }
        if current.messages.len() >= messages_max || current_bytes + size > bytes_max {
            out.frames.push(std::mem::replace(&mut current, empty()));
            current_bytes = base;
        }
        current.messages.push(pair);
        current_bytes += size;
    }
    if !current.messages.is_empty() {
        out.frames.push(current);
    }
    debug_assert!(out
        .frames
        .iter()
        .all(|f| f.encoded_len() <= bytes_max && f.messages.len() <= messages_max));
    out
}

/// Encodes one raft message.
#[must_use]
pub fn encode_message(message: &Message) -> proto::Message {
    use proto::message::Body;
    let body = match &message.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => Body::RequestVote(proto::RequestVote {
            pre_vote: *pre_vote,
            last_log_index: last_log_index.get(),
            last_log_term: last_log_term.get(),
            leadership_transfer: *leadership_transfer,
        }),
        MessageBody::RequestVoteResponse {
            pre_vote,
            granted,
            leader,
        } => Body::RequestVoteResponse(proto::RequestVoteResponse {
            pre_vote: *pre_vote,
            granted: *granted,
            leader: leader
                .as_ref()
                .map_or_else(String::new, |l| l.as_str().to_owned()),
        }),
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            echo,
        } => Body::AppendEntries(proto::AppendEntries {
            prev_log_index: prev_log_index.get(),
            prev_log_term: prev_log_term.get(),
            entries: entries.iter().map(encode_entry).collect(),
            leader_commit: leader_commit.get(),
            echo: Some(encode_echo(*echo)),
        }),
        MessageBody::AppendEntriesResponse { result, echo } => {
            use proto::append_entries_response::Result as R;
            let result = match result {
                AppendResult::Success { last_index } => R::Success(proto::AppendSuccess {
                    last_index: last_index.get(),
                }),
                AppendResult::Reject {
                    rejected,
                    hint,
                    hint_term,
                } => R::Reject(proto::AppendReject {
                    rejected: rejected.get(),
                    hint: hint.get(),
                    hint_term: hint_term.get(),
                }),
                AppendResult::Busy => R::Busy(proto::Empty {}),
                AppendResult::NeedSnapshot => R::NeedSnapshot(proto::Empty {}),
            };
            Body::AppendEntriesResponse(proto::AppendEntriesResponse {
                result: Some(result),
                echo: Some(encode_echo(*echo)),
            })
        }
        MessageBody::Heartbeat {
            commit,
            echo,
            hibernate,
            transfer_target,
        } => Body::Heartbeat(proto::Heartbeat {
            commit: commit.get(),
            echo: Some(encode_echo(*echo)),
            hibernate: *hibernate,
            transfer_target: transfer_target
                .as_ref()
                .map_or_else(String::new, |t| t.as_str().to_owned()),
        }),
        MessageBody::HeartbeatResponse { echo } => {
            Body::HeartbeatResponse(proto::HeartbeatResponse {
                echo: Some(encode_echo(*echo)),
            })
        }
        MessageBody::InstallSnapshot { meta } => Body::InstallSnapshot(proto::InstallSnapshot {
            meta: Some(proto::SnapshotMeta {
                index: meta.index.get(),
                term: meta.term.get(),
                configuration: Some(encode_configuration(&meta.configuration)),
            }),
        }),
        MessageBody::InstallSnapshotResponse { installed } => {
            Body::InstallSnapshotResponse(proto::InstallSnapshotResponse {
                installed: installed.map(LogIndex::get),
            })
        }
        MessageBody::TimeoutNow => Body::TimeoutNow(proto::Empty {}),
        MessageBody::ReadIndexRequest { batch, lease } => {
            Body::ReadIndexRequest(proto::ReadIndexRequest {
                batch: *batch,
                lease: *lease,
            })
        }
        MessageBody::ReadIndexResponse { batch, result } => {
            use proto::read_index_response::Result as R;
            Body::ReadIndexResponse(proto::ReadIndexResponse {
                batch: *batch,
                result: Some(match result {
                    Ok(index) => R::Index(index.get()),
                    Err(error) => R::Error(encode_error(error)),
                }),
            })
        }
    };
    proto::Message {
        from: message.from.as_str().to_owned(),
        to: message.to.as_str().to_owned(),
        term: message.term.get(),
        body: Some(body),
    }
}

fn encode_echo(echo: Echo) -> proto::Echo {
    proto::Echo {
        tick: echo.tick,
        read_seq: echo.read_seq,
    }
}

fn encode_entry(entry: &Entry) -> proto::Entry {
    use proto::entry::Payload;
    proto::Entry {
        index: entry.index.get(),
        term: entry.term.get(),
        payload: Some(match &entry.payload {
            EntryPayload::NoOp => Payload::Noop(proto::Empty {}),
            EntryPayload::Normal(data) => Payload::Normal(data.clone()),
            EntryPayload::Configuration(conf) => Payload::Configuration(encode_configuration(conf)),
        }),
    }
}

fn names(set: &BTreeSet<PeerId>) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_owned()).collect()
}

fn encode_configuration(conf: &Configuration) -> proto::Configuration {
    proto::Configuration {
        voters: names(&conf.voters),
        learners: names(&conf.learners),
        joint: conf.old_voters.is_some(),
        old_voters: conf.old_voters.as_ref().map(names).unwrap_or_default(),
        priorities: conf
            .priorities
            .iter()
            .map(|(peer, priority)| proto::PeerPriority {
                peer: peer.as_str().to_owned(),
                priority: priority.0,
            })
            .collect(),
    }
}

fn encode_error(error: &RaftError) -> proto::RaftError {
    use proto::raft_error::Kind;
    let kind = match error {
        RaftError::NotLeader { leader } => Kind::NotLeader(proto::NotLeader {
            leader: leader.as_ref().map(|l| l.as_str().to_owned()),
        }),
        RaftError::Busy(why) => Kind::Busy(why.clone()),
        RaftError::TimedOut(what) => Kind::TimedOut(what.clone()),
        RaftError::Stale(what) => Kind::Stale(what.clone()),
        RaftError::CatchUpFailed { peer } => Kind::CatchUpFailed(peer.as_str().to_owned()),
        RaftError::Removed => Kind::Removed(proto::Empty {}),
        RaftError::Transferring { target } => Kind::Transferring(target.as_str().to_owned()),
        RaftError::Compacted { first_index } => Kind::Compacted(first_index.get()),
        RaftError::ShutDown => Kind::ShutDown(proto::Empty {}),
        RaftError::WrongTerm { expected, actual } => Kind::WrongTerm(proto::WrongTerm {
            expected: expected.get(),
            actual: actual.get(),
        }),
        RaftError::ReadLagging {
            read_index,
            applied,
        } => Kind::ReadLagging(proto::ReadLagging {
            read_index: read_index.get(),
            applied: applied.get(),
        }),
        RaftError::LeaderNotReady => Kind::LeaderNotReady(proto::Empty {}),
        RaftError::StateMachine(why) => Kind::StateMachine(why.clone()),
        RaftError::Io(why) => Kind::Io(why.clone()),
        RaftError::InvalidArgument(why) => Kind::InvalidArgument(why.clone()),
    };
    proto::RaftError { kind: Some(kind) }
}

// ---- decoding (wire -> core): validating ----

/// Decodes and validates a frame received from a peer.
pub fn decode_frame(frame: proto::Frame) -> Result<Frame> {
    let from = peer(&frame.from).map_err(|e| e.at("from"))?;
    let to = peer(&frame.to).map_err(|e| e.at("to"))?;
    if !frame.from_address.is_empty() {
        crate::identity::check_address(&frame.from_address)
            .map_err(|e| DecodeError::new(e).at("from_address"))?;
    }
    if frame.messages.len() > FRAME_MESSAGES_MAX {
        return Err(DecodeError::new(format!(
            "{} messages, more than the limit of {FRAME_MESSAGES_MAX}",
            frame.messages.len()
        ))
        .at("messages"));
    }
    let mut messages = Vec::with_capacity(frame.messages.len());
    for (i, pair) in frame.messages.into_iter().enumerate() {
        let message = pair
            .message
            .ok_or_else(|| DecodeError::missing("message"))
            .and_then(decode_message)
            .map_err(|e| e.at(format!("messages[{i}]")))?;
        messages.push((pair.group, message));
    }
    Ok(Frame {
        from,
        to,
        cluster: frame.cluster,
        from_address: frame.from_address,
        incarnation: frame.incarnation,
        messages,
    })
}

/// Decodes and validates one raft message.
pub fn decode_message(message: proto::Message) -> Result<Message> {
    let from = peer(&message.from).map_err(|e| e.at("from"))?;
    let to = peer(&message.to).map_err(|e| e.at("to"))?;
    let body = message
        .body
        .ok_or_else(|| DecodeError::missing("body"))
        .and_then(decode_body)?;
    Ok(Message {
        from,
        to,
        term: Term(message.term),
        body,
    })
}

fn decode_body(body: proto::message::Body) -> Result<MessageBody> {
    use proto::message::Body;
    Ok(match body {
        Body::RequestVote(v) => MessageBody::RequestVote {
            pre_vote: v.pre_vote,
            last_log_index: LogIndex(v.last_log_index),
            last_log_term: Term(v.last_log_term),
            leadership_transfer: v.leadership_transfer,
        },
        Body::RequestVoteResponse(v) => MessageBody::RequestVoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
            leader: if v.leader.is_empty() {
                None
            } else {
                Some(peer(&v.leader).map_err(|e| e.at("request_vote_response.leader"))?)
            },
        },
        Body::AppendEntries(a) => {
            let at = |e: DecodeError| e.at("append_entries");
            if a.entries.len() > MESSAGE_ENTRIES_MAX {
                return Err(at(DecodeError::new(format!(
                    "{} entries, more than the limit of {MESSAGE_ENTRIES_MAX}",
                    a.entries.len()
                ))
                .at("entries")));
            }
            let mut entries = Vec::with_capacity(a.entries.len());
            for (i, entry) in a.entries.into_iter().enumerate() {
                entries.push(decode_entry(entry).map_err(|e| at(e.at(format!("entries[{i}]"))))?);
            }
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(a.prev_log_index),
                prev_log_term: Term(a.prev_log_term),
                entries,
                leader_commit: LogIndex(a.leader_commit),
                echo: decode_echo(a.echo).map_err(at)?,
            }
        }
        Body::AppendEntriesResponse(r) => {
            use proto::append_entries_response::Result as R;
            let at = |e: DecodeError| e.at("append_entries_response");
            let result = match r.result.ok_or_else(|| at(DecodeError::missing("result")))? {
                R::Success(s) => AppendResult::Success {
                    last_index: LogIndex(s.last_index),
                },
                R::Reject(j) => AppendResult::Reject {
                    rejected: LogIndex(j.rejected),
                    hint: LogIndex(j.hint),
                    hint_term: Term(j.hint_term),
                },
                R::Busy(proto::Empty {}) => AppendResult::Busy,
                R::NeedSnapshot(proto::Empty {}) => AppendResult::NeedSnapshot,
            };
            MessageBody::AppendEntriesResponse {
                result,
                echo: decode_echo(r.echo).map_err(at)?,
            }
        }
        // A hibernate mark with a commit the core cannot take is the core's gateway's to drop
        // (`Raft::check_message`): it is a protocol matter, not a malformed frame.
        Body::Heartbeat(h) => MessageBody::Heartbeat {
            commit: LogIndex(h.commit),
            echo: decode_echo(h.echo).map_err(|e| e.at("heartbeat"))?,
            hibernate: h.hibernate,
            transfer_target: if h.transfer_target.is_empty() {
                None
            } else {
                Some(peer(&h.transfer_target).map_err(|e| e.at("heartbeat.transfer_target"))?)
            },
        },
        Body::HeartbeatResponse(h) => MessageBody::HeartbeatResponse {
            echo: decode_echo(h.echo).map_err(|e| e.at("heartbeat_response"))?,
        },
        Body::InstallSnapshot(s) => {
            let at = |e: DecodeError| e.at("install_snapshot");
            let meta = s.meta.ok_or_else(|| at(DecodeError::missing("meta")))?;
            let configuration = meta
                .configuration
                .ok_or_else(|| DecodeError::missing("configuration"))
                .and_then(decode_configuration)
                .map_err(|e| at(e.at("meta")))?;
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: LogIndex(meta.index),
                    term: Term(meta.term),
                    configuration,
                },
            }
        }
        Body::InstallSnapshotResponse(r) => MessageBody::InstallSnapshotResponse {
            installed: r.installed.map(LogIndex),
        },
        Body::TimeoutNow(proto::Empty {}) => MessageBody::TimeoutNow,
        Body::ReadIndexRequest(r) => MessageBody::ReadIndexRequest {
            batch: r.batch,
            lease: r.lease,
        },
        Body::ReadIndexResponse(r) => {
            use proto::read_index_response::Result as R;
            let at = |e: DecodeError| e.at("read_index_response");
            let result = match r.result.ok_or_else(|| at(DecodeError::missing("result")))? {
                R::Index(index) => Ok(LogIndex(index)),
                R::Error(error) => Err(decode_error(error).map_err(|e| at(e.at("error")))?),
            };
            MessageBody::ReadIndexResponse {
                batch: r.batch,
                result,
            }
        }
    })
}

fn decode_echo(echo: Option<proto::Echo>) -> Result<Echo> {
    let echo = echo.ok_or_else(|| DecodeError::missing("echo"))?;
    Ok(Echo {
        tick: echo.tick,
        read_seq: echo.read_seq,
    })
}

fn decode_entry(entry: proto::Entry) -> Result<Entry> {
    use proto::entry::Payload;
    let payload = match entry
        .payload
        .ok_or_else(|| DecodeError::missing("payload"))?
    {
        Payload::Noop(proto::Empty {}) => EntryPayload::NoOp,
        Payload::Normal(data) => EntryPayload::Normal(data),
        Payload::Configuration(conf) => EntryPayload::Configuration(
            decode_configuration(conf).map_err(|e| e.at("configuration"))?,
        ),
    };
    Ok(Entry {
        index: LogIndex(entry.index),
        term: Term(entry.term),
        payload,
    })
}

fn peer(name: &str) -> Result<PeerId> {
    if name.is_empty() {
        return Err(DecodeError::new("empty peer id"));
    }
    if name.len() > PEER_ID_BYTES_MAX {
        return Err(DecodeError::new(format!(
            "peer id of {} bytes, more than the limit of {PEER_ID_BYTES_MAX}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(DecodeError::new("peer id contains control characters"));
    }
    Ok(PeerId::new(name))
}

fn peer_set(names: Vec<String>, field: &str) -> Result<BTreeSet<PeerId>> {
    if names.len() > CONFIGURATION_PEERS_MAX {
        return Err(DecodeError::new(format!(
            "{} peers, more than the limit of {CONFIGURATION_PEERS_MAX}",
            names.len()
        ))
        .at(field));
    }
    let mut set = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let p = peer(name).map_err(|e| e.at(format!("{field}[{i}]")))?;
        if !set.insert(p) {
            return Err(
                DecodeError::new(format!("peer {name} listed twice")).at(format!("{field}[{i}]"))
            );
        }
    }
    Ok(set)
}

fn decode_configuration(conf: proto::Configuration) -> Result<Configuration> {
    let voters = peer_set(conf.voters, "voters")?;
    let learners = peer_set(conf.learners, "learners")?;
    let old_voters = if conf.joint {
        Some(peer_set(conf.old_voters, "old_voters")?)
    } else if conf.old_voters.is_empty() {
        None
    } else {
        return Err(
            DecodeError::new("old voters given but the configuration is not joint")
                .at("old_voters"),
        );
    };
    // What every configuration the core creates holds (`Configuration::validate_target`,
    // and a joint one's old half was such a target). Without a voter the quorum is of no
    // one: the core's commit rule then reads the term at index u64::MAX and panics (found
    // by flotilla-fuzz, raft-step-gen).
    if voters.is_empty() {
        return Err(DecodeError::new("a configuration needs at least one voter").at("voters"));
    }
    if old_voters.as_ref().is_some_and(BTreeSet::is_empty) {
        return Err(DecodeError::new("a joint configuration needs old voters").at("old_voters"));
    }
    if let Some(both) = voters.intersection(&learners).next() {
        return Err(
            DecodeError::new(format!("peer {both} is both a voter and a learner")).at("learners"),
        );
    }
    if conf.priorities.len() > CONFIGURATION_PEERS_MAX {
        return Err(DecodeError::new(format!(
            "{} priorities, more than the limit of {CONFIGURATION_PEERS_MAX}",
            conf.priorities.len()
        ))
        .at("priorities"));
    }
    let mut priorities = BTreeMap::new();
    for (i, p) in conf.priorities.into_iter().enumerate() {
        let at = |e: DecodeError| e.at(format!("priorities[{i}]"));
        let id = peer(&p.peer).map_err(|e| at(e.at("peer")))?;
        if p.priority < Priority::DISABLED.0 {
            return Err(at(DecodeError::new(format!(
                "priority {} below -1",
                p.priority
            ))));
        }
        if priorities.insert(id, Priority(p.priority)).is_some() {
            return Err(at(DecodeError::new(format!(
                "peer {} given two priorities",
                p.peer
            ))));
        }
    }
    Ok(Configuration {
        voters,
        learners,
        old_voters,
        priorities,
    })
}

fn text(value: String) -> Result<String> {
    if value.len() > ERROR_TEXT_BYTES_MAX {
        return Err(DecodeError::new(format!(
            "error text of {} bytes, more than the limit of {ERROR_TEXT_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(value)
}

fn decode_error(error: proto::RaftError) -> Result<RaftError> {
    use proto::raft_error::Kind;
    Ok(
        match error.kind.ok_or_else(|| DecodeError::missing("kind"))? {
            Kind::NotLeader(n) => RaftError::NotLeader {
                leader: n
                    .leader
                    .as_deref()
                    .map(peer)
                    .transpose()
                    .map_err(|e| e.at("not_leader.leader"))?,
            },
            Kind::Busy(why) => RaftError::Busy(text(why).map_err(|e| e.at("busy"))?),
            Kind::TimedOut(what) => RaftError::TimedOut(text(what).map_err(|e| e.at("timed_out"))?),
            Kind::Stale(what) => RaftError::Stale(text(what).map_err(|e| e.at("stale"))?),
            Kind::CatchUpFailed(p) => RaftError::CatchUpFailed {
                peer: peer(&p).map_err(|e| e.at("catch_up_failed"))?,
            },
            Kind::Removed(proto::Empty {}) => RaftError::Removed,
            Kind::Transferring(t) => RaftError::Transferring {
                target: peer(&t).map_err(|e| e.at("transferring"))?,
            },
            Kind::Compacted(first_index) => RaftError::Compacted {
                first_index: LogIndex(first_index),
            },
            Kind::ShutDown(proto::Empty {}) => RaftError::ShutDown,
            Kind::WrongTerm(w) => RaftError::WrongTerm {
                expected: Term(w.expected),
                actual: Term(w.actual),
            },
            Kind::ReadLagging(r) => RaftError::ReadLagging {
                read_index: LogIndex(r.read_index),
                applied: LogIndex(r.applied),
            },
            Kind::LeaderNotReady(proto::Empty {}) => RaftError::LeaderNotReady,
            Kind::StateMachine(why) => {
                RaftError::StateMachine(text(why).map_err(|e| e.at("state_machine"))?)
            }
            Kind::Io(why) => RaftError::Io(text(why).map_err(|e| e.at("io"))?),
            Kind::InvalidArgument(why) => {
                RaftError::InvalidArgument(text(why).map_err(|e| e.at("invalid_argument"))?)
            }
        },
    )
}

// ---- snapshot fetches ----

/// Encodes a snapshot fetch request for the wire.
#[must_use]
pub fn encode_snapshot_request(request: &SnapshotRequest) -> proto::SnapshotChunkRequest {
    use proto::snapshot_chunk_request::Part;
    proto::SnapshotChunkRequest {
        to: request.to.as_str().to_owned(),
        cluster: request.cluster,
        group: request.group,
        index: request.index.get(),
        term: request.term.get(),
        part: Some(match &request.part {
            SnapshotPart::Manifest => Part::Manifest(proto::Empty {}),
            SnapshotPart::Chunk {
                name,
                offset,
                len_max,
            } => Part::Chunk(proto::FileChunk {
                name: name.clone(),
                offset: *offset,
                len_max: *len_max,
            }),
        }),
    }
}

/// Decodes and validates a snapshot fetch request from a peer.
pub fn decode_snapshot_request(request: proto::SnapshotChunkRequest) -> Result<SnapshotRequest> {
    use proto::snapshot_chunk_request::Part;
    let root = |e: DecodeError| e.rooted("snapshot_request");
    let to = peer(&request.to).map_err(|e| root(e.at("to")))?;
    let part = match request
        .part
        .ok_or_else(|| root(DecodeError::missing("part")))?
    {
        Part::Manifest(proto::Empty {}) => SnapshotPart::Manifest,
        Part::Chunk(chunk) => {
            if chunk.name.is_empty() {
                return Err(root(DecodeError::new("empty file name").at("chunk.name")));
            }
            if chunk.name.len() > SNAPSHOT_FILE_NAME_BYTES_MAX {
                return Err(root(
                    DecodeError::new(format!(
                        "file name of {} bytes, more than the limit of \
                         {SNAPSHOT_FILE_NAME_BYTES_MAX}",
                        chunk.name.len()
                    ))
                    .at("chunk.name"),
                ));
            }
            if chunk.len_max == 0 {
                return Err(root(
                    DecodeError::new("asks for 0 bytes").at("chunk.len_max"),
                ));
            }
            SnapshotPart::Chunk {
                name: chunk.name,
                offset: chunk.offset,
                len_max: chunk.len_max,
            }
        }
    };
    Ok(SnapshotRequest {
        to,
        cluster: request.cluster,
        group: request.group,
        index: LogIndex(request.index),
        term: Term(request.term),
        part,
    })
}

/// Encodes the answer to a snapshot fetch. An error text longer than
/// [`ERROR_TEXT_BYTES_MAX`] is cut (at a character boundary) so the peer accepts it.
#[must_use]
pub fn encode_snapshot_chunk(result: std::result::Result<Bytes, String>) -> proto::SnapshotChunk {
    use proto::snapshot_chunk::Result as R;
    proto::SnapshotChunk {
        result: Some(match result {
            Ok(data) => R::Data(data),
            Err(mut why) => {
                if why.len() > ERROR_TEXT_BYTES_MAX {
                    let mut end = ERROR_TEXT_BYTES_MAX;
                    while !why.is_char_boundary(end) {
                        end -= 1;
                    }
                    why.truncate(end);
                }
                R::Error(why)
            }
        }),
    }
}

/// Decodes and validates the answer to `request`: the bytes (at most the chunk's `len_max`,
/// at most `bytes_max` in any case), or the error the serving peer gave. The outer error
/// says the answer itself was malformed.
pub fn decode_snapshot_chunk(
    chunk: proto::SnapshotChunk,
    request: &SnapshotRequest,
    bytes_max: usize,
) -> Result<std::result::Result<Bytes, String>> {
    use proto::snapshot_chunk::Result as R;
    let root = |e: DecodeError| e.rooted("snapshot_chunk");
    match chunk
        .result
        .ok_or_else(|| root(DecodeError::missing("result")))?
    {
        R::Data(data) => {
            let limit = match &request.part {
                SnapshotPart::Manifest => bytes_max,
                SnapshotPart::Chunk { len_max, .. } => {
                    usize::try_from(*len_max).map_or(bytes_max, |l| l.min(bytes_max))
                }
            };
            if data.len() > limit {
                return Err(root(
                    DecodeError::new(format!(
                        "{} bytes, more than the {limit} asked for",
                        data.len()
                    ))
                    .at("data"),
                ));
            }
            Ok(Ok(data))
        }
        R::Error(why) => Ok(Err(text(why).map_err(|e| root(e.at("error")))?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn p(name: &str) -> PeerId {
        PeerId::new(name)
    }

    fn echo() -> Echo {
        Echo {
            tick: 7,
            read_seq: 9,
        }
    }

    fn configuration(joint: bool) -> Configuration {
        Configuration {
            voters: [p("a:1"), p("b:2")].into_iter().collect(),
            learners: [p("c:3")].into_iter().collect(),
            old_voters: joint.then(|| [p("a:1"), p("d:4")].into_iter().collect()),
            priorities: [(p("a:1"), Priority(5)), (p("b:2"), Priority::NEVER)]
                .into_iter()
                .collect(),
        }
    }

    fn errors() -> Vec<RaftError> {
        vec![
            RaftError::NotLeader {
                leader: Some(p("a:1")),
            },
            RaftError::NotLeader { leader: None },
            RaftError::Busy("queue".into()),
            RaftError::TimedOut("read".into()),
            RaftError::Stale("term".into()),
            RaftError::CatchUpFailed { peer: p("b:2") },
            RaftError::Removed,
            RaftError::Transferring { target: p("c:3") },
            RaftError::Compacted {
                first_index: LogIndex(40),
            },
            RaftError::ShutDown,
            RaftError::WrongTerm {
                expected: Term(3),
                actual: Term(4),
            },
            RaftError::ReadLagging {
                read_index: LogIndex(10),
                applied: LogIndex(2),
            },
            RaftError::LeaderNotReady,
            RaftError::StateMachine("bad".into()),
            RaftError::Io("disk".into()),
            RaftError::InvalidArgument("no".into()),
        ]
    }

    /// One message of every `MessageBody` variant (and every inner variant).
    fn every_body() -> Vec<MessageBody> {
        let mut bodies = vec![
            MessageBody::RequestVote {
                pre_vote: true,
                last_log_index: LogIndex(5),
                last_log_term: Term(2),
                leadership_transfer: false,
            },
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_index: LogIndex(u64::MAX),
                last_log_term: Term(u64::MAX),
                leadership_transfer: true,
            },
            MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted: false,
                leader: Some(PeerId::new("127.0.0.1:7002")),
            },
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(3),
                prev_log_term: Term(1),
                entries: vec![
                    Entry {
                        index: LogIndex(4),
                        term: Term(2),
                        payload: EntryPayload::NoOp,
                    },
                    Entry {
                        index: LogIndex(5),
                        term: Term(2),
                        payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
                    },
                    Entry {
                        index: LogIndex(6),
                        term: Term(2),
                        payload: EntryPayload::Normal(Bytes::new()),
                    },
                    Entry {
                        index: LogIndex(7),
                        term: Term(2),
                        payload: EntryPayload::Configuration(configuration(true)),
                    },
                    Entry {
                        index: LogIndex(8),
                        term: Term(2),
                        payload: EntryPayload::Configuration(configuration(false)),
                    },
                ],
                leader_commit: LogIndex(3),
                echo: echo(),
            },
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![],
                leader_commit: LogIndex(0),
                echo: Echo::default(),
            },
            MessageBody::Heartbeat {
                commit: LogIndex(12),
                echo: echo(),
                hibernate: false,
                transfer_target: Some(PeerId::new("127.0.0.1:7003")),
            },
            MessageBody::Heartbeat {
                commit: LogIndex(13),
                echo: echo(),
                hibernate: true,
                transfer_target: None,
            },
            MessageBody::HeartbeatResponse { echo: echo() },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: LogIndex(100),
                    term: Term(4),
                    configuration: configuration(false),
                },
            },
            MessageBody::InstallSnapshotResponse {
                installed: Some(LogIndex(100)),
            },
            MessageBody::InstallSnapshotResponse { installed: None },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndexRequest {
                batch: 77,
                lease: true,
            },
            MessageBody::ReadIndexResponse {
                batch: 77,
                result: Ok(LogIndex(55)),
            },
        ];
        for result in [
            AppendResult::Success {
                last_index: LogIndex(9),
            },
            AppendResult::Reject {
                rejected: LogIndex(9),
                hint: LogIndex(4),
                hint_term: Term(1),
            },
            AppendResult::Busy,
            AppendResult::NeedSnapshot,
        ] {
            bodies.push(MessageBody::AppendEntriesResponse {
                result,
                echo: echo(),
            });
        }
        for error in errors() {
            bodies.push(MessageBody::ReadIndexResponse {
                batch: 1,
                result: Err(error),
            });
        }
        bodies
    }

    fn frame_of(bodies: Vec<MessageBody>) -> Frame {
        Frame {
            from: p("127.0.0.1:1"),
            to: p("0123456789abcdef"),
            cluster: 0xfeed_0000_0000_0001,
            from_address: "127.0.0.1:1".into(),
            incarnation: 0x1234_5678_9abc_def0,
            messages: bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| {
                    (
                        i as u64,
                        Message {
                            from: p("127.0.0.1:1"),
                            to: p("127.0.0.1:2"),
                            term: Term(i as u64 + 1),
                            body,
                        },
                    )
                })
                .collect(),
        }
    }

    fn same(a: &Frame, b: &Frame) {
        assert_eq!(a.from, b.from);
        assert_eq!(a.to, b.to);
        assert_eq!(a.cluster, b.cluster);
        assert_eq!(a.from_address, b.from_address);
        assert_eq!(a.incarnation, b.incarnation);
        assert_eq!(a.messages, b.messages);
    }

    #[test]
    fn every_body_variant_round_trips_through_bytes() {
        for body in every_body() {
            let frame = frame_of(vec![body]);
            let bytes = encode_frame(&frame).encode_to_vec();
            let decoded = decode_frame(proto::Frame::decode(bytes.as_slice()).expect("decode"))
                .expect("valid");
            same(&frame, &decoded);
        }
        let all = frame_of(every_body());
        let bytes = encode_frame(&all).encode_to_vec();
        let decoded =
            decode_frame(proto::Frame::decode(bytes.as_slice()).expect("decode")).expect("valid");
        same(&all, &decoded);
        // A beacon: no messages, only the sender and its incarnation.
        let beacon = frame_of(Vec::new());
        let bytes = encode_frame(&beacon).encode_to_vec();
        let decoded =
            decode_frame(proto::Frame::decode(bytes.as_slice()).expect("decode")).expect("valid");
        same(&beacon, &decoded);
    }

    fn one_message() -> proto::Frame {
        encode_frame(&frame_of(vec![MessageBody::Heartbeat {
            commit: LogIndex(1),
            echo: echo(),
            hibernate: false,
            transfer_target: None,
        }]))
    }

    fn refused(frame: proto::Frame) -> String {
        decode_frame(frame)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn a_frame_names_its_receiver_and_announces_a_valid_address() {
        let mut f = one_message();
        f.to = String::new();
        assert!(refused(f).contains("to: empty peer id"));
        let mut f = one_message();
        f.from_address = "no port here".into();
        assert!(refused(f).contains("from_address"));
    }

    #[test]
    fn missing_fields_are_named() {
        let mut f = one_message();
        f.messages[0].message.as_mut().unwrap().body = None;
        assert_eq!(
            refused(f),
            "frame.messages[0]: body is missing (absent or of an unknown kind)"
        );

        let mut f = one_message();
        f.messages[0].message = None;
        assert!(refused(f).starts_with("frame.messages[0]: message is missing"));

        let mut f = one_message();
        if let Some(proto::message::Body::Heartbeat(h)) =
            f.messages[0].message.as_mut().unwrap().body.as_mut()
        {
            h.echo = None;
        }
        assert!(refused(f).starts_with("frame.messages[0].heartbeat: echo is missing"));

        let mut f = encode_frame(&frame_of(vec![MessageBody::AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![Entry {
                index: LogIndex(1),
                term: Term(1),
                payload: EntryPayload::NoOp,
            }],
            leader_commit: LogIndex(0),
            echo: echo(),
        }]));
        if let Some(proto::message::Body::AppendEntries(a)) =
            f.messages[0].message.as_mut().unwrap().body.as_mut()
        {
            a.entries[0].payload = None;
        }
        assert!(refused(f)
            .starts_with("frame.messages[0].append_entries.entries[0]: payload is missing"));

        let mut f = encode_frame(&frame_of(vec![MessageBody::InstallSnapshot {
            meta: SnapshotMeta::default(),
        }]));
        if let Some(proto::message::Body::InstallSnapshot(s)) =
            f.messages[0].message.as_mut().unwrap().body.as_mut()
        {
            s.meta.as_mut().unwrap().configuration = None;
        }
        assert!(refused(f).contains("install_snapshot.meta: configuration is missing"));

        let mut f = encode_frame(&frame_of(vec![MessageBody::ReadIndexResponse {
            batch: 1,
            result: Err(RaftError::Removed),
        }]));
        if let Some(proto::message::Body::ReadIndexResponse(r)) =
            f.messages[0].message.as_mut().unwrap().body.as_mut()
        {
            r.result = Some(proto::read_index_response::Result::Error(
                proto::RaftError { kind: None },
            ));
        }
        assert!(refused(f).contains("read_index_response.error: kind is missing"));
    }

    #[test]
    fn bad_peers_and_absurd_counts_are_refused() {
        let mut f = one_message();
        f.from = String::new();
        assert_eq!(refused(f), "frame.from: empty peer id");

        let mut f = one_message();
        f.messages[0].message.as_mut().unwrap().to = "x".repeat(PEER_ID_BYTES_MAX + 1);
        assert!(refused(f).starts_with("frame.messages[0].to: peer id of 257 bytes"));

        let mut f = one_message();
        let m = f.messages[0].clone();
        f.messages = vec![m; FRAME_MESSAGES_MAX + 1];
        assert!(refused(f).starts_with("frame.messages: 65537 messages"));

        let conf_frame = |conf: proto::Configuration| {
            let mut f = encode_frame(&frame_of(vec![MessageBody::InstallSnapshot {
                meta: SnapshotMeta::default(),
            }]));
            if let Some(proto::message::Body::InstallSnapshot(s)) =
                f.messages[0].message.as_mut().unwrap().body.as_mut()
            {
                s.meta.as_mut().unwrap().configuration = Some(conf);
            }
            f
        };
        let twice = proto::Configuration {
            voters: vec!["a:1".into(), "a:1".into()],
            ..Default::default()
        };
        assert!(refused(conf_frame(twice)).ends_with("voters[1]: peer a:1 listed twice"));
        let not_joint = proto::Configuration {
            voters: vec!["a:1".into()],
            old_voters: vec!["b:1".into()],
            ..Default::default()
        };
        assert!(refused(conf_frame(not_joint)).contains("not joint"));
        let many = proto::Configuration {
            learners: (0..=CONFIGURATION_PEERS_MAX)
                .map(|i| format!("p:{i}"))
                .collect(),
            ..Default::default()
        };
        assert!(refused(conf_frame(many)).contains("learners: 1025 peers"));
        let bad_priority = proto::Configuration {
            voters: vec!["a:1".into()],
            priorities: vec![proto::PeerPriority {
                peer: "a:1".into(),
                priority: -2,
            }],
            ..Default::default()
        };
        assert!(refused(conf_frame(bad_priority)).ends_with("priorities[0]: priority -2 below -1"));
    }

    #[test]
    fn an_unknown_body_kind_reads_as_missing() {
        // A message whose body uses a field number this build does not know (a newer
        // peer's variant): prost skips the field, the oneof stays empty, the frame is refused.
        let mut bytes = Vec::new();
        prost::encoding::string::encode(1, &"a:1".to_owned(), &mut bytes);
        prost::encoding::string::encode(2, &"b:1".to_owned(), &mut bytes);
        prost::encoding::uint64::encode(99, &5u64, &mut bytes);
        let message = proto::Message::decode(bytes.as_slice()).expect("decodes");
        let error = decode_message(message).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "frame: body is missing (absent or of an unknown kind)"
        );
    }

    fn chunk_request(len_max: u32) -> SnapshotRequest {
        SnapshotRequest {
            to: p("0123456789abcdef"),
            cluster: 7,
            group: 3,
            index: LogIndex(40),
            term: Term(2),
            part: SnapshotPart::Chunk {
                name: "data".into(),
                offset: 7,
                len_max,
            },
        }
    }

    #[test]
    fn snapshot_requests_round_trip_and_bad_ones_are_named() {
        let manifest = SnapshotRequest {
            part: SnapshotPart::Manifest,
            ..chunk_request(1)
        };
        for request in [manifest, chunk_request(128 * 1024)] {
            let bytes = encode_snapshot_request(&request).encode_to_vec();
            let wire = proto::SnapshotChunkRequest::decode(bytes.as_slice()).expect("decode");
            assert_eq!(decode_snapshot_request(wire).expect("valid"), request);
        }
        let mut wire = encode_snapshot_request(&chunk_request(1));
        wire.to = String::new();
        assert_eq!(
            decode_snapshot_request(wire).unwrap_err().to_string(),
            "snapshot_request.to: empty peer id"
        );
        let mut wire = encode_snapshot_request(&chunk_request(1));
        wire.part = None;
        assert_eq!(
            decode_snapshot_request(wire).unwrap_err().to_string(),
            "snapshot_request: part is missing (absent or of an unknown kind)"
        );
        let named = |name: String, len_max: u32| {
            let mut wire = encode_snapshot_request(&chunk_request(len_max));
            if let Some(proto::snapshot_chunk_request::Part::Chunk(c)) = wire.part.as_mut() {
                c.name = name;
            }
            decode_snapshot_request(wire).unwrap_err().to_string()
        };
        assert_eq!(
            named(String::new(), 1),
            "snapshot_request.chunk.name: empty file name"
        );
        assert!(named("x".repeat(SNAPSHOT_FILE_NAME_BYTES_MAX + 1), 1)
            .starts_with("snapshot_request.chunk.name: file name of 1025 bytes"));
        assert_eq!(
            named("data".into(), 0),
            "snapshot_request.chunk.len_max: asks for 0 bytes"
        );
    }

    #[test]
    fn snapshot_chunks_are_bounded() {
        let request = chunk_request(4);
        let ok = encode_snapshot_chunk(Ok(Bytes::from_static(b"abcd")));
        assert_eq!(
            decode_snapshot_chunk(ok, &request, 1 << 20).expect("valid"),
            Ok(Bytes::from_static(b"abcd"))
        );
        let long = encode_snapshot_chunk(Ok(Bytes::from_static(b"abcde")));
        assert_eq!(
            decode_snapshot_chunk(long, &request, 1 << 20)
                .unwrap_err()
                .to_string(),
            "snapshot_chunk.data: 5 bytes, more than the 4 asked for"
        );
        let manifest = SnapshotRequest {
            part: SnapshotPart::Manifest,
            ..chunk_request(1)
        };
        let big = encode_snapshot_chunk(Ok(Bytes::from(vec![0u8; 11])));
        assert!(decode_snapshot_chunk(big, &manifest, 10).is_err());
        assert!(
            decode_snapshot_chunk(proto::SnapshotChunk { result: None }, &request, 10)
                .unwrap_err()
                .to_string()
                .starts_with("snapshot_chunk: result is missing")
        );

        // The server cuts long error texts (at a character boundary); the client refuses
        // longer ones.
        let cut = encode_snapshot_chunk(Err("é".repeat(ERROR_TEXT_BYTES_MAX)));
        match decode_snapshot_chunk(cut, &request, 10).expect("valid") {
            Err(why) => assert_eq!(why.len(), ERROR_TEXT_BYTES_MAX),
            Ok(_) => panic!("an error was sent"),
        }
        let raw = proto::SnapshotChunk {
            result: Some(proto::snapshot_chunk::Result::Error(
                "x".repeat(ERROR_TEXT_BYTES_MAX + 1),
            )),
        };
        assert!(decode_snapshot_chunk(raw, &request, 10)
            .unwrap_err()
            .to_string()
            .starts_with("snapshot_chunk.error: error text of 4097 bytes"));
    }
}
