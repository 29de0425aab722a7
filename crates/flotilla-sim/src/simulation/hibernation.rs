//! Hibernation as the runtime drives it (see [`SimConfig::hibernation`]): a hibernating core
//! is not ticked, nodes exchange per-tick liveness beacons, and a hibernating follower or
//! leader is woken when its leader falls silent or a peer restarts. It only decides when to
//! wake a core; it must never change a core's state otherwise.

use flotilla_raft::{Raft, Role};

use super::config::TICK;
use super::Simulation;

impl Simulation {
    pub(super) fn is_hibernating(&self, node: usize) -> bool {
        self.nodes[node]
            .raft
            .as_ref()
            .is_some_and(Raft::is_hibernating)
    }

    /// After an input to `node`: if it was asleep, is awake now and follows a leader other
    /// than `by` (the sender of the message that woke it; `None`: a request), watch it.
    pub(super) fn note_woken(&mut self, node: usize, was_hibernating: bool, by: Option<usize>) {
        if !self.config.hibernation || !was_hibernating || self.is_hibernating(node) {
            return;
        }
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        let leader = raft.leader().and_then(|l| self.index_of.get(l)).copied();
        if let Some(leader) = leader.filter(|l| *l != node && Some(*l) != by) {
            if raft.role() == Role::Follower {
                self.watched[node] = Some((leader, self.now));
            }
        }
    }

    // ----- hibernation: the runtime's liveness beacons ----------------------------------

    /// `node` sends its per-tick beacon: every live, running node it can reach hears it.
    pub(super) fn send_beacons(&mut self, node: usize) {
        let incarnation = self.nodes[node].incarnation;
        for other in 0..self.nodes.len() {
            if other == node || !self.nodes[other].is_live() || self.network.is_blocked(node, other)
            {
                continue;
            }
            let previous = self.heard[other][node].replace((self.now, incarnation));
            if previous.is_some_and(|(_, i)| i != incarnation) {
                self.peer_restarted(other, node);
            }
        }
    }

    /// `node` learned that `restarted` came back with a new incarnation: a hibernating
    /// follower of it campaigns, a hibernating leader with it as a peer wakes.
    pub(super) fn peer_restarted(&mut self, node: usize, restarted: usize) {
        let restarted_id = self.nodes[restarted].id.clone();
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            return;
        };
        if !raft.is_hibernating() {
            return;
        }
        if raft.leader() == Some(&restarted_id) {
            raft.wake_and_campaign();
            self.count("hibernation wakes (leader restarted)");
        } else if raft.role() == Role::Leader && raft.configuration().contains(&restarted_id) {
            raft.wake();
            self.count("hibernation wakes (peer restarted)");
        } else {
            return;
        }
        let id = self.nodes[node].id.clone();
        self.note(format!("{id} woken: {restarted_id} restarted"));
        self.process(node);
    }

    /// A hibernating follower whose leader has been silent for an election timeout
    /// campaigns (the runtime's verdict from missing beacons); so does a watched one (see
    /// `watched`) whose leader was not heard since it woke.
    pub(super) fn watch_leader(&mut self, node: usize) {
        let timeout = self.raft_config.election_timeout_ticks * TICK;
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        if let Some((leader, woken_at)) = self.watched[node] {
            let still = !raft.is_hibernating()
                && raft.role() == Role::Follower
                && raft.leader() == Some(&self.nodes[leader].id);
            let heard = self.heard[node][leader].map(|(at, _)| at);
            if !still || heard.is_some_and(|at| at > woken_at) {
                self.watched[node] = None;
            } else if heard.is_none_or(|at| self.now.saturating_sub(at) >= timeout) {
                self.watched[node] = None;
                let id = self.nodes[node].id.clone();
                self.note(format!("{id} (woken) campaigns: its leader is silent"));
                self.count("woken followers campaigning (leader silent)");
                if let Some(raft) = self.nodes[node].raft.as_mut() {
                    raft.wake_and_campaign();
                }
                self.process(node);
                return;
            }
        }
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return;
        };
        if !raft.is_hibernating() || raft.role() == Role::Leader {
            return;
        }
        let Some(leader) = raft.leader().and_then(|l| self.index_of.get(l)).copied() else {
            return;
        };
        let silent = match self.heard[node][leader] {
            Some((at, _)) => self.now.saturating_sub(at) >= timeout,
            None => true,
        };
        if !silent {
            return;
        }
        let leader_id = self.nodes[leader].id.clone();
        let id = self.nodes[node].id.clone();
        // As the runtime does: the voter ranked first (leader aside) campaigns now, the
        // others wake to vote for it and campaign only after their own timeout.
        let mut campaigns = false;
        if let Some(raft) = self.nodes[node].raft.as_mut() {
            campaigns = raft.wake_to_replace(&leader_id, 0);
        }
        self.note(format!(
            "{id} woken to {}: {leader_id} silent",
            if campaigns { "campaign" } else { "elect" }
        ));
        self.count(if campaigns {
            "hibernation wakes (leader silent, campaigning)"
        } else {
            "hibernation wakes (leader silent, waiting to vote)"
        });
        self.process(node);
    }
}
