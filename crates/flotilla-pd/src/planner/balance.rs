//! Balance: replicas from loaded stores to light ones, then leaders.
//!
//! Replicas balance by count, unless some up serving store's used bytes differ from the
//! mean by more than `size-balance-percent`: then by size first. A size move carries a
//! region smaller than the byte gap between the two stores, so it strictly narrows the
//! spread of bytes; a count move needs a gap of at least 2 regions and may not widen the
//! byte gap. Together the two can never undo each other, so balance converges. Leaders
//! move from a store leading at least 2 more regions than another voter's store, ending
//! within one of even.
//!
//! Owns: which region moves where. Must never: touch a region with an operator in flight,
//! a peer on a store that is not up, a learner, or a leader it cannot see; or move a
//! replica to a store that spreads the region's labels less than the one it leaves.

use std::collections::BTreeSet;

use flotilla_node::StoreId;

use crate::operator::{Operator, OperatorKind, Step};
use crate::planner::choose::{accepts_replicas, commit, label_gain, Budget};
use crate::planner::replica::{guard, new_leader};
use crate::planner::view::{may_touch, state_of, ClusterView, RegionView, StoreState, StoreView};

/// Whether balance may move anything of `region`: not the meta group (id 0: it holds
/// little, and moving it only risks the PD's own availability; its checker still repairs
/// it), touchable, every peer up, no learner, not more voters than it should have.
fn balanceable(region: &RegionView, view: &ClusterView) -> bool {
    let record = &region.record;
    record.id != 0
        && may_touch(region, &view.stores)
        && record.learners.is_empty()
        && record.voters.len() <= view.config.max_replicas as usize
        && record
            .voters
            .iter()
            .all(|v| state_of(&view.stores, *v) == StoreState::Up)
}

/// Whether some up serving store's used bytes differ from their mean by more than
/// `size-balance-percent`.
fn sizes_out_of_balance(eligible: &[&StoreView], percent: u32) -> bool {
    let total: u128 = eligible.iter().map(|s| u128::from(s.used_bytes)).sum();
    let count = eligible.len() as u128;
    eligible.iter().any(|s| {
        let scaled = u128::from(s.used_bytes) * count;
        scaled.abs_diff(total) * 100 > u128::from(percent) * total
    })
}

/// Plans replica moves while the budget allows.
pub(crate) fn balance_replicas(
    work: &mut ClusterView,
    busy: &mut BTreeSet<u64>,
    budget: &mut Budget,
    out: &mut Vec<Operator>,
) {
    while budget.replica_operators_left() {
        let eligible: Vec<&StoreView> = work
            .stores
            .iter()
            .filter(|s| accepts_replicas(&work.stores, s.record.id))
            .collect();
        if eligible.len() < 2 {
            return;
        }
        let by_size = sizes_out_of_balance(&eligible, work.config.size_balance_percent);
        let planned = (if by_size {
            next_move(work, busy, budget, true)
        } else {
            None
        })
        .or_else(|| next_move(work, busy, budget, false));
        let Some(op) = planned else {
            return;
        };
        commit(work, busy, budget, out, op);
    }
}

/// The next replica move, by size or by count.
fn next_move(
    work: &ClusterView,
    busy: &BTreeSet<u64>,
    budget: &Budget,
    by_size: bool,
) -> Option<Operator> {
    let mut eligible: Vec<&StoreView> = work
        .stores
        .iter()
        .filter(|s| accepts_replicas(&work.stores, s.record.id))
        .collect();
    let load = |s: &StoreView| {
        if by_size {
            (u128::from(s.used_bytes), s.region_count as u128)
        } else {
            (s.region_count as u128, u128::from(s.used_bytes))
        }
    };
    eligible.sort_by_key(|s| (std::cmp::Reverse(load(s)), s.record.id));
    let sources = eligible.clone();
    eligible.sort_by_key(|s| (load(s), s.record.id));
    for source in sources.iter().filter(|s| budget.can_remove(s.record.id)) {
        for target in eligible.iter().filter(|t| budget.can_add(t.record.id)) {
            if target.record.id == source.record.id {
                continue;
            }
            let worth = if by_size {
                source.used_bytes > target.used_bytes
            } else {
                source.region_count >= target.region_count + 2
            };
            if !worth {
                break;
            }
            if let Some(op) = move_one(work, busy, budget, source, target, by_size) {
                return Some(op);
            }
        }
    }
    None
}

