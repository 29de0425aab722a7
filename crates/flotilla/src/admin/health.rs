//! Which regions need attention, judged from the stores' `Regions` answers alone.
//!
//! A region is unhealthy for one or more of these reasons (`admin status --unhealthy`; the
//! README and `--help` say the same):
//!
//! - `no_leader`: no store that answered says it leads the region (an election is under
//!   way, or too few voters are up to elect one).
//! - `no_quorum`: fewer than a majority of the region's voters are on stores that answered
//!   and report the region: it can neither elect a leader nor commit a write (a leader
//!   that hibernated before losing its majority may still say it leads).
//! - `peer_down`: a voter or learner of the region is on a store that did not answer
//!   (down, unreachable, or no store knows its address).
//! - `peer_missing`: a voter or learner is on a store that answered but does not report the
//!   region (its peer was never opened there, or was lost).
//! - `lagging`: a voter or learner's applied index is more than `applied_lag_max` entries
//!   behind the leader's commit index (judged only while the region has a leader).
//! - `epoch_mismatch`: a store reports the region with another epoch or key range than the
//!   merged view's (the leader's, when there is one).
//!
//! The configuration (voters and learners) is the merged view's. Owns: the judgement, a
//! pure function. Must never: ask a store anything (it judges only what was gathered), or
//! treat a store that did not answer as a healthy one.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_kv::service::proto::{RegionInfo, RegionsReply};

/// Default of `--applied-lag-max`: the answers are gathered at slightly different moments,
/// so a busy region's peers are a few batches apart even when healthy.
pub(super) const APPLIED_LAG_MAX: u64 = 1000;

/// Why a region needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reason {
    NoLeader,
    NoQuorum,
    PeerDown,
    PeerMissing,
    Lagging,
    EpochMismatch,
}

impl Reason {
    pub(super) const ALL: [Reason; 6] = [
        Reason::NoLeader,
        Reason::NoQuorum,
        Reason::PeerDown,
        Reason::PeerMissing,
        Reason::Lagging,
        Reason::EpochMismatch,
    ];

    /// The name in JSON and text.
    pub(super) fn name(self) -> &'static str {
        match self {
            Reason::NoLeader => "no_leader",
            Reason::NoQuorum => "no_quorum",
            Reason::PeerDown => "peer_down",
            Reason::PeerMissing => "peer_missing",
            Reason::Lagging => "lagging",
            Reason::EpochMismatch => "epoch_mismatch",
        }
    }
}

/// One reason a region needs attention, and the store it concerns (none for `no_leader`
/// and `no_quorum`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Problem {
    pub(super) reason: Reason,
    pub(super) store: Option<String>,
    /// `lagging`: how many entries the peer's applied index is behind the leader's commit.
    pub(super) behind: Option<u64>,
}

/// Each region's reports by the stores that answered: region id → store id → report.
pub(super) type Reports<'a> = BTreeMap<u64, BTreeMap<&'a str, &'a RegionInfo>>;

/// Every region's reports, from the stores' answers.
pub(super) fn reports(replies: &[RegionsReply]) -> Reports<'_> {
    let mut out: Reports<'_> = BTreeMap::new();
    for reply in replies {
        for info in &reply.regions {
            out.entry(info.id)
                .or_default()
                .insert(reply.store_id.as_str(), info);
        }
    }
    out
}

/// The report of the store that leads the region, if one says it does (the highest term
/// when a deposed leader has not heard of its successor yet).
pub(super) fn leader<'a>(reports: &BTreeMap<&str, &'a RegionInfo>) -> Option<&'a RegionInfo> {
    reports
        .values()
        .filter(|r| r.role == "leader")
        .max_by_key(|r| (r.term, r.commit_index))
        .copied()
}

