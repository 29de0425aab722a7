//! The gRPC transport on loopback: servers bound to ephemeral ports (the real address is
//! the peer id), frames in order, reconnection after a server restart, peers sending
//! garbage refused while others keep working, and a 3-process cluster committing over it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use flotilla_node::grpc::{
    proto, GrpcOptions, GrpcServer, GrpcTransport, ServerHandle, FRAME_BYTES_MAX,
};
use flotilla_node::{Frame, PeerId, Transport};
use flotilla_raft::{Echo, LogIndex, Message, MessageBody, Term};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

use super::cluster::{add, grpc_managers, serve_counter_group, temp_root, value_of, ChannelSink};

const WAIT: Duration = Duration::from_secs(20);

async fn serve_on(address: &str) -> (ServerHandle, mpsc::Receiver<Frame>) {
    let server = GrpcServer::bind(address).await.expect("bind");
    let (tx, rx) = mpsc::channel(100_000);
    (server.serve(Arc::new(ChannelSink(tx))), rx)
}

/// A frame from `from` to `to` whose heartbeat commit carries `seq`.
fn numbered(from: &PeerId, to: &PeerId, seq: u64) -> Frame {
    Frame {
        from: from.clone(),
        to: to.clone(),
        cluster: 0,
        from_address: String::new(),
        incarnation: 0,
        messages: vec![(
            seq % 7,
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
            },
        )],
    }
}

