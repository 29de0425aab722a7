//! The durable records of the placement driver: stores, regions, and the scheduling
//! configuration with where each value came from.
//!
//! Owns: the record types, [`PdConfig`] with its key names, defaults, range checks and
//! the duration syntax (`500ms`, `10s`, `2m`, `1h`). Must never: hold soft state (last
//! heartbeat, leader, sizes): those live in the PD leader's memory only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::StoreId;

/// The most voters `max-replicas` allows (and a bootstrap records).
pub const MAX_REPLICAS_MAX: u32 = 7;

/// A store's durable mark, set by people (`admin store remove`) and the PD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreMark {
    /// In service: may receive replicas.
    Serving,
    /// Being decommissioned: its replicas are moved away; it receives none.
    Offline,
    /// Decommissioned for good: a tombstone is final and never registers again.
    Tombstone,
}

impl StoreMark {
    /// The kebab-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreMark::Serving => "serving",
            StoreMark::Offline => "offline",
            StoreMark::Tombstone => "tombstone",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            StoreMark::Serving => 0,
            StoreMark::Offline => 1,
            StoreMark::Tombstone => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<StoreMark> {
        match code {
            0 => Some(StoreMark::Serving),
            1 => Some(StoreMark::Offline),
            2 => Some(StoreMark::Tombstone),
            _ => None,
        }
    }
}

impl std::fmt::Display for StoreMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRecord {
    /// Its identity.
    pub id: StoreId,
    /// Where its raft and KV services listen (at most `ADDRESS_BYTES_MAX` bytes).
    pub address: String,
    /// Placement labels (`zone=a`), at most `LABELS_MAX`, each key and value at most
    /// `LABEL_BYTES_MAX` bytes.
    pub labels: BTreeMap<String, String>,
    /// Its durable mark.
    pub state: StoreMark,
}

/// A region (a raft group) as the placement driver last recorded it. Region 0 is the meta
/// group itself, with an empty range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRecord {
    /// Group id: 0 for the meta group, regions from 1.
    pub id: u64,
    /// First key (inclusive); empty for the start of the key space.
    pub start: Bytes,
    /// End key (exclusive); empty for the end of the key space.
    pub end: Bytes,
    /// Bumped by every membership change.
    pub conf_version: u64,
    /// Bumped by every split or merge.
    pub version: u64,
    /// The voters' stores.
    pub voters: BTreeSet<StoreId>,
    /// The learners' stores (disjoint from `voters`).
    pub learners: BTreeSet<StoreId>,
}

impl RegionRecord {
    /// `(conf_version, version)`.
    #[must_use]
    pub fn epoch(&self) -> (u64, u64) {
        (self.conf_version, self.version)
    }

    /// Whether `store` holds a voter or a learner of this region.
    #[must_use]
    pub fn has_peer(&self, store: StoreId) -> bool {
        self.voters.contains(&store) || self.learners.contains(&store)
    }

    /// Whether the key ranges of two regions overlap (an empty end is the end of the key
    /// space). Region 0 has no range and overlaps nothing.
    #[must_use]
    pub fn overlaps(&self, other: &RegionRecord) -> bool {
        if self.id == 0 || other.id == 0 {
            return false;
        }
        let self_before_other = !self.end.is_empty() && self.end <= other.start;
        let other_before_self = !other.end.is_empty() && other.end <= self.start;
        !self_before_other && !other_before_self
    }
}

/// Where a configuration value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The built-in default.
    Default,
    /// A server flag, seeded at bootstrap.
    Flag,
    /// `admin pd config set`.
    Set,
}

impl ConfigSource {
    /// The kebab-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Default => "default",
            ConfigSource::Flag => "flag",
            ConfigSource::Set => "set",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            ConfigSource::Default => 0,
            ConfigSource::Flag => 1,
            ConfigSource::Set => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<ConfigSource> {
        match code {
            0 => Some(ConfigSource::Default),
            1 => Some(ConfigSource::Flag),
            2 => Some(ConfigSource::Set),
            _ => None,
        }
    }
}

