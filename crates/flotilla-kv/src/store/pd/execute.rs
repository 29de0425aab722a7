//! Driving one operator, step by step, on the PD leader. Before every step the region's
//! live state is read from its own leader (through the CLI service) and the step is
//! checked again with `flotilla_pd::step_is_safe`; a step already done (a new PD leader
//! resuming, or an answer lost) counts as done; every step done is recorded in the meta
//! group (`AdvanceOperator`) before the next one starts, and the operator's end too
//! (`FinishOperator`).
//!
//! Steps: a learner is added on a store after its empty peer was opened there (the KV
//! service's `OpenRegion`, or the PD's `OpenMetaPeer` for the meta group); a learner is
//! promoted by the raft core's membership change, which first waits until it caught up
//! and then goes through the joint configuration; a voter is removed only after that.
//!
//! Owns: the order above, the step timeout (`operator-step-timeout`) and the clean-up of
//! a cancelled operator (a learner it added is removed: never a voter). Must never: carry
//! out a step the live region does not allow, go on after this store stopped leading the
//! meta group (the next leader resumes from the record), or retry a failed step blindly.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_node::grpc::{connect_channel, CliClient, CLUSTER_KEY, ERROR_KIND_KEY, STORE_KEY};
use flotilla_node::PeerId;
use flotilla_pd::{
    Operator, Outcome, PdCommand, PdOutput, RegionRecord, RegionView, Step, StoreId,
};
use tonic::transport::{Channel, Endpoint};

use super::super::{lock, Store};
use super::META_GROUP;
use crate::service::proto;

/// Pause between two looks at a region while a step waits for it.
const STEP_RETRY: Duration = Duration::from_millis(500);
/// The first few looks come sooner: most steps (a transfer, a learner catching up on an
/// empty region) are done within a few hundred milliseconds.
const STEP_RETRY_QUICK: Duration = Duration::from_millis(100);
const STEP_RETRY_QUICK_TRIES: u32 = 5;

/// A region as its leader sees it now.
struct Live {
    leader: StoreId,
    voters: BTreeSet<StoreId>,
    learners: BTreeSet<StoreId>,
}

/// Why a step did not end in done.
enum Stop {
    /// This store no longer leads the meta group: leave the operator to the next leader.
    Deposed,
    /// The operator ends with this outcome.
    Ends(Outcome),
}

fn ids(peers: &[PeerId]) -> BTreeSet<StoreId> {
    peers
        .iter()
        .filter_map(|p| StoreId::parse(p.as_str()).ok())
        .collect()
}

/// `message` addressed to store `target` of `cluster` by id: a store that holds the
/// address now but is another store refuses it (`WrongStore`).
fn addressed<T>(message: T, target: StoreId, cluster: u64) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    let stamp =
        |text: String| tonic::metadata::MetadataValue::try_from(text).map_err(|e| e.to_string());
    request
        .metadata_mut()
        .insert(STORE_KEY, stamp(target.to_string())?);
    request
        .metadata_mut()
        .insert(CLUSTER_KEY, stamp(format!("{cluster:016x}"))?);
    Ok(request)
}

impl Store {
    /// Drives `operator` in a task of its own (at most one per operator on this store).
    pub(crate) fn spawn_operator(&self, operator: Operator) {
        {
            let mut soft = lock(&self.inner.pd.leader);
            if soft.running.contains_key(&operator.id) {
                return;
            }
            soft.running.insert(operator.id, Instant::now());
        }
        let store = self.clone();
        tokio::spawn(async move {
            let (id, region) = (operator.id, operator.region);
            let leader_now = store.drive(&operator).await;
            {
                let mut soft = lock(&store.inner.pd.leader);
                soft.running.remove(&id);
                match leader_now {
                    // Only leadership moved, and it is known where: the view is right at
                    // once (waiting for the new leader's report would stall balance).
                    Some(leader) if !operator.kind.changes_replicas() => {
                        if let Some(live) = soft.regions.get_mut(&region) {
                            live.leader = leader;
                            live.at = Instant::now();
                        }
                        soft.generation += 1;
                    }
                    _ => {
                        soft.finished_at.insert(region, Instant::now());
                    }
                }
            }
            store.inner.pd.wake.notify_one();
        });
    }

