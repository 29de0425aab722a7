//! A region peer's life after it starts, on real stores over gRPC: membership changes move
//! the region's `conf_version` (to the index of the configuration's entry, the same on
//! every replica, recorded in `store.meta`), and a peer removed from its region is
//! destroyed on its store — raft group, log and keys — so that the store can take the
//! region again later from a clean slate.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_kv::store::meta::StoreMeta;
use flotilla_kv::store::EngineKind;
use flotilla_kv::{KvCommand, RegionId};

use crate::store::start;
use crate::util::TempDir;

/// Waits until `done` answers `Ok`; its last `Err` says what was seen instead.
async fn until(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match done() {
            Ok(()) => return,
            Err(seen) => assert!(Instant::now() < deadline, "not within 20 s: {what}; {seen}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check(ok: bool, seen: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(seen)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_bump_conf_version_and_removed_peers_are_destroyed() {
    let dir = TempDir::new("peers-gc");
    let stores = start(&dir, 1, EngineKind::Fjall).await;
    let id = RegionId(1);
    let leader_index = stores
        .iter()
        .position(|s| s.store().manager().node(1).is_some_and(|n| n.is_leader()))
        .expect("a leader");
    let leader = stores[leader_index].store().clone();
    let region = leader.regions()[0].region.clone();
    assert_eq!(region.epoch.conf_version, 1, "bootstrap: conf_version 1");
    for i in 0..20 {
        let put = KvCommand::Put {
            key: Bytes::from(format!("k{i:02}")),
            value: Bytes::from(format!("v{i}")),
        };
        leader.write(id, region.epoch, put).await.expect("write");
    }

    // Remove a follower: every remaining replica moves to the same, larger conf_version.
    let gone_index = (leader_index + 1) % 3;
    let gone = stores[gone_index].store().clone();
    let node = leader.manager().node(1).expect("leader node");
    node.remove_peer(gone.id().clone())
        .await
        .expect("remove the follower");
    let conf = |s: &flotilla_kv::store::Store| {
        s.regions()
            .iter()
            .find(|r| r.region.id == id)
            .map(|r| r.region.epoch.conf_version)
    };
    let kept: Vec<_> = (0..3).filter(|i| *i != gone_index).collect();
    // `remove_peer` answers once the leader left the joint configuration (two entries:
    // enter joint, leave joint); the replicas hear the last commit on the next message.
    let recorded = |s: &flotilla_kv::store::Store| {
        StoreMeta::load(s.data_dir()).unwrap().unwrap().regions[0]
            .region
            .epoch
            .conf_version
    };
    until("the remaining replicas agree on a new conf_version", || {
        let versions: Vec<_> = kept.iter().map(|i| conf(stores[*i].store())).collect();
        let on_disk: Vec<_> = kept.iter().map(|i| recorded(stores[*i].store())).collect();
        let status = node.status();
        check(
            status.configuration.old_voters.is_none()
                && versions[0].is_some_and(|v| v > 1 && v == status.last_index.0)
                && versions.iter().all(|v| *v == versions[0])
                && on_disk.iter().all(|v| Some(*v) == versions[0]),
            format!(
                "versions {versions:?}, recorded {on_disk:?}, leader last index {}, joint {}",
                status.last_index,
                status.configuration.old_voters.is_some()
            ),
        )
    })
    .await;
    let after_removal = conf(&leader).expect("hosted");
    // A request routed before the change still works: data requests check `version` only.
    leader
        .get(id, region.epoch, Bytes::from_static(b"k01"), None)
        .await
        .expect("a get with the epoch of before the change");

    // The removed store destroys its peer on the word of whoever saw the region's new
    // configuration (the placement driver's job: a removed peer rarely hears that its
    // removal committed, the leader stops sending to it), checked again on the store.
    let members: Vec<_> = node.list_peers();
    // A stale word (an older configuration) is refused...
    assert!(!gone
        .destroy_stale_peer(id, 1, &members, Instant::now())
        .await
        .expect("stale word"));
    // ...and so is a word naming the store as a member.
    let mut with_gone = members.clone();
    with_gone.push(gone.id().clone());
    assert!(!gone
        .destroy_stale_peer(id, after_removal, &with_gone, Instant::now())
        .await
        .expect("member word"));
    // ...and so is a word about a heartbeat made before the region was asked to open
    // here again (the PD may be adding the store back; its entries may not be here yet).
    let asked_at = Instant::now();
    gone.open_region(region.clone(), leader.cluster())
        .await
        .expect("asked to open again: already open");
    assert!(!gone
        .destroy_stale_peer(id, after_removal, &members, asked_at)
        .await
        .expect("word older than an open"));
    assert!(gone.manager().node(1).is_some(), "refusals destroy nothing");
    assert!(gone
        .destroy_stale_peer(id, after_removal, &members, Instant::now())
        .await
        .expect("destroy"));
    assert!(gone.manager().node(1).is_none(), "its raft group is gone");
    assert!(gone.regions().is_empty(), "it hosts nothing");
    let on_disk = StoreMeta::load(gone.data_dir()).unwrap().unwrap();
    assert!(on_disk.regions.is_empty(), "store.meta: {on_disk:?}");

    // The store takes the region again: an empty peer, filled by the leader, serving the
    // data written before — and nothing of the peer it had.
    gone.open_region(region.clone(), leader.cluster())
        .await
        .expect("open again");
    node.add_peer(gone.id().clone()).await.expect("add it back");
    until("the new peer catches up", || {
        let (new, led) = (conf(&gone), conf(&leader));
        check(
            new.is_some_and(|v| v > after_removal) && new == led,
            format!("new peer {new:?}, leader {led:?}"),
        )
    })
    .await;
    let value = gone
        .get(id, region.epoch, Bytes::from_static(b"k07"), None)
        .await
        .expect("a follower read on the new peer");
    assert_eq!(value, Some(Bytes::from_static(b"v7")));
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}
