//! The store's side of the bad-input suite: an empty key, a hijacking `OpenRegion`, a region opened by
//! mistake, a full disk, a scan of large values and a server open to the network without
//! TLS — each against real `flotilla server` processes, asserting the refusal and that the
//! cluster still serves.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};
use flotilla_kv::limits::VALUE_BYTES_MAX;
use flotilla_kv::service::proto::{self, kv_client::KvClient as GrpcKvClient, RegionInfo};

use crate::support::{
    admin, free_address, free_addresses, kv, metrics, put_until_ok, three_nodes, wait_for_leaders,
    Server, TempDir, BIN,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn connect(runtime: &tokio::runtime::Runtime, endpoints: &str) -> KvClient {
    let endpoints = endpoints.split(',').map(str::to_string).collect();
    runtime
        .block_on(KvClient::connect(endpoints, ClientOptions::default()))
        .expect("connect a client")
}

fn region(id: u64, start: &str, end: &str) -> RegionInfo {
    RegionInfo {
        id,
        start: Bytes::copy_from_slice(start.as_bytes()),
        end: Bytes::copy_from_slice(end.as_bytes()),
        conf_version: 1,
        version: 1,
        ..RegionInfo::default()
    }
}

/// Kills the three servers and starts them again on the same data dirs.
fn restart_all(servers: &mut Vec<Server>, dir: &Path, endpoints: &str, regions: u32) {
    let addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();
    servers.clear();
    for (i, address) in addresses.iter().enumerate() {
        servers.push(Server::start(
            address,
            Some(endpoints),
            &dir.join(format!("s{i}")),
            regions,
        ));
    }
    wait_for_leaders(endpoints, regions as usize);
}

fn get_value(endpoints: &str, key: &str) -> serde_json::Value {
    let (code, answer) = kv(endpoints, &["get", key]);
    assert_eq!(code, 0, "get {key}: {answer}");
    answer["value"].clone()
}

/// `flotilla kv put "" x` used to commit, then panic the round thread of every replica on
/// apply (fjall asserts on an empty key), for good: a restart replayed it. Every write kind
/// with an empty key is now refused (exit 1, KeyEmpty), and the cluster serves on, also
/// after a restart of every store.
#[test]
fn an_empty_key_is_refused_and_the_cluster_keeps_serving() {
    let mut cluster = three_nodes("empty-key", 1);
    let endpoints = cluster.endpoints.clone();
    for op in [
        &["put", "", "x"][..],
        &["delete", ""],
        &["put-if-absent", "", "x"],
        &["cas", "", "a", "b"],
    ] {
        let (code, answer) = kv(&endpoints, op);
        assert_eq!(code, 1, "{op:?}: {answer}");
        assert_eq!(answer["error"], "KeyEmpty", "{op:?}: {answer}");
        assert!(
            answer["message"].as_str().unwrap_or("").contains("empty"),
            "{answer}"
        );
    }
    let runtime = runtime();
    let client = connect(&runtime, &endpoints);
    let refusal = runtime
        .block_on(client.batch_put(vec![
            (Bytes::from_static(b"k"), Bytes::from_static(b"v")),
            (Bytes::new(), Bytes::from_static(b"x")),
        ]))
        .unwrap_err();
    assert_eq!(refusal.kind, "KeyEmpty", "{refusal}");
    assert!(!refusal.indeterminate);
    drop(client);
    drop(runtime);

    put_until_ok(&endpoints, "a", "1", Duration::from_secs(10));
    assert_eq!(get_value(&endpoints, "a"), "1");
    assert_eq!(get_value(&endpoints, "k"), serde_json::Value::Null);
    // Nothing poisoned the log: every store restarts and serves.
    restart_all(&mut cluster.servers, &cluster.dir, &endpoints, 1);
    assert_eq!(get_value(&endpoints, "a"), "1");
    put_until_ok(&endpoints, "b", "2", Duration::from_secs(10));
}

/// One `OpenRegion` with a range over another region's keys used to be accepted and saved
/// in `store.meta`, breaking every get and put on those keys, also after a restart. It is
/// refused as InvalidArgument (RegionRefused) with the reason — as are another cluster's
/// id, cluster 0, a reused id with another range and a malformed range — while the same
/// region again is accepted (idempotent); routing is intact, also after a restart.
#[test]
fn open_region_over_another_regions_keys_is_refused() {
    let mut cluster = three_nodes("open-region", 2);
    let endpoints = cluster.endpoints.clone();
    let store = cluster.servers[0].address.clone();
    let runtime = runtime();
    let client = connect(&runtime, &endpoints);
    let reply = runtime
        .block_on(client.regions_of(&store))
        .expect("regions");
    let cluster_id = reply.cluster;
    assert_ne!(cluster_id, 0);
    let hosted = reply
        .regions
        .iter()
        .find(|r| r.id == 1)
        .expect("region 1")
        .clone();

    let refusal = runtime
        .block_on(client.open_region(&store, region(99, "a", "z")))
        .unwrap_err();
    assert_eq!(refusal.kind, "RegionRefused", "{refusal}");
    assert!(refusal.message.contains("overlaps"), "{refusal}");

    let channel = runtime.block_on(client.channel(&store)).expect("channel");
    let store_id = reply.store_id.clone();
    // Raw calls name the store they are for, as KvClient's do.
    let open_as = |info: RegionInfo, cluster: u64, named: Option<(&str, u64)>| {
        let mut grpc = GrpcKvClient::new(channel.clone());
        let mut request = tonic::Request::new(proto::OpenRegionRequest {
            region: Some(info),
            cluster,
        });
        if let Some((id, named_cluster)) = named {
            let metadata = request.metadata_mut();
            metadata.insert("flotilla-store", id.parse().expect("ascii"));
            metadata.insert(
                "flotilla-cluster",
                format!("{named_cluster:016x}").parse().expect("ascii"),
            );
        }
        runtime.block_on(async move { grpc.open_region(request).await })
    };
    let open = |info: RegionInfo, cluster: u64| {
        open_as(info, cluster, Some((store_id.as_str(), cluster_id)))
    };
    // Unnamed, or named for another store: refused before anything is looked at.
    for named in [None, Some(("00000000000000aa", cluster_id))] {
        let status = open_as(region(98, "\u{ff}", ""), cluster_id, named).unwrap_err();
        assert_eq!(
            format!("{:?}", status.code()),
            "FailedPrecondition",
            "{status:?}"
        );
    }
    for (info, cluster, reason) in [
        (region(99, "a", "z"), cluster_id, "overlaps"),
        (region(98, "\u{ff}", ""), cluster_id ^ 1, "cluster"),
        (region(98, "\u{ff}", ""), 0, "cluster id 0"),
        (region(1, "", "b"), cluster_id, "already hosts"),
        (region(97, "z", "a"), cluster_id, "range"),
    ] {
        let status = open(info.clone(), cluster).unwrap_err();
        assert_eq!(
            format!("{:?}", status.code()),
            "InvalidArgument",
            "{info:?}: {status:?}"
        );
        assert!(
            status.message().contains(reason),
            "{info:?}: {}",
            status.message()
        );
    }
    // The same region again: accepted, nothing changes.
    open(hosted, cluster_id).expect("reopening a hosted region is idempotent");
    drop(client);
    drop(runtime);

    // Keys of both regions (ASCII in region 1, "é" = c3 a9 in region 2) still route.
    put_until_ok(&endpoints, "a", "1", Duration::from_secs(10));
    put_until_ok(&endpoints, "é", "2", Duration::from_secs(10));
    restart_all(&mut cluster.servers, &cluster.dir, &endpoints, 2);
    assert_eq!(get_value(&endpoints, "a"), "1");
    assert_eq!(get_value(&endpoints, "é"), "2");
    for i in 0..3 {
        // store.meta and its change log (region changes are appended there first).
        let dir = cluster.dir.join(format!("s{i}"));
        let meta = std::fs::read_to_string(dir.join("store.meta")).expect("store.meta")
            + &std::fs::read_to_string(dir.join("store.meta.log")).unwrap_or_default();
        assert!(!meta.contains("region 99 "), "{meta}");
        assert!(!meta.contains("region 98 "), "{meta}");
    }
    let (code, status) = admin(&endpoints, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["regions"].as_array().map(Vec::len), Some(2));
}

/// A region opened by mistake on an empty store (there it overlaps nothing the store
/// knows) neither takes the routes of the real region nor stays for good: `admin
/// close-region` removes it, also from `store.meta`; closing a member's peer is refused.
#[test]
fn a_region_opened_by_mistake_can_be_closed() {
    let cluster = three_nodes("close-region", 1);
    let endpoints = cluster.endpoints.clone();
    let extra_address = free_address();
    let extra_dir = cluster.dir.join("extra");
    let mut extra = Server::start(&extra_address, None, &extra_dir, 1);
    let runtime = runtime();
    let client = connect(&runtime, &endpoints);
    let regions_of_extra = |client: &KvClient| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match runtime.block_on(client.regions_of(&extra_address)) {
                Ok(reply) => return reply,
                Err(e) => assert!(Instant::now() < deadline, "extra store: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    regions_of_extra(&client);
    // Over every key, with the cluster's id: the empty store accepts it.
    runtime
        .block_on(client.open_region(&extra_address, region(7, "", "")))
        .expect("an empty store opens a region");
    let with_extra = format!("{endpoints},{extra_address}");
    put_until_ok(&with_extra, "a", "1", Duration::from_secs(10));
    assert_eq!(get_value(&with_extra, "a"), "1");

    let (code, answer) = admin(
        &endpoints,
        &[
            "close-region",
            "--region",
            "1",
            "--store",
            &cluster.servers[0].address,
        ],
    );
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], "RegionRefused", "{answer}");
    let (code, answer) = admin(
        &with_extra,
        &["close-region", "--region", "7", "--store", &extra_address],
    );
    assert_eq!(code, 0, "{answer}");
    let reply = regions_of_extra(&client);
    assert!(reply.regions.is_empty(), "{reply:?}");
    assert_eq!(
        reply.cluster, 0,
        "a store left with no region belongs to none"
    );
    let (code, answer) = admin(
        &with_extra,
        &["close-region", "--region", "7", "--store", &extra_address],
    );
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], "NoSuchRegion", "{answer}");
    // Its raft group is gone too: the same id opens again at once, and closes again.
    runtime
        .block_on(client.open_region(&extra_address, region(7, "", "")))
        .expect("the closed region's id opens again");
    let (code, answer) = admin(
        &with_extra,
        &["close-region", "--region", "7", "--store", &extra_address],
    );
    assert_eq!(code, 0, "{answer}");

    extra.kill();
    let _extra = Server::start(&extra_address, None, &extra_dir, 1);
    let reply = regions_of_extra(&client);
    assert!(reply.regions.is_empty(), "closed for good: {reply:?}");
    assert_eq!(get_value(&endpoints, "a"), "1");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A store whose data dir passes its quota refuses writes that add data (NoSpace, exit 1)
