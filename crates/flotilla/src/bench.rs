//! `flotilla bench`: a load generator for a Flotilla cluster, or for an etcd cluster with the
//! same workload, so the two can be compared side by side (`scripts/bench-vs-etcd.sh`).
//!
//! The concurrency model is the same for both targets: `--clients` tasks share one client
//! (one connection per server), and each task issues one operation at a time, the next as
//! soon as the previous is answered (a closed loop, as etcd's `benchmark` tool and RheaKV's
//! benchmark do). The Flotilla client batches concurrent single-key ops per region by
//! itself (RheaKV's client does too); the etcd client sends each op as its own request.
//!
//! A run: optionally write every key once (`--preload`, default for workloads with reads),
//! warm up (`--warmup`, not measured), then measure for `--duration` seconds or `--ops`
//! operations. Only operations that complete inside the measured window count; latency is
//! from the call to its answer, as the client task sees it. Failed ops are counted in
//! `errors` and left out of the latencies.
//!
//! Scripts depend on `--json`: exactly one object on stdout with `ops_per_sec`, `p50_ms`,
//! `p99_ms`, `p999_ms`, `max_ms` and `errors` (and the run's parameters), or the usual
//! `{"ok":false,...}` failure.

mod etcd;
mod histogram;
mod workload;

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};
use serde_json::json;

use crate::config::{self, FileConfig};
use crate::output::{Failure, EXIT_OK};
use etcd::{Etcd, EtcdConnect};
use histogram::Histogram;
use workload::{Distribution, KeyChooser, Rng, Workload};

/// Most concurrent clients (each is a task; beyond this a single bench process is the
/// bottleneck, run several).
const CLIENTS_MAX: usize = 10_000;
/// Most keys (zipfian precomputes over all of them; preload writes each once).
const KEYS_MAX: u64 = 100_000_000;
/// Largest value: Flotilla's `value_bytes_max`; etcd's default request limit is 1.5 MiB.
const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Concurrent writers of the preload.
const PRELOAD_CLIENTS: usize = 64;
/// The time to live of the keep-alive workload's leases.
const KEEP_ALIVE_TTL_MS: u64 = 60_000;
/// Error messages kept to show (the count is exact; the texts are a sample).
const ERROR_SAMPLES_MAX: usize = 5;
/// Pause of a client after a failed op (a down cluster must not be spun on).
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// `flotilla bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// System under test: flotilla or etcd.
    #[arg(long, default_value = "flotilla")]
    target: String,
    /// Servers of the cluster (HOST:PORT,...): Flotilla stores or etcd client URLs.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// write (writes only), mix (RheaKV's: 90 % writes, 10 % reads) or read (95 % reads,
    /// 5 % writes).
    #[arg(long, default_value = "write")]
    workload: String,
    /// Concurrent clients, each with one op in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    duration: u64,
    /// Stop after this many measured ops instead of after --duration.
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Seconds of load before measuring (connections, caches, leader placement).
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    warmup: u64,
    /// Bytes of each value written (keys are 16 bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    keys: u64,
    /// Key popularity: uniform or zipfian (YCSB's, constant 0.99).
    #[arg(long, default_value = "uniform")]
    distribution: String,
    /// Reads: index (linearizable, ReadIndex) or lease (Flotilla: the leader's lease;
    /// etcd has no lease read and is sent serializable reads, which may be stale).
    #[arg(long, default_value = "index")]
    read: String,
    /// Write every key once before the warm-up [default: on for mix and read].
    #[arg(long, value_name = "BOOL")]
    preload: Option<bool>,
    /// etcd only: leader (send everything to the leader, etcd's best case) or all
    /// (balance over the endpoints; followers forward).
    #[arg(long, default_value = "leader")]
    etcd_connect: String,
    /// Longest one op may take (the client's retries included).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// Seed of the key and op sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The watch workload's watchers (each a watch of every key).
    #[arg(long, value_name = "N", default_value_t = 1)]
    watchers: usize,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Flotilla,
    Etcd,
}

