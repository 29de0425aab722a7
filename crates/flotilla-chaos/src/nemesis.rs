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
//! | `membership`       | `admin remove-peer` of a member (often the leader)       | `admin add-peer` it back   |
//! | `drift`            | a fresh store on a new address, empty, `add-peer`'d      | `remove-peer` of the one it replaces, which stops for good |
//! | `clock`            | restarts under libfaketime, clock rates within ±`drift` of real time (the bound the leader lease assumes), wall clocks off by minutes; half the time the worst case: the leader slowest, the rest fastest | restart with the real clock |
//! | `disk`             | `kill -9` of one member (only when every member runs and every region's voters are the intended members, as for `wipe`), then its log's tail cut or bytes flipped | once the others committed a write in every region, restart; a store that refuses its damaged log (it must name the file and offset) is replaced as the runbook says: `remove-peer OLD_ID`, wiped, started as usual (a new store), `add-peer NEW_ID` |
//! | `wipe`             | `kill -9` of one member (always alone, only when every member runs and every region's voters are the intended members), its data dir removed, restarted with its usual command line (same address, same `--peers`, its own address added if it moved): it comes back as a new store; then, as the runbook says, `add-peer NEW_ID` and `remove-peer OLD_ID` | the add and the remove retried per region until the new store is a voter of every region and the old id of none |
//! | `readdress`        | a member stopped (SIGTERM or `kill -9`) and restarted on its data dir at another address (same namespace and IP, another port; or back to its first address); no membership change | it runs (and the leaders list it at its new address) |
//!
//! Partitions drop packets between servers only: the harness's clients reach every server
//! (an isolated old leader still gets requests — what stale reads need).
//!
//! Owns: choosing faults from the seed, applying them, and healing them completely.
//! Must never: damage or wipe more than one node's disk at a time, wipe a member while
//! another is down or an earlier replacement is unfinished (a region must keep a majority
//! of its old members: the wiped store's old id never answers again), restart a damaged
//! node before the others hold every committed entry (Raft tolerates the loss of a
//! minority's state, not of a committed entry's last copies), or name a store by its
//! address where it means the store that used to be there (a wiped store comes back at its
//! old address with a new id: members are removed by store id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use flotilla_kv::client::KvClient;

use crate::cluster::{read_store_id, Cluster, Skew};
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
    /// Remove a member, add it back.
    Membership,
    /// Replace a member by a fresh store on a new address.
    Drift,
    /// Clock rate and wall-clock skew.
    Clock,
    /// Log damage on a stopped member.
    Disk,
    /// A member's data dir lost: it comes back as a new store and replaces its old id.
    Wipe,
    /// A member restarted on its data dir at another address.
    Readdress,
}

