//! The CLI service over gRPC: 3 managers each serving raft and CLI on one address, driven
//! through `CliClient` (leader discovery, redirects from followers, membership, learners,
//! transfers, rebalance) and the raw generated client (the server-side rebalance, the error
//! metadata).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use flotilla_node::grpc::cli::{proto, Stamp, ERROR_KIND_KEY};
use flotilla_node::grpc::{CliClient, CliError, CliOptions, ServerHandle};
use flotilla_node::{GroupId, NodeManager, PeerId};

use super::cluster::{grpc_managers, temp_root, Counter};

const WAIT: Duration = Duration::from_secs(20);

struct Processes {
    root: std::path::PathBuf,
    peers: Vec<PeerId>,
    managers: Vec<Arc<NodeManager>>,
    servers: Vec<ServerHandle>,
}

impl Processes {
    async fn start(name: &str) -> Processes {
        let root = temp_root(&format!("cli-{name}"));
        let (peers, processes) = grpc_managers(&root, 3).await;
        let mut managers = Vec::new();
        let mut servers = Vec::new();
        for (listener, manager) in processes {
            let manager = Arc::new(manager);
            servers.push(listener.serve_with_cli(Arc::new(manager.inbox()), manager.clone()));
            managers.push(manager);
        }
        Processes {
            root,
            peers,
            managers,
            servers,
        }
    }

    async fn add_group(&self, i: usize, group: GroupId, voters: Vec<PeerId>) {
        self.managers[i]
            .add_group(
                group,
                voters,
                Counter {
                    value: Arc::new(AtomicU64::new(0)),
                },
            )
            .await
            .expect("add group");
    }

