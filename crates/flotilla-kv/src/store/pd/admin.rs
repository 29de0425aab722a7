//! What people ask of the placement driver (`flotilla admin pd ...`, `admin store ...`),
//! answered by the PD leader: its status, a setting changed, a store decommissioned,
//! scheduling paused or resumed, a region held while a person changes it.
//!
//! Owns: the checks of those requests (a key and value the configuration takes, a store
//! the PD knows, a region without an operator in flight). Must never: change anything
//! when it refuses.

use std::time::Instant;

use flotilla_pd::{PdCommand, PdOutput, StoreId, StoreMark};

use super::super::{lock, Store};
use super::leader::{finished_shown, operator_status, state_name, HOLD_MAX};
use crate::error::KvError;
use crate::service::proto::pd as proto;

fn source_name(source: flotilla_pd::ConfigSource) -> &'static str {
    match source {
        flotilla_pd::ConfigSource::Default => "default",
        flotilla_pd::ConfigSource::Flag => "flag",
        flotilla_pd::ConfigSource::Set => "set",
    }
}

fn outcome_text(outcome: &flotilla_pd::Outcome) -> String {
    match outcome {
        flotilla_pd::Outcome::Done => "done".into(),
        flotilla_pd::Outcome::Cancelled(why) => format!("cancelled: {why}"),
        flotilla_pd::Outcome::TimedOut(why) => format!("timed out: {why}"),
    }
}