/// The problems of the region whose merged view is `merged`, given its reports and the ids
/// of the stores that answered; empty when the region is healthy. Sorted by reason, then
/// store.
pub(super) fn judge(
    merged: &RegionInfo,
    reports: &BTreeMap<&str, &RegionInfo>,
    answered: &BTreeSet<&str>,
    applied_lag_max: u64,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let leader = leader(reports);
    if leader.is_none() {
        problems.push(Problem {
            reason: Reason::NoLeader,
            store: None,
            behind: None,
        });
    }
    let voters: BTreeSet<&str> = merged.peer_ids.iter().map(String::as_str).collect();
    let voters_up = voters.iter().filter(|v| reports.contains_key(*v)).count();
    if voters_up < voters.len() / 2 + 1 {
        problems.push(Problem {
            reason: Reason::NoQuorum,
            store: None,
            behind: None,
        });
    }
    let members: BTreeSet<&str> = merged
        .peer_ids
        .iter()
        .chain(&merged.learner_ids)
        .map(String::as_str)
        .collect();
    for member in members {
        let problem = |reason, behind| Problem {
            reason,
            store: Some(member.to_string()),
            behind,
        };
        match reports.get(member) {
            None if answered.contains(member) => problems.push(problem(Reason::PeerMissing, None)),
            None => problems.push(problem(Reason::PeerDown, None)),
            Some(report) => {
                let behind =
                    leader.map_or(0, |l| l.commit_index.saturating_sub(report.applied_index));
                if behind > applied_lag_max {
                    problems.push(problem(Reason::Lagging, Some(behind)));
                }
            }
        }
    }
    // The range and its version; not `conf_version`: a follower learns that a membership
    // change committed with the next message from its leader, so it may lag like an
    // applied index (and a hibernating region sends none until woken).
    let shape = |r: &RegionInfo| (r.version, r.start.clone(), r.end.clone());
    for (store, report) in reports {
        if shape(report) != shape(merged) {
            problems.push(Problem {
                reason: Reason::EpochMismatch,
                store: Some((*store).to_string()),
                behind: None,
            });
        }
    }
    problems.sort();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000000000000000a";
    const B: &str = "000000000000000b";
    const C: &str = "000000000000000c";
    const D: &str = "000000000000000d";

    fn report(role: &str, commit_index: u64, applied_index: u64) -> RegionInfo {
        RegionInfo {
            id: 7,
            start: bytes::Bytes::from_static(b"a"),
            end: bytes::Bytes::from_static(b"m"),
            conf_version: 1,
            version: 1,
            term: 3,
            role: role.to_string(),
            leader_id: A.to_string(),
            peer_ids: vec![A.to_string(), B.to_string(), C.to_string()],
            learner_ids: vec![D.to_string()],
            commit_index,
            applied_index,
            ..RegionInfo::default()
        }
    }

    /// Judges region 7 as reported by `views` (store, report), `answered` being the stores
    /// that answered at all; the merged view is the leader's, else the first report.
    fn judged(
        views: &[(&'static str, RegionInfo)],
        answered: &[&'static str],
        lag: u64,
    ) -> Vec<(Reason, Option<String>)> {
        let reports: BTreeMap<&str, &RegionInfo> = views.iter().map(|(s, r)| (*s, r)).collect();
        let merged = leader(&reports).unwrap_or(&views[0].1);
        let answered: BTreeSet<&str> = answered.iter().copied().collect();
        judge(merged, &reports, &answered, lag)
            .into_iter()
            .map(|p| (p.reason, p.store))
            .collect()
    }

    fn healthy_views() -> Vec<(&'static str, RegionInfo)> {
        vec![
            (A, report("leader", 100, 100)),
            (B, report("follower", 100, 99)),
            (C, report("follower", 98, 98)),
            (D, report("learner", 97, 90)),
        ]
    }

    #[test]
    fn every_member_reporting_near_the_leader_is_healthy() {
        assert_eq!(judged(&healthy_views(), &[A, B, C, D], 10), []);
    }

    #[test]
    fn a_region_no_answering_store_leads_has_no_leader_even_if_followers_name_one() {
        let mut views = healthy_views();
        views.remove(0); // the leader's store did not answer; B still names A as leader
        assert_eq!(
            judged(&views, &[B, C, D], 10),
            [(Reason::NoLeader, None), (Reason::PeerDown, Some(A.into()))]
        );
    }

    #[test]
    fn a_region_with_a_minority_of_its_voters_reporting_has_no_quorum_even_with_a_leader() {
        // A leader that hibernated before B and C died still says it leads.
        let views = vec![
            (A, report("leader", 100, 100)),
            (D, report("learner", 100, 100)),
        ];
        assert_eq!(
            judged(&views, &[A, D], 10),
            [
                (Reason::NoQuorum, None),
                (Reason::PeerDown, Some(B.into())),
                (Reason::PeerDown, Some(C.into()))
            ]
        );
        // Two of three voters are a majority; a learner counts for nothing.
        let views = vec![
            (A, report("leader", 100, 100)),
            (B, report("follower", 100, 100)),
        ];
        assert_eq!(
            judged(&views, &[A, B], 10),
            [
                (Reason::PeerDown, Some(C.into())),
                (Reason::PeerDown, Some(D.into()))
            ]
        );
    }

    #[test]
    fn a_member_on_a_store_that_answered_without_the_region_is_missing() {
        let mut views = healthy_views();
        views.retain(|(s, _)| *s != D);
        assert_eq!(
            judged(&views, &[A, B, C, D], 10),
            [(Reason::PeerMissing, Some(D.into()))]
        );
        assert_eq!(
            judged(&views, &[A, B, C], 10),
            [(Reason::PeerDown, Some(D.into()))]
        );
    }

    #[test]
    fn lag_counts_from_the_leaders_commit_and_only_beyond_the_threshold() {
        // D applied 90 of the leader's 100: 10 behind.
        assert_eq!(judged(&healthy_views(), &[A, B, C, D], 10), []);
        let problems = judge(
            &healthy_views()[0].1,
            &healthy_views().iter().map(|(s, r)| (*s, r)).collect(),
            &[A, B, C, D].into_iter().collect(),
            9,
        );
        assert_eq!(
            problems,
            [Problem {
                reason: Reason::Lagging,
                store: Some(D.into()),
                behind: Some(10)
            }]
        );
        // Without a leader there is no commit index to lag behind.
        let mut views = healthy_views();
        views[0].1.role = "follower".into();
        assert_eq!(judged(&views, &[A, B, C, D], 0), [(Reason::NoLeader, None)]);
    }

    #[test]
    fn stores_that_disagree_on_the_epoch_or_range_are_named() {
        let mut views = healthy_views();
        // A follower still on the configuration before the last change is not a problem.
        views[3].1.conf_version = 0;
        views[1].1.version = 2;
        views[2].1.end = bytes::Bytes::from_static(b"z");
        assert_eq!(
            judged(&views, &[A, B, C, D], 10),
            [
                (Reason::EpochMismatch, Some(B.into())),
                (Reason::EpochMismatch, Some(C.into()))
            ]
        );
    }

    #[test]
    fn the_highest_term_leader_wins_over_a_deposed_one() {
        let mut views = healthy_views();
        views[1].1.role = "leader".into();
        views[1].1.term = 4;
        views[1].1.commit_index = 200;
        let reports: BTreeMap<&str, &RegionInfo> = views.iter().map(|(s, r)| (*s, r)).collect();
        assert_eq!(leader(&reports).map(|r| r.term), Some(4));
        // Everyone else is now ~100 behind the new leader's commit.
        let stores: Vec<Option<String>> = judge(
            leader(&reports).unwrap(),
            &reports,
            &[A, B, C, D].into_iter().collect(),
            50,
        )
        .into_iter()
        .map(|p| p.store)
        .collect();
        assert_eq!(
            stores,
            [
                Some(A.into()),
                Some(B.into()),
                Some(C.into()),
                Some(D.into())
            ]
        );
    }
}
