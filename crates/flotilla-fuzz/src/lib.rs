//! # flotilla-fuzz: a deterministic mutation fuzzer for Flotilla's trust boundaries
//!
//! Every decoder that reads bytes from the network or a disk, and the raft core stepping
//! arbitrary messages, is a [`Target`]. A run starts from REAL inputs the crates' own
//! encoders produced (frames of a running 3-peer cluster, a segment written by the shared
//! log, a manifest, meta files, `store.meta`), mutates them with a seeded generator
//! ([`mutate`]), repairs checksums on half of the mutants so they reach the parsing behind
//! them, and runs the decoder under [`std::panic::catch_unwind`]. Mutants the decoder
//! accepts join the corpus (the only feedback there is without coverage instrumentation,
//! which would need nightly). A panic is a [`Crash`]: the target, the seed and iteration
//! that replay it, the input, the panic and its backtrace.
//!
//! Owns: the run loop, crash capture and reporting. Must never: use randomness other than
//! the seed (a run replays exactly, so a crash found in CI is found again by anyone), or
//! let a panic of a decoder escape a run.

#![deny(missing_docs)]

pub mod mutate;
pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use flotilla_raft::Rng;

/// One decoder (or the core) under test.
pub struct Target {
    /// Name on the command line (`raft-frame`, `log-segment`, ...).
    pub name: &'static str,
    /// What it feeds where, one line.
    pub about: &'static str,
    /// Real encoded inputs to start from; every one must be accepted by `run`.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Runs the decoder on one input; `true` when the input was accepted (valid inputs
    /// join the corpus). Errors are fine; a panic is a crash.
    pub run: fn(&[u8]) -> bool,
    /// Repairs the checksums of a mutant (half the mutants get it), so mutations reach
    /// the parsing behind the checksum instead of stopping at it.
    pub fixup: Option<fn(&mut Vec<u8>, &mut Rng)>,
}

/// How one target is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Inputs to run (the seeds first, then mutants).
    pub inputs: u64,
    /// Seed of the run: with the same seed and target, the same inputs in the same order.
    pub seed: u64,
    /// Where crashing inputs are saved (`<dir>/<target>-<seed>-<iteration>.bin`).
    pub crash_dir: Option<PathBuf>,
    /// Print progress (inputs per second) to stderr every few seconds.
    pub progress: bool,
    /// Crashes reported in full per target (the first at each panic location); later
    /// ones are only counted.
    pub crashes_max: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            inputs: 10_000,
            seed: 1,
            crash_dir: None,
            progress: false,
            crashes_max: 10,
        }
    }
}

/// A panic of a target on one input.
#[derive(Clone, Debug)]
pub struct Crash {
    /// The target.
    pub target: &'static str,
    /// The run's seed.
    pub seed: u64,
    /// Which input of the run (0-based): `--seed S --inputs <iteration + 1>` reaches it.
    pub iteration: u64,
    /// The input.
    pub input: Vec<u8>,
    /// The panic message and where it was raised.
    pub panic: String,
    /// The backtrace of the panic.
    pub backtrace: String,
    /// Where the input was saved, if a crash dir was given and the write succeeded.
    pub saved: Option<PathBuf>,
}

impl Crash {
    /// A report of the crash for a person: target, seed, panic, input in hex, backtrace.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut out = format!(
            "CRASH target={} seed={} iteration={} len={}\npanic: {}\ninput (hex): {}\n",
            self.target,
            self.seed,
            self.iteration,
            self.input.len(),
            self.panic,
            hex(&self.input)
        );
        if let Some(path) = &self.saved {
            let _ = writeln!(out, "saved: {}", path.display());
        }
        let _ = writeln!(out, "backtrace:\n{}", self.backtrace);
        out
    }
}

/// What a target's run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs run.
    pub inputs: u64,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    /// Seeds the decoder refused (each one is a broken seed, not a finding).
    pub seeds_refused: usize,
    /// Inputs in the corpus at the end.
    pub corpus: usize,
    /// Panics, the first at each panic location, in the order found.
    pub crashes: Vec<Crash>,
    /// Inputs that panicked (at any location).
    pub crashing_inputs: u64,
    /// Wall-clock time of the run.
    pub seconds: f64,
}

impl Report {
    /// The summary line: `target=... inputs=... crashes=... seconds=...`.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "target={} inputs={} accepted={} corpus={} crashes={} crashing_inputs={} seconds={:.1}",
            self.target,
            self.inputs,
            self.accepted,
            self.corpus,
            self.crashes.len(),
            self.crashing_inputs,
            self.seconds
        )
    }
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of a hex string (whitespace ignored), or `None` if it is not hex.
#[must_use]
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// How often progress is printed (with `Options::progress`).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Largest corpus kept per target: accepted mutants beyond it replace older mutants.
const CORPUS_MAX: usize = 2048;
/// Smallest cap on a mutant's length (targets with larger seeds get four times the
/// largest seed).
const INPUT_BYTES_MIN_CAP: usize = 4096;
/// Largest cap on a mutant's length.
const INPUT_BYTES_MAX_CAP: usize = 1 << 20;

