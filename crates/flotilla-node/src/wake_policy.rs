//! The round's hibernation policy: which groups go to sleep at the end of a round, and what
//! wakes them — a request, a message, a silent or restarted leader's process — with the
//! beacons that let processes notice each other's silence (`impl Driver` blocks of the
//! round, [`crate::round`]).
//!
//! Hibernation (the sleeping set and process liveness are `crate::hibernation`'s, on by
//! default): a round visits only the groups that are awake, plus those something reached
//! this round — a request flagged by its handle, a message, a liveness verdict. A group
//! whose core hibernates and has nothing left to do leaves the awake set and costs nothing
//! until then; its peer processes exchange one beacon per heartbeat interval (not per
//! group) so a dead leader's sleeping followers still wake and elect.
//!
//! Owns: the decisions to wake (and why, counted per [`WakeReason`]) and to put to sleep,
//! the watch on followers woken by something other than their leader, beacon targets.
//! Must never: judge a process silent because this process itself stalled, or visit a
//! sleeping group without cause.
//!
//! Known debt: a sleeping follower whose leader's *group* (not process) went away on a
//! live process — stopped by a state machine failure — is not woken by the beacons (a
//! request or a message wakes it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;

use crate::hibernation::WakeReason;
use crate::round::{Driver, Outbound};

/// Longest time between two recomputations of the processes to send beacons to. They are
/// also recomputed when a group is added or removed and when a group visited by a round
/// comes out of it with another configuration (`note_configuration_changes`): this
/// backstop only bounds how long a change seen some other way goes unnoticed. A walk over
/// every group's configuration is most of an idle process's work at 10,000 groups, so it
/// is not done every few rounds.
const BEACON_TARGETS_REFRESH: Duration = Duration::from_secs(10);

