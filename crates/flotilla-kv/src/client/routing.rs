//! The route table of a [`super::KvClient`]: the regions by start key, each with its
//! peers and the leader last seen, rebuilt from what the stores report; which store a
//! request goes to.
//!
//! Owns: the choice among the reports of several stores (per region the newest epoch, then
//! the leader with the highest term), the leader hints, the rotation of follower reads and
//! leaderless retries over a region's peers, and the pace of refreshes an unreachable store
//! causes. Must never: route to a region reported without voters (a peer opened but not
//! added: its range would take the routes of the regions that serve).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::region::region_of;
use crate::region::Region;
use crate::service::proto;

/// Least time between two route refreshes caused by an unreachable store.
const UNREACHABLE_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A region as the client routes it.
#[derive(Clone, Debug)]
pub struct Route {
    /// The region.
    pub region: Region,
    /// Its leader as last seen.
    pub leader: Option<String>,
    /// Voters.
    pub peers: Vec<String>,
    /// Learners.
    pub learners: Vec<String>,
}

/// Most stores one route refresh learns from the others' address books and asks.
pub(super) const STORES_LEARNED_MAX: usize = 256;

/// Whether the regions `replies` report (those with voters) cover every key, from the
/// first to past the last, without a hole.
pub(super) fn covers_key_space(replies: &[proto::RegionsReply]) -> bool {
    let mut ranges: Vec<(&[u8], &[u8])> = replies
        .iter()
        .flat_map(|r| &r.regions)
        .filter(|info| !info.peers.is_empty())
        .map(|info| (info.start.as_ref(), info.end.as_ref()))
        .collect();
    ranges.sort_unstable();
    let mut covered: &[u8] = b"";
    for (start, end) in ranges {
        if start > covered {
            return false;
        }
        if end.is_empty() {
            return true;
        }
        covered = covered.max(end);
    }
    false
}

/// The region holding `key` in `routes`.
fn route_in(routes: &BTreeMap<Bytes, Route>, key: &[u8]) -> Option<Route> {
    routes
        .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
        .next_back()
        .map(|(_, route)| route)
        .filter(|route| route.region.contains(key))
        .cloned()
}

/// The routes of a client (shared by its clones).
pub(super) struct RouteTable {
    routes: RwLock<BTreeMap<Bytes, Route>>,
    /// Held by the refresh in progress: one at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// The cluster id the stores reported (0 if none did).
    cluster: AtomicU64,
    /// Rotates follower reads and leaderless retries over the peers.
    rotation: AtomicUsize,
    /// When an unreachable store last triggered a route refresh.
    unreachable_refresh: Mutex<Option<Instant>>,
}

impl RouteTable {
    /// An empty table.
    pub(super) fn new() -> RouteTable {
        RouteTable {
            routes: RwLock::new(BTreeMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            cluster: AtomicU64::new(0),
            rotation: AtomicUsize::new(0),
            unreachable_refresh: Mutex::new(None),
        }
    }

    /// The cluster id the stores reported (0 if none did).
    pub(super) fn cluster(&self) -> u64 {
        self.cluster.load(Ordering::Relaxed)
    }

    /// Every route, by start key.
    pub(super) fn all(&self) -> Vec<Route> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The route of the region holding `key`, if known.
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Route> {
        route_in(
            &self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            key,
        )
    }

    /// Waits for the refresh in progress, if any; the guard keeps others waiting.
    pub(super) async fn one_refresh_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.refreshing.lock().await
    }

    /// Rebuilds the table from what the stores report: per region the newest epoch, and
    /// the leader reported by the store that leads it with the highest term. A region
    /// reported without voters is not routed to.
    pub(super) fn install(&self, replies: &[proto::RegionsReply]) {
        let mut best: BTreeMap<u64, (proto::RegionInfo, bool)> = BTreeMap::new();
        for reply in replies {
            if reply.cluster != 0 {
                self.cluster.store(reply.cluster, Ordering::Relaxed);
            }
            for info in &reply.regions {
                if info.peers.is_empty() {
                    // A peer that belongs to no configuration (opened, not added yet; or
                    // opened by mistake): it serves nothing, and its range must not take
                    // the routes of the regions that do.
                    continue;
                }
                let leads = info.role == "leader";
                let better = match best.get(&info.id) {
                    None => true,
                    Some((old, old_leads)) => {
                        let new_key = (info.conf_version, info.version, leads, info.term);
                        let old_key = (old.conf_version, old.version, *old_leads, old.term);
                        new_key > old_key
                    }
                };
                if better {
                    best.insert(info.id, (info.clone(), leads));
                }
            }
        }
        // Two reported regions may overlap: a replica removed, or left behind by a merge,
        // that its store has not destroyed yet still reports its old range. The newer range
        // wins: whoever holds a key now got it by a split or merge that moved its version
        // past every earlier holder's. (Keyed by start alone, an old report starting
        // inside a merged region's range would take its keys for good.)
        let mut candidates: Vec<Route> = best
            .into_values()
            .filter_map(|(info, _)| {
                let region = region_of(&info).ok()?;
                Some(Route {
                    region,
                    leader: (!info.leader.is_empty()).then(|| info.leader.clone()),
                    peers: info.peers.clone(),
                    learners: info.learners.clone(),
                })
            })
            .collect();
        candidates.sort_by(|a, b| {
            let key = |r: &Route| (r.region.epoch.version, r.region.epoch.conf_version);
            key(b).cmp(&key(a))
        });
        let mut routes: BTreeMap<Bytes, Route> = BTreeMap::new();
        for route in candidates {
            let overlaps = routes
                .values()
                .any(|kept| overlap(&kept.region, &route.region));
            if !overlaps {
                routes.insert(route.region.start.clone(), route);
            }
        }
        *self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = routes;
    }

