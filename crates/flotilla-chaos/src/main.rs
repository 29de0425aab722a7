//! `flotilla-chaos`: Flotilla's chaos harness. It runs real `flotilla server` processes,
//! each in its own network namespace, injects faults (partitions of several shapes, kill -9,
//! SIGSTOP, a person's membership change, drift to new addresses, clock skew, disk damage,
//! a store's data dir wiped, a store moved to another address, the placement driver's
//! leader killed, paused or isolated) while concurrent clients run a register and a set
//! workload, then checks the recorded histories: linearizability per key
//! (`flotilla-linearizability`, the checker the simulator uses too), stale reads, lost
//! acknowledged writes, and recovery time after each heal.
//!
//! The placement driver (PD) repairs the cluster, not the harness: a store lost for good
//! (drift, wipe, a disk the store refuses) has its replicas replaced by the PD once it is
//! down for `--max-store-down-time-s` (8 s by default: longer than any fault the harness
//! undoes itself, `--fault-s` 5 s, so kills and pauses cause no replacement; short enough
//! for a replacement to finish inside a 40 s run), with store heartbeats every
//! `--pd-heartbeat-ms` (1000). Heals that lost a store, and the final heal, wait for the PD
//! to converge: every region at `max-replicas` (3) voters on running stores, none on a
//! store stopped for good, no operator in flight.
//!
//! ```text
//! cargo build --release -p flotilla -p flotilla-chaos
//! cargo run --release -p flotilla-chaos -- --nemesis kill,partition-halves --nodes 5 --time-limit 60
//! cargo run --release -p flotilla-chaos -- --suite quick
//! ```
//!
//! The last line is exactly `runs=R ops=O indeterminate=I violations=V unknown=U lost=L`;
//! the exit status is 1 when V, U or L is not zero (2: usage error or the harness itself
//! failed). A failing run's histories, journal and server logs stay in the directory named
//! in the output; `flotilla-chaos --check DIR` re-checks them.

mod checker;
mod cluster;
mod history;
mod leases;
mod locks;
mod nemesis;
mod net;
mod pd;
mod rng;
mod run;
mod watches;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use flotilla_kv::client::ReadConsistency;
use flotilla_linearizability::{Checker, STATES_PER_KEY_MAX_DEFAULT};

use crate::checker::quantile;
use crate::cluster::ServerConfig;
use crate::nemesis::{Nemesis, NemesisConfig};
use crate::run::{ms, RunConfig, RunResult};
use crate::workload::{WorkloadConfig, Workloads};

/// Exit status when a run found a violation, an undecided check or a lost write.
const EXIT_FOUND: i32 = 1;
/// Exit status for a usage error or a harness failure.
const EXIT_HARNESS: i32 = 2;