impl Nemesis {
    /// Every nemesis, in the order of the table above.
    pub const ALL: [Nemesis; 13] = [
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

/// Faults in force, and what their heal must undo.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: BTreeSet<(usize, usize)>,
    killed: Vec<usize>,
    paused: Vec<usize>,
    removed: Vec<usize>,
    /// (new node, node it replaces)
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
/// everything else healthy) and membership and drift never run together (both change the
/// members).
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
        Nemesis::Membership | Nemesis::Drift | Nemesis::Wipe => 0,
        Nemesis::Clock => 1,
        Nemesis::Readdress => 2,
        _ => 3,
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
        Nemesis::Membership => {
            if cluster.members.len() < 2 {
                bail!("only one member left");
            }
            let leader = cluster
                .leader()
                .await
                .filter(|l| cluster.members.contains(l));
            let target = match leader {
                Some(l) if rng.chance(0.5) => l,
                _ => cluster.members[rng.index(cluster.members.len())],
            };
            let name = store_name(cluster, target);
            cluster.admin(&["remove-peer", &name]).await?;
            cluster.members.retain(|m| *m != target);
            faults.description.push(format!(
                "removed {} from every region",
                cluster.label(target)
            ));
            faults.removed.push(target);
        }
        Nemesis::Drift => {
            let new = cluster.add_node(None).await?;
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
            let old = cluster.members[rng.index(cluster.members.len())];
            cluster.members.push(new);
            faults.drift = Some((new, old));
            let address = cluster.nodes[new].address().to_string();
            let added = cluster.admin(&["add-peer", &address]).await;
            faults.description.push(format!(
                "started the fresh store {} to replace {}; add-peer: {}",
                cluster.label(new),
                cluster.label(old),
                added.map_or_else(|e| format!("{e:#} (retried at the heal)"), |_| "ok".into())
            ));
        }
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

/// Whether one member may lose its state (disk damage, a wipe) now: at least three members,
/// every member running, and every region's voters exactly the intended members (an
/// earlier replacement finished). A region then keeps a majority of its old members, and
/// every committed entry a copy on one of them.
async fn safe_to_lose_a_member(cluster: &Cluster) -> anyhow::Result<()> {
    if cluster.members.len() < 3 {
        bail!(
            "{} members: with one lost the regions would keep no majority of their old members",
            cluster.members.len()
        );
    }
    if let Some(&down) = cluster
        .members
        .iter()
        .find(|&&m| !cluster.nodes[m].is_up() || cluster.nodes[m].paused)
    {
        bail!(
            "{} is not running: no member loses its state while another is down",
            cluster.label(down)
        );
    }
    let intended: BTreeSet<String> = cluster.member_ids().into_iter().collect();
    if intended.len() != cluster.members.len() {
        bail!("a member's store id is unknown");
    }
    let leaders = cluster.leaders().await;
    if leaders.len() != cluster.config.regions as usize {
        bail!(
            "only {} of {} regions have a leader",
            leaders.len(),
            cluster.config.regions
        );
    }
    for (region, view) in &leaders {
        let voters: BTreeSet<String> = view.peer_ids.iter().cloned().collect();
        if voters != intended {
            bail!(
                "region {region}'s voters {voters:?} are not the intended members {intended:?} (an earlier change is unfinished)"
            );
        }
    }
    Ok(())
}

/// Kills one member, removes its data dir and starts it again with its usual command line:
/// it comes back as a new store (a new id) that no region counts on. Then, as the runbook
/// says, `add-peer NEW_ID` and `remove-peer OLD_ID` (retried at the heal when they fail).
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
    // Through a running store its --peers name, it joins the cluster by itself; otherwise
    // it waits (and is added all the same: `add-peer` opens its regions).
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
            ", which waits to be added ({})",
            if cluster.nodes[victim].bootstrap.is_some() {
                "its --peers name no running store"
            } else {
                "started without --peers"
            }
        ));
    }
    match cluster.admin(&["add-peer", &new_id]).await {
        Ok(_) => {
            text.push_str("; add-peer NEW: ok");
            let removed = cluster.admin(&["remove-peer", &old_id]).await;
            text.push_str(&format!(
                "; remove-peer OLD: {}",
                removed.map_or_else(|e| format!("{e:#} (retried at the heal)"), |_| "ok".into())
            ));
        }
        Err(why) => text.push_str(&format!(
            "; add-peer NEW: {why:#} (the add and the remove retried at the heal)"
        )),
    }
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
    for &r in &faults.removed {
        let name = store_name(cluster, r);
        match cluster.admin(&["add-peer", &name]).await {
            Ok(_) => {
                cluster.members.push(r);
                notes.push(format!("added {} back", cluster.label(r)));
            }
            Err(why) => {
                // The final reconciliation adds it back if some region still lacks it.
                cluster.members.push(r);
                notes.push(format!("add-peer {} failed: {why:#}", cluster.label(r)));
            }
        }
    }
    if let Some((new, old)) = faults.drift {
        notes.push(finish_drift(new, old, cluster).await);
    }
    ensure_running(cluster, &mut notes).await;
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

