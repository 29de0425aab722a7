//! `store.meta`: what a store's data directory belongs to — its address, its cluster, the
//! regions it hosts — so a restart recovers the same store and a data directory is never
//! reused for another cluster or another address by mistake.
//!
//! Owns: the file format (a short text file, one fact per line, closed by a CRC32C line)
//! and its atomic replacement (temp file, fsync, rename, directory fsync). Must never:
//! leave a half-written file in place of a good one, or accept a file whose checksum or
//! syntax is wrong.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flotilla_node::PeerId;

use crate::region::{Epoch, Region, RegionId};

/// File name inside the data directory.
pub const STORE_META_FILE: &str = "store.meta";
const HEADER: &str = "flotilla-store 1";
/// Largest `store.meta` read (a region line is at most ~33 KiB with maximal keys).
pub(crate) const STORE_META_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// One region this store hosts a peer of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedRegion {
    /// The region as this store last recorded it.
    pub region: Region,
    /// The voters the region was bootstrapped with (the same list on every initial peer);
    /// empty for a peer created empty to be added by the region's leader.
    pub initial_peers: Vec<PeerId>,
}

/// The content of `store.meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreMeta {
    /// The store's address: its peer id in every region.
    pub address: String,
    /// The cluster the store belongs to; 0 while it waits to be added to one.
    pub cluster: u64,
    /// Regions hosted, by id.
    pub regions: Vec<HostedRegion>,
}

