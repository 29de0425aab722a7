//! The in-memory index of the shared log: for every group, its compaction point and where
//! each of its entries lies on disk; for every segment, how many live entries of each
//! group it still holds (so a segment can be reclaimed once it holds none).
//!
//! Owns: the semantics of the four log operations (the same as
//! [`crate::memory::MemLogStorage`]), applied identically when a batch is written and when
//! it is replayed, and the invariant `live count of a segment = number of index locations
//! pointing into it`. Must never: do I/O, or accept an operation that would leave a gap.

use std::collections::{BTreeMap, VecDeque};

use flotilla_raft::{LogIndex, Term};

use super::format::{GroupCheckpoint, Op};
use crate::error::StorageError;
use crate::traits::GroupId;

/// Segment number standing for "in a segment already reclaimed": only allowed transiently
/// during recovery, for entries a later record of the replay must drop.
pub const SEGMENT_RECLAIMED: u64 = u64::MAX;

/// Where one entry lies on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment sequence.
    pub segment: u64,
    /// File offset of the entry's encoding.
    pub offset: u64,
    /// Length of the encoding (its 4-byte CRC follows).
    pub len: u32,
    /// The entry's term (kept here so `term()` needs no disk read).
    pub term: Term,
}

/// One group's log, by location.
#[derive(Clone, Debug, Default)]
pub struct GroupIndex {
    /// Index and term of the compaction point (the entry before the first one stored).
    pub prefix: (LogIndex, Term),
    /// Recovery only: entries `prefix.0 + 1 ..= prefix.0 + reclaimed` stand in segments
    /// already reclaimed (a checkpoint claimed them; a later record of the replay must
    /// drop them). Kept as a count, not one location each: a checkpoint read from disk
    /// may claim any number of them (a hostile or corrupt one claimed 2^60), and a real
    /// log compacted after hours of writes claims hundreds of millions.
    pub reclaimed: u64,
    /// Entries `prefix.0 + reclaimed + 1 ..= last_index()`.
    pub locations: VecDeque<Location>,
}

impl GroupIndex {
    /// First index stored (`last_index + 1` when empty).
    #[must_use]
    pub fn first_index(&self) -> LogIndex {
        self.prefix.0.next()
    }

    /// Last index stored.
    #[must_use]
    pub fn last_index(&self) -> LogIndex {
        self.prefix
            .0
            .plus(self.reclaimed)
            .plus(self.locations.len() as u64)
    }

    /// Location of the entry at `index` (one standing in a reclaimed segment has the
    /// segment [`SEGMENT_RECLAIMED`]).
    pub fn location(&self, index: LogIndex) -> Result<Location, StorageError> {
        if index <= self.prefix.0 {
            return Err(StorageError::Compacted {
                first_index: self.first_index(),
            });
        }
        let offset = index.get() - self.prefix.0.get() - 1;
        if offset < self.reclaimed {
            return Ok(Location {
                segment: SEGMENT_RECLAIMED,
                offset: 0,
                len: 0,
                term: Term::ZERO,
            });
        }
        let slot = usize::try_from(offset - self.reclaimed).unwrap_or(usize::MAX);
        self.locations
            .get(slot)
            .copied()
            .ok_or(StorageError::Unavailable { index })
    }

    /// Drops every entry from position `keep` (counted from the first entry after the
    /// compaction point) on; returns the dropped locations (reclaimed ones are not
    /// counted anywhere, so they are not returned).
    fn drop_from(&mut self, keep: u64) -> Vec<Location> {
        if keep < self.reclaimed {
            self.reclaimed = keep;
            return self.locations.drain(..).collect();
        }
        let slot = usize::try_from(keep - self.reclaimed).unwrap_or(usize::MAX);
        let slot = slot.min(self.locations.len());
        self.locations.drain(slot..).collect()
    }

    /// Drops the first `count` entries after the compaction point; returns the dropped
    /// locations (reclaimed ones excepted, as in [`GroupIndex::drop_from`]).
    fn drop_first(&mut self, count: u64) -> Vec<Location> {
        let from_reclaimed = count.min(self.reclaimed);
        self.reclaimed -= from_reclaimed;
        let rest = usize::try_from(count - from_reclaimed).unwrap_or(usize::MAX);
        let rest = rest.min(self.locations.len());
        self.locations.drain(..rest).collect()
    }

    /// Term at `index`; the compaction point answers with its term.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.prefix.0 {
            return Ok(self.prefix.1);
        }
        Ok(self.location(index)?.term)
    }

    /// This group as a checkpoint records it.
    #[must_use]
    pub fn checkpoint(&self) -> GroupCheckpoint {
        GroupCheckpoint {
            prefix_index: self.prefix.0,
            prefix_term: self.prefix.1,
            last_index: self.last_index(),
        }
    }

    fn is_default(&self) -> bool {
        self.prefix == (LogIndex::ZERO, Term::ZERO)
            && self.reclaimed == 0
            && self.locations.is_empty()
    }
}

/// Live entries one segment still holds, per group.
#[derive(Clone, Debug, Default)]
pub struct SegmentLive {
    /// group -> number of index locations pointing into the segment.
    pub by_group: BTreeMap<GroupId, u64>,
}

impl SegmentLive {
    /// True once no group has a live entry in the segment.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_group.is_empty()
    }
}

/// The index of every group plus segment liveness.
#[derive(Debug, Default)]
pub struct LogIndexState {
    /// Every group that was ever written (or named by a checkpoint).
    pub groups: BTreeMap<GroupId, GroupIndex>,
    /// segment -> live entries in it.
    pub live: BTreeMap<u64, SegmentLive>,
}

