//! [`PdState`]: everything the meta group replicates, the deterministic rules for
//! applying a [`PdCommand`] to it, and its snapshot encoding.
//!
//! Owns: the apply rules (a refusal changes nothing; the same log gives the same state on
//! every replica) and the snapshot format. Must never: read a clock, a random source or
//! anything outside the command, or keep soft state.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use flotilla_node::StoreId;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::command::{
    read_operator, read_outcome, read_region, read_source, read_store, truncate, write_operator,
    write_outcome, write_region, write_store, PdCommand, PdOutput,
};
use crate::error::PdError;
use crate::limits::{
    ALLOCATED_ID_FIRST, ALLOC_IDS_MAX, CONFIG_BYTES_MAX, FINISHED_MAX, REASON_BYTES_MAX,
    REGIONS_MAX, STORES_MAX,
};
use crate::model::{PdConfig, RegionRecord, StoreMark, StoreRecord, CONFIG_KEYS};
use crate::operator::{FinishedOperator, Operator, Outcome};

/// The snapshot format version.
const SNAPSHOT_VERSION: u8 = 1;

/// The placement driver's durable state: what the meta group replicates.
#[derive(Clone, Debug, PartialEq)]
pub struct PdState {
    /// Registered stores (tombstones included: a tombstone is final).
    pub stores: BTreeMap<StoreId, StoreRecord>,
    /// Regions by id (region 0 is the meta group).
    pub regions: BTreeMap<u64, RegionRecord>,
    /// The next id `AllocIds` hands out. Starts at `ALLOCATED_ID_FIRST` (1,000,000) so an
    /// allocated id never collides with the static regions numbered `1..=N` at bootstrap;
    /// always past every recorded region's id (a restored cluster's regions included).
    pub next_id: u64,
    /// The scheduling configuration.
    pub config: PdConfig,
    /// Operators in flight, by region: at most one per region.
    pub operators: BTreeMap<u64, Operator>,
    /// The last `FINISHED_MAX` operators that ended, oldest first.
    pub finished: VecDeque<FinishedOperator>,
    /// The id the next started operator gets.
    pub next_operator_id: u64,
    /// Region ids by start key (region 0 has no range and is not here). Recorded regions
    /// never overlap, so the ones a range overlaps are its predecessor and those starting
    /// inside it: found without scanning every region.
    starts: BTreeMap<Bytes, u64>,
}

impl Default for PdState {
    fn default() -> PdState {
        PdState {
            stores: BTreeMap::new(),
            regions: BTreeMap::new(),
            next_id: ALLOCATED_ID_FIRST,
            config: PdConfig::default(),
            operators: BTreeMap::new(),
            finished: VecDeque::new(),
            next_operator_id: 1,
            starts: BTreeMap::new(),
        }
    }
}

fn refused(why: String) -> PdOutput {
    PdOutput::Refused(why)
}

impl PdState {
    /// Applies one command. Deterministic; a [`PdOutput::Refused`] changed nothing.
    pub fn apply(&mut self, command: &PdCommand) -> PdOutput {
        match command {
            PdCommand::PutStore(store) => self.put_store(store),
            PdCommand::SetStoreMark { store, mark } => self.set_store_mark(*store, *mark),
            PdCommand::PutRegion(region) => self.put_region(region),
            PdCommand::RemoveRegion(id) => {
                if self.operators.contains_key(id) {
                    return refused(format!("region {id} has an operator in flight"));
                }
                self.remove_region(*id);
                PdOutput::Done
            }
            PdCommand::AllocIds { count } => self.alloc_ids(*count),
            PdCommand::SetConfig { key, value, source } => {
                match self.config.set_from(key, value, *source) {
                    Ok(()) => PdOutput::Done,
                    Err(why) => refused(why),
                }
            }
            PdCommand::StartOperator(operator) => self.start_operator(operator),
            PdCommand::AdvanceOperator { id, step } => self.advance_operator(*id, *step),
            PdCommand::FinishOperator { id, outcome } => self.finish_operator(*id, outcome),
        }
    }

