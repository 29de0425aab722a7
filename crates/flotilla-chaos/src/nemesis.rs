//! The nemeses: faults injected into the running cluster, each undone by its heal.
//!
//! | name               | fault                                                    | heal                       |
//! |--------------------|----------------------------------------------------------|----------------------------|
//! | `partition-halves` | the nodes split in two random halves                     | every packet delivered     |
//! | `partition-ring`   | each node hears a majority, no two the same (a ring)     | "                          |
//! | `partition-bridge` | two halves, one node in both                             | "                          |
//! | `partition-one-way`| a minority (often the leader) unheard by the rest, while it hears them | "            |
//! | `isolate-leader`   | the node leading most regions cut off from the others    | "                          |
//! | `kill`             | `kill -9` of a random subset (sometimes all, sometimes the leader) | restart          |
//! | `pause`            | SIGSTOP of the leader or a random subset                 | SIGCONT                    |
//! | `membership`       | a person's `admin --region R remove-peer ID` of one voter of one region (often its leader) | `admin --region R add-peer ID` back; then the PD converges (it may remove the replica added back, or one it added meanwhile, as extra) |
//! | `drift`            | a fresh store on a new address (empty data dir, `--peers` naming the running stores: it joins by itself), and the store it replaces stopped for good | none by the harness: the PD replaces the stopped store's replicas once it is down for `max-store-down-time`; the heal waits for the PD to converge |
//! | `clock`            | restarts under libfaketime, clock rates within ±`drift` of real time (the bound the leader lease assumes), wall clocks off by minutes; half the time the worst case: the leader slowest, the rest fastest | restart with the real clock |
//! | `disk`             | `kill -9` of one store (only when every store runs and the PD has converged, as for `wipe`), then its log's tail cut or bytes flipped | once the others committed a write in every region, restart; a store that refuses its damaged log (it must name the file and offset) is wiped and started as usual (a new store), and the PD replaces its old id |
//! | `wipe`             | `kill -9` of one store (always alone, only when every store runs and the PD has converged: every region at `max-replicas` voters, no operator in flight), its data dir removed, restarted with its usual command line (same address, same `--peers`, its own address added if it moved): it comes back as a new store | none by the harness, or half the time what `flotilla manager` does when a volume is removed: the old id marked offline (`admin store remove`); the PD replaces the old id's replicas once it is down (offline and silent: at once; otherwise after `max-store-down-time`); the heal waits for the PD to converge |
//! | `readdress`        | a store stopped (SIGTERM or `kill -9`) and restarted on its data dir at another address (same namespace and IP, another port; or back to its first address); no membership change | it runs (and the leaders list it at its new address) |
//! | `split-merge`      | half the time a region split at a random workload key inside it or at its middle key, through its leader (`admin split`), with the PD's `region-split-keys` set to 300, 1,000 or 5,000 and `split-merge-interval` to 1h so that it splits regions by itself meanwhile; the other half two random neighbours merged (`admin merge`, not waited for), with `region-split-keys` at 1,000,000 and `split-merge-interval` at 1s so that the PD merges small regions by itself meanwhile | none: splits and merges are permanent; the final checks read every key through the regions as they ended |
//! | `pd`               | the PD leader (`admin pd status`) faulted: `kill -9`, SIGSTOP, or (with namespaces) cut off from the others; often while an operator the same cycle's drift or wipe will start is pending | restart / SIGCONT / every packet delivered; a new PD leader takes over the operators in flight |
//!
//! The PD repairs (the drift, wipe and disk nemeses add and remove no member themselves):
//! each heal that lost a store waits for the PD to converge (see `pd.rs`: every region at
//! `max-replicas` voters on running stores, none on a store stopped for good, no operator
//! in flight), and so does the final heal. The servers run with `--pd-heartbeat-ms 1000`
//! and a short `--max-store-down-time` (the harness's `--max-store-down-time`, 8 s by
//! default) so that repairs fit in a run; faults the harness undoes itself (kills, pauses,
//! partitions) last at most `--fault-s` (5 s), less than it, so they cause no replacement.
//!
//! Partitions drop packets between servers only: the harness's clients reach every server
//! (an isolated old leader still gets requests — what stale reads need).
//!
//! Owns: choosing faults from the seed, applying them, and healing them completely.
//! Must never: damage or wipe more than one node's disk at a time, wipe a store while
//! another is down or the PD has not converged (a region must keep a majority of its
//! voters: the wiped store's old id never answers again), restart a damaged node before
//! the others hold every committed entry (Raft tolerates the loss of a minority's state,
//! not of a committed entry's last copies), add or remove members to repair what the PD
//! must repair, or name a store by its address where it means the store that used to be
//! there (a wiped store comes back at its old address with a new id).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use flotilla_kv::client::KvClient;

use crate::cluster::{read_store_id, Cluster, LeaderView, Skew};
use crate::net::Network;
use crate::rng::Rng;
use crate::workload::Shared;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Nemesis {
    /// Two random halves.
    PartitionHalves,
    /// Majorities ring.
    PartitionRing,
    /// Two halves and a bridge node.
    PartitionBridge,
    /// A minority unheard by the rest.
    PartitionOneWay,
    /// The leader alone.
    IsolateLeader,
    /// `kill -9` and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// A person removes a voter of a region, then adds it back.
    Membership,
    /// A fresh store on a new address; the one it replaces stopped for good.
    Drift,
    /// Clock rate and wall-clock skew.
    Clock,
    /// Log damage on a stopped member.
    Disk,
    /// A store's data dir lost: it comes back as a new store; the PD replaces its old id.
    Wipe,
    /// A member restarted on its data dir at another address.
    Readdress,
    /// The PD leader killed, paused or isolated.
    Pd,
    /// A region split by hand and the PD splitting regions by key count, or two neighbours
    /// merged by hand and the PD merging small regions.
    SplitMerge,
}

impl Nemesis {
    /// Whether the fault stops server processes and starts them again (a restarted
    /// replica's lease clocks stand still until a lease's next entry: `crate::leases`).
    pub fn restarts_servers(self) -> bool {
        matches!(
            self,
            Nemesis::Kill
                | Nemesis::Drift
                | Nemesis::Clock
                | Nemesis::Disk
                | Nemesis::Wipe
                | Nemesis::Readdress
                | Nemesis::Pd
        )
    }

