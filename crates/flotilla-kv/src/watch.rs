//! Watch: a stream of the changes to a key range, from now or from a token, that nothing
//! slips through (etcd's watch, on Flotilla's regions).
//!
//! **History, written with the data.** While a region has *watch interest* (a record its
//! log decides: [`Interest`], started by the first watcher's [`WatchOp::Interest`] entry,
//! renewed by every watcher's, ended by the leader's [`WatchOp::End`] once no renewal came
//! for the retention), each replica's state machine writes, in the same engine batch as a
//! data entry, that entry's changes: meta `watch/` + region id + log index →
//! [`WatchRecord`] (the puts and deletes it made, a delete-range expanded into the keys it
//! removed, a delete of an absent key left out). Every replica decides the same, so every
//! replica holds the same history for the same indexes, across restarts and leader
//! changes. Writes of regions nobody watches pay nothing.
//!
//! **Positions.** A [`Cursor`] names a region, its range version, a log index and an event
//! number in that entry (the event was delivered; [`WHOLE`]: the entry's every event was),
//! and the key range it watches there. A token is the list of cursors of a watch (one per
//! region piece of the watched range), encoded as hex: resuming continues each right after
//! its position.
//!
//! **What a replica can serve.** History from an entry on is *complete* here when interest
//! was on since before it (`since` < index) and this replica neither trimmed nor skipped it
//! (a local floor: raised by the retention trim and by a snapshot install, whose entries
//! were never applied here). A cursor needing anything older gets `Compacted`, naming the
//! oldest position it can resume from.
//!
//! **Splits and merges.** A split entry of a watched region writes a [`WatchItem::Split`]
//! at its index and gives the child the parent's interest, with the child's history
//! complete from its first entry: a cursor passing the split narrows to the parent's keys
//! and hands the rest to a new cursor in the child, right after the split. A merge's
//! commit entry records where the source's keys went ([`merged_key`]: target, commit index,
//! the source's prepare index) and gives the target the source's interest: a cursor of the
//! source that had every event up to the prepare continues in the target right after the
//! commit. Order per key is commit order: a key lives in one region at a time, and a
//! handover happens at the entry that moved it.
//!
//! Owns: the formats (records, interest, tokens) and the pure rules. The state machine
//! writes the history; the store serves it (`store::watch`).

use bytes::Bytes;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::engine::meta_keys;
use crate::error::KvError;
use crate::ids::RegionId;
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// Meta prefix of the history: `watch/` + region id (8 bytes, big endian) + log index (8
/// bytes, big endian) + part (4 bytes, big endian) → [`WatchRecord`]: an entry's changes
/// in parts of about [`PART_BYTES`] (one change larger than that is a part of its own).
pub const HISTORY_PREFIX: &[u8] = meta_keys::WATCH_HISTORY_PREFIX;
/// Meta prefix of a region's interest: `watch-interest/` + region id → [`Interest`].
pub const INTEREST_PREFIX: &[u8] = meta_keys::WATCH_INTEREST_PREFIX;
/// Meta prefix of a replica's local floor: `watch-floor/` + region id → the first index
/// whose history this replica may hold (8 bytes, big endian).
pub const FLOOR_PREFIX: &[u8] = meta_keys::WATCH_FLOOR_PREFIX;
/// Meta prefix of where a merged source's keys went: `watch-merged/` + source id →
/// [`Merged`].
pub const MERGED_PREFIX: &[u8] = meta_keys::WATCH_MERGED_PREFIX;
/// Name of the snapshot file holding the region's interest (empty: none).
pub const SNAPSHOT_INTEREST_FILE: &str = "watch-interest";
/// The event number meaning "every event of the entry was delivered".
pub const WHOLE: u32 = u32::MAX;
/// Default retention of history, and how long interest outlives its last renewal (ms).
pub const RETENTION_MS_DEFAULT: u64 = 300_000;
/// Shortest retention.
pub const RETENTION_MS_MIN: u64 = 1_000;
/// The error kind of a watch whose history is gone (or that fell behind).
pub const COMPACTED_KIND: &str = "Compacted";
/// Most cursors one token holds.
pub const CURSORS_MAX: usize = 4096;
/// Most changes one history record holds when decoded (one entry is one record: the batch
/// limits bound its puts, the region's size a delete-range's keys).
const ITEMS_MAX: usize = 16 * 1024 * 1024;
const RECORD_VERSION: u8 = 1;
const TOKEN_VERSION: u8 = 1;