    /// Takes in `now`, the region as the replica that refused a request with a stale
    /// epoch holds it (its range may have shrunk in a split, or grown in a merge), when
    /// it is newer than what `asked` routed: the route keeps its peers and leader with the
    /// new range and epoch, and every route `now` overlaps gives way. A key outside the
    /// new range then finds no route and refreshes; a key inside it is sent again at once,
    /// without asking the stores. Answers whether the table changed.
    pub(super) fn adopt(&self, asked: &Route, now: Region) -> bool {
        if now.id != asked.region.id
            || (now.epoch.version, now.epoch.conf_version)
                <= (asked.region.epoch.version, asked.region.epoch.conf_version)
        {
            return false;
        }
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.retain(|_, route| !(overlap(&route.region, &now) || route.region.id == now.id));
        routes.insert(
            now.start.clone(),
            Route {
                region: now,
                leader: asked.leader.clone(),
                peers: asked.peers.clone(),
                learners: asked.learners.clone(),
            },
        );
        true
    }

    /// Records `leader` (`None`: not known) as the leader of `region`, if the table still
    /// routes its start key to it.
    pub(super) fn set_leader(&self, region: &Region, leader: Option<String>) {
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(route) = routes.get_mut(&region.start) {
            if route.region.id == region.id {
                route.leader = leader;
            }
        }
    }

    /// Whether an unreachable store may trigger a refresh now: at most once per
    /// [`UNREACHABLE_REFRESH_EVERY`] (a yes counts as the refresh starting).
    pub(super) fn unreachable_refresh_due(&self) -> bool {
        let mut last = self
            .unreachable_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < UNREACHABLE_REFRESH_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// The store to send to: the leader (unless `is_down`), else the next live peer in
    /// rotation (any peer if all are down).
    pub(super) fn pick(
        &self,
        route: &Route,
        follower: bool,
        is_down: impl Fn(&str) -> bool,
    ) -> Option<String> {
        if !follower {
            if let Some(leader) = &route.leader {
                if !is_down(leader) {
                    return Some(leader.clone());
                }
            }
        }
        let all: Vec<&String> = if follower {
            route.peers.iter().chain(&route.learners).collect()
        } else {
            route.peers.iter().collect()
        };
        let live: Vec<&String> = all.iter().copied().filter(|p| !is_down(p)).collect();
        let candidates = if live.is_empty() { all } else { live };
        if candidates.is_empty() {
            return None;
        }
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()].clone())
    }

    /// The known regions that share a key with `[start, end)` (an empty `end`: unbounded),
    /// by start key.
    pub(super) fn overlapping(&self, start: &Bytes, end: &Bytes) -> Vec<Region> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes
            .values()
            .map(|r| r.region.clone())
            .filter(|r| {
                let after_start = r.end.is_empty() || r.end.as_ref() > start.as_ref();
                let before_end = end.is_empty() || r.start.as_ref() < end.as_ref();
                after_start && before_end
            })
            .collect()
    }
}

