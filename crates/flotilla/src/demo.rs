//! `flotilla demo`: the whole story on one machine. Starts three `flotilla server`
//! processes on loopback with their data in a temporary directory, runs a write/read
//! workload with a progress bar, kills the leader with SIGKILL half way, and prints
//! throughput, latency percentiles, the failover time and a check that every acknowledged
//! write is still readable. Everything it starts, it stops; the directory is removed unless
//! `--keep` is given.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};

use crate::config::FileConfig;
use crate::output::{EXIT_FAILED, EXIT_OK};

/// `flotilla demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of workload (the leader is killed half way).
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Static regions.
    #[arg(long, default_value_t = 3)]
    regions: u32,
    /// Storage engine of the servers: memory or fjall.
    #[arg(long, default_value = "fjall")]
    engine: String,
    /// Keep the data directory and the servers' logs.
    #[arg(long)]
    keep: bool,
}

/// The three servers and their directory; stops everything when dropped.
struct Cluster {
    dir: PathBuf,
    keep: bool,
    addresses: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            // SIGTERM first: the servers hand leadership off and stop cleanly.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.iter_mut().flatten() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep {
            eprintln!("data and server logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(
    dir: &Path,
    address: &str,
    peers: &str,
    regions: u32,
    engine: &str,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let name = address.replace(':', "_");
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .map_err(|e| format!("cannot create a log file in {}: {e}", dir.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open the log file: {e}"))?;
    Command::new(exe)
        .args(["server", "--addr", address, "--peers", peers])
        .arg("--data-dir")
        .arg(dir.join(&name))
        .args(["--regions", &regions.to_string(), "--engine", engine])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start a server: {e}"))
}

/// Latencies in microseconds, merged from every client.
#[derive(Default)]
struct Histogram {
    samples: Vec<u32>,
}

impl Histogram {
    fn percentile(&self, sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
    }
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    stale: AtomicU64,
}

/// Runs the demo; returns the exit code.
pub fn run(args: DemoArgs, _file: &FileConfig) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flotilla demo: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILED,
        Err(why) => {
            eprintln!("flotilla demo: {why}");
            EXIT_FAILED
        }
    }
}

async fn demo(args: DemoArgs) -> Result<bool, String> {
    if args.clients == 0 || args.duration_s < 2 {
        return Err("--clients must be at least 1 and --duration-s at least 2".into());
    }
    let dir = std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut addresses = Vec::new();
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        addresses.push(format!("127.0.0.1:{port}"));
    }
    let peers = addresses.join(",");
    let mut cluster = Cluster {
        dir: dir.clone(),
        keep: args.keep,
        addresses: addresses.clone(),
        children: Vec::new(),
    };
    println!(
        "== starting 3 servers on {peers} (data in {})",
        dir.display()
    );
    for address in &addresses {
        let child = start_server(&dir, address, &peers, args.regions, &args.engine)?;
        cluster.children.push(Some(child));
    }
    let options = ClientOptions {
        timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let client = wait_for_cluster(&addresses, options.clone(), args.regions).await?;
    println!(
        "== {} regions have leaders; running {} clients for {} s",
        args.regions, args.clients, args.duration_s
    );

    let counters = Arc::new(Counters::default());
    let acked: Arc<Mutex<BTreeMap<Bytes, Bytes>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for id in 0..args.clients {
        workers.push(tokio::spawn(worker(
            id,
            client.clone(),
            counters.clone(),
            acked.clone(),
            stop.clone(),
        )));
    }
    let duration = Duration::from_secs(args.duration_s);
    let progress = tokio::spawn(progress(started, duration, counters.clone(), stop.clone()));

    // Half way: kill the store leading the most regions.
    tokio::time::sleep(duration / 2).await;
    let victim = leader_to_kill(&client).await?;
    let index = cluster
        .addresses
        .iter()
        .position(|a| *a == victim)
        .ok_or_else(|| format!("the leader {victim} is not one of the demo's servers"))?;
    let mut child = cluster.children[index]
        .take()
        .ok_or("the leader was already killed")?;
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    let killed_at = Instant::now();
    eprintln!();
    println!(
        "== killed the leader {victim} (pid {pid}) with SIGKILL at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failover = failover_time(&client, &victim, killed_at).await;
    match failover {
        Some(t) => println!(
            "== every region has a new leader that accepts writes: failover took {} ms",
            t.as_millis()
        ),
        None => println!("== no failover observed within 10 s"),
    }

    let rest = duration.saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::SeqCst);
    let mut histogram = Histogram::default();
    for worker in workers {
        if let Ok(samples) = worker.await {
            histogram.samples.extend(samples);
        }
    }
    let _ = progress.await;
    let elapsed = started.elapsed().as_secs_f64();

    // Restart the killed server from its data dir, then check every acknowledged write.
    println!("== restarting {victim} from its data dir");
    cluster.children[index] = Some(start_server(
        &dir,
        &victim,
        &peers,
        args.regions,
        &args.engine,
    )?);
    let acked = std::mem::take(
        &mut *acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let missing = verify(&client, &acked).await?;

    let mut sorted = histogram.samples.clone();
    sorted.sort_unstable();
    let writes = counters.writes.load(Ordering::Relaxed);
    let reads = counters.reads.load(Ordering::Relaxed);
    println!();
    println!(
        "operations     {} writes, {} reads in {elapsed:.1} s: {:.0} ops/s",
        writes,
        reads,
        (writes + reads) as f64 / elapsed
    );
    println!(
        "latency (ms)   p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        histogram.percentile(&sorted, 50.0),
        histogram.percentile(&sorted, 99.0),
        histogram.percentile(&sorted, 99.9),
        sorted.last().map_or(0.0, |m| f64::from(*m) / 1000.0)
    );
    println!(
        "errors         {} certainly failed, {} with unknown outcome (not counted as acknowledged)",
        counters.failed.load(Ordering::Relaxed),
        counters.unknown.load(Ordering::Relaxed)
    );
    println!(
        "failover       {}",
        failover.map_or("not observed".to_string(), |t| format!(
            "{} ms after the kill",
            t.as_millis()
        ))
    );
    let stale = counters.stale.load(Ordering::Relaxed);
    let ok = missing == 0 && stale == 0;
    println!(
        "check          {} acknowledged writes, {} missing or wrong, {} stale reads: {}",
        acked.len(),
        missing,
        stale,
        if ok { "OK" } else { "FAILED" }
    );
    drop(cluster);
    Ok(ok)
}

async fn wait_for_cluster(
    addresses: &[String],
    options: ClientOptions,
    regions: u32,
) -> Result<KvClient, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match KvClient::connect(addresses.to_vec(), options.clone()).await {
            Ok(client) => {
                let routes = client.routes();
                let led = routes.iter().filter(|r| r.leader.is_some()).count();
                if routes.len() == regions as usize && led == routes.len() {
                    return Ok(client);
                }
                last = format!("{} of {regions} regions have a leader", led);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("the cluster did not come up within 30 s ({last})"))
}

async fn worker(
    id: usize,
    client: KvClient,
    counters: Arc<Counters>,
    acked: Arc<Mutex<BTreeMap<Bytes, Bytes>>>,
    stop: Arc<AtomicBool>,
) -> Vec<u32> {
    let mut samples = Vec::new();
    let mut mine: Vec<(Bytes, Bytes)> = Vec::new();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let started = Instant::now();
        if seq.is_multiple_of(10) && !mine.is_empty() {
            let (key, value) = mine[(seq as usize / 10) % mine.len()].clone();
            match client.get(key, ReadConsistency::Index).await {
                Ok(Some(read)) if read == value => {
                    counters.reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    counters.stale.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let spread = (id as u64)
                .wrapping_mul(0x9e37_79b9)
                .wrapping_add(seq.wrapping_mul(0x85eb_ca6b));
            // The first byte picks the region (static regions split the first byte).
            let mut key = vec![(spread >> 8) as u8];
            key.extend_from_slice(format!("demo/{id}/{seq}").as_bytes());
            let key = Bytes::from(key);
            let value = Bytes::from(format!("value-{id}-{seq}"));
            match client.put(key.clone(), value.clone()).await {
                Ok(()) => {
                    counters.writes.fetch_add(1, Ordering::Relaxed);
                    acked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(key.clone(), value.clone());
                    mine.push((key, value));
                }
                Err(e) if e.indeterminate => {
                    counters.unknown.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        samples.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    samples
}

async fn progress(
    started: Instant,
    duration: Duration,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    const WIDTH: usize = 30;
    while !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        let done = (elapsed.as_secs_f64() / duration.as_secs_f64()).min(1.0);
        let filled = (done * WIDTH as f64) as usize;
        let ops = counters.writes.load(Ordering::Relaxed) + counters.reads.load(Ordering::Relaxed);
        eprint!(
            "\r[{}{}] {:>3.0}% {:>5.1} s  {} ops  {:.0} ops/s  errors {}   ",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            done * 100.0,
            elapsed.as_secs_f64(),
            ops,
            ops as f64 / elapsed.as_secs_f64().max(0.001),
            counters.failed.load(Ordering::Relaxed) + counters.unknown.load(Ordering::Relaxed),
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!();
}

async fn leader_to_kill(client: &KvClient) -> Result<String, String> {
    client.refresh_routes().await.map_err(|e| e.to_string())?;
    let mut led: BTreeMap<String, usize> = BTreeMap::new();
    for route in client.routes() {
        if let Some(leader) = route.leader {
            *led.entry(leader).or_default() += 1;
        }
    }
    led.into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(leader, _)| leader)
        .ok_or_else(|| "no region has a leader to kill".to_string())
}

/// Time from the kill until every region answers a write from a leader other than `victim`.
async fn failover_time(client: &KvClient, victim: &str, killed_at: Instant) -> Option<Duration> {
    let probe = KvClient::connect(
        client
            .routes()
            .iter()
            .flat_map(|r| r.peers.clone())
            .filter(|p| p != victim)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        ClientOptions {
            timeout: Duration::from_millis(500),
            batching: false,
            ..ClientOptions::default()
        },
    )
    .await
    .ok()?;
    let regions = probe.routes();
    let deadline = killed_at + Duration::from_secs(10);
    let mut pending: Vec<_> = regions.iter().map(|r| r.region.start.clone()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for start in pending {
            // start + 0x00 + text: inside the region whatever its end.
            let mut key = start.to_vec();
            key.push(0);
            key.extend_from_slice(b"demo-failover-probe");
            if probe
                .put(Bytes::from(key), Bytes::from_static(b"probe"))
                .await
                .is_err()
            {
                still.push(start);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    pending.is_empty().then(|| killed_at.elapsed())
}

/// Reads back every acknowledged write; returns how many are missing or differ.
async fn verify(client: &KvClient, acked: &BTreeMap<Bytes, Bytes>) -> Result<usize, String> {
    let keys: Vec<Bytes> = acked.keys().cloned().collect();
    let mut missing = 0;
    for chunk in keys.chunks(500) {
        let mut attempt = 0;
        let values = loop {
            attempt += 1;
            match client
                .multi_get(chunk.to_vec(), ReadConsistency::Index)
                .await
            {
                Ok(values) => break values,
                Err(e) if attempt < 20 => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("reading back the acknowledged writes failed: {e}")),
            }
        };
        for (key, value) in chunk.iter().zip(values) {
            if value.as_ref() != acked.get(key) {
                missing += 1;
            }
        }
    }
    Ok(missing)
}