fn region_key(prefix: &[u8], region: RegionId) -> Bytes {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&region.0.to_be_bytes());
    Bytes::from(key)
}

/// Encoded bytes of changes one history part holds, about.
pub const PART_BYTES: usize = 512 * 1024;
/// Largest history part (`crate::limits::WATCH_PART_BYTES_MAX`).
pub const PART_BYTES_MAX: usize = crate::limits::WATCH_PART_BYTES_MAX;

/// The meta key of part `part` of the history record of entry `index` of `region`.
#[must_use]
pub fn history_key(region: RegionId, index: u64, part: u32) -> Bytes {
    let mut key = region_key(HISTORY_PREFIX, region).to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&part.to_be_bytes());
    Bytes::from(key)
}

/// The meta range of `region`'s history from entry `from` on.
#[must_use]
pub fn history_range(region: RegionId, from: u64) -> (Bytes, Bytes) {
    let mut start = region_key(HISTORY_PREFIX, region).to_vec();
    start.extend_from_slice(&from.to_be_bytes());
    let start = Bytes::from(start);
    let end = match region.0.checked_add(1) {
        Some(next) => region_key(HISTORY_PREFIX, RegionId(next)),
        None => {
            let mut past = HISTORY_PREFIX.to_vec();
            if let Some(last) = past.last_mut() {
                *last += 1;
            }
            Bytes::from(past)
        }
    };
    (start, end)
}

/// The log index a history key names, if it is one of `region`'s.
#[must_use]
pub fn index_of(region: RegionId, key: &[u8]) -> Option<u64> {
    let prefix = region_key(HISTORY_PREFIX, region);
    let rest = key.strip_prefix(prefix.as_ref())?;
    if rest.len() != 12 {
        return None;
    }
    Some(u64::from_be_bytes(rest[..8].try_into().ok()?))
}

/// The parts of the history record of an entry applied at `wall_ms` with `items`:
/// consecutive runs of its changes of about [`PART_BYTES`] each, in order.
#[must_use]
pub fn record_parts(wall_ms: u64, items: &[WatchItem]) -> Vec<Bytes> {
    let mut parts = Vec::new();
    let mut run: Vec<WatchItem> = Vec::new();
    let mut bytes = 0;
    for item in items {
        if !run.is_empty() && bytes + item.encoded_len() > PART_BYTES {
            let items = std::mem::take(&mut run);
            parts.push(WatchRecord { wall_ms, items }.encode());
            bytes = 0;
        }
        bytes += item.encoded_len();
        run.push(item.clone());
    }
    if !run.is_empty() || parts.is_empty() {
        parts.push(
            WatchRecord {
                wall_ms,
                items: run,
            }
            .encode(),
        );
    }
    parts
}

/// The meta key of `region`'s interest.
#[must_use]
pub fn interest_key(region: RegionId) -> Bytes {
    region_key(INTEREST_PREFIX, region)
}

/// The meta key of `region`'s local floor.
#[must_use]
pub fn floor_key(region: RegionId) -> Bytes {
    region_key(FLOOR_PREFIX, region)
}

/// The meta key of where merged `source`'s keys went.
#[must_use]
pub fn merged_key(source: RegionId) -> Bytes {
    region_key(MERGED_PREFIX, source)
}

