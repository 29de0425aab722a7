//! `flotilla admin backup DIR`: a consistent, checksummed copy of every region of the
//! cluster in a new directory (see `flotilla_kv::backup` for the format and what a restore
//! checks). Each region's leader makes a snapshot after a linearizable read, so the copy of
//! each region holds every write acknowledged before the backup reached it; the files come
//! through the same checksummed transfer a follower uses.
//!
//! Owns: finding each region's leader, the rounds that follow regions splitting or merging
//! while the copy runs (a region whose epoch moved is copied again, until the copies tile
//! the key space), progress on stderr, and writing `backup.meta` last. Must never: write into
//! a directory that holds anything, or write `backup.meta` for copies that do not tile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_kv::backup::{self as format, Backup, BackupRegion, SnapshotAt};
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::RegionInfo;
use flotilla_node::StoreId;
use serde_json::{json, Value};

use super::cluster::gather;
use crate::output::Failure;

/// Rounds of (gather the regions, copy what changed) before giving up on a cluster whose
/// regions keep splitting or merging.
const ROUNDS: usize = 10;
/// Passes over a region's candidate stores while none of them makes its snapshot.
const TRIES: usize = 20;
/// Longest wait for one part (manifest or chunk) of a snapshot.
const PART_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn backup(client: &KvClient, dir: &Path) -> Result<(Value, String), Failure> {
    let started = Instant::now();
    prepare(dir)?;
    let mut copied: BTreeMap<u64, BackupRegion> = BTreeMap::new();
    let mut clusters = std::collections::BTreeSet::new();
    let mut last_gap = String::new();
    for round in 0..ROUNDS {
        if round > 0 {
            eprintln!("backup: the regions changed while they were copied ({last_gap}); copying what changed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let cluster = gather(client).await;
        if cluster.regions.is_empty() {
            return Err(Failure::failed(
                "Unavailable",
                "no store reports any region: nothing to back up",
            ));
        }
        let addresses = cluster.addresses();
        // Copies of regions merged away since are dropped.
        let gathered: BTreeMap<u64, &RegionInfo> =
            cluster.regions.iter().map(|r| (r.id, r)).collect();
        let gone: Vec<u64> = copied
            .keys()
            .filter(|id| !gathered.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            copied.remove(&id);
            remove_copy(dir, id)?;
        }
        for region in gathered.values() {
            let current = copied
                .get(&region.id)
                .is_some_and(|c| c.region.epoch.version == region.version);
            if current {
                continue;
            }
            let (entry, cluster_id) = copy_region(client, region, &addresses, dir).await?;
            clusters.insert(cluster_id);
            copied.insert(region.id, entry);
        }
        let mut regions: Vec<&flotilla_kv::region::Region> =
            copied.values().map(|c| &c.region).collect();
        regions.sort_by(|a, b| a.start.cmp(&b.start));
        match format::check_tiling(&regions) {
            Ok(()) => return finish(dir, copied, &clusters, started),
            Err(why) => last_gap = why,
        }
    }
    Err(Failure::failed(
        "Unavailable",
        format!(
            "the regions kept splitting or merging during {ROUNDS} rounds of copying \
             ({last_gap}); pause the placement driver (`flotilla admin pd pause`) and back up \
             again. {} holds no backup.meta, so it is not a backup",
            dir.display()
        ),
    ))
}

/// The directory must be new or empty; it is created.
fn prepare(dir: &Path) -> Result<(), Failure> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Failure::usage(format!(
                    "{} is not empty: a backup goes into a new or empty directory (nothing \
                     was written)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .map_err(|e| Failure::failed("Io", format!("cannot create {}: {e}", dir.display()))),
        Err(e) => Err(Failure::failed(
            "Io",
            format!("cannot read {}: {e}", dir.display()),
        )),
    }
}

fn remove_copy(dir: &Path, id: u64) -> Result<(), Failure> {
    let path = format::region_dir(dir, flotilla_kv::ids::RegionId(id));
    match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::failed(
            "Io",
            format!("cannot remove {}: {e}", path.display()),
        )),
    }
}

