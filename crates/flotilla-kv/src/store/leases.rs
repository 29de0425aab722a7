//! The lease reaper: ends the leases past their deadline whose home this store leads, and
//! deletes their keys (`crate::lease`).
//!
//! Every [`REAP_INTERVAL`], for each region this store leads, it looks at the leases the
//! region is home to. One past its deadline on its clock as this replica sees it, or
//! whose clock this replica has not seen since it started (after a restart or a leader
//! change time stands still until a lease's next entry: the reaper's `Expire` entry is
//! that entry), gets an `Expire`, proposed here in one batch per region. A lease that
//! ended (by that, or revoked with its deletion cut short) has its keys deleted where they
//! still follow it, in their own regions, through a client of the cluster, then forgotten
//! at the home in batches; the record goes with the last key.
//!
//! Owns: finding due leases and driving their end. Must never: end a lease before its
//! deadline (the state machine's `Expire` decides on the lease's clock, whatever the
//! reaper thought), or delete a key that follows another lease or none.

use std::time::Duration;

use crate::client::{ClientOptions, KvClient};
use crate::command::{KvCommand, KvOutput};
use crate::lease::{LeaseOp, LeaseRecord};

use super::{Store, StoreInner};

/// How often the reaper looks.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Leases one region's round looks at, at most.
const DUE_PER_ROUND: usize = 256;

/// Runs the reaper while the store lives.
pub(super) async fn reap_every(inner: std::sync::Weak<StoreInner>) {
    let mut ticks = tokio::time::interval(REAP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = Store { inner };
        store.reap_once().await;
        // Watch history's upkeep goes with it (`watch`).
        store.watch_upkeep().await;
    }
}

impl Store {
    /// One round of the reaper.
    async fn reap_once(&self) {
        let mut ended: Vec<(u64, LeaseRecord)> = Vec::new();
        for peer in self.all_peers() {
            if !peer.node.is_leader() || peer.machine.failed() {
                continue;
            }
            let region = peer.machine.region();
            let stamp = |id: u64| peer.machine.lease_stamp(&crate::lease::route_key(id));
            let due = match crate::lease::due(
                self.inner.engine.as_ref(),
                &region,
                stamp,
                DUE_PER_ROUND,
            ) {
                Ok(due) => due,
                Err(why) => {
                    tracing::warn!(region = %region.id, error = %why, "lease reaper: reading the leases failed");
                    continue;
                }
            };
            let (done, alive): (Vec<_>, Vec<_>) = due.into_iter().partition(|(_, r)| r.ended);
            ended.extend(done);
            if alive.is_empty() {
                continue;
            }
            // One entry for the region's due leases: each ends only if its clock, moved
            // by this entry's stamp, passed its deadline.
            let expire = KvCommand::Batch(
                alive
                    .iter()
                    .map(|(id, _)| KvCommand::Lease {
                        key: crate::lease::route_key(*id),
                        op: LeaseOp::Expire,
                        now_ms: 0,
                    })
                    .collect(),
            );
            match self.write(region.id, region.epoch, expire).await {
                Ok(KvOutput::Batch(results)) => {
                    for ((id, mut record), result) in alive.into_iter().zip(results) {
                        if let Ok(KvOutput::Lease(state)) = result {
                            if !state.alive {
                                tracing::info!(
                                    lease = id,
                                    keys = state.keys.len(),
                                    "lease expired"
                                );
                                record.ended = true;
                                record.keys = state.keys;
                                ended.push((id, record));
                            }
                        }
                    }
                }
                Ok(other) => {
                    tracing::warn!(region = %region.id, answer = ?other, "lease reaper: unexpected answer to the expiry");
                }
                // Not the leader any more, or busy: the next round looks again.
                Err(why) => {
                    tracing::debug!(region = %region.id, error = %why, "lease reaper: expiry not proposed");
                }
            }
        }
        if ended.is_empty() {
            return;
        }
        let Some(client) = self.cluster_client().await else {
            return;
        };
        for (id, record) in ended {
            let result = if record.keys.is_empty() {
                client
                    .lease(id, LeaseOp::Forget { keys: Vec::new() })
                    .await
                    .map(|_| 0)
            } else {
                client.delete_lease_keys(id, record.keys).await
            };
            match result {
                Ok(deleted) => {
                    tracing::info!(lease = id, deleted, "ended lease's keys deleted");
                }
                Err(why) => {
                    tracing::info!(lease = id, error = %why, "lease reaper: deleting keys not done yet");
                }
            }
        }
    }

    /// Keeps lease `id` alive at its home, wherever that is (`LeaseKeepAlive`).
    pub async fn lease_keep_alive(
        &self,
        id: u64,
    ) -> Result<crate::lease::LeaseState, crate::client::ClientError> {
        let Some(client) = self.cluster_client().await else {
            return Err(crate::client::ClientError {
                kind: "Unavailable".into(),
                message: "this store reaches no store of its cluster yet".into(),
                indeterminate: false,
            });
        };
        client.lease(id, LeaseOp::KeepAlive).await
    }

    /// The store's client of the cluster (made once, when first needed): every store this
    /// one knows of, with this store's TLS.
    pub(crate) async fn cluster_client(&self) -> Option<KvClient> {
        let mut client = self.inner.cluster_client.lock().await;
        if client.is_none() {
            let mut endpoints = vec![self.inner.advertise.clone()];
            for (_, address) in self.inner.addresses.entries() {
                if !endpoints.contains(&address) {
                    endpoints.push(address);
                }
            }
            let options = ClientOptions {
                tls: self.inner.tls.clone(),
                batching: false,
                ..ClientOptions::default()
            };
            match KvClient::connect(endpoints, options).await {
                Ok(made) => *client = Some(made),
                Err(why) => {
                    tracing::info!(error = %why, "no client of the cluster yet");
                    return None;
                }
            }
        }
        client.clone()
    }
}
