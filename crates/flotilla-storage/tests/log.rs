//! Fault tests of the shared log: a crash at every write and fsync
//! boundary, byte flips anywhere in the segment files, random operation sequences against
//! the in-memory model, fsync failures, and a smoke test on the real file system.
//!
//! The model of a group is `MemLogStorage`; a batch is acknowledged when `write` returned
//! `Ok`, and after any crash the recovered log must equal the model of the acknowledged
//! batches, or of those plus the one batch in flight (a batch is one record, so it survives
//! whole or not at all).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{Entry, EntryPayload, LogIndex, LogStore, Rng, Term};
use flotilla_storage::fs::{FaultKind, FileSystem, SimFs, StdFs};
use flotilla_storage::{
    GroupId, LogOptions, LogStorage, MemLogStorage, SharedLog, StorageError, WriteBatch,
};

type Models = BTreeMap<GroupId, MemLogStorage>;

/// How many of a file's unsynced bytes survive a crash.
type Tail = fn(usize) -> usize;

/// One operation, applied to both the log (through a batch) and the model.
#[derive(Clone, Debug)]
enum ModelOp {
    Append(GroupId, Vec<Entry>),
    TruncatePrefix(GroupId, LogIndex, Term),
    TruncateSuffix(GroupId, LogIndex),
    Reset(GroupId, LogIndex, Term),
}

fn to_batch(ops: &[ModelOp]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for op in ops {
        match op {
            ModelOp::Append(g, entries) => batch.append(*g, entries),
            ModelOp::TruncatePrefix(g, i, t) => batch.truncate_prefix(*g, *i, *t),
            ModelOp::TruncateSuffix(g, i) => batch.truncate_suffix(*g, *i),
            ModelOp::Reset(g, i, t) => batch.reset(*g, *i, *t),
        };
    }
    batch
}

/// Applies `ops` to a copy of `models`; `Err` if any is refused (the model then is unchanged).
fn apply_model(models: &Models, ops: &[ModelOp]) -> Result<Models, StorageError> {
    let mut next = models.clone();
    for op in ops {
        match op {
            ModelOp::Append(g, entries) => next.entry(*g).or_default().append(entries)?,
            ModelOp::TruncatePrefix(g, i, t) => {
                next.entry(*g).or_default().truncate_prefix(*i, *t)?
            }
            ModelOp::TruncateSuffix(g, i) => next.entry(*g).or_default().truncate_suffix(*i)?,
            ModelOp::Reset(g, i, t) => next.entry(*g).or_default().reset(*i, *t)?,
        }
    }
    Ok(next)
}

fn entry(index: u64, term: u64, len: usize, rng: &mut Rng) -> Entry {
    let payload = match rng.below(10) {
        0 => EntryPayload::NoOp,
        _ => EntryPayload::Normal(Bytes::from(
            (0..len).map(|_| rng.below(256) as u8).collect::<Vec<u8>>(),
        )),
    };
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload,
    }
}

/// Describes the first difference between the log and the models, if any.
fn diff(log: &SharedLog, models: &Models) -> Option<String> {
    let groups: BTreeSet<GroupId> = models.keys().copied().chain(log.groups()).collect();
    let empty = MemLogStorage::new();
    for g in groups {
        let model = models.get(&g).unwrap_or(&empty);
        let view = log.group(g);
        let (first, last) = (model.first_index(), model.last_index());
        let got = (
            LogStorage::first_index(&view),
            LogStorage::last_index(&view),
        );
        if got != (first, last) {
            return Some(format!(
                "group {g}: bounds {got:?}, model ({first}, {last})"
            ));
        }
        let t = LogStorage::term(&view, first.prev()).ok();
        if t != model.term(first.prev()).ok() {
            return Some(format!("group {g}: compaction term {t:?}"));
        }
        let want: Vec<Entry> = (first.get()..=last.get())
            .map(|i| model.entry(LogIndex(i)).expect("model entry"))
            .collect();
        match LogStore::entries(&view, first, last.next(), u64::MAX) {
            Ok(got) if got == want => {}
            other => return Some(format!("group {g}: entries {first}..={last}: {other:?}")),
        }
        if let Some(mid) = want.get(want.len() / 2) {
            match LogStorage::entry(&view, mid.index) {
                Ok(got) if &got == mid => {}
                other => return Some(format!("group {g}: entry {}: {other:?}", mid.index)),
            }
            // A byte limit stops after the first entry that crosses it (at least one).
            let limit = want[0].size_bytes() + 1;
            let got = LogStore::entries(&view, first, last.next(), limit).map(|v| v.len());
            let expect = if want.len() > 1 && want[0].size_bytes() + want[1].size_bytes() <= limit {
                2
            } else {
                1
            };
            if got.as_ref().ok() != Some(&expect.min(want.len())) && want.len() > 1 {
                return Some(format!("group {g}: limited read gave {got:?}"));
            }
        }
    }
    None
}

