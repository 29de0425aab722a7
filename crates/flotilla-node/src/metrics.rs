//! The metrics a process records (what SOFAJRaft's metrics and diagnostics offer):
//! counters and gauges on atomics, histograms of the Prometheus client library, per process
//! and per group. `crate::exposition` turns them into the text a scrape reads.
//!
//! Owns: what is recorded where (process-wide, per group, and each group's contribution to
//! the store-wide totals), the histograms' buckets, and the reasons that label counters.
//! Must never: take a lock the round waits for while a scrape reads (a histogram's lock is
//! held for one observation or one copy, never across rendering), or allocate per
//! observation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flotilla_raft::progress::ProgressState;
use flotilla_raft::{LogIndex, PeerId};
use prometheus_client::metrics::histogram::Histogram as LibraryHistogram;

use crate::hibernation::WakeReason;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, by: u64) {
        self.0.fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (never negative here).
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of duration histograms, in seconds (50 µs to 10 s).
pub(crate) const DURATION_BOUNDS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of count histograms (entries, groups per batch, entries of lag).
pub(crate) const COUNT_BOUNDS: [f64; 15] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];

/// Upper bounds of byte-size histograms (64 B to 64 MiB).
const BYTES_BOUNDS: [f64; 11] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// A histogram of the Prometheus client library with fixed buckets, plus the count of its
/// observations (the library reads its own only in tests) and, for a group's histogram,
/// the store-wide one its observations also go to.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Made at the first observation (or the first scrape that shows it): most of a
    /// store's thousands of groups never propose, read, snapshot or even apply an entry
    /// while they sleep, and each histogram's buckets cost about 400 bytes.
    histogram: OnceLock<LibraryHistogram>,
    bounds: &'static [f64],
    count: AtomicU64,
    /// Set once a group's handle exists (`GroupMetrics::attach`); unset for process-wide
    /// histograms.
    total: OnceLock<Arc<Histogram>>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            histogram: OnceLock::new(),
            bounds,
            count: AtomicU64::new(0),
            total: OnceLock::new(),
        }
    }

    pub(crate) fn durations() -> Histogram {
        Histogram::new(&DURATION_BOUNDS_SECONDS)
    }

    pub(crate) fn counts() -> Histogram {
        Histogram::new(&COUNT_BOUNDS)
    }

    pub(crate) fn bytes() -> Histogram {
        Histogram::new(&BYTES_BOUNDS)
    }

    fn library(&self) -> &LibraryHistogram {
        self.histogram
            .get_or_init(|| LibraryHistogram::new(self.bounds.iter().copied()))
    }

    fn observe_value(&self, value: f64) {
        self.library().observe(value);
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = self.total.get() {
            total.observe_value(value);
        }
    }

    pub(crate) fn observe(&self, value: u64) {
        self.observe_value(value as f64);
    }

    pub(crate) fn observe_duration(&self, elapsed: Duration) {
        self.observe_value(elapsed.as_secs_f64());
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The library's histogram (shared: a clone sees every later observation), to expose.
    pub(crate) fn exposed(&self) -> LibraryHistogram {
        self.library().clone()
    }
}

/// A group's counter that also counts into its store-wide total, once attached.
#[derive(Debug, Default)]
pub(crate) struct GroupCounter {
    own: Counter,
    total: OnceLock<Arc<Counter>>,
}

impl GroupCounter {
    pub(crate) fn add(&self, by: u64) {
        self.own.add(by);
        if let Some(total) = self.total.get() {
            total.add(by);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.own.get()
    }
}

/// Why a raft message was dropped before it reached a group (or a peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageDrop {
    /// Its `from` is not the process that sent the frame carrying it.
    SenderMismatch,
    /// It alone encodes to more than a frame may hold: it can never be sent.
    Oversized,
    /// Its `to` is not this process.
    WrongRecipient,
}

impl MessageDrop {
    pub(crate) const ALL: [MessageDrop; 3] = [
        MessageDrop::SenderMismatch,
        MessageDrop::Oversized,
        MessageDrop::WrongRecipient,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            MessageDrop::SenderMismatch => "sender_mismatch",
            MessageDrop::Oversized => "oversized",
            MessageDrop::WrongRecipient => "wrong_recipient",
        }
    }
}

/// Why traffic naming a receiver was refused (see [`crate::identity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdentityRefusal {
    /// It names another peer id (another store now holds the address it was sent to).
    WrongPeer,
    /// It names another cluster.
    WrongCluster,
}

