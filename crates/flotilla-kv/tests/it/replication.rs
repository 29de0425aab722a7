//! The KV state machine in clusters of three (or four) node managers: every command's
//! output, the same data on every replica, compare-and-put semantics inside one applied
//! batch, refusals that change nothing, a snapshot installed on a newly added peer, and
//! restarts on fjall over the shared log.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use flotilla_kv::engine::RangeSize;
use flotilla_kv::state_machine::completion_error;
use flotilla_kv::{Epoch, KvCommand, KvEngine, KvError, KvOutput, Region, RegionId};

use crate::cluster::{EngineKind, KvCluster, WAIT};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: b(key),
        value: b(value),
    }
}

fn cas(key: &str, expected: Option<&str>, value: &str) -> KvCommand {
    KvCommand::CompareAndPut {
        key: b(key),
        expected: expected.map(b),
        value: b(value),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
    list.iter().map(|(k, v)| (b(k), b(v))).collect()
}

/// Opens `region` empty on process 3 and has its leader `node` add it (retried while the
/// leader is not ready for a membership change).
async fn add_fourth_peer(cluster: &mut KvCluster, region: &Region, node: &flotilla_node::Node) {
    cluster.add_region_on(3, region, Vec::new()).await;
    let new_peer = cluster.peers[3].clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = node.add_peer(new_peer.clone()).await {
        assert!(tokio::time::Instant::now() < deadline, "add_peer: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn whole(id: u64) -> Region {
    Region::whole(RegionId(id), Epoch::new(1, 1))
}

/// Every command kind through the log, with its output, and the same data everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_apply_on_every_replica() {
    let mut cluster = KvCluster::new("commands", 3, EngineKind::Memory).await;
    let region = whole(1);
    cluster.add_region(&region).await;
    let g = region.id.0;
    let run = |command| cluster.propose(g, command);
    assert_eq!(run(put("a", "1")).await, Ok(KvOutput::Done));
    assert_eq!(
        run(KvCommand::GetAndPut {
            key: b("a"),
            value: b("2")
        })
        .await,
        Ok(KvOutput::Previous(Some(b("1"))))
    );
    assert_eq!(
        run(KvCommand::PutIfAbsent {
            key: b("a"),
            value: b("3")
        })
        .await,
        Ok(KvOutput::Previous(Some(b("2"))))
    );
    assert_eq!(
        run(KvCommand::PutIfAbsent {
            key: b("b"),
            value: b("1")
        })
        .await,
        Ok(KvOutput::Previous(None))
    );
    assert_eq!(
        run(KvCommand::BatchPut(pairs(&[
            ("c", "1"),
            ("d", "1"),
            ("e", "1"),
            ("f", "1")
        ])))
        .await,
        Ok(KvOutput::Done)
    );
    assert_eq!(
        run(KvCommand::BatchDelete(vec![b("c"), b("zz")])).await,
        Ok(KvOutput::Done)
    );
    assert_eq!(
        run(KvCommand::DeleteRange {
            start: b("e"),
            end: Bytes::new()
        })
        .await,
        Ok(KvOutput::Done)
    );
    assert_eq!(
        run(KvCommand::Delete { key: b("b") }).await,
        Ok(KvOutput::Done)
    );
    let data = cluster.converged(g).await;
    assert_eq!(data.len(), 3);
    assert_eq!(data[0], pairs(&[("a", "2"), ("d", "1")]));
    // The handle reports the region and how far the engine got.
    let leader = cluster.leader(g).await;
    let handle = cluster.handle(leader, g);
    assert_eq!(handle.region(), region);
    assert!(!handle.failed());
    assert!(handle.applied_index() > flotilla_node::LogIndex(0));
    cluster.stop_all().await;
}

/// Compare-and-put semantics, including commands of one batch that must see each other's
/// writes (within one entry, and across entries applied in one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_put_semantics() {
    let mut cluster = KvCluster::new("cas", 3, EngineKind::Memory).await;
    let region = whole(2);
    cluster.add_region(&region).await;
    let g = region.id.0;
    let run = |command| cluster.propose(g, command);
    assert_eq!(run(cas("k", None, "1")).await, Ok(KvOutput::Swapped(true)));
    assert_eq!(run(cas("k", None, "x")).await, Ok(KvOutput::Swapped(false)));
    assert_eq!(
        run(cas("k", Some("9"), "x")).await,
        Ok(KvOutput::Swapped(false))
    );
    assert_eq!(
        run(cas("k", Some("1"), "2")).await,
        Ok(KvOutput::Swapped(true))
    );
    assert_eq!(
        run(cas("absent", Some("1"), "2")).await,
        Ok(KvOutput::Swapped(false))
    );
    // One entry: each element sees the writes of the elements before it.
    let batch = KvCommand::Batch(vec![
        put("j", "1"),
        cas("j", Some("1"), "2"),
        cas("j", Some("1"), "3"),
        KvCommand::PutIfAbsent {
            key: b("j"),
            value: b("x"),
        },
        KvCommand::GetAndPut {
            key: b("j"),
            value: b("4"),
        },
        KvCommand::DeleteRange {
            start: b("i"),
            end: b("k"),
        },
        cas("j", None, "5"),
        put("z", "after"),
    ]);
    assert_eq!(
        run(batch).await,
        Ok(KvOutput::Batch(vec![
            Ok(KvOutput::Done),
            Ok(KvOutput::Swapped(true)),
            Ok(KvOutput::Swapped(false)),
            Ok(KvOutput::Previous(Some(b("2")))),
            Ok(KvOutput::Previous(Some(b("2")))),
            Ok(KvOutput::Done),
            Ok(KvOutput::Swapped(true)),
            Ok(KvOutput::Done),
        ]))
    );
    let data = cluster.converged(g).await;
    assert_eq!(data[0], pairs(&[("j", "5"), ("k", "2"), ("z", "after")]));
    // Racers: each tries to move "race" from "0" to its own name, all at once; entries
    // applied in one batch see each other through the overlay, so exactly one wins.
    cluster.propose(g, put("race", "0")).await.unwrap();
    let leader = cluster.leader(g).await;
    let node = cluster.node(leader, g).unwrap();
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..16 {
        let node = node.clone();
        racers.spawn(async move {
            let command = cas("race", Some("0"), &format!("r{i}"));
            node.apply(command.encode(), None).await
        });
    }
    let mut winners = 0;
    while let Some(result) = racers.join_next().await {
        let output = result.unwrap().expect("leader stayed");
        if KvOutput::decode(&output).unwrap() == KvOutput::Swapped(true) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    let data = cluster.converged(g).await;
    assert!(data[0]
        .iter()
        .any(|(k, v)| k == "race" && v.starts_with(b"r")));
    cluster.stop_all().await;
}

/// Keys outside the region and undecodable entries are refused, change nothing, and the
/// group goes on; an unbounded delete-range stops at the region's end (the engine holds
/// other regions' keys too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_change_nothing() {
    let mut cluster = KvCluster::new("refused", 3, EngineKind::Memory).await;
    let region = Region::new(RegionId(3), b("b"), b("m"), Epoch::new(1, 1)).unwrap();
    cluster.add_region(&region).await;
    let g = region.id.0;
    for i in 0..3 {
        // Another region's key in the same engine.
        cluster.engine(i).put(b("x-other"), b("keep")).unwrap();
    }
    let refusal = cluster.propose(g, put("z", "1")).await.unwrap_err();
    assert!(refusal.contains("outside region 3"), "{refusal}");
    let refusal = cluster
        .propose(g, KvCommand::BatchPut(pairs(&[("c", "1"), ("a", "1")])))
        .await
        .unwrap_err();
    assert!(refusal.contains("\"a\""), "{refusal}");
    let output = cluster
        .propose(
            g,
            KvCommand::Batch(vec![put("c", "1"), put("q", "1"), put("d", "1")]),
        )
        .await
        .unwrap();
    match output {
        KvOutput::Batch(results) => {
            assert_eq!(results[0], Ok(KvOutput::Done));
            assert!(results[1].as_ref().unwrap_err().contains("outside region"));
            assert_eq!(results[2], Ok(KvOutput::Done));
        }
        other => panic!("{other:?}"),
    }
    let garbage = cluster
        .propose_raw(g, Bytes::from_static(b"\x01\xffnot a command"))
        .await
        .unwrap_err();
    assert!(garbage.contains("does not decode"), "{garbage}");
    let data = cluster.converged(g).await;
    assert_eq!(data[0], pairs(&[("c", "1"), ("d", "1")]));
    cluster
        .propose(
            g,
            KvCommand::DeleteRange {
                start: b("b"),
                end: Bytes::new(),
            },
        )
        .await
        .unwrap();
    let data = cluster.converged(g).await;
    assert!(data[0].is_empty());
    for i in 0..3 {
        assert_eq!(cluster.engine(i).get(b"x-other").unwrap(), Some(b("keep")));
        assert_eq!(cluster.engine(i).get(b"z").unwrap(), None);
    }
    cluster.stop_all().await;
}

/// A peer added after the leader compacted its log gets the region through a snapshot
/// (exported from the leader's engine, verified and imported into its own), then follows
/// the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installed_on_a_new_peer() {
    let mut cluster = KvCluster::new("snapshot", 4, EngineKind::Memory).await;
    let region = Region::new(RegionId(4), b("k"), b("l"), Epoch::new(1, 1)).unwrap();
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    for i in 0..20 {
        cluster
            .propose(g, put(&format!("k{i:02}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let node = cluster.node(leader, g).unwrap();
    let first = node.snapshot().await.unwrap();
    cluster
        .propose(
            g,
            KvCommand::DeleteRange {
                start: b("k05"),
                end: b("k10"),
            },
        )
        .await
        .unwrap();
    cluster.propose(g, put("k99", "late")).await.unwrap();
    let second = node.snapshot().await.unwrap();
    assert!(second > first);
    // The new peer's engine already holds a stale key in the region, and one outside it.
    cluster.engine(3).put(b("k50"), b("stale")).unwrap();
    cluster.engine(3).put(b("z"), b("other region")).unwrap();
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.propose(g, put("k98", "after")).await.unwrap();
    let data = cluster.converged(g).await;
    assert_eq!(data.len(), 4);
    assert_eq!(data[3].len(), 20 - 5 + 2);
    assert!(!data[3].iter().any(|(k, _)| k == "k50"));
    assert_eq!(
        cluster.engine(3).get(b"z").unwrap(),
        Some(b("other region"))
    );
    let stats = cluster.processes[3].manager.as_ref().unwrap().stats();
    assert!(stats.snapshots_installed >= 1, "{stats:?}");
    assert!(cluster.handle(3, g).applied_index() >= second);
    cluster.stop_all().await;
}

/// Moves `key` from "a" (which it must hold) to "b" with two compare-and-puts whose
/// replay over the result would end elsewhere: applied once they leave "b", applied twice
/// "c" (the first one, refused the first time, would then swap "b" to "c").
async fn swap_replay_sensitive(cluster: &KvCluster, g: u64, key: &str) {
    assert_eq!(
        cluster.propose(g, cas(key, Some("b"), "c")).await,
        Ok(KvOutput::Swapped(false))
    );
    assert_eq!(
        cluster.propose(g, cas(key, Some("a"), "b")).await,
        Ok(KvOutput::Swapped(true))
    );
}

/// A node on fjall and the shared log stops and restarts: with its engine (ahead of its
/// snapshot: entries the engine holds are skipped, not applied twice) and with its engine
/// wiped (the snapshot is imported and the log replayed). Both end with the data of the
/// others and keep following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_fjall_recovers_the_same_data() {
    let mut cluster = KvCluster::new("restart", 3, EngineKind::Fjall).await;
    let region = whole(5);
    cluster.add_region(&region).await;
    let g = region.id.0;
    for i in 0..30 {
        cluster
            .propose(g, put(&format!("key{i:02}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    cluster.propose(g, put("swapped", "a")).await.unwrap();
    let restarted = (cluster.leader(g).await + 1) % 3;
    cluster.converged(g).await;
    let snapshot = cluster
        .node(restarted, g)
        .unwrap()
        .snapshot()
        .await
        .unwrap();
    assert!(snapshot > flotilla_node::LogIndex(30));
    cluster
        .propose(g, KvCommand::BatchDelete(vec![b("key00"), b("key01")]))
        .await
        .unwrap();
    swap_replay_sensitive(&cluster, g, "swapped").await;
    let expected = cluster.converged(g).await.remove(0);
    assert!(expected.iter().any(|(k, v)| k == "swapped" && v == "b"));

    // Restart with the engine as it was, after writes it missed: its first batch then
    // holds entries its engine has (skipped) and entries it lacks (applied).
    cluster.stop(restarted).await;
    cluster.propose(g, put("while-down", "1")).await.unwrap();
    cluster.start(restarted).await;
    cluster
        .add_region_on(restarted, &region, cluster.peers.clone())
        .await;
    let data = cluster.converged(g).await;
    assert_eq!(data[restarted].len(), expected.len() + 1);
    cluster.propose(g, put("post-restart", "1")).await.unwrap();
    let expected = cluster.converged(g).await.remove(0);

    // Restart with the engine lost: the snapshot and the log rebuild it.
    cluster.stop(restarted).await;
    let engine_dir = cluster.processes[restarted].engine_dir();
    std::fs::remove_dir_all(&engine_dir).unwrap();
    cluster.start(restarted).await;
    assert!(cluster.engine(restarted).get(b"key05").unwrap().is_none());
    cluster
        .add_region_on(restarted, &region, cluster.peers.clone())
        .await;
    let data = cluster.converged(g).await;
    assert_eq!(data[restarted], expected);
    cluster.propose(g, put("post-wipe", "1")).await.unwrap();
    cluster.converged(g).await;
    cluster.stop_all().await;
}

/// A command an engine cannot take (an empty key, on which fjall panics) that is
/// already in the log — proposed straight to the node, past the store's admission, as an
/// older version let it through — is answered as a refused operation on every replica and
/// the group keeps applying; a replica replaying the log from the start (its engine lost)
/// applies it the same way. Before the fix every replica's round thread panicked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_entry_is_refused_and_the_log_heals() {
    let mut cluster = KvCluster::new("poisoned", 3, EngineKind::Fjall).await;
    let region = whole(6);
    cluster.add_region(&region).await;
    let g = region.id.0;
    cluster.propose(g, put("before", "1")).await.unwrap();
    let poisoned = [
        put("", "x"),
        KvCommand::Delete { key: Bytes::new() },
        cas("", None, "x"),
        KvCommand::PutIfAbsent {
            key: Bytes::new(),
            value: b("x"),
        },
        KvCommand::GetAndPut {
            key: Bytes::new(),
            value: b("x"),
        },
        KvCommand::BatchPut(pairs(&[("ok", "1"), ("", "x")])),
        KvCommand::BatchDelete(vec![b("before"), Bytes::new()]),
    ];
    for command in &poisoned {
        assert_eq!(command.validate(), Err(KvError::KeyEmpty), "{command:?}");
        // `encode` does not validate: this is the entry an older store proposed.
        let refusal = cluster.propose_raw(g, command.encode()).await.unwrap_err();
        assert!(refusal.contains("key is empty"), "{command:?}: {refusal}");
    }
    // In a client batch only the poisoned element is refused.
    let output = cluster
        .propose_raw(
            g,
            KvCommand::Batch(vec![put("b1", "1"), put("", "x"), put("b2", "1")]).encode(),
        )
        .await
        .unwrap();
    match output {
        KvOutput::Batch(results) => {
            assert_eq!(results[0], Ok(KvOutput::Done));
            assert!(results[1].as_ref().unwrap_err().contains("key is empty"));
            assert_eq!(results[2], Ok(KvOutput::Done));
        }
        other => panic!("{other:?}"),
    }
    cluster.propose(g, put("after", "1")).await.unwrap();
    let expected = pairs(&[("after", "1"), ("b1", "1"), ("b2", "1"), ("before", "1")]);
    assert_eq!(cluster.converged(g).await[0], expected);
    for i in 0..3 {
        assert!(!cluster.handle(i, g).failed(), "replica {i} stopped");
    }

    // A replica that lost its engine replays the whole log, poisoned entries included.
    let replayed = (cluster.leader(g).await + 1) % 3;
    cluster.stop(replayed).await;
    std::fs::remove_dir_all(cluster.processes[replayed].engine_dir()).unwrap();
    cluster.start(replayed).await;
    cluster
        .add_region_on(replayed, &region, cluster.peers.clone())
        .await;
    cluster.propose(g, put("post-replay", "1")).await.unwrap();
    let data = cluster.converged(g).await;
    assert_eq!(data[replayed].len(), expected.len() + 1);
    assert!(!cluster.handle(replayed, g).failed());
    cluster.stop_all().await;
}

/// A snapshot of another range at an epoch that is not newer is refused: importing it
/// could overwrite keys another region of the store owns. The peer refuses it before
/// anything changes (the install counts as failed; the leader sends one again later),
/// keeps running, and its engine is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_another_range_is_refused() {
    let mut cluster = KvCluster::new("snapshot-range", 4, EngineKind::Memory).await;
    let region = Region::new(RegionId(6), b("k"), b("l"), Epoch::new(1, 1)).unwrap();
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    for i in 0..5 {
        cluster
            .propose(g, put(&format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let node = cluster.node(leader, g).unwrap();
    node.snapshot().await.unwrap();
    cluster.propose(g, put("k8", "v")).await.unwrap();
    node.snapshot().await.unwrap();
    // The fourth peer believes the region is [k, m) at the same epoch.
    let wider = Region::new(RegionId(6), b("k"), b("m"), Epoch::new(1, 1)).unwrap();
    cluster.engine(3).put(b("k5"), b("mine")).unwrap();
    cluster.add_region_on(3, &wider, Vec::new()).await;
    // The change cannot complete (the new peer never catches up): ask in the background.
    let new_peer = cluster.peers[3].clone();
    let adding = tokio::spawn(async move { node.add_peer(new_peer).await });
    // The peer refuses the snapshot before changing anything (the install counts as
    // failed) and keeps running, waiting for one it may take.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("flotilla_snapshot_install_failures_total")
                && !l.contains('{')
                && l.split_whitespace().nth(1) != Some("0")
        })
    };
    loop {
        let text = cluster.processes[3]
            .manager
            .as_ref()
            .expect("process 3 runs")
            .metrics_text();
        if refused(&text) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peer with another range never refused the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cluster.node(3, g).is_some(),
        "the refusing peer keeps running"
    );
    assert_eq!(
        cluster.engine(3).scan(b"", b"", 100, false).unwrap(),
        pairs(&[("k5", "mine")])
    );
    assert_eq!(
        cluster.handle(3, g).applied_index(),
        flotilla_node::LogIndex(0)
    );
    adding.abort();
    cluster.stop_all().await;
}

/// A memory engine whose writes fail on demand (a disk going bad under one replica).
struct FailingEngine {
    inner: flotilla_kv::MemoryEngine,
    fail_writes: std::sync::atomic::AtomicBool,
}

impl KvEngine for FailingEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        self.inner.scan(start, end, limit, reverse)
    }

    fn write(&self, batch: flotilla_kv::WriteBatch) -> Result<(), KvError> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(KvError::Engine("injected write failure".into()));
        }
        self.inner.write(batch)
    }

    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<RangeSize, KvError> {
        self.inner.approximate_size(start, end)
    }

    fn middle_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Bytes>, KvError> {
        self.inner.middle_key(start, end)
    }

    fn export_range(
        &self,
        start: &[u8],
        end: &[u8],
        out: &mut dyn std::io::Write,
    ) -> Result<u64, KvError> {
        self.inner.export_range(start, end, out)
    }

    fn import_range(
        &self,
        start: &[u8],
        end: &[u8],
        input: &mut dyn std::io::Read,
    ) -> Result<u64, KvError> {
        self.inner.import_range(start, end, input)
    }

    fn flush(&self) -> Result<(), KvError> {
        self.inner.flush()
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        self.inner.meta_get(key)
    }

    fn meta_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, KvError> {
        self.inner.meta_scan(start, end, limit)
    }
}

/// When the leader's engine fails a write, its proposer hears "outcome unknown" (the
/// entry committed and applies on the others), its handle says failed, and its group
/// stops at the next batch; a new leader serves the region with the write applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failure_answers_unknown_and_stops_the_region() {
    let mut cluster = KvCluster::new("engine-failure", 3, EngineKind::Memory).await;
    let failing = Arc::new(FailingEngine {
        inner: flotilla_kv::MemoryEngine::new(),
        fail_writes: std::sync::atomic::AtomicBool::new(false),
    });
    cluster.set_engine(0, failing.clone());
    let region = whole(7);
    cluster.add_region(&region).await;
    let g = region.id.0;
    cluster.propose(g, put("before", "1")).await.unwrap();
    // Make process 0 lead, then break its engine.
    let leader = cluster.leader(g).await;
    if leader != 0 {
        let node = cluster.node(leader, g).unwrap();
        let target = cluster.peers[0].clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Err(e) = node.transfer_leadership(Some(target.clone())).await {
            assert!(tokio::time::Instant::now() < deadline, "transfer: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let node = cluster
        .node(cluster.leader_among(g, &[0]).await, g)
        .unwrap();
    failing
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = node.apply(put("during", "1").encode(), None).await;
    let text = match answer {
        Err(flotilla_node::NodeError::Raft(flotilla_node::RaftError::StateMachine(text))) => text,
        other => panic!("expected the state machine's error, got {other:?}"),
    };
    assert!(
        matches!(completion_error(text.clone()), KvError::Unknown(_)),
        "{text}"
    );
    assert!(text.contains("injected write failure"), "{text}");
    assert!(cluster.handle(0, g).failed());
    // The next batch stops the group on process 0.
    let _ = node.apply(put("after", "1").encode(), None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.node(0, g).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "group kept running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The others elect a leader and hold the committed write.
    let new_leader = cluster.leader_among(g, &[1, 2]).await;
    cluster.propose(g, put("later", "1")).await.unwrap();
    let target = cluster.handle(new_leader, g).applied_index();
    for i in [1, 2] {
        cluster.wait_applied(i, g, target).await;
        assert_eq!(cluster.engine(i).get(b"during").unwrap(), Some(b("1")));
        assert_eq!(cluster.engine(i).get(b"later").unwrap(), Some(b("1")));
    }
    assert_eq!(failing.inner.get(b"during").unwrap(), None);
    drop(failing);
    cluster.stop_all().await;
}

/// Sequences through the log: ranges follow one another and never repeat, a refused step
/// changes nothing, `get` of the name does not see the sequence, a reset starts it over,
/// and a peer added later (caught up by snapshot) hands out what the others would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_hand_out_ranges_once_and_travel_in_snapshots() {
    let mut cluster = KvCluster::new("sequences", 4, EngineKind::Memory).await;
    let region = Region::new(RegionId(5), b("s"), b("t"), Epoch::new(1, 1)).unwrap();
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    let next = |key: &str, step: u64| KvCommand::SequenceNext { key: b(key), step };
    let latest = |key: &str| KvCommand::SequenceLatest { key: b(key) };
    assert_eq!(
        cluster.propose(g, next("seq-a", 10)).await,
        Ok(KvOutput::Range { start: 0, end: 10 })
    );
    assert_eq!(
        cluster.propose(g, next("seq-a", 1)).await,
        Ok(KvOutput::Range { start: 10, end: 11 })
    );
    // In one batch, each element sees the one before.
    assert_eq!(
        cluster
            .propose(
                g,
                KvCommand::Batch(vec![next("seq-b", 3), next("seq-b", 3)])
            )
            .await,
        Ok(KvOutput::Batch(vec![
            Ok(KvOutput::Range { start: 0, end: 3 }),
            Ok(KvOutput::Range { start: 3, end: 6 })
        ]))
    );
    // Refused: a step past the limit, a range past 2^64 - 1; nothing changes.
    assert!(cluster.propose(g, next("seq-a", 0)).await.is_err());
    assert_eq!(
        cluster
            .propose(
                g,
                next("seq-a", flotilla_kv::command::SEQUENCE_STEP_MAX + 1)
            )
            .await
            .map_err(|_| ()),
        Err(())
    );
    assert_eq!(
        cluster.propose(g, latest("seq-a")).await,
        Ok(KvOutput::Counter(11))
    );
    // Outside the region: refused.
    assert!(cluster.propose(g, next("a", 1)).await.is_err());
    // The sequence's name holds no data.
    assert!(cluster.engine(0).get(b"seq-a").unwrap().is_none());
    assert_eq!(
        cluster
            .propose(g, KvCommand::SequenceReset { key: b("seq-b") })
            .await,
        Ok(KvOutput::Done)
    );
    assert_eq!(
        cluster.propose(g, latest("seq-b")).await,
        Ok(KvOutput::Counter(0))
    );
    // A fourth peer, whose engine holds a stale record of seq-a, caught up by snapshot.
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let node = cluster.node(leader, g).unwrap();
    let first = node.snapshot().await.unwrap();
    cluster.propose(g, next("seq-c", 1)).await.unwrap();
    assert!(node.snapshot().await.unwrap() > first);
    cluster
        .engine(3)
        .meta_put(
            flotilla_kv::sequence::record_key(b"seq-a"),
            Bytes::copy_from_slice(&3u64.to_be_bytes()),
        )
        .unwrap();
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.converged(g).await;
    let record = cluster
        .engine(3)
        .meta_get(&flotilla_kv::sequence::record_key(b"seq-a"))
        .unwrap();
    assert_eq!(record, Some(Bytes::copy_from_slice(&11u64.to_be_bytes())));
    let stats = cluster.processes[3].manager.as_ref().unwrap().stats();
    assert!(stats.snapshots_installed >= 1, "{stats:?}");
    // Whoever leads next, the sequence goes on from 11.
    assert_eq!(
        cluster.propose(g, next("seq-a", 5)).await,
        Ok(KvOutput::Range { start: 11, end: 16 })
    );
    cluster.stop_all().await;
}

/// A lock through the log: a holder, a refused second owner, reentry, NotOwner, release,
/// tokens that grow per holder; the leader's stamps continue from the clock it applied;
/// a peer added later (caught up by snapshot) holds the same record, and after a leader
/// change to it the lock is still held with the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_decided_by_its_region_and_travels_in_snapshots() {
    use flotilla_kv::lock::{LockOp, LockRecord, LockState};
    let mut cluster = KvCluster::new("locks", 4, EngineKind::Memory).await;
    let region = Region::new(RegionId(6), b("l"), b("m"), Epoch::new(1, 1)).unwrap();
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    let lock = |op: LockOp, now_ms: u64| KvCommand::Lock {
        name: b("lock-1"),
        op,
        now_ms,
        wall_ms: 0,
    };
    let acquire = |who: &str| LockOp::Acquire {
        owner: b(who),
        lease_ms: 60_000,
    };
    let state = |output: Result<KvOutput, String>| match output {
        Ok(KvOutput::Lock(state)) => state,
        other => panic!("not a lock state: {other:?}"),
    };
    let a = state(cluster.propose(g, lock(acquire("a"), 1_000)).await);
    assert!(a.acquired);
    assert_eq!(a.token, 1);
    let b_try = state(cluster.propose(g, lock(acquire("b"), 2_000)).await);
    assert_eq!(
        b_try,
        LockState {
            acquired: false,
            held: true,
            owner: b("a"),
            token: 1,
            lease_ms: 60_000,
            remaining_ms: 59_000,
            count: 1,
        }
    );
    // A stamp that goes back moves nothing.
    let status = state(cluster.propose(g, lock(LockOp::Status, 0)).await);
    assert_eq!(status.remaining_ms, 59_000);
    let refused = cluster
        .propose(g, lock(LockOp::Renew { owner: b("b") }, 2_000))
        .await
        .unwrap_err();
    assert!(
        refused.starts_with(flotilla_kv::lock::NOT_OWNER_PREFIX),
        "{refused}"
    );
    // Every replica applied the entries and remembers the lock's clock (2,000 ms) for
    // its stamps, which continue from it.
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let target = cluster.handle(leader, g).applied_index();
    for i in 0..3 {
        cluster.wait_applied(i, g, target).await;
        let stamp = cluster.handle(i, g).lock_stamp(b"lock-1");
        assert!(
            (2_000..2_000 + 60_000).contains(&stamp),
            "peer {i}: {stamp}"
        );
    }
    // A fourth peer caught up by snapshot holds the record.
    let node = cluster.node(leader, g).unwrap();
    let first = node.snapshot().await.unwrap();
    cluster
        .propose(g, lock(LockOp::Status, 3_000))
        .await
        .unwrap();
    assert!(node.snapshot().await.unwrap() > first);
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.converged(g).await;
    let record = cluster
        .engine(3)
        .meta_get(&flotilla_kv::lock::record_key(b"lock-1"))
        .unwrap()
        .map(|bytes| LockRecord::decode(&bytes).unwrap())
        .expect("the new peer holds the lock's record");
    assert_eq!(
        (record.token, record.owner.clone(), record.clock_ms),
        (1, b("a"), 3_000)
    );
    // Released by its holder, the next holder gets token 2.
    let released = state(
        cluster
            .propose(g, lock(LockOp::Release { owner: b("a") }, 4_000))
            .await,
    );
    assert!(!released.held);
    let b_now = state(cluster.propose(g, lock(acquire("b"), 5_000)).await);
    assert!(b_now.acquired);
    assert_eq!(b_now.token, 2);
    cluster.stop_all().await;
}

/// A region's fence table at its bound drops the record with the least token and raises
/// its floor to it: the dropped lock's older tokens are still refused (below the floor), a
/// new lock's newer ones are taken, a refused write changes nothing, and a peer caught up
/// by snapshot holds the floor and the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fence_table_drops_its_oldest_record_for_a_floor() {
    use flotilla_kv::fence::{self, FENCES_PER_REGION_MAX};
    let mut cluster = KvCluster::new("fence-floor", 4, EngineKind::Memory).await;
    let region = Region::new(RegionId(8), b("f"), b("g"), Epoch::new(1, 1)).unwrap();
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    let fenced = |lock: &str, token: u64, value: &str| KvCommand::Fenced {
        lock: b(lock),
        token,
        command: Box::new(put("f-key", value)),
    };
    // Fill the table: lock l-i at token 1,000 + i.
    let names: Vec<String> = (0..FENCES_PER_REGION_MAX)
        .map(|i| format!("l-{i:05}"))
        .collect();
    for chunk in names.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|name| {
                let i: u64 = name[2..].parse().unwrap();
                fenced(name, 1_000 + i, "fill")
            })
            .collect();
        cluster.propose(g, KvCommand::Batch(batch)).await.unwrap();
    }
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let records = |c: &KvCluster, i: usize| fence::records(c.engine(i), region.id).unwrap();
    let floor = |c: &KvCluster, i: usize| fence::floor(c.engine(i), region.id).unwrap();
    assert_eq!(records(&cluster, leader).len(), FENCES_PER_REGION_MAX);
    assert_eq!(floor(&cluster, leader), 0);
    // One more lock: l-00000 (the least token) is dropped, the floor is its token.
    cluster
        .propose(g, fenced("new", 900_000, "new"))
        .await
        .unwrap();
    assert_eq!(records(&cluster, leader).len(), FENCES_PER_REGION_MAX);
    assert_eq!(floor(&cluster, leader), 1_000);
    // The dropped lock's older token is refused, naming the floor; nothing changed.
    let refused = cluster
        .propose(g, fenced("l-00000", 999, "late"))
        .await
        .unwrap_err();
    assert!(
        refused.starts_with(fence::FENCED_PREFIX) && refused.contains("floor 1000"),
        "{refused}"
    );
    // A lock the region never saw, with an old token: below the floor too.
    assert!(cluster.propose(g, fenced("other", 5, "x")).await.is_err());
    assert_eq!(floor(&cluster, leader), 1_000);
    // The dropped lock at the floor's token is taken again (it was its record), which
    // drops the next oldest.
    cluster
        .propose(g, fenced("l-00000", 1_000, "again"))
        .await
        .unwrap();
    assert_eq!(floor(&cluster, leader), 1_001);
    assert!(cluster
        .propose(g, fenced("l-00001", 1_000, "late"))
        .await
        .is_err());
    // Records kept are unchanged: l-00002's 1,002 still refuses 1,001.
    assert!(cluster
        .propose(g, fenced("l-00002", 1_001, "late"))
        .await
        .is_err());
    // A fourth peer caught up by snapshot holds the same records and floor.
    let node = cluster.node(leader, g).unwrap();
    node.snapshot().await.unwrap();
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.converged(g).await;
    assert_eq!(floor(&cluster, 3), 1_001);
    assert_eq!(records(&cluster, 3), records(&cluster, leader));
    cluster.stop_all().await;
}

