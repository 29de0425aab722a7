//! `flotilla-sim`: runs many seeded simulations and reports violations.
//!
//! Usage: `flotilla-sim --seeds N [--seed S] [--nodes K] [--storage memory|shared-log]
//! [--hibernation] [--outsider] [--quiet]`. Runs seeds S..S+N (S defaults to 0; with `--seed` alone, N defaults to 1).
//! `--storage` picks the nodes' disk: `memory` (the default) keeps the durable log in
//! memory; `shared-log` runs the real storage module (`SharedLog` and `FileMetaStorage`)
//! over a simulated file system, crashes it with torn tails, recovers it at every restart
//! and checks that recovery returns exactly what was acknowledged as durable.
//! `--hibernation` lets idle groups hibernate, driven as the runtime drives them (see
//! `SimConfig::hibernation`). `--outsider` adds a hostile non-member that sends votes,
//! forged AppendEntries, heartbeats and TimeoutNow with inflated terms throughout the run
//! (see `SimConfig::outsider`). A seed replays exactly given the same `--seed`, `--nodes`,
//! `--storage`, `--hibernation` and `--outsider`. The last line printed is
//! exactly `seeds=N steps=T violations=V unknown=U`; the exit status is non-zero when V > 0.

use std::process::ExitCode;
use std::time::Instant;

use flotilla_sim::{nodes_for_seed, run_seed, SimConfig, StorageMode};

const USAGE: &str = "usage: flotilla-sim --seeds N [--seed S] [--nodes K] \
                     [--storage memory|shared-log] [--hibernation] [--outsider] [--quiet]";

struct Args {
    seeds: u64,
    first: u64,
    nodes: Option<usize>,
    storage: StorageMode,
    hibernation: bool,
    outsider: bool,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0,
        first: 0,
        nodes: None,
        storage: StorageMode::Memory,
        hibernation: false,
        outsider: false,
        quiet: false,
    };
    let mut seeds_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse::<u64>()
                .map_err(|_| format!("{name} expects a non-negative integer, got {v:?}"))
        };
        match flag.as_str() {
            "--seeds" => {
                args.seeds = value("--seeds")?;
                seeds_given = true;
            }
            "--seed" => args.first = value("--seed")?,
            "--nodes" => {
                let k = value("--nodes")?;
                if !(1..=9).contains(&k) {
                    return Err(format!("--nodes must be between 1 and 9, got {k}"));
                }
                args.nodes = Some(k as usize);
            }
            "--storage" => {
                let v = it.next().ok_or("--storage needs a value")?;
                args.storage = v.parse()?;
            }
            "--quiet" => args.quiet = true,
            "--hibernation" => args.hibernation = true,
            "--outsider" => args.outsider = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    if !seeds_given {
        args.seeds = 1;
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut steps, mut violations, mut unknown) = (0u64, 0u64, 0u64);
    let mut recovery_max = 0u64;
    let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let progress_every = (args.seeds / 20).max(1);
    for (done, seed) in (args.first..args.first + args.seeds).enumerate() {
        let nodes = args.nodes.unwrap_or_else(|| nodes_for_seed(seed));
        let mut config = SimConfig::new(seed, nodes);
        config.storage = args.storage;
        config.hibernation = args.hibernation;
        config.outsider = args.outsider;
        let report = run_seed(config);
        steps += report.steps;
        for (what, n) in &report.stats {
            *totals.entry(what).or_insert(0) += n;
        }
        if let Some(r) = report.recovery_ticks {
            recovery_max = recovery_max.max(r);
        }
        if report.unknown {
            unknown += 1;
            println!(
                "seed {seed} nodes={nodes}: linearizability check ran out of budget (unknown)"
            );
        }
        if let Some(v) = &report.violation {
            violations += 1;
            println!(
                "VIOLATION seed={seed} nodes={nodes} invariant=\"{}\": {}",
                v.invariant, v.detail
            );
            let storage = match args.storage {
                StorageMode::Memory => "",
                StorageMode::SharedLog => " --storage shared-log",
            };
            let hibernation = if args.hibernation {
                " --hibernation"
            } else {
                ""
            };
            let outsider = if args.outsider { " --outsider" } else { "" };
            println!(
                "  replay: cargo run --release -p flotilla-sim -- --seed {seed} --nodes {nodes}{storage}{hibernation}{outsider}"
            );
            for line in &v.trace {
                println!("  | {line}");
            }
        }
        let done = done as u64 + 1;
        if !args.quiet && (done.is_multiple_of(progress_every) || done == args.seeds) {
            eprintln!(
                "progress: {done}/{} seeds, {steps} steps, {violations} violations, {:.1}s, max recovery {recovery_max} ticks",
                args.seeds,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let summary: Vec<String> = totals
        .iter()
        .map(|(what, n)| format!("{what}={n}"))
        .collect();
    println!("exercised: {}", summary.join(" "));
    println!("slowest recovery after the final heal: {recovery_max} ticks");
    println!(
        "seeds={} steps={steps} violations={violations} unknown={unknown}",
        args.seeds
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
