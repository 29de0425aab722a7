//! Watch over three stores (`flotilla_kv::watch`): every change once, in commit order per
//! key, resumable from any event's token across a merge, a split and a stopped leader;
//! history past its retention answered `Compacted` with the oldest position.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use flotilla_kv::client::{KvClient, WatchEvent, WatchEventKind, Watcher};
use flotilla_kv::store::EngineKind;

use crate::merge::{merge, merge_region_2_into_1};
use crate::split::{client, split};
use crate::store::{start, start_with};
use crate::util::TempDir;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// The next `count` events of `watcher` (each within 20 s).
async fn take(watcher: &mut Watcher, count: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .unwrap_or_else(|_| panic!("no event after {events:?}"))
            .expect("the watch runs");
        events.push(next.unwrap_or_else(|e| panic!("watch failed: {e} after {events:?}")));
    }
    events
}

/// No further event comes within a moment.
async fn quiet(watcher: &mut Watcher) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(700), watcher.next()).await {
        panic!("unexpected event: {next:?}");
    }
}

/// Each key's changes, in order: `Some(value)` a put, `None` a delete.
type PerKey = BTreeMap<Bytes, Vec<Option<Bytes>>>;

fn per_key(events: &[WatchEvent]) -> PerKey {
    let mut keys = PerKey::new();
    for event in events {
        let change = match event.kind {
            WatchEventKind::Put => Some(event.value.clone()),
            WatchEventKind::Delete => None,
        };
        keys.entry(event.key.clone()).or_default().push(change);
    }
    keys
}

fn expect(changes: &[(&[u8], Option<&[u8]>)]) -> PerKey {
    let mut keys = PerKey::new();
    for (key, value) in changes {
        keys.entry(b(key)).or_default().push(value.map(b));
    }
    keys
}

