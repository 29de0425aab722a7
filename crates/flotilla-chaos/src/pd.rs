//! The placement driver (PD) as the harness sees it: who leads it (`admin --json pd
//! status`), and whether the cluster has converged to what the PD must make of it. The
//! harness no longer adds or removes members to repair the cluster; it waits for the PD.
//!
//! Converged means: every region has a leader and `min(max-replicas, running stores)`
//! voters, every voter a store the harness runs, no learner; no store the harness stopped
//! for good (a drifted store, a wiped store's old id) is a voter or learner of any region;
//! the PD answers, has no operator in flight, counts no region without quorum, and lists
//! every running store as `up` (a store it never registered could never get a replica).
//!
//! Owns: reading the PD's state and judging convergence. Must never: change membership
//! or the PD's settings, or call the cluster converged on a partial view (a region with no
//! leader reporting, a PD that does not answer).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::Value;

use crate::cluster::{Cluster, LeaderView};

/// The PD's default `max-replicas`, used when its status does not say.
const MAX_REPLICAS_DEFAULT: usize = 3;

/// What `admin --json pd status` says, in the parts the harness uses.
#[derive(Clone, Debug, Default)]
pub struct PdView {
    /// The PD leader's address.
    pub leader: Option<String>,
    /// The PD leader's store id.
    pub leader_id: Option<String>,
    /// Operators in flight, described (`#7 region 2 replace-down-peer at add-learner`).
    pub operators: Vec<String>,
    /// Regions the PD counts without quorum.
    pub without_quorum: Vec<u64>,
    /// Its `max-replicas` setting.
    pub max_replicas: usize,
    /// The stores it knows: (store id, state).
    pub stores: Vec<(String, String)>,
    /// The meta group's voters (store ids).
    pub meta_voters: Vec<String>,
}

