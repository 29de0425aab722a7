//! The placement driver with real server processes: stores added to a running cluster take
//! replicas and leaders until both are within one of even; a store killed for good has
//! its replicas replaced once it is down for `max-store-down-time`; a decommissioned store
//! is emptied and tombstoned; the PD leader killed in the middle of its operators leaves
//! them to the next leader, which finishes them; a region that lost a majority of its
//! voters is never touched by the PD, and `admin recover` brings it back. No write
//! acknowledged before is ever lost. Every wait is a generous deadline (no timing is
//! asserted; the time to balance is printed, for the README).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// PD timing for tests: heartbeats every 500 ms, a store is down after 3 s of silence.
const PD: [&str; 4] = ["--pd-heartbeat-ms", "500", "--max-store-down-time", "3s"];

/// Sets the PD's `operator-step-timeout` to 10 s (the default, 5 minutes, is for region
/// snapshots in production): a step that cannot finish is cancelled and replanned within
/// a test's wait.
fn short_step_timeout(endpoints: &str) {
    until("the PD takes a setting", Duration::from_secs(60), || {
        let (code, answer) = admin(
            endpoints,
            &["pd", "config-set", "operator-step-timeout", "10s"],
        );
        if code == 0 {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    });
}

/// Starts a new cluster of the stores at `addresses` (all of them its `--peers`), with
/// `regions` static regions and the PD's test timing; data dirs `s0`, `s1`, ... in `dir`.
fn start_stores(dir: &TempDir, addresses: &[String], regions: u32) -> Vec<Server> {
    let peers = addresses.join(",");
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Server::start_with(a, Some(&peers), &dir.0.join(format!("s{i}")), regions, &PD)
        })
        .collect()
}

/// The elements of the JSON array `value` (none when it is not an array).
fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// Waits until `check` answers `Ok`; its last `Err` says what was seen instead.
fn until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pd_status(endpoints: &str) -> Result<Value, String> {
    let (code, status) = admin(endpoints, &["pd", "status"]);
    if code == 0 {
        Ok(status)
    } else {
        Err(status.to_string())
    }
}

