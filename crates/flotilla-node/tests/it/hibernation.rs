//! Hibernation in the runtime (docs/DESIGN.md, "Idle groups cost nothing"): idle groups stop
//! ticking and exchanging messages, wake on a request and commit, fail over when their
//! leader's process dies (the beacons notice, no request needed), and reads stay
//! linearizable across hibernate and wake. Every wait is a generous deadline; nothing here
//! asserts speed.

use std::time::Duration;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use flotilla_node::{GroupId, NodeError, NodeManager, ReadMode};

use crate::cluster::{add, grpc_managers, temp_root, Cluster, Counter, WAIT};

const GROUPS: u64 = 8;

fn manager(cluster: &Cluster, i: usize) -> &NodeManager {
    cluster.processes[i].manager.as_ref().expect("running")
}

/// Waits until every running process reports every one of `groups` groups hibernating.
async fn until_all_hibernate(cluster: &Cluster, groups: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sleeping: Vec<u64> = cluster
            .processes
            .iter()
            .filter_map(|p| p.manager.as_ref())
            .map(|m| m.stats().groups_hibernating)
            .collect();
        if sleeping.iter().all(|&n| n == groups) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "groups hibernating per process: {sleeping:?}, wanted {groups} each"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the metric sample `line_start` (e.g. `flotilla_groups_hibernating`).
fn metric(text: &str, line_start: &str) -> u64 {
    let prefix = format!("{line_start} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {line_start} in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("sample {line_start}: {e}"))
}

/// Three processes hosting `GROUPS` groups, each written once. A write whose outcome is
/// unknown (leadership lost under a loaded machine) is left to commit or not: the tests
/// compare with the counters once the groups settled, never with a fixed value.
async fn cluster_with_groups(name: &str) -> Cluster {
    let mut cluster = Cluster::new(name, 3).await;
    for group in 1..=GROUPS {
        cluster.add_group(group).await;
        match cluster.apply(group, 1).await {
            Ok(_) | Err(NodeError::Unknown(_)) => {}
            Err(e) => panic!("group {group}: {e}"),
        }
    }
    cluster
}

/// The counter of `group` once every process agrees on it (after the group settled).
async fn settled_counter(cluster: &Cluster, group: GroupId, processes: &[usize]) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let values: Vec<u64> = processes
            .iter()
            .map(|&i| cluster.counter(i, group))
            .collect();
        if values.windows(2).all(|w| w[0] == w[1]) {
            return values[0];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group}: counters disagree: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Idle groups hibernate on every process: the gauge counts them, the status and the dump
/// say so, and no raft message moves any more — only one beacon per peer process per
/// heartbeat interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_hibernate_and_stop_sending() {
    let mut cluster = cluster_with_groups("hibernate-idle").await;
    until_all_hibernate(&cluster, GROUPS).await;
    let m = manager(&cluster, 0);
    let text = m.metrics_text();
    assert_eq!(metric(&text, "flotilla_groups_hibernating"), GROUPS);
    let node = cluster.node(0, 1).expect("group 1");
    assert!(node.status().hibernating);
    let described = m.describe().await.expect("describe");
    assert!(
        described.contains(&format!("hibernating={GROUPS}")),
        "{described}"
    );
    assert!(described.contains("hibernating=true"), "{described}");

    // Watch until every process has sent a beacon since (a heartbeat interval at least):
    // meanwhile none may send a raft message.
    let before: Vec<_> = (0..3).map(|i| manager(&cluster, i).stats()).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (0..3).any(|i| manager(&cluster, i).stats().beacons_sent <= before[i].beacons_sent) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no beacons within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, before) in before.iter().enumerate() {
        let after = manager(&cluster, i).stats();
        assert_eq!(after.groups_hibernating, GROUPS, "process {i} woke up");
        assert_eq!(
            after.messages_sent, before.messages_sent,
            "process {i} sent raft messages while every group slept"
        );
        assert!(
            after.beacons_sent > before.beacons_sent,
            "process {i} sent no beacon"
        );
    }
    cluster.stop_all().await;
}

