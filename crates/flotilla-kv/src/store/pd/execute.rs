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
            in_joint: false,
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
        let target = step.store();
        let done = match step {
            Step::AddLearner(s) => live.learners.contains(&s) || live.voters.contains(&s),
            Step::PromoteLearner(s) => live.voters.contains(&s),
            Step::RemoveVoter(s) => !live.voters.contains(&s),
            Step::RemoveLearner(s) => !live.learners.contains(&s),
            Step::TransferLeader(s) => live.leader == s,
            Step::Split(_) | Step::SplitByLoad(_) => false,
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
                    | Step::SplitByLoad(_) => {}
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
            in_joint: joint,
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
    /// voter never is).
    async fn clean_up(&self, operator: &Operator) {
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
