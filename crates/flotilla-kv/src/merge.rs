//! Region merge: the rules a replica applies to the merge entries
//! ([`crate::command::KvCommand::PrepareMerge`], `CommitMerge`, `FenceMerge`,
//! `RollbackMerge`), and the records a store keeps of them.
//!
//! A merge moves no data: the placement driver first puts the source's replicas on the
//! target's stores, so one engine per store holds both ranges. Then:
//!
//! 1. *PrepareMerge* in the source's log freezes the source: every later data command in
//!    its log is refused at apply, alike on every replica, and the store refuses reads and
//!    writes of it; its epoch moves (`version + 1`, `conf_version` = the entry's index), and
//!    it records the target it expects, at the target's epoch then ([`MergeState`]).
//! 2. *CommitMerge* in the target's log, proposed only once every replica of the source
//!    applied the prepare (so every store's engine holds the source's final data): a
//!    replica refuses it unless the target is still at the expected epoch, is adjacent to
//!    the source and has the source's members; otherwise the target takes the union of the
//!    two ranges at `version = max(source, target) + 1`, and a [`MergeRecord`] tells the
//!    store to drop the source's group (never its keys: they are the target's now).
//! 3. *FenceMerge* in the target's log moves the target's version if it is still at the
//!    expected epoch: from then on every CommitMerge for that expectation is refused. Only
//!    after the target shows a moved epoch without having absorbed the source may
//!    *RollbackMerge* in the source's log thaw it (`version + 1`). So a merge ends in
//!    exactly one of merged or rolled back.
//!
//! Every step is one engine write with the entry's applied index, so a crash either
//! applied it or did not; the records the store acts on (`merge/`, `merged/`, `region/`
//! meta keys) are in that same write, and a start finishes any record left behind before
//! it opens a region.

use bytes::Bytes;
use flotilla_node::{Configuration, LogIndex, PeerId, Term};
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::engine::meta_keys;
use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::limits::KEY_BYTES_MAX;
use crate::region::Region;

/// The format version of the encoded records.
const RECORD_VERSION: u8 = 1;
/// Most voters or learners a record may name.
const PEERS_MAX: usize = 64;
/// Longest peer id read back.
const PEER_ID_BYTES_MAX: usize = 256;
/// Longest encoded region read back.
const REGION_BYTES_MAX: usize = 64 + 2 * KEY_BYTES_MAX;

/// What a frozen source keeps between its PrepareMerge and the end of the merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeState {
    /// The source as the prepare left it (frozen).
    pub source: Region,
    /// The target, at the epoch the merge expects of it.
    pub target: Region,
    /// The source's voters at the prepare.
    pub voters: Vec<PeerId>,
    /// Its learners.
    pub learners: Vec<PeerId>,
    /// The PrepareMerge entry's index in the source's log.
    pub index: LogIndex,
}

/// A merge the target applied, as its store acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeRecord {
    /// The source as it was frozen (the region dropped).
    pub source: Region,
    /// The target after the merge (the union of both ranges).
    pub target: Region,
    /// The CommitMerge entry's index in the target's log.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
}

fn key_of(prefix: &[u8], region: RegionId) -> Bytes {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&region.0.to_be_bytes());
    Bytes::from(key)
}

/// The meta key of a frozen source's [`MergeState`].
#[must_use]
pub fn state_key(source: RegionId) -> Bytes {
    key_of(meta_keys::MERGE_PREFIX, source)
}

/// The meta key of a [`MergeRecord`] (named by the source it dropped).
#[must_use]
pub fn record_key(source: RegionId) -> Bytes {
    key_of(meta_keys::MERGED_PREFIX, source)
}

/// The meta key of a region's description as a merge step left it (its epoch moved
/// without a range change or a configuration entry; a start takes it when newer).
#[must_use]
pub fn region_key(region: RegionId) -> Bytes {
    key_of(meta_keys::REGION_PREFIX, region)
}

/// Whether two regions touch (one ends where the other starts).
#[must_use]
pub fn adjacent(a: &Region, b: &Region) -> bool {
    (!a.end.is_empty() && a.end == b.start) || (!b.end.is_empty() && b.end == a.start)
}

fn bump(version: u64, region: &Region) -> Result<u64, KvError> {
    version
        .checked_add(1)
        .ok_or_else(|| KvError::Refused(format!("merge of {region}: version overflow")))
}

fn stale(region: &Region, given: Epoch) -> KvError {
    KvError::StaleEpoch {
        region: region.id,
        current: region.epoch,
        given,
        now: None,
    }
}

