//! The placement driver while this store leads the meta group: what the heartbeats say
//! (soft state, in memory only, gathered afresh by every new leader), the answers to the
//! PD service, and the scheduling loop — wait for the stores' heartbeats after becoming
//! leader, resume or cancel the operators inherited, then plan with `flotilla_pd::plan`
//! and start what it proposes (each operator recorded in the meta group before its first
//! step, driven by `execute`).
//!
//! Owns: [`LeaderState`] and the view the planners see. Must never: plan from a view older
//! than the warm-up (a store not heard from yet would look down), write a heartbeat to the
//! meta group, or start a second operator on a region.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Weak;
use std::time::{Duration, Instant};

use flotilla_pd::{
    ClusterView, PdCommand, PdOutput, PdState, RegionRecord, RegionView, StoreId, StoreMark,
    StoreRecord, StoreState, StoreView,
};

use super::super::{lock, Store, StoreInner};
use super::runtime::{Fingerprint, LeaderState, MetaPeer, RegionSoft, StoreSoft, META_GROUP};
use crate::error::KvError;
use crate::ids::RegionId;
use crate::service::proto::pd as proto;

/// How often the scheduler looks at the cluster.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);
/// Most time between two rounds while nothing moves (see `nothing_moved`): what changes
/// with time alone (a hold lapsing after ten minutes) waits at most this long.
const QUIET_ROUND_MAX: Duration = Duration::from_secs(60);
/// The least time between two rounds that an operator's end started.
const SCHEDULE_GAP_MIN: Duration = Duration::from_millis(50);
/// A person's hold on a region lapses after this long (a crashed `admin` holds nothing
/// for ever).
pub(crate) const HOLD_MAX: Duration = Duration::from_secs(600);
/// A region an operator just finished on waits for its leader's next report at most this
/// long before it is planned again (the report that shows the operator's work usually
/// comes within a second; it may also have come just before the operator's end was
/// recorded, and a sleeping region sends no other).
const SETTLE_MAX: Duration = Duration::from_secs(5);
/// After the last store's first heartbeat, how long a new leader waits for the region
/// reports that heartbeat asked for.
const REPORTS_GRACE: Duration = Duration::from_secs(2);
/// Finished operators `admin pd status` lists.
const FINISHED_SHOWN: usize = 16;
/// How long a region's reports must have said it is written at or above
/// How long at most the PD plans nothing on a merge's target while it waits for the
/// target's report of the merged range.
const MERGE_TARGET_HOLD_MAX: Duration = Duration::from_secs(60);

/// `region-split-load` (every report since the first such one; a report below it starts
/// again) before it counts as hot, in store heartbeats: a minute at the default
/// `--pd-heartbeat-ms`. A burst of writes, a benchmark's first seconds, splits nothing. A
/// leader reports a region again when its rate moves by more than a quarter.
const HOT_HOLD_HEARTBEATS: u32 = 6;
/// Most stopped replicas one store heartbeat names (the rest wait for the next ones to be
/// replaced first).
const FAILED_REPORTED_MAX: usize = 1024;

/// A store id sent by a store, checked.
fn store_id(text: &str, what: &str) -> Result<StoreId, KvError> {
    StoreId::parse(text).map_err(|e| KvError::Refused(format!("{what}: {e}")))
}

fn store_ids(list: &[String], what: &str) -> Result<BTreeSet<StoreId>, KvError> {
    list.iter().map(|id| store_id(id, what)).collect()
}

/// The state name `admin` prints.
pub(crate) fn state_name(state: StoreState) -> &'static str {
    match state {
        StoreState::Up => "up",
        StoreState::Disconnected => "disconnected",
        StoreState::Down => "down",
        StoreState::Offline => "offline",
        StoreState::Tombstone => "tombstone",
    }
}

impl Store {
    /// This store's meta group peer if it leads the meta group; else the refusal naming
    /// the PD leader when known.
    pub(crate) fn pd_leading(&self) -> Result<MetaPeer, KvError> {
        match self.meta_peer() {
            Some(meta) if meta.node.is_leader() => Ok(meta),
            _ => match self.pd_leader_address() {
                Some(leader) if leader != self.inner.advertise => Err(KvError::NotLeader {
                    region: RegionId(META_GROUP),
                    leader: Some(leader),
                }),
                _ => Err(KvError::Node {
                    kind: "PdUnavailable".into(),
                    message: "no placement driver leader is known here yet (the meta group \
                              may be electing one): retry shortly"
                        .into(),
                }),
            },
        }
    }