/// while reads and deletes go on, and serves writes again once usage is back below. The
/// data dirs are pushed over a 1 GiB quota by a sparse ballast file, then relieved.
#[test]
fn a_store_over_its_quota_refuses_puts_and_serves_deletes_and_reads() {
    const QUOTA: &str = "1073741824";
    let dir = TempDir::new("quota");
    let addresses = free_addresses(3);
    let endpoints = addresses.join(",");
    let _servers: Vec<Server> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Server::start_with(
                a,
                Some(&endpoints),
                &dir.0.join(format!("s{i}")),
                1,
                &["--quota-bytes", QUOTA],
            )
        })
        .collect();
    wait_for_leaders(&endpoints, 1);
    put_until_ok(&endpoints, "a", "1", Duration::from_secs(10));
    put_until_ok(&endpoints, "b", "1", Duration::from_secs(10));
    assert!(metrics(&addresses[0]).contains(&format!("\nflotilla_store_quota_bytes {QUOTA}\n")));
    assert!(metrics(&addresses[0]).contains("\nflotilla_store_nospace_alarm 0"));

    let ballasts: Vec<_> = (0..3)
        .map(|i| dir.0.join(format!("s{i}/ballast")))
        .collect();
    for ballast in &ballasts {
        let file = std::fs::File::create(ballast).expect("ballast");
        file.set_len(2 * 1024 * 1024 * 1024)
            .expect("sparse ballast");
    }
    wait_for("every store raises the NOSPACE alarm", || {
        addresses
            .iter()
            .all(|a| metrics(a).contains("\nflotilla_store_nospace_alarm 1"))
    });
    let (code, answer) = kv(&endpoints, &["put", "c", "1"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], "NoSpace", "{answer}");
    assert!(
        answer["message"].as_str().unwrap_or("").contains("quota"),
        "{answer}"
    );
    let (code, answer) = kv(&endpoints, &["put-if-absent", "d", "1"]);
    assert_eq!((code, &answer["error"]), (1, &"NoSpace".into()), "{answer}");
    assert_eq!(get_value(&endpoints, "a"), "1");
    let (code, answer) = kv(&endpoints, &["delete", "a"]);
    assert_eq!(code, 0, "deletes go on: {answer}");
    assert_eq!(get_value(&endpoints, "a"), serde_json::Value::Null);
    let (code, answer) = kv(&endpoints, &["scan", "", ""]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(get_value(&endpoints, "c"), serde_json::Value::Null);

    for ballast in &ballasts {
        std::fs::remove_file(ballast).expect("remove ballast");
    }
    put_until_ok(&endpoints, "c", "1", Duration::from_secs(20));
    wait_for("every store clears the NOSPACE alarm", || {
        addresses
            .iter()
            .all(|a| metrics(a).contains("\nflotilla_store_nospace_alarm 0"))
    });
    assert_eq!(get_value(&endpoints, "c"), "1");
}

