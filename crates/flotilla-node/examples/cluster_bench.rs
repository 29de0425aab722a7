//! The 3-process benchmark of the node runtime: commits per second,
//! commit latency and entries per fsync for 1 and 100 groups on a loopback cluster with
//! fsync on.
//!
//! ```text
//! cargo run --release -p flotilla-node --example cluster_bench -- \
//!     [--groups 1,100] [--duration 10] [--clients 16] [--payload 32] [--data-dir DIR] [--json]
//! ```
//!
//! For each group count, a fresh cluster: the benchmark re-executes itself three times as
//! servers (`cluster_bench __server`), each a `NodeManager` with the default options (the
//! durable shared log, one write and one fsync per round, 100 ms ticks, 1 s election
//! timeout) and the gRPC transport and CLI service on an ephemeral loopback port. It
//! bootstraps the groups on all three, waits for every group to have a leader, spreads the
//! leaders evenly (`CliClient::rebalance`), then asks each server to load the groups it
//! leads: `--clients` proposals in flight per group, each `--payload` bytes, for
//! `--duration` seconds, progress printed every second.
//!
//! Where the load comes from: inside the leaders' processes, calling `Node::apply`. The
//! library has no client RPC of its own yet (the KV store brings one), so a fourth process
//! would measure this benchmark's own line protocol, and on a 2-vCPU machine it would take
//! CPU from the three servers. What is measured is the runtime: request queue, round,
//! replication over gRPC, the fsyncs on every process, apply. Latency is from the call of
//! `Node::apply` to its answer (the entry committed and applied on the leader).
//!
//! Entries per fsync and fsyncs/s come from the servers' `NodeManager::stats()` (shared-log
//! writes, each one write + one fsync, and term/vote saves, each fsynced), summed over the
//! three processes and taken over the load window.
//!
//! Everything started is stopped: the servers are SIGKILLed and the temporary directory
//! removed when the benchmark ends or panics; on Ctrl-C (which reaches only this process:
//! the servers run in their own process groups) or any other death of the benchmark, each
//! server sees its stdin close, stops, and removes its data directory (the last one the
//! then empty root).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_node::grpc::{CliClient, GrpcOptions, GrpcServer, GrpcTransport};
use flotilla_node::{
    ApplyIter, GroupId, ManagerOptions, Node, NodeError, NodeManager, PeerId, RaftError,
    StateMachine,
};
use flotilla_storage::{SnapshotReader, SnapshotWriter};
use tokio::net::TcpListener;

/// The child-process protocol, shared with the cross-process tests.
#[path = "../tests/it/child.rs"]
mod child;
use child::{field, ChildProcess};

const USAGE: &str = "\
usage: cluster_bench [--groups 1,100] [--duration SECONDS] [--clients N] [--payload BYTES]
                     [--data-dir DIR] [--json]
  --groups    group counts to run, one fresh 3-process cluster each (default 1,100)
  --duration  seconds of load per run (default 10)
  --clients   proposals in flight per group (default 16)
  --payload   bytes per entry, 8 to 4096 (default 32)
  --data-dir  where the servers' temporary data directories go (default: the system temp
              dir); use a directory on the disk you want to measure
  --json      print the results as JSON on stdout (progress goes to stderr)";

/// The argument that makes the process a server.
const SERVER_ARG: &str = "__server";
/// A server's data directory (set by the benchmark).
const SERVER_DIR_ENV: &str = "FLOTILLA_BENCH_DIR";
/// First word of the line a server prints once it serves.
const READY: &str = "cluster-bench-ready";
/// Longest request line a server reads.
const REQUEST_LINE_MAX: u64 = 64 * 1024;
/// Longest answer line the benchmark reads (a latency histogram).
const ANSWER_LINE_MAX: u64 = 1024 * 1024;
/// Limit on each wait for the cluster (start, elections, answers).
const WAIT: Duration = Duration::from_secs(60);
/// Proposals in flight per group: at most the request queue (1024 by default).
const CLIENTS_MAX: u64 = 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(SERVER_ARG) {
        run_server()
    } else {
        parse_args(&args).and_then(run_benchmark)
    };
    if let Err(why) = result {
        eprintln!("cluster_bench: {why}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets (32 per power of two, under 3.2 % error), fixed
// size, lock-free.
// ---------------------------------------------------------------------------------------

const SUB_BUCKETS_LOG2: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKETS_LOG2;
/// Enough for every u64 microsecond count.
const BUCKETS: usize = (64 - SUB_BUCKETS_LOG2 as usize + 1) * SUB_BUCKETS as usize;

fn bucket_of(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    let shift = exponent - SUB_BUCKETS_LOG2;
    let index = u64::from(shift + 1) * SUB_BUCKETS + ((micros >> shift) - SUB_BUCKETS);
    index as usize
}

/// The smallest value of bucket `index`, and its width.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, 1);
    }
    let shift = index / SUB_BUCKETS - 1;
    ((SUB_BUCKETS + index % SUB_BUCKETS) << shift, 1 << shift)
}

struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// `index:count` of the non-empty buckets.
    fn encode(&self) -> String {
        let parts: Vec<String> = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let count = b.load(Ordering::Relaxed);
                (count > 0).then(|| format!("{i}:{count}"))
            })
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }
}

/// Bucket counts merged from the servers' histograms.
#[derive(Default)]
struct Merged(BTreeMap<usize, u64>);

impl Merged {
    fn add(&mut self, encoded: &str) -> Result<(), String> {
        if encoded == "-" {
            return Ok(());
        }
        for part in encoded.split(',') {
            let (index, count) = part
                .split_once(':')
                .ok_or_else(|| format!("histogram part {part:?} is not index:count"))?;
            let index: usize = number("bucket", index)?;
            if index >= BUCKETS {
                return Err(format!("histogram bucket {index} out of range"));
            }
            *self.0.entry(index).or_insert(0) += number::<u64>("count", count)?;
        }
        Ok(())
    }

    /// The `q` quantile in milliseconds (middle of its bucket).
    fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.0.values().sum();
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&index, &count) in &self.0 {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                return (low as f64 + width as f64 / 2.0) / 1000.0;
            }
        }
        0.0
    }
}

fn number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("{what}: {text:?} is not a number ({e})"))
}

// ---------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------

/// Counts applied entries and their bytes (what a state machine costs at least).
struct Tally {
    entries: u64,
    bytes: u64,
}

impl StateMachine for Tally {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        for task in iter {
            self.entries += 1;
            self.bytes += task.data.len() as u64;
            if let Some(completion) = task.completion {
                completion.complete(Ok(Bytes::new()));
            }
        }
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        let mut state = self.entries.to_le_bytes().to_vec();
        state.extend_from_slice(&self.bytes.to_le_bytes());
        writer.append("tally", &state).map_err(|e| e.to_string())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let state = reader
            .read_chunk("tally", 0, 16)
            .map_err(|e| e.to_string())?;
        let (entries, bytes) = state.split_at_checked(8).ok_or("short tally file")?;
        self.entries = u64::from_le_bytes(entries.try_into().map_err(|_| "short tally")?);
        self.bytes = u64::from_le_bytes(bytes.try_into().map_err(|_| "short tally")?);
        Ok(())
    }
}

struct ServerState {
    manager: Arc<NodeManager>,
    /// Proposals acknowledged by the current load (progress).
    commits: AtomicU64,
}

fn run_server() -> Result<(), String> {
    let dir = std::env::var_os(SERVER_DIR_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| format!("server: {SERVER_DIR_ENV} is not set"))?;
    // The watchdog: stdin closes when the benchmark exits, however it died.
    let closed_rx = child::watch_stdin();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("server: tokio runtime: {e}"))?;
    runtime.block_on(serve(&dir, closed_rx))?;
    std::process::exit(0);
}

async fn serve(dir: &Path, closed: tokio::sync::oneshot::Receiver<()>) -> Result<(), String> {
    let raft = GrpcServer::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("server: cannot bind a raft port: {e}"))?;
    let control = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("server: cannot bind a control port: {e}"))?;
    let control_addr = control.local_addr().map_err(|e| e.to_string())?;
    let options = ManagerOptions::new(raft.address().clone(), dir);
    let transport = GrpcTransport::new(GrpcOptions::default());
    let manager = Arc::new(
        NodeManager::open(options, Arc::new(transport))
            .await
            .map_err(|e| format!("server: cannot open {}: {e}", dir.display()))?,
    );
    let server = raft.serve_with_cli(Arc::new(manager.inbox()), manager.clone());
    println!("{READY} raft={} control={control_addr}", manager.id());
    let state = Arc::new(ServerState {
        manager: manager.clone(),
        commits: AtomicU64::new(0),
    });
    tokio::select! {
        failed = accept(control, state) => return failed,
        _ = closed => {}
    }
    // Stop writing before removing the directory.
    let _ = tokio::time::timeout(Duration::from_secs(5), manager.shutdown()).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    if let Some(root) = dir.parent() {
        let _ = std::fs::remove_dir(root);
    }
    Ok(())
}