/// The run, checked.
#[derive(Clone, Debug)]
struct Plan {
    target: TargetKind,
    endpoints: Vec<String>,
    workload: Workload,
    clients: usize,
    duration: Duration,
    ops: Option<u64>,
    warmup: Duration,
    value_size: usize,
    keys: u64,
    distribution: Distribution,
    distribution_name: String,
    lease: bool,
    preload: bool,
    etcd_connect: EtcdConnect,
    timeout: Duration,
    seed: u64,
    watchers: usize,
}

/// Most watchers of the watch workload.
const WATCHERS_MAX: usize = 1_000;

fn plan(args: BenchArgs, file: &FileConfig) -> Result<Plan, Failure> {
    let target = match args.target.as_str() {
        "flotilla" => TargetKind::Flotilla,
        "etcd" => TargetKind::Etcd,
        other => {
            return Err(Failure::usage(format!(
                "unknown --target {other:?}: expected flotilla or etcd"
            )))
        }
    };
    let endpoints = config::list(
        args.endpoints
            .or_else(|| file.endpoints.clone())
            .ok_or_else(|| Failure::usage("missing --endpoints HOST:PORT,..."))?,
    );
    if endpoints.is_empty() {
        return Err(Failure::usage("--endpoints is empty"));
    }
    let workload: Workload = args
        .workload
        .parse()
        .map_err(|e| Failure::usage(format!("--workload: {e}")))?;
    let distribution: Distribution = args
        .distribution
        .parse()
        .map_err(|e| Failure::usage(format!("--distribution: {e}")))?;
    let lease = match args.read.as_str() {
        "index" => false,
        "lease" => true,
        other => {
            return Err(Failure::usage(format!(
                "unknown --read {other:?}: expected index or lease"
            )))
        }
    };
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(Failure::usage(format!(
            "--clients {}: must be 1 to {CLIENTS_MAX}",
            args.clients
        )));
    }
    if args.ops.is_none() && args.duration == 0 {
        return Err(Failure::usage("--duration must be at least 1 second"));
    }
    if args.ops == Some(0) {
        return Err(Failure::usage("--ops must be at least 1"));
    }
    if args.keys == 0 || args.keys > KEYS_MAX {
        return Err(Failure::usage(format!(
            "--keys {}: must be 1 to {KEYS_MAX}",
            args.keys
        )));
    }
    if args.value_size > VALUE_BYTES_MAX {
        return Err(Failure::usage(format!(
            "--value-size {}: at most {VALUE_BYTES_MAX} (value_bytes_max)",
            args.value_size
        )));
    }
    if args.timeout_ms == 0 {
        return Err(Failure::usage("--timeout-ms must be at least 1"));
    }
    let etcd_connect: EtcdConnect = args
        .etcd_connect
        .parse()
        .map_err(|e| Failure::usage(format!("--etcd-connect: {e}")))?;
    if args.watchers == 0 || args.watchers > WATCHERS_MAX {
        return Err(Failure::usage(format!(
            "--watchers {}: must be 1 to {WATCHERS_MAX}",
            args.watchers
        )));
    }
    if matches!(
        workload,
        Workload::Lock | Workload::Sequence | Workload::KeepAlive | Workload::Watch
    ) && target == TargetKind::Etcd
    {
        return Err(Failure::usage(format!(
            "--workload {}: Flotilla only (etcd's lock, counters and leases are not compared \
             here)",
            workload.name()
        )));
    }
    Ok(Plan {
        target,
        endpoints,
        workload,
        clients: args.clients,
        duration: Duration::from_secs(args.duration),
        ops: args.ops,
        warmup: Duration::from_secs(args.warmup),
        value_size: args.value_size,
        keys: args.keys,
        distribution,
        distribution_name: args.distribution,
        lease,
        // The keep-alive workload's preload grants its leases: always.
        preload: workload == Workload::KeepAlive
            || args.preload.unwrap_or(workload.read_percent() > 0),
        etcd_connect,
        timeout: Duration::from_millis(args.timeout_ms),
        seed: args.seed,
        watchers: args.watchers,
    })
}

