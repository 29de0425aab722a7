//! The ids of the KV layer's vocabulary (docs/DESIGN.md: region, epoch): [`RegionId`] and
//! [`Epoch`], newtypes so that a region id can never be passed as an epoch or a raft index
//! (STYLE.md §2).
//!
//! Owns: the two types and how they print. A leaf: it depends on no other file of the crate,
//! so every other file (errors, codecs, engines, the store, the client) may name them.
//! Must never: grow behaviour that needs the rest of the crate (region ranges live in
//! `region`).

use std::fmt;

/// Identifies a region (and its raft group) across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RegionId(pub u64);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A region's version (RheaKV's `RegionEpoch`): `conf_version` for its membership, `version`
/// for its range. A membership change moves `conf_version` to the index of the
/// configuration's raft entry (so every replica reaches the same value, and it only grows;
/// TiKV adds one instead, which needs the count carried through snapshots); `version` stays
/// 1 until regions split and merge. A data request whose `version` is not the region's is
/// refused as stale (its `conf_version` may be older: membership does not change which keys
/// a region holds). Ordered by `conf_version`, then `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch {
    /// Configuration version: the index of the region's last configuration entry (1 at
    /// bootstrap).
    pub conf_version: u64,
    /// Range version: bumped by every split or merge.
    pub version: u64,
}

impl Epoch {
    /// An epoch with the two versions given.
    #[must_use]
    pub const fn new(conf_version: u64, version: u64) -> Epoch {
        Epoch {
            conf_version,
            version,
        }
    }

    /// Whether a region description at this epoch supersedes one at `other`: a later
    /// range (`version`), or the same range with a later configuration. Not the derived
    /// order, where `conf_version` comes first: a replica can hear of configurations
    /// committed after a split before it applies the split (it waits for a snapshot), and
    /// its `conf_version` is then larger than that of the snapshot's smaller range.
    #[must_use]
    pub fn supersedes(&self, other: &Epoch) -> bool {
        self.version > other.version
            || (self.version == other.version && self.conf_version > other.conf_version)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(conf {}, version {})", self.conf_version, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::Epoch;

    #[test]
    fn a_later_range_supersedes_a_later_configuration() {
        // A replica that heard of configuration 1911 while it waited for a snapshot of the
        // range as split at version 2 (configuration 1397): the snapshot's range wins.
        let waiting = Epoch::new(1911, 1);
        let snapshot = Epoch::new(1397, 2);
        assert!(snapshot.supersedes(&waiting));
        assert!(!waiting.supersedes(&snapshot));
        assert!(Epoch::new(5, 2).supersedes(&Epoch::new(4, 2)));
        assert!(!Epoch::new(4, 2).supersedes(&Epoch::new(4, 2)));
    }
}