thread_local! {
    /// Set while a target runs on this thread: its panics are captured, not printed.
    static CAPTURING: RefCell<bool> = const { RefCell::new(false) };
    /// The crash dir of the run in progress (for [`CappedAllocator`]'s report).
    static CRASH_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    /// Panic locations already reported in full by the run on this thread.
    static REPORTED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
    /// The last captured panic: message with location, and backtrace (resolved to text
    /// only for a crash reported, since symbolising costs milliseconds).
    static CAPTURED: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that captures panics raised while a target
/// runs on the current thread and hands every other panic to the previous hook, so test
/// failures elsewhere still print as usual.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CAPTURING.with(|c| *c.borrow()) {
                previous(info);
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-text panic payload)".to_string());
            let location = info.location().map_or_else(
                || "(unknown)".to_string(),
                |l| format!("{}:{}", l.file(), l.line()),
            );
            // A backtrace costs far more than the input's run: take one only for a panic
            // location not reported yet.
            let known = REPORTED.with(|r| r.borrow().contains(&location));
            let captured = Captured {
                message,
                backtrace: if known {
                    Backtrace::disabled()
                } else {
                    Backtrace::force_capture()
                },
                location,
            };
            CAPTURED.with(|c| *c.borrow_mut() = Some(captured));
        }));
    });
}

/// Runs `target` on `input` once, catching a panic: `Ok(accepted)` or `Err((panic,
/// backtrace))`.
pub fn run_one(target: &Target, input: &[u8]) -> Result<bool, (String, String)> {
    run_captured(target, input, 0, 0).map_err(|c| (c.panic(), c.backtrace.to_string()))
}

/// A panic caught by the hook.
struct Captured {
    message: String,
    /// `file:line` of the panic: crashes at one location count as one bug.
    location: String,
    backtrace: Backtrace,
}

impl Captured {
    fn panic(&self) -> String {
        format!("{} at {}", self.message, self.location)
    }
}

/// Runs `target` on `input` (iteration `iteration` of the run seeded `seed`) with panics
/// captured and oversized allocations refused ([`CappedAllocator`]).
fn run_captured(
    target: &Target,
    input: &[u8],
    seed: u64,
    iteration: u64,
) -> Result<bool, Captured> {
    install_panic_hook();
    CAPTURING.with(|c| *c.borrow_mut() = true);
    let running = Running {
        target: target.name,
        seed,
        iteration,
        input: (input.as_ptr() as usize, input.len()),
    };
    RUNNING.with(|r| r.set(Some(running)));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    RUNNING.with(|r| r.set(None));
    CAPTURING.with(|c| *c.borrow_mut() = false);
    result.map_err(|_| {
        CAPTURED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| Captured {
                message: "panic (not captured)".to_string(),
                location: "(unknown)".to_string(),
                backtrace: Backtrace::disabled(),
            })
    })
}

/// The generator of one input: a function of the seed, the target and the iteration. (The
/// input it mutates comes from the corpus, which depends on the inputs before it: a run
/// replays exactly as a whole.)
fn input_rng(seed: u64, target: &str, iteration: u64) -> Rng {
    // FNV-1a of the name, so two targets of one run differ.
    let name = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut mix = Rng::new(seed ^ name.rotate_left(17) ^ iteration.wrapping_mul(0x9e37_79b9));
    Rng::new(mix.next_u64())
}

fn save_crash(dir: &Path, crash: &Crash) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!(
        "{}-{}-{}.bin",
        crash.target, crash.seed, crash.iteration
    ));
    std::fs::write(&path, &crash.input).ok()?;
    std::fs::write(path.with_extension("txt"), crash.describe()).ok()?;
    Some(path)
}

