//! Stores over gRPC in one test process (three `Store`s on loopback ports) driven through
//! `KvClient` and the raw KV service: routing over several regions, batching of concurrent
//! single-key requests, and the distinct refusals (stale epoch, no such region, not leader
//! with a hint, out-of-region keys, limits).

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};
use flotilla_kv::server::StoreServer;
use flotilla_kv::service::proto::{self, kv_client::KvClient as RawClient};
use flotilla_kv::store::{EngineKind, Store, StoreOptions};
use flotilla_node::grpc::ERROR_KIND_KEY;

use crate::util::TempDir;

pub(crate) async fn start(dir: &TempDir, regions: u32, engine: EngineKind) -> Vec<StoreServer> {
    start_with(dir, regions, engine, |_| {}).await
}

/// [`start`], with `tune` applied to each store's options last.
pub(crate) async fn start_with(
    dir: &TempDir,
    regions: u32,
    engine: EngineKind,
    tune: impl Fn(&mut StoreOptions),
) -> Vec<StoreServer> {
    // Reserve three addresses (the peer list must be known before the stores start).
    let addresses: Vec<String> = (0..3)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        })
        .collect();
    let mut stores = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let mut options = StoreOptions::new(address.clone(), dir.path().join(format!("s{i}")));
        options.peers = Some(addresses.clone());
        options.regions = regions;
        options.engine = engine;
        options.tick = Duration::from_millis(20);
        options.election_timeout_ticks = 10;
        tune(&mut options);
        stores.push(StoreServer::start(options).await.expect("open store"));
    }
    // Bootstrap runs in the background: wait until every store adopted the cluster and
    // knows where each region's leader is.
    let deadline = Instant::now() + Duration::from_secs(20);
    let settled = |stores: &[StoreServer]| {
        stores.iter().all(|s| {
            let hosted = s.store().regions();
            hosted.len() >= regions as usize
                && hosted
                    .iter()
                    .all(|r| r.leader.as_deref().is_some_and(|l| !l.is_empty()))
        })
    };
    while !settled(&stores) {
        assert!(
            Instant::now() < deadline,
            "the stores did not settle in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stores
}

async fn client_for(stores: &[StoreServer], regions: usize) -> KvClient {
    let endpoints: Vec<String> = stores
        .iter()
        .map(|s| s.store().advertised_address().to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = KvClient::connect(endpoints.clone(), ClientOptions::default()).await {
            let routes = client.routes();
            if routes.len() == regions && routes.iter().all(|r| r.leader.is_some()) {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "no leaders for every region");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kind(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_batches_and_reads_across_regions() {
    let dir = TempDir::new("store-routes");
    let stores = start(&dir, 4, EngineKind::Memory).await;
    let client = client_for(&stores, 4).await;

    // 200 concurrent puts over every region (first bytes 0..=255), batched per region.
    let mut tasks = Vec::new();
    for i in 0u32..200 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = Bytes::from(vec![
                (i * 37 % 256) as u8,
                b'k',
                (i % 256) as u8,
                (i / 256) as u8,
            ]);
            client
                .put(key, Bytes::from(i.to_string()))
                .await
                .map(|()| i)
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("put");
    }
    // Concurrent single-key puts went out in batches: fewer batches than puts.
    let stats = client.stats();
    assert_eq!(stats.batched_ops, 200, "{stats:?}");
    assert!(stats.batches_sent < 200, "no batching happened: {stats:?}");
    println!("200 concurrent puts: {stats:?}");
    let leader_stats: u64 = stores
        .iter()
        .map(|s| s.store().manager().stats().entries_written)
        .sum();
    // Every key reads back, in every read mode, and concurrently (batched gets).
    let mut reads = Vec::new();
    for i in 0u32..200 {
        let client = client.clone();
        reads.push(tokio::spawn(async move {
            let key = Bytes::from(vec![
                (i * 37 % 256) as u8,
                b'k',
                (i % 256) as u8,
                (i / 256) as u8,
            ]);
            let mode = [
                ReadConsistency::Index,
                ReadConsistency::Lease,
                ReadConsistency::Follower,
            ][i as usize % 3];
            (i, client.get(key, mode).await)
        }));
    }
    for read in reads {
        let (i, value) = read.await.unwrap();
        assert_eq!(value.unwrap(), Some(Bytes::from(i.to_string())), "key {i}");
    }
    // A scan over the whole key space crosses all four regions, in order both ways.
    let all = client
        .scan(
            Bytes::new(),
            Bytes::new(),
            1000,
            false,
            ReadConsistency::Index,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
    let last = client
        .scan(Bytes::new(), Bytes::new(), 5, true, ReadConsistency::Index)
        .await
        .unwrap();
    let expected: Vec<_> = all.iter().rev().take(5).cloned().collect();
    assert_eq!(last, expected);
    // multi-get and delete-range split over regions too.
    let keys: Vec<Bytes> = all.iter().map(|(k, _)| k.clone()).take(50).collect();
    let values = client
        .multi_get(keys.clone(), ReadConsistency::Index)
        .await
        .unwrap();
    assert!(values.iter().all(Option::is_some));
    client
        .delete_range(Bytes::from_static(&[0x40]), Bytes::from_static(&[0xc0]))
        .await
        .unwrap();
    let left = client
        .scan(
            Bytes::new(),
            Bytes::new(),
            1000,
            false,
            ReadConsistency::Index,
        )
        .await
        .unwrap();
    assert!(left.iter().all(|(k, _)| k[0] < 0x40 || k[0] >= 0xc0));
    assert!(left.len() < 200 && !left.is_empty());
    // Conditional writes.
    assert!(!client
        .compare_and_put(&b"cas"[..], Some(Bytes::from_static(b"x")), &b"y"[..])
        .await
        .unwrap());
    assert!(client
        .compare_and_put(&b"cas"[..], None, &b"y"[..])
        .await
        .unwrap());
    assert_eq!(
        client.put_if_absent(&b"cas"[..], &b"z"[..]).await.unwrap(),
        Some(Bytes::from_static(b"y"))
    );
    assert_eq!(
        client.get_and_put(&b"cas"[..], &b"w"[..]).await.unwrap(),
        Some(Bytes::from_static(b"y"))
    );
    assert!(leader_stats > 0);
    for store in &stores {
        store.shutdown(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_distinct_and_change_nothing() {
    let dir = TempDir::new("store-refusals");
    let stores = start(&dir, 2, EngineKind::Fjall).await;
    let client = client_for(&stores, 2).await;
    client.put(&b"a"[..], &b"1"[..]).await.unwrap();
    let route = client
        .routes()
        .into_iter()
        .find(|r| r.region.contains(b"a"))
        .unwrap();
    let leader = route.leader.clone().unwrap();
    let follower = route.peers.iter().find(|p| **p != leader).unwrap().clone();
    let context = |id: u64, version: u64| proto::RegionContext {
        region_id: id,
        conf_version: route.region.epoch.conf_version,
        version,
    };
    let put = |key: &[u8], ctx: proto::RegionContext| proto::WriteRequest {
        context: Some(ctx),
        ops: vec![proto::Op {
            op: Some(proto::op::Op::Put(proto::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::from_static(b"2"),
            })),
            fence: None,
            lease_id: 0,
        }],
    };
    let mut raw = RawClient::new(client.channel(&leader).await.unwrap());
    let id = route.region.id.0;
    let stale = raw.write(put(b"a", context(id, 99))).await.unwrap_err();
    assert_eq!(kind(&stale), "StaleEpoch", "{stale:?}");
    let missing = raw.write(put(b"a", context(999, 1))).await.unwrap_err();
    assert_eq!(kind(&missing), "NoSuchRegion", "{missing:?}");
    let outside = raw
        .write(put(&[0xff, 1], context(id, 1)))
        .await
        .unwrap_err();
    assert_eq!(kind(&outside), "KeyOutOfRegion", "{outside:?}");
    let huge = raw
        .write(put(&vec![b'a'; 9000], context(id, 1)))
        .await
        .unwrap_err();
    assert_eq!(kind(&huge), "KeyTooLarge", "{huge:?}");
    assert!(huge.message().contains("key_bytes_max"), "{huge:?}");
    let mut raw_follower = RawClient::new(client.channel(&follower).await.unwrap());
    let redirected = raw_follower
        .write(put(b"a", context(id, 1)))
        .await
        .unwrap_err();
    assert_eq!(kind(&redirected), "NotLeader", "{redirected:?}");
    let hint = redirected
        .metadata()
        .get("flotilla-leader")
        .and_then(|v| v.to_str().ok());
    assert_eq!(hint, Some(leader.as_str()));
    // None of them changed anything.
    assert_eq!(
        client.get(&b"a"[..], ReadConsistency::Index).await.unwrap(),
        Some(Bytes::from_static(b"1"))
    );
    assert_eq!(
        client
            .get(Bytes::from(vec![0xff, 1]), ReadConsistency::Index)
            .await
            .unwrap(),
        None
    );
    // The client reports a limit before or after sending, never as unknown.
    let error = client
        .put(Bytes::from(vec![b'k'; 9000]), &b"v"[..])
        .await
        .unwrap_err();
    assert_eq!(error.kind, "KeyTooLarge");
    assert!(!error.indeterminate);
    let error = client
        .scan(&b"z"[..], &b"a"[..], 10, false, ReadConsistency::Index)
        .await
        .unwrap_err();
    assert_eq!(error.kind, "InvalidRange");
    for store in &stores {
        store.shutdown(Duration::from_millis(500)).await;
    }
}

/// Opening a store needs no listener: two stores open on one address (nothing is bound),
/// each a fresh store with its own id that answers from its data dir, and each stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opens_without_a_listener() {
    let dir = TempDir::new("store-unserved");
    // An address taken by a listener of this test: a store that tried to bind it would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut stores = Vec::new();
    for i in 0..2 {
        let mut options = StoreOptions::new(address.clone(), dir.path().join(format!("s{i}")));
        options.engine = EngineKind::Memory;
        let store = Store::open(options)
            .await
            .expect("open a store without a listener");
        assert!(store.was_fresh());
        assert_eq!(store.advertised_address(), address);
        assert_eq!(
            store.cluster(),
            0,
            "no --peers, nobody added it: no cluster yet"
        );
        assert!(store.regions().is_empty());
        assert!(dir.path().join(format!("s{i}")).join("store.meta").exists());
        stores.push(store);
    }
    assert_ne!(stores[0].id(), stores[1].id());
    for store in &stores {
        store.hand_off(Duration::from_millis(100)).await;
        store.close().await;
    }
    drop(taken);
}

/// The lock watchdog keeps a short lease alive well past its length; dropped, the lock
/// ends with its lease and another owner takes it with a greater token; a holder whose
/// lease ended cannot renew (the watchdog's view says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_watchdog_keeps_a_lease_alive_until_dropped() {
    use flotilla_kv::client::LockWatchdog;
    use flotilla_kv::lock::LockOp;
    let dir = TempDir::new("watchdog");
    let stores = start(&dir, 1, EngineKind::Memory).await;
    let client = crate::split::client(&stores).await;
    let held = LockWatchdog::acquire(&client, "wd", "a", 300, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free at first");
    assert!(held.held());
    // Three leases later, still held by a, thanks to the renewals.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let status = client.lock("wd", LockOp::Status).await.unwrap();
    assert!(status.held && status.owner.as_ref() == b"a", "{status:?}");
    assert!(held.held());
    let first = held.token();
    let other = client
        .lock_acquire("wd", "b", 300, Duration::ZERO)
        .await
        .unwrap();
    assert!(!other.acquired);
    // Dropped: no more renewals; b gets it once the lease ends.
    drop(held);
    let b = client
        .lock_acquire("wd", "b", 60_000, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(b.acquired, "{b:?}");
    assert!(b.token > first);
    let refused = client
        .lock(
            "wd",
            LockOp::Renew {
                owner: Bytes::from_static(b"a"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind, "NotOwner", "{refused}");
    for store in &stores {
        store.shutdown(Duration::ZERO).await;
    }
}

/// `LeaseKeeper` keeps a lease (and its key) alive past several times to live until
/// dropped; then the lease runs out, the key is hidden at once and the store's reaper
/// deletes it and the lease's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_keeper_keeps_a_lease_alive_until_dropped_then_the_store_reaps_it() {
    use flotilla_kv::client::LeaseKeeper;
    use flotilla_kv::lease::LeaseOp;
    let dir = TempDir::new("lease-keeper");
    let stores = start(&dir, 1, EngineKind::Memory).await;
    let client = crate::split::client(&stores).await;
    let (id, granted) = client.lease_grant(1_000).await.unwrap();
    assert_eq!(granted.ttl_ms, 1_000);
    client.put_with_lease("kept", "v", id).await.unwrap();
    let keeper = LeaseKeeper::start(client.clone(), id, 1_000);
    // Three times to live later, still alive, thanks to the renewals.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(!keeper.lost());
    let alive = client.lease(id, LeaseOp::Status).await.unwrap();
    assert!(
        alive.alive && alive.keys == vec![Bytes::from_static(b"kept")],
        "{alive:?}"
    );
    assert_eq!(
        client.get("kept", ReadConsistency::Index).await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    drop(keeper);
    // Dropped: the lease runs out within its time to live (and the clock margin).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        client.get("kept", ReadConsistency::Index).await.unwrap(),
        None
    );
    // The reaper ends it and deletes the key: the engine no longer holds it, nor the
    // lease's record.
    let store = stores[0].store();
    let region = client
        .routes()
        .into_iter()
        .find(|r| r.region.contains(b"kept"))
        .unwrap()
        .region;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The store's own answer, without the client's check of the lease.
        let stored = store
            .get(region.id, region.epoch, Bytes::from_static(b"kept"), None)
            .await
            .unwrap();
        let marks = store
            .lease_marks(region.id, &[Bytes::from_static(b"kept")])
            .unwrap();
        // An expiry of a lease without a record answers an empty state (ttl 0).
        let record = client.lease(id, LeaseOp::Expire).await.unwrap();
        if stored.is_none() && marks == vec![0] && record.ttl_ms == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = client.lease(id, LeaseOp::KeepAlive).await.unwrap_err();
    assert_eq!(refused.kind, "LeaseNotFound", "{refused}");
    // Through a keep-alive stream: a live lease is kept, an ended one refused, and the
    // stream stays open after the refusal.
    let mut stream = client.lease_keep_alive_stream().await.unwrap();
    let refused = stream.keep_alive(id).await.unwrap_err();
    assert_eq!(refused.kind, "LeaseNotFound", "{refused}");
    let (other, _) = client.lease_grant(5_000).await.unwrap();
    let kept = stream.keep_alive(other).await.unwrap();
    assert_eq!(kept.ttl_ms, 5_000);
    assert!(kept.remaining_ms > 4_000, "{kept:?}");
    for store in &stores {
        store.shutdown(Duration::ZERO).await;
    }
}
