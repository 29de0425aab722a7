//! `flotilla admin pd ...` and `flotilla admin store ...`: what the placement driver knows
//! and does (its leader, configuration, stores, operators in flight and finished), its
//! settings, pause and resume, and decommissioning a store. Every call goes to the PD
//! leader: any store answers with a hint to it, which is followed.
//!
//! Owns: the PD calls of `admin` and their output (one JSON object with `--json`, the
//! contract scripts rely on; tables for people). Must never: print anything else on
//! stdout with `--json`.

use std::future::Future;

use clap::Subcommand;
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::pd::{self as proto, pd_client::PdClient};
use flotilla_kv::service::proto::RegionInfo;
use flotilla_node::grpc::{ERROR_KIND_KEY, LEADER_KEY};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::output::{success, Failure};

/// `admin pd ...`.
#[derive(Subcommand, Debug)]
pub enum PdOp {
    /// The PD leader, its configuration, every store with its state, the operators in
    /// flight and the last finished ones with their outcome.
    Status,
    /// Every setting with its value and where it came from (default, a server flag at
    /// bootstrap, or `config set`).
    ConfigShow,
    /// Changes one setting: max-replicas, max-store-down-time, store-disconnected-time,
    /// replica-ops-per-store-per-minute, leader-schedule-limit, replica-schedule-limit,
    /// operator-step-timeout, size-balance-percent, region-split-bytes, region-split-keys
    /// (durations written 500ms, 10s, 2m; sizes 4096, 64KiB, 96MiB, 1GiB).
    ConfigSet { key: String, value: String },
    /// Stops all scheduling (for maintenance); operators in flight finish.
    Pause,
    /// Starts scheduling again.
    Resume,
}

/// `admin store ...`.
#[derive(Subcommand, Debug)]
pub enum StoreOp {
    /// Every store the PD knows: id, address, labels, state, regions, leaders.
    List,
    /// Decommissions STORE (a store id): its replicas move to other stores, then it is
    /// tombstoned (a tombstone never comes back: start it with an empty data dir).
    Remove { store: String },
}

fn status_failure(status: &tonic::Status) -> Failure {
    let kind = status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unavailable");
    Failure::failed(kind, status.message().to_string())
}

/// Calls the PD leader with `call`: the `stores` (addresses) in turn, a refusal's hint
/// first.
pub(crate) async fn call_pd<T, F, Fut>(
    client: &KvClient,
    stores: &[String],
    call: F,
) -> Result<T, Failure>
where
    F: Fn(PdClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut queue: Vec<String> = stores.to_vec();
    let mut tried = std::collections::BTreeSet::new();
    let mut last = Failure::failed("Unavailable", "no endpoint to ask");
    while !queue.is_empty() {
        let address = queue.remove(0);
        if !tried.insert(address.clone()) || tried.len() > 16 {
            continue;
        }
        let channel = match client.channel(&address).await {
            Ok(channel) => channel,
            Err(e) => {
                last = Failure::failed(&e.kind, e.message);
                continue;
            }
        };
        let within = client.options().timeout;
        let Ok(answer) = tokio::time::timeout(within, call(PdClient::new(channel))).await else {
            last = Failure::failed(
                "Unavailable",
                format!("{address} did not answer within {within:?}"),
            );
            continue;
        };
        match answer {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => {
                if let Some(hint) = status
                    .metadata()
                    .get(LEADER_KEY)
                    .and_then(|v| v.to_str().ok())
                {
                    queue.insert(0, hint.to_string());
                }
                last = status_failure(&status);
                // The leader's own answer (a refusal, a bad setting) is final: asking the
                // other stores would only bury it under their "not the leader".
                if !matches!(
                    last.kind.as_str(),
                    "NotLeader" | "PdUnavailable" | "Unavailable" | "ShutDown"
                ) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn store_json(s: &proto::StoreStatus) -> Value {
    json!({
        "id": s.id,
        "address": s.address,
        "labels": s.labels,
        "state": s.state,
        "regions": s.regions,
        "leaders": s.leaders,
        "used_bytes": s.used_bytes,
        "last_heartbeat_ms_ago": s.last_heartbeat_ms_ago,
    })
}

fn operator_json(op: &proto::OperatorStatus) -> Value {
    let step = op
        .steps
        .get(usize::try_from(op.step).unwrap_or(usize::MAX))
        .cloned()
        .unwrap_or_else(|| "finished".into());
    let mut value = json!({
        "id": op.id,
        "region": op.region,
        "kind": op.kind,
        "step": step,
        "step_index": op.step,
        "steps": op.steps,
        "started_ms_ago": op.started_ms_ago,
    });
    if !op.outcome.is_empty() {
        value["outcome"] = Value::from(op.outcome.clone());
    }
    value
}

fn stores_table(stores: &[proto::StoreStatus]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<16}  {:<21}  {:<12}  {:>7}  {:>7}  labels",
        "store", "address", "state", "regions", "leaders"
    )];
    for s in stores {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!(
            "{:<16}  {:<21}  {:<12}  {:>7}  {:>7}  {}",
            s.id,
            s.address,
            s.state,
            s.regions,
            s.leaders,
            labels.join(",")
        ));
    }
    lines
}

