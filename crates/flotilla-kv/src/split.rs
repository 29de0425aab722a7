//! Region split: the rule a replica applies to a split entry
//! ([`crate::command::KvCommand::Split`]), and the record of a split a store has yet to
//! act on.
//!
//! A split is one entry in the parent's raft log. Every replica applies it at the same
//! point of its log, with the same region and the same configuration in force (the node
//! runtime tells the state machine each configuration in apply order), so every replica
//! reaches the same outcome: refused, changing nothing, or
//!
//! - the parent keeps `[start, key)`, its `version` one higher, its `conf_version` as is;
//! - the child takes `[key, end)` with the new region id the entry carries, at the same
//!   `version`, and `conf_version` = the split entry's index: the child's log begins
//!   right after that entry (`flotilla_node::GroupStart`), so its own configuration
//!   entries have larger indexes and its `conf_version` keeps growing;
//! - the child starts on the parent's stores with the parent's voters and learners.
//!
//! No data moves: one engine holds every region of a store, so the child's keys are
//! already there. The engine write that applies the split carries, atomically, the
//! parent's applied index, the child's applied index (the split entry: the child's state
//! machine skips nothing and replays nothing before it) and a [`SplitRecord`] under
//! `split/<child id>`: until the store has recorded the new ranges in `store.meta` and
//! started the child, a crash at any point leaves the record behind, and the next start
//! finishes the job before opening any region (so the parent never reopens with its old
//! range over the child's keys).

use bytes::Bytes;
use flotilla_node::{Configuration, LogIndex, PeerId, Term};
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::engine::meta_keys;
use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::limits::KEY_BYTES_MAX;
use crate::region::Region;

/// The format version of an encoded [`SplitRecord`].
const SPLIT_RECORD_VERSION: u8 = 1;
/// Most voters or learners a split record may name (a region never has more peers than
/// the stores it may be on; this only bounds what a damaged record makes us allocate).
const PEERS_MAX: usize = 64;
/// Longest peer id read back.
const PEER_ID_BYTES_MAX: usize = 256;

/// A split applied by a region's state machine, as its store acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRecord {
    /// The parent after the split.
    pub parent: Region,
    /// The child.
    pub child: Region,
    /// The parent's voters at the split: the child's.
    pub voters: Vec<PeerId>,
    /// The parent's learners at the split: the child's.
    pub learners: Vec<PeerId>,
    /// The split entry's index in the parent's log.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
}

/// The meta key of the record of a split that made `child`.
#[must_use]
pub fn record_key(child: RegionId) -> Bytes {
    let mut key = Vec::with_capacity(meta_keys::SPLIT_PREFIX.len() + 8);
    key.extend_from_slice(meta_keys::SPLIT_PREFIX);
    key.extend_from_slice(&child.0.to_be_bytes());
    Bytes::from(key)
}

/// The outcome of applying a split to `region` at log position (`index`, `term`) with
/// `configuration` in force: the new parent and child, or why it is refused. Pure and
/// deterministic.
pub fn apply_split(
    region: &Region,
    configuration: Option<&Configuration>,
    key: &Bytes,
    child: RegionId,
    version: u64,
    index: LogIndex,
    term: Term,
) -> Result<SplitRecord, KvError> {
    if region.epoch.version != version {
        return Err(KvError::StaleEpoch {
            region: region.id,
            current: region.epoch,
            given: Epoch::new(region.epoch.conf_version, version),
            now: None,
        });
    }
    if child == region.id || child.0 == 0 {
        return Err(KvError::Refused(format!(
            "split of {region}: {child} cannot be the child's id"
        )));
    }
    if key.is_empty() || key == &region.start || !region.contains(key) {
        return Err(KvError::Refused(format!(
            "split of {region}: key {} does not lie strictly inside it",
            crate::error::show(key)
        )));
    }
    let Some(configuration) = configuration.filter(|c| !c.voters.is_empty()) else {
        return Err(KvError::Refused(format!(
            "split of {region}: its configuration at entry {index} is not known"
        )));
    };
    if configuration.is_joint() {
        return Err(KvError::Refused(format!(
            "split of {region}: its configuration is joint (a membership change is under way)"
        )));
    }
    let version = region
        .epoch
        .version
        .checked_add(1)
        .ok_or_else(|| KvError::Refused(format!("split of {region}: version overflow")))?;
    let parent = Region {
        id: region.id,
        start: region.start.clone(),
        end: key.clone(),
        epoch: Epoch::new(region.epoch.conf_version, version),
    };
    let child = Region {
        id: child,
        start: key.clone(),
        end: region.end.clone(),
        epoch: Epoch::new(index.0, version),
    };
    Ok(SplitRecord {
        parent,
        child,
        voters: configuration.voters.iter().cloned().collect(),
        learners: configuration.learners.iter().cloned().collect(),
        index,
        term,
    })
}

impl SplitRecord {
    /// The child's configuration at its start.
    #[must_use]
    pub fn configuration(&self) -> Configuration {
        let mut configuration = Configuration::new(self.voters.iter().cloned());
        configuration.learners = self.learners.iter().cloned().collect();
        configuration
    }

