//! `flotilla admin status`: a summary of the stores and the regions first, then the
//! regions that match the filters (`--region`, `--store`, `--unhealthy`), or every region
//! when there are few of them (or with `--all`). With `--json` the answer is always
//! complete: every matching region, every store, and the summary.
//!
//! Owns: the filters, the summary counts and both renderings. Must never: change a store,
//! or leave a region out of the JSON answer that matches the filters.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::RegionInfo;
use serde_json::{json, Map, Value};

use super::cluster::{peer_arg, Cluster, StoreRef};
use super::health::{self, Problem, Reason, APPLIED_LAG_MAX};
use crate::output::{success, Failure};

/// Without a filter or `--all`, the text output lists the regions' lines only when there
/// are at most this many regions.
const REGION_LINES_MAX: usize = 50;

/// `admin status` flags (beside the global `--region ID`).
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only regions with a peer on STORE (a store id, or the address of a store): a voter
    /// or learner there, or a peer that store reports hosting.
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
    /// Only regions that need attention, for any of these reasons: no_leader (no store that
    /// answered says it leads the region); no_quorum (fewer than a majority of its voters are
    /// on stores that answered and report the region); peer_down (a voter or learner is on a store that
    /// did not answer); peer_missing (a voter or learner is on a store that answered but
    /// does not report the region); lagging (a voter or learner applied more than
    /// --applied-lag-max entries fewer than the leader's commit index); epoch_mismatch (a
    /// store reports the region with another epoch or key range than its leader's).
    #[arg(long)]
    pub unhealthy: bool,
    /// List every region's line (by default, without a filter, only when there are at most
    /// 50 regions).
    #[arg(long)]
    pub all: bool,
    /// A peer whose applied index is more than this many entries behind the leader's
    /// commit index is `lagging`.
    #[arg(long, value_name = "ENTRIES", default_value_t = APPLIED_LAG_MAX)]
    pub applied_lag_max: u64,
}

/// The filters of one `admin status`.
struct Filters {
    region: Option<u64>,
    store: Option<StoreRef>,
    unhealthy: bool,
}

impl Filters {
    fn any(&self) -> bool {
        self.region.is_some() || self.store.is_some() || self.unhealthy
    }

    /// The filters as typed, for text: `--store ID --unhealthy`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(region) = self.region {
            parts.push(format!("--region {region}"));
        }
        if let Some(store) = &self.store {
            parts.push(format!("--store {}", store.id));
        }
        if self.unhealthy {
            parts.push("--unhealthy".to_string());
        }
        parts.join(" ")
    }
}

/// One region as listed: its merged view and its problems.
struct Listed<'a> {
    info: &'a RegionInfo,
    problems: Vec<Problem>,
    hosts: BTreeSet<&'a str>,
    /// Whether a majority of its voters are on stores that answered: a region without it
    /// is never acted on by the placement driver (`admin recover` is the way back).
    quorum: bool,
}

/// Whether a majority of `info`'s voters are on stores in `answered`.
fn has_quorum(info: &RegionInfo, answered: &BTreeSet<&str>) -> bool {
    let live = info
        .peer_ids
        .iter()
        .filter(|id| answered.contains(id.as_str()))
        .count();
    live * 2 > info.peer_ids.len()
}

/// The counts at the top of the answer, over every region of the cluster (whatever the
/// filters) but `listed`.
struct Summary {
    stores: usize,
    stores_reachable: usize,
    regions: usize,
    led: usize,
    unhealthy: usize,
    by_reason: BTreeMap<Reason, usize>,
    listed: usize,
    applied_lag_max: u64,
}

impl Summary {
    fn to_json(&self) -> Value {
        let by_reason: Map<String, Value> = Reason::ALL
            .iter()
            .map(|r| {
                let count = self.by_reason.get(r).copied().unwrap_or(0);
                (r.name().to_string(), Value::from(count))
            })
            .collect();
        json!({
            "stores": {
                "total": self.stores,
                "reachable": self.stores_reachable,
                "unreachable": self.stores - self.stores_reachable,
            },
            "regions": {
                "total": self.regions,
                "led": self.led,
                "without_leader": self.regions - self.led,
                "unhealthy": self.unhealthy,
                "listed": self.listed,
            },
            "unhealthy_by_reason": by_reason,
            "applied_lag_max": self.applied_lag_max,
        })
    }
}