    async fn stop(self) {
        for manager in &self.managers {
            manager.shutdown().await;
        }
        for server in self.servers {
            server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Retries `op` until it answers `Ok` with a value `accept` takes, or the deadline passes.
async fn until<T, F, Fut>(what: &str, mut op: F, accept: impl Fn(&T) -> bool) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = op().await;
        match &outcome {
            Ok(value) if accept(value) => return outcome.expect("checked"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Raw = proto::cli_client::CliClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Stamp>,
>;

/// The generated client, its calls naming the process at `to` (whose peer id is its
/// address in these tests) as `stamp_as` of cluster `cluster`.
async fn raw_client_as(to: &PeerId, stamp_as: &str, cluster: u64) -> Raw {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let stamp = Stamp::new(stamp_as, cluster).expect("ascii peer id");
    proto::cli_client::CliClient::with_interceptor(channel, stamp)
}

async fn raw_client(to: &PeerId) -> Raw {
    raw_client_as(to, to.as_str(), 0).await
}

fn set(peers: &[PeerId]) -> BTreeSet<PeerId> {
    peers.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_client_administers_a_group_over_grpc() {
    const GROUP: GroupId = 1;
    let processes = Processes::start("admin").await;
    let p = processes.peers.clone();
    // Two voters; the third process waits to be added.
    processes
        .add_group(0, GROUP, vec![p[0].clone(), p[1].clone()])
        .await;
    processes
        .add_group(1, GROUP, vec![p[0].clone(), p[1].clone()])
        .await;
    processes.add_group(2, GROUP, Vec::new()).await;

    let client = CliClient::new(p.clone(), GROUP).expect("client");
    let leader = until("get leader", || client.get_leader(), |_| true).await;
    assert!(leader == p[0] || leader == p[1], "{leader}");
    let peers = until("get peers", || client.get_peers(), |_| true).await;
    assert_eq!(set(&peers), set(&p[..2]));

    // A learner, then promoted.
    until(
        "add learner",
        || client.add_learners(std::slice::from_ref(&p[2])),
        |_| true,
    )
    .await;
    let learners = until("get learners", || client.get_learners(), |_| true).await;
    assert_eq!(learners, vec![p[2].clone()]);
    until(
        "alive learners",
        || client.get_alive_learners(),
        |l| l == &vec![p[2].clone()],
    )
    .await;
    until("promote", || client.promote_learner(&p[2]), |_| true).await;
    let peers = until("peers after promote", || client.get_peers(), |_| true).await;
    assert_eq!(set(&peers), set(&p));
    assert!(
        until("learners after promote", || client.get_learners(), |_| true)
            .await
            .is_empty()
    );
    until(
        "alive peers",
        || client.get_alive_peers(),
        |alive| alive.len() == 3,
    )
    .await;

    // A client that only knows a follower is redirected to the leader transparently.
    let leader = until("leader", || client.get_leader(), |_| true).await;
    let follower = p
        .iter()
        .find(|x| **x != leader)
        .expect("a follower")
        .clone();
    let via_follower = CliClient::new(vec![follower.clone()], GROUP).expect("client");
    let peers = until(
        "peers via a follower",
        || via_follower.get_peers(),
        |_| true,
    )
    .await;
    assert_eq!(set(&peers), set(&p));

    // Transfer to a named peer (through the follower-only client), then to any.
    let new = until(
        "transfer to a named peer",
        || via_follower.transfer_leader(Some(&follower)),
        |_| true,
    )
    .await;
    assert_eq!(new, follower);
    until(
        "leader after transfer",
        || client.get_leader(),
        |l| *l == follower,
    )
    .await;
    let any = until("transfer to any", || client.transfer_leader(None), |_| true).await;
    assert_ne!(any, follower);
    let leader = until(
        "leader after transfer to any",
        || client.get_leader(),
        |l| *l == any,
    )
    .await;

    // Remove a peer that does not lead.
    let victim = p
        .iter()
        .find(|x| **x != leader)
        .expect("a follower")
        .clone();
    until("remove peer", || client.remove_peer(&victim), |_| true).await;
    let peers = until("peers after remove", || client.get_peers(), |_| true).await;
    assert_eq!(peers.len(), 2);
    assert!(!peers.contains(&victim));

    // A snapshot on one named peer.
    let index = until("snapshot", || client.snapshot(&leader), |_| true).await;
    assert!(index > 0);

    // Errors keep their kind: no such group, and an invalid peer id.
    let fast = CliOptions {
        attempts_max: 3,
        ..CliOptions::default()
    };
    let missing = client.for_group(99).with_options(fast);
    let error = missing.get_peers().await.expect_err("no group 99");
    assert_eq!(error.kind(), "NoSuchGroup", "{error}");
    let mut raw = raw_client(&p[0]).await;
    let status = raw
        .add_peer(proto::PeerRequest {
            group: GROUP,
            peer: "not a peer".into(),
            force: false,
        })
        .await
        .expect_err("invalid peer id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get(ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("InvalidArgument")
    );
    // A call must name the process it is for: unnamed, another peer id, or another
    // cluster is refused before it acts, whatever it asks.
    let kind = |status: &tonic::Status| {
        status
            .metadata()
            .get(ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p[0]))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut unnamed = proto::cli_client::CliClient::new(channel);
    let request = proto::GroupRequest { group: GROUP };
    let status = unnamed.snapshot(request).await.expect_err("unnamed");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(kind(&status).as_deref(), Some("WrongStore"), "{status:?}");
    let identity = unnamed
        .identify(proto::IdentifyRequest {})
        .await
        .expect("identify is always answered")
        .into_inner();
    assert_eq!(identity.peer, p[0].as_str());
    let mut other = raw_client_as(&p[0], p[1].as_str(), 0).await;
    let status = other.snapshot(request).await.expect_err("another peer");
    assert!(status.message().contains("meant for peer"), "{status:?}");
    let mut other_cluster = raw_client_as(&p[0], p[0].as_str(), 7).await;
    let status = other_cluster
        .snapshot(request)
        .await
        .expect_err("another cluster");
    assert!(status.message().contains("meant for cluster"), "{status:?}");
    processes.stop().await;
}

/// Leaders of `groups` per process, once every group has one.
async fn leader_counts(client: &CliClient, groups: &[GroupId]) -> BTreeMap<PeerId, usize> {
    let mut counts = BTreeMap::new();
    for group in groups {
        let c = client.for_group(*group);
        let leader = until("leader of a group", || c.get_leader(), |_| true).await;
        *counts.entry(leader).or_insert(0) += 1;
    }
    counts
}

/// Moves every group's leader to `to`.
async fn concentrate(client: &CliClient, groups: &[GroupId], to: &PeerId) {
    for group in groups {
        let c = client.for_group(*group);
        until(
            "concentrate",
            || async {
                let leader = c.get_leader().await?;
                if leader == *to {
                    return Ok(leader);
                }
                c.transfer_leader(Some(to)).await
            },
            |l| l == to,
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while leader_counts(client, groups).await.get(to).copied() != Some(groups.len()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaders not on {to}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_balanced(client: &CliClient, groups: &[GroupId], limit: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let counts = leader_counts(client, groups).await;
        if counts.values().all(|c| *c <= limit) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unbalanced: {counts:?} (limit {limit})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_leaves_no_process_leading_more_than_its_share() {
    let groups: Vec<GroupId> = (10..17).collect();
    let processes = Processes::start("rebalance").await;
    let p = processes.peers.clone();
    for group in &groups {
        for i in 0..3 {
            processes.add_group(i, *group, p.clone()).await;
        }
    }
    let limit = groups.len().div_ceil(p.len());
    let client = CliClient::new(p.clone(), groups[0]).expect("client");

    // Client-driven.
    concentrate(&client, &groups, &p[0]).await;
    let leaders = until("rebalance", || client.rebalance(&groups), |_| true).await;
    assert_eq!(leaders.len(), groups.len());
    assert_balanced(&client, &groups, limit).await;

    // Driven by a server, through the Rebalance RPC.
    concentrate(&client, &groups, &p[1]).await;
    let mut raw = raw_client(&p[2]).await;
    let reply = raw
        .rebalance(proto::RebalanceRequest {
            groups: groups.clone(),
        })
        .await
        .expect("rebalance RPC")
        .into_inner();
    assert_eq!(reply.leaders.len(), groups.len());
    assert_balanced(&client, &groups, limit).await;
    processes.stop().await;
}

/// `ResetPeers` sent to a follower once made a second leader while the real one
/// lived, and a change leaving no live majority went through without a word. Now a reset
/// needs `force` and is refused while the group has a live leader or quorum, and a change
/// to voters of which fewer than a majority are live is refused unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_peers_and_unsafe_changes_are_refused_while_the_group_lives() {
    const GROUP: GroupId = 7;
    let processes = Processes::start("unsafe").await;
    let p = processes.peers.clone();
    for i in 0..3 {
        processes.add_group(i, GROUP, p.clone()).await;
    }
    let client = CliClient::new(p.clone(), GROUP).expect("client");
    let leader = until("get leader", || client.get_leader(), |_| true).await;
    let follower = p
        .iter()
        .find(|x| **x != leader)
        .expect("a follower")
        .clone();

    // Without force: refused, whoever is asked.
    let error = client
        .reset_peers(&follower, std::slice::from_ref(&follower))
        .await
        .expect_err("reset-peers without force");
    assert_eq!(error.kind(), "InvalidArgument", "{error}");
    assert!(error.to_string().contains("force"), "{error}");
    // With force, on a follower of a live leader: refused, and the group keeps its leader.
    let forced = client.clone().with_options(CliOptions {
        force: true,
        ..CliOptions::default()
    });
    let error = forced
        .reset_peers(&follower, std::slice::from_ref(&follower))
        .await
        .expect_err("reset-peers with a live leader");
    assert_eq!(error.kind(), "InvalidArgument", "{error}");
    assert!(error.to_string().contains("reset-peers refused"), "{error}");
    let peers = until("peers", || client.get_peers(), |_| true).await;
    assert_eq!(set(&peers), set(&p));

    // Stop one member: removing another would leave one live voter of two.
    let stopped = p
        .iter()
        .find(|x| **x != leader && **x != follower)
        .expect("third")
        .clone();
    let index = p.iter().position(|x| *x == stopped).expect("index");
    processes.managers[index].shutdown().await;
    // The group may hibernate: its leader's view of its peers sleeps with it, but the
    // runtime's liveness of processes does not. Wait two election timeouts (1 s each).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let strict = client.clone().with_options(CliOptions {
        attempts_max: 2,
        ..CliOptions::default()
    });
    let error = strict
        .remove_peer(&follower)
        .await
        .expect_err("unsafe removal");
    assert_eq!(error.kind(), "InvalidArgument", "{error}");
    assert!(error.to_string().contains("live voters"), "{error}");
    let peers = until("peers", || client.get_peers(), |_| true).await;
    assert_eq!(
        set(&peers),
        set(&p),
        "the refused change changed the voters"
    );
    // Removing the stopped member keeps a live majority: accepted.
    until(
        "remove the stopped member",
        || client.remove_peer(&stopped),
        |_| true,
    )
    .await;
    let peers = until("peers", || client.get_peers(), |_| true).await;
    assert_eq!(peers.len(), 2);
    processes.stop().await;
}
