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
    histogram: LibraryHistogram,
    count: AtomicU64,
    /// Set once a group's handle exists (`GroupMetrics::attach`); unset for process-wide
    /// histograms.
    total: OnceLock<Arc<Histogram>>,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            histogram: LibraryHistogram::new(bounds.iter().copied()),
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

    fn observe_value(&self, value: f64) {
        self.histogram.observe(value);
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
        self.histogram.clone()
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
<<<<<<< HEAD

/// One group as a scrape sees it.
pub(crate) struct GroupView<'a> {
    pub(crate) group: u64,
    pub(crate) metrics: &'a GroupMetrics,
    pub(crate) status: &'a crate::NodeStatus,
    /// Requests queued to the round and not yet taken.
    pub(crate) requests_queued: u64,
}

/// Counters kept by the manager since before metrics existed (`ManagerStats`).
pub(crate) struct ProcessCounters {
    pub(crate) rounds: u64,
    pub(crate) log_writes: u64,
    pub(crate) entries_written: u64,
    pub(crate) group_writes: u64,
    pub(crate) meta_saves: u64,
    pub(crate) frames_sent: u64,
    pub(crate) messages_sent: u64,
}

/// Writes Prometheus text exposition format (version 0.0.4).
struct Writer {
    out: String,
}

impl Writer {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn scalar(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        // Count first-then-buckets can race with an observation; read the buckets and
        // derive the count from them so that `+Inf` always equals `_count`.
        let mut cumulative = 0u64;
        let bucket_name = format!("{name}_bucket");
        for (i, bucket) in h.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match h.bounds.get(i) {
                Some(&bound) => format_float(bound as f64 / h.scale),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket_name, &with_le, cumulative);
        }
        let sum = h.sum.load(Ordering::Relaxed) as f64 / h.scale;
        self.sample(&format!("{name}_sum"), labels, format_float(sum));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

fn format_float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".into()
    } else if value > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn state_name(state: ProgressState) -> &'static str {
    match state {
        ProgressState::Probe => "probe",
        ProgressState::Replicate => "replicate",
        ProgressState::Snapshot { .. } => "snapshot",
    }
}

