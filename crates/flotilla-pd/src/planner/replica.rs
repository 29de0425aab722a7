//! The replica checker: one region at a time, in priority order, down peer → offline peer
//! → failed peer → missing replica → extra replica → stray learner.
//!
//! Owns: which of those a region needs and the steps that fix it. Must never: remove a
//! voter before its replacement is promoted, remove the leader's voter without moving
//! leadership first, or return an operator any step of which fails `step_is_safe`.

use std::collections::BTreeSet;

use flotilla_node::StoreId;

use crate::operator::{Operator, OperatorKind, Step};
use crate::planner::choose::{best_target, label_spread, store, Budget};
use crate::planner::view::{
    state_of, steps_are_safe, ClusterView, RegionView, StoreState, StoreView,
};

/// The operator `region` needs most, if any fits the budget and is safe. The caller has
/// checked `may_touch` and that no operator is in flight on it.
pub(crate) fn check_region(
    view: &ClusterView,
    region: &RegionView,
    budget: &Budget,
) -> Option<Operator> {
    let stores = &view.stores;
    let record = &region.record;
    let max_replicas = view.config.max_replicas as usize;
    let on = |wanted: fn(StoreState) -> bool| -> Option<StoreId> {
        record
            .voters
            .iter()
            .copied()
            .find(|v| wanted(state_of(stores, *v)))
    };
    if let Some(lost) = on(StoreState::is_lost) {
        if let Some(op) = replace(view, region, lost, OperatorKind::ReplaceDownPeer, budget) {
            return Some(op);
        }
    } else if let Some(offline) = on(|s| s == StoreState::Offline) {
        if let Some(op) = replace(
            view,
            region,
            offline,
            OperatorKind::ReplaceOfflinePeer,
            budget,
        ) {
            return Some(op);
        }
    } else if let Some(failed) = record
        .voters
        .iter()
        .copied()
        .find(|v| region.failed.contains(v))
    {
        if let Some(op) = replace(
            view,
            region,
            failed,
            OperatorKind::ReplaceFailedPeer,
            budget,
        ) {
            return Some(op);
        }
    }
    if record.voters.len() < max_replicas {
        // A learner already there on an up store (one a cancelled operator left, say) is
        // promoted: the core lets it vote only once it caught up.
        let up_learner = record
            .learners
            .iter()
            .find(|l| state_of(stores, **l) == StoreState::Up);
        let steps = match (up_learner, best_target(stores, record, None, budget)) {
            (Some(learner), _) => vec![Step::PromoteLearner(*learner)],
            (None, Some(target)) => vec![Step::AddLearner(target), Step::PromoteLearner(target)],
            (None, None) => Vec::new(),
        };
        if !steps.is_empty() {
            return guard(
                region,
                Operator::planned(record, OperatorKind::AddReplica, steps),
                stores,
                budget,
            );
        }
    }
    if record.voters.len() > max_replicas {
        return remove_extra(view, region, budget);
    }
    let stray = record.learners.iter().next()?;
    let op = Operator::planned(
        record,
        OperatorKind::RemoveStrayLearner,
        vec![Step::RemoveLearner(*stray)],
    );
    guard(region, op, stores, budget)
}

/// `op` if every step is safe on the projected region and it fits the budget.
pub(crate) fn guard(
    region: &RegionView,
    op: Operator,
    stores: &[StoreView],
    budget: &Budget,
) -> Option<Operator> {
    if let Err(why) = steps_are_safe(region, &op.steps, stores) {
        tracing::debug!(region = region.record.id, kind = %op.kind, %why, "operator not planned");
        return None;
    }
    budget.fits(&op).then_some(op)
}

/// The up voter of `region` other than `excluded` that should lead instead: fewest
/// leaders, then smallest id.
pub(crate) fn new_leader(
    region: &RegionView,
    stores: &[StoreView],
    excluded: StoreId,
) -> Option<StoreId> {
    region
        .record
        .voters
        .iter()
        .copied()
        .filter(|v| *v != excluded && state_of(stores, *v) == StoreState::Up)
        .min_by_key(|v| (store(stores, *v).map_or(usize::MAX, |s| s.leader_count), *v))
}

/// Replaces the voter on `leaving`: add a learner on the best target, promote it, move
/// leadership to it first if `leaving` leads, then remove `leaving`.
fn replace(
    view: &ClusterView,
    region: &RegionView,
    leaving: StoreId,
    kind: OperatorKind,
    budget: &Budget,
) -> Option<Operator> {
    let record = &region.record;
    let target = best_target(&view.stores, record, Some(leaving), budget)?;
    let mut steps = vec![Step::AddLearner(target), Step::PromoteLearner(target)];
    if region.leader == Some(leaving) {
        steps.push(Step::TransferLeader(target));
    }
    steps.push(Step::RemoveVoter(leaving));
    guard(
        region,
        Operator::planned(record, kind, steps),
        &view.stores,
        budget,
    )
}

/// How bad a voter's store is, for choosing which extra voter to remove (lower first).
fn removal_rank(state: StoreState) -> u8 {
    match state {
        StoreState::Down | StoreState::Tombstone => 0,
        StoreState::Offline => 1,
        StoreState::Disconnected => 2,
        StoreState::Up => 3,
    }
}

/// Removes one voter from a region with more than `max-replicas`: among the voters on the
/// worst kind of store, the one whose removal keeps the widest label spread, then one that
/// does not lead, then on the store with the most regions; leadership moves first if it
/// leads.
fn remove_extra(view: &ClusterView, region: &RegionView, budget: &Budget) -> Option<Operator> {
    let stores = &view.stores;
    let record = &region.record;
    let worst = record
        .voters
        .iter()
        .map(|v| removal_rank(state_of(stores, *v)))
        .min()?;
    let mut candidates: Vec<StoreId> = record
        .voters
        .iter()
        .copied()
        .filter(|v| removal_rank(state_of(stores, *v)) == worst)
        .collect();
    candidates.sort_by_key(|c| {
        let staying: BTreeSet<StoreId> = record.voters.iter().copied().filter(|v| v != c).collect();
        let regions = store(stores, *c).map_or(0, |s| s.region_count);
        (
            std::cmp::Reverse(label_spread(stores, &staying)),
            region.leader == Some(*c),
            std::cmp::Reverse(regions),
            std::cmp::Reverse(*c),
        )
    });
    candidates.into_iter().find_map(|candidate| {
        let mut steps = Vec::new();
        if region.leader == Some(candidate) {
            steps.push(Step::TransferLeader(new_leader(region, stores, candidate)?));
        }
        steps.push(Step::RemoveVoter(candidate));
        let op = Operator::planned(record, OperatorKind::RemoveExtraReplica, steps);
        guard(region, op, stores, budget)
    })
}
