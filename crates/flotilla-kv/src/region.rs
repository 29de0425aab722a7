//! Regions: the key range `[start, end)` a raft group replicates, with its epoch
//! (docs/DESIGN.md vocabulary: region, epoch). [`RegionId`] and [`Epoch`] are defined in
//! `ids` (a leaf) and re-exported here, so `region::{Epoch, RegionId}` keeps working.
//!
//! Owns: range membership (`contains`, `contains_range`) and the compact encoding the
//! store persists region metadata with. Must never: treat an empty `end` as anything but
//! "unbounded", or an empty `start` as anything but "from the first key".

use std::fmt;

use bytes::Bytes;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::error::KvError;
pub use crate::ids::{Epoch, RegionId};
use crate::limits::KEY_BYTES_MAX;

/// Metadata key of a `StaleEpoch` answer carrying the region as it is now: hex of
/// [`Region::encode`] (a client decodes it with [`Region::decode`], which checks it like
/// any input from the network).
pub const REGION_KEY: &str = "flotilla-region";

/// A key range `[start, end)` with its epoch. An empty `end` is unbounded.
///
/// Invariant: `end` is empty or `start < end` (checked by [`Region::new`] and
/// [`Region::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region {
    /// The region's id.
    pub id: RegionId,
    /// First key of the region (inclusive); empty = from the first key.
    pub start: Bytes,
    /// First key past the region (exclusive); empty = unbounded.
    pub end: Bytes,
    /// Current epoch.
    pub epoch: Epoch,
}

/// Version of [`Region::encode`]'s format.
const REGION_FORMAT_VERSION: u8 = 1;

impl Region {
    /// A region, refusing keys over the key limit and an empty range (`start >= end`
    /// with a bounded end).
    pub fn new(id: RegionId, start: Bytes, end: Bytes, epoch: Epoch) -> Result<Region, KvError> {
        crate::limits::check_key(&start)?;
        crate::limits::check_key(&end)?;
        if !end.is_empty() && start >= end {
            return Err(KvError::InvalidRange {
                start: crate::error::show(&start),
                end: crate::error::show(&end),
            });
        }
        Ok(Region {
            id,
            start,
            end,
            epoch,
        })
    }

    /// A region covering every key.
    #[must_use]
    pub fn whole(id: RegionId, epoch: Epoch) -> Region {
        Region {
            id,
            start: Bytes::new(),
            end: Bytes::new(),
            epoch,
        }
    }

    /// Whether `key` lies in `[start, end)`.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_ref() && (self.end.is_empty() || key < self.end.as_ref())
    }

    /// Whether the range `[start, end)` (an empty `end` = unbounded) lies within the
    /// region. An empty range (`start == end`, bounded) inside the region counts.
    #[must_use]
    pub fn contains_range(&self, start: &[u8], end: &[u8]) -> bool {
        if start < self.start.as_ref() {
            return false;
        }
        if self.end.is_empty() {
            return true;
        }
        // A bounded region cannot hold an unbounded range.
        !end.is_empty() && end <= self.end.as_ref() && start <= end
    }

    /// The error for `key` lying outside this region.
    #[must_use]
    pub fn out_of_region(&self, key: &[u8]) -> KvError {
        KvError::KeyOutOfRegion {
            region: self.id,
            key: crate::error::show(key),
            start: crate::error::show(&self.start),
            end: crate::error::show(&self.end),
        }
    }

    /// Refuses `key` unless the region contains it.
    pub fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if self.contains(key) {
            Ok(())
        } else {
            Err(self.out_of_region(key))
        }
    }

    /// Whether the two regions' ranges share a key (an empty `end` is unbounded).
    #[must_use]
    pub fn overlaps(&self, other: &Region) -> bool {
        let starts_before_end = |start: &Bytes, end: &Bytes| end.is_empty() || start < end;
        starts_before_end(&self.start, &other.end) && starts_before_end(&other.start, &self.end)
    }

    /// Refuses `[start, end)` unless it is a valid range the region contains.
    pub fn check_range(&self, start: &[u8], end: &[u8]) -> Result<(), KvError> {
        crate::limits::check_range(start, end)?;
        if self.contains_range(start, end) {
            Ok(())
        } else if !self.contains(start) {
            Err(self.out_of_region(start))
        } else {
            Err(self.out_of_region(end))
        }
    }

    /// Compact binary form: format version, id, epoch, start, end.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut writer =
            FieldWriter::with_capacity(1 + 8 * 3 + 8 + self.start.len() + self.end.len());
        writer.u8(REGION_FORMAT_VERSION);
        writer.u64(self.id.0);
        writer.u64(self.epoch.conf_version);
        writer.u64(self.epoch.version);
        writer.bytes(&self.start);
        writer.bytes(&self.end);
        writer.finish()
    }

    /// Decodes [`Region::encode`]'s output, refusing other versions, short or trailing
    /// input, oversized keys and an empty range.
    pub fn decode(data: &[u8]) -> Result<Region, KvError> {
        let mut reader = FieldReader::new(data, "region");
        let version = reader.u8("format version")?;
        if version != REGION_FORMAT_VERSION {
            return Err(KvError::Corrupt(format!(
                "region: format version {version}, expected {REGION_FORMAT_VERSION}"
            )));
        }
        let id = RegionId(reader.u64("id")?);
        let epoch = Epoch::new(reader.u64("conf_version")?, reader.u64("version")?);
        let start = reader.bytes("start key", KEY_BYTES_MAX)?;
        let end = reader.bytes("end key", KEY_BYTES_MAX)?;
        reader.finish()?;
        Region::new(id, start, end, epoch)
            .map_err(|e| KvError::Corrupt(format!("region {id}: {e}")))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "region {} [{:?}, {:?}) epoch {}",
            self.id,
            crate::error::show(&self.start),
            crate::error::show(&self.end),
            self.epoch
        )
    }
}

/// The region described by `info` (id, range, epoch), checked: how the client and the
/// service read a region off the wire.
pub fn region_of(info: &crate::service::proto::RegionInfo) -> Result<Region, KvError> {
    Region::new(
        RegionId(info.id),
        info.start.clone(),
        info.end.clone(),
        Epoch::new(info.conf_version, info.version),
    )
}
