//! What the runtime adds to the core's hibernation (`flotilla_raft`, module
//! `raft::hibernation`): which groups sleep, and the liveness of peer processes that wakes
//! them when their leader is gone (docs/DESIGN.md, "Idle groups cost nothing"; TiKV's hibernate
//! regions are the model).
//!
//! A sleeping group costs nothing per round: the manager neither ticks, polls nor publishes
//! it. It is visited again only when something needs it — a request queued on its handle, a
//! message for it, or one of the liveness verdicts below.
//!
//! The core cannot tell a leader that sleeps from one that died; the manager can, cheaply.
//! Every process sends each process it shares a group with one small frame per heartbeat
//! interval when it sent that process nothing else: a *beacon*, a frame with no messages
//! that carries only the sender's address and incarnation (a number drawn at every start),
//! whatever the number of groups. Then:
//!
//! - a sleeping follower whose leader's process has sent nothing for the group's election
//!   timeout (the time its vote guard would have run) is woken to campaign
//!   (`Raft::wake_and_campaign`; pre-vote still applies, so a leader that is in fact alive
//!   keeps its term);
//! - a sleeping follower whose leader's process came back with a new incarnation is woken to
//!   campaign at once (the leader it knew is gone with the old process);
//! - a sleeping leader one of whose peers' process restarted is woken, so the restarted peer
//!   hears it at once instead of timing out;
//! - a follower that something other than its leader woke (a request, another follower's
//!   pre-vote) is watched until its leader's process is heard again: if it stays silent for
//!   the election timeout, the follower campaigns as if still asleep. Otherwise its core,
//!   which took the wake as "the leader was heard just now", would wait out a fresh vote
//!   guard, and the first follower to notice a dead leader would delay the others.
//!
//! Owns: the sleeping set and its index by leader process, process liveness, beacon timing
//! and wake reasons. Must never: visit a sleeping group without cause, or judge a process
//! silent because this process itself stalled (a round that comes late forgives the
//! silence measured meanwhile).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;

/// Why a sleeping group woke (the `reason` label of `flotilla_group_wakes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakeReason {
    /// A request on its handle (proposal, read, change, transfer, snapshot).
    Request,
    /// A message from a peer.
    Message,
    /// Its leader's process sent nothing for an election timeout.
    LeaderDown,
    /// Its leader's process restarted.
    LeaderRestarted,
    /// It leads, and a peer's process restarted.
    PeerRestarted,
}

