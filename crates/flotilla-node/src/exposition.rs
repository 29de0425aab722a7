//! What a scrape of `/metrics` reads, in the Prometheus text format (version 0.0.4), encoded
//! by the Prometheus project's client library: names, types, label escaping and histogram
//! buckets are right by construction.
//!
//! Three views ([`MetricsQuery`]). By default, the store: the process-wide metrics and the
//! groups summed up (groups by role and by health, totals of every group's counters and
//! histograms, histograms across groups of their lag, and the few worst laggards), so the
//! text does not grow with the number of groups. On request, one group (`group=ID`) or every
//! group (`groups=all`) in detail, labelled `group`, as the text was before it was per store.
//!
//! Owns: the views, the query that picks one, the metric names, help texts and labels, and
//! the health thresholds. Must never: wait for a round (it reads atomics and each group's
//! published status), or do work that grows with anything but the number of groups.

use std::fmt;

use flotilla_raft::progress::ProgressState;
use flotilla_raft::{PeerId, Role};
use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::Histogram as LibraryHistogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::hibernation::WakeReason;
use crate::metrics::{ConnectionClose, IdentityRefusal, MessageDrop};
use crate::metrics::{
    GroupMetrics, Histogram, ManagerMetrics, ReplicatorSample, TransportMetrics, COUNT_BOUNDS,
    MESSAGE_KINDS, RAFT_DROP_REASONS,
};
use crate::node::Node;
use crate::status::NodeStatus;

/// The longest query string `/metrics` reads; a longer one is refused unread.
pub const METRICS_QUERY_BYTES_MAX: usize = 256;

/// Entries behind from which a group counts as lagging: its apply backlog (committed but
/// not applied) or, on its leader, a follower's lag (the leader's last index minus what the
/// follower stored).
pub const LAGGING_ENTRIES_MIN: u64 = 1024;

/// The worst laggards shown by default, each labelled by its group.
pub const LAGGARDS_MAX: usize = 5;

/// Which metrics a scrape asks for (the query string of `GET /metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsQuery {
    /// No query: the process and its groups summed up; the same size whatever the number
    /// of groups.
    Store,
    /// `group=ID` (decimal, as the `group` label shows it): that group's series.
    Group(u64),
    /// `groups=all`: every group's series (for small deployments: the text grows with the
    /// number of groups).
    AllGroups,
}

/// Why a metrics query was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsQueryError {
    /// The query is not one `/metrics` understands (HTTP 400); says what was wrong.
    Malformed(String),
    /// The query names a group this process does not run (HTTP 404).
    UnknownGroup(u64),
}

impl MetricsQueryError {
    /// The HTTP status that answers it.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            MetricsQueryError::Malformed(_) => 400,
            MetricsQueryError::UnknownGroup(_) => 404,
        }
    }
}

impl fmt::Display for MetricsQueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsQueryError::Malformed(why) => write!(f, "bad metrics query: {why}"),
            MetricsQueryError::UnknownGroup(group) => {
                write!(f, "group {group} does not run on this process")
            }
        }
    }
}

impl std::error::Error for MetricsQueryError {}

impl MetricsQuery {
    /// Parses the query string of `GET /metrics` (without the `?`): nothing, `group=ID` or
    /// `groups=all`. Anything else is refused with what was wrong.
    pub fn parse(query: Option<&str>) -> Result<MetricsQuery, MetricsQueryError> {
        let malformed = |why: String| Err(MetricsQueryError::Malformed(why));
        let query = match query {
            None | Some("") => return Ok(MetricsQuery::Store),
            Some(query) if query.len() > METRICS_QUERY_BYTES_MAX => {
                return malformed(format!(
                    "the query has {} bytes, at most {METRICS_QUERY_BYTES_MAX} are read",
                    query.len()
                ))
            }
            Some(query) => query,
        };
        let expected = "expected no query, group=ID (decimal) or groups=all";
        if query.contains('&') {
            return malformed(format!("one parameter at most: {expected}"));
        }
        match query.split_once('=') {
            Some(("group", id)) => match id.parse::<u64>() {
                Ok(id) => Ok(MetricsQuery::Group(id)),
                Err(_) => malformed(format!(
                    "group {:?} is not a decimal group id: {expected}",
                    id.escape_debug().to_string()
                )),
            },
            Some(("groups", "all")) => Ok(MetricsQuery::AllGroups),
            _ => malformed(format!(
                "unknown query {:?}: {expected}",
                query.escape_debug().to_string()
            )),
        }
    }
}