/// `admin status`: (the JSON answer, the text for people).
pub(super) async fn status(
    client: &KvClient,
    cluster: &Cluster,
    region: Option<u64>,
    args: &StatusArgs,
) -> Result<(Value, String), Failure> {
    let store = match &args.store {
        Some(text) => Some(known_store(client, cluster, text).await?),
        None => None,
    };
    let filters = Filters {
        region,
        store,
        unhealthy: args.unhealthy,
    };
    let reports = health::reports(&cluster.replies);
    let answered: BTreeSet<&str> = cluster
        .replies
        .iter()
        .map(|r| r.store_id.as_str())
        .collect();
    let no_reports = BTreeMap::new();
    let mut summary = Summary {
        stores: cluster.replies.len() + cluster.unreachable.len(),
        stores_reachable: cluster.replies.len(),
        regions: cluster.regions.len(),
        led: 0,
        unhealthy: 0,
        by_reason: BTreeMap::new(),
        listed: 0,
        applied_lag_max: args.applied_lag_max,
    };
    let mut listed = Vec::new();
    for info in &cluster.regions {
        let reports = reports.get(&info.id).unwrap_or(&no_reports);
        let problems = health::judge(info, reports, &answered, args.applied_lag_max);
        if health::leader(reports).is_some() {
            summary.led += 1;
        }
        let reasons: BTreeSet<Reason> = problems.iter().map(|p| p.reason).collect();
        if !reasons.is_empty() {
            summary.unhealthy += 1;
        }
        for reason in reasons {
            *summary.by_reason.entry(reason).or_default() += 1;
        }
        let hosts = info
            .peer_ids
            .iter()
            .chain(&info.learner_ids)
            .map(String::as_str)
            .chain(reports.keys().copied())
            .collect();
        let region = Listed {
            info,
            problems,
            hosts,
            quorum: has_quorum(info, &answered),
        };
        if matches(&filters, &region) {
            listed.push(region);
        }
    }
    summary.listed = listed.len();
    let pd = super::pd::try_status(client, &cluster.addresses()).await;
    let stores = stores_json(cluster, pd.as_ref());
    let value = success(vec![
        (
            "regions",
            Value::Array(listed.iter().map(region_json).collect()),
        ),
        ("stores", Value::Array(stores.clone())),
        ("summary", summary.to_json()),
    ]);
    let human = human(&summary, &stores, &filters, args.all, &listed);
    Ok((value, human))
}

/// `--store TEXT` as a store some store of the cluster knows.
async fn known_store(
    client: &KvClient,
    cluster: &Cluster,
    text: &str,
) -> Result<StoreRef, Failure> {
    let store = peer_arg(client, &cluster.directory, text).await?;
    if cluster.knows(store.id.as_str()) {
        Ok(store)
    } else {
        Err(Failure::failed(
            "NoSuchStore",
            format!(
                "--store {}: no store of the cluster knows store {store} (it is in no address \
                 book and no region's configuration)",
                text.trim()
            ),
        ))
    }
}

fn matches(filters: &Filters, region: &Listed<'_>) -> bool {
    filters.region.is_none_or(|id| region.info.id == id)
        && filters
            .store
            .as_ref()
            .is_none_or(|s| region.hosts.contains(s.id.as_str()))
        && (!filters.unhealthy || !region.problems.is_empty())
}

/// Every store asked: what it answered, or why it did not.
/// `state`: the placement driver's word when it answered ("up", "disconnected", "down",
/// "offline", "tombstone"), else "up" for a store that answered and "unreachable".
fn stores_json(
    cluster: &Cluster,
    pd: Option<&flotilla_kv::service::proto::pd::PdStatusReply>,
) -> Vec<Value> {
    let state = |id: &str, reachable: bool| {
        pd.and_then(|p| p.stores.iter().find(|s| s.id == id))
            .map_or(if reachable { "up" } else { "unreachable" }, |s| {
                s.state.as_str()
            })
            .to_string()
    };
    let mut stores: Vec<Value> = cluster
        .replies
        .iter()
        .map(|r| {
            let leaders = r.regions.iter().filter(|i| i.role == "leader").count();
            json!({"id": r.store_id, "address": r.store, "reachable": true,
                   "cluster": format!("{:016x}", r.cluster), "regions": r.regions.len(),
                   "leaders": leaders, "state": state(&r.store_id, true)})
        })
        .collect();
    stores.extend(cluster.unreachable.iter().map(|(address, e)| {
        let id = cluster
            .directory
            .iter()
            .find(|(_, a)| *a == address)
            .map(|(id, _)| id.clone());
        let state = state(id.as_deref().unwrap_or(""), false);
        json!({"id": id, "address": address, "reachable": false, "error": e.to_string(),
               "regions": 0, "leaders": 0, "state": state})
    }));
    stores
}