/// Every configuration key, in the order [`PdConfig::entries`] lists them.
pub const CONFIG_KEYS: [&str; 15] = [
    "max-replicas",
    "max-store-down-time",
    "store-disconnected-time",
    "replica-ops-per-store-per-minute",
    "leader-schedule-limit",
    "replica-schedule-limit",
    "operator-step-timeout",
    "size-balance-percent",
    "region-split-bytes",
    "region-split-keys",
    "region-split-load",
    "region-merge-bytes",
    "region-merge-keys",
    "split-merge-interval",
    "paused",
];

/// Longest duration any key accepts.
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Largest value of a count limit (operators in flight, operations per minute).
const LIMIT_MAX: u32 = 1024;
/// Largest `region-split-bytes` (1 TiB).
const SPLIT_BYTES_MAX: u64 = 1 << 40;
/// Largest `region-split-keys`.
const SPLIT_KEYS_MAX: u64 = 1_000_000_000_000;

/// Default `region-split-bytes`: 96 MiB. A region moves whole: a new replica receives it
/// as one snapshot, streamed under the snapshot throttle, and a leader measures it by a
/// walk over its keys. At 96 MiB a snapshot takes about a second on a local disk and ten
/// over a 100 Mbit/s link, and a measure a fraction of a second; TiKV used this value for
/// years before its larger regions came with a log engine built for them (256 MiB).
pub const REGION_SPLIT_BYTES_DEFAULT: u64 = 96 << 20;
/// Default `region-split-keys`: 960,000, TiKV's ratio of 10,000 keys per MiB of
/// `region-split-bytes` (a region of 100-byte pairs reaches both at once).
pub const REGION_SPLIT_KEYS_DEFAULT: u64 = 960_000;

/// The scheduling configuration, replicated through the meta group.
#[derive(Clone, Debug, PartialEq)]
pub struct PdConfig {
    /// Voters each region should have (1..=7; default 3).
    pub max_replicas: u32,
    /// A store silent this long is down: its replicas are replaced (default 120 s).
    pub max_store_down_time: Duration,
    /// A store silent this long is disconnected: it receives nothing new, its replicas
    /// are not yet replaced (default 20 s, two missed store heartbeats).
    pub store_disconnected_time: Duration,
    /// Replica additions, and separately removals, per store per minute (default 15, as
    /// TiKV's PD).
    pub replica_ops_per_store_per_minute: u32,
    /// Leader transfers in flight at once (default 4).
    pub leader_schedule_limit: u32,
    /// Replica-changing operators in flight at once (default 16).
    pub replica_schedule_limit: u32,
    /// How long one operator step may take before the operator is cancelled. Default 5
    /// minutes: adding a learner may wait for a whole region snapshot to be sent under the
    /// snapshot throttle and applied, which takes far longer than a membership change; a
    /// shorter timeout would cancel healthy moves of large regions over and over, while a
    /// stuck step costs only its own region's progress meanwhile.
    pub operator_step_timeout: Duration,
    /// Balance by used bytes, rather than region count, once a store's used bytes differ
    /// from the mean by more than this percentage (default 20).
    pub size_balance_percent: u32,
    /// A region whose data (keys and values) reaches this many bytes is split at its
    /// middle key by size (default 96 MiB; see [`REGION_SPLIT_BYTES_DEFAULT`] for why).
    pub region_split_bytes: u64,
    /// A region holding this many keys is split (default 960,000: 96 MiB at 100-byte
    /// pairs, so that a region of small pairs splits as soon as one of large pairs).
    pub region_split_keys: u64,
    /// A region written faster than this many keys per second (through its leader) in
    /// its reports for six store heartbeats (a minute by default) is split at the key
    /// that divides its writes (default 3,000, TiKV's load-split threshold; 0 turns
    /// load-based splitting off).
    pub region_split_load: u64,
    /// A region whose data is under this many bytes, and whose neighbour's is too, may
    /// merge into it (default 20 MiB, TiKV's `max-merge-region-size`: a fifth of
    /// `region-split-bytes`, so that a merged region is far from splitting again; 0 here or
    /// in `region_merge_keys` turns the merge checker off).
    pub region_merge_bytes: u64,
    /// ... and holding fewer than this many keys (default 200,000, TiKV's
    /// `max-merge-region-keys`).
    pub region_merge_keys: u64,
    /// A region that split (or merged) less than this long ago is not merged (default
    /// 1 hour, TiKV's: a region split by load or size is not merged back before its
    /// halves had a chance to be balanced).
    pub split_merge_interval: Duration,
    /// `admin pd pause`: the planners return nothing.
    pub paused: bool,
    sources: BTreeMap<String, ConfigSource>,
}

