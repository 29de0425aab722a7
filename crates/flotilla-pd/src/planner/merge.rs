//! The merge checker: a region under `region-merge-bytes` and `region-merge-keys`, whose
//! range has not changed for `split-merge-interval` (`settled`), merges into the neighbour
//! after it (or, at the end of the key space, before it) when that one is small and
//! settled too. One operator does it all on the source: its replicas are first moved onto
//! the target's stores (add learner, promote, remove: never fewer voters than it had),
//! then its PrepareMerge, then the target's CommitMerge.
//!
//! Owns: which pairs merge and the alignment steps. Must never: merge the meta group, a
//! region or neighbour another operator touches, or regions of different replica counts
//! (alignment would change the target's redundancy).

use std::collections::BTreeSet;

use flotilla_node::StoreId;

use crate::operator::{Operator, OperatorKind, Step};
use crate::planner::choose::{self, Budget};
use crate::planner::view::{may_touch, steps_are_safe, ClusterView, RegionView};

/// Plans merges over `work` (regions by start key), committing each into the round.
pub(crate) fn check_all(
    work: &mut ClusterView,
    busy: &mut BTreeSet<u64>,
    budget: &mut Budget,
    out: &mut Vec<Operator>,
) {
    let config = &work.config;
    if config.region_merge_bytes == 0 || config.region_merge_keys == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..work.regions.len())
        .filter(|&i| work.regions[i].record.id != 0)
        .collect();
    order.sort_by(|&a, &b| {
        work.regions[a]
            .record
            .start
            .cmp(&work.regions[b].record.start)
    });
    for (n, &i) in order.iter().enumerate() {
        if !budget.replica_operators_left() {
            return;
        }
        // The next region by start key, if it starts where this one ends; else the one
        // before (a region at the end of the key space has no next).
        let next = order.get(n + 1).copied().filter(|&j| {
            let (a, b) = (&work.regions[i].record, &work.regions[j].record);
            !a.end.is_empty() && a.end == b.start
        });
        let before = n
            .checked_sub(1)
            .map(|m| order[m])
            .filter(|&j| work.regions[j].record.end == work.regions[i].record.start);
        let Some(j) = next.or(before) else {
            continue;
        };
        let (source, target) = (&work.regions[i], &work.regions[j]);
        if busy.contains(&source.record.id) || busy.contains(&target.record.id) {
            continue;
        }
        if !small(work, source) || !small(work, target) {
            continue;
        }
        if !may_touch(source, &work.stores) || !may_touch(target, &work.stores) {
            continue;
        }
        let Some(steps) = steps_for(source, target) else {
            continue;
        };
        if steps_are_safe(source, &steps, &work.stores).is_err() {
            continue;
        }
        let op = Operator::planned(&source.record, OperatorKind::MergeRegion, steps);
        if !budget.fits(&op) {
            continue;
        }
        let target_id = target.record.id;
        choose::commit(work, busy, budget, out, op);
        busy.insert(target_id);
    }
}

/// A person's merge of region `source` into its neighbour `target` (`admin merge`): the
/// operator the merge checker would plan, whatever the two regions' sizes and ages. Refused
/// with why: either region unknown, the meta group, regions that do not touch, an operator
/// in flight on either, a region that may not be touched now (no leader, joint, no
/// quorum), replica counts that differ, learners on the target.
pub fn plan_merge(view: &ClusterView, source: u64, target: u64) -> Result<Operator, String> {
    if source == 0 || target == 0 || source == target {
        return Err(format!(
            "region {source} cannot merge into region {target} (the meta group, or itself)"
        ));
    }
    let find = |id: u64| {
        view.regions
            .iter()
            .find(|r| r.record.id == id)
            .ok_or_else(|| format!("the placement driver records no region {id}"))
    };
    let (s, t) = (find(source)?, find(target)?);
    let touch = (!s.record.end.is_empty() && s.record.end == t.record.start)
        || (!t.record.end.is_empty() && t.record.end == s.record.start);
    if !touch {
        return Err(format!(
            "regions {source} and {target} are not neighbours (their ranges do not touch)"
        ));
    }
    for op in &view.operators {
        let targets = op.steps.iter().filter_map(|step| match step {
            Step::PrepareMerge { target } | Step::CommitMerge { target } => Some(*target),
            _ => None,
        });
        let touched: Vec<u64> = std::iter::once(op.region).chain(targets).collect();
        if touched.contains(&source) || touched.contains(&target) {
            return Err(format!(
                "operator {} ({}) is changing region {}: wait for it (`admin pd status`)",
                op.id, op.kind, op.region
            ));
        }
    }
    for region in [s, t] {
        if !may_touch(region, &view.stores) {
            return Err(format!(
                "region {} has no leader on a live store, is changing membership, or lost \
                 its quorum",
                region.record.id
            ));
        }
    }
    let steps = steps_for(s, t).ok_or_else(|| {
        format!(
            "regions {source} and {target} have other replica counts, or {target} has \
             learners: they cannot be aligned"
        )
    })?;
    steps_are_safe(s, &steps, &view.stores)?;
    Ok(Operator::planned(
        &s.record,
        OperatorKind::MergeRegion,
        steps,
    ))
}