/// An 8-byte big-endian number (a floor), refusing anything else.
pub fn decode_u64(what: &str, data: &[u8]) -> Result<u64, KvError> {
    data.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| KvError::Corrupt(format!("{what}: {} bytes, expected 8", data.len())))
}

/// Where a merged source's keys went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The target.
    pub target: RegionId,
    /// The CommitMerge entry's index in the target's log.
    pub commit: u64,
    /// The source's last entry with changes ([`Interest::last`]; `u64::MAX`: its history
    /// was not complete, nobody watched it): a cursor of the source that had every event
    /// up to it continues in the target right after the commit.
    pub last: u64,
}

impl Merged {
    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.target.0.to_be_bytes());
        out.extend_from_slice(&self.commit.to_be_bytes());
        out.extend_from_slice(&self.last.to_be_bytes());
        Bytes::from(out)
    }

    /// Decodes [`Merged::encode`]'s output.
    pub fn decode(data: &[u8]) -> Result<Merged, KvError> {
        if data.len() != 24 {
            return Err(KvError::Corrupt(format!(
                "watch merge record: {} bytes, expected 24",
                data.len()
            )));
        }
        let word = |at: usize| decode_u64("watch merge record", &data[at..at + 8]);
        Ok(Merged {
            target: RegionId(word(0)?),
            commit: word(8)?,
            last: word(16)?,
        })
    }
}

/// A region's watch interest, as its log decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// The entry that started it: history is complete after it.
    pub since: u64,
    /// Renewals applied since (what an `End` must name, so that a renewal in between
    /// keeps it).
    pub renewals: u64,
    /// The last entry recorded with changes (`since` if none yet).
    pub last: u64,
}

impl Interest {
    /// An interest starting at entry `index` (history complete after it).
    #[must_use]
    pub fn starting(index: u64) -> Interest {
        Interest {
            since: index,
            renewals: 0,
            last: index,
        }
    }

    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.since.to_be_bytes());
        out.extend_from_slice(&self.renewals.to_be_bytes());
        out.extend_from_slice(&self.last.to_be_bytes());
        Bytes::from(out)
    }

    /// Decodes [`Interest::encode`]'s output.
    pub fn decode(data: &[u8]) -> Result<Interest, KvError> {
        if data.len() != 24 {
            return Err(KvError::Corrupt(format!(
                "watch interest: {} bytes, expected 24",
                data.len()
            )));
        }
        Ok(Interest {
            since: decode_u64("watch interest", &data[..8])?,
            renewals: decode_u64("watch interest", &data[8..16])?,
            last: decode_u64("watch interest", &data[16..])?,
        })
    }
}

/// What a [`crate::command::KvCommand::Watch`] entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchOp {
    /// Starts the region's interest (history recorded after this entry), or renews it.
    /// Output: `Counter(since)`.
    Interest,
    /// Ends the interest if it saw exactly `renewals` renewals (none came since the
    /// leader decided). Output: `Swapped(ended)`.
    End {
        /// The renewals the leader saw.
        renewals: u64,
    },
}

/// The outcome of `op` on interest `current` at entry `index`: the interest after it and
/// the output value (since, or whether it ended).
#[must_use]
pub fn apply(op: WatchOp, current: Option<Interest>, index: u64) -> (Option<Interest>, u64) {
    match (op, current) {
        (WatchOp::Interest, None) => (Some(Interest::starting(index)), index),
        (WatchOp::Interest, Some(interest)) => (
            Some(Interest {
                renewals: interest.renewals.saturating_add(1),
                ..interest
            }),
            interest.since,
        ),
        (WatchOp::End { renewals }, Some(interest)) if interest.renewals == renewals => (None, 1),
        (WatchOp::End { .. }, current) => (current, 0),
    }
}