/// A lease decided by its home region's log: grant, attach, a put following it, a plain
/// put detaching the key; a peer caught up by snapshot holds the record and the marks; a
/// lease delete removes only a key that still follows the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_and_its_marks_travel_in_snapshots() {
    use flotilla_kv::lease::{self, LeaseOp, LeaseRecord};
    let mut cluster = KvCluster::new("leases", 4, EngineKind::Memory).await;
    let region = whole(9);
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    let id = 77;
    let op = |op: LeaseOp, now_ms: u64| KvCommand::Lease {
        key: lease::route_key(id),
        op,
        now_ms,
    };
    let leased = |key: &str| KvCommand::Leased {
        lease: id,
        command: Box::new(put(key, "v")),
    };
    cluster
        .propose(g, op(LeaseOp::Grant { ttl_ms: 60_000 }, 1_000))
        .await
        .unwrap();
    for key in ["a", "b"] {
        cluster
            .propose(g, op(LeaseOp::Attach { key: b(key) }, 1_100))
            .await
            .unwrap();
        cluster.propose(g, leased(key)).await.unwrap();
    }
    // A plain put detaches b.
    cluster.propose(g, put("b", "plain")).await.unwrap();
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let node = cluster.node(leader, g).unwrap();
    node.snapshot().await.unwrap();
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.converged(g).await;
    let engine = cluster.engine(3);
    let record = engine
        .meta_get(&lease::record_key(id))
        .unwrap()
        .map(|bytes| LeaseRecord::decode(&bytes).unwrap())
        .expect("the new peer holds the lease");
    assert_eq!((record.ttl_ms, record.keys.len()), (60_000, 2));
    let mark = |key: &[u8]| {
        engine
            .meta_get(&lease::mark_key(key))
            .unwrap()
            .map(|m| lease::decode_mark(&m).unwrap())
    };
    assert_eq!((mark(b"a"), mark(b"b")), (Some(id), None));
    // The lease's delete: a (still following) goes, b (detached) stays.
    for (key, deleted) in [("a", true), ("b", false)] {
        let answer = cluster
            .propose(
                g,
                KvCommand::LeaseDelete {
                    key: b(key),
                    lease: id,
                },
            )
            .await
            .unwrap();
        assert_eq!(answer, KvOutput::Swapped(deleted), "{key}");
    }
    let target = cluster.handle(leader, g).applied_index();
    cluster.wait_applied(3, g, target).await;
    let engine = cluster.engine(3);
    assert_eq!(engine.get(b"a").unwrap(), None);
    assert_eq!(engine.get(b"b").unwrap(), Some(b("plain")));
    assert_eq!(mark(b"a"), None);
    cluster.stop_all().await;
}