/// Has the leader of `region` make a snapshot and copies it; answers its entry and the
/// cluster it came from.
async fn copy_region(
    client: &KvClient,
    region: &RegionInfo,
    addresses: &[String],
    dir: &Path,
) -> Result<(BackupRegion, u64), Failure> {
    let id = region.id;
    let mut candidates: Vec<String> = Vec::new();
    if !region.leader.is_empty() {
        candidates.push(region.leader.clone());
    }
    for address in addresses {
        if !candidates.contains(address) {
            candidates.push(address.clone());
        }
    }
    let mut last = Failure::failed("NotLeader", format!("no store leads region {id}"));
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for address in &candidates {
            let reply = match client.backup_region(address, id).await {
                Ok(reply) => reply,
                Err(error) => {
                    // Not the leader, or the leader is busy (a merge, an install): the next
                    // store or the next pass.
                    last = Failure::from(error);
                    continue;
                }
            };
            let store = StoreId::parse(&reply.store)
                .map(|s| s.peer_id())
                .map_err(|e| {
                    Failure::failed(
                        "InvalidAnswer",
                        format!("{address} answered with store id {:?}: {e}", reply.store),
                    )
                })?;
            let at = SnapshotAt {
                address: address.clone(),
                store,
                cluster: reply.cluster,
                region: flotilla_kv::ids::RegionId(id),
                index: reply.index,
                term: reply.term,
            };
            let channel = client.channel(address).await.map_err(Failure::from)?;
            remove_copy(dir, id)?;
            let runtime = tokio::runtime::Handle::current();
            let into: PathBuf = dir.to_path_buf();
            let copied = tokio::task::spawn_blocking(move || {
                format::download(runtime, channel, at, PART_TIMEOUT, &into)
            })
            .await
            .map_err(|e| Failure::failed("Internal", format!("copying panicked: {e}")))?;
            match copied {
                Ok((entry, report)) => {
                    eprintln!(
                        "backup: region {id}: {} keys, {} bytes (index {}, from store {} at {address}; {} bytes fetched)",
                        entry.keys, entry.bytes, entry.index, reply.store, report.bytes_fetched
                    );
                    return Ok((entry, reply.cluster));
                }
                Err(why) => {
                    // A newer snapshot may have replaced this one on the store mid-copy:
                    // ask again.
                    last = Failure::failed("Unavailable", why);
                }
            }
        }
    }
    Err(Failure::failed(
        &last.kind,
        format!(
            "region {id} could not be copied: {} (no backup.meta was written)",
            last.message
        ),
    ))
}

fn finish(
    dir: &Path,
    copied: BTreeMap<u64, BackupRegion>,
    clusters: &std::collections::BTreeSet<u64>,
    started: Instant,
) -> Result<(Value, String), Failure> {
    let cluster = match clusters.iter().collect::<Vec<_>>().as_slice() {
        [one] => **one,
        many => {
            return Err(Failure::failed(
                "InvalidAnswer",
                format!(
                    "the regions came from {} clusters: the endpoints name stores of different \
                     clusters",
                    many.len()
                ),
            ))
        }
    };
    let mut regions: Vec<BackupRegion> = copied.into_values().collect();
    regions.sort_by(|a, b| a.region.start.cmp(&b.region.start));
    let taken_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let backup = Backup {
        cluster,
        taken_ms,
        regions,
    };
    format::finish(dir, &backup).map_err(|why| Failure::failed("Io", why))?;
    let keys: u64 = backup.regions.iter().map(|r| r.keys).sum();
    let bytes: u64 = backup.regions.iter().map(|r| r.bytes).sum();
    let seconds = started.elapsed().as_secs_f64();
    let value = json!({
        "ok": true,
        "dir": dir.display().to_string(),
        "cluster": format!("{cluster:016x}"),
        "regions": backup.regions.len(),
        "keys": keys,
        "bytes": bytes,
        "seconds": (seconds * 1000.0).round() / 1000.0,
    });
    let human = format!(
        "backed up cluster {cluster:016x}: {} regions, {keys} keys, {bytes} bytes in {} \
         ({seconds:.1} s); restore with `flotilla server --restore {}` on a new data dir",
        backup.regions.len(),
        dir.display(),
        dir.display()
    );
    Ok((value, human))
}