impl IdentityRefusal {
    pub(crate) const ALL: [IdentityRefusal; 2] =
        [IdentityRefusal::WrongPeer, IdentityRefusal::WrongCluster];

    pub(crate) fn name(self) -> &'static str {
        match self {
            IdentityRefusal::WrongPeer => "wrong_peer",
            IdentityRefusal::WrongCluster => "wrong_cluster",
        }
    }
}

/// Why a server closed a connection before handing it to the gRPC server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionClose {
    /// Its source address had as many connections being set up as it may, and a newer one
    /// took its place (the oldest goes).
    SourceCap,
    /// Its TLS handshake did not finish in time.
    HandshakeTimeout,
    /// (Plain text) it did not send a complete HTTP/2 preface or HTTP/1 request head in
    /// time.
    RequestTimeout,
}

impl ConnectionClose {
    pub(crate) const ALL: [ConnectionClose; 3] = [
        ConnectionClose::SourceCap,
        ConnectionClose::HandshakeTimeout,
        ConnectionClose::RequestTimeout,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ConnectionClose::SourceCap => "source_cap",
            ConnectionClose::HandshakeTimeout => "handshake_timeout",
            ConnectionClose::RequestTimeout => "request_timeout",
        }
    }
}

/// Counters of what the transport refused or dropped to protect the process: shared by a
/// [`crate::grpc::GrpcTransport`] (sending side), the [`crate::grpc::GrpcServer`] serving a
/// manager's [`crate::Inbox`] (accepting side) and the manager (receive path), and rendered
/// with the manager's metrics ([`crate::NodeManager::metrics_text`]).
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Messages dropped, by [`MessageDrop`].
    pub(crate) messages_dropped: [Counter; MessageDrop::ALL.len()],
    /// Extra frames sent because what was queued for a destination exceeded one frame's
    /// limits (a frame cut in three counts two).
    pub(crate) frames_split: Counter,
    /// Connections closed before being served, by [`ConnectionClose`].
    pub(crate) connections_closed: [Counter; ConnectionClose::ALL.len()],
    /// Errors accepting a connection (at the file-descriptor limit, for one).
    pub(crate) accept_errors: Counter,
    /// Frames, snapshot fetches and CLI calls refused for naming another receiver.
    pub(crate) identity_refused: [Counter; IdentityRefusal::ALL.len()],
}

impl TransportMetrics {
    pub(crate) fn message_dropped(&self, reason: MessageDrop, count: u64) {
        self.messages_dropped[reason as usize].add(count);
    }

    pub(crate) fn messages_dropped(&self, reason: MessageDrop) -> u64 {
        self.messages_dropped[reason as usize].get()
    }

    pub(crate) fn identity_refused(&self, reason: IdentityRefusal) {
        self.identity_refused[reason as usize].add(1);
    }

    pub(crate) fn identity_refusals(&self, reason: IdentityRefusal) -> u64 {
        self.identity_refused[reason as usize].get()
    }

    pub(crate) fn connection_closed(&self, reason: ConnectionClose) {
        self.connections_closed[reason as usize].add(1);
    }

    pub(crate) fn connections_closed(&self, reason: ConnectionClose) -> u64 {
        self.connections_closed[reason as usize].get()
    }
}

/// Histograms of one manager (process-wide).
#[derive(Debug)]
pub(crate) struct ManagerMetrics {
    pub(crate) round_seconds: Histogram,
    pub(crate) log_append_seconds: Histogram,
    pub(crate) round_entries: Histogram,
    pub(crate) round_bytes: Histogram,
    pub(crate) round_groups: Histogram,
    pub(crate) meta_save_seconds: Histogram,
    pub(crate) bytes_written: Counter,
    pub(crate) inbound_frames_queued: Gauge,
    /// Groups asleep (`crate::hibernation`), as of the last round.
    pub(crate) groups_hibernating: Gauge,
    /// Sleeping groups woken, by `WakeReason::index`.
    pub(crate) group_wakes: [Counter; WakeReason::ALL.len()],
    /// Liveness beacons sent (frames without messages).
    pub(crate) beacons_sent: Counter,
    /// Raft messages received, by kind ([`MESSAGE_KINDS`]): SOFAJRaft's per-handler
    /// counters (pre-vote, request vote, append entries, heartbeat, install snapshot, ...).
    pub(crate) messages_received: [Counter; MESSAGE_KINDS.len()],
    /// Proposals refused because their entry exceeds [`crate::limits::ENTRY_BYTES_MAX`].
    pub(crate) entries_refused_too_large: Counter,
    /// Processes forgotten by the liveness map because it was full.
    pub(crate) liveness_processes_evicted: Counter,
    /// Raft messages the groups' cores dropped before their protocol saw them, by reason
    /// ([`RAFT_DROP_REASONS`]): from a non-member, out of bounds, invalid for the log, a
    /// transfer vote from a candidate the leader did not announce.
    pub(crate) raft_messages_dropped: [Counter; RAFT_DROP_REASONS.len()],
    /// The transport's counters (shared with the transport and the server, when they
    /// count).
    pub(crate) transport: Arc<TransportMetrics>,
    /// What every group of this process recorded, added up (each group's metrics count
    /// into these once attached).
    pub(crate) group_totals: GroupTotals,
}