/// Watch history through the log: every replica records the same entries (a delete of an
/// absent key is no event, a delete-range lists the keys it removed), a replica caught up
/// by a snapshot records from then on (the snapshot carries the interest) and holds
/// history only after the snapshot, and an end naming an old renewal count changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_is_the_same_on_every_replica_and_its_interest_travels_in_snapshots() {
    use flotilla_kv::watch::{self, WatchItem, WatchOp, WatchRecord};
    let mut cluster = KvCluster::new("watch-history", 4, EngineKind::Memory).await;
    let region = whole(9);
    let voters = cluster.peers[..3].to_vec();
    for i in 0..3 {
        cluster.add_region_on(i, &region, voters.clone()).await;
    }
    let g = region.id.0;
    // Not watched yet: nothing recorded.
    cluster.propose(g, put("early", "0")).await.unwrap();
    let KvOutput::Counter(since) = cluster
        .propose(g, KvCommand::Watch(WatchOp::Interest))
        .await
        .unwrap()
    else {
        panic!("an interest answers where it started");
    };
    cluster.propose(g, put("a", "1")).await.unwrap();
    cluster
        .propose(g, KvCommand::Delete { key: b("absent") })
        .await
        .unwrap();
    cluster.propose(g, put("b", "2")).await.unwrap();
    cluster
        .propose(
            g,
            KvCommand::DeleteRange {
                start: b("a"),
                end: b("c"),
            },
        )
        .await
        .unwrap();
    // A renewal came after the leader's count: the end changes nothing.
    cluster
        .propose(g, KvCommand::Watch(WatchOp::Interest))
        .await
        .unwrap();
    let ended = cluster
        .propose(g, KvCommand::Watch(WatchOp::End { renewals: 0 }))
        .await
        .unwrap();
    assert_eq!(ended, KvOutput::Swapped(false));
    let leader = cluster.leader_among(g, &[0, 1, 2]).await;
    let target = cluster.handle(leader, g).applied_index();
    let history = |cluster: &KvCluster, i: usize| -> Vec<(u64, Vec<WatchItem>)> {
        let (from, to) = watch::history_range(region.id, 0);
        cluster
            .engine(i)
            .meta_scan(&from, &to, 100)
            .unwrap()
            .into_iter()
            .map(|(key, value)| {
                (
                    watch::index_of(region.id, &key).unwrap(),
                    WatchRecord::decode(&value).unwrap().items,
                )
            })
            .collect()
    };
    for i in 0..3 {
        cluster.wait_applied(i, g, target).await;
    }
    let recorded = history(&cluster, 0);
    let items: Vec<&WatchItem> = recorded.iter().flat_map(|(_, items)| items).collect();
    assert_eq!(
        items,
        vec![
            &WatchItem::Put {
                key: b("a"),
                value: b("1")
            },
            &WatchItem::Put {
                key: b("b"),
                value: b("2")
            },
            &WatchItem::Delete { key: b("a") },
            &WatchItem::Delete { key: b("b") },
        ]
    );
    assert!(recorded.iter().all(|(index, _)| *index > since));
    assert_eq!(history(&cluster, 1), recorded);
    assert_eq!(history(&cluster, 2), recorded);
    // A fourth replica from a snapshot (the log compacted past the history): the
    // interest, no history before the snapshot, and what comes after recorded as
    // everywhere.
    let node = cluster.node(leader, g).unwrap();
    let first = node.snapshot().await.unwrap();
    cluster.propose(g, put("between", "x")).await.unwrap();
    assert!(node.snapshot().await.unwrap() > first);
    add_fourth_peer(&mut cluster, &region, &node).await;
    cluster.propose(g, put("c", "3")).await.unwrap();
    cluster.converged(g).await;
    let stats = cluster.processes[3].manager.as_ref().unwrap().stats();
    assert!(stats.snapshots_installed >= 1, "{stats:?}");
    let engine = cluster.engine(3);
    assert_eq!(
        watch::read_interest(engine, region.id)
            .unwrap()
            .map(|i| i.since),
        Some(since)
    );
    let floor = watch::local_floor(engine, region.id).unwrap();
    assert!(floor > recorded.last().unwrap().0, "floor {floor}");
    let late = history(&cluster, 3);
    let everywhere = history(&cluster, 0);
    assert!(late.iter().all(|(index, _)| *index >= floor), "{late:?}");
    assert_eq!(late.last(), everywhere.last());
    assert_eq!(
        late.last().unwrap().1,
        vec![WatchItem::Put {
            key: b("c"),
            value: b("3")
        }]
    );
    cluster.stop_all().await;
}