fn assert_same(log: &SharedLog, models: &Models, context: &str) {
    if let Some(d) = diff(log, models) {
        panic!("{context}: {d}");
    }
}

fn small_options() -> LogOptions {
    LogOptions {
        segment_bytes_max: 2048,
        cache_bytes_max: 1024,
        record_bytes_max: 1 << 20,
    }
}

/// A scripted workload over four groups: appends, overwrites with a new term, prefix and
/// suffix truncations, a reset, and multi-group batches; enough bytes to rotate and reclaim
/// segments of 2 KiB.
fn scripted_workload() -> Vec<Vec<ModelOp>> {
    let mut rng = Rng::new(7);
    let mut models = Models::new();
    let mut batches = Vec::new();
    let mut term = 1;
    for round in 0..80u64 {
        let mut ops = Vec::new();
        for g in 1..=3u64 {
            if (round + g) % 3 == 0 {
                continue;
            }
            let last = models.get(&g).map_or(0, |m| m.last_index().get());
            let first = models.get(&g).map_or(1, |m| m.first_index().get());
            // Every 4th round group 2 overwrites its last two entries under a new term.
            let from = if g == 2 && round % 4 == 3 && last > first {
                term += 1;
                last - 1
            } else {
                last + 1
            };
            let count = 1 + rng.below(3);
            let entries =
                (from..from + count).map(|i| entry(i, term, 40 + rng.below(60) as usize, &mut rng));
            ops.push(ModelOp::Append(g, entries.collect()));
        }
        let last_of = |models: &Models, ops: &[ModelOp], g: GroupId| {
            apply_model(models, ops)
                .expect("script is valid")
                .get(&g)
                .map_or(0, |m| m.last_index().get())
        };
        if round % 5 == 4 {
            let l = last_of(&models, &ops, 1);
            ops.push(ModelOp::TruncatePrefix(
                1,
                LogIndex(l.saturating_sub(2)),
                Term(term),
            ));
        }
        if round % 7 == 6 {
            let after = apply_model(&models, &ops).expect("script is valid");
            if let Some(m) = after.get(&3).filter(|m| m.last_index() >= m.first_index()) {
                ops.push(ModelOp::TruncateSuffix(3, m.last_index()));
            }
        }
        if round % 11 == 10 {
            let l = last_of(&models, &ops, 2);
            ops.push(ModelOp::Reset(2, LogIndex(l + 5), Term(term)));
        }
        if round == 20 {
            // Group 4 appears late and compacts past its own end.
            ops.push(ModelOp::Append(4, vec![entry(1, term, 10, &mut rng)]));
            ops.push(ModelOp::TruncatePrefix(4, LogIndex(3), Term(term)));
        }
        if round % 9 == 8 {
            // Group 3 compacts everything it has: its old segments become reclaimable.
            let l = last_of(&models, &ops, 3);
            ops.push(ModelOp::TruncatePrefix(3, LogIndex(l), Term(term)));
        }
        models = apply_model(&models, &ops).expect("script is valid");
        batches.push(ops);
    }
    batches
}

const DIR: &str = "/data/log";

fn open_sim(fs: &SimFs) -> Result<SharedLog, StorageError> {
    SharedLog::open(Arc::new(fs.clone()), Path::new(DIR), small_options())
}

/// Runs `batches` until one fails; returns the acknowledged models and the one in flight.
fn run_until_failure(log: &SharedLog, batches: &[Vec<ModelOp>]) -> (Models, Option<Models>) {
    let mut acked = Models::new();
    for ops in batches {
        let next = apply_model(&acked, ops).expect("valid");
        match log.write(&to_batch(ops)) {
            Ok(()) => acked = next,
            Err(e) => {
                assert!(!matches!(e, StorageError::InvalidArgument(_)), "{e}");
                let again = log.write(&to_batch(ops));
                assert!(
                    matches!(again, Err(StorageError::Failed(_))),
                    "after a failure: {again:?}"
                );
                return (acked, Some(next));
            }
        }
    }
    (acked, None)
}