/// The shape of an operation as validation needs it.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Append of `count` entries starting at `first`.
    Append {
        /// Index of the first entry.
        first: LogIndex,
        /// Number of entries.
        count: u64,
    },
    /// See [`Op::TruncatePrefix`].
    TruncatePrefix(LogIndex, Term),
    /// See [`Op::TruncateSuffix`].
    TruncateSuffix(LogIndex),
    /// See [`Op::Reset`].
    Reset(LogIndex, Term),
}

impl Shape {
    /// The shape of `op` (`None` for an empty append, which changes nothing).
    #[must_use]
    pub fn of(op: &Op) -> Option<Shape> {
        Some(match op {
            Op::Append(entries) => Shape::Append {
                first: entries.first()?.index,
                count: entries.len() as u64,
            },
            Op::TruncatePrefix(i, t) => Shape::TruncatePrefix(*i, *t),
            Op::TruncateSuffix(i) => Shape::TruncateSuffix(*i),
            Op::Reset(i, t) => Shape::Reset(*i, *t),
        })
    }
}

/// Checks `shape` against a group's `(prefix index, last index)` and returns the bounds
/// after it, or why it is refused.
pub fn check_shape(
    bounds: (LogIndex, LogIndex),
    shape: Shape,
) -> Result<(LogIndex, LogIndex), String> {
    let (prefix, last) = bounds;
    match shape {
        Shape::Append { first, count } => {
            if first <= prefix || first > last.next() {
                return Err(format!(
                    "append at {first} outside [{}, {}]",
                    prefix.next(),
                    last.next()
                ));
            }
            Ok((prefix, first.plus(count - 1)))
        }
        Shape::TruncatePrefix(index, _) => {
            if index <= prefix {
                Ok(bounds)
            } else {
                Ok((index, last.max(index)))
            }
        }
        Shape::TruncateSuffix(from) => {
            if from <= prefix {
                return Err(format!(
                    "truncate suffix at {from} would cross the compaction point {prefix}"
                ));
            }
            Ok((prefix, last.min(from.prev())))
        }
        Shape::Reset(index, _) => Ok((index, index)),
    }
}

impl LogIndexState {
    /// Applies one operation of `group`; `locations` holds one location per appended entry.
    /// The operation must have passed [`check_shape`] (a refusal here is returned as a
    /// message, which recovery reports as corruption).
    pub fn apply(
        &mut self,
        group: GroupId,
        shape: Shape,
        locations: &[Location],
    ) -> Result<(), String> {
        let index = self.groups.entry(group).or_default();
        let bounds = (index.prefix.0, index.last_index());
        check_shape(bounds, shape)?;
        let dropped: Vec<Location> = match shape {
            Shape::Append { first, count } => {
                debug_assert_eq!(count, locations.len() as u64);
                let dropped = index.drop_from(first.get() - index.prefix.0.get() - 1);
                index.locations.extend(locations.iter().copied());
                dropped
            }
            Shape::TruncatePrefix(at, term) => {
                if at <= index.prefix.0 {
                    Vec::new()
                } else {
                    let dropped = index.drop_first(at.get() - index.prefix.0.get());
                    index.prefix = (at, term);
                    dropped
                }
            }
            Shape::TruncateSuffix(from) => index.drop_from(from.get() - index.prefix.0.get() - 1),
            Shape::Reset(at, term) => {
                index.prefix = (at, term);
                index.reclaimed = 0;
                index.locations.drain(..).collect()
            }
        };
        for location in locations {
            *self
                .live
                .entry(location.segment)
                .or_default()
                .by_group
                .entry(group)
                .or_insert(0) += 1;
        }
        for location in &dropped {
            self.release(group, location.segment);
        }
        Ok(())
    }

    fn release(&mut self, group: GroupId, segment: u64) {
        if segment == SEGMENT_RECLAIMED {
            return;
        }
        let live = self.live.get_mut(&segment).unwrap_or_else(|| {
            panic!("group {group} drops an entry of segment {segment}, which has no live count")
        });
        let count = live
            .by_group
            .get_mut(&group)
            .unwrap_or_else(|| panic!("group {group} drops an entry of segment {segment}, which counts none of its entries"));
        *count -= 1;
        if *count == 0 {
            live.by_group.remove(&group);
        }
    }

    /// Every group that differs from an empty log, as a checkpoint records it.
    #[must_use]
    pub fn checkpoint(&self) -> Vec<(GroupId, GroupCheckpoint)> {
        self.groups
            .iter()
            .filter(|(_, g)| !g.is_default())
            .map(|(id, g)| (*id, g.checkpoint()))
            .collect()
    }

    /// Starts recovery from a checkpoint: each group continues after its compaction point,
    /// with entries up to its last index standing in a reclaimed segment (a later record
    /// must drop them, else recovery fails).
    pub fn start_from(&mut self, checkpoint: &[(GroupId, GroupCheckpoint)]) {
        debug_assert!(self.groups.is_empty());
        for (group, c) in checkpoint {
            let index = GroupIndex {
                prefix: (c.prefix_index, c.prefix_term),
                reclaimed: c.last_index.distance_from(c.prefix_index),
                locations: VecDeque::new(),
            };
            self.groups.insert(*group, index);
        }
    }

    /// First group entry still standing in a reclaimed segment, if any.
    #[must_use]
    pub fn first_reclaimed_entry(&self) -> Option<(GroupId, LogIndex)> {
        self.groups
            .iter()
            .find(|(_, g)| g.reclaimed > 0)
            .map(|(id, g)| (*id, g.prefix.0.next()))
    }
}