    /// How long the store `id` has not been heard from (since this leader started when
    /// never), and its state.
    fn store_state_of(
        &self,
        soft: &LeaderState,
        record: &StoreRecord,
        state: &PdState,
    ) -> StoreState {
        let since = soft
            .stores
            .get(&record.id)
            .map(|s| s.last.elapsed())
            .or_else(|| soft.since.map(|s| s.elapsed()));
        flotilla_pd::store_state(record.state, since, &state.config)
    }

    /// Answers a store heartbeat (on the PD leader).
    pub(crate) async fn on_store_heartbeat(
        &self,
        request: proto::StoreHeartbeatRequest,
    ) -> Result<proto::StoreHeartbeatReply, KvError> {
        let meta = self.pd_leading()?;
        if request.cluster != self.cluster() {
            return Err(KvError::Refused(format!(
                "store heartbeat from cluster {:016x}, this is {:016x}",
                request.cluster,
                self.cluster()
            )));
        }
        let info = request
            .store
            .as_ref()
            .ok_or_else(|| KvError::Refused("store heartbeat without a store".into()))?;
        let id = store_id(&info.id, "store heartbeat")?;
        if !info.address.is_empty() {
            flotilla_node::identity::check_address(&info.address)
                .map_err(|e| KvError::Refused(format!("store heartbeat: {e}")))?;
        }
        if info.labels.len() > 16 {
            return Err(KvError::Refused(
                "store heartbeat: more than 16 labels".into(),
            ));
        }
        let labels: BTreeMap<String, String> = info.labels.clone().into_iter().collect();
        let known = meta.handle.with(|state| state.stores.get(&id).cloned());
        let changed = known
            .as_ref()
            .is_none_or(|r| r.address != info.address || r.labels != labels);
        if changed {
            let record = StoreRecord {
                id,
                address: info.address.clone(),
                labels,
                state: known.as_ref().map_or(StoreMark::Serving, |r| r.state),
            };
            match self.pd_propose(&PdCommand::PutStore(record)).await? {
                PdOutput::Refused(why) => return Err(KvError::Refused(why)),
                _ => {
                    tracing::info!(store = %id, address = %info.address, "placement driver: store registered")
                }
            }
        }
        let merged = lock(&self.inner.pd.leader).merged.clone();
        let (stale, stores) = meta.handle.with(|state| {
            let stores = state
                .stores
                .values()
                .filter(|s| s.state != StoreMark::Tombstone && !s.address.is_empty())
                .map(|s| proto::PdStore {
                    id: s.id.to_string(),
                    address: s.address.clone(),
                    labels: std::collections::HashMap::new(),
                })
                .collect();
            (stale_peers(state, id, &request.peers, &merged), stores)
        });
        let now = Instant::now();
        let (first_time, to_open) = {
            let mut soft = lock(&self.inner.pd.leader);
            let previous = soft.stores.get(&id);
            let first = previous.map(|s| s.first);
            let seen_missing = previous.map(|s| s.missing.clone()).unwrap_or_default();
            let missing = if request.peers.is_empty() {
                seen_missing.clone()
            } else {
                let held = &soft.held;
                meta.handle
                    .with(|state| missing_peers(state, id, &request.peers, held))
            };
            // Missing in two lists in a row (a split applied between the list and the
            // child's start, or a region being opened, is not yet missing).
            let to_open: Vec<u64> = if request.peers.is_empty() {
                Vec::new()
            } else {
                missing.intersection(&seen_missing).copied().collect()
            };
            soft.stores.insert(
                id,
                StoreSoft {
                    first: first.unwrap_or(now),
                    last: now,
                    used_bytes: request.used_bytes,
                    missing,
                    failed: request
                        .failed_regions
                        .iter()
                        .copied()
                        .take(FAILED_REPORTED_MAX)
                        .collect(),
                },
            );
            if first.is_none() {
                soft.generation += 1;
            }
            (first.is_none(), to_open)
        };
        for region in to_open {
            let Some(record) = meta
                .handle
                .with(|state| state.regions.get(&region).cloned())
            else {
                continue;
            };
            tracing::info!(store = %id, region, "placement driver: the store lacks its peer of a region that counts it (a split it passed over by installing a later snapshot of the parent); opening the peer there");
            let store = self.clone();
            tokio::spawn(async move {
                if let Err(e) = store.open_peer_on(&record, id).await {
                    tracing::warn!(store = %id, region = record.id, error = %e, "placement driver: cannot open a missing peer; the next peer list tries again");
                }
            });
        }
        Ok(proto::StoreHeartbeatReply {
            stale,
            pd_leader_id: self.inner.id.as_str().to_string(),
            pd_leader: self.inner.advertise.clone(),
            report_all: first_time,
            stores,
        })
    }

