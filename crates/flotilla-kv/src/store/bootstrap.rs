//! Bootstrap happens once: what an empty store started with `--peers` does, decided from
//! what the listed peers answered (a pure function, so every interleaving can be tested
//! without racing processes).
//!
//! The rule, for a store that belongs to no cluster yet:
//!
//! 1. If a listed peer belongs to a cluster, never bootstrap. If that cluster's bootstrap
//!    made this very store (its id among the initial members) an initial member, adopt it;
//!    otherwise join it as a new, empty store that no region counts on yet.
//! 2. Else, wait until every listed peer answered, and all of them with the same `--peers`
//!    list (as a set). Then exactly one of them, the one with the smallest store id,
//!    bootstraps: it makes the cluster id, records the members by store id, and only then
//!    answers with its cluster. Every other store keeps asking it, and adopts that cluster
//!    when it answers (rule 1).
//!
//! Why exactly one cluster: only the smallest id of a set every member has seen in full
//! bootstraps, and every other store only adopts or joins a cluster some peer already has.
//! Two stores could both bootstrap only if each saw itself as the smallest of the set, which
//! needs two different sets: refused by the equal-lists check. A store whose data dir is
//! wiped during the wait comes back with a new id that the bootstrapper's members do not
//! hold, so it joins as a new store (the old id is a member that never answers; the others
//! keep a majority when they are three or more).
//!
//! Store ids are made with the data dir and kept across restarts, so a store that crashes
//! while waiting resumes with the same id and the same decision.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_node::StoreId;

/// What one listed peer said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnswer {
    /// Its store id.
    pub store: StoreId,
    /// Its cluster (0: none yet).
    pub cluster: u64,
    /// The `--peers` it was started with (while it belongs to no cluster).
    pub peers: Vec<String>,
    /// How its cluster was bootstrapped, if it was an initial member: static regions and
    /// the initial members with their addresses.
    pub bootstrap: Option<(u32, Vec<(StoreId, String)>)>,
    /// The initial members of its cluster's meta group, if it was an initial member.
    pub bootstrap_pd: Vec<StoreId>,
    /// Voters each static region started with (0: not said, a cluster bootstrapped
    /// before the bootstrapper's `--max-replicas` was carried: 3).
    pub bootstrap_replicas: u32,
}

/// What the waiting store does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep asking; the text says what for.
    Wait(String),
    /// Make the cluster: this store is the bootstrapper of these members (itself included).
    Bootstrap {
        /// Every member with its address, in store-id order.
        members: Vec<(StoreId, String)>,
    },
    /// Become an initial member of the cluster a peer bootstrapped with this store in it.
    Adopt {
        /// The cluster.
        cluster: u64,
        /// Its static regions.
        regions: u32,
        /// Its initial members with their addresses.
        members: Vec<(StoreId, String)>,
        /// The initial members of its meta group.
        pd: Vec<StoreId>,
        /// Voters each static region starts with (0: 3).
        replicas: u32,
    },
    /// Join the cluster as a new store that no region counts on yet.
    Join {
        /// The cluster.
        cluster: u64,
        /// The peer that told.
        via: String,
        /// The stores the answering peers named with their addresses (their clusters'
        /// initial members), this one excluded: a store that joined through one peer must
        /// still reach the placement driver if that peer dies before its first heartbeat
        /// (found by the PD-failover test: a new store that knew only the killed PD
        /// leader's address never registered with the next one, and nothing was repaired).
        known: Vec<(StoreId, String)>,
    },
}

