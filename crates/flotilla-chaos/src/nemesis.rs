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
//! | `clock`            | restart of a random subset under libfaketime: clock rate within ±`drift` of real time (the bound the leader lease assumes) and a wall clock off by minutes | restart with the real clock |
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
    for &kind in kinds {
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
            let address = cluster.nodes[new].address().to_string();
            if let Err(why) = cluster.admin(&["add-peer", &address]).await {
                // It may have joined some regions: keep it as a member, the final
                // reconciliation decides from what the cluster reports.
                cluster.members.push(new);
                faults.drift = Some((new, usize::MAX));
                return Err(why.context(format!(
                    "add-peer of the fresh store {}",
                    cluster.label(new)
                )));
            }
            cluster.members.push(new);
            let candidates: Vec<usize> = cluster
                .members
                .iter()
                .copied()
                .filter(|&m| m != new)
                .collect();
            let old = candidates[rng.index(candidates.len())];
            faults.description.push(format!(
                "added the fresh store {} (it will replace {})",
                cluster.label(new),
                cluster.label(old)
            ));
            faults.drift = Some((new, old));
        }
        Nemesis::Clock => {
            let up: Vec<usize> = cluster
                .members
                .iter()
                .copied()
                .filter(|&i| cluster.nodes[i].is_up())
                .collect();
            let targets = rng.subset(&up);
            for &t in &targets {
                let rate = 1.0 + (rng.unit() * 2.0 - 1.0) * config.clock_drift_max;
                let offset_s = rng.below(601) as i64 - 300;
                let skew = Skew { rate, offset_s };
                cluster.stop(t).await;
                cluster.nodes[t].skew = Some(skew);
                if let Err(failure) = cluster.start(t, "clock nemesis: skewed clock").await {
                    faults.skewed.push(t);
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
                faults.skewed.push(t);
            }
        }
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
        if old != usize::MAX {
            notes.push(retire(old, new, cluster).await);
        }
    }
    ensure_running(cluster, &mut notes).await;
    notes
}

/// Removes `old` from the regions, stops it and removes its host: the drift's second half.
async fn retire(old: usize, new: usize, cluster: &mut Cluster) -> String {
    let address = cluster.nodes[old].address().to_string();
    let mut last = String::new();
    for _ in 0..3 {
        match cluster.admin(&["remove-peer", &address]).await {
            Ok(_) => {
                cluster.members.retain(|m| *m != old);
                cluster.stop(old).await;
                cluster.nodes[old].retired = true;
                let host = cluster.nodes[old].host.clone();
                if let Err(why) = cluster.network.remove_host(&host).await {
                    return format!(
                        "{} replaced, but its host stays: {why:#}",
                        cluster.label(old)
                    );
                }
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
    match cluster.admin(&["add-peer", &address]).await {
        Ok(_) => notes.push(format!("{} wiped and added back", cluster.label(victim))),
        Err(why) => notes.push(format!(
            "add-peer of the repaired {} failed: {why:#}",
            cluster.label(victim)
        )),
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
