//! Hostile input on the raft stream and the membership calls, against real `flotilla server`
//! processes: a term of 2^64 - 1, and a stranger's votes, heartbeat and a forged
//! AppendEntries that claims its entry committed, sent on the raft stream; and
//! `reset-peers` and unsafe membership changes through `flotilla admin`. Each asserts the
//! refusal, that the region keeps its leader and term, and that it still serves.

use std::time::{Duration, Instant};

use flotilla_node::grpc::proto;
use serde_json::Value;
use tonic::codegen::tokio_stream;

use crate::support::{admin, kv, metrics, put_until_ok, sample, three_nodes, wait_for_leaders};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The one region's (leader, term, id) from `admin status`.
fn leader_and_term(endpoints: &str) -> (String, u64, u64) {
    let status = wait_for_leaders(endpoints, 1);
    let region = &status["regions"][0];
    (
        region["leader"].as_str().expect("leader").to_string(),
        region["term"].as_u64().expect("term"),
        region["id"].as_u64().expect("id"),
    )
}

fn vote(from: &str, to: &str, term: u64, transfer: bool) -> proto::Message {
    proto::Message {
        from: from.into(),
        to: to.into(),
        term,
        body: Some(proto::message::Body::RequestVote(proto::RequestVote {
            pre_vote: false,
            last_log_index: 1 << 40,
            last_log_term: term,
            leadership_transfer: transfer,
        })),
    }
}

fn heartbeat(from: &str, to: &str, term: u64) -> proto::Message {
    proto::Message {
        from: from.into(),
        to: to.into(),
        term,
        body: Some(proto::message::Body::Heartbeat(proto::Heartbeat {
            commit: 0,
            echo: Some(proto::Echo::default()),
            hibernate: false,
            transfer_target: String::new(),
        })),
    }
}

/// A leader's AppendEntries from `from` carrying one entry of arbitrary bytes after
/// `prev` (at `prev_term`), which it claims committed.
fn forged_append(from: &str, to: &str, term: u64, prev: u64, prev_term: u64) -> proto::Message {
    proto::Message {
        from: from.into(),
        to: to.into(),
        term,
        body: Some(proto::message::Body::AppendEntries(proto::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: vec![proto::Entry {
                index: prev + 1,
                term,
                payload: Some(proto::entry::Payload::Normal(b"forged".to_vec().into())),
            }],
            leader_commit: prev + 1,
            echo: Some(proto::Echo::default()),
        })),
    }
}

/// Every store's (address, id) and the cluster, from `admin status`.
fn identities(endpoints: &str) -> (Vec<(String, String)>, u64) {
    let status = wait_for_leaders(endpoints, 1);
    let stores = status["stores"].as_array().expect("stores");
    let mut cluster = 0;
    let mut out = Vec::new();
    for store in stores {
        let address = store["address"].as_str().expect("address").to_string();
        let id = store["id"].as_str().expect("id").to_string();
        cluster = u64::from_str_radix(store["cluster"].as_str().expect("cluster"), 16)
            .expect("hex cluster");
        out.push((address, id));
    }
    (out, cluster)
}

/// Sends one frame from `sender` on a raft stream to the store at `to` (store id `to_id`,
/// cluster `cluster`) and waits a moment.
fn send_frame(
    (to, to_id, cluster): (&str, &str, u64),
    sender: &str,
    group: u64,
    messages: Vec<proto::Message>,
) {
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect the raft service");
        let mut client = proto::raft_client::RaftClient::new(channel);
        let frame = proto::Frame {
            from: sender.into(),
            to: to_id.into(),
            cluster,
            from_address: String::new(),
            messages: messages
                .into_iter()
                .map(|message| proto::GroupMessage {
                    group,
                    message: Some(message),
                })
                .collect(),
            incarnation: 1,
        };
        // The server may end the stream (or keep it open); either way the frame was sent.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            client.stream(tokio_stream::iter(vec![frame])),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
}

