//! The placement driver's state on a store, apart from what it does: the meta group's
//! peer and state machine wrapper, the PD leader's soft state, the operator counts, and the
//! constants. A leaf of `store::pd` (it names nothing of the store), so that the store's
//! own files can hold a `PdRuntime` without depending on the PD's behaviour.
//!
//! Owns: the shapes of that state. Must never: act (the behaviour is in the sibling files).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flotilla_node::{
    ApplyIter, Configuration, LogIndex, Node, SnapshotReader, SnapshotWriter, StateMachine,
};
use flotilla_pd::{Outcome, PdHandle, PdStateMachine, StoreId};

/// The meta group's raft group id (regions are numbered from 1).
pub const META_GROUP: u64 = 0;
/// How often a store sends its heartbeat to the PD, by default (TiKV: 10 s).
pub const STORE_HEARTBEAT_DEFAULT: Duration = Duration::from_secs(10);
/// A region leader reports an unchanged region this often (TiKV: 60 s).
pub const REGION_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The last configuration a group's state machine heard committed, with its entry's index.
pub(crate) type Committed = Arc<RwLock<Option<(LogIndex, Configuration)>>>;

/// This store's peer of the meta group.
#[derive(Clone)]
pub(crate) struct MetaPeer {
    pub(crate) node: Node,
    pub(crate) handle: PdHandle,
    pub(crate) committed: Committed,
}