/// Renders every metric of one manager. Families come one after the other, each with its
/// HELP and TYPE lines first.
pub(crate) fn render(
    counters: &ProcessCounters,
    manager: &ManagerMetrics,
    groups: &[GroupView<'_>],
) -> String {
    let mut w = Writer { out: String::new() };
    render_process_counters(&mut w, counters, manager);
    render_hibernation(&mut w, manager);
    render_messages_received_and_dropped(&mut w, manager);
    manager.transport.render(&mut w);
    render_process_histograms(&mut w, manager);
    render_groups(&mut w, groups);
    w.out
}

/// The process-wide counters of the round and the shared log, and the round's gauges.
fn render_process_counters(w: &mut Writer, counters: &ProcessCounters, manager: &ManagerMetrics) {
    let c = counters;
    w.scalar(
        "flotilla_rounds_total",
        "counter",
        "Rounds run by the manager.",
        c.rounds,
    );
    w.scalar(
        "flotilla_log_writes_total",
        "counter",
        "Shared-log writes (each one write and one fsync).",
        c.log_writes,
    );
    w.scalar(
        "flotilla_log_entries_written_total",
        "counter",
        "Entries written to the shared log.",
        c.entries_written,
    );
    w.scalar(
        "flotilla_log_bytes_written_total",
        "counter",
        "Entry bytes written to the shared log.",
        manager.bytes_written.get(),
    );
    w.scalar(
        "flotilla_log_group_writes_total",
        "counter",
        "Group-writes covered by the shared-log writes.",
        c.group_writes,
    );
    w.scalar(
        "flotilla_meta_saves_total",
        "counter",
        "Term and vote saves (each fsynced).",
        c.meta_saves,
    );
    w.scalar(
        "flotilla_frames_sent_total",
        "counter",
        "Frames handed to the transport.",
        c.frames_sent,
    );
    w.scalar(
        "flotilla_messages_sent_total",
        "counter",
        "Raft messages in the frames sent.",
        c.messages_sent,
    );
    w.scalar(
        "flotilla_inbound_frames_queued",
        "gauge",
        "Inbound frames waiting for the round (as of the last round).",
        manager.inbound_frames_queued.get(),
    );
    w.scalar(
        "flotilla_groups_hibernating",
        "gauge",
        "Groups of this process that hibernate: idle, not ticked until woken.",
        manager.groups_hibernating.get(),
    );
}

/// Group wakes by reason and the liveness beacons that make them possible
/// (`crate::hibernation`).
fn render_hibernation(w: &mut Writer, manager: &ManagerMetrics) {
    let wakes = "flotilla_group_wakes_total";
    w.header(
        wakes,
        "counter",
        "Hibernating groups woken, by reason (request, message, leader_down, \
         leader_restarted, peer_restarted).",
    );
    for reason in WakeReason::ALL {
        let count = manager.group_wakes[reason.index()].get();
        w.sample(wakes, &[("reason", reason.name())], count);
    }
    w.scalar(
        "flotilla_beacons_sent_total",
        "counter",
        "Liveness beacons sent to peer processes (frames without messages).",
        manager.beacons_sent.get(),
    );
}

/// Raft messages received by kind, and what was refused or dropped before raft saw it:
/// proposals, liveness entries, messages the cores dropped.
fn render_messages_received_and_dropped(w: &mut Writer, manager: &ManagerMetrics) {
    let received = "flotilla_messages_received_total";
    w.header(
        received,
        "counter",
        "Raft messages received from peers, by kind (PreVote, RequestVote, AppendEntries, \
         Heartbeat, InstallSnapshot, ReadIndexRequest, their responses, TimeoutNow).",
    );
    for (i, kind) in MESSAGE_KINDS.iter().enumerate() {
        w.sample(
            received,
            &[("kind", kind)],
            manager.messages_received[i].get(),
        );
    }
    let refused = "flotilla_proposals_refused_total";
    w.header(
        refused,
        "counter",
        "Proposals refused before reaching raft, by reason (entry_too_large: more than \
         flotilla_node::limits::ENTRY_BYTES_MAX).",
    );
    w.sample(
        refused,
        &[("reason", "entry_too_large")],
        manager.entries_refused_too_large.get(),
    );
    w.scalar(
        "flotilla_liveness_processes_evicted_total",
        "counter",
        "Processes forgotten by the liveness map because it was full (frames from too many \
         distinct senders).",
        manager.liveness_processes_evicted.get(),
    );
    let dropped = "flotilla_raft_messages_dropped_total";
    w.header(
        dropped,
        "counter",
        "Raft messages the cores dropped before their protocol saw them, by reason \
         (non_member: from a peer outside the group's configuration; out_of_bounds: a term \
         more than 2^32 ahead or an index or echo beyond its bound; invalid: inconsistent \
         with the log; transfer_vote: a vote flagged as a leadership transfer from a \
         candidate the leader did not announce).",
    );
    for (reason, counter) in RAFT_DROP_REASONS.iter().zip(&manager.raft_messages_dropped) {
        w.sample(dropped, &[("reason", reason)], counter.get());
    }
}

/// The process-wide histograms: round and write durations, batch sizes.
fn render_process_histograms(w: &mut Writer, manager: &ManagerMetrics) {
    let process_histograms: [(&str, &str, &Histogram); 6] = [
        (
            "flotilla_round_duration_seconds",
            "Duration of one round (ticks, messages, requests, writes, applies).",
            &manager.round_seconds,
        ),
        (
            "flotilla_log_append_seconds",
            "One shared-log write including its fsync.",
            &manager.log_append_seconds,
        ),
        (
            "flotilla_round_entries",
            "Entries per shared-log write.",
            &manager.round_entries,
        ),
        (
            "flotilla_round_bytes",
            "Entry bytes per shared-log write.",
            &manager.round_bytes,
        ),
        (
            "flotilla_round_groups",
            "Groups per shared-log write.",
            &manager.round_groups,
        ),
        (
            "flotilla_meta_save_seconds",
            "One round's term and vote saves (one journal write and fsync).",
            &manager.meta_save_seconds,
        ),
    ];
    for (name, help, h) in process_histograms {
        w.header(name, "histogram", help);
        w.histogram_samples(name, &[], h);
    }
}

type GroupHistogram = fn(&GroupMetrics) -> &Histogram;
type GroupValue = fn(&GroupView<'_>) -> u64;

fn render_groups(w: &mut Writer, groups: &[GroupView<'_>]) {
    let ids: Vec<String> = groups.iter().map(|g| g.group.to_string()).collect();
    let histograms: [(&str, &str, GroupHistogram); 5] = [
        (
            "flotilla_apply_seconds",
            "One state machine on_apply call.",
            |m| &m.apply_seconds,
        ),
        (
            "flotilla_apply_entries",
            "Committed entries per apply batch.",
            |m| &m.apply_entries,
        ),
        (
            "flotilla_proposal_seconds",
            "Node::apply from call to a successful answer (queue, replication, apply).",
            |m| &m.proposal_seconds,
        ),
        (
            "flotilla_read_index_seconds",
            "Node::read_index from call to a successful answer.",
            |m| &m.read_index_seconds,
        ),
        (
            "flotilla_snapshot_save_seconds",
            "Taking one local snapshot (state machine save and store).",
            |m| &m.snapshot_save_seconds,
        ),
    ];
    for (name, help, get) in histograms {
        w.header(name, "histogram", help);
        for (g, id) in groups.iter().zip(&ids) {
            w.histogram_samples(name, &[("group", id)], get(g.metrics));
        }
    }
    let values: [(&str, &str, &str, GroupValue); 16] = [
        (
            "flotilla_snapshot_saves_total",
            "counter",
            "Local snapshots taken.",
            |g| g.metrics.snapshot_save_seconds.count(),
        ),
        (
            "flotilla_snapshot_installs_total",
            "counter",
            "Snapshots fetched from the leader and installed.",
            |g| g.metrics.snapshot_installs.get(),
        ),
        (
            "flotilla_snapshot_install_failures_total",
            "counter",
            "Snapshot installs that failed (copy error, deadline, superseded).",
            |g| g.metrics.snapshot_install_failures.get(),
        ),
        (
            "flotilla_leader_starts_total",
            "counter",
            "Times this peer became the group's leader.",
            |g| g.metrics.leader_starts.get(),
        ),
        (
            "flotilla_leader_changes_total",
            "counter",
            "Leaders this peer came to know (became leader or started following).",
            |g| g.metrics.leader_changes.get(),
        ),
        (
            "flotilla_term_changes_total",
            "counter",
            "Term changes seen by this peer (elections anywhere in the group).",
            |g| g.metrics.term_changes.get(),
        ),
        (
            "flotilla_replicator_events_total",
            "counter",
            "Replicator created, online, offline and destroyed events on this leader.",
            |g| g.metrics.replicator_events.get(),
        ),
        (
            "flotilla_requests_queued",
            "gauge",
            "Requests (proposals, reads, admin) queued to the round and not yet taken.",
            |g| g.requests_queued,
        ),
        (
            "flotilla_proposals_pending",
            "gauge",
            "Proposals accepted by the leader and not yet applied.",
            |g| g.metrics.proposals_pending.get(),
        ),
        (
            "flotilla_reads_pending",
            "gauge",
            "Reads accepted by the core and not yet answered.",
            |g| g.metrics.reads_pending.get(),
        ),
        ("flotilla_term", "gauge", "Current term.", |g| {
            g.status.term.get()
        }),
        (
            "flotilla_is_leader",
            "gauge",
            "1 if this peer leads the group.",
            |g| u64::from(g.status.role == flotilla_raft::Role::Leader),
        ),
        (
            "flotilla_last_log_index",
            "gauge",
            "Last index in this peer's log.",
            |g| g.status.last_index.get(),
        ),
        (
            "flotilla_committed_index",
            "gauge",
            "Commit index known to this peer.",
            |g| g.status.committed.get(),
        ),
        (
            "flotilla_applied_index",
            "gauge",
            "Index applied by this peer's state machine.",
            |g| g.status.applied.get(),
        ),
        (
            "flotilla_apply_backlog_entries",
            "gauge",
            "Committed entries not yet applied (commit index minus applied index).",
            |g| {
                g.status
                    .committed
                    .get()
                    .saturating_sub(g.status.applied.get())
            },
        ),
    ];
    for (name, kind, help, get) in values {
        w.header(name, kind, help);
        for (g, id) in groups.iter().zip(&ids) {
            w.sample(name, &[("group", id)], get(g));
        }
    }
    render_replicators(w, groups, &ids);
}

fn render_replicators(w: &mut Writer, groups: &[GroupView<'_>], ids: &[String]) {
    let samples: Vec<(&str, u64, Vec<ReplicatorSample>)> = groups
        .iter()
        .zip(ids)
        .map(|(g, id)| {
            (
                id.as_str(),
                g.status.last_index.get(),
                g.metrics.replicators(),
            )
        })
        .collect();
    type Get = fn(u64, &ReplicatorSample) -> u64;
    let gauges: [(&str, &str, Get); 4] = [
        (
            "flotilla_replicator_match_index",
            "Leader only: highest index known to be stored on the peer.",
            |_, r| r.match_index.get(),
        ),
        (
            "flotilla_replicator_next_index",
            "Leader only: next index to send to the peer.",
            |_, r| r.next_index.get(),
        ),
        (
            "flotilla_replicator_lag_entries",
            "Leader only: the leader's last index minus the peer's match index.",
            |last, r| last.saturating_sub(r.match_index.get()),
        ),
        (
            "flotilla_replicator_inflight_messages",
            "Leader only: AppendEntries sent to the peer and not yet acknowledged.",
            |_, r| r.inflight as u64,
        ),
    ];
    for (name, help, get) in gauges {
        w.header(name, "gauge", help);
        for (id, last, replicators) in &samples {
            for r in replicators {
                let peer = r.peer.as_str();
                w.sample(name, &[("group", id), ("peer", peer)], get(*last, r));
            }
        }
    }
    let name = "flotilla_replicator_state";
    w.header(
        name,
        "gauge",
        "Leader only: 1 for the replicator's current state (probe, replicate, snapshot).",
    );
    for (id, _, replicators) in &samples {
        for r in replicators {
            let current = state_name(r.state);
            for state in ["probe", "replicate", "snapshot"] {
                let labels = [("group", *id), ("peer", r.peer.as_str()), ("state", state)];
                w.sample(name, &labels, u64::from(state == current));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_count() {
        let h = Histogram::counts();
        for v in [0, 1, 2, 3, 100, 1_000_000] {
            h.observe(v);
        }
        let mut w = Writer { out: String::new() };
        w.histogram_samples("x", &[("group", "1")], &h);
        let lines: Vec<&str> = w.out.lines().collect();
        assert_eq!(lines[0], "x_bucket{group=\"1\",le=\"1\"} 2");
        assert_eq!(lines[1], "x_bucket{group=\"1\",le=\"2\"} 3");
        assert!(lines.contains(&"x_bucket{group=\"1\",le=\"+Inf\"} 6"));
        assert!(lines.contains(&"x_count{group=\"1\"} 6"));
        assert!(lines.contains(&"x_sum{group=\"1\"} 1000106"));
    }

    #[test]
    fn durations_render_in_seconds_and_labels_are_escaped() {
        let h = Histogram::durations();
        h.observe_duration(Duration::from_millis(3));
        let mut w = Writer { out: String::new() };
        w.histogram_samples("d", &[("peer", "a\"b\\c")], &h);
        assert!(w
            .out
            .starts_with("d_bucket{peer=\"a\\\"b\\\\c\",le=\"0.00005\"} 0\n"));
        assert!(w.out.contains("le=\"0.005\"} 1\n"), "{}", w.out);
        assert!(w.out.contains("d_sum{peer=\"a\\\"b\\\\c\"} 0.003\n"));
    }
}
=======
>>>>>>> wt-metrics
