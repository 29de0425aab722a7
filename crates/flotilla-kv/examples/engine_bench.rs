//! Rough speed of the two engines on this machine: batched puts (as the state machine
//! writes them), point gets, a forward scan, and a region export + import.
//!
//! `cargo run --release -p flotilla-kv --example engine_bench [keys]` (default 200,000
//! keys of 16 bytes with 16-byte values, written in batches of 100). Numbers only: no
//! assertion, the machine is shared.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flotilla_kv::limits::SCAN_LIMIT_MAX;
use flotilla_kv::{FjallEngine, KvEngine, MemoryEngine, WriteBatch};

const BATCH_KEYS: usize = 100;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:012}"))
}

fn rate(what: &str, count: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  {what:<28} {count:>9} in {seconds:>7.3} s = {:>12.0}/s",
        count as f64 / seconds
    );
}

fn bench(name: &str, engine: &dyn KvEngine, target: &dyn KvEngine, keys: usize) {
    println!("{name}:");
    let value = Bytes::from_static(b"value-0123456789");
    let started = Instant::now();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(BATCH_KEYS) {
        let mut batch = WriteBatch::new();
        for &i in chunk {
            batch.put(key(i), value.clone());
        }
        batch.meta_put(
            Bytes::from_static(b"applied/bench"),
            Bytes::from_static(b"0"),
        );
        engine.write(batch).expect("write");
    }
    rate("puts (batches of 100)", keys, started);
    let started = Instant::now();
    let mut found = 0;
    for i in (0..keys).step_by(7) {
        found += usize::from(engine.get(&key(i)).expect("get").is_some());
    }
    rate("gets", found, started);
    let started = Instant::now();
    let mut scanned = 0;
    let mut start = Bytes::new();
    loop {
        let page = engine
            .scan(&start, b"", SCAN_LIMIT_MAX, false)
            .expect("scan");
        scanned += page.len();
        match page.last() {
            Some((last, _)) if page.len() == SCAN_LIMIT_MAX => {
                let mut next = last.to_vec();
                next.push(0);
                start = Bytes::from(next);
            }
            _ => break,
        }
    }
    rate("scanned pairs", scanned, started);
    let started = Instant::now();
    let mut file = Vec::new();
    let exported = engine.export_range(b"", b"", &mut file).expect("export");
    rate("exported pairs", exported as usize, started);
    let started = Instant::now();
    let imported = target
        .import_range(b"", b"", &mut file.as_slice())
        .expect("import");
    rate("imported pairs", imported as usize, started);
    println!("  export file: {} bytes", file.len());
}

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    bench("memory", &MemoryEngine::new(), &MemoryEngine::new(), keys);
    let dir = std::env::temp_dir().join(format!("flotilla-kv-bench-{}", std::process::id()));
    {
        let source = Arc::new(FjallEngine::open(dir.join("source")).expect("open fjall"));
        let target = Arc::new(FjallEngine::open(dir.join("target")).expect("open fjall"));
        bench("fjall", source.as_ref(), target.as_ref(), keys);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
