//! Leader rebalancing as a pure planner: given who leads each group and each group's voters,
//! the leadership transfers that leave no process leading more than its share,
//! `ceil(groups / processes)` (processes: every voter of those groups).
//!
//! docs/DESIGN.md, "Where the coming work sits": the placement driver's planners take a
//! snapshot of the observed cluster and return operators; an executor carries them out one
//! step at a time. This is the leader-balance planner in that shape; today's executor is
//! [`crate::grpc::CliClient::rebalance`], which gathers the leaders and voters through the
//! CLI service, plans, and transfers leaders, planning again whenever a transfer did not end
//! as planned.
//!
//! Owns: the choice of moves — repeatedly, a group of the process leading the most (the last
//! such process in id order) moves to that group's voter leading the fewest (the first in
//! the group's voter order) among those under the share. Must never: do I/O, wait, or read
//! anything but its arguments.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;

/// One leadership transfer: `group`'s leader `from` hands over to its voter `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The group whose leader moves.
    pub group: GroupId,
    /// Its leader before the move (a process leading more than its share).
    pub from: PeerId,
    /// The voter that is to lead it (one leading less than its share).
    pub to: PeerId,
}

/// What [`plan`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The transfers to make, in order; each assumes that the ones before it took effect.
    pub moves: Vec<Move>,
    /// The process still leading more than its share after `moves`, when no voter of the
    /// groups it leads can take one more leader (the leaders cannot be balanced further);
    /// `None` when `moves` balance them.
    pub stuck: Option<PeerId>,
}

/// What one step of the planner finds.
enum Step {
    /// No process leads more than its share.
    Balanced,
    /// `0` leads more than its share and none of its groups can move.
    Stuck(PeerId),
    /// The next transfer.
    Move(Move),
}

/// Most groups one process should lead: `ceil(groups / processes)` (0 without processes).
#[must_use]
pub fn leaders_max(groups: usize, processes: usize) -> usize {
    if processes == 0 {
        return 0;
    }
    groups.div_ceil(processes)
}

/// The transfers that balance `leaders` (each group's leader) over the processes that vote
/// in `voters` (each group's voters, in the order a target is preferred among equals). A
/// group missing from `voters` has no voter to move to. Deterministic: the same input gives
/// the same plan.
#[must_use]
pub fn plan(leaders: &BTreeMap<GroupId, PeerId>, voters: &BTreeMap<GroupId, Vec<PeerId>>) -> Plan {
    let processes: BTreeSet<PeerId> = voters.values().flatten().cloned().collect();
    let mut leaders = leaders.clone();
    let mut moves = Vec::new();
    if processes.is_empty() {
        return Plan { moves, stuck: None };
    }
    let expected = leaders_max(leaders.len(), processes.len());
    loop {
        match next_move(&leaders, voters, &processes, expected) {
            Step::Balanced => return Plan { moves, stuck: None },
            Step::Stuck(busiest) => {
                return Plan {
                    moves,
                    stuck: Some(busiest),
                }
            }
            Step::Move(step) => {
                leaders.insert(step.group, step.to.clone());
                moves.push(step);
            }
        }
    }
}