/// The smallest quota: a store holding anything at all is over it from its start.
#[test]
fn a_tiny_quota_refuses_puts_from_the_start() {
    let dir = TempDir::new("tiny-quota");
    let address = free_address();
    let _server = Server::start_with(&address, Some(&address), &dir.0, 1, &["--quota-bytes", "1"]);
    wait_for_leaders(&address, 1);
    let (code, answer) = kv(&address, &["put", "a", "1"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], "NoSpace", "{answer}");
    let (code, answer) = kv(&address, &["delete", "a"]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(get_value(&address, "a"), serde_json::Value::Null);
}

/// The CLI client's 4 MiB decoding limit made `scan --limit 5` over 1 MiB values fail; its
/// limits are now the server's. A scan over more than one answer's worth (20 MiB here) is
/// answered in pages of at most scan_reply_bytes_max, so it works too. A keys-only scan
/// returns the keys alone.
#[test]
fn a_scan_of_1_mib_values_works() {
    let cluster = three_nodes("big-scan", 1);
    let endpoints = cluster.endpoints.clone();
    let runtime = runtime();
    let client = connect(&runtime, &endpoints);
    let value = Bytes::from(vec![b'x'; VALUE_BYTES_MAX]);
    for i in 0..20 {
        runtime
            .block_on(client.put(format!("big{i:02}"), value.clone()))
            .expect("put 1 MiB");
    }
    for limit in [5, 20] {
        let (code, answer) = kv(
            &endpoints,
            &["scan", "big", "", "--limit", &limit.to_string()],
        );
        assert_eq!(code, 0, "{}", answer["message"]);
        let entries = answer["entries"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), limit);
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry["key"], format!("big{i:02}"));
            assert_eq!(entry["value"].as_str().map(str::len), Some(VALUE_BYTES_MAX));
        }
    }
    let reversed = runtime
        .block_on(client.scan("big", "", 20, true, ReadConsistency::Index))
        .expect("reverse scan");
    let keys: Vec<Bytes> = reversed.into_iter().map(|(k, _)| k).collect();
    let mut expected: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("big{i:02}"))).collect();
    expected.reverse();
    assert_eq!(keys, expected);
    let keys = runtime
        .block_on(client.scan_keys("big", "", 5, false, ReadConsistency::Index))
        .expect("keys-only scan");
    expected.reverse();
    assert_eq!(keys, expected[..5]);
}