    /// Drives `operator` to its end; answers where its last transfer left leadership when
    /// it ended done with one.
    async fn drive(&self, operator: &Operator) -> Option<StoreId> {
        let outcome = match self.run_steps(operator).await {
            Ok(()) => Outcome::Done,
            Err(Stop::Deposed) => {
                tracing::info!(
                    operator = operator.id,
                    region = operator.region,
                    "placement driver: leadership lost mid-operator; the next leader resumes it"
                );
                return None;
            }
            Err(Stop::Ends(outcome)) => outcome,
        };
        let done = matches!(outcome, Outcome::Done);
        if !done {
            self.clean_up(operator).await;
        }
        if done && operator.kind == flotilla_pd::OperatorKind::MergeRegion {
            let recorded: std::collections::BTreeMap<u64, u64> = self
                .meta_peer()
                .map(|m| {
                    m.handle
                        .with(|s| s.regions.iter().map(|(id, r)| (*id, r.version)).collect())
                })
                .unwrap_or_default();
            let target = operator.steps.iter().find_map(|s| match s {
                Step::CommitMerge { target } => Some(*target),
                _ => None,
            });
            let mut soft = lock(&self.inner.pd.leader);
            soft.merged.insert(operator.region);
            while soft.merged.len() > super::runtime::MERGED_REMEMBERED {
                soft.merged.pop_first();
            }
            soft.merge_targets
                .retain(|id, (before, _)| recorded.get(id).is_some_and(|v| v <= before));
            if let Some(target) = target {
                let before = recorded.get(&target).copied().unwrap_or(0);
                soft.merge_targets.insert(target, (before, Instant::now()));
            }
            soft.generation += 1;
        }
        let text = match &outcome {
            Outcome::Done => "done".to_string(),
            Outcome::Cancelled(why) => format!("cancelled: {why}"),
            Outcome::TimedOut(why) => format!("timed out: {why}"),
        };
        let finish = PdCommand::FinishOperator {
            id: operator.id,
            outcome: outcome.clone(),
        };
        match self.pd_propose(&finish).await {
            Ok(_) => {
                lock(&self.inner.pd.counts).finished(operator.kind.as_str(), &outcome);
                tracing::info!(operator = operator.id, region = operator.region, kind = operator.kind.as_str(), outcome = %text, "placement driver: operator finished");
            }
            Err(e) => {
                tracing::warn!(operator = operator.id, error = %e, "placement driver: cannot record an operator's end; the next round resumes it");
            }
        }
        let last_transfer = operator.steps.iter().rev().find_map(|step| match step {
            Step::TransferLeader(to) => Some(*to),
            _ => None,
        });
        last_transfer.filter(|_| done)
    }

