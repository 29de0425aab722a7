//! The planners: pure functions from a [`ClusterView`] to operators.
//!
//! [`plan`] runs the replica checker over every region (by id), then the split checker
//! over the regions it left alone, then the merge checker, then balance over the rest:
//! replicas, then leaders. It honours `paused`, the
//! schedule limits, the per-store per-minute limits and one operator per region, and every
//! step of every operator it returns passes [`step_is_safe`] on the region as the earlier
//! steps leave it.
//!
//! Owns: the order of the checkers and the round's bookkeeping. Must never: return two
//! operators for one region, one for a region with an operator in flight, or anything
//! while paused.

mod balance;
mod choose;
mod merge;
mod replica;
mod split;
mod view;

use std::collections::BTreeSet;

pub use merge::plan_merge;
pub use view::{
    apply_to_view, has_quorum, may_touch, state_of, step_is_safe, steps_are_safe, store_state,
    ClusterView, RegionView, StoreState, StoreView,
};

use crate::operator::Operator;

/// The operators to start now, checker operators first (each with id 0 and `planned_on`
/// its region's epoch).
#[must_use]
pub fn plan(view: &ClusterView) -> Vec<Operator> {
    plan_with(view, Balance::All)
}

/// The checkers' operators only (repairs and splits), no balance.
#[must_use]
pub fn plan_repairs(view: &ClusterView) -> Vec<Operator> {
    plan_with(view, Balance::Nothing)
}

/// Repairs and leader balance, no replica balance: what a caller plans while the view
/// still lags replica moves that just ran (the stores' replica counts would be stale, and
/// balancing on stale counts moves replicas back and forth). Leader counts do not lag
/// that way: operators in flight are projected onto the view first, and a caller updates
/// a region's leader when a transfer it made is done.
#[must_use]
pub fn plan_repairs_and_leaders(view: &ClusterView) -> Vec<Operator> {
    plan_with(view, Balance::Leaders)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Balance {
    Nothing,
    Leaders,
    All,
}

fn plan_with(view: &ClusterView, balance: Balance) -> Vec<Operator> {
    if view.config.paused {
        return Vec::new();
    }
    let mut work = view.clone();
    // The loads the operators in flight leave behind (their steps not done yet), so that
    // this round does not move what they already move.
    for op in &view.operators {
        apply_to_view(&mut work, op);
    }
    let budget = choose::Budget::new(view);
    // An operator's region is busy, and so is the target of a merge in flight (a change to
    // it would make the merge's commit refused).
    let busy: BTreeSet<u64> = view
        .operators
        .iter()
        .flat_map(|o| {
            let targets = o.steps.iter().filter_map(|s| match s {
                crate::operator::Step::PrepareMerge { target }
                | crate::operator::Step::CommitMerge { target } => Some(*target),
                _ => None,
            });
            std::iter::once(o.region).chain(targets)
        })
        .collect();
    let out = Vec::new();
    // Region id -> position in `work.regions` (projection never reorders them).
    let positions: std::collections::BTreeMap<u64, usize> = view
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.record.id, i))
        .collect();
    let mut round = Round {
        work,
        busy,
        budget,
        out,
    };
    round.check_each(
        &positions,
        choose::Budget::replica_operators_left,
        replica::check_region,
    );
    // Splits: a region too big to move cheaply is split before it is balanced.
    round.check_each(
        &positions,
        choose::Budget::split_operators_left,
        |work, region, _| split::check_region(work, region),
    );
    let Round {
        mut work,
        mut busy,
        mut budget,
        mut out,
    } = round;
    // Merges: small settled neighbours, after repairs and splits, before balance.
    merge::check_all(&mut work, &mut busy, &mut budget, &mut out);
    if balance == Balance::All {
        balance::balance_replicas(&mut work, &mut busy, &mut budget, &mut out);
    }
    if balance != Balance::Nothing {
        balance::balance_leaders(&mut work, &mut busy, &mut budget, &mut out);
    }
    out
}

/// What a round of planning has so far: the view with the chosen operators projected,
/// the regions they touch, the limits left, and the operators.
struct Round {
    work: ClusterView,
    busy: BTreeSet<u64>,
    budget: choose::Budget,
    out: Vec<Operator>,
}

impl Round {
    /// Runs `check` over every region (by id) that no operator touches and that may be
    /// touched, while `left` says the budget allows another, committing what it plans.
    fn check_each(
        &mut self,
        positions: &std::collections::BTreeMap<u64, usize>,
        left: fn(&choose::Budget) -> bool,
        check: impl Fn(&ClusterView, &RegionView, &choose::Budget) -> Option<Operator>,
    ) {
        for (&id, &position) in positions {
            if !left(&self.budget) {
                break;
            }
            if self.busy.contains(&id) {
                continue;
            }
            let region = self.work.regions[position].clone();
            if !may_touch(&region, &self.work.stores) {
                continue;
            }
            if let Some(op) = check(&self.work, &region, &self.budget) {
                choose::commit(
                    &mut self.work,
                    &mut self.busy,
                    &mut self.budget,
                    &mut self.out,
                    op,
                );
            }
        }
    }
}

/// A planted bug for the tests: [`plan`], but replacements remove the old voter before
/// adding the new one. The scenario tests show their invariant checks catch it.
#[cfg(any(test, feature = "planted-bugs"))]
#[must_use]
pub fn plan_remove_before_add(view: &ClusterView) -> Vec<Operator> {
    use crate::operator::{OperatorKind, Step};
    plan(view)
        .into_iter()
        .map(|mut op| {
            if matches!(
                op.kind,
                OperatorKind::ReplaceDownPeer | OperatorKind::ReplaceOfflinePeer
            ) {
                op.steps.sort_by_key(|s| !matches!(s, Step::RemoveVoter(_)));
            }
            op
        })
        .collect()
}