impl Driver {
    /// A round an election timeout late means this process stalled (a pause, a swapped-out
    /// process): the silence of others measured meanwhile is its own, and frames they sent
    /// may still wait in the inbox. Shorter delays are not forgiven, so that an overloaded
    /// process still notices a dead leader.
    pub(crate) fn forgive_own_stall(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_round);
        self.last_round = now;
        if gap >= self.silence_threshold() {
            tracing::info!(
                ?gap,
                "round came late: peer silence measured meanwhile forgiven"
            );
            self.liveness.forgive_all(now);
        }
    }

    /// An election timeout of the template options: how long a leader's process may be
    /// silent before its sleeping followers are woken (per group, their own timeout).
    fn silence_threshold(&self) -> Duration {
        self.ticks_duration(self.options.raft.election_timeout_ticks)
    }

    fn ticks_duration(&self, ticks: u64) -> Duration {
        self.options
            .tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// If `id` slept and its core is awake now, it counts as woken for `reason`. A
    /// follower woken by anything but its leader (a request, another peer's message: `by`)
    /// is watched: if its leader's process turns out silent, it campaigns as a sleeping
    /// follower would have (its core, woken, would wait out a fresh vote guard first).
    pub(crate) fn note_if_woken(&mut self, id: GroupId, reason: WakeReason, by: Option<&PeerId>) {
        let Some(group) = self.groups.get(&id) else {
            return;
        };
        if group.raft.is_hibernating() || !self.sleepers.remove(id) {
            return;
        }
        self.awake.insert(id);
        self.shared.metrics.group_wakes[reason.index()].add(1);
        self.publish_sleepers();
        let leader = group
            .raft
            .leader()
            .filter(|l| **l != self.shared.id && Some(*l) != by);
        if let Some(leader) = leader {
            if group.raft.role() == flotilla_raft::Role::Follower {
                self.watched.insert(id, (leader.clone(), Instant::now()));
            }
        }
    }

    /// The watched followers (see `note_if_woken`): those whose leader's process has been
    /// silent for their election timeout since before they woke campaign; a leader heard
    /// since, or a follower that moved on (new leader, campaigning, asleep again), ends the
    /// watch.
    pub(crate) fn campaign_watched_followers(
        &mut self,
        active: &mut BTreeSet<GroupId>,
        now: Instant,
    ) {
        if self.watched.is_empty() {
            return;
        }
        for (id, (leader, woken_at)) in std::mem::take(&mut self.watched) {
            let timeout = match self.groups.get(&id) {
                Some(g)
                    if !g.raft.is_hibernating()
                        && g.raft.role() == flotilla_raft::Role::Follower
                        && g.raft.leader() == Some(&leader) =>
                {
                    self.ticks_duration(g.election_timeout_ticks())
                }
                _ => continue,
            };
            let silence = match self.liveness.heard_at(&leader) {
                Some(heard) if heard > woken_at => continue,
                Some(heard) => now.saturating_duration_since(heard),
                None => Duration::MAX,
            };
            if silence < timeout {
                self.watched.insert(id, (leader, woken_at));
                continue;
            }
            tracing::debug!(group = id, leader = %leader, ?silence, "woken follower's leader silent: electing");
            if let Some(group) = self.groups.get_mut(&id) {
                group.raft.wake_to_replace(&leader, id);
                active.insert(id);
            }
        }
    }

    /// End of round: a visited group whose core hibernates with nothing left to do leaves
    /// the awake set; the others are (or stay) in it.
    pub(crate) fn put_to_sleep(&mut self, active: &BTreeSet<GroupId>) {
        let mut changed = false;
        for id in active {
            let Some(group) = self.groups.get(id) else {
                self.awake.remove(id);
                continue;
            };
            if group.raft.is_hibernating() && !group.raft.has_ready() {
                if self.awake.remove(id) || !self.sleepers.contains(*id) {
                    let leader = group.raft.leader().filter(|l| **l != self.shared.id);
                    self.sleepers.insert(*id, leader.cloned());
                    changed = true;
                }
            } else {
                self.awake.insert(*id);
                if self.sleepers.remove(*id) {
                    // Woken by something not attributed above (an install finishing).
                    changed = true;
                }
            }
        }
        if changed {
            self.publish_sleepers();
        }
    }

    /// The sleeping groups' count, for the metrics and [`crate::ManagerStats`].
    pub(crate) fn publish_sleepers(&self) {
        let sleeping = self.sleepers.len() as u64;
        self.shared.metrics.groups_hibernating.set(sleeping);
    }

    /// One beacon (a frame without messages) to every process sharing a group with this
    /// one that was sent nothing else for a heartbeat interval.
    pub(crate) fn send_beacons(&mut self, now: Instant) {
        let stale = self
            .beacon_targets_at
            .is_none_or(|at| now.saturating_duration_since(at) >= BEACON_TARGETS_REFRESH);
        if stale {
            self.beacon_targets = self.peer_processes();
            self.beacon_targets_at = Some(now);
        }
        let period = self.ticks_duration(self.options.raft.heartbeat_interval_ticks);
        let due = self.liveness.beacons_due(&self.beacon_targets, now, period);
        if due.is_empty() {
            return;
        }
        let mut outbound = Outbound::default();
        for to in due {
            outbound.frames.insert(to, Vec::new());
        }
        self.shared
            .metrics
            .beacons_sent
            .add(outbound.frames.len() as u64);
        self.send(outbound);
    }

    /// Makes the beacon targets due for recomputation if a group `active` names came out of
    /// this round with another configuration than it had when they were last computed.
    /// Only groups a round visits can change configuration (a sleeping group takes no
    /// entries and no snapshot), so this costs nothing per sleeping group.
    pub(crate) fn note_configuration_changes(&mut self, active: &BTreeSet<GroupId>) {
        for id in active {
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            let index = group.raft.configuration_index();
            if group.beacon_configuration != index {
                group.beacon_configuration = index;
                self.beacon_targets_at = None;
            }
        }
    }

    /// Every process with a peer in one of this process's groups.
    fn peer_processes(&self) -> BTreeSet<PeerId> {
        let mut peers = BTreeSet::new();
        for group in self.groups.values() {
            let c = group.raft.configuration();
            let old = c.old_voters.iter().flatten();
            for peer in c.voters.iter().chain(&c.learners).chain(old) {
                if *peer != self.shared.id && !peers.contains(peer) {
                    peers.insert(peer.clone());
                }
            }
        }
        peers
    }

    /// Wakes, to campaign, every sleeping follower whose leader's process has been silent
    /// for an election timeout: the template's, or the group's own if longer (a group whose
    /// timeout was lowered waits for the template's: slower to fail over, never sooner).
    pub(crate) fn wake_followers_of_silent_leaders(
        &mut self,
        active: &mut BTreeSet<GroupId>,
        now: Instant,
    ) {
        for process in self.liveness.silent(now, self.silence_threshold()) {
            let silence = self.liveness.silence(&process, now).unwrap_or_default();
            let (mut woken, mut campaigning) = (0u64, 0u64);
            for id in self.sleepers.following(&process) {
                let timeout = match self.groups.get(&id) {
                    Some(group) => self.ticks_duration(group.election_timeout_ticks()),
                    None => continue,
                };
                if silence < timeout {
                    continue;
                }
                let Some(group) = self.groups.get_mut(&id) else {
                    continue;
                };
                woken += 1;
                if group.raft.wake_to_replace(&process, id) {
                    campaigning += 1;
                }
                active.insert(id);
                self.note_if_woken(id, WakeReason::LeaderDown, None);
            }
            if woken > 0 {
                // One line per silent process, not one per group: thousands of groups wake
                // together when a store dies.
                tracing::info!(leader = %process, ?silence, groups = woken, campaigning_here = campaigning, "leader's process silent: groups woken to elect");
            }
        }
    }

    /// The process at `process` restarted: its peers' old state is gone. Sleeping followers
    /// of a leader there campaign now; sleeping leaders with a peer there wake, so the
    /// restarted peer hears them at once.
    pub(crate) fn wake_for_restart(&mut self, process: &PeerId, active: &mut BTreeSet<GroupId>) {
        let sleeping: Vec<(GroupId, Option<PeerId>)> = self
            .sleepers
            .all()
            .map(|(id, leader)| (id, leader.cloned()))
            .collect();
        let mut woken = 0u64;
        for (id, leader) in sleeping {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let reason = match leader {
                Some(leader) if leader == *process => {
                    group.raft.wake_to_replace(process, id);
                    WakeReason::LeaderRestarted
                }
                None if group.raft.configuration().contains(process) => {
                    group.raft.wake();
                    WakeReason::PeerRestarted
                }
                _ => continue,
            };
            tracing::debug!(group = id, peer = %process, reason = reason.name(), "peer's process restarted: waking");
            woken += 1;
            active.insert(id);
            self.note_if_woken(id, reason, None);
        }
        if woken > 0 {
            tracing::info!(peer = %process, groups = woken, "peer's process restarted: groups woken");
        }
    }
}