fn seq_of(frame: &Frame) -> u64 {
    match &frame.messages[0].1.body {
        MessageBody::Heartbeat { commit, .. } => commit.get(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn recv(rx: &mut mpsc::Receiver<Frame>) -> Frame {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a frame in time")
        .expect("sink open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_exchange_frames_in_order() {
    const FRAMES: u64 = 500;
    let mut servers = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..3 {
        let (server, rx) = serve_on("127.0.0.1:0").await;
        servers.push(server);
        inboxes.push(rx);
    }
    let addresses: Vec<PeerId> = servers.iter().map(|s| s.address().clone()).collect();
    let transports: Vec<GrpcTransport> = (0..3)
        .map(|_| GrpcTransport::new(GrpcOptions::default()))
        .collect();
    for seq in 0..FRAMES {
        for (i, transport) in transports.iter().enumerate() {
            for (j, to) in addresses.iter().enumerate() {
                if i != j {
                    transport.send(to, numbered(&addresses[i], to, seq));
                }
            }
        }
    }
    for (j, rx) in inboxes.iter_mut().enumerate() {
        let mut next = std::collections::BTreeMap::new();
        for _ in 0..2 * FRAMES {
            let frame = recv(rx).await;
            assert_eq!(frame.messages[0].1.to, addresses[j]);
            let expected = next.entry(frame.from.clone()).or_insert(0u64);
            assert_eq!(
                seq_of(&frame),
                *expected,
                "frames from {} out of order",
                frame.from
            );
            *expected += 1;
        }
        assert_eq!(next.len(), 2);
    }
    for (i, transport) in transports.iter().enumerate() {
        let stats = transport.stats();
        assert_eq!(stats.frames_sent, 2 * FRAMES, "transport {i}: {stats:?}");
        assert_eq!(
            stats.streams_opened, 2,
            "one stream per destination: {stats:?}"
        );
    }
    for server in servers {
        assert_eq!(server.stats().streams_opened, 2);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_after_the_server_restarts() {
    let (server, mut rx) = serve_on("127.0.0.1:0").await;
    let to = server.address().clone();
    let me = PeerId::new("127.0.0.1:1");
    let transport = GrpcTransport::new(GrpcOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..GrpcOptions::default()
    });
    transport.send(&to, numbered(&me, &to, 1));
    assert_eq!(seq_of(&recv(&mut rx).await), 1);

    server.shutdown().await;
    // Sent while the server is down: lost or delivered later, never out of order.
    for seq in 2..5 {
        transport.send(&to, numbered(&me, &to, seq));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (server, mut rx) = serve_on(to.as_str()).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seq = 100;
    let mut last = 0;
    loop {
        transport.send(&to, numbered(&me, &to, seq));
        seq += 1;
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(Some(frame)) => {
                assert!(seq_of(&frame) > last, "out of order after reconnect");
                last = seq_of(&frame);
                if last >= 100 {
                    break;
                }
            }
            Ok(None) => panic!("sink closed"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no frame after restart: {:?}",
                transport.stats()
            ),
        }
    }
    assert!(
        transport.stats().streams_opened >= 2,
        "{:?}",
        transport.stats()
    );
    server.shutdown().await;
}

/// Sends raw bytes as gRPC messages, so a test can send what the real client never would.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Opens a raw `Raft.Stream`, sends `payload` as one message and returns the status the
/// server ends the stream with.
async fn raw_stream_status(address: &PeerId, payload: Bytes) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel(1);
    tx.send(payload).await.expect("queue");
    let call = grpc.streaming(
        tonic::Request::new(ReceiverStream::new(rx)),
        tonic::codegen::http::uri::PathAndQuery::from_static("/flotilla.raft.v1.Raft/Stream"),
        RawCodec,
    );
    // `tx` stays open: the server must end the stream itself.
    let status = match tokio::time::timeout(WAIT, call)
        .await
        .expect("answer in time")
    {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("stream ended in time")
            {
                Err(status) => status,
                Ok(other) => panic!("stream not refused: {other:?}"),
            }
        }
    };
    drop(tx);
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_is_refused_and_other_peers_keep_working() {
    let (server, mut rx) = serve_on("127.0.0.1:0").await;
    let to = server.address().clone();
    let good = PeerId::new("127.0.0.1:2");
    let transport = GrpcTransport::new(GrpcOptions::default());
    transport.send(&to, numbered(&good, &to, 0));
    assert_eq!(seq_of(&recv(&mut rx).await), 0);

    // Not HTTP/2 at all: the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(to.as_str())
        .await
        .expect("tcp");
    tcp.write_all(b"this is not an HTTP/2 preface\r\n\r\n")
        .await
        .expect("write");
    // The server may already have reset the connection: that is the expected outcome.
    let _ = tcp.write_all(&[0xff; 4096]).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "garbage connection left open");

    // Undecodable protobuf: refused (Internal), the stream ended.
    let status = raw_stream_status(&to, Bytes::from_static(&[0xff; 64])).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // Decodable but invalid (no sender): refused, naming the field.
    let invalid = proto::Frame {
        from: String::new(),
        to: "to".to_owned(),
        cluster: 0,
        from_address: String::new(),
        incarnation: 0,
        messages: vec![],
    }
    .encode_to_vec();
    let status = raw_stream_status(&to, Bytes::from(invalid)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("frame.from: empty peer id"),
        "{status:?}"
    );

    // Larger than the limit: refused from its length prefix.
    let mut big = bytes::BytesMut::with_capacity(FRAME_BYTES_MAX + 1);
    big.resize(FRAME_BYTES_MAX + 1, 0);
    let status = raw_stream_status(&to, big.freeze()).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // The well-behaved peer's stream was never disturbed.
    for seq in 1..=50 {
        transport.send(&to, numbered(&good, &to, seq));
    }
    for seq in 1..=50 {
        assert_eq!(seq_of(&recv(&mut rx).await), seq);
    }
    assert_eq!(
        transport.stats().streams_opened,
        1,
        "{:?}",
        transport.stats()
    );
    assert_eq!(server.stats().streams_refused, 3, "{:?}", server.stats());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_frame_is_dropped_by_the_sender() {
    let (server, mut rx) = serve_on("127.0.0.1:0").await;
    let to = server.address().clone();
    let me = PeerId::new("127.0.0.1:3");
    let transport = GrpcTransport::new(GrpcOptions::default());
    let entry = flotilla_raft::Entry {
        index: LogIndex(1),
        term: Term(1),
        payload: flotilla_raft::EntryPayload::Normal(Bytes::from(vec![7u8; FRAME_BYTES_MAX])),
    };
    transport.send(
        &to,
        Frame {
            from: me.clone(),
            to: to.clone(),
            cluster: 0,
            from_address: String::new(),
            incarnation: 0,
            messages: vec![(
                1,
                Message {
                    from: me.clone(),
                    to: to.clone(),
                    term: Term(1),
                    body: MessageBody::AppendEntries {
                        prev_log_index: LogIndex(0),
                        prev_log_term: Term(0),
                        entries: vec![entry],
                        leader_commit: LogIndex(0),
                        echo: Echo::default(),
                    },
                },
            )],
        },
    );
    transport.send(&to, numbered(&me, &to, 9));
    assert_eq!(seq_of(&recv(&mut rx).await), 9);
    let stats = transport.stats();
    assert_eq!(stats.messages_dropped_oversized, 1, "{stats:?}");
    assert_eq!(stats.streams_opened, 1, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_commit_over_grpc() {
    let root = temp_root("grpc");
    let (peers, processes) = grpc_managers(&root, 3).await;
    let (managers, servers, counters) = serve_counter_group(processes, &peers, 1).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut total = 0;
    for n in 1..=5u64 {
        loop {
            let leader = managers
                .iter()
                .filter_map(|m| m.node(1))
                .find(|node| node.is_leader());
            if let Some(node) = leader {
                if let Ok(result) = node.apply(add(n), None).await {
                    total += n;
                    assert_eq!(value_of(&result), total);
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no commit over gRPC"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for value in &counters {
        while value.load(std::sync::atomic::Ordering::SeqCst) < total {
            assert!(tokio::time::Instant::now() < deadline, "a follower lags");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for manager in &managers {
        manager.shutdown().await;
    }
    for server in servers {
        server.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