/// Whether `region` is small and settled enough to merge.
fn small(view: &ClusterView, region: &RegionView) -> bool {
    let config = &view.config;
    region.settled
        && region.approximate_bytes < config.region_merge_bytes
        && region.approximate_keys < config.region_merge_keys
}

/// The steps that move `source`'s replicas onto `target`'s stores and then merge it, or
/// `None` when the two cannot be aligned safely (another replica count, learners on the
/// target, no leader, too many steps).
fn steps_for(source: &RegionView, target: &RegionView) -> Option<Vec<Step>> {
    let (s, t) = (&source.record, &target.record);
    if s.voters.len() != t.voters.len() || !t.learners.is_empty() {
        return None;
    }
    let mut leader = source.leader?;
    let mut steps = Vec::new();
    for learner in &s.learners {
        steps.push(Step::RemoveLearner(*learner));
    }
    let adds: Vec<StoreId> = t.voters.difference(&s.voters).copied().collect();
    let removes: Vec<StoreId> = s.voters.difference(&t.voters).copied().collect();
    for (add, remove) in adds.iter().zip(&removes) {
        steps.push(Step::AddLearner(*add));
        steps.push(Step::PromoteLearner(*add));
        if *remove == leader {
            steps.push(Step::TransferLeader(*add));
            leader = *add;
        }
        steps.push(Step::RemoveVoter(*remove));
    }
    steps.push(Step::PrepareMerge { target: t.id });
    steps.push(Step::CommitMerge { target: t.id });
    (steps.len() <= crate::limits::STEPS_MAX).then_some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    use crate::model::RegionRecord;

    fn region(id: u64, start: &str, end: &str, voters: &[u64], leader: u64) -> RegionView {
        RegionView {
            record: RegionRecord {
                id,
                start: Bytes::copy_from_slice(start.as_bytes()),
                end: Bytes::copy_from_slice(end.as_bytes()),
                conf_version: 1,
                version: 1,
                voters: voters.iter().map(|&v| StoreId(v)).collect(),
                learners: BTreeSet::new(),
            },
            leader: Some(StoreId(leader)),
            approximate_bytes: 10,
            approximate_keys: 1,
            hot: false,
            settled: true,
            in_joint: false,
            failed: Vec::new(),
        }
    }

    fn view(regions: Vec<RegionView>) -> ClusterView {
        use crate::model::{PdConfig, StoreMark, StoreRecord};
        use crate::planner::view::{StoreState, StoreView};
        let stores = (1..=4)
            .map(|i| StoreView {
                record: StoreRecord {
                    id: StoreId(i),
                    address: format!("s{i}"),
                    labels: std::collections::BTreeMap::new(),
                    state: StoreMark::Serving,
                },
                state: StoreState::Up,
                region_count: 0,
                leader_count: 0,
                used_bytes: 0,
                recent_adds: 0,
                recent_removes: 0,
            })
            .collect();
        ClusterView {
            config: PdConfig::default(),
            stores,
            regions,
            operators: Vec::new(),
        }
    }

    fn planned(view: &ClusterView) -> Vec<Operator> {
        let mut work = view.clone();
        let mut busy = BTreeSet::new();
        let mut budget = Budget::new(view);
        let mut out = Vec::new();
        check_all(&mut work, &mut busy, &mut budget, &mut out);
        out
    }

    #[test]
    fn small_settled_neighbours_merge_once_and_big_or_young_ones_do_not() {
        let three = [1, 2, 3];
        let pair = view(vec![
            region(1, "", "m", &three, 1),
            region(2, "m", "", &three, 2),
        ]);
        let ops = planned(&pair);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!((ops[0].region, ops[0].kind), (1, OperatorKind::MergeRegion));
        // Three small regions: the middle one is a target once, never a source as well.
        let row = view(vec![
            region(1, "", "f", &three, 1),
            region(2, "f", "p", &three, 1),
            region(3, "p", "", &three, 1),
        ]);
        assert_eq!(planned(&row).len(), 1);
        let mut young = pair.clone();
        young.regions[1].settled = false;
        assert!(planned(&young).is_empty(), "the target split lately");
        let mut big = pair.clone();
        big.regions[0].approximate_keys = big.config.region_merge_keys;
        assert!(planned(&big).is_empty(), "the source is not small");
        let mut off = pair.clone();
        off.config.region_merge_bytes = 0;
        assert!(planned(&off).is_empty(), "merging is off");
        let mut busy = pair.clone();
        busy.operators.push(Operator {
            id: 9,
            ..Operator::planned(&pair.regions[1].record, OperatorKind::BalanceLeader, vec![])
        });
        // The planner's caller marks regions with operators busy; `plan_merge` refuses.
        assert!(plan_merge(&busy, 1, 2).unwrap_err().contains("operator 9"));
    }

    #[test]
    fn a_persons_merge_is_refused_for_strangers_and_planned_for_neighbours() {
        let three = [1, 2, 3];
        let v = view(vec![
            region(1, "", "f", &three, 1),
            region(2, "f", "p", &[2, 3, 4], 2),
            region(3, "p", "", &[1, 2], 1),
        ]);
        assert!(plan_merge(&v, 1, 3).unwrap_err().contains("not neighbours"));
        assert!(plan_merge(&v, 1, 1).is_err());
        assert!(plan_merge(&v, 0, 1).is_err());
        assert!(plan_merge(&v, 1, 9).unwrap_err().contains("no region 9"));
        assert!(plan_merge(&v, 2, 3).unwrap_err().contains("replica counts"));
        // Region 1's stores differ from region 2's by one, its leader's: a replacement with
        // a leadership move, then the merge (sizes and ages do not matter to a person).
        let op = plan_merge(&v, 1, 2).unwrap();
        assert_eq!(op.steps.len(), 6, "{op}");
        assert_eq!(op.steps[2], Step::TransferLeader(StoreId(4)));
        assert_eq!(op.steps[5], Step::CommitMerge { target: 2 });
    }

    #[test]
    fn aligned_neighbours_merge_in_two_steps_and_others_are_moved_first() {
        let a = region(1, "", "m", &[1, 2, 3], 1);
        let b = region(2, "m", "", &[1, 2, 3], 2);
        assert_eq!(
            steps_for(&a, &b).unwrap(),
            vec![
                Step::PrepareMerge { target: 2 },
                Step::CommitMerge { target: 2 }
            ]
        );
        // The source's leader is on a store the target is not on: it moves first.
        let c = region(3, "", "m", &[1, 2, 4], 4);
        assert_eq!(
            steps_for(&c, &b).unwrap(),
            vec![
                Step::AddLearner(StoreId(3)),
                Step::PromoteLearner(StoreId(3)),
                Step::TransferLeader(StoreId(3)),
                Step::RemoveVoter(StoreId(4)),
                Step::PrepareMerge { target: 2 },
                Step::CommitMerge { target: 2 }
            ]
        );
        // Another replica count: left alone.
        let d = region(4, "", "m", &[1, 2], 1);
        assert!(steps_for(&d, &b).is_none());
    }
}