async fn put(kv: &KvClient, key: &[u8], value: &[u8]) {
    kv.put(b(key), b(value)).await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_any_token_across_a_merge_a_split_and_a_stopped_leader() {
    let dir = TempDir::new("watch");
    // Two regions from bootstrap, split at byte 0x80.
    let stores = start(&dir, 2, EngineKind::Fjall).await;
    let kv = client(&stores).await;
    let mut live = kv.watch(Bytes::new(), None).await.expect("watch");
    put(&kv, b"a1", b"1").await;
    put(&kv, b"\x90b", b"1").await;
    put(&kv, b"a1", b"2").await;
    kv.delete(b(b"a1")).await.expect("delete");
    // A delete of a key that is not there is no event.
    kv.delete(b(b"a2")).await.expect("delete");
    put(&kv, b"\x90b", b"2").await;
    let first = take(&mut live, 5).await;
    assert_eq!(
        per_key(&first),
        expect(&[
            (b"a1", Some(b"1")),
            (b"a1", Some(b"2")),
            (b"a1", None),
            (b"\x90b", Some(b"1")),
            (b"\x90b", Some(b"2")),
        ])
    );
    quiet(&mut live).await;
    // The token of the first region-2 event: resuming from it later must deliver the
    // second one and everything after.
    let early = first
        .iter()
        .find(|e| e.key.as_ref() == b"\x90b")
        .unwrap()
        .token
        .clone();
    let after_early: Vec<&WatchEvent> = first
        .iter()
        .skip_while(|e| e.token != early)
        .skip(1)
        .collect();

    // A merge of region 2 into region 1: the watch goes on in the target.
    merge_region_2_into_1(&stores).await;
    put(&kv, b"\x90c", b"1").await;
    let merged = take(&mut live, 1).await;
    assert_eq!(per_key(&merged), expect(&[(b"\x90c", Some(b"1"))]));

    // Resumed from before the merge: the source's rest, then the target's.
    let mut resumed = kv.watch(Bytes::new(), Some(&early)).await.expect("resume");
    let mut wanted: Vec<(&[u8], Option<&[u8]>)> = after_early
        .iter()
        .map(|e| {
            (
                e.key.as_ref(),
                (e.kind == WatchEventKind::Put).then_some(e.value.as_ref()),
            )
        })
        .collect();
    wanted.push((b"\x90c", Some(b"1")));
    let again = take(&mut resumed, wanted.len()).await;
    assert_eq!(per_key(&again), expect(&wanted));
    quiet(&mut resumed).await;
    drop(resumed);

    // A split at "m": the keys from it on are the child's; the watch follows both.
    let before_split = merged[0].token.clone();
    split(&stores, 1, "m").await;
    put(&kv, b"n1", b"x").await;
    put(&kv, b"b1", b"y").await;
    let split_events = take(&mut live, 2).await;
    assert_eq!(
        per_key(&split_events),
        expect(&[(b"n1", Some(b"x")), (b"b1", Some(b"y"))])
    );
    // Resumed from before the split: the parent's history hands the child its keys.
    let mut resumed = kv
        .watch(Bytes::new(), Some(&before_split))
        .await
        .expect("resume");
    let again = take(&mut resumed, 2).await;
    assert_eq!(per_key(&again), per_key(&split_events));
    quiet(&mut resumed).await;

    // The leader of every region stops: both watches go on at the new leaders, and
    // nothing is repeated or missed.
    let (stopped, rest) = stores.split_first().unwrap();
    stopped.shutdown(Duration::from_millis(200)).await;
    let kv = client(rest).await;
    put(&kv, b"c1", b"z").await;
    put(&kv, b"\x95d", b"w").await;
    for watcher in [&mut live, &mut resumed] {
        let events = take(watcher, 2).await;
        assert_eq!(
            per_key(&events),
            expect(&[(b"c1", Some(b"z")), (b"\x95d", Some(b"w"))])
        );
        quiet(watcher).await;
    }
    // A prefix watch sees its keys only; a token of another range is refused.
    let mut prefixed = kv.watch(b(b"c"), None).await.expect("watch");
    put(&kv, b"b2", b"no").await;
    put(&kv, b"c2", b"yes").await;
    let events = take(&mut prefixed, 1).await;
    assert_eq!(per_key(&events), expect(&[(b"c2", Some(b"yes"))]));
    let refused = kv.watch(b(b"c"), Some(&early)).await.unwrap_err();
    assert_eq!(refused.kind, "InvalidArgument", "{refused}");
    let garbage = kv.watch(b(b"c"), Some("zz")).await.unwrap_err();
    assert!(
        garbage.message.contains("watch token is not valid"),
        "{garbage}"
    );
    for s in rest {
        s.shutdown(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_its_retention_is_compacted_and_names_the_oldest_position() {
    let dir = TempDir::new("watch-retention");
    let stores = start_with(&dir, 1, EngineKind::Memory, |options| {
        options.watch_retention = Duration::from_millis(1_500);
    })
    .await;
    let kv = client(&stores).await;
    let mut watcher = kv.watch(b(b"k"), None).await.expect("watch");
    put(&kv, b"k1", b"1").await;
    let first = take(&mut watcher, 1).await;
    put(&kv, b"k2", b"2").await;
    take(&mut watcher, 1).await;
    drop(watcher);
    // Past the retention, with the watch gone: the history is trimmed (and recording
    // stops once nobody renews the interest).
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    put(&kv, b"k3", b"3").await;
    let mut late = kv
        .watch(b(b"k"), Some(&first[0].token))
        .await
        .expect("watch");
    let error = tokio::time::timeout(Duration::from_secs(20), late.next())
        .await
        .expect("an answer")
        .expect("the watch runs")
        .unwrap_err();
    assert_eq!(error.kind, "Compacted", "{error}");
    let oldest = error.resume_from.expect("the oldest position");
    // Resuming from it works: later changes come, the lost ones are not invented.
    let mut resumed = kv.watch(b(b"k"), Some(&oldest)).await.expect("watch");
    put(&kv, b"k4", b"4").await;
    let events = take(&mut resumed, 1).await;
    assert_eq!(per_key(&events), expect(&[(b"k4", Some(b"4"))]));
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_and_resumes_from_its_position() {
    let dir = TempDir::new("watch-slow");
    let stores = start(&dir, 1, EngineKind::Memory).await;
    let endpoints: Vec<String> = stores
        .iter()
        .map(|s| s.store().advertised_address().to_string())
        .collect();
    // One entry per put (no client batching): the live broadcast holds entries.
    let options = flotilla_kv::client::ClientOptions {
        batching: false,
        ..flotilla_kv::client::ClientOptions::default()
    };
    let kv = KvClient::connect(endpoints, options).await.expect("client");
    let mut slow = kv.watch(b(b"s/"), None).await.expect("watch");
    // Far more entries than the broadcast holds, and more bytes than the stream's
    // buffers and the connection's flow-control windows do.
    let writes = flotilla_kv::watch::LIVE_ENTRIES_MAX + 3_000;
    let value = Bytes::from(vec![b'v'; 4096]);
    let writers = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let kv = kv.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..writes).step_by(writers) {
                let key = format!("s/{i:05}");
                kv.put(b(key.as_bytes()), value.clone()).await.expect("put");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Reading now: what was buffered, then the cut-off naming where to resume.
    let mut seen = std::collections::BTreeSet::new();
    let cut = loop {
        let next = tokio::time::timeout(Duration::from_secs(20), slow.next())
            .await
            .expect("an answer")
            .expect("the watch runs");
        match next {
            Ok(event) => {
                assert!(seen.insert(event.key.clone()), "{:?} twice", event.key);
            }
            Err(error) => break error,
        }
    };
    assert_eq!(cut.kind, "Compacted", "{cut}");
    assert!(seen.len() < writes, "cut off after {} events", seen.len());
    // Its position is still in the history: resuming delivers the rest, once each.
    let mut resumed = kv
        .watch(b(b"s/"), Some(&cut.resume_from.expect("a position")))
        .await
        .expect("resume");
    while seen.len() < writes {
        let event = tokio::time::timeout(Duration::from_secs(20), resumed.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {writes} seen", seen.len()))
            .expect("the watch runs")
            .expect("an event");
        assert!(seen.insert(event.key.clone()), "{:?} twice", event.key);
    }
    quiet(&mut resumed).await;
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_resumes_after_every_store_restarted() {
    use flotilla_kv::server::StoreServer;
    use flotilla_kv::store::StoreOptions;
    let dir = TempDir::new("watch-restart");
    let stores = start(&dir, 1, EngineKind::Fjall).await;
    let addresses: Vec<String> = stores
        .iter()
        .map(|s| s.store().advertised_address().to_string())
        .collect();
    let kv = client(&stores).await;
    let mut watcher = kv.watch(b(b"r/"), None).await.expect("watch");
    put(&kv, b"r/a", b"1").await;
    let first = take(&mut watcher, 1).await;
    put(&kv, b"r/b", b"2").await;
    take(&mut watcher, 1).await;
    drop(watcher);
    drop(kv);
    for s in stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
    // Every store back on its data: the history is on disk with the data.
    let mut back = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let mut options = StoreOptions::new(address.clone(), dir.path().join(format!("s{i}")));
        options.peers = Some(addresses.clone());
        options.engine = EngineKind::Fjall;
        options.tick = Duration::from_millis(20);
        options.election_timeout_ticks = 10;
        back.push(StoreServer::start(options).await.expect("restart"));
    }
    let kv = client(&back).await;
    let mut resumed = kv
        .watch(b(b"r/"), Some(&first[0].token))
        .await
        .expect("resume");
    put(&kv, b"r/c", b"3").await;
    let events = take(&mut resumed, 2).await;
    assert_eq!(
        per_key(&events),
        expect(&[(b"r/b", Some(b"2")), (b"r/c", Some(b"3"))])
    );
    quiet(&mut resumed).await;
    for s in &back {
        s.shutdown(Duration::from_millis(200)).await;
    }
}

/// A token from before a split of a region that then merged away: the split is a change
/// the handover must not pass over (the child's keys would go unwatched), and the source's
/// rest is replayed with the keys the split left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_before_a_split_and_a_merge_resumes_through_both() {
    let dir = TempDir::new("watch-split-merge");
    // Regions 1 ["", 0x80) and 2 [0x80, "").
    let stores = start(&dir, 2, EngineKind::Fjall).await;
    let kv = client(&stores).await;
    let mut live = kv.watch(Bytes::new(), None).await.expect("watch");
    put(&kv, b"\x85a", b"1").await;
    let first = take(&mut live, 1).await;
    // Region 2 splits (the child takes the keys from U+0090's bytes on); only the child
    // changes; then the rest of region 2 merges into region 1.
    split(&stores, 2, "\u{90}").await;
    put(&kv, "\u{95}x".as_bytes(), b"2").await;
    merge(&stores, 2, 1).await;
    put(&kv, "\u{96}y".as_bytes(), b"3").await;
    put(&kv, b"\x86c", b"4").await;
    let wanted = [
        ("\u{95}x".as_bytes(), Some(&b"2"[..])),
        ("\u{96}y".as_bytes(), Some(&b"3"[..])),
        (&b"\x86c"[..], Some(&b"4"[..])),
    ];
    let later = take(&mut live, 3).await;
    assert_eq!(per_key(&later), expect(&wanted));
    let mut resumed = kv
        .watch(Bytes::new(), Some(&first[0].token))
        .await
        .expect("resume");
    let again = take(&mut resumed, 3).await;
    assert_eq!(per_key(&again), expect(&wanted));
    quiet(&mut resumed).await;
    // Its token covers the key space in disjoint pieces: it resumes too.
    let token = again.last().unwrap().token.clone();
    drop(resumed);
    let mut once_more = kv.watch(Bytes::new(), Some(&token)).await.expect("resume");
    put(&kv, b"\x87d", b"5").await;
    let last = take(&mut once_more, 1).await;
    assert_eq!(per_key(&last), expect(&[(b"\x87d", Some(b"5"))]));
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}

/// An entry larger than one reply carries comes in several; a token from the middle of it
/// resumes with the rest of the same entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_entry_comes_in_several_replies_and_resumes_from_its_middle() {
    let dir = TempDir::new("watch-large");
    let stores = start(&dir, 1, EngineKind::Memory).await;
    let kv = client(&stores).await;
    let mut watcher = kv.watch(b(b"big/"), None).await.expect("watch");
    let value = Bytes::from(vec![b'v'; 700 * 1024]);
    let pairs: Vec<(Bytes, Bytes)> = (0..6)
        .map(|i| (b(format!("big/{i}").as_bytes()), value.clone()))
        .collect();
    kv.batch_put(pairs).await.expect("one batch");
    let events = take(&mut watcher, 6).await;
    let keys: Vec<&[u8]> = events.iter().map(|e| e.key.as_ref()).collect();
    assert_eq!(
        keys,
        vec![
            &b"big/0"[..],
            b"big/1",
            b"big/2",
            b"big/3",
            b"big/4",
            b"big/5"
        ]
    );
    assert!(events.iter().all(|e| e.value.len() == value.len()));
    drop(watcher);
    let mut resumed = kv
        .watch(b(b"big/"), Some(&events[2].token))
        .await
        .expect("resume");
    let rest = take(&mut resumed, 3).await;
    let keys: Vec<&[u8]> = rest.iter().map(|e| e.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"big/3"[..], b"big/4", b"big/5"]);
    quiet(&mut resumed).await;
    for s in &stores {
        s.shutdown(Duration::from_millis(200)).await;
    }
}
