//! Targets on the raft wire and the raft core: `raft-frame` and `snapshot-fetch` (the node's
//! gRPC codec: protobuf bytes, then validation into core types), `raft-step` (decoded frames
//! stepped into a live 3-peer cluster) and `raft-step-gen` (messages generated from the
//! input's bytes, with terms and indexes at and around the edges, stepped likewise).
//!
//! Owns: the seeds, which are messages a real 3-peer `testkit::Cluster` sent while electing,
//! replicating, snapshotting, adding a learner, transferring leadership and serving reads,
//! plus one message of every other body and error kind. Must never: reach into the core
//! other than through its public API (`step`, `tick`, `propose`, the `Ready` loop).

use bytes::Bytes;
use flotilla_node::grpc::codec::{
    decode_frame, decode_snapshot_chunk, decode_snapshot_request, encode_frame,
    encode_snapshot_chunk, encode_snapshot_request,
};
use flotilla_node::grpc::proto;
use flotilla_node::{Frame, SnapshotPart, SnapshotRequest};
use flotilla_raft::testkit::Cluster;
use flotilla_raft::{
    AppendResult, Configuration, Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, PeerId,
    Priority, RaftError, ReadMode, SnapshotMeta, Term,
};
use prost::Message as _;

use crate::Target;

/// Messages delivered while a real cluster did a bit of everything.
pub(crate) fn cluster_messages() -> Vec<Message> {
    let mut cluster = Cluster::new(3);
    let mut seen = Vec::new();
    let n1 = PeerId::new("n1");
    let n2 = PeerId::new("n2");
    let n4 = PeerId::new("n4");
    let drain = |cluster: &mut Cluster, seen: &mut Vec<Message>| {
        for _ in 0..2000 {
            match cluster.deliver_one() {
                Some(m) => seen.push(m),
                None => break,
            }
        }
    };
    cluster.raft(&n1).campaign_now();
    cluster.process(&n1);
    drain(&mut cluster, &mut seen);
    for i in 0u8..6 {
        let _ = cluster
            .raft(&n1)
            .propose(Bytes::from(vec![i; usize::from(i) * 7]), None);
        cluster.process(&n1);
        drain(&mut cluster, &mut seen);
    }
    let _ = cluster.raft(&n2).read(1, ReadMode::ReadIndex);
    cluster.process(&n2);
    drain(&mut cluster, &mut seen);
    cluster.snapshot(&n1);
    cluster.add_node(n4.clone(), Configuration::default());
    let _ = cluster.raft(&n1).add_learners(std::slice::from_ref(&n4));
    cluster.process(&n1);
    drain(&mut cluster, &mut seen);
    for _ in 0..30 {
        cluster.tick_all();
        drain(&mut cluster, &mut seen);
    }
    let _ = cluster.raft(&n1).transfer_leadership(Some(n2.clone()));
    cluster.process(&n1);
    drain(&mut cluster, &mut seen);
    for _ in 0..30 {
        cluster.tick_all();
        drain(&mut cluster, &mut seen);
    }
    seen
}

fn peer(name: &str) -> PeerId {
    PeerId::new(name)
}

