//! Chain hashes of a log: `h(i) = H(h(i-1), term(i), payload(i))`.
//!
//! Owns: a cheap fingerprint of a whole log prefix, so "log matching" (two logs with an
//! entry of the same index and term are identical up to it, Raft paper §5.3) and "these two
//! logs agree up to i" are O(1) comparisons. Must never: be used by the core; it is the
//! simulator's observation of what the core emitted.

use flotilla_raft::{Entry, EntryPayload, LogIndex, Term};

/// Hash of one entry chained onto the hash of the log before it.
#[must_use]
pub fn chain_hash(previous: u64, entry: &Entry) -> u64 {
    let mut h = previous ^ 0x9e37_79b9_7f4a_7c15;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(29) ^ (h >> 17);
    };
    mix(entry.index.get());
    mix(entry.term.get());
    match &entry.payload {
        EntryPayload::NoOp => mix(1),
        EntryPayload::Normal(data) => {
            mix(2);
            for chunk in data.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                mix(u64::from_le_bytes(word));
            }
        }
        EntryPayload::Configuration(c) => {
            mix(3);
            for p in c.voters.iter().chain(c.learners.iter()) {
                for b in p.as_str().bytes() {
                    mix(u64::from(b));
                }
            }
            if let Some(old) = &c.old_voters {
                mix(4);
                for p in old {
                    for b in p.as_str().bytes() {
                        mix(u64::from(b));
                    }
                }
            }
        }
    }
    h
}

/// The chain hashes of one log from a base point (a snapshot) on.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    base_index: LogIndex,
    base_hash: u64,
    items: Vec<(Term, u64)>,
}

impl Chain {
    /// A chain starting after `base_index` whose hash there is `base_hash`.
    #[must_use]
    pub fn new(base_index: LogIndex, base_hash: u64) -> Chain {
        Chain {
            base_index,
            base_hash,
            items: Vec::new(),
        }
    }

    /// Last index covered.
    #[must_use]
    pub fn last_index(&self) -> LogIndex {
        self.base_index.plus(self.items.len() as u64)
    }

    /// Index of the base (everything at or before it is summarised by the base hash).
    #[must_use]
    pub fn base_index(&self) -> LogIndex {
        self.base_index
    }

    /// The chain hash at `index`, if known (`None` before the base or after the end).
    #[must_use]
    pub fn hash_at(&self, index: LogIndex) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_hash);
        }
        if index < self.base_index {
            return None;
        }
        let slot = (index.get() - self.base_index.get() - 1) as usize;
        self.items.get(slot).map(|(_, h)| *h)
    }

    /// The term at `index`, if known.
    #[must_use]
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index <= self.base_index {
            return None;
        }
        let slot = (index.get() - self.base_index.get() - 1) as usize;
        self.items.get(slot).map(|(t, _)| *t)
    }

    /// Applies an append: drops everything at or after the first entry, then chains them.
    /// Returns the `(index, term, hash)` of every entry added.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<(LogIndex, Term, u64)> {
        let Some(first) = entries.first() else {
            return Vec::new();
        };
        if first.index <= self.base_index {
            // Entries at or before the base are covered by the snapshot; skip them.
            let skip = self.base_index.distance_from(first.index) as usize + 1;
            return self.append(entries.get(skip..).unwrap_or(&[]));
        }
        let keep = (first.index.get() - self.base_index.get() - 1) as usize;
        self.items.truncate(keep.min(self.items.len()));
        let mut added = Vec::with_capacity(entries.len());
        for entry in entries {
            let previous = self
                .hash_at(entry.index.prev())
                .unwrap_or_else(|| panic!("append at {} leaves a gap", entry.index));
            let h = chain_hash(previous, entry);
            self.items.push((entry.term, h));
            added.push((entry.index, entry.term, h));
        }
        added
    }
}