    /// Takes region leaders' reports (on the PD leader): the durable record changes only
    /// when the region's epoch or members did.
    pub(crate) async fn on_region_heartbeat(
        &self,
        request: proto::RegionHeartbeatRequest,
    ) -> Result<(), KvError> {
        let meta = self.pd_leading()?;
        if request.cluster != self.cluster() {
            return Err(KvError::Refused(
                "region heartbeat from another cluster".into(),
            ));
        }
        for report in request.regions {
            let leader = store_id(&report.leader, "region report leader")?;
            let record = RegionRecord {
                id: report.id,
                start: report.start.clone(),
                end: report.end.clone(),
                conf_version: report.conf_version,
                version: report.version,
                voters: store_ids(&report.voters, "region report voter")?,
                learners: store_ids(&report.learners, "region report learner")?,
            };
            let current = meta
                .handle
                .with(|state| state.regions.get(&record.id).cloned());
            let newer = current.as_ref().is_none_or(|c| {
                (record.conf_version, record.version) >= (c.conf_version, c.version)
                    && (c.voters != record.voters
                        || c.learners != record.learners
                        || c.conf_version != record.conf_version
                        || c.version != record.version
                        || c.start != record.start
                        || c.end != record.end)
            });
            let stale_report = current.as_ref().is_some_and(|c| {
                (record.conf_version, record.version) < (c.conf_version, c.version)
            });
            if newer {
                if let PdOutput::Refused(why) = self
                    .pd_propose(&PdCommand::PutRegion(record.clone()))
                    .await?
                {
                    tracing::debug!(region = record.id, why, "placement driver kept its record");
                }
            }
            if !stale_report {
                let split_load = meta.handle.with(|state| state.config.region_split_load);
                let mut soft = lock(&self.inner.pd.leader);
                // Since when its reports say it is written at or above `region-split-load`
                // (a report below it, or a new version, starts again: the halves of a
                // split are measured afresh).
                let hot = split_load > 0 && report.write_keys_per_sec >= split_load;
                let hot_since = match soft.regions.get(&record.id) {
                    Some(p) if hot && p.version == record.version => p.hot_since,
                    _ => None,
                }
                .or_else(|| hot.then(Instant::now));
                let version_since = match soft.regions.get(&record.id) {
                    Some(p) if p.version == record.version => p.version_since,
                    _ => Instant::now(),
                };
                let previous = soft.regions.insert(
                    record.id,
                    RegionSoft {
                        leader,
                        joint: report.joint,
                        bytes: report.approximate_bytes,
                        keys: report.approximate_keys,
                        write_rate: report.write_keys_per_sec,
                        hot_since,
                        version: record.version,
                        version_since,
                        at: Instant::now(),
                    },
                );
                // A report that changes nothing still counts for `finished_at`'s settling,
                // which a round with a region waiting never skips.
                if previous.is_none_or(|p| {
                    p.leader != leader
                        || p.joint != report.joint
                        || p.bytes != report.approximate_bytes
                        || p.keys != report.approximate_keys
                        || p.hot_since.is_some() != hot_since.is_some()
                }) {
                    soft.generation += 1;
                }
            }
        }
        Ok(())
    }

    /// The view the planners see: the durable state with the soft state over it.
    pub(crate) fn cluster_view(&self, state: &PdState, soft: &LeaderState) -> ClusterView {
        let stores = self.store_views(state, soft);
        let hot_hold = self.inner.pd.heartbeat.saturating_mul(HOT_HOLD_HEARTBEATS);
        let healthy: BTreeSet<StoreId> = stores
            .iter()
            .filter(|s| matches!(s.state, StoreState::Up | StoreState::Offline))
            .map(|s| s.record.id)
            .collect();
        // Stores whose replica of a region stopped, by region (only up stores: a down
        // store's voters are replaced as such).
        let mut failed_on: BTreeMap<u64, Vec<StoreId>> = BTreeMap::new();
        for (store, store_soft) in &soft.stores {
            if healthy.contains(store) {
                for region in &store_soft.failed {
                    failed_on.entry(*region).or_default().push(*store);
                }
            }
        }
        let regions = state
            .regions
            .values()
            .filter(|r| {
                soft.held
                    .get(&r.id)
                    .is_none_or(|(_, since)| since.elapsed() >= HOLD_MAX)
                    && !soft.merged.contains(&r.id)
                    && soft.merge_targets.get(&r.id).is_none_or(|(before, since)| {
                        r.version > *before || since.elapsed() >= MERGE_TARGET_HOLD_MAX
                    })
            })
            .map(|record| {
                let live = soft.regions.get(&record.id);
                let failed = failed_on.get(&record.id).cloned().unwrap_or_default();
                RegionView {
                    record: record.clone(),
                    leader: live.map(|l| l.leader).filter(|l| healthy.contains(l)),
                    approximate_bytes: live.map_or(0, |l| l.bytes),
                    approximate_keys: live.map_or(0, |l| l.keys),
                    hot: live.is_some_and(|l| {
                        l.hot_since.is_some_and(|since| since.elapsed() >= hot_hold)
                    }),
                    settled: live.is_some_and(|l| {
                        l.version_since.elapsed() >= state.config.split_merge_interval
                    }),
                    in_joint: live.is_some_and(|l| l.joint),
                    failed,
                }
            })
            .collect();
        ClusterView {
            config: state.config.clone(),
            stores,
            regions,
            operators: state.operators.values().cloned().collect(),
        }
    }