    /// Versioned binary form (the engine's meta value under [`record_key`]).
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer = FieldWriter::with_capacity(128);
        writer.u8(SPLIT_RECORD_VERSION);
        writer.bytes(&self.parent.encode());
        writer.bytes(&self.child.encode());
        for peers in [&self.voters, &self.learners] {
            writer.count(peers.len());
            for peer in peers {
                writer.bytes(peer.as_str().as_bytes());
            }
        }
        writer.u64(self.index.0);
        writer.u64(self.term.0);
        writer.finish()
    }

    /// Decodes [`SplitRecord::encode`]'s output, refusing anything else (a record read
    /// from disk is not trusted): another version, short or trailing bytes, counts over
    /// their limits, regions that are not the two halves of one range.
    pub fn decode(data: &[u8]) -> Result<SplitRecord, KvError> {
        let mut reader = FieldReader::new(data, "split record");
        let version = reader.u8("format version")?;
        if version != SPLIT_RECORD_VERSION {
            return Err(KvError::Corrupt(format!(
                "split record: format version {version}, expected {SPLIT_RECORD_VERSION}"
            )));
        }
        let region_bytes_max = 64 + 2 * KEY_BYTES_MAX;
        let parent = Region::decode(&reader.bytes("parent", region_bytes_max)?)?;
        let child = Region::decode(&reader.bytes("child", region_bytes_max)?)?;
        let mut lists = Vec::with_capacity(2);
        for field in ["voters", "learners"] {
            let count = reader.count(field, PEERS_MAX, 4)?;
            let mut peers = Vec::with_capacity(count);
            for _ in 0..count {
                let id = reader.string(field, PEER_ID_BYTES_MAX)?;
                peers.push(PeerId::new(&id));
            }
            lists.push(peers);
        }
        let index = LogIndex(reader.u64("index")?);
        let term = Term(reader.u64("term")?);
        reader.finish()?;
        let learners = lists.pop().unwrap_or_default();
        let voters = lists.pop().unwrap_or_default();
        if parent.end != child.start
            || parent.end.is_empty()
            || parent.id == child.id
            || parent.epoch.version != child.epoch.version
            || voters.is_empty()
            || index.0 == 0
        {
            return Err(KvError::Corrupt(format!(
                "split record: {parent} and {child} (voters {}, entry {index}) are not a split",
                voters.len()
            )));
        }
        Ok(SplitRecord {
            parent,
            child,
            voters,
            learners,
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

    fn region() -> Region {
        Region::new(RegionId(3), b("c"), b("x"), Epoch::new(12, 4)).unwrap()
    }

    fn voters() -> Configuration {
        Configuration::new(["s1", "s2", "s3"].map(PeerId::new))
    }

    #[test]
    fn a_split_halves_the_range_and_moves_both_versions() {
        let mut configuration = voters();
        configuration.learners.insert(PeerId::new("s4"));
        let record = apply_split(
            &region(),
            Some(&configuration),
            &b("m"),
            RegionId(1_000_001),
            4,
            LogIndex(40),
            Term(6),
        )
        .unwrap();
        assert_eq!(
            record.parent,
            Region::new(RegionId(3), b("c"), b("m"), Epoch::new(12, 5)).unwrap()
        );
        assert_eq!(
            record.child,
            Region::new(RegionId(1_000_001), b("m"), b("x"), Epoch::new(40, 5)).unwrap()
        );
        assert_eq!(record.configuration(), configuration);
        assert_eq!(SplitRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn a_split_is_refused_at_another_version_outside_the_range_or_in_joint_state() {
        let r = region();
        let c = voters();
        let split = |key: &str, child: u64, version: u64, c: Option<&Configuration>| {
            apply_split(
                &r,
                c,
                &b(key),
                RegionId(child),
                version,
                LogIndex(9),
                Term(2),
            )
        };
        assert!(matches!(
            split("m", 7, 3, Some(&c)),
            Err(KvError::StaleEpoch { .. })
        ));
        for key in ["c", "a", "x", "y", ""] {
            let why = split(key, 7, 4, Some(&c)).unwrap_err().to_string();
            assert!(why.contains("strictly inside"), "{key}: {why}");
        }
        assert!(split("m", 3, 4, Some(&c)).is_err(), "the parent's own id");
        assert!(split("m", 0, 4, Some(&c)).is_err(), "region 0");
        assert!(split("m", 7, 4, None).is_err(), "no configuration known");
        let mut joint = c.clone();
        joint.old_voters = Some(c.voters.clone());
        let why = split("m", 7, 4, Some(&joint)).unwrap_err().to_string();
        assert!(why.contains("joint"), "{why}");
        // An unbounded region splits anywhere after its start.
        let whole = Region::whole(RegionId(1), Epoch::new(1, 1));
        let record = apply_split(
            &whole,
            Some(&c),
            &b("k"),
            RegionId(2),
            1,
            LogIndex(5),
            Term(1),
        )
        .unwrap();
        assert!(record.parent.end == b("k") && record.child.end.is_empty());
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let record = apply_split(
            &region(),
            Some(&voters()),
            &b("m"),
            RegionId(8),
            4,
            LogIndex(40),
            Term(6),
        )
        .unwrap();
        let data = record.encode();
        for cut in 0..data.len() {
            assert!(SplitRecord::decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(SplitRecord::decode(&longer).is_err());
        let mut not_halves = record.clone();
        not_halves.child.start = b("n");
        assert!(SplitRecord::decode(&not_halves.encode()).is_err());
    }
}