/// Whether regions `a` and `b` share a key.
fn overlap(a: &Region, b: &Region) -> bool {
    (a.end.is_empty() || b.start < a.end) && (b.end.is_empty() || a.start < b.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, RegionId};

    fn region(id: u64, start: &str, end: &str, version: u64) -> Region {
        let epoch = Epoch {
            conf_version: 1,
            version,
        };
        Region::new(
            RegionId(id),
            Bytes::from(start.to_string()),
            Bytes::from(end.to_string()),
            epoch,
        )
        .unwrap()
    }

    fn reply(ranges: &[(&str, &str)]) -> proto::RegionsReply {
        proto::RegionsReply {
            regions: ranges
                .iter()
                .map(|(start, end)| proto::RegionInfo {
                    start: Bytes::from(start.to_string()),
                    end: Bytes::from(end.to_string()),
                    peers: vec!["127.0.0.1:1".into()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn key_space_coverage_finds_holes() {
        assert!(!covers_key_space(&[]));
        assert!(covers_key_space(&[reply(&[("", "")])]));
        assert!(covers_key_space(&[
            reply(&[("m", "")]),
            reply(&[("", "m")])
        ]));
        assert!(
            !covers_key_space(&[reply(&[("", "f"), ("m", "")])]),
            "hole [f, m)"
        );
        assert!(!covers_key_space(&[reply(&[("", "m")])]), "nothing past m");
        assert!(
            !covers_key_space(&[reply(&[("a", "")])]),
            "nothing before a"
        );
        assert!(covers_key_space(&[reply(&[
            ("", "p"),
            ("f", "m"),
            ("p", "")
        ])]));
        let mut voterless = reply(&[("", "")]);
        voterless.regions[0].peers.clear();
        assert!(
            !covers_key_space(&[voterless]),
            "a region without voters routes nothing"
        );
    }

    fn route(region: Region) -> Route {
        Route {
            region,
            leader: Some("127.0.0.1:1".into()),
            peers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            learners: Vec::new(),
        }
    }

    fn table(routes: &[Route]) -> RouteTable {
        let table = RouteTable::new();
        *table.routes.write().unwrap() = routes
            .iter()
            .map(|r| (r.region.start.clone(), r.clone()))
            .collect();
        table
    }

    /// A store still reports region 2 as it was before it merged into region 1 (a replica
    /// not destroyed yet); region 1 took its range, with a higher version: region 1 routes
    /// every key of it, whatever the order of the replies.
    #[test]
    fn a_stale_report_overlapping_a_newer_region_is_not_routed() {
        let info = |id: u64, start: &str, end: &str, version: u64| proto::RegionInfo {
            id,
            start: Bytes::from(start.to_string()),
            end: Bytes::from(end.to_string()),
            version,
            conf_version: 1,
            peers: vec!["127.0.0.1:1".into()],
            ..Default::default()
        };
        let merged = proto::RegionsReply {
            regions: vec![info(1, "a", "z", 7), info(3, "z", "", 2)],
            ..Default::default()
        };
        let stale = proto::RegionsReply {
            regions: vec![info(2, "m", "z", 4)],
            ..Default::default()
        };
        for replies in [
            vec![merged.clone(), stale.clone()],
            vec![stale.clone(), merged.clone()],
        ] {
            let t = RouteTable::new();
            t.install(&replies);
            assert_eq!(t.lookup(b"q").unwrap().region.id, RegionId(1));
            assert_eq!(t.lookup(b"b").unwrap().region.id, RegionId(1));
            assert_eq!(t.lookup(b"zz").unwrap().region.id, RegionId(3));
            assert_eq!(t.all().len(), 2);
        }
    }

    /// A split narrowed region 1 to [a, m): the client takes it in, keeps its peers and
    /// leader, and a key past the new end finds no route (it refreshes); an older or
    /// equal epoch, or another region's, changes nothing.
    #[test]
    fn a_stale_epoch_region_is_taken_in_and_older_ones_are_not() {
        let asked = route(region(1, "a", "z", 1));
        let other = route(region(2, "z", "", 1));
        let t = table(&[asked.clone(), other.clone()]);
        assert!(!t.adopt(&asked, region(1, "a", "m", 1)), "same epoch");
        assert!(!t.adopt(&asked, region(2, "a", "m", 5)), "another region");
        assert!(t.adopt(&asked, region(1, "a", "m", 2)));
        let now = t.lookup(b"c").expect("a key still in region 1");
        assert_eq!(now.region.end, Bytes::from_static(b"m"));
        assert_eq!(now.region.epoch.version, 2);
        assert_eq!(now.peers, asked.peers);
        assert_eq!(now.leader, asked.leader);
        assert!(t.lookup(b"q").is_none(), "a key the region gave away");
        assert_eq!(t.lookup(b"zz").unwrap().region.id, RegionId(2));
        // A merge grew region 1 over region 2's range: region 2's route gives way.
        let asked = t.lookup(b"c").unwrap();
        assert!(t.adopt(&asked, region(1, "a", "", 3)));
        assert_eq!(t.lookup(b"zz").unwrap().region.id, RegionId(1));
        assert_eq!(t.all().len(), 1);
    }
}
