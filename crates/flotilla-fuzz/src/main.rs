//! `flotilla-fuzz`: runs the fuzz targets from the command line.
//!
//! ```text
//! flotilla-fuzz [--target NAME[,NAME...]|all] [--inputs N] [--seed S] [--crash-dir DIR] [--quiet]
//! flotilla-fuzz --target NAME --replay FILE
//! flotilla-fuzz --list
//! ```
//!
//! `--inputs` counts per target (default 10,000; the seeds first, then mutants), `--seed`
//! (default 1) fixes every choice, `--crash-dir` defaults to `fuzz-crashes`. Several targets
//! run one after the other, each in a child process (an absurd allocation aborts the
//! process that made it, and must not keep the other targets from running). Progress
//! (inputs per second) goes to stderr, one summary line per target to stdout, and each
//! crash is printed (target, seed, iteration, panic, input in hex, backtrace) and saved
//! under the crash dir. Exit status: 0 without crashes, 1 with any, 2 for a usage error.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use flotilla_fuzz::{fuzz, run_one, targets, CappedAllocator, Options, Target};

/// Turns a decoder's absurd allocation into a reported crash instead of an exhausted
/// machine.
#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

const USAGE: &str = "usage: flotilla-fuzz [--target NAME[,NAME...]|all] [--inputs N] [--seed S] \
[--crash-dir DIR] [--quiet]\n       flotilla-fuzz --target NAME --replay FILE\n       \
flotilla-fuzz --list";

struct Args {
    target: String,
    options: Options,
    replay: Option<PathBuf>,
    list: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        target: "all".into(),
        options: Options {
            progress: true,
            crash_dir: Some(PathBuf::from("fuzz-crashes")),
            ..Options::default()
        },
        replay: None,
        list: false,
    };
    let mut raw = std::env::args_os().skip(1);
    while let Some(flag) = raw.next() {
        let flag = flag
            .into_string()
            .map_err(|f| format!("argument {f:?} is not UTF-8"))?;
        let mut value = |name: &str| -> Result<String, String> {
            raw.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .into_string()
                .map_err(|v| format!("{name} {v:?}: not UTF-8"))
        };
        let number = |name: &str, text: String| -> Result<u64, String> {
            text.parse()
                .map_err(|_| format!("{name} {text:?}: not a whole number"))
        };
        match flag.as_str() {
            "--target" => args.target = value("--target")?,
            "--inputs" => args.options.inputs = number("--inputs", value("--inputs")?)?,
            "--seed" => args.options.seed = number("--seed", value("--seed")?)?,
            "--crash-dir" => args.options.crash_dir = Some(value("--crash-dir")?.into()),
            "--replay" => args.replay = Some(value("--replay")?.into()),
            "--quiet" => args.options.progress = false,
            "--list" => args.list = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The targets `names` selects: every real one for `all`, else the comma-separated names
/// (the planted one only when built with the `planted-decoder-bug` feature).
fn select(names: &str) -> Result<Vec<Target>, String> {
    if names == "all" {
        return Ok(targets::all());
    }
    names
        .split(',')
        .map(|name| {
            if name == "planted" && cfg!(feature = "planted-decoder-bug") {
                return Ok(targets::planted::planted());
            }
            targets::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = targets::all().iter().map(|t| t.name).collect();
                format!(
                    "unknown target {name:?}: one of all, {} (or several, comma-separated; \
                     planted needs --features planted-decoder-bug)",
                    known.join(", ")
                )
            })
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("flotilla-fuzz: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for target in targets::all() {
            println!("{:<18} {}", target.name, target.about);
        }
        return ExitCode::SUCCESS;
    }
    let selected = match select(&args.target) {
        Ok(selected) => selected,
        Err(why) => {
            eprintln!("flotilla-fuzz: {why}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.replay {
        return replay(&selected, path);
    }
    match selected.as_slice() {
        [target] => fuzz_one(target, &args.options),
        _ => fuzz_each_in_a_child(&selected, &args.options),
    }
}

/// Fuzzes one target in this process: prints its crashes and its summary line.
fn fuzz_one(target: &Target, options: &Options) -> ExitCode {
    if options.progress {
        eprintln!("fuzzing {}: {}", target.name, target.about);
    }
    let report = fuzz(target, options);
    for crash in &report.crashes {
        eprintln!("{}", crash.describe());
    }
    let mut failed = !report.crashes.is_empty();
    if report.seeds_refused > 0 {
        // A seed the decoder refuses means the seeding is broken, not the decoder.
        eprintln!(
            "flotilla-fuzz: {} of {}'s seeds were refused by its decoder",
            report.seeds_refused, target.name
        );
        failed = true;
    }
    println!("{}", report.summary());
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Fuzzes each target in a child process of its own, one after the other, so that a target
/// that aborts (an absurd allocation cannot be unwound) does not keep the others from
/// running. Children print their own crashes and summary lines.
fn fuzz_each_in_a_child(selected: &[Target], options: &Options) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("flotilla-fuzz: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for target in selected {
        let mut child = Command::new(&exe);
        child
            .args(["--target", target.name])
            .args(["--inputs", &options.inputs.to_string()])
            .args(["--seed", &options.seed.to_string()]);
        if let Some(dir) = &options.crash_dir {
            child.arg("--crash-dir").arg(dir);
        }
        if !options.progress {
            child.arg("--quiet");
        }
        match child.status() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                if status.code() != Some(1) {
                    // Killed (an abort after an absurd allocation, or out of memory):
                    // the child printed what it could; say which target it was.
                    println!("target={} result=ABORTED ({status})", target.name);
                }
                failed.push(target.name);
            }
            Err(e) => {
                eprintln!("flotilla-fuzz: cannot run {}: {e}", exe.display());
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "total targets={} inputs_per_target={} seed={} seconds={:.1} result={}",
        selected.len(),
        options.inputs,
        options.seed,
        started.elapsed().as_secs_f64(),
        if failed.is_empty() {
            "ok".to_string()
        } else {
            format!("CRASHES in {}", failed.join(","))
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs one saved input (raw bytes, or hex text) against the selected target.
fn replay(selected: &[Target], path: &std::path::Path) -> ExitCode {
    let [target] = selected else {
        eprintln!("flotilla-fuzz: --replay needs one --target");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("flotilla-fuzz: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let input = std::str::from_utf8(&bytes)
        .ok()
        .filter(|_| path.extension().is_some_and(|e| e == "hex"))
        .and_then(flotilla_fuzz::unhex)
        .unwrap_or(bytes);
    match run_one(target, &input) {
        Ok(accepted) => {
            println!(
                "target={} len={} result={}",
                target.name,
                input.len(),
                if accepted { "accepted" } else { "refused" }
            );
            ExitCode::SUCCESS
        }
        Err((panic, backtrace)) => {
            println!(
                "target={} len={} result=CRASH\npanic: {panic}\nbacktrace:\n{backtrace}",
                target.name,
                input.len()
            );
            ExitCode::from(1)
        }
    }
}