async fn accept(control: TcpListener, state: Arc<ServerState>) -> Result<(), String> {
    child::serve_lines(control, state, REQUEST_LINE_MAX, |line, state| async move {
        answer(&line, &state).await
    })
    .await
    .map_err(|why| format!("server: {why}"))
}

/// The control protocol:
///
/// ```text
/// start FIRST COUNT PEERS             -> ok
/// leaders                             -> ok led=N known=N
/// stats                               -> ok commits=.. log_writes=.. entries_written=.. meta_saves=..
/// load DURATION_MS CLIENTS PAYLOAD    -> ok commits=.. busy=.. not_leader=.. unknown=.. failed=.. hist=..
/// ```
async fn answer(request: &str, state: &Arc<ServerState>) -> Result<String, String> {
    let words: Vec<&str> = request.split_whitespace().collect();
    let nodes = || -> Vec<Node> {
        let mut nodes = Vec::new();
        let mut group = 1;
        while let Some(node) = state.manager.node(group) {
            nodes.push(node);
            group += 1;
        }
        nodes
    };
    match words.as_slice() {
        ["start", first, count, peers] => {
            let (first, count): (GroupId, u64) = (number("first", first)?, number("count", count)?);
            let peers: Vec<PeerId> = peers.split(',').map(PeerId::new).collect();
            for group in first..first + count {
                let tally = Tally {
                    entries: 0,
                    bytes: 0,
                };
                state
                    .manager
                    .add_group(group, peers.clone(), tally)
                    .await
                    .map_err(|e| format!("cannot start group {group}: {e}"))?;
            }
            Ok("ok".into())
        }
        ["leaders"] => {
            let nodes = nodes();
            let led = nodes.iter().filter(|n| n.is_leader()).count();
            let known = nodes.iter().filter(|n| n.leader_id().is_some()).count();
            Ok(format!("ok led={led} known={known}"))
        }
        ["stats"] => {
            let s = state.manager.stats();
            Ok(format!(
                "ok commits={} log_writes={} entries_written={} meta_saves={} rounds={}",
                state.commits.load(Ordering::Relaxed),
                s.log_writes,
                s.entries_written,
                s.meta_saves,
                s.rounds
            ))
        }
        ["load", duration_ms, clients, payload] => {
            let duration = Duration::from_millis(number("duration", duration_ms)?);
            let clients: u64 = number("clients", clients)?;
            let payload: usize = number("payload", payload)?;
            Ok(load(state, nodes(), duration, clients, payload).await)
        }
        _ => Err(format!("unknown request {request:?}")),
    }
}

#[derive(Default)]
struct Outcomes {
    commits: AtomicU64,
    busy: AtomicU64,
    not_leader: AtomicU64,
    unknown: AtomicU64,
    failed: AtomicU64,
}

/// `clients` proposers per group for `duration`; each proposes while its node leads.
async fn load(
    state: &Arc<ServerState>,
    nodes: Vec<Node>,
    duration: Duration,
    clients: u64,
    payload: usize,
) -> String {
    state.commits.store(0, Ordering::Relaxed);
    let histogram = Arc::new(Histogram::new());
    let outcomes = Arc::new(Outcomes::default());
    let deadline = tokio::time::Instant::now() + duration;
    let data = Bytes::from(vec![0x5a; payload]);
    let mut workers = tokio::task::JoinSet::new();
    for node in nodes {
        for _ in 0..clients {
            let (node, data, state) = (node.clone(), data.clone(), state.clone());
            let (histogram, outcomes) = (histogram.clone(), outcomes.clone());
            workers.spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    // Followers' workers wait for a leadership change (rare: the leaders
                    // were spread before the load) without waking often: thousands of
                    // them polling every few ms cost the servers measurable CPU.
                    if !node.is_leader() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    let started = Instant::now();
                    let result = node.apply(data.clone(), None).await;
                    match result {
                        Ok(_) => {
                            histogram.record(started.elapsed());
                            outcomes.commits.fetch_add(1, Ordering::Relaxed);
                            state.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => count_failure(&outcomes, &e).await,
                    }
                }
            });
        }
    }
    while workers.join_next().await.is_some() {}
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "ok commits={} busy={} not_leader={} unknown={} failed={} hist={}",
        get(&outcomes.commits),
        get(&outcomes.busy),
        get(&outcomes.not_leader),
        get(&outcomes.unknown),
        get(&outcomes.failed),
        histogram.encode()
    )
}

