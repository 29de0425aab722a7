//! Targets on what flotilla-storage reads back from disk: `log-segment` (a shared-log
//! segment recovered by `SharedLog::open`, then every entry read back), `raft-meta` (the
//! meta journal through `FileMetaStorage::open`), `raft-meta-legacy` (a group's meta file of
//! the older layout, migrated at open) and `snapshot-manifest`
//! (`Manifest::decode`).
//!
//! Owns: seeds written by the storage module itself on its simulated file system, and the
//! checksum repairs that let mutants past the CRC32Cs to the lengths and counts behind them.
//! Must never: touch the real file system (everything runs on `SimFs`).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{Configuration, Entry, EntryPayload, LogIndex, PeerId, Priority, Rng, Term};
use flotilla_raft::{LogStore, SnapshotMeta};
use flotilla_storage::fs::{FileSystem, SimFs};
use flotilla_storage::log::format::{
    segment_name, RECORD_HEADER_BYTES, RECORD_MAGIC, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};
use flotilla_storage::snapshot::{FileEntry, Manifest};
use flotilla_storage::{
    FileMetaStorage, LogOptions, LogStorage, MetaStorage, RaftMeta, SharedLog, WriteBatch,
};

use crate::Target;

const LOG_DIR: &str = "/data/log";
const META_DIR: &str = "/data/meta";
/// The group whose meta file the `raft-meta` target writes.
const META_GROUP: u64 = 7;
/// Segment files one input is cut into, at most.
const SEGMENTS_MAX: usize = 8;
/// Entries read back one by one per group, at most.
const READ_BACK_ENTRIES_MAX: u64 = 64;

fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

fn entries(first: u64, count: u64, term: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|i| Entry {
            index: LogIndex(i),
            term: Term(term),
            payload: match i % 4 {
                0 => EntryPayload::NoOp,
                1 => EntryPayload::Configuration(Configuration {
                    voters: [PeerId::new("a:1"), PeerId::new("b:2")]
                        .into_iter()
                        .collect(),
                    learners: [PeerId::new("c:3")].into_iter().collect(),
                    old_voters: (i % 8 == 1).then(|| [PeerId::new("a:1")].into_iter().collect()),
                    priorities: [(PeerId::new("a:1"), Priority(3))].into_iter().collect(),
                }),
                _ => EntryPayload::Normal(Bytes::from(vec![i as u8; (i % 13) as usize])),
            },
        })
        .collect()
}

/// Segments the shared log wrote: appends for three groups, truncations both ways, a
/// reset, spread over a few segments (small segments rotate); each file is one seed.
fn log_seeds() -> Vec<Vec<u8>> {
    let fs = SimFs::new();
    let dir = Path::new(LOG_DIR);
    let options = LogOptions {
        segment_bytes_max: 400,
        ..LogOptions::default()
    };
    let log = SharedLog::open(Arc::new(fs.clone()), dir, options)
        .unwrap_or_else(|e| panic!("seed log does not open: {e}"));
    let mut batch = WriteBatch::new();
    batch
        .append(1, &entries(1, 5, 1))
        .append(2, &entries(1, 3, 2));
    log.write(&batch).expect("seed batch");
    let mut batch = WriteBatch::new();
    batch
        .append(1, &entries(6, 4, 2))
        .truncate_suffix(2, LogIndex(3))
        .append(2, &entries(3, 4, 3))
        .append(3, &entries(1, 2, 1));
    log.write(&batch).expect("seed batch");
    let mut batch = WriteBatch::new();
    batch
        .truncate_prefix(1, LogIndex(4), Term(1))
        .reset(3, LogIndex(10), Term(4));
    log.write(&batch).expect("seed batch");
    let mut batch = WriteBatch::new();
    batch.append(3, &entries(11, 6, 4));
    log.write(&batch).expect("seed batch");
    let mut seeds = log_prefixes(&fs, dir);
    // Compact every group past the early segments, so they are reclaimed and the log's
    // first segment opens with a checkpoint counting entries it no longer holds.
    let mut batch = WriteBatch::new();
    batch
        .truncate_prefix(1, LogIndex(9), Term(2))
        .truncate_prefix(2, LogIndex(6), Term(3))
        .truncate_prefix(3, LogIndex(14), Term(4));
    log.write(&batch).expect("seed batch");
    for first in [17, 21] {
        let mut batch = WriteBatch::new();
        batch.append(3, &entries(first, 4, 5));
        log.write(&batch).expect("seed batch");
    }
    drop(log);
    let compacted = log_prefixes(&fs, dir);
    let whole = compacted
        .last()
        .cloned()
        .expect("the compacted log has segments");
    assert!(run_log(&whole), "the compacted seed log does not open");
    // Once early segments are reclaimed, a prefix of what is left may end before the
    // record that compacts the entries its first checkpoint counts: not a state the log was
    // ever in (recovery rightly refuses it), so not a seed.
    seeds.extend(compacted.into_iter().filter(|prefix| run_log(prefix)));
    seeds
}

