//! Choices the checkers and balancers share: the limits left in this round ([`Budget`]),
//! the best store to receive a replica, and how well a set of stores spreads over label
//! values.
//!
//! Owns: the per-store per-minute limits, the schedule limits, and the target ranking
//! (label spread, then fewest regions, then least bytes, then smallest id). Must never:
//! pick a store that is not up and serving, or one that already holds a peer of the region.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_node::StoreId;

use crate::model::{RegionRecord, StoreMark};
use crate::operator::{Operator, Step};
use crate::planner::view::{ClusterView, StoreState, StoreView};

/// Splits in flight at once. A split is one log entry on its region and costs a walk over
/// the region's keys to find its middle: a handful at a time keeps that walk off many
/// regions' leaders at once, and regions grow far slower than eight splits take.
pub(crate) const SPLITS_IN_FLIGHT_MAX: usize = 8;

/// What this round may still do.
pub(crate) struct Budget {
    adds: BTreeMap<StoreId, u32>,
    removes: BTreeMap<StoreId, u32>,
    per_store_per_minute: u32,
    replica_operators_left: usize,
    leader_operators_left: usize,
    split_operators_left: usize,
}

impl Budget {
    pub(crate) fn new(view: &ClusterView) -> Budget {
        let config = &view.config;
        let replica_in_flight = view
            .operators
            .iter()
            .filter(|o| o.kind.changes_replicas())
            .count();
        let leader_in_flight = view
            .operators
            .iter()
            .filter(|o| o.kind.moves_leadership_only())
            .count();
        let split_in_flight = view.operators.len() - replica_in_flight - leader_in_flight;
        Budget {
            adds: view
                .stores
                .iter()
                .map(|s| (s.record.id, s.recent_adds))
                .collect(),
            removes: view
                .stores
                .iter()
                .map(|s| (s.record.id, s.recent_removes))
                .collect(),
            per_store_per_minute: config.replica_ops_per_store_per_minute,
            replica_operators_left: (config.replica_schedule_limit as usize)
                .saturating_sub(replica_in_flight),
            leader_operators_left: (config.leader_schedule_limit as usize)
                .saturating_sub(leader_in_flight),
            split_operators_left: SPLITS_IN_FLIGHT_MAX.saturating_sub(split_in_flight),
        }
    }

    pub(crate) fn can_add(&self, store: StoreId) -> bool {
        self.adds.get(&store).copied().unwrap_or(0) < self.per_store_per_minute
    }

    pub(crate) fn can_remove(&self, store: StoreId) -> bool {
        self.removes.get(&store).copied().unwrap_or(0) < self.per_store_per_minute
    }

    pub(crate) fn replica_operators_left(&self) -> bool {
        self.replica_operators_left > 0
    }

    pub(crate) fn leader_operators_left(&self) -> bool {
        self.leader_operators_left > 0
    }

    pub(crate) fn split_operators_left(&self) -> bool {
        self.split_operators_left > 0
    }

    fn left(&self, kind: crate::operator::OperatorKind) -> usize {
        if kind.changes_replicas() {
            self.replica_operators_left
        } else if kind.moves_leadership_only() {
            self.leader_operators_left
        } else {
            self.split_operators_left
        }
    }

    fn left_for(&mut self, kind: crate::operator::OperatorKind) -> &mut usize {
        if kind.changes_replicas() {
            &mut self.replica_operators_left
        } else if kind.moves_leadership_only() {
            &mut self.leader_operators_left
        } else {
            &mut self.split_operators_left
        }
    }

    /// Whether `op` fits what is left: its kind's schedule limit, and every store it adds
    /// to or removes from under its per-minute limit.
    pub(crate) fn fits(&self, op: &Operator) -> bool {
        self.left(op.kind) > 0
            && op.steps.iter().all(|step| match step {
                Step::AddLearner(s) => self.can_add(*s),
                Step::RemoveVoter(s) | Step::RemoveLearner(s) => self.can_remove(*s),
                Step::PromoteLearner(_)
                | Step::TransferLeader(_)
                | Step::Split(_)
                | Step::SplitByLoad(_)
                | Step::PrepareMerge { .. }
                | Step::CommitMerge { .. } => true,
            })
    }