/// A proposal wakes a hibernating group: it commits on every replica, the wake is counted
/// by reason, and the group goes back to sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wakes_a_hibernating_group_and_commits() {
    let mut cluster = cluster_with_groups("hibernate-apply").await;
    until_all_hibernate(&cluster, GROUPS).await;
    let group: GroupId = 3;
    let base = settled_counter(&cluster, group, &[0, 1, 2]).await;
    assert_eq!(cluster.apply(group, 5).await.expect("apply"), base + 5);
    for i in 0..3 {
        cluster.wait_counter(i, group, base + 5).await;
    }
    let leader = cluster.leader(group).await;
    let text = manager(&cluster, leader).metrics_text();
    assert!(metric(&text, "flotilla_group_wakes_total{reason=\"request\"}") >= 1);
    let follower = (leader + 1) % 3;
    let text = manager(&cluster, follower).metrics_text();
    assert!(metric(&text, "flotilla_group_wakes_total{reason=\"message\"}") >= 1);
    until_all_hibernate(&cluster, GROUPS).await;
    cluster.stop_all().await;
}

/// The process leading hibernating groups dies: the others notice through the missing
/// beacons — no request is made — and elect new leaders, which then commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_process_fails_over_its_hibernating_groups() {
    let mut cluster = cluster_with_groups("hibernate-failover").await;
    until_all_hibernate(&cluster, GROUPS).await;
    let mut led = Vec::new();
    for group in 1..=GROUPS {
        if cluster.leader(group).await == 0 {
            led.push(group);
        }
    }
    if led.is_empty() {
        // Make process 0 lead group 1 (elections are random); then wait for sleep again.
        let node = cluster.node(cluster.leader(1).await, 1).expect("leader");
        let target = cluster.processes[0].address.clone();
        node.transfer_leadership(Some(target))
            .await
            .expect("transfer to process 0");
        led.push(1);
        until_all_hibernate(&cluster, GROUPS).await;
    }
    let mut bases = std::collections::BTreeMap::new();
    for &group in &led {
        bases.insert(group, settled_counter(&cluster, group, &[0, 1, 2]).await);
    }
    cluster.stop(0).await;
    // Status only, no request: the wake comes from the beacons.
    for &group in &led {
        cluster.leader_among(group, &[1, 2]).await;
    }
    let woken: u64 = [1, 2]
        .iter()
        .map(|&i| {
            let text = manager(&cluster, i).metrics_text();
            metric(&text, "flotilla_group_wakes_total{reason=\"leader_down\"}")
        })
        .sum();
    assert!(woken >= led.len() as u64, "woken {woken} for {led:?}");
    for &group in &led {
        let expected = bases[&group] + 10;
        assert_eq!(cluster.apply(group, 10).await.expect("apply"), expected);
        for i in [1, 2] {
            cluster.wait_counter(i, group, expected).await;
        }
    }
    cluster.stop_all().await;
}

/// A restarted process rejoins groups that hibernated meanwhile: the groups it led elect
/// elsewhere or again, and every group commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_process_rejoins_hibernating_groups() {
    let mut cluster = cluster_with_groups("hibernate-restart").await;
    until_all_hibernate(&cluster, GROUPS).await;
    let mut bases = std::collections::BTreeMap::new();
    for group in 1..=GROUPS {
        bases.insert(group, settled_counter(&cluster, group, &[0, 1, 2]).await);
    }
    cluster.stop(0).await;
    cluster.start(0).await;
    for group in 1..=GROUPS {
        cluster.add_group_on(0, group).await;
    }
    for group in 1..=GROUPS {
        let expected = bases[&group] + 1;
        assert_eq!(cluster.apply(group, 1).await.expect("apply"), expected);
        for i in 0..3 {
            cluster.wait_counter(i, group, expected).await;
        }
    }
    until_all_hibernate(&cluster, GROUPS).await;
    cluster.stop_all().await;
}