/// The prepare of merging `source` (at `version`, with `configuration` in force at entry
/// `index`) into `target`: the frozen source's state, or why it is refused. Pure.
pub fn apply_prepare(
    source: &Region,
    configuration: Option<&Configuration>,
    target: &Region,
    version: u64,
    index: LogIndex,
) -> Result<MergeState, KvError> {
    if source.epoch.version != version {
        return Err(stale(
            source,
            Epoch::new(source.epoch.conf_version, version),
        ));
    }
    if target.id == source.id || target.id.0 == 0 {
        return Err(KvError::Refused(format!(
            "merge of {source}: {} cannot be its target",
            target.id
        )));
    }
    if !adjacent(source, target) {
        return Err(KvError::Refused(format!(
            "merge of {source} into {target}: the two ranges do not touch"
        )));
    }
    let Some(configuration) = configuration.filter(|c| !c.voters.is_empty()) else {
        return Err(KvError::Refused(format!(
            "merge of {source}: its configuration at entry {index} is not known"
        )));
    };
    if configuration.is_joint() {
        return Err(KvError::Refused(format!(
            "merge of {source}: its configuration is joint (a membership change is under way)"
        )));
    }
    let frozen = Region {
        epoch: Epoch::new(
            source.epoch.conf_version.max(index.0),
            bump(source.epoch.version, source)?,
        ),
        ..source.clone()
    };
    Ok(MergeState {
        source: frozen,
        target: target.clone(),
        voters: configuration.voters.iter().cloned().collect(),
        learners: configuration.learners.iter().cloned().collect(),
        index,
    })
}

/// Whether `configuration` has exactly the peers `state` recorded of the source.
fn same_members(configuration: &Configuration, state: &MergeState) -> bool {
    let voters: std::collections::BTreeSet<&PeerId> = state.voters.iter().collect();
    let learners: std::collections::BTreeSet<&PeerId> = state.learners.iter().collect();
    configuration
        .voters
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        == voters
        && configuration
            .learners
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            == learners
}

/// The commit of the merge `state` describes into `target` (with `configuration` in force
/// at entry `index`): the record of the merged target, or why it is refused. Pure.
pub fn apply_commit(
    target: &Region,
    configuration: Option<&Configuration>,
    state: &MergeState,
    index: LogIndex,
    term: Term,
) -> Result<MergeRecord, KvError> {
    if target.id != state.target.id {
        return Err(KvError::Refused(format!(
            "merge into {target}: the merge names region {} as its target",
            state.target.id
        )));
    }
    if target.epoch != state.target.epoch {
        return Err(stale(target, state.target.epoch));
    }
    let source = &state.source;
    if !adjacent(source, target) {
        return Err(KvError::Refused(format!(
            "merge of {source} into {target}: the two ranges do not touch"
        )));
    }
    let Some(configuration) = configuration.filter(|c| !c.is_joint()) else {
        return Err(KvError::Refused(format!(
            "merge into {target}: its configuration at entry {index} is unknown or joint"
        )));
    };
    if !same_members(configuration, state) {
        return Err(KvError::Refused(format!(
            "merge of {source} into {target}: the two regions are not on the same stores"
        )));
    }
    let (start, end) = if source.end == target.start && !source.end.is_empty() {
        (source.start.clone(), target.end.clone())
    } else {
        (target.start.clone(), source.end.clone())
    };
    let merged = Region {
        id: target.id,
        start,
        end,
        epoch: Epoch::new(
            target.epoch.conf_version,
            bump(source.epoch.version.max(target.epoch.version), target)?,
        ),
    };
    Ok(MergeRecord {
        source: source.clone(),
        target: merged,
        index,
        term,
    })
}

/// The fence of a merge expecting `target` at `expected`: the target with its version
/// moved when it is still at `expected` (no CommitMerge for that expectation applies after
/// it), `None` when it moved already (nothing to do). Pure.
pub fn apply_fence(target: &Region, expected: Epoch) -> Result<Option<Region>, KvError> {
    if target.epoch != expected {
        return Ok(None);
    }
    Ok(Some(Region {
        epoch: Epoch::new(
            target.epoch.conf_version,
            bump(target.epoch.version, target)?,
        ),
        ..target.clone()
    }))
}

/// The rollback of the frozen `source` (`state`: its merge) planned at `version`: the
/// source thawed with its version moved, or why it is refused. Pure.
pub fn apply_rollback(
    source: &Region,
    state: Option<&MergeState>,
    version: u64,
) -> Result<Region, KvError> {
    if state.is_none() {
        return Err(KvError::Refused(format!(
            "rollback of a merge of {source}: it is not merging"
        )));
    }
    if source.epoch.version != version {
        return Err(stale(
            source,
            Epoch::new(source.epoch.conf_version, version),
        ));
    }
    Ok(Region {
        epoch: Epoch::new(
            source.epoch.conf_version,
            bump(source.epoch.version, source)?,
        ),
        ..source.clone()
    })
}

