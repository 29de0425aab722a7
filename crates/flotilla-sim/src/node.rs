//! One simulated process: a core, its durable state, its in-flight writes and its state
//! machine.
//!
//! Owns: what survives a crash (the durable log, hard state and snapshot) and what does not
//! (the core, writes not yet reported durable, the state machine, client requests). Must
//! never: make a write durable before its completion time, or out of order.
//!
//! Two kinds of disk ([`Disk`]): an in-memory log that a completion updates directly, or the
//! real storage module (`SharedLog` and `FileMetaStorage`) over a simulated file system
//! whose crash keeps only what was fsynced, plus optionally a torn prefix of a write that
//! was in flight.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use flotilla_raft::{
    Entry, HardState, LogIndex, LogStore, MemStorage, Message, PeerId, Raft, Role, SnapshotMeta,
    StoreError, Term,
};
use flotilla_storage::fs::SimFs;
use flotilla_storage::{
    FileMetaStorage, GroupId, GroupLog, LogOptions, MetaStorage, RaftMeta, SharedLog, WriteBatch,
};

use crate::chain::Chain;
use crate::kv::KvState;

/// A snapshot as the simulated state machine stores it.
#[derive(Clone, Debug)]
pub struct SimSnapshot {
    /// Raft's metadata.
    pub meta: SnapshotMeta,
    /// The registers at `meta.index`.
    pub kv: KvState,
    /// Chain hash of the applied log at `meta.index`.
    pub chain_hash: u64,
}

/// The group every simulated node stores in its shared log.
pub const GROUP: GroupId = 1;

/// Where the shared log lives on a node's simulated file system.
const LOG_DIR: &str = "/flotilla/log";
/// Where the raft meta lives on a node's simulated file system.
const META_DIR: &str = "/flotilla/meta";

/// The log store a core runs on: the simulator's in-memory log, or one group of the real
/// shared log (whose snapshot metadata lives with the simulator's snapshots, as it will
/// live in the snapshot store for the runtime).
#[derive(Clone, Debug)]
pub enum SimStore {
    /// `MemStorage`, shared with the node's durable copy.
    Memory(MemStorage),
    /// Group [`GROUP`] of a `SharedLog`, with the snapshot the core starts from.
    SharedLog {
        /// The group's view of the log.
        log: GroupLog,
        /// The durable snapshot's metadata (or the bootstrap configuration at index 0).
        snapshot: SnapshotMeta,
    },
}

impl LogStore for SimStore {
    fn first_index(&self) -> LogIndex {
        match self {
            SimStore::Memory(m) => m.first_index(),
            SimStore::SharedLog { log, .. } => LogStore::first_index(log),
        }
    }

    fn last_index(&self) -> LogIndex {
        match self {
            SimStore::Memory(m) => m.last_index(),
            SimStore::SharedLog { log, .. } => LogStore::last_index(log),
        }
    }

    fn term(&self, index: LogIndex) -> Result<Term, StoreError> {
        match self {
            SimStore::Memory(m) => m.term(index),
            SimStore::SharedLog { log, .. } => LogStore::term(log, index),
        }
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        match self {
            SimStore::Memory(m) => m.entries(low, high, bytes_max),
            SimStore::SharedLog { log, .. } => log.entries(low, high, bytes_max),
        }
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        match self {
            SimStore::Memory(m) => m.snapshot_meta(),
            SimStore::SharedLog { snapshot, .. } => snapshot.clone(),
        }
    }
}

/// A node's disk.
#[derive(Debug)]
pub enum Disk {
    /// The durable log as a `MemStorage` (hard state and snapshot live in [`SimNode`]).
    Memory(MemStorage),
    /// The real storage module over a simulated file system.
    SharedLog(Box<SharedDisk>),
}

/// The real storage module of one node: a `SharedLog` and a `FileMetaStorage` over a
/// `SimFs`. Both are `None` while the node is down (they are reopened, that is recovered,
/// at every start).
#[derive(Debug)]
pub struct SharedDisk {
    /// The simulated file system: survives crashes, keeping what was fsynced.
    pub fs: SimFs,
    /// The open log.
    pub log: Option<SharedLog>,
    /// The open meta store.
    pub meta: Option<FileMetaStorage>,
    /// Limits of the log (small segments, so they rotate and are reclaimed).
    pub options: LogOptions,
    /// Oldest segment sequence seen so far (to count reclaimed segments).
    pub oldest_segment: u64,
}

