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
use flotilla_kv::{KvCommand, KvError, Region};

use crate::split::{client, hosted, split, until};
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
