//! [`KvStateMachine`]: applies [`KvCommand`]s to one region's key range of the store's
//! [`KvEngine`], and saves and loads region snapshots.
//!
//! Every committed batch of entries becomes ONE engine write, carrying the region's
//! applied index (meta key `applied/<region id>`) with the data, so the engine always
//! knows how far it got: after a restart, entries at or below that index are skipped
//! instead of applied twice, and a snapshot older than the engine is not re-imported.
//! Conditional commands see the earlier writes of the same batch through an overlay of
//! pending writes.
//!
//! Owns: deterministic apply (every replica computes the same writes and outputs from the
//! same entries), refusing commands outside the region or that an engine cannot take (an
//! empty key, sizes, range order: [`KvCommand::validate`], run on every decoded entry;
//! defence in depth, the store checks before proposing). A refusal is the same on every
//! replica, so it is answered as an error of that one operation and the entry counts as
//! applied: a log that holds such an entry from an older version (one that let an empty
//! key through, on which fjall panics) heals on upgrade. Must never: write a key outside
//! the region, hand an engine a write it would panic on, crash on an entry that does not
//! decode (it completes with an error), or apply an entry twice.
//!
//! An engine failure (read or write) is not an operating error of one command: replicas
//! would diverge. The batch's proposers hear "outcome unknown", [`KvRegionHandle::failed`]
//! turns true, and the next batch is left unconsumed, which stops the group (flotilla-node
//! has no call for a state machine to stop its group at once; known debt).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use flotilla_node::{ApplyIter, Completion, Configuration, LogIndex, StateMachine, Term};
use flotilla_node::{SnapshotReader, SnapshotWriter};

use crate::command::{KvCommand, KvOutput};
use crate::engine::{in_range, meta_keys, KvEngine, WriteBatch};
use crate::error::KvError;
use crate::ids::RegionId;
use crate::merge::{MergeRecord, MergeState};
use crate::region::Region;
use crate::split::{apply_split, record_key, SplitRecord};

/// Name of the snapshot file holding the encoded [`Region`].
pub const SNAPSHOT_REGION_FILE: &str = "region";
/// Name of the snapshot file holding a frozen merge source's [`MergeState`] (absent when
/// the region is not merging).
pub const SNAPSHOT_MERGE_FILE: &str = "merge";
/// Name of the snapshot file holding the region's data in the
/// [`crate::engine::export`] format.
pub const SNAPSHOT_DATA_FILE: &str = "data";
/// What a region's state machine tells its store, in the order it happened (the store
/// records the region's new epoch, and destroys a peer removed from the region).
#[derive(Clone, Debug)]
pub enum RegionEvent {
    /// A configuration entry committed at `index`: the region's `conf_version` is now at
    /// least `index`.
    Configuration {
        /// The region, with its epoch after the change.
        region: Region,
        /// Index of the configuration entry.
        index: LogIndex,
        /// The configuration.
        configuration: Configuration,
    },
    /// The region split (its state machine applied a [`KvCommand::Split`]): the store
    /// records both ranges, starts the child and deletes the record from the engine.
    Split(SplitRecord),
    /// A snapshot or a merge step made the region newer than this replica had it (its
    /// range smaller after splits the replica passed over, its epoch moved by a merge
    /// step): the store records the region as it is now.
    Adopted(Region),
    /// The region absorbed a merge source (its state machine applied a
    /// [`KvCommand::CommitMerge`]): the store records the wider range, drops the source's
    /// group (never its keys) and deletes the record from the engine.
    Merged(MergeRecord),
    /// This peer started (an entry of its term committed) or stopped leading the region.
    Leader {
        /// The region.
        region: RegionId,
        /// Whether it leads now.
        leading: bool,
    },
}

/// Bytes read from a snapshot file at a time.
const SNAPSHOT_READ_BYTES: u32 = 128 * 1024;

/// The meta key of a region's applied state.
#[must_use]
pub fn applied_key(region: RegionId) -> Bytes {
    let mut key = Vec::with_capacity(meta_keys::APPLIED_PREFIX.len() + 8);
    key.extend_from_slice(meta_keys::APPLIED_PREFIX);
    key.extend_from_slice(&region.0.to_be_bytes());
    Bytes::from(key)
}

fn encode_applied(index: LogIndex, term: Term) -> Bytes {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&index.0.to_le_bytes());
    value.extend_from_slice(&term.0.to_le_bytes());
    Bytes::from(value)
}

/// Reads a region's applied index and term from the engine's meta space (zero if never
/// written).
pub fn read_applied(engine: &dyn KvEngine, region: RegionId) -> Result<(LogIndex, Term), KvError> {
    let Some(value) = engine.meta_get(&applied_key(region))? else {
        return Ok((LogIndex::ZERO, Term::ZERO));
    };
    if value.len() != 16 {
        return Err(KvError::Corrupt(format!(
            "applied state of region {region} is {} bytes, expected 16",
            value.len()
        )));
    }
    let mut index = [0u8; 8];
    let mut term = [0u8; 8];
    index.copy_from_slice(&value[..8]);
    term.copy_from_slice(&value[8..]);
    Ok((
        LogIndex(u64::from_le_bytes(index)),
        Term(u64::from_le_bytes(term)),
    ))
}

/// Prefix of a completion's error text when the outcome is unknown (the engine failed
/// while applying the batch: the entry is committed, the other replicas apply it).
pub const UNKNOWN_OUTCOME_PREFIX: &str = "outcome unknown: ";

/// The error a proposer should report for the text a [`KvStateMachine`] completed its
/// entry with: [`KvError::Unknown`] after an engine failure (the entry committed and
/// applies elsewhere, so it is not "failed"), [`KvError::Refused`] for a command it
/// refused (nothing of it applied).
#[must_use]
pub fn completion_error(text: String) -> KvError {
    match text.strip_prefix(UNKNOWN_OUTCOME_PREFIX) {
        Some(why) => KvError::Unknown(why.to_string()),
        // A command whose key left the region between admission and apply (a split
        // applied before it): it changed nothing, and keeps the kind a client routes again
        // on (the text is `KvError::KeyOutOfRegion`'s; a test checks they match).
        None if key_left_region(&text) => KvError::Node {
            kind: "KeyOutOfRegion".into(),
            message: text,
        },
        None if text.starts_with(crate::lock::NOT_OWNER_PREFIX) => KvError::Node {
            kind: crate::lock::NOT_OWNER_KIND.into(),
            message: text,
        },
        None if text.starts_with(crate::fence::FENCED_PREFIX) => KvError::Node {
            kind: crate::fence::FENCED_KIND.into(),
            message: text,
        },
        None if text.starts_with(crate::lease::NOT_FOUND_PREFIX) => KvError::Node {
            kind: crate::lease::NOT_FOUND_KIND.into(),
            message: text,
        },
        // A data command in a frozen source's log after its PrepareMerge.
        None if text.starts_with("region ") && text.contains(" is merging into region ") => {
            KvError::Node {
                kind: MERGING_KIND.into(),
                message: text,
            }
        }
        None => KvError::Refused(text),
    }
}

/// Whether a refusal's text is that of [`KvError::KeyOutOfRegion`].
fn key_left_region(text: &str) -> bool {
    text.starts_with("key ") && text.contains(" is outside region ")
}

/// A configuration as a region keeps it between changes: its peers in short lists. A
/// [`Configuration`]'s sets and maps cost several times as much, for every region a store
/// hosts; priorities are not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The voters.
    pub voters: Vec<flotilla_node::PeerId>,
    /// The learners.
    pub learners: Vec<flotilla_node::PeerId>,
    /// The outgoing voters while the configuration is joint.
    pub old_voters: Option<Vec<flotilla_node::PeerId>>,
}

impl Members {
    /// The peers of `configuration`.
    #[must_use]
    pub fn of(configuration: &Configuration) -> Members {
        Members {
            voters: configuration.voters.iter().cloned().collect(),
            learners: configuration.learners.iter().cloned().collect(),
            old_voters: configuration
                .old_voters
                .as_ref()
                .map(|old| old.iter().cloned().collect()),
        }
    }

    /// Back to a configuration (without priorities).
    #[must_use]
    pub fn configuration(&self) -> Configuration {
        let mut configuration = Configuration::new(self.voters.iter().cloned());
        configuration.learners = self.learners.iter().cloned().collect();
        configuration.old_voters = self
            .old_voters
            .as_ref()
            .map(|old| old.iter().cloned().collect());
        configuration
    }
}

/// What the store can observe of a region's state machine once the state machine itself
/// was handed to the node runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KvRegionHandle {
    region: Arc<RwLock<Region>>,
    /// The last configuration known committed, with the index of its entry.
    committed: Arc<RwLock<Option<(LogIndex, Members)>>>,
    applied_index: Arc<AtomicU64>,
    applied_term: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    /// The merge this region is frozen for, as its source.
    merging: Arc<RwLock<Option<MergeState>>>,
    /// Lock clocks as applied here (`crate::lock::LockClocks`).
    clocks: Arc<crate::lock::LockClocks>,
    /// Lease clocks as applied here, by route key (`crate::lease`).
    lease_clocks: Arc<crate::lock::LockClocks>,
    /// Whether keys of the region may follow leases (false: none does, and writes and
    /// reads skip the marks).
    leases: Arc<AtomicBool>,
    /// The region's watch interest, renewals and live broadcast (`crate::watch`).
    watch: Arc<crate::watch::WatchHub>,
}