impl SharedDisk {
    /// An empty disk.
    #[must_use]
    pub fn new(options: LogOptions) -> SharedDisk {
        SharedDisk {
            fs: SimFs::new(),
            log: None,
            meta: None,
            options,
            oldest_segment: 1,
        }
    }

    /// Opens (recovers) the log and the meta store from what the file system holds, and
    /// returns the durable term and vote.
    pub fn open(&mut self) -> Result<RaftMeta, String> {
        let fs: Arc<SimFs> = Arc::new(self.fs.clone());
        let log = SharedLog::open(fs.clone(), Path::new(LOG_DIR), self.options.clone())
            .map_err(|e| format!("opening the shared log: {e}"))?;
        let meta = FileMetaStorage::open(fs, META_DIR)
            .map_err(|e| format!("opening the meta store: {e}"))?;
        let raft_meta = meta
            .load(GROUP)
            .map_err(|e| format!("loading the meta: {e}"))?;
        self.log = Some(log);
        self.meta = Some(meta);
        Ok(raft_meta)
    }

    /// Writes one batch (one write, one fsync) and, if given, the new term and vote.
    pub fn write(&mut self, batch: &WriteBatch, meta: Option<&RaftMeta>) -> Result<(), String> {
        let (Some(log), Some(store)) = (self.log.as_ref(), self.meta.as_mut()) else {
            return Err("the disk is not open".into());
        };
        if let Some(meta) = meta {
            store
                .save(GROUP, meta)
                .map_err(|e| format!("saving the meta: {e}"))?;
        }
        log.write(batch)
            .map_err(|e| format!("writing the shared log: {e}"))
    }

    /// Segments removed since the last call (the oldest sequence moved on).
    pub fn take_reclaimed(&mut self) -> u64 {
        let Some(oldest) = self
            .log
            .as_ref()
            .and_then(|l| l.segments().first().copied())
        else {
            return 0;
        };
        let reclaimed = oldest.saturating_sub(self.oldest_segment);
        self.oldest_segment = self.oldest_segment.max(oldest);
        reclaimed
    }

    /// Power loss. If `in_flight` is given, its record is appended first but its fsync
    /// never happens (the write was in flight when the power went); `torn` then chooses
    /// how many unsynced bytes of each file survive. Returns nothing: what survives is
    /// found by the next [`SharedDisk::open`].
    pub fn crash(&mut self, in_flight: Option<&WriteBatch>, torn: impl FnMut(usize) -> usize) {
        if let (Some(batch), Some(log)) = (in_flight, self.log.as_ref()) {
            // The append is the next operation; the fsync after it fails, so the log
            // refuses the batch (and is failed, which no longer matters).
            self.fs.stop_at(self.fs.operations() + 1);
            let _refused = log.write(batch);
        }
        self.log = None;
        self.meta = None;
        self.fs.crash(torn);
    }
}

/// The batch that makes a pending write durable in the shared log: the compaction, then
/// the entries, then (if given) the reset to an installed snapshot.
#[must_use]
pub fn write_batch(write: &PendingWrite, reset: Option<(LogIndex, Term)>) -> WriteBatch {
    let mut batch = WriteBatch::new();
    if let Some((index, term)) = write.compact {
        batch.truncate_prefix(GROUP, index, term);
    }
    batch.append(GROUP, &write.entries);
    if let Some((index, term)) = reset {
        batch.reset(GROUP, index, term);
    }
    batch
}

/// One `Ready`'s worth of durable work, completing at `done_at`.
#[derive(Debug)]
pub struct PendingWrite {
    /// Hard state to store.
    pub hard_state: Option<HardState>,
    /// Entries to store (overwriting from the first one's index).
    pub entries: Vec<Entry>,
    /// Prefix to drop.
    pub compact: Option<(LogIndex, Term)>,
    /// Messages to send once durable.
    pub after: Vec<Message>,
    /// Snapshot to install, and where from.
    pub snapshot: Option<(SnapshotMeta, PeerId)>,
    /// Completion time.
    pub done_at: u64,
}