/// Crash at every write and fsync boundary of the scripted workload, with a clean loss and
/// with torn tails, and check that recovery keeps exactly the acknowledged batches (plus, at
/// most, the one in flight) and that the recovered log accepts and keeps new writes.
#[test]
fn crash_at_every_write_and_fsync_boundary() {
    let batches = scripted_workload();
    let full = SimFs::new();
    let log = open_sim(&full).expect("open");
    let (models, inflight) = run_until_failure(&log, &batches);
    assert!(inflight.is_none());
    assert!(log.segments().len() > 1, "the workload must rotate");
    let total_ops = full.operations();
    drop(log);
    let reopened = open_sim(&full).expect("reopen");
    assert_same(&reopened, &models, "clean reopen");
    assert!(
        reopened.segments()[0] > 1,
        "the workload must reclaim segments: {:?}",
        reopened.segments()
    );

    let tails: [(&str, Tail); 4] = [
        ("clean", |_| 0),
        ("torn half", |n| n / 2),
        ("torn all but one byte", |n| n.saturating_sub(1)),
        ("all unsynced bytes kept", |n| n),
    ];
    #[derive(Debug, Default)]
    struct Seen {
        acknowledged: u64,
        in_flight_kept: u64,
        torn: u64,
    }
    let mut seen = Seen::default();
    for k in 1..=total_ops {
        for (name, tail) in tails {
            let fs = SimFs::new();
            fs.stop_at(k);
            let (acked, inflight) = match open_sim(&fs) {
                Ok(log) => run_until_failure(&log, &batches),
                Err(_) => (Models::new(), None),
            };
            fs.crash(tail);
            let context = format!("crash after operation {k} of {total_ops} ({name})");
            let log = open_sim(&fs).unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
            seen.torn += u64::from(log.recovery().torn_bytes_cut > 0);
            let recovered = match diff(&log, &acked) {
                None => {
                    seen.acknowledged += 1;
                    acked
                }
                Some(d) => match &inflight {
                    Some(m) if diff(&log, m).is_none() => {
                        seen.in_flight_kept += 1;
                        m.clone()
                    }
                    _ => panic!("{context}: lost an acknowledged batch or kept a partial one: {d}"),
                },
            };
            // The recovered log keeps working and survives another restart.
            let mut rng = Rng::new(k);
            let g = 1 + rng.below(4);
            let next = recovered.get(&g).map_or(1, |m| m.last_index().get() + 1);
            let ops = vec![ModelOp::Append(g, vec![entry(next, 99, 30, &mut rng)])];
            log.write(&to_batch(&ops))
                .unwrap_or_else(|e| panic!("{context}: write after recovery: {e}"));
            let after = apply_model(&recovered, &ops).expect("valid");
            drop(log);
            let log = open_sim(&fs).unwrap_or_else(|e| panic!("{context}: second recovery: {e}"));
            assert_same(
                &log,
                &after,
                &format!("{context}, after one more write and reopen"),
            );
        }
    }
    eprintln!("{total_ops} crash points x {} tails: {seen:?}", tails.len());
    assert!(seen.in_flight_kept > 0 && seen.torn > 0, "{seen:?}");
}

fn segment_files(fs: &SimFs) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| p.starts_with(DIR) && p.extension().is_some_and(|e| e == "log"))
        .collect()
}

/// Flip one byte at a random position of a random segment (every record on disk was
/// acknowledged): the open must fail naming that file and an offset at or before the flip.
/// A single flipped byte can never take the shape of a torn write (see
/// `format::classify_bad_tail`), so it is never cut silently.
#[test]
fn every_flipped_byte_is_detected() {
    let batches = scripted_workload();
    let mut rng = Rng::new(2024);
    for trial in 0..300 {
        let fs = SimFs::new();
        let log = open_sim(&fs).expect("open");
        let (models, _) = run_until_failure(&log, &batches[..20 + trial % 20]);
        drop(log);
        let files = segment_files(&fs);
        let path = &files[rng.below(files.len() as u64) as usize];
        let len = fs.len_of(path).expect("len");
        let at = rng.below(len);
        let xor = 1 + rng.below(255) as u8;
        fs.corrupt(path, at as usize, xor).expect("flip");
        match open_sim(&fs) {
            Err(StorageError::Corrupt { path: p, offset, reason }) => {
                assert_eq!(&p, path, "trial {trial}: wrong file ({reason})");
                assert!(offset <= at, "trial {trial}: offset {offset} after the flip at {at}");
                let message = StorageError::Corrupt { path: p, offset, reason }.to_string();
                assert!(message.contains(&path.display().to_string()) && message.contains(&offset.to_string()));
            }
            Err(other) => panic!("trial {trial}: flip at {}:{at} gave {other}", path.display()),
            Ok(log) => panic!(
                "trial {trial}: flip of {xor:#x} at {}:{at} was accepted (cut {} bytes; same as model: {})",
                path.display(),
                log.recovery().torn_bytes_cut,
                diff(&log, &models).is_none()
            ),
        }
    }
}