/// One change in a region's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// A key was set.
    Put {
        /// The key.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// A key that existed was removed.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// The region split at `key`: the keys from it on are `child`'s, whose history is
    /// complete right after this entry.
    Split {
        /// The child.
        child: RegionId,
        /// The child's range version.
        version: u64,
        /// The split key (the child's start).
        key: Bytes,
    },
}

impl WatchItem {
    /// Bytes it takes in a [`WatchRecord`].
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            WatchItem::Put { key, value } => 9 + key.len() + value.len(),
            WatchItem::Delete { key } => 5 + key.len(),
            WatchItem::Split { key, .. } => 21 + key.len(),
        }
    }

    /// The key a data item changed (`None` for a split).
    #[must_use]
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            WatchItem::Put { key, .. } | WatchItem::Delete { key } => Some(key),
            WatchItem::Split { .. } => None,
        }
    }
}

/// One entry's changes, as a replica recorded them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRecord {
    /// This replica's wall time when it applied the entry (ms since the Unix epoch): the
    /// retention trim's only input; never compared across replicas.
    pub wall_ms: u64,
    /// The changes, in the order the entry made them.
    pub items: Vec<WatchItem>,
}

impl WatchRecord {
    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let size: usize = self.items.iter().map(WatchItem::encoded_len).sum();
        let mut w = FieldWriter::with_capacity(16 + size);
        w.u8(RECORD_VERSION);
        w.u64(self.wall_ms);
        w.count(self.items.len());
        for item in &self.items {
            match item {
                WatchItem::Put { key, value } => {
                    w.u8(1);
                    w.bytes(key);
                    w.bytes(value);
                }
                WatchItem::Delete { key } => {
                    w.u8(2);
                    w.bytes(key);
                }
                WatchItem::Split {
                    child,
                    version,
                    key,
                } => {
                    w.u8(3);
                    w.u64(child.0);
                    w.u64(*version);
                    w.bytes(key);
                }
            }
        }
        w.finish()
    }

    /// Decodes [`WatchRecord::encode`]'s output, refusing anything else.
    pub fn decode(data: &[u8]) -> Result<WatchRecord, KvError> {
        let mut r = FieldReader::new(data, "watch record");
        let version = r.u8("format version")?;
        if version != RECORD_VERSION {
            return Err(KvError::Corrupt(format!(
                "watch record: format version {version}, expected {RECORD_VERSION}"
            )));
        }
        let wall_ms = r.u64("wall time")?;
        let count = r.count("items", ITEMS_MAX, 5)?;
        let mut items = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            items.push(match r.u8("item kind")? {
                1 => WatchItem::Put {
                    key: r.bytes("key", KEY_BYTES_MAX)?,
                    value: r.bytes("value", VALUE_BYTES_MAX)?,
                },
                2 => WatchItem::Delete {
                    key: r.bytes("key", KEY_BYTES_MAX)?,
                },
                3 => WatchItem::Split {
                    child: RegionId(r.u64("child")?),
                    version: r.u64("child version")?,
                    key: r.bytes("split key", KEY_BYTES_MAX)?,
                },
                other => {
                    return Err(KvError::Corrupt(format!(
                        "watch record: unknown item kind {other}"
                    )))
                }
            });
        }
        r.finish()?;
        Ok(WatchRecord { wall_ms, items })
    }
}

/// One entry's changes as they go live to a region's watchers.
#[derive(Clone, Debug)]
pub struct WatchEntry {
    /// The entry's index.
    pub index: u64,
    /// Its changes.
    pub items: std::sync::Arc<Vec<WatchItem>>,
}

/// Entries a region's live broadcast holds for its slowest watcher: one further behind is
/// cut off (`Compacted`, naming its own position: it resumes from the history).
pub const LIVE_ENTRIES_MAX: usize = 4096;

