//! Backups: `flotilla admin backup DIR` copies every region of a running cluster into a
//! directory, and `flotilla server --restore DIR` seeds a new cluster from one (etcd's
//! `snapshot save` and `snapshot restore`).
//!
//! A region's copy is a raft snapshot its leader makes for the backup after a linearizable
//! read (`Store::backup_snapshot`), so it holds every write acknowledged before the backup
//! asked for it; the files are fetched with the same resumable, checksummed transfer a
//! follower uses (`Raft.FetchSnapshot`). Regions are copied one after another, so the
//! backup is consistent per region, not one instant across regions.
//!
//! Layout of a backup directory:
//!
//! ```text
//! backup.meta        what the backup holds; written last, so a directory without it is
//!                    not a backup (an interrupted one)
//! region-<id>/       the region's snapshot as a snapshot store keeps it:
//!   snapshot-<index>/  manifest (every file's size and CRC32C) + `region` + `data`
//!                      + `sequences` + `locks` + `fences` (+ `fence-floor`)
//! ```
//!
//! `backup.meta` is text, one fact per line, sealed by a CRC32C line:
//!
//! ```text
//! flotilla-backup 1
//! cluster <16 hex digits>
//! taken <milliseconds since the epoch>
//! region <id> <conf_version> <version> <start hex|-> <end hex|-> <index> <term> <keys> <bytes>
//! ```
//!
//! Owns: the format, and the check a restore relies on ([`verify`]): the meta's seal, every
//! region's snapshot in full (manifest checksum, every file's size and CRC32C, the data
//! file's records with their own checksums), each snapshot describing the region the meta
//! names, and the regions tiling the whole key space. Must never: let a restore start from
//! a backup that does not verify, or write a `backup.meta` before every region is copied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_node::grpc::proto as raft_proto;
use flotilla_node::{PeerId, SnapshotPart, SnapshotReader, SnapshotRequest};
use flotilla_storage::fs::StdFs;
use flotilla_storage::snapshot::{copy_snapshot, CopyOptions, CopyReport, SnapshotSource};
use flotilla_storage::{SnapshotStore, StorageError};

use crate::engine::export::verify_export;
use crate::ids::{Epoch, RegionId};
use crate::region::Region;
use crate::state_machine::{
    read_whole, SnapshotFileReader, SNAPSHOT_DATA_FILE, SNAPSHOT_MERGE_FILE, SNAPSHOT_REGION_FILE,
};
use crate::store::meta::{hex, unhex};

/// The file that describes a backup, inside its directory.
pub const BACKUP_META_FILE: &str = "backup.meta";
const HEADER: &str = "flotilla-backup 1";
/// Largest `backup.meta` read (a region line is at most ~33 KiB with maximal keys).
const BACKUP_META_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// One region of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRegion {
    /// The region as its snapshot describes it.
    pub region: Region,
    /// The snapshot's last index.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// Keys in the region's data.
    pub keys: u64,
    /// Bytes of the snapshot's files.
    pub bytes: u64,
}

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The cluster it was taken from.
    pub cluster: u64,
    /// When it was finished, in milliseconds since the Unix epoch.
    pub taken_ms: u64,
    /// Its regions, by start key.
    pub regions: Vec<BackupRegion>,
}

impl Backup {
    /// The text of `backup.meta`.
    #[must_use]
    pub fn render(&self) -> String {
        let mut body = format!(
            "{HEADER}\ncluster {:016x}\ntaken {}\n",
            self.cluster, self.taken_ms
        );
        for r in &self.regions {
            body.push_str(&format!(
                "region {} {} {} {} {} {} {} {} {}\n",
                r.region.id.0,
                r.region.epoch.conf_version,
                r.region.epoch.version,
                hex(&r.region.start),
                hex(&r.region.end),
                r.index,
                r.term,
                r.keys,
                r.bytes
            ));
        }
        flotilla_storage::sealed::seal(&body)
    }

