//! Recent entries of every group, kept in memory so replication and apply read without
//! disk I/O, bounded by one byte budget for the whole process.
//!
//! Owns: the invariant that a group's cached entries are a contiguous run ending at the
//! group's last index (or nothing), and that the cached bytes stay within `bytes_max`
//! after every insertion (oldest insertions are evicted first, whatever their group).
//! Must never: hold an entry that is not durable, or one the log no longer holds.

use std::collections::{BTreeMap, VecDeque};

use flotilla_raft::{Entry, LogIndex};

use crate::traits::GroupId;

#[derive(Debug)]
struct Cached {
    entry: Entry,
    /// Insertion number, unique across groups (eviction order).
    sequence: u64,
}

/// The entry cache.
#[derive(Debug)]
pub struct EntryCache {
    bytes_max: u64,
    bytes: u64,
    groups: BTreeMap<GroupId, VecDeque<Cached>>,
    /// Insertions in order, as `(group, sequence)`; stale keys (entries already dropped)
    /// are skipped when they come up.
    order: VecDeque<(GroupId, u64)>,
    next_sequence: u64,
}

impl EntryCache {
    /// An empty cache holding at most `bytes_max` bytes of entries (by
    /// [`Entry::size_bytes`]).
    #[must_use]
    pub fn new(bytes_max: u64) -> EntryCache {
        EntryCache {
            bytes_max,
            bytes: 0,
            groups: BTreeMap::new(),
            order: VecDeque::new(),
            next_sequence: 0,
        }
    }

    /// Bytes currently cached.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The cached entry at `index` of `group`.
    #[must_use]
    pub fn get(&self, group: GroupId, index: LogIndex) -> Option<&Entry> {
        let run = self.groups.get(&group)?;
        let first = run.front()?.entry.index;
        let slot = usize::try_from(index.get().checked_sub(first.get())?).ok()?;
        run.get(slot).map(|c| &c.entry)
    }

    /// Records appended (durable) entries of `group`, dropping cached ones they overwrite.
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.truncate_suffix(group, first.index);
        let run = self.groups.entry(group).or_default();
        if run
            .back()
            .is_some_and(|c| c.entry.index.next() != first.index)
        {
            // Not contiguous with what is cached (the log continued while these were
            // evicted): start the run afresh.
            self.bytes -= run.drain(..).map(|c| c.entry.size_bytes()).sum::<u64>();
        }
        for entry in entries {
            self.next_sequence += 1;
            self.bytes += entry.size_bytes();
            run.push_back(Cached {
                entry: entry.clone(),
                sequence: self.next_sequence,
            });
            self.order.push_back((group, self.next_sequence));
        }
        self.evict();
    }

    /// Drops cached entries of `group` at or after `from`.
    pub fn truncate_suffix(&mut self, group: GroupId, from: LogIndex) {
        let Some(run) = self.groups.get_mut(&group) else {
            return;
        };
        while run.back().is_some_and(|c| c.entry.index >= from) {
            if let Some(c) = run.pop_back() {
                self.bytes -= c.entry.size_bytes();
            }
        }
    }

    /// Drops cached entries of `group` at or before `through`.
    pub fn truncate_prefix(&mut self, group: GroupId, through: LogIndex) {
        let Some(run) = self.groups.get_mut(&group) else {
            return;
        };
        while run.front().is_some_and(|c| c.entry.index <= through) {
            if let Some(c) = run.pop_front() {
                self.bytes -= c.entry.size_bytes();
            }
        }
    }

    /// Drops every cached entry of `group`.
    pub fn clear(&mut self, group: GroupId) {
        if let Some(run) = self.groups.remove(&group) {
            self.bytes -= run.iter().map(|c| c.entry.size_bytes()).sum::<u64>();
        }
    }

    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let Some((group, sequence)) = self.order.pop_front() else {
                break;
            };
            let Some(run) = self.groups.get_mut(&group) else {
                continue;
            };
            // Entries of a run were inserted in index order, so the front holds the
            // smallest sequence still cached; a key older than it is stale.
            if run.front().is_some_and(|c| c.sequence == sequence) {
                if let Some(c) = run.pop_front() {
                    self.bytes -= c.entry.size_bytes();
                }
            }
        }
        // Stale keys are bounded: drop them once they outnumber live ones.
        let live: usize = self.groups.values().map(VecDeque::len).sum();
        if self.order.len() > 2 * live + 1024 {
            let groups = &self.groups;
            self.order.retain(|(g, s)| {
                groups
                    .get(g)
                    .is_some_and(|run| run.iter().any(|c| c.sequence == *s))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::{EntryPayload, Term};

    fn e(i: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            term: Term(1),
            payload: EntryPayload::Normal(vec![0; 76].into()),
        }
    }

    #[test]
    fn evicts_oldest_first_and_keeps_runs_contiguous() {
        let mut cache = EntryCache::new(300); // three 100-byte entries
        cache.append(1, &[e(1), e(2)]);
        cache.append(2, &[e(1)]);
        cache.append(1, &[e(3)]);
        assert!(cache.get(1, LogIndex(1)).is_none(), "oldest evicted");
        assert!(cache.get(1, LogIndex(3)).is_some());
        cache.append(1, &[e(2)]); // overwrite 2 and 3
        assert!(cache.get(1, LogIndex(3)).is_none());
        assert_eq!(cache.get(1, LogIndex(2)), Some(&e(2)));
        assert!(cache.bytes() <= 300);
        cache.truncate_prefix(1, LogIndex(2));
        cache.clear(2);
        assert_eq!(cache.bytes(), 0);
    }
}
