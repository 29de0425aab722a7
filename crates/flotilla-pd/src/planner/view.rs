//! The planners' input ([`ClusterView`]: durable records joined with the PD leader's soft
//! state) and the health and safety rules every planner and the executor share.
//!
//! Owns: what counts as live (for "has quorum") and as healthy (for "may remove"), the
//! per-step safety check, and projecting an operator onto a view. Must never: read a
//! clock (the caller turns heartbeat ages into a [`StoreState`]).

use std::time::Duration;

use flotilla_node::StoreId;

use crate::model::{PdConfig, RegionRecord, StoreMark, StoreRecord};
use crate::operator::{Operator, Step};

/// A store's state as the planners see it: its durable mark joined with how long ago it
/// last sent a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreState {
    /// Serving and heard from recently.
    Up,
    /// Silent for longer than `store-disconnected-time`: receives nothing new, its
    /// replicas are not yet replaced, and it still counts as live for "has quorum".
    Disconnected,
    /// Silent for longer than `max-store-down-time`: its replicas are replaced.
    Down,
    /// Marked offline (decommissioning) and heard from recently: its replicas are moved
    /// away; live for "has quorum", not healthy for "may remove". Marked offline and
    /// silent for longer than `store-disconnected-time`, a store is [`StoreState::Down`].
    Offline,
    /// Marked tombstone: gone for good.
    Tombstone,
}

impl StoreState {
    /// The kebab-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Up => "up",
            StoreState::Disconnected => "disconnected",
            StoreState::Down => "down",
            StoreState::Offline => "offline",
            StoreState::Tombstone => "tombstone",
        }
    }

    /// Counts towards "the region still has a quorum" (its peer may well answer).
    #[must_use]
    pub fn is_live(self) -> bool {
        matches!(
            self,
            StoreState::Up | StoreState::Disconnected | StoreState::Offline
        )
    }

    /// Its voters are replaced (down, or gone for good).
    #[must_use]
    pub fn is_lost(self) -> bool {
        matches!(self, StoreState::Down | StoreState::Tombstone)
    }
}

/// A store's state from its mark and the time since its last heartbeat. `None` (never
/// heard from since this PD leader started) counts as disconnected: the caller passes the
/// time since it started leading instead once that exceeds `max-store-down-time`, so a
/// store dead before the leader changed still becomes down.
#[must_use]
pub fn store_state(
    mark: StoreMark,
    since_last_heartbeat: Option<Duration>,
    config: &PdConfig,
) -> StoreState {
    if mark == StoreMark::Tombstone {
        return StoreState::Tombstone;
    }
    match since_last_heartbeat {
        Some(age) if age > config.max_store_down_time => StoreState::Down,
        Some(age) if age <= config.store_disconnected_time => match mark {
            StoreMark::Offline => StoreState::Offline,
            _ => StoreState::Up,
        },
        // A store being decommissioned that stopped answering is lost at once: it leaves
        // anyway, and waiting out `max-store-down-time` would only keep its regions a
        // replica short. `flotilla manager` marks a store offline when the volume that held
        // its data is removed, so its replacement starts within `store-disconnected-time`.
        Some(_) if mark == StoreMark::Offline => StoreState::Down,
        _ => StoreState::Disconnected,
    }
}

/// One store as the planners see it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreView {
    /// The durable record.
    pub record: StoreRecord,
    /// Its state, from [`store_state`].
    pub state: StoreState,
    /// Peers (voters and learners) it holds.
    pub region_count: usize,
    /// Regions it leads.
    pub leader_count: usize,
    /// Bytes its regions use.
    pub used_bytes: u64,
    /// Replicas added to it in the last minute (for `replica-ops-per-store-per-minute`).
    pub recent_adds: u32,
    /// Replicas removed from it in the last minute.
    pub recent_removes: u32,
}