/// A torn tail opens, reports how many bytes it cut, and keeps every acknowledged batch.
#[test]
fn torn_tail_is_cut_and_reported() {
    let batches = scripted_workload();
    let fs = SimFs::new();
    let log = open_sim(&fs).expect("open");
    let (acked, _) = run_until_failure(&log, &batches[..10]);
    // The next batch is written but its fsync never happens.
    fs.stop_at(fs.operations() + 1);
    assert!(log.write(&to_batch(&batches[10])).is_err());
    drop(log);
    fs.crash(|n| n / 2);
    let log = open_sim(&fs).expect("a torn tail opens");
    let report = log.recovery();
    assert!(report.torn_bytes_cut > 0, "{report:?}");
    assert!(report.torn_path.is_some());
    assert_same(&log, &acked, "after cutting the torn tail");
}

/// Bit rot after open: an entry read from disk (not from the cache) is verified.
#[test]
fn corruption_found_on_read_names_file_and_offset() {
    let fs = SimFs::new();
    let log = open_sim(&fs).expect("open");
    let mut rng = Rng::new(5);
    let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1, 50, &mut rng)).collect();
    log.write(WriteBatch::new().append(9, &entries))
        .expect("write");
    drop(log);
    let log = open_sim(&fs).expect("reopen"); // empty cache
    let path = segment_files(&fs)[0].clone();
    let len = fs.len_of(&path).expect("len");
    fs.corrupt(&path, (len - 10) as usize, 0x40).expect("flip"); // inside entry 5
    match LogStorage::entry(&log.group(9), LogIndex(5)) {
        Err(StorageError::Corrupt { path: p, .. }) => assert_eq!(p, path),
        other => panic!("read of a flipped entry gave {other:?}"),
    }
    assert_eq!(
        LogStorage::entry(&log.group(9), LogIndex(1)).ok(),
        Some(entries[0].clone())
    );
}

fn random_batch(rng: &mut Rng, models: &Models, term: &mut u64) -> Vec<ModelOp> {
    let mut ops = Vec::new();
    let mut shadow = models.clone();
    for _ in 0..1 + rng.below(3) {
        let g = 1 + rng.below(5);
        let m = shadow.get(&g).cloned().unwrap_or_default();
        let (first, last) = (m.first_index().get(), m.last_index().get());
        let op = match rng.below(100) {
            0..=59 => {
                // Mostly at the end, sometimes overwriting, rarely leaving a gap (refused).
                let from = match rng.below(10) {
                    0..=6 => last + 1,
                    7 | 8 => first + rng.below(last + 2 - first),
                    _ => last + 2,
                };
                if from <= last {
                    *term += 1;
                }
                let n = 1 + rng.below(6);
                let entries =
                    (from..from + n).map(|i| entry(i, *term, rng.below(120) as usize, rng));
                ModelOp::Append(g, entries.collect())
            }
            60..=74 => ModelOp::TruncatePrefix(
                g,
                LogIndex(first - 1 + rng.below(last + 3 - first)),
                Term(*term),
            ),
            75..=89 => ModelOp::TruncateSuffix(
                g,
                LogIndex(first.saturating_sub(1) + rng.below(last + 3 - first)),
            ),
            _ => ModelOp::Reset(g, LogIndex(rng.below(last + 10)), Term(*term)),
        };
        ops.push(op);
        if let Ok(next) = apply_model(&shadow, &ops[ops.len() - 1..]) {
            shadow = next;
        }
    }
    ops
}