/// Fuzzes `target` with `options`: the seeds first (unmutated), then mutants of the
/// corpus. Every crashing input is counted; the first at each panic location (up to
/// `crashes_max`) is in the report in full, and saved if a crash dir was given.
#[must_use]
pub fn fuzz(target: &Target, options: &Options) -> Report {
    let started = Instant::now();
    let seeds = (target.seeds)();
    let len_max = seeds
        .iter()
        .map(|s| s.len().saturating_mul(4))
        .max()
        .unwrap_or(0)
        .clamp(INPUT_BYTES_MIN_CAP, INPUT_BYTES_MAX_CAP);
    let mut corpus: Vec<Vec<u8>> = seeds.clone();
    let mut report = Report {
        target: target.name,
        inputs: 0,
        accepted: 0,
        seeds_refused: 0,
        corpus: 0,
        crashing_inputs: 0,
        crashes: Vec::new(),
        seconds: 0.0,
    };
    CRASH_DIR.with(|d| d.borrow_mut().clone_from(&options.crash_dir));
    REPORTED.with(|r| r.borrow_mut().clear());
    let mut last_progress = Instant::now();
    let mut inputs_at_last_progress = 0;
    for iteration in 0..options.inputs {
        let mut rng = input_rng(options.seed, target.name, iteration);
        let input = match usize::try_from(iteration).ok().and_then(|i| seeds.get(i)) {
            Some(seed) => seed.clone(),
            None if corpus.is_empty() => Vec::new(),
            None => {
                let mut data = corpus[below(&mut rng, corpus.len())].clone();
                mutate::mutate(&mut rng, &mut data, &corpus, len_max);
                if let Some(fixup) = target.fixup {
                    if rng.below(2) == 0 {
                        fixup(&mut data, &mut rng);
                    }
                }
                data
            }
        };
        let is_seed = (iteration as usize) < seeds.len();
        report.inputs += 1;
        match run_captured(target, &input, options.seed, iteration) {
            Ok(true) => {
                report.accepted += 1;
                if !is_seed {
                    if corpus.len() < CORPUS_MAX {
                        corpus.push(input);
                    } else if rng.below(8) == 0 {
                        // Keep the seeds; replace a mutant.
                        let at = seeds.len() + below(&mut rng, corpus.len() - seeds.len());
                        corpus[at] = input;
                    }
                }
            }
            Ok(false) => {
                if is_seed {
                    report.seeds_refused += 1;
                }
            }
            Err(captured) => {
                report.crashing_inputs += 1;
                // One report per panic location: the rest are the same bug again.
                if report.crashes.len() < options.crashes_max
                    && REPORTED.with(|r| r.borrow_mut().insert(captured.location.clone()))
                {
                    let mut crash = Crash {
                        target: target.name,
                        seed: options.seed,
                        iteration,
                        input,
                        panic: captured.panic(),
                        backtrace: captured.backtrace.to_string(),
                        saved: None,
                    };
                    if let Some(dir) = &options.crash_dir {
                        crash.saved = save_crash(dir, &crash);
                    }
                    report.crashes.push(crash);
                }
            }
        }
        if options.progress && iteration % 64 == 0 {
            let since = last_progress.elapsed();
            if since >= PROGRESS_INTERVAL {
                let rate = (report.inputs - inputs_at_last_progress) as f64 / since.as_secs_f64();
                eprintln!(
                    "  {} inputs={}/{} rate={rate:.0}/s corpus={} crashes={}",
                    target.name,
                    report.inputs,
                    options.inputs,
                    corpus.len(),
                    report.crashes.len()
                );
                last_progress = Instant::now();
                inputs_at_last_progress = report.inputs;
            }
        }
    }
    report.corpus = corpus.len();
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn below(rng: &mut Rng, bound: usize) -> usize {
    usize::try_from(rng.below(bound as u64)).unwrap_or(0)
}

/// Largest single allocation a target may make while it runs (256 MiB): inputs are at most
/// 1 MiB, so a decoder asking for more believed a number it should have checked.
pub const ALLOCATION_BYTES_MAX: usize = 256 << 20;

/// The run in progress on a thread, for the report of an absurd allocation.
#[derive(Clone, Copy)]
struct Running {
    target: &'static str,
    seed: u64,
    iteration: u64,
    /// Address and length of the input being run (borrowed for the run's duration).
    input: (usize, usize),
}

thread_local! {
    /// The run in progress on this thread, if any.
    static RUNNING: Cell<Option<Running>> = const { Cell::new(None) };
}

/// The system allocator, refusing any allocation over [`ALLOCATION_BYTES_MAX`] made while a
/// target runs on the thread: such an allocation is reported as a crash (target, seed,
/// iteration, input in hex, saved under the crash dir when one was given) and the process
/// aborts, since an allocation failure cannot be unwound on stable Rust. Without it, a
/// decoder believing a length of 2^30 would first eat the machine's memory. Install it in
/// a binary with `#[global_allocator]`.
pub struct CappedAllocator;

// SAFETY: every call is forwarded to `System` unchanged, except an oversized allocation
// during a run, which never returns (the process aborts after the report).
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            absurd_allocation(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            absurd_allocation(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            absurd_allocation(new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Reports an oversized allocation made during a run and aborts; returns (does nothing)
/// outside a run.
fn absurd_allocation(size: usize) {
    let Some(running) = RUNNING.with(Cell::take) else {
        return;
    };
    let (address, len) = running.input;
    // SAFETY: `run_captured` sets RUNNING to the input it runs, which lives (borrowed,
    // unmoved) until the run ends and RUNNING is cleared; we are inside that run.
    let input = unsafe { std::slice::from_raw_parts(address as *const u8, len) }.to_vec();
    let mut crash = Crash {
        target: running.target,
        seed: running.seed,
        iteration: running.iteration,
        input,
        panic: format!(
            "absurd allocation: {size} bytes in one allocation (limit {ALLOCATION_BYTES_MAX})"
        ),
        backtrace: Backtrace::force_capture().to_string(),
        saved: None,
    };
    if let Some(dir) = CRASH_DIR.with(|d| d.borrow().clone()) {
        crash.saved = save_crash(&dir, &crash);
    }
    eprintln!("{}", crash.describe());
    eprintln!("flotilla-fuzz: aborting (an allocation failure cannot be unwound)");
    std::process::abort();
}