fn operator_line(op: &proto::OperatorStatus) -> String {
    let mut line = format!(
        "  #{} region {} {}: {}",
        op.id,
        op.region,
        op.kind,
        op.steps
            .iter()
            .enumerate()
            .map(|(i, s)| if i as u64 == op.step && op.outcome.is_empty() {
                format!("[{s}]")
            } else {
                s.clone()
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    if op.outcome.is_empty() {
        line.push_str(&format!(" (started {} ms ago)", op.started_ms_ago));
    } else {
        line.push_str(&format!(" -> {}", op.outcome));
    }
    line
}

async fn status(client: &KvClient, stores: &[String]) -> Result<proto::PdStatusReply, Failure> {
    call_pd(client, stores, |mut c| async move {
        c.status(proto::PdStatusRequest {}).await
    })
    .await
}

/// The PD's status, or `None` when no PD answers (a cluster from before the PD).
pub(super) async fn try_status(
    client: &KvClient,
    stores: &[String],
) -> Option<proto::PdStatusReply> {
    status(client, stores).await.ok()
}

/// Runs an `admin pd` operation.
pub(super) async fn pd(
    client: &KvClient,
    stores: &[String],
    op: PdOp,
) -> Result<(Value, String), Failure> {
    match op {
        PdOp::Status => {
            let s = status(client, stores).await?;
            let lost: Vec<u64> = s
                .regions
                .iter()
                .filter(|r| !r.quorum)
                .map(|r| r.id)
                .collect();
            // Sizes as each region's leader last measured them (the PD's balance by size).
            let region_bytes: u64 = s.regions.iter().map(|r| r.approximate_bytes).sum();
            let region_keys: u64 = s.regions.iter().map(|r| r.approximate_keys).sum();
            // The regions closest to `region-split-bytes` / `region-split-keys`.
            let largest_bytes = s.regions.iter().map(|r| r.approximate_bytes).max();
            let largest_keys = s.regions.iter().map(|r| r.approximate_keys).max();
            let value = success(vec![
                ("leader", Value::from(s.leader.clone())),
                ("leader_id", Value::from(s.leader_id.clone())),
                ("paused", Value::from(s.paused)),
                ("warming_up", Value::from(s.warming_up)),
                ("config", config_json(&s.config)),
                (
                    "stores",
                    Value::Array(s.stores.iter().map(store_json).collect()),
                ),
                (
                    "operators",
                    Value::Array(s.operators.iter().map(operator_json).collect()),
                ),
                (
                    "finished",
                    Value::Array(s.finished.iter().map(operator_json).collect()),
                ),
                ("regions", Value::from(s.regions.len())),
                ("region_bytes", Value::from(region_bytes)),
                ("region_keys", Value::from(region_keys)),
                (
                    "largest_region_bytes",
                    Value::from(largest_bytes.unwrap_or(0)),
                ),
                (
                    "largest_region_keys",
                    Value::from(largest_keys.unwrap_or(0)),
                ),
                ("regions_without_quorum", Value::from(lost.clone())),
                (
                    "meta_voters",
                    Value::from(
                        s.regions
                            .iter()
                            .find(|r| r.id == 0)
                            .map(|r| r.voters.clone())
                            .unwrap_or_default(),
                    ),
                ),
                ("held", Value::from(s.held.clone())),
            ]);
            let mut human = vec![format!(
                "placement driver: leader {}@{}{}{}",
                s.leader_id,
                s.leader,
                if s.paused { " (paused)" } else { "" },
                if s.warming_up {
                    " (waiting for the stores' heartbeats)"
                } else {
                    ""
                }
            )];
            human.extend(stores_table(&s.stores));
            human.push(format!(
                "regions: {}, about {region_bytes} bytes in {region_keys} keys (the largest region: \
                 {} bytes, {} keys; {} without quorum{})",
                s.regions.len(),
                largest_bytes.unwrap_or(0),
                largest_keys.unwrap_or(0),
                lost.len(),
                if lost.is_empty() {
                    String::new()
                } else {
                    format!(": {lost:?}")
                }
            ));
            human.push(format!("operators in flight: {}", s.operators.len()));
            human.extend(s.operators.iter().map(operator_line));
            human.push(format!("finished (latest first): {}", s.finished.len()));
            human.extend(s.finished.iter().map(operator_line));
            Ok((value, human.join("\n")))
        }
        PdOp::ConfigShow => {
            let s = status(client, stores).await?;
            let human = s
                .config
                .iter()
                .map(|c| format!("{:<34} {:<10} ({})", c.key, c.value, c.source))
                .collect::<Vec<_>>()
                .join("\n");
            Ok((success(vec![("config", config_json(&s.config))]), human))
        }
        PdOp::ConfigSet { key, value } => {
            let request = proto::ConfigSetRequest { key, value };
            let reply = call_pd(client, stores, |mut c| {
                let request = request.clone();
                async move { c.config_set(request).await }
            })
            .await?;
            let human = format!("{}: {} (was {})", reply.key, reply.value, reply.previous);
            Ok((
                success(vec![
                    ("key", Value::from(reply.key)),
                    ("value", Value::from(reply.value)),
                    ("previous", Value::from(reply.previous)),
                ]),
                human,
            ))
        }
        PdOp::Pause | PdOp::Resume => {
            let paused = matches!(op, PdOp::Pause);
            let reply = call_pd(client, stores, |mut c| async move {
                c.pause(proto::PauseRequest { paused }).await
            })
            .await?;
            let human = if reply.paused {
                "placement driver paused: no new operator starts".to_string()
            } else {
                "placement driver scheduling".to_string()
            };
            Ok((success(vec![("paused", Value::from(reply.paused))]), human))
        }
    }
}

fn config_json(config: &[proto::ConfigEntry]) -> Value {
    Value::Array(
        config
            .iter()
            .map(|c| json!({"key": c.key, "value": c.value, "source": c.source}))
            .collect(),
    )
}

/// Holds the placement driver's checkers on `regions` while a person changes them (so the
/// two never fight); refused while an operator of the PD is in flight on one of them (the
/// refusal says which). Answers the regions held. A cluster without a placement driver
/// (bootstrapped before it) holds nothing.
pub(super) async fn hold(
    client: &KvClient,
    stores: &[String],
    regions: &[RegionInfo],
) -> Result<Vec<u64>, Failure> {
    let by = format!("flotilla admin (pid {})", std::process::id());
    let mut held = Vec::new();
    for info in regions {
        let request = proto::HoldRequest {
            region: info.id,
            hold: true,
            by: by.clone(),
        };
        let result = call_pd(client, stores, |mut c| {
            let request = request.clone();
            async move { c.hold(request).await }
        })
        .await;
        match result {
            Ok(_) => held.push(info.id),
            Err(failure) if failure.kind == "Refused" => {
                release(client, stores, &held).await;
                return Err(failure);
            }
            Err(failure) => {
                eprintln!(
                    "note: the placement driver did not answer ({}): region {} is changed                      without holding its checkers",
                    failure.message, info.id
                );
            }
        }
    }
    if !held.is_empty() {
        eprintln!(
            "the placement driver's checkers wait on {} region(s) until this command ends",
            held.len()
        );
    }
    Ok(held)
}

/// Releases the regions [`hold`] held (best effort: a hold lapses by itself after ten
/// minutes).
pub(super) async fn release(client: &KvClient, stores: &[String], held: &[u64]) {
    for region in held {
        let request = proto::HoldRequest {
            region: *region,
            hold: false,
            by: String::new(),
        };
        let _ = call_pd(client, stores, |mut c| {
            let request = request.clone();
            async move { c.hold(request).await }
        })
        .await;
    }
}

/// Runs an `admin store` operation.
pub(super) async fn store(
    client: &KvClient,
    stores: &[String],
    op: StoreOp,
) -> Result<(Value, String), Failure> {
    match op {
        StoreOp::List => {
            let s = status(client, stores).await?;
            Ok((
                success(vec![(
                    "stores",
                    Value::Array(s.stores.iter().map(store_json).collect()),
                )]),
                stores_table(&s.stores).join("\n"),
            ))
        }
        StoreOp::Remove { store } => {
            let request = proto::StoreRemoveRequest { store };
            let reply = call_pd(client, stores, |mut c| {
                let request = request.clone();
                async move { c.store_remove(request).await }
            })
            .await?;
            let human = format!(
                "store {} is {}: its {} replica(s) move to other stores, then it becomes a \
                 tombstone (`admin store list` shows the progress)",
                reply.store, reply.state, reply.regions
            );
            Ok((
                success(vec![
                    ("store", Value::from(reply.store)),
                    ("state", Value::from(reply.state)),
                    ("regions", Value::from(reply.regions)),
                ]),
                human,
            ))
        }
    }
}