/// The log in `dir` as it was after each of its segments was written: its first segment,
/// its first two, ... (a later segment alone is not a log: the entries its checkpoint
/// counts live in the segments before it).
fn log_prefixes(fs: &SimFs, dir: &Path) -> Vec<Vec<u8>> {
    let mut names = fs.list(dir).expect("seed log dir");
    names.sort();
    let segments: Vec<Vec<u8>> = names
        .iter()
        .map(|name| fs.read_all(&dir.join(name)).expect("seed segment"))
        .filter(|bytes| bytes.len() > SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES)
        .collect();
    assert!(segments.len() >= 2, "the seed log did not rotate");
    (1..=segments.len())
        .map(|n| segments[..n].concat())
        .collect()
}

/// Where the input's segments start: 0, then each later segment magic (at most
/// [`SEGMENTS_MAX`] segments; the last runs to the end).
fn segment_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        (1..bytes.len())
            .filter(|&i| bytes[i..].starts_with(&SEGMENT_MAGIC))
            .take(SEGMENTS_MAX - 1),
    );
    starts
}

/// Cuts the input into segment files where a segment magic starts (so one input can be a
/// whole log: recovery checks that each segment's checkpoint agrees with the replay before
/// it), each named after the sequence its header claims; a later file claiming a sequence
/// already taken is dropped.
fn split_segments(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let starts = segment_starts(bytes);
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
        let piece = &bytes[start..end];
        let sequence = piece
            .get(8..16)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(1, u64::from_le_bytes);
        if out.iter().all(|(s, _)| *s != sequence) {
            out.push((sequence, piece));
        }
    }
    out
}

/// Opens a log of the segments in `bytes` ([`split_segments`]), then reads every entry of
/// every group back: recovery and the read path both decode what is on disk.
fn run_log(bytes: &[u8]) -> bool {
    let fs = SimFs::new();
    let dir = Path::new(LOG_DIR);
    fs.create_dir_all(dir)
        .expect("the simulated file system creates directories");
    for (sequence, piece) in split_segments(bytes) {
        let path = dir.join(segment_name(sequence));
        let written = fs.open_append(&path).and_then(|mut file| {
            file.append(piece)?;
            file.sync()
        });
        written.expect("the simulated file system writes");
    }
    let Ok(log) = SharedLog::open(Arc::new(fs), dir, LogOptions::default()) else {
        return false;
    };
    for group in log.groups() {
        let view = log.group(group);
        let first = LogStorage::first_index(&view);
        let last = LogStorage::last_index(&view);
        // Recovery validated the index; reads must agree with it or fail cleanly.
        let _ = LogStore::entries(&view, first, last.next(), u64::MAX);
        let mut index = first;
        while index <= last && index.get() - first.get() < READ_BACK_ENTRIES_MAX {
            let _ = LogStorage::entry(&view, index);
            let _ = LogStorage::term(&view, index);
            index = index.next();
        }
    }
    true
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Repairs the checksums of every segment in the input ([`fix_segment`]).
fn fix_log(data: &mut Vec<u8>, rng: &mut Rng) {
    let starts = segment_starts(data);
    let mut out = Vec::with_capacity(data.len());
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(data.len());
        let mut piece = data[start..end].to_vec();
        fix_segment(&mut piece, rng);
        out.extend_from_slice(&piece);
    }
    *data = out;
}