async fn count_failure(outcomes: &Outcomes, error: &NodeError) {
    let counter = match error {
        e if e.is_busy() => &outcomes.busy,
        NodeError::Raft(RaftError::NotLeader { .. }) => &outcomes.not_leader,
        NodeError::Unknown(_) => &outcomes.unknown,
        _ => &outcomes.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // Give the queue (or the election) a moment.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// ---------------------------------------------------------------------------------------
// The benchmark: arguments, servers, runs, report.
// ---------------------------------------------------------------------------------------

struct Args {
    groups: Vec<u64>,
    duration: Duration,
    clients: u64,
    payload: usize,
    data_dir: PathBuf,
    json: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        groups: vec![1, 100],
        duration: Duration::from_secs(10),
        clients: 16,
        payload: 32,
        data_dir: std::env::temp_dir(),
        json: false,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--groups" => {
                parsed.groups = value()?
                    .split(',')
                    .map(|g| number("--groups", g.trim()))
                    .collect::<Result<_, _>>()?;
            }
            "--duration" => {
                let seconds: f64 = number("--duration", value()?)?;
                if !(seconds > 0.0 && seconds <= 3600.0) {
                    return Err(format!(
                        "--duration {seconds}: expected 0 < seconds <= 3600"
                    ));
                }
                parsed.duration = Duration::from_secs_f64(seconds);
            }
            "--clients" => parsed.clients = number("--clients", value()?)?,
            "--payload" => parsed.payload = number("--payload", value()?)?,
            "--data-dir" => parsed.data_dir = PathBuf::from(value()?),
            "--json" => parsed.json = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if parsed.groups.is_empty() || parsed.groups.iter().any(|&g| g == 0 || g > 10_000) {
        return Err(format!(
            "--groups {:?}: each between 1 and 10000",
            parsed.groups
        ));
    }
    if parsed.clients == 0 || parsed.clients > CLIENTS_MAX {
        return Err(format!(
            "--clients {}: between 1 and {CLIENTS_MAX}",
            parsed.clients
        ));
    }
    if !(8..=4096).contains(&parsed.payload) {
        return Err(format!(
            "--payload {}: between 8 and 4096 bytes",
            parsed.payload
        ));
    }
    Ok(parsed)
}

/// A running server. Dropping it SIGKILLs it.
struct ServerProcess {
    _process: ChildProcess,
    raft: PeerId,
    control: SocketAddr,
}

/// Three servers and their temporary root; fields drop in order, servers first.
struct Servers {
    servers: Vec<ServerProcess>,
    root: PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Servers {
    async fn start(data_dir: &Path, groups: u64) -> Result<Servers, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let root = data_dir.join(format!(
            "cluster-bench-{groups}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let mut servers = Servers {
            servers: Vec::new(),
            root,
        };
        for i in 0..3 {
            let dir = servers.root.join(format!("server{i}"));
            servers.servers.push(spawn_server(&dir).await?);
        }
        Ok(servers)
    }

    fn peers(&self) -> Vec<PeerId> {
        self.servers.iter().map(|s| s.raft.clone()).collect()
    }
}

async fn spawn_server(dir: &Path) -> Result<ServerProcess, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    // Ctrl-C reaches only the benchmark; servers stop when their stdin closes.
    command.arg(SERVER_ARG).env(SERVER_DIR_ENV, dir);
    let (process, ready) = child::spawn(command, READY, WAIT)
        .await
        .map_err(|why| format!("server in {}: {why}", dir.display()))?;
    Ok(ServerProcess {
        _process: process,
        raft: PeerId::new(field(&ready, "raft")?),
        control: number("control address", field(&ready, "control")?)?,
    })
}

/// One request over a fresh connection; the `ok` payload or why not.
async fn ask(control: SocketAddr, request: &str, wait: Duration) -> Result<String, String> {
    let line = child::ask(control, request, ANSWER_LINE_MAX, wait)
        .await
        .map_err(|e| format!("{request:?} to {control}: {e}"))?;
    match line.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_string()),
        None => Err(format!("{request:?} to {control} answered {line:?}")),
    }
}

fn stat(line: &str, key: &str) -> Result<u64, String> {
    number(key, field(line, key)?)
}