/// A key for display: printable ASCII as is, other bytes as `\xNN` (`admin status` and
/// `admin split`: a binary key is shown exactly, never as lossy UTF-8).
pub(super) fn key_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

fn problem_json(problem: &Problem) -> Value {
    let mut object = Map::new();
    object.insert("reason".into(), Value::from(problem.reason.name()));
    if let Some(store) = &problem.store {
        object.insert("store".into(), Value::from(store.as_str()));
    }
    if let Some(behind) = problem.behind {
        object.insert("behind".into(), Value::from(behind));
    }
    Value::Object(object)
}

fn region_json(region: &Listed<'_>) -> Value {
    let info = region.info;
    json!({
        "id": info.id,
        "start": key_text(&info.start),
        "end": key_text(&info.end),
        "epoch": {"conf_version": info.conf_version, "version": info.version},
        "leader": if info.leader.is_empty() { Value::Null } else { Value::String(info.leader.clone()) },
        "leader_id": if info.leader_id.is_empty() { Value::Null } else { Value::String(info.leader_id.clone()) },
        "term": info.term,
        "peers": info.peers,
        "peer_ids": info.peer_ids,
        "learners": info.learners,
        "learner_ids": info.learner_ids,
        "commit_index": info.commit_index,
        "applied_index": info.applied_index,
        "problems": region.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "quorum": region.quorum,
    })
}

/// `id@address` (`id@?` when the address is not known).
fn named(id: &str, address: &str) -> String {
    format!("{id}@{}", if address.is_empty() { "?" } else { address })
}

fn problem_text(problem: &Problem) -> String {
    let mut text = problem.reason.name().to_string();
    if let Some(store) = &problem.store {
        text.push(' ');
        text.push_str(store);
    }
    if let Some(behind) = problem.behind {
        text.push_str(&format!(" ({behind} entries behind)"));
    }
    text
}

fn region_line(region: &Listed<'_>) -> String {
    let info = region.info;
    let mut line = format!(
        "region {:>3} [\"{}\", \"{}\") epoch {}/{} leader {} term {} peers {} learners {} commit {} applied {}",
        info.id,
        key_text(&info.start),
        key_text(&info.end),
        info.conf_version,
        info.version,
        if info.leader_id.is_empty() { "-".to_string() } else { named(&info.leader_id, &info.leader) },
        info.term,
        info.peer_ids.iter().zip(&info.peers).map(|(i, a)| named(i, a)).collect::<Vec<_>>().join(","),
        if info.learner_ids.is_empty() {
            "-".to_string()
        } else {
            info.learner_ids.iter().zip(&info.learners).map(|(i, a)| named(i, a)).collect::<Vec<_>>().join(",")
        },
        info.commit_index,
        info.applied_index
    );
    if !region.quorum {
        line.push_str(" NO QUORUM (a majority of its voters is unreachable)");
    }
    if !region.problems.is_empty() {
        let problems: Vec<String> = region.problems.iter().map(problem_text).collect();
        line.push_str(&format!(" unhealthy: {}", problems.join("; ")));
    }
    line
}

/// The stores' table.
fn store_lines(stores: &[Value]) -> Vec<String> {
    let text = |v: &Value| v.as_str().map_or("?".to_string(), str::to_string);
    let count = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let width = stores
        .iter()
        .map(|s| text(&s["address"]).len())
        .chain(["ADDRESS".len()])
        .max()
        .unwrap_or(0);
    let mut lines = vec![format!(
        "  {:<16}  {:<width$}  {:<9}  {:<12}  {:>7}  {:>7}",
        "STORE", "ADDRESS", "REACHABLE", "STATE", "REGIONS", "LEADERS"
    )];
    for store in stores {
        let reachable = store["reachable"] == Value::Bool(true);
        let mut line = format!(
            "  {:<16}  {:<width$}  {:<9}  {:<12}  {:>7}  {:>7}",
            text(&store["id"]),
            text(&store["address"]),
            if reachable { "yes" } else { "no" },
            text(&store["state"]),
            count(&store["regions"]),
            count(&store["leaders"]),
        );
        if let Some(error) = store["error"].as_str() {
            line.push_str(&format!("  ({error})"));
        }
        lines.push(line);
    }
    lines
}

