//! The protocol mistakes the simulator can plant (`planted-bugs` feature): `PlantedBugs`,
//! the switches a test sets, and `Planted`, the names protocol code asks `Raft::planted`
//! about.
//!
//! Owns: the list of plantable mistakes. Data only, so the state in `mod.rs` and every
//! protocol file can name them without depending on the hooks in `planted`, which read
//! the switches. Must never: hold protocol logic.

/// One deliberate protocol mistake (see `PlantedBugs` for what each does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Planted {
    DoubleVote,
    CommitOldTerm,
    ReadWithoutRound,
    IgnoreOldQuorum,
    KeepConflictingSuffix,
    LeaseAcrossHibernation,
    SkipMemberCheck,
}

/// Deliberate protocol mistakes for the simulator's planted-bug test. Compiled only with the
/// `planted-bugs` feature; every flag is off by default.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    /// Grant a vote even after voting for another candidate in the same term.
    pub double_vote: bool,
    /// Commit an entry of an earlier term by counting its replicas (paper §5.4.2, Figure 8).
    pub commit_old_term: bool,
    /// Answer ReadIndex without confirming leadership with a heartbeat round.
    pub read_without_round: bool,
    /// While joint, count only the new configuration's quorum.
    pub ignore_old_quorum: bool,
    /// On a conflict, overwrite the conflicting entries but keep the suffix after them.
    pub keep_conflicting_suffix: bool,
    /// Keep the leader's lease across hibernation (echoes from before it count after it
    /// wakes, though its clock stood still).
    pub lease_across_hibernation: bool,
    /// Accept raft messages from peers outside the configuration (the member check
    /// switched off).
    pub skip_member_check: bool,
}
