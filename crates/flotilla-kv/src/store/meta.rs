//! `store.meta`: what a store's data directory is — its store id, its cluster, how the
//! cluster was bootstrapped, the regions it hosts — so a restart recovers the same store
//! and a data directory is never reused for another cluster by mistake. The store's
//! address is not in it: an address is where the store is, not who it is (it may change at
//! every start; see `identity` in flotilla-node for the address book).
//!
//! Owns: the file format (a short text file, one fact per line, sealed by a CRC32C line and
//! replaced atomically: `flotilla_node::sealed`) and its change log. Must never: leave a
//! half-written file in place of a good one, or accept a file whose checksum or syntax is
//! wrong.
//!
//! Change log (`store.meta.log`): opening or closing one region must not rewrite a file of
//! ten thousand region lines, so a change is appended to the log instead, one line per
//! change with its own checksum — `cluster <hex>`, `region <region line>` (added or
//! replaced), `remove <id>` — followed by `crc32c <hex>` of the line before it; one fsync
//! per batch of changes. Loading replays the log over `store.meta`. A last line without
//! its newline is a write a crash cut short (never acknowledged) and is dropped; any other
//! line that does not verify is damage and refused. Once the log outgrows the base file
//! (and at least [`CHANGE_LOG_COMPACT_BYTES_MIN`]), `store.meta` is rewritten with
//! everything and the log removed; replaying an old log over a new base gives the same
//! state (every change sets a value), so a crash between the two loses nothing.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use flotilla_node::{PeerId, StoreId};

use crate::ids::{Epoch, RegionId};
use crate::region::Region;

/// File name inside the data directory.
pub const STORE_META_FILE: &str = "store.meta";
/// The change log's file name inside the data directory.
pub const STORE_META_LOG_FILE: &str = "store.meta.log";
/// The change log is folded into `store.meta` only once it is at least this large.
pub const CHANGE_LOG_COMPACT_BYTES_MIN: u64 = 64 * 1024;
const HEADER: &str = "flotilla-store 2";
/// The header of the format before store identity (a store named by its address).
const HEADER_V1: &str = "flotilla-store 1";
/// Largest `store.meta` read (a region line is at most ~33 KiB with maximal keys).
pub(crate) const STORE_META_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// One region this store hosts a peer of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedRegion {
    /// The region as this store last recorded it.
    pub region: Region,
    /// The voters the region was bootstrapped with (the same list on every initial peer);
    /// empty for a peer created empty to be added by the region's leader. For a region
    /// split off another: the parent's voters at the split.
    pub initial_peers: Vec<PeerId>,
    /// For a region split off another on this store: where its log begins.
    pub start: Option<RegionStart>,
}

impl HostedRegion {
    /// Where the raft group of a region split off another begins (`None` for the others).
    #[must_use]
    pub fn group_start(&self) -> Option<flotilla_node::GroupStart> {
        let start = self.start.as_ref()?;
        let mut configuration =
            flotilla_node::Configuration::new(self.initial_peers.iter().cloned());
        configuration.learners = start.learners.iter().cloned().collect();
        Some(flotilla_node::GroupStart {
            index: flotilla_node::LogIndex(start.index),
            term: flotilla_node::Term(start.term),
            configuration,
        })
    }
}

/// Where the log of a region split off its parent begins: after the parent's split entry
/// (`index`, of `term`), with the parent's voters (`HostedRegion::initial_peers`) and
/// `learners` at that entry. Every replica of the parent that applies the split starts the
/// child so, with the parent's data for the child's keys already in its engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStart {
    /// Index of the split entry in the parent's log.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The parent's learners at the split.
    pub learners: Vec<PeerId>,
}

/// How the cluster this store belongs to was bootstrapped (the same on every initial
/// member): what a store that finds it bootstrapped by a peer adopts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// Static regions it was split into.
    pub regions: u32,
    /// The initial members, by store id.
    pub members: Vec<StoreId>,
    /// The initial members of the meta group (the placement driver's raft group), by store
    /// id; empty for a cluster bootstrapped before the placement driver.
    pub pd: Vec<StoreId>,
    /// Voters each static region started with: the bootstrapper's `--max-replicas` (0 for
    /// a cluster bootstrapped before it was recorded: 3, the default then).
    pub replicas: u32,
}