/// A client request a node is working on: who asked and which operation.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Client index.
    pub client: usize,
    /// Operation id.
    pub op_id: u64,
}

/// One simulated process.
pub struct SimNode {
    /// Peer id.
    pub id: PeerId,
    /// The core, `None` while crashed.
    pub raft: Option<Raft<SimStore>>,
    /// Bumped at every restart; stale completions carry an older one.
    pub incarnation: u64,
    /// Paused (SIGSTOP): nothing runs; ticks and messages wait.
    pub paused: bool,
    /// Ticks that elapsed while paused, delivered on resume.
    pub missed_ticks: u64,
    /// Messages that arrived while paused.
    pub inbox: Vec<Message>,
    /// Client requests that arrived while paused: (client, operation).
    pub queued_requests: Vec<(usize, crate::simulation::ClientOp)>,
    /// Durable log (and, on the shared log, durable term and vote).
    pub disk: Disk,
    /// Durable hard state (as acknowledged; on the shared log the commit index is not
    /// stored and a restart takes term and vote from the meta store).
    pub hard_state: HardState,
    /// Durable snapshot.
    pub snapshot: Option<SimSnapshot>,
    /// Writes handed out, not yet durable, in order.
    pub pending: VecDeque<PendingWrite>,
    /// State machine.
    pub kv: KvState,
    /// Chain hash of everything applied.
    pub applied_hash: u64,
    /// Last applied index.
    pub applied_index: LogIndex,
    /// Chain hashes of the log as the core emitted it (durable or not).
    pub view: Chain,
    /// Chain hashes of the durable log.
    pub durable: Chain,
    /// Commit index last observed (per incarnation).
    pub observed_commit: LogIndex,
    /// Role and term last observed.
    pub observed_role: (Role, Term),
    /// Entries this node proposed as leader, by index: (term, request).
    pub proposals: BTreeMap<LogIndex, (Term, Request)>,
    /// Reads in progress by read id.
    pub reads: BTreeMap<u64, Request>,
}

impl SimNode {
    /// A node that has never run, with its bootstrap disk.
    #[must_use]
    pub fn new(id: PeerId, disk: Disk) -> SimNode {
        SimNode {
            id,
            raft: None,
            incarnation: 0,
            paused: false,
            missed_ticks: 0,
            inbox: Vec::new(),
            queued_requests: Vec::new(),
            disk,
            hard_state: HardState::default(),
            snapshot: None,
            pending: VecDeque::new(),
            kv: KvState::default(),
            applied_hash: 0,
            applied_index: LogIndex::ZERO,
            view: Chain::new(LogIndex::ZERO, 0),
            durable: Chain::new(LogIndex::ZERO, 0),
            observed_commit: LogIndex::ZERO,
            observed_role: (Role::Follower, Term::ZERO),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
        }
    }

    /// True if the process runs and is not paused.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.raft.is_some() && !self.paused
    }

    /// Crash: everything not durable is lost.
    pub fn crash(&mut self) {
        self.raft = None;
        self.paused = false;
        self.missed_ticks = 0;
        self.inbox.clear();
        self.queued_requests.clear();
        self.pending.clear();
        self.proposals.clear();
        self.reads.clear();
        self.incarnation += 1;
    }

    /// Resets the volatile state from the durable snapshot, before a restart.
    pub fn load_durable_state(&mut self) {
        match &self.snapshot {
            Some(s) => {
                self.kv = s.kv.clone();
                self.applied_hash = s.chain_hash;
                self.applied_index = s.meta.index;
            }
            None => {
                self.kv = KvState::default();
                self.applied_hash = 0;
                self.applied_index = LogIndex::ZERO;
            }
        }
        self.view = self.durable.clone();
        self.observed_commit = LogIndex::ZERO;
        self.observed_role = (Role::Follower, Term::ZERO);
    }
}