/// Makes store `add` a voter of every region and store `remove` a voter of none, one
/// `admin --region ID` call per region still to change, retried as an operator would
/// until `within` has passed. Adds come first (the runbook's order); after three rounds of
/// failed adds the removal goes ahead anyway (a dead member only costs the regions their
/// fault tolerance; the final reconciliation retries the add). Returns whether it
/// converged, and notes on what failed.
async fn converge(
    cluster: &Cluster,
    add: Option<&str>,
    remove: Option<&str>,
    within: Duration,
) -> (bool, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut notes = Vec::new();
    let mut failed_adds = 0;
    loop {
        let leaders = cluster.leaders().await;
        let every_region = leaders.len() == cluster.config.regions as usize;
        let regions_where = |id: Option<&str>, member: bool| -> Vec<u64> {
            let Some(id) = id else { return Vec::new() };
            leaders
                .iter()
                .filter(|(_, view)| view.peer_ids.iter().any(|p| p == id) == member)
                .map(|(region, _)| *region)
                .collect()
        };
        let lacking = regions_where(add, false);
        let holding = regions_where(remove, true);
        if every_region && lacking.is_empty() && holding.is_empty() {
            return (true, notes);
        }
        if Instant::now() >= deadline {
            notes.push(format!(
                "gave up after {within:?}: {} of {} regions have a leader; regions still without {}: {lacking:?}; regions still with {}: {holding:?}",
                leaders.len(),
                cluster.config.regions,
                add.map_or("-".into(), |id| cluster.id_label(id)),
                remove.map_or("-".into(), |id| cluster.id_label(id)),
            ));
            return (false, notes);
        }
        if every_region {
            let (op, id, regions) = match (add, remove) {
                (Some(id), _) if !lacking.is_empty() && (failed_adds < 3 || holding.is_empty()) => {
                    ("add-peer", id, lacking)
                }
                (_, Some(id)) => ("remove-peer", id, holding),
                _ => ("add-peer", add.unwrap_or_default(), lacking),
            };
            let mut failed = false;
            for region in regions {
                let region_text = region.to_string();
                if let Err(why) = cluster.admin(&["--region", &region_text, op, id]).await {
                    failed = true;
                    notes.push(format!(
                        "region {region}: {op} {}: {why:#}",
                        cluster.id_label(id)
                    ));
                }
            }
            if failed && op == "add-peer" {
                failed_adds += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The wipe's second half: the fresh store runs, is a voter of every region, and the old
/// store id is a voter of none.
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
    let Some(new_id) = cluster.nodes[victim].store_id.clone() else {
        notes.push(format!(
            "the wiped {} has no store id: not replaced",
            cluster.label(victim)
        ));
        return notes;
    };
    if wiped.new_id.as_ref().is_some_and(|id| *id != new_id) {
        notes.push(format!(
            "the wiped {} was {} at its restart and is {new_id} now",
            cluster.label(victim),
            wiped.new_id.as_deref().unwrap_or("?")
        ));
    }
    let (done, more) = converge(
        cluster,
        Some(&new_id),
        Some(&wiped.old_id),
        Duration::from_secs(60),
    )
    .await;
    notes.extend(more);
    notes.push(if done {
        format!(
            "{} replaced: the new store {new_id} is a voter of every region, the old {} of none",
            cluster.nodes[victim].name, wiped.old_id
        )
    } else {
        format!(
            "the replacement of {} is unfinished (the final reconciliation retries)",
            cluster.nodes[victim].name
        )
    });
    notes
}

/// The drift's second half: makes sure the fresh store `new` is a member (add-peer again,
/// as an operator would after a failure; if it never joins, it is removed and stopped
/// instead), then removes `old` from the regions, stops it and removes its host.
async fn finish_drift(new: usize, old: usize, cluster: &mut Cluster) -> String {
    let new_address = cluster.nodes[new].address().to_string();
    let mut joined = false;
    let mut why_not = String::new();
    for _ in 0..3 {
        match cluster.admin(&["add-peer", &new_address]).await {
            Ok(_) => {
                joined = true;
                break;
            }
            Err(why) => why_not = format!("{why:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !joined {
        let name = store_name(cluster, new);
        let _ = cluster.admin(&["remove-peer", &name]).await;
        retire_node(new, cluster).await;
        return format!(
            "the fresh store {} never joined ({why_not}); stopped, {} stays",
            cluster.label(new),
            cluster.label(old)
        );
    }
    retire(old, new, cluster).await
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

/// Removes `old` from the regions (by store id), then stops it and removes its host.
async fn retire(old: usize, new: usize, cluster: &mut Cluster) -> String {
    let name = store_name(cluster, old);
    let mut last = String::new();
    for _ in 0..3 {
        match cluster.admin(&["remove-peer", &name]).await {
            Ok(_) => {
                retire_node(old, cluster).await;
                return format!(
                    "{} replaced by {}: removed and stopped",
                    cluster.label(old),
                    cluster.label(new)
                );
            }
            Err(why) => last = format!("{why:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    format!(
        "remove-peer {} failed ({last}); it stays a member",
        cluster.label(old)
    )
}

/// Restarts the damaged node once the others hold every committed entry. A node that
/// refuses its damaged log must say which file and offset; it is then wiped and re-added.
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
    // Repair as the runbook says, by store id: an address names whichever store answers
    // there now, and the repaired store answers at the damaged one's address with a new id.
    // Its old id out first (the others hold every committed entry, so the regions keep
    // all of it), then the data dir wiped, the store started with its usual command line
    // (it comes back as a new store), and the new id in.
    let old_id = cluster.nodes[victim]
        .store_id
        .clone()
        .or_else(|| read_store_id(&cluster.nodes[victim].data_dir));
    match &old_id {
        Some(id) => {
            let (done, more) = converge(cluster, None, Some(id), Duration::from_secs(30)).await;
            notes.extend(more);
            if !done {
                notes.push(format!(
                    "the damaged store {id} is still a voter somewhere (the final reconciliation retries)"
                ));
            }
        }
        None => notes.push(format!(
            "{}'s store id is unknown: its old member is left to the final reconciliation",
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
    // A fresh peer catches up by snapshot; under load that can outlast the leader's
    // catch-up timeout, so the add is retried as an operator would (each failure noted).
    let (done, more) = converge(
        cluster,
        Some(&new_id),
        old_id.as_deref(),
        Duration::from_secs(60),
    )
    .await;
    notes.extend(more);
    notes.push(if done {
        format!(
            "{} wiped and replaced: store {} out, the new store {new_id} in",
            cluster.label(victim),
            old_id.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "the repaired {} is not a voter of every region yet (the final reconciliation retries)",
            cluster.label(victim)
        )
    });
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

/// Makes the regions' voters exactly the intended members, by store id (adds first, then
/// removes; one `admin --region ID` call per region that differs), from what the leaders
/// report. Returns notes; an error when it cannot converge.
pub async fn reconcile_members(
    cluster: &mut Cluster,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut notes = Vec::new();
    loop {
        let intended: BTreeSet<String> = cluster.member_ids().into_iter().collect();
        let leaders = cluster.leaders().await;
        let observed: BTreeMap<u64, BTreeSet<String>> = leaders
            .iter()
            .map(|(region, view)| (*region, view.peer_ids.iter().cloned().collect()))
            .collect();
        if leaders.len() == cluster.config.regions as usize
            && observed.values().all(|o| *o == intended)
        {
            return Ok(notes);
        }
        if Instant::now() > deadline {
            bail!(
                "the regions' voters did not converge to {:?} within {within:?} (leaders report {:?})",
                intended,
                observed
            );
        }
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for (region, voters) in &observed {
            adds.extend(intended.difference(voters).map(|id| (*region, id.clone())));
            removes.extend(voters.difference(&intended).map(|id| (*region, id.clone())));
        }
        for (op, changes) in [("add-peer", adds), ("remove-peer", removes)] {
            for (region, id) in changes {
                let region_text = region.to_string();
                let result = cluster.admin(&["--region", &region_text, op, &id]).await;
                notes.push(format!(
                    "reconcile: region {region}: {op} {}: {}",
                    cluster.id_label(&id),
                    result.map_or_else(|e| format!("{e:#}"), |_| "ok".into())
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