fn write_peers(writer: &mut FieldWriter, peers: &[PeerId]) {
    writer.count(peers.len());
    for peer in peers {
        writer.bytes(peer.as_str().as_bytes());
    }
}

fn read_peers(reader: &mut FieldReader<'_>, field: &str) -> Result<Vec<PeerId>, KvError> {
    let count = reader.count(field, PEERS_MAX, 4)?;
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        peers.push(PeerId::new(&reader.string(field, PEER_ID_BYTES_MAX)?));
    }
    Ok(peers)
}

fn read_version(reader: &mut FieldReader<'_>, what: &str) -> Result<(), KvError> {
    let version = reader.u8("format version")?;
    if version != RECORD_VERSION {
        return Err(KvError::Corrupt(format!(
            "{what}: format version {version}, expected {RECORD_VERSION}"
        )));
    }
    Ok(())
}

impl MergeState {
    /// Versioned binary form (the engine's meta value under [`state_key`], and a frozen
    /// region's snapshot file).
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer = FieldWriter::with_capacity(256);
        writer.u8(RECORD_VERSION);
        writer.bytes(&self.source.encode());
        writer.bytes(&self.target.encode());
        write_peers(&mut writer, &self.voters);
        write_peers(&mut writer, &self.learners);
        writer.u64(self.index.0);
        writer.finish()
    }

    /// Decodes [`MergeState::encode`]'s output, refusing anything else (read from disk or
    /// a snapshot: not trusted).
    pub fn decode(data: &[u8]) -> Result<MergeState, KvError> {
        let mut reader = FieldReader::new(data, "merge state");
        read_version(&mut reader, "merge state")?;
        let source = Region::decode(&reader.bytes("source", REGION_BYTES_MAX)?)?;
        let target = Region::decode(&reader.bytes("target", REGION_BYTES_MAX)?)?;
        let voters = read_peers(&mut reader, "voters")?;
        let learners = read_peers(&mut reader, "learners")?;
        let index = LogIndex(reader.u64("index")?);
        reader.finish()?;
        if source.id == target.id || !adjacent(&source, &target) || voters.is_empty() {
            return Err(KvError::Corrupt(format!(
                "merge state: {source} into {target} (voters {}) is not a merge",
                voters.len()
            )));
        }
        Ok(MergeState {
            source,
            target,
            voters,
            learners,
            index,
        })
    }
}