/// Repairs a segment's checksums: its header's, and every record's header and body (and,
/// in a batch record, every entry's own CRC), walking the lengths as they now are.
fn fix_segment(data: &mut [u8], rng: &mut Rng) {
    if data.len() >= SEGMENT_HEADER_BYTES {
        if rng.below(4) == 0 {
            data[..8].copy_from_slice(&SEGMENT_MAGIC);
        }
        let header_crc = crc(&data[..16]);
        data[16..20].copy_from_slice(&header_crc.to_le_bytes());
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + RECORD_HEADER_BYTES <= data.len() {
        let body_len = u32_at(data, offset + 4) as usize;
        let body_start = offset + RECORD_HEADER_BYTES;
        let Some(body_end) = body_start
            .checked_add(body_len)
            .filter(|&end| end <= data.len())
        else {
            // A record running past the end: left as it is (a torn tail, or damage).
            break;
        };
        data[offset] = RECORD_MAGIC;
        if data[offset + 1] == 1 {
            fix_entry_crcs(&mut data[body_start..body_end]);
        }
        let body_crc = crc(&data[body_start..body_end]);
        data[offset + 8..offset + 12].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc(&data[offset..offset + 12]);
        data[offset + 12..offset + 16].copy_from_slice(&header_crc.to_le_bytes());
        offset = body_end;
    }
}

/// Best effort: walks a batch body's ops and rewrites each appended entry's CRC.
fn fix_entry_crcs(body: &mut [u8]) {
    let read = |b: &[u8], at: usize, n: usize| -> Option<u64> {
        let bytes = b.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
    };
    let Some(ops) = read(body, 0, 4) else { return };
    let mut at = 4usize;
    for _ in 0..ops.min(1024) {
        let Some(kind) = read(body, at, 1) else {
            return;
        };
        at += 9;
        match kind {
            1 => {
                let Some(count) = read(body, at, 4) else {
                    return;
                };
                at += 4;
                for _ in 0..count.min(4096) {
                    let Some(len) = read(body, at, 4) else { return };
                    let start = at + 4;
                    let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l))
                    else {
                        return;
                    };
                    if end.saturating_add(4) > body.len() {
                        return;
                    }
                    let entry_crc = crc(&body[start..end]);
                    body[end..end + 4].copy_from_slice(&entry_crc.to_le_bytes());
                    at = end + 4;
                }
            }
            2 | 4 => at += 16,
            3 => at += 8,
            _ => return,
        }
    }
}

/// `log-segment`: a shared-log segment recovered, then read back.
pub(crate) fn log_segment() -> Target {
    Target {
        name: "log-segment",
        about: "segment file bytes on SimFs -> SharedLog::open (recovery) -> every entry read back",
        seeds: log_seeds,
        run: run_log,
        fixup: Some(fix_log),
    }
}

/// Repairs a small framed file (`codec::frame`: magic, version, body length, body,
/// CRC32C): the CRC always, the body length half the time.
pub(crate) fn fix_framed(data: &mut [u8], rng: &mut Rng) {
    if data.len() < 13 {
        return;
    }
    let crc_at = data.len() - 4;
    if rng.below(2) == 0 {
        let body_len = u32::try_from(crc_at - 9).unwrap_or(u32::MAX);
        data[5..9].copy_from_slice(&body_len.to_le_bytes());
    }
    let sum = crc(&data[..crc_at]);
    data[crc_at..].copy_from_slice(&sum.to_le_bytes());
}

/// Metas worth seeding: no vote, a vote, a long vote at the edge term.
fn seed_metas() -> [RaftMeta; 3] {
    [
        RaftMeta::default(),
        RaftMeta {
            term: Term(3),
            vote: Some(PeerId::new("127.0.0.1:7001")),
        },
        RaftMeta {
            term: Term(u64::MAX),
            vote: Some(PeerId::new(&"h".repeat(300))),
        },
    ]
}

