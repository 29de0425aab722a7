//! Targets on what flotilla-kv decodes: `kv-command` (a log entry's command, applied by
//! every replica), `kv-output` (a command's result), `kv-region` (a region record),
//! `kv-export` (a region snapshot's data file, from disk or a peer), `store-meta` (the
//! data directory's `store.meta`) and `store-meta-log` (its change log).
//!
//! Owns: seeds from the crate's own encoders and the checksum repairs of the export and
//! `store.meta` formats. Must never: touch the real file system.

use bytes::Bytes;
use flotilla_kv::engine::export::{ExportReader, ExportWriter};
use flotilla_kv::store::meta::{Bootstrap, HostedRegion, MetaChange, StoreMeta};
use flotilla_kv::{Epoch, KvCommand, KvOutput, Region, RegionId};
use flotilla_node::StoreId;
use flotilla_raft::Rng;

use crate::Target;

fn b(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

fn commands() -> Vec<KvCommand> {
    let put = KvCommand::Put {
        key: b(b"user/1"),
        value: b(b"alice"),
    };
    vec![
        put.clone(),
        KvCommand::Delete { key: b(b"user/2") },
        KvCommand::DeleteRange {
            start: b(b"a"),
            end: b(b"m"),
        },
        KvCommand::DeleteRange {
            start: b(b"q"),
            end: Bytes::new(),
        },
        KvCommand::CompareAndPut {
            key: b(b"k"),
            expected: Some(b(b"old")),
            value: b(b"new"),
        },
        KvCommand::CompareAndPut {
            key: b(b"k"),
            expected: None,
            value: b(b"first"),
        },
        KvCommand::PutIfAbsent {
            key: b(b"k"),
            value: b(b"v"),
        },
        KvCommand::GetAndPut {
            key: b(b"k"),
            value: Bytes::from(vec![0xab; 300]),
        },
        KvCommand::BatchPut(vec![(b(b"a"), b(b"1")), (b(b"b"), b(b"2"))]),
        KvCommand::BatchDelete(vec![b(b"a"), b(b"b"), b(b"c")]),
        KvCommand::SequenceNext {
            key: b(b"ids"),
            step: 100,
        },
        KvCommand::SequenceLatest { key: b(b"ids") },
        KvCommand::SequenceReset { key: b(b"ids") },
        KvCommand::Lock {
            name: b(b"job"),
            op: flotilla_kv::lock::LockOp::Acquire {
                owner: b(b"worker-1"),
                lease_ms: 30_000,
            },
            now_ms: 1_700_000_000_000,
            wall_ms: 1_700_000_000_000,
        },
        KvCommand::Lock {
            name: b(b"job"),
            op: flotilla_kv::lock::LockOp::Release {
                owner: b(b"worker-1"),
            },
            now_ms: 7,
            wall_ms: 7,
        },
        KvCommand::Lock {
            name: b(b"job"),
            op: flotilla_kv::lock::LockOp::Status,
            now_ms: 0,
            wall_ms: 0,
        },
        KvCommand::Fenced {
            lock: b(b"job"),
            token: 4,
            command: Box::new(KvCommand::Put {
                key: b(b"report"),
                value: b(b"done"),
            }),
        },
        KvCommand::Lease {
            key: flotilla_kv::lease::route_key(9),
            op: flotilla_kv::lease::LeaseOp::Grant { ttl_ms: 5_000 },
            now_ms: 3,
        },
        KvCommand::Lease {
            key: flotilla_kv::lease::route_key(9),
            op: flotilla_kv::lease::LeaseOp::Forget {
                keys: vec![b(b"a"), b(b"b")],
            },
            now_ms: 4,
        },
        KvCommand::Lease {
            key: flotilla_kv::lease::route_key(9),
            op: flotilla_kv::lease::LeaseOp::Attach { key: b(b"a") },
            now_ms: 5,
        },
        KvCommand::Leased {
            lease: 9,
            command: Box::new(KvCommand::Put {
                key: b(b"a"),
                value: b(b"1"),
            }),
        },
        KvCommand::LeaseDelete {
            key: b(b"a"),
            lease: 9,
        },
        KvCommand::Watch(flotilla_kv::watch::WatchOp::Interest),
        KvCommand::Watch(flotilla_kv::watch::WatchOp::End { renewals: 3 }),
        KvCommand::Batch(vec![
            put,
            KvCommand::Delete { key: b(b"x") },
            KvCommand::BatchPut(vec![(b(b"y"), b(b"z"))]),
        ]),
    ]
}

/// Decodes a command as the state machine does on apply, and checks the pair.
fn run_command(bytes: &[u8]) -> bool {
    let Ok(command) = KvCommand::decode(bytes) else {
        return false;
    };
    let _ = command.key_count();
    let again = KvCommand::decode(&command.encode())
        .unwrap_or_else(|e| panic!("an accepted command, re-encoded, is refused: {e}"));
    assert_eq!(again, command, "command changed in a round trip");
    true
}

/// `kv-command`: a KV command from a raft log entry.
pub(crate) fn kv_command() -> Target {
    Target {
        name: "kv-command",
        about: "entry data -> KvCommand::decode (round trip checked)",
        seeds: || commands().iter().map(|c| c.encode().to_vec()).collect(),
        run: run_command,
        fixup: None,
    }
}

fn outputs() -> Vec<KvOutput> {
    vec![
        KvOutput::Done,
        KvOutput::Swapped(true),
        KvOutput::Previous(Some(b(b"old"))),
        KvOutput::Previous(None),
        KvOutput::Range { start: 7, end: 107 },
        KvOutput::Counter(107),
        KvOutput::Lock(flotilla_kv::lock::LockState {
            acquired: true,
            held: true,
            owner: b(b"worker-1"),
            token: 3,
            lease_ms: 30_000,
            remaining_ms: 29_000,
            count: 1,
        }),
        KvOutput::Batch(vec![
            Ok(KvOutput::Done),
            Err("key too long".into()),
            Ok(KvOutput::Previous(Some(b(b"v")))),
        ]),
    ]
}

fn run_output(bytes: &[u8]) -> bool {
    let Ok(output) = KvOutput::decode(bytes) else {
        return false;
    };
    let again = KvOutput::decode(&output.encode())
        .unwrap_or_else(|e| panic!("an accepted output, re-encoded, is refused: {e}"));
    assert_eq!(again, output, "output changed in a round trip");
    true
}

/// `kv-output`: a command's result, handed back to the proposer.
pub(crate) fn kv_output() -> Target {
    Target {
        name: "kv-output",
        about: "apply result bytes -> KvOutput::decode (round trip checked)",
        seeds: || outputs().iter().map(|o| o.encode().to_vec()).collect(),
        run: run_output,
        fixup: None,
    }
}

fn regions() -> Vec<Region> {
    [
        (1, Bytes::new(), Bytes::new()),
        (2, b(b"a"), b(b"m")),
        (3, b(b"m"), Bytes::new()),
    ]
    .into_iter()
    .map(|(id, start, end)| {
        Region::new(RegionId(id), start, end, Epoch::new(2, 5)).expect("seed region")
    })
    .collect()
}

fn run_region(bytes: &[u8]) -> bool {
    let Ok(region) = Region::decode(bytes) else {
        return false;
    };
    let again = Region::decode(&region.encode())
        .unwrap_or_else(|e| panic!("an accepted region, re-encoded, is refused: {e}"));
    assert_eq!(again, region, "region changed in a round trip");
    true
}

/// `kv-region`: a region record (a snapshot's `region` file, the engine's region meta).
pub(crate) fn kv_region() -> Target {
    Target {
        name: "kv-region",
        about: "region record bytes -> Region::decode (round trip checked)",
        seeds: || regions().iter().map(|r| r.encode().to_vec()).collect(),
        run: run_region,
        fixup: None,
    }
}

/// The ranges of the export seeds: a middle region's, and the whole key space (the first
/// region's range starts at the empty key).
const EXPORT_RANGES: [(&[u8], &[u8]); 2] = [(b"b", b"t"), (b"", b"")];
/// Pairs read from one export, at most.
const EXPORT_PAIRS_MAX: usize = 10_000;

fn export_seeds() -> Vec<Vec<u8>> {
    let pair_sets: [&[(&[u8], &[u8])]; 3] = [
        &[],
        &[(b"b", b"1"), (b"c", b""), (b"cc", b"three")],
        &[(b"k", &[0xff; 200]), (b"s\xff", b"x")],
    ];
    let mut seeds = Vec::new();
    for (start, end) in EXPORT_RANGES {
        for pairs in pair_sets {
            let mut out = Vec::new();
            let mut writer = ExportWriter::new(&mut out, start, end).expect("seed export");
            for (key, value) in pairs {
                writer.pair(key, value).expect("seed pair");
            }
            writer.finish().expect("seed export finishes");
            seeds.push(out);
        }
    }
    seeds
}

/// The range an export's header claims (magic, version, start, end), read loosely; the
/// middle range when the header does not parse (the reader then refuses it anyway).
fn claimed_range(bytes: &[u8]) -> (&[u8], &[u8]) {
    let field = |at: usize| -> Option<(&[u8], usize)> {
        let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        let start = at + 4;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        Some((bytes.get(start..end)?, end))
    };
    field(5)
        .and_then(|(start, at)| field(at).map(|(end, _)| (start, end)))
        .unwrap_or(EXPORT_RANGES[0])
}

/// Reads an export as a snapshot install does (header, every pair, the trailer), expecting
/// the range its header claims, and checks what an engine's import relies on: every key
/// non-empty (fjall asserts on an empty one), inside the range, increasing.
fn run_export(bytes: &[u8]) -> bool {
    let (start, end) = claimed_range(bytes);
    let mut input = bytes;
    let Ok(mut reader) = ExportReader::new(&mut input, start, end) else {
        return false;
    };
    let mut previous: Option<Bytes> = None;
    for _ in 0..EXPORT_PAIRS_MAX {
        match reader.next_pair() {
            Ok(Some((key, _))) => {
                assert!(!key.is_empty(), "the export reader handed out an empty key");
                assert!(
                    key.as_ref() >= start && (end.is_empty() || key.as_ref() < end),
                    "the export reader handed out a key outside its range"
                );
                assert!(
                    previous.as_ref().is_none_or(|p| *p < key),
                    "the export reader handed out keys out of order"
                );
                previous = Some(key);
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Repairs an export's checksums, walking its records as their lengths now say.
fn fix_export(data: &mut [u8]) {
    let u32_at = |d: &[u8], at: usize| -> Option<usize> {
        let s = d.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok()
    };
    // Header: magic, version, start, end, CRC of all that.
    let Some(start_len) = u32_at(data, 5) else {
        return;
    };
    let Some(end_len_at) = (9usize).checked_add(start_len) else {
        return;
    };
    let Some(end_len) = u32_at(data, end_len_at) else {
        return;
    };
    let Some(mut at) = (end_len_at + 4).checked_add(end_len) else {
        return;
    };
    if at + 4 > data.len() {
        return;
    }
    let sum = crc32c::crc32c(&data[..at]);
    data[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    at += 4;
    // Records: a pair's CRC covers tag, lengths, key, value; the trailer's tag and count.
    while at < data.len() {
        let record_end = match data[at] {
            1 => {
                let (Some(k), Some(v)) = (u32_at(data, at + 1), u32_at(data, at + 5)) else {
                    return;
                };
                match (at + 9).checked_add(k).and_then(|e| e.checked_add(v)) {
                    Some(end) => end,
                    None => return,
                }
            }
            2 => at + 9,
            _ => return,
        };
        if record_end + 4 > data.len() {
            return;
        }
        let sum = crc32c::crc32c(&data[at..record_end]);
        data[record_end..record_end + 4].copy_from_slice(&sum.to_le_bytes());
        at = record_end + 4;
    }
}

/// `kv-export`: a region snapshot's data file.
pub(crate) fn kv_export() -> Target {
    Target {
        name: "kv-export",
        about: "range export bytes -> engine::export::ExportReader (header, pairs, trailer)",
        seeds: export_seeds,
        run: run_export,
        fixup: Some(|data, _| fix_export(data)),
    }
}

fn store_meta_seeds() -> Vec<Vec<u8>> {
    let peers = vec![
        StoreId(0x1111).peer_id(),
        StoreId(0x2222).peer_id(),
        StoreId(0x3333).peer_id(),
    ];
    let metas = [
        StoreMeta {
            store: StoreId(0x1111),
            cluster: 0,
            bootstrap: None,
            pd: None,
            regions: Vec::new(),
        },
        StoreMeta {
            store: StoreId(0x1111),
            cluster: 0x1234_5678_9abc_def0,
            bootstrap: Some(Bootstrap {
                regions: 3,
                members: vec![StoreId(0x1111), StoreId(0x2222), StoreId(0x3333)],
                pd: vec![StoreId(0x1111), StoreId(0x2222)],
                replicas: 5,
            }),
            pd: Some(vec![StoreId(0x2222).peer_id(), StoreId(0x1111).peer_id()]),
            regions: regions()
                .into_iter()
                .map(|region| HostedRegion {
                    region,
                    initial_peers: peers.clone(),
                    start: None,
                })
                .collect(),
        },
        StoreMeta {
            store: StoreId(u64::MAX),
            cluster: u64::MAX,
            bootstrap: None,
            pd: None,
            regions: vec![HostedRegion {
                region: Region::new(RegionId(9), b(b"\x00\xff"), Bytes::new(), Epoch::new(7, 1))
                    .expect("seed region"),
                initial_peers: vec![StoreId(0x8081).peer_id()],
                start: Some(flotilla_kv::store::meta::RegionStart {
                    index: 12,
                    term: 2,
                    learners: Vec::new(),
                }),
            }],
        },
    ];
    metas.iter().map(|m| m.render().into_bytes()).collect()
}

/// Parses `store.meta` as a store's start does (which reads it as UTF-8 text), and checks
/// the pair: what was accepted renders back to a file that parses equal.
fn run_store_meta(bytes: &[u8]) -> bool {
    let path = std::path::Path::new("/data/store.meta");
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let Ok(meta) = StoreMeta::parse(text, path) else {
        return false;
    };
    let again = StoreMeta::parse(&meta.render(), path)
        .unwrap_or_else(|e| panic!("an accepted store.meta, rendered again, is refused: {e}"));
    assert_eq!(again, meta, "store.meta changed in a round trip");
    true
}

/// Rewrites the last line as the CRC32C of the lines before it.
fn fix_store_meta(data: &mut Vec<u8>, _rng: &mut Rng) {
    let trimmed = data.iter().rposition(|&c| c != b'\n').map_or(0, |i| i + 1);
    let body_end = data[..trimmed]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    data.truncate(body_end);
    let sum = crc32c::crc32c(data);
    data.extend_from_slice(format!("crc32c {sum:08x}\n").as_bytes());
}

/// Change logs as a store appends them: regions added and removed, a cluster set.
fn store_meta_log_seeds() -> Vec<Vec<u8>> {
    let added = |id: u64, start: &'static [u8], end: &'static [u8]| {
        MetaChange::Region(HostedRegion {
            region: Region::new(RegionId(id), b(start), b(end), Epoch::new(1, 1))
                .expect("seed region"),
            initial_peers: Vec::new(),
            start: None,
        })
    };
    [
        vec![MetaChange::Cluster(0x42), added(7, b"m", b"n")],
        vec![added(8, b"", b"\x01"), MetaChange::Removed(RegionId(8))],
        vec![MetaChange::Removed(RegionId(1)), MetaChange::Cluster(0)],
        vec![
            MetaChange::Pd(Some(vec![StoreId(0x1111).peer_id()])),
            MetaChange::Pd(None),
            MetaChange::Pd(Some(Vec::new())),
        ],
    ]
    .iter()
    .map(|changes| StoreMeta::log_text(changes).into_bytes())
    .collect()
}

/// Replays a change log over a store's metadata as a start does; what was accepted must
/// survive a fold (render, parse) unchanged.
fn run_store_meta_log(bytes: &[u8]) -> bool {
    let path = std::path::Path::new("/data/store.meta.log");
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut meta = StoreMeta {
        store: StoreId(0x1111),
        cluster: 5,
        bootstrap: None,
        pd: None,
        regions: Vec::new(),
    };
    if meta.replay_log_text(text, path).is_err() {
        return false;
    }
    let folded = StoreMeta::parse(&meta.render(), path)
        .unwrap_or_else(|e| panic!("a replayed store.meta, rendered, is refused: {e}"));
    assert_eq!(folded, meta, "store.meta changed when folded");
    true
}

/// Rewrites every line's checksum, so mutants reach the changes behind them.
fn fix_store_meta_log(data: &mut Vec<u8>, _rng: &mut Rng) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fixed = String::new();
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let body = body.rsplit_once(" crc32c ").map_or(body, |(b, _)| b);
        let crc = crc32c::crc32c(body.as_bytes());
        fixed.push_str(&format!("{body} crc32c {crc:08x}{newline}"));
    }
    *data = fixed.into_bytes();
}

/// `store-meta-log`: the change log beside `store.meta`.
pub(crate) fn store_meta_log() -> Target {
    Target {
        name: "store-meta-log",
        about: "store.meta.log text -> StoreMeta::replay_log_text (fold checked)",
        seeds: store_meta_log_seeds,
        run: run_store_meta_log,
        fixup: Some(fix_store_meta_log),
    }
}

/// `store-meta`: the data directory's `store.meta`.
pub(crate) fn store_meta() -> Target {
    Target {
        name: "store-meta",
        about: "store.meta text -> store::meta::StoreMeta::parse (round trip checked)",
        seeds: store_meta_seeds,
        run: run_store_meta,
        fixup: Some(fix_store_meta),
    }
}