    /// Registers `store` or updates its address and labels. An address is where a store is,
    /// never who it is: a store registering an address another record holds (a wiped store
    /// back at its old address with a new id, a container that moved onto a freed address)
    /// takes it, and the other record keeps no address until its own heartbeat names one.
    /// (TiKV's PD refuses such a store; here the store itself refused to start if a live
    /// store answered at that address, and frames name their receiver's id, so a stale
    /// address can only misdirect a frame that is then refused.) Refused, changing nothing:
    /// a tombstone registering again, or a new store past [`STORES_MAX`].
    fn put_store(&mut self, store: &StoreRecord) -> PdOutput {
        let full = self.stores.len() >= STORES_MAX;
        let admissible = match self.stores.get(&store.id) {
            Some(existing) => existing.state != StoreMark::Tombstone,
            None => !full,
        };
        if admissible && !store.address.is_empty() {
            for other in self.stores.values_mut() {
                if other.id != store.id && other.address == store.address {
                    other.address.clear();
                }
            }
        }
        match self.stores.get_mut(&store.id) {
            Some(existing) if existing.state == StoreMark::Tombstone => refused(format!(
                "store {} is a tombstone and cannot register again",
                store.id
            )),
            Some(existing) => {
                existing.address.clone_from(&store.address);
                existing.labels.clone_from(&store.labels);
                PdOutput::Done
            }
            None if full => refused(format!(
                "store {}: the store limit {STORES_MAX} is reached",
                store.id
            )),
            None => {
                let mut record = store.clone();
                record.state = StoreMark::Serving;
                self.stores.insert(store.id, record);
                PdOutput::Done
            }
        }
    }

    fn set_store_mark(&mut self, store: StoreId, mark: StoreMark) -> PdOutput {
        let Some(record) = self.stores.get_mut(&store) else {
            return refused(format!("store {store} is not registered"));
        };
        let allowed = record.state == mark
            || match (record.state, mark) {
                (StoreMark::Tombstone, _) => false,
                (_, StoreMark::Offline) | (StoreMark::Offline, _) => true,
                _ => false,
            };
        if !allowed {
            return refused(format!(
                "store {store}: {} cannot become {} (a tombstone is final; only an offline store becomes one)",
                record.state, mark
            ));
        }
        record.state = mark;
        PdOutput::Done
    }

    /// Records `region` (a report of its current range, epoch and peers). Refused,
    /// changing nothing: an older epoch than recorded, a new region past `REGIONS_MAX`, a
    /// range overlapping a recorded region at the same or a newer version, or overlapping
    /// an older one that has an operator in flight. Older regions it overlaps are dropped:
    /// a split or merge gave their keys to this one, and a region that still exists with a
    /// smaller range is recorded again by its own next report.
    fn put_region(&mut self, region: &RegionRecord) -> PdOutput {
        if let Some(current) = self.regions.get(&region.id) {
            if region.conf_version < current.conf_version || region.version < current.version {
                return refused(format!(
                    "region {}: stale report at epoch {:?}, recorded {:?}",
                    region.id,
                    region.epoch(),
                    current.epoch()
                ));
            }
        } else if self.regions.len() >= REGIONS_MAX {
            return refused(format!(
                "region {}: the region limit {REGIONS_MAX} is reached",
                region.id
            ));
        }
        let overlapped = self.overlapping(region);
        for id in &overlapped {
            let other = &self.regions[id];
            if other.version >= region.version {
                return refused(format!(
                    "region {} at version {} overlaps region {} at version {}",
                    region.id, region.version, other.id, other.version
                ));
            }
            if self.operators.contains_key(id) {
                return refused(format!(
                    "region {} at version {} overlaps region {} at version {}, which has an \
                     operator in flight",
                    region.id, region.version, other.id, other.version
                ));
            }
        }
        for id in overlapped {
            self.remove_region(id);
        }
        self.remove_region(region.id);
        self.insert_region(region.clone());
        // A region the allocator did not hand out (a cluster restored from a backup keeps
        // the old cluster's region ids) is never handed out again. In a cluster that was
        // never restored every id past the static ones came from here: nothing changes.
        if region.id >= ALLOCATED_ID_FIRST {
            self.next_id = self.next_id.max(region.id.saturating_add(1));
        }
        PdOutput::Done
    }