/// Reads stay linearizable across hibernate and wake: after each sleep a read (lease or
/// ReadIndex, on the leader or a follower) sees every acknowledged write; and a leader
/// that hibernated and was then cut off, while the others elected and wrote, refuses a
/// lease read instead of answering from its old lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_linearizable_across_hibernate_and_wake() {
    let mut cluster = cluster_with_groups("hibernate-reads").await;
    let group: GroupId = 1;
    until_all_hibernate(&cluster, GROUPS).await;
    let mut acknowledged = settled_counter(&cluster, group, &[0, 1, 2]).await;
    for round in 0..3 {
        until_all_hibernate(&cluster, GROUPS).await;
        for mode in [ReadMode::Lease, ReadMode::ReadIndex] {
            for i in 0..3 {
                let node = cluster.node(i, group).expect("hosted");
                node.read_index(mode).await.expect("read");
                assert!(
                    cluster.counter(i, group) >= acknowledged,
                    "round {round}: process {i} read {} < {acknowledged} ({mode:?})",
                    cluster.counter(i, group)
                );
            }
        }
        acknowledged = cluster.apply(group, 1).await.expect("apply");
    }

    until_all_hibernate(&cluster, GROUPS).await;
    let old = cluster.leader(group).await;
    let old_node = cluster.node(old, group).expect("leader");
    cluster.transport.isolate(&cluster.processes[old].address);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = cluster.leader_among(group, &others).await;
    let node = cluster.node(new, group).expect("new leader");
    let written = crate::cluster::value_of(&node.apply(add(100), None).await.expect("apply"));
    assert_eq!(written, acknowledged + 100);
    assert!(
        old_node.is_leader(),
        "the cut-off leader should still believe it leads"
    );
    match old_node.read_index(ReadMode::Lease).await {
        Ok(index) => panic!(
            "stale lease read answered at {index} (counter {}), after {written} was acknowledged",
            cluster.counter(old, group)
        ),
        Err(NodeError::Raft(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
    cluster.transport.heal_all();
    cluster.stop_all().await;
}

/// Over gRPC, where beacons are frames without messages on the same streams as the raft
/// traffic: groups that hibernated fail over when their leader's process (manager and
/// server) stops, woken by the missing beacons alone, and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernated_groups_fail_over_across_grpc() {
    const GRPC_GROUPS: u64 = 4;
    let root = temp_root("hibernate-grpc");
    let (peers, processes) = grpc_managers(&root, 3).await;
    let mut managers = Vec::new();
    let mut servers = Vec::new();
    for (listener, manager) in processes {
        servers.push(Some(listener.serve(Arc::new(manager.inbox()))));
        for group in 1..=GRPC_GROUPS {
            let value = Arc::new(AtomicU64::new(0));
            manager
                .add_group(group, peers.clone(), Counter { value })
                .await
                .expect("add group");
        }
        managers.push(Some(manager));
    }
    let running = |managers: &[Option<NodeManager>]| -> Vec<usize> {
        (0..managers.len())
            .filter(|&i| managers[i].is_some())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !managers
        .iter()
        .flatten()
        .all(|m| m.stats().groups_hibernating == GRPC_GROUPS)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "groups did not hibernate over gRPC"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader_of = |managers: &[Option<NodeManager>], group: GroupId| {
        running(managers).into_iter().find(|&i| {
            managers[i]
                .as_ref()
                .and_then(|m| m.node(group))
                .is_some_and(|n| n.is_leader())
        })
    };
    let old = leader_of(&managers, 1).expect("group 1 has a leader");
    if let Some(manager) = managers[old].take() {
        manager.shutdown().await;
    }
    if let Some(server) = servers[old].take() {
        server.shutdown().await;
    }
    // Status only, no request: the wake comes from the missing beacons.
    let new = loop {
        if let Some(new) = leader_of(&managers, 1) {
            break new;
        }
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "no new leader over gRPC"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(new, old);
    let woken: u64 = managers
        .iter()
        .flatten()
        .map(|m| {
            metric(
                &m.metrics_text(),
                "flotilla_group_wakes_total{reason=\"leader_down\"}",
            )
        })
        .sum();
    assert!(woken >= 1, "no group was woken by its leader's silence");
    let node = managers[new]
        .as_ref()
        .and_then(|m| m.node(1))
        .expect("new leader");
    node.apply(add(1), None)
        .await
        .expect("commit after failover");
    for manager in managers.iter().flatten() {
        manager.shutdown().await;
    }
    for server in servers.into_iter().flatten() {
        server.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