/// Chaos tests of real flotilla server processes.
#[derive(Parser, Debug)]
#[command(name = "flotilla-chaos", version, about)]
struct Args {
    /// Nemeses, comma-separated: partition-halves, partition-ring, partition-bridge,
    /// partition-one-way, isolate-leader, kill, pause, membership, drift, clock, disk,
    /// wipe, readdress, pd, split-merge; or `partitions`, `all`, `none`. Each cycle applies a
    /// random non-empty subset.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Servers in the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload and faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of every choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// A suite of runs instead of one: `quick` (a few minutes of everything) or `full`
    /// (each nemesis for several minutes).
    #[arg(long)]
    suite: Option<String>,
    /// Workloads: register, set or both.
    #[arg(long, default_value = "both")]
    workload: String,
    /// Read modes of the register's reads: index, lease, follower, or all.
    #[arg(long, default_value = "all")]
    read: String,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Static regions of the cluster.
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Servers' raft tick.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Servers' election timeout.
    #[arg(long, default_value_t = 1000)]
    election_timeout_ms: u64,
    /// Servers' storage engine.
    #[arg(long, default_value = "fjall")]
    engine: String,
    /// Servers' `--pd-heartbeat-ms`: how often each store reports to the PD.
    #[arg(long, default_value_t = 1000)]
    pd_heartbeat_ms: u64,
    /// Servers' `--max-store-down-time`, in seconds: after it the PD replaces a silent
    /// store's replicas. Keep it above `--fault-s` (a killed or paused store is restarted
    /// before the PD gives up on it) and well below the run's length (a drifted or wiped
    /// store's replicas must be replaced inside the run).
    #[arg(long, default_value_t = 8)]
    max_store_down_time_s: u64,
    /// Healthy seconds before each fault.
    #[arg(long, default_value_t = 2.0)]
    interval_s: f64,
    /// The longest a fault lasts, seconds (each lasts 20% to 100% of it).
    #[arg(long, default_value_t = 5.0)]
    fault_s: f64,
    /// Longest one client operation may take, in milliseconds (longer than a fault, so a
    /// request held by a paused or cut-off store is answered, and checked, after the heal).
    #[arg(long, default_value_t = 6000)]
    op_timeout_ms: u64,
    /// Operations per register key before a fresh key replaces it.
    #[arg(long, default_value_t = 200)]
    ops_per_key: u64,
    /// Largest clock-rate error of the clock nemesis (the lease, 90% of the election
    /// timeout, is safe below 1/19 ≈ 0.0526).
    #[arg(long, default_value_t = 0.04)]
    clock_drift_max: f64,
    /// The linearizability search's budget per key.
    #[arg(long, default_value_t = STATES_PER_KEY_MAX_DEFAULT)]
    checker_states: u64,
    /// Where the runs' directories go (default: a new directory under the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directories of passing runs too.
    #[arg(long)]
    keep: bool,
    /// Run on 127.0.0.1 without namespaces (partitions are skipped).
    #[arg(long)]
    loopback: bool,
    /// The `flotilla` binary (default: $FLOTILLA_BIN, else next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Print only each run's result, not its timeline.
    #[arg(long)]
    quiet: bool,
    /// Re-check the histories kept in DIR (a failing run's directory) and exit.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

/// One planned run of a suite.
struct Plan {
    nemeses: Vec<Nemesis>,
    nodes: usize,
    seconds: u64,
}

fn suite(name: &str) -> anyhow::Result<Vec<Plan>> {
    let plan = |names: &str, nodes, seconds| -> anyhow::Result<Plan> {
        Ok(Plan {
            nemeses: Nemesis::parse_list(names).map_err(|e| anyhow!(e))?,
            nodes,
            seconds,
        })
    };
    match name {
        // About six minutes on two cores: every nemesis, a few cycles each. The PD's
        // leader faulted among kills and pauses on five stores (regions on three of them),
        // and right after a drift stopped a store (its replacement pending); drift, wipe
        // and disk wait for the PD's repair (8 s of down time, then the replacement). Runs
        // that wipe a store have four: the PD registers the wiped store's new id only once
        // its old id (at the same address) is a tombstone, which needs a store outside
        // each region to move the old id's replicas to (`pd::register_or_remove_old`).
        "quick" => Ok(vec![
            plan("partitions,split-merge", 5, 40)?,
            plan("kill,pause,pd,split-merge", 5, 40)?,
            plan("membership,drift,wipe,pd", 4, 40)?,
            plan("clock,isolate-leader,disk", 4, 40)?,
            plan("wipe,readdress", 4, 40)?,
        ]),
        // Each nemesis alone for three minutes, splits and merges among kills and
        // partitions, then everything together.
        "full" => {
            let mut plans = Vec::new();
            for n in Nemesis::ALL {
                plans.push(plan(n.name(), 5, 180)?);
            }
            plans.push(plan("kill,partitions,split-merge", 5, 180)?);
            plans.push(plan("all", 5, 180)?);
            Ok(plans)
        }
        other => bail!("unknown suite {other:?}: expected quick or full"),
    }
}

fn server_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match (&args.server_bin, std::env::var_os("FLOTILLA_BIN")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("flotilla"))
            .ok_or_else(|| anyhow!("cannot tell where this binary is"))?,
    };
    if !path.is_file() {
        bail!(
            "no flotilla binary at {} (build it with `cargo build --release -p flotilla`, or pass --server-bin / set FLOTILLA_BIN)",
            path.display()
        );
    }
    Ok(path.canonicalize()?)
}

fn read_modes(text: &str) -> anyhow::Result<Vec<ReadConsistency>> {
    if text == "all" {
        return Ok(vec![
            ReadConsistency::Index,
            ReadConsistency::Lease,
            ReadConsistency::Follower,
        ]);
    }
    text.split(',')
        .map(|m| {
            m.trim()
                .parse::<ReadConsistency>()
                .map_err(|e| anyhow!("--read: {e}"))
        })
        .collect()
}

