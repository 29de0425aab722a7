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
//! | `disk`             | `kill -9` of one member, then its log's tail cut or bytes flipped | once the others committed a write in every region, restart; a store that refuses its damaged log (it must name the file and offset) is wiped and re-added |
//!
//! Partitions drop packets between servers only: the harness's clients reach every server
//! (an isolated old leader still gets requests — what stale reads need).
//!
//! Owns: choosing faults from the seed, applying them, and healing them completely.
//! Must never: damage more than one node's disk at a time, or restart a damaged node before
//! the others hold every committed entry (Raft tolerates the loss of a minority's state, not
//! of a committed entry's last copies).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use flotilla_kv::client::KvClient;

use crate::cluster::{Cluster, Skew};
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
}

impl Nemesis {
    /// Every nemesis, in the order of the table above.
    pub const ALL: [Nemesis; 11] = [
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
    /// What was done, for the journal.
    pub description: Vec<String>,
}

/// Settings of the nemeses.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// Largest relative clock-rate error the clock nemesis injects.
    pub clock_drift_max: f64,
}

/// Chooses which of `selected` to apply together this cycle: a random non-empty subset,
/// except that disk damage always runs alone (its safety argument needs everything else
/// healthy) and membership and drift never run together (both change the members).
pub fn choose(selected: &[Nemesis], rng: &mut Rng) -> Vec<Nemesis> {
    let mut kinds = rng.subset(selected);
    if kinds.contains(&Nemesis::Disk) {
        if kinds.len() > 1 && rng.chance(0.5) {
            kinds.retain(|k| *k != Nemesis::Disk);
        } else {
            return vec![Nemesis::Disk];
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
    let rank = |k: &Nemesis| match k {
        Nemesis::Membership | Nemesis::Drift => 0,
        Nemesis::Clock => 1,
        _ => 2,
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
            let address = cluster.nodes[target].address().to_string();
            cluster.admin(&["remove-peer", &address]).await?;
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
            let victim = cluster.members[rng.index(cluster.members.len())];
            cluster.kill(victim).await;
            faults.damaged = Some(victim);
            let what = cluster.damage_log(victim, rng)?;
            faults
                .description
                .push(format!("kill -9 {}, then {what}", cluster.label(victim)));
        }
        _ => unreachable!("{kind:?} has no branch"),
    }
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
        let address = cluster.nodes[r].address().to_string();
        match cluster.admin(&["add-peer", &address]).await {
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
        let _ = cluster.admin(&["remove-peer", &new_address]).await;
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

/// Removes `old` from the regions, then stops it and removes its host.
async fn retire(old: usize, new: usize, cluster: &mut Cluster) -> String {
    let address = cluster.nodes[old].address().to_string();
    let mut last = String::new();
    for _ in 0..3 {
        match cluster.admin(&["remove-peer", &address]).await {
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
    // Repair as an operator would: remove it, wipe it, start it empty, add it back.
    let address = cluster.nodes[victim].address().to_string();
    if let Err(why) = cluster.admin(&["remove-peer", &address]).await {
        notes.push(format!("remove-peer before the repair failed: {why:#}"));
    }
    if let Err(why) = cluster.wipe(victim) {
        notes.push(format!("wipe failed: {why:#}"));
        return notes;
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
    // A fresh peer catches up by snapshot; under load that can outlast the leader's
    // catch-up timeout, so retry as an operator would (each failure is noted).
    for attempt in 1..=3 {
        match cluster.admin(&["add-peer", &address]).await {
            Ok(_) => {
                notes.push(format!("{} wiped and added back", cluster.label(victim)));
                break;
            }
            Err(why) => notes.push(format!(
                "add-peer {attempt} of the repaired {} failed: {why:#}",
                cluster.label(victim)
            )),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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

/// Makes the regions' voters exactly the intended members (adds first, then removes),
/// from what the leaders report. Returns notes; an error when it cannot converge.
pub async fn reconcile_members(
    cluster: &mut Cluster,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + within;
    let mut notes = Vec::new();
    loop {
        let intended: BTreeSet<String> = cluster.member_addresses().into_iter().collect();
        let leaders = cluster.leaders().await;
        let observed: Vec<BTreeSet<String>> = leaders
            .values()
            .map(|(_, peers)| peers.iter().cloned().collect())
            .collect();
        if leaders.len() == cluster.config.regions as usize
            && observed.iter().all(|o| *o == intended)
        {
            return Ok(notes);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the regions' voters did not converge to {:?} within {within:?} (leaders report {:?})",
                intended,
                observed
            );
        }
        let missing: BTreeSet<String> = observed
            .iter()
            .flat_map(|o| intended.difference(o).cloned().collect::<Vec<_>>())
            .collect();
        let extra: BTreeSet<String> = observed
            .iter()
            .flat_map(|o| o.difference(&intended).cloned().collect::<Vec<_>>())
            .collect();
        for address in &missing {
            let result = cluster.admin(&["add-peer", address]).await;
            notes.push(format!(
                "reconcile: add-peer {address}: {}",
                result.map_or_else(|e| format!("{e:#}"), |_| "ok".into())
            ));
        }
        for address in &extra {
            let result = cluster.admin(&["remove-peer", address]).await;
            notes.push(format!(
                "reconcile: remove-peer {address}: {}",
                result.map_or_else(|e| format!("{e:#}"), |_| "ok".into())
            ));
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
        for _ in 0..500 {
            let kinds = choose(&Nemesis::ALL, &mut rng);
            assert!(!kinds.is_empty());
            assert!(
                !kinds.contains(&Nemesis::Disk) || kinds.len() == 1,
                "{kinds:?}"
            );
            assert!(!(kinds.contains(&Nemesis::Membership) && kinds.contains(&Nemesis::Drift)));
            saw_combination |= kinds.len() > 1;
        }
        assert!(saw_combination);
    }
}
