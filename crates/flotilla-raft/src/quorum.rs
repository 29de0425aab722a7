//! Quorum arithmetic: pure functions over voter sets.
//!
//! Owns: what "a majority of the configuration" means, for a stable configuration and for a
//! joint one (a majority of *each* half, Raft paper §6). Must never: look at roles, terms or
//! messages; callers pass in what each voter has acknowledged.

use std::collections::BTreeSet;

use crate::ids::{LogIndex, PeerId};
use crate::membership::Configuration;

/// Outcome of a vote count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

/// Size of a majority of `n` voters.
#[must_use]
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The highest value acknowledged by a majority of `voters`, where `acked` gives what each
/// voter acknowledged (`None` counts as zero). An empty voter set imposes no constraint and
/// yields `u64::MAX` so that it vanishes under `min` for joint configurations.
fn majority_value<F: Fn(&PeerId) -> u64>(voters: &BTreeSet<PeerId>, acked: &F) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    // Small sets: a stack buffer avoids an allocation on the commit path.
    let mut buffer = [0u64; 16];
    let mut heap;
    let values: &mut [u64] = if voters.len() <= buffer.len() {
        for (slot, peer) in buffer.iter_mut().zip(voters) {
            *slot = acked(peer);
        }
        &mut buffer[..voters.len()]
    } else {
        heap = voters.iter().map(acked).collect::<Vec<_>>();
        &mut heap[..]
    };
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[majority(voters.len()) - 1]
}

/// The highest value acknowledged by a quorum of `configuration` (both halves while joint).
///
/// Used for the commit index (with match indexes), read confirmation (with read sequence
/// numbers) and the leader lease (with acknowledgement ticks).
#[must_use]
pub fn quorum_value<F: Fn(&PeerId) -> u64>(configuration: &Configuration, acked: F) -> u64 {
    let new = majority_value(&configuration.voters, &acked);
    match &configuration.old_voters {
        Some(old) => new.min(majority_value(old, &acked)),
        None => new,
    }
}

/// The highest index stored by a quorum of `configuration`.
#[must_use]
pub fn committed_index<F: Fn(&PeerId) -> LogIndex>(
    configuration: &Configuration,
    matched: F,
) -> LogIndex {
    LogIndex(quorum_value(configuration, |p| matched(p).get()))
}

fn tally(voters: &BTreeSet<PeerId>, vote: &dyn Fn(&PeerId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut rejected) = (0, 0);
    for peer in voters {
        match vote(peer) {
            Some(true) => granted += 1,
            Some(false) => rejected += 1,
            None => {}
        }
    }
    let need = majority(voters.len());
    if granted >= need {
        VoteResult::Won
    } else if voters.len() - rejected < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// Counts votes: won only with a majority of each half while joint; lost as soon as either
/// half can no longer reach a majority.
#[must_use]
pub fn vote_result(
    configuration: &Configuration,
    vote: impl Fn(&PeerId) -> Option<bool>,
) -> VoteResult {
    let new = tally(&configuration.voters, &vote);
    let old = match &configuration.old_voters {
        Some(old) => tally(old, &vote),
        None => VoteResult::Won,
    };
    match (new, old) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[&str], old: Option<&[&str]>) -> Configuration {
        let mut c = Configuration::new(voters.iter().map(|v| PeerId::new(v)));
        c.old_voters = old.map(|o| o.iter().map(|v| PeerId::new(v)).collect());
        c
    }

    #[test]
    fn majority_index_of_five() {
        let c = conf(&["a", "b", "c", "d", "e"], None);
        let m = |p: &PeerId| match p.as_str() {
            "a" => LogIndex(9),
            "b" => LogIndex(7),
            "c" => LogIndex(5),
            _ => LogIndex(1),
        };
        assert_eq!(committed_index(&c, m), LogIndex(5));
    }

    #[test]
    fn joint_needs_both_halves() {
        // New half {c,d,e} has a majority at 9; old half {a,b,c} only at 3.
        let c = conf(&["c", "d", "e"], Some(&["a", "b", "c"]));
        let m = |p: &PeerId| match p.as_str() {
            "a" | "b" => LogIndex(3),
            _ => LogIndex(9),
        };
        assert_eq!(committed_index(&c, m), LogIndex(3));
    }

    #[test]
    fn votes_joint() {
        let c = conf(&["c", "d", "e"], Some(&["a", "b", "c"]));
        let only_new = |p: &PeerId| Some(matches!(p.as_str(), "c" | "d" | "e"));
        assert_eq!(vote_result(&c, only_new), VoteResult::Lost);
        let both = |p: &PeerId| matches!(p.as_str(), "b" | "c" | "d").then_some(true);
        assert_eq!(vote_result(&c, both), VoteResult::Won);
        let some = |p: &PeerId| (p.as_str() == "c").then_some(true);
        assert_eq!(vote_result(&c, some), VoteResult::Pending);
    }
}