/// One move: a group the busiest process leads, to its least-loaded voter under the limit.
fn next_move(
    leaders: &BTreeMap<GroupId, PeerId>,
    voters: &BTreeMap<GroupId, Vec<PeerId>>,
    processes: &BTreeSet<PeerId>,
    expected: usize,
) -> Step {
    let mut counts: BTreeMap<PeerId, usize> = processes.iter().map(|p| (p.clone(), 0)).collect();
    for leader in leaders.values() {
        *counts.entry(leader.clone()).or_insert(0) += 1;
    }
    let Some((busiest, _)) = counts
        .iter()
        .filter(|(_, c)| **c > expected)
        .max_by_key(|(_, c)| **c)
    else {
        return Step::Balanced;
    };
    // A group the busiest leads, moved to its least-loaded voter under the limit.
    for (group, leader) in leaders {
        if leader != busiest {
            continue;
        }
        let target = voters
            .get(group)
            .into_iter()
            .flatten()
            .filter(|p| counts.get(*p).copied().unwrap_or(0) < expected)
            .min_by_key(|p| counts.get(*p).copied().unwrap_or(0));
        if let Some(target) = target {
            return Step::Move(Move {
                group: *group,
                from: busiest.clone(),
                to: target.clone(),
            });
        }
    }
    Step::Stuck(busiest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerId {
        PeerId::new(name)
    }

    fn leaders(of: &[(GroupId, &str)]) -> BTreeMap<GroupId, PeerId> {
        of.iter().map(|(g, l)| (*g, peer(l))).collect()
    }

    fn voters(of: &[(GroupId, &[&str])]) -> BTreeMap<GroupId, Vec<PeerId>> {
        of.iter()
            .map(|(g, vs)| (*g, vs.iter().map(|v| peer(v)).collect()))
            .collect()
    }

    fn moved(group: GroupId, from: &str, to: &str) -> Move {
        Move {
            group,
            from: peer(from),
            to: peer(to),
        }
    }

    /// The leaders after `plan`'s moves, each checked to start from the planned leader.
    fn apply(mut leaders: BTreeMap<GroupId, PeerId>, plan: &Plan) -> BTreeMap<GroupId, PeerId> {
        for step in &plan.moves {
            assert_eq!(
                leaders[&step.group], step.from,
                "move {step:?} from a non-leader"
            );
            leaders.insert(step.group, step.to.clone());
        }
        leaders
    }

    fn most_led(leaders: &BTreeMap<GroupId, PeerId>) -> usize {
        let mut counts: BTreeMap<&PeerId, usize> = BTreeMap::new();
        for leader in leaders.values() {
            *counts.entry(leader).or_default() += 1;
        }
        counts.values().copied().max().unwrap_or(0)
    }

    const ABC: &[&str] = &["a", "b", "c"];

    #[test]
    fn the_share_is_groups_over_processes_rounded_up() {
        assert_eq!(leaders_max(0, 3), 0);
        assert_eq!(leaders_max(3, 3), 1);
        assert_eq!(leaders_max(4, 3), 2);
        assert_eq!(leaders_max(7, 2), 4);
        assert_eq!(leaders_max(5, 0), 0);
    }

    #[test]
    fn balanced_leaders_need_no_move() {
        let now = leaders(&[(1, "a"), (2, "b"), (3, "c")]);
        let all = voters(&[(1, ABC), (2, ABC), (3, ABC)]);
        assert_eq!(plan(&now, &all), Plan::default());
    }

    #[test]
    fn no_voters_means_nothing_to_plan() {
        let now = leaders(&[(1, "a"), (2, "a")]);
        assert_eq!(plan(&now, &BTreeMap::new()), Plan::default());
        let none = voters(&[(1, &[]), (2, &[])]);
        assert_eq!(plan(&now, &none), Plan::default());
    }

    #[test]
    fn one_process_leading_everything_hands_groups_to_the_least_loaded_voters() {
        let now = leaders(&[(1, "a"), (2, "a"), (3, "a")]);
        let all = voters(&[(1, ABC), (2, ABC), (3, ABC)]);
        let planned = plan(&now, &all);
        // Group 1 first (group order), to the first voter leading nothing ("b": "a" is
        // over the share); then group 2 to "c", the only one left at zero.
        assert_eq!(planned.moves, vec![moved(1, "a", "b"), moved(2, "a", "c")]);
        assert_eq!(planned.stuck, None);
        assert_eq!(most_led(&apply(now, &planned)), 1);
    }

    #[test]
    fn among_equally_loaded_targets_the_group_s_voter_order_decides() {
        let now = leaders(&[(1, "a"), (2, "a")]);
        let all = voters(&[(1, &["a", "c", "b"]), (2, &["a", "c", "b"])]);
        let planned = plan(&now, &all);
        assert_eq!(planned.moves, vec![moved(1, "a", "c")]);
        assert_eq!(planned.stuck, None);
    }

    #[test]
    fn the_busiest_process_moves_first_and_ties_go_to_the_last_in_id_order() {
        // 6 groups over 3 processes: share 2. "a" leads 3, "b" 3, "c" 0.
        let now = leaders(&[(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "b")]);
        let all = voters(&[(1, ABC), (2, ABC), (3, ABC), (4, ABC), (5, ABC), (6, ABC)]);
        let planned = plan(&now, &all);
        assert_eq!(planned.moves, vec![moved(4, "b", "c"), moved(1, "a", "c")]);
        assert_eq!(planned.stuck, None);
        assert_eq!(most_led(&apply(now, &planned)), 2);
    }

    #[test]
    fn a_group_whose_voters_are_all_full_is_skipped_for_another_of_the_same_leader() {
        // Share 1 (3 groups, 3 processes). Group 1's other voter "b" already leads one.
        let now = leaders(&[(1, "a"), (2, "a"), (3, "b")]);
        let all = voters(&[(1, &["a", "b"]), (2, ABC), (3, ABC)]);
        let planned = plan(&now, &all);
        assert_eq!(planned.moves, vec![moved(2, "a", "c")]);
        assert_eq!(planned.stuck, None);
    }

    #[test]
    fn leaders_that_cannot_move_leave_the_plan_stuck_on_the_busiest() {
        // Share 1; "a" leads two groups whose only other voter "b" is full.
        let now = leaders(&[(1, "a"), (2, "a"), (3, "b")]);
        let all = voters(&[(1, &["a", "b"]), (2, &["a", "b"]), (3, &["b", "c"])]);
        let planned = plan(&now, &all);
        assert_eq!(planned.moves, Vec::new());
        assert_eq!(planned.stuck, Some(peer("a")));
    }

    #[test]
    fn moves_made_before_getting_stuck_are_kept() {
        // Share 1 (4 groups, 4 processes). "a" leads 1, 2 and 3; only group 1 can go to "d".
        let now = leaders(&[(1, "a"), (2, "a"), (3, "a"), (4, "b")]);
        let all = voters(&[
            (1, &["a", "d"]),
            (2, &["a", "b"]),
            (3, &["a", "b"]),
            (4, &["b", "c"]),
        ]);
        let planned = plan(&now, &all);
        assert_eq!(planned.moves, vec![moved(1, "a", "d")]);
        assert_eq!(planned.stuck, Some(peer("a")));
    }

    #[test]
    fn every_plan_ends_balanced_or_stuck_within_the_share() {
        // A sweep of skewed placements: balanced plans leave nobody over the share.
        for groups in 1..12u64 {
            for processes in 1..5usize {
                let names: Vec<String> = (0..processes).map(|p| format!("p{p}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let now: BTreeMap<GroupId, PeerId> =
                    (0..groups).map(|g| (g, peer(refs[0]))).collect();
                let all: BTreeMap<GroupId, Vec<PeerId>> = (0..groups)
                    .map(|g| (g, refs.iter().map(|v| peer(v)).collect()))
                    .collect();
                let planned = plan(&now, &all);
                assert_eq!(
                    planned.stuck, None,
                    "{groups} groups, {processes} processes"
                );
                let share = leaders_max(now.len(), processes);
                assert!(most_led(&apply(now, &planned)) <= share);
            }
        }
    }
}