/// One region as the planners see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionView {
    /// The durable record.
    pub record: RegionRecord,
    /// Its leader's store, from the last region heartbeat.
    pub leader: Option<StoreId>,
    /// Its approximate size: bytes of its keys and values, as its leader last measured.
    pub approximate_bytes: u64,
    /// Its keys, as its leader last measured.
    pub approximate_keys: u64,
    /// Written faster than `region-split-load` in its reports for a while (the caller
    /// decides how long; the planners read no clock).
    pub hot: bool,
    /// Its range has not changed (no split, no merge) for `split-merge-interval` (the
    /// caller decides; the planners read no clock): it may merge.
    pub settled: bool,
    /// In a joint configuration (a membership change is half done).
    pub in_joint: bool,
    /// Stores whose replica of the region stopped (their heartbeats say so): replaced by
    /// the replica checker.
    pub failed: Vec<StoreId>,
}

/// Everything a planner looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    /// The scheduling configuration.
    pub config: PdConfig,
    /// Every store.
    pub stores: Vec<StoreView>,
    /// Every region.
    pub regions: Vec<RegionView>,
    /// Operators in flight.
    pub operators: Vec<Operator>,
}

/// The state of `store` in `stores`; a store the view does not know counts as down.
#[must_use]
pub fn state_of(stores: &[StoreView], store: StoreId) -> StoreState {
    stores
        .iter()
        .find(|s| s.record.id == store)
        .map_or(StoreState::Down, |s| s.state)
}

/// Whether a majority of the region's voters are on live stores (up, disconnected or
/// offline). A region that lost its quorum is never touched by the planners.
#[must_use]
pub fn has_quorum(region: &RegionView, stores: &[StoreView]) -> bool {
    let voters = &region.record.voters;
    let live = voters
        .iter()
        .filter(|v| state_of(stores, **v).is_live())
        .count();
    !voters.is_empty() && live * 2 > voters.len()
}

/// Whether a majority of `voters` are on up stores (the only ones healthy enough to count
/// when deciding that a removal is safe).
fn healthy_majority<'a>(voters: impl Iterator<Item = &'a StoreId>, stores: &[StoreView]) -> bool {
    let mut total = 0;
    let mut up = 0;
    for voter in voters {
        total += 1;
        if state_of(stores, *voter) == StoreState::Up {
            up += 1;
        }
    }
    total > 0 && up * 2 > total
}

/// Whether `step` may be carried out on `region` now. The planners check every step of an
/// operator with it on a projected region, and the executor calls it again against the
/// region's live status just before each step.
pub fn step_is_safe(region: &RegionView, step: &Step, stores: &[StoreView]) -> Result<(), String> {
    let record = &region.record;
    let id = record.id;
    let Some(leader) = region.leader else {
        return Err(format!("region {id} has no known leader"));
    };
    if region.in_joint {
        return Err(format!("region {id} is in a joint configuration"));
    }
    // An operator planned before the region lost its majority (two of its stores died
    // together, the PD heard of it a moment later) is cancelled at its next step: a region
    // without quorum is left alone until a person recovers it.
    if !has_quorum(region, stores) {
        return Err(format!(
            "region {id} has lost its quorum: it is left alone until recovered by hand \
             (`admin recover`)"
        ));
    }
    let Some(store) = step.store() else {
        // A merge step: the executor checks both regions live, through their leaders.
        if id == 0 {
            return Err("the meta group never merges".to_string());
        }
        if !state_of(stores, leader).is_live() {
            return Err(format!(
                "region {id}: its leader's store {leader} is not live"
            ));
        }
        return Ok(());
    };
    let state = state_of(stores, store);
    match *step {
        Step::AddLearner(_) => {
            let serving = stores
                .iter()
                .any(|s| s.record.id == store && s.record.state == StoreMark::Serving);
            if state != StoreState::Up || !serving {
                return Err(format!("region {id}: store {store} is not up and serving"));
            }
            if record.has_peer(store) {
                return Err(format!("region {id}: store {store} already holds a peer"));
            }
        }
        Step::PromoteLearner(_) => {
            if !record.learners.contains(&store) {
                return Err(format!("region {id}: store {store} holds no learner"));
            }
            if state != StoreState::Up {
                return Err(format!(
                    "region {id}: learner store {store} is {}",
                    state.as_str()
                ));
            }
        }
        Step::RemoveVoter(_) => {
            if !record.voters.contains(&store) {
                return Err(format!("region {id}: store {store} holds no voter"));
            }
            if store == leader {
                return Err(format!(
                    "region {id}: store {store} leads; transfer leadership first"
                ));
            }
            if !healthy_majority(record.voters.iter().filter(|v| **v != store), stores) {
                return Err(format!(
                    "region {id}: removing store {store} leaves no majority of up voters"
                ));
            }
        }
        Step::RemoveLearner(_) => {
            if !record.learners.contains(&store) {
                return Err(format!("region {id}: store {store} holds no learner"));
            }
        }
        Step::TransferLeader(_) => {
            if !record.voters.contains(&store) || state != StoreState::Up {
                return Err(format!("region {id}: store {store} holds no up voter"));
            }
            if store == leader {
                return Err(format!("region {id}: store {store} already leads"));
            }
        }
        Step::PrepareMerge { .. } | Step::CommitMerge { .. } => {}
        Step::Split(_) | Step::SplitByLoad(_) => {
            if id == 0 {
                return Err("the meta group has no key range to split".to_string());
            }
            if !state_of(stores, leader).is_live() {
                return Err(format!(
                    "region {id}: its leader's store {leader} is not live"
                ));
            }
        }
    }
    Ok(())
}