/// One message of every body kind the cluster run may not have produced, and every error
/// kind a ReadIndexResponse may carry.
pub(crate) fn crafted_messages() -> Vec<Message> {
    let echo = Echo {
        tick: 9,
        read_seq: 3,
    };
    let joint = Configuration {
        voters: [peer("n1"), peer("n2"), peer("n3")].into_iter().collect(),
        learners: [peer("n4")].into_iter().collect(),
        old_voters: Some([peer("n1"), peer("n2"), peer("n5")].into_iter().collect()),
        priorities: [(peer("n1"), Priority(5)), (peer("n2"), Priority::DISABLED)]
            .into_iter()
            .collect(),
    };
    let entries = vec![
        Entry {
            index: LogIndex(8),
            term: Term(3),
            payload: EntryPayload::NoOp,
        },
        Entry {
            index: LogIndex(9),
            term: Term(3),
            payload: EntryPayload::Configuration(joint.clone()),
        },
        Entry {
            index: LogIndex(10),
            term: Term(3),
            payload: EntryPayload::Normal(Bytes::from_static(b"\x01\x00\x00\x00\x01k")),
        },
    ];
    let errors = vec![
        RaftError::NotLeader {
            leader: Some(peer("n2")),
        },
        RaftError::NotLeader { leader: None },
        RaftError::Busy("busy".into()),
        RaftError::TimedOut("read".into()),
        RaftError::Stale("epoch".into()),
        RaftError::CatchUpFailed { peer: peer("n4") },
        RaftError::Removed,
        RaftError::Transferring { target: peer("n3") },
        RaftError::Compacted {
            first_index: LogIndex(4),
        },
        RaftError::ShutDown,
        RaftError::WrongTerm {
            expected: Term(2),
            actual: Term(3),
        },
        RaftError::ReadLagging {
            read_index: LogIndex(9),
            applied: LogIndex(7),
        },
        RaftError::LeaderNotReady,
        RaftError::StateMachine("apply".into()),
        RaftError::Io("disk".into()),
        RaftError::InvalidArgument("bad".into()),
    ];
    let mut bodies = vec![
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: LogIndex(7),
            last_log_term: Term(2),
            leadership_transfer: true,
        },
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(7),
            prev_log_term: Term(2),
            entries,
            leader_commit: LogIndex(7),
            echo,
        },
        MessageBody::AppendEntriesResponse {
            result: AppendResult::Reject {
                rejected: LogIndex(7),
                hint: LogIndex(5),
                hint_term: Term(2),
            },
            echo,
        },
        MessageBody::AppendEntriesResponse {
            result: AppendResult::Busy,
            echo,
        },
        MessageBody::AppendEntriesResponse {
            result: AppendResult::NeedSnapshot,
            echo,
        },
        MessageBody::Heartbeat {
            commit: LogIndex(7),
            echo,
            hibernate: true,
            transfer_target: None,
        },
        MessageBody::Heartbeat {
            commit: LogIndex(7),
            echo,
            hibernate: false,
            transfer_target: Some(peer("n3")),
        },
        MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: LogIndex(7),
                term: Term(2),
                configuration: joint,
            },
        },
        MessageBody::InstallSnapshotResponse {
            installed: Some(LogIndex(7)),
        },
        MessageBody::InstallSnapshotResponse { installed: None },
        MessageBody::TimeoutNow,
        MessageBody::ReadIndexRequest {
            batch: 4,
            lease: true,
        },
        MessageBody::ReadIndexResponse {
            batch: 4,
            result: Ok(LogIndex(7)),
        },
    ];
    bodies.extend(
        errors
            .into_iter()
            .map(|error| MessageBody::ReadIndexResponse {
                batch: 5,
                result: Err(error),
            }),
    );
    bodies
        .into_iter()
        .map(|body| Message {
            from: peer("n1"),
            to: peer("n2"),
            term: Term(3),
            body,
        })
        .collect()
}

/// The messages cut into frames of one to five messages, over a few groups, encoded.
fn frames(messages: Vec<Message>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = messages.as_slice();
    let mut n = 0u64;
    while !rest.is_empty() {
        let take = (1 + (n % 5) as usize).min(rest.len());
        let (now, later) = rest.split_at(take);
        rest = later;
        let frame = Frame {
            from: now[0].from.clone(),
            to: now[0].to.clone(),
            cluster: n,
            from_address: format!("10.0.0.{n}:7001"),
            incarnation: n * 7919,
            messages: now.iter().map(|m| (n % 3, m.clone())).collect(),
        };
        out.push(encode_frame(&frame).encode_to_vec());
        n += 1;
    }
    // A liveness beacon: a frame without messages.
    out.push(
        encode_frame(&Frame {
            from: peer("n3"),
            to: peer("n1"),
            cluster: 7,
            from_address: String::new(),
            incarnation: 42,
            messages: Vec::new(),
        })
        .encode_to_vec(),
    );
    out
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut messages = cluster_messages();
    // Every kind of body at least once, but not thousands of heartbeats.
    messages.truncate(400);
    messages.extend(crafted_messages());
    frames(messages)
}

/// Decodes a frame as the gRPC server does, and checks that what was accepted survives
/// encoding and decoding unchanged (the pair check across the wire).
fn run_frame(bytes: &[u8]) -> bool {
    let Ok(wire) = proto::Frame::decode(bytes) else {
        return false;
    };
    let Ok(frame) = decode_frame(wire) else {
        return false;
    };
    let again = decode_frame(encode_frame(&frame))
        .unwrap_or_else(|e| panic!("an accepted frame, re-encoded, is refused: {e}"));
    assert_eq!(
        again.from, frame.from,
        "frame sender changed in a round trip"
    );
    assert_eq!(again.incarnation, frame.incarnation);
    assert_eq!(
        again.messages, frame.messages,
        "messages changed in a round trip"
    );
    true
}