/// A region's watch state on one replica: the interest as applied here, when it was last
/// renewed here, and the live broadcast of the entries applied. Shared by the state machine
/// (which writes it) and the store (which serves watches and ends interest).
#[derive(Debug)]
pub struct WatchHub {
    interest: std::sync::RwLock<Option<Interest>>,
    renewed: std::sync::Mutex<std::time::Instant>,
    live: tokio::sync::broadcast::Sender<WatchEntry>,
    /// Serializes the changes of the local floor (the trim and a snapshot install).
    floor: std::sync::Mutex<()>,
}

impl Default for WatchHub {
    fn default() -> WatchHub {
        WatchHub {
            interest: std::sync::RwLock::new(None),
            renewed: std::sync::Mutex::new(std::time::Instant::now()),
            live: tokio::sync::broadcast::channel(LIVE_ENTRIES_MAX).0,
            floor: std::sync::Mutex::new(()),
        }
    }
}

impl WatchHub {
    /// The interest as applied here.
    #[must_use]
    pub fn interest(&self) -> Option<Interest> {
        *self
            .interest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the interest as applied; `renewed`: an interest entry applied (or the replica
    /// just learned of it), which restarts the time it outlives.
    pub fn set_interest(&self, interest: Option<Interest>, renewed: bool) {
        *self
            .interest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = interest;
        if renewed {
            *self
                .renewed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        }
    }

    /// Time since an interest entry last applied here (or since this replica started).
    #[must_use]
    pub fn renewed_ago(&self) -> std::time::Duration {
        self.renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// A receiver of the entries applied from now on.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WatchEntry> {
        self.live.subscribe()
    }

    /// Hands the entries just written to the live watchers.
    pub fn publish(&self, entries: impl IntoIterator<Item = WatchEntry>) {
        if self.live.receiver_count() == 0 {
            return;
        }
        for entry in entries {
            let _ = self.live.send(entry);
        }
    }

    /// Raises `region`'s local floor to `to` (never lowers it), with the writes of `batch`
    /// (the trimmed records, or a snapshot's import) in the same engine batch.
    pub fn raise_floor(
        &self,
        engine: &dyn crate::engine::KvEngine,
        region: RegionId,
        to: u64,
        batch: crate::engine::WriteBatch,
    ) -> Result<(), KvError> {
        let _one = self
            .floor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        raise_floor(engine, region, to, batch)
    }
}

/// [`WatchHub::raise_floor`] for a region no state machine of this store runs any more
/// (nothing else changes its floor).
pub fn raise_floor(
    engine: &dyn crate::engine::KvEngine,
    region: RegionId,
    to: u64,
    mut batch: crate::engine::WriteBatch,
) -> Result<(), KvError> {
    let current = local_floor(engine, region)?;
    if to > current {
        batch.meta_put(floor_key(region), Bytes::copy_from_slice(&to.to_be_bytes()));
    }
    if batch.is_empty() {
        return Ok(());
    }
    engine.write(batch)
}

/// The regions whose history `engine` holds any of.
pub fn regions_with_history(
    engine: &dyn crate::engine::KvEngine,
) -> Result<Vec<RegionId>, KvError> {
    let mut regions = Vec::new();
    let mut from = Bytes::from_static(HISTORY_PREFIX);
    let end = {
        let mut past = HISTORY_PREFIX.to_vec();
        if let Some(last) = past.last_mut() {
            *last += 1;
        }
        Bytes::from(past)
    };
    loop {
        let page = engine.meta_scan(&from, &end, 1)?;
        let Some((key, _)) = page.first() else {
            return Ok(regions);
        };
        let Some(id) = key
            .get(HISTORY_PREFIX.len()..HISTORY_PREFIX.len() + 8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return Err(KvError::Corrupt(format!(
                "watch history key {} names no region",
                crate::error::show(key)
            )));
        };
        regions.push(RegionId(id));
        from = history_range(RegionId(id), 0).1;
    }
}

/// `region`'s local floor (0: none).
pub fn local_floor(engine: &dyn crate::engine::KvEngine, region: RegionId) -> Result<u64, KvError> {
    engine
        .meta_get(&floor_key(region))?
        .map_or(Ok(0), |value| decode_u64("watch floor", &value))
}

/// `region`'s interest in `engine`.
pub fn read_interest(
    engine: &dyn crate::engine::KvEngine,
    region: RegionId,
) -> Result<Option<Interest>, KvError> {
    engine
        .meta_get(&interest_key(region))?
        .map(|value| Interest::decode(&value))
        .transpose()
}

/// Where one piece of a watch stands: region, range version, the last event delivered,
/// and the keys watched there (`[start, end)`, an empty end: unbounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The region.
    pub region: RegionId,
    /// Its range version at the position (informative: the history orders handovers).
    pub version: u64,
    /// The entry of the last event delivered.
    pub index: u64,
    /// That event's number in the entry ([`WHOLE`]: all of them).
    pub event: u32,
    /// First key watched.
    pub start: Bytes,
    /// Key past the last watched (empty: unbounded).
    pub end: Bytes,
}

impl Cursor {
    /// The first entry whose events are not all delivered.
    #[must_use]
    pub fn needed(&self) -> u64 {
        if self.event == WHOLE {
            self.index.saturating_add(1)
        } else {
            self.index
        }
    }

