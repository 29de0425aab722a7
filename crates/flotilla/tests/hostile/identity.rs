//! Store identity, with real `flotilla server` processes: a store that lost its
//! disk comes back as a new store that no region counts on (nothing acknowledged is lost);
//! a store restarted on a new address with its disk serves its regions again; bootstrap
//! happens once, however the stores start.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{admin, free_addresses, kv, metrics, put_until_ok, sample, Server, TempDir};

/// `admin status` of `endpoints` once every reachable store answered and `ok` holds.
fn status_until(endpoints: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, status) = admin(endpoints, &["status"]);
        if code == 0 && ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} within 40 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The entry of `stores` for `address`.
fn store_at<'a>(status: &'a Value, address: &str) -> &'a Value {
    status["stores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["address"] == address))
        .unwrap_or(&Value::Null)
}

fn id_at(status: &Value, address: &str) -> String {
    store_at(status, address)["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn led(status: &Value) -> bool {
    status["regions"]
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r["leader"].is_string()))
}

fn peer_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["regions"][0]["peer_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn a_store_that_lost_its_disk_comes_back_as_a_new_store_and_nothing_acknowledged_is_lost() {
    let dir = TempDir::new("identity-wipe");
    let addresses = free_addresses(3);
    let peers = addresses.join(",");
    let data = |i: usize| dir.0.join(format!("s{i}"));
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&addresses[i], Some(&peers), &data(i), 1))
        .collect();
    let status = status_until(&peers, "a leader", led);
    let ids: Vec<String> = addresses.iter().map(|a| id_at(&status, a)).collect();
    assert!(ids.iter().all(|id| id.len() == 16), "{status}");

    // C is down; a write is acknowledged by A and B.
    servers[2].kill();
    let ab = format!("{},{}", addresses[0], addresses[1]);
    put_until_ok(&ab, "precious", "1", Duration::from_secs(20));
    // B loses its disk and comes back with its usual command line.
    servers[1].kill();
    std::fs::remove_dir_all(data(1)).expect("wipe B");
    servers[1] = Server::start(&addresses[1], Some(&peers), &data(1), 1);
    // A crashes; C returns (it lacks the write).
    servers[0].kill();
    servers[2] = Server::start(&addresses[2], Some(&peers), &data(2), 1);
    let bc = format!("{},{}", addresses[1], addresses[2]);
    let status = status_until(&bc, "B as a new store of the cluster", |s| {
        let b = store_at(s, &addresses[1]);
        let c = store_at(s, &addresses[2]);
        b["reachable"] == true && b["cluster"] != "0000000000000000" && b["cluster"] == c["cluster"]
    });
    assert_eq!(store_at(&status, &addresses[1])["regions"], 0, "{status}");
    let new_b = id_at(&status, &addresses[1]);
    assert_ne!(new_b, ids[1], "an empty data dir is a new store: {status}");
    // B (new) and C cannot make a majority of the old members: no leader without A.
    std::thread::sleep(Duration::from_secs(3));
    let (_, status) = admin(&bc, &["status"]);
    assert!(
        status["regions"][0]["leader"].is_null(),
        "a leader without the write: {status}"
    );
    // A returns: the region has a leader again, and the write is there.
    servers[0] = Server::start(&addresses[0], Some(&peers), &data(0), 1);
    status_until(&peers, "a leader with A back", led);
    let (code, answer) = kv(&peers, &["get", "precious"]);
    assert_eq!((code, answer["value"].as_str()), (0, Some("1")), "{answer}");

    // The runbook: add the new store by id, then remove the old id.
    let (code, answer) = admin(&peers, &["add-peer", &new_b]);
    assert_eq!(code, 0, "{answer}");
    let (code, answer) = admin(&peers, &["remove-peer", &ids[1]]);
    assert_eq!(code, 0, "{answer}");
    let mut wanted = vec![ids[0].clone(), new_b.clone(), ids[2].clone()];
    wanted.sort();
    let status = status_until(&peers, "the replaced membership", |s| {
        led(s) && peer_ids(s) == wanted
    });
    let (code, answer) = kv(&addresses[1], &["get", "precious"]);
    assert_eq!(
        (code, answer["value"].as_str()),
        (0, Some("1")),
        "{answer} {status}"
    );
}