impl Default for PdConfig {
    fn default() -> PdConfig {
        PdConfig {
            max_replicas: 3,
            max_store_down_time: Duration::from_secs(120),
            store_disconnected_time: Duration::from_secs(20),
            replica_ops_per_store_per_minute: 15,
            leader_schedule_limit: 4,
            replica_schedule_limit: 16,
            operator_step_timeout: Duration::from_secs(300),
            size_balance_percent: 20,
            region_split_bytes: REGION_SPLIT_BYTES_DEFAULT,
            region_split_keys: REGION_SPLIT_KEYS_DEFAULT,
            region_split_load: 3000,
            region_merge_bytes: 20 << 20,
            region_merge_keys: 200_000,
            split_merge_interval: Duration::from_secs(3600),
            paused: false,
            sources: BTreeMap::new(),
        }
    }
}

impl PdConfig {
    /// Sets `key` to `value` as `admin pd config set` does (source [`ConfigSource::Set`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.set_from(key, value, ConfigSource::Set)
    }

    /// Sets `key` from a server flag at bootstrap (source [`ConfigSource::Flag`]).
    pub fn seed(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.set_from(key, value, ConfigSource::Flag)
    }

    /// Sets `key` to `value`, recording `source`. Refuses an unknown key or a value out
    /// of range, changing nothing.
    pub fn set_from(&mut self, key: &str, value: &str, source: ConfigSource) -> Result<(), String> {
        let value = value.trim();
        let bad = |why: &str| format!("config {key}: {value:?} {why}");
        match key {
            "max-replicas" => {
                self.max_replicas = parse_count(value, 1, MAX_REPLICAS_MAX).map_err(|w| bad(&w))?;
            }
            "max-store-down-time" => {
                self.max_store_down_time = parse_bounded_duration(value).map_err(|w| bad(&w))?;
            }
            "store-disconnected-time" => {
                self.store_disconnected_time =
                    parse_bounded_duration(value).map_err(|w| bad(&w))?;
            }
            "replica-ops-per-store-per-minute" => {
                self.replica_ops_per_store_per_minute =
                    parse_count(value, 1, LIMIT_MAX).map_err(|w| bad(&w))?;
            }
            "leader-schedule-limit" => {
                self.leader_schedule_limit =
                    parse_count(value, 0, LIMIT_MAX).map_err(|w| bad(&w))?;
            }
            "replica-schedule-limit" => {
                self.replica_schedule_limit =
                    parse_count(value, 0, LIMIT_MAX).map_err(|w| bad(&w))?;
            }
            "operator-step-timeout" => {
                self.operator_step_timeout = parse_bounded_duration(value).map_err(|w| bad(&w))?;
            }
            "size-balance-percent" => {
                self.size_balance_percent = parse_count(value, 1, 1000).map_err(|w| bad(&w))?;
            }
            "region-split-bytes" => {
                self.region_split_bytes =
                    parse_bytes(value, 1, SPLIT_BYTES_MAX).map_err(|w| bad(&w))?;
            }
            "region-split-keys" => {
                self.region_split_keys =
                    parse_u64(value, 1, SPLIT_KEYS_MAX).map_err(|w| bad(&w))?;
            }
            "region-split-load" => {
                self.region_split_load =
                    parse_u64(value, 0, SPLIT_KEYS_MAX).map_err(|w| bad(&w))?;
            }
            "region-merge-bytes" => {
                self.region_merge_bytes =
                    parse_bytes(value, 0, SPLIT_BYTES_MAX).map_err(|w| bad(&w))?;
            }
            "region-merge-keys" => {
                self.region_merge_keys =
                    parse_u64(value, 0, SPLIT_KEYS_MAX).map_err(|w| bad(&w))?;
            }
            "split-merge-interval" => {
                self.split_merge_interval = parse_bounded_duration(value).map_err(|w| bad(&w))?;
            }
            "paused" => {
                self.paused = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("is not true or false")),
                };
            }
            _ => {
                return Err(format!(
                    "config: unknown key {key:?} (known: {})",
                    CONFIG_KEYS.join(", ")
                ))
            }
        }
        self.sources.insert(key.to_string(), source);
        Ok(())
    }

    /// Where the value of `key` came from ([`ConfigSource::Default`] for a key never set,
    /// or unknown).
    #[must_use]
    pub fn source(&self, key: &str) -> ConfigSource {
        self.sources
            .get(key)
            .copied()
            .unwrap_or(ConfigSource::Default)
    }

    /// Every key with its value formatted as [`PdConfig::set`] accepts it.
    #[must_use]
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        CONFIG_KEYS
            .iter()
            .map(|&key| (key, self.value(key)))
            .collect()
    }

    /// The keys ever set (by flag, by `set`, or explicitly to a default), with their values
    /// and sources: what a snapshot must carry to rebuild this configuration.
    #[must_use]
    pub fn recorded(&self) -> Vec<(&'static str, String, ConfigSource)> {
        CONFIG_KEYS
            .iter()
            .filter_map(|&key| {
                let source = self.sources.get(key)?;
                Some((key, self.value(key), *source))
            })
            .collect()
    }

    fn value(&self, key: &str) -> String {
        match key {
            "max-replicas" => self.max_replicas.to_string(),
            "max-store-down-time" => format_duration(self.max_store_down_time),
            "store-disconnected-time" => format_duration(self.store_disconnected_time),
            "replica-ops-per-store-per-minute" => self.replica_ops_per_store_per_minute.to_string(),
            "leader-schedule-limit" => self.leader_schedule_limit.to_string(),
            "replica-schedule-limit" => self.replica_schedule_limit.to_string(),
            "operator-step-timeout" => format_duration(self.operator_step_timeout),
            "size-balance-percent" => self.size_balance_percent.to_string(),
            "region-split-bytes" => format_bytes(self.region_split_bytes),
            "region-split-keys" => self.region_split_keys.to_string(),
            "region-split-load" => self.region_split_load.to_string(),
            "region-merge-bytes" => format_bytes(self.region_merge_bytes),
            "region-merge-keys" => self.region_merge_keys.to_string(),
            "split-merge-interval" => format_duration(self.split_merge_interval),
            _ => self.paused.to_string(),
        }
    }
}

