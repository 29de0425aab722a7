//! What is admitted can be replicated, and a message's `from` must equal its frame's
//! sender: frames are cut at the receiver's limits (messages and bytes), the largest entry
//! a node admits commits over gRPC, a larger one is refused before raft, and a message
//! naming another sender than its frame is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::grpc::codec::FRAME_MESSAGES_MAX;
use flotilla_node::grpc::{GrpcOptions, GrpcServer, GrpcTransport};
use flotilla_node::limits::{ENTRY_BYTES_MAX, FRAME_BYTES_MAX};
use flotilla_node::{Frame, NodeError, PeerId, RaftError, Transport};
use flotilla_raft::{Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, Term};
use tokio::sync::mpsc;

use super::cluster::{
    add, grpc_managers_with, serve_counter_group, temp_root, value_of, ChannelSink, Cluster,
};

const WAIT: Duration = Duration::from_secs(30);

fn heartbeat(from: &PeerId, to: &PeerId, seq: u64) -> Message {
    Message {
        from: from.clone(),
        to: to.clone(),
        term: Term(1),
        body: MessageBody::Heartbeat {
            commit: LogIndex(seq),
            echo: Echo::default(),
            hibernate: false,
            transfer_target: None,
        },
    }
}

fn append(from: &PeerId, to: &PeerId, index: u64, payload: Bytes) -> Message {
    Message {
        from: from.clone(),
        to: to.clone(),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(index - 1),
            prev_log_term: Term(1),
            entries: vec![Entry {
                index: LogIndex(index),
                term: Term(1),
                payload: EntryPayload::Normal(payload),
            }],
            leader_commit: LogIndex(0),
            echo: Echo::default(),
        },
    }
}

