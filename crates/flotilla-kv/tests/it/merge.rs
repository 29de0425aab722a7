//! Region merge over three stores in one process, step by step through the store's API
//! (the placement driver's executor calls the same steps), with a restart of every store
//! after each step standing for a crash there: a frozen source stays frozen and refuses
//! writes, a committed merge leaves one region over both ranges with every key, and a
//! fenced target lets a rolled-back source take writes again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_kv::client::ReadConsistency;
use flotilla_kv::server::StoreServer;
use flotilla_kv::store::EngineKind;
use flotilla_kv::{KvCommand, KvError, Region, RegionId};

use crate::split::{client, hosted, log_index, split, until};
use crate::store::start;
use crate::util::TempDir;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs `step` on each store until one (the leader) takes it.
async fn on_leader<T, F, Fut>(stores: &[StoreServer], what: &str, step: F) -> T
where
    F: Fn(flotilla_kv::store::Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, KvError>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for s in stores {
            match step(s.store().clone()).await {
                Ok(value) => return value,
                Err(KvError::NotLeader { .. } | KvError::NoSuchRegion(_)) => {}
                Err(KvError::Node { kind, .. }) if kind == "LeaderNotReady" => {}
                Err(e) => panic!("{what}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "{what}: no leader took it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn restart(dir: &TempDir, stores: Vec<StoreServer>) -> Vec<StoreServer> {
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
    drop(stores);
    start(dir, 1, EngineKind::Fjall).await
}

async fn put_refused_as_merging(stores: &[StoreServer], region: &Region, key: &str) {
    for s in stores {
        let Ok(view) = s.store().merge_view(region.id) else {
            continue;
        };
        let command = KvCommand::Put {
            key: b(key),
            value: b("late"),
        };
        match s.store().write(region.id, view.region.epoch, command).await {
            Err(KvError::Node { kind, .. }) if kind == "RegionMerging" => {}
            other => panic!("a write to the frozen source: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_survives_a_crash_after_each_step_and_a_rollback_thaws_the_source() {
    let dir = TempDir::new("merge-steps");
    let stores = start(&dir, 1, EngineKind::Fjall).await;
    let kv = client(&stores).await;
    let keys = ["a", "g", "m", "q", "t", "z"];
    for k in keys {
        kv.put(b(k), b(&format!("v{k}"))).await.expect("put");
    }
    let (parent, child) = split(&stores, 1, "m").await;
    for s in &stores {
        until("the split applied everywhere", || {
            (hosted(s).len() == 2)
                .then_some(())
                .ok_or(format!("{:?}", hosted(s)))
        })
        .await;
    }
    // 1. Prepare: the child (source) freezes for a merge into the parent (target).
    let target = parent.clone();
    let state = on_leader(&stores, "prepare", |s| {
        let target = target.clone();
        let version = child.epoch.version;
        async move { s.prepare_merge(child.id, target, version).await }
    })
    .await;
    assert_eq!(state.source.epoch.version, child.epoch.version + 1);
    for s in &stores {
        until("every replica frozen", || {
            let view = s.store().merge_view(child.id).map_err(|e| e.to_string())?;
            view.merging.map(|_| ()).ok_or("not frozen".into())
        })
        .await;
    }
    put_refused_as_merging(&stores, &child, "q").await;
    // A crash after the prepare: still frozen, at the prepared version.
    let stores = restart(&dir, stores).await;
    for s in &stores {
        let view = s
            .store()
            .merge_view(child.id)
            .expect("the source is hosted");
        assert_eq!(view.region.epoch, state.source.epoch, "the frozen epoch");
        assert!(view.merging.is_some(), "still frozen after a restart");
    }
    put_refused_as_merging(&stores, &child, "q").await;
    // 2. Commit: the parent takes the child's range; the child is gone everywhere.
    let merged = on_leader(&stores, "commit", |s| {
        let state = state.clone();
        async move { s.commit_merge(parent.id, state).await }
    })
    .await;
    assert_eq!(
        (merged.start.clone(), merged.end.clone()),
        (Bytes::new(), Bytes::new())
    );
    for s in &stores {
        until("one region over everything", || {
            let now = hosted(s);
            (now.len() == 1 && now[0].0 == 1 && now[0].1.is_empty() && now[0].2.is_empty())
                .then_some(())
                .ok_or(format!("{now:?}"))
        })
        .await;
    }
    // A crash after the commit: one region, every key.
    let stores = restart(&dir, stores).await;
    for s in &stores {
        until("one region after a restart", || {
            let now = hosted(s);
            (now.len() == 1 && now[0].2.is_empty() && now[0].4)
                .then_some(())
                .ok_or(format!("{now:?}"))
        })
        .await;
        assert!(matches!(
            s.store().merge_view(child.id),
            Err(KvError::NoSuchRegion(_))
        ));
    }
    let kv = client(&stores).await;
    for k in keys {
        let value = kv.get(b(k), ReadConsistency::Index).await.expect("get");
        assert_eq!(value, Some(b(&format!("v{k}"))), "key {k}");
    }
    let scan = kv
        .scan(
            Bytes::new(),
            Bytes::new(),
            100,
            false,
            ReadConsistency::Index,
        )
        .await
        .expect("scan");
    assert_eq!(scan.len(), keys.len(), "{scan:?}");
    // 3. Roll back: split again, freeze the new child, fence the target, thaw the child.
    let (left, right) = split(&stores, 1, "t").await;
    for s in &stores {
        until("the second split applied everywhere", || {
            (hosted(s).len() == 2)
                .then_some(())
                .ok_or(format!("{:?}", hosted(s)))
        })
        .await;
    }
    let state = on_leader(&stores, "prepare again", |s| {
        let target = left.clone();
        let version = right.epoch.version;
        async move { s.prepare_merge(right.id, target, version).await }
    })
    .await;
    let fenced = on_leader(&stores, "fence", |s| {
        let expected = state.target.epoch;
        async move { s.fence_merge(left.id, expected).await }
    })
    .await;
    assert!(fenced.epoch.version > state.target.epoch.version);
    // A commit expecting the old epoch is refused now, changing nothing.
    let refused = on_leader(&stores, "a late commit", |s| {
        let state = state.clone();
        async move {
            match s.commit_merge(left.id, state).await {
                // Refused when it applies: the target's epoch moved.
                Err(KvError::Refused(why)) if why.contains("stale epoch") => Ok(true),
                Err(e) => Err(e),
                Ok(region) => panic!("a fenced target absorbed the source: {region}"),
            }
        }
    })
    .await;
    assert!(refused);
    let thawed = on_leader(&stores, "rollback", |s| {
        let version = state.source.epoch.version;
        async move { s.rollback_merge(right.id, version).await }
    })
    .await;
    assert_eq!(thawed.epoch.version, state.source.epoch.version + 1);
    let stores = restart(&dir, stores).await;
    let kv = client(&stores).await;
    kv.put(b("u"), b("vu"))
        .await
        .expect("a write to the thawed source");
    for k in keys.iter().chain(&["u"]) {
        let value = kv.get(b(k), ReadConsistency::Index).await.expect("get");
        assert_eq!(value, Some(b(&format!("v{k}"))), "key {k}");
    }
    for s in &stores {
        assert!(s
            .store()
            .merge_view(right.id)
            .expect("hosted")
            .merging
            .is_none());
        s.shutdown(Duration::from_millis(200)).await;
    }
}

/// Merges region 2 of `stores` (two regions from bootstrap) into region 1 through the store
/// API; returns once every store hosts the merged region alone.
pub(crate) async fn merge_region_2_into_1(stores: &[StoreServer]) {
    merge(stores, 2, 1).await;
    for s in stores {
        until("one region over everything", || {
            let now = hosted(s);
            (now.len() == 1 && now[0].1.is_empty() && now[0].2.is_empty())
                .then_some(())
                .ok_or(format!("{now:?}"))
        })
        .await;
    }
}

/// Merges region `source` into its neighbour `target` through the store API; returns once
/// no store hosts the source.
pub(crate) async fn merge(stores: &[StoreServer], source: u64, target: u64) {
    let described = |id: u64| {
        stores[0]
            .store()
            .regions()
            .into_iter()
            .find(|r| r.region.id.0 == id)
            .map(|r| r.region)
            .expect("hosted")
    };
    let (target, source) = (described(target), described(source));
    let state = on_leader(stores, "prepare", |s| {
        let target = target.clone();
        let version = source.epoch.version;
        async move { s.prepare_merge(source.id, target, version).await }
    })
    .await;
    for s in stores {
        until("every replica frozen", || {
            let view = s.store().merge_view(source.id).map_err(|e| e.to_string())?;
            view.merging.map(|_| ()).ok_or("not frozen".into())
        })
        .await;
    }
    on_leader(stores, "commit", |s| {
        let state = state.clone();
        async move { s.commit_merge(target.id, state).await }
    })
    .await;
    for s in stores {
        until("the source dropped", || {
            let now = hosted(s);
            (!now.iter().any(|r| r.0 == source.id.0))
                .then_some(())
                .ok_or(format!("{now:?}"))
        })
        .await;
    }
}

/// A replica added to a region after a merge holds the source's keys: it starts from a
/// snapshot, never by replaying the target's log from its first entry against the merged
/// range (found by flotilla-chaos: such a replay refused the merge entry as stale, and the
/// new replica lacked every key of the source's range while serving it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_after_a_merge_holds_the_sources_keys() {
    let dir = TempDir::new("merge-then-add");
    // Two regions from bootstrap, split at byte 0x80: no snapshot before the merge, so
    // every replica's log starts at entry 1 (as in the chaos run that found this).
    let stores = start(&dir, 2, EngineKind::Fjall).await;
    let kv = client(&stores).await;
    let keys = ["a", "m", "z", "\u{e9}a", "\u{e9}z"];
    for k in keys {
        kv.put(b(k), b(&format!("v{k}"))).await.expect("put");
    }
    merge_region_2_into_1(&stores).await;
    let id = RegionId(1);
    let leads = |s: &StoreServer| s.store().manager().node(1).is_some_and(|n| n.is_leader());
    let at_merge = stores.iter().position(leads).expect("a leader");
    // The merge's leader compacted its log past the merge; the others still hold theirs
    // from entry 1. Lead from one of them, so that entry 1 is there to be replayed.
    let (next, joiner) = ((at_merge + 1) % 3, (at_merge + 2) % 3);
    let next_id = stores[next].store().id().clone();
    let node = stores[at_merge].store().manager().node(1).expect("node");
    node.transfer_leadership(Some(next_id))
        .await
        .expect("transfer");
    until("the new leader leads", || {
        leads(&stores[next]).then_some(()).ok_or("not yet".into())
    })
    .await;
    assert_eq!(
        log_index(&stores[next], 1, "first=").await,
        1,
        "the leader's log must start at entry 1 for this test to mean anything"
    );
    // Take the third store out of the region and destroy its peer (keys included)...
    let leader = stores[next].store().clone();
    let node = leader.manager().node(1).expect("leader node");
    let gone = stores[joiner].store().clone();
    // A leader just elected takes no membership change before it committed an entry of
    // its term (`Busy`): ask until it does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match node.remove_peer(gone.id().clone()).await {
            Ok(()) => break,
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.to_string().contains("has not committed") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("remove: {e:?}"),
        }
    }
    let conf = |s: &flotilla_kv::store::Store| s.regions()[0].region.epoch.conf_version;
    until("the removal applied on the leader", || {
        (node.status().configuration.old_voters.is_none() && !node.list_peers().contains(gone.id()))
            .then_some(())
            .ok_or("joint".into())
    })
    .await;
    let members = node.list_peers();
    assert!(gone
        .destroy_stale_peer(id, conf(&leader), &members, Instant::now())
        .await
        .expect("destroy"));
    // ...then add it back empty: it must come back with every key, the source's included.
    let region = leader.regions()[0].region.clone();
    gone.open_region(region.clone(), leader.cluster())
        .await
        .expect("open again");
    node.add_peer(gone.id().clone()).await.expect("add it back");
    until("the new peer catches up", || {
        (gone.regions().first().map(|r| r.region.epoch.conf_version) == Some(conf(&leader)))
            .then_some(())
            .ok_or("behind".into())
    })
    .await;
    for k in keys {
        let value = gone
            .get(id, region.epoch, b(k), None)
            .await
            .expect("a follower read on the new peer");
        assert_eq!(value, Some(b(&format!("v{k}"))), "key {k} on the new peer");
    }
    assert!(
        log_index(&stores[joiner], 1, "first=").await > 1,
        "the new peer's log starts at entry 1: it replayed the log instead of taking a snapshot"
    );
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}