fn seed_now() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.nodes < 3 || args.nodes > 9 {
        bail!("--nodes {}: must be 3 to 9", args.nodes);
    }
    if args.clients == 0 || args.clients > 256 {
        bail!("--clients {}: must be 1 to 256", args.clients);
    }
    if !(0.0..0.0526).contains(&args.clock_drift_max) {
        bail!(
            "--clock-drift-max {}: must be below 0.0526, the bound the leader lease (90% of the election timeout) tolerates",
            args.clock_drift_max
        );
    }
    if args.interval_s < 0.0 || args.fault_s <= 0.0 {
        bail!("--interval-s must be >= 0 and --fault-s > 0");
    }
    if args.regions == 0 || args.regions > 64 {
        bail!("--regions {}: must be 1 to 64", args.regions);
    }
    if !(100..=600_000).contains(&args.pd_heartbeat_ms) {
        bail!(
            "--pd-heartbeat-ms {}: must be 100 to 600000 (the server's bounds)",
            args.pd_heartbeat_ms
        );
    }
    if args.max_store_down_time_s == 0 || args.max_store_down_time_s > 3600 {
        bail!(
            "--max-store-down-time-s {}: must be 1 to 3600",
            args.max_store_down_time_s
        );
    }
    if args.ops_per_key == 0 {
        bail!("--ops-per-key must be at least 1");
    }
    Ok(())
}

fn summary_table(results: &[RunResult]) -> Vec<String> {
    let mut lines = vec![
        "| nemesis | nodes | seconds | ops | indeterminate | faults | recovery p50 | recovery max | violations | unknown | lost |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in results {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.nemeses,
            r.nodes,
            r.seconds,
            r.ops,
            r.indeterminate,
            r.faults,
            ms(quantile(&r.recoveries_ms, 0.5)),
            ms(r.recoveries_ms.iter().max().copied()),
            r.violations,
            r.unknown,
            r.lost
        ));
    }
    lines
}

fn totals_line(results: &[RunResult]) -> String {
    let sum = |f: fn(&RunResult) -> usize| results.iter().map(f).sum::<usize>();
    format!(
        "runs={} ops={} indeterminate={} violations={} unknown={} lost={}",
        results.len(),
        sum(|r| r.ops),
        sum(|r| r.indeterminate),
        sum(|r| r.violations),
        sum(|r| r.unknown),
        sum(|r| r.lost)
    )
}

/// `--check DIR`: re-checks a kept run's histories.
fn check_dir(dir: &Path, states: u64) -> anyhow::Result<i32> {
    let register: Vec<history::RegisterEvent> =
        history::read_jsonl(&dir.join("history-register.jsonl"))?;
    let adds: Vec<history::SetAdd> = history::read_jsonl(&dir.join("history-set.jsonl"))?;
    let reads: Vec<history::SetRead> = history::read_jsonl(&dir.join("final-set-reads.jsonl"))?;
    if register.is_empty() && adds.is_empty() {
        bail!(
            "{} holds no history (history-register.jsonl, history-set.jsonl)",
            dir.display()
        );
    }
    let report = checker::check_register(&register, &Checker::new(states));
    let set = checker::check_set(&adds, &reads);
    for (key, why) in &report.violations {
        println!("key {key} not linearizable: {why}");
    }
    for line in report.stale_reads.iter().chain(&report.lost) {
        println!("{line}");
    }
    if !set.uncovered.is_empty() {
        println!(
            "{} acknowledged set elements in no final read's range (first: {:?})",
            set.uncovered.len(),
            &set.uncovered[..set.uncovered.len().min(10)]
        );
    }
    for (element, stores) in &set.lost {
        println!(
            "set element {element} (acknowledged) missing on {}",
            stores.join(",")
        );
    }
    let result = RunResult {
        ops: register.len() + adds.len(),
        indeterminate: register
            .iter()
            .filter(|e| e.outcome == history::Outcome::Unknown)
            .count()
            + adds
                .iter()
                .filter(|a| a.outcome == history::Outcome::Unknown)
                .count(),
        violations: report.violations.len() + set.violations(),
        unknown: report.unknown.len() + set.unread.len() + usize::from(!set.uncovered.is_empty()),
        lost: report.lost.len() + set.lost_count(),
        ..RunResult::default()
    };
    println!("{}", totals_line(std::slice::from_ref(&result)));
    Ok(if result.passed() { 0 } else { EXIT_FOUND })
}