impl Store {
    /// `admin pd status`.
    pub(crate) fn pd_status(&self) -> Result<proto::PdStatusReply, KvError> {
        let meta = self.pd_leading()?;
        let state = meta.handle.state();
        let warming_up = self.warming_up(&meta);
        let soft = lock(&self.inner.pd.leader);
        let view = self.cluster_view(&state, &soft);
        let stores = view
            .stores
            .iter()
            .map(|s| proto::StoreStatus {
                id: s.record.id.to_string(),
                address: s.record.address.clone(),
                labels: s.record.labels.clone().into_iter().collect(),
                state: state_name(s.state).to_string(),
                regions: s.region_count as u64,
                leaders: s.leader_count as u64,
                // The data dir's size as the store reported it (the planners weigh
                // region sizes instead: see `store_views`).
                used_bytes: soft.stores.get(&s.record.id).map_or(0, |x| x.used_bytes),
                last_heartbeat_ms_ago: soft
                    .stores
                    .get(&s.record.id)
                    .map(|x| u64::try_from(x.last.elapsed().as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        let operators = state
            .operators
            .values()
            .map(|op| operator_status(op, soft.running.get(&op.id).copied(), String::new()))
            .collect();
        let finished = state
            .finished
            .iter()
            .rev()
            .take(finished_shown())
            .map(|f| operator_status(&f.operator, None, outcome_text(&f.outcome)))
            .collect();
        let views: std::collections::HashMap<u64, &flotilla_pd::RegionView> =
            view.regions.iter().map(|r| (r.record.id, r)).collect();
        let regions = state
            .regions
            .values()
            .map(|record| {
                let live = soft.regions.get(&record.id);
                let region_view = views.get(&record.id);
                proto::RegionHealth {
                    id: record.id,
                    quorum: region_view.is_none_or(|r| flotilla_pd::has_quorum(r, &view.stores)),
                    leader: live.map(|r| r.leader.to_string()).unwrap_or_default(),
                    voters: record.voters.iter().map(ToString::to_string).collect(),
                    learners: record.learners.iter().map(ToString::to_string).collect(),
                    conf_version: record.conf_version,
                    version: record.version,
                    approximate_bytes: live.map_or(0, |r| r.bytes),
                    approximate_keys: live.map_or(0, |r| r.keys),
                    write_keys_per_sec: live.map_or(0, |r| r.write_rate),
                }
            })
            .collect();
        Ok(proto::PdStatusReply {
            leader_id: self.inner.id.as_str().to_string(),
            leader: self.inner.advertise.clone(),
            paused: state.config.paused,
            config: state
                .config
                .entries()
                .into_iter()
                .map(|(key, value)| proto::ConfigEntry {
                    key: key.to_string(),
                    value,
                    source: source_name(state.config.source(key)).to_string(),
                })
                .collect(),
            stores,
            operators,
            finished,
            regions,
            held: soft.held.keys().copied().collect(),
            warming_up,
        })
    }

    /// `admin pd config set KEY VALUE`: checked on a copy first, so a refusal changes
    /// nothing.
    pub(crate) async fn pd_config_set(
        &self,
        key: &str,
        value: &str,
    ) -> Result<proto::ConfigSetReply, KvError> {
        let meta = self.pd_leading()?;
        let mut config = meta.handle.with(|s| s.config.clone());
        let previous = config
            .entries()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_default();
        config.set(key, value).map_err(KvError::Refused)?;
        let command = PdCommand::SetConfig {
            key: key.to_string(),
            value: value.to_string(),
            source: flotilla_pd::ConfigSource::Set,
        };
        command
            .validate()
            .map_err(|e| KvError::Refused(e.to_string()))?;
        if let PdOutput::Refused(why) = self.pd_propose(&command).await? {
            return Err(KvError::Refused(why));
        }
        let now = meta
            .handle
            .with(|s| {
                s.config
                    .entries()
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v)
            })
            .unwrap_or_default();
        tracing::warn!(key, from = %previous, to = %now, "placement driver: setting changed");
        Ok(proto::ConfigSetReply {
            key: key.to_string(),
            value: now,
            previous,
        })
    }

    /// Hands out `count` new ids from the meta group's allocator (this store must lead
    /// it): `(first, count)`.
    pub(crate) async fn pd_alloc_ids(&self, count: u32) -> Result<(u64, u32), KvError> {
        self.pd_leading()?;
        let command = PdCommand::AllocIds { count };
        command
            .validate()
            .map_err(|e| KvError::Refused(e.to_string()))?;
        match self.pd_propose(&command).await? {
            PdOutput::Ids { first, count } => Ok((first, count)),
            PdOutput::Refused(why) => Err(KvError::Refused(why)),
            other => Err(KvError::Unknown(format!(
                "the meta group answered an id allocation with {other:?}"
            ))),
        }
    }

    /// `admin pd pause|resume`.
    pub(crate) async fn pd_pause(&self, paused: bool) -> Result<bool, KvError> {
        let reply = self
            .pd_config_set("paused", if paused { "true" } else { "false" })
            .await?;
        Ok(reply.value == "true")
    }

    /// `admin store remove STORE`: the store is marked offline; the checkers move its
    /// replicas off, then tombstone it.
    pub(crate) async fn pd_store_remove(
        &self,
        store: &str,
    ) -> Result<proto::StoreRemoveReply, KvError> {
        let meta = self.pd_leading()?;
        let id = StoreId::parse(store).map_err(|e| KvError::Refused(format!("store: {e}")))?;
        let (record, regions) = meta.handle.with(|s| {
            let regions = s.regions.values().filter(|r| r.has_peer(id)).count() as u64;
            (s.stores.get(&id).cloned(), regions)
        });
        let record = record
            .ok_or_else(|| KvError::Refused(format!("the placement driver knows no store {id}")))?;
        if record.state == StoreMark::Tombstone {
            return Err(KvError::Refused(format!(
                "store {id} is already a tombstone"
            )));
        }
        if record.state != StoreMark::Offline {
            let command = PdCommand::SetStoreMark {
                store: id,
                mark: StoreMark::Offline,
            };
            if let PdOutput::Refused(why) = self.pd_propose(&command).await? {
                return Err(KvError::Refused(why));
            }
            tracing::warn!(store = %id, regions, "placement driver: store being decommissioned: its replicas move off, then it is tombstoned");
        }
        Ok(proto::StoreRemoveReply {
            store: id.to_string(),
            state: "offline".into(),
            regions,
        })
    }

    /// `admin merge`: starts a `merge-region` operator of `source` into `target` (see
    /// [`flotilla_pd::plan_merge`] for what refuses it). Answers its id and steps.
    pub(crate) async fn pd_merge(
        &self,
        source: u64,
        target: u64,
    ) -> Result<(u64, Vec<String>), KvError> {
        let meta = self.pd_leading()?;
        let operator = {
            let state = meta.handle.state();
            let soft = lock(&self.inner.pd.leader);
            let view = self.cluster_view(&state, &soft);
            flotilla_pd::plan_merge(&view, source, target).map_err(KvError::Refused)?
        };
        let steps: Vec<String> = operator.steps.iter().map(ToString::to_string).collect();
        match self
            .pd_propose(&flotilla_pd::PdCommand::StartOperator(operator.clone()))
            .await?
        {
            flotilla_pd::PdOutput::Ids { first, .. } => {
                let mut started = operator;
                started.id = first;
                lock(&self.inner.pd.counts).started(started.kind.as_str());
                tracing::info!(source, target, operator = first, steps = %steps.join(", "), "placement driver: merge started by a person's command");
                self.spawn_operator(started);
                Ok((first, steps))
            }
            flotilla_pd::PdOutput::Refused(why) => Err(KvError::Refused(why)),
            other => Err(KvError::Unknown(format!(
                "the meta group answered {other:?} to a merge operator"
            ))),
        }
    }

    /// Holds (or releases) the checkers on a region while a person changes it; refused
    /// while an operator is in flight on it.
    pub(crate) fn pd_hold(&self, region: u64, hold: bool, by: &str) -> Result<bool, KvError> {
        let meta = self.pd_leading()?;
        if !hold {
            let mut soft = lock(&self.inner.pd.leader);
            soft.held.remove(&region);
            soft.generation += 1;
            tracing::info!(region, by, "placement driver: region released by a person");
            return Ok(false);
        }
        if let Some(op) = meta.handle.with(|s| s.operators.get(&region).cloned()) {
            return Err(KvError::Refused(format!(
                "the placement driver's operator {} ({}, step {} of {}) is changing region \
                 {region}: wait for it (`admin pd status`) or pause the placement driver",
                op.id,
                op.kind.as_str(),
                op.step + 1,
                op.steps.len()
            )));
        }
        let mut soft = lock(&self.inner.pd.leader);
        let now = Instant::now();
        soft.held
            .retain(|_, (_, since)| now.duration_since(*since) < HOLD_MAX);
        soft.held.insert(region, (by.to_string(), now));
        soft.generation += 1;
        tracing::info!(
            region,
            by,
            "placement driver: region held by a person's command; its checkers wait"
        );
        Ok(true)
    }
}