impl WakeReason {
    /// Every reason, in the order metrics list them.
    pub(crate) const ALL: [WakeReason; 5] = [
        WakeReason::Request,
        WakeReason::Message,
        WakeReason::LeaderDown,
        WakeReason::LeaderRestarted,
        WakeReason::PeerRestarted,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            WakeReason::Request => "request",
            WakeReason::Message => "message",
            WakeReason::LeaderDown => "leader_down",
            WakeReason::LeaderRestarted => "leader_restarted",
            WakeReason::PeerRestarted => "peer_restarted",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The groups that sleep, with the process of each sleeping follower's leader.
/// Invariant: `by_leader` holds exactly the followers of `groups`, under their leader.
#[derive(Debug, Default)]
pub(crate) struct Sleepers {
    /// Sleeping group -> its leader's process (`None`: it leads).
    groups: BTreeMap<GroupId, Option<PeerId>>,
    by_leader: BTreeMap<PeerId, BTreeSet<GroupId>>,
}

impl Sleepers {
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    pub(crate) fn contains(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// `group` fell asleep following `leader` (`None`: leading).
    pub(crate) fn insert(&mut self, group: GroupId, leader: Option<PeerId>) {
        self.remove(group);
        if let Some(leader) = &leader {
            self.by_leader
                .entry(leader.clone())
                .or_default()
                .insert(group);
        }
        self.groups.insert(group, leader);
    }

    /// `group` woke (or went away). Returns true if it slept.
    pub(crate) fn remove(&mut self, group: GroupId) -> bool {
        let Some(leader) = self.groups.remove(&group) else {
            return false;
        };
        if let Some(leader) = leader {
            if let Some(followers) = self.by_leader.get_mut(&leader) {
                followers.remove(&group);
                if followers.is_empty() {
                    self.by_leader.remove(&leader);
                }
            }
        }
        true
    }

    /// Sleeping followers of a leader on `process`.
    pub(crate) fn following(&self, process: &PeerId) -> Vec<GroupId> {
        self.by_leader
            .get(process)
            .map(|groups| groups.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every sleeping group and its leader's process (`None`: it leads).
    pub(crate) fn all(&self) -> impl Iterator<Item = (GroupId, Option<&PeerId>)> {
        self.groups.iter().map(|(g, l)| (*g, l.as_ref()))
    }
}

/// What this process knows of another process.
#[derive(Debug)]
struct Process {
    /// When a frame from it was last taken by a round.
    heard: Option<Instant>,
    /// Its incarnation as of its latest frame (0: never given).
    incarnation: u64,
    /// When a frame to it was last handed to the transport.
    sent: Option<Instant>,
}

/// Most processes the liveness map remembers. Frames name their sender, and anyone who can
/// reach the port can send frames under any name: beyond this, the process heard from
/// longest ago among those this one never sent to (strangers) is forgotten first, then the
/// one heard from or sent to longest ago: the liveness map keyed by frame senders is
/// bounded. Real clusters have a few dozen processes.
pub(crate) const LIVENESS_PROCESSES_MAX: usize = 4096;

/// What taking one frame told the liveness map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// The sender restarted since its previous frame (both incarnations given, different).
    pub(crate) restarted: bool,
    /// Another process was forgotten to make room for the sender.
    pub(crate) evicted: bool,
}

/// Liveness of the processes this one exchanges frames with; at most
/// [`LIVENESS_PROCESSES_MAX`] of them.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    processes: BTreeMap<PeerId, Process>,
}

impl Liveness {
    /// The entry of `address`, made (after forgetting another if full) if new. Returns
    /// whether another was forgotten.
    fn process(&mut self, address: &PeerId) -> (&mut Process, bool) {
        let mut evicted = false;
        if !self.processes.contains_key(address) && self.processes.len() >= LIVENESS_PROCESSES_MAX {
            evicted = self.evict_one();
        }
        let process = self
            .processes
            .entry(address.clone())
            .or_insert_with(|| Process {
                heard: None,
                incarnation: 0,
                sent: None,
            });
        (process, evicted)
    }

    /// Forgets the stranger (never sent to) heard from longest ago, or if there is none,
    /// the process least recently heard from or sent to. O(n), only when full.
    fn evict_one(&mut self) -> bool {
        let last_seen = |p: &Process| p.heard.max(p.sent);
        let victim = self
            .processes
            .iter()
            .min_by_key(|(_, p)| (p.sent.is_some(), last_seen(p)))
            .map(|(address, _)| address.clone());
        victim.is_some_and(|address| self.processes.remove(&address).is_some())
    }

    /// How many processes are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.processes.len()
    }

    /// A frame from `from` carrying `incarnation` was taken at `now`.
    pub(crate) fn heard(&mut self, from: &PeerId, incarnation: u64, now: Instant) -> Heard {
        let (process, evicted) = self.process(from);
        process.heard = Some(now);
        let restarted =
            incarnation != 0 && process.incarnation != 0 && incarnation != process.incarnation;
        if incarnation != 0 {
            process.incarnation = incarnation;
        }
        Heard { restarted, evicted }
    }

    /// A frame to `to` was sent at `now`.
    pub(crate) fn sent(&mut self, to: &PeerId, now: Instant) {
        self.process(to).0.sent = Some(now);
    }

    /// Of `targets`, those to which nothing was sent for at least `period`.
    pub(crate) fn beacons_due(
        &mut self,
        targets: &BTreeSet<PeerId>,
        now: Instant,
        period: Duration,
    ) -> Vec<PeerId> {
        targets
            .iter()
            .filter(|t| {
                self.processes
                    .get(*t)
                    .and_then(|p| p.sent)
                    .is_none_or(|sent| now.duration_since(sent) >= period)
            })
            .cloned()
            .collect()
    }

    /// How long `process` has been silent, if it was ever heard.
    pub(crate) fn silence(&self, process: &PeerId, now: Instant) -> Option<Duration> {
        let heard = self.heard_at(process)?;
        Some(now.saturating_duration_since(heard))
    }

    /// When a frame from `process` was last taken, if ever.
    pub(crate) fn heard_at(&self, process: &PeerId) -> Option<Instant> {
        self.processes.get(process)?.heard
    }

    /// Processes heard before and silent for at least `silence` now.
    pub(crate) fn silent(&self, now: Instant, silence: Duration) -> Vec<PeerId> {
        self.processes
            .iter()
            .filter(|(_, p)| {
                p.heard
                    .is_some_and(|heard| now.saturating_duration_since(heard) >= silence)
            })
            .map(|(address, _)| address.clone())
            .collect()
    }

    /// This process stalled (its round came late): what looks like silence of the others
    /// may be its own. Counts every known process as heard now.
    pub(crate) fn forgive_all(&mut self, now: Instant) {
        for process in self.processes.values_mut() {
            if process.heard.is_some() {
                process.heard = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PeerId {
        PeerId::new(name)
    }

    #[test]
    fn sleepers_index_followers_by_leader() {
        let mut s = Sleepers::default();
        s.insert(1, Some(p("a:1")));
        s.insert(2, Some(p("a:1")));
        s.insert(3, None);
        s.insert(4, Some(p("b:1")));
        assert_eq!(s.len(), 4);
        assert_eq!(s.following(&p("a:1")), vec![1, 2]);
        // Re-inserted under another leader: moves.
        s.insert(2, Some(p("b:1")));
        assert_eq!(s.following(&p("a:1")), vec![1]);
        assert_eq!(s.following(&p("b:1")), vec![2, 4]);
        assert!(s.remove(1));
        assert!(!s.remove(1));
        assert!(s.following(&p("a:1")).is_empty());
        assert!(s.contains(3) && !s.contains(1));
    }

    #[test]
    fn liveness_sees_restarts_silence_and_forgives_stalls() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let a = p("a:1");
        assert!(!l.heard(&a, 7, t0).restarted, "first contact is no restart");
        assert!(!l.heard(&a, 7, t0).restarted);
        assert!(
            !l.heard(&a, 0, t0).restarted,
            "an unnamed incarnation is no restart"
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.silence(&a, t1), Some(Duration::from_secs(2)));
        assert_eq!(l.silent(t1, Duration::from_secs(1)), vec![a.clone()]);
        assert!(l.silent(t1, Duration::from_secs(3)).is_empty());
        l.forgive_all(t1);
        assert!(l.silent(t1, Duration::from_secs(1)).is_empty());
        assert!(
            l.heard(&a, 8, t1).restarted,
            "a new incarnation is a restart"
        );
        assert_eq!(l.silence(&p("never:1"), t1), None);

        let targets: BTreeSet<PeerId> = [a.clone(), p("b:1")].into_iter().collect();
        assert_eq!(
            l.beacons_due(&targets, t1, Duration::from_millis(100))
                .len(),
            2
        );
        l.sent(&a, t1);
        assert_eq!(
            l.beacons_due(&targets, t1, Duration::from_millis(100)),
            vec![p("b:1")]
        );
    }

    #[test]
    fn liveness_is_bounded_and_forgets_strangers_first() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let peer = p("peer:1");
        l.sent(&peer, t0);
        assert!(!l.heard(&peer, 1, t0).evicted);
        let mut evicted = 0;
        for i in 0..2 * LIVENESS_PROCESSES_MAX {
            let at = t0 + Duration::from_millis(i as u64 + 1);
            if l.heard(&p(&format!("stranger-{i}:1")), 0, at).evicted {
                evicted += 1;
            }
            assert!(l.len() <= LIVENESS_PROCESSES_MAX);
        }
        assert_eq!(evicted, LIVENESS_PROCESSES_MAX + 1);
        assert!(
            l.heard_at(&peer).is_some(),
            "a process this one sends to outlives a flood of strangers"
        );
        assert!(
            l.heard_at(&p("stranger-0:1")).is_none(),
            "the oldest stranger went first"
        );
        let last = format!("stranger-{}:1", 2 * LIVENESS_PROCESSES_MAX - 1);
        assert!(l.heard_at(&p(&last)).is_some());
    }
}