/// Journals `FileMetaStorage` wrote: one save, a batch of groups, a group saved twice.
fn meta_seeds() -> Vec<Vec<u8>> {
    let metas = seed_metas();
    let batches: [Vec<Vec<(u64, RaftMeta)>>; 3] = [
        vec![vec![(META_GROUP, metas[1].clone())]],
        vec![metas
            .iter()
            .enumerate()
            .map(|(i, m)| (META_GROUP + i as u64, m.clone()))
            .collect()],
        vec![
            vec![(META_GROUP, metas[0].clone())],
            vec![(META_GROUP, metas[2].clone())],
        ],
    ];
    batches
        .iter()
        .map(|saves| {
            let fs = SimFs::new();
            let mut storage =
                FileMetaStorage::open(Arc::new(fs.clone()), META_DIR).expect("seed meta dir opens");
            for batch in saves {
                storage.save_many(batch).expect("seed metas saved");
            }
            fs.read_all(&Path::new(META_DIR).join("journal"))
                .expect("seed meta journal")
        })
        .collect()
}

/// Repairs the journal records' checksums (header and body) as far as their lengths
/// reach, so that mutants get past them to the counts and fields behind.
fn fix_journal(data: &mut [u8], _rng: &mut Rng) {
    let mut at = 0;
    while at + 12 <= data.len() {
        let sum = crc(&data[at..at + 8]);
        data[at + 8..at + 12].copy_from_slice(&sum.to_le_bytes());
        let len = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let end = at + 12 + len as usize;
        if end + 4 > data.len() {
            return;
        }
        let sum = crc(&data[at + 12..end]);
        data[end..end + 4].copy_from_slice(&sum.to_le_bytes());
        at = end + 4;
    }
}

fn run_meta_file(name: &str, bytes: &[u8]) -> bool {
    let fs = SimFs::new();
    let dir = Path::new(META_DIR);
    let written = fs.create_dir_all(dir).and_then(|()| {
        let mut file = fs.open_append(&dir.join(name))?;
        file.append(bytes)?;
        file.sync()
    });
    written.expect("the simulated file system writes");
    let Ok(storage) = FileMetaStorage::open(Arc::new(fs), dir) else {
        return false;
    };
    storage.load(META_GROUP).is_ok()
}

/// `raft-meta`: the process's term-and-vote journal.
pub(crate) fn raft_meta() -> Target {
    Target {
        name: "raft-meta",
        about: "meta journal bytes on SimFs -> FileMetaStorage::open -> load",
        seeds: meta_seeds,
        run: |bytes| run_meta_file("journal", bytes),
        fixup: Some(|data, rng| fix_journal(data, rng)),
    }
}

/// Per-group meta files of the older layout, as it wrote them.
fn legacy_meta_seeds() -> Vec<Vec<u8>> {
    seed_metas()
        .iter()
        .map(|meta| flotilla_storage::meta::encode_legacy(META_GROUP, meta))
        .collect()
}

/// `raft-meta-legacy`: a group's term-and-vote file of the older layout, which opening
/// migrates into the journal.
pub(crate) fn raft_meta_legacy() -> Target {
    Target {
        name: "raft-meta-legacy",
        about: "<group>.meta bytes on SimFs -> FileMetaStorage::open (migration) -> load",
        seeds: legacy_meta_seeds,
        run: |bytes| run_meta_file(&format!("{META_GROUP}.meta"), bytes),
        fixup: Some(|data, rng| fix_framed(data, rng)),
    }
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    let meta = |joint: bool| SnapshotMeta {
        index: LogIndex(120),
        term: Term(4),
        configuration: Configuration {
            voters: [PeerId::new("a:1"), PeerId::new("b:2"), PeerId::new("c:3")]
                .into_iter()
                .collect(),
            learners: [PeerId::new("d:4")].into_iter().collect(),
            old_voters: joint.then(|| {
                [PeerId::new("a:1"), PeerId::new("e:5")]
                    .into_iter()
                    .collect()
            }),
            priorities: [(PeerId::new("b:2"), Priority(2))].into_iter().collect(),
        },
    };
    let file = |name: &str, size: u64| FileEntry {
        name: name.into(),
        size,
        checksum: crc(name.as_bytes()),
    };
    [
        Manifest {
            meta: meta(false),
            files: vec![file("data.kv", 1 << 20), file("region", 33)],
        },
        Manifest {
            meta: meta(true),
            files: Vec::new(),
        },
        Manifest {
            meta: SnapshotMeta::default(),
            files: (0..20)
                .map(|i| file(&format!("part-{i:03}"), i * 1000))
                .collect(),
        },
    ]
    .iter()
    .map(Manifest::encode)
    .collect()
}

