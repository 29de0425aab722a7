//! The Node API end to end over the in-process transport: election and apply, failover
//! keeping acknowledged writes, restart recovery, follower reads through ReadIndex, many
//! groups sharing fsyncs, and removing a group that holds nothing.

use std::time::Duration;

use flotilla_node::{NodeError, ReadMode, Role};

use crate::cluster::{add, value_of, Cluster, WAIT};

const GROUP: u64 = 1;

/// Three processes elect a leader for one group and apply through it; every replica's
/// counter converges and each proposer gets the state machine's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_and_apply() {
    let mut cluster = Cluster::new("elect", 3).await;
    cluster.add_group(GROUP).await;
    for i in 1..=10 {
        assert_eq!(cluster.apply(GROUP, 1).await.unwrap(), i);
    }
    for i in 0..3 {
        cluster.wait_counter(i, GROUP, 10).await;
    }
    let leader = cluster.leader(GROUP).await;
    let node = cluster.node(leader, GROUP).unwrap();
    assert_eq!(node.state(), Role::Leader);
    assert_eq!(node.leader_id().as_ref(), Some(node.peer_id()));
    assert_eq!(node.list_peers().len(), 3);
    let described = node.describe().await.unwrap();
    assert!(described.contains("committed="), "{described}");
    // A follower refuses proposals with a hint to the leader.
    let follower = cluster.node((leader + 1) % 3, GROUP).unwrap();
    match follower.apply(add(1), None).await {
        Err(e) => assert_eq!(e.leader_hint(), Some(node.peer_id()), "{e}"),
        Ok(_) => panic!("a follower accepted a proposal"),
    }
    // A wrong expected term is refused.
    let wrong = flotilla_node::Term(node.status().term.get() + 5);
    assert!(matches!(
        node.apply(add(1), Some(wrong)).await,
        Err(NodeError::Raft(flotilla_node::RaftError::WrongTerm { .. }))
    ));
    for i in 0..3 {
        cluster.stop(i).await;
    }
}

/// The leader's process stops; the two others elect a new leader that accepts writes, and
/// nothing acknowledged before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_acknowledged_writes() {
    let mut cluster = Cluster::new("failover", 3).await;
    cluster.add_group(GROUP).await;
    let mut acknowledged = 0;
    for _ in 0..5 {
        acknowledged = cluster.apply(GROUP, 1).await.unwrap();
    }
    let old = cluster.leader(GROUP).await;
    cluster.stop(old).await;
    let new = cluster.leader(GROUP).await;
    assert_ne!(new, old);
    for _ in 0..5 {
        acknowledged = cluster.apply(GROUP, 1).await.unwrap();
    }
    assert_eq!(acknowledged, 10);
    for i in (0..3).filter(|&i| i != old) {
        cluster.wait_counter(i, GROUP, 10).await;
    }
    for i in 0..3 {
        cluster.stop(i).await;
    }
}

/// A follower's process takes a snapshot, stops, misses writes, restarts from its data
/// directory with an empty counter, and recovers the state (snapshot load + log replay +
/// catch-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_state() {
    let mut cluster = Cluster::new("restart", 3).await;
    cluster.add_group(GROUP).await;
    for _ in 0..4 {
        cluster.apply(GROUP, 2).await.unwrap();
    }
    let leader = cluster.leader(GROUP).await;
    let follower = (leader + 1) % 3;
    cluster.wait_counter(follower, GROUP, 8).await;
    let index = cluster
        .node(follower, GROUP)
        .unwrap()
        .snapshot()
        .await
        .unwrap();
    assert!(index.get() >= 4, "snapshot at {index}");
    for _ in 0..3 {
        cluster.apply(GROUP, 1).await.unwrap();
    }
    cluster.wait_counter(follower, GROUP, 11).await;
    cluster.stop(follower).await;
    cluster.apply(GROUP, 100).await.unwrap();
    cluster.start(follower).await;
    assert!(!cluster.processes[follower]
        .manager
        .as_ref()
        .unwrap()
        .was_fresh());
    cluster.add_group_on(follower, GROUP).await;
    cluster.wait_counter(follower, GROUP, 111).await;
    // The restarted peer is a full member again: writes still commit with it.
    cluster.apply(GROUP, 1).await.unwrap();
    cluster.wait_counter(follower, GROUP, 112).await;
    for i in 0..3 {
        cluster.stop(i).await;
    }
}