/// Voters of each static region a bootstrap makes when the bootstrapper was given no
/// `--max-replicas`, and for a bootstrap line from before it was recorded: the placement
/// driver's default. With more initial members, each region starts on this many of them
/// (see `membership::static_placement`); the PD adds or moves replicas from there.
pub(crate) const BOOTSTRAP_REPLICAS: usize = 3;

impl Bootstrap {
    /// Voters each static region starts with.
    #[must_use]
    pub fn replicas_or_default(&self) -> usize {
        if self.replicas == 0 {
            BOOTSTRAP_REPLICAS
        } else {
            self.replicas as usize
        }
    }
}

/// The content of `store.meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreMeta {
    /// The store's id: made with the data directory, never reused; its peer id in every
    /// region.
    pub store: StoreId,
    /// The cluster the store belongs to (a random id made at bootstrap); 0 while it
    /// belongs to none yet.
    pub cluster: u64,
    /// How the cluster was bootstrapped, if this store was one of its initial members.
    pub bootstrap: Option<Bootstrap>,
    /// Whether this store hosts a peer of the meta group (the placement driver's raft
    /// group): `Some(initial voters)` (empty for a peer created empty, to be added by the
    /// meta group's leader), `None` when it does not.
    pub pd: Option<Vec<PeerId>>,
    /// Regions hosted, by id.
    pub regions: Vec<HostedRegion>,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_string();
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn unhex(text: &str) -> Option<Bytes> {
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
        let ids = |list: &[StoreId]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let bootstrap = match &self.bootstrap {
            Some(b) if b.pd.is_empty() => format!("{} {}", b.regions, ids(&b.members)),
            Some(b) if b.replicas == 0 => {
                format!("{} {} {}", b.regions, ids(&b.members), ids(&b.pd))
            }
            Some(b) => format!(
                "{} {} {} {}",
                b.regions,
                ids(&b.members),
                ids(&b.pd),
                b.replicas
            ),
            None => "-".to_string(),
        };
        let mut body = format!(
            "{HEADER}\nstore {}\ncluster {:016x}\nbootstrap {bootstrap}\n",
            self.store, self.cluster
        );
        if let Some(peers) = &self.pd {
            let _ = writeln!(body, "{}", pd_line(Some(peers)));
        }
        for hosted in &self.regions {
            let _ = writeln!(body, "{}", region_line(hosted));
        }
        flotilla_node::sealed::seal(&body)
    }

    /// Parses [`StoreMeta::render`]'s text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<StoreMeta, String> {
        let bad = |what: String| format!("{}: {what}", path.display());
        let body = flotilla_node::sealed::unseal(text, path, "a store.meta file")?;
        let mut lines = body.lines();
        match lines.next() {
            Some(HEADER) => {}
            Some(HEADER_V1) => {
                return Err(bad(format!(
                    "format 1 ({HEADER_V1:?}), written before store identity, when a store was \
                     named by its address. This version cannot use it safely and does not \
                     convert it. Start this store with an empty data dir: it joins the cluster \
                     as a new store; then add it to the regions and remove the old member by \
                     hand (README, \"Runbook: a store lost its disk\")"
                )))
            }
            _ => return Err(bad(format!("first line is not {HEADER:?}"))),
        }
        let store = lines
            .next()
            .and_then(|l| l.strip_prefix("store "))
            .and_then(|h| StoreId::parse(h).ok())
            .ok_or_else(|| bad("second line is not `store <16 hex digits>`".into()))?;
        let cluster = lines
            .next()
            .and_then(|l| l.strip_prefix("cluster "))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("third line is not `cluster <hex>`".into()))?;
        let bootstrap = lines
            .next()
            .and_then(|l| l.strip_prefix("bootstrap "))
            .and_then(parse_bootstrap)
            .ok_or_else(|| {
                bad("fourth line is not `bootstrap -` or `bootstrap <regions> <ids>`".into())
            })?;
        let mut regions = Vec::new();
        let mut pd = None;
        for (n, line) in lines.enumerate() {
            if line.starts_with("pd ") {
                pd = parse_pd_line(line)
                    .ok_or_else(|| bad(format!("the pd line is malformed: {line:?}")))?;
                continue;
            }
            let hosted = parse_region_line(line)
                .ok_or_else(|| bad(format!("region line {} is malformed: {line:?}", n + 1)))?;
            regions.push(hosted);
        }
        Ok(StoreMeta {
            store,
            cluster,
            bootstrap,
            pd,
            regions,
        })
    }

    /// Reads `dir/store.meta` and replays its change log; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<StoreMeta>, String> {
        let Some(mut meta) = StoreMeta::load_base(dir)? else {
            return Ok(None);
        };
        meta.replay_log(dir)?;
        Ok(Some(meta))
    }

    /// Reads `dir/store.meta` alone.
    fn load_base(dir: &Path) -> Result<Option<StoreMeta>, String> {
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

    /// Replaces `dir/store.meta` atomically and durably with everything, then removes the
    /// change log (whose changes it holds).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        flotilla_node::sealed::write_atomically(&dir.join(STORE_META_FILE), &self.render())?;
        let log = dir.join(STORE_META_LOG_FILE);
        match std::fs::remove_file(&log) {
            Ok(()) => std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot fsync {}: {e}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", log.display())),
        }
    }
}

