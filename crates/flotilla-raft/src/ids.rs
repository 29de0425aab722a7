//! The core's ids and plain per-peer newtypes: terms, log indexes, peer ids and election
//! priorities.
//!
//! A leaf: it depends on no other file of the crate, so configurations, entries, messages
//! and errors can all name these types without depending on each other. The types own no
//! behaviour beyond arithmetic helpers; they exist so that a term can never be passed where
//! an index is expected (STYLE.md §2).

use std::fmt;
use std::sync::Arc;

/// A Raft term. Terms only ever grow on a given peer (Raft paper §5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl Term {
    /// The term before any election.
    pub const ZERO: Term = Term(0);

    /// The raw value.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }

    /// The following term, saturating at `u64::MAX` (never wrapping to 0). Terms are
    /// bounded far below it where they enter ([`crate::TERM_MAX`]), and a peer at that bound
    /// does not campaign.
    #[must_use]
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in the replicated log. Index 0 is "before the first entry"; the first real
/// entry has index 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// The position before the first entry.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The raw value.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }

    /// The following index, saturating at `u64::MAX` (indexes from the network are bounded
    /// by [`crate::INDEX_MAX`] where they enter, so it never saturates in practice).
    #[must_use]
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The preceding index, saturating at zero.
    #[must_use]
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// `self + n`, saturating at `u64::MAX`.
    #[must_use]
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.saturating_add(n))
    }

    /// `self - other`, saturating at zero: the number of entries between two indexes.
    #[must_use]
    pub fn distance_from(self, other: LogIndex) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of one peer (one replica of one group).
///
/// The core treats it as an opaque, cheaply clonable name (never an address: where a peer
/// is may change). The KV store uses store ids (16 hex digits); a library user names its
/// processes as it likes (the runtime's tests use `host:port`); the simulator uses `n1`,
/// `n2`, ... Priorities live in the [`Configuration`](crate::Configuration), not in the id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(Arc<str>);

impl PeerId {
    /// A peer id from its textual name.
    #[must_use]
    pub fn new(name: &str) -> PeerId {
        PeerId(Arc::from(name))
    }

    /// The textual name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PeerId {
    fn from(name: &str) -> PeerId {
        PeerId::new(name)
    }
}

/// Election priority, as SOFAJRaft's: `-1` disables priority election, `0` means "never
/// become leader", `>= 1` is a preference (higher is preferred).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub i32);

impl Priority {
    /// Priority election switched off for this peer.
    pub const DISABLED: Priority = Priority(-1);
    /// This peer never becomes leader.
    pub const NEVER: Priority = Priority(0);

    /// True when priority election applies to this peer.
    #[must_use]
    pub fn is_enabled(self) -> bool {
        self.0 >= 0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DISABLED
    }
}