    /// The stores as the planners see them, with their replica and leader counts.
    pub(crate) fn store_views(&self, state: &PdState, soft: &LeaderState) -> Vec<StoreView> {
        // Leaders of regions only: where the meta group is led is not balanced (the leader
        // planner leaves it alone), so it does not count either.
        let mut leaders: HashMap<StoreId, usize> = HashMap::new();
        for (id, region) in &soft.regions {
            if *id != META_GROUP {
                *leaders.entry(region.leader).or_default() += 1;
            }
        }
        // A store's bytes, for balance by size, are its regions' sizes as their leaders
        // measured them, not its data dir's size: raft logs (compacted only at snapshots),
        // preallocated segments and a destroyed replica's files still on disk dominate that,
        // and it lags the moves by a measurement and a heartbeat. Balancing on it moved
        // replicas onto new stores and back every round (found by the Docker drift test
        // with 20 MB of data). Region sizes move with the records, as the planners project.
        let mut hosted: HashMap<StoreId, (usize, u64)> = HashMap::new();
        for region in state.regions.values() {
            let bytes = soft.regions.get(&region.id).map_or(0, |l| l.bytes);
            for s in region.voters.iter().chain(&region.learners) {
                let entry = hosted.entry(*s).or_default();
                entry.0 += 1;
                entry.1 = entry.1.saturating_add(bytes);
            }
        }
        let mut views = self.store_states(state, soft);
        for view in &mut views {
            let (regions, bytes) = hosted.get(&view.record.id).copied().unwrap_or((0, 0));
            view.region_count = regions;
            view.used_bytes = bytes;
            view.leader_count = leaders.get(&view.record.id).copied().unwrap_or(0);
        }
        views
    }

    /// The stores with their states, bytes and per-minute counts, but region and leader
    /// counts left at 0: enough for the safety checks (`has_quorum`, `step_is_safe` read
    /// states only) without a walk over every region.
    pub(crate) fn store_states(&self, state: &PdState, soft: &LeaderState) -> Vec<StoreView> {
        state
            .stores
            .values()
            .map(|record| {
                let (recent_adds, recent_removes) = soft.recent_counts(record.id);
                StoreView {
                    record: record.clone(),
                    state: self.store_state_of(soft, record, state),
                    region_count: 0,
                    leader_count: 0,
                    used_bytes: soft.stores.get(&record.id).map_or(0, |s| s.used_bytes),
                    recent_adds,
                    recent_removes,
                }
            })
            .collect()
    }

    /// One round of the scheduler on the PD leader.
    async fn schedule_round(&self, meta: &MetaPeer) {
        let term = meta.node.status().term.0;
        let fresh = {
            let mut soft = lock(&self.inner.pd.leader);
            if soft.term != term || soft.since.is_none() {
                *soft = LeaderState {
                    term,
                    since: Some(Instant::now()),
                    ..LeaderState::default()
                };
                true
            } else {
                false
            }
        };
        if fresh {
            tracing::info!(store = %self.inner.id, term, "this store is the placement driver now; waiting for the stores' heartbeats before scheduling");
        }
        if !lock(&self.inner.pd.leader).seeded {
            self.seed_settings(meta).await;
        }
        if self.warming_up(meta) {
            return;
        }
        self.tombstone_emptied(meta).await;
        self.resume_operators(meta);
        if self.nothing_moved(meta) {
            return;
        }
        let view = {
            let soft = lock(&self.inner.pd.leader);
            meta.handle.with(|state| self.cluster_view(state, &soft))
        };
        self.name_regions_without_quorum(&view);
        if view.config.paused {
            return;
        }
        let mut view = view;
        let settled = {
            let soft = lock(&self.inner.pd.leader);
            let before = view.regions.len();
            view.regions.retain(|r| {
                let reported = soft.regions.get(&r.record.id).map(|s| s.at);
                soft.finished_at.get(&r.record.id).is_none_or(|done| {
                    reported.is_some_and(|at| at > *done) || done.elapsed() >= SETTLE_MAX
                })
            });
            view.regions.len() == before
                && !view
                    .operators
                    .iter()
                    .any(|o| !o.kind.moves_leadership_only())
        };
        // Balance replicas only over a settled view: with replica moves running, or
        // finished but not reported yet, the stores' counts lag, and balancing on them
        // moves replicas back and forth. Repairs and leader balance go on regardless (the
        // planner projects the operators in flight; a transfer done updates its region's
        // leader at once).
        let planned = if settled {
            flotilla_pd::plan(&view)
        } else {
            flotilla_pd::plan_repairs_and_leaders(&view)
        };
        if planned.is_empty() && settled {
            // Nothing to do over a settled view: until something moves, neither is there
            // next time (`nothing_moved`).
            let fingerprint = self.fingerprint(meta);
            lock(&self.inner.pd.leader).quiet = Some((fingerprint, Instant::now()));
        } else {
            lock(&self.inner.pd.leader).quiet = None;
        }
        for operator in planned {
            let region = operator.region;
            match self
                .pd_propose(&PdCommand::StartOperator(operator.clone()))
                .await
            {
                Ok(PdOutput::Ids { first, .. }) => {
                    let mut started = operator;
                    started.id = first;
                    lock(&self.inner.pd.counts).started(started.kind.as_str());
                    tracing::info!(region, operator = first, kind = started.kind.as_str(), steps = %started.steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "placement driver: operator started");
                    self.spawn_operator(started);
                }
                Ok(PdOutput::Refused(why)) => {
                    tracing::debug!(region, why, "placement driver: operator not started");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(region, error = %e, "placement driver: cannot record an operator");
                    return;
                }
            }
        }
    }