/// The stores of the PD's status that are up: id → (regions, leaders).
fn up_stores(status: &Value) -> BTreeMap<String, (u64, u64)> {
    items(&status["stores"])
        .filter(|s| s["state"] == "up")
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                (
                    s["regions"].as_u64().unwrap_or(0),
                    s["leaders"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

fn spread(values: impl Iterator<Item = u64> + Clone) -> u64 {
    values.clone().max().unwrap_or(0) - values.min().unwrap_or(0)
}

/// Every region (from `admin status`) has exactly `replicas` voters, none on `gone`.
fn regions_settled(endpoints: &str, replicas: usize, gone: &[&str]) -> Result<Value, String> {
    let (code, status) = admin(endpoints, &["status"]);
    if code != 0 {
        return Err(status.to_string());
    }
    for region in items(&status["regions"]) {
        let voters: Vec<&str> = items(&region["peer_ids"])
            .filter_map(Value::as_str)
            .collect();
        if voters.len() != replicas || voters.iter().any(|v| gone.contains(v)) {
            return Err(format!("region {} voters {voters:?}", region["id"]));
        }
        if !region["learner_ids"].as_array().is_none_or(Vec::is_empty) {
            return Err(format!("region {} has learners", region["id"]));
        }
    }
    Ok(status)
}

fn put_keys(endpoints: &str, prefix: &str, count: usize) {
    for i in 0..count {
        put_until_ok(
            endpoints,
            &format!("{prefix}{i:03}"),
            &format!("v{i}"),
            Duration::from_secs(20),
        );
    }
}

fn check_keys(endpoints: &str, prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}{i:03}");
        let value = until(&format!("get {key}"), Duration::from_secs(20), || {
            let (code, answer) = kv(endpoints, &["get", &key]);
            if code == 0 {
                Ok(answer["value"].clone())
            } else {
                Err(answer.to_string())
            }
        });
        assert_eq!(value, Value::from(format!("v{i}")), "key {key}");
    }
}

fn store_id(endpoints: &str, address: &str) -> String {
    let (code, status) = admin(endpoints, &["status"]);
    assert_eq!(code, 0, "{status}");
    let id = items(&status["stores"])
        .find(|s| s["address"] == address)
        .and_then(|s| s["id"].as_str())
        .map(str::to_string);
    id.unwrap_or_else(|| panic!("no store at {address}: {status}"))
}

#[test]
fn new_stores_take_replicas_and_leaders_a_dead_one_is_replaced_a_removed_one_emptied() {
    let dir = TempDir::new("pd-balance");
    let addresses = free_addresses(5);
    let peers = addresses[..3].join(",");
    let mut servers = start_stores(&dir, &addresses[..3], 24);
    let e = addresses.join(",");
    wait_for_leaders(&peers, 24);
    put_keys(&peers, "k", 60);
    // Region leaders measure their regions' sizes and report them.
    until(
        "the written keys' bytes reported to the PD",
        Duration::from_secs(60),
        || {
            let status = pd_status(&peers)?;
            match status["region_bytes"].as_u64() {
                Some(bytes) if bytes >= 60 => Ok(()),
                _ => Err(format!("region_bytes {}", status["region_bytes"])),
            }
        },
    );

    // Two stores join: the PD moves replicas and leaders to them.
    let started = Instant::now();
    for (i, a) in addresses.iter().enumerate().skip(3) {
        let join = format!("{},{a}", addresses[0]);
        servers.push(Server::start_with(
            a,
            Some(&join),
            &dir.0.join(format!("s{i}")),
            24,
            &PD,
        ));
    }
    let balanced = until(
        "replicas and leaders balanced over 5 stores",
        Duration::from_secs(120),
        || {
            let status = pd_status(&e)?;
            let up = up_stores(&status);
            let replicas = spread(up.values().map(|(r, _)| *r));
            let leaders = spread(up.values().map(|(_, l)| *l));
            let busy = status["operators"]
                .as_array()
                .is_some_and(|o| !o.is_empty());
            if up.len() == 5 && replicas <= 1 && leaders <= 1 && !busy {
                Ok(status)
            } else {
                Err(format!("up {up:?}, operators {}", status["operators"]))
            }
        },
    );
    eprintln!(
        "placement driver: 3 stores with 24 regions, 2 stores added: replicas and leaders \
         within one of even after {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        up_stores(&balanced)
    );
    // A move the PD recorded done may still be leaving its fourth voter on a store that has
    // not applied the removal yet: looked at until every region shows three.
    until("every region on 3 voters", Duration::from_secs(30), || {
        regions_settled(&e, 3, &[])
    });
    check_keys(&e, "k", 60);

    // A store killed for good: its replicas are replaced after the down time.
    let dead = addresses[4].clone();
    let dead_id = store_id(&e, &dead);
    servers[4].kill();
    let live = addresses[..4].join(",");
    until(
        "the dead store's replicas replaced",
        Duration::from_secs(90),
        || regions_settled(&live, 3, &[dead_id.as_str()]),
    );
    check_keys(&live, "k", 60);

    // Decommission: every replica moves off, then the store is a tombstone.
    let removed = addresses[3].clone();
    let removed_id = store_id(&live, &removed);
    let (code, answer) = admin(&live, &["store", "remove", &removed_id]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["state"], "offline", "{answer}");
    until(
        "the decommissioned store emptied and tombstoned",
        Duration::from_secs(90),
        || {
            let status = pd_status(&live)?;
            let store = items(&status["stores"])
                .find(|s| s["id"] == removed_id.as_str())
                .cloned()
                .unwrap_or_default();
            if store["state"] == "tombstone" && store["regions"] == 0 {
                Ok(())
            } else {
                Err(store.to_string())
            }
        },
    );
    let three = addresses[..3].join(",");
    regions_settled(&three, 3, &[dead_id.as_str(), removed_id.as_str()])
        .expect("every region on the three first stores");
    check_keys(&three, "k", 60);
}

/// Once an open liveness bug (2026-12-06: failed in about three CI dry runs of seven): the
/// fourth store joins through the first store's address alone, and when the killed PD
/// leader was that store before the newcomer's first heartbeat, the newcomer knew no
/// other address, never registered with the next PD leader, and no region could be
/// repaired (no store outside them). A joining store now records every initial member's
/// address from the answer it joined by.
#[test]
fn the_pd_leader_killed_mid_operator_leaves_them_to_the_next_leader() {
    let dir = TempDir::new("pd-failover");
    let addresses = free_addresses(4);
    let peers = addresses[..3].join(",");
    let mut servers = start_stores(&dir, &addresses[..3], 12);
    wait_for_leaders(&peers, 12);
    short_step_timeout(&peers);
    put_keys(&peers, "f", 30);
    let e = addresses.join(",");
    let join = format!("{},{}", addresses[0], addresses[3]);
    servers.push(Server::start_with(
        &addresses[3],
        Some(&join),
        &dir.0.join("s3"),
        12,
        &PD,
    ));
    // Kill the PD leader while it moves replicas to the new store.
    let leader = until("an operator in flight", Duration::from_secs(60), || {
        let status = pd_status(&e)?;
        let busy = status["operators"]
            .as_array()
            .is_some_and(|o| !o.is_empty());
        match status["leader"].as_str() {
            Some(leader) if busy => Ok(leader.to_string()),
            _ => Err(status.to_string()),
        }
    });
    let index = addresses
        .iter()
        .position(|a| *a == leader)
        .expect("leader is a store");
    let leader_id = store_id(&e, &leader);
    servers[index].kill();
    let live: Vec<String> = addresses
        .iter()
        .filter(|a| **a != leader)
        .cloned()
        .collect();
    let live = live.join(",");
    // The next leader finishes or cancels every operator it inherited, and repairs the
    // regions of the killed store (down after 3 s) on the three stores left. Up to 12
    // replacements land on the one store that lacks them, at most 15 added per store per
    // minute, each a snapshot. The old 120 s window ran out twice in CI dry runs, where
    // this binary's 18 tests share two cores (it passes alone in well under a minute);
    // whether the repair was slow or stuck there was not established, so the window is
    // doubled and a region stuck for good still fails here.
    until(
        "operators finished and every region on 3 live voters",
        Duration::from_secs(240),
        || {
            let status = pd_status(&live)?;
            if status["leader"] == leader.as_str() {
                return Err("the old leader still named".into());
            }
            if status["operators"]
                .as_array()
                .is_some_and(|o| !o.is_empty())
            {
                return Err(format!("operators {}", status["operators"]));
            }
            regions_settled(&live, 3, &[leader_id.as_str()]).map(|_| ())
        },
    );
    check_keys(&live, "f", 30);
}

/// A region to break and the two voters to kill: its two followers, at most one a meta
/// group member (the meta group keeps its majority, so a PD keeps running even if
/// its leader was one of them), the region's range starting with a printable key (so that
/// a key in it can be written).
fn a_region_to_break(status: &Value, pd: &Value) -> (Value, Vec<String>) {
    let meta: Vec<String> = items(&pd["meta_voters"])
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    // Two voters, neither the PD leader and at most one a meta group member: the meta
    // group keeps its majority and the PD keeps running.
    let pick = |region: &Value| -> Option<Vec<String>> {
        let voters: Vec<String> = region["peer_ids"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        // The region's two followers die: its leader survives, most likely asleep (an
        // idle region hibernates, and nothing then ticks its step-down), and `recover`
        // must reset it all the same.
        let leader = region["leader_id"].as_str()?.to_string();
        if !voters.contains(&leader) {
            return None;
        }
        let followers: Vec<String> = voters.into_iter().filter(|v| *v != leader).collect();
        let in_meta = followers.iter().filter(|f| meta.contains(*f)).count();
        (followers.len() == 2 && in_meta <= 1).then_some(followers)
    };
    items(&status["regions"])
        .filter(|r| {
            r["start"]
                .as_str()
                .is_some_and(|s| !s.is_empty() && !s.contains('\\'))
        })
        .find_map(|r| pick(r).map(|v| (r.clone(), v)))
        .expect("a region with a printable start and two voters the PD can lose")
}

/// Failed once in a CI dry run (2026-12-06): an operator planned on the region a moment
/// before the PD saw both victims gone kept retrying its add-learner (which cannot commit
/// without a quorum) past the 30 s below. The executor now refuses every step on a region
/// without quorum, so such an operator is cancelled at its next step.
#[test]
fn a_region_without_quorum_is_left_alone_until_recovered_by_hand() {
    let dir = TempDir::new("pd-quorum");
    let addresses = free_addresses(5);
    let all = addresses.join(",");
    let mut servers = start_stores(&dir, &addresses, 6);
    wait_for_leaders(&all, 6);
    short_step_timeout(&all);
    // Every region starts on 3 of the five (the default max-replicas).
    let status = until(
        "every region on 3 voters, nothing in flight",
        Duration::from_secs(90),
        || {
            let status = regions_settled(&all, 3, &[])?;
            let pd = pd_status(&all)?;
            if pd["operators"].as_array().is_some_and(|o| !o.is_empty()) {
                return Err(format!("operators {}", pd["operators"]));
            }
            if pd["meta_voters"].as_array().map(Vec::len) != Some(3) {
                return Err(format!("meta group voters {}", pd["meta_voters"]));
            }
            Ok(status)
        },
    );
    // Two voters of one region die, neither the PD leader (which keeps scheduling): the
    // region has lost its majority. Its range starts with a printable key, so that a key
    // in it can be written below.
    let (region, victims) = a_region_to_break(&status, &pd_status(&all).expect("pd"));
    let id = region["id"].as_u64().expect("id");
    eprintln!("breaking region {id}: killing {victims:?} (stores {all})");
    let start_key = region["start"].as_str().unwrap_or_default().to_string();
    let victim_addresses: Vec<String> = victims
        .iter()
        .map(|v| {
            items(&status["stores"])
                .find(|s| s["id"] == v.as_str())
                .and_then(|s| s["address"].as_str())
                .expect("victim address")
                .to_string()
        })
        .collect();
    for address in &victim_addresses {
        let i = addresses
            .iter()
            .position(|a| a == address)
            .expect("a store");
        servers[i].kill();
    }
    let live: Vec<String> = addresses
        .iter()
        .filter(|a| !victim_addresses.contains(a))
        .cloned()
        .collect();
    let live = live.join(",");
    // Past the down time the PD repairs what it can; the region without quorum keeps its
    // voters (no operator touches it) and is named.
    std::thread::sleep(Duration::from_secs(8));
    let named = until(
        "the PD names the region without quorum",
        Duration::from_secs(60),
        || {
            let status = pd_status(&live)?;
            let lost = status["regions_without_quorum"].clone();
            if lost
                .as_array()
                .is_some_and(|l| l.contains(&Value::from(id)))
            {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    );
    // An operator planned on it before the loss (a leader transfer, say) ends without a
    // step: the executor refuses to act on a region without quorum.
    let _ = named;
    until(
        "no operator on the region without quorum",
        Duration::from_secs(30),
        || {
            let status = pd_status(&live)?;
            let touching = items(&status["operators"]).any(|o| o["region"] == id);
            if touching {
                Err(status["operators"].to_string())
            } else {
                Ok(())
            }
        },
    );
    let (code, now) = admin(&live, &["status", "--region", &id.to_string()]);
    assert_eq!(code, 0, "{now}");
    let voters = now["regions"][0]["peer_ids"].clone();
    assert_eq!(
        voters, region["peer_ids"],
        "the region's voters changed: {now}"
    );
    assert_eq!(now["regions"][0]["quorum"], false, "{now}");
    // Without --force nothing is done, and the survivors are named.
    let (code, refused) = admin(&live, &["recover", "--region", &id.to_string()]);
    assert_ne!(code, 0, "{refused}");
    // With it the region serves again, then the PD brings it back to 3 voters.
    let (code, recovered) = admin(&live, &["recover", "--region", &id.to_string(), "--force"]);
    assert_eq!(code, 0, "{recovered}");
    assert_eq!(
        recovered["survivors"].as_array().map(Vec::len),
        Some(1),
        "{recovered}"
    );
    let key = format!("{start_key}recovered");
    put_until_ok(&live, &key, "yes", Duration::from_secs(30));
    until(
        "the recovered region back on 3 voters",
        Duration::from_secs(90),
        || {
            let (code, now) = admin(&live, &["status", "--region", &id.to_string()]);
            let voters: Vec<String> = items(&now["regions"][0]["peer_ids"])
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            if code == 0 && voters.len() == 3 && !voters.iter().any(|v| victims.contains(v)) {
                Ok(())
            } else {
                Err(now.to_string())
            }
        },
    );
    let (code, value) = kv(&live, &["get", &key]);
    assert_eq!((code, value["value"].as_str()), (0, Some("yes")), "{value}");
}

/// A bootstrapper's `--max-replicas` is how many voters each static region starts with
/// (the other members adopt it): no operator is needed to reach it. And a client given
/// only a store that holds no region still finds every region (through the address book
/// the PD fills).
#[test]
fn static_regions_start_on_max_replicas_voters() {
    let dir = TempDir::new("pd-bootstrap-replicas");
    let addresses = free_addresses(5);
    let peers = addresses[..4].join(",");
    let flags = [PD.as_slice(), &["--max-replicas", "4"]].concat();
    let mut servers: Vec<Server> = addresses[..4]
        .iter()
        .enumerate()
        .map(|(i, a)| Server::start_with(a, Some(&peers), &dir.0.join(format!("s{i}")), 4, &flags))
        .collect();
    wait_for_leaders(&peers, 4);
    regions_settled(&peers, 4, &[]).expect("every region started on 4 voters");
    let pd = until("the PD answers", Duration::from_secs(60), || {
        pd_status(&peers)
    });
    let moved: Vec<&Value> = items(&pd["finished"])
        .filter(|o| o["kind"] != "balance-leader")
        .collect();
    assert!(
        moved.is_empty(),
        "replicas were moved to reach 4: {moved:?}"
    );

    // A fifth store joins while the PD is paused: it holds no region, and a client that
    // knows only it still reads and writes every region.
    let (code, paused) = admin(&peers, &["pd", "pause"]);
    assert_eq!(code, 0, "{paused}");
    let fifth = addresses[4].clone();
    let join = format!("{},{fifth}", addresses[0]);
    servers.push(Server::start_with(
        &fifth,
        Some(&join),
        &dir.0.join("s4"),
        4,
        &flags,
    ));
    let all = addresses.join(",");
    until(
        "the fifth store registered with the PD",
        Duration::from_secs(60),
        || {
            let status = pd_status(&all)?;
            let up = up_stores(&status);
            if up.len() == 5 {
                Ok(())
            } else {
                Err(format!("up {up:?}"))
            }
        },
    );
    let (code, status) = admin(&fifth, &["status"]);
    assert_eq!(code, 0, "{status}");
    put_until_ok(&fifth, "via-the-fifth", "yes", Duration::from_secs(30));
    let (code, got) = kv(&fifth, &["get", "via-the-fifth"]);
    assert_eq!((code, got["value"].as_str()), (0, Some("yes")), "{got}");
}

/// `admin split` divides a region through its leader, at a given key or at the key that
/// halves its bytes: both halves on every store, each led, every key readable where it
/// was; the PD records them (the parent's record replaced by its smaller range, the
/// child's added); refusals change nothing.
#[test]
fn admin_split_divides_a_region_and_the_pd_records_both() {
    let dir = TempDir::new("pd-split");
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let endpoints = addresses.join(",");
    let _stores = start_stores(&dir, &addresses, 1);
    put_keys(&endpoints, "k", 20);
    // Refused, nothing changed: no --region, a key outside the region.
    let (code, answer) = admin(&endpoints, &["split", "--key", "k010"]);
    assert_eq!(code, 2, "{answer}");
    let (code, answer) = admin(&endpoints, &["--region", "7", "split", "--key", "k010"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("NoSuchRegion")),
        "{answer}"
    );
    let split = until("the split", Duration::from_secs(60), || {
        let (code, answer) = admin(&endpoints, &["--region", "1", "split", "--key", "k010"]);
        if code == 0 {
            Ok(answer)
        } else {
            Err(answer.to_string())
        }
    });
    assert_eq!(split["region"]["end"], "k010", "{split}");
    assert_eq!(split["child"]["start"], "k010", "{split}");
    assert_eq!(split["child"]["version"], 2, "{split}");
    let child = split["child"]["id"].as_u64().expect("child id");
    let status = until(
        "both halves led on three voters",
        Duration::from_secs(60),
        || {
            let status = regions_settled(&endpoints, 3, &[])?;
            let regions: Vec<&Value> = items(&status["regions"]).collect();
            let ids: Vec<u64> = regions.iter().filter_map(|r| r["id"].as_u64()).collect();
            if ids.len() == 2 && ids.contains(&1) && ids.contains(&child) {
                Ok(status)
            } else {
                Err(format!("regions {ids:?}"))
            }
        },
    );
    println!("after the split: {}", status["regions"]);
    // The split key again: the parent no longer holds it.
    let (code, answer) = admin(&endpoints, &["--region", "1", "split", "--key", "k015"]);
    assert_eq!(
        (code, answer["error"].as_str()),
        (1, Some("KeyOutOfRegion")),
        "{answer}"
    );
    check_keys(&endpoints, "k", 20);
    put_keys(&endpoints, "k", 20);
    // Without --key: at the key that halves the child's bytes (it holds k010..k019).
    let middle = until("the split at the middle", Duration::from_secs(60), || {
        let id = child.to_string();
        let (code, answer) = admin(&endpoints, &["--region", &id, "split"]);
        if code == 0 {
            Ok(answer)
        } else {
            Err(answer.to_string())
        }
    });
    let key = middle["child"]["start"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        key.as_str() > "k010" && key.as_str() <= "k015",
        "middle key {key}: {middle}"
    );
    until(
        "three regions, each led on three voters",
        Duration::from_secs(60),
        || {
            let status = regions_settled(&endpoints, 3, &[])?;
            let count = items(&status["regions"]).count();
            (count == 3).then_some(()).ok_or(format!("{count} regions"))
        },
    );
    check_keys(&endpoints, "k", 20);
    until(
        "the PD records the three regions",
        Duration::from_secs(60),
        || {
            let status = pd_status(&endpoints)?;
            // The meta group's record and the three regions.
            (status["regions"] == 4)
                .then_some(())
                .ok_or(format!("PD regions {}", status["regions"]))
        },
    );
}

#[test]
fn the_pd_splits_regions_past_region_split_keys_and_loses_no_key() {
    let dir = TempDir::new("pd-split-keys");
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let endpoints = addresses.join(",");
    let _stores = start_stores(&dir, &addresses, 1);
    // Refused, nothing changed: a size that is not one, a key count of 0.
    let (code, answer) = admin(
        &endpoints,
        &["pd", "config-set", "region-split-bytes", "12 parsecs"],
    );
    assert_eq!(code, 1, "{answer}");
    let (code, answer) = admin(&endpoints, &["pd", "config-set", "region-split-keys", "0"]);
    assert_eq!(code, 1, "{answer}");
    put_keys(&endpoints, "k", 200);
    let started = Instant::now();
    until("the PD takes a setting", Duration::from_secs(60), || {
        let (code, answer) = admin(&endpoints, &["pd", "config-set", "region-split-keys", "60"]);
        (code == 0).then_some(()).ok_or(answer.to_string())
    });
    // 200 keys, split at 60 or more: halves of 100, then of 50, below the threshold.
    let status = until(
        "regions of fewer than 60 keys each",
        Duration::from_secs(120),
        || {
            let status = regions_settled(&endpoints, 3, &[])?;
            let count = items(&status["regions"]).count();
            if count < 4 {
                return Err(format!("{count} regions"));
            }
            let pd = pd_status(&endpoints)?;
            // The PD's records: the meta group and every region, each measured since.
            let largest = pd["largest_region_keys"].as_u64().unwrap_or(u64::MAX);
            let recorded = pd["regions"].as_u64().unwrap_or(0) as usize;
            let busy = items(&pd["operators"]).count();
            if recorded == count + 1 && largest < 60 && pd["region_keys"] == 200 && busy == 0 {
                Ok(status)
            } else {
                Err(format!(
                    "{count} regions, the PD records {recorded} with {} keys, the largest {largest}, \
                     {busy} operators in flight",
                    pd["region_keys"]
                ))
            }
        },
    );
    println!(
        "200 keys, region-split-keys 60: {} regions within {:?}",
        items(&status["regions"]).count(),
        started.elapsed()
    );
    let (code, pd) = admin(&endpoints, &["pd", "status"]);
    assert_eq!(code, 0, "{pd}");
    let splits = items(&pd["finished"])
        .filter(|o| o["kind"] == "split-region" && o["outcome"] == "done")
        .count();
    assert!(
        splits >= 3,
        "the PD's finished operators: {}",
        pd["finished"]
    );
    check_keys(&endpoints, "k", 200);
}

/// Scans `prefix`'s keys forward and backward and checks each of the `count` keys comes
/// exactly once, in order, with its value.
fn check_scans(endpoints: &str, prefix: &str, count: usize) {
    let limit = (count + 10).to_string();
    for reverse in [false, true] {
        let mut args = vec!["scan", prefix, "", "--limit", &limit];
        if reverse {
            args.push("--reverse");
        }
        let scan = until("a scan", Duration::from_secs(20), || {
            let (code, answer) = kv(endpoints, &args);
            (code == 0)
                .then_some(answer.clone())
                .ok_or(answer.to_string())
        });
        let mut got: Vec<(String, String)> = items(&scan["entries"])
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap_or_default().to_string(),
                    kv["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if reverse {
            got.reverse();
        }
        let want: Vec<(String, String)> = (0..count)
            .map(|i| (format!("{prefix}{i:03}"), format!("v{i}")))
            .collect();
        assert_eq!(got, want, "scan (reverse: {reverse})");
    }
}

#[test]
fn the_pd_merges_small_regions_back_and_loses_no_key() {
    let dir = TempDir::new("pd-merge");
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let endpoints = addresses.join(",");
    let _stores = start_stores(&dir, &addresses, 1);
    put_keys(&endpoints, "k", 200);
    let set = |key: &str, value: &str| {
        until("the PD takes a setting", Duration::from_secs(60), || {
            let (code, answer) = admin(&endpoints, &["pd", "config-set", key, value]);
            (code == 0).then_some(()).ok_or(answer.to_string())
        });
    };
    // Refused, nothing changed: an interval of 0.
    let (code, answer) = admin(
        &endpoints,
        &["pd", "config-set", "split-merge-interval", "0s"],
    );
    assert_eq!(code, 1, "{answer}");
    set("region-split-keys", "40");
    let split = until("at least 5 regions", Duration::from_secs(120), || {
        let status = regions_settled(&endpoints, 3, &[])?;
        let count = items(&status["regions"]).count();
        (count >= 5)
            .then_some(count)
            .ok_or(format!("{count} regions"))
    });
    check_keys(&endpoints, "k", 200);
    check_scans(&endpoints, "k", 200);
    // A person's merge, through the PD. Refused, nothing changed: no --region, regions
    // that are not neighbours.
    set("region-split-keys", "1000000");
    let (code, answer) = admin(&endpoints, &["merge", "--into", "1"]);
    assert_eq!(code, 2, "{answer}");
    // Splits may still be under way: counted again once the PD has none in flight.
    let status = until("the splits to end", Duration::from_secs(60), || {
        let status = regions_settled(&endpoints, 3, &[])?;
        let pd = pd_status(&endpoints)?;
        let busy = items(&pd["operators"]).count();
        (busy == 0)
            .then_some(status)
            .ok_or(format!("{busy} operators in flight"))
    });
    let before = items(&status["regions"]).count();
    let mut ranges: Vec<(String, u64)> = items(&status["regions"])
        .map(|r| {
            (
                r["start"].as_str().unwrap_or_default().to_string(),
                r["id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ranges.sort();
    let (first, second, third) = (ranges[0].1, ranges[1].1, ranges[2].1);
    let refusal = until("the PD's refusal", Duration::from_secs(60), || {
        let (code, answer) = admin(
            &endpoints,
            &[
                "--region",
                &first.to_string(),
                "merge",
                "--into",
                &third.to_string(),
            ],
        );
        // The meta group may be moving its leader: asked again.
        match answer["error"].as_str() {
            Some("NotLeader" | "PdUnavailable" | "Unavailable") => Err(answer.to_string()),
            _ => Ok((code, answer)),
        }
    });
    assert_eq!(
        (refusal.0, refusal.1["error"].as_str()),
        (1, Some("Refused")),
        "{}",
        refusal.1
    );
    let merged = until("a person's merge", Duration::from_secs(60), || {
        let (code, answer) = admin(
            &endpoints,
            &[
                "--region",
                &second.to_string(),
                "merge",
                "--into",
                &first.to_string(),
            ],
        );
        (code == 0)
            .then_some(answer.clone())
            .ok_or(answer.to_string())
    });
    assert_eq!(merged["outcome"], "done", "{merged}");
    until("one region fewer", Duration::from_secs(60), || {
        let status = regions_settled(&endpoints, 3, &[])?;
        let count = items(&status["regions"]).count();
        (count == before - 1)
            .then_some(())
            .ok_or(format!("{count} regions, {before} before the merge"))
    });
    check_keys(&endpoints, "k", 200);
    check_scans(&endpoints, "k", 200);
    // Splits off; merges once a region kept its range for a second.
    set("region-split-keys", "1000000");
    set("split-merge-interval", "1s");
    let started = Instant::now();
    until("one region again", Duration::from_secs(180), || {
        let status = regions_settled(&endpoints, 3, &[])?;
        let count = items(&status["regions"]).count();
        let pd = pd_status(&endpoints)?;
        let recorded = pd["regions"].as_u64().unwrap_or(0);
        if count == 1 && recorded == 2 {
            Ok(())
        } else {
            Err(format!(
                "{count} regions, the PD records {recorded}, operators {}",
                pd["operators"]
            ))
        }
    });
    println!(
        "200 keys in {split} regions merged back into one within {:?}",
        started.elapsed()
    );
    let (code, pd) = admin(&endpoints, &["pd", "status"]);
    assert_eq!(code, 0, "{pd}");
    let merges = items(&pd["finished"])
        .filter(|o| o["kind"] == "merge-region" && o["outcome"] == "done")
        .count();
    assert!(
        merges + 1 >= before,
        "the PD's finished operators: {}",
        pd["finished"]
    );
    check_keys(&endpoints, "k", 200);
    check_scans(&endpoints, "k", 200);
    // The merged region takes writes over the whole range.
    put_keys(&endpoints, "m", 20);
    check_keys(&endpoints, "m", 20);
}

#[test]
fn the_pd_splits_a_region_written_faster_than_region_split_load() {
    let dir = TempDir::new("pd-split-load");
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let endpoints = addresses.join(",");
    let _stores = start_stores(&dir, &addresses, 1);
    wait_for_leaders(&endpoints, 1);
    until("the PD takes a setting", Duration::from_secs(60), || {
        let (code, answer) = admin(&endpoints, &["pd", "config-set", "region-split-load", "20"]);
        (code == 0).then_some(()).ok_or(answer.to_string())
    });
    // Writes spread over 1,000 keys, in the background, while the PD watches the rate.
    let load = {
        let endpoints = endpoints.clone();
        std::thread::spawn(move || {
            let output = run(&[
                "bench",
                "--endpoints",
                &endpoints,
                "--workload",
                "write",
                "--clients",
                "4",
                "--keys",
                "1000",
                "--duration",
                "15",
                "--warmup",
                "0",
                "--json",
            ]);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let value: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            (output.status.code().unwrap_or(-1), value, stderr)
        })
    };
    let started = Instant::now();
    let pd = until("a load-based split", Duration::from_secs(60), || {
        let pd = pd_status(&endpoints)?;
        let done = items(&pd["finished"])
            .any(|o| o["kind"] == "split-hot-region" && o["outcome"] == "done");
        done.then_some(pd.clone()).ok_or(format!(
            "regions {}, operators {}, finished {}",
            pd["regions"], pd["operators"], pd["finished"]
        ))
    });
    println!(
        "region-split-load 20: split by load {:?} after the writes began; the PD: {}",
        started.elapsed(),
        pd["finished"]
    );
    let (code, bench, stderr) = load.join().expect("the load thread");
    assert_eq!(code, 0, "{bench} {stderr}");
    assert!(bench["ops"].as_u64().unwrap_or(0) > 0, "{bench}");
    // The split happened under the writes: none of them saw it as an error (a write whose
    // key left its region between routing and apply is routed again).
    assert_eq!(bench["errors"], 0, "{bench} {stderr}");
    // Both halves hold keys the bench wrote: the split key divided the writes (no half
    // holds them all).
    until("both halves measured", Duration::from_secs(60), || {
        let pd = pd_status(&endpoints)?;
        let (all, largest) = (&pd["region_keys"], &pd["largest_region_keys"]);
        let divided = all.as_u64() > largest.as_u64() && largest.as_u64() > Some(0);
        divided
            .then_some(())
            .ok_or(format!("keys {all}, the largest region {largest}"))
    });
}

/// `admin backup` copies every region of a running cluster (one of them split off by the
/// PD's id allocator); a damaged copy is refused by `--restore` with the file named and no
/// data dir made; `server --restore` seeds a new one-store cluster holding every key; two
/// stores joining it get every region (the meta group too) from the PD; and the new
/// cluster's allocator hands out ids past the restored regions'.
#[test]
fn a_backup_seeds_a_new_cluster_that_holds_every_key_and_grows() {
    let dir = TempDir::new("pd-backup");
    let addresses = free_addresses(6);
    let peers = addresses[..3].join(",");
    let servers = start_stores(&dir, &addresses[..3], 2);
    wait_for_leaders(&peers, 2);
    put_keys(&peers, "k", 40);
    // Region 2 holds the keys from "\x80"; region 1 holds "k...": split it.
    let (code, split) = admin(&peers, &["--region", "1", "split", "--key", "k020"]);
    assert_eq!(code, 0, "{split}");
    let child = split["child"]["id"].as_u64().expect("the child's id");
    assert!(child >= 1_000_000, "{split}");
    put_keys(&peers, "m", 10);

    let backup = dir.0.join("backup");
    let backup_text = backup.to_str().unwrap();
    let (code, taken) = admin(&peers, &["backup", backup_text]);
    assert_eq!(code, 0, "{taken}");
    assert_eq!(taken["regions"], 3, "{taken}");
    assert_eq!(taken["keys"], 50, "{taken}");
    // Never into a directory that holds anything.
    let (code, refused) = admin(&peers, &["backup", backup_text]);
    assert_eq!(code, 2, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("not empty"),
        "{refused}"
    );
    drop(servers);

    // A flipped byte in a region's data: refused, naming the file; nothing made.
    let damaged = dir.0.join("damaged");
    copy_dir(&backup, &damaged);
    let data = find_file(&damaged.join(format!("region-{child}")), "data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
    let refused_dir = dir.0.join("refused");
    let output = run(&[
        "server",
        "--addr",
        &addresses[3],
        "--data-dir",
        refused_dir.to_str().unwrap(),
        "--restore",
        damaged.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(data.to_str().unwrap()) && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert!(
        !refused_dir.exists(),
        "a refused restore made {refused_dir:?}"
    );

    // The restore: one store, every key, writes taken.
    let restored = addresses[3].clone();
    let _first = Server::start_with(
        &restored,
        None,
        &dir.0.join("r0"),
        1,
        &[&PD[..], &["--restore", backup_text]].concat(),
    );
    wait_for_leaders(&restored, 3);
    check_keys(&restored, "k", 40);
    check_keys(&restored, "m", 10);
    put_keys(&restored, "n", 5);

    // Two stores join it; the PD gives them every region and the meta group.
    let grown = format!("{restored},{},{}", addresses[4], addresses[5]);
    let _others: Vec<Server> = addresses[4..]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Server::start_with(
                a,
                Some(&format!("{restored},{a}")),
                &dir.0.join(format!("r{}", i + 1)),
                1,
                &PD,
            )
        })
        .collect();
    until(
        "every region on three stores",
        Duration::from_secs(120),
        || regions_settled(&grown, 3, &[]),
    );
    until(
        "the meta group on three stores",
        Duration::from_secs(120),
        || {
            let status = pd_status(&restored)?;
            let stores = up_stores(&status);
            // Every up store hosts a meta group peer: its region count includes region 0.
            if stores.len() == 3 && stores.values().all(|(regions, _)| *regions == 4) {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    );
    // The joiners got every region by snapshot: the bytes show on their metrics.
    for joiner in &addresses[4..] {
        let fetched = sample(&metrics(joiner), "flotilla_snapshot_fetched_bytes_total ");
        assert!(fetched > 0.0, "{joiner} fetched {fetched} snapshot bytes");
    }
    check_keys(&grown, "k", 40);
    check_keys(&grown, "n", 5);
    let (code, split) = admin(
        &grown,
        &["--region", &child.to_string(), "split", "--key", "k030"],
    );
    assert_eq!(code, 0, "{split}");
    let next = split["child"]["id"].as_u64().expect("the child's id");
    assert!(next > child, "a restored id handed out again: {split}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The file named `name` somewhere under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    fn search(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                if let Some(found) = search(&path, name) {
                    return Some(found);
                }
            } else if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
        }
        None
    }
    search(dir, name).unwrap_or_else(|| panic!("no {name} under {dir:?}"))
}