/// `raft-frame`: raft frames from the network.
pub(crate) fn raft_frame() -> Target {
    Target {
        name: "raft-frame",
        about: "protobuf Frame bytes -> grpc::codec::decode_frame -> core messages (round trip checked)",
        seeds: frame_seeds,
        run: run_frame,
        fixup: None,
    }
}

fn snapshot_requests() -> Vec<SnapshotRequest> {
    vec![
        SnapshotRequest {
            to: peer("n1"),
            cluster: 7,
            group: 3,
            index: LogIndex(100),
            term: Term(4),
            part: SnapshotPart::Manifest,
        },
        SnapshotRequest {
            to: peer("n1"),
            cluster: 7,
            group: 3,
            index: LogIndex(100),
            term: Term(4),
            part: SnapshotPart::Chunk {
                name: "data.kv".into(),
                offset: 131_072,
                len_max: 131_072,
            },
        },
    ]
}

/// Seeds: requests, then answers (a first byte tells the run which it is).
fn snapshot_fetch_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for request in snapshot_requests() {
        let mut seed = vec![0];
        seed.extend(encode_snapshot_request(&request).encode_to_vec());
        out.push(seed);
    }
    for answer in [
        Ok(Bytes::from_static(b"FKVX\x01 some chunk bytes")),
        Err("no such snapshot".to_string()),
    ] {
        let mut seed = vec![1];
        seed.extend(encode_snapshot_chunk(answer).encode_to_vec());
        out.push(seed);
    }
    out
}

fn run_snapshot_fetch(bytes: &[u8]) -> bool {
    match bytes.split_first() {
        Some((0, rest)) => proto::SnapshotChunkRequest::decode(rest)
            .ok()
            .and_then(|r| decode_snapshot_request(r).ok())
            .is_some(),
        Some((_, rest)) => {
            let Ok(chunk) = proto::SnapshotChunk::decode(rest) else {
                return false;
            };
            let mut accepted = false;
            for request in snapshot_requests() {
                for bytes_max in [0, 16, flotilla_node::grpc::SNAPSHOT_DATA_BYTES_MAX] {
                    accepted |= decode_snapshot_chunk(chunk.clone(), &request, bytes_max).is_ok();
                }
            }
            accepted
        }
        None => false,
    }
}

/// `snapshot-fetch`: snapshot fetch requests (server side) and answers (client side).
pub(crate) fn snapshot_fetch() -> Target {
    Target {
        name: "snapshot-fetch",
        about: "protobuf SnapshotChunkRequest / SnapshotChunk -> grpc::codec decode_snapshot_*",
        seeds: snapshot_fetch_seeds,
        run: run_snapshot_fetch,
        fixup: None,
    }
}

// ---- the core ----

const MEMBERS: [&str; 3] = ["n1", "n2", "n3"];
/// Messages delivered between the peers after the injected ones, at most (the cluster
/// must settle or keep busy within it; either is fine, a panic is not).
const SETTLE_MESSAGES_MAX: usize = 3000;
/// Ticks every peer gets after the injected messages: more than an election timeout (the
/// test peers' is 10 to 20 ticks).
const RUN_ON_TICKS: usize = 25;

/// The cluster every core input starts from: n1 leads term 1 (or later) with a few
/// committed entries, everything delivered.
fn cluster() -> Cluster {
    let mut cluster = Cluster::new(3);
    let n1 = peer("n1");
    cluster.raft(&n1).campaign_now();
    cluster.process(&n1);
    settle(&mut cluster);
    for i in 0u8..3 {
        let _ = cluster.raft(&n1).propose(Bytes::from(vec![i; 5]), None);
        cluster.process(&n1);
    }
    settle(&mut cluster);
    cluster
}

fn settle(cluster: &mut Cluster) {
    for _ in 0..SETTLE_MESSAGES_MAX {
        if cluster.deliver_one().is_none() {
            break;
        }
    }
}

/// Steps `message` into its recipient (a member: an outsider recipient is redirected to
/// member `slot`) and runs the recipient's `Ready` loop.
fn inject(cluster: &mut Cluster, mut message: Message, slot: u64) {
    if !MEMBERS.contains(&message.to.as_str()) {
        message.to = peer(MEMBERS[(slot % 3) as usize]);
    }
    let to = message.to.clone();
    cluster.raft(&to).step(message);
    cluster.process(&to);
}