    /// Reads `backup.meta`'s text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Backup, String> {
        let body = flotilla_storage::sealed::unseal(text, path, "a backup.meta file")?;
        let bad = |line: usize, why: &str| format!("{} line {line}: {why}", path.display());
        let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, HEADER)) => {}
            Some((n, other)) => {
                return Err(bad(
                    n,
                    &format!("`{other}` is not `{HEADER}` (not a backup, or a newer format)"),
                ))
            }
            None => return Err(bad(1, "empty")),
        }
        let mut word = |prefix: &str| -> Result<(usize, String), String> {
            let (n, line) = lines
                .next()
                .ok_or_else(|| bad(0, &format!("no `{prefix}` line")))?;
            line.strip_prefix(prefix)
                .map(|rest| (n, rest.to_string()))
                .ok_or_else(|| bad(n, &format!("expected `{prefix}...`")))
        };
        let (n, cluster) = word("cluster ")?;
        let cluster = u64::from_str_radix(&cluster, 16)
            .ok()
            .filter(|c| *c != 0)
            .ok_or_else(|| bad(n, "the cluster is not 16 hex digits"))?;
        let (n, taken) = word("taken ")?;
        let taken_ms = taken
            .parse()
            .map_err(|_| bad(n, "the time is not a number"))?;
        let mut regions = Vec::new();
        for (n, line) in lines {
            regions.push(parse_region_line(line).ok_or_else(|| bad(n, "not a region line"))?);
        }
        Ok(Backup {
            cluster,
            taken_ms,
            regions,
        })
    }
}

fn parse_region_line(line: &str) -> Option<BackupRegion> {
    let mut words = line.strip_prefix("region ")?.split(' ');
    let mut number = || words.next()?.parse::<u64>().ok();
    let id = number()?;
    let conf_version = number()?;
    let version = number()?;
    let start = unhex(words.next()?)?;
    let end = unhex(words.next()?)?;
    let mut number = || words.next()?.parse::<u64>().ok();
    let (index, term, keys, bytes) = (number()?, number()?, number()?, number()?);
    if words.next().is_some() {
        return None;
    }
    let region = Region::new(RegionId(id), start, end, Epoch::new(conf_version, version)).ok()?;
    Some(BackupRegion {
        region,
        index,
        term,
        keys,
        bytes,
    })
}

/// Where region `id`'s snapshot store is in backup directory `dir`.
#[must_use]
pub fn region_dir(dir: &Path, id: RegionId) -> PathBuf {
    dir.join(format!("region-{}", id.0))
}

/// Whether `regions` (sorted by start key) cover the whole key space once each: the first
/// starts at the empty key, each ends where the next starts, the last ends at the end.
/// Otherwise: why not.
pub fn check_tiling(regions: &[&Region]) -> Result<(), String> {
    let Some(first) = regions.first() else {
        return Err("no region".into());
    };
    if !first.start.is_empty() {
        return Err(format!("nothing covers the keys before {first}"));
    }
    for pair in regions.windows(2) {
        if pair[0].end.is_empty() || pair[0].end != pair[1].start {
            return Err(format!(
                "{} and {} do not meet (a split or merge happened between their copies)",
                pair[0], pair[1]
            ));
        }
    }
    match regions.last() {
        Some(last) if !last.end.is_empty() => Err(format!("nothing covers the keys after {last}")),
        _ => Ok(()),
    }
}

/// A backup checked in full: its description and, per region in the same order, a reader
/// of its snapshot (pinned: it stays readable while held).
pub struct Verified {
    /// What `backup.meta` says.
    pub backup: Backup,
    /// Each region's snapshot.
    pub snapshots: Vec<SnapshotReader>,
}