async fn main_async(args: Args) -> anyhow::Result<i32> {
    validate(&args)?;
    if let Some(dir) = &args.check {
        return check_dir(dir, args.checker_states);
    }
    let bin = server_bin(&args)?;
    let seed = args.seed.unwrap_or_else(seed_now);
    let plans = match &args.suite {
        Some(name) => suite(name)?,
        None => vec![Plan {
            nemeses: Nemesis::parse_list(&args.nemesis).map_err(|e| anyhow!("--nemesis: {e}"))?,
            nodes: args.nodes,
            seconds: args.time_limit,
        }],
    };
    let workloads: Workloads = args
        .workload
        .parse()
        .map_err(|e: String| anyhow!("--workload: {e}"))?;
    let base = args.dir.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        std::env::temp_dir()
            .join("flotilla-chaos")
            .join(format!("{stamp}-{seed}"))
    });
    // Every run of this invocation uses one copy of the server binary, so a rebuild of
    // `flotilla` while a suite runs (the target directory is shared) cannot change it.
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let copy = base.join("flotilla");
    std::fs::copy(&bin, &copy)
        .with_context(|| format!("cannot copy {} to {}", bin.display(), copy.display()))?;
    let bin = copy;
    println!(
        "flotilla-chaos: seed {seed}, {} run{}, server {}, run directories under {}",
        plans.len(),
        if plans.len() == 1 { "" } else { "s" },
        bin.display(),
        base.display()
    );
    let mut results = Vec::new();
    for (k, plan) in plans.iter().enumerate() {
        // One seed per run, derived from the master seed; printed so a run can be repeated
        // alone with `--nemesis ... --nodes ... --time-limit ... --seed ...`.
        let run_seed = if plans.len() == 1 {
            seed
        } else {
            rng::Rng::new(seed ^ k as u64).next_u64()
        };
        let name = Nemesis::list_name(&plan.nemeses);
        println!(
            "\nrun {}/{}: --nemesis {name} --nodes {} --time-limit {} --seed {run_seed}",
            k + 1,
            plans.len(),
            plan.nodes,
            plan.seconds
        );
        let config = RunConfig {
            nemeses: plan.nemeses.clone(),
            nodes: plan.nodes,
            time_limit: Duration::from_secs(plan.seconds),
            seed: run_seed,
            server: ServerConfig {
                bin: bin.clone(),
                regions: args.regions,
                tick_ms: args.tick_ms,
                election_timeout_ms: args.election_timeout_ms,
                engine: args.engine.clone(),
                pd_heartbeat_ms: args.pd_heartbeat_ms,
                max_store_down_time: Duration::from_secs(args.max_store_down_time_s),
            },
            workload: WorkloadConfig {
                workloads,
                clients: args.clients,
                read_modes: read_modes(&args.read)?,
                ops_per_key: args.ops_per_key,
                op_timeout: Duration::from_millis(args.op_timeout_ms.max(1000)),
                think_max: Duration::from_millis(5),
            },
            nemesis: NemesisConfig {
                clock_drift_max: args.clock_drift_max,
            },
            interval: Duration::from_secs_f64(args.interval_s),
            fault_duration: Duration::from_secs_f64(args.fault_s),
            loopback: args.loopback,
            dir: base.join(format!("run-{}-{}", k + 1, name.replace(',', "+"))),
            keep: args.keep,
            checker_states: args.checker_states,
            quiet: args.quiet,
        };
        let dir = config.dir.clone();
        let result = match run::run(config).await {
            Ok(result) => result,
            Err(why) => {
                // The run could not complete: nothing was checked, so it cannot pass.
                println!("  the run could not complete: {why:#}");
                RunResult {
                    nemeses: name.clone(),
                    nodes: plan.nodes,
                    seed: run_seed,
                    unknown: 1,
                    kept: dir.exists().then_some(dir),
                    network: "?".into(),
                    ..RunResult::default()
                }
            }
        };
        println!(
            "  result: {} [{}]",
            run::result_line(&result),
            result.network
        );
        if let Some(dir) = &result.kept {
            let why = if result.passed() {
                "kept (--keep)"
            } else {
                "FAILED: histories and server logs kept"
            };
            println!("  {why} in {}", dir.display());
        }
        results.push(result);
    }
    println!("\nsummary (seed {seed}):");
    for line in summary_table(&results) {
        println!("{line}");
    }
    for (k, r) in results.iter().enumerate() {
        if let (false, Some(dir)) = (r.passed(), &r.kept) {
            println!(
                "run {} failed: histories and server logs in {}",
                k + 1,
                dir.display()
            );
        }
    }
    let failed = results.iter().any(|r| !r.passed());
    if !failed && !args.keep {
        let _ = std::fs::remove_file(&bin);
        let _ = std::fs::remove_dir(&base);
    }
    println!("{}", totals_line(&results));
    Ok(if failed { EXIT_FOUND } else { 0 })
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flotilla-chaos: cannot start the async runtime: {e}");
            std::process::exit(EXIT_HARNESS);
        }
    };
    // One thread: the servers are spawned from it, so PR_SET_PDEATHSIG ties them to the
    // harness's life (it fires when the spawning thread ends).
    let code = runtime.block_on(async {
        tokio::select! {
            result = main_async(args) => match result {
                Ok(code) => code,
                Err(why) => {
                    eprintln!("flotilla-chaos: {why:#}");
                    EXIT_HARNESS
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("flotilla-chaos: interrupted; servers stopped, namespaces removed");
                EXIT_HARNESS
            }
        }
    });
    drop(runtime);
    std::process::exit(code);
}
