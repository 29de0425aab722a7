//! End-to-end tests of the `flotilla` binary: real server processes on loopback, driven
//! with `flotilla kv` and `flotilla admin` as a user or a script would, checking the
//! machine-readable contract (one JSON object, exit status 0 / 1 / 2 / 3), bad input, a
//! `kill -9` of the leader, and replacing a member with a new empty store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod deploy;
mod pd;
mod support;
use support::*;

#[test]
fn json_contract_and_exit_codes() {
    let cluster = three_nodes("contract", 2);
    let e = cluster.endpoints.as_str();

    assert_eq!(
        kv(e, &["put", "k1", "v1"]),
        (0, serde_json::json!({"ok": true}))
    );
    assert_eq!(
        kv(e, &["get", "k1"]),
        (0, serde_json::json!({"ok": true, "value": "v1"}))
    );
    for mode in ["index", "lease", "follower"] {
        let (code, answer) = kv(e, &["get", "k1", "--read", mode]);
        assert_eq!(
            (code, &answer["value"]),
            (0, &Value::from("v1")),
            "{mode}: {answer}"
        );
    }
    assert_eq!(
        kv(e, &["get", "missing"]),
        (0, serde_json::json!({"ok": true, "value": null}))
    );
    assert_eq!(
        kv(e, &["cas", "k1", "wrong", "v2"]).1["swapped"],
        Value::Bool(false)
    );
    assert_eq!(
        kv(e, &["cas", "k1", "v1", "v2"]).1["swapped"],
        Value::Bool(true)
    );
    assert_eq!(kv(e, &["get", "k1"]).1["value"], Value::from("v2"));
    assert_eq!(
        kv(e, &["put-if-absent", "k1", "x"]).1["swapped"],
        Value::Bool(false)
    );
    assert_eq!(
        kv(e, &["put-if-absent", "k2", "x"]).1["swapped"],
        Value::Bool(true)
    );
    for key in ["a", "b", "c"] {
        assert_eq!(kv(e, &["put", key, key]).0, 0);
    }
    // Keys on both sides of the region boundary (0x80) are scanned across regions.
    assert_eq!(kv(e, &["put", "\u{00ff}high", "h"]).0, 0);
    let (code, scan) = kv(e, &["scan", "a", "", "--limit", "10"]);
    assert_eq!(code, 0, "{scan}");
    let keys: Vec<&str> = scan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b", "c", "k1", "k2", "\u{00ff}high"]);
    let (_, scan) = kv(e, &["scan", "a", "k", "--limit", "2", "--reverse"]);
    assert_eq!(
        scan["entries"],
        serde_json::json!([{"key": "c", "value": "c"}, {"key": "b", "value": "b"}])
    );
    assert_eq!(kv(e, &["delete", "a"]).0, 0);
    assert_eq!(kv(e, &["get", "a"]).1["value"], Value::Null);

    sequences_contract(e);
    locks_contract(e);

    // Certain failures: exit 1, ok=false, indeterminate=false, nothing changed.
    let (code, answer) = kv(e, &["scan", "z", "a"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("InvalidRange")),
        "{answer}"
    );
    assert_eq!(answer["indeterminate"], Value::Bool(false));
    let big_key = "k".repeat(9000);
    let (code, answer) = kv(e, &["put", &big_key, "v"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("KeyTooLarge")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("key_bytes_max"),
        "{answer}"
    );
    let dead = free_address();
    let (code, answer) = kv(&dead, &["get", "k1"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["ok"], Value::Bool(false));

    // Usage errors: exit 2, still one JSON object with --json.
    let (code, answer) = json(&["kv", "--endpoints", e, "--json", "get", "k1", "--bogus"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (2, Some("Usage")),
        "{answer}"
    );
    let (code, answer) = json(&["kv", "--json", "get", "k1"]);
    assert_eq!(code, 2, "missing endpoints: {answer}");

    // admin status --json: one object per region with the documented fields.
    let status = wait_for_leaders(e, 2);
    let regions = status["regions"].as_array().unwrap();
    for region in regions {
        for field in [
            "id",
            "start",
            "end",
            "epoch",
            "leader",
            "term",
            "peers",
            "learners",
            "commit_index",
            "applied_index",
        ] {
            assert!(
                region.get(field).is_some(),
                "region lacks {field}: {region}"
            );
        }
        assert_eq!(region["peers"].as_array().unwrap().len(), 3);
    }
    assert_eq!(regions[0]["start"], Value::from(""));
    assert_eq!(regions[1]["end"], Value::from(""));

    // Metrics over plain HTTP on the same address.
    metrics_endpoint_answers_per_store_and_per_group(&cluster.servers[0].address, regions);
}

/// `kv seq`: ranges one after another, a key space of their own, reset, a bad step.
fn sequences_contract(e: &str) {
    assert_eq!(
        kv(e, &["seq", "next", "ids", "--step", "10"]),
        (0, serde_json::json!({"ok": true, "start": 0, "end": 10}))
    );
    assert_eq!(
        kv(e, &["seq", "next", "ids"]),
        (0, serde_json::json!({"ok": true, "start": 10, "end": 11}))
    );
    assert_eq!(
        kv(e, &["seq", "latest", "ids"]),
        (0, serde_json::json!({"ok": true, "value": 11}))
    );
    assert_eq!(kv(e, &["get", "ids"]).1["value"], Value::Null);
    assert_eq!(
        kv(e, &["seq", "reset", "ids"]),
        (0, serde_json::json!({"ok": true}))
    );
    assert_eq!(kv(e, &["seq", "latest", "ids"]).1["value"], Value::from(0));
    let (code, answer) = kv(e, &["seq", "next", "ids", "--step", "0"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (2, Some("Usage")),
        "{answer}"
    );
}

/// `lock`: a holder, a refused second owner, reentry with the same token, NotOwner,
/// release, and the next holder's greater token.
fn locks_contract(e: &str) {
    let lock = |op: &[&str]| {
        let mut args = vec!["lock", "--endpoints", e, "--json", "--timeout-ms", "3000"];
        args.extend_from_slice(op);
        json(&args)
    };
    let acquire = |owner: &str| lock(&["acquire", "job", "--owner", owner, "--lease-ms", "60000"]);
    // A fresh lock's first token is the leader's wall time in ms (this machine's clock).
    let wall_before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (code, first) = acquire("a");
    let token = first["token"].as_u64().expect("a token");
    assert!(
        (wall_before.saturating_sub(1_000)..wall_before + 60_000).contains(&token),
        "{first}"
    );
    assert_eq!(
        (code, first),
        (
            0,
            serde_json::json!({"ok": true, "acquired": true, "token": token, "lease_ms": 60000})
        )
    );
    assert_eq!(
        acquire("b"),
        (
            0,
            serde_json::json!({"ok": true, "acquired": false, "token": null, "holder": "a"})
        )
    );
    assert_eq!(acquire("a").1["token"], Value::from(token));
    let (code, answer) = lock(&["release", "job", "--owner", "b"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("NotOwner")),
        "{answer}"
    );
    let (code, status) = lock(&["status", "job"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(
        (&status["held"], &status["owner"], &status["token"]),
        (&Value::Bool(true), &Value::from("a"), &Value::from(token))
    );
    assert!(
        status["expires_in_ms"].as_u64().unwrap() <= 60_000,
        "{status}"
    );
    assert_eq!(
        lock(&["renew", "job", "--owner", "a"]),
        (0, serde_json::json!({"ok": true}))
    );
    // Acquired twice: two releases free it.
    for _ in 0..2 {
        assert_eq!(
            lock(&["release", "job", "--owner", "a"]),
            (0, serde_json::json!({"ok": true}))
        );
    }
    assert_eq!(lock(&["status", "job"]).1["held"], Value::Bool(false));
    let next = acquire("b").1["token"].as_u64().expect("a token");
    assert!(next > token, "{next} after {token}");
    let (code, answer) = lock(&["acquire", "job", "--owner", "c", "--lease-ms", "0"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (2, Some("Usage")),
        "{answer}"
    );
}

/// `GET /metrics` of a store running two regions (`regions`, as `admin regions` lists
/// them): per store by default, one region or all in detail on request, and a bad query
/// refused saying why.
fn metrics_endpoint_answers_per_store_and_per_group(address: &str, regions: &[Value]) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");
    assert!(
        response.contains("flotilla_store_regions 2"),
        "{response:.2000}"
    );
    // Per store by default: the groups counted by role, none labelled by group.
    let roles: f64 = [
        "leader",
        "follower",
        "learner",
        "candidate",
        "pre_candidate",
    ]
    .iter()
    .map(|role| crate::support::sample(&response, &format!("flotilla_groups{{role=\"{role}\"}} ")))
    .sum();
    // Two regions and the meta group (the placement driver's raft group).
    assert_eq!(roles, 3.0, "{response:.2000}");
    assert!(!response.contains("{group=\""), "{response:.2000}");
    // One region in detail on request (the group label is the region id in decimal).
    let id = &regions[0]["id"];
    let id = id
        .as_u64()
        .or_else(|| u64::from_str_radix(id.as_str()?, 16).ok())
        .unwrap_or_else(|| panic!("region id {id}"));
    let detail = crate::support::http_get(address, &format!("/metrics?group={id}"));
    assert!(detail.starts_with("HTTP/1.1 200"), "{detail:.200}");
    let term = format!("flotilla_term{{group=\"{id}\"}} ");
    assert!(
        crate::support::sample(&detail, &term) >= 1.0,
        "{detail:.2000}"
    );
    let all = crate::support::http_get(address, "/metrics?groups=all");
    assert_eq!(
        all.matches("flotilla_is_leader{group=").count(),
        3,
        "{all:.2000}"
    );
    // A malformed query is refused saying why; a group the store does not run is not found.
    let bad = crate::support::http_get(address, "/metrics?group=x");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:.200}");
    assert!(bad.contains("not a decimal group id"), "{bad}");
    let unknown = crate::support::http_get(address, "/metrics?group=12345678");
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown:.200}");
}

/// One process per data directory: a second server on a running store's data dir (on
/// another address) is refused before it reads or writes anything, naming the holder; a
/// failed start leaves no directory it created behind.
#[test]
fn a_data_dir_in_use_is_refused_naming_its_holder() {
    let dir = TempDir::new("lock");
    let data = dir.0.join("store");
    let first_address = free_address();
    let mut first = Server::start(&first_address, Some(&first_address), &data, 1);
    wait_for_leaders(&first_address, 1);
    let meta_before = std::fs::read(data.join("store.meta")).expect("store.meta");
    let second_address = free_address();
    let output = run(&[
        "server",
        "--addr",
        &second_address,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(stderr.contains(&first_address), "{stderr}");
    assert_eq!(std::fs::read(data.join("store.meta")).unwrap(), meta_before);
    put_until_ok(&first_address, "still", "mine", Duration::from_secs(10));
    first.kill();
    // A start that fails (a peer list without its own address) leaves no directory.
    let fresh = dir.0.join("never");
    let output = run(&[
        "server",
        "--addr",
        &second_address,
        "--peers",
        &first_address,
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(!fresh.exists(), "the failed start left {}", fresh.display());
}

#[test]
fn server_refuses_bad_starts() {
    let dir = TempDir::new("refuse");
    let address = free_address();
    // Address in use.
    let listener = TcpListener::bind(&address).unwrap();
    let output = run(&[
        "server",
        "--addr",
        &address,
        "--data-dir",
        dir.0.join("a").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&address),
        "{stderr}"
    );
    drop(listener);
    // A non-empty directory that is not a Flotilla data dir.
    let foreign = dir.0.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let output = run(&[
        "server",
        "--addr",
        &address,
        "--data-dir",
        foreign.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a Flotilla data dir"));
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
    // --peers without this address; unknown flag.
    let output = run(&[
        "server",
        "--addr",
        &address,
        "--data-dir",
        "/nonexistent/x",
        "--peers",
        "127.0.0.1:1",
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        run(&["server", "--addr", &address, "--frobnicate"])
            .status
            .code(),
        Some(2)
    );
    // A data dir from before store identity (format 1, a store named by its address) is
    // refused with what to do, and left as it was.
    let old = dir.0.join("old");
    std::fs::create_dir_all(&old).unwrap();
    let body = format!("flotilla-store 1\naddress {address}\ncluster 000000000000002a\n");
    let text = format!("{body}crc32c {:08x}\n", crc32c(body.as_bytes()));
    std::fs::write(old.join("store.meta"), &text).unwrap();
    let output = run(&[
        "server",
        "--addr",
        &address,
        "--data-dir",
        old.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("format 1") && stderr.contains("Runbook: a store lost its disk"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(old.join("store.meta")).unwrap(),
        text
    );
}

/// CRC-32C (Castagnoli), bitwise: enough for a test to write a checksummed file.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn leader_kill_then_member_replacement_keeps_every_acknowledged_write() {
    let mut cluster = three_nodes("failover", 1);
    let e = cluster.endpoints.clone();
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("key{i:03}");
        put_until_ok(&e, &key, &format!("v{i}"), Duration::from_secs(10));
        acked.push(key);
    }
    // kill -9 the leader: writes resume within two election timeouts (plus the time a
    // fresh `flotilla kv` process takes to start and find the new leader).
    let status = wait_for_leaders(&e, 1);
    let leader = status["regions"][0]["leader"].as_str().unwrap().to_string();
    cluster.kill_at(&leader);
    let resumed = put_until_ok(&e, "after-kill", "yes", Duration::from_secs(20));
    println!(
        "writes resumed {} ms after the leader was killed",
        resumed.as_millis()
    );
    acked.push("after-kill".into());
    let status = wait_for_leaders(&e, 1);
    assert_ne!(
        status["regions"][0]["leader"].as_str(),
        Some(leader.as_str())
    );

    // Add an empty fourth store, then remove the dead one: three members again.
    let fourth = free_address();
    let _fourth = Server::start(&fourth, None, &cluster.dir.join("s3"), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&fourth).is_err() {
        assert!(Instant::now() < deadline, "the fourth store never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, answer) = admin(&e, &["add-peer", &fourth]);
    assert_eq!(code, 0, "add-peer: {answer}");
    let (code, answer) = admin(&e, &["remove-peer", &leader]);
    assert_eq!(code, 0, "remove-peer: {answer}");
    let survivors: Vec<String> = cluster
        .servers
        .iter()
        .filter(|s| s.address != leader)
        .map(|s| s.address.clone())
        .chain([fourth.clone()])
        .collect();
    let survivors = survivors.join(",");
    let status = wait_for_leaders(&survivors, 1);
    let mut peers: Vec<String> = status["regions"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    peers.sort();
    let mut expected: Vec<String> = survivors.split(',').map(str::to_string).collect();
    expected.sort();
    assert_eq!(peers, expected);
    // Every acknowledged write is readable, also from the new store alone.
    for key in &acked {
        let (code, answer) = kv(&survivors, &["get", key]);
        assert_eq!(code, 0, "{answer}");
        assert!(answer["value"].is_string(), "{key} lost: {answer}");
        let (code, answer) = kv(&fourth, &["get", key, "--read", "follower"]);
        assert_eq!(
            (code, answer["value"].is_string()),
            (0, true),
            "{key} on the new store: {answer}"
        );
    }
    put_until_ok(&survivors, "after-replace", "yes", Duration::from_secs(10));
}

/// A CA under `dir` (`ca.pem`) that issues certificates for 127.0.0.1 naming a role.
struct TestCa {
    dir: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            issuer,
        }
    }

    /// A certificate for 127.0.0.1 naming `role` (`flotilla://ROLE`), written as
    /// `NAME-cert.pem` and `NAME-key.pem`; returns the three TLS flags that use it.
    fn flags(&self, name: &str, role: &str) -> Vec<String> {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = format!("flotilla://{role}");
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().unwrap()));
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let cert = self.dir.join(format!("{name}-cert.pem"));
        let key_path = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        [
            ("--tls-ca", self.dir.join("ca.pem")),
            ("--tls-cert", cert),
            ("--tls-key", key_path),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

/// Mutual TLS with certificates that name their role: each store's names its store id
/// (made first with `server --init`), clients and admins have theirs. A certificate for
/// another store, a client certificate sending raft frames (node tests) or calling admin
/// are refused; the right ones work.
#[test]
fn a_mutual_tls_cluster_serves_tls_clients_only() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new(&dir.0);
    let addresses = free_addresses(3);
    let peers = addresses.join(",");
    let mut servers = Vec::new();
    let mut store_flags: Vec<Vec<String>> = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let data = dir.0.join(format!("s{i}"));
        let init = run(&["server", "--init", "--data-dir", data.to_str().unwrap()]);
        assert_eq!(init.status.code(), Some(0), "{init:?}");
        let id = String::from_utf8_lossy(&init.stdout).trim().to_string();
        assert_eq!(id.len(), 16, "{id:?}");
        let flags = ca.flags(&format!("s{i}"), &format!("store/{id}"));
        // Another store's certificate: refused at start, naming both.
        if i == 1 {
            let mut args = vec!["server", "--addr", address.as_str(), "--data-dir"];
            args.push(data.to_str().unwrap());
            args.extend(store_flags[0].iter().map(String::as_str));
            let output = run(&args);
            assert_eq!(output.status.code(), Some(2), "{output:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(&id) && stderr.contains("store/"),
                "{stderr}"
            );
        }
        let mut command = Command::new(BIN);
        command
            .args(["server", "--addr", address, "--peers", &peers])
            .arg("--data-dir")
            .arg(&data)
            .args(TIMING)
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(Server {
            address: address.clone(),
            child: Some(command.spawn().unwrap()),
        });
        store_flags.push(flags);
    }
    let tls = ca.flags("app", "client/app");
    let admin_tls = ca.flags("operator", "admin/operator");
    let with_tls = |op: &[&str]| {
        let mut args: Vec<&str> = vec![
            "kv",
            "--endpoints",
            &peers,
            "--json",
            "--timeout-ms",
            "3000",
        ];
        args.extend(tls.iter().map(String::as_str));
        args.extend_from_slice(op);
        json(&args)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, answer) = with_tls(&["put", "secret", "s3cr3t"]);
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS write within 30 s: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        with_tls(&["get", "secret"]).1["value"],
        Value::from("s3cr3t")
    );
    // A plain-text client is refused at the handshake: a certain failure, nothing read.
    let (code, answer) = kv(&peers, &["get", "secret"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["ok"], Value::Bool(false));
    // Half a TLS configuration is a usage error.
    let (code, answer) = json(&[
        "kv",
        "--endpoints",
        &peers,
        "--json",
        "--tls-ca",
        &tls[1],
        "get",
        "secret",
    ]);
    assert_eq!(code, 2, "{answer}");
    // Administration needs a store or admin certificate: a client's is refused, an
    // admin's works.
    let admin_with = |flags: &[String], op: &[&str]| {
        let mut args: Vec<&str> = vec![
            "admin",
            "--endpoints",
            &peers,
            "--json",
            "--timeout-ms",
            "5000",
        ];
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(op);
        json(&args)
    };
    let (code, answer) = admin_with(&tls, &["transfer-leader", "any"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"], "PermissionDenied", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs a store or admin certificate")),
        "{answer}"
    );
    let (code, answer) = admin_with(&admin_tls, &["transfer-leader", "any"]);
    assert_eq!(code, 0, "{answer}");
    drop(servers);
}

/// Polls `admin OP --json` until `ready` holds of its answer (exit 0), for at most `within`.
fn status_until(
    endpoints: &str,
    op: &[&str],
    within: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, answer) = admin(endpoints, op);
        if code == 0 && ready(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "admin {op:?} never got there within {within:?}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ids of the regions of a status answer.
fn region_ids(status: &Value) -> Vec<u64> {
    status["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| r["id"].as_u64().expect("region id"))
        .collect()
}

/// The store id a status answer gives the store at `address`.
fn store_id_at(status: &Value, address: &str) -> String {
    status["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .find(|s| s["address"] == address)
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no store at {address} in {status}"))
        .to_string()
}

/// Whether `region` (a status answer's) has the problem `reason` (about `store`, if given).
fn has_problem(region: &Value, reason: &str, store: Option<&str>) -> bool {
    region["problems"].as_array().is_some_and(|problems| {
        problems
            .iter()
            .any(|p| p["reason"] == reason && store.is_none_or(|s| p["store"] == s))
    })
}

/// `admin status --store` lists exactly the regions with a peer on that store (named by id
/// or by address, also a dead one); `--unhealthy` exactly the regions that need attention,
/// as stores die: a dead learner's store makes its one region `peer_down`, a dead voter's
/// every region; a region whose leader dies with a majority of its voters has `no_leader`.
/// The JSON summary counts all of it.
#[test]
fn status_filters_by_store_and_health_as_stores_die() {
    let mut cluster = three_nodes("status-filters", 3);
    let e = cluster.endpoints.clone();
    let minute = Duration::from_secs(60);
    let status = status_until(&e, &["status"], minute, |s| {
        s["summary"]["regions"]["led"] == 3 && s["summary"]["regions"]["unhealthy"] == 0
    });
    assert_eq!(
        status["summary"],
        serde_json::json!({
            "stores": {"total": 3, "reachable": 3, "unreachable": 0},
            "regions": {"total": 3, "led": 3, "without_leader": 0, "unhealthy": 0, "listed": 3},
            "unhealthy_by_reason": {"no_leader": 0, "no_quorum": 0, "peer_down": 0, "peer_missing": 0,
                                    "lagging": 0, "epoch_mismatch": 0},
            "applied_lag_max": 1000
        }),
        "{status}"
    );
    let leaders: u64 = status["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["leaders"].as_u64().unwrap())
        .sum();
    assert_eq!(leaders, 3, "{status}");
    assert!(status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["problems"] == serde_json::json!([])));
    let first = cluster.servers[0].address.clone();
    let first_id = store_id_at(&status, &first);

    // A fourth store, learner of region 2 only.
    let fourth = free_address();
    let mut fourth_server = Server::start(&fourth, None, &cluster.dir.join("s3"), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&fourth).is_err() {
        assert!(Instant::now() < deadline, "the fourth store never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, answer) = admin(&e, &["--region", "2", "add-learner", &fourth]);
    assert_eq!(code, 0, "add-learner: {answer}");
    let status = status_until(&e, &["status", "--store", &fourth], minute, |s| {
        s["summary"]["stores"]["total"] == 4 && s["summary"]["regions"]["unhealthy"] == 0
    });
    assert_eq!(region_ids(&status), [2], "{status}");
    assert_eq!(status["summary"]["regions"]["listed"], 1, "{status}");
    let fourth_id = store_id_at(&status, &fourth);
    for name in [first.as_str(), first_id.as_str()] {
        let (code, status) = admin(&e, &["status", "--store", name]);
        assert_eq!((code, region_ids(&status)), (0, vec![1, 2, 3]), "{status}");
    }
    let (code, status) = admin(&e, &["status", "--store", &fourth_id, "--region", "3"]);
    assert_eq!((code, region_ids(&status)), (0, vec![]), "{status}");

    // The learner's store dies: region 2 alone is unhealthy, its peer there down.
    fourth_server.kill();
    let status = status_until(&e, &["status", "--unhealthy"], minute, |s| {
        s["summary"]["regions"]["unhealthy"] == 1
    });
    assert_eq!(region_ids(&status), [2], "{status}");
    assert!(
        has_problem(&status["regions"][0], "peer_down", Some(&fourth_id)),
        "{status}"
    );
    assert_eq!(status["summary"]["unhealthy_by_reason"]["peer_down"], 1);
    assert_eq!(status["summary"]["regions"]["led"], 3);
    // Named by its dead address: the stores' address books still say who was there.
    let (code, status) = admin(&e, &["status", "--store", &fourth]);
    assert_eq!((code, region_ids(&status)), (0, vec![2]), "{status}");

    // A voter's store dies: every region is unhealthy; once re-elected, every one is led.
    cluster.servers[0].kill();
    let status = status_until(&e, &["status", "--unhealthy"], minute, |s| {
        s["summary"]["regions"]["led"] == 3 && region_ids(s) == [1, 2, 3]
    });
    for region in status["regions"].as_array().unwrap() {
        assert!(
            has_problem(region, "peer_down", Some(&first_id)),
            "{status}"
        );
    }
    assert_eq!(status["summary"]["unhealthy_by_reason"]["peer_down"], 3);
    assert_eq!(status["summary"]["unhealthy_by_reason"]["no_leader"], 0);
    let output = run(&[
        "admin",
        "--endpoints",
        &e,
        "--timeout-ms",
        "10000",
        "status",
        "--unhealthy",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("stores: 4 (2 reachable, 2 unreachable)\n"),
        "{text}"
    );
    assert!(
        text.contains("regions: 3 (3 led, 0 without leader), 3 unhealthy (peer_down 3)"),
        "{text}"
    );
    assert!(text.contains("3 region(s) match --unhealthy:"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("region ")).count(),
        3,
        "{text}"
    );
    assert!(
        text.contains(&format!("unhealthy: peer_down {first_id}")),
        "{text}"
    );

    // The leader of region 1 dies too: two of three voters gone, no region has a quorum,
    // and no store leads region 1 (the survivor cannot win an election).
    let leader = status["regions"][0]["leader"].as_str().unwrap().to_string();
    cluster.kill_at(&leader);
    let status = status_until(&e, &["status", "--region", "1"], minute, |s| {
        has_problem(&s["regions"][0], "no_leader", None)
    });
    assert!(
        has_problem(&status["regions"][0], "no_quorum", None),
        "{status}"
    );
    let summary = &status["summary"];
    assert!(
        summary["regions"]["without_leader"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(
        summary["regions"]["without_leader"], summary["unhealthy_by_reason"]["no_leader"],
        "{status}"
    );
    assert_eq!(summary["unhealthy_by_reason"]["no_quorum"], 3, "{status}");
    assert_eq!(summary["stores"]["reachable"], 1, "{status}");
    assert_eq!(summary["regions"]["unhealthy"], 3, "{status}");
    assert_eq!(summary["regions"]["listed"], 1, "{status}");
}

/// At more than 50 regions the text answer is the summary alone and says how to see the
/// regions; `--all` and the filters list them; `--json` always lists every one. A store
/// nobody knows, a malformed one and an address where nothing answers are refused, named.
#[test]
fn status_summarises_many_regions_and_refuses_unknown_stores() {
    let cluster = three_nodes("status-many", 60);
    let e = cluster.endpoints.clone();
    let status = status_until(&e, &["status"], Duration::from_secs(60), |s| {
        s["summary"]["regions"]["led"] == 60 && s["summary"]["regions"]["unhealthy"] == 0
    });
    assert_eq!(region_ids(&status), (1..=60).collect::<Vec<u64>>());
    let stores = status["stores"].as_array().unwrap();
    assert!(stores.iter().all(|s| s["regions"] == 60), "{status}");
    let leaders: u64 = stores.iter().map(|s| s["leaders"].as_u64().unwrap()).sum();
    assert_eq!(leaders, 60, "{status}");

    let text = |op: &[&str]| {
        let mut args = vec!["admin", "--endpoints", e.as_str(), "--timeout-ms", "10000"];
        args.extend_from_slice(op);
        let output = run(&args);
        assert_eq!(output.status.code(), Some(0), "{op:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let region_lines = |text: &str| text.lines().filter(|l| l.starts_with("region ")).count();
    let summary = text(&["status"]);
    assert!(
        summary.starts_with("stores: 3 (3 reachable, 0 unreachable)\n"),
        "{summary}"
    );
    assert!(
        summary.contains("regions: 60 (60 led, 0 without leader), 0 unhealthy\n"),
        "{summary}"
    );
    assert!(
        summary.contains("60 region lines left out (more than 50): --all lists every region"),
        "{summary}"
    );
    assert_eq!(region_lines(&summary), 0, "{summary}");
    for store in stores {
        let id = store["id"].as_str().unwrap();
        assert!(
            summary
                .lines()
                .any(|l| l.contains(id) && l.contains(" yes ") && l.contains(" 60 ")),
            "{id}: {summary}"
        );
    }
    assert_eq!(region_lines(&text(&["status", "--all"])), 60);
    let one = text(&["status", "--region", "7"]);
    assert_eq!(region_lines(&one), 1, "{one}");
    assert!(
        one.contains("1 region(s) match --region 7:\nregion   7 "),
        "{one}"
    );
    let none = text(&["status", "--unhealthy"]);
    assert!(none.ends_with("0 region(s) match --unhealthy\n"), "{none}");
    assert_eq!(region_lines(&none), 0, "{none}");
    let (code, healthy) = admin(&e, &["status", "--unhealthy"]);
    assert_eq!((code, region_ids(&healthy)), (0, vec![]), "{healthy}");
    assert_eq!(healthy["summary"]["regions"]["total"], 60, "{healthy}");

    // Bad --store: a well-formed id no store knows (exit 1), not a store at all (exit 2),
    // an address where nothing answers (exit 1): each named, with and without --json.
    let nowhere = free_address();
    for (name, code, kind) in [
        ("00000000000000aa", 1, "NoSuchStore"),
        ("not-a-store", 2, "Usage"),
        (nowhere.as_str(), 1, ""),
    ] {
        let (exit, answer) = admin(&e, &["status", "--store", name]);
        assert_eq!(exit, code, "{name}: {answer}");
        assert_eq!(answer["ok"], false, "{answer}");
        if !kind.is_empty() {
            assert_eq!(answer["error"], kind, "{answer}");
        }
        assert!(
            answer["message"].as_str().unwrap().contains(name),
            "{answer}"
        );
        let output = run(&["admin", "--endpoints", &e, "status", "--store", name]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{name}: {stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(output.stdout.is_empty(), "{name}");
    }
}

/// Many regions whose raft traffic needs many frames: with every store cutting frames at 8
/// messages (and refusing more), 150 regions must still all be led — at start, when every
/// region elects at once, and after the store leading most of them is killed — and the
/// frames must really have been cut.
#[test]
fn many_regions_elect_with_frames_cut_small() {
    const REGIONS: u32 = 150;
    let dir = TempDir::new("frames-cut");
    let addresses = free_addresses(3);
    let peers = addresses.join(",");
    let mut servers: Vec<Server> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Server::start_with(
                a,
                Some(&peers),
                &dir.0.join(format!("s{i}")),
                REGIONS,
                &["--frame-messages-max", "8"],
            )
        })
        .collect();
    let status = wait_for_leaders(&peers, REGIONS as usize);
    let split: f64 = addresses
        .iter()
        .map(|a| sample(&metrics(a), "flotilla_transport_frames_split_total "))
        .sum();
    assert!(split > 0.0, "no frame was cut: the limit was not exercised");

    // The store leading the most regions dies: every region is led again, by the others.
    let regions = status["regions"].as_array().expect("regions");
    let leads = |address: &str| regions.iter().filter(|r| r["leader"] == address).count();
    let victim = (0..3)
        .max_by_key(|&i| leads(&addresses[i]))
        .expect("three stores");
    assert!(leads(&addresses[victim]) > 0, "{status}");
    servers[victim].kill();
    let survivors: Vec<&str> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| addresses[i].as_str())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, status) = admin(&survivors.join(","), &["status"]);
        let list = status["regions"].as_array().cloned().unwrap_or_default();
        let led_elsewhere = list.len() == REGIONS as usize
            && list
                .iter()
                .all(|r| r["leader"].is_string() && r["leader"] != addresses[victim].as_str());
        if code == 0 && led_elsewhere {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions not all re-elected within 60 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /live`, `GET /ready` and `flotilla health` (Docker's HEALTHCHECK, Kubernetes'
/// probes): a store that belongs to no cluster yet is live but not ready (503, exit 1,
/// saying why); once in a cluster with a leader for each region it is ready (200, exit 0);
/// nothing listening is a failure naming the address; a bad `--check` is a usage error.
#[test]
fn a_store_is_live_at_once_and_ready_once_its_regions_have_leaders() {
    let dir = TempDir::new("health");
    let waiting_address = free_address();
    let _waiting = Server::start(&waiting_address, None, &dir.0.join("waiting"), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let live = loop {
        let (code, answer) = json(&[
            "health",
            "--endpoint",
            &waiting_address,
            "--check",
            "live",
            "--json",
        ]);
        if code == 0 || std::time::Instant::now() >= deadline {
            break (code, answer);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(live.0, 0, "{}", live.1);
    let ready = crate::support::http_get(&waiting_address, "/ready");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready:.300}");
    assert!(ready.contains("belongs to no cluster"), "{ready}");
    let (code, answer) = json(&["health", "--endpoint", &waiting_address, "--json"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("NotReady")),
        "{answer}"
    );

    let address = free_address();
    let _store = Server::start(&address, Some(&address), &dir.0.join("store"), 2);
    wait_for_leaders(&address, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (code, answer) = loop {
        let (code, answer) = json(&["health", "--endpoint", &address, "--json"]);
        if code == 0 || std::time::Instant::now() >= deadline {
            break (code, answer);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(code, 0, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("2 regions"),
        "{answer}"
    );
    let ready = crate::support::http_get(&address, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready:.300}");

    let nobody = free_address();
    let (code, answer) = json(&["health", "--endpoint", &nobody, "--json"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("Unavailable")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap_or("").contains(&nobody),
        "{answer}"
    );
    let (code, answer) = json(&["health", "--endpoint", &address, "--check", "x", "--json"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (2, Some("Usage")),
        "{answer}"
    );
}

/// Fenced writes through the CLI: a lock's holders write with their tokens; a write with a
/// token older than one the region accepted is refused (`Fenced`, exit 1, nothing changed),
/// also in the child after the region splits (the child keeps its parent's fence records),
/// and after the child merges back (the merged region keeps each lock's highest token of
/// the two, also for a lock only the child had seen).
#[test]
fn fenced_writes_refuse_older_tokens_also_after_a_split_and_a_merge() {
    let cluster = three_nodes("fenced", 1);
    let e = cluster.endpoints.as_str();
    let lock = |op: &[&str]| {
        let mut args = vec!["lock", "--endpoints", e, "--json", "--timeout-ms", "3000"];
        args.extend_from_slice(op);
        json(&args)
    };
    let fenced_by = |lock_name: &str, key: &str, value: &str, token: u64| {
        let token = token.to_string();
        kv(
            e,
            &[
                "put",
                key,
                value,
                "--fence-lock",
                lock_name,
                "--fence-token",
                &token,
            ],
        )
    };
    let fenced = |key: &str, value: &str, token: u64| fenced_by("job", key, value, token);
    let first = lock(&["acquire", "job", "--owner", "a", "--lease-ms", "60000"]).1["token"]
        .as_u64()
        .expect("a token");
    assert_eq!(fenced("fk-1", "a1", first).0, 0);
    assert_eq!(lock(&["release", "job", "--owner", "a"]).0, 0);
    let second = lock(&["acquire", "job", "--owner", "b", "--lease-ms", "60000"]).1["token"]
        .as_u64()
        .expect("a token");
    assert!(second > first);
    assert_eq!(fenced("fk-1", "b1", second).0, 0);
    // The first holder, late: refused, and the value is the second holder's.
    let (code, answer) = fenced("fk-1", "a-late", first);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("Fenced")),
        "{answer}"
    );
    assert_eq!(kv(e, &["get", "fk-1"]).1["value"], Value::from("b1"));
    // Unfenced writes are not affected.
    assert_eq!(kv(e, &["put", "fk-1", "plain"]).0, 0);
    // Split the region between fk-1 and fk-3: the child refuses the old token too.
    // (The split needs the placement driver's id allocator: retried while it elects.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let child = loop {
        let (code, split) = admin(e, &["--region", "1", "split", "--key", "fk-2"]);
        if code == 0 {
            break split["child"]["id"].as_u64().expect("the child's id");
        }
        assert!(Instant::now() < deadline, "{split}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, answer) = fenced("fk-3", "a-late", first);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("Fenced")),
        "{answer}"
    );
    assert_eq!(fenced("fk-3", "b3", second).0, 0);
    assert_eq!(kv(e, &["get", "fk-3"]).1["value"], Value::from("b3"));
    // A second lock, written only in the child: its older holder's token x, then y.
    let token_of = |owner: &str| {
        lock(&["acquire", "job2", "--owner", owner, "--lease-ms", "60000"]).1["token"]
            .as_u64()
            .expect("a token")
    };
    let x = token_of("x");
    assert_eq!(lock(&["release", "job2", "--owner", "x"]).0, 0);
    let y = token_of("y");
    assert!(y > x);
    assert_eq!(fenced_by("job2", "fk-3", "y3", y).0, 0);
    // Merge the child back into region 1 (the PD may be electing: asked again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, merged) = admin(e, &["--region", &child.to_string(), "merge", "--into", "1"]);
        if code == 0 && merged["outcome"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "{merged}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // fk-1 and fk-3 are in one region again. Both keys refuse both locks' older tokens:
    // fk-1's region had never seen job2, the child's record came with the merge.
    for key in ["fk-1", "fk-3"] {
        for (lock_name, old) in [("job", first), ("job2", x)] {
            let (code, answer) = fenced_by(lock_name, key, "late", old);
            assert_eq!(
                (code, answer["error"].as_str()),
                (1, Some("Fenced")),
                "{key} {lock_name}: {answer}"
            );
        }
    }
    assert_eq!(fenced_by("job2", "fk-1", "y1", y).0, 0);
    assert_eq!(fenced("fk-3", "b3-again", second).0, 0);
    assert_eq!(kv(e, &["get", "fk-1"]).1["value"], Value::from("y1"));
    assert_eq!(kv(e, &["get", "fk-3"]).1["value"], Value::from("b3-again"));
}

/// Leases through the CLI, with keys in two regions: grant, put --lease in both, ttl lists
/// the keys, keep-alive, revoke deletes both keys, a put on the revoked lease is refused
/// (`LeaseNotFound`, exit 1, nothing written); a lease left to run out hides its key from
/// reads at once, and the store then deletes it by itself.
#[test]
fn a_lease_spans_regions_and_its_end_deletes_its_keys() {
    let cluster = three_nodes("leases", 1);
    let e = cluster.endpoints.as_str();
    let lease = |op: &[&str]| {
        let mut args = vec!["lease", "--endpoints", e, "--json", "--timeout-ms", "3000"];
        args.extend_from_slice(op);
        json(&args)
    };
    // Two regions: [.., "m") and ["m", ..).
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin(e, &["--region", "1", "split", "--key", "m"]).0 != 0 {
        assert!(Instant::now() < deadline, "the split did not happen");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, granted) = lease(&["grant", "60000"]);
    assert_eq!(code, 0, "{granted}");
    assert_eq!(granted["ttl_ms"], 60000, "{granted}");
    let id = granted["id"].as_u64().expect("an id").to_string();
    for key in ["a-leased", "z-leased"] {
        let (code, put) = kv(e, &["put", key, "v", "--lease", &id]);
        assert_eq!(code, 0, "{put}");
    }
    assert_eq!(kv(e, &["put", "plain", "p"]).0, 0);
    let (code, ttl) = lease(&["ttl", &id]);
    assert_eq!(code, 0, "{ttl}");
    assert_eq!(ttl["keys"], serde_json::json!(["a-leased", "z-leased"]));
    assert!(ttl["remaining_ms"].as_u64().unwrap() <= 60_000, "{ttl}");
    let (code, kept) = lease(&["keep-alive", &id, "--count", "1"]);
    assert_eq!((code, &kept["id"]), (0, &granted["id"]), "{kept}");
    assert_eq!(kv(e, &["get", "z-leased"]).1["value"], "v");
    // Revoked: both keys deleted, the plain key kept; the lease is gone.
    assert_eq!(
        lease(&["revoke", &id]),
        (0, serde_json::json!({"ok": true, "deleted": 2}))
    );
    for key in ["a-leased", "z-leased"] {
        assert_eq!(kv(e, &["get", key]).1["value"], Value::Null, "{key}");
    }
    assert_eq!(kv(e, &["get", "plain"]).1["value"], "p");
    let (code, refused) = kv(e, &["put", "a-leased", "late", "--lease", &id]);
    assert_eq!(
        (code, refused["error"].as_str()),
        (1, Some("LeaseNotFound")),
        "{refused}"
    );
    assert_eq!(kv(e, &["get", "a-leased"]).1["value"], Value::Null);
    let (code, gone) = lease(&["ttl", &id]);
    assert_eq!(
        (code, gone["error"].as_str()),
        (1, Some("LeaseNotFound")),
        "{gone}"
    );
    // A lease left to run out: its key is hidden from reads once it ended on its clock.
    let short = lease(&["grant", "1000"]).1["id"]
        .as_u64()
        .expect("an id")
        .to_string();
    assert_eq!(kv(e, &["put", "short", "s", "--lease", &short]).0, 0);
    assert_eq!(kv(e, &["get", "short"]).1["value"], "s");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(kv(e, &["get", "short"]).1["value"], Value::Null);
    // The home's leader ends it and deletes its key by itself (the reaper looks every
    // 500 ms): a revoke later finds nothing left to delete.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        lease(&["revoke", &short]),
        (0, serde_json::json!({"ok": true, "deleted": 0}))
    );
    // Usage errors change nothing.
    assert_eq!(lease(&["grant", "10"]).0, 2);
    assert_eq!(lease(&["ttl", "0"]).0, 2);
}

/// `kv watch` through the CLI, over a prefix spanning two regions: one JSON line per event
/// in commit order per key, only the prefix's keys; a watcher killed and resumed from an
/// event's token sees exactly the events after it; a bad token ends with a last line
/// `ok:false` naming no position, exit 1.
#[test]
fn a_watch_prints_each_change_once_and_resumes_from_a_token() {
    use std::io::BufRead;
    let cluster = three_nodes("watch", 1);
    let e = cluster.endpoints.as_str();
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin(e, &["--region", "1", "split", "--key", "w/m"]).0 != 0 {
        assert!(Instant::now() < deadline, "the split did not happen");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut watcher = Command::new(BIN)
        .args(["kv", "watch", "w/", "--endpoints", e, "--until-ms", "60000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watcher");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let value: Value = serde_json::from_str(&line).expect("each line is JSON");
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    // The watch is placed once it reports a change made after it started.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(kv(e, &["put", "w/0", "ready"]).0, 0);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            assert_eq!(
                (&line["type"], &line["key"]),
                (&Value::from("put"), &Value::from("w/0")),
                "{line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the watch never reported");
    }
    for op in [
        &["put", "w/a", "1"][..],
        &["put", "w/z", "2"],
        &["put", "x/outside", "no"],
        &["put", "w/a", "3"],
        &["delete", "w/z"],
    ] {
        assert_eq!(kv(e, op).0, 0, "{op:?}");
    }
    let mut events = Vec::new();
    while events.len() < 4 {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {events:?}"));
        // Late "ready" puts may still come; every other line is one of the changes.
        if line["key"] != "w/0" {
            events.push(line);
        }
    }
    let of = |events: &[Value], key: &str| -> Vec<(String, Value)> {
        events
            .iter()
            .filter(|l| l["key"] == key)
            .map(|l| (l["type"].as_str().unwrap().to_string(), l["value"].clone()))
            .collect()
    };
    assert_eq!(
        of(&events, "w/a"),
        vec![
            ("put".into(), Value::from("1")),
            ("put".into(), Value::from("3"))
        ]
    );
    assert_eq!(
        of(&events, "w/z"),
        vec![
            ("put".into(), Value::from("2")),
            ("delete".into(), Value::Null)
        ]
    );
    assert!(events
        .iter()
        .all(|l| l["token"].as_str().is_some_and(|t| !t.is_empty())));
    // The stores count what they sent, and both regions record history.
    let (mut sent, mut recording) = (0.0, 0.0);
    for server in &cluster.servers {
        let text = metrics(&server.address);
        sent += sample(&text, "flotilla_watch_events_total ");
        recording += sample(&text, "flotilla_watch_regions_recording ");
    }
    assert!(sent >= 5.0, "{sent} events counted");
    assert!(
        recording >= 2.0 * 3.0,
        "{recording} region replicas recording"
    );
    // Killed, then resumed from the first change's token: the three after it, once each.
    watcher.kill().expect("kill the watcher");
    let _ = watcher.wait();
    let token = events
        .iter()
        .find(|l| l["key"] == "w/a")
        .and_then(|l| l["token"].as_str())
        .unwrap()
        .to_string();
    let output = run(&[
        "kv",
        "watch",
        "w/",
        "--endpoints",
        e,
        "--from",
        &token,
        "--until-ms",
        "3000",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let resumed: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let after: Vec<Value> = events
        .iter()
        .skip_while(|l| l["token"] != token.as_str())
        .skip(1)
        .cloned()
        .collect();
    assert_eq!(resumed.len(), 3, "{resumed:?}");
    for key in ["w/a", "w/z"] {
        assert_eq!(of(&resumed, key), of(&after, key), "{key}");
    }
    // A token that does not decode, or is another prefix's: a last line naming no
    // position, exit 1.
    for (prefix, bad) in [("w/", "zz"), ("y/", token.as_str())] {
        let output = run(&[
            "kv",
            "watch",
            prefix,
            "--endpoints",
            e,
            "--from",
            bad,
            "--until-ms",
            "3000",
        ]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(last["ok"], false, "{last}");
        assert_eq!(last["error"], "InvalidArgument", "{last}");
        assert_eq!(last["resume_from"], Value::Null, "{last}");
    }
}