/// Decides from `answers` (by listed address; a listed peer missing from it has not
/// answered) for the store `me` at `my_address`, started with `listed` (which holds
/// `my_address`).
#[must_use]
pub fn decide(
    me: StoreId,
    my_address: &str,
    listed: &[String],
    answers: &BTreeMap<String, PeerAnswer>,
) -> Decision {
    let others: Vec<&String> = listed.iter().filter(|a| *a != my_address).collect();
    // Rule 1: a cluster exists.
    let clusters: BTreeSet<u64> = others
        .iter()
        .filter_map(|a| answers.get(*a))
        .map(|answer| answer.cluster)
        .filter(|c| *c != 0)
        .collect();
    if clusters.len() > 1 {
        let named: Vec<String> = clusters.iter().map(|c| format!("{c:016x}")).collect();
        return Decision::Wait(format!(
            "the listed peers belong to different clusters ({}): fix --peers",
            named.join(", ")
        ));
    }
    if let Some(&cluster) = clusters.first() {
        for address in &others {
            let Some(answer) = answers.get(*address).filter(|a| a.cluster == cluster) else {
                continue;
            };
            if let Some((regions, members)) = &answer.bootstrap {
                if members.iter().any(|(id, _)| *id == me) {
                    return Decision::Adopt {
                        cluster,
                        regions: *regions,
                        members: members.clone(),
                        pd: answer.bootstrap_pd.clone(),
                        replicas: answer.bootstrap_replicas,
                    };
                }
            }
        }
        let via = others
            .iter()
            .find(|a| answers.get(**a).is_some_and(|x| x.cluster == cluster))
            .map_or_else(String::new, |a| (*a).clone());
        let mut known: Vec<(StoreId, String)> = others
            .iter()
            .filter_map(|a| answers.get(*a))
            .filter(|answer| answer.cluster == cluster)
            .filter_map(|answer| answer.bootstrap.as_ref())
            .flat_map(|(_, members)| members.iter().cloned())
            .filter(|(id, address)| *id != me && !address.is_empty())
            .collect();
        known.sort();
        known.dedup_by(|a, b| a.0 == b.0);
        return Decision::Join {
            cluster,
            via,
            known,
        };
    }
    // Rule 2: every listed peer empty.
    let silent: Vec<&str> = others
        .iter()
        .filter(|a| !answers.contains_key(**a))
        .map(|a| a.as_str())
        .collect();
    if !silent.is_empty() {
        return Decision::Wait(format!(
            "waiting for {} to answer (every listed peer must answer before a new cluster \
             is bootstrapped)",
            silent.join(", ")
        ));
    }
    let ours: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    for address in &others {
        let answer = &answers[*address];
        let theirs: BTreeSet<&str> = answer.peers.iter().map(String::as_str).collect();
        if theirs != ours {
            return Decision::Wait(format!(
                "{address} was started with --peers {}, this store with --peers {}: every \
                 initial member needs the same list",
                answer.peers.join(","),
                listed.join(",")
            ));
        }
    }
    let mut members: Vec<(StoreId, String)> = others
        .iter()
        .map(|a| (answers[*a].store, (*a).clone()))
        .collect();
    members.push((me, my_address.to_string()));
    members.sort();
    let ids: BTreeSet<StoreId> = members.iter().map(|(id, _)| *id).collect();
    if ids.len() != members.len() {
        return Decision::Wait(
            "two listed addresses answered with the same store id (one store listed twice?)".into(),
        );
    }
    let (smallest, at) = &members[0];
    if *smallest == me {
        Decision::Bootstrap { members }
    } else {
        Decision::Wait(format!(
            "every listed peer is empty; waiting for {at} (store {smallest}, the smallest id) \
             to bootstrap the cluster"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";
    const C: &str = "127.0.0.1:3";

    fn listed() -> Vec<String> {
        vec![A.into(), B.into(), C.into()]
    }

    /// A simulated store: its id, address, and what it has decided so far.
    #[derive(Clone, Debug)]
    struct Sim {
        id: StoreId,
        address: &'static str,
        cluster: u64,
        bootstrap: Option<(u32, Vec<(StoreId, String)>)>,
        joined_as_new: bool,
    }

    impl Sim {
        fn answer(&self) -> PeerAnswer {
            PeerAnswer {
                store: self.id,
                cluster: self.cluster,
                peers: listed(),
                bootstrap: self.bootstrap.clone(),
                bootstrap_pd: Vec::new(),
                bootstrap_replicas: 0,
            }
        }
    }

    /// One step of store `who`: it asks the peers in `reachable` and applies its decision.
    fn step(sims: &mut [Sim], who: usize, reachable: &[usize], next_cluster: &mut u64) {
        if sims[who].cluster != 0 {
            return;
        }
        let answers: BTreeMap<String, PeerAnswer> = reachable
            .iter()
            .filter(|i| **i != who)
            .map(|i| (sims[*i].address.to_string(), sims[*i].answer()))
            .collect();
        let me = &sims[who];
        match decide(me.id, me.address, &listed(), &answers) {
            Decision::Wait(_) => {}
            Decision::Bootstrap { members } => {
                *next_cluster += 1;
                sims[who].cluster = *next_cluster;
                sims[who].bootstrap = Some((1, members));
            }
            Decision::Adopt {
                cluster,
                regions,
                members,
                ..
            } => {
                sims[who].cluster = cluster;
                sims[who].bootstrap = Some((regions, members));
            }
            Decision::Join { cluster, .. } => {
                sims[who].cluster = cluster;
                sims[who].joined_as_new = true;
            }
        }
    }

    fn three() -> Vec<Sim> {
        [(0x30, A), (0x10, B), (0x20, C)]
            .into_iter()
            .map(|(id, address)| Sim {
                id: StoreId(id),
                address,
                cluster: 0,
                bootstrap: None,
                joined_as_new: false,
            })
            .collect()
    }

    /// Every order of steps by three stores, each seeing a chosen subset of the others at
    /// each step (started at once, one late, links slow): the run ends with one cluster,
    /// every store an initial member of it.
    #[test]
    fn every_interleaving_of_three_empty_stores_ends_with_one_cluster() {
        // Schedules: sequences of (store, reachable peers) steps. All 3-step prefixes over
        // every (store, reachability) choice, then everyone sees everyone until settled.
        let views: Vec<Vec<usize>> = vec![vec![], vec![0], vec![1], vec![2], vec![0, 1, 2]];
        let mut choices = Vec::new();
        for who in 0..3 {
            for view in &views {
                choices.push((who, view.clone()));
            }
        }
        let mut runs = 0;
        for a in &choices {
            for b in &choices {
                for c in &choices {
                    let mut sims = three();
                    let mut next_cluster = 100;
                    for (who, view) in [a, b, c] {
                        step(&mut sims, *who, view, &mut next_cluster);
                    }
                    for _ in 0..3 {
                        for who in 0..3 {
                            step(&mut sims, who, &[0, 1, 2], &mut next_cluster);
                        }
                    }
                    runs += 1;
                    let clusters: BTreeSet<u64> = sims.iter().map(|s| s.cluster).collect();
                    assert_eq!(clusters.len(), 1, "{sims:?}");
                    assert_eq!(next_cluster, 101, "exactly one bootstrap: {sims:?}");
                    assert!(sims.iter().all(|s| !s.joined_as_new), "{sims:?}");
                    assert!(sims.iter().all(|s| s.bootstrap.is_some()), "{sims:?}");
                }
            }
        }
        assert_eq!(runs, 15 * 15 * 15);
    }

    #[test]
    fn a_store_waits_while_a_listed_peer_is_silent_and_names_it() {
        let sims = three();
        let answers: BTreeMap<String, PeerAnswer> =
            [(A.to_string(), sims[0].answer())].into_iter().collect();
        match decide(sims[1].id, B, &listed(), &answers) {
            Decision::Wait(why) => assert!(why.contains(C), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_smallest_id_bootstraps() {
        let sims = three();
        let all: BTreeMap<String, PeerAnswer> = sims
            .iter()
            .map(|s| (s.address.to_string(), s.answer()))
            .collect();
        // B has the smallest id (0x10).
        assert!(matches!(
            decide(sims[1].id, B, &listed(), &all),
            Decision::Bootstrap { .. }
        ));
        match decide(sims[0].id, A, &listed(), &all) {
            Decision::Wait(why) => assert!(why.contains(B), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_store_never_bootstraps_beside_an_existing_cluster() {
        // A wiped store (new id) comes back with its old command line: the others have a
        // cluster that does not hold its new id. It joins as a new store.
        let mut sims = three();
        for s in &mut sims[..2] {
            s.cluster = 7;
            s.bootstrap = Some((
                1,
                vec![(StoreId(0x10), B.into()), (StoreId(0x30), A.into())],
            ));
        }
        let wiped = StoreId(0x99);
        let answers: BTreeMap<String, PeerAnswer> = sims[..2]
            .iter()
            .map(|s| (s.address.to_string(), s.answer()))
            .collect();
        assert_eq!(
            decide(wiped, C, &listed(), &answers),
            Decision::Join {
                cluster: 7,
                via: A.into(),
                known: vec![(StoreId(0x10), B.into()), (StoreId(0x30), A.into())],
            }
        );
        // Even when one listed peer is silent and the other is an empty store.
        let mut answers = answers;
        answers.remove(A);
        assert!(matches!(
            decide(wiped, C, &listed(), &answers),
            Decision::Join { cluster: 7, .. }
        ));
    }

    #[test]
    fn different_peer_lists_or_clusters_wait_and_say_why() {
        let sims = three();
        let mut all: BTreeMap<String, PeerAnswer> = sims
            .iter()
            .map(|s| (s.address.to_string(), s.answer()))
            .collect();
        all.get_mut(A).unwrap().peers = vec![A.into(), B.into()];
        match decide(sims[1].id, B, &listed(), &all) {
            Decision::Wait(why) => assert!(why.contains("same list"), "{why}"),
            other => panic!("{other:?}"),
        }
        all.get_mut(A).unwrap().cluster = 1;
        all.get_mut(C).unwrap().cluster = 2;
        match decide(sims[1].id, B, &listed(), &all) {
            Decision::Wait(why) => assert!(why.contains("different clusters"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