    /// Whether the cursor watches `key`.
    #[must_use]
    pub fn covers(&self, key: &[u8]) -> bool {
        key >= self.start.as_ref() && (self.end.is_empty() || key < self.end.as_ref())
    }

    /// Whether it watches no key at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.start >= self.end
    }

    /// The cursor after a split at `key` handing the keys from it to `child` (version
    /// `version`) at entry `index`: the parent's part (possibly empty) and the child's
    /// (`None` when the cursor watches none of the child's keys).
    #[must_use]
    pub fn split(
        &self,
        index: u64,
        child: RegionId,
        version: u64,
        key: &Bytes,
    ) -> (Cursor, Option<Cursor>) {
        let child_start = if self.start > key {
            self.start.clone()
        } else {
            key.clone()
        };
        let child_part = Cursor {
            region: child,
            version,
            index,
            event: WHOLE,
            start: child_start,
            end: self.end.clone(),
        };
        let parent_end = if self.end.is_empty() || self.end > key {
            key.clone()
        } else {
            self.end.clone()
        };
        // Nothing left in the parent: an empty range at the split key, still a valid one.
        let parent_start = if self.start >= parent_end {
            parent_end.clone()
        } else {
            self.start.clone()
        };
        let parent = Cursor {
            index,
            event: WHOLE,
            start: parent_start,
            end: parent_end,
            ..self.clone()
        };
        (parent, (!child_part.is_empty()).then_some(child_part))
    }
}

/// The token naming `cursors` (opaque to users: hex of a versioned binary form).
#[must_use]
pub fn encode_token(cursors: &[Cursor]) -> String {
    let mut w = FieldWriter::with_capacity(2 + cursors.len() * 48);
    w.u8(TOKEN_VERSION);
    w.count(cursors.len());
    for cursor in cursors {
        w.u64(cursor.region.0);
        w.u64(cursor.version);
        w.u64(cursor.index);
        w.u32(cursor.event);
        w.bytes(&cursor.start);
        w.bytes(&cursor.end);
    }
    let bytes = w.finish();
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Decodes [`encode_token`]'s output: refuses anything else with an error naming what.
pub fn decode_token(token: &str) -> Result<Vec<Cursor>, KvError> {
    let bad = |why: String| KvError::Refused(format!("watch token is not valid: {why}"));
    if !token.len().is_multiple_of(2) || token.is_empty() {
        return Err(bad(format!("{} hex digits", token.len())));
    }
    let mut bytes = Vec::with_capacity(token.len() / 2);
    for pair in token.as_bytes().chunks(2) {
        let text = std::str::from_utf8(pair).map_err(|_| bad("not hex".into()))?;
        bytes.push(u8::from_str_radix(text, 16).map_err(|_| bad(format!("{text:?} is not hex")))?);
    }
    let mut r = FieldReader::new(&bytes, "watch token");
    let decoded = (|| -> Result<Vec<Cursor>, KvError> {
        let version = r.u8("format version")?;
        if version != TOKEN_VERSION {
            return Err(KvError::Corrupt(format!(
                "format version {version}, expected {TOKEN_VERSION}"
            )));
        }
        let count = r.count("cursors", CURSORS_MAX, 30)?;
        let mut cursors = Vec::with_capacity(count);
        for _ in 0..count {
            cursors.push(Cursor {
                region: RegionId(r.u64("region")?),
                version: r.u64("version")?,
                index: r.u64("index")?,
                event: r.u32("event")?,
                start: r.bytes("start", KEY_BYTES_MAX)?,
                end: r.bytes("end", KEY_BYTES_MAX)?,
            });
        }
        r.finish()?;
        Ok(cursors)
    })();
    decoded.map_err(|e| bad(e.to_string()))
}

/// The end of the key range of keys starting with `prefix` (empty: unbounded).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::new()
}