/// Starts a server on `address` (no peers) and returns what it printed on stderr by the
/// time its "serving" line is out.
fn stderr_at_start(address: &str, dir: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["server", "--addr", address])
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flotilla server");
    let stdout = child.stdout.take().expect("stdout");
    let serving = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("serving"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "the server never said it was serving");
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    stderr
}

/// Without TLS, a server listening beyond loopback warns at start that whoever reaches the
/// port is trusted; on loopback it does not.
#[test]
fn a_plain_text_server_beyond_loopback_warns() {
    let dir = TempDir::new("warn");
    let port = free_address().rsplit(':').next().expect("port").to_string();
    let stderr = stderr_at_start(&format!("0.0.0.0:{port}"), &dir.0.join("wide"));
    assert!(stderr.contains("WARNING"), "{stderr}");
    assert!(stderr.contains("without TLS"), "{stderr}");
    assert!(stderr.contains("anyone who can reach"), "{stderr}");
    let stderr = stderr_at_start(&free_address(), &dir.0.join("loopback"));
    assert!(!stderr.contains("WARNING"), "{stderr}");
}

/// A batch write within the KV service's 16 MiB message limit but larger than
/// the largest entry a region can replicate was admitted, and its AppendEntries was refused
/// by every follower for ever: nothing after it committed. Now it is refused before it is
/// proposed, with its size and the limit named, and the region keeps serving.
#[test]
fn a_write_larger_than_an_entry_is_refused_and_the_region_keeps_serving() {
    let cluster = three_nodes("huge-write", 1);
    let endpoints = cluster.endpoints.clone();
    put_until_ok(&endpoints, "before", "1", Duration::from_secs(10));
    let runtime = runtime();
    let client = connect(&runtime, &endpoints);
    // 15 values of 1 MiB: about 15.0 MiB of command, within the 16 MiB message limit.
    let value = Bytes::from(vec![b'v'; VALUE_BYTES_MAX]);
    let pairs: Vec<(Bytes, Bytes)> = (0..15)
        .map(|i| (Bytes::from(format!("huge-{i:02}")), value.clone()))
        .collect();
    let refusal = runtime.block_on(client.batch_put(pairs)).unwrap_err();
    assert_eq!(refusal.kind, "CommandTooLarge", "{refusal}");
    assert!(!refusal.indeterminate, "{refusal}");
    assert!(
        refusal.to_string().contains("command_bytes_max"),
        "{refusal}"
    );
    // Nothing of it was written, and the region still commits.
    let found = runtime
        .block_on(client.get("huge-00", ReadConsistency::Index))
        .expect("get");
    assert_eq!(found, None);
    drop(client);
    drop(runtime);
    put_until_ok(&endpoints, "after", "2", Duration::from_secs(10));
    let (code, answer) = kv(&endpoints, &["get", "before"]);
    assert_eq!((code, answer["value"].as_str()), (0, Some("1")), "{answer}");
}