    /// Runs the steps left, recording each.
    async fn run_steps(&self, operator: &Operator) -> Result<(), Stop> {
        let timeout = self.meta_peer().map_or(Duration::from_secs(300), |m| {
            m.handle.with(|s| s.config.operator_step_timeout)
        });
        for index in operator.step..operator.steps.len() {
            let step = operator.steps[index];
            let started = Instant::now();
            let mut attempts = 0;
            loop {
                if !self.is_pd_leader() {
                    return Err(Stop::Deposed);
                }
                match self.try_step(operator, index).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(why) => {
                        return Err(Stop::Ends(Outcome::Cancelled(format!(
                            "step {step}: {why}"
                        ))))
                    }
                }
                if started.elapsed() >= timeout {
                    return Err(Stop::Ends(Outcome::TimedOut(format!(
                        "step {step} not done within {}",
                        flotilla_pd::model::format_duration(timeout)
                    ))));
                }
                attempts += 1;
                let pause = if attempts <= STEP_RETRY_QUICK_TRIES {
                    STEP_RETRY_QUICK
                } else {
                    STEP_RETRY
                };
                tokio::time::sleep(pause).await;
            }
            let advance = PdCommand::AdvanceOperator {
                id: operator.id,
                step: index + 1,
            };
            match self.pd_propose(&advance).await {
                Ok(PdOutput::Refused(why)) => {
                    return Err(Stop::Ends(Outcome::Cancelled(format!(
                        "the meta group refused the step's record: {why}"
                    ))))
                }
                Ok(_) => {}
                Err(_) if !self.is_pd_leader() => return Err(Stop::Deposed),
                Err(e) => {
                    return Err(Stop::Ends(Outcome::Cancelled(format!(
                        "cannot record step {step}: {e}"
                    ))))
                }
            }
        }
        Ok(())
    }

    /// One attempt at `step` on `region`: `Ok(true)` when it is done (now or before),
    /// `Ok(false)` to try again shortly (the region is busy, has no leader, or the call
    /// failed without an answer), `Err` when the region does not allow it.
    async fn try_step(&self, operator: &Operator, index: usize) -> Result<bool, String> {
        let (region, step) = (operator.region, operator.steps[index]);
        match step {
            Step::PrepareMerge { target } => {
                return self.prepare_merge_step(operator, target).await
            }
            Step::CommitMerge { target } => return self.commit_merge_step(operator, target).await,
            _ => {}
        }
        let Some(record) = self
            .meta_peer()
            .and_then(|m| m.handle.with(|s| s.regions.get(&region).cloned()))
        else {
            return Err(format!("region {region} is not recorded"));
        };
        // A split is done once the region's version moved on (its leader reported the
        // smaller parent): the split entry applied, whoever proposed it.
        let splits = matches!(step, Step::Split(_) | Step::SplitByLoad(_));
        if splits && record.version != operator.planned_on.1 {
            return Ok(true);
        }
        // A region that lost a majority of its voters is never acted on: an operator on it
        // (planned before the loss) ends here.
        let stores = {
            let meta = self.meta_peer().ok_or("no meta group peer")?;
            let soft = lock(&self.inner.pd.leader);
            meta.handle.with(|state| self.store_states(state, &soft))
        };
        let recorded = RegionView {
            record: record.clone(),
            leader: None,
            approximate_bytes: 0,
            approximate_keys: 0,
            hot: false,
            settled: false,
            in_joint: false,
            failed: Vec::new(),
        };
        if !flotilla_pd::has_quorum(&recorded, &stores) {
            return Err(format!(
                "region {region} lost a majority of its voters; the placement driver leaves it \
                 alone"
            ));
        }
        let cli = self.region_cli(&record)?;
        let Ok(live) = self.live_region(&cli).await else {
            return Ok(false);
        };
        let Some(target) = step.store() else {
            return Err(format!("step {step} names no store"));
        };
        let done = match step {
            Step::AddLearner(s) => live.learners.contains(&s) || live.voters.contains(&s),
            Step::PromoteLearner(s) => live.voters.contains(&s),
            Step::RemoveVoter(s) => !live.voters.contains(&s),
            Step::RemoveLearner(s) => !live.learners.contains(&s),
            Step::TransferLeader(s) => live.leader == s,
            Step::Split(_)
            | Step::SplitByLoad(_)
            | Step::PrepareMerge { .. }
            | Step::CommitMerge { .. } => false,
        };
        if done {
            return Ok(true);
        }
        let moved = record.epoch() != operator.planned_on
            || live.voters != record.voters
            || live.learners != record.learners;
        if index == 0 && moved {
            // Planned on a record its leader has changed since (a report not in yet, or a
            // person's command): what the operator was for may be done or wrong now.
            return Err(format!(
                "the region's members changed since it was planned (live voters {:?}, \
                 learners {:?}; planned on voters {:?}, learners {:?})",
                live.voters, live.learners, record.voters, record.learners
            ));
        }
        let view = self.live_view(&record, &live);
        flotilla_pd::step_is_safe(&view, &step, &stores)?;
        let peer = target.peer_id();
        let result = match step {
            Step::AddLearner(_) => {
                self.open_peer_on(&record, target).await?;
                cli.add_learners(std::slice::from_ref(&peer)).await
            }
            Step::PromoteLearner(_) => cli.promote_learner(&peer).await,
            Step::RemoveVoter(_) => cli.remove_peer(&peer).await,
            Step::RemoveLearner(_) => cli.remove_learners(std::slice::from_ref(&peer)).await,
            Step::TransferLeader(_) => cli.transfer_leader(Some(&peer)).await.map(|_| ()),
            Step::PrepareMerge { .. } | Step::CommitMerge { .. } => {
                return Err(format!("step {step} is not a replica step"))
            }
            Step::Split(_) | Step::SplitByLoad(_) => {
                let by_load = matches!(step, Step::SplitByLoad(_));
                return self
                    .split_through(&record, live.leader, operator.planned_on.1, by_load)
                    .await;
            }
        };
        match result {
            Ok(()) => {
                // The per-store limits count replicas added and removed (a promotion or a
                // leadership transfer moves no replica).
                match step {
                    Step::AddLearner(_) => lock(&self.inner.pd.leader).note(target, true),
                    Step::RemoveVoter(_) | Step::RemoveLearner(_) => {
                        lock(&self.inner.pd.leader).note(target, false);
                    }
                    Step::PromoteLearner(_)
                    | Step::TransferLeader(_)
                    | Step::Split(_)
                    | Step::SplitByLoad(_)
                    | Step::PrepareMerge { .. }
                    | Step::CommitMerge { .. } => {}
                }
                tracing::info!(region, %step, "placement driver: step done");
                Ok(true)
            }
            Err(e) => {
                tracing::info!(region, %step, error = %e, "placement driver: step not done yet");
                Ok(false)
            }
        }
    }

    /// A CLI client of `record`'s group over its members' addresses.
    fn region_cli(&self, record: &RegionRecord) -> Result<CliClient, String> {
        let addresses: Vec<PeerId> = record
            .voters
            .iter()
            .chain(&record.learners)
            .filter_map(|s| self.store_address(*s))
            .map(|a| PeerId::new(&a))
            .collect();
        CliClient::new(addresses, record.id).map_err(|e| e.to_string())
    }

    /// Where store `id` is: the PD's record, else this store's address book.
    fn store_address(&self, id: StoreId) -> Option<String> {
        let recorded = self
            .meta_peer()
            .and_then(|m| {
                m.handle
                    .with(|s| s.stores.get(&id).map(|r| r.address.clone()))
            })
            .filter(|a| !a.is_empty());
        recorded.or_else(|| {
            self.inner
                .addresses
                .resolve(&id.peer_id())
                .filter(|a| !a.is_empty())
        })
    }

    /// The region as its leader sees it now.
    async fn live_region(&self, cli: &CliClient) -> Result<Live, String> {
        let leader = cli.get_leader().await.map_err(|e| e.to_string())?;
        let voters = cli.get_peers().await.map_err(|e| e.to_string())?;
        let learners = cli.get_learners().await.map_err(|e| e.to_string())?;
        let leader = StoreId::parse(leader.as_str())?;
        Ok(Live {
            leader,
            voters: ids(&voters),
            learners: ids(&learners),
        })
    }

    /// The planners' view of a region from its live state (joint: as last reported).
    fn live_view(&self, record: &RegionRecord, live: &Live) -> RegionView {
        let joint = lock(&self.inner.pd.leader)
            .regions
            .get(&record.id)
            .is_some_and(|r| r.joint);
        let mut record = record.clone();
        record.voters.clone_from(&live.voters);
        record.learners.clone_from(&live.learners);
        RegionView {
            record,
            leader: Some(live.leader),
            approximate_bytes: 0,
            approximate_keys: 0,
            hot: false,
            settled: false,
            in_joint: joint,
            failed: Vec::new(),
        }
    }

    /// A channel to store `target` at the address the PD knows for it.
    async fn channel_to(&self, target: StoreId) -> Result<Channel, String> {
        let address = self
            .store_address(target)
            .ok_or_else(|| format!("no address known for store {target}"))?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("{address}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        connect_channel(&endpoint, self.inner.tls.as_ref())
            .await
            .map_err(|e| format!("cannot reach store {target} at {address}: {e}"))
    }

    /// Asks `leader`, which leads `record`'s region, to split it at its middle key (or,
    /// `by_load`, where its writes divide) if its version is still `version`: `Ok(true)` when it split, `Ok(false)` to look again
    /// (not the leader any more, no answer, or the version moved on: the region's report
    /// shows whether by this split), `Err` when the region cannot be split.
    async fn split_through(
        &self,
        record: &RegionRecord,
        leader: StoreId,
        version: u64,
        by_load: bool,
    ) -> Result<bool, String> {
        let region = record.id;
        let channel = match self.channel_to(leader).await {
            Ok(channel) => channel,
            Err(why) => {
                tracing::info!(region, error = %why, "placement driver: split not done yet");
                return Ok(false);
            }
        };
        let cluster = self.cluster();
        let request = proto::SplitRegionRequest {
            region_id: region,
            key: bytes::Bytes::new(),
            version,
            by_load,
        };
        match proto::kv_client::KvClient::new(channel)
            .split_region(addressed(request, leader, cluster)?)
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                let child = reply.child.as_ref().map_or(0, |c| c.id);
                let key = reply.child.as_ref().map_or(&[][..], |c| &c.start[..]);
                tracing::info!(region, child, key = %key.escape_ascii(), "placement driver: region split");
                Ok(true)
            }
            Err(status) => {
                let kind = status
                    .metadata()
                    .get(ERROR_KIND_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match kind.as_str() {
                    // Nothing to split (one key), or the region is changing membership: the
                    // next round looks at it afresh.
                    "Refused" | "KeyOutOfRegion" | "InvalidArgument" => Err(format!(
                        "store {leader} refused the split: {}",
                        status.message()
                    )),
                    _ => {
                        tracing::info!(region, %leader, kind, error = status.message(), "placement driver: split not done yet");
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Opens an empty peer of `record` on store `target` (idempotent there).
    pub(crate) async fn open_peer_on(
        &self,
        record: &RegionRecord,
        target: StoreId,
    ) -> Result<(), String> {
        let channel = self.channel_to(target).await?;
        let cluster = self.cluster();
        if record.id == META_GROUP {
            proto::pd::pd_client::PdClient::new(channel)
                .open_meta_peer(addressed(
                    proto::pd::OpenMetaPeerRequest { cluster },
                    target,
                    cluster,
                )?)
                .await
                .map_err(|s| {
                    format!(
                        "store {target} refused the meta group peer: {}",
                        s.message()
                    )
                })?;
            return Ok(());
        }
        let region = proto::RegionInfo {
            id: record.id,
            start: record.start.clone(),
            end: record.end.clone(),
            conf_version: record.conf_version,
            version: record.version,
            ..proto::RegionInfo::default()
        };
        proto::kv_client::KvClient::new(channel)
            .open_region(addressed(
                proto::OpenRegionRequest {
                    region: Some(region),
                    cluster,
                },
                target,
                cluster,
            )?)
            .await
            .map_err(|s| {
                format!(
                    "store {target} refused region {}: {}",
                    record.id,
                    s.message()
                )
            })?;
        Ok(())
    }

    /// After a cancelled operator: a learner it added and did not promote is removed (a
    /// voter never is); a merge source it froze is thawed unless its target absorbed it.
    async fn clean_up(&self, operator: &Operator) {
        if operator.kind == flotilla_pd::OperatorKind::MergeRegion {
            self.end_merge(operator).await;
        }
        // A learner step's target held no peer when the operator was planned
        // (`step_is_safe`), so a learner there now was added by this operator.
        let added: Vec<StoreId> = operator
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::AddLearner(store) => Some(*store),
                _ => None,
            })
            .collect();
        let Some(record) = self
            .meta_peer()
            .and_then(|m| m.handle.with(|s| s.regions.get(&operator.region).cloned()))
        else {
            return;
        };
        let Ok(cli) = self.region_cli(&record) else {
            return;
        };
        let Ok(live) = self.live_region(&cli).await else {
            return;
        };
        for store in added {
            if live.learners.contains(&store) {
                let result = cli.remove_learners(&[store.peer_id()]).await;
                tracing::info!(region = operator.region, %store, ok = result.is_ok(), "placement driver: removing the learner a cancelled operator added");
            }
        }
    }
}

/// What a merge step call failed with: the error kind the store answered (empty when the
/// call got no answer) and its message.
struct MergeCallError {
    kind: String,
    message: String,
}

impl MergeCallError {
    /// Whether the step may succeed if asked again (no leader there, no answer).
    fn transient(&self) -> bool {
        !matches!(
            self.kind.as_str(),
            "Refused" | "StaleEpoch" | "InvalidArgument" | "KeyOutOfRegion" | "RegionRefused"
        )
    }
}

impl std::fmt::Display for MergeCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

/// A region's merge state as one store's replica has it.
struct MergeLook {
    region: crate::region::Region,
    merging: Option<crate::merge::MergeState>,
    applied: u64,
}

/// Entries a replica may lag its leader by when a merge freezes its source.
const MERGE_LAG_MAX: u64 = 100;
/// How long a frozen source waits for its replicas to apply the prepare before the merge
/// is rolled back (writes to the source are refused meanwhile).
const MERGE_COMMIT_WAIT_MAX: Duration = Duration::from_secs(20);

const PHASE_PREPARE: u32 = 1;
const PHASE_COMMIT: u32 = 2;
const PHASE_FENCE: u32 = 3;
const PHASE_ROLLBACK: u32 = 4;
const PHASE_STATE: u32 = 5;

impl Store {
    /// One `MergeStep` call to store `to`.
    async fn merge_call(
        &self,
        to: StoreId,
        request: proto::MergeStepRequest,
    ) -> Result<MergeLook, MergeCallError> {
        let channel = self
            .channel_to(to)
            .await
            .map_err(|message| MergeCallError {
                kind: String::new(),
                message,
            })?;
        let cluster = self.cluster();
        let request = addressed(request, to, cluster).map_err(|message| MergeCallError {
            kind: "InvalidArgument".into(),
            message,
        })?;
        let reply = proto::kv_client::KvClient::new(channel)
            .merge_step(request)
            .await
            .map_err(|status| MergeCallError {
                kind: status
                    .metadata()
                    .get(ERROR_KIND_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                message: status.message().to_string(),
            })?
            .into_inner();
        let bad = |message: String| MergeCallError {
            kind: "InvalidArgument".into(),
            message,
        };
        let info = reply
            .region
            .ok_or_else(|| bad(format!("store {to} answered a merge step without a region")))?;
        let region = crate::region::Region::new(
            crate::ids::RegionId(info.id),
            info.start,
            info.end,
            crate::ids::Epoch::new(info.conf_version, info.version),
        )
        .map_err(|e| bad(format!("store {to}: {e}")))?;
        let merging = if reply.state.is_empty() {
            None
        } else {
            Some(
                crate::merge::MergeState::decode(&reply.state)
                    .map_err(|e| bad(format!("store {to}: {e}")))?,
            )
        };
        Ok(MergeLook {
            region,
            merging,
            applied: reply.applied_index,
        })
    }

    /// The PD's record of region `id`.
    fn record_of(&self, id: u64) -> Option<RegionRecord> {
        self.meta_peer()
            .and_then(|m| m.handle.with(|s| s.regions.get(&id).cloned()))
    }

    /// Region `record` as its leader has it now (the leader's store and its look).
    async fn look_at_leader(
        &self,
        record: &RegionRecord,
    ) -> Result<(Live, MergeLook), MergeCallError> {
        let cli = self.region_cli(record).map_err(|message| MergeCallError {
            kind: String::new(),
            message,
        })?;
        let live = self
            .live_region(&cli)
            .await
            .map_err(|message| MergeCallError {
                kind: String::new(),
                message,
            })?;
        let look = self
            .merge_call(live.leader, merge_request(PHASE_STATE, record.id))
            .await?;
        Ok((live, look))
    }

    /// The PrepareMerge step of `operator` (its region the source) into `target`.
    async fn prepare_merge_step(&self, operator: &Operator, target: u64) -> Result<bool, String> {
        let source = operator.region;
        let source_record = self
            .record_of(source)
            .ok_or_else(|| format!("region {source} is not recorded"))?;
        let target_record = self
            .record_of(target)
            .ok_or_else(|| format!("merge target {target} is not recorded"))?;
        let Ok((source_live, source_look)) = self.look_at_leader(&source_record).await else {
            // The source may be gone already: merged (a new PD leader resuming the
            // operator from a record that missed its last steps).
            if let Ok((_, target_look)) = self.look_at_leader(&target_record).await {
                if target_look
                    .region
                    .contains_range(&source_record.start, &source_record.end)
                {
                    return Ok(true);
                }
            }
            return Ok(false);
        };
        if let Some(state) = &source_look.merging {
            if state.target.id.0 == target {
                return Ok(true);
            }
            return Err(format!(
                "region {source} is frozen for a merge into {}",
                state.target
            ));
        }
        let Ok((target_live, target_look)) = self.look_at_leader(&target_record).await else {
            return Ok(false);
        };
        if target_look.merging.is_some() {
            return Err(format!(
                "merge target {target} is itself frozen for a merge"
            ));
        }
        if source_live.voters != target_live.voters
            || !source_live.learners.is_empty()
            || !target_live.learners.is_empty()
        {
            return Err(format!(
                "regions {source} and {target} are not on the same stores (voters {:?} and \
                 {:?}, learners {:?} and {:?})",
                source_live.voters, target_live.voters, source_live.learners, target_live.learners
            ));
        }
        // Every replica of both must answer and be close to its leader: the source stays
        // frozen until each of its replicas applied the prepare, so a merge starts only
        // when that can be quick.
        for (record, leader_look, live) in [
            (&source_record, &source_look, &source_live),
            (&target_record, &target_look, &target_live),
        ] {
            for store in live.voters.iter().chain(&live.learners) {
                match self
                    .merge_call(*store, merge_request(PHASE_STATE, record.id))
                    .await
                {
                    Ok(look) if look.applied + MERGE_LAG_MAX >= leader_look.applied => {}
                    _ => {
                        tracing::info!(region = record.id, %store, "placement driver: a replica lags or does not answer; the merge waits before freezing anything");
                        return Ok(false);
                    }
                }
            }
        }
        let mut request = merge_request(PHASE_PREPARE, source);
        request.version = operator.planned_on.1;
        let t = &target_look.region;
        request.target = Some(proto::RegionInfo {
            id: t.id.0,
            start: t.start.clone(),
            end: t.end.clone(),
            conf_version: t.epoch.conf_version,
            version: t.epoch.version,
            ..proto::RegionInfo::default()
        });
        match self.merge_call(source_live.leader, request).await {
            Ok(_) => {
                tracing::info!(source, target = %t, "placement driver: merge prepared (source frozen)");
                Ok(true)
            }
            Err(e) if e.transient() => {
                tracing::info!(source, target, error = %e, "placement driver: merge prepare not done yet");
                Ok(false)
            }
            Err(e) => Err(format!("the source's leader refused the prepare: {e}")),
        }
    }

    /// The CommitMerge step of `operator` (its region the source) into `target`.
    async fn commit_merge_step(&self, operator: &Operator, target: u64) -> Result<bool, String> {
        let source = operator.region;
        let target_record = self
            .record_of(target)
            .ok_or_else(|| format!("merge target {target} is not recorded"))?;
        let Some(source_record) = self.record_of(source) else {
            // The PD dropped the source's record: the target reported the wider range.
            return Ok(true);
        };
        let Ok((target_live, target_look)) = self.look_at_leader(&target_record).await else {
            return Ok(false);
        };
        // Two regions never share a key unless one absorbed the other: a target covering
        // the source's range is merged (a new PD leader resuming a merge it finished).
        if target_look
            .region
            .contains_range(&source_record.start, &source_record.end)
        {
            return Ok(true);
        }
        let Ok((_, source_look)) = self.look_at_leader(&source_record).await else {
            return Ok(false);
        };
        let Some(state) = source_look.merging else {
            return Err(format!("region {source} is not frozen for the merge"));
        };
        // Every replica of the source must have applied the prepare: its engine then holds
        // the source's final keys, which the target takes over on that store.
        for peer in state.voters.iter().chain(&state.learners) {
            let Ok(store) = StoreId::parse(peer.as_str()) else {
                return Err(format!("region {source}: peer {peer} is not a store id"));
            };
            match self
                .merge_call(store, merge_request(PHASE_STATE, source))
                .await
            {
                Ok(look) if look.merging.is_some() && look.applied >= state.index.0 => {}
                Ok(_) | Err(_) => {
                    let since = *lock(&self.inner.pd.leader)
                        .commit_waits
                        .entry(operator.id)
                        .or_insert_with(Instant::now);
                    if since.elapsed() >= MERGE_COMMIT_WAIT_MAX {
                        lock(&self.inner.pd.leader)
                            .commit_waits
                            .remove(&operator.id);
                        return Err(format!(
                            "the source's replica on store {store} has not applied the prepare \
                             within {MERGE_COMMIT_WAIT_MAX:?}: the merge is rolled back rather \
                             than keep the source frozen"
                        ));
                    }
                    tracing::debug!(source, %store, "placement driver: a source replica has not applied the prepare yet");
                    return Ok(false);
                }
            }
        }
        lock(&self.inner.pd.leader)
            .commit_waits
            .remove(&operator.id);
        let mut request = merge_request(PHASE_COMMIT, target);
        request.state = state.encode();
        match self.merge_call(target_live.leader, request).await {
            Ok(look) => {
                tracing::info!(source = %state.source, target = %look.region, "placement driver: regions merged");
                Ok(true)
            }
            Err(e) if e.transient() => {
                tracing::info!(source, target, error = %e, "placement driver: merge commit not done yet");
                Ok(false)
            }
            Err(e) => Err(format!("the target's leader refused the commit: {e}")),
        }
    }

    /// Ends a cancelled merge: if its source is frozen, fences the target (no commit
    /// expecting its old epoch applies after that), then thaws the source unless the
    /// target absorbed it. Retried until done, the step timeout, or this store stops
    /// leading the PD (the next leader resumes the operator, and so its end).
    async fn end_merge(&self, operator: &Operator) {
        let source = operator.region;
        let Some(target) = operator.steps.iter().find_map(|s| match s {
            Step::PrepareMerge { target } | Step::CommitMerge { target } => Some(*target),
            _ => None,
        }) else {
            return;
        };
        let timeout = self.meta_peer().map_or(Duration::from_secs(300), |m| {
            m.handle.with(|s| s.config.operator_step_timeout)
        });
        let started = Instant::now();
        while started.elapsed() < timeout && self.is_pd_leader() {
            match self.try_end_merge(source, target).await {
                Ok(outcome) => {
                    tracing::info!(source, target, outcome, "placement driver: merge ended");
                    return;
                }
                Err(why) => {
                    tracing::info!(source, target, error = %why, "placement driver: cannot end the merge yet");
                    tokio::time::sleep(STEP_RETRY).await;
                }
            }
        }
        tracing::warn!(source, target, "placement driver: a cancelled merge's source may still be frozen; the operator's next run ends it");
    }

    async fn try_end_merge(&self, source: u64, target: u64) -> Result<&'static str, String> {
        let Some(source_record) = self.record_of(source) else {
            return Ok("the source is gone: merged");
        };
        let (source_live, source_look) = self
            .look_at_leader(&source_record)
            .await
            .map_err(|e| e.to_string())?;
        let Some(state) = source_look.merging else {
            return Ok("the source was not frozen");
        };
        let target_record = self
            .record_of(target)
            .ok_or_else(|| format!("merge target {target} is not recorded"))?;
        let (target_live, _) = self
            .look_at_leader(&target_record)
            .await
            .map_err(|e| e.to_string())?;
        let mut fence = merge_request(PHASE_FENCE, target);
        fence.expected_conf_version = state.target.epoch.conf_version;
        fence.expected_version = state.target.epoch.version;
        let fenced = self
            .merge_call(target_live.leader, fence)
            .await
            .map_err(|e| e.to_string())?;
        let (now, expected) = (fenced.region.epoch, state.target.epoch);
        if now.version <= expected.version && now.conf_version <= expected.conf_version {
            return Err("the target's epoch did not move".into());
        }
        if fenced
            .region
            .contains_range(&state.source.start, &state.source.end)
        {
            return Ok("the target absorbed the source: merged");
        }
        let mut rollback = merge_request(PHASE_ROLLBACK, source);
        rollback.version = state.source.epoch.version;
        self.merge_call(source_live.leader, rollback)
            .await
            .map_err(|e| e.to_string())?;
        Ok("rolled back: the source serves its keys again")
    }
}

fn merge_request(phase: u32, region: u64) -> proto::MergeStepRequest {
    proto::MergeStepRequest {
        phase,
        region_id: region,
        ..proto::MergeStepRequest::default()
    }
}