/// The servers' counters, summed.
#[derive(Clone, Copy, Default)]
struct Counters {
    commits: u64,
    log_writes: u64,
    entries_written: u64,
    meta_saves: u64,
}

async fn counters(servers: &Servers) -> Result<Counters, String> {
    let mut sum = Counters::default();
    for server in &servers.servers {
        let line = ask(server.control, "stats", WAIT).await?;
        sum.commits += stat(&line, "commits")?;
        sum.log_writes += stat(&line, "log_writes")?;
        sum.entries_written += stat(&line, "entries_written")?;
        sum.meta_saves += stat(&line, "meta_saves")?;
    }
    Ok(sum)
}

/// What one run measured.
struct Run {
    groups: u64,
    clients: u64,
    payload: usize,
    seconds: f64,
    commits: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// Over the load window, summed over the three processes.
    log_writes: u64,
    entries_written: u64,
    meta_saves: u64,
    busy: u64,
    not_leader: u64,
    unknown: u64,
    failed: u64,
    /// Groups led by each process when the load started.
    leaders: Vec<u64>,
}

impl Run {
    fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.seconds
    }

    fn entries_per_fsync(&self) -> f64 {
        self.entries_written as f64 / self.log_writes.max(1) as f64
    }

    /// Every fsync of the three processes: log writes and term/vote saves.
    fn fsyncs_per_second(&self) -> f64 {
        (self.log_writes + self.meta_saves) as f64 / self.seconds
    }

    fn json(&self) -> String {
        format!(
            "{{\"groups\":{},\"clients_per_group\":{},\"payload_bytes\":{},\"seconds\":{:.3},\
             \"commits\":{},\"commits_per_s\":{:.1},\"latency_p50_ms\":{:.3},\
             \"latency_p99_ms\":{:.3},\"entries_per_fsync\":{:.2},\"fsyncs_per_s\":{:.1},\
             \"log_writes\":{},\"entries_written\":{},\"meta_saves\":{},\"busy\":{},\
             \"not_leader\":{},\"unknown\":{},\"failed\":{},\"leaders_per_process\":[{}]}}",
            self.groups,
            self.clients,
            self.payload,
            self.seconds,
            self.commits,
            self.commits_per_second(),
            self.p50_ms,
            self.p99_ms,
            self.entries_per_fsync(),
            self.fsyncs_per_second(),
            self.log_writes,
            self.entries_written,
            self.meta_saves,
            self.busy,
            self.not_leader,
            self.unknown,
            self.failed,
            self.leaders
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

const TABLE_HEADER: &str = "\
| groups | clients/group | commits/s | p50 ms | p99 ms | entries/fsync | fsyncs/s (3 processes) |
|---|---|---|---|---|---|---|";

fn table_row(run: &Run) -> String {
    format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} |",
        run.groups,
        run.clients,
        run.commits_per_second(),
        run.p50_ms,
        run.p99_ms,
        run.entries_per_fsync(),
        run.fsyncs_per_second()
    )
}

fn run_benchmark(args: Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    eprintln!(
        "cluster_bench: 3 server processes on loopback, fsync on, {} s per run, {} clients \
         per group, {}-byte entries, data under {} ({cpus} CPUs)",
        args.duration.as_secs_f64(),
        args.clients,
        args.payload,
        args.data_dir.display()
    );
    let mut runs = Vec::new();
    for &groups in &args.groups {
        let run = runtime.block_on(run_one(&args, groups))?;
        if !args.json {
            eprintln!("{TABLE_HEADER}\n{}", table_row(&run));
        }
        runs.push(run);
    }
    if args.json {
        let runs: Vec<String> = runs.iter().map(Run::json).collect();
        println!("[{}]", runs.join(",\n "));
    } else {
        println!("{TABLE_HEADER}");
        for run in &runs {
            println!("{}", table_row(run));
        }
    }
    Ok(())
}