/// The sequence number a test message carries (heartbeat commit, or entry index).
fn seq_of(message: &Message) -> u64 {
    match &message.body {
        MessageBody::Heartbeat { commit, .. } => commit.get(),
        MessageBody::AppendEntries { entries, .. } => entries[0].index.get(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Receives frames until `count` messages arrived; returns their sequence numbers in order.
async fn receive_messages(rx: &mut mpsc::Receiver<Frame>, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        let frame = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", seqs.len()))
            .expect("sink open");
        seqs.extend(frame.messages.iter().map(|(_, m)| seq_of(m)));
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_messages_than_one_frame_holds_all_arrive_in_order() {
    // 10,000 regions between two stores put 73k-105k messages into one round's frame: the
    // receiver refused it and the stream reset forever.
    let server = GrpcServer::bind("127.0.0.1:0").await.expect("bind");
    let (tx, mut rx) = mpsc::channel(1024);
    let server = server.serve(Arc::new(ChannelSink(tx)));
    let to = server.address().clone();
    let me = PeerId::new("127.0.0.1:4");
    let transport = GrpcTransport::new(GrpcOptions::default());
    let count = 2 * FRAME_MESSAGES_MAX + 5;
    let messages = (0..count as u64)
        .map(|seq| (seq % 10_000, heartbeat(&me, &to, seq)))
        .collect();
    transport.send(
        &to,
        Frame {
            from: me.clone(),
            to: to.clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 7,
            messages,
        },
    );
    // A frame queued after it arrives after it.
    transport.send(
        &to,
        Frame {
            from: me.clone(),
            to: to.clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 7,
            messages: vec![(1, heartbeat(&me, &to, count as u64))],
        },
    );
    let seqs = receive_messages(&mut rx, count + 1).await;
    assert!(
        seqs.iter().copied().eq(0..=count as u64),
        "messages out of order or lost"
    );
    let stats = transport.stats();
    assert_eq!(stats.frames_split, 2, "{stats:?}");
    assert_eq!(stats.frames_sent, 4, "{stats:?}");
    assert_eq!(stats.streams_opened, 1, "the stream never reset: {stats:?}");
    assert_eq!(server.stats().streams_refused, 0, "{:?}", server.stats());
    server.shutdown().await;
}

/// A server that refuses frames of more than `messages_max` messages, and what it receives.
async fn server_refusing_over(
    messages_max: usize,
) -> (flotilla_node::grpc::ServerHandle, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(1024);
    let server = GrpcServer::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .with_frame_messages_max(messages_max)
        .serve(Arc::new(ChannelSink(tx)));
    (server, rx)
}

/// A lowered limit, on both sides: the sender cuts to it (every message arrives, in
/// order), and a receiver refuses a frame over it (the stream is refused and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_frame_limit_is_obeyed_by_senders_and_enforced_by_receivers() {
    let frame = |me: &PeerId, to: &PeerId, first: u64, count: u64| Frame {
        from: me.clone(),
        to: to.clone(),
        cluster: 0,
        from_address: String::new(),
        incarnation: 7,
        messages: (first..first + count)
            .map(|seq| (seq % 50, heartbeat(me, to, seq)))
            .collect(),
    };
    let me = PeerId::new("127.0.0.1:4");
    // Both sides at 8 messages: 50 messages go as 7 frames, all of them arriving.
    let (server, mut rx) = server_refusing_over(8).await;
    let to = server.address().clone();
    let transport = GrpcTransport::new(GrpcOptions {
        frame_messages_max: 8,
        ..GrpcOptions::default()
    });
    transport.send(&to, frame(&me, &to, 0, 50));
    let seqs = receive_messages(&mut rx, 50).await;
    assert!(
        seqs.iter().copied().eq(0..50),
        "messages out of order or lost"
    );
    let stats = transport.stats();
    assert_eq!(stats.frames_split, 6, "{stats:?}");
    assert_eq!(server.stats().streams_refused, 0, "{:?}", server.stats());
    server.shutdown().await;

    // A sender that cuts at the default meets a receiver at 8: refused, never delivered.
    let (server, mut rx) = server_refusing_over(8).await;
    let to = server.address().clone();
    let transport = GrpcTransport::new(GrpcOptions::default());
    transport.send(&to, frame(&me, &to, 0, 9));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats().streams_refused == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the frame of 9 was not refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rx.try_recv().is_err(), "a refused frame was delivered");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_bytes_than_one_frame_holds_are_cut_and_an_oversized_message_dropped() {
    let server = GrpcServer::bind("127.0.0.1:0").await.expect("bind");
    let (tx, mut rx) = mpsc::channel(1024);
    let server = server.serve(Arc::new(ChannelSink(tx)));
    let to = server.address().clone();
    let me = PeerId::new("127.0.0.1:5");
    let transport = GrpcTransport::new(GrpcOptions::default());
    // 40 MiB in 1 MiB entries: at least three frames.
    let chunk = Bytes::from(vec![3u8; 1024 * 1024]);
    let mut messages: Vec<_> = (1..=40u64)
        .map(|i| (i % 3, append(&me, &to, i, chunk.clone())))
        .collect();
    // One message that alone exceeds a frame sits in the middle: only it is dropped.
    messages.insert(
        20,
        (
            9,
            append(&me, &to, 999, Bytes::from(vec![1u8; FRAME_BYTES_MAX])),
        ),
    );
    transport.send(
        &to,
        Frame {
            from: me.clone(),
            to: to.clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 7,
            messages,
        },
    );
    let seqs = receive_messages(&mut rx, 40).await;
    assert!(seqs.iter().copied().eq(1..=40u64), "{seqs:?}");
    let stats = transport.stats();
    assert_eq!(stats.messages_dropped_oversized, 1, "{stats:?}");
    assert!(stats.frames_split >= 2, "{stats:?}");
    assert_eq!(stats.streams_opened, 1, "{stats:?}");
    assert_eq!(server.stats().streams_refused, 0, "{:?}", server.stats());
    server.shutdown().await;
}

/// Three managers over gRPC as `grpc_managers` makes them, with a 3 s election timeout: a
/// debug build moving a 15 MiB entry (encode, checksum, fsync on three replicas) may stall
/// a round for longer than the usual 300 ms, and a lost leadership would answer Unknown.
async fn patient_grpc_managers(
    root: &std::path::Path,
) -> (Vec<PeerId>, Vec<(GrpcServer, flotilla_node::NodeManager)>) {
    grpc_managers_with(root, 3, |options| {
        options.raft.election_timeout_ticks = 300;
        options.raft.heartbeat_interval_ticks = 10;
    })
    .await
}

/// An entry of `bytes` bytes adding `n` to the counter (the counter reads the first 8).
fn big_add(n: u64, bytes: usize) -> Bytes {
    let mut data = vec![0u8; bytes];
    data[..8].copy_from_slice(&add(n));
    Bytes::from(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_largest_admitted_entry_commits_over_grpc_and_a_larger_one_is_refused() {
    let root = temp_root("entry-limit");
    let (peers, processes) = patient_grpc_managers(&root).await;
    let (managers, servers, counters) = serve_counter_group(processes, &peers, 1).await;
    let leader = async {
        loop {
            if let Some(node) = managers
                .iter()
                .filter_map(|m| m.node(1))
                .find(|n| n.is_leader())
            {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let node = tokio::time::timeout(WAIT, leader).await.expect("a leader");

    let refused = node
        .apply(big_add(1, ENTRY_BYTES_MAX + 1), None)
        .await
        .expect_err("an entry over the limit is refused");
    match &refused {
        NodeError::Raft(RaftError::InvalidArgument(why)) => {
            assert!(why.contains(&(ENTRY_BYTES_MAX + 1).to_string()), "{why}");
            assert!(why.contains(&ENTRY_BYTES_MAX.to_string()), "{why}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // The largest admitted entry replicates: every replica applies it, and the group keeps
    // committing after it (a 16 MiB one was dropped on every retry and wedged the group).
    let result = tokio::time::timeout(WAIT, node.apply(big_add(5, ENTRY_BYTES_MAX), None))
        .await
        .expect("the big entry commits in time")
        .expect("the big entry commits");
    assert_eq!(value_of(&result), 5);
    let result = tokio::time::timeout(WAIT, node.apply(add(1), None))
        .await
        .expect("the next entry commits in time")
        .expect("the next entry commits");
    assert_eq!(value_of(&result), 6);
    let deadline = tokio::time::Instant::now() + WAIT;
    for value in &counters {
        while value.load(std::sync::atomic::Ordering::SeqCst) < 6 {
            assert!(tokio::time::Instant::now() < deadline, "a follower lags");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let text = node_metrics(&managers[0]);
    assert!(
        text.contains("flotilla_proposals_refused_total{reason=\"entry_too_large\"}"),
        "{text}"
    );
    for server in servers {
        server.shutdown().await;
    }
    for manager in managers {
        manager.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn node_metrics(manager: &flotilla_node::NodeManager) -> String {
    manager.metrics_text()
}

/// The value of the sample `line_start` (name and labels) in a metrics text.
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_start} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_naming_another_sender_than_its_frame_is_dropped() {
    let mut cluster = Cluster::new("sender-mismatch", 3).await;
    cluster.add_group(1).await;
    let leader = cluster.leader(1).await;
    cluster.apply(1, 1).await.expect("first write");
    let victim = (leader + 1) % 3;
    let outsider = (leader + 2) % 3;
    let leader_id = cluster.peers[leader].clone();
    let victim_id = cluster.peers[victim].clone();
    let status = cluster.node(victim, 1).expect("victim").status();
    // The outsider's process forges an AppendEntries in the leader's name at a higher term:
    // accepted, it would depose the leader and overwrite the log.
    let forged = Message {
        from: leader_id.clone(),
        to: victim_id.clone(),
        term: Term(status.term.0 + 5),
        body: MessageBody::AppendEntries {
            prev_log_index: status.last_index,
            prev_log_term: status.term,
            entries: vec![Entry {
                index: LogIndex(status.last_index.get() + 1),
                term: Term(status.term.0 + 5),
                payload: EntryPayload::Normal(add(1000)),
            }],
            leader_commit: LogIndex(status.last_index.get() + 1),
            echo: Echo::default(),
        },
    };
    let manager = cluster.processes[victim]
        .manager
        .as_ref()
        .expect("victim runs");
    manager
        .inbox()
        .deliver(Frame {
            from: cluster.peers[outsider].clone(),
            to: manager.id().clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 1,
            messages: vec![(1, forged)],
        })
        .expect("inbox has room");
    let deadline = tokio::time::Instant::now() + WAIT;
    let line = "flotilla_transport_messages_dropped_total{reason=\"sender_mismatch\"}";
    while sample(&manager.metrics_text(), line) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&manager.metrics_text(), line), 1.0);
    // A message its sender addressed to another process is dropped and counted too.
    let misaddressed = Message {
        from: cluster.peers[outsider].clone(),
        to: leader_id.clone(),
        term: Term(status.term.0 + 5),
        body: MessageBody::TimeoutNow,
    };
    manager
        .inbox()
        .deliver(Frame {
            from: cluster.peers[outsider].clone(),
            to: manager.id().clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 1,
            messages: vec![(1, misaddressed)],
        })
        .expect("inbox has room");
    let line = "flotilla_transport_messages_dropped_total{reason=\"wrong_recipient\"}";
    while sample(&manager.metrics_text(), line) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = cluster.node(victim, 1).expect("victim").status();
    assert_eq!(after.term, status.term, "the forged term was not adopted");
    assert_eq!(cluster.leader(1).await, leader, "the leader stays");
    assert_eq!(cluster.apply(1, 1).await.expect("still serving"), 2);
    cluster.wait_counter(victim, 1, 2).await;
    cluster.stop_all().await;
}