    /// The recorded regions other than `region.id` whose ranges overlap `region`'s.
    fn overlapping(&self, region: &RegionRecord) -> Vec<u64> {
        if region.id == 0 {
            return Vec::new();
        }
        let before = self
            .starts
            .range(..=region.start.clone())
            .next_back()
            .map(|(_, id)| *id);
        let upper = if region.end.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(region.end.clone())
        };
        let inside = self
            .starts
            .range((std::ops::Bound::Excluded(region.start.clone()), upper))
            .map(|(_, id)| *id);
        before
            .into_iter()
            .chain(inside)
            .filter(|id| *id != region.id)
            .filter(|id| self.regions.get(id).is_some_and(|o| o.overlaps(region)))
            .collect()
    }

    fn insert_region(&mut self, region: RegionRecord) {
        if region.id != 0 {
            self.starts.insert(region.start.clone(), region.id);
        }
        self.regions.insert(region.id, region);
    }

    fn remove_region(&mut self, id: u64) {
        if let Some(old) = self.regions.remove(&id) {
            if id != 0 && self.starts.get(&old.start) == Some(&id) {
                self.starts.remove(&old.start);
            }
        }
    }

    fn alloc_ids(&mut self, count: u32) -> PdOutput {
        if count == 0 || count > ALLOC_IDS_MAX {
            return refused(format!(
                "alloc ids: count {count} is not in 1..={ALLOC_IDS_MAX}"
            ));
        }
        let first = self.next_id;
        let Some(next) = first.checked_add(u64::from(count)) else {
            return refused("alloc ids: the id space is exhausted".to_string());
        };
        self.next_id = next;
        PdOutput::Ids { first, count }
    }

    fn start_operator(&mut self, operator: &Operator) -> PdOutput {
        let region = operator.region;
        let Some(record) = self.regions.get(&region) else {
            return refused(format!("operator on region {region}: no such region"));
        };
        if let Some(running) = self.operators.get(&region) {
            return refused(format!(
                "region {region} already has operator {} in flight",
                running.id
            ));
        }
        if operator.planned_on != record.epoch() {
            return refused(format!(
                "operator on region {region} planned at epoch {:?}, region is at {:?}",
                operator.planned_on,
                record.epoch()
            ));
        }
        if operator.steps.is_empty() || operator.step != 0 {
            return refused(format!(
                "operator on region {region}: must start with steps, none done"
            ));
        }
        let id = self.next_operator_id;
        self.next_operator_id += 1;
        let mut started = operator.clone();
        started.id = id;
        self.operators.insert(region, started);
        PdOutput::Ids {
            first: id,
            count: 1,
        }
    }

    fn advance_operator(&mut self, id: u64, step: usize) -> PdOutput {
        let Some(operator) = self.operators.values_mut().find(|o| o.id == id) else {
            return refused(format!("operator {id} is not in flight"));
        };
        if step == operator.step {
            return PdOutput::Done;
        }
        if step != operator.step + 1 || step > operator.steps.len() {
            return refused(format!(
                "operator {id}: step {step} does not follow step {} of {}",
                operator.step,
                operator.steps.len()
            ));
        }
        operator.step = step;
        PdOutput::Done
    }

    fn finish_operator(&mut self, id: u64, outcome: &Outcome) -> PdOutput {
        let Some(region) = self
            .operators
            .values()
            .find(|o| o.id == id)
            .map(|o| o.region)
        else {
            return PdOutput::Done;
        };
        let operator = self
            .operators
            .remove(&region)
            .expect("the operator was just found under its region");
        if self.finished.len() == FINISHED_MAX {
            self.finished.pop_front();
        }
        self.finished.push_back(FinishedOperator {
            operator,
            outcome: outcome.clone(),
        });
        PdOutput::Done
    }

    /// The operator in flight with `id`.
    #[must_use]
    pub fn operator(&self, id: u64) -> Option<&Operator> {
        self.operators.values().find(|o| o.id == id)
    }

    /// The snapshot bytes (`pd.state`).
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut w = FieldWriter::with_capacity(64);
        w.u8(SNAPSHOT_VERSION);
        w.u64(self.next_id);
        w.u64(self.next_operator_id);
        let configured = self.config.recorded();
        w.count(configured.len());
        for (key, value, source) in configured {
            w.bytes(key.as_bytes());
            w.bytes(value.as_bytes());
            w.u8(source.code());
        }
        w.count(self.stores.len());
        for store in self.stores.values() {
            write_store(&mut w, store);
        }
        w.count(self.regions.len());
        for region in self.regions.values() {
            write_region(&mut w, region);
        }
        w.count(self.operators.len());
        for operator in self.operators.values() {
            write_operator(&mut w, operator);
        }
        w.count(self.finished.len());
        for finished in &self.finished {
            write_operator(&mut w, &finished.operator);
            let outcome = match &finished.outcome {
                Outcome::Cancelled(why) => {
                    Outcome::Cancelled(truncate(why, REASON_BYTES_MAX).into())
                }
                Outcome::TimedOut(why) => Outcome::TimedOut(truncate(why, REASON_BYTES_MAX).into()),
                Outcome::Done => Outcome::Done,
            };
            write_outcome(&mut w, &outcome);
        }
        w.finish()
    }

    /// Decodes a snapshot, refusing anything malformed or inconsistent (duplicate ids, an
    /// operator on an unknown region or two on one region).
    pub fn decode(data: &[u8]) -> Result<PdState, PdError> {
        let mut r = FieldReader::new(data, "pd state");
        match r.u8("snapshot version")? {
            SNAPSHOT_VERSION => {}
            version => {
                return Err(r
                    .error(format_args!(
                        "snapshot version {version}, this build reads {SNAPSHOT_VERSION}"
                    ))
                    .into())
            }
        }
        let mut state = PdState {
            next_id: r.u64("next id")?,
            next_operator_id: r.u64("next operator id")?,
            ..PdState::default()
        };
        let count = r.count("config entries", CONFIG_KEYS.len(), 9)?;
        for _ in 0..count {
            let key = r.string("config key", CONFIG_BYTES_MAX)?;
            let value = r.string("config value", CONFIG_BYTES_MAX)?;
            let source = read_source(&mut r)?;
            state
                .config
                .set_from(&key, &value, source)
                .map_err(|why| r.error(why))?;
        }
        let count = r.count("stores", STORES_MAX, 17)?;
        for _ in 0..count {
            let store = read_store(&mut r)?;
            if state.stores.insert(store.id, store.clone()).is_some() {
                return Err(r.error(format_args!("store {} twice", store.id)).into());
            }
        }
        let count = r.count("regions", REGIONS_MAX, 40)?;
        for _ in 0..count {
            let region = read_region(&mut r)?;
            if state.regions.contains_key(&region.id) {
                return Err(r.error(format_args!("region {} twice", region.id)).into());
            }
            if let Some(other) = state.overlapping(&region).first() {
                return Err(r
                    .error(format_args!("regions {} and {other} overlap", region.id))
                    .into());
            }
            state.insert_region(region);
        }
        let count = r.count("operators", REGIONS_MAX, 45)?;
        for _ in 0..count {
            let operator = read_operator(&mut r)?;
            if !state.regions.contains_key(&operator.region) {
                return Err(r
                    .error(format_args!(
                        "operator {} on unknown region {}",
                        operator.id, operator.region
                    ))
                    .into());
            }
            if let Some(other) = state.operators.insert(operator.region, operator.clone()) {
                return Err(r
                    .error(format_args!(
                        "operators {} and {} on region {}",
                        other.id, operator.id, operator.region
                    ))
                    .into());
            }
        }
        let count = r.count("finished operators", FINISHED_MAX, 46)?;
        for _ in 0..count {
            let operator = read_operator(&mut r)?;
            let outcome = read_outcome(&mut r)?;
            state
                .finished
                .push_back(FinishedOperator { operator, outcome });
        }
        r.finish()?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::ConfigSource;
    use crate::operator::{OperatorKind, Step};

    fn store(id: u64, address: &str) -> StoreRecord {
        StoreRecord {
            id: StoreId(id),
            address: address.into(),
            labels: [("zone".to_string(), format!("z{id}"))].into(),
            state: StoreMark::Serving,
        }
    }

    fn region(
        id: u64,
        start: &'static [u8],
        end: &'static [u8],
        epoch: (u64, u64),
    ) -> RegionRecord {
        RegionRecord {
            id,
            start: Bytes::from_static(start),
            end: Bytes::from_static(end),
            conf_version: epoch.0,
            version: epoch.1,
            voters: [StoreId(1), StoreId(2), StoreId(3)].into(),
            learners: BTreeSet::new(),
        }
    }

    /// Applies `command`, which must be refused, and checks the state did not change.
    fn refused_unchanged(state: &mut PdState, command: PdCommand) -> String {
        let before = state.clone();
        let output = state.apply(&command);
        assert_eq!(*state, before, "a refused {command:?} changed the state");
        match output {
            PdOutput::Refused(why) => why,
            other => panic!("{command:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn an_address_goes_to_the_store_that_last_registered_it_and_tombstones_are_final() {
        let mut state = PdState::default();
        assert_eq!(
            state.apply(&PdCommand::PutStore(store(1, "a:1"))),
            PdOutput::Done
        );
        // A new store at a held address takes it (a wiped store back at its address): the
        // old record keeps no address until its own heartbeat names one.
        assert_eq!(
            state.apply(&PdCommand::PutStore(store(2, "a:1"))),
            PdOutput::Done
        );
        assert_eq!(state.stores[&StoreId(2)].address, "a:1");
        assert_eq!(state.stores[&StoreId(1)].address, "");
        let mut moved = store(1, "a:2");
        moved.state = StoreMark::Tombstone;
        assert_eq!(state.apply(&PdCommand::PutStore(moved)), PdOutput::Done);
        assert_eq!(state.stores[&StoreId(1)].address, "a:2");
        assert_eq!(
            state.stores[&StoreId(1)].state,
            StoreMark::Serving,
            "the mark is kept"
        );
        let mark = |store, mark| PdCommand::SetStoreMark {
            store: StoreId(store),
            mark,
        };
        refused_unchanged(&mut state, mark(1, StoreMark::Tombstone));
        refused_unchanged(&mut state, mark(9, StoreMark::Offline));
        assert_eq!(state.apply(&mark(1, StoreMark::Offline)), PdOutput::Done);
        assert_eq!(state.apply(&mark(1, StoreMark::Serving)), PdOutput::Done);
        assert_eq!(state.apply(&mark(1, StoreMark::Offline)), PdOutput::Done);
        assert_eq!(state.apply(&mark(1, StoreMark::Tombstone)), PdOutput::Done);
        refused_unchanged(&mut state, mark(1, StoreMark::Serving));
        refused_unchanged(&mut state, PdCommand::PutStore(store(1, "a:3")));
        // The tombstone's address is free again.
        assert_eq!(
            state.apply(&PdCommand::PutStore(store(3, "a:2"))),
            PdOutput::Done
        );
    }

    #[test]
    fn stale_region_reports_and_overlaps_are_refused() {
        let mut state = PdState::default();
        let put = |r: RegionRecord| PdCommand::PutRegion(r);
        assert_eq!(
            state.apply(&put(region(1, b"", b"m", (2, 1)))),
            PdOutput::Done
        );
        assert_eq!(
            state.apply(&put(region(2, b"m", b"", (1, 1)))),
            PdOutput::Done
        );
        let why = refused_unchanged(&mut state, put(region(1, b"", b"m", (1, 1))));
        assert!(why.contains("stale"), "{why}");
        refused_unchanged(&mut state, put(region(1, b"", b"m", (3, 0))));
        let mut learner = region(1, b"", b"m", (2, 1));
        learner.learners.insert(StoreId(4));
        assert_eq!(
            state.apply(&put(learner.clone())),
            PdOutput::Done,
            "equal epoch is taken"
        );
        assert_eq!(state.regions[&1], learner);
        let why = refused_unchanged(&mut state, put(region(3, b"k", b"p", (1, 1))));
        assert!(why.contains("overlaps"), "{why}");
        assert_eq!(
            state.apply(&put(region(3, b"k", b"p", (1, 2)))),
            PdOutput::Done,
            "a newer version wins"
        );
        assert!(
            !state.regions.contains_key(&1),
            "the older region it overlaps is dropped"
        );
        assert_eq!(
            state.apply(&put(region(1, b"", b"k", (2, 2)))),
            PdOutput::Done,
            "and comes back with its own next report"
        );
        assert_eq!(
            state.apply(&put(region(0, b"", b"", (1, 1)))),
            PdOutput::Done,
            "region 0 has no range"
        );
        assert_eq!(state.apply(&PdCommand::RemoveRegion(3)), PdOutput::Done);
        assert!(!state.regions.contains_key(&3));
        assert_index_matches(&state);
    }

    /// The start-key index names exactly the recorded regions (region 0 aside), and no two
    /// recorded regions overlap.
    fn assert_index_matches(state: &PdState) {
        let indexed: BTreeMap<u64, Bytes> = state
            .starts
            .iter()
            .map(|(k, id)| (*id, k.clone()))
            .collect();
        let recorded: BTreeMap<u64, Bytes> = state
            .regions
            .values()
            .filter(|r| r.id != 0)
            .map(|r| (r.id, r.start.clone()))
            .collect();
        assert_eq!(indexed, recorded);
        for a in state.regions.values() {
            for b in state.regions.values() {
                assert!(a.id == b.id || !a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn splits_and_merges_replace_the_records_they_overlap() {
        let mut state = PdState::default();
        let put = |r: RegionRecord| PdCommand::PutRegion(r);
        for (id, start, end) in [(1, &b""[..], &b"g"[..]), (2, b"g", b"t"), (3, b"t", b"")] {
            let record = RegionRecord {
                start: Bytes::copy_from_slice(start),
                end: Bytes::copy_from_slice(end),
                ..region(id, b"", b"", (1, 1))
            };
            assert_eq!(state.apply(&put(record)), PdOutput::Done);
        }
        // Region 2 splits at "m": the child's report may come first.
        assert_eq!(
            state.apply(&put(region(9, b"m", b"t", (1, 2)))),
            PdOutput::Done
        );
        assert!(!state.regions.contains_key(&2));
        assert_index_matches(&state);
        assert_eq!(
            state.apply(&put(region(2, b"g", b"m", (1, 2)))),
            PdOutput::Done
        );
        // The parent's report from before the split is stale now.
        refused_unchanged(&mut state, put(region(2, b"g", b"t", (1, 1))));
        assert_index_matches(&state);
        // An operator in flight on an overlapped region holds the newer record back.
        let op = Operator::planned(
            &state.regions[&3],
            OperatorKind::BalanceLeader,
            vec![Step::TransferLeader(StoreId(2))],
        );
        assert!(matches!(
            state.apply(&PdCommand::StartOperator(op)),
            PdOutput::Ids { .. }
        ));
        let why = refused_unchanged(&mut state, put(region(9, b"m", b"", (1, 3))));
        assert!(why.contains("operator in flight"), "{why}");
        // Regions 1 and 2 merge into 2, which then starts where 1 did.
        assert_eq!(
            state.apply(&put(region(2, b"", b"m", (1, 3)))),
            PdOutput::Done
        );
        assert!(!state.regions.contains_key(&1));
        assert_eq!(state.starts.get(&Bytes::new()), Some(&2));
        assert_index_matches(&state);
        let decoded = PdState::decode(&state.encode()).expect("decodes");
        assert_eq!(decoded, state);
    }

    #[test]
    fn ids_are_allocated_from_a_million_and_counts_are_bounded() {
        let mut state = PdState::default();
        assert_eq!(
            state.apply(&PdCommand::AllocIds { count: 10 }),
            PdOutput::Ids {
                first: 1_000_000,
                count: 10
            }
        );
        assert_eq!(
            state.apply(&PdCommand::AllocIds { count: 1 }),
            PdOutput::Ids {
                first: 1_000_010,
                count: 1
            }
        );
        refused_unchanged(&mut state, PdCommand::AllocIds { count: 0 });
        refused_unchanged(&mut state, PdCommand::AllocIds { count: 1001 });
        // A region reported with an id the allocator never handed out (a restored
        // cluster's): the allocator moves past it; a static region's id changes nothing.
        let restored = region(2_000_000, b"", b"", (1, 1));
        assert_eq!(state.apply(&PdCommand::PutRegion(restored)), PdOutput::Done);
        assert_eq!(
            state.apply(&PdCommand::AllocIds { count: 1 }),
            PdOutput::Ids {
                first: 2_000_001,
                count: 1
            }
        );
        let mut fresh = PdState::default();
        assert_eq!(
            fresh.apply(&PdCommand::PutRegion(region(7, b"", b"", (1, 1)))),
            PdOutput::Done
        );
        assert_eq!(fresh.next_id, 1_000_000);
    }

    #[test]
    fn config_changes_apply_through_set_and_record_their_source() {
        let mut state = PdState::default();
        let set = |key: &str, value: &str, source| PdCommand::SetConfig {
            key: key.into(),
            value: value.into(),
            source,
        };
        assert_eq!(
            state.apply(&set("max-replicas", "5", ConfigSource::Flag)),
            PdOutput::Done
        );
        assert_eq!(state.config.source("max-replicas"), ConfigSource::Flag);
        let why = refused_unchanged(&mut state, set("max-replicas", "9", ConfigSource::Set));
        assert!(why.contains("max-replicas"), "{why}");
    }

    fn operator_state() -> (PdState, Operator) {
        let mut state = PdState::default();
        state.apply(&PdCommand::PutRegion(region(1, b"", b"", (4, 1))));
        let op = Operator::planned(
            &state.regions[&1],
            OperatorKind::ReplaceDownPeer,
            vec![
                Step::AddLearner(StoreId(4)),
                Step::PromoteLearner(StoreId(4)),
                Step::RemoveVoter(StoreId(3)),
            ],
        );
        (state, op)
    }

    #[test]
    fn operators_start_once_per_region_on_the_recorded_epoch() {
        let (mut state, op) = operator_state();
        let mut stale = op.clone();
        stale.planned_on = (3, 1);
        let why = refused_unchanged(&mut state, PdCommand::StartOperator(stale));
        assert!(why.contains("epoch"), "{why}");
        let mut elsewhere = op.clone();
        elsewhere.region = 2;
        refused_unchanged(&mut state, PdCommand::StartOperator(elsewhere));
        let mut with_id = op.clone();
        with_id.id = 77;
        assert_eq!(
            state.apply(&PdCommand::StartOperator(with_id)),
            PdOutput::Ids { first: 1, count: 1 }
        );
        assert_eq!(state.operators[&1].id, 1, "the id inside is overwritten");
        let why = refused_unchanged(&mut state, PdCommand::StartOperator(op));
        assert!(why.contains("already"), "{why}");
    }

    #[test]
    fn operators_advance_one_step_at_a_time_and_finish_idempotently() {
        let (mut state, op) = operator_state();
        state.apply(&PdCommand::StartOperator(op));
        let advance = |step| PdCommand::AdvanceOperator { id: 1, step };
        assert_eq!(
            state.apply(&advance(0)),
            PdOutput::Done,
            "the current step again is a no-op"
        );
        refused_unchanged(&mut state, advance(2));
        assert_eq!(state.apply(&advance(1)), PdOutput::Done);
        assert_eq!(state.apply(&advance(1)), PdOutput::Done);
        assert_eq!(state.operators[&1].step, 1);
        refused_unchanged(&mut state, PdCommand::AdvanceOperator { id: 9, step: 1 });
        let finish = PdCommand::FinishOperator {
            id: 1,
            outcome: Outcome::TimedOut("add-learner took 5m".into()),
        };
        assert_eq!(state.apply(&finish), PdOutput::Done);
        assert!(state.operators.is_empty());
        assert_eq!(state.finished.len(), 1);
        assert_eq!(
            state.apply(&finish),
            PdOutput::Done,
            "finishing twice is a no-op"
        );
        assert_eq!(state.finished.len(), 1);
    }

    #[test]
    fn finished_operators_are_bounded() {
        let (mut state, op) = operator_state();
        for _ in 0..FINISHED_MAX + 10 {
            let epoch = state.regions[&1].epoch();
            let mut next = op.clone();
            next.planned_on = epoch;
            let PdOutput::Ids { first, .. } = state.apply(&PdCommand::StartOperator(next)) else {
                panic!("the operator starts");
            };
            state.apply(&PdCommand::FinishOperator {
                id: first,
                outcome: Outcome::Done,
            });
        }
        assert_eq!(state.finished.len(), FINISHED_MAX);
        assert_eq!(
            state.finished.back().map(|f| f.operator.id),
            Some(FINISHED_MAX as u64 + 10)
        );
    }

    fn busy_state() -> PdState {
        let (mut state, op) = operator_state();
        state.apply(&PdCommand::PutStore(store(1, "a:1")));
        state.apply(&PdCommand::PutStore(store(2, "a:2")));
        state.apply(&PdCommand::SetStoreMark {
            store: StoreId(2),
            mark: StoreMark::Offline,
        });
        state.apply(&PdCommand::PutRegion(region(0, b"", b"", (1, 1))));
        state.apply(&PdCommand::AllocIds { count: 3 });
        state.apply(&PdCommand::SetConfig {
            key: "max-store-down-time".into(),
            value: "10m".into(),
            source: ConfigSource::Set,
        });
        state.apply(&PdCommand::StartOperator(op));
        state.apply(&PdCommand::AdvanceOperator { id: 1, step: 1 });
        state.finished.push_back(FinishedOperator {
            operator: state.operators[&1].clone(),
            outcome: Outcome::Cancelled("epoch moved".into()),
        });
        state
    }

    #[test]
    fn snapshots_round_trip_and_refuse_every_cut() {
        for state in [PdState::default(), busy_state()] {
            let bytes = state.encode();
            assert_eq!(PdState::decode(&bytes).unwrap(), state);
            for len in 0..bytes.len() {
                assert!(PdState::decode(&bytes[..len]).is_err(), "cut at {len}");
            }
            let mut longer = bytes.to_vec();
            longer.push(1);
            assert!(PdState::decode(&longer)
                .unwrap_err()
                .to_string()
                .contains("trailing"));
        }
        let mut bytes = busy_state().encode().to_vec();
        bytes[0] = 9;
        assert!(PdState::decode(&bytes)
            .unwrap_err()
            .to_string()
            .contains("snapshot version 9"));
    }
}