    /// What a round's outcome depends on, short of the whole view: the meta group's
    /// applied index (records, operators, settings), the soft state's generation, and the
    /// stores' states and per-minute counts (which move with time alone).
    fn fingerprint(&self, meta: &MetaPeer) -> Fingerprint {
        let soft = lock(&self.inner.pd.leader);
        let stores = meta.handle.with(|state| {
            self.store_states(state, &soft)
                .iter()
                .map(|s| (s.record.id, s.state as u8, s.recent_adds, s.recent_removes))
                .collect()
        });
        Fingerprint {
            applied: meta.handle.applied_index().0,
            generation: soft.generation,
            stores,
        }
    }

    /// Whether the last round planned nothing over a settled view and nothing it depends
    /// on moved since (then this round would plan nothing either: skipping it keeps an
    /// idle PD cheap at 10,000 regions). A round runs at least every [`QUIET_ROUND_MAX`]
    /// all the same (holds and settle windows lapse with time).
    fn nothing_moved(&self, meta: &MetaPeer) -> bool {
        let Some((last, at)) = lock(&self.inner.pd.leader).quiet.clone() else {
            return false;
        };
        at.elapsed() < QUIET_ROUND_MAX && self.fingerprint(meta) == last
    }

    /// Whether the new leader still waits for the stores: until one heartbeat interval
    /// (and a half) passed since it became leader, or every store not tombstoned sent its
    /// heartbeat and [`REPORTS_GRACE`] passed since the last of them (each re-sends the
    /// reports of the regions it leads on its first answer from this leader).
    pub(crate) fn warming_up(&self, meta: &MetaPeer) -> bool {
        let soft = lock(&self.inner.pd.leader);
        let Some(since) = soft.since else {
            return true;
        };
        if since.elapsed() >= self.inner.pd.heartbeat.mul_f64(1.5) {
            return false;
        }
        meta.handle.with(|state| {
            let mut latest: Option<Instant> = None;
            for store in state
                .stores
                .values()
                .filter(|s| s.state != StoreMark::Tombstone)
            {
                match soft.stores.get(&store.id) {
                    None => return true,
                    Some(heard) => latest = latest.max(Some(heard.first)),
                }
            }
            latest.is_none_or(|at| at.elapsed() < REPORTS_GRACE)
        })
    }