#[test]
fn a_top_term_or_a_strangers_vote_on_the_raft_stream_changes_nothing() {
    let cluster = three_nodes("raft-stream", 1);
    let e = cluster.endpoints.as_str();
    put_until_ok(e, "before", "1", Duration::from_secs(10));
    let (leader, term, group) = leader_and_term(e);
    let status = wait_for_leaders(e, 1);
    let commit = status["regions"][0]["commit_index"]
        .as_u64()
        .expect("commit index");
    let stores: Vec<&str> = e.split(',').collect();
    let (ids, cluster) = identities(e);
    let id_of = |address: &str| -> String {
        ids.iter()
            .find(|(a, _)| a == address)
            .map(|(_, id)| id.clone())
            .expect("every store's id")
    };
    let stranger = "00000000000000f9";
    for store in &stores {
        let me = id_of(store);
        let member = id_of(stores.iter().find(|s| *s != store).expect("another store"));
        let to = (*store, me.as_str(), cluster);
        // A member's name with the top term (the message that bricked a region for good),
        // and a stranger's votes and heartbeat a few terms ahead, a transfer among them.
        send_frame(
            to,
            &member,
            group,
            vec![vote(&member, &me, u64::MAX, false)],
        );
        send_frame(
            to,
            stranger,
            group,
            vec![
                vote(stranger, &me, term + 3, false),
                vote(stranger, &me, term + 3, true),
                heartbeat(stranger, &me, term + 3),
                forged_append(stranger, &me, term + 3, commit, term),
            ],
        );
        // A frame meant for another store id, or another cluster, is refused whole.
        send_frame(
            (*store, stranger, cluster),
            &member,
            group,
            vec![vote(&member, stranger, term + 3, false)],
        );
        send_frame(
            (*store, me.as_str(), cluster ^ 1),
            &member,
            group,
            vec![vote(&member, &me, term + 3, false)],
        );
    }
    // Writes go on, the leader and term stay as they were.
    put_until_ok(e, "after", "2", Duration::from_secs(10));
    let (code, answer) = kv(e, &["get", "before"]);
    assert_eq!((code, answer["value"].as_str()), (0, Some("1")), "{answer}");
    let (leader_now, term_now, _) = leader_and_term(e);
    assert_eq!(leader_now, leader, "the leader changed");
    assert_eq!(term_now, term, "the term moved");
    // Every store counted what it dropped.
    for store in &stores {
        let text = metrics(store);
        let line = "flotilla_raft_messages_dropped_total{reason=\"non_member\"} ";
        assert!(sample(&text, line) >= 4.0, "{store}: {line}");
        let line = "flotilla_raft_messages_dropped_total{reason=\"out_of_bounds\"} ";
        assert!(sample(&text, line) >= 1.0, "{store}: {line}");
        let line = "flotilla_identity_refused_total{reason=\"wrong_peer\"} ";
        assert!(sample(&text, line) >= 1.0, "{store}: {line}");
        let line = "flotilla_identity_refused_total{reason=\"wrong_cluster\"} ";
        assert!(sample(&text, line) >= 1.0, "{store}: {line}");
    }
}

fn status_peers(endpoints: &str) -> Vec<String> {
    let status = wait_for_leaders(endpoints, 1);
    let mut peers: Vec<String> = status["regions"][0]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p.as_str().expect("peer").to_string())
        .collect();
    peers.sort();
    peers
}

#[test]
fn reset_peers_and_unsafe_changes_are_refused_while_the_region_lives() {
    let mut cluster = three_nodes("membership", 1);
    let e = cluster.endpoints.clone();
    let e = e.as_str();
    put_until_ok(e, "k", "v", Duration::from_secs(10));
    let (leader, term, _) = leader_and_term(e);
    let stores: Vec<String> = e.split(',').map(str::to_string).collect();
    let follower = stores
        .iter()
        .find(|s| **s != leader)
        .expect("follower")
        .clone();
    let before = status_peers(e);

    // Without --force: a usage error, nothing sent.
    let (code, answer) = admin(e, &["reset-peers", "--store", &follower, &follower]);
    assert_eq!(code, 2, "{answer}");
    assert!(
        answer["message"].as_str().unwrap_or("").contains("--force"),
        "{answer}"
    );
    // With --force, on a follower of a live leader: refused by the store.
    let (code, answer) = admin(
        e,
        &["reset-peers", "--store", &follower, &follower, "--force"],
    );
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], Value::from("InvalidArgument"), "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("reset-peers refused"),
        "{answer}"
    );
    assert_eq!(status_peers(e), before);
    let (leader_now, term_now, _) = leader_and_term(e);
    assert_eq!((leader_now.as_str(), term_now), (leader.as_str(), term));

    // One store down: removing a live one would leave one live voter of two.
    let down = stores
        .iter()
        .position(|s| *s != leader && *s != follower)
        .expect("third store");
    cluster.servers[down].kill();
    // A store counts as down once silent for an election timeout (500 ms here).
    std::thread::sleep(Duration::from_millis(1_500));
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (code, answer) = admin(e, &["remove-peer", &follower]);
        let message = answer["message"].as_str().unwrap_or("").to_string();
        if code == 1 && message.contains("live voters") {
            break answer;
        }
        // Only a definite failure that is not the refusal (no leader yet) may be retried.
        assert_eq!(code, 1, "the unsafe removal was not refused: {answer}");
        assert!(
            Instant::now() < deadline,
            "never refused as unsafe: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answer["error"], Value::from("InvalidArgument"), "{answer}");
    assert_eq!(
        status_peers(e),
        before,
        "the refused change changed the voters"
    );
    put_until_ok(e, "still", "serving", Duration::from_secs(10));
}