impl MergeRecord {
    /// Versioned binary form (the engine's meta value under [`record_key`]).
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer = FieldWriter::with_capacity(128);
        writer.u8(RECORD_VERSION);
        writer.bytes(&self.source.encode());
        writer.bytes(&self.target.encode());
        writer.u64(self.index.0);
        writer.u64(self.term.0);
        writer.finish()
    }

    /// Decodes [`MergeRecord::encode`]'s output, refusing anything else.
    pub fn decode(data: &[u8]) -> Result<MergeRecord, KvError> {
        let mut reader = FieldReader::new(data, "merge record");
        read_version(&mut reader, "merge record")?;
        let source = Region::decode(&reader.bytes("source", REGION_BYTES_MAX)?)?;
        let target = Region::decode(&reader.bytes("target", REGION_BYTES_MAX)?)?;
        let index = LogIndex(reader.u64("index")?);
        let term = Term(reader.u64("term")?);
        reader.finish()?;
        if source.id == target.id
            || !target.contains_range(&source.start, &source.end)
            || index.0 == 0
        {
            return Err(KvError::Corrupt(format!(
                "merge record: {target} does not cover {source}"
            )));
        }
        Ok(MergeRecord {
            source,
            target,
            index,
            term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn region(id: u64, start: &str, end: &str, conf: u64, version: u64) -> Region {
        Region::new(RegionId(id), b(start), b(end), Epoch::new(conf, version)).unwrap()
    }

    fn voters() -> Configuration {
        Configuration::new(["s1", "s2", "s3"].map(PeerId::new))
    }

    #[test]
    fn prepare_freezes_commit_unites_and_the_records_round_trip() {
        let source = region(5, "m", "", 9, 3);
        let target = region(2, "c", "m", 4, 6);
        let state = apply_prepare(&source, Some(&voters()), &target, 3, LogIndex(40)).unwrap();
        assert_eq!(state.source, region(5, "m", "", 40, 4));
        assert_eq!(MergeState::decode(&state.encode()).unwrap(), state);
        let record = apply_commit(&target, Some(&voters()), &state, LogIndex(70), Term(2)).unwrap();
        assert_eq!(record.target, region(2, "c", "", 4, 7));
        assert_eq!(MergeRecord::decode(&record.encode()).unwrap(), record);
        // A source on the left of its target.
        let left = region(7, "a", "c", 2, 8);
        let state = apply_prepare(&left, Some(&voters()), &target, 8, LogIndex(3)).unwrap();
        let record = apply_commit(&target, Some(&voters()), &state, LogIndex(71), Term(2)).unwrap();
        assert_eq!(record.target, region(2, "a", "m", 4, 10));
    }

    #[test]
    fn prepare_and_commit_refuse_what_is_not_a_safe_merge() {
        let source = region(5, "m", "x", 9, 3);
        let target = region(2, "c", "m", 4, 6);
        let c = voters();
        assert!(matches!(
            apply_prepare(&source, Some(&c), &target, 2, LogIndex(40)),
            Err(KvError::StaleEpoch { .. })
        ));
        let far = region(2, "y", "z", 4, 6);
        assert!(apply_prepare(&source, Some(&c), &far, 3, LogIndex(40)).is_err());
        assert!(apply_prepare(&source, Some(&c), &source, 3, LogIndex(40)).is_err());
        assert!(apply_prepare(&source, None, &target, 3, LogIndex(40)).is_err());
        let mut joint = c.clone();
        joint.old_voters = Some(c.voters.clone());
        assert!(apply_prepare(&source, Some(&joint), &target, 3, LogIndex(40)).is_err());

        let state = apply_prepare(&source, Some(&c), &target, 3, LogIndex(40)).unwrap();
        // The target moved since the prepare: refused, whatever else holds.
        let moved = region(2, "c", "m", 4, 7);
        assert!(matches!(
            apply_commit(&moved, Some(&c), &state, LogIndex(9), Term(1)),
            Err(KvError::StaleEpoch { .. })
        ));
        // Not on the same stores.
        let other = Configuration::new(["s1", "s2", "s4"].map(PeerId::new));
        let why = apply_commit(&target, Some(&other), &state, LogIndex(9), Term(1))
            .unwrap_err()
            .to_string();
        assert!(why.contains("same stores"), "{why}");
        let mut learner = c.clone();
        learner.learners.insert(PeerId::new("s4"));
        assert!(apply_commit(&target, Some(&learner), &state, LogIndex(9), Term(1)).is_err());
        // Another target.
        let stranger = region(3, "c", "m", 4, 6);
        assert!(apply_commit(&stranger, Some(&c), &state, LogIndex(9), Term(1)).is_err());
    }

    #[test]
    fn a_fence_makes_every_later_commit_refused_and_then_the_source_may_thaw() {
        let source = region(5, "m", "x", 9, 3);
        let target = region(2, "c", "m", 4, 6);
        let c = voters();
        let state = apply_prepare(&source, Some(&c), &target, 3, LogIndex(40)).unwrap();
        let fenced = apply_fence(&target, state.target.epoch).unwrap().unwrap();
        assert_eq!(fenced.epoch, Epoch::new(4, 7));
        // A second fence changes nothing.
        assert_eq!(apply_fence(&fenced, state.target.epoch).unwrap(), None);
        assert!(apply_commit(&fenced, Some(&c), &state, LogIndex(9), Term(1)).is_err());
        let thawed = apply_rollback(&state.source, Some(&state), 4).unwrap();
        assert_eq!(thawed.epoch, Epoch::new(40, 5));
        assert!(apply_rollback(&thawed, None, 5).is_err(), "not merging");
        assert!(matches!(
            apply_rollback(&state.source, Some(&state), 3),
            Err(KvError::StaleEpoch { .. })
        ));
    }

    #[test]
    fn damaged_records_are_refused() {
        let source = region(5, "m", "x", 9, 3);
        let target = region(2, "c", "m", 4, 6);
        let state = apply_prepare(&source, Some(&voters()), &target, 3, LogIndex(40)).unwrap();
        let record = apply_commit(&target, Some(&voters()), &state, LogIndex(70), Term(2)).unwrap();
        for data in [state.encode(), record.encode()] {
            for cut in 0..data.len() {
                assert!(MergeState::decode(&data[..cut]).is_err());
                assert!(MergeRecord::decode(&data[..cut]).is_err());
            }
        }
        let mut wrong = record.clone();
        wrong.target.end = b("n");
        assert!(MergeRecord::decode(&wrong.encode()).is_err());
    }
}
