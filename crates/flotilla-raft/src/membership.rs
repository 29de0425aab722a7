//! Configurations (who votes, who learns, who is joint) and the history of configurations
//! found in the log.
//!
//! Owns: the validity of a configuration and of a requested change, and the rule that the
//! configuration in force is the latest one in the log, committed or not (Raft thesis §4.1).
//! Must never: count votes or matches (that is `quorum`) or decide when a change may start
//! (that is the leader's job in `raft`).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Priority};

/// A group configuration: voters, learners and, while a joint change is in progress, the
/// voters of the old configuration (joint consensus, Raft paper §6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Peers that vote and count toward commit quorums.
    pub voters: BTreeSet<PeerId>,
    /// Peers that receive the log and may serve reads but never vote or count.
    pub learners: BTreeSet<PeerId>,
    /// `Some(old voters)` while the group is in the joint configuration C(old,new).
    pub old_voters: Option<BTreeSet<PeerId>>,
    /// Election priority per peer; absent means [`Priority::DISABLED`].
    pub priorities: BTreeMap<PeerId, Priority>,
}

impl Configuration {
    /// A stable configuration of the given voters and no learners.
    #[must_use]
    pub fn new<I: IntoIterator<Item = PeerId>>(voters: I) -> Configuration {
        Configuration {
            voters: voters.into_iter().collect(),
            ..Configuration::default()
        }
    }

    /// True if there is no voter (a peer waiting to be added to a group).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.old_voters.as_ref().is_none_or(BTreeSet::is_empty)
    }

    /// True while a joint change is in progress.
    #[must_use]
    pub fn is_joint(&self) -> bool {
        self.old_voters.is_some()
    }

    /// True if `peer` votes in either half of the configuration.
    #[must_use]
    pub fn is_voter(&self, peer: &PeerId) -> bool {
        self.voters.contains(peer)
            || self
                .old_voters
                .as_ref()
                .is_some_and(|old| old.contains(peer))
    }

    /// True if `peer` is a learner (and not a voter in either half).
    #[must_use]
    pub fn is_learner(&self, peer: &PeerId) -> bool {
        self.learners.contains(peer) && !self.is_voter(peer)
    }

    /// True if `peer` belongs to the configuration in any role.
    #[must_use]
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.is_voter(peer) || self.learners.contains(peer)
    }

    /// Every peer of the configuration, voters (both halves) and learners, in order.
    #[must_use]
    pub fn all_peers(&self) -> BTreeSet<PeerId> {
        let mut all: BTreeSet<PeerId> = self.voters.clone();
        if let Some(old) = &self.old_voters {
            all.extend(old.iter().cloned());
        }
        all.extend(self.learners.iter().cloned());
        all
    }

    /// The priority of `peer`.
    #[must_use]
    pub fn priority(&self, peer: &PeerId) -> Priority {
        self.priorities.get(peer).copied().unwrap_or_default()
    }

    /// The highest priority among voters: SOFAJRaft's initial "target priority".
    #[must_use]
    pub fn max_voter_priority(&self) -> Priority {
        self.voters
            .iter()
            .map(|peer| self.priority(peer))
            .max()
            .unwrap_or_default()
    }

    /// The stable configuration that a joint one leads to: C(new) from C(old,new).
    #[must_use]
    pub fn leave_joint(&self) -> Configuration {
        Configuration {
            old_voters: None,
            ..self.clone()
        }
    }

    /// Approximate encoded size, for byte limits.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        let names = |set: &BTreeSet<PeerId>| -> u64 {
            set.iter().map(|p| p.as_str().len() as u64 + 4).sum()
        };
        names(&self.voters)
            + names(&self.learners)
            + self.old_voters.as_ref().map_or(0, names)
            + self.priorities.len() as u64 * 8
    }

    /// Checks that this configuration can be a target of a change: at least one voter and
    /// no peer both voter and learner.
    /// Checks a configuration that arrives from elsewhere (a log entry or a snapshot from a
    /// peer, a record read from disk): at least one voter, an old half with at least one
    /// voter when joint, no peer both voter and learner. Every configuration the core makes
    /// passes; a voterless one would make a quorum of nobody (fuzzing found a
    /// forged AppendEntries carrying one that crashed its receiver).
    pub fn validate(&self) -> Result<(), RaftError> {
        if self.voters.is_empty() {
            return Err(RaftError::InvalidArgument(
                "a configuration needs at least one voter".into(),
            ));
        }
        if self.old_voters.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(RaftError::InvalidArgument(
                "a joint configuration needs at least one old voter".into(),
            ));
        }
        if let Some(peer) = self.voters.intersection(&self.learners).next() {
            return Err(RaftError::InvalidArgument(format!(
                "peer {peer} cannot be both a voter and a learner"
            )));
        }
        Ok(())
    }

    /// Checks the target of a membership change: [`Configuration::validate`], and not joint.
    pub fn validate_target(&self) -> Result<(), RaftError> {
        if self.voters.is_empty() {
            return Err(RaftError::InvalidArgument(
                "a configuration needs at least one voter".into(),
            ));
        }
        if let Some(peer) = self.voters.intersection(&self.learners).next() {
            return Err(RaftError::InvalidArgument(format!(
                "peer {peer} cannot be both a voter and a learner"
            )));
        }
        if self.old_voters.is_some() {
            return Err(RaftError::InvalidArgument(
                "a change target must not itself be joint".into(),
            ));
        }
        Ok(())
    }
}