/// Checks that `cursors` (a token's) watch disjoint pieces of `[start, end)`, covering it.
pub fn check_cover(cursors: &[Cursor], start: &[u8], end: &[u8]) -> Result<(), KvError> {
    let refuse = |why: &str| {
        Err(KvError::Refused(format!(
            "watch token does not match the watched keys: {why}"
        )))
    };
    let mut pieces: Vec<&Cursor> = cursors.iter().collect();
    pieces.sort_by(|a, b| a.start.cmp(&b.start));
    let mut covered: &[u8] = start;
    for piece in pieces {
        if piece.start.as_ref() != covered {
            return refuse("its pieces leave a gap or overlap");
        }
        if piece.end.is_empty() {
            return if end.is_empty() {
                Ok(())
            } else {
                refuse("it watches past the range")
            };
        }
        covered = piece.end.as_ref();
    }
    if covered == end {
        Ok(())
    } else {
        refuse("its pieces do not reach the range's end")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(start: &'static [u8], end: &'static [u8]) -> Cursor {
        Cursor {
            region: RegionId(7),
            version: 3,
            index: 40,
            event: 1,
            start: Bytes::from_static(start),
            end: Bytes::from_static(end),
        }
    }

    #[test]
    fn records_and_tokens_round_trip_and_refuse_garbage() {
        let record = WatchRecord {
            wall_ms: 99,
            items: vec![
                WatchItem::Put {
                    key: Bytes::from_static(b"a"),
                    value: Bytes::from_static(b"1"),
                },
                WatchItem::Delete {
                    key: Bytes::from_static(b"b"),
                },
                WatchItem::Split {
                    child: RegionId(9),
                    version: 4,
                    key: Bytes::from_static(b"m"),
                },
            ],
        };
        assert_eq!(WatchRecord::decode(&record.encode()).unwrap(), record);
        let mut bad = record.encode().to_vec();
        bad.push(0);
        assert!(WatchRecord::decode(&bad).is_err());
        assert!(WatchRecord::decode(&record.encode()[..5]).is_err());

        let cursors = vec![cursor(b"a", b"m"), cursor(b"m", b"")];
        let token = encode_token(&cursors);
        assert_eq!(decode_token(&token).unwrap(), cursors);
        for garbage in ["", "0", "zz", "01", &token[..token.len() - 2]] {
            let error = decode_token(garbage).unwrap_err().to_string();
            assert!(
                error.contains("watch token is not valid"),
                "{garbage}: {error}"
            );
        }
    }

    #[test]
    fn a_large_entry_is_recorded_in_parts_that_hold_its_changes_in_order() {
        let big = Bytes::from(vec![b'v'; crate::limits::VALUE_BYTES_MAX]);
        let items: Vec<WatchItem> = (0..5)
            .map(|i| WatchItem::Put {
                key: Bytes::from(vec![b'k'; crate::limits::KEY_BYTES_MAX - i]),
                value: big.clone(),
            })
            .chain((0..1000).map(|i| WatchItem::Delete {
                key: Bytes::from(format!("small-{i:04}")),
            }))
            .collect();
        let parts = record_parts(7, &items);
        assert!(parts.len() >= 6, "{} parts", parts.len());
        assert!(parts.iter().all(|part| part.len() <= PART_BYTES_MAX));
        let mut again = Vec::new();
        for part in &parts {
            let record = WatchRecord::decode(part).unwrap();
            assert_eq!(record.wall_ms, 7);
            again.extend(record.items);
        }
        assert_eq!(again, items);
        assert_eq!(record_parts(7, &[]).len(), 1);
        let key = history_key(RegionId(3), 9, 2);
        assert_eq!(index_of(RegionId(3), &key), Some(9));
        assert_eq!(index_of(RegionId(4), &key), None);
    }

    #[test]
    fn interest_starts_renews_and_ends_only_when_no_renewal_came() {
        let (started, since) = apply(WatchOp::Interest, None, 10);
        assert_eq!(since, 10);
        let (renewed, since) = apply(WatchOp::Interest, started, 20);
        assert_eq!(since, 10);
        let renewed = renewed.unwrap();
        assert_eq!(renewed.renewals, 1);
        // An end naming an older count keeps it; the right count ends it.
        assert_eq!(
            apply(WatchOp::End { renewals: 0 }, Some(renewed), 30),
            (Some(renewed), 0)
        );
        assert_eq!(
            apply(WatchOp::End { renewals: 1 }, Some(renewed), 30),
            (None, 1)
        );
        assert_eq!(apply(WatchOp::End { renewals: 1 }, None, 30), (None, 0));
    }

    #[test]
    fn a_split_hands_the_child_its_keys() {
        let key = Bytes::from_static(b"m");
        let whole = cursor(b"c", b"");
        let (parent, child) = whole.split(50, RegionId(9), 5, &key);
        assert_eq!(
            (parent.start.as_ref(), parent.end.as_ref()),
            (&b"c"[..], &b"m"[..])
        );
        assert_eq!((parent.index, parent.event), (50, WHOLE));
        let child = child.unwrap();
        assert_eq!(
            (child.region, child.start.as_ref(), child.end.as_ref()),
            (RegionId(9), &b"m"[..], &b""[..])
        );
        assert_eq!(child.needed(), 51);
        // A cursor left of the split key keeps everything; one right of it moves whole.
        let (left, none) = cursor(b"a", b"k").split(50, RegionId(9), 5, &key);
        assert!(none.is_none() && !left.is_empty());
        let (empty, moved) = cursor(b"p", b"q").split(50, RegionId(9), 5, &key);
        assert!(empty.is_empty());
        // Still a valid range (a cursor travels in tokens and replies).
        assert!(crate::limits::check_range(&empty.start, &empty.end).is_ok());
        assert_eq!(moved.unwrap().start.as_ref(), b"p");
    }

    #[test]
    fn a_token_must_cover_the_range_in_disjoint_pieces() {
        let pieces = vec![cursor(b"m", b""), cursor(b"a", b"m")];
        assert!(check_cover(&pieces, b"a", b"").is_ok());
        assert!(check_cover(&pieces, b"a", b"z").is_err());
        assert!(check_cover(&[cursor(b"a", b"k"), cursor(b"m", b"")], b"a", b"").is_err());
        assert!(check_cover(&[cursor(b"a", b"k")], b"a", b"k").is_ok());
        assert_eq!(prefix_end(b"ab"), Bytes::from_static(b"ac"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert!(prefix_end(b"\xff").is_empty());
        assert!(prefix_end(b"").is_empty());
    }
}