fn parse_count(value: &str, min: u32, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("is out of range {min}..={max}")),
        Err(_) => Err("is not a whole number".to_string()),
    }
}

fn parse_u64(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("is out of range {min}..={max}")),
        Err(_) => Err("is not a whole number".to_string()),
    }
}

/// Byte units [`parse_bytes`] accepts, largest first.
const BYTE_UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Parses a size: a whole number of bytes, or one followed by `KiB`, `MiB`, `GiB` or
/// `TiB`, within `min..=max` bytes.
pub fn parse_bytes(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let per = match unit.trim() {
        "" | "B" => 1,
        unit => BYTE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or("is not a size (a whole number, then nothing, B, KiB, MiB, GiB or TiB)")?,
    };
    let number: u64 = number
        .parse()
        .map_err(|_| "is not a size (a whole number, then nothing, B, KiB, MiB, GiB or TiB)")?;
    match number.checked_mul(per) {
        Some(bytes) if (min..=max).contains(&bytes) => Ok(bytes),
        _ => Err(format!(
            "is out of range {}..={}",
            format_bytes(min),
            format_bytes(max)
        )),
    }
}

/// Formats a size in the largest unit that divides it exactly (`96MiB`, `1500`).
#[must_use]
pub fn format_bytes(bytes: u64) -> String {
    for (unit, per) in BYTE_UNITS {
        if bytes != 0 && bytes.is_multiple_of(per) {
            return format!("{}{unit}", bytes / per);
        }
    }
    bytes.to_string()
}

