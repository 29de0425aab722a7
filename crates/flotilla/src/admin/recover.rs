//! `flotilla admin recover --region R --force`: brings back a region that lost a majority
//! of its voters for good, by resetting its voters to the members that still answer
//! (SOFAJRaft's resetPeers on each survivor). The placement driver never does this by
//! itself: it may lose acknowledged writes (those only the lost members held).
//!
//! Which log wins: every survivor becomes a voter of a configuration of the survivors only,
//! and the next election among them follows raft's rule that a candidate's log must be at
//! least as up to date as the voter's, so the most up-to-date surviving log leads and the
//! others catch up from it. What each survivor held is printed first (applied and commit
//! index), and each store logs who reset it.
//!
//! Owns: the checks before the reset (a region that still has a quorum is refused; an
//! explicit `--force`). Must never: touch a region whose majority answers.

use serde_json::{json, Value};

use super::cluster::Cluster;
use crate::output::{cli_failure, success, Failure};
use flotilla_kv::client::KvClient;
use flotilla_node::grpc::{CliClient, CliOptions};
use flotilla_node::PeerId;

/// `admin recover`.
pub(super) async fn recover(
    client: &KvClient,
    cluster: &Cluster,
    region: Option<u64>,
    force: bool,
) -> Result<(Value, String), Failure> {
    let Some(id) = region else {
        return Err(Failure::usage("recover needs --region ID"));
    };
    let info =
        cluster.regions.iter().find(|r| r.id == id).ok_or_else(|| {
            Failure::failed("NoSuchRegion", format!("no store reports region {id}"))
        })?;
    // Survivors: voters whose store answered and still hosts the region, with what it holds.
    let mut survivors = Vec::new();
    for reply in &cluster.replies {
        if !info.peer_ids.contains(&reply.store_id) {
            continue;
        }
        if let Some(held) = reply.regions.iter().find(|r| r.id == id) {
            survivors.push((reply.store_id.clone(), reply.store.clone(), held.clone()));
        }
    }
    if survivors.is_empty() {
        return Err(Failure::failed(
            "NoSurvivor",
            format!("no voter of region {id} answers: nothing to recover from"),
        ));
    }
    if survivors.len() * 2 > info.peer_ids.len() {
        return Err(Failure::failed(
            "HasQuorum",
            format!(
                "region {id} still has a majority of its voters ({} of {} answer): it needs no \
                 recovery (if it has no leader, wait for an election)",
                survivors.len(),
                info.peer_ids.len()
            ),
        ));
    }
    let shown: Vec<Value> = survivors
        .iter()
        .map(|(store, address, held)| {
            json!({"store": store, "address": address, "applied_index": held.applied_index,
                   "commit_index": held.commit_index})
        })
        .collect();
    let mut human: Vec<String> = survivors
        .iter()
        .map(|(store, address, held)| {
            format!(
                "survivor {store}@{address}: applied {} commit {}",
                held.applied_index, held.commit_index
            )
        })
        .collect();
    if !force {
        return Err(Failure::usage(format!(
            "{}\nrecover resets region {id}'s voters to these survivors without consensus: \
             writes only the lost voters held are lost. Add --force to do it",
            human.join("\n")
        )));
    }
    let voters: Vec<PeerId> = survivors.iter().map(|(s, _, _)| PeerId::new(s)).collect();
    let endpoints: Vec<PeerId> = survivors.iter().map(|(_, a, _)| PeerId::new(a)).collect();
    let options = CliOptions {
        tls: client.options().tls.clone(),
        force: true,
        ..CliOptions::default()
    };
    let cli = CliClient::new(endpoints.clone(), id)
        .map_err(cli_failure)?
        .with_options(options);
    for on in &endpoints {
        cli.reset_peers(on, &voters).await.map_err(cli_failure)?;
    }
    let names: Vec<&str> = voters.iter().map(PeerId::as_str).collect();
    human.push(format!(
        "region {id}: voters reset to {} (was {}); the most up-to-date of them leads once \
         elected, and the placement driver adds replicas back to max-replicas",
        names.join(","),
        info.peer_ids.join(",")
    ));
    Ok((
        success(vec![
            ("region", Value::from(id)),
            ("voters_before", Value::from(info.peer_ids.clone())),
            ("survivors", Value::Array(shown)),
            ("voters", Value::from(names)),
        ]),
        human.join("\n"),
    ))
}