/// Whether any key of `region` follows a lease (a mark in the engine).
fn marks_in(engine: &dyn KvEngine, region: &Region) -> bool {
    let from = crate::lease::mark_key(&region.start);
    let to = if region.end.is_empty() {
        let mut past = crate::engine::meta_keys::LEASE_KEY_PREFIX.to_vec();
        if let Some(last) = past.last_mut() {
            *last += 1;
        }
        Bytes::from(past)
    } else {
        crate::lease::mark_key(&region.end)
    };
    // A failed read counts as "maybe": the marks are then looked at.
    engine
        .meta_scan(&from, &to, 1)
        .map_or(true, |page| !page.is_empty())
}

impl KvRegionHandle {
    /// The region's watch state on this replica.
    #[must_use]
    pub fn watch(&self) -> &Arc<crate::watch::WatchHub> {
        &self.watch
    }

    /// The time a leader stamps on an entry of the lease with route key `route`.
    #[must_use]
    pub fn lease_stamp(&self, route: &[u8]) -> u64 {
        self.lease_clocks.stamp(route)
    }

    /// Whether keys of the region may follow leases.
    #[must_use]
    pub fn may_have_lease_keys(&self) -> bool {
        self.leases.load(Ordering::Acquire)
    }

    /// The time a leader stamps on an entry of lock `name` (`crate::lock::LockClocks`).
    #[must_use]
    pub fn lock_stamp(&self, name: &[u8]) -> u64 {
        self.clocks.stamp(name)
    }

    /// The region as the state machine knows it (a snapshot may have replaced it).
    #[must_use]
    pub fn region(&self) -> Region {
        self.region
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last configuration this replica knows committed, with the index of its entry
    /// (`None` until it heard of one since it started: a region never changed since
    /// bootstrap, or one whose history came in a snapshot).
    #[must_use]
    pub fn committed_configuration(&self) -> Option<(LogIndex, Configuration)> {
        self.committed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(index, members)| (*index, members.configuration()))
    }