/// Seeds of `raft-step`: what the peers of [`cluster`] send next when n1 goes on
/// proposing, n2 campaigns and a snapshot is taken (so the messages fit the cluster's
/// terms and indexes), plus the crafted messages.
fn step_seeds() -> Vec<Vec<u8>> {
    let mut cluster = cluster();
    let mut seen = Vec::new();
    let (n1, n2) = (peer("n1"), peer("n2"));
    let mut drain = |cluster: &mut Cluster| {
        for _ in 0..500 {
            match cluster.deliver_one() {
                Some(m) => seen.push(m),
                None => break,
            }
        }
    };
    for i in 0u8..3 {
        let _ = cluster.raft(&n1).propose(Bytes::from(vec![i; 9]), None);
        cluster.process(&n1);
        drain(&mut cluster);
    }
    cluster.tick_all();
    drain(&mut cluster);
    cluster.raft(&n2).campaign_now();
    cluster.process(&n2);
    drain(&mut cluster);
    cluster.snapshot(&n2);
    for _ in 0..25 {
        cluster.tick_all();
        drain(&mut cluster);
    }
    seen.truncate(300);
    seen.extend(crafted_messages());
    frames(seen)
}

/// Decodes a frame as the server does and steps every message it carries into a fresh
/// [`cluster`], ticking and delivering between them as the groups' ids say, then lets the
/// cluster run. The core must drop what it cannot take (`Raft::check_message`), never
/// panic.
fn run_step(bytes: &[u8]) -> bool {
    let Ok(frame) = proto::Frame::decode(bytes)
        .map_err(|_| ())
        .and_then(|w| decode_frame(w).map_err(|_| ()))
    else {
        return false;
    };
    let mut cluster = cluster();
    for (group, message) in frame.messages {
        inject(&mut cluster, message, group);
        match group % 4 {
            1 => cluster.tick_all(),
            2 => {
                let _ = cluster.deliver_one();
            }
            _ => {}
        }
    }
    run_on(&mut cluster);
    true
}

/// Lets the cluster run for longer than an election timeout, so whatever the injected
/// messages left behind (a term, a vote, a log) meets elections and replication.
fn run_on(cluster: &mut Cluster) {
    for _ in 0..RUN_ON_TICKS {
        settle(cluster);
        cluster.tick_all();
    }
    settle(cluster);
}

/// `raft-step`: real and mutated messages stepped into a live 3-peer cluster.
pub(crate) fn raft_step() -> Target {
    Target {
        name: "raft-step",
        about:
            "protobuf Frame bytes -> decode_frame -> Raft::step on a live 3-peer testkit cluster",
        seeds: step_seeds,
        run: run_step,
        fixup: None,
    }
}

/// The input's bytes as a source of choices; zeroes once it runs out.
struct Choices<'a> {
    bytes: &'a [u8],
}

impl Choices<'_> {
    fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | (u64::from(self.u8()) << (8 * i)))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A number near `around` (the receiver's term, last index, ...) or at an edge.
    fn near(&mut self, around: u64) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - u64::from(self.u8() % 4),
            3 => around
                .wrapping_add(1 << 32)
                .wrapping_add(u64::from(self.u8() % 3)),
            4 => self.u64(),
            _ => around
                .wrapping_add(u64::from(self.u8() % 8))
                .wrapping_sub(3),
        }
    }

    fn peer(&mut self) -> PeerId {
        match self.u8() % 5 {
            i @ 0..=2 => peer(MEMBERS[usize::from(i)]),
            3 => peer("n4"),
            _ => peer("outsider:9"),
        }
    }

    fn configuration(&mut self) -> Configuration {
        let mut voters = std::collections::BTreeSet::new();
        for _ in 0..self.u8() % 5 {
            voters.insert(self.peer());
        }
        let joint = self.u8().is_multiple_of(4);
        Configuration {
            old_voters: joint.then(|| [self.peer(), self.peer()].into_iter().collect()),
            voters,
            ..Configuration::default()
        }
    }
}