/// A connected client of either system; cloned into every client task.
#[derive(Clone)]
enum Target {
    Flotilla {
        client: KvClient,
        read: ReadConsistency,
    },
    /// Boxed: etcd's client is several times the size of Flotilla's.
    Etcd(Box<Etcd>),
}

impl Target {
    async fn put(&mut self, key: Vec<u8>, value: &Bytes) -> Result<(), String> {
        match self {
            Target::Flotilla { client, .. } => client
                .put(Bytes::from(key), value.clone())
                .await
                .map_err(|e| e.to_string()),
            Target::Etcd(etcd) => etcd.put(key, value.to_vec()).await,
        }
    }

    /// One lock cycle on the lock named `key` by `owner`: acquire (waiting while another
    /// holds it), release.
    async fn lock_cycle(&mut self, key: Vec<u8>, owner: &Bytes) -> Result<(), String> {
        let Target::Flotilla { client, .. } = self else {
            return Err("the lock workload is Flotilla's only".into());
        };
        let name = Bytes::from(key);
        let state = client
            .lock_acquire(name.clone(), owner.clone(), 30_000, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        if !state.acquired {
            return Err(format!(
                "lock not acquired within 10 s (held by {:?})",
                state.owner
            ));
        }
        client
            .lock(
                name,
                flotilla_kv::lock::LockOp::Release {
                    owner: owner.clone(),
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Grants a lease of [`KEEP_ALIVE_TTL_MS`]: its id.
    async fn lease_grant(&mut self) -> Result<u64, String> {
        let Target::Flotilla { client, .. } = self else {
            return Err("the keep-alive workload is Flotilla's only".into());
        };
        client
            .lease_grant(KEEP_ALIVE_TTL_MS)
            .await
            .map(|(id, _)| id)
            .map_err(|e| e.to_string())
    }

    /// One keep-alive of lease `id`.
    async fn keep_alive(&mut self, id: u64) -> Result<(), String> {
        let Target::Flotilla { client, .. } = self else {
            return Err("the keep-alive workload is Flotilla's only".into());
        };
        if id == 0 {
            return Err("a lease the preload could not grant".into());
        }
        client
            .lease(id, flotilla_kv::lease::LeaseOp::KeepAlive)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// One `seq next` of one value on the sequence named `key`.
    async fn sequence_next(&mut self, key: Vec<u8>) -> Result<(), String> {
        let Target::Flotilla { client, .. } = self else {
            return Err("the sequence workload is Flotilla's only".into());
        };
        client
            .sequence_next(Bytes::from(key), 1)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn get(&mut self, key: Vec<u8>) -> Result<bool, String> {
        match self {
            Target::Flotilla { client, read } => client
                .get(Bytes::from(key), *read)
                .await
                .map(|value| value.is_some())
                .map_err(|e| e.to_string()),
            Target::Etcd(etcd) => etcd.get(key).await,
        }
    }
}

/// How long `connect` keeps trying while a freshly started cluster elects its leaders.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Connects, waiting (up to [`CONNECT_WAIT`]) until every Flotilla region has a leader or
/// etcd names one. Answers the target and a line describing what it reached.
async fn connect(plan: &Plan) -> Result<(Target, String), Failure> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut last;
    loop {
        match plan.target {
            TargetKind::Flotilla => {
                let options = ClientOptions {
                    timeout: plan.timeout,
                    ..ClientOptions::default()
                };
                match KvClient::connect(plan.endpoints.clone(), options).await {
                    Ok(client) => {
                        let routes = client.routes();
                        let led = routes.iter().filter(|r| r.leader.is_some()).count();
                        if !routes.is_empty() && led == routes.len() {
                            let read = if plan.lease {
                                ReadConsistency::Lease
                            } else {
                                ReadConsistency::Index
                            };
                            let reached = format!(
                                "{} region{} on {}",
                                routes.len(),
                                if routes.len() == 1 { "" } else { "s" },
                                plan.endpoints.join(",")
                            );
                            return Ok((Target::Flotilla { client, read }, reached));
                        }
                        last = format!("{led} of {} regions have a leader", routes.len());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            TargetKind::Etcd => {
                match Etcd::connect(&plan.endpoints, plan.etcd_connect, plan.lease, plan.timeout)
                    .await
                {
                    Ok((etcd, urls)) => {
                        return Ok((
                            Target::Etcd(Box::new(etcd)),
                            format!("etcd at {}", urls.join(",")),
                        ))
                    }
                    Err(e) if cfg!(not(feature = "etcd")) => {
                        return Err(Failure::failed("Unsupported", e))
                    }
                    Err(e) => last = e,
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::failed(
                "Unavailable",
                format!(
                    "the cluster at {} was not ready within {} s: {last}",
                    plan.endpoints.join(","),
                    CONNECT_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// State shared by the client tasks and the controller.
#[derive(Default)]
struct Shared {
    /// The keep-alive workload's leases, by key index (0: not granted).
    lease_ids: Vec<AtomicU64>,
    /// Set once the warm-up is over; cleared when the window closes.
    measuring: AtomicBool,
    stop: AtomicBool,
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    /// Ops completed outside the measured window (preload, warm-up).
    unmeasured: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

impl Shared {
    fn measured(&self) -> u64 {
        self.reads.load(Ordering::Relaxed) + self.writes.load(Ordering::Relaxed)
    }

    fn note_error(&self, error: String) {
        let mut samples = self
            .error_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() < ERROR_SAMPLES_MAX && !samples.contains(&error) {
            samples.push(error);
        }
    }
}

/// What one client task measured.
#[derive(Default)]
struct Measured {
    reads: Histogram,
    writes: Histogram,
}

async fn client_task(
    id: usize,
    mut target: Target,
    plan: Arc<Plan>,
    chooser: Arc<KeyChooser>,
    value: Bytes,
    shared: Arc<Shared>,
) -> Measured {
    let mut rng = Rng::new(plan.seed ^ workload::mix64(id as u64 + 1));
    let mut measured = Measured::default();
    let read_percent = plan.workload.read_percent();
    let owner = Bytes::from(format!("bench-{id}"));
    while !shared.stop.load(Ordering::Relaxed) {
        let is_read = read_percent > 0 && rng.below(100) < read_percent;
        let index = chooser.next(&mut rng);
        let key = workload::key(index);
        let started = Instant::now();
        let result = match plan.workload {
            Workload::Lock => target.lock_cycle(key, &owner).await,
            Workload::Sequence => target.sequence_next(key).await,
            Workload::KeepAlive => {
                let id = shared
                    .lease_ids
                    .get(usize::try_from(index).unwrap_or(usize::MAX))
                    .map_or(0, |id| id.load(Ordering::Relaxed));
                target.keep_alive(id).await
            }
            Workload::Watch => target.put(key, &stamped(&value)).await,
            _ if is_read => target.get(key).await.map(|_| ()),
            _ => target.put(key, &value).await,
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let measuring = shared.measuring.load(Ordering::Relaxed);
        match result {
            Ok(()) if measuring => {
                if is_read {
                    measured.reads.record(micros);
                    shared.reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    measured.writes.record(micros);
                    shared.writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(()) => {
                shared.unmeasured.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                if measuring {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                shared.note_error(error);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    measured
}

/// This machine's wall clock in ns since the Unix epoch (the watch workload's stamps: the
/// writers and watchers share the machine).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `value` with its first 8 bytes replaced by the time of the call (the watch workload).
fn stamped(value: &Bytes) -> Bytes {
    let mut stamped = value.to_vec();
    stamped.resize(stamped.len().max(8), b'a');
    stamped[..8].copy_from_slice(&now_ns().to_be_bytes());
    Bytes::from(stamped)
}

/// What the watchers of the watch workload measured.
struct Watched {
    /// Events delivered in the measured window.
    events: u64,
    /// Their delivery: from the put's call to the event's arrival (µs).
    delivery: Histogram,
}

/// One watcher of every key: counts and times the events delivered while measuring.
async fn watcher_task(mut watcher: flotilla_kv::client::Watcher, shared: Arc<Shared>) -> Watched {
    let mut watched = Watched {
        events: 0,
        delivery: Histogram::default(),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), watcher.next()).await;
        let event = match next {
            Err(_) => continue,
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => {
                shared.note_error(format!("watch: {e}"));
                break;
            }
            Ok(None) => break,
        };
        if !shared.measuring.load(Ordering::Relaxed) || event.value.len() < 8 {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&event.value[..8]);
        let sent = u64::from_be_bytes(stamp);
        watched.events += 1;
        watched
            .delivery
            .record(now_ns().saturating_sub(sent) / 1_000);
    }
    watched
}

/// Starts the watch workload's watchers (each placed before it returns).
async fn start_watchers(
    target: &Target,
    plan: &Plan,
    shared: &Arc<Shared>,
) -> Result<Vec<tokio::task::JoinHandle<Watched>>, Failure> {
    let Target::Flotilla { client, .. } = target else {
        return Ok(Vec::new());
    };
    if plan.workload != Workload::Watch {
        return Ok(Vec::new());
    }
    let mut tasks = Vec::with_capacity(plan.watchers);
    for _ in 0..plan.watchers {
        let watcher = client.watch(Bytes::new(), None).await?;
        tasks.push(tokio::spawn(watcher_task(watcher, shared.clone())));
    }
    Ok(tasks)
}

/// Writes every key once with [`PRELOAD_CLIENTS`] writers; answers the failures.
async fn preload(target: &Target, plan: &Plan, value: &Bytes, shared: &Arc<Shared>) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress_bar(
        "preload".into(),
        shared.clone(),
        Progress::Count {
            done: next.clone(),
            total: plan.keys,
        },
    ));
    let writers: Vec<_> = (0..PRELOAD_CLIENTS.min(plan.keys as usize))
        .map(|_| {
            let mut target = target.clone();
            let (next, failures, value, shared) = (
                next.clone(),
                failures.clone(),
                value.clone(),
                shared.clone(),
            );
            let keys = plan.keys;
            let lease_ids = plan.workload == Workload::KeepAlive;
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= keys {
                        break;
                    }
                    let mut attempts = 0;
                    loop {
                        let done = if lease_ids {
                            target.lease_grant().await.map(|id| {
                                if let Some(slot) = shared.lease_ids.get(index as usize) {
                                    slot.store(id, Ordering::Relaxed);
                                }
                            })
                        } else {
                            target.put(workload::key(index), &value).await
                        };
                        let Err(error) = done else {
                            break;
                        };
                        attempts += 1;
                        shared.note_error(error);
                        if attempts == 3 {
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.await;
    }
    next.store(plan.keys, Ordering::Relaxed);
    progress.abort();
    let _ = progress.await;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    failures.load(Ordering::Relaxed)
}

enum Progress {
    /// Of a fixed count.
    Count { done: Arc<AtomicU64>, total: u64 },
    /// Of a window of time (or of ops, when `ops` is set).
    Window {
        started: Instant,
        duration: Duration,
        ops: Option<u64>,
    },
}

/// Redraws a progress line on stderr every 250 ms (only on a terminal).
async fn progress_bar(phase: String, shared: Arc<Shared>, progress: Progress) {
    const WIDTH: usize = 30;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let begun = Instant::now();
    loop {
        let (done, detail) = match &progress {
            Progress::Count { done, total } => {
                let done = done.load(Ordering::Relaxed).min(*total);
                (
                    done as f64 / (*total).max(1) as f64,
                    format!("{done}/{total} keys"),
                )
            }
            Progress::Window {
                started,
                duration,
                ops,
            } => {
                let measured = shared.measured();
                let elapsed = started.elapsed().as_secs_f64().max(0.001);
                let fraction = match ops {
                    Some(ops) => measured as f64 / *ops as f64,
                    None => elapsed / duration.as_secs_f64(),
                };
                (
                    fraction,
                    format!(
                        "{measured} ops  {:.0} ops/s  errors {}",
                        measured as f64 / elapsed,
                        shared.errors.load(Ordering::Relaxed)
                    ),
                )
            }
        };
        let done = done.clamp(0.0, 1.0);
        let filled = (done * WIDTH as f64) as usize;
        eprint!(
            "\r{phase:<8}[{}{}] {:>3.0}% {:>5.1} s  {detail}   ",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            done * 100.0,
            begun.elapsed().as_secs_f64(),
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The outcome of a run.
struct Report {
    reached: String,
    elapsed: Duration,
    reads: Histogram,
    writes: Histogram,
    all: Histogram,
    errors: u64,
    preload_failures: u64,
    error_samples: Vec<String>,
    /// The watch workload's watchers.
    watched: Option<Watched>,
}

async fn execute(plan: Plan) -> Result<Report, Failure> {
    let (target, reached) = connect(&plan).await?;
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared {
        lease_ids: if plan.workload == Workload::KeepAlive {
            (0..plan.keys).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        },
        ..Shared::default()
    });
    let value = Bytes::from(
        (0..plan.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let preload_failures = if plan.preload {
        preload(&target, &plan, &value, &shared).await
    } else {
        0
    };
    let chooser = Arc::new(KeyChooser::new(plan.distribution, plan.keys));
    let watchers = start_watchers(&target, &plan, &shared).await?;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|id| {
            tokio::spawn(client_task(
                id,
                target.clone(),
                plan.clone(),
                chooser.clone(),
                value.clone(),
                shared.clone(),
            ))
        })
        .collect();
    if !plan.warmup.is_zero() {
        let warmup = tokio::spawn(progress_bar(
            "warm-up".into(),
            shared.clone(),
            Progress::Window {
                started: Instant::now(),
                duration: plan.warmup,
                ops: None,
            },
        ));
        tokio::time::sleep(plan.warmup).await;
        warmup.abort();
    }
    shared.errors.store(0, Ordering::Relaxed);
    let started = Instant::now();
    shared.measuring.store(true, Ordering::SeqCst);
    let bar = tokio::spawn(progress_bar(
        "measure".into(),
        shared.clone(),
        Progress::Window {
            started,
            duration: plan.duration,
            ops: plan.ops,
        },
    ));
    match plan.ops {
        Some(ops) => {
            // Bounded by the op timeout per client too: a dead cluster ends the run.
            let give_up = started + plan.timeout.max(Duration::from_secs(1)) * 12 + plan.duration;
            while shared.measured() < ops && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        None => tokio::time::sleep(plan.duration).await,
    }
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    bar.abort();
    let _ = bar.await;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let mut reads = Histogram::default();
    let mut writes = Histogram::default();
    for task in tasks {
        if let Ok(measured) = task.await {
            reads.merge(&measured.reads);
            writes.merge(&measured.writes);
        }
    }
    let mut all = reads.clone();
    all.merge(&writes);
    let mut watched = Watched {
        events: 0,
        delivery: Histogram::default(),
    };
    for watcher in watchers {
        if let Ok(measured) = watcher.await {
            watched.events += measured.events;
            watched.delivery.merge(&measured.delivery);
        }
    }
    let error_samples = std::mem::take(
        &mut *shared
            .error_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Report {
        reached,
        elapsed,
        reads,
        writes,
        all,
        errors: shared.errors.load(Ordering::Relaxed),
        preload_failures,
        error_samples,
        watched: (plan.workload == Workload::Watch).then_some(watched),
    })
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn read_mode_name(plan: &Plan) -> &'static str {
    match (plan.target, plan.lease) {
        (_, false) => "index",
        (TargetKind::Flotilla, true) => "lease",
        (TargetKind::Etcd, true) => "serializable",
    }
}

fn to_json(plan: &Plan, report: &Report) -> serde_json::Value {
    let seconds = report.elapsed.as_secs_f64();
    let ops = report.all.count();
    let mut value = json!({
        "ok": true,
        "target": match plan.target { TargetKind::Flotilla => "flotilla", TargetKind::Etcd => "etcd" },
        "workload": plan.workload.name(),
        "read": read_mode_name(plan),
        "distribution": plan.distribution_name,
        "clients": plan.clients,
        "keys": plan.keys,
        "value_size": plan.value_size,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "ops": ops,
        "reads": report.reads.count(),
        "writes": report.writes.count(),
        "ops_per_sec": (ops as f64 / seconds.max(1e-9)).round(),
        "p50_ms": ms(report.all.percentile(50.0)),
        "p99_ms": ms(report.all.percentile(99.0)),
        "p999_ms": ms(report.all.percentile(99.9)),
        "max_ms": ms(report.all.max()),
        "write_p99_ms": ms(report.writes.percentile(99.0)),
        "read_p99_ms": ms(report.reads.percentile(99.0)),
        "errors": report.errors,
        "preload_failures": report.preload_failures,
    });
    if let (Some(watched), Some(object)) = (&report.watched, value.as_object_mut()) {
        let per_sec = watched.events as f64 / seconds.max(1e-9);
        object.insert("watchers".into(), json!(plan.watchers));
        object.insert("events".into(), json!(watched.events));
        object.insert("events_per_sec".into(), json!(per_sec.round()));
        object.insert(
            "events_per_sec_per_watcher".into(),
            json!((per_sec / plan.watchers as f64).round()),
        );
        object.insert(
            "delivery_p50_ms".into(),
            json!(ms(watched.delivery.percentile(50.0))),
        );
        object.insert(
            "delivery_p99_ms".into(),
            json!(ms(watched.delivery.percentile(99.0))),
        );
    }
    value
}

fn print_human(plan: &Plan, report: &Report) {
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    let line = |name: &str, h: &Histogram| {
        println!(
            "{name:<13}{:>9} ops {:>10.0} ops/s   p50 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3} ms",
            h.count(),
            h.count() as f64 / seconds,
            ms(h.percentile(50.0)),
            ms(h.percentile(99.0)),
            ms(h.percentile(99.9)),
            ms(h.max()),
        );
    };
    println!(
        "{}: workload {} ({}% reads, read {}), {} clients, {} keys {}, 16-byte keys, {}-byte values, {:.1} s measured",
        report.reached,
        plan.workload.name(),
        plan.workload.read_percent(),
        read_mode_name(plan),
        plan.clients,
        plan.keys,
        plan.distribution_name,
        plan.value_size,
        seconds
    );
    line("all", &report.all);
    if report.writes.count() > 0 && report.reads.count() > 0 {
        line("  writes", &report.writes);
        line("  reads", &report.reads);
    }
    if let Some(watched) = &report.watched {
        println!(
            "watch        {} watchers, {} events {:>10.0} events/s ({:.0} per watcher)   delivery p50 {:>8.3}  p99 {:>8.3}  max {:>8.3} ms",
            plan.watchers,
            watched.events,
            watched.events as f64 / seconds,
            watched.events as f64 / seconds / plan.watchers as f64,
            ms(watched.delivery.percentile(50.0)),
            ms(watched.delivery.percentile(99.0)),
            ms(watched.delivery.max()),
        );
    }
    println!(
        "errors       {}{}",
        report.errors,
        if report.preload_failures > 0 {
            format!(" (and {} keys not preloaded)", report.preload_failures)
        } else {
            String::new()
        }
    );
}

/// Runs the benchmark; returns the exit code.
pub fn run(args: BenchArgs, file: &FileConfig) -> i32 {
    let json = args.json || file.json.unwrap_or(false);
    let plan = match plan(args, file) {
        Ok(plan) => plan,
        Err(failure) => return failure.report("bench", json),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return Failure::failed("Internal", format!("cannot start the runtime: {e}"))
                .report("bench", json)
        }
    };
    let report = match runtime.block_on(execute(plan.clone())) {
        Ok(report) => report,
        Err(failure) => return failure.report("bench", json),
    };
    // The client tasks' connections may still be closing: do not wait for them.
    runtime.shutdown_background();
    for sample in &report.error_samples {
        eprintln!("flotilla bench: an op failed: {sample}");
    }
    if report.all.count() == 0 {
        let first = report
            .error_samples
            .first()
            .map_or(String::new(), |e| format!(" (first error: {e})"));
        return Failure::failed(
            "NoOps",
            format!("no operation succeeded in the measured window{first}"),
        )
        .report("bench", json);
    }
    if json {
        println!("{}", to_json(&plan, &report));
    } else {
        print_human(&plan, &report);
    }
    EXIT_OK
}
