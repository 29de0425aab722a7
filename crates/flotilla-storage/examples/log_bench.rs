//! Benchmark of durable appends: the shared log with group commit (one
//! `WriteBatch` per round holding one entry for every group: one write, one fsync) against
//! the simplest alternative a user might pick without a shared log — one append-only file
//! per group, each group writing and fsyncing its own file from its own thread.
//!
//! Not a timed test. Run: `cargo run --release -p flotilla-storage --example log_bench
//! [dir] [seconds_per_case]` (default dir: `target/log-bench`, which must be on a real disk:
//! fsync on tmpfs costs nothing). Prints entries/s, MB/s and entries per fsync, and the
//! disk's raw fsync rate, the physical ceiling being that rate times the batch size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_raft::{Entry, EntryPayload, LogIndex, Term};
use flotilla_storage::fs::{FileSystem, StdFs};
use flotilla_storage::{LogOptions, SharedLog, WriteBatch};

struct Outcome {
    entries: u64,
    bytes: u64,
    fsyncs: u64,
    elapsed: Duration,
}

impl Outcome {
    fn line(&self, name: &str) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{name:<34} {:>10.0} entries/s {:>8.1} MB/s {:>7.1} entries/fsync",
            self.entries as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.entries as f64 / self.fsyncs.max(1) as f64
        )
    }
}

fn shared_log(dir: &Path, groups: u64, size: usize, run_for: Duration) -> Outcome {
    let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
    let log = SharedLog::open(fs, dir, LogOptions::default()).expect("open");
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut batch = WriteBatch::new();
    while start.elapsed() < run_for {
        rounds += 1;
        batch.clear();
        for g in 0..groups {
            let e = Entry {
                index: LogIndex(rounds),
                term: Term(1),
                payload: EntryPayload::Normal(payload.clone()),
            };
            batch.append(g, std::slice::from_ref(&e));
        }
        log.write(&batch).expect("write");
        if rounds.is_multiple_of(256) {
            // Keep the log short, as a runtime taking snapshots would.
            batch.clear();
            for g in 0..groups {
                batch.truncate_prefix(g, LogIndex(rounds - 128), Term(1));
            }
            log.write(&batch).expect("compact");
        }
    }
    Outcome {
        entries: rounds * groups,
        bytes: rounds * groups * size as u64,
        fsyncs: rounds + rounds / 256,
        elapsed: start.elapsed(),
    }
}

fn file_per_group(dir: &Path, groups: u64, size: usize, run_for: Duration) -> Outcome {
    let start = Instant::now();
    let threads: Vec<_> = (0..groups)
        .map(|g| {
            let path = dir.join(format!("group-{g}.log"));
            std::thread::spawn(move || {
                let mut file = StdFs.open_append(&path).expect("open");
                let record = vec![7u8; size + 24]; // entry plus index, term and checksum
                let mut count = 0u64;
                while start.elapsed() < run_for {
                    file.append(&record).expect("append");
                    file.sync().expect("fsync");
                    count += 1;
                }
                count
            })
        })
        .collect();
    let entries: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    Outcome {
        entries,
        bytes: entries * size as u64,
        fsyncs: entries,
        elapsed: start.elapsed(),
    }
}

fn fsync_rate(dir: &Path, run_for: Duration) -> f64 {
    let mut file = StdFs.open_append(&dir.join("ceiling")).expect("open");
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < run_for {
        file.append(&[1]).expect("append");
        file.sync().expect("fsync");
        count += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let case = dir.join(name);
    let _ = std::fs::remove_dir_all(&case);
    std::fs::create_dir_all(&case).expect("create bench dir");
    case
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/log-bench".into()));
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let run_for = Duration::from_secs_f64(seconds);
    let rate = fsync_rate(&fresh(&dir, "ceiling"), run_for);
    println!("raw fsync rate: {rate:.0}/s (ceiling = this x entries per fsync)");
    for size in [100usize, 4096] {
        for groups in [1u64, 16, 256] {
            let shared = shared_log(&fresh(&dir, "shared"), groups, size, run_for);
            let simple = file_per_group(&fresh(&dir, "simple"), groups, size, run_for);
            let ratio = (shared.entries as f64 / shared.elapsed.as_secs_f64())
                / (simple.entries as f64 / simple.elapsed.as_secs_f64());
            let ceiling = rate * groups as f64;
            let shared_rate = shared.entries as f64 / shared.elapsed.as_secs_f64();
            println!("{size} B entries, {groups} groups:");
            println!("  {}", shared.line("shared log (group commit)"));
            println!("  {}", simple.line("file per group, fsync per write"));
            println!(
                "  ratio {ratio:.1}x; shared log at {:.0}% of the fsync ceiling",
                100.0 * shared_rate / ceiling
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