/// Random operation sequences, compared with the in-memory model after every batch and
/// after every reopen; refused batches change nothing.
#[test]
fn random_operations_match_the_model() {
    for seed in 0..12u64 {
        let mut rng = Rng::new(seed);
        let fs = SimFs::new();
        let mut log = open_sim(&fs).expect("open");
        let mut models = Models::new();
        let mut term = 1;
        for step in 0..150 {
            let ops = random_batch(&mut rng, &models, &mut term);
            let context = format!("seed {seed} step {step} {ops:?}");
            match (apply_model(&models, &ops), log.write(&to_batch(&ops))) {
                (Ok(next), Ok(())) => models = next,
                (Err(_), Err(StorageError::InvalidArgument(_))) => {}
                (want, got) => panic!("{context}: model {:?}, log {got:?}", want.map(|_| ())),
            }
            assert_same(&log, &models, &context);
            if step % 25 == 24 {
                drop(log);
                log = open_sim(&fs).expect("reopen");
                assert_same(&log, &models, &format!("{context}, reopened"));
            }
        }
        // Once every group is reset, every old segment is reclaimed.
        let mut batch = WriteBatch::new();
        for g in 1..=5 {
            batch.reset(g, LogIndex(1000), Term(term));
        }
        log.write(&batch).expect("reset all");
        log.write(WriteBatch::new().append(1, &[entry(1001, term, 10, &mut rng)]))
            .expect("write");
        assert!(
            log.segments().len() <= 2,
            "seed {seed}: segments left {:?}",
            log.segments()
        );
    }
}

/// A failed fsync fails the log: the write returns the error, every later write (and
/// single-group call) returns `Failed`, reads still show only acknowledged batches, and
/// after a crash the failed batch — never acknowledged — may or may not be there, but
/// nothing else changed.
#[test]
fn fsync_failure_fails_the_log() {
    let batches = scripted_workload();
    for (kind, offset) in [(FaultKind::Sync, 2), (FaultKind::Write, 1)] {
        for tail in [|_| 0, |n: usize| n] {
            let fs = SimFs::new();
            let log = open_sim(&fs).expect("open");
            let (acked, _) = run_until_failure(&log, &batches[..8]);
            fs.fail_at(fs.operations() + offset, Some(kind));
            let failed = apply_model(&acked, &batches[8]).expect("valid");
            let first = log.write(&to_batch(&batches[8]));
            assert!(
                matches!(first, Err(StorageError::Io { .. })),
                "{kind:?}: {first:?}"
            );
            assert!(log.is_failed());
            assert!(matches!(
                log.write(&to_batch(&batches[9])),
                Err(StorageError::Failed(_))
            ));
            let mut group = log.group(1);
            assert!(matches!(
                group.truncate_suffix(LogIndex(5)),
                Err(StorageError::Failed(_))
            ));
            assert_same(&log, &acked, "reads after the failure");
            drop(log);
            fs.crash(tail);
            let log = open_sim(&fs).expect("recover");
            assert!(
                diff(&log, &acked).is_none() || diff(&log, &failed).is_none(),
                "{kind:?}: recovered state is neither acknowledged nor acknowledged + failed batch"
            );
        }
    }
}

/// The same log on the real file system, with rotation, reclamation and reopen.
#[test]
fn real_disk_smoke() {
    let dir = std::env::temp_dir().join(format!("flotilla-log-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
    let options = LogOptions {
        segment_bytes_max: 4096,
        ..small_options()
    };
    let batches = scripted_workload();
    let log = SharedLog::open(Arc::clone(&fs), &dir, options.clone()).expect("open");
    let (models, inflight) = run_until_failure(&log, &batches);
    assert!(inflight.is_none());
    assert_same(&log, &models, "real disk, before reopen");
    drop(log);
    let log = SharedLog::open(Arc::clone(&fs), &dir, options).expect("reopen");
    assert_same(&log, &models, "real disk, after reopen");
    assert_eq!(log.recovery().torn_bytes_cut, 0);
    drop(log);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Many threads write their own groups and read concurrently through one shared log; every
/// acknowledged entry is readable at once and after reopen.
#[test]
fn concurrent_writers_and_readers() {
    let fs = SimFs::new();
    let log = open_sim(&fs).expect("open");
    let threads: Vec<_> = (1..=8u64)
        .map(|g| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(g);
                let mut model = MemLogStorage::new();
                for i in 1..=40 {
                    let e = entry(i, 1, 30, &mut rng);
                    log.write(WriteBatch::new().append(g, std::slice::from_ref(&e)))
                        .expect("write");
                    model.append(std::slice::from_ref(&e)).expect("model");
                    let view = log.group(g);
                    assert_eq!(LogStorage::entry(&view, LogIndex(i)).expect("read"), e);
                    if i % 10 == 0 {
                        let through = LogIndex(i - 5);
                        let term = model.term(through).expect("term");
                        log.write(WriteBatch::new().truncate_prefix(g, through, term))
                            .expect("compact");
                        model.truncate_prefix(through, term).expect("model");
                    }
                }
                (g, model)
            })
        })
        .collect();
    let models: Models = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_same(&log, &models, "after concurrent writes");
    drop(log);
    let log = open_sim(&fs).expect("reopen");
    assert_same(&log, &models, "after concurrent writes, reopened");
}