/// Gauges an application adds to the store's text (name, one-sentence help, value), in
/// the same format: e.g. the KV store's regions and quota. Names must differ from the
/// runtime's.
#[must_use]
pub fn gauges_text(gauges: &[(&str, &str, u64)]) -> String {
    let mut out = Exposition::default();
    for (name, help, value) in gauges {
        out.gauge(name, help, *value);
    }
    out.text()
}

/// Counters an application adds to the store's text (name ending in `_total`, help,
/// value), like [`gauges_text`].
#[must_use]
pub fn counters_text(counters: &[(&str, &str, u64)]) -> String {
    let mut out = Exposition::default();
    for (name, help, value) in counters {
        out.counter(name, help, *value);
    }
    out.text()
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

/// One group as a scrape sees it.
struct GroupView<'a> {
    /// The `group` label.
    id: String,
    metrics: &'a GroupMetrics,
    status: NodeStatus,
    /// Requests queued to the round and not yet taken.
    requests_queued: u64,
    /// Leader only: its followers and learners.
    replicators: Vec<ReplicatorSample>,
}

impl<'a> GroupView<'a> {
    fn of(node: &'a Node) -> GroupView<'a> {
        let metrics = node.metrics();
        GroupView {
            id: node.group().to_string(),
            metrics,
            status: node.status(),
            requests_queued: node.requests_queued(),
            replicators: metrics.replicators(),
        }
    }

    fn apply_backlog(&self) -> u64 {
        self.status
            .committed
            .get()
            .saturating_sub(self.status.applied.get())
    }

    fn lag(&self, replicator: &ReplicatorSample) -> u64 {
        self.status
            .last_index
            .get()
            .saturating_sub(replicator.match_index.get())
    }
}

/// The text of `query` over a manager's metrics (`me`: its peer id; `nodes`: its groups).
pub(crate) fn render(
    query: MetricsQuery,
    counters: &ProcessCounters,
    manager: &ManagerMetrics,
    me: &PeerId,
    nodes: &[Node],
) -> Result<String, MetricsQueryError> {
    let mut out = Exposition::default();
    match query {
        MetricsQuery::Store => {
            process_counters(&mut out, counters, manager);
            hibernation(&mut out, manager);
            messages_received_and_dropped(&mut out, manager);
            transport(&mut out, &manager.transport);
            process_histograms(&mut out, manager);
            let views: Vec<GroupView<'_>> = nodes.iter().map(GroupView::of).collect();
            group_totals(&mut out, manager);
            groups_summed_up(&mut out, &views, me);
        }
        MetricsQuery::Group(group) => {
            let node = nodes
                .iter()
                .find(|n| n.group() == group)
                .ok_or(MetricsQueryError::UnknownGroup(group))?;
            groups_in_detail(&mut out, &[GroupView::of(node)]);
        }
        MetricsQuery::AllGroups => {
            let views: Vec<GroupView<'_>> = nodes.iter().map(GroupView::of).collect();
            groups_in_detail(&mut out, &views);
        }
    }
    Ok(out.text())
}

/// Label pairs of one sample.
type Labels = Vec<(&'static str, String)>;

/// A family of integer samples of one type, one per label set.
#[derive(Debug)]
struct Values {
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
}

impl EncodeMetric for Values {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        for (labels, value) in &self.samples {
            let mut sample = encoder.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(value, None)?,
                _ => sample.encode_gauge(value)?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// A family of histograms, one per label set.
#[derive(Debug)]
struct Histograms(Vec<(Labels, LibraryHistogram)>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        for (labels, histogram) in &self.0 {
            histogram.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The families of one scrape, in the order they are added.
#[derive(Default)]
struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Adds a family. `name` is the exposed name (a counter's with its `_total`, which the
    /// library adds back); `help` one sentence (the library adds its full stop).
    fn values(&mut self, name: &str, kind: MetricType, help: &str, samples: Vec<(Labels, u64)>) {
        let name = match kind {
            MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let help = help.strip_suffix('.').unwrap_or(help);
        self.registry.register(name, help, Values { kind, samples });
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.values(name, MetricType::Counter, help, vec![(Vec::new(), value)]);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.values(name, MetricType::Gauge, help, vec![(Vec::new(), value)]);
    }

    fn histograms(&mut self, name: &str, help: &str, samples: Vec<(Labels, LibraryHistogram)>) {
        let help = help.strip_suffix('.').unwrap_or(help);
        self.registry.register(name, help, Histograms(samples));
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.histograms(name, help, vec![(Vec::new(), histogram.exposed())]);
    }

    fn text(self) -> String {
        let mut text = String::new();
        // Writing into a String does not fail, and nothing above returns an error of its
        // own.
        prometheus_text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        text
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// The process-wide counters of the round and the shared log, and the round's gauges.
fn process_counters(out: &mut Exposition, c: &ProcessCounters, manager: &ManagerMetrics) {
    out.counter(
        "flotilla_rounds_total",
        "Rounds run by the manager.",
        c.rounds,
    );
    out.counter(
        "flotilla_log_writes_total",
        "Shared-log writes (each one write and one fsync).",
        c.log_writes,
    );
    out.counter(
        "flotilla_log_entries_written_total",
        "Entries written to the shared log.",
        c.entries_written,
    );
    out.counter(
        "flotilla_log_bytes_written_total",
        "Entry bytes written to the shared log.",
        manager.bytes_written.get(),
    );
    out.counter(
        "flotilla_log_group_writes_total",
        "Group-writes covered by the shared-log writes.",
        c.group_writes,
    );
    out.counter(
        "flotilla_meta_saves_total",
        "Groups whose term and vote were saved (a round's saves share one fsync).",
        c.meta_saves,
    );
    out.counter(
        "flotilla_frames_sent_total",
        "Frames handed to the transport.",
        c.frames_sent,
    );
    out.counter(
        "flotilla_messages_sent_total",
        "Raft messages in the frames sent.",
        c.messages_sent,
    );
    out.gauge(
        "flotilla_inbound_frames_queued",
        "Inbound frames waiting for the round (as of the last round).",
        manager.inbound_frames_queued.get(),
    );
    out.gauge(
        "flotilla_groups_hibernating",
        "Groups of this process that hibernate: idle, not ticked until woken.",
        manager.groups_hibernating.get(),
    );
}

/// Group wakes by reason and the liveness beacons that make them possible
/// (`crate::hibernation`).
fn hibernation(out: &mut Exposition, manager: &ManagerMetrics) {
    let wakes = WakeReason::ALL
        .iter()
        .map(|reason| {
            let count = manager.group_wakes[reason.index()].get();
            (labels(&[("reason", reason.name())]), count)
        })
        .collect();
    out.values(
        "flotilla_group_wakes_total",
        MetricType::Counter,
        "Hibernating groups woken, by reason (request, message, leader_down, \
         leader_restarted, peer_restarted).",
        wakes,
    );
    out.counter(
        "flotilla_beacons_sent_total",
        "Liveness beacons sent to peer processes (frames without messages).",
        manager.beacons_sent.get(),
    );
}

/// Raft messages received by kind, and what was refused or dropped before raft saw it:
/// proposals, liveness entries, messages the cores dropped.
fn messages_received_and_dropped(out: &mut Exposition, manager: &ManagerMetrics) {
    let received = MESSAGE_KINDS
        .iter()
        .zip(&manager.messages_received)
        .map(|(kind, counter)| (labels(&[("kind", kind)]), counter.get()))
        .collect();
    out.values(
        "flotilla_messages_received_total",
        MetricType::Counter,
        "Raft messages received from peers, by kind (PreVote, RequestVote, AppendEntries, \
         Heartbeat, InstallSnapshot, ReadIndexRequest, their responses, TimeoutNow).",
        received,
    );
    out.values(
        "flotilla_proposals_refused_total",
        MetricType::Counter,
        "Proposals refused before reaching raft, by reason (entry_too_large: more than \
         flotilla_node::limits::ENTRY_BYTES_MAX).",
        vec![(
            labels(&[("reason", "entry_too_large")]),
            manager.entries_refused_too_large.get(),
        )],
    );
    out.counter(
        "flotilla_liveness_processes_evicted_total",
        "Processes forgotten by the liveness map because it was full (frames from too many \
         distinct senders).",
        manager.liveness_processes_evicted.get(),
    );
    let dropped = RAFT_DROP_REASONS
        .iter()
        .zip(&manager.raft_messages_dropped)
        .map(|(reason, counter)| (labels(&[("reason", reason)]), counter.get()))
        .collect();
    out.values(
        "flotilla_raft_messages_dropped_total",
        MetricType::Counter,
        "Raft messages the cores dropped before their protocol saw them, by reason \
         (non_member: from a peer outside the group's configuration; out_of_bounds: a term \
         more than 2^32 ahead or an index or echo beyond its bound; invalid: inconsistent \
         with the log; transfer_vote: a vote flagged as a leadership transfer from a \
         candidate the leader did not announce).",
        dropped,
    );
}

/// What the transport refused or dropped to protect the process.
fn transport(out: &mut Exposition, t: &TransportMetrics) {
    let dropped = MessageDrop::ALL
        .iter()
        .map(|r| (labels(&[("reason", r.name())]), t.messages_dropped(*r)))
        .collect();
    out.values(
        "flotilla_transport_messages_dropped_total",
        MetricType::Counter,
        "Raft messages dropped by the transport, by reason (sender_mismatch: its from is \
         not the frame's sender; oversized: alone larger than a frame; wrong_recipient: \
         its to is not this process).",
        dropped,
    );
    out.counter(
        "flotilla_transport_frames_split_total",
        "Extra frames sent because what was queued for a destination exceeded one \
         frame's message or byte limit.",
        t.frames_split.get(),
    );
    let refused = IdentityRefusal::ALL
        .iter()
        .map(|r| (labels(&[("reason", r.name())]), t.identity_refusals(*r)))
        .collect();
    out.values(
        "flotilla_identity_refused_total",
        MetricType::Counter,
        "Raft frames, snapshot fetches and CLI calls refused because they name another \
         receiver (wrong_peer: another peer id, e.g. a store that lived at this address \
         before; wrong_cluster: another cluster).",
        refused,
    );
    let closed = ConnectionClose::ALL
        .iter()
        .map(|r| (labels(&[("reason", r.name())]), t.connections_closed(*r)))
        .collect();
    out.values(
        "flotilla_transport_connections_closed_total",
        MetricType::Counter,
        "Inbound connections closed before being served, by reason (source_cap: the oldest \
         of too many being set up from one address; handshake_timeout; request_timeout: \
         no complete plain-text request in time).",
        closed,
    );
    out.counter(
        "flotilla_transport_accept_errors_total",
        "Errors accepting inbound connections (the listener backs off after each).",
        t.accept_errors.get(),
    );
}

/// The process-wide histograms: round and write durations, batch sizes.
fn process_histograms(out: &mut Exposition, manager: &ManagerMetrics) {
    let histograms: [(&str, &str, &Histogram); 6] = [
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
    for (name, help, histogram) in histograms {
        out.histogram(name, help, histogram);
    }
}

type GroupHistogram = fn(&GroupMetrics) -> &Histogram;

/// The per-group histograms: name, help and where each group keeps it.
const GROUP_HISTOGRAMS: [(&str, &str, GroupHistogram); 5] = [
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

/// What every group of this process recorded, added up: the same names as the per-group
/// series, without the `group` label.
fn group_totals(out: &mut Exposition, manager: &ManagerMetrics) {
    let t = &manager.group_totals;
    let totals = [
        &t.apply_seconds,
        &t.apply_entries,
        &t.proposal_seconds,
        &t.read_index_seconds,
        &t.snapshot_save_seconds,
    ];
    for ((name, help, _), histogram) in GROUP_HISTOGRAMS.iter().zip(totals) {
        out.histogram(name, &format!("{help} All groups."), histogram);
    }
    let counters = [
        (
            "flotilla_snapshot_saves_total",
            "Local snapshots taken, all groups.",
            t.snapshot_save_seconds.count(),
        ),
        (
            "flotilla_snapshot_installs_total",
            "Snapshots fetched from the leader and installed, all groups.",
            t.snapshot_installs.get(),
        ),
        (
            "flotilla_snapshot_install_failures_total",
            "Snapshot installs that failed (copy error, deadline, superseded), all groups.",
            t.snapshot_install_failures.get(),
        ),
        (
            "flotilla_snapshot_fetched_bytes_total",
            "Bytes fetched from leaders by completed snapshot copies (a resumed copy counts \
             only what it fetched again), all groups.",
            t.snapshot_fetched_bytes.get(),
        ),
        (
            "flotilla_leader_starts_total",
            "Times a peer of this process became its group's leader.",
            t.leader_starts.get(),
        ),
        (
            "flotilla_leader_changes_total",
            "Leaders the peers of this process came to know (became leader or started \
             following).",
            t.leader_changes.get(),
        ),
        (
            "flotilla_term_changes_total",
            "Term changes seen by the peers of this process.",
            t.term_changes.get(),
        ),
        (
            "flotilla_replicator_events_total",
            "Replicator created, online, offline and destroyed events on the leaders of this \
             process.",
            t.replicator_events.get(),
        ),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, value);
    }
}

/// The role of this process's peer in a group, as `flotilla_groups` labels it.
fn role_name(status: &NodeStatus, me: &PeerId) -> &'static str {
    match status.role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
        Role::Follower if status.configuration.is_learner(me) => "learner",
        Role::Follower => "follower",
    }
}

const ROLES: [&str; 5] = [
    "leader",
    "follower",
    "learner",
    "candidate",
    "pre_candidate",
];
const HEALTH: [&str; 3] = ["no_leader", "apply_lagging", "followers_lagging"];
const REPLICATOR_STATES: [&str; 3] = ["probe", "replicate", "snapshot"];

/// The groups by role and health, their queues summed up, histograms across groups of
/// their lag, and the worst laggards: a fixed number of series whatever the number of
/// groups.
fn groups_summed_up(out: &mut Exposition, views: &[GroupView<'_>], me: &PeerId) {
    let mut roles = [0u64; ROLES.len()];
    let mut health = [0u64; HEALTH.len()];
    let mut states = [0u64; REPLICATOR_STATES.len()];
    let mut queued = [0u64; 3];
    let backlog = lag_histogram();
    let follower_lag = lag_histogram();
    let mut backlogs: Vec<(u64, Labels)> = Vec::new();
    let mut lags: Vec<(u64, Labels)> = Vec::new();
    for g in views {
        let role = role_name(&g.status, me);
        roles[ROLES.iter().position(|r| *r == role).unwrap_or(0)] += 1;
        health[0] += u64::from(g.status.leader.is_none());
        health[1] += u64::from(g.apply_backlog() >= LAGGING_ENTRIES_MIN);
        let followers_lagging = g.replicators.iter().any(|r| {
            g.lag(r) >= LAGGING_ENTRIES_MIN || matches!(r.state, ProgressState::Snapshot { .. })
        });
        health[2] += u64::from(followers_lagging);
        queued[0] += g.requests_queued;
        queued[1] += g.metrics.proposals_pending.get();
        queued[2] += g.metrics.reads_pending.get();
        backlog.observe(g.apply_backlog() as f64);
        if g.apply_backlog() > 0 {
            backlogs.push((g.apply_backlog(), labels(&[("group", &g.id)])));
        }
        for r in &g.replicators {
            states[state_index(r.state)] += 1;
            follower_lag.observe(g.lag(r) as f64);
            if g.lag(r) > 0 {
                let pairs = [("group", g.id.as_str()), ("peer", r.peer.as_str())];
                lags.push((g.lag(r), labels(&pairs)));
            }
        }
    }
    let by = |key: &'static str, names: &[&str], counts: &[u64]| -> Vec<(Labels, u64)> {
        let pairs = names.iter().zip(counts);
        pairs.map(|(n, c)| (labels(&[(key, n)]), *c)).collect()
    };
    out.values(
        "flotilla_groups",
        MetricType::Gauge,
        "Groups with a peer on this process, by that peer's role (leader, follower, \
         learner, candidate, pre_candidate).",
        by("role", &ROLES, &roles),
    );
    out.values(
        "flotilla_groups_unhealthy",
        MetricType::Gauge,
        "Groups of this process in trouble, by reason (no_leader: this peer knows no \
         leader; apply_lagging: at least flotilla_node::LAGGING_ENTRIES_MIN entries \
         committed and not applied here; followers_lagging: led here, and a follower is \
         that far behind or being sent a snapshot); a group may count under several.",
        by("reason", &HEALTH, &health),
    );
    out.values(
        "flotilla_replicators",
        MetricType::Gauge,
        "Followers and learners of the groups this process leads, by replication state \
         (probe, replicate, snapshot).",
        by("state", &REPLICATOR_STATES, &states),
    );
    let sums = [
        (
            "flotilla_requests_queued",
            "Requests (proposals, reads, admin) queued to the round and not yet taken, all \
             groups.",
        ),
        (
            "flotilla_proposals_pending",
            "Proposals accepted by the leader and not yet applied, all groups.",
        ),
        (
            "flotilla_reads_pending",
            "Reads accepted by the cores and not yet answered, all groups.",
        ),
    ];
    for ((name, help), value) in sums.into_iter().zip(queued) {
        out.gauge(name, help, value);
    }
    out.histograms(
        "flotilla_groups_apply_backlog_entries",
        "Groups by apply backlog: entries committed and not yet applied here, one \
         observation per group at the scrape.",
        vec![(Vec::new(), backlog)],
    );
    out.histograms(
        "flotilla_replicators_lag_entries",
        "Followers and learners of the groups led here by lag: the leader's last index \
         minus the follower's match index, one observation per follower at the scrape.",
        vec![(Vec::new(), follower_lag)],
    );
    laggards(out, backlogs, lags);
}

/// A histogram of entries behind, at the scrape: 0 has a bucket of its own.
fn lag_histogram() -> LibraryHistogram {
    LibraryHistogram::new(std::iter::once(0.0).chain(COUNT_BOUNDS))
}

/// The [`LAGGARDS_MAX`] groups furthest behind in applying, and followers furthest behind
/// their leader (only those behind at all).
fn laggards(out: &mut Exposition, mut backlogs: Vec<(u64, Labels)>, mut lags: Vec<(u64, Labels)>) {
    let worst = |list: &mut Vec<(u64, Labels)>| -> Vec<(Labels, u64)> {
        list.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        list.drain(..)
            .take(LAGGARDS_MAX)
            .map(|(value, l)| (l, value))
            .collect()
    };
    out.values(
        "flotilla_laggard_apply_backlog_entries",
        MetricType::Gauge,
        "The groups with the largest apply backlog here (at most flotilla_node::LAGGARDS_MAX, \
         only those behind): entries committed and not yet applied.",
        worst(&mut backlogs),
    );
    out.values(
        "flotilla_laggard_replicator_lag_entries",
        MetricType::Gauge,
        "The followers furthest behind their leader here (at most \
         flotilla_node::LAGGARDS_MAX, only those behind): the leader's last index minus the \
         follower's match index.",
        worst(&mut lags),
    );
}

fn state_index(state: ProgressState) -> usize {
    match state {
        ProgressState::Probe => 0,
        ProgressState::Replicate => 1,
        ProgressState::Snapshot { .. } => 2,
    }
}

type GroupValue = fn(&GroupView<'_>) -> u64;

/// Every series of each of `views`, labelled `group` (and `peer` for a leader's
/// replicators).
fn groups_in_detail(out: &mut Exposition, views: &[GroupView<'_>]) {
    for (name, help, get) in GROUP_HISTOGRAMS {
        let samples = views
            .iter()
            .map(|g| (labels(&[("group", &g.id)]), get(g.metrics).exposed()))
            .collect();
        out.histograms(name, help, samples);
    }
    let values: [(&str, MetricType, &str, GroupValue); 17] = [
        (
            "flotilla_snapshot_saves_total",
            MetricType::Counter,
            "Local snapshots taken.",
            |g| g.metrics.snapshot_save_seconds.count(),
        ),
        (
            "flotilla_snapshot_installs_total",
            MetricType::Counter,
            "Snapshots fetched from the leader and installed.",
            |g| g.metrics.snapshot_installs.get(),
        ),
        (
            "flotilla_snapshot_install_failures_total",
            MetricType::Counter,
            "Snapshot installs that failed (copy error, deadline, superseded).",
            |g| g.metrics.snapshot_install_failures.get(),
        ),
        (
            "flotilla_snapshot_fetched_bytes_total",
            MetricType::Counter,
            "Bytes fetched from the leader by completed snapshot copies.",
            |g| g.metrics.snapshot_fetched_bytes.get(),
        ),
        (
            "flotilla_leader_starts_total",
            MetricType::Counter,
            "Times this peer became the group's leader.",
            |g| g.metrics.leader_starts.get(),
        ),
        (
            "flotilla_leader_changes_total",
            MetricType::Counter,
            "Leaders this peer came to know (became leader or started following).",
            |g| g.metrics.leader_changes.get(),
        ),
        (
            "flotilla_term_changes_total",
            MetricType::Counter,
            "Term changes seen by this peer (elections anywhere in the group).",
            |g| g.metrics.term_changes.get(),
        ),
        (
            "flotilla_replicator_events_total",
            MetricType::Counter,
            "Replicator created, online, offline and destroyed events on this leader.",
            |g| g.metrics.replicator_events.get(),
        ),
        (
            "flotilla_requests_queued",
            MetricType::Gauge,
            "Requests (proposals, reads, admin) queued to the round and not yet taken.",
            |g| g.requests_queued,
        ),
        (
            "flotilla_proposals_pending",
            MetricType::Gauge,
            "Proposals accepted by the leader and not yet applied.",
            |g| g.metrics.proposals_pending.get(),
        ),
        (
            "flotilla_reads_pending",
            MetricType::Gauge,
            "Reads accepted by the core and not yet answered.",
            |g| g.metrics.reads_pending.get(),
        ),
        ("flotilla_term", MetricType::Gauge, "Current term.", |g| {
            g.status.term.get()
        }),
        (
            "flotilla_is_leader",
            MetricType::Gauge,
            "1 if this peer leads the group.",
            |g| u64::from(g.status.role == Role::Leader),
        ),
        (
            "flotilla_last_log_index",
            MetricType::Gauge,
            "Last index in this peer's log.",
            |g| g.status.last_index.get(),
        ),
        (
            "flotilla_committed_index",
            MetricType::Gauge,
            "Commit index known to this peer.",
            |g| g.status.committed.get(),
        ),
        (
            "flotilla_applied_index",
            MetricType::Gauge,
            "Index applied by this peer's state machine.",
            |g| g.status.applied.get(),
        ),
        (
            "flotilla_apply_backlog_entries",
            MetricType::Gauge,
            "Committed entries not yet applied (commit index minus applied index).",
            |g| g.apply_backlog(),
        ),
    ];
    for (name, kind, help, get) in values {
        let samples = views
            .iter()
            .map(|g| (labels(&[("group", &g.id)]), get(g)))
            .collect();
        out.values(name, kind, help, samples);
    }
    replicators_in_detail(out, views);
}

type ReplicatorValue = fn(&GroupView<'_>, &ReplicatorSample) -> u64;

fn replicators_in_detail(out: &mut Exposition, views: &[GroupView<'_>]) {
    let gauges: [(&str, &str, ReplicatorValue); 4] = [
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
            |g, r| g.lag(r),
        ),
        (
            "flotilla_replicator_inflight_messages",
            "Leader only: AppendEntries sent to the peer and not yet acknowledged.",
            |_, r| r.inflight as u64,
        ),
    ];
    for (name, help, get) in gauges {
        let mut samples = Vec::new();
        for g in views {
            for r in &g.replicators {
                let pairs = [("group", g.id.as_str()), ("peer", r.peer.as_str())];
                samples.push((labels(&pairs), get(g, r)));
            }
        }
        out.values(name, MetricType::Gauge, help, samples);
    }
    let mut samples = Vec::new();
    for g in views {
        for r in &g.replicators {
            let current = state_index(r.state);
            for (i, state) in REPLICATOR_STATES.iter().enumerate() {
                let pairs = [
                    ("group", g.id.as_str()),
                    ("peer", r.peer.as_str()),
                    ("state", state),
                ];
                samples.push((labels(&pairs), u64::from(i == current)));
            }
        }
    }
    out.values(
        "flotilla_replicator_state",
        MetricType::Gauge,
        "Leader only: 1 for the replicator's current state (probe, replicate, snapshot).",
        samples,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::LogIndex;

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        assert_eq!(MetricsQuery::parse(None), Ok(MetricsQuery::Store));
        assert_eq!(MetricsQuery::parse(Some("")), Ok(MetricsQuery::Store));
        assert_eq!(
            MetricsQuery::parse(Some("group=42")),
            Ok(MetricsQuery::Group(42))
        );
        assert_eq!(
            MetricsQuery::parse(Some("groups=all")),
            Ok(MetricsQuery::AllGroups)
        );
        for bad in [
            "group=",
            "group=x1",
            "group=-1",
            "group=18446744073709551616",
            "groups=some",
            "group=1&groups=all",
            "colour=red",
            "group",
        ] {
            let error = MetricsQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(error.http_status(), 400, "{bad}: {error}");
            assert!(error.to_string().contains("group=ID"), "{bad}: {error}");
        }
        let long = format!("group={}", "1".repeat(METRICS_QUERY_BYTES_MAX));
        let error = MetricsQuery::parse(Some(&long)).unwrap_err();
        assert!(error.to_string().contains("at most 256"), "{error}");
        assert_eq!(MetricsQueryError::UnknownGroup(7).http_status(), 404);
    }

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let h = Histogram::counts();
        for v in [0, 1, 2, 3, 100, 1_000_000] {
            h.observe(v);
        }
        let mut out = Exposition::default();
        out.histograms(
            "x",
            "X.",
            vec![(labels(&[("peer", "a\"b\\c")]), h.exposed())],
        );
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP x X.");
        assert_eq!(lines[1], "# TYPE x histogram");
        assert_eq!(lines[2], "x_bucket{peer=\"a\\\"b\\\\c\",le=\"1\"} 2");
        assert_eq!(lines[3], "x_bucket{peer=\"a\\\"b\\\\c\",le=\"2\"} 3");
        assert!(text.contains("le=\"+Inf\"} 6\n"), "{text}");
        assert!(text.contains("x_count{peer=\"a\\\"b\\\\c\"} 6\n"), "{text}");
        assert!(
            text.contains("x_sum{peer=\"a\\\"b\\\\c\"} 1000106"),
            "{text}"
        );
        assert_eq!(h.count(), 6);
    }

    /// A group as a scrape would see it: `committed` and `applied` indexes, `role`, and on
    /// a leader one follower per `(peer, match_index)`.
    fn view<'a>(
        metrics: &'a GroupMetrics,
        id: u64,
        role: Role,
        (committed, applied): (u64, u64),
        followers: &[(&str, u64)],
    ) -> GroupView<'a> {
        let status = NodeStatus {
            role,
            leader: (role == Role::Leader).then(|| PeerId::new("me")),
            last_index: LogIndex(committed),
            committed: LogIndex(committed),
            applied: LogIndex(applied),
            ..NodeStatus::default()
        };
        let replicators = followers
            .iter()
            .map(|(peer, matched)| ReplicatorSample {
                peer: PeerId::new(peer),
                match_index: LogIndex(*matched),
                next_index: LogIndex(matched + 1),
                inflight: 0,
                state: ProgressState::Replicate,
            })
            .collect();
        GroupView {
            id: id.to_string(),
            metrics,
            status,
            requests_queued: 1,
            replicators,
        }
    }

    #[test]
    fn groups_are_summed_up_by_role_and_health_with_the_worst_laggards() {
        let metrics = GroupMetrics::new(1);
        let me = PeerId::new("me");
        let mut views = Vec::new();
        // Eight followers behind in applying by 1..=8 entries; the 9th by 5,000.
        for id in 1..=8u64 {
            let mut v = view(&metrics, id, Role::Follower, (100, 100 - id), &[]);
            v.status.leader = Some(PeerId::new("other"));
            views.push(v);
        }
        views.push(view(&metrics, 9, Role::Follower, (6000, 1000), &[]));
        // A leader with a follower 2,000 entries behind and one up to date.
        views.push(view(
            &metrics,
            10,
            Role::Leader,
            (3000, 3000),
            &[("a", 1000), ("b", 3000)],
        ));
        // A learner (follower role, in the learners) and a candidate.
        let mut learner = view(&metrics, 11, Role::Follower, (5, 5), &[]);
        learner.status.configuration.learners.insert(me.clone());
        views.push(learner);
        views.push(view(&metrics, 12, Role::Candidate, (5, 5), &[]));
        let mut out = Exposition::default();
        groups_summed_up(&mut out, &views, &me);
        let text = out.text();
        let has = |line: &str| assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        has("flotilla_groups{role=\"leader\"} 1");
        has("flotilla_groups{role=\"follower\"} 9");
        has("flotilla_groups{role=\"learner\"} 1");
        has("flotilla_groups{role=\"candidate\"} 1");
        has("flotilla_groups{role=\"pre_candidate\"} 0");
        // Group 9, the learner and the candidate know no leader.
        has("flotilla_groups_unhealthy{reason=\"no_leader\"} 3");
        has("flotilla_groups_unhealthy{reason=\"apply_lagging\"} 1");
        has("flotilla_groups_unhealthy{reason=\"followers_lagging\"} 1");
        has("flotilla_replicators{state=\"replicate\"} 2");
        has("flotilla_requests_queued 12");
        has("flotilla_groups_apply_backlog_entries_count 12");
        has("flotilla_groups_apply_backlog_entries_bucket{le=\"0\"} 3");
        has("flotilla_replicators_lag_entries_bucket{le=\"0\"} 1");
        has("flotilla_replicators_lag_entries_count 2");
        // The five worst, largest first; only the follower that lags.
        let laggards: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flotilla_laggard_apply_backlog_entries{"))
            .collect();
        assert_eq!(
            laggards,
            [
                "flotilla_laggard_apply_backlog_entries{group=\"9\"} 5000",
                "flotilla_laggard_apply_backlog_entries{group=\"8\"} 8",
                "flotilla_laggard_apply_backlog_entries{group=\"7\"} 7",
                "flotilla_laggard_apply_backlog_entries{group=\"6\"} 6",
                "flotilla_laggard_apply_backlog_entries{group=\"5\"} 5",
            ]
        );
        has("flotilla_laggard_replicator_lag_entries{group=\"10\",peer=\"a\"} 2000");
        assert!(!text.contains("peer=\"b\""), "{text}");
    }

    #[test]
    fn counters_keep_their_total_suffix() {
        let mut out = Exposition::default();
        out.counter("flotilla_rounds_total", "Rounds run.", 3);
        assert_eq!(
            out.text(),
            "# HELP flotilla_rounds_total Rounds run.\n\
             # TYPE flotilla_rounds_total counter\n\
             flotilla_rounds_total 3\n"
        );
    }
}
