//! What a seed simulates: [`SimConfig`] (cluster size, fault time, clients, storage mode,
//! hibernation, the outsider), the time unit ([`TICK`]) and clock drift bound, and the
//! per-seed core options drawn from the seed. Plain configuration: it must never hold run
//! state.

use flotilla_raft::{Config, PeerId, Rng};

/// Simulated time units per core tick (think milliseconds: a 100 ms tick).
pub const TICK: u64 = 100;

/// Bound on clock drift between nodes, in percent of the tick. Leases stay safe while the
/// drift is well under the 10% margin between the lease (90% of the election timeout) and
/// the followers' vote guard (a full election timeout).
pub const CLOCK_DRIFT_PERCENT: u64 = 3;

/// Which disk the simulated nodes run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// An in-memory log: a completed write updates it, a crash keeps it.
    #[default]
    Memory,
    /// The real storage module (`SharedLog` and `FileMetaStorage`) over a simulated file
    /// system: a crash keeps only fsynced bytes (sometimes plus a torn prefix of the write
    /// in flight), and every restart recovers the log and checks it against what was
    /// acknowledged as durable.
    SharedLog,
}

impl std::str::FromStr for StorageMode {
    type Err = String;

    fn from_str(s: &str) -> Result<StorageMode, String> {
        match s {
            "memory" => Ok(StorageMode::Memory),
            "shared-log" => Ok(StorageMode::SharedLog),
            other => Err(format!(
                "unknown storage mode {other:?}: expected memory or shared-log"
            )),
        }
    }
}

/// Segment size of the simulated shared log: small, so segments rotate and are reclaimed.
pub const SIM_SEGMENT_BYTES: u64 = 16 * 1024;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: everything else follows from it.
    pub seed: u64,
    /// Cluster size (3, 5 or 7 in the standard runs).
    pub nodes: usize,
    /// Length of the fault phase, in time units.
    pub fault_time: u64,
    /// After every fault heals, a leader must commit within this many ticks.
    pub liveness_bound_ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers the clients use.
    pub keys: u64,
    /// Budget of the linearizability search, per key.
    pub checker_states_max: u64,
    /// The nodes' disk.
    pub storage: StorageMode,
    /// Idle groups hibernate (`Config::hibernate_idle_ticks` drawn per seed), and the
    /// simulator drives them as the runtime does: a hibernating core is not ticked, and each
    /// node hears per-tick liveness beacons from the others (blocked by partitions, missing
    /// while a node is crashed or paused) and wakes a hibernating follower to campaign when
    /// its leader is silent for an election timeout or restarted, and a hibernating leader
    /// when a peer restarted.
    pub hibernation: bool,
    /// A hostile outsider: a process that is no member of the group sends
    /// well-formed messages with inflated terms — votes (some flagged as leadership
    /// transfers), AppendEntries carrying forged writes and a commit, heartbeats, and
    /// TimeoutNow — to random members, throughout the run, the liveness phase included.
    /// Safety and liveness must hold as without it.
    pub outsider: bool,
    /// Planted protocol mistakes (planted-bug test only).
    #[cfg(feature = "planted-bugs")]
    pub bugs: flotilla_raft::PlantedBugs,
}

impl SimConfig {
    /// The standard run for `seed` on `nodes` nodes.
    #[must_use]
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            fault_time: 40_000,
            liveness_bound_ticks: 300,
            clients: 5,
            keys: 4,
            checker_states_max: 2_000_000,
            storage: StorageMode::Memory,
            hibernation: false,
            outsider: false,
            #[cfg(feature = "planted-bugs")]
            bugs: flotilla_raft::PlantedBugs::default(),
        }
    }
}

/// Per-seed core options: small limits in some seeds so that message splitting, windows
/// and snapshots are exercised.
pub(super) fn random_raft_config(rng: &mut Rng) -> Config {
    let mut config = Config::new(PeerId::new("template"));
    config.append_entries_max = [1, 3, 64, 1024][rng.below(4) as usize];
    config.append_bytes_max = [200, 4096, 512 * 1024][rng.below(3) as usize];
    config.inflight_msgs_max = [1, 4, 256][rng.below(3) as usize];
    config.snapshot_interval_ticks = [0, 30, 100][rng.below(3) as usize];
    config.snapshot_log_margin = [0, 20][rng.below(2) as usize];
    config.catchup_margin = [0, 10, 1000][rng.below(3) as usize];
    config.catchup_timeout_ticks = 20;
    config
}
