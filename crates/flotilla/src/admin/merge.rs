//! `flotilla admin --region SOURCE merge --into TARGET`: asks the placement driver to merge
//! region SOURCE into its neighbour TARGET (a `merge-region` operator: SOURCE's replicas
//! moved onto TARGET's stores, then PrepareMerge, then CommitMerge), and waits for the
//! operator's end (`--wait-ms`, 0: do not wait).
//!
//! Owns: the request and the wait. Must never: report a merge done that the PD has not
//! recorded done (a wait that runs out says the operator is still in flight).

use std::time::{Duration, Instant};

use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::pd as proto;
use serde_json::{json, Value};

use super::pd::call_pd;
use crate::output::{success, Failure};

/// Pause between two looks at the operator.
const POLL: Duration = Duration::from_millis(200);

pub(super) async fn merge(
    client: &KvClient,
    stores: &[String],
    source: Option<u64>,
    target: u64,
    wait: Duration,
) -> Result<(Value, String), Failure> {
    let Some(source) = source else {
        return Err(Failure::usage("merge needs --region SOURCE"));
    };
    let request = proto::MergeRequest { source, target };
    let started = call_pd(
        client,
        stores,
        |mut c| async move { c.merge(request).await },
    )
    .await?;
    let operator = started.operator;
    let mut human = format!(
        "merge of region {source} into region {target}: operator {operator} ({})",
        started.steps.join(", ")
    );
    if wait.is_zero() {
        return Ok((
            success(vec![
                ("operator", json!(operator)),
                ("steps", json!(started.steps)),
                ("outcome", Value::Null),
            ]),
            human,
        ));
    }
    let deadline = Instant::now() + wait;
    loop {
        let status = call_pd(client, stores, |mut c| async move {
            c.status(proto::PdStatusRequest {}).await
        })
        .await;
        if let Ok(status) = status {
            if let Some(done) = status.finished.iter().find(|o| o.id == operator) {
                if done.outcome != "done" {
                    return Err(Failure::failed(
                        "Refused",
                        format!("merge of region {source} into {target}: {}", done.outcome),
                    ));
                }
                human.push_str(": done");
                return Ok((
                    success(vec![
                        ("operator", json!(operator)),
                        ("steps", json!(started.steps)),
                        ("outcome", json!("done")),
                    ]),
                    human,
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::failed(
                "Unknown",
                format!(
                    "merge of region {source} into {target}: operator {operator} still in \
                     flight after {wait:?} (`admin pd status` shows it)"
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