impl PdView {
    /// Reads the parts of `admin --json pd status` the harness uses.
    pub fn from_json(answer: &Value) -> PdView {
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let operators = answer["operators"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .map(|op| {
                        format!(
                            "#{} region {} {} at {}",
                            op["id"],
                            op["region"],
                            op["kind"].as_str().unwrap_or("?"),
                            op["step"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let max_replicas = answer["config"]
            .as_array()
            .and_then(|c| c.iter().find(|e| e["key"] == "max-replicas"))
            .and_then(|e| {
                e["value"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .or_else(|| e["value"].as_u64().map(|v| v as usize))
            })
            .unwrap_or(MAX_REPLICAS_DEFAULT);
        PdView {
            leader: text(&answer["leader"]),
            leader_id: text(&answer["leader_id"]),
            operators,
            without_quorum: answer["regions_without_quorum"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            max_replicas,
            stores: answer["stores"]
                .as_array()
                .map(|stores| {
                    stores
                        .iter()
                        .map(|s| {
                            (
                                s["id"].as_str().unwrap_or("?").to_string(),
                                s["state"].as_str().unwrap_or("?").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            meta_voters: answer["meta_voters"]
                .as_array()
                .map(|v| v.iter().filter_map(text).collect())
                .unwrap_or_default(),
        }
    }

    /// The state the PD gives store `id` (`None`: it does not know the store).
    pub fn store_state(&self, id: &str) -> Option<&str> {
        self.stores
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, state)| state.as_str())
    }
}

/// The PD's status now.
pub async fn status(cluster: &Cluster) -> anyhow::Result<PdView> {
    let answer = cluster.admin(&["pd", "status"]).await?;
    Ok(PdView::from_json(&answer))
}

/// The node the PD leader runs on, with its store id.
pub async fn leader_node(cluster: &Cluster) -> anyhow::Result<(usize, String)> {
    let view = status(cluster).await?;
    let address = view
        .leader
        .clone()
        .ok_or_else(|| anyhow!("the PD names no leader"))?;
    let by_id = view
        .leader_id
        .as_deref()
        .and_then(|id| cluster.node_of_id(id))
        .filter(|&i| cluster.members.contains(&i));
    let index = by_id
        .or_else(|| {
            cluster
                .members
                .iter()
                .copied()
                .find(|&i| cluster.nodes[i].address() == address)
        })
        .ok_or_else(|| anyhow!("the PD leader {address} is none of the harness's stores"))?;
    Ok((index, view.leader_id.unwrap_or_else(|| "?".into())))
}

/// After a wipe: waits (up to five store heartbeats) for the PD to register the new store
/// `new_id`. The PD refuses a store at an address that a store it has not tombstoned holds
/// (the wiped store's old id holds its address); if it does, the harness does what the
/// runbook tells a person: `admin store remove OLD_ID` (the old store is gone for good:
/// the PD moves its replicas off, tombstones it, and the new store can register). This is
/// no membership change by the harness: the PD chooses and makes them. Returns a note.
pub async fn register_or_remove_old(cluster: &Cluster, new_id: &str, old_id: &str) -> String {
    let heartbeat = Duration::from_millis(cluster.config.pd_heartbeat_ms);
    let started = Instant::now();
    while started.elapsed() < heartbeat * 5 {
        if let Ok(view) = status(cluster).await {
            if view.store_state(new_id).is_some() {
                return format!(
                    "the PD registered the new store {new_id} after {} ms",
                    started.elapsed().as_millis()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let removed = cluster.admin(&["store", "remove", old_id]).await;
    format!(
        "the PD has not registered the new store {new_id} after {} ms (it refuses a store at an address that the old {old_id}, not a tombstone, holds); as the runbook says, `admin store remove {old_id}`: {}",
        started.elapsed().as_millis(),
        removed.map_or_else(|e| format!("{e:#}"), |_| "ok".into())
    )
}

/// The first stretch of the key space no led region covers (regions split during a run,
/// so their number says nothing), as a finding; `None` when the led regions' ranges cover
/// it all (overlaps, a stale leader's report of a region since split, are no gap).
pub fn uncovered(leaders: &BTreeMap<u64, LeaderView>) -> Option<String> {
    let mut ranges: Vec<(&[u8], &[u8])> = leaders
        .values()
        .map(|v| (&v.start[..], &v.end[..]))
        .collect();
    ranges.sort();
    let mut covered_to: &[u8] = b"";
    for (start, end) in ranges {
        if start > covered_to {
            return Some(format!(
                "no led region covers keys {:?}..{:?}",
                covered_to.escape_ascii().to_string(),
                start.escape_ascii().to_string()
            ));
        }
        if end.is_empty() {
            return None;
        }
        covered_to = covered_to.max(end);
    }
    Some(format!(
        "no led region covers keys from {:?} to the end",
        covered_to.escape_ascii().to_string()
    ))
}

/// What keeps the cluster from being converged (empty: converged), given what the leaders
/// report, the stores that run, the ids stopped for good, and the PD's view.
pub fn judge(
    leaders: &BTreeMap<u64, LeaderView>,
    running: &BTreeSet<String>,
    gone: &BTreeSet<String>,
    pd: Result<&PdView, &str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let max_replicas = match pd {
        Ok(view) => {
            if !view.operators.is_empty() {
                problems.push(format!(
                    "PD operators in flight: {}",
                    view.operators.join(", ")
                ));
            }
            if !view.without_quorum.is_empty() {
                problems.push(format!(
                    "regions without quorum (PD): {:?}",
                    view.without_quorum
                ));
            }
            // The meta group is a region too: a wipe or a drift while it still counts a
            // store that is gone for good could leave it without a majority (found by the
            // quick suite: a wipe of the PD leader's store while the meta group still
            // counted the store wiped before, so the PD never answered again).
            let stopped: Vec<&String> = view
                .meta_voters
                .iter()
                .filter(|id| !running.contains(*id))
                .collect();
            if !stopped.is_empty() {
                problems.push(format!(
                    "the meta group counts voters that are no running store: {stopped:?}"
                ));
            }
            for id in running {
                match view.store_state(id) {
                    Some("up") => {}
                    Some(state) => {
                        problems.push(format!("running store {id} is {state} in the PD"))
                    }
                    None => {
                        problems.push(format!("running store {id} is not registered with the PD"))
                    }
                }
            }
            view.max_replicas
        }
        Err(why) => {
            problems.push(format!("the PD does not answer: {why}"));
            MAX_REPLICAS_DEFAULT
        }
    };
    if let Some(gap) = uncovered(leaders) {
        let led: Vec<u64> = leaders.keys().copied().collect();
        problems.push(format!("{gap} (led: {led:?})"));
    }
    let wanted = max_replicas.min(running.len());
    for (region, view) in leaders {
        let voters: BTreeSet<&String> = view.peer_ids.iter().collect();
        if voters.len() != wanted {
            problems.push(format!(
                "region {region} has {} voters, not {wanted}: {:?}",
                voters.len(),
                view.peer_ids
            ));
        }
        let stopped: Vec<&String> = voters
            .iter()
            .copied()
            .filter(|id| !running.contains(*id))
            .collect();
        if !stopped.is_empty() {
            problems.push(format!(
                "region {region} counts voters that are no running store: {stopped:?}{}",
                if stopped.iter().any(|id| gone.contains(*id)) {
                    " (stopped for good)"
                } else {
                    ""
                }
            ));
        }
        if !view.learner_ids.is_empty() {
            problems.push(format!(
                "region {region} has learners {:?}",
                view.learner_ids
            ));
        }
    }
    problems
}

/// Whether the cluster has converged now: the problems found (empty: converged).
pub async fn problems(cluster: &Cluster) -> Vec<String> {
    let pd = status(cluster).await.map_err(|e| format!("{e:#}"));
    let leaders = cluster.leaders().await;
    let running: BTreeSet<String> = cluster.running_ids().into_iter().collect();
    judge(
        &leaders,
        &running,
        &cluster.gone_ids,
        pd.as_ref().map_err(String::as_str),
    )
}

/// Waits until the PD has converged the cluster (see the module docs); how long it took,
/// or what had not converged when `within` ran out.
pub async fn wait_converged(cluster: &Cluster, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let found = problems(cluster).await;
        if found.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= within {
            return Err(format!(
                "the PD did not converge the cluster within {} s: {}",
                within.as_secs(),
                found.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[&str], learners: &[&str]) -> LeaderView {
        LeaderView {
            index: 0,
            peer_ids: voters.iter().map(|s| s.to_string()).collect(),
            peers: voters.iter().map(|_| String::new()).collect(),
            learner_ids: learners.iter().map(|s| s.to_string()).collect(),
            start: bytes::Bytes::new(),
            end: bytes::Bytes::new(),
        }
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn convergence_is_max_replicas_on_running_stores_and_no_operator() {
        let running = set(&["a", "b", "c", "d", "e"]);
        let up = |ids: &BTreeSet<String>| -> Vec<(String, String)> {
            ids.iter()
                .map(|id| (id.clone(), "up".to_string()))
                .collect()
        };
        let pd = PdView {
            max_replicas: 3,
            stores: up(&running),
            ..PdView::default()
        };
        let gone = set(&["x"]);
        let mut leaders = BTreeMap::new();
        leaders.insert(1, view(&["a", "b", "c"], &[]));
        leaders.insert(2, view(&["c", "d", "e"], &[]));
        assert!(judge(&leaders, &running, &gone, Ok(&pd)).is_empty());
        // Every store a voter of every region is no longer what the harness wants.
        leaders.insert(2, view(&["a", "b", "c", "d", "e"], &[]));
        assert_eq!(judge(&leaders, &running, &gone, Ok(&pd)).len(), 1);
        // A store stopped for good still a voter; a learner; an operator; a region unled.
        leaders.insert(2, view(&["c", "d", "x"], &["e"]));
        let busy = PdView {
            operators: vec!["#1 region 2 replace at add-learner".into()],
            ..pd.clone()
        };
        let mut with_gap = leaders.clone();
        with_gap
            .entry(1)
            .and_modify(|v| v.end = bytes::Bytes::from_static(b"m"));
        with_gap
            .entry(2)
            .and_modify(|v| v.start = bytes::Bytes::from_static(b"p"));
        let found = judge(&with_gap, &running, &gone, Ok(&busy));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found.iter().any(|p| p.contains("\"m\"..\"p\"")),
            "{found:?}"
        );
        assert!(found.iter().any(|p| p.contains("stopped for good")));
        assert!(!judge(&leaders, &running, &gone, Err("down")).is_empty());
        // Fewer running stores than max-replicas: every one of them.
        let three = set(&["a", "b", "c"]);
        let mut small = BTreeMap::new();
        small.insert(1, view(&["a", "b", "c"], &[]));
        let five = PdView {
            max_replicas: 5,
            stores: up(&three),
            ..PdView::default()
        };
        assert!(judge(&small, &three, &gone, Ok(&five)).is_empty());
        // A running store the PD never registered (or counts down).
        let mut unknown = five.clone();
        unknown.stores.retain(|(id, _)| id != "c");
        unknown.stores.push(("b".into(), "down".into()));
        unknown
            .stores
            .retain(|(id, state)| id != "b" || state == "down");
        let found = judge(&small, &three, &gone, Ok(&unknown));
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn the_pd_status_json_is_read() {
        let answer: Value = serde_json::from_str(
            r#"{"ok":true,"leader":"127.0.0.1:7101","leader_id":"00000000000000aa",
            "config":[{"key":"max-replicas","value":"3","source":"flag"}],
            "operators":[{"id":4,"region":2,"kind":"replace-down-peer","step":"add-learner"}],
            "stores":[{"id":"00000000000000aa","state":"up"},{"id":"00000000000000bb","state":"down"}],
            "regions_without_quorum":[1]}"#,
        )
        .unwrap();
        let view = PdView::from_json(&answer);
        assert_eq!(view.leader.as_deref(), Some("127.0.0.1:7101"));
        assert_eq!(view.leader_id.as_deref(), Some("00000000000000aa"));
        assert_eq!(view.max_replicas, 3);
        assert_eq!(view.without_quorum, vec![1]);
        assert_eq!(view.store_state("00000000000000bb"), Some("down"));
        assert_eq!(view.store_state("00000000000000cc"), None);
        assert_eq!(
            view.operators,
            vec!["#4 region 2 replace-down-peer at add-learner"]
        );
    }
}