/// A region to move from `source` to `target`: the smallest id among those `source` does
/// not lead, else among those it leads (leadership moves first).
fn move_one(
    work: &ClusterView,
    busy: &BTreeSet<u64>,
    budget: &Budget,
    source: &StoreView,
    target: &StoreView,
    by_size: bool,
) -> Option<Operator> {
    let (from, to) = (source.record.id, target.record.id);
    let gap = source.used_bytes.saturating_sub(target.used_bytes);
    let mut candidates: Vec<&RegionView> = work
        .regions
        .iter()
        .filter(|r| !busy.contains(&r.record.id))
        .filter(|r| r.record.voters.contains(&from) && !r.record.has_peer(to))
        .filter(|r| {
            let bytes = r.approximate_bytes;
            if by_size {
                bytes > 0 && bytes < gap
            } else {
                bytes <= gap
            }
        })
        .filter(|r| balanceable(r, work))
        .collect();
    candidates.sort_by_key(|r| (r.leader == Some(from), r.record.id));
    candidates.into_iter().find_map(|region| {
        let record = &region.record;
        let staying: BTreeSet<StoreId> = record
            .voters
            .iter()
            .copied()
            .filter(|v| *v != from)
            .collect();
        if label_gain(&work.stores, &staying, to) < label_gain(&work.stores, &staying, from) {
            return None;
        }
        let mut steps = vec![Step::AddLearner(to), Step::PromoteLearner(to)];
        if region.leader == Some(from) {
            let mut projected = region.clone();
            projected.record.voters.insert(to);
            steps.push(Step::TransferLeader(new_leader(
                &projected,
                &work.stores,
                from,
            )?));
        }
        steps.push(Step::RemoveVoter(from));
        guard(
            region,
            Operator::planned(record, OperatorKind::BalanceReplica, steps),
            &work.stores,
            budget,
        )
    })
}

/// Plans leader transfers while the budget allows.
pub(crate) fn balance_leaders(
    work: &mut ClusterView,
    busy: &mut BTreeSet<u64>,
    budget: &mut Budget,
    out: &mut Vec<Operator>,
) {
    while budget.leader_operators_left() {
        let Some(op) = next_transfer(work, busy, budget) else {
            return;
        };
        commit(work, busy, budget, out, op);
    }
}

fn next_transfer(work: &ClusterView, busy: &BTreeSet<u64>, budget: &Budget) -> Option<Operator> {
    direct_transfer(work, busy, budget).or_else(|| chained_transfer(work, busy, budget))
}

/// A leader transfer from `from` to `to` of a region `from` leads and `to` votes in.
fn transfer(
    work: &ClusterView,
    busy: &BTreeSet<u64>,
    budget: &Budget,
    from: StoreId,
    to: StoreId,
) -> Option<Operator> {
    work.regions
        .iter()
        .filter(|r| !busy.contains(&r.record.id) && r.leader == Some(from))
        .filter(|r| r.record.voters.contains(&to) && balanceable(r, work))
        .find_map(|region| {
            let op = Operator::planned(
                &region.record,
                OperatorKind::BalanceLeader,
                vec![Step::TransferLeader(to)],
            );
            guard(region, op, &work.stores, budget)
        })
}

/// When the most loaded store shares no region with the least loaded ones, a transfer
/// through a store in between: `mid` (one leader fewer than `source`, voting in a region
/// `source` leads) first hands one of its leaders to `low` (at least two fewer than
/// `source`); the next transfer, `source` to `mid`, is then a direct one. Each step lowers
/// or keeps the spread (never a swap between equals), so this cannot cycle.
fn chained_transfer(work: &ClusterView, busy: &BTreeSet<u64>, budget: &Budget) -> Option<Operator> {
    let up: Vec<&StoreView> = work
        .stores
        .iter()
        .filter(|s| s.state == StoreState::Up)
        .collect();
    let source = up
        .iter()
        .max_by_key(|s| (s.leader_count, std::cmp::Reverse(s.record.id)))?;
    for mid in up
        .iter()
        .filter(|m| m.leader_count + 1 == source.leader_count)
    {
        // `source` must be able to hand a leader to `mid` afterwards.
        if transfer(work, busy, budget, source.record.id, mid.record.id).is_none() {
            continue;
        }
        for low in up
            .iter()
            .filter(|l| l.leader_count + 2 <= source.leader_count)
        {
            if let Some(op) = transfer(work, busy, budget, mid.record.id, low.record.id) {
                return Some(op);
            }
        }
    }
    None
}

fn direct_transfer(work: &ClusterView, busy: &BTreeSet<u64>, budget: &Budget) -> Option<Operator> {
    let holders: BTreeSet<StoreId> = work
        .regions
        .iter()
        .flat_map(|r| r.record.voters.iter().copied())
        .collect();
    let mut stores: Vec<&StoreView> = work
        .stores
        .iter()
        .filter(|s| s.state == StoreState::Up && holders.contains(&s.record.id))
        .collect();
    stores.sort_by_key(|s| (std::cmp::Reverse(s.leader_count), s.record.id));
    let sources = stores.clone();
    stores.sort_by_key(|s| (s.leader_count, s.record.id));
    for source in &sources {
        for target in &stores {
            if target.leader_count + 2 > source.leader_count {
                break;
            }
            let found = transfer(work, busy, budget, source.record.id, target.record.id);
            if found.is_some() {
                return found;
            }
        }
    }
    None
}