/// Reads and checks the backup in `dir` (see the module docs for what is checked). File
/// I/O: call it from a blocking context. The error names the file and what is wrong.
pub fn verify(dir: &Path) -> Result<Verified, String> {
    let path = dir.join(BACKUP_META_FILE);
    let text = read_bounded(&path)?;
    let backup = Backup::parse(&text, &path)?;
    let mut regions: Vec<&Region> = backup.regions.iter().map(|r| &r.region).collect();
    regions.sort_by(|a, b| a.start.cmp(&b.start));
    check_tiling(&regions).map_err(|why| format!("{}: {why}", path.display()))?;
    let mut snapshots = Vec::with_capacity(backup.regions.len());
    for expected in &backup.regions {
        let reader = check_region(dir, expected)?;
        snapshots.push(reader);
    }
    Ok(Verified { backup, snapshots })
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (a backup directory holds {BACKUP_META_FILE}, written when the \
             backup completed)",
            path.display()
        )
    })?;
    let mut bytes = Vec::new();
    file.take(BACKUP_META_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > BACKUP_META_BYTES_MAX {
        return Err(format!(
            "{} is larger than {BACKUP_META_BYTES_MAX} bytes: not a backup.meta",
            path.display()
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| format!("{} is not text: not a backup.meta", path.display()))
}

/// Opens region `expected`'s snapshot in backup `dir` and checks it against the meta.
fn check_region(dir: &Path, expected: &BackupRegion) -> Result<SnapshotReader, String> {
    let id = expected.region.id;
    let root = region_dir(dir, id);
    let fail = |why: String| format!("{} (region {id}): {why}", root.display());
    if !root.is_dir() {
        return Err(fail("missing".into()));
    }
    // Opening verifies the newest snapshot in full: the manifest's checksum, then every
    // file's size and CRC32C.
    let store = SnapshotStore::open(Arc::new(StdFs), &root).map_err(|e| fail(e.to_string()))?;
    let reader = store
        .open_reader()
        .ok_or_else(|| fail("holds no snapshot".into()))?;
    let meta = reader.meta();
    if (meta.index.0, meta.term.0) != (expected.index, expected.term) {
        return Err(fail(format!(
            "the snapshot is at index {} term {}, {BACKUP_META_FILE} says index {} term {}",
            meta.index, meta.term, expected.index, expected.term
        )));
    }
    if reader.manifest().file(SNAPSHOT_MERGE_FILE).is_some() {
        return Err(fail(
            "the snapshot is of a region frozen for a merge".into(),
        ));
    }
    let region = read_whole(&reader, SNAPSHOT_REGION_FILE)
        .and_then(|bytes| Region::decode(&bytes))
        .map_err(|e| fail(format!("its region file: {e}")))?;
    if region != expected.region {
        return Err(fail(format!(
            "the snapshot holds {region}, {BACKUP_META_FILE} says {}",
            expected.region
        )));
    }
    let keys = verify_export(
        &mut SnapshotFileReader::new(&reader, SNAPSHOT_DATA_FILE),
        &region.start,
        &region.end,
    )
    .map_err(|e| fail(format!("its data file: {e}")))?;
    for name in [
        crate::sequence::SNAPSHOT_SEQUENCES_FILE,
        crate::lock::SNAPSHOT_LOCKS_FILE,
        crate::lease::SNAPSHOT_LEASES_FILE,
        crate::lease::SNAPSHOT_LEASE_KEYS_FILE,
    ] {
        if reader.manifest().file(name).is_some() {
            verify_export(
                &mut SnapshotFileReader::new(&reader, name),
                &region.start,
                &region.end,
            )
            .map_err(|e| fail(format!("its {name} file: {e}")))?;
        }
    }
    if reader
        .manifest()
        .file(crate::fence::SNAPSHOT_FENCES_FILE)
        .is_some()
    {
        verify_export(
            &mut SnapshotFileReader::new(&reader, crate::fence::SNAPSHOT_FENCES_FILE),
            b"",
            b"",
        )
        .map_err(|e| fail(format!("its fences file: {e}")))?;
    }
    if reader
        .manifest()
        .file(crate::fence::SNAPSHOT_FENCE_FLOOR_FILE)
        .is_some()
    {
        read_whole(&reader, crate::fence::SNAPSHOT_FENCE_FLOOR_FILE)
            .and_then(|bytes| crate::fence::decode(&bytes))
            .map_err(|e| {
                fail(format!(
                    "its {} file: {e}",
                    crate::fence::SNAPSHOT_FENCE_FLOOR_FILE
                ))
            })?;
    }
    if keys != expected.keys {
        return Err(fail(format!(
            "the data file holds {keys} keys, {BACKUP_META_FILE} says {}",
            expected.keys
        )));
    }
    Ok(reader)
}

/// Where a region's snapshot for a backup is: the store that made it (its address, id and
/// cluster) and which snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotAt {
    /// The store's address.
    pub address: String,
    /// Its store id (a fetch names it).
    pub store: PeerId,
    /// Its cluster.
    pub cluster: u64,
    /// The region.
    pub region: RegionId,
    /// The snapshot's last index and term.
    pub index: u64,
    /// See `index`.
    pub term: u64,
}

/// A [`SnapshotSource`] over `Raft.FetchSnapshot` calls to one store (blocking: each part
/// is fetched on `runtime` and waited for).
struct RemoteSnapshot {
    runtime: tokio::runtime::Handle,
    channel: tonic::transport::Channel,
    at: SnapshotAt,
    timeout: std::time::Duration,
}

impl RemoteSnapshot {
    fn fetch(&self, part: SnapshotPart) -> Result<Vec<u8>, StorageError> {
        let request = SnapshotRequest {
            to: self.at.store.clone(),
            cluster: self.at.cluster,
            group: self.at.region.0,
            index: flotilla_node::LogIndex(self.at.index),
            term: flotilla_node::Term(self.at.term),
            part,
        };
        let failed = |why: String| StorageError::Io {
            op: "fetch",
            path: PathBuf::from(format!("{}: region {}", self.at.address, self.at.region)),
            source: std::io::Error::other(why),
        };
        let mut client = raft_proto::raft_client::RaftClient::new(self.channel.clone())
            .max_decoding_message_size(flotilla_node::grpc::FRAME_BYTES_MAX)
            .max_encoding_message_size(flotilla_node::grpc::FRAME_BYTES_MAX);
        let wire = flotilla_node::grpc::codec::encode_snapshot_request(&request);
        let answer = self
            .runtime
            .block_on(async {
                tokio::time::timeout(self.timeout, client.fetch_snapshot(wire)).await
            })
            .map_err(|_| failed(format!("no answer within {:?}", self.timeout)))?
            .map_err(|status| failed(format!("{:?}: {}", status.code(), status.message())))?;
        match flotilla_node::grpc::codec::decode_snapshot_chunk(
            answer.into_inner(),
            &request,
            flotilla_node::grpc::SNAPSHOT_DATA_BYTES_MAX,
        ) {
            Ok(Ok(data)) => Ok(data.to_vec()),
            Ok(Err(why)) => Err(failed(format!("not served: {why}"))),
            Err(e) => Err(failed(format!("an invalid answer: {e}"))),
        }
    }
}

impl SnapshotSource for RemoteSnapshot {
    fn manifest(&self) -> Result<Vec<u8>, StorageError> {
        self.fetch(SnapshotPart::Manifest)
    }

    fn read_chunk(&self, name: &str, offset: u64, len_max: u32) -> Result<Vec<u8>, StorageError> {
        self.fetch(SnapshotPart::Chunk {
            name: name.to_string(),
            offset,
            len_max,
        })
    }
}

/// Copies the snapshot `at` names into `region_dir(dir, at.region)` (which must not
/// exist yet, or hold an interrupted copy of the same snapshot) and checks it as a restore
/// will. Blocking: call it from a blocking context, with `runtime` a handle of the runtime
/// that owns `channel`. Answers the region's entry in `backup.meta` and what the copy did.
pub fn download(
    runtime: tokio::runtime::Handle,
    channel: tonic::transport::Channel,
    at: SnapshotAt,
    timeout: std::time::Duration,
    dir: &Path,
) -> Result<(BackupRegion, CopyReport), String> {
    let root = region_dir(dir, at.region);
    let fail = |why: String| format!("copying region {} from {}: {why}", at.region, at.address);
    let store = SnapshotStore::open(Arc::new(StdFs), &root).map_err(|e| fail(e.to_string()))?;
    let source = RemoteSnapshot {
        runtime,
        channel,
        at: at.clone(),
        timeout,
    };
    let (reader, report) =
        copy_snapshot(&source, &store, &CopyOptions::default()).map_err(|e| fail(e.to_string()))?;
    let region = read_whole(&reader, SNAPSHOT_REGION_FILE)
        .and_then(|bytes| Region::decode(&bytes))
        .map_err(|e| fail(format!("its region file: {e}")))?;
    if region.id != at.region {
        return Err(fail(format!("the snapshot holds {region}")));
    }
    if reader.manifest().file(SNAPSHOT_MERGE_FILE).is_some() {
        return Err(fail(
            "the snapshot is of a region frozen for a merge".into(),
        ));
    }
    let keys = verify_export(
        &mut SnapshotFileReader::new(&reader, SNAPSHOT_DATA_FILE),
        &region.start,
        &region.end,
    )
    .map_err(|e| fail(format!("its data file: {e}")))?;
    let entry = BackupRegion {
        region,
        index: at.index,
        term: at.term,
        keys,
        bytes: reader.manifest().total_bytes(),
    };
    Ok((entry, report))
}

/// Writes `backup.meta` (atomically and durably): the backup in `dir` is complete.
pub fn finish(dir: &Path, backup: &Backup) -> Result<(), String> {
    flotilla_storage::sealed::write_atomically(&dir.join(BACKUP_META_FILE), &backup.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn region(id: u64, start: &'static [u8], end: &'static [u8]) -> Region {
        Region::new(
            RegionId(id),
            Bytes::from_static(start),
            Bytes::from_static(end),
            Epoch::new(2, 3),
        )
        .unwrap()
    }

    #[test]
    fn the_meta_round_trips_and_damage_is_named() {
        let backup = Backup {
            cluster: 0xabc,
            taken_ms: 1_700_000_000_000,
            regions: vec![
                BackupRegion {
                    region: region(1, b"", b"m"),
                    index: 10,
                    term: 2,
                    keys: 5,
                    bytes: 900,
                },
                BackupRegion {
                    region: region(1_000_000, b"m", b""),
                    index: 7,
                    term: 3,
                    keys: 0,
                    bytes: 80,
                },
            ],
        };
        let text = backup.render();
        let path = Path::new("b/backup.meta");
        assert_eq!(Backup::parse(&text, path).unwrap(), backup);
        let flipped = text
            .replacen("keys", "kexs", 1)
            .replacen(" 5 900", " 6 900", 1);
        let error = Backup::parse(&flipped, path).unwrap_err();
        assert!(error.contains("b/backup.meta"), "{error}");
        let foreign = flotilla_storage::sealed::seal("flotilla-store 2\n");
        assert!(Backup::parse(&foreign, path)
            .unwrap_err()
            .contains("not a backup"));
    }

    #[test]
    fn tiling_is_checked() {
        let (a, b, c) = (
            region(1, b"", b"g"),
            region(2, b"g", b"p"),
            region(3, b"p", b""),
        );
        assert!(check_tiling(&[&a, &b, &c]).is_ok());
        assert!(check_tiling(&[&a, &c]).unwrap_err().contains("do not meet"));
        assert!(check_tiling(&[&b, &c]).unwrap_err().contains("before"));
        assert!(check_tiling(&[&a, &b]).unwrap_err().contains("after"));
        assert!(check_tiling(&[]).is_err());
    }
}