    /// Charges `op` (which [`Budget::fits`]).
    pub(crate) fn take(&mut self, op: &Operator) {
        let left = self.left_for(op.kind);
        *left = left.saturating_sub(1);
        for step in &op.steps {
            match step {
                Step::AddLearner(s) => *self.adds.entry(*s).or_insert(0) += 1,
                Step::RemoveVoter(s) | Step::RemoveLearner(s) => {
                    *self.removes.entry(*s).or_insert(0) += 1;
                }
                Step::PromoteLearner(_)
                | Step::TransferLeader(_)
                | Step::Split(_)
                | Step::SplitByLoad(_)
                | Step::PrepareMerge { .. }
                | Step::CommitMerge { .. } => {}
            }
        }
    }
}

/// The store `id` in the view.
pub(crate) fn store(stores: &[StoreView], id: StoreId) -> Option<&StoreView> {
    stores.iter().find(|s| s.record.id == id)
}

/// Whether `id` is up and serving: the only stores that receive replicas.
pub(crate) fn accepts_replicas(stores: &[StoreView], id: StoreId) -> bool {
    store(stores, id)
        .is_some_and(|s| s.state == StoreState::Up && s.record.state == StoreMark::Serving)
}

/// How many label keys `candidate` would add a new value for, given the stores `others`
/// (the region's peers that stay).
pub(crate) fn label_gain(
    stores: &[StoreView],
    others: &BTreeSet<StoreId>,
    candidate: StoreId,
) -> usize {
    let Some(candidate) = store(stores, candidate) else {
        return 0;
    };
    candidate
        .record
        .labels
        .iter()
        .filter(|(key, value)| {
            !others.iter().any(|o| {
                store(stores, *o).is_some_and(|s| s.record.labels.get(*key) == Some(*value))
            })
        })
        .count()
}

/// Distinct label values over `members`, summed over label keys: higher spreads better.
pub(crate) fn label_spread(stores: &[StoreView], members: &BTreeSet<StoreId>) -> usize {
    let mut values: BTreeSet<(&str, &str)> = BTreeSet::new();
    for member in members {
        if let Some(s) = store(stores, *member) {
            values.extend(
                s.record
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
    }
    values.len()
}

/// The best store to receive a replica of `region` whose peers other than `leaving` stay:
/// up, serving, holding no peer of the region, under its per-minute add limit; the one
/// adding the most new label values, then with the fewest regions, the fewest bytes, the
/// smallest id.
pub(crate) fn best_target(
    stores: &[StoreView],
    region: &RegionRecord,
    leaving: Option<StoreId>,
    budget: &Budget,
) -> Option<StoreId> {
    let others: BTreeSet<StoreId> = region
        .voters
        .iter()
        .chain(&region.learners)
        .copied()
        .filter(|s| Some(*s) != leaving)
        .collect();
    stores
        .iter()
        .filter(|s| accepts_replicas(stores, s.record.id))
        .filter(|s| !region.has_peer(s.record.id) && budget.can_add(s.record.id))
        .min_by_key(|s| {
            (
                std::cmp::Reverse(label_gain(stores, &others, s.record.id)),
                s.region_count,
                s.used_bytes,
                s.record.id,
            )
        })
        .map(|s| s.record.id)
}

/// Takes `op` into the round: charges the budget, marks its region busy, projects it onto
/// the working view (so later choices see the loads it leaves) and emits it.
pub(crate) fn commit(
    work: &mut ClusterView,
    busy: &mut BTreeSet<u64>,
    budget: &mut Budget,
    out: &mut Vec<Operator>,
    op: Operator,
) {
    budget.take(&op);
    busy.insert(op.region);
    crate::planner::view::apply_to_view(work, &op);
    out.push(op);
}
