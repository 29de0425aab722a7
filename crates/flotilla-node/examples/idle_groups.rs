//! What idle groups cost: hosts N raft groups (1,000 by default) replicated on three
//! `NodeManager`s in this one process, joined by `LocalTransport` (frames handed over as
//! values: no sockets, no encoding), waits for every group to elect a leader and settle,
//! then measures this process's CPU time over an idle window, with hibernation off and on.
//!
//! ```text
//! cargo run --release -p flotilla-node --example idle_groups -- \
//!     [--groups 1000] [--seconds 20] [--mode both|on|off] [--tick-ms 100]
//! ```
//!
//! Options are the runtime's defaults (100 ms tick, SOFAJRaft's 1 s election timeout and
//! 100 ms heartbeat; hibernation after 20 quiet ticks) unless `--tick-ms` changes the tick.
//! CPU time is utime + stime of `/proc/self/stat` (Linux, in clock ticks of 10 ms: the
//! kernel's USER_HZ is 100 on every mainstream architecture), so it covers all three
//! managers, the tokio workers and the blocking pool. Printed per mode: CPU as a percentage
//! of one core, CPU microseconds per second per group (of the 3 x N peers, divided by N),
//! rounds, frames and raft messages per second, and beacons. Data goes to a fresh
//! directory under the system temp dir, removed at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_node::{
    ApplyIter, GroupId, LocalTransport, ManagerOptions, ManagerStats, NodeManager, PeerId,
    StateMachine,
};
use flotilla_storage::{SnapshotReader, SnapshotWriter};

const USAGE: &str =
    "usage: idle_groups [--groups N] [--seconds S] [--mode both|on|off] [--tick-ms T]";
/// Longest wait for elections and for every group to hibernate.
const SETTLE_MAX: Duration = Duration::from_secs(300);
/// With hibernation off, how long to let elections settle before measuring.
const SETTLE_AWAKE: Duration = Duration::from_secs(5);
/// Group creations in flight at once (the manager's control queue holds 64).
const ADDS_IN_FLIGHT_MAX: usize = 32;
/// Kernel clock ticks per second of `/proc/self/stat` times (USER_HZ).
const USER_HZ: u64 = 100;

/// A state machine with nothing to do: the measure is of the runtime alone.
struct Idle;

impl StateMachine for Idle {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        for task in iter {
            if let Some(completion) = task.completion {
                completion.complete(Ok(bytes::Bytes::new()));
            }
        }
    }

    fn on_snapshot_save(&mut self, _writer: &mut SnapshotWriter) -> Result<(), String> {
        Ok(())
    }

    fn on_snapshot_load(&mut self, _reader: &SnapshotReader) -> Result<(), String> {
        Ok(())
    }
}