    /// Logs, once per region while this store leads, each region that lost a majority of
    /// its voters: the PD never acts on it (`admin recover` does, by hand).
    fn name_regions_without_quorum(&self, view: &ClusterView) {
        let lost: Vec<&RegionView> = view
            .regions
            .iter()
            .filter(|r| !flotilla_pd::has_quorum(r, &view.stores))
            .collect();
        let mut soft = lock(&self.inner.pd.leader);
        soft.no_quorum
            .retain(|id| lost.iter().any(|r| r.record.id == *id));
        for region in lost {
            if soft.no_quorum.insert(region.record.id) {
                // What survives: the voters on stores still heard from (their logs hold
                // what the region has; `admin recover` elects the most up-to-date).
                let (alive, gone): (Vec<StoreId>, Vec<StoreId>) = region
                    .record
                    .voters
                    .iter()
                    .partition(|v| flotilla_pd::state_of(&view.stores, **v).is_live());
                let list = |ids: &[StoreId]| {
                    ids.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                tracing::error!(
                    region = region.record.id,
                    start = %crate::error::show(&region.record.start),
                    end = %crate::error::show(&region.record.end),
                    surviving_voters = %list(&alive),
                    lost_voters = %list(&gone),
                    "placement driver: region lost a majority of its voters; nothing is done to it automatically (`flotilla admin recover --region {} --force` resets it to its surviving voters; writes only the lost voters held are lost)",
                    region.record.id
                );
            }
        }
    }

    /// Seeds the configuration from this store's flags where nobody set it yet.
    async fn seed_settings(&self, meta: &MetaPeer) {
        for (key, value) in &self.inner.pd.settings {
            let source = meta.handle.with(|state| state.config.source(key));
            if source != flotilla_pd::ConfigSource::Default {
                continue;
            }
            let command = PdCommand::SetConfig {
                key: key.clone(),
                value: value.clone(),
                source: flotilla_pd::ConfigSource::Flag,
            };
            match self.pd_propose(&command).await {
                Ok(PdOutput::Refused(why)) => {
                    tracing::warn!(
                        key,
                        value,
                        why,
                        "placement driver: a flag's setting refused"
                    );
                }
                Ok(_) => tracing::info!(key, value, "placement driver: setting seeded from a flag"),
                Err(e) => {
                    tracing::warn!(key, error = %e, "placement driver: cannot seed a setting");
                    return;
                }
            }
        }
        lock(&self.inner.pd.leader).seeded = true;
    }

    /// Tombstones the offline stores no region counts on any more.
    async fn tombstone_emptied(&self, meta: &MetaPeer) {
        let emptied: Vec<StoreId> = meta.handle.with(|state| {
            state
                .stores
                .values()
                .filter(|s| s.state == StoreMark::Offline)
                .filter(|s| {
                    !state
                        .regions
                        .values()
                        .any(|r| r.voters.contains(&s.id) || r.learners.contains(&s.id))
                })
                .map(|s| s.id)
                .collect()
        });
        for store in emptied {
            let command = PdCommand::SetStoreMark {
                store,
                mark: StoreMark::Tombstone,
            };
            if let Ok(PdOutput::Done) = self.pd_propose(&command).await {
                tracing::warn!(%store, "placement driver: store decommissioned: no replica left on it; it is a tombstone now");
            }
        }
    }

    /// Drives every recorded operator that no task drives here (inherited from an earlier
    /// leader, or left when leadership came back).
    fn resume_operators(&self, meta: &MetaPeer) {
        let operators = meta
            .handle
            .with(|state| state.operators.values().cloned().collect::<Vec<_>>());
        for operator in operators {
            if lock(&self.inner.pd.leader)
                .running
                .contains_key(&operator.id)
            {
                continue;
            }
            tracing::info!(
                region = operator.region,
                operator = operator.id,
                step = operator.step,
                "placement driver: resuming an operator recorded by an earlier leader"
            );
            self.spawn_operator(operator);
        }
    }
}

/// The peers `store` reported that the PD knows to be removed: the region's recorded
/// configuration is newer than the peer's and does not hold the store, and no operator is
/// in flight on the region (it may be adding the store back).
/// The regions whose record counts a peer on `store` that its peer list `peers` lacks,
/// when that can only mean the store passed over the region's creation: the store is at
/// the recorded version of every region it hosts (so it applied every split of them, and a
/// missing child is not one it is about to start), no operator is changing the region and
/// no person holds it. Such a peer is the child of a split whose entry the store skipped
/// by installing a snapshot of the parent taken after it. Opening it empty is safe: the
/// store never hosted the child, so it never acknowledged an entry of the child's log, and
/// its peer catches up from the child's leader like a new one.
fn missing_peers(
    state: &PdState,
    store: StoreId,
    peers: &[proto::HostedPeer],
    held: &BTreeMap<u64, (String, Instant)>,
) -> BTreeSet<u64> {
    // Regions this store hosts at an older version than recorded: one of them may still
    // apply, from its log, the split that makes a missing child here.
    let lagging: Vec<&RegionRecord> = peers
        .iter()
        .filter(|peer| peer.region_id != META_GROUP)
        .filter_map(|peer| {
            state
                .regions
                .get(&peer.region_id)
                .filter(|r| r.version > peer.version)
        })
        .collect();
    let hosted: BTreeSet<u64> = peers.iter().map(|p| p.region_id).collect();
    state
        .regions
        .values()
        .filter(|r| r.id != META_GROUP && r.has_peer(store) && !hosted.contains(&r.id))
        // A lagging region can have been this one's ancestor only if it starts at or
        // before it (a split keeps the parent's start; a merge only moves a start back).
        .filter(|r| lagging.iter().all(|l| l.start > r.start))
        // An operator that adds or removes this very store changes the region: left to
        // it. Any other step (a leadership transfer, perhaps to this peer) may well be
        // waiting for the peer.
        .filter(|r| {
            let changes_here = state.operators.get(&r.id).is_some_and(|op| {
                op.current_step().is_some_and(|step| {
                    step.store() == Some(store)
                        && !matches!(step, flotilla_pd::Step::TransferLeader(_))
                })
            });
            !changes_here && !held.contains_key(&r.id)
        })
        .map(|r| r.id)
        .collect()
}

fn stale_peers(
    state: &PdState,
    store: StoreId,
    peers: &[proto::HostedPeer],
    merged: &BTreeSet<u64>,
) -> Vec<proto::StalePeer> {
    peers
        .iter()
        .filter_map(|peer| {
            let Some(record) = state.regions.get(&peer.region_id) else {
                // A merge source gone for good (this PD leader saw its merge end, or a
                // recorded region with a higher version covers some of its range: whoever
                // holds a key now got it by a split or merge that moved its version past
                // every earlier holder's; a split child not reported yet overlaps only its
                // parent's older record): a replica of it left on a store (removed before
                // the merge froze it) belongs to no configuration any more, and its range
                // overlaps the target's.
                let superseded = peer.range_known
                    && peer.region_id != META_GROUP
                    && state.regions.values().any(|r| {
                        r.version > peer.version
                            && (r.end.is_empty() || peer.start < r.end)
                            && (peer.end.is_empty() || r.start < peer.end)
                    });
                return (merged.contains(&peer.region_id) || superseded).then(|| {
                    proto::StalePeer {
                        region_id: peer.region_id,
                        conf_version: u64::MAX,
                        members: Vec::new(),
                    }
                });
            };
            let holds = record.voters.contains(&store) || record.learners.contains(&store);
            let busy = state.operators.contains_key(&peer.region_id);
            (!holds && !busy && record.conf_version > peer.conf_version).then(|| proto::StalePeer {
                region_id: peer.region_id,
                conf_version: record.conf_version,
                members: record
                    .voters
                    .iter()
                    .chain(&record.learners)
                    .map(ToString::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The scheduler of a store: acts while the store leads the meta group, every
/// [`SCHEDULE_EVERY`] and, no more often than [`SCHEDULE_GAP_MIN`], when an operator ends
/// (its slot can take the next one at once).
pub(super) async fn run(inner: Weak<StoreInner>) {
    let mut ticks = tokio::time::interval(SCHEDULE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(wake) = inner.upgrade().map(|inner| inner.pd.wake.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = wake.notified() => tokio::time::sleep(SCHEDULE_GAP_MIN).await,
        }
        let Some(store) = inner.upgrade().map(|inner| Store { inner }) else {
            return;
        };
        match store.meta_peer() {
            Some(meta) if meta.node.is_leader() => store.schedule_round(&meta).await,
            _ => {
                let mut soft = lock(&store.inner.pd.leader);
                if soft.since.is_some() {
                    *soft = LeaderState::default();
                }
            }
        }
    }
}

/// `admin pd status`'s operator line.
pub(crate) fn operator_status(
    operator: &flotilla_pd::Operator,
    started: Option<Instant>,
    outcome: String,
) -> proto::OperatorStatus {
    proto::OperatorStatus {
        id: operator.id,
        region: operator.region,
        kind: operator.kind.as_str().to_string(),
        steps: operator.steps.iter().map(ToString::to_string).collect(),
        step: operator.step as u64,
        started_ms_ago: started.map_or(0, |s| {
            u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX)
        }),
        outcome,
    }
}

/// How many finished operators the status shows.
pub(crate) const fn finished_shown() -> usize {
    FINISHED_SHOWN
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_pd::{Operator, OperatorKind, Step};

    fn region(id: u64, start: &'static [u8], end: &'static [u8], version: u64) -> RegionRecord {
        RegionRecord {
            id,
            start: bytes::Bytes::from_static(start),
            end: bytes::Bytes::from_static(end),
            conf_version: 1,
            version,
            voters: [StoreId(1), StoreId(2), StoreId(3)].into(),
            learners: BTreeSet::new(),
        }
    }

    fn hosted(region: u64, version: u64) -> proto::HostedPeer {
        proto::HostedPeer {
            region_id: region,
            conf_version: 1,
            version,
            leader: false,
            last_index: 10,
            ..Default::default()
        }
    }

    /// Region 2 [m, z) merged into region 1, now [a, z) at version 7, and a PD leader
    /// that never saw the merge end: a replica of region 2 left on a store is stale by its
    /// range; a split child of region 1 the PD has not heard of yet (a higher version) is
    /// not, nor is a peer whose range the store did not send.
    #[test]
    fn a_peer_of_an_unrecorded_region_is_stale_only_under_a_newer_recorded_range() {
        let mut state = PdState::default();
        state.apply(&PdCommand::PutRegion(region(1, b"a", b"z", 7)));
        let with_range =
            |id: u64, start: &'static [u8], end: &'static [u8], version: u64| proto::HostedPeer {
                start: bytes::Bytes::from_static(start),
                end: bytes::Bytes::from_static(end),
                range_known: true,
                ..hosted(id, version)
            };
        let left_behind = with_range(2, b"m", b"z", 4);
        let child = with_range(9, b"q", b"z", 8);
        let elsewhere = with_range(4, b"z", b"", 3);
        let unsent = hosted(3, 2);
        let stale = stale_peers(
            &state,
            StoreId(3),
            &[left_behind, child, elsewhere, unsent],
            &BTreeSet::new(),
        );
        let named: Vec<u64> = stale.iter().map(|s| s.region_id).collect();
        assert_eq!(named, [2]);
        assert_eq!(stale[0].conf_version, u64::MAX);
        assert!(stale[0].members.is_empty());
    }

    #[test]
    fn a_peer_is_missing_only_on_a_store_that_applied_every_split_it_hosts() {
        let mut state = PdState::default();
        // Region 1 split into 1 [, m) and 7 [m, ), both at version 2.
        for record in [region(1, b"", b"m", 2), region(7, b"m", b"", 2)] {
            state.apply(&PdCommand::PutRegion(record));
        }
        let none = BTreeMap::new();
        let store = StoreId(3);
        // The store installed a parent snapshot from after the split: 7 is missing.
        let caught_up = [hosted(META_GROUP, 1), hosted(1, 2)];
        let missing = missing_peers(&state, store, &caught_up, &none);
        assert_eq!(missing, [7].into());
        // The store has not applied the split yet: it will start the child itself.
        let lagging = [hosted(1, 1)];
        assert!(missing_peers(&state, store, &lagging, &none).is_empty());
        // It hosts both: nothing is missing.
        let both = [hosted(1, 2), hosted(7, 2)];
        assert!(missing_peers(&state, store, &both, &none).is_empty());
        // A store the region does not count is missing nothing.
        assert!(missing_peers(&state, StoreId(9), &caught_up, &none).is_empty());
        // A person holds region 7, or an operator changes it: left to them.
        let held: BTreeMap<u64, (String, Instant)> =
            [(7, ("admin".to_string(), Instant::now()))].into();
        assert!(missing_peers(&state, store, &caught_up, &held).is_empty());
        // A leader transfer in flight may wait for the very peer: it is opened all the same.
        let transfer = Operator::planned(
            &region(7, b"m", b"", 2),
            OperatorKind::BalanceLeader,
            vec![Step::TransferLeader(store)],
        );
        state.apply(&PdCommand::StartOperator(transfer));
        assert_eq!(missing_peers(&state, store, &caught_up, &none), [7].into());
        let mut replacing = Operator::planned(
            &region(1, b"", b"m", 2),
            OperatorKind::ReplaceDownPeer,
            vec![Step::AddLearner(StoreId(4))],
        );
        replacing.region = 7;
        state.apply(&PdCommand::FinishOperator {
            id: 1,
            outcome: flotilla_pd::Outcome::Done,
        });
        state.apply(&PdCommand::StartOperator(replacing));
        // An operator that changes another store of the region: opened all the same.
        assert_eq!(missing_peers(&state, store, &caught_up, &none), [7].into());
        // One that removes this very store: left to it.
        let mut removing = Operator::planned(
            &region(1, b"", b"m", 2),
            OperatorKind::RemoveExtraReplica,
            vec![Step::RemoveVoter(store)],
        );
        removing.region = 7;
        state.apply(&PdCommand::FinishOperator {
            id: 2,
            outcome: flotilla_pd::Outcome::Done,
        });
        state.apply(&PdCommand::StartOperator(removing));
        assert!(missing_peers(&state, store, &caught_up, &none).is_empty());
        // A region lagging here that starts after the missing one cannot be its ancestor.
        let mut three = PdState::default();
        for record in [
            region(1, b"", b"m", 2),
            region(7, b"m", b"x", 2),
            region(9, b"x", b"", 2),
        ] {
            three.apply(&PdCommand::PutRegion(record));
        }
        let later = [hosted(1, 2), hosted(9, 1)];
        assert_eq!(missing_peers(&three, store, &later, &none), [7].into());
        let earlier = [hosted(1, 1), hosted(9, 2)];
        assert!(missing_peers(&three, store, &earlier, &none).is_empty());
    }
}