/// The store-wide totals of the groups' histograms and counters: what a scrape shows by
/// default instead of one series per group. A group's part stays in them when the group
/// goes, so the counters never go down.
#[derive(Debug)]
pub(crate) struct GroupTotals {
    pub(crate) apply_seconds: Arc<Histogram>,
    pub(crate) apply_entries: Arc<Histogram>,
    pub(crate) proposal_seconds: Arc<Histogram>,
    pub(crate) read_index_seconds: Arc<Histogram>,
    pub(crate) snapshot_save_seconds: Arc<Histogram>,
    pub(crate) snapshot_installs: Arc<Counter>,
    pub(crate) snapshot_install_failures: Arc<Counter>,
    pub(crate) snapshot_fetched_bytes: Arc<Counter>,
    pub(crate) leader_starts: Arc<Counter>,
    pub(crate) leader_changes: Arc<Counter>,
    pub(crate) term_changes: Arc<Counter>,
    pub(crate) replicator_events: Arc<Counter>,
}

impl Default for GroupTotals {
    fn default() -> Self {
        GroupTotals {
            apply_seconds: Arc::new(Histogram::durations()),
            apply_entries: Arc::new(Histogram::counts()),
            proposal_seconds: Arc::new(Histogram::durations()),
            read_index_seconds: Arc::new(Histogram::durations()),
            snapshot_save_seconds: Arc::new(Histogram::durations()),
            snapshot_installs: Arc::default(),
            snapshot_install_failures: Arc::default(),
            snapshot_fetched_bytes: Arc::default(),
            leader_starts: Arc::default(),
            leader_changes: Arc::default(),
            term_changes: Arc::default(),
            replicator_events: Arc::default(),
        }
    }
}

/// Why a core dropped a message (`flotilla_raft::DroppedMessages::counts`, in that order).
pub(crate) const RAFT_DROP_REASONS: [&str; 4] =
    ["non_member", "out_of_bounds", "invalid", "transfer_vote"];

impl ManagerMetrics {
    /// Counts what a core dropped while stepping, from its counters before and after.
    pub(crate) fn raft_dropped(&self, before: [u64; 4], after: [u64; 4]) {
        for ((counter, was), now) in self.raft_messages_dropped.iter().zip(before).zip(after) {
            if now > was {
                counter.add(now - was);
            }
        }
    }
}

/// The kinds of raft message, as [`flotilla_raft::MessageBody::name`] names them.
pub(crate) const MESSAGE_KINDS: [&str; 13] = [
    "PreVote",
    "RequestVote",
    "PreVoteResponse",
    "RequestVoteResponse",
    "AppendEntries",
    "AppendEntriesResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "TimeoutNow",
    "ReadIndexRequest",
    "ReadIndexResponse",
];

impl ManagerMetrics {
    /// Counts one received message of kind `name`.
    pub(crate) fn message_received(&self, name: &str) {
        if let Some(i) = MESSAGE_KINDS.iter().position(|k| *k == name) {
            self.messages_received[i].add(1);
        }
    }
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        ManagerMetrics {
            round_seconds: Histogram::durations(),
            log_append_seconds: Histogram::durations(),
            round_entries: Histogram::counts(),
            round_bytes: Histogram::bytes(),
            round_groups: Histogram::counts(),
            meta_save_seconds: Histogram::durations(),
            bytes_written: Counter::default(),
            inbound_frames_queued: Gauge::default(),
            groups_hibernating: Gauge::default(),
            group_wakes: Default::default(),
            beacons_sent: Counter::default(),
            messages_received: Default::default(),
            entries_refused_too_large: Counter::default(),
            liveness_processes_evicted: Counter::default(),
            raft_messages_dropped: Default::default(),
            transport: Arc::default(),
            group_totals: GroupTotals::default(),
        }
    }
}