/// Projects one step onto a region record and its leader (no safety check).
pub(crate) fn apply_step(region: &mut RegionView, step: Step) {
    let record = &mut region.record;
    match step {
        Step::AddLearner(s) => {
            record.learners.insert(s);
            record.conf_version += 1;
        }
        Step::PromoteLearner(s) => {
            record.learners.remove(&s);
            record.voters.insert(s);
            record.conf_version += 1;
        }
        Step::RemoveVoter(s) => {
            record.voters.remove(&s);
            record.conf_version += 1;
        }
        Step::RemoveLearner(s) => {
            record.learners.remove(&s);
            record.conf_version += 1;
        }
        Step::TransferLeader(s) => region.leader = Some(s),
        // The parent keeps the lower half; its child is not in the view until reported.
        Step::Split(_) | Step::SplitByLoad(_) => {
            record.version += 1;
            region.approximate_bytes /= 2;
            region.approximate_keys /= 2;
            region.hot = false;
        }
        // The source is frozen, then gone (the target's report brings the wider range).
        Step::PrepareMerge { .. } | Step::CommitMerge { .. } => {
            record.version += 1;
            region.hot = false;
        }
    }
}

/// Checks every remaining step of `steps` with [`step_is_safe`] on the region as each
/// earlier step would leave it.
pub fn steps_are_safe(
    region: &RegionView,
    steps: &[Step],
    stores: &[StoreView],
) -> Result<(), String> {
    let mut projected = region.clone();
    for step in steps {
        step_is_safe(&projected, step, stores)?;
        apply_step(&mut projected, *step);
    }
    Ok(())
}

/// Projects `op` onto `view` as if its remaining steps finished: the region's members,
/// leader and epoch change, the stores' region, leader and byte counts follow, and the
/// operator leaves `view.operators`. The per-minute counters are left alone (the tests
/// that plan in rounds treat each round as a minute apart).
pub fn apply_to_view(view: &mut ClusterView, op: &Operator) {
    view.operators.retain(|o| o.region != op.region);
    let Some(region) = view.regions.iter_mut().find(|r| r.record.id == op.region) else {
        return;
    };
    let bytes = region.approximate_bytes;
    for step in op.steps.iter().skip(op.step) {
        let before_leader = region.leader;
        apply_step(region, *step);
        let store_of = |stores: &mut Vec<StoreView>, id: StoreId| -> Option<usize> {
            stores.iter().position(|s| s.record.id == id)
        };
        match *step {
            Step::AddLearner(s) => {
                if let Some(i) = store_of(&mut view.stores, s) {
                    view.stores[i].region_count += 1;
                    view.stores[i].used_bytes += bytes;
                }
            }
            Step::RemoveVoter(s) | Step::RemoveLearner(s) => {
                if let Some(i) = store_of(&mut view.stores, s) {
                    let store = &mut view.stores[i];
                    store.region_count = store.region_count.saturating_sub(1);
                    store.used_bytes = store.used_bytes.saturating_sub(bytes);
                }
            }
            Step::TransferLeader(s) => {
                if let Some(i) = before_leader.and_then(|l| store_of(&mut view.stores, l)) {
                    view.stores[i].leader_count = view.stores[i].leader_count.saturating_sub(1);
                }
                if let Some(i) = store_of(&mut view.stores, s) {
                    view.stores[i].leader_count += 1;
                }
            }
            Step::PromoteLearner(_) => {}
            // Every store of the region holds one region more (the child).
            Step::Split(_) | Step::SplitByLoad(_) => {
                let peers: Vec<StoreId> = region
                    .record
                    .voters
                    .iter()
                    .chain(&region.record.learners)
                    .copied()
                    .collect();
                for s in peers {
                    if let Some(i) = store_of(&mut view.stores, s) {
                        view.stores[i].region_count += 1;
                    }
                }
            }
            Step::PrepareMerge { .. } => {}
            // Every store of the region holds one region fewer (the source).
            Step::CommitMerge { .. } => {
                let peers: Vec<StoreId> = region
                    .record
                    .voters
                    .iter()
                    .chain(&region.record.learners)
                    .copied()
                    .collect();
                for s in peers {
                    if let Some(i) = store_of(&mut view.stores, s) {
                        view.stores[i].region_count = view.stores[i].region_count.saturating_sub(1);
                    }
                }
            }
        }
    }
}