/// Decodes a manifest as the snapshot store and a snapshot copy do, and checks the pair:
/// what was accepted encodes back to a manifest that decodes equal.
fn run_manifest(bytes: &[u8]) -> bool {
    let path = Path::new("/snapshots/manifest");
    let Ok(manifest) = Manifest::decode(path, bytes) else {
        return false;
    };
    let _ = manifest.total_bytes();
    for f in &manifest.files {
        assert!(
            manifest.file(&f.name).is_some(),
            "file {:?} not found by name",
            f.name
        );
    }
    let again = Manifest::decode(path, &manifest.encode())
        .unwrap_or_else(|e| panic!("an accepted manifest, re-encoded, is refused: {e}"));
    assert_eq!(again, manifest, "manifest changed in a round trip");
    true
}

/// `snapshot-manifest`: a snapshot's manifest from disk or a remote source.
pub(crate) fn snapshot_manifest() -> Target {
    Target {
        name: "snapshot-manifest",
        about: "manifest bytes -> snapshot::Manifest::decode (round trip checked)",
        seeds: manifest_seeds,
        run: run_manifest,
        fixup: Some(|data, rng| fix_framed(data, rng)),
    }
}

/// Bytes a hostile source serves in one `snapshot-copy` run before it fails every further
/// read (a manifest may claim files of up to 1 TiB; the copy must not need them to fail).
const SOURCE_BYTES_MAX: usize = 1 << 20;

/// A snapshot source answering from the input: its manifest, its files, and how it
/// misbehaves.
struct HostileSource {
    manifest: Vec<u8>,
    files: Vec<Vec<u8>>,
    /// Bit 0: serve one byte more than asked; bit 1: serve every chunk empty; bit 2: fail
    /// reads of the second file.
    mode: u8,
    served: std::cell::Cell<usize>,
}

impl flotilla_storage::SnapshotSource for HostileSource {
    fn manifest(&self) -> Result<Vec<u8>, flotilla_storage::StorageError> {
        Ok(self.manifest.clone())
    }

    fn read_chunk(
        &self,
        name: &str,
        offset: u64,
        len_max: u32,
    ) -> Result<Vec<u8>, flotilla_storage::StorageError> {
        let refuse = |why: &str| {
            Err(flotilla_storage::StorageError::InvalidArgument(format!(
                "hostile source: {why}"
            )))
        };
        // Files are served in the manifest's order, matched by position.
        let Ok(manifest) = Manifest::decode(Path::new("<source>"), &self.manifest) else {
            return refuse("no manifest");
        };
        let Some(position) = manifest.files.iter().position(|f| f.name == name) else {
            return refuse("no such file");
        };
        if position == 1 && self.mode & 4 != 0 {
            return refuse("read failed");
        }
        if self.served.get() >= SOURCE_BYTES_MAX {
            return refuse("served enough");
        }
        if self.mode & 2 != 0 {
            return Ok(Vec::new());
        }
        let data = self.files.get(position).map_or(&[][..], Vec::as_slice);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let extra = usize::from(self.mode & 1 != 0);
        let end = start
            .saturating_add(len_max as usize)
            .saturating_add(extra)
            .min(data.len());
        self.served.set(self.served.get() + (end - start));
        Ok(data[start..end].to_vec())
    }
}