/// The id of the cluster bootstrapped by `peers` with `regions` static regions: the same
/// on every initial member, whatever order the list was given in (FNV-1a, 64 bits).
#[must_use]
pub fn cluster_id(peers: &[PeerId], regions: u32) -> u64 {
    let mut sorted: Vec<&str> = peers.iter().map(PeerId::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for peer in sorted {
        feed(peer.as_bytes());
        feed(b",");
    }
    feed(&regions.to_be_bytes());
    // 0 means "no cluster yet".
    hash.max(1)
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_string();
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Bytes> {
    if text == "-" {
        return Some(Bytes::new());
    }
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

impl StoreMeta {
    /// The file's text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut body = format!(
            "{HEADER}\naddress {}\ncluster {:016x}\n",
            self.address, self.cluster
        );
        for hosted in &self.regions {
            let r = &hosted.region;
            let peers = if hosted.initial_peers.is_empty() {
                "-".to_string()
            } else {
                hosted
                    .initial_peers
                    .iter()
                    .map(PeerId::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                body,
                "region {} {} {} {} {} {}",
                r.id.0,
                r.epoch.conf_version,
                r.epoch.version,
                hex(&r.start),
                hex(&r.end),
                peers
            );
        }
        let crc = crc32c::crc32c(body.as_bytes());
        let _ = writeln!(body, "crc32c {crc:08x}");
        body
    }

    /// Parses [`StoreMeta::render`]'s text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<StoreMeta, String> {
        let bad = |what: String| format!("{}: {what}", path.display());
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad("too short to be a store.meta file".into()))?;
        let (body, crc_line) = text.split_at(body_end);
        let stored = crc_line
            .trim_end()
            .strip_prefix("crc32c ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("last line is not `crc32c <hex>`".into()))?;
        let actual = crc32c::crc32c(body.as_bytes());
        if stored != actual {
            return Err(bad(format!(
                "checksum mismatch (stored {stored:08x}, computed {actual:08x}): the file is damaged"
            )));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad(format!("first line is not {HEADER:?}")));
        }
        let address = lines
            .next()
            .and_then(|l| l.strip_prefix("address "))
            .ok_or_else(|| bad("second line is not `address <host:port>`".into()))?
            .to_string();
        let cluster = lines
            .next()
            .and_then(|l| l.strip_prefix("cluster "))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("third line is not `cluster <hex>`".into()))?;
        let mut regions = Vec::new();
        for (n, line) in lines.enumerate() {
            let hosted = parse_region_line(line)
                .ok_or_else(|| bad(format!("region line {} is malformed: {line:?}", n + 1)))?;
            regions.push(hosted);
        }
        Ok(StoreMeta {
            address,
            cluster,
            regions,
        })
    }

    /// Reads `dir/store.meta`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<StoreMeta>, String> {
        let path = dir.join(STORE_META_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        let mut text = String::new();
        use std::io::Read as _;
        file.take(STORE_META_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        StoreMeta::parse(&text, &path).map(Some)
    }

    /// Replaces `dir/store.meta` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(STORE_META_FILE);
        let temp: PathBuf = dir.join(format!("{STORE_META_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

fn parse_region_line(line: &str) -> Option<HostedRegion> {
    let mut words = line.strip_prefix("region ")?.split(' ');
    let id = RegionId(words.next()?.parse().ok()?);
    let conf_version = words.next()?.parse().ok()?;
    let version = words.next()?.parse().ok()?;
    let start = unhex(words.next()?)?;
    let end = unhex(words.next()?)?;
    let peers = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let initial_peers = if peers == "-" {
        Vec::new()
    } else {
        peers.split(',').map(PeerId::new).collect()
    };
    let region = Region::new(id, start, end, Epoch::new(conf_version, version)).ok()?;
    Some(HostedRegion {
        region,
        initial_peers,
    })
}

/// `count` static regions splitting the key space evenly by the first one (count <= 256) or
/// two (count <= 65,536) bytes, ids 1 to `count`, epoch (1, 1).
pub fn static_regions(count: u32) -> Result<Vec<Region>, String> {
    if count == 0 || count > 65_536 {
        return Err(format!("--regions {count}: must be 1 to 65536"));
    }
    let width: u64 = if count <= 256 { 256 } else { 65_536 };
    let boundary = |i: u64| -> Bytes {
        let point = width * i / u64::from(count);
        if width == 256 {
            Bytes::from(vec![point as u8])
        } else {
            Bytes::from((point as u16).to_be_bytes().to_vec())
        }
    };
    let mut regions = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        let start = if i == 0 { Bytes::new() } else { boundary(i) };
        let end = if i + 1 == u64::from(count) {
            Bytes::new()
        } else {
            boundary(i + 1)
        };
        let region = Region::new(RegionId(i + 1), start, end, Epoch::new(1, 1))
            .map_err(|e| format!("static region {}: {e}", i + 1))?;
        regions.push(region);
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoreMeta {
        let regions = static_regions(3).unwrap();
        StoreMeta {
            address: "127.0.0.1:8081".into(),
            cluster: 42,
            regions: regions
                .into_iter()
                .enumerate()
                .map(|(i, region)| HostedRegion {
                    region,
                    initial_peers: if i == 2 {
                        Vec::new()
                    } else {
                        vec![PeerId::new("127.0.0.1:8081"), PeerId::new("127.0.0.1:8082")]
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let meta = sample();
        let text = meta.render();
        let path = Path::new("store.meta");
        assert_eq!(StoreMeta::parse(&text, path).unwrap(), meta);
        // Any changed byte is refused.
        let damaged = text.replace("8082", "8083");
        let error = StoreMeta::parse(&damaged, path).unwrap_err();
        assert!(error.contains("checksum mismatch"), "{error}");
        assert!(StoreMeta::parse("", path).is_err());
        assert!(StoreMeta::parse(&text[..text.len() / 2], path).is_err());
    }

    #[test]
    fn static_regions_cover_the_key_space() {
        for count in [1, 2, 3, 24, 256, 257, 1000] {
            let regions = static_regions(count).unwrap();
            assert_eq!(regions.len(), count as usize);
            assert!(regions[0].start.is_empty());
            assert!(regions[regions.len() - 1].end.is_empty());
            for pair in regions.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "regions must be contiguous");
                assert!(pair[0].start < pair[1].start);
            }
        }
        assert!(static_regions(0).is_err());
        assert!(static_regions(70_000).is_err());
    }

    #[test]
    fn cluster_id_ignores_order_only() {
        let a = [PeerId::new("a:1"), PeerId::new("b:1")];
        let b = [PeerId::new("b:1"), PeerId::new("a:1")];
        assert_eq!(cluster_id(&a, 3), cluster_id(&b, 3));
        assert_ne!(cluster_id(&a, 3), cluster_id(&a, 4));
        assert_ne!(cluster_id(&a, 3), cluster_id(&a[..1], 3));
    }
}