    /// Every nemesis, in the order of the table above.
    pub const ALL: [Nemesis; 15] = [
        Nemesis::PartitionHalves,
        Nemesis::PartitionRing,
        Nemesis::PartitionBridge,
        Nemesis::PartitionOneWay,
        Nemesis::IsolateLeader,
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Membership,
        Nemesis::Drift,
        Nemesis::Clock,
        Nemesis::Disk,
        Nemesis::Wipe,
        Nemesis::Readdress,
        Nemesis::Pd,
        Nemesis::SplitMerge,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::PartitionHalves => "partition-halves",
            Nemesis::PartitionRing => "partition-ring",
            Nemesis::PartitionBridge => "partition-bridge",
            Nemesis::PartitionOneWay => "partition-one-way",
            Nemesis::IsolateLeader => "isolate-leader",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Membership => "membership",
            Nemesis::Drift => "drift",
            Nemesis::Clock => "clock",
            Nemesis::Disk => "disk",
            Nemesis::Wipe => "wipe",
            Nemesis::Readdress => "readdress",
            Nemesis::Pd => "pd",
            Nemesis::SplitMerge => "split-merge",
        }
    }

    /// Whether it needs network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Nemesis::PartitionHalves
                | Nemesis::PartitionRing
                | Nemesis::PartitionBridge
                | Nemesis::PartitionOneWay
                | Nemesis::IsolateLeader
        )
    }

    /// Whether it always runs alone: disk damage and wipes lose a member's state, which is
    /// safe only while every other member runs with its own.
    pub fn runs_alone(self) -> bool {
        matches!(self, Nemesis::Disk | Nemesis::Wipe)
    }

    /// Parses `NAME[,NAME]` (or `all`, or `none`).
    pub fn parse_list(text: &str) -> Result<Vec<Nemesis>, String> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "all" => out.extend(Nemesis::ALL),
                "none" => {}
                "partition" | "partitions" => {
                    out.extend(Nemesis::ALL.into_iter().filter(|n| n.needs_network()))
                }
                _ => match Nemesis::ALL.into_iter().find(|n| n.name() == name) {
                    Some(n) => out.push(n),
                    None => {
                        let names: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
                        return Err(format!(
                            "unknown nemesis {name:?}: expected {}, partitions, all or none",
                            names.join(", ")
                        ));
                    }
                },
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A list as `a,b,c` (`none` when empty).
    pub fn list_name(list: &[Nemesis]) -> String {
        if list.is_empty() {
            return "none".into();
        }
        list.iter().map(|n| n.name()).collect::<Vec<_>>().join(",")
    }
}

/// How long a heal waits for the PD to converge after a store was lost or a person
/// changed membership, beyond `max-store-down-time`: one replacement per region (a learner
/// added, caught up by snapshot, promoted, the old voter removed) under the workload.
const HEAL_CONVERGE_AFTER_DOWN: Duration = Duration::from_secs(50);

/// Faults in force, and what their heal must undo.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: BTreeSet<(usize, usize)>,
    killed: Vec<usize>,
    paused: Vec<usize>,
    /// (region, node) a person removed from that region.
    removed: Vec<(u64, usize)>,
    /// (new node, node it replaces, stopped for good)
    drift: Option<(usize, usize)>,
    skewed: Vec<usize>,
    damaged: Option<usize>,
    wiped: Option<Wiped>,
    /// Nodes restarted at another address.
    moved: Vec<usize>,
    /// What was done, for the journal.
    pub description: Vec<String>,
}

/// A wipe to finish: the node, the store id its data dir had, and the one it has now.
#[derive(Debug)]
struct Wiped {
    victim: usize,
    old_id: String,
    new_id: Option<String>,
}

/// Settings of the nemeses.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// Largest relative clock-rate error the clock nemesis injects.
    pub clock_drift_max: f64,
}

/// Chooses which of `selected` to apply together this cycle: a random non-empty subset,
/// except that disk damage and wipes always run alone (their safety argument needs
/// everything else healthy) and membership and drift never run together (both change
/// which stores hold the regions).
pub fn choose(selected: &[Nemesis], rng: &mut Rng) -> Vec<Nemesis> {
    let mut kinds = rng.subset(selected);
    let alone: Vec<Nemesis> = kinds.iter().copied().filter(|k| k.runs_alone()).collect();
    if !alone.is_empty() {
        if kinds.len() > alone.len() && rng.chance(0.5) {
            kinds.retain(|k| !k.runs_alone());
        } else if alone.len() == 1 {
            return alone;
        } else {
            return vec![alone[rng.index(alone.len())]];
        }
    }
    if kinds.contains(&Nemesis::Membership) && kinds.contains(&Nemesis::Drift) {
        let drop = if rng.chance(0.5) {
            Nemesis::Membership
        } else {
            Nemesis::Drift
        };
        kinds.retain(|k| *k != drop);
    }
    kinds
}

fn others(all: &[usize], out: &[usize]) -> Vec<usize> {
    all.iter().copied().filter(|i| !out.contains(i)).collect()
}

/// Blocks every packet between `a` and `b`, both ways.
fn cut(blocked: &mut BTreeSet<(usize, usize)>, a: &[usize], b: &[usize]) {
    for &x in a {
        for &y in b {
            blocked.insert((x, y));
            blocked.insert((y, x));
        }
    }
}