/// One message for `cluster`, shaped by `choices` around the recipient's own state.
fn generated_message(cluster: &mut Cluster, choices: &mut Choices<'_>) -> Message {
    let to = peer(MEMBERS[usize::from(choices.u8() % 3)]);
    let from = choices.peer();
    let raft = cluster.raft(&to);
    let (term_now, last) = (raft.term().get(), raft.last_index().get());
    let term = Term(choices.near(term_now));
    let echo = Echo {
        tick: choices.u64() % 64,
        read_seq: choices.u64() % 64,
    };
    let body = match choices.u8() % 11 {
        0 => MessageBody::RequestVote {
            pre_vote: choices.u8().is_multiple_of(2),
            last_log_index: LogIndex(choices.near(last)),
            last_log_term: Term(choices.near(term_now)),
            leadership_transfer: choices.u8().is_multiple_of(2),
        },
        1 => MessageBody::RequestVoteResponse {
            pre_vote: choices.u8().is_multiple_of(2),
            granted: choices.u8().is_multiple_of(2),
            leader: choices.u8().is_multiple_of(2).then(|| choices.peer()),
        },
        2 | 3 => {
            let prev = choices.near(last);
            let prev_term = choices.near(term_now);
            let entries = (0..choices.u8() % 4)
                .map(|i| Entry {
                    index: LogIndex(prev.wrapping_add(1 + u64::from(i))),
                    term: Term(prev_term.max(term.get())),
                    payload: match choices.u8() % 3 {
                        0 => EntryPayload::NoOp,
                        1 => EntryPayload::Configuration(choices.configuration()),
                        _ => EntryPayload::Normal(Bytes::from(vec![i; 3])),
                    },
                })
                .collect();
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(prev),
                prev_log_term: Term(prev_term),
                entries,
                leader_commit: LogIndex(choices.near(last)),
                echo,
            }
        }
        4 => MessageBody::AppendEntriesResponse {
            result: match choices.u8() % 4 {
                0 => AppendResult::Success {
                    last_index: LogIndex(choices.near(last)),
                },
                1 => AppendResult::Reject {
                    rejected: LogIndex(choices.near(last)),
                    hint: LogIndex(choices.near(last)),
                    hint_term: Term(choices.near(term_now)),
                },
                2 => AppendResult::Busy,
                _ => AppendResult::NeedSnapshot,
            },
            echo,
        },
        5 => MessageBody::Heartbeat {
            commit: LogIndex(choices.near(last)),
            echo,
            hibernate: choices.u8().is_multiple_of(2),
            transfer_target: choices.u8().is_multiple_of(2).then(|| choices.peer()),
        },
        6 => MessageBody::HeartbeatResponse { echo },
        7 => MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: LogIndex(choices.near(last)),
                term: Term(choices.near(term_now)),
                configuration: choices.configuration(),
            },
        },
        8 => MessageBody::InstallSnapshotResponse {
            installed: choices
                .u8()
                .is_multiple_of(2)
                .then(|| LogIndex(choices.near(last))),
        },
        9 => MessageBody::TimeoutNow,
        _ => {
            if choices.u8().is_multiple_of(2) {
                MessageBody::ReadIndexRequest {
                    batch: choices.u64() % 8,
                    lease: choices.u8().is_multiple_of(2),
                }
            } else {
                MessageBody::ReadIndexResponse {
                    batch: choices.u64() % 8,
                    result: Ok(LogIndex(choices.near(last))),
                }
            }
        }
    };
    Message {
        from,
        to,
        term,
        body,
    }
}

/// Reads the input as a program: tick a peer, deliver a queued message, propose, or step
/// a generated message, until the input runs out; then lets the cluster run.
fn run_step_generated(bytes: &[u8]) -> bool {
    let mut cluster = cluster();
    let mut choices = Choices { bytes };
    let mut steps = 0;
    while !choices.is_empty() && steps < 256 {
        steps += 1;
        match choices.u8() % 8 {
            0 => cluster.tick(&peer(MEMBERS[usize::from(choices.u8() % 3)])),
            1 => {
                for _ in 0..choices.u8() % 8 {
                    let _ = cluster.deliver_one();
                }
            }
            2 => {
                let id = peer(MEMBERS[usize::from(choices.u8() % 3)]);
                let _ = cluster.raft(&id).propose(Bytes::from_static(b"v"), None);
                cluster.process(&id);
            }
            _ => {
                let message = generated_message(&mut cluster, &mut choices);
                inject(&mut cluster, message, 0);
            }
        }
    }
    run_on(&mut cluster);
    true
}

/// Seeds of `raft-step-gen`: fixed pseudo-random programs.
fn step_generated_seeds() -> Vec<Vec<u8>> {
    let mut rng = flotilla_raft::Rng::new(0x5eed);
    (0..32)
        .map(|i| (0..64 + i * 8).map(|_| rng.next_u64() as u8).collect())
        .collect()
}

/// `raft-step-gen`: well-formed messages with edge terms and indexes, from members and
/// outsiders, stepped into a live cluster between ticks, deliveries and proposals.
pub(crate) fn raft_step_generated() -> Target {
    Target {
        name: "raft-step-gen",
        about: "input bytes as a program of generated messages (edge terms/indexes, outsiders), ticks, deliveries, proposals on a 3-peer cluster",
        seeds: step_generated_seeds,
        run: run_step_generated,
        fixup: None,
    }
}
