//! The store's space quota: etcd's NOSPACE alarm for one store. A background task measures
//! the data directory every [`USAGE_INTERVAL`]; while its size is at or over the quota the
//! alarm is on and the store refuses writes that add data ([`crate::KvError::NoSpace`]),
//! so the disk is not filled to the point where an fsync fails (which stops every region
//! of the store). Reads, deletes, delete-ranges and compaction (snapshots, log truncation,
//! the engine's own) go on and bring usage back down; the alarm clears at the next
//! measurement below the quota.
//!
//! Owns: the measurement (a walk of the directory tree: the raft log, snapshots and the
//! engine's files, the sizes the file system reports) and the alarm's state. Must never:
//! block an async worker (the walk runs on the blocking pool), or hold anything across the
//! walk.
//!
//! Known debt: the alarm is per store and gates the writes proposed through it (a region's
//! leader); a follower store over its quota still applies what its leaders commit (etcd
//! raises its alarm through raft, for the whole cluster).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Default quota of a store's data directory: 8 GiB, etcd's suggested maximum backend quota
/// (its default is 2 GiB): large enough for any workload this store is meant for (its log
/// is compacted by snapshots), small enough to alarm well before a typical volume fills.
pub const QUOTA_BYTES_DEFAULT: u64 = 8 * 1024 * 1024 * 1024;

/// How often the data directory is measured: a walk of its files (a few hundred, however
/// many regions: raft meta is one journal, a region's snapshot directory exists only once
/// it has a snapshot), cheap; the
/// alarm lags usage by at most this (plus the walk), so a quota should leave room for
/// what the store can write in that time.
pub const USAGE_INTERVAL: Duration = Duration::from_secs(2);

/// Most directory entries one measurement visits (a bound on a walk of a damaged or
/// hostile tree: a store's data dir holds hundreds).
const WALK_ENTRIES_MAX: usize = 1_000_000;

/// The alarm's state, shared by the store and its measuring task.
#[derive(Debug)]
pub(crate) struct SpaceQuota {
    /// The quota in bytes; 0 = unlimited (never alarms).
    quota_bytes: u64,
    /// The data directory's size at the last measurement.
    used_bytes: AtomicU64,
    alarm: AtomicBool,
}

impl SpaceQuota {
    pub(crate) fn new(quota_bytes: u64) -> SpaceQuota {
        SpaceQuota {
            quota_bytes,
            used_bytes: AtomicU64::new(0),
            alarm: AtomicBool::new(false),
        }
    }

    pub(crate) fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    /// Whether writes that add data are refused now.
    pub(crate) fn alarm(&self) -> bool {
        self.alarm.load(Ordering::Acquire)
    }

    /// Records a measurement; logs when the alarm turns on or off.
    pub(crate) fn record(&self, used_bytes: u64, store: &str) {
        self.used_bytes.store(used_bytes, Ordering::Release);
        let over = self.quota_bytes != 0 && used_bytes >= self.quota_bytes;
        let was = self.alarm.swap(over, Ordering::AcqRel);
        if over && !was {
            tracing::warn!(
                store,
                used_bytes,
                quota_bytes = self.quota_bytes,
                "NOSPACE alarm: data dir over its quota; writes that add data are refused"
            );
        } else if was && !over {
            tracing::info!(
                store,
                used_bytes,
                quota_bytes = self.quota_bytes,
                "NOSPACE alarm cleared: data dir below its quota again"
            );
        }
    }

    /// The Prometheus lines of the quota.
    pub(crate) fn metrics_text(&self) -> String {
        flotilla_node::exposition::gauges_text(&[
            (
                "flotilla_store_data_bytes",
                "Size of the store's data directory at the last measurement.",
                self.used_bytes(),
            ),
            (
                "flotilla_store_quota_bytes",
                "The store's data quota (0: unlimited).",
                self.quota_bytes,
            ),
            (
                "flotilla_store_nospace_alarm",
                "Whether the NOSPACE alarm is on (1): the data is over its quota and writes \
                 that add data are refused.",
                u64::from(self.alarm()),
            ),
        ])
    }
}

/// The total size of the regular files under `dir` (symbolic links are not followed).
/// Files that vanish during the walk (a compaction, a log segment removed) are skipped;
/// another error ends the walk with what was counted, logged by the caller.
pub(crate) fn directory_bytes(dir: &Path) -> Result<u64, String> {
    let mut total = 0u64;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(next) = pending.pop() {
        let entries = match std::fs::read_dir(&next) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("listing {}: {e}", next.display())),
        };
        for entry in entries {
            visited += 1;
            if visited > WALK_ENTRIES_MAX {
                return Err(format!(
                    "{} holds more than {WALK_ENTRIES_MAX} entries; measured part of it",
                    dir.display()
                ));
            }
            let Ok(entry) = entry else { continue };
            let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                total = total.saturating_add(metadata.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_follows_usage_against_the_quota() {
        let quota = SpaceQuota::new(100);
        assert!(!quota.alarm());
        quota.record(99, "s");
        assert!(!quota.alarm());
        quota.record(100, "s");
        assert!(quota.alarm());
        assert!(quota
            .metrics_text()
            .contains("\nflotilla_store_nospace_alarm 1\n"));
        quota.record(50, "s");
        assert!(!quota.alarm());
        let unlimited = SpaceQuota::new(0);
        unlimited.record(u64::MAX, "s");
        assert!(!unlimited.alarm());
    }

    #[test]
    fn directory_bytes_counts_files_in_subdirectories() {
        let dir = std::env::temp_dir().join(format!("flotilla-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).expect("create dirs");
        std::fs::write(dir.join("one"), [0u8; 10]).expect("write");
        std::fs::write(dir.join("a/b/two"), [0u8; 32]).expect("write");
        assert_eq!(directory_bytes(&dir), Ok(42));
        assert_eq!(directory_bytes(&dir.join("missing")), Ok(0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