impl MetaPeer {
    /// The meta group's last configuration this peer heard committed, with its index.
    pub(crate) fn committed(&self) -> Option<(LogIndex, Configuration)> {
        self.committed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The meta group's state machine, which also keeps the last configuration committed
/// (the meta group is repaired like a region: its reports need a committed configuration
/// and its index as `conf_version`).
pub(crate) struct MetaMachine {
    pub(crate) inner: PdStateMachine,
    pub(crate) committed: Committed,
}

impl StateMachine for MetaMachine {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        self.inner.on_apply(iter);
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        self.inner.on_snapshot_save(writer)
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        self.inner.on_snapshot_load(reader)
    }

    fn on_configuration_committed_at(&mut self, index: LogIndex, configuration: &Configuration) {
        let mut committed = self
            .committed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if committed.as_ref().is_none_or(|(at, _)| *at < index) {
            *committed = Some((index, configuration.clone()));
        }
    }
}

/// The PD as this store runs it.
pub(crate) struct PdRuntime {
    /// This store's labels, sent with its heartbeat.
    pub(crate) labels: BTreeMap<String, String>,
    /// Settings from this store's flags, seeded into the PD configuration once.
    pub(crate) settings: Vec<(String, String)>,
    /// How often the heartbeat goes.
    pub(crate) heartbeat: Duration,
    /// This store's peer of the meta group, if it hosts one.
    pub(crate) meta: Mutex<Option<MetaPeer>>,
    /// What the PD leader knows from heartbeats; reset whenever leadership changes.
    pub(crate) leader: Mutex<LeaderState>,
    /// The PD leader's address as last heard (a heartbeat answer or a refusal's hint).
    pub(crate) known_leader: Mutex<Option<String>>,
    /// The reporting and scheduling tasks, stopped when the store closes.
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Operators started and finished here (metrics).
    pub(crate) counts: Mutex<OperatorCounts>,
    /// Wakes the scheduler when an operator ends.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// The regions this store leads, from their state machines' leader events.
    pub(crate) led: Mutex<LedRegions>,
}

/// The regions a store leads, as their state machines said, and those to report soon:
/// the report loop looks at these instead of every peer every second.
#[derive(Default)]
pub(crate) struct LedRegions {
    pub(crate) led: BTreeSet<u64>,
    /// Led regions whose leadership or configuration changed since the last look.
    pub(crate) dirty: BTreeSet<u64>,
    /// Regions no longer led here since the last look (reported afresh when led again).
    pub(crate) lost: BTreeSet<u64>,
}

impl PdRuntime {
    pub(crate) fn new(
        labels: BTreeMap<String, String>,
        settings: Vec<(String, String)>,
        heartbeat: Duration,
    ) -> PdRuntime {
        PdRuntime {
            labels,
            settings,
            heartbeat,
            meta: Mutex::new(None),
            leader: Mutex::new(LeaderState::default()),
            known_leader: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            counts: Mutex::new(OperatorCounts::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            led: Mutex::new(LedRegions::default()),
        }
    }
}

/// What one store's heartbeats said.
pub(crate) struct StoreSoft {
    /// The first heartbeat this leader received from it.
    pub(crate) first: Instant,
    pub(crate) last: Instant,
    pub(crate) used_bytes: u64,
    /// Regions that counted a peer on it its last peer list lacked (see
    /// `leader::missing_peers`): opened there when the next list lacks them too.
    pub(crate) missing: BTreeSet<u64>,
    /// Regions whose replica on it stopped, as its last heartbeat said.
    pub(crate) failed: BTreeSet<u64>,
}

/// Merge sources the PD leader remembers (ids grow, so the smallest go first).
pub(crate) const MERGED_REMEMBERED: usize = 4096;

/// What one region's leader last reported beyond the durable record.
pub(crate) struct RegionSoft {
    pub(crate) leader: StoreId,
    pub(crate) joint: bool,
    /// Bytes of keys and values, as its leader last measured them.
    pub(crate) bytes: u64,
    /// Keys, as its leader last measured them.
    pub(crate) keys: u64,
    /// Keys written per second through its leader, as last reported.
    pub(crate) write_rate: u64,
    /// Since when its reports have said `write_rate` is at or above `region-split-load`
    /// (`None`: the last one did not).
    pub(crate) hot_since: Option<Instant>,
    /// The region's version in its last report.
    pub(crate) version: u64,
    /// Since when its reports have carried that version (to this leader): a region may
    /// merge once this is `split-merge-interval` old.
    pub(crate) version_since: Instant,
    /// When its leader last reported it.
    pub(crate) at: Instant,
}

/// The PD leader's soft state (empty on any other store).
#[derive(Default)]
pub(crate) struct LeaderState {
    /// The meta group term it was gathered in.
    pub(crate) term: u64,
    /// When this store became leader in that term.
    pub(crate) since: Option<Instant>,
    /// Whether this leader seeded the configuration from its flags.
    pub(crate) seeded: bool,
    pub(crate) stores: HashMap<StoreId, StoreSoft>,
    pub(crate) regions: HashMap<u64, RegionSoft>,
    /// Operators being driven, by id, with when they started here.
    pub(crate) running: HashMap<u64, Instant>,
    /// Regions a person's command holds, with who and since when.
    pub(crate) held: BTreeMap<u64, (String, Instant)>,
    /// Merge sources whose merge ended done (the newest [`MERGED_REMEMBERED`]): nothing is
    /// planned on them while their record is still there (an operator on a region that is
    /// gone would block the target's report until it timed out), and a replica of one
    /// left on a store is named stale.
    pub(crate) merged: std::collections::BTreeSet<u64>,
    /// Targets of merges that ended done, with the version their record had then: nothing
    /// is planned on one until its leader reported the merged range (a replica added from
    /// the old record would be opened over the old range), or for a minute at most.
    pub(crate) merge_targets: BTreeMap<u64, (u64, Instant)>,
    /// Merge operators whose commit waits for source replicas, since when.
    pub(crate) commit_waits: HashMap<u64, Instant>,
    /// Peers added and removed per store, with when (the per-minute limits).
    pub(crate) recent: HashMap<StoreId, Vec<(Instant, bool)>>,
    /// Regions named as without quorum (logged once each).
    pub(crate) no_quorum: BTreeSet<u64>,
    /// When an operator on a region last finished: the region is not planned again until
    /// its leader reported it since (the record may not show the operator's work yet).
    pub(crate) finished_at: HashMap<u64, Instant>,
    /// Bumped by every change of the above that could change a plan (a region's leader
    /// or joint state, a store heard first, a hold): with the meta group's applied index
    /// and the stores' states it tells the scheduler whether anything moved.
    pub(crate) generation: u64,
    /// What the last round that planned nothing looked at, and when it ran.
    pub(crate) quiet: Option<(Fingerprint, Instant)>,
}

/// What a scheduling round's outcome depends on, short of the whole view.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub(crate) applied: u64,
    pub(crate) generation: u64,
    /// Per store: id, state, adds and removes in the last minute.
    pub(crate) stores: Vec<(StoreId, u8, u32, u32)>,
}

impl LeaderState {
    /// Counts of adds and removes on `store` in the last minute.
    pub(crate) fn recent_counts(&self, store: StoreId) -> (u32, u32) {
        let Some(list) = self.recent.get(&store) else {
            return (0, 0);
        };
        let minute = Duration::from_secs(60);
        let live = list.iter().filter(|(at, _)| at.elapsed() < minute);
        let (mut adds, mut removes) = (0, 0);
        for (_, add) in live {
            if *add {
                adds += 1;
            } else {
                removes += 1;
            }
        }
        (adds, removes)
    }

    /// Records an add (`true`) or a removal on `store` now.
    pub(crate) fn note(&mut self, store: StoreId, add: bool) {
        let list = self.recent.entry(store).or_default();
        list.retain(|(at, _)| at.elapsed() < Duration::from_secs(60));
        list.push((Instant::now(), add));
    }
}

/// Operators started and finished by this process, by kind (and outcome).
#[derive(Default)]
pub(crate) struct OperatorCounts {
    pub(crate) started: BTreeMap<&'static str, u64>,
    pub(crate) finished: BTreeMap<(&'static str, &'static str), u64>,
}

impl OperatorCounts {
    pub(crate) fn started(&mut self, kind: &'static str) {
        *self.started.entry(kind).or_default() += 1;
    }

    pub(crate) fn finished(&mut self, kind: &'static str, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Done => "done",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::TimedOut(_) => "timed_out",
        };
        *self.finished.entry((kind, outcome)).or_default() += 1;
    }
}