/// Every configuration entry in the retained log, plus the configuration of the latest
/// snapshot, so that truncating the log can restore the configuration in force before it.
#[derive(Clone, Debug, Default)]
pub struct ConfigurationHistory {
    /// Configuration at the snapshot (or compaction point) the log starts after.
    base: (LogIndex, Configuration),
    /// Configuration entries in the log, in index order, all with index > `base.0`.
    entries: Vec<(LogIndex, Configuration)>,
}

impl ConfigurationHistory {
    /// A history starting from a snapshot's configuration.
    #[must_use]
    pub fn new(base_index: LogIndex, base: Configuration) -> ConfigurationHistory {
        ConfigurationHistory {
            base: (base_index, base),
            entries: Vec::new(),
        }
    }

    /// Records a configuration entry appended at `index`.
    pub fn push(&mut self, index: LogIndex, configuration: Configuration) {
        if let Some((last, _)) = self.entries.last() {
            assert!(
                index > *last,
                "configuration entries out of order: {index} after {last}"
            );
        }
        assert!(
            index > self.base.0,
            "configuration at {index} not after base {}",
            self.base.0
        );
        self.entries.push((index, configuration));
    }

    /// The configuration in force: the latest in the log.
    #[must_use]
    pub fn current(&self) -> &Configuration {
        self.entries.last().map_or(&self.base.1, |(_, c)| c)
    }

    /// Index of the entry carrying the current configuration (or the base index).
    #[must_use]
    pub fn current_index(&self) -> LogIndex {
        self.entries.last().map_or(self.base.0, |(i, _)| *i)
    }

    /// The configuration in force at `index`.
    #[must_use]
    pub fn at(&self, index: LogIndex) -> &Configuration {
        self.entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.base.1, |(_, c)| c)
    }

    /// Forgets configuration entries at `from` and after (their log entries were truncated).
    pub fn truncate_suffix(&mut self, from: LogIndex) {
        self.entries.retain(|(i, _)| *i < from);
    }

    /// Moves the base to `index` (a snapshot or compaction point), keeping what is needed.
    pub fn compact_to(&mut self, index: LogIndex) {
        if index <= self.base.0 {
            return;
        }
        let base = self.at(index).clone();
        self.entries.retain(|(i, _)| *i > index);
        self.base = (index, base);
    }

    /// Replaces everything with a snapshot's configuration.
    pub fn reset(&mut self, index: LogIndex, configuration: Configuration) {
        self.base = (index, configuration);
        self.entries.clear();
    }

    /// Overrides the configuration in force without a log entry (unsafe reset of peers).
    pub fn force(&mut self, configuration: Configuration) {
        match self.entries.last_mut() {
            Some((_, last)) => *last = configuration,
            None => self.base.1 = configuration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(names: &[&str]) -> BTreeSet<PeerId> {
        names.iter().map(|n| PeerId::new(n)).collect()
    }

    #[test]
    fn history_reverts_on_truncation() {
        let mut h = ConfigurationHistory::new(LogIndex(0), Configuration::new(peers(&["a"])));
        h.push(LogIndex(3), Configuration::new(peers(&["a", "b"])));
        h.push(LogIndex(5), Configuration::new(peers(&["a", "b", "c"])));
        assert_eq!(h.current().voters.len(), 3);
        assert_eq!(h.at(LogIndex(4)).voters.len(), 2);
        h.truncate_suffix(LogIndex(5));
        assert_eq!(h.current().voters.len(), 2);
        h.compact_to(LogIndex(4));
        assert_eq!(h.current().voters.len(), 2);
        assert_eq!(h.current_index(), LogIndex(4));
    }

    #[test]
    fn target_validation_names_the_problem() {
        let mut c = Configuration::new(peers(&["a"]));
        c.learners = peers(&["a"]);
        let err = c.validate_target().unwrap_err();
        assert!(
            err.to_string().contains("both a voter and a learner"),
            "{err}"
        );
        assert!(Configuration::default().validate_target().is_err());
    }
}