/// One change to a store's metadata, as the change log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaChange {
    /// The store now belongs to this cluster (0: none).
    Cluster(u64),
    /// The store hosts this region (added, or replacing the one with its id).
    Region(HostedRegion),
    /// The store no longer hosts this region.
    Removed(RegionId),
    /// The store hosts a peer of the meta group (`Some(initial voters)`), or no longer does.
    Pd(Option<Vec<PeerId>>),
}

impl MetaChange {
    fn render(&self) -> String {
        match self {
            MetaChange::Cluster(cluster) => format!("cluster {cluster:016x}"),
            MetaChange::Region(hosted) => region_line(hosted),
            MetaChange::Removed(id) => format!("remove {}", id.0),
            MetaChange::Pd(peers) => pd_line(peers.as_deref()),
        }
    }

    fn parse(text: &str) -> Option<MetaChange> {
        if let Some(hex) = text.strip_prefix("cluster ") {
            return u64::from_str_radix(hex, 16).ok().map(MetaChange::Cluster);
        }
        if text.starts_with("pd ") {
            return parse_pd_line(text).map(MetaChange::Pd);
        }
        if let Some(id) = text.strip_prefix("remove ") {
            return id.parse().ok().map(|id| MetaChange::Removed(RegionId(id)));
        }
        parse_region_line(text).map(MetaChange::Region)
    }
}

impl StoreMeta {
    /// Applies one change.
    pub fn apply(&mut self, change: &MetaChange) {
        match change {
            MetaChange::Cluster(cluster) => self.cluster = *cluster,
            MetaChange::Region(hosted) => {
                match self
                    .regions
                    .iter_mut()
                    .find(|h| h.region.id == hosted.region.id)
                {
                    Some(existing) => *existing = hosted.clone(),
                    None => self.regions.push(hosted.clone()),
                }
            }
            MetaChange::Removed(id) => self.regions.retain(|h| h.region.id != *id),
            MetaChange::Pd(peers) => self.pd.clone_from(peers),
        }
    }

