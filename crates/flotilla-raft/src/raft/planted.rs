//! The hooks through which the simulator's planted bugs reach the protocol (`planted-bugs`
//! feature): protocol code asks [`Raft::planted`] whether one mistake is switched on, and
//! never carries `cfg` blocks of its own. Without the feature every hook answers `false`
//! and compiles away.
//!
//! Owns: the answer to "is this mistake on?" and the quorum configuration the mistakes may
//! distort (the list of mistakes is in `planted_bugs`). Must never: answer `true` in a build
//! without the feature.

use std::borrow::Cow;

use super::planted_bugs::Planted;
use super::Raft;
use crate::log::LogStore;
use crate::membership::Configuration;

impl<S: LogStore> Raft<S> {
    /// Whether the mistake `bug` is switched on.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn planted(&self, bug: Planted) -> bool {
        let b = &self.bugs;
        match bug {
            Planted::DoubleVote => b.double_vote,
            Planted::CommitOldTerm => b.commit_old_term,
            Planted::ReadWithoutRound => b.read_without_round,
            Planted::IgnoreOldQuorum => b.ignore_old_quorum,
            Planted::KeepConflictingSuffix => b.keep_conflicting_suffix,
            Planted::LeaseAcrossHibernation => b.lease_across_hibernation,
            Planted::SkipMemberCheck => b.skip_member_check,
        }
    }

    /// Whether the mistake `bug` is switched on: never, in this build.
    #[cfg(not(feature = "planted-bugs"))]
    #[inline(always)]
    #[allow(clippy::unused_self)]
    pub(crate) fn planted(&self, _bug: Planted) -> bool {
        false
    }

    /// The configuration whose quorums count (votes, commits, read rounds): the current
    /// one, borrowed, unless a planted bug drops the old voters of a joint configuration.
    pub(crate) fn quorum_configuration(&self) -> Cow<'_, Configuration> {
        let current = self.configurations.current();
        if self.planted(Planted::IgnoreOldQuorum) && current.old_voters.is_some() {
            let mut distorted = current.clone();
            distorted.old_voters = None;
            return Cow::Owned(distorted);
        }
        Cow::Borrowed(current)
    }
}