/// Starts a cluster, bootstraps `groups`, waits for leaders, spreads them, loads, reports.
async fn run_one(args: &Args, groups: u64) -> Result<Run, String> {
    eprintln!("[{groups} groups] starting 3 servers");
    let servers = Servers::start(&args.data_dir, groups).await?;
    let peers = servers
        .peers()
        .iter()
        .map(PeerId::as_str)
        .collect::<Vec<_>>()
        .join(",");
    for server in &servers.servers {
        ask(server.control, &format!("start 1 {groups} {peers}"), WAIT).await?;
    }
    let started = Instant::now();
    wait_for_leaders(&servers, groups).await?;
    eprintln!(
        "[{groups} groups] every group has a leader after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if groups > 1 {
        let all: Vec<GroupId> = (1..=groups).collect();
        CliClient::new(servers.peers(), 1)
            .map_err(|e| format!("CLI client: {e}"))?
            .rebalance(&all)
            .await
            .map_err(|e| format!("rebalancing the leaders: {e}"))?;
    }
    let leaders = wait_for_leaders(&servers, groups).await?;
    eprintln!("[{groups} groups] leaders per process: {leaders:?}; loading");
    let mut run = load_cluster(args, &servers, groups).await?;
    run.leaders = leaders;
    Ok(run)
}

/// Waits until every group has a leader every process knows; answers the groups each
/// process leads.
async fn wait_for_leaders(servers: &Servers, groups: u64) -> Result<Vec<u64>, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut led = Vec::new();
        let mut known = Vec::new();
        for server in &servers.servers {
            let line = ask(server.control, "leaders", WAIT).await?;
            led.push(stat(&line, "led")?);
            known.push(stat(&line, "known")?);
        }
        if led.iter().sum::<u64>() == groups && known.iter().all(|&k| k == groups) {
            return Ok(led);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no stable leaders within {WAIT:?}: led per process {led:?}, known {known:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the load on every server, printing progress each second; the run's figures.
async fn load_cluster(args: &Args, servers: &Servers, groups: u64) -> Result<Run, String> {
    let before = counters(servers).await?;
    let request = format!(
        "load {} {} {}",
        args.duration.as_millis(),
        args.clients,
        args.payload
    );
    let started = Instant::now();
    let mut loads = Vec::new();
    for server in &servers.servers {
        let (control, request) = (server.control, request.clone());
        loads.push(tokio::spawn(async move {
            ask(control, &request, args_wait(&request)).await
        }));
    }
    let mut last = (Instant::now(), before);
    while !loads.iter().all(tokio::task::JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if loads.iter().all(tokio::task::JoinHandle::is_finished) {
            break;
        }
        let now = (Instant::now(), counters(servers).await?);
        print_progress(groups, started, last, now);
        last = now;
    }
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .min(args.duration.as_secs_f64());
    let after = counters(servers).await?;
    let mut run = Run {
        groups,
        clients: args.clients,
        payload: args.payload,
        seconds,
        commits: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        log_writes: after.log_writes - before.log_writes,
        entries_written: after.entries_written - before.entries_written,
        meta_saves: after.meta_saves - before.meta_saves,
        busy: 0,
        not_leader: 0,
        unknown: 0,
        failed: 0,
        leaders: Vec::new(),
    };
    let mut merged = Merged::default();
    for load in loads {
        let line = load.await.map_err(|e| format!("load task: {e}"))??;
        run.commits += stat(&line, "commits")?;
        run.busy += stat(&line, "busy")?;
        run.not_leader += stat(&line, "not_leader")?;
        run.unknown += stat(&line, "unknown")?;
        run.failed += stat(&line, "failed")?;
        merged.add(field(&line, "hist")?)?;
    }
    run.p50_ms = merged.quantile_ms(0.50);
    run.p99_ms = merged.quantile_ms(0.99);
    Ok(run)
}

/// How long a load request may take: its duration plus the usual wait.
fn args_wait(request: &str) -> Duration {
    let millis = request
        .split_whitespace()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(millis) + WAIT
}

fn print_progress(
    groups: u64,
    started: Instant,
    (then, before): (Instant, Counters),
    (now, after): (Instant, Counters),
) {
    let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
    let log_writes = after.log_writes - before.log_writes;
    let fsyncs = log_writes + after.meta_saves - before.meta_saves;
    eprintln!(
        "[{groups} groups] {:>5.1} s: {:>9.0} commits/s, {:>6.0} fsyncs/s, {:>6.1} entries/fsync",
        now.duration_since(started).as_secs_f64(),
        after.commits.saturating_sub(before.commits) as f64 / seconds,
        fsyncs as f64 / seconds,
        (after.entries_written - before.entries_written) as f64 / log_writes.max(1) as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_their_values() {
        for micros in (0..5_000).chain([u64::MAX / 2, u64::MAX]) {
            let index = bucket_of(micros);
            assert!(index < BUCKETS, "{micros} -> {index}");
            let (low, width) = bucket_range(index);
            assert!(
                low <= micros && micros - low < width,
                "{micros} in [{low}, +{width})"
            );
        }
    }
}