/// The partitions' grids (node indexes; (from, to) = `to` drops what `from` sends).
async fn partition(
    kind: Nemesis,
    cluster: &Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let mut nodes = cluster.active();
    rng.shuffle(&mut nodes);
    let n = nodes.len();
    if n < 2 {
        bail!("{} needs at least two nodes", kind.name());
    }
    let blocked = &mut faults.blocked;
    let text = match kind {
        Nemesis::PartitionHalves => {
            let (a, b) = nodes.split_at(n / 2);
            cut(blocked, a, b);
            format!("halves {} | {}", cluster.labels(a), cluster.labels(b))
        }
        Nemesis::PartitionRing => {
            // Node at ring position i hears the majority window i, i+1, ..., i+m-1.
            let m = n / 2 + 1;
            let mut views = Vec::new();
            for i in 0..n {
                let window: Vec<usize> = (0..m).map(|k| nodes[(i + k) % n]).collect();
                for &from in &nodes {
                    if !window.contains(&from) {
                        blocked.insert((from, nodes[i]));
                    }
                }
                views.push(format!(
                    "{} hears {}",
                    cluster.nodes[nodes[i]].name,
                    cluster.labels(&window)
                ));
            }
            format!("majorities ring: {}", views.join("; "))
        }
        Nemesis::PartitionBridge => {
            let bridge = nodes[0];
            let rest = &nodes[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            cut(blocked, a, b);
            format!(
                "bridge {} between {} | {}",
                cluster.nodes[bridge].name,
                cluster.labels(a),
                cluster.labels(b)
            )
        }
        Nemesis::PartitionOneWay => {
            let leader = cluster.leader().await;
            let minority: Vec<usize> = match leader {
                Some(l) if rng.chance(0.5) => vec![l],
                _ => {
                    let size = 1 + rng.index(((n - 1) / 2).max(1));
                    nodes[..size.min(n - 1)].to_vec()
                }
            };
            let rest = others(&nodes, &minority);
            for &from in &minority {
                for &to in &rest {
                    blocked.insert((from, to));
                }
            }
            format!(
                "one-way: {} unheard by {} (it still hears them)",
                cluster.labels(&minority),
                cluster.labels(&rest)
            )
        }
        Nemesis::IsolateLeader => {
            let leader = cluster
                .leader()
                .await
                .ok_or_else(|| anyhow!("no leader to isolate"))?;
            let rest = others(&nodes, &[leader]);
            cut(blocked, &[leader], &rest);
            format!("leader {} isolated", cluster.label(leader))
        }
        _ => unreachable!("partition() called for {kind:?}"),
    };
    faults.description.push(text);
    Ok(())
}

/// Applies `kinds` to the cluster. Faults that could not be applied are noted and skipped.
pub async fn apply(
    kinds: &[Nemesis],
    cluster: &mut Cluster,
    rng: &mut Rng,
    config: &NemesisConfig,
) -> Faults {
    let mut faults = Faults::default();
    // Membership changes first, while the cluster is healthy enough to make them; then the
    // clock, whose restarts may move leadership (isolating the leader should act on the
    // leader it leaves); then partitions, kills and pauses.
    // A move comes before kills and pauses, which may then hit the store at its new address.
    let rank = |k: &Nemesis| match k {
        Nemesis::Membership | Nemesis::Drift | Nemesis::Wipe | Nemesis::SplitMerge => 0,
        Nemesis::Clock => 1,
        Nemesis::Readdress => 2,
        // The PD leader after a drift stopped a store (the PD then has an operator to
        // start, or one in flight, when its leader fails), and before kills and pauses
        // (which may leave its group without a majority to answer who leads it).
        Nemesis::Pd => 3,
        _ => 4,
    };
    let mut ordered = kinds.to_vec();
    ordered.sort_by_key(rank);
    for kind in ordered {
        let result = apply_one(kind, cluster, rng, config, &mut faults).await;
        if let Err(why) = result {
            faults
                .description
                .push(format!("{} not applied: {why:#}", kind.name()));
        }
    }
    if !faults.blocked.is_empty() {
        if let Err(why) = set_blocked(cluster, &faults.blocked).await {
            faults
                .description
                .push(format!("partition not applied: {why:#}"));
        }
    }
    faults
}

async fn set_blocked(cluster: &Cluster, blocked: &BTreeSet<(usize, usize)>) -> anyhow::Result<()> {
    let hosts: Vec<(usize, &crate::net::Host)> = cluster
        .active()
        .into_iter()
        .map(|i| (i, &cluster.nodes[i].host))
        .collect();
    cluster.network.set_blocked(&hosts, blocked).await
}

async fn apply_one(
    kind: Nemesis,
    cluster: &mut Cluster,
    rng: &mut Rng,
    config: &NemesisConfig,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    match kind {
        k if k.needs_network() => partition(k, cluster, rng, faults).await?,
        Nemesis::Kill => {
            let up: Vec<usize> = cluster
                .active()
                .into_iter()
                .filter(|&i| cluster.nodes[i].is_up())
                .collect();
            let leader = cluster.leader().await;
            let victims = match leader {
                Some(l) if rng.chance(0.3) => vec![l],
                _ => rng.subset(&up),
            };
            for &v in &victims {
                cluster.kill(v).await;
            }
            faults
                .description
                .push(format!("kill -9 {}", cluster.labels(&victims)));
            faults.killed.extend(victims);
        }
        Nemesis::Pause => {
            let up: Vec<usize> = cluster
                .responsive()
                .into_iter()
                .filter(|i| !cluster.nodes[*i].retired)
                .collect();
            let leader = cluster.leader().await;
            let victims = match leader {
                Some(l) if rng.chance(0.5) => vec![l],
                _ => rng.subset(&up),
            };
            if victims.is_empty() {
                bail!("no running store to pause");
            }
            for &v in &victims {
                cluster.pause(v);
            }
            faults
                .description
                .push(format!("SIGSTOP {}", cluster.labels(&victims)));
            faults.paused.extend(victims);
        }
        Nemesis::Membership => apply_membership(cluster, rng, faults).await?,
        Nemesis::Drift => apply_drift(cluster, rng, faults).await?,
        Nemesis::Clock => apply_clock(cluster, rng, config, faults).await?,
        Nemesis::Disk => {
            safe_to_lose_a_member(cluster).await?;
            let victim = cluster.members[rng.index(cluster.members.len())];
            cluster.kill(victim).await;
            faults.damaged = Some(victim);
            let what = cluster.damage_log(victim, rng)?;
            faults
                .description
                .push(format!("kill -9 {}, then {what}", cluster.label(victim)));
        }
        Nemesis::Wipe => apply_wipe(cluster, rng, faults).await?,
        Nemesis::Readdress => apply_readdress(cluster, rng, faults).await?,
        Nemesis::Pd => apply_pd(cluster, rng, faults).await?,
        Nemesis::SplitMerge if rng.chance(0.5) => apply_merge(cluster, rng, faults).await?,
        Nemesis::SplitMerge => apply_split(cluster, rng, faults).await?,
        _ => unreachable!("{kind:?} has no branch"),
    }
    Ok(())
}

/// How `admin` is to name the store of node `index`: its store id (an address names
/// whichever store answers there now, or was last there), else its address.
fn store_name(cluster: &Cluster, index: usize) -> String {
    cluster.nodes[index]
        .store_id
        .clone()
        .unwrap_or_else(|| cluster.nodes[index].address().to_string())
}

/// Whether one store may lose its state (disk damage, a wipe) now: at least three stores,
/// every one running, and the PD converged (every region at `max-replicas` voters on
/// running stores, no operator in flight: an earlier replacement finished). A region then
/// keeps a majority of its voters, and every committed entry a copy on one of them.
async fn safe_to_lose_a_member(cluster: &Cluster) -> anyhow::Result<()> {
    if cluster.members.len() < 3 {
        bail!(
            "{} stores: with one lost the regions would keep no majority of their voters",
            cluster.members.len()
        );
    }
    if let Some(&down) = cluster
        .members
        .iter()
        .find(|&&m| !cluster.nodes[m].is_up() || cluster.nodes[m].paused)
    {
        bail!(
            "{} is not running: no store loses its state while another is down",
            cluster.label(down)
        );
    }
    let problems = crate::pd::problems(cluster).await;
    if !problems.is_empty() {
        bail!(
            "the PD has not converged (an earlier change is unfinished): {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// A person's membership command: `admin --region R remove-peer ID` of one voter of one
/// region (half the time the region's leader). The heal adds it back the same way.
async fn apply_membership(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let leaders = cluster.leaders().await;
    let candidates: Vec<(u64, &LeaderView)> = leaders
        .iter()
        .filter(|(_, view)| view.peer_ids.len() >= 2)
        .map(|(region, view)| (*region, view))
        .collect();
    if candidates.is_empty() {
        bail!("no region with a leader and two voters");
    }
    let (region, view) = candidates[rng.index(candidates.len())];
    let leader_id = cluster.nodes[view.index].store_id.clone();
    let id = match leader_id {
        Some(l) if rng.chance(0.5) && view.peer_ids.contains(&l) => l,
        _ => view.peer_ids[rng.index(view.peer_ids.len())].clone(),
    };
    let node = cluster
        .node_of_id(&id)
        .ok_or_else(|| anyhow!("region {region}'s voter {id} is none of the harness's stores"))?;
    let region_text = region.to_string();
    cluster
        .admin(&["--region", &region_text, "remove-peer", &id])
        .await?;
    faults.description.push(format!(
        "admin --region {region} remove-peer {}",
        cluster.id_label(&id)
    ));
    faults.removed.push((region, node));
    Ok(())
}

/// Sets the PD's `key` to `value`, noting it (or why not) in the faults.
async fn pd_set(cluster: &mut Cluster, faults: &mut Faults, key: &str, value: &str) {
    match cluster.admin(&["pd", "config-set", key, value]).await {
        Ok(_) => faults.description.push(format!("PD {key} {value}")),
        Err(why) => faults
            .description
            .push(format!("PD {key} not set: {why:#}")),
    }
}

/// Merges two random neighbouring regions through the PD (`admin merge`, not waited for:
/// the operator runs on under the next faults), with splits by key count off and
/// `split-merge-interval` at 1 s, so the PD merges small regions by itself too.
async fn apply_merge(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    pd_set(cluster, faults, "region-split-keys", "1000000").await;
    pd_set(cluster, faults, "split-merge-interval", "1s").await;
    let leaders = cluster.leaders().await;
    let pairs: Vec<(u64, u64)> = leaders
        .iter()
        .flat_map(|(a, va)| {
            leaders
                .iter()
                .filter(move |(b, vb)| a != *b && !va.end.is_empty() && va.end == vb.start)
                .map(move |(b, _)| (*a, *b))
        })
        .collect();
    if pairs.is_empty() {
        faults
            .description
            .push("no two neighbouring regions to merge".to_string());
        return Ok(());
    }
    let (left, right) = pairs[rng.index(pairs.len())];
    // Either way round: the left one into the right one, or the right one into the left.
    let (source, target) = if rng.chance(0.5) {
        (left, right)
    } else {
        (right, left)
    };
    let (source_text, target_text) = (source.to_string(), target.to_string());
    match cluster
        .admin(&[
            "--region",
            &source_text,
            "merge",
            "--into",
            &target_text,
            "--wait-ms",
            "0",
        ])
        .await
    {
        Ok(answer) => faults.description.push(format!(
            "region {source} merging into region {target}: operator {}",
            answer["operator"]
        )),
        // Refused (an operator in flight, no leader) or unanswered: checked all the same.
        Err(why) => faults.description.push(format!(
            "region {source} into region {target} not merged: {why:#}"
        )),
    }
    Ok(())
}

/// Splits a random region through its leader, at a random workload key inside it or (half
/// the time, or when none of the keys tried falls inside) at its middle key, and sets the
/// PD's `region-split-keys` to a value chosen anew, so the PD splits regions by itself too.
async fn apply_split(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let threshold = [300u64, 1000, 5000][rng.index(3)].to_string();
    pd_set(cluster, faults, "region-split-keys", &threshold).await;
    pd_set(cluster, faults, "split-merge-interval", "1h").await;
    let leaders = cluster.leaders().await;
    if leaders.is_empty() {
        bail!("no region with a leader");
    }
    let ids: Vec<u64> = leaders.keys().copied().collect();
    let region = ids[rng.index(ids.len())];
    let view = &leaders[&region];
    let inside = |key: &[u8]| key > &view.start[..] && (view.end.is_empty() || key < &view.end[..]);
    let key = if rng.chance(0.5) {
        (0..32)
            .map(|_| crate::workload::register_key(rng.below(4096)))
            .find(|k| inside(k))
            .unwrap_or_default()
    } else {
        bytes::Bytes::new()
    };
    let at = if key.is_empty() {
        "its middle".to_string()
    } else {
        format!("{:?}", key.escape_ascii().to_string())
    };
    let leader = view.index;
    match cluster.split_region(leader, region, key).await {
        Ok((child, start)) => faults.description.push(format!(
            "region {region} split at {at} by {}: child {child} from {:?}",
            cluster.label(leader),
            start.escape_ascii().to_string()
        )),
        // Refused or unanswered: what the workload saw is checked all the same.
        Err(why) => faults.description.push(format!(
            "region {region} split at {at} by {}: {why:#}",
            cluster.label(leader)
        )),
    }
    Ok(())
}

/// Starts a fresh store on a new address (empty data dir; its `--peers` name the running
/// stores and itself, so it joins the cluster by itself) and stops the store it replaces
/// for good. No membership change: the PD replaces the stopped store's replicas once it
/// is down for `max-store-down-time`.
async fn apply_drift(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let running: Vec<usize> = cluster
        .members
        .iter()
        .copied()
        .filter(|&i| cluster.nodes[i].is_up())
        .collect();
    if running.len() < 2 {
        bail!("fewer than two running stores: none to join through");
    }
    let new = cluster.add_node(None).await?;
    let mut peers: Vec<String> = running
        .iter()
        .map(|&i| cluster.nodes[i].address().to_string())
        .collect();
    peers.push(cluster.nodes[new].address().to_string());
    cluster.nodes[new].bootstrap = Some(peers.join(","));
    if let Err(failure) = cluster
        .start(new, "drift: a fresh store on a new address")
        .await
    {
        cluster.nodes[new].retired = true;
        bail!(
            "the fresh store did not start ({}): {}",
            failure.status,
            failure.output.trim()
        );
    }
    // A store holding a region's voter when there is one: the PD then has replicas to
    // replace (a store the PD left empty would test nothing).
    let voters: BTreeSet<String> = cluster
        .leaders()
        .await
        .values()
        .flat_map(|view| view.peer_ids.iter().cloned())
        .collect();
    let holding: Vec<usize> = running
        .iter()
        .copied()
        .filter(|&i| {
            cluster.nodes[i]
                .store_id
                .as_ref()
                .is_some_and(|id| voters.contains(id))
        })
        .collect();
    let pool = if holding.is_empty() {
        &running
    } else {
        &holding
    };
    let old = pool[rng.index(pool.len())];
    cluster.members.push(new);
    let old_id = store_name(cluster, old);
    let old_label = cluster.label(old);
    retire_node(old, cluster).await;
    cluster.gone_ids.insert(old_id.clone());
    faults.drift = Some((new, old));
    faults.description.push(format!(
        "started the fresh store {} (store {}) to replace {old_label} (store {old_id}), stopped for good",
        cluster.label(new),
        cluster.nodes[new].store_id.as_deref().unwrap_or("?"),
    ));
    Ok(())
}

/// Faults the PD leader: `kill -9` or SIGSTOP (heal: restart / SIGCONT), or, with
/// network namespaces, cuts it off from the other stores (heal: every packet delivered).
///
/// After a drift of the same cycle stopped a store, it first waits (up to the PD's down
/// time and 5 s more) for the PD to start the replacement, so that the new leader must
/// take over an operator in flight.
async fn apply_pd(cluster: &mut Cluster, rng: &mut Rng, faults: &mut Faults) -> anyhow::Result<()> {
    let mut during = String::new();
    // A drifted or wiped store in this cycle leaves an id the PD replaces once it is down
    // for `max-store-down-time`: wait for that operator, so the PD leader dies with work
    // in flight (the next leader must finish or clean it up).
    if faults.drift.is_some() || faults.wiped.is_some() {
        let waited = Instant::now();
        let within = cluster.config.max_store_down_time + Duration::from_secs(5);
        during = format!(", no operator in flight after {} s", within.as_secs());
        while waited.elapsed() < within {
            if let Ok(view) = crate::pd::status(cluster).await {
                if let Some(op) = view.operators.first() {
                    during = format!(
                        ", {} ms after the drift or wipe, while operator {op} is in flight",
                        waited.elapsed().as_millis()
                    );
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (leader, id) = crate::pd::leader_node(cluster).await?;
    if !cluster.nodes[leader].is_up() || cluster.nodes[leader].paused {
        bail!(
            "the PD leader {} is already down (another nemesis of this cycle)",
            cluster.label(leader)
        );
    }
    let isolate = cluster.network.has_namespaces();
    let choice = rng.below(if isolate { 3 } else { 2 });
    let what = match choice {
        0 => {
            cluster.kill(leader).await;
            faults.killed.push(leader);
            "kill -9"
        }
        1 => {
            cluster.pause(leader);
            faults.paused.push(leader);
            "SIGSTOP"
        }
        _ => {
            let rest = others(&cluster.active(), &[leader]);
            cut(&mut faults.blocked, &[leader], &rest);
            "isolated"
        }
    };
    faults.description.push(format!(
        "{what} {} (the PD leader, store {id}){during}",
        cluster.nodes[leader].name
    ));
    Ok(())
}

/// Kills one store, removes its data dir and starts it again with its usual command line:
/// it comes back as a new store (a new id) that no region counts on. No membership
/// change: the PD replaces the old id's replicas once it is down, after
/// `max-store-down-time`, or at once when (half the time) the harness marks it offline as
/// `flotilla manager` does when a store's volume is removed.
///
/// Only when [`safe_to_lose_a_member`] says so.
async fn apply_wipe(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    safe_to_lose_a_member(cluster).await?;
    let leader = cluster
        .leader()
        .await
        .filter(|l| cluster.members.contains(l));
    let victim = match leader {
        Some(l) if rng.chance(0.3) => l,
        _ => cluster.members[rng.index(cluster.members.len())],
    };
    let old_id = cluster.nodes[victim]
        .store_id
        .clone()
        .or_else(|| read_store_id(&cluster.nodes[victim].data_dir))
        .ok_or_else(|| anyhow!("{}'s store id is unknown", cluster.label(victim)))?;
    cluster.kill(victim).await;
    cluster.gone_ids.insert(old_id.clone());
    let mut text = format!(
        "kill -9 {} (store {old_id}), data dir removed",
        cluster.label(victim)
    );
    if let Err(why) = cluster.wipe(victim) {
        faults.description.push(text);
        bail!("wipe failed: {why:#}");
    }
    if let Some(note) = cluster.fit_bootstrap_for_empty_start(victim) {
        text.push_str(&format!("; {note}"));
    }
    let started = cluster
        .start(victim, "wipe nemesis: empty data dir, usual command line")
        .await;
    faults.wiped = Some(Wiped {
        victim,
        old_id: old_id.clone(),
        new_id: cluster.nodes[victim].store_id.clone(),
    });
    if let Err(failure) = started {
        faults.description.push(text);
        cluster
            .unexpected_exits
            .push(crate::cluster::UnexpectedExit {
                name: cluster.nodes[victim].name.clone(),
                status: failure.status.clone(),
                log_tail: failure.output.clone(),
            });
        bail!(
            "FINDING: {} did not start on an empty data dir ({}): {}",
            cluster.label(victim),
            failure.status,
            failure.output.trim()
        );
    }
    let new_id = match cluster.nodes[victim].store_id.clone() {
        Some(id) if id == old_id => {
            let name = cluster.nodes[victim].name.clone();
            cluster
                .unexpected_exits
                .push(crate::cluster::UnexpectedExit {
                    name,
                    status: format!("came back from a wipe with its old store id {id}"),
                    log_tail: String::new(),
                });
            faults.description.push(text);
            bail!("FINDING: the wiped store came back with its old store id {id}");
        }
        Some(id) => id,
        None => {
            faults.description.push(text);
            bail!("the restarted store wrote no store id in its store.meta");
        }
    };
    text.push_str(&format!("; restarted as the new store {new_id}"));
    // Half the time the harness says what `flotilla manager` says when a store's volume is
    // removed: its data is gone for good (marked offline), so the PD replaces it at once
    // instead of after `max-store-down-time`.
    if rng.chance(0.5) {
        // As the manager, asked again while the PD has no leader (the wiped store may have
        // been the PD's leader).
        let asked = Instant::now();
        let mut answer = cluster.admin(&["store", "remove", &old_id]).await;
        while answer.is_err() && asked.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            answer = cluster.admin(&["store", "remove", &old_id]).await;
        }
        match answer {
            Ok(_) => text.push_str(&format!(
                "; the old store {old_id} marked offline (`admin store remove`, as the \
                 manager does when a volume is removed)"
            )),
            Err(why) => text.push_str(&format!(
                "; marking the old store {old_id} offline failed ({why:#}); the PD replaces \
                 it after max-store-down-time"
            )),
        }
    }
    // Through a running store its --peers name, it joins the cluster by itself (and the
    // PD places replicas on it); otherwise it waits.
    if cluster.bootstrap_names_a_running_store(victim) {
        let asked = Instant::now();
        let mut joined = None;
        while asked.elapsed() < Duration::from_secs(5) {
            if let Some(c) = cluster.cluster_of(victim).await.filter(|c| *c != 0) {
                joined = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text.push_str(&match joined {
            Some(c) => format!(
                ", which joined cluster {c:016x} after {} ms",
                asked.elapsed().as_millis()
            ),
            None => ", which had not joined the cluster after 5 s".into(),
        });
    } else {
        text.push_str(&format!(
            ", which cannot join by itself ({})",
            if cluster.nodes[victim].bootstrap.is_some() {
                "its --peers name no running store"
            } else {
                "started without --peers"
            }
        ));
    }
    text.push_str("; the PD is to replace the old id; ");
    text.push_str(&crate::pd::register_or_remove_old(cluster, &new_id, &old_id).await);
    faults.description.push(text);
    Ok(())
}

/// Stops a running member (SIGTERM or `kill -9`) and starts it on its data dir at another
/// address (its namespace and IP stay: partitions still apply to it). Nothing else: no
/// membership change; the others learn its address from it. The workload's clients keep
/// at least one endpoint that answers (their list is fixed at the start), and find the
/// moved store through the stores' answers.
async fn apply_readdress(
    cluster: &mut Cluster,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let candidates: Vec<usize> = cluster
        .members
        .iter()
        .copied()
        .filter(|&i| cluster.nodes[i].is_up() && !cluster.nodes[i].paused)
        .collect();
    let mut eligible = Vec::new();
    for &c in &candidates {
        let moved = Network::moved(&cluster.nodes[c].host, &cluster.nodes[c].home_address)?;
        let live_endpoint = cluster
            .active()
            .into_iter()
            .filter(|&i| cluster.nodes[i].is_up())
            .any(|i| {
                let at = if i == c {
                    moved.address.as_str()
                } else {
                    cluster.nodes[i].address()
                };
                cluster.client_endpoints.iter().any(|e| e == at)
            });
        if live_endpoint {
            eligible.push((c, moved));
        }
    }
    if eligible.is_empty() {
        bail!("no running member can move without leaving the clients' endpoints all dead");
    }
    let (victim, moved) = eligible.swap_remove(rng.index(eligible.len()));
    let id_before = cluster.nodes[victim].store_id.clone();
    let from = cluster.nodes[victim].address().to_string();
    let how = if rng.chance(0.5) {
        cluster.kill(victim).await;
        "kill -9"
    } else {
        cluster.stop(victim).await;
        "SIGTERM"
    };
    let to = moved.address.clone();
    cluster.nodes[victim].host = moved;
    let why = format!("readdress nemesis: moved from {from}, same data dir");
    if let Err(failure) = cluster.start(victim, &why).await {
        // Back where it was, so the run goes on; a store that cannot start on its data dir
        // at another address is a finding (unless the harness picked a port in use).
        cluster.nodes[victim].host.address = from.clone();
        let back = cluster
            .start(victim, "readdress nemesis: back at its old address")
            .await;
        let port_taken = failure.output.contains("in use");
        if !port_taken {
            cluster
                .unexpected_exits
                .push(crate::cluster::UnexpectedExit {
                    name: cluster.nodes[victim].name.clone(),
                    status: format!("did not start at {to}: {}", failure.status),
                    log_tail: failure.output.clone(),
                });
        }
        bail!(
            "{}{} did not start at {to} ({}): {}; back at {from}: {}",
            if port_taken { "" } else { "FINDING: " },
            cluster.nodes[victim].name,
            failure.status,
            failure.output.trim(),
            back.map_or_else(|f| f.status, |_| "ok".into())
        );
    }
    let id_after = cluster.nodes[victim].store_id.clone();
    if id_after != id_before {
        let name = cluster.nodes[victim].name.clone();
        cluster
            .unexpected_exits
            .push(crate::cluster::UnexpectedExit {
                name,
                status: format!(
                    "its store id changed from {id_before:?} to {id_after:?} when it moved"
                ),
                log_tail: String::new(),
            });
    }
    faults.moved.push(victim);
    faults.description.push(format!(
        "{} ({how}) moved from {from} to {to} with its data dir (store {}), no membership change",
        cluster.nodes[victim].name,
        id_after.as_deref().unwrap_or("?")
    ));
    Ok(())
}

/// Restarts members under libfaketime. Half the time a random subset at random rates;
/// half the time the worst case the lease bound allows: one member's clock runs slowest,
/// every other's fastest, and leadership is handed to the slow one (its lease then lasts
/// longest in real time while the others' election timers run out soonest — combined with
/// `isolate-leader`, exactly the case the bound must cover).
async fn apply_clock(
    cluster: &mut Cluster,
    rng: &mut Rng,
    config: &NemesisConfig,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let up: Vec<usize> = cluster
        .members
        .iter()
        .copied()
        .filter(|&i| cluster.nodes[i].is_up())
        .collect();
    let drift = config.clock_drift_max;
    let slow = (rng.chance(0.5) && up.len() == cluster.members.len() && !up.is_empty())
        .then(|| up[rng.index(up.len())]);
    let targets = if slow.is_some() {
        up.clone()
    } else {
        rng.subset(&up)
    };
    for &t in &targets {
        let rate = match slow {
            Some(s) if s == t => 1.0 - drift,
            Some(_) => 1.0 + drift,
            None => 1.0 + (rng.unit() * 2.0 - 1.0) * drift,
        };
        let offset_s = rng.below(601) as i64 - 300;
        cluster.stop(t).await;
        cluster.nodes[t].skew = Some(Skew { rate, offset_s });
        faults.skewed.push(t);
        if let Err(failure) = cluster.start(t, "clock nemesis: skewed clock").await {
            bail!(
                "{} did not restart under libfaketime ({}): {}",
                cluster.label(t),
                failure.status,
                failure.output.trim()
            );
        }
        faults.description.push(format!(
            "{} restarted with clock rate {rate:.4} and wall clock {offset_s:+} s",
            cluster.nodes[t].name
        ));
        // One restart at a time: the next waits until every region has a leader again.
        let _ = cluster.wait_for_leaders(Duration::from_secs(15)).await;
    }
    if let Some(s) = slow {
        let address = cluster.nodes[s].address().to_string();
        match cluster.admin(&["transfer-leader", &address]).await {
            Ok(_) => faults.description.push(format!(
                "leadership handed to the slow {}",
                cluster.nodes[s].name
            )),
            Err(why) => faults.description.push(format!(
                "transfer to the slow {} failed: {why:#}",
                cluster.nodes[s].name
            )),
        }
    }
    Ok(())
}

/// Undoes `faults`, then makes sure every active node runs (one that died on its own is
/// noted as a finding and restarted). Returns notes on what the heal did.
pub async fn heal(
    faults: Faults,
    cluster: &mut Cluster,
    shared: &Arc<Shared>,
    probe_client: &KvClient,
) -> Vec<String> {
    let mut notes = Vec::new();
    for &p in &faults.paused {
        cluster.resume(p);
    }
    if !faults.blocked.is_empty() {
        if let Err(why) = set_blocked(cluster, &BTreeSet::new()).await {
            notes.push(format!("FAILED to remove the partition: {why:#}"));
        }
    }
    if let Some(victim) = faults.damaged {
        notes.extend(heal_disk(victim, cluster, shared, probe_client).await);
    }
    let wiped = faults.wiped.is_some();
    if let Some(wiped) = faults.wiped {
        notes.extend(finish_wipe(wiped, cluster).await);
    }
    for &k in &faults.killed {
        if let Err(failure) = cluster.start(k, "kill nemesis: restart").await {
            notes.push(format!(
                "FINDING: {} did not restart ({}): {}",
                cluster.label(k),
                failure.status,
                failure.output.trim()
            ));
        }
    }
    for &t in &faults.skewed {
        cluster.stop(t).await;
        cluster.nodes[t].skew = None;
        if let Err(failure) = cluster.start(t, "clock nemesis: real clock again").await {
            notes.push(format!(
                "FINDING: {} did not restart ({}): {}",
                cluster.label(t),
                failure.status,
                failure.output.trim()
            ));
        }
    }
    let mut wait_for_pd = faults.drift.is_some() || !faults.removed.is_empty();
    for &(region, r) in &faults.removed {
        // As a person would: back by store id, in the region it was removed from (the PD
        // may have added a replica meanwhile; it removes whichever is extra).
        let Some(id) = cluster.nodes[r].store_id.clone() else {
            continue;
        };
        let region_text = region.to_string();
        let added = cluster
            .admin(&["--region", &region_text, "add-peer", &id])
            .await;
        notes.push(format!(
            "admin --region {region} add-peer {}: {}",
            cluster.id_label(&id),
            added.map_or_else(|e| format!("{e:#}"), |_| "ok".into())
        ));
    }
    if let Some((new, old)) = faults.drift {
        notes.push(format!(
            "drift: {} stopped for good, {} runs; the PD replaces the first's replicas",
            cluster.nodes[old].name,
            cluster.label(new)
        ));
    }
    wait_for_pd |= wiped || faults.damaged.is_some();
    ensure_running(cluster, &mut notes).await;
    if wait_for_pd {
        notes.push(
            match crate::pd::wait_converged(
                cluster,
                cluster.config.max_store_down_time + HEAL_CONVERGE_AFTER_DOWN,
            )
            .await
            {
                Ok(took) => format!("the PD converged after {} ms", took.as_millis()),
                Err(why) => format!("{why} (the final heal waits again)"),
            },
        );
    }
    for &m in &faults.moved {
        if let Some(note) = check_moved(m, cluster).await {
            notes.push(note);
        }
    }
    notes
}

/// Whether every region's leader reaches the moved store `index` at its new address (it
/// tells the others itself when it starts); waits up to 15 s. `None` when it is no longer
/// a running member (retired, or removed by another nemesis).
async fn check_moved(index: usize, cluster: &Cluster) -> Option<String> {
    let node = &cluster.nodes[index];
    let id = node.store_id.clone()?;
    if node.retired || !node.is_up() || !cluster.members.contains(&index) {
        return None;
    }
    let address = node.address().to_string();
    let started = Instant::now();
    loop {
        let leaders = cluster.leaders().await;
        let stale: Vec<String> = leaders
            .iter()
            .filter_map(|(region, view)| match view.address_of(&id) {
                Some(at) if at != address => Some(format!("region {region}: {at:?}")),
                _ => None,
            })
            .collect();
        if leaders.len() == cluster.config.regions as usize && stale.is_empty() {
            return Some(format!(
                "every region's leader reaches the moved {} at {address} ({} ms)",
                node.name,
                started.elapsed().as_millis()
            ));
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Some(format!(
                "SUSPICIOUS: 15 s after the heal, {} of {} regions have a leader, and leaders still list the moved {} at its old address ({})",
                leaders.len(),
                cluster.config.regions,
                node.name,
                stale.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The wipe's second half: the fresh store runs (the PD then replaces the old id's
/// replicas; [`heal`] waits for it to converge).
async fn finish_wipe(wiped: Wiped, cluster: &mut Cluster) -> Vec<String> {
    let mut notes = Vec::new();
    let victim = wiped.victim;
    if !cluster.nodes[victim].is_up() {
        if let Err(failure) = cluster
            .start(victim, "wipe nemesis: heal (it was down)")
            .await
        {
            notes.push(format!(
                "FINDING: the wiped {} does not start ({}): {}",
                cluster.label(victim),
                failure.status,
                failure.output.trim()
            ));
            return notes;
        }
    }
    let now = cluster.nodes[victim].store_id.clone();
    if wiped.new_id.is_some() && wiped.new_id != now {
        notes.push(format!(
            "the wiped {} was {} at its restart and is {} now",
            cluster.label(victim),
            wiped.new_id.as_deref().unwrap_or("?"),
            now.as_deref().unwrap_or("?")
        ));
    }
    notes.push(format!(
        "{} runs as the new store {}; the PD is to replace the old {}",
        cluster.nodes[victim].name,
        now.as_deref().unwrap_or("?"),
        wiped.old_id
    ));
    notes
}

/// Stops a node for good and removes its host.
async fn retire_node(index: usize, cluster: &mut Cluster) {
    cluster.members.retain(|m| *m != index);
    cluster.stop(index).await;
    cluster.nodes[index].retired = true;
    let host = cluster.nodes[index].host.clone();
    if let Err(why) = cluster.network.remove_host(&host).await {
        cluster.journal.note(format!(
            "{} stopped, but its host stays: {why:#}",
            cluster.label(index)
        ));
    }
}

/// Restarts the damaged node once the others hold every committed entry. A node that
/// refuses its damaged log must say which file and offset; it is then wiped and started
/// as usual (a new store), and the PD replaces its old id ([`heal`] waits for it).
async fn heal_disk(
    victim: usize,
    cluster: &mut Cluster,
    shared: &Arc<Shared>,
    probe_client: &KvClient,
) -> Vec<String> {
    let mut notes = Vec::new();
    // A write acknowledged in every region by the others: by log matching, every entry
    // committed before it is now on a majority that excludes the damaged node.
    match shared.probe(probe_client, Duration::from_secs(60)).await {
        Some(took) => notes.push(format!(
            "the others committed a write in every region ({} ms)",
            took.as_millis()
        )),
        None => notes.push(
            "the others committed no write in every region within 60 s; restarting anyway".into(),
        ),
    }
    let failure = match cluster
        .start(victim, "disk nemesis: restart on the damaged log")
        .await
    {
        Ok(()) => {
            notes.push(format!(
                "{} restarted on its damaged log",
                cluster.label(victim)
            ));
            return notes;
        }
        Err(failure) => failure,
    };
    let segment_named = failure.output.contains(".log");
    let offset_named = failure.output.contains("offset");
    let refusal = failure
        .output
        .lines()
        .rev()
        .find(|l| l.contains("corrupt") || l.contains("Corrupt"))
        .unwrap_or("")
        .trim()
        .to_string();
    if segment_named && offset_named && !refusal.is_empty() {
        notes.push(format!(
            "{} refused its damaged log, as it must: {refusal}",
            cluster.label(victim)
        ));
    } else {
        notes.push(format!(
            "FINDING: {} failed to start on its damaged log without naming the file and offset ({}): {}",
            cluster.label(victim),
            failure.status,
            failure.output.trim()
        ));
        cluster
            .unexpected_exits
            .push(crate::cluster::UnexpectedExit {
                name: cluster.nodes[victim].name.clone(),
                status: failure.status.clone(),
                log_tail: failure.output.clone(),
            });
    }
    // Repair by store id: an address names whichever store answers there now, and the
    // repaired store answers at the damaged one's address with a new id. The data dir is
    // wiped (the others hold every committed entry, so the regions keep all of it), the
    // store started with its usual command line (it comes back as a new store), and the
    // PD replaces the old id's replicas; the harness adds and removes no member.
    let old_id = cluster.nodes[victim]
        .store_id
        .clone()
        .or_else(|| read_store_id(&cluster.nodes[victim].data_dir));
    match &old_id {
        Some(id) => {
            cluster.gone_ids.insert(id.clone());
        }
        None => notes.push(format!(
            "{}'s store id is unknown: the PD convergence cannot check its old id is gone",
            cluster.label(victim)
        )),
    }
    if let Err(why) = cluster.wipe(victim) {
        notes.push(format!("wipe failed: {why:#}"));
        return notes;
    }
    if let Some(note) = cluster.fit_bootstrap_for_empty_start(victim) {
        notes.push(note);
    }
    if let Err(failure) = cluster
        .start(victim, "disk nemesis: repaired (empty)")
        .await
    {
        notes.push(format!(
            "FINDING: the repaired {} did not start ({}): {}",
            cluster.label(victim),
            failure.status,
            failure.output.trim()
        ));
        return notes;
    }
    let Some(new_id) = cluster.nodes[victim].store_id.clone() else {
        notes.push(format!(
            "the repaired {} wrote no store id",
            cluster.label(victim)
        ));
        return notes;
    };
    if old_id.as_ref() == Some(&new_id) {
        notes.push(format!(
            "FINDING: the repaired {} came back with its old store id {new_id}",
            cluster.label(victim)
        ));
        cluster
            .unexpected_exits
            .push(crate::cluster::UnexpectedExit {
                name: cluster.nodes[victim].name.clone(),
                status: format!("came back from a wipe with its old store id {new_id}"),
                log_tail: String::new(),
            });
        return notes;
    }
    notes.push(format!(
        "{} wiped and started as the new store {new_id}; the PD is to replace the old {}",
        cluster.label(victim),
        old_id.as_deref().unwrap_or("?")
    ));
    if let Some(old_id) = &old_id {
        notes.push(crate::pd::register_or_remove_old(cluster, &new_id, old_id).await);
    }
    notes
}

/// Restarts every active node that is down (noting any that died on its own).
pub async fn ensure_running(cluster: &mut Cluster, notes: &mut Vec<String>) {
    cluster.reap_exits();
    for index in cluster.active() {
        if cluster.nodes[index].is_up() {
            continue;
        }
        if let Err(failure) = cluster.start(index, "heal: it was down").await {
            notes.push(format!(
                "FINDING: {} does not start ({}): {}",
                cluster.label(index),
                failure.status,
                failure.output.trim()
            ));
            cluster
                .unexpected_exits
                .push(crate::cluster::UnexpectedExit {
                    name: cluster.nodes[index].name.clone(),
                    status: failure.status,
                    log_tail: failure.output,
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_choices_respect_the_exclusions() {
        assert_eq!(
            Nemesis::parse_list("all").unwrap().len(),
            Nemesis::ALL.len()
        );
        assert_eq!(
            Nemesis::parse_list("kill,pause,kill").unwrap(),
            vec![Nemesis::Kill, Nemesis::Pause]
        );
        assert_eq!(Nemesis::parse_list("partitions").unwrap().len(), 5);
        assert!(Nemesis::parse_list("none").unwrap().is_empty());
        let error = Nemesis::parse_list("kill,typo").unwrap_err();
        assert!(
            error.contains("typo") && error.contains("partition-halves"),
            "{error}"
        );
        for n in Nemesis::ALL {
            assert_eq!(Nemesis::parse_list(n.name()).unwrap(), vec![n]);
        }
        let mut rng = Rng::new(3);
        let mut saw_combination = false;
        let mut saw_wipe = false;
        for _ in 0..500 {
            let kinds = choose(&Nemesis::ALL, &mut rng);
            assert!(!kinds.is_empty());
            assert!(
                !kinds.iter().any(|k| k.runs_alone()) || kinds.len() == 1,
                "{kinds:?}"
            );
            saw_wipe |= kinds == [Nemesis::Wipe];
            assert!(!(kinds.contains(&Nemesis::Membership) && kinds.contains(&Nemesis::Drift)));
            saw_combination |= kinds.len() > 1;
        }
        assert!(saw_combination && saw_wipe);
        assert!(Nemesis::Wipe.runs_alone() && !Nemesis::Readdress.runs_alone());
        // Only disk selected: the old choices (one alone, else dropped half the time).
        let mut rng = Rng::new(5);
        for _ in 0..100 {
            let kinds = choose(&[Nemesis::Kill, Nemesis::Disk], &mut rng);
            assert!(kinds == [Nemesis::Disk] || !kinds.contains(&Nemesis::Disk));
        }
    }
}