fn parse_bounded_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() || duration > DURATION_MAX {
        return Err("must be more than 0 and at most 24h".to_string());
    }
    Ok(duration)
}

/// Parses a whole number followed by a unit: `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let bad = || format!("{text:?} is not a duration (a whole number then ms, s, m or h)");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration in the largest unit that divides it exactly (`2m`, `90s`,
/// `1500ms`); sub-millisecond parts are dropped.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0ms".to_string();
    }
    for (unit, per) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_bad_ones_are_named() {
        for text in ["500ms", "10s", "2m", "1h", "90s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_round_trip_and_bad_ones_are_named() {
        for text in ["96MiB", "1500", "1KiB", "3GiB", "1TiB"] {
            assert_eq!(format_bytes(parse_bytes(text, 1, u64::MAX).unwrap()), text);
        }
        assert_eq!(parse_bytes("2048", 1, u64::MAX), Ok(2048));
        assert_eq!(format_bytes(2048), "2KiB");
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "10 mb",
            "99999999999999999999TiB",
        ] {
            assert!(parse_bytes(bad, 1, u64::MAX).is_err(), "{bad}");
        }
        assert!(parse_bytes("0", 1, 10)
            .unwrap_err()
            .contains("out of range"));
        let mut config = PdConfig::default();
        assert_eq!(config.region_split_bytes, 96 << 20);
        config.set("region-split-bytes", "64KiB").unwrap();
        config.set("region-split-keys", "500").unwrap();
        assert_eq!(
            (config.region_split_bytes, config.region_split_keys),
            (65536, 500)
        );
        assert!(config.set("region-split-keys", "0").is_err());
        assert!(config.set("region-split-bytes", "2TiB").is_err());
        assert_eq!(
            config.region_split_bytes, 65536,
            "a refused set changes nothing"
        );
    }

    #[test]
    fn set_checks_ranges_names_the_key_and_tracks_sources() {
        let mut config = PdConfig::default();
        assert_eq!(config.source("max-replicas"), ConfigSource::Default);
        config.seed("max-replicas", "5").unwrap();
        assert_eq!(config.max_replicas, 5);
        assert_eq!(config.source("max-replicas"), ConfigSource::Flag);
        config.set("max-store-down-time", "30m").unwrap();
        assert_eq!(config.max_store_down_time, Duration::from_secs(1800));
        assert_eq!(config.source("max-store-down-time"), ConfigSource::Set);
        let error = config.set("max-replicas", "8").unwrap_err();
        assert!(
            error.contains("max-replicas") && error.contains("\"8\""),
            "{error}"
        );
        assert!(config.set("operator-step-timeout", "25h").is_err());
        assert!(config.set("operator-step-timeout", "0s").is_err());
        assert!(config
            .set("no-such-key", "1")
            .unwrap_err()
            .contains("no-such-key"));
        assert_eq!(config.max_replicas, 5, "a refused set changes nothing");
        let entries = config.entries();
        assert_eq!(entries.len(), CONFIG_KEYS.len());
        assert!(entries.contains(&("max-store-down-time", "30m".to_string())));
        let mut again = PdConfig::default();
        for (key, value) in &entries {
            again.set_from(key, value, config.source(key)).unwrap();
        }
        assert_eq!(again.entries(), entries);
    }

    #[test]
    fn ranges_overlap_only_when_they_share_keys() {
        let region = |id, start: &'static [u8], end: &'static [u8]| RegionRecord {
            id,
            start: Bytes::from_static(start),
            end: Bytes::from_static(end),
            conf_version: 1,
            version: 1,
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
        };
        assert!(!region(1, b"", b"m").overlaps(&region(2, b"m", b"")));
        assert!(region(1, b"", b"n").overlaps(&region(2, b"m", b"")));
        assert!(region(1, b"", b"").overlaps(&region(2, b"a", b"b")));
        assert!(!region(0, b"", b"").overlaps(&region(2, b"a", b"b")));
    }
}