/// Whether the planners may touch `region` at all: its leader is known, is one of its
/// voters and is on a live store, it is not in a joint configuration, and it has its
/// quorum. A leader reported on a down store is stale news and counts as unknown.
#[must_use]
pub fn may_touch(region: &RegionView, stores: &[StoreView]) -> bool {
    let Some(leader) = region.leader else {
        return false;
    };
    !region.in_joint
        && region.record.voters.contains(&leader)
        && state_of(stores, leader).is_live()
        && has_quorum(region, stores)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;

    use super::*;

    fn stores(states: &[StoreState]) -> Vec<StoreView> {
        states
            .iter()
            .enumerate()
            .map(|(i, state)| StoreView {
                record: StoreRecord {
                    id: StoreId(i as u64 + 1),
                    address: format!("s{i}"),
                    labels: std::collections::BTreeMap::new(),
                    state: StoreMark::Serving,
                },
                state: *state,
                region_count: 0,
                leader_count: 0,
                used_bytes: 0,
                recent_adds: 0,
                recent_removes: 0,
            })
            .collect()
    }

    fn region(voters: &[u64], learners: &[u64], leader: u64) -> RegionView {
        RegionView {
            record: RegionRecord {
                id: 1,
                start: Bytes::new(),
                end: Bytes::new(),
                conf_version: 1,
                version: 1,
                voters: voters.iter().map(|v| StoreId(*v)).collect(),
                learners: learners
                    .iter()
                    .map(|v| StoreId(*v))
                    .collect::<BTreeSet<_>>(),
            },
            leader: Some(StoreId(leader)),
            approximate_bytes: 0,
            approximate_keys: 0,
            hot: false,
            settled: false,
            in_joint: false,
            failed: Vec::new(),
        }
    }

    #[test]
    fn store_state_follows_the_heartbeat_age_and_the_mark() {
        let config = PdConfig::default();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            store_state(StoreMark::Serving, secs(5), &config),
            StoreState::Up
        );
        assert_eq!(
            store_state(StoreMark::Serving, secs(30), &config),
            StoreState::Disconnected
        );
        assert_eq!(
            store_state(StoreMark::Serving, secs(121), &config),
            StoreState::Down
        );
        assert_eq!(
            store_state(StoreMark::Serving, None, &config),
            StoreState::Disconnected
        );
        assert_eq!(
            store_state(StoreMark::Offline, secs(5), &config),
            StoreState::Offline
        );
        assert_eq!(
            store_state(StoreMark::Offline, secs(500), &config),
            StoreState::Down
        );
        // Offline and silent past `store-disconnected-time`: lost now, not after
        // `max-store-down-time` (its volume is gone, or it was leaving anyway).
        assert_eq!(
            store_state(StoreMark::Offline, secs(30), &config),
            StoreState::Down
        );
        assert_eq!(
            store_state(StoreMark::Offline, None, &config),
            StoreState::Disconnected
        );
        assert_eq!(
            store_state(StoreMark::Tombstone, secs(1), &config),
            StoreState::Tombstone
        );
    }

    #[test]
    fn quorum_counts_live_stores_and_removal_counts_up_ones() {
        use StoreState::{Disconnected, Down, Up};
        let all = stores(&[Up, Disconnected, Down, Up, Down]);
        assert!(has_quorum(&region(&[1, 2, 3], &[], 1), &all));
        assert!(!has_quorum(&region(&[1, 3, 5], &[], 1), &all));
        let safe = |r: &RegionView, step| step_is_safe(r, &step, &all);
        let r = region(&[1, 2, 3, 4], &[], 1);
        assert!(safe(&r, Step::RemoveVoter(StoreId(3))).is_ok());
        let r = region(&[1, 2, 3], &[], 1);
        let why = safe(&r, Step::RemoveVoter(StoreId(3))).unwrap_err();
        assert!(why.contains("majority of up voters"), "{why}");
        assert!(safe(&r, Step::RemoveVoter(StoreId(1)))
            .unwrap_err()
            .contains("leads"));
        assert!(safe(&r, Step::AddLearner(StoreId(4))).is_ok());
        // A region that lost its majority takes no step at all, even a harmless-looking
        // one (an operator planned just before the PD saw the loss is cancelled there).
        let lost = region(&[1, 3, 5], &[], 1);
        let why = safe(&lost, Step::AddLearner(StoreId(4))).unwrap_err();
        assert!(why.contains("lost its quorum"), "{why}");
        assert!(safe(&lost, Step::TransferLeader(StoreId(1))).is_err());
        assert!(
            safe(&r, Step::AddLearner(StoreId(5))).is_err(),
            "a down store receives nothing"
        );
        assert!(
            safe(&r, Step::AddLearner(StoreId(2))).is_err(),
            "a store holding a peer"
        );
        assert!(
            safe(&r, Step::PromoteLearner(StoreId(4))).is_err(),
            "no learner there"
        );
        assert!(safe(
            &region(&[1, 2, 3], &[4], 1),
            Step::PromoteLearner(StoreId(4))
        )
        .is_ok());
        assert!(
            safe(&r, Step::TransferLeader(StoreId(2))).is_err(),
            "a disconnected store"
        );
        let mut joint = region(&[1, 2, 3], &[], 1);
        joint.in_joint = true;
        assert!(safe(&joint, Step::AddLearner(StoreId(4)))
            .unwrap_err()
            .contains("joint"));
        let mut leaderless = region(&[1, 2, 3], &[], 1);
        leaderless.leader = None;
        assert!(safe(&leaderless, Step::AddLearner(StoreId(4)))
            .unwrap_err()
            .contains("leader"));
    }

    #[test]
    fn applying_an_operator_moves_counts_and_bumps_the_epoch() {
        let mut view = ClusterView {
            config: PdConfig::default(),
            stores: stores(&[StoreState::Up; 4]),
            regions: vec![region(&[1, 2, 3], &[], 1)],
            operators: Vec::new(),
        };
        view.regions[0].approximate_bytes = 10;
        for s in &mut view.stores[..3] {
            s.region_count = 1;
            s.used_bytes = 10;
        }
        view.stores[0].leader_count = 1;
        let op = Operator::planned(
            &view.regions[0].record,
            crate::operator::OperatorKind::BalanceReplica,
            vec![
                Step::AddLearner(StoreId(4)),
                Step::PromoteLearner(StoreId(4)),
                Step::TransferLeader(StoreId(4)),
                Step::RemoveVoter(StoreId(1)),
            ],
        );
        assert!(steps_are_safe(&view.regions[0], &op.steps, &view.stores).is_ok());
        apply_to_view(&mut view, &op);
        let region = &view.regions[0];
        assert_eq!(region.record.voters, [2, 3, 4].map(StoreId).into());
        assert_eq!(region.record.conf_version, 4);
        assert_eq!(region.leader, Some(StoreId(4)));
        let counts: Vec<_> = view
            .stores
            .iter()
            .map(|s| (s.region_count, s.leader_count, s.used_bytes))
            .collect();
        assert_eq!(counts, [(0, 0, 0), (1, 0, 10), (1, 0, 10), (1, 1, 10)]);
    }
}