    /// Index of the last entry whose effect is in the engine.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied_index.load(Ordering::Acquire))
    }

    /// Term of that entry.
    #[must_use]
    pub fn applied_term(&self) -> Term {
        Term(self.applied_term.load(Ordering::Acquire))
    }

    /// The merge this region is frozen for, as its source (`None`: not merging). A frozen
    /// region serves no reads and takes no writes: its keys are about to be the target's.
    #[must_use]
    pub fn merging(&self) -> Option<MergeState> {
        self.merging
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the engine failed under this region: its data may lag the log, so it must
    /// not serve reads.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The replicated state machine of one region (RheaKV's `KVStoreStateMachine`).
pub struct KvStateMachine {
    engine: Arc<dyn KvEngine>,
    handle: KvRegionHandle,
    /// The engine's applied index for this region, read at the first callback.
    engine_applied: Option<LogIndex>,
    /// Why the engine failed; every later batch is refused (left unconsumed).
    failure: Option<String>,
    /// Where [`RegionEvent`]s go (the store), if anywhere.
    events: Option<tokio::sync::mpsc::UnboundedSender<RegionEvent>>,
    /// The configuration in force at the applied index (`on_configuration_applied`).
    configuration: Option<Members>,
}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine")
            .field("region", &self.handle.region())
            .field("engine_applied", &self.engine_applied)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// The state machine of `region` over the store's `engine`.
    #[must_use]
    pub fn new(region: Region, engine: Arc<dyn KvEngine>) -> KvStateMachine {
        let leases = marks_in(engine.as_ref(), &region);
        KvStateMachine {
            engine,
            handle: KvRegionHandle {
                region: Arc::new(RwLock::new(region)),
                committed: Arc::new(RwLock::new(None)),
                applied_index: Arc::new(AtomicU64::new(0)),
                applied_term: Arc::new(AtomicU64::new(0)),
                failed: Arc::new(AtomicBool::new(false)),
                merging: Arc::new(RwLock::new(None)),
                clocks: Arc::default(),
                lease_clocks: Arc::default(),
                leases: Arc::new(AtomicBool::new(leases)),
                watch: Arc::default(),
            },
            engine_applied: None,
            failure: None,
            events: None,
            configuration: None,
        }
    }

    /// Keeps lock and lease clocks in `locks` and `leases`: the store's, shared by all its
    /// regions, so that a lock's or a lease's time carries over a split or a merge (its
    /// name or route key is in one region at a time; the region that holds it next on
    /// this store goes on from what this store saw).
    #[must_use]
    pub fn with_clocks(
        mut self,
        locks: Arc<crate::lock::LockClocks>,
        leases: Arc<crate::lock::LockClocks>,
    ) -> KvStateMachine {
        self.handle.clocks = locks;
        self.handle.lease_clocks = leases;
        self
    }

    /// Sends this region's [`RegionEvent`]s to `events`.
    #[must_use]
    pub fn with_events(
        mut self,
        events: tokio::sync::mpsc::UnboundedSender<RegionEvent>,
    ) -> KvStateMachine {
        self.events = Some(events);
        self
    }

    /// The region as the state machine knows it.
    #[must_use]
    pub fn region(&self) -> Region {
        self.handle.region()
    }

    /// A handle the store keeps to observe the region after handing the state machine to
    /// the node runtime.
    #[must_use]
    pub fn handle(&self) -> KvRegionHandle {
        self.handle.clone()
    }

    /// The engine's applied index for this region (read once, then tracked).
    fn engine_applied(&mut self) -> Result<LogIndex, KvError> {
        if let Some(index) = self.engine_applied {
            return Ok(index);
        }
        let region = self.handle.region().id;
        let (index, term) = read_applied(self.engine.as_ref(), region)?;
        self.restore_merge_steps()?;
        // Interest outlives a restart by the retention from now (its last renewal here is
        // not known).
        let interest = crate::watch::read_interest(self.engine.as_ref(), region)?;
        self.handle.watch.set_interest(interest, true);
        self.set_applied(index, term);
        Ok(index)
    }

    /// Reads, before anything applies, what the engine keeps of this region's merge steps
    /// (they move its epoch without a configuration entry or a split record, and a restart
    /// skips entries the engine holds): a newer version recorded under `region/`, and the
    /// merge it is frozen for under `merge/`. Done by [`KvStateMachine::restore`] or at the
    /// first callback.
    fn restore_merge_steps(&mut self) -> Result<(), KvError> {
        let id = self.handle.region().id;
        if let Some(data) = self.engine.meta_get(&crate::merge::region_key(id))? {
            let recorded = Region::decode(&data).map_err(|e| {
                KvError::Corrupt(format!("region {id} as a merge step left it: {e}"))
            })?;
            let current = self.handle.region();
            if recorded.id == id && recorded.epoch.version > current.epoch.version {
                let mut region = recorded;
                region.epoch.conf_version =
                    region.epoch.conf_version.max(current.epoch.conf_version);
                self.set_region(region.clone());
                self.send(RegionEvent::Adopted(region));
            }
        }
        let state = match self.engine.meta_get(&crate::merge::state_key(id))? {
            Some(data) => Some(MergeState::decode(&data)?),
            None => None,
        };
        self.set_merging(state);
        Ok(())
    }

    /// Reads what the engine holds of this region before the runtime starts it (its
    /// applied index, and the region as merge steps left it), so the store serves the
    /// region as it is from the start.
    pub fn restore(&mut self) -> Result<(), KvError> {
        self.engine_applied().map(|_| ())
    }

    fn set_region(&self, region: Region) {
        *self
            .handle
            .region
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = region;
    }

    fn set_merging(&self, state: Option<MergeState>) {
        *self
            .handle
            .merging
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    fn send(&self, event: RegionEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn set_applied(&mut self, index: LogIndex, term: Term) {
        self.engine_applied = Some(index);
        self.handle.applied_term.store(term.0, Ordering::Release);
        self.handle.applied_index.store(index.0, Ordering::Release);
    }

    fn fail(&mut self, why: String) {
        tracing::error!(region = %self.handle.region().id, error = %why, "KV engine failed; the region stops");
        self.handle.failed.store(true, Ordering::Release);
        self.failure = Some(why);
    }
}

/// Writes pending in the batch being applied, read through by later commands of it.
struct Overlay<'a> {
    engine: &'a dyn KvEngine,
    /// Latest state of each key written: `None` = deleted.
    points: BTreeMap<Bytes, Option<Bytes>>,
    /// Ranges deleted; a key in one and not in `points` is absent.
    ranges: Vec<(Bytes, Bytes)>,
    /// Meta keys written (sequences, locks): `None` = deleted.
    meta: BTreeMap<Bytes, Option<Bytes>>,
    /// Where lock clocks applied here are remembered (the leader's stamps continue from
    /// them).
    clocks: Option<&'a crate::lock::LockClocks>,
    /// The same for lease clocks.
    lease_clocks: Option<&'a crate::lock::LockClocks>,
    /// Whether keys may follow leases: writes then drop their marks.
    leases: bool,
    /// The region's fence records in the engine (read once, when first needed), and those
    /// this overlay added and dropped.
    fences_stored: Option<usize>,
    fences_added: usize,
    fences_dropped: usize,
    /// The changes of the entry being applied, while the region is watched
    /// (`crate::watch`): `None` records nothing.
    watch: Option<Vec<crate::watch::WatchItem>>,
}

impl<'a> Overlay<'a> {
    fn new(engine: &'a dyn KvEngine) -> Overlay<'a> {
        Overlay {
            engine,
            points: BTreeMap::new(),
            ranges: Vec::new(),
            meta: BTreeMap::new(),
            clocks: None,
            lease_clocks: None,
            leases: false,
            fences_stored: None,
            fences_added: 0,
            fences_dropped: 0,
            watch: None,
        }
    }

    /// Fence records `region` holds, counting those this overlay added.
    fn fence_count(&mut self, region: crate::ids::RegionId) -> Result<usize, KvError> {
        let stored = match self.fences_stored {
            Some(stored) => stored,
            None => {
                let stored = crate::fence::records(self.engine, region)?.len();
                self.fences_stored = Some(stored);
                stored
            }
        };
        Ok((stored + self.fences_added).saturating_sub(self.fences_dropped))
    }

    /// The region's fence floor as this overlay sees it.
    fn fence_floor(&self, region: crate::ids::RegionId) -> Result<u64, KvError> {
        self.meta_get(&crate::fence::floor_key(region))?
            .map_or(Ok(0), |value| crate::fence::decode(&value))
    }

    /// Makes room for one more fence record in `region` (`crate::fence`): drops the
    /// record with the least token and raises the floor to it.
    fn drop_oldest_fence(&mut self, region: crate::ids::RegionId) -> Result<(), KvError> {
        let mut table: BTreeMap<Bytes, u64> = crate::fence::records(self.engine, region)?
            .into_iter()
            .collect();
        // What this overlay wrote over the engine's records.
        let floor_key = crate::fence::floor_key(region);
        for (key, state) in self.meta.range(floor_key.clone()..) {
            if !key.starts_with(&floor_key) {
                break;
            }
            let lock = key.slice(floor_key.len()..);
            if lock.is_empty() {
                continue;
            }
            match state {
                Some(value) => table.insert(lock, crate::fence::decode(value)?),
                None => table.remove(&lock),
            };
        }
        let keep = crate::fence::FENCES_PER_REGION_MAX.saturating_sub(1);
        let (dropped, floor) =
            crate::fence::drop_oldest(&mut table, keep, self.fence_floor(region)?);
        self.fences_dropped += dropped.len();
        for lock in dropped {
            self.meta_delete(crate::fence::record_key(region, &lock));
        }
        self.meta_put(floor_key, crate::fence::encode(floor));
        Ok(())
    }

    fn with_clocks(mut self, clocks: &'a crate::lock::LockClocks) -> Overlay<'a> {
        self.clocks = Some(clocks);
        self
    }

    fn with_leases(mut self, clocks: &'a crate::lock::LockClocks, leases: bool) -> Overlay<'a> {
        self.lease_clocks = Some(clocks);
        self.leases = leases;
        self
    }

    /// Drops the lease marks of the keys in `[start, end)` (a write without a lease
    /// detaches a key, as in etcd).
    fn drop_marks(&mut self, start: &[u8], end: &[u8]) -> Result<(), KvError> {
        let from = crate::lease::mark_key(start);
        let to = if end.is_empty() {
            let mut past = crate::engine::meta_keys::LEASE_KEY_PREFIX.to_vec();
            if let Some(last) = past.last_mut() {
                *last += 1;
            }
            Bytes::from(past)
        } else {
            crate::lease::mark_key(end)
        };
        let mut doomed: Vec<Bytes> = self
            .meta
            .range(from.clone()..to.clone())
            .map(|(key, _)| key.clone())
            .collect();
        let mut cursor = from;
        loop {
            let page = self.engine.meta_scan(&cursor, &to, 1024)?;
            let full = page.len() == 1024;
            if let Some((last, _)) = page.last() {
                let mut next = last.to_vec();
                next.push(0);
                cursor = Bytes::from(next);
            }
            doomed.extend(page.into_iter().map(|(key, _)| key));
            if !full {
                break;
            }
        }
        for key in doomed {
            self.meta_delete(key);
        }
        Ok(())
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        match self.meta.get(key) {
            Some(state) => Ok(state.clone()),
            None => self.engine.meta_get(key),
        }
    }

    fn meta_put(&mut self, key: Bytes, value: Bytes) {
        self.meta.insert(key, Some(value));
    }

    fn meta_delete(&mut self, key: Bytes) {
        self.meta.insert(key, None);
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        if let Some(state) = self.points.get(key) {
            return Ok(state.clone());
        }
        if self.ranges.iter().any(|(s, e)| in_range(key, s, e)) {
            return Ok(None);
        }
        self.engine.get(key)
    }

    fn put(&mut self, key: Bytes, value: Bytes) {
        if self.leases {
            self.meta_delete(crate::lease::mark_key(&key));
        }
        if let Some(items) = &mut self.watch {
            items.push(crate::watch::WatchItem::Put {
                key: key.clone(),
                value: value.clone(),
            });
        }
        self.points.insert(key, Some(value));
    }

    fn delete(&mut self, key: Bytes) -> Result<(), KvError> {
        if self.leases {
            self.meta_delete(crate::lease::mark_key(&key));
        }
        // A watcher hears of a key that existed going away only.
        if self.watch.is_some() && self.get(&key)?.is_some() {
            if let Some(items) = &mut self.watch {
                items.push(crate::watch::WatchItem::Delete { key: key.clone() });
            }
        }
        self.points.insert(key, None);
        Ok(())
    }

    /// The keys present in `[start, end)` as this overlay sees them (a watched
    /// delete-range's events).
    fn present_keys(&self, start: &Bytes, end: &Bytes) -> Result<Vec<Bytes>, KvError> {
        const PAGE: usize = 1024;
        let mut present: BTreeMap<Bytes, ()> = BTreeMap::new();
        let mut cursor = start.clone();
        loop {
            let (page, _) = self
                .engine
                .scan_keys(&cursor, end, PAGE, false, usize::MAX)?;
            let full = page.len() == PAGE;
            if let Some(last) = page.last() {
                let mut next = last.to_vec();
                next.push(0);
                cursor = Bytes::from(next);
            }
            for key in page {
                present.insert(key, ());
            }
            if !full {
                break;
            }
        }
        for (key, state) in self
            .points
            .range::<[u8], _>(crate::engine::bounds(start, end))
        {
            if state.is_some() {
                present.insert(key.clone(), ());
            }
        }
        let mut keys = Vec::with_capacity(present.len());
        for key in present.into_keys() {
            if self.get(&key)?.is_some() {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn delete_range(&mut self, start: Bytes, end: Bytes) -> Result<(), KvError> {
        if self.leases {
            self.drop_marks(&start, &end)?;
        }
        if self.watch.is_some() {
            let gone = self.present_keys(&start, &end)?;
            if let Some(items) = &mut self.watch {
                items.extend(
                    gone.into_iter()
                        .map(|key| crate::watch::WatchItem::Delete { key }),
                );
            }
        }
        for (_, state) in self
            .points
            .range_mut::<[u8], _>(crate::engine::bounds(&start, &end))
        {
            *state = None;
        }
        self.ranges.push((start, end));
        Ok(())
    }

    /// The engine batch: ranges first, then each key's final state (a put after a range
    /// delete covering it survives).
    fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for (start, end) in self.ranges {
            batch.delete_range(start, end);
        }
        for (key, state) in self.points {
            match state {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        for (key, state) in self.meta {
            match state {
                Some(value) => batch.meta_put(key, value),
                None => batch.meta_delete(key),
            }
        }
        batch
    }
}

/// What a batch being applied does for watchers (`crate::watch`).
struct WatchApply {
    /// The interest as of the entry being applied.
    interest: Option<crate::watch::Interest>,
    /// Whether an interest entry applied since the last write.
    renewed: bool,
    /// The entries recorded since the last write, to go live once written.
    live: Vec<crate::watch::WatchEntry>,
}

/// This replica's wall clock in ms since the Unix epoch (0 if unreadable).
fn wall_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl WatchApply {
    /// For a batch applied with the interest `hub` holds.
    fn new(hub: &crate::watch::WatchHub) -> WatchApply {
        WatchApply {
            interest: hub.interest(),
            renewed: false,
            live: Vec::new(),
        }
    }

    /// Applies a data or watch entry (`region` frozen for a merge or not, at `index`) to
    /// the overlay, recording its changes while the region is watched. The outer error is
    /// an engine failure, the inner one a refusal.
    fn apply_entry(
        &mut self,
        command: &KvCommand,
        (region, frozen, index): (&Region, Option<&MergeState>, u64),
        overlay: &mut Overlay<'_>,
    ) -> Result<Result<KvOutput, KvError>, KvError> {
        if let KvCommand::Watch(op) = command {
            return Ok(match frozen {
                Some(state) => Err(merging_refusal(region, state)),
                None => Ok(self.apply(*op, region.id, index, overlay)),
            });
        }
        if self.interest.is_some() {
            overlay.watch = Some(Vec::new());
        }
        let result = apply_command(command, region, frozen, overlay)?;
        if let Some(items) = overlay.watch.take() {
            self.record(region.id, index, items, overlay);
        }
        Ok(result)
    }

    /// Applies a watch entry: the interest it leaves goes into the overlay.
    fn apply(
        &mut self,
        op: crate::watch::WatchOp,
        region: RegionId,
        index: u64,
        overlay: &mut Overlay<'_>,
    ) -> KvOutput {
        let (next, value) = crate::watch::apply(op, self.interest, index);
        if next != self.interest {
            match next {
                Some(interest) => {
                    overlay.meta_put(crate::watch::interest_key(region), interest.encode());
                }
                None => overlay.meta_delete(crate::watch::interest_key(region)),
            }
        }
        self.interest = next;
        match op {
            crate::watch::WatchOp::Interest => {
                self.renewed = true;
                KvOutput::Counter(value)
            }
            crate::watch::WatchOp::End { .. } => KvOutput::Swapped(value == 1),
        }
    }

    /// Records entry `index`'s changes (if any) in the overlay and for the live watchers.
    fn record(
        &mut self,
        region: RegionId,
        index: u64,
        items: Vec<crate::watch::WatchItem>,
        overlay: &mut Overlay<'_>,
    ) {
        if items.is_empty() {
            return;
        }
        if let Some(interest) = &mut self.interest {
            interest.last = index;
            overlay.meta_put(crate::watch::interest_key(region), interest.encode());
        }
        let parts = crate::watch::record_parts(wall_now_ms(), &items);
        for (part, value) in (0u32..).zip(parts) {
            overlay.meta_put(crate::watch::history_key(region, index, part), value);
        }
        self.live.push(crate::watch::WatchEntry {
            index,
            items: Arc::new(items),
        });
    }

    /// What a split or a merge's commit adds for watchers: a watched parent records the
    /// split and gives the child its interest; a target records where the source's keys
    /// went and takes the source's interest.
    fn admin_writes(
        &mut self,
        outcome: &AdminOutcome,
        engine: &dyn KvEngine,
        region: RegionId,
        index: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), KvError> {
        match outcome {
            AdminOutcome::Split(record) if self.interest.is_some() => {
                let items = vec![crate::watch::WatchItem::Split {
                    child: record.child.id,
                    version: record.child.epoch.version,
                    key: record.child.start.clone(),
                }];
                let entry = crate::watch::WatchRecord {
                    wall_ms: wall_now_ms(),
                    items,
                };
                batch.meta_put(crate::watch::history_key(region, index, 0), entry.encode());
                // The split is a change a merge's handover must not pass over.
                if let Some(interest) = &mut self.interest {
                    interest.last = index;
                    batch.meta_put(crate::watch::interest_key(region), interest.encode());
                }
                let child = crate::watch::Interest::starting(index);
                batch.meta_put(crate::watch::interest_key(record.child.id), child.encode());
                self.live.push(crate::watch::WatchEntry {
                    index,
                    items: Arc::new(entry.items),
                });
            }
            AdminOutcome::Commit(record) => {
                // The frozen source's interest as its log left it (this store holds the
                // source frozen at this very merge: checked before the commit applies).
                let source = crate::watch::read_interest(engine, record.source.id)?;
                let merged = crate::watch::Merged {
                    target: region,
                    commit: index,
                    last: source.map_or(u64::MAX, |interest| interest.last),
                };
                batch.meta_put(crate::watch::merged_key(record.source.id), merged.encode());
                if self.interest.is_none() && source.is_some() {
                    let taken = crate::watch::Interest::starting(index);
                    batch.meta_put(crate::watch::interest_key(region), taken.encode());
                    self.interest = Some(taken);
                    self.renewed = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch was written: the interest and the entries are the replica's.
    fn written(&mut self, hub: &crate::watch::WatchHub) {
        hub.set_interest(self.interest, std::mem::take(&mut self.renewed));
        hub.publish(self.live.drain(..));
    }
}

/// Applies one command to the overlay. The outer error is an engine failure (fatal for the
/// region), the inner one a refusal of this command (which then changed nothing).
fn apply_command(
    command: &KvCommand,
    region: &Region,
    frozen: Option<&MergeState>,
    overlay: &mut Overlay<'_>,
) -> Result<Result<KvOutput, KvError>, KvError> {
    if let KvCommand::Batch(commands) = command {
        let mut results = Vec::with_capacity(commands.len());
        for element in commands {
            let result = apply_command(element, region, frozen, overlay)?;
            results.push(result.map_err(|e| e.to_string()));
        }
        return Ok(Ok(KvOutput::Batch(results)));
    }
    // Refusals first, before any write: a refused command changes nothing. A frozen merge
    // source takes no write after its PrepareMerge, alike on every replica.
    if let Some(state) = frozen {
        return Ok(Err(merging_refusal(region, state)));
    }
    if let Err(refusal) = command
        .validate()
        .and_then(|()| command.check_region(region))
    {
        return Ok(Err(refusal));
    }
    let output = match command.clone() {
        KvCommand::Put { key, value } => {
            overlay.put(key, value);
            KvOutput::Done
        }
        KvCommand::Delete { key } => {
            overlay.delete(key)?;
            KvOutput::Done
        }
        KvCommand::DeleteRange { start, end } => {
            // An unbounded end stops at the region's end: the engine is shared.
            let end = if end.is_empty() {
                region.end.clone()
            } else {
                end
            };
            overlay.delete_range(start, end)?;
            KvOutput::Done
        }
        KvCommand::CompareAndPut {
            key,
            expected,
            value,
        } => {
            let swapped = overlay.get(&key)? == expected;
            if swapped {
                overlay.put(key, value);
            }
            KvOutput::Swapped(swapped)
        }
        KvCommand::PutIfAbsent { key, value } => {
            let previous = overlay.get(&key)?;
            if previous.is_none() {
                overlay.put(key, value);
            }
            KvOutput::Previous(previous)
        }
        KvCommand::GetAndPut { key, value } => {
            let previous = overlay.get(&key)?;
            overlay.put(key, value);
            KvOutput::Previous(previous)
        }
        KvCommand::BatchPut(pairs) => {
            for (key, value) in pairs {
                overlay.put(key, value);
            }
            KvOutput::Done
        }
        KvCommand::BatchDelete(keys) => {
            for key in keys {
                overlay.delete(key)?;
            }
            KvOutput::Done
        }
        KvCommand::SequenceNext { key, step } => {
            let record = crate::sequence::record_key(&key);
            let start = match crate::sequence::decode(&key, overlay.meta_get(&record)?.as_deref()) {
                Ok(start) => start,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let Some(end) = start.checked_add(step) else {
                return Ok(Err(KvError::Refused(format!(
                    "sequence {} is at {start}: a step of {step} would pass 2^64 - 1",
                    crate::error::show(&key)
                ))));
            };
            overlay.meta_put(record, Bytes::copy_from_slice(&end.to_be_bytes()));
            KvOutput::Range { start, end }
        }
        KvCommand::SequenceLatest { key } => {
            let record = crate::sequence::record_key(&key);
            match crate::sequence::decode(&key, overlay.meta_get(&record)?.as_deref()) {
                Ok(next) => KvOutput::Counter(next),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        KvCommand::SequenceReset { key } => {
            overlay.meta_delete(crate::sequence::record_key(&key));
            KvOutput::Done
        }
        KvCommand::Fenced {
            lock,
            token,
            command,
        } => return apply_fenced(&lock, token, &command, region, frozen, overlay),
        KvCommand::Lock {
            name,
            op,
            now_ms,
            wall_ms,
        } => match apply_lock(name, &op, (now_ms, wall_ms), overlay)? {
            Ok(state) => KvOutput::Lock(state),
            Err(refusal) => return Ok(Err(refusal)),
        },
        KvCommand::Lease { key, op, now_ms } => match apply_lease(key, &op, now_ms, overlay)? {
            Ok(state) => KvOutput::Lease(state),
            Err(refusal) => return Ok(Err(refusal)),
        },
        leased @ (KvCommand::Leased { .. } | KvCommand::LeaseDelete { .. }) => {
            return apply_lease_data(leased, overlay)
        }
        KvCommand::Batch(_) => unreachable!("handled above"),
        // `on_apply` applies admin entries itself; one anywhere else (in a batch) was
        // refused by `validate` above.
        KvCommand::Split { .. }
        | KvCommand::PrepareMerge { .. }
        | KvCommand::CommitMerge(_)
        | KvCommand::FenceMerge { .. }
        | KvCommand::RollbackMerge { .. }
        | KvCommand::Watch(_) => {
            return Ok(Err(KvError::Refused(
                "a split, merge step or watch entry applies only as an entry of its own".into(),
            )))
        }
    };
    Ok(Ok(output))
}

/// A fenced data write (`crate::fence`): refused for a token older than one the region
/// accepted for the lock; otherwise the write, and the token recorded if it applied.
fn apply_fenced(
    lock: &Bytes,
    token: u64,
    command: &KvCommand,
    region: &Region,
    frozen: Option<&MergeState>,
    overlay: &mut Overlay<'_>,
) -> Result<Result<KvOutput, KvError>, KvError> {
    let record = crate::fence::record_key(region.id, lock);
    let accepted = match overlay.meta_get(&record)? {
        Some(value) => match crate::fence::decode(&value) {
            Ok(accepted) => Some(accepted),
            Err(refusal) => return Ok(Err(refusal)),
        },
        None => None,
    };
    if let Some(accepted) = accepted {
        if token < accepted {
            return Ok(Err(crate::fence::fenced(region.id, lock, token, accepted)));
        }
    } else {
        let floor = overlay.fence_floor(region.id)?;
        if token < floor {
            return Ok(Err(crate::fence::below_floor(
                region.id, lock, token, floor,
            )));
        }
    }
    let result = apply_command(command, region, frozen, overlay)?;
    if result.is_ok() && accepted.is_none_or(|a| token > a) {
        if accepted.is_none() {
            // A full table drops its oldest record for the new one (only once the write
            // applied: a refused write changes nothing).
            if overlay.fence_count(region.id)? >= crate::fence::FENCES_PER_REGION_MAX {
                overlay.drop_oldest_fence(region.id)?;
            }
            overlay.fences_added += 1;
        }
        overlay.meta_put(record, crate::fence::encode(token));
    }
    Ok(result)
}

/// A lock operation (`crate::lock::apply`) on the record the overlay holds.
fn apply_lock(
    name: Bytes,
    op: &crate::lock::LockOp,
    (now_ms, wall_ms): (u64, u64),
    overlay: &mut Overlay<'_>,
) -> Result<Result<crate::lock::LockState, KvError>, KvError> {
    let record_key = crate::lock::record_key(&name);
    let record = match overlay
        .meta_get(&record_key)?
        .map(|bytes| crate::lock::LockRecord::decode(&bytes))
        .transpose()
    {
        Ok(record) => record,
        Err(refusal) => return Ok(Err(refusal)),
    };
    match crate::lock::apply(&name, op, now_ms, wall_ms, record) {
        Ok((kept, state)) => {
            if let Some(kept) = kept {
                if let Some(clocks) = overlay.clocks {
                    clocks.applied(name.clone(), kept.clock_ms);
                }
                overlay.meta_put(record_key, kept.encode());
            }
            Ok(Ok(state))
        }
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// A put following a lease (the key marked), or a lease's delete of a key that still
/// follows it.
fn apply_lease_data(
    command: KvCommand,
    overlay: &mut Overlay<'_>,
) -> Result<Result<KvOutput, KvError>, KvError> {
    match command {
        KvCommand::Leased { lease, command } => {
            let KvCommand::Put { key, value } = *command else {
                return Ok(Err(KvError::Refused(
                    "only a put may follow a lease".into(),
                )));
            };
            overlay.put(key.clone(), value);
            overlay.leases = true;
            overlay.meta_put(
                crate::lease::mark_key(&key),
                Bytes::copy_from_slice(&lease.to_be_bytes()),
            );
            Ok(Ok(KvOutput::Done))
        }
        KvCommand::LeaseDelete { key, lease } => {
            let mark = overlay.meta_get(&crate::lease::mark_key(&key))?;
            let follows = match mark.as_deref().map(crate::lease::decode_mark) {
                Some(Ok(id)) => id == lease,
                Some(Err(refusal)) => return Ok(Err(refusal)),
                None => false,
            };
            if follows {
                overlay.delete(key)?;
            }
            Ok(Ok(KvOutput::Swapped(follows)))
        }
        _ => Ok(Err(KvError::Refused("not a lease write".into()))),
    }
}

/// A lease operation (`crate::lease::apply`) on the record the overlay holds.
fn apply_lease(
    route: Bytes,
    op: &crate::lease::LeaseOp,
    now_ms: u64,
    overlay: &mut Overlay<'_>,
) -> Result<Result<crate::lease::LeaseState, KvError>, KvError> {
    let id = crate::lease::id_of(&route);
    let record_key = crate::lease::record_key(id);
    let record = match overlay
        .meta_get(&record_key)?
        .map(|bytes| crate::lease::LeaseRecord::decode(&bytes))
        .transpose()
    {
        Ok(record) => record,
        Err(refusal) => return Ok(Err(refusal)),
    };
    match crate::lease::apply(id, op, now_ms, record) {
        Ok((change, state)) => {
            match change {
                crate::lease::Change::Unchanged => {}
                crate::lease::Change::Keep(kept) => {
                    if let Some(clocks) = overlay.lease_clocks {
                        clocks.applied(route, kept.clock_ms);
                    }
                    overlay.meta_put(record_key, kept.encode());
                }
                crate::lease::Change::Drop => overlay.meta_delete(record_key),
            }
            Ok(Ok(state))
        }
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// The refusal of a data command or read on a frozen merge source: nothing changed, and a
/// client routes it again (its keys are the target's once the merge commits, or the
/// source's again if it rolls back).
#[must_use]
pub fn merging_refusal(region: &Region, state: &MergeState) -> KvError {
    KvError::Node {
        kind: MERGING_KIND.into(),
        message: format!(
            "region {} is merging into region {}: retry once the merge ends",
            region.id, state.target.id
        ),
    }
}

/// The error kind of [`merging_refusal`].
pub const MERGING_KIND: &str = "RegionMerging";

/// What an admin entry does when it applies.
enum AdminOutcome {
    Split(SplitRecord),
    Prepare(MergeState),
    Commit(MergeRecord),
    Fence(Option<Region>),
    Rollback(Region),
}

/// The outcome of admin entry `command` on `region` (frozen for `merging`, with
/// `configuration` in force) at (`index`, `term`), or why it is refused. Pure.
fn admin_outcome(
    command: &KvCommand,
    region: &Region,
    merging: Option<&MergeState>,
    configuration: Option<&Configuration>,
    index: LogIndex,
    term: Term,
) -> Result<AdminOutcome, KvError> {
    let frozen = |what: &str| match merging {
        Some(state) => Err(KvError::Refused(format!(
            "{what} of {region}: it is frozen, merging into region {}",
            state.target.id
        ))),
        None => Ok(()),
    };
    match command {
        KvCommand::Split {
            key,
            child,
            version,
        } => {
            frozen("split")?;
            apply_split(region, configuration, key, *child, *version, index, term)
                .map(AdminOutcome::Split)
        }
        KvCommand::PrepareMerge { target, version } => {
            frozen("merge")?;
            crate::merge::apply_prepare(region, configuration, target, *version, index)
                .map(AdminOutcome::Prepare)
        }
        KvCommand::CommitMerge(state) => {
            frozen("merge into")?;
            crate::merge::apply_commit(region, configuration, state, index, term)
                .map(AdminOutcome::Commit)
        }
        KvCommand::FenceMerge { expected } => {
            crate::merge::apply_fence(region, *expected).map(AdminOutcome::Fence)
        }
        KvCommand::RollbackMerge { version } => {
            crate::merge::apply_rollback(region, merging, *version).map(AdminOutcome::Rollback)
        }
        other => Err(KvError::Refused(format!("{other:?} is not an admin entry"))),
    }
}

impl AdminOutcome {
    /// Fence records follow the keys: a split's child refuses what its parent refused, a
    /// merge's target the most of both.
    fn copy_fences(&self, engine: &dyn KvEngine, batch: &mut WriteBatch) -> Result<(), KvError> {
        match self {
            AdminOutcome::Split(record) => {
                crate::fence::copy(engine, record.parent.id, record.child.id, false, batch)
            }
            AdminOutcome::Commit(record) => {
                crate::fence::copy(engine, record.source.id, record.target.id, true, batch)
            }
            _ => Ok(()),
        }
    }

    /// The meta writes that go with the entry's applied index, atomically.
    fn add_writes(&self, batch: &mut WriteBatch, region: RegionId, index: LogIndex, term: Term) {
        match self {
            AdminOutcome::Split(record) => {
                batch.meta_put(applied_key(record.child.id), encode_applied(index, term));
                batch.meta_put(record_key(record.child.id), record.encode());
            }
            AdminOutcome::Prepare(state) => {
                batch.meta_put(crate::merge::state_key(region), state.encode());
                batch.meta_put(crate::merge::region_key(region), state.source.encode());
            }
            AdminOutcome::Commit(record) => {
                batch.meta_put(crate::merge::record_key(record.source.id), record.encode());
                batch.meta_put(crate::merge::region_key(region), record.target.encode());
            }
            AdminOutcome::Fence(Some(fenced)) => {
                batch.meta_put(crate::merge::region_key(region), fenced.encode());
            }
            AdminOutcome::Fence(None) => {}
            AdminOutcome::Rollback(thawed) => {
                batch.meta_delete(crate::merge::state_key(region));
                batch.meta_put(crate::merge::region_key(region), thawed.encode());
            }
        }
    }
}

impl StateMachine for KvStateMachine {
    fn on_leader_start(&mut self, _term: flotilla_node::Term) {
        self.send_leader(true);
    }

    fn on_leader_stop(&mut self, _term: flotilla_node::Term) {
        self.send_leader(false);
    }

    fn on_apply(&mut self, iter: &mut ApplyIter) {
        if let Some(why) = &self.failure {
            // Leaving the batch unconsumed stops the group (see the module docs).
            tracing::error!(region = %self.handle.region().id, error = %why, "refusing to apply after an engine failure");
            return;
        }
        let engine_applied = match self.engine_applied() {
            Ok(index) => index,
            Err(e) => {
                self.fail(format!("reading the applied state: {e}"));
                return;
            }
        };
        let mut region = self.handle.region();
        // The merge this region is frozen for (read once a batch; admin entries change it).
        let mut frozen = self.handle.merging();
        let engine = Arc::clone(&self.engine);
        let clocks = Arc::clone(&self.handle.clocks);
        let lease_clocks = Arc::clone(&self.handle.lease_clocks);
        let leases = Arc::clone(&self.handle.leases);
        let fresh = || {
            Overlay::new(engine.as_ref())
                .with_clocks(&clocks)
                .with_leases(&lease_clocks, leases.load(Ordering::Acquire))
        };
        let mut overlay = fresh();
        // Watch history (`crate::watch`): recorded while the region has interest.
        let hub = Arc::clone(&self.handle.watch);
        let mut watch = WatchApply::new(&hub);
        let mut answers: Vec<(Completion, Result<Bytes, String>)> = Vec::new();
        // The last entry applied here (not skipped), which the write records.
        let mut last = None;
        let mut engine_failure = None;
        for task in iter.by_ref() {
            if task.index <= engine_applied {
                // Already in the engine: applied before a restart.
                continue;
            }
            last = Some((task.index, task.term));
            let result = match KvCommand::decode(&task.data) {
                Err(e) => Err(format!("entry {} does not decode: {e}", task.index)),
                Ok(command) if command.is_admin() => {
                    let configuration = self.configuration.as_ref().map(Members::configuration);
                    let cannot_take = match &command {
                        KvCommand::CommitMerge(state) => self.local_source_frozen(state).err(),
                        _ => None,
                    };
                    match admin_outcome(
                        &command,
                        &region,
                        frozen.as_ref(),
                        configuration.as_ref(),
                        task.index,
                        task.term,
                    ) {
                        Err(refusal) => Err(refusal.to_string()),
                        // A commit every replica takes that this store cannot: its engine
                        // does not hold the source frozen at this merge (a replica that
                        // joined the target after the merge and replays it from the log,
                        // its store never having held the source, or only a removed
                        // replica's stale copy). This replica stops here and serves
                        // nothing rather than diverge.
                        Ok(AdminOutcome::Commit(record)) if cannot_take.is_some() => {
                            let why = cannot_take.unwrap_or_default();
                            engine_failure = Some(format!(
                                "entry {}: the merge of region {} cannot be applied on this \
                                 store: {why}",
                                task.index, record.source.id
                            ));
                            Err(why)
                        }
                        Ok(outcome) => {
                            // What came before in the batch is written with the step, so
                            // the applied index never passes an unwritten entry.
                            if overlay.leases {
                                leases.store(true, Ordering::Release);
                            }
                            let mut batch = std::mem::replace(&mut overlay, fresh()).into_batch();
                            batch.meta_put(
                                applied_key(region.id),
                                encode_applied(task.index, task.term),
                            );
                            outcome.add_writes(&mut batch, region.id, task.index, task.term);
                            let watched = watch.admin_writes(
                                &outcome,
                                engine.as_ref(),
                                region.id,
                                task.index.0,
                                &mut batch,
                            );
                            // Fence records follow the keys: a split's child refuses what
                            // its parent refused, a merge's target the most of both.
                            let fences = outcome.copy_fences(engine.as_ref(), &mut batch);
                            let written =
                                watched.and(fences).and_then(|()| self.engine.write(batch));
                            match written {
                                Ok(()) => {
                                    watch.written(&hub);
                                    self.set_applied(task.index, task.term);
                                    region = self.admin_applied(outcome, &region);
                                    frozen = self.handle.merging();
                                    // A merge brings the source's keys, marks included.
                                    if marks_in(engine.as_ref(), &region) {
                                        leases.store(true, Ordering::Release);
                                    }
                                    Ok(KvOutput::Done.encode())
                                }
                                Err(e) => {
                                    engine_failure = Some(format!(
                                        "writing the admin entry at {}: {e}",
                                        task.index
                                    ));
                                    Err(e.to_string())
                                }
                            }
                        }
                    }
                }
                Ok(command) => {
                    let entry = (&region, frozen.as_ref(), task.index.0);
                    match watch.apply_entry(&command, entry, &mut overlay) {
                        Ok(result) => result.map(|o| o.encode()).map_err(|e| e.to_string()),
                        Err(e) => {
                            engine_failure = Some(format!("entry {}: {e}", task.index));
                            Err(e.to_string())
                        }
                    }
                }
            };
            if let Some(completion) = task.completion {
                answers.push((completion, result));
            }
            if engine_failure.is_some() {
                break;
            }
        }
        let Some((index, term)) = last else {
            return;
        };
        if overlay.leases {
            leases.store(true, Ordering::Release);
        }
        if engine_failure.is_none() {
            let mut batch = overlay.into_batch();
            batch.meta_put(applied_key(region.id), encode_applied(index, term));
            match self.engine.write(batch) {
                Ok(()) => {
                    watch.written(&hub);
                    self.set_applied(index, term);
                }
                Err(e) => engine_failure = Some(format!("writing entries up to {index}: {e}")),
            }
        }
        if let Some(why) = engine_failure {
            let unknown = format!("{UNKNOWN_OUTCOME_PREFIX}the KV engine failed: {why}");
            // Failed before anyone hears of it: a proposer then sees the handle failed.
            self.fail(why);
            for (completion, _) in answers {
                completion.complete(Err(unknown.clone()));
            }
            return;
        }
        for (completion, result) in answers {
            completion.complete(result);
        }
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        let snapshot_index = writer.meta().index;
        let engine_applied = self.engine_applied().map_err(|e| e.to_string())?;
        if engine_applied > snapshot_index {
            // After a restart the engine can be ahead of the replay: its data is not the
            // state at the snapshot's index.
            return Err(format!(
                "the engine holds region {} up to entry {engine_applied}, past the snapshot's \
                 index {snapshot_index}; retry once the replay caught up",
                self.handle.region().id
            ));
        }
        let region = self.handle.region();
        writer
            .append(SNAPSHOT_REGION_FILE, &region.encode())
            .map_err(|e| format!("writing snapshot file {SNAPSHOT_REGION_FILE}: {e}"))?;
        if let Some(state) = self.handle.merging() {
            // A replica caught up from this snapshot is frozen as this one is.
            writer
                .append(SNAPSHOT_MERGE_FILE, &state.encode())
                .map_err(|e| format!("writing snapshot file {SNAPSHOT_MERGE_FILE}: {e}"))?;
        }
        let fence_floor = crate::fence::floor(self.engine.as_ref(), region.id)
            .map_err(|e| format!("reading the fence floor of {region}: {e}"))?;
        if fence_floor > 0 {
            writer
                .append(
                    crate::fence::SNAPSHOT_FENCE_FLOOR_FILE,
                    &fence_floor.to_be_bytes(),
                )
                .map_err(|e| {
                    format!(
                        "writing snapshot file {}: {e}",
                        crate::fence::SNAPSHOT_FENCE_FLOOR_FILE
                    )
                })?;
        }
        let interest = crate::watch::read_interest(self.engine.as_ref(), region.id)
            .map_err(|e| format!("reading the watch interest of {region}: {e}"))?;
        if let Some(interest) = interest {
            // A replica caught up from this snapshot records history as this one does.
            writer
                .append(crate::watch::SNAPSHOT_INTEREST_FILE, &interest.encode())
                .map_err(|e| {
                    format!(
                        "writing snapshot file {}: {e}",
                        crate::watch::SNAPSHOT_INTEREST_FILE
                    )
                })?;
        }
        let mut out = SnapshotFileWriter {
            writer,
            name: SNAPSHOT_DATA_FILE,
        };
        let count = self
            .engine
            .export_range(&region.start, &region.end, &mut out)
            .map_err(|e| format!("exporting {region}: {e}"))?;
        let mut out = SnapshotFileWriter {
            writer,
            name: crate::sequence::SNAPSHOT_SEQUENCES_FILE,
        };
        let sequences = crate::sequence::export(self.engine.as_ref(), &region, &mut out)
            .map_err(|e| format!("exporting the sequences of {region}: {e}"))?;
        // The meta records named by the region's keys, a file per key space.
        for (name, space) in [
            (crate::lock::SNAPSHOT_LOCKS_FILE, &crate::lock::LOCKS),
            (crate::lease::SNAPSHOT_LEASES_FILE, &crate::lease::LEASES),
            (crate::lease::SNAPSHOT_LEASE_KEYS_FILE, &crate::lease::MARKS),
        ] {
            space
                .export(
                    self.engine.as_ref(),
                    &region,
                    &mut SnapshotFileWriter { writer, name },
                )
                .map_err(|e| format!("exporting snapshot file {name} of {region}: {e}"))?;
        }
        let mut out = SnapshotFileWriter {
            writer,
            name: crate::fence::SNAPSHOT_FENCES_FILE,
        };
        crate::fence::export(self.engine.as_ref(), region.id, &mut out)
            .map_err(|e| format!("exporting the fence records of {region}: {e}"))?;
        tracing::debug!(region = %region.id, index = %snapshot_index, keys = count, sequences, "region snapshot saved");
        Ok(())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        self.load_snapshot(reader).map_err(|e| e.to_string())
    }

    /// A snapshot of another range than this replica's, at an epoch not newer than its
    /// own, is refused before anything changes: typically a snapshot of the region from
    /// before a split, sent to a replica opened with the region as it is after it. Its
    /// import would overwrite keys another region of this store may own. The leader takes
    /// a snapshot of a region as soon as it split, and sends that one next.
    fn check_snapshot(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        self.snapshot_region(reader)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A membership change moves the region's `conf_version` to the index of its
    /// configuration entry: every replica reaches the same value for the same
    /// configuration, and it only grows (a later configuration has a larger index; one
    /// heard again after a restart changes nothing). A replica that installs a snapshot
    /// takes the epoch the snapshot's region carries.
    fn on_configuration_applied(&mut self, _index: LogIndex, configuration: &Configuration) {
        self.configuration = Some(Members::of(configuration));
    }

    fn on_configuration_committed_at(&mut self, index: LogIndex, configuration: &Configuration) {
        let region = {
            let mut current = self
                .handle
                .region
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if index.0 > current.epoch.conf_version {
                current.epoch.conf_version = index.0;
            }
            current.clone()
        };
        {
            let mut committed = self
                .handle
                .committed
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if committed.as_ref().is_none_or(|(at, _)| *at < index) {
                *committed = Some((index, Members::of(configuration)));
            }
        }
        if let Some(events) = &self.events {
            let _ = events.send(RegionEvent::Configuration {
                region,
                index,
                configuration: configuration.clone(),
            });
        }
    }
}

impl KvStateMachine {
    /// Takes the region an admin entry left and tells the store; answers that region.
    fn admin_applied(&mut self, outcome: AdminOutcome, region: &Region) -> Region {
        match outcome {
            AdminOutcome::Split(record) => {
                let parent = record.parent.clone();
                self.split_applied(record);
                parent
            }
            AdminOutcome::Prepare(state) => {
                let frozen = state.source.clone();
                tracing::info!(source = %frozen, target = %state.target, index = %state.index, "region frozen for a merge");
                self.set_region(frozen.clone());
                self.set_merging(Some(state));
                self.send(RegionEvent::Adopted(frozen.clone()));
                frozen
            }
            AdminOutcome::Commit(record) => {
                let merged = record.target.clone();
                tracing::info!(
                    source = %record.source,
                    target = %merged,
                    start = %crate::error::show(&merged.start),
                    end = %crate::error::show(&merged.end),
                    index = %record.index,
                    "regions merged"
                );
                self.set_region(merged.clone());
                self.send(RegionEvent::Merged(record));
                merged
            }
            AdminOutcome::Fence(Some(fenced)) => {
                tracing::info!(region = %fenced, "merge fenced: no merge expecting the older epoch commits here");
                self.set_region(fenced.clone());
                self.send(RegionEvent::Adopted(fenced.clone()));
                fenced
            }
            AdminOutcome::Fence(None) => region.clone(),
            AdminOutcome::Rollback(thawed) => {
                tracing::info!(region = %thawed, "merge rolled back: the region serves its keys again");
                self.set_region(thawed.clone());
                self.set_merging(None);
                self.send(RegionEvent::Adopted(thawed.clone()));
                thawed
            }
        }
    }

    /// Whether this store's engine holds the merge source `state` names frozen at that
    /// very merge (its PrepareMerge applied here, so every source entry before it too).
    fn local_source_frozen(&self, state: &MergeState) -> Result<(), String> {
        let here = self
            .engine
            .meta_get(&crate::merge::state_key(state.source.id))
            .map_err(|e| format!("reading the source's merge state: {e}"))?;
        let Some(data) = here else {
            return Err(format!(
                "this store's engine holds no frozen replica of region {}",
                state.source.id
            ));
        };
        let local = MergeState::decode(&data).map_err(|e| e.to_string())?;
        if local.index != state.index || local.target.id != state.target.id {
            return Err(format!(
                "this store's replica of region {} is frozen at entry {} for region {}, the \
                 merge names entry {} for region {}",
                state.source.id, local.index, local.target.id, state.index, state.target.id
            ));
        }
        Ok(())
    }

    /// Takes the parent's new range and tells the store, which starts the child.
    fn split_applied(&mut self, record: SplitRecord) {
        *self
            .handle
            .region
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = record.parent.clone();
        tracing::info!(
            parent = %record.parent,
            child = %record.child,
            key = %crate::error::show(&record.child.start),
            index = %record.index,
            "region split"
        );
        if let Some(events) = &self.events {
            let _ = events.send(RegionEvent::Split(record));
        }
    }

    fn send_leader(&self, leading: bool) {
        if let Some(events) = &self.events {
            let region = self.handle.region().id;
            let _ = events.send(RegionEvent::Leader { region, leading });
        }
    }

    /// The region `reader`'s snapshot describes, if this replica may load it: the same
    /// region, and (unless the engine is already past the snapshot) the same range or a
    /// newer epoch.
    fn snapshot_region(&mut self, reader: &SnapshotReader) -> Result<Region, KvError> {
        let meta = reader.meta();
        let current = self.handle.region();
        let region = Region::decode(&read_whole(reader, SNAPSHOT_REGION_FILE)?)?;
        if region.id != current.id {
            return Err(KvError::Corrupt(format!(
                "snapshot at {} holds region {}, this state machine replicates region {}",
                meta.index, region.id, current.id
            )));
        }
        if self.engine_applied()? >= meta.index {
            return Ok(region);
        }
        let same_range = region.start == current.start && region.end == current.end;
        // By range version: a replica waiting for this snapshot may have heard of later
        // configurations, so its `conf_version` says nothing about its range.
        if !same_range && region.epoch.version <= current.epoch.version {
            // Importing another range than ours without a newer epoch could overwrite keys
            // another region of this store owns now.
            return Err(KvError::StaleEpoch {
                region: region.id,
                current: current.epoch,
                given: region.epoch,
                now: None,
            });
        }
        Ok(region)
    }

    fn load_snapshot(&mut self, reader: &SnapshotReader) -> Result<(), KvError> {
        let meta = reader.meta();
        let region = self.snapshot_region(reader)?;
        let engine_applied = self.engine_applied()?;
        if engine_applied >= meta.index {
            // A restart over a durable engine that already holds this snapshot's state or
            // later: the entries after it are skipped up to `engine_applied`. Nothing is
            // imported, and the region keeps the newer of the two descriptions (a region
            // that split after its snapshot was taken is smaller than the snapshot says).
            tracing::info!(region = %region.id, snapshot = %meta.index, engine = %engine_applied, "engine ahead of the snapshot; not re-imported");
            self.adopt(region);
            return Ok(());
        }
        let merging = match reader.manifest().file(SNAPSHOT_MERGE_FILE) {
            Some(_) => Some(MergeState::decode(&read_whole(
                reader,
                SNAPSHOT_MERGE_FILE,
            )?)?),
            None => None,
        };
        let fence_floor = match reader
            .manifest()
            .file(crate::fence::SNAPSHOT_FENCE_FLOOR_FILE)
        {
            Some(_) => crate::fence::decode(&read_whole(
                reader,
                crate::fence::SNAPSHOT_FENCE_FLOOR_FILE,
            )?)?,
            None => 0,
        };
        let interest = snapshot_interest(reader)?;
        if merging.as_ref().is_some_and(|m| m.source.id != region.id) {
            return Err(KvError::Corrupt(format!(
                "snapshot at {} of region {} carries the merge of another region",
                meta.index, region.id
            )));
        }
        // Verify the whole file before touching the engine, so a corrupt snapshot changes
        // nothing even when the import is too large to stage in memory.
        let count = crate::engine::export::verify_export(
            &mut SnapshotFileReader::new(reader, SNAPSHOT_DATA_FILE),
            &region.start,
            &region.end,
        )?;
        for name in [
            crate::sequence::SNAPSHOT_SEQUENCES_FILE,
            crate::lock::SNAPSHOT_LOCKS_FILE,
            crate::lease::SNAPSHOT_LEASES_FILE,
            crate::lease::SNAPSHOT_LEASE_KEYS_FILE,
        ] {
            if reader.manifest().file(name).is_some() {
                crate::engine::export::verify_export(
                    &mut SnapshotFileReader::new(reader, name),
                    &region.start,
                    &region.end,
                )?;
            }
        }
        // Fence records are named by locks, not keys: any name.
        if reader
            .manifest()
            .file(crate::fence::SNAPSHOT_FENCES_FILE)
            .is_some()
        {
            crate::engine::export::verify_export(
                &mut SnapshotFileReader::new(reader, crate::fence::SNAPSHOT_FENCES_FILE),
                b"",
                b"",
            )?;
        }
        // Invalidate the applied state first: a crash inside the import must not leave
        // the old (higher) applied index over the snapshot's data.
        self.engine.meta_delete(applied_key(region.id))?;
        self.engine_applied = Some(LogIndex::ZERO);
        let imported = self.engine.import_range(
            &region.start,
            &region.end,
            &mut SnapshotFileReader::new(reader, SNAPSHOT_DATA_FILE),
        )?;
        assert_eq!(
            imported, count,
            "region {} snapshot {}: imported {imported} pairs, verified {count}",
            region.id, meta.index
        );
        let mut batch = WriteBatch::new();
        // The sequences of the range, as the snapshot has them (a snapshot from before
        // sequences existed has none: the range then holds none either).
        if reader
            .manifest()
            .file(crate::sequence::SNAPSHOT_SEQUENCES_FILE)
            .is_some()
        {
            crate::sequence::import(
                self.engine.as_ref(),
                &region,
                &mut SnapshotFileReader::new(reader, crate::sequence::SNAPSHOT_SEQUENCES_FILE),
                &mut batch,
            )?;
        }
        if reader
            .manifest()
            .file(crate::lock::SNAPSHOT_LOCKS_FILE)
            .is_some()
        {
            crate::lock::import(
                self.engine.as_ref(),
                &region,
                &mut SnapshotFileReader::new(reader, crate::lock::SNAPSHOT_LOCKS_FILE),
                &mut batch,
            )?;
        }
        self.import_lease_files(reader, &region, &mut batch)?;
        if reader
            .manifest()
            .file(crate::fence::SNAPSHOT_FENCES_FILE)
            .is_some()
        {
            crate::fence::import(
                self.engine.as_ref(),
                region.id,
                &mut SnapshotFileReader::new(reader, crate::fence::SNAPSHOT_FENCES_FILE),
                fence_floor,
                &mut batch,
            )?;
        }
        match &merging {
            Some(state) => {
                batch.meta_put(crate::merge::state_key(region.id), state.encode());
                batch.meta_put(crate::merge::region_key(region.id), region.encode());
            }
            None => batch.meta_delete(crate::merge::state_key(region.id)),
        }
        batch.meta_put(
            applied_key(region.id),
            encode_applied(meta.index, meta.term),
        );
        match interest {
            Some(interest) => {
                batch.meta_put(crate::watch::interest_key(region.id), interest.encode());
            }
            None => batch.meta_delete(crate::watch::interest_key(region.id)),
        }
        // This replica never applied the entries the snapshot covers: its history is
        // complete only after them.
        self.handle.watch.raise_floor(
            self.engine.as_ref(),
            region.id,
            meta.index.0.saturating_add(1),
            batch,
        )?;
        self.handle.watch.set_interest(interest, true);
        self.set_merging(merging);
        self.set_applied(meta.index, meta.term);
        tracing::info!(region = %region.id, index = %meta.index, keys = imported, "region snapshot loaded");
        if marks_in(self.engine.as_ref(), &region) {
            self.handle.leases.store(true, Ordering::Release);
        }
        self.adopt(region);
        Ok(())
    }

    /// Adds to `batch` the leases (home records) and the marks of the range's keys a
    /// snapshot carries; a snapshot from before leases existed has neither, and the range
    /// then holds neither.
    fn import_lease_files(
        &self,
        reader: &SnapshotReader,
        region: &Region,
        batch: &mut WriteBatch,
    ) -> Result<(), KvError> {
        for (name, space) in [
            (crate::lease::SNAPSHOT_LEASES_FILE, &crate::lease::LEASES),
            (crate::lease::SNAPSHOT_LEASE_KEYS_FILE, &crate::lease::MARKS),
        ] {
            if reader.manifest().file(name).is_some() {
                space.import(
                    self.engine.as_ref(),
                    region,
                    &mut SnapshotFileReader::new(reader, name),
                    batch,
                )?;
            }
        }
        Ok(())
    }

    /// Takes the snapshot's region description if it is newer than ours (a snapshot never
    /// carries another range at an epoch that is not newer: refused above).
    fn adopt(&mut self, region: Region) {
        let adopted = {
            let mut current = self
                .handle
                .region
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let newer = region.epoch.supersedes(&current.epoch);
            if newer {
                let conf_version = current.epoch.conf_version.max(region.epoch.conf_version);
                *current = region;
                current.epoch.conf_version = conf_version;
            }
            newer.then(|| current.clone())
        };
        if let (Some(region), Some(events)) = (adopted, &self.events) {
            let _ = events.send(RegionEvent::Adopted(region));
        }
    }
}

/// The watch interest a snapshot carries (none: the region was not watched).
fn snapshot_interest(reader: &SnapshotReader) -> Result<Option<crate::watch::Interest>, KvError> {
    let name = crate::watch::SNAPSHOT_INTEREST_FILE;
    match reader.manifest().file(name) {
        Some(_) => Ok(Some(crate::watch::Interest::decode(&read_whole(
            reader, name,
        )?)?)),
        None => Ok(None),
    }
}

/// `std::io::Write` over one file of a snapshot being written.
struct SnapshotFileWriter<'a> {
    writer: &'a mut SnapshotWriter,
    name: &'static str,
}

impl Write for SnapshotFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer
            .append(self.name, buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `std::io::Read` over one file of a snapshot, chunk by chunk.
pub(crate) struct SnapshotFileReader<'a> {
    reader: &'a SnapshotReader,
    name: &'static str,
    offset: u64,
    chunk: Vec<u8>,
    position: usize,
}

impl<'a> SnapshotFileReader<'a> {
    pub(crate) fn new(reader: &'a SnapshotReader, name: &'static str) -> SnapshotFileReader<'a> {
        SnapshotFileReader {
            reader,
            name,
            offset: 0,
            chunk: Vec::new(),
            position: 0,
        }
    }
}

impl Read for SnapshotFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position == self.chunk.len() {
            self.chunk = self
                .reader
                .read_chunk(self.name, self.offset, SNAPSHOT_READ_BYTES)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.position = 0;
            self.offset += self.chunk.len() as u64;
            if self.chunk.is_empty() {
                return Ok(0);
            }
        }
        let len = buf.len().min(self.chunk.len() - self.position);
        buf[..len].copy_from_slice(&self.chunk[self.position..self.position + len]);
        self.position += len;
        Ok(len)
    }
}

/// A small snapshot file, whole (the region file).
pub(crate) fn read_whole(reader: &SnapshotReader, name: &'static str) -> Result<Vec<u8>, KvError> {
    const SMALL_FILE_BYTES_MAX: u64 = 64 * 1024;
    let mut data = Vec::new();
    SnapshotFileReader::new(reader, name)
        .take(SMALL_FILE_BYTES_MAX)
        .read_to_end(&mut data)
        .map_err(|e| KvError::Engine(format!("reading snapshot file {name}: {e}")))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_left_its_region_keeps_its_kind_through_the_completion() {
        let region = Region::new(
            RegionId(1),
            Bytes::new(),
            Bytes::from_static(b"m"),
            crate::ids::Epoch::new(1, 2),
        )
        .unwrap();
        let moved = completion_error(region.out_of_region(b"z").to_string());
        assert!(
            matches!(&moved, KvError::Node { kind, .. } if kind == "KeyOutOfRegion"),
            "{moved:?}"
        );
        assert!(matches!(
            completion_error("value too large".into()),
            KvError::Refused(_)
        ));
    }
}