impl ManagerMetrics {
    /// Metrics sharing `transport`'s counters (the transport's own, when it keeps some).
    pub(crate) fn with_transport(transport: Arc<TransportMetrics>) -> ManagerMetrics {
        ManagerMetrics {
            transport,
            ..ManagerMetrics::default()
        }
    }
}

/// What the leader knows of one follower or learner, as of the last round.
#[derive(Clone, Debug)]
pub(crate) struct ReplicatorSample {
    pub(crate) peer: PeerId,
    pub(crate) match_index: LogIndex,
    pub(crate) next_index: LogIndex,
    pub(crate) inflight: usize,
    pub(crate) state: ProgressState,
}

/// Metrics of one group on this process. Shared by the round (which records) and the
/// group's [`crate::Node`] handle (which records request latencies and attaches them to the
/// store-wide totals).
#[derive(Debug)]
pub(crate) struct GroupMetrics {
    pub(crate) apply_seconds: Histogram,
    pub(crate) apply_entries: Histogram,
    pub(crate) proposal_seconds: Histogram,
    pub(crate) read_index_seconds: Histogram,
    pub(crate) snapshot_save_seconds: Histogram,
    pub(crate) snapshot_installs: GroupCounter,
    pub(crate) snapshot_install_failures: GroupCounter,
    pub(crate) snapshot_fetched_bytes: GroupCounter,
    pub(crate) leader_starts: GroupCounter,
    pub(crate) leader_changes: GroupCounter,
    pub(crate) term_changes: GroupCounter,
    pub(crate) replicator_events: GroupCounter,
    pub(crate) proposals_pending: Gauge,
    pub(crate) reads_pending: Gauge,
    /// The term last published (to count changes).
    last_term: AtomicU64,
    /// Leader only: one per replicated peer other than this one; empty otherwise.
    replicators: Mutex<Vec<ReplicatorSample>>,
}

impl GroupMetrics {
    pub(crate) fn new(term: u64) -> GroupMetrics {
        GroupMetrics {
            apply_seconds: Histogram::durations(),
            apply_entries: Histogram::counts(),
            proposal_seconds: Histogram::durations(),
            read_index_seconds: Histogram::durations(),
            snapshot_save_seconds: Histogram::durations(),
            snapshot_installs: GroupCounter::default(),
            snapshot_install_failures: GroupCounter::default(),
            snapshot_fetched_bytes: GroupCounter::default(),
            leader_starts: GroupCounter::default(),
            leader_changes: GroupCounter::default(),
            term_changes: GroupCounter::default(),
            replicator_events: GroupCounter::default(),
            proposals_pending: Gauge::default(),
            reads_pending: Gauge::default(),
            last_term: AtomicU64::new(term),
            replicators: Mutex::new(Vec::new()),
        }
    }

    /// Counts a term change if `term` differs from the one last seen.
    pub(crate) fn observe_term(&self, term: u64) {
        if self.last_term.swap(term, Ordering::Relaxed) != term {
            self.term_changes.add(1);
        }
    }

    /// Replaces the replicator samples (`fill` pushes the new ones; nothing for a
    /// non-leader). The lock is held only for the copy.
    pub(crate) fn set_replicators(&self, fill: impl FnOnce(&mut Vec<ReplicatorSample>)) {
        let mut samples = self
            .replicators
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.clear();
        fill(&mut samples);
    }

    /// Makes every histogram and counter of this group count into `totals` too (once; a
    /// second call changes nothing).
    pub(crate) fn attach(&self, totals: &GroupTotals) {
        let histograms = [
            (&self.apply_seconds, &totals.apply_seconds),
            (&self.apply_entries, &totals.apply_entries),
            (&self.proposal_seconds, &totals.proposal_seconds),
            (&self.read_index_seconds, &totals.read_index_seconds),
            (&self.snapshot_save_seconds, &totals.snapshot_save_seconds),
        ];
        for (own, total) in histograms {
            let _ = own.total.set(total.clone());
        }
        let counters = [
            (&self.snapshot_installs, &totals.snapshot_installs),
            (
                &self.snapshot_install_failures,
                &totals.snapshot_install_failures,
            ),
            (&self.snapshot_fetched_bytes, &totals.snapshot_fetched_bytes),
            (&self.leader_starts, &totals.leader_starts),
            (&self.leader_changes, &totals.leader_changes),
            (&self.term_changes, &totals.term_changes),
            (&self.replicator_events, &totals.replicator_events),
        ];
        for (own, total) in counters {
            let _ = own.total.set(total.clone());
        }
    }

    /// The replicators as of the last round (a copy; the lock is held only for it).
    pub(crate) fn replicators(&self) -> Vec<ReplicatorSample> {
        self.replicators
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