/// The text answer: the summary, then the region lines that are due.
fn human(
    summary: &Summary,
    stores: &[Value],
    filters: &Filters,
    all: bool,
    listed: &[Listed<'_>],
) -> String {
    let mut lines = vec![format!(
        "stores: {} ({} reachable, {} unreachable)",
        summary.stores,
        summary.stores_reachable,
        summary.stores - summary.stores_reachable
    )];
    lines.extend(store_lines(stores));
    let mut regions = format!(
        "regions: {} ({} led, {} without leader), {} unhealthy",
        summary.regions,
        summary.led,
        summary.regions - summary.led,
        summary.unhealthy
    );
    if summary.unhealthy > 0 {
        let reasons: Vec<String> = summary
            .by_reason
            .iter()
            .map(|(reason, count)| format!("{} {count}", reason.name()))
            .collect();
        regions.push_str(&format!(" ({})", reasons.join(", ")));
    }
    lines.push(regions);
    if filters.any() {
        lines.push(format!(
            "{} region(s) match {}{}",
            listed.len(),
            filters.describe(),
            if listed.is_empty() { "" } else { ":" }
        ));
        lines.extend(listed.iter().map(region_line));
    } else if all || listed.len() <= REGION_LINES_MAX {
        lines.extend(listed.iter().map(region_line));
    } else {
        lines.push(format!(
            "{} region lines left out (more than {REGION_LINES_MAX}): --all lists every \
             region; --unhealthy, --store STORE or --region ID list some",
            listed.len()
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(regions: usize) -> Summary {
        Summary {
            stores: 0,
            stores_reachable: 0,
            regions,
            led: regions,
            unhealthy: 0,
            by_reason: BTreeMap::new(),
            listed: regions,
            applied_lag_max: APPLIED_LAG_MAX,
        }
    }

    fn lines_of(count: usize, filters: &Filters, all: bool) -> (usize, String) {
        let infos: Vec<RegionInfo> = (1..=count as u64)
            .map(|id| RegionInfo {
                id,
                ..RegionInfo::default()
            })
            .collect();
        let listed: Vec<Listed<'_>> = infos
            .iter()
            .map(|info| Listed {
                info,
                problems: Vec::new(),
                hosts: BTreeSet::new(),
                quorum: true,
            })
            .collect();
        let text = human(&summary(count), &[], filters, all, &listed);
        let lines = text.lines().filter(|l| l.starts_with("region ")).count();
        (lines, text)
    }

    const NONE: Filters = Filters {
        region: None,
        store: None,
        unhealthy: false,
    };

    #[test]
    fn region_lines_are_listed_up_to_the_limit_and_left_out_beyond_it() {
        assert_eq!(lines_of(REGION_LINES_MAX, &NONE, false).0, REGION_LINES_MAX);
        let (lines, text) = lines_of(REGION_LINES_MAX + 1, &NONE, false);
        assert_eq!(lines, 0, "{text}");
        assert!(
            text.ends_with(
                "51 region lines left out (more than 50): --all lists every region; \
                 --unhealthy, --store STORE or --region ID list some"
            ),
            "{text}"
        );
        assert_eq!(lines_of(REGION_LINES_MAX + 1, &NONE, true).0, 51);
        let unhealthy = Filters {
            unhealthy: true,
            ..NONE
        };
        let (lines, text) = lines_of(REGION_LINES_MAX + 1, &unhealthy, false);
        assert_eq!(lines, 51, "{text}");
        assert!(
            text.contains("\n51 region(s) match --unhealthy:\n"),
            "{text}"
        );
    }

    #[test]
    fn a_problem_shows_its_store_and_lag() {
        let problem = Problem {
            reason: Reason::Lagging,
            store: Some("000000000000000a".into()),
            behind: Some(1234),
        };
        assert_eq!(
            problem_text(&problem),
            "lagging 000000000000000a (1234 entries behind)"
        );
        assert_eq!(
            problem_json(&problem),
            json!({"reason": "lagging", "store": "000000000000000a", "behind": 1234})
        );
        let no_leader = Problem {
            reason: Reason::NoLeader,
            store: None,
            behind: None,
        };
        assert_eq!(problem_json(&no_leader), json!({"reason": "no_leader"}));
    }
}