/// read_index on a follower answers once the follower has applied at least everything
/// acknowledged before the read started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_on_follower() {
    let mut cluster = Cluster::new("read", 3).await;
    cluster.add_group(GROUP).await;
    let mut acknowledged = 0;
    for _ in 0..3 {
        acknowledged = cluster.apply(GROUP, 1).await.unwrap();
    }
    let leader = cluster.leader(GROUP).await;
    for follower in (0..3).filter(|&i| i != leader) {
        let node = cluster.node(follower, GROUP).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let index = loop {
            match node.read_index(ReadMode::ReadIndex).await {
                Ok(index) => break index,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "read kept failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        assert!(node.applied_index() >= index);
        assert!(
            cluster.counter(follower, GROUP) >= acknowledged,
            "a linearizable read on {follower} saw {} < {acknowledged}",
            cluster.counter(follower, GROUP)
        );
    }
    let node = cluster.node(leader, GROUP).unwrap();
    let lease = node.read_index(ReadMode::Lease).await.unwrap();
    assert!(lease.get() >= 3);
    for i in 0..3 {
        cluster.stop(i).await;
    }
}

/// 20 groups on 3 processes all elect and commit; a burst over every group shares fsyncs
/// (entries per log write > 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_share_fsyncs() {
    const GROUPS: u64 = 20;
    let mut cluster = Cluster::new("many", 3).await;
    for group in 1..=GROUPS {
        cluster.add_group(group).await;
    }
    for group in 1..=GROUPS {
        assert_eq!(cluster.apply(group, 1).await.unwrap(), 1);
    }
    let before: Vec<_> = (0..3)
        .map(|i| cluster.processes[i].manager.as_ref().unwrap().stats())
        .collect();
    let mut burst = Vec::new();
    for group in 1..=GROUPS {
        let leader = cluster.leader(group).await;
        let node = cluster.node(leader, group).unwrap();
        for _ in 0..5 {
            let node = node.clone();
            burst.push(tokio::spawn(async move { node.apply(add(1), None).await }));
        }
    }
    for handle in burst {
        // Leadership is stable here; a lost proposal would show below as a short count.
        let result = handle.await.unwrap().expect("burst apply");
        assert!(value_of(&result) >= 2);
    }
    for group in 1..=GROUPS {
        for i in 0..3 {
            cluster.wait_counter(i, group, 6).await;
        }
    }
    let (mut writes, mut entries) = (0, 0);
    for (i, before) in before.iter().enumerate() {
        let after = cluster.processes[i].manager.as_ref().unwrap().stats();
        writes += after.log_writes - before.log_writes;
        entries += after.entries_written - before.entries_written;
    }
    assert!(writes > 0);
    assert!(
        entries > writes,
        "{entries} entries in {writes} log writes: rounds did not batch groups"
    );
    for i in 0..3 {
        cluster.stop(i).await;
    }
}

/// A group created by mistake (no configuration, no entry) can be removed from a running
/// process and created again; one that belongs to a configuration cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_holds_nothing_can_be_removed() {
    let mut cluster = Cluster::new("remove-group", 3).await;
    cluster.add_group(GROUP).await;
    assert_eq!(cluster.apply(GROUP, 1).await.unwrap(), 1);
    cluster.add_group_with(0, 2, Vec::new()).await;
    let manager = cluster.processes[0].manager.as_ref().expect("running");
    let refused = manager
        .remove_group(GROUP)
        .await
        .expect_err("a member's group");
    assert!(refused.to_string().contains("configuration"), "{refused}");
    let stale = manager.node(2).expect("group 2 runs");
    manager
        .remove_group(2)
        .await
        .expect("an empty group is removed");
    assert!(manager.node(2).is_none());
    assert!(stale.read_index(ReadMode::ReadIndex).await.is_err());
    let missing = manager.remove_group(2).await.expect_err("already gone");
    assert!(missing.to_string().contains("no group 2"), "{missing}");
    cluster.add_group_with(0, 2, Vec::new()).await;
    assert!(cluster.processes[0]
        .manager
        .as_ref()
        .expect("running")
        .node(2)
        .is_some());
    assert_eq!(cluster.apply(GROUP, 1).await.unwrap(), 2, "group 1 went on");
    cluster.stop_all().await;
}