    /// Appends `changes` to `dir/store.meta.log` and fsyncs it (a new log's name is made
    /// durable too). Returns the log's size: past [`StoreMeta::log_due`], fold it with
    /// [`StoreMeta::save`].
    pub fn append(dir: &Path, changes: &[MetaChange]) -> Result<u64, String> {
        use std::io::Write as _;
        let path = dir.join(STORE_META_LOG_FILE);
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail("open", e))?;
        let text = StoreMeta::log_text(changes);
        file.write_all(text.as_bytes())
            .map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("fsync", e))?;
        if !existed {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot fsync {}: {e}", dir.display()))?;
        }
        file.metadata()
            .map(|m| m.len())
            .map_err(|e| fail("measure", e))
    }

    /// Whether a change log of `log_bytes` should be folded into `store.meta` now.
    #[must_use]
    pub fn log_due(&self, log_bytes: u64) -> bool {
        // About 60 bytes a region line: the log is folded once it is larger than the base.
        log_bytes >= CHANGE_LOG_COMPACT_BYTES_MIN
            && log_bytes > (self.regions.len() as u64).saturating_mul(60)
    }

    /// Replays `dir/store.meta.log` over `self` (see the module docs).
    fn replay_log(&mut self, dir: &Path) -> Result<(), String> {
        let path = dir.join(STORE_META_LOG_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() as u64 > STORE_META_BYTES_MAX => {
                return Err(format!(
                    "{}: {} bytes is too large",
                    path.display(),
                    bytes.len()
                ))
            }
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| format!("{}: not UTF-8: the file is damaged", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        self.replay_log_text(&text, &path)
    }

    /// Replays a change log's text over `self`; `path` names the file in errors. A change
    /// log is disk input: every line is checked before it changes anything.
    pub fn replay_log_text(&mut self, text: &str, path: &Path) -> Result<(), String> {
        // A last line without its newline was cut short by a crash: never acknowledged.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        let mut changes = Vec::new();
        for (n, line) in complete.lines().enumerate() {
            let change = line
                .rsplit_once(" crc32c ")
                .filter(|(body, crc)| {
                    u32::from_str_radix(crc, 16).ok() == Some(crc32c::crc32c(body.as_bytes()))
                })
                .and_then(|(body, _)| MetaChange::parse(body))
                .ok_or_else(|| {
                    format!(
                        "{}: line {} does not verify: the file is damaged",
                        path.display(),
                        n + 1
                    )
                })?;
            changes.push(change);
        }
        // All or nothing: a damaged log changes nothing.
        for change in &changes {
            self.apply(change);
        }
        Ok(())
    }

    /// A change log's text holding `changes` (what [`StoreMeta::append`] writes).
    #[must_use]
    pub fn log_text(changes: &[MetaChange]) -> String {
        let mut text = String::new();
        for change in changes {
            let line = change.render();
            let crc = crc32c::crc32c(line.as_bytes());
            let _ = writeln!(text, "{line} crc32c {crc:08x}");
        }
        text
    }
}

/// The length of a region's line in `store.meta`.
pub(crate) fn region_line_len(hosted: &HostedRegion) -> usize {
    region_line(hosted).len()
}

/// A region's line, as `store.meta` and its change log write it.
fn region_line(hosted: &HostedRegion) -> String {
    let r = &hosted.region;
    let peers = id_list(&hosted.initial_peers);
    let mut line = format!(
        "region {} {} {} {} {} {}",
        r.id.0,
        r.epoch.conf_version,
        r.epoch.version,
        hex(&r.start),
        hex(&r.end),
        peers
    );
    if let Some(start) = &hosted.start {
        // `at=<index>/<term>/<learners or ->`
        line.push_str(&format!(
            " at={}/{}/{}",
            start.index,
            start.term,
            id_list(&start.learners)
        ));
    }
    line
}

/// `-` or `<id>,<id>...`.
fn id_list(peers: &[PeerId]) -> String {
    if peers.is_empty() {
        "-".to_string()
    } else {
        peers
            .iter()
            .map(PeerId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses [`id_list`]'s text; `None` when malformed.
fn parse_id_list(text: &str) -> Option<Vec<PeerId>> {
    if text == "-" {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|p| StoreId::parse(p).ok().map(StoreId::peer_id))
        .collect()
}

/// Parses the `at=` word of a region line; `None` when malformed.
fn parse_start(word: &str) -> Option<RegionStart> {
    let mut parts = word.strip_prefix("at=")?.split('/');
    let index = parts.next()?.parse().ok()?;
    let term = parts.next()?.parse().ok()?;
    let learners = parse_id_list(parts.next()?)?;
    if parts.next().is_some() || index == 0 {
        return None;
    }
    Some(RegionStart {
        index,
        term,
        learners,
    })
}

/// The meta group's line: `pd -` (a peer created empty), `pd <id>,<id>...` (its initial
/// voters), or `pd none` (the change log's word for "no longer hosted").
fn pd_line(peers: Option<&[PeerId]>) -> String {
    match peers {
        None => "pd none".to_string(),
        Some([]) => "pd -".to_string(),
        Some(peers) => format!(
            "pd {}",
            peers
                .iter()
                .map(PeerId::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Parses [`pd_line`]'s text; `None` when malformed.
#[allow(clippy::option_option)]
fn parse_pd_line(line: &str) -> Option<Option<Vec<PeerId>>> {
    match line.strip_prefix("pd ")? {
        "none" => Some(None),
        "-" => Some(Some(Vec::new())),
        ids => ids
            .split(',')
            .map(|p| StoreId::parse(p).ok().map(StoreId::peer_id))
            .collect::<Option<Vec<_>>>()
            .map(Some),
    }
}

/// `-` (no bootstrap) or `<regions> <id>,<id>... [<pd id>,<pd id>... [<replicas>]]`;
/// `None` when malformed.
#[allow(clippy::option_option)]
fn parse_bootstrap(text: &str) -> Option<Option<Bootstrap>> {
    if text == "-" {
        return Some(None);
    }
    let mut words = text.split(' ');
    let regions = words.next()?.parse().ok()?;
    let list = |text: &str| {
        text.split(',')
            .map(|m| StoreId::parse(m).ok())
            .collect::<Option<Vec<_>>>()
    };
    let members = list(words.next()?)?;
    let pd = match words.next() {
        Some(ids) => list(ids)?,
        None => Vec::new(),
    };
    let replicas = match words.next() {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=flotilla_pd::model::MAX_REPLICAS_MAX).contains(n))?,
        None => 0,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Some(Bootstrap {
        regions,
        members,
        pd,
        replicas,
    }))
}

fn parse_region_line(line: &str) -> Option<HostedRegion> {
    let mut words = line.strip_prefix("region ")?.split(' ');
    let id = RegionId(words.next()?.parse().ok()?);
    let conf_version = words.next()?.parse().ok()?;
    let version = words.next()?.parse().ok()?;
    let start = unhex(words.next()?)?;
    let end = unhex(words.next()?)?;
    let initial_peers = parse_id_list(words.next()?)?;
    let split_start = match words.next() {
        Some(word) => Some(parse_start(word)?),
        None => None,
    };
    if words.next().is_some() {
        return None;
    }
    let region = Region::new(id, start, end, Epoch::new(conf_version, version)).ok()?;
    Some(HostedRegion {
        region,
        initial_peers,
        start: split_start,
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
        let (a, b) = (StoreId(0x8081), StoreId(0x8082));
        StoreMeta {
            store: a,
            cluster: 42,
            bootstrap: Some(Bootstrap {
                regions: 3,
                members: vec![a, b],
                pd: vec![a],
                replicas: 5,
            }),
            pd: Some(vec![a.peer_id()]),
            regions: regions
                .into_iter()
                .enumerate()
                .map(|(i, region)| HostedRegion {
                    region,
                    initial_peers: if i == 2 {
                        Vec::new()
                    } else {
                        vec![a.peer_id(), b.peer_id()]
                    },
                    // Region 2 was split off another at entry 70 of term 4.
                    start: (i == 1).then(|| RegionStart {
                        index: 70,
                        term: 4,
                        learners: vec![StoreId(0x8083).peer_id()],
                    }),
                })
                .collect(),
        }
    }

    /// Region changes go to the change log: replayed at load, a torn last line dropped, a
    /// damaged line refused, folded into `store.meta` by `save` (the log removed), and an
    /// old log replayed over the folded file changes nothing.
    #[test]
    fn the_change_log_replays_folds_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("flotilla-meta-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut meta = sample();
        meta.save(&dir).unwrap();
        let added = HostedRegion {
            region: Region::new(
                RegionId(9),
                Bytes::from_static(b"x"),
                Bytes::new(),
                Epoch::new(1, 1),
            )
            .unwrap(),
            initial_peers: Vec::new(),
            start: None,
        };
        let changes = [
            MetaChange::Region(added.clone()),
            MetaChange::Removed(RegionId(2)),
            MetaChange::Cluster(7),
            MetaChange::Pd(None),
            MetaChange::Pd(Some(Vec::new())),
        ];
        StoreMeta::append(&dir, &changes).unwrap();
        for change in &changes {
            meta.apply(change);
        }
        assert_eq!(StoreMeta::load(&dir).unwrap().as_ref(), Some(&meta));
        assert!(meta.regions.iter().any(|h| h.region.id == RegionId(9)));
        assert!(!meta.regions.iter().any(|h| h.region.id == RegionId(2)));
        // A crash cut the next line short: it was never acknowledged, and is dropped.
        let log = dir.join(STORE_META_LOG_FILE);
        let good = std::fs::read(&log).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(b"remove 9 crc32c 0000");
        std::fs::write(&log, &torn).unwrap();
        assert_eq!(StoreMeta::load(&dir).unwrap().as_ref(), Some(&meta));
        // A complete line that does not verify is damage.
        let damaged = String::from_utf8(good.clone())
            .unwrap()
            .replace("remove 2", "remove 3");
        std::fs::write(&log, damaged).unwrap();
        let error = StoreMeta::load(&dir).unwrap_err();
        assert!(error.contains("does not verify"), "{error}");
        // Folding: everything in store.meta, no log; the old log over it changes nothing.
        std::fs::write(&log, &good).unwrap();
        meta.save(&dir).unwrap();
        assert!(!log.exists());
        assert_eq!(StoreMeta::load(&dir).unwrap().as_ref(), Some(&meta));
        std::fs::write(&log, &good).unwrap();
        assert_eq!(StoreMeta::load(&dir).unwrap().as_ref(), Some(&meta));
        assert!(
            !meta.log_due(good.len() as u64),
            "a small log is not folded"
        );
        assert!(meta.log_due(CHANGE_LOG_COMPACT_BYTES_MIN));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_and_damage() {
        let meta = sample();
        let text = meta.render();
        let path = Path::new("store.meta");
        assert_eq!(StoreMeta::parse(&text, path).unwrap(), meta);
        // Any changed byte is refused.
        let damaged = text.replace("cluster 000000000000002a", "cluster 000000000000002b");
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
    fn a_data_dir_from_before_store_identity_is_refused_with_what_to_do() {
        let body = "flotilla-store 1\naddress 127.0.0.1:8081\ncluster 000000000000002a\n";
        let text = format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()));
        let error = StoreMeta::parse(&text, Path::new("d/store.meta")).unwrap_err();
        assert!(error.contains("format 1"), "{error}");
        assert!(error.contains("empty data dir"), "{error}");
        assert!(error.contains("Runbook: a store lost its disk"), "{error}");
    }

    /// The bootstrap line's voters per static region: written when known, read back; a
    /// line from before it was recorded means 3; a count beyond 7 is damage.
    #[test]
    fn bootstrap_replicas_round_trip_and_default_to_three() {
        assert_eq!(
            parse_bootstrap("3 0000000000008081 0000000000008081 5")
                .unwrap()
                .unwrap()
                .replicas,
            5
        );
        let old = parse_bootstrap("3 0000000000008081 0000000000008081")
            .unwrap()
            .unwrap();
        assert_eq!((old.replicas, old.replicas_or_default()), (0, 3));
        assert_eq!(
            parse_bootstrap("3 0000000000008081 0000000000008081 9"),
            None
        );
        assert_eq!(
            parse_bootstrap("3 0000000000008081 0000000000008081 x"),
            None
        );
        let text = sample().render();
        assert!(text.contains(" 5\n"), "{text}");
    }

    #[test]
    fn a_store_without_a_bootstrap_round_trips() {
        let meta = StoreMeta {
            store: StoreId(7),
            cluster: 0,
            bootstrap: None,
            pd: None,
            regions: Vec::new(),
        };
        let text = meta.render();
        assert!(text.contains("bootstrap -\n"), "{text}");
        assert_eq!(StoreMeta::parse(&text, Path::new("m")).unwrap(), meta);
    }
}
