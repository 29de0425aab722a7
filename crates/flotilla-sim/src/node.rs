//! One simulated process: a core, its durable state, its in-flight writes and its state
//! machine.
//!
//! Owns: what survives a crash (the durable log, hard state and snapshot) and what does not
//! (the core, writes not yet reported durable, the state machine, client requests). Must
//! never: make a write durable before its completion time, or out of order.

use std::collections::{BTreeMap, VecDeque};

use flotilla_raft::{
    Entry, HardState, LogIndex, MemStorage, Message, PeerId, Raft, Role, SnapshotMeta, Term,
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
    pub raft: Option<Raft<MemStorage>>,
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
    /// Durable log.
    pub storage: MemStorage,
    /// Durable hard state.
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
    /// A node that has never run, with its bootstrap storage.
    #[must_use]
    pub fn new(id: PeerId, storage: MemStorage) -> SimNode {
        SimNode {
            id,
            raft: None,
            incarnation: 0,
            paused: false,
            missed_ticks: 0,
            inbox: Vec::new(),
            queued_requests: Vec::new(),
            storage,
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
