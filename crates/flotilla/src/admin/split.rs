//! `flotilla admin split --region R [--key K]`: splits region R at key K (default: the key
//! that halves the region's bytes) through its leader. The region keeps the keys before
//! K; a new region (its id from the placement driver) takes K and the keys after it, on
//! the same stores.
//!
//! Owns: finding the leader (the one the stores report first, then every store, a few
//! rounds while leadership moves) and the output. Must never: retry a split that may have
//! happened (an answer that did not come is reported as indeterminate).

use bytes::Bytes;
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::RegionInfo;
use serde_json::{json, Value};

use super::cluster::Cluster;
use super::status::key_text;
use crate::output::{success, Failure};

/// Rounds over the stores while no store takes the split as leader.
const ROUNDS: usize = 5;

fn region_json(region: &RegionInfo) -> Value {
    json!({
        "id": region.id,
        "start": key_text(&region.start),
        "end": key_text(&region.end),
        "conf_version": region.conf_version,
        "version": region.version,
    })
}

pub(super) async fn split(
    client: &KvClient,
    cluster: &Cluster,
    only: Option<u64>,
    key: Option<&str>,
) -> Result<(Value, String), Failure> {
    let Some(id) = only else {
        return Err(Failure::usage("split needs --region ID"));
    };
    if key == Some("") {
        return Err(Failure::usage(
            "split: --key may not be empty (leave it out to split at the middle)",
        ));
    }
    let key = key.unwrap_or("");
    let Some(region) = cluster.regions.iter().find(|r| r.id == id) else {
        return Err(Failure::failed(
            "NoSuchRegion",
            format!("no store reports region {id}"),
        ));
    };
    let mut candidates: Vec<String> = Vec::new();
    if !region.leader.is_empty() {
        candidates.push(region.leader.clone());
    }
    for address in cluster.addresses() {
        if !candidates.contains(&address) {
            candidates.push(address);
        }
    }
    let mut last = Failure::failed("NotLeader", format!("no store leads region {id}"));
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        for store in &candidates {
            match client
                .split_region(store, id, Bytes::copy_from_slice(key.as_bytes()))
                .await
            {
                Ok(reply) => {
                    let (Some(parent), Some(child)) = (reply.parent, reply.child) else {
                        return Err(Failure::failed(
                            "Unknown",
                            format!("{store} answered the split without the regions"),
                        ));
                    };
                    let human = format!(
                        "region {id} split at \"{}\": region {} keeps [\"{}\", \"{}\"), new region \
                         {} takes [\"{}\", \"{}\") (version {})",
                        key_text(&child.start),
                        parent.id,
                        key_text(&parent.start),
                        key_text(&parent.end),
                        child.id,
                        key_text(&child.start),
                        key_text(&child.end),
                        child.version
                    );
                    let value = success(vec![
                        ("region", region_json(&parent)),
                        ("child", region_json(&child)),
                    ]);
                    return Ok((value, human));
                }
                Err(e) if e.kind == "NotLeader" || e.kind == "NoSuchRegion" => {
                    last = e.into();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(last)
}