/// The `snapshot-copy` input: manifest length u32, manifest, file count u8, each file as
/// length u32 and bytes, then the mode byte.
fn encode_source(manifest: &[u8], files: &[Vec<u8>], mode: u8) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        &u32::try_from(manifest.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(manifest);
    out.push(u8::try_from(files.len()).unwrap_or(u8::MAX));
    for file in files {
        out.extend_from_slice(&u32::try_from(file.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(file);
    }
    out.push(mode);
    out
}

fn decode_source(bytes: &[u8]) -> Option<HostileSource> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let len = |b: &[u8]| usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok();
    let manifest_len = len(take(4)?)?;
    let manifest = take(manifest_len)?.to_vec();
    let count = take(1)?[0];
    let mut files = Vec::new();
    for _ in 0..count {
        let file_len = len(take(4)?)?;
        files.push(take(file_len)?.to_vec());
    }
    let mode = take(1).map_or(0, |m| m[0]);
    Some(HostileSource {
        manifest,
        files,
        mode,
        served: std::cell::Cell::new(0),
    })
}

/// Real snapshots written by a `SnapshotWriter`, served honestly, a byte too much, empty,
/// and failing.
fn copy_seeds() -> Vec<Vec<u8>> {
    let store = flotilla_storage::SnapshotStore::in_memory().expect("in-memory snapshot store");
    let meta = SnapshotMeta {
        index: LogIndex(40),
        term: Term(3),
        configuration: Configuration::new([PeerId::new("a:1"), PeerId::new("b:2")]),
    };
    let mut writer = store.create_writer(meta).expect("seed snapshot writer");
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    writer.append("data.kv", &data).expect("seed snapshot data");
    writer
        .append("region", b"region record")
        .expect("seed snapshot file");
    let reader = writer.finish().expect("seed snapshot finishes");
    let files: Vec<Vec<u8>> = reader
        .manifest()
        .files
        .iter()
        .map(|f| {
            reader
                .read_chunk(&f.name, 0, u32::try_from(f.size).unwrap_or(u32::MAX))
                .expect("seed snapshot file reads")
        })
        .collect();
    let manifest = reader.manifest_bytes();
    [0, 1, 2, 4]
        .iter()
        .map(|&mode| encode_source(&manifest, &files, mode))
        .collect()
}

/// Copies a snapshot from a hostile source into an empty in-memory store, as a follower
/// installing a leader's snapshot does, with small chunks and frequent checkpoints; then
/// opens the store again (which verifies what was installed).
fn run_copy(bytes: &[u8]) -> bool {
    let Some(source) = decode_source(bytes) else {
        return false;
    };
    let fs = SimFs::new();
    let store = flotilla_storage::SnapshotStore::open(Arc::new(fs.clone()), "/snapshots")
        .expect("an empty snapshot store opens");
    let options = flotilla_storage::CopyOptions {
        chunk_bytes: 1024,
        checkpoint_bytes: 2048,
        throttle: None,
    };
    let copied = flotilla_storage::copy_snapshot(&source, &store, &options).is_ok();
    drop(store);
    let reopened = flotilla_storage::SnapshotStore::open(Arc::new(fs), "/snapshots");
    // A copy that was accepted must survive a restart.
    if copied {
        let reopened =
            reopened.unwrap_or_else(|e| panic!("an installed snapshot does not reopen: {e}"));
        assert!(
            reopened.newest_meta().is_some(),
            "installed snapshot lost on reopen"
        );
    }
    // Accepted (worth mutating further): the copy got past the manifest.
    Manifest::decode(Path::new("<source>"), &source.manifest).is_ok()
}

/// Repairs the manifest's checksum inside a `snapshot-copy` input.
fn fix_copy(data: &mut [u8], rng: &mut Rng) {
    let Some(len) = data
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .and_then(|b| usize::try_from(u32::from_le_bytes(b)).ok())
    else {
        return;
    };
    let Some(end) = len.checked_add(4).filter(|&e| e <= data.len()) else {
        return;
    };
    let mut manifest = data[4..end].to_vec();
    fix_framed(&mut manifest, rng);
    data[4..end].copy_from_slice(&manifest);
}

/// `snapshot-copy`: a snapshot installed from a hostile remote source.
pub(crate) fn snapshot_copy() -> Target {
    Target {
        name: "snapshot-copy",
        about: "manifest + chunks from a hostile SnapshotSource -> copy_snapshot into a SimFs store -> reopen",
        seeds: copy_seeds,
        run: run_copy,
        fixup: Some(|data, rng| fix_copy(data, rng)),
    }
}