#[test]
fn a_store_restarted_on_a_new_address_with_its_disk_serves_its_regions_again() {
    let dir = TempDir::new("identity-move");
    let addresses = free_addresses(4);
    let peers = addresses[..3].join(",");
    let data = |i: usize| dir.0.join(format!("s{i}"));
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&addresses[i], Some(&peers), &data(i), 2))
        .collect();
    let status = status_until(&peers, "leaders", led);
    let moved_id = id_at(&status, &addresses[2]);
    put_until_ok(&peers, "a", "1", Duration::from_secs(20));
    // Snapshots installed, over every region (the store's total), by the two stores that
    // stay.
    let installs =
        |address: &str| -> f64 { sample(&metrics(address), "flotilla_snapshot_installs_total ") };
    let before = installs(&addresses[0]) + installs(&addresses[1]);

    // C moves: same disk, same command line but the address.
    servers[2].kill();
    let started = Instant::now();
    servers[2] = Server::start(&addresses[3], Some(&peers), &data(2), 2);
    let endpoints = format!("{},{},{}", addresses[0], addresses[1], addresses[3]);
    let status = status_until(&endpoints, "C at its new address in every region", |s| {
        led(s)
            && id_at(s, &addresses[3]) == moved_id
            && s["regions"].as_array().is_some_and(|regions| {
                regions.iter().all(|r| {
                    r["peers"]
                        .as_array()
                        .is_some_and(|p| p.contains(&Value::from(addresses[3].as_str())))
                })
            })
    });
    // It serves reads as a member (a follower read through the moved store).
    put_until_ok(&endpoints, "b", "2", Duration::from_secs(20));
    let (code, answer) = kv(&addresses[3], &["get", "a"]);
    assert_eq!((code, answer["value"].as_str()), (0, Some("1")), "{answer}");
    let took = started.elapsed();
    let after = installs(&addresses[0]) + installs(&addresses[1]) + installs(&addresses[3]);
    assert_eq!(after, before, "no snapshot sent for a move: {status}");
    // The figure worth knowing, printed (no timed assertion: the machine is shared).
    eprintln!("store moved to a new address and served again after {took:?}");
}

#[test]
fn stores_started_at_once_or_late_make_one_cluster_and_a_late_empty_store_joins_it() {
    let dir = TempDir::new("identity-bootstrap");
    let addresses = free_addresses(4);
    let peers = addresses[..3].join(",");
    let data = |i: usize| dir.0.join(format!("s{i}"));
    // Two at once, the third seconds later: the first two wait for it.
    let mut servers: Vec<Server> = (0..2)
        .map(|i| Server::start(&addresses[i], Some(&peers), &data(i), 1))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let two = format!("{},{}", addresses[0], addresses[1]);
    let (code, status) = admin(&two, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status["stores"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["cluster"] == "0000000000000000")),
        "no cluster before every listed store answered: {status}"
    );
    servers.push(Server::start(&addresses[2], Some(&peers), &data(2), 1));
    let status = status_until(&peers, "one cluster with a leader", led);
    let clusters: std::collections::BTreeSet<String> = status["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .map(|s| s["cluster"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(clusters.len(), 1, "{status}");
    assert_eq!(peer_ids(&status).len(), 3, "{status}");

    // An empty store started later with the cluster's addresses joins it: no second
    // cluster, no region counts on it.
    let with_new = format!("{peers},{}", addresses[3]);
    servers.push(Server::start(&addresses[3], Some(&with_new), &data(3), 1));
    let status = status_until(&with_new, "the late store in the cluster", |s| {
        let late = store_at(s, &addresses[3]);
        late["reachable"] == true && late["cluster"] == store_at(s, &addresses[0])["cluster"]
    });
    assert_eq!(store_at(&status, &addresses[3])["regions"], 0, "{status}");
    assert_eq!(peer_ids(&status).len(), 3, "{status}");
}

#[test]
fn an_advertised_address_a_live_store_holds_is_refused_naming_it() {
    let dir = TempDir::new("identity-held");
    let addresses = free_addresses(2);
    let _holder = Server::start(&addresses[0], Some(&addresses[0]), &dir.0.join("a"), 1);
    let status = status_until(&addresses[0], "the holder leads", led);
    let holder = id_at(&status, &addresses[0]);
    let output = crate::support::run(&[
        "server",
        "--addr",
        &addresses[1],
        "--advertise-addr",
        &addresses[0],
        "--data-dir",
        dir.0.join("b").to_str().expect("utf-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("held by the live store") && stderr.contains(&holder),
        "{stderr}"
    );
    assert!(
        !dir.0.join("b").exists(),
        "the refused start left its data dir"
    );
}

#[test]
fn three_empty_stores_started_at_once_make_exactly_one_cluster() {
    let dir = TempDir::new("identity-at-once");
    let addresses = free_addresses(3);
    let peers = addresses.join(",");
    let _servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&addresses[i], Some(&peers), &dir.0.join(format!("s{i}")), 2))
        .collect();
    let status = status_until(
        &peers,
        "every store in one cluster, every region led",
        |s| {
            led(s)
                && s["stores"].as_array().is_some_and(|stores| {
                    stores.len() == 3
                        && stores.iter().all(|x| x["regions"] == 2)
                        && stores.iter().all(|x| x["cluster"] == stores[0]["cluster"])
                })
        },
    );
    assert_ne!(
        status["stores"][0]["cluster"], "0000000000000000",
        "{status}"
    );
    assert_eq!(peer_ids(&status).len(), 3, "{status}");
}