struct Args {
    groups: u64,
    seconds: u64,
    modes: Vec<bool>,
    tick: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        groups: 1000,
        seconds: 20,
        modes: vec![false, true],
        tick: Duration::from_millis(100),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} expects a positive integer, got {v:?}"))
        };
        match flag.as_str() {
            "--groups" => args.groups = number("--groups", value("--groups")?)?,
            "--seconds" => args.seconds = number("--seconds", value("--seconds")?)?,
            "--tick-ms" => {
                args.tick = Duration::from_millis(number("--tick-ms", value("--tick-ms")?)?)
            }
            "--mode" => {
                args.modes = match value("--mode")?.as_str() {
                    "both" => vec![false, true],
                    "on" => vec![true],
                    "off" => vec![false],
                    other => return Err(format!("--mode is both, on or off, not {other:?}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// This process's CPU time so far (user + system, every thread).
fn cpu_time() -> Result<Duration, String> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("reading /proc/self/stat: {e}"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are
    // space-separated, starting with field 3 (state). utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("no ')' in /proc/self/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .ok_or_else(|| format!("/proc/self/stat has no field {n}"))?
            .parse()
            .map_err(|e| format!("/proc/self/stat field {n}: {e}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

struct Cluster {
    managers: Vec<Arc<NodeManager>>,
    root: PathBuf,
}

async fn start(args: &Args, hibernation: bool) -> Result<Cluster, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let root = std::env::temp_dir().join(format!(
        "flotilla-idle-groups-{}-{nanos}",
        std::process::id()
    ));
    let transport = LocalTransport::new();
    let peers: Vec<PeerId> = (1..=3)
        .map(|i| PeerId::new(&format!("127.0.0.1:{}", 7100 + i)))
        .collect();
    let mut managers = Vec::new();
    for (i, address) in peers.iter().enumerate() {
        let mut options = ManagerOptions::new(address.clone(), root.join(format!("p{i}")));
        options.tick = args.tick;
        options.hibernation = hibernation;
        options.raft.snapshot_interval_ticks = 0;
        let manager = NodeManager::open(options, Arc::new(transport.clone()))
            .await
            .map_err(|e| format!("opening manager {address}: {e}"))?;
        transport.register(address, manager.inbox());
        managers.push(Arc::new(manager));
    }
    let mut adds = tokio::task::JoinSet::new();
    for group in 1..=args.groups {
        for manager in &managers {
            while adds.len() >= ADDS_IN_FLIGHT_MAX {
                joined(adds.join_next().await)?;
            }
            let (manager, peers) = (manager.clone(), peers.clone());
            adds.spawn(async move {
                manager
                    .add_group(group, peers, Idle)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("adding group {group}: {e}"))
            });
        }
    }
    while let Some(done) = adds.join_next().await {
        joined(Some(done))?;
    }
    Ok(Cluster { managers, root })
}

fn joined(done: Option<Result<Result<(), String>, tokio::task::JoinError>>) -> Result<(), String> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(format!("group creation task failed: {e}")),
        None => Ok(()),
    }
}

/// Waits until every group has a leader that committed (all peers agree on it), and with
/// hibernation until every group sleeps on every manager.
async fn settle(cluster: &Cluster, groups: u64, hibernation: bool) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let elected = (1..=groups as GroupId).all(|group| {
            cluster.managers.iter().any(|m| {
                m.node(group)
                    .is_some_and(|n| n.is_leader() && n.committed_index().get() > 0)
            })
        });
        let sleeping = cluster
            .managers
            .iter()
            .all(|m| m.stats().groups_hibernating == groups);
        if elected && (!hibernation || sleeping) {
            if !hibernation {
                tokio::time::sleep(SETTLE_AWAKE).await;
            }
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE_MAX {
            let sleeping: Vec<u64> = cluster
                .managers
                .iter()
                .map(|m| m.stats().groups_hibernating)
                .collect();
            return Err(format!(
                "not settled after {SETTLE_MAX:?}: elected={elected} hibernating={sleeping:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn totals(cluster: &Cluster) -> ManagerStats {
    let mut sum = ManagerStats::default();
    for m in &cluster.managers {
        let s = m.stats();
        sum.rounds += s.rounds;
        sum.frames_sent += s.frames_sent;
        sum.messages_sent += s.messages_sent;
        sum.beacons_sent += s.beacons_sent;
        sum.group_wakes += s.group_wakes;
        sum.groups_hibernating += s.groups_hibernating;
    }
    sum
}

async fn measure(args: &Args, hibernation: bool) -> Result<(), String> {
    let mode = if hibernation { "on" } else { "off" };
    let cluster = start(args, hibernation).await?;
    let settled = settle(&cluster, args.groups, hibernation).await?;
    let (cpu0, wall0, stats0) = (cpu_time()?, Instant::now(), totals(&cluster));
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, wall, stats1) = (cpu_time()?, wall0.elapsed(), totals(&cluster));
    let cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    let wall_s = wall.as_secs_f64();
    let per_second = |a: u64, b: u64| (b - a) as f64 / wall_s;
    println!(
        "hibernation={mode}: {} groups x 3 peers, settled in {:.1}s, idle {:.1}s: \
         cpu {:.2}% of one core, {:.1} us/s per group; rounds {:.0}/s, frames {:.0}/s, \
         raft messages {:.0}/s, beacons {:.0}/s, wakes {}, hibernating {}",
        args.groups,
        settled.as_secs_f64(),
        wall_s,
        100.0 * cpu / wall_s,
        cpu / wall_s * 1e6 / args.groups as f64,
        per_second(stats0.rounds, stats1.rounds),
        per_second(stats0.frames_sent, stats1.frames_sent),
        per_second(stats0.messages_sent, stats1.messages_sent),
        per_second(stats0.beacons_sent, stats1.beacons_sent),
        stats1.group_wakes - stats0.group_wakes,
        stats1.groups_hibernating,
    );
    for manager in &cluster.managers {
        manager.shutdown().await;
    }
    if let Err(e) = std::fs::remove_dir_all(&cluster.root) {
        eprintln!("could not remove {}: {e}", cluster.root.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "idle_groups: {} groups on 3 managers in one process over LocalTransport, tick {:?}, \
         {} s idle per mode, {cpus} CPUs",
        args.groups, args.tick, args.seconds
    );
    for &hibernation in &args.modes {
        if let Err(e) = measure(&args, hibernation).await {
            eprintln!("idle_groups: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
