//! The Raft state machine of one peer: [`Raft`].
//!
//! Owns: role, term and vote, the leader's view of its peers, and every protocol decision.
//! It is driven by method calls (ticks, messages, proposals, reads, changes, "storage done"
//! notices) and answers with a [`Ready`]. Must never: perform I/O, read a clock, spawn
//! threads or use unseeded randomness; the simulator depends on it being a pure function of
//! its inputs and seed.
//!
//! The protocol is split by concern: `election` (pre-vote, votes, priority), `replication`
//! (AppendEntries, heartbeats, snapshots, commit), `read` (ReadIndex and lease reads),
//! `change` (membership and leadership transfer), `hibernation` and `planted` (the
//! planted-bug hooks). This file holds the state, the public API and the role transitions,
//! and dispatches each message to the role's step function. The state it holds of reads
//! (`read_state`), of changes and transfers (`change_state`) and of planted bugs
//! (`planted_bugs`) lives in files of their own that know nothing of [`Raft`], so that no
//! two files of the core depend on each other.

mod change;
mod change_state;
mod election;
mod hibernation;
mod planted;
mod planted_bugs;
mod read;
mod read_state;
mod replication;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::config::Config;
use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Priority, Term};
use crate::log::{LogStore, RaftLog};
use crate::membership::{Configuration, ConfigurationHistory};
use crate::message::{
    AppendResult, Echo, Message, MessageBody, INDEX_MAX, TERM_AHEAD_MAX, TERM_MAX,
};
use crate::progress::Progress;
use crate::ready::{Event, ReadMode, Ready, ReplicatorChange};
use crate::rng::Rng;
use crate::types::{Entry, EntryPayload, HardState, Role, SnapshotMeta};
pub use hibernation::election_rank;

pub use change_state::ChangeStage;
use change_state::{MembershipChange, Transfer};
use planted_bugs::Planted;
#[cfg(feature = "planted-bugs")]
pub use planted_bugs::PlantedBugs;
use read_state::ReadState;

/// Messages the core dropped before the protocol saw them, by reason (for metrics; the
/// runtime sums them over groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DroppedMessages {
    /// From a peer outside the configuration ([`Raft::step`]'s member check).
    pub non_member: u64,
    /// A term or index beyond the bounds ([`Raft::check_bounds`]).
    pub out_of_bounds: u64,
    /// Malformed for this peer's log ([`Raft::check_message`]).
    pub invalid: u64,
    /// A vote flagged as a leadership transfer from a candidate that is not the current
    /// leader's transfer target.
    pub transfer_vote: u64,
    /// Why the last bounded or invalid message was dropped.
    pub last_reason: Option<RaftError>,
}

impl DroppedMessages {
    /// The counters, in the order of the fields: non-member, out of bounds, invalid,
    /// transfer vote (cheap to compare before and after a step).
    #[must_use]
    pub fn counts(&self) -> [u64; 4] {
        [
            self.non_member,
            self.out_of_bounds,
            self.invalid,
            self.transfer_vote,
        ]
    }
}

/// One peer's consensus core. See the module documentation.
pub struct Raft<S: LogStore> {
    config: Config,
    id: PeerId,
    role: Role,
    term: Term,
    vote: Option<PeerId>,
    leader: Option<PeerId>,
    /// The term in which this peer started following `leader`: reported when it stops
    /// following, after its own term may already have moved on.
    following_term: Term,
    log: RaftLog<S>,
    configurations: ConfigurationHistory,
    /// The newest snapshot taken or installed; sent to peers behind the log's first index.
    latest_snapshot: SnapshotMeta,
    /// The snapshot before it: the log is kept back to this one.
    previous_snapshot_index: LogIndex,
    /// A snapshot received from the leader that the driver is installing.
    installing_snapshot: Option<(SnapshotMeta, PeerId)>,

    /// Ticks since this core started. Time never moves otherwise.
    now: u64,
    election_elapsed: u64,
    randomized_election_timeout: u64,
    heartbeat_elapsed: u64,
    /// Until this tick, vote and pre-vote requests are refused (a live leader was heard, or
    /// the peer just restarted): thesis §4.2.3, the guard that makes leases safe.
    vote_guard_until: u64,
    /// Priority election: the priority a candidate needs now, decaying when nobody better
    /// shows up (SOFAJRaft's `targetPriority`).
    target_priority: Priority,
    priority_wait_rounds: u64,

    /// Votes received in the current (pre-)election.
    votes: BTreeMap<PeerId, bool>,

    /// Leader: what is known of each peer, this one included (its match is what is durable).
    progress: BTreeMap<PeerId, Progress>,
    /// Leader: the first entry of its term; "leader start" once it commits.
    term_start_index: LogIndex,
    leader_started: bool,
    uncommitted_bytes: u64,
    /// Leader: `(last index, bytes)` of each proposal counted in `uncommitted_bytes`, oldest
    /// first; the bytes are released when the last index commits. Lets a commit release
    /// bytes without reading (cloning) the committed entries back from the log.
    uncommitted_batches: VecDeque<(LogIndex, u64)>,
    /// Leader: new entries or a new commit index must be sent at the next `ready`.
    append_pending: bool,
    commit_sent: LogIndex,
    change: Option<MembershipChange>,
    transfer: Option<Transfer>,
    /// The configuration was reset locally (unsafe); a leader writes it as its first entry.
    configuration_forced: bool,
    /// Leader: a leadership transfer sent TimeoutNow, so another peer may be elected in a
    /// later term without waiting for the vote guard; leases end for the rest of this term.
    lease_disabled: bool,
    /// Leader: won without a vote request (sole voter), so the term may not be durable yet.
    leader_term_unsure: bool,
    /// The driver's queues are full: answer AppendEntries with busy (SOFAJRaft's follower
    /// answers EBUSY when its log manager cannot take more).
    busy: bool,

    reads: ReadState,

    /// Hibernation (module `hibernation`): this peer sends nothing and its timers stand
    /// still until something wakes it. Invariant: a hibernating peer is a leader with
    /// nothing pending, or a follower that knows its leader.
    hibernating: bool,
    /// Leader: consecutive ticks with nothing to do; it hibernates at
    /// `Config::hibernate_idle_ticks`.
    idle_ticks: u64,
    /// Leader: tick of its last hibernate heartbeat. An answer echoing an older tick answers
    /// something sent before it hibernated: stale, it does not wake the leader.
    hibernated_at: u64,
    /// Leader: echoes of messages sent before this tick never count toward the lease. Set
    /// on waking: the clock stood still while the leader hibernated, so an older echo says
    /// nothing about how long ago a quorum heard it.
    lease_floor_tick: u64,
    /// Follower: the highest echo tick seen from the current leader in this term, to tell a
    /// hibernate heartbeat from one overtaken by newer messages.
    leader_echo_tick: u64,
    /// Follower: the echo of the hibernate heartbeat it hibernated on. Answering it later
    /// tells the leader this follower is awake, which wakes the leader.
    hibernated_echo: Echo,

    last_snapshot_tick: u64,
    rng: Rng,
    ready: Ready,
    handed_out_hard_state: HardState,

    /// Messages dropped before the protocol saw them.
    dropped: DroppedMessages,
    /// Follower: the transfer target its leader announced in the given term (see
    /// `MessageBody::Heartbeat::transfer_target`).
    announced_transfer: Option<(Term, PeerId)>,
    /// A leader outside this peer's configuration that a member named, with its term (see
    /// `accepts_sender`).
    vouched_leader: Option<(Term, PeerId)>,

    #[cfg(feature = "planted-bugs")]
    bugs: PlantedBugs,
}

/// A read-only summary of one core, for `describe` dumps, metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This peer.
    pub id: PeerId,
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: Option<PeerId>,
    /// Known leader.
    pub leader: Option<PeerId>,
    /// First index in the log.
    pub first_index: LogIndex,
    /// Last index in the log.
    pub last_index: LogIndex,
    /// Last durable index.
    pub durable_index: LogIndex,
    /// Commit index.
    pub committed: LogIndex,
    /// Applied index.
    pub applied: LogIndex,
    /// Configuration in force.
    pub configuration: Configuration,
    /// Leader only: match index per peer.
    pub matched: BTreeMap<PeerId, LogIndex>,
    /// Stage of a membership change in progress on this leader.
    pub change_stage: Option<ChangeStage>,
    /// Target of a leadership transfer in progress on this leader.
    pub transfer_target: Option<PeerId>,
    /// Newest snapshot index.
    pub snapshot_index: LogIndex,
    /// The peer hibernates (see [`Raft::is_hibernating`]).
    pub hibernating: bool,
}

impl<S: LogStore> Raft<S> {
    /// Creates a core over `store` (the durable log, with its latest snapshot) and the
    /// durable `hard_state`. `applied` is the index the state machine has applied (after a
    /// restart: the snapshot index it loaded).
    pub fn new(
        config: Config,
        store: S,
        hard_state: HardState,
        applied: LogIndex,
    ) -> Result<Raft<S>, RaftError> {
        config.validate()?;
        let snapshot = store.snapshot_meta();
        // A snapshot holds only committed entries, so its index is committed even if the
        // hard state written before it was installed says less.
        let log = RaftLog::new(store, hard_state.commit.max(snapshot.index), applied)?;
        let mut configurations =
            ConfigurationHistory::new(snapshot.index, snapshot.configuration.clone());
        // Rebuild the configuration history from configuration entries in the log, as
        // SOFAJRaft's log manager does when it opens a log.
        let first = log.first_index().max(snapshot.index.next());
        let last = log.last_index();
        let mut next = first;
        while next <= last {
            let batch = log
                .entries(next, last.next(), 4 * 1024 * 1024)
                .map_err(|e| RaftError::Io(format!("reading the log at {next}: {e}")))?;
            let Some(batch_last) = batch.last().map(|e| e.index) else {
                break;
            };
            for entry in batch {
                if let EntryPayload::Configuration(c) = entry.payload {
                    configurations.push(entry.index, c);
                }
            }
            next = batch_last.next();
        }
        let id = config.id.clone();
        let rng = Rng::new(config.random_seed ^ hash_name(id.as_str()));
        // A restarted peer may have acknowledged a leader whose lease still runs: refuse
        // votes for one election timeout (see `Config::start_with_vote_guard`).
        let vote_guard_until = if config.start_with_vote_guard {
            config.election_timeout_ticks
        } else {
            0
        };
        let target_priority = configurations.current().max_voter_priority();
        let mut raft = Raft {
            id: id.clone(),
            role: Role::Follower,
            term: hard_state.term,
            vote: hard_state.vote.clone(),
            leader: None,
            following_term: Term::ZERO,
            log,
            configurations,
            previous_snapshot_index: snapshot.index,
            latest_snapshot: snapshot,
            installing_snapshot: None,
            now: 0,
            election_elapsed: 0,
            randomized_election_timeout: 0,
            heartbeat_elapsed: 0,
            vote_guard_until,
            target_priority,
            priority_wait_rounds: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: LogIndex::ZERO,
            leader_started: false,
            uncommitted_bytes: 0,
            uncommitted_batches: VecDeque::new(),
            append_pending: false,
            commit_sent: LogIndex::ZERO,
            change: None,
            transfer: None,
            configuration_forced: false,
            busy: false,
            lease_disabled: false,
            leader_term_unsure: false,
            reads: ReadState::default(),
            hibernating: false,
            idle_ticks: 0,
            hibernated_at: 0,
            lease_floor_tick: 0,
            leader_echo_tick: 0,
            hibernated_echo: Echo::default(),
            last_snapshot_tick: 0,
            rng,
            ready: Ready::default(),
            handed_out_hard_state: hard_state,
            config,
            #[cfg(feature = "planted-bugs")]
            bugs: PlantedBugs::default(),
            dropped: DroppedMessages::default(),
            announced_transfer: None,
            vouched_leader: None,
        };
        raft.reset_election_timer();
        // SOFAJRaft: a single-member group elects itself at start.
        if raft.is_sole_voter() {
            raft.campaign(false);
        }
        Ok(raft)
    }

    /// Switches planted protocol mistakes on or off (planted-bug test only).
    #[cfg(feature = "planted-bugs")]
    pub fn set_planted_bugs(&mut self, bugs: PlantedBugs) {
        self.bugs = bugs;
    }

    // ----- accessors -------------------------------------------------------------------

    /// This peer's id.
    #[must_use]
    pub fn id(&self) -> &PeerId {
        &self.id
    }

    /// Current role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    #[must_use]
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this peer knows of.
    #[must_use]
    pub fn leader(&self) -> Option<&PeerId> {
        self.leader.as_ref()
    }

    /// The election timeout in force, in ticks.
    #[must_use]
    pub fn election_timeout_ticks(&self) -> u64 {
        self.config.election_timeout_ticks
    }

    /// Commit index.
    #[must_use]
    pub fn committed(&self) -> LogIndex {
        self.log.committed
    }

    /// Applied index (as reported by the driver).
    #[must_use]
    pub fn applied(&self) -> LogIndex {
        self.log.applied
    }

    /// Last log index.
    #[must_use]
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// First log index.
    #[must_use]
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// The configuration in force.
    #[must_use]
    pub fn configuration(&self) -> &Configuration {
        self.configurations.current()
    }

    /// The index of the entry (or snapshot) that carried the configuration in force: it
    /// moves whenever the configuration does, so a caller can notice a change without
    /// comparing configurations.
    #[must_use]
    pub fn configuration_index(&self) -> LogIndex {
        self.configurations.current_index()
    }

    /// The underlying store.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.log.store
    }

    /// True if this leader's lease is valid now (thesis §6.4.1). Never while it hibernates,
    /// nor after it wakes until a quorum answered a message sent since.
    #[must_use]
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && !self.hibernating
            && self.leader_started
            && !self.lease_disabled
            && self.lease_expiry() > self.now
    }

    /// Peers the leader heard from within an election timeout (SOFAJRaft's alive peers).
    #[must_use]
    pub fn alive_peers(&self) -> Vec<PeerId> {
        self.alive_peers_iter().cloned().collect()
    }

    /// [`Raft::alive_peers`] without allocating (in peer order).
    pub fn alive_peers_iter(&self) -> impl Iterator<Item = &PeerId> + Clone + '_ {
        let window = self.config.election_timeout_ticks;
        self.progress
            .iter()
            .filter(move |(p, pr)| **p == self.id || pr.last_heard_tick + window > self.now)
            .map(|(p, _)| p)
    }

    /// Leader only (empty otherwise): what it knows of each replicated peer, this one
    /// included (for metrics: match and next index, state, inflight window).
    #[must_use]
    pub fn progress(&self) -> &BTreeMap<PeerId, Progress> {
        &self.progress
    }

    /// Term of the last entry of the log (of the snapshot when the log is empty).
    #[must_use]
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// Messages dropped before the protocol saw them, by reason.
    #[must_use]
    pub fn dropped_messages(&self) -> &DroppedMessages {
        &self.dropped
    }

    /// A summary of this core.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.id.clone(),
            role: self.role,
            term: self.term,
            vote: self.vote.clone(),
            leader: self.leader.clone(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            durable_index: self.log.durable_index(),
            committed: self.log.committed,
            applied: self.log.applied,
            configuration: self.configurations.current().clone(),
            matched: self
                .progress
                .iter()
                .map(|(p, pr)| (p.clone(), pr.match_index))
                .collect(),
            change_stage: self.change.as_ref().map(|c| c.stage.clone()),
            transfer_target: self.transfer.as_ref().map(|t| t.target.clone()),
            snapshot_index: self.latest_snapshot.index,
            hibernating: self.hibernating,
        }
    }

    /// A human-readable dump of everything (SOFAJRaft's `describe`).
    #[must_use]
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let s = self.status();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "peer {} role={} term={} vote={:?} leader={:?} hibernating={}",
            s.id, s.role, s.term, s.vote, s.leader, s.hibernating
        );
        let _ = writeln!(
            out,
            "log first={} last={} durable={} committed={} applied={} snapshot={}",
            s.first_index, s.last_index, s.durable_index, s.committed, s.applied, s.snapshot_index
        );
        let c = &s.configuration;
        let _ = writeln!(
            out,
            "configuration voters={:?} learners={:?} old_voters={:?}",
            c.voters, c.learners, c.old_voters
        );
        for (peer, pr) in &self.progress {
            let _ = writeln!(
                out,
                "replicator {peer} state={:?} match={} next={} inflight={} heard={}",
                pr.state,
                pr.match_index,
                pr.next_index,
                pr.inflights.len(),
                pr.last_heard_tick
            );
        }
        out
    }

    // ----- inputs ------------------------------------------------------------------------

    /// Advances time by one tick. A hibernating peer only counts it: it has nothing to time
    /// out, and its driver need not tick it at all.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.hibernating {
            return;
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
        self.tick_reads();
        self.tick_snapshot();
    }

    /// Handles a message from a peer. Messages for another peer, or from a peer that is
    /// this one, are ignored.
    ///
    /// Messages come from the network: one that is malformed or claims what this peer's log
    /// cannot hold is dropped (see [`Raft::check_message`]) and never reaches the protocol.
    pub fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            return;
        }
        if !self.accepts_sender(&message) {
            self.dropped.non_member += 1;
            return;
        }
        if message.term < self.term {
            // Only the sender and the echo are used: a stale leader learns our term.
            self.answer_lower_term(message);
            return;
        }
        if let Err(why) = self.check_bounds(&message) {
            self.dropped.out_of_bounds += 1;
            self.dropped.last_reason = Some(why);
            return;
        }
        if let Err(why) = self.check_message(&message) {
            self.dropped.invalid += 1;
            self.dropped.last_reason = Some(why);
            return;
        }
        self.note_vouched_leader(&message);
        if self.hibernating && !self.hibernating_accepts(&message) {
            return;
        }
        if message.term > self.term && !self.accept_higher_term(&message) {
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(message),
            Role::PreCandidate | Role::Candidate => self.step_candidate(message),
            Role::Follower => self.step_follower(message),
        }
    }

    /// Raft traffic comes from members: a message from a peer outside this
    /// peer's configuration is dropped, except
    /// - by a leader, from a peer it replicates to (a voter catching up before it joins);
    /// - from the leader this peer follows in the current term (a leader that removed
    ///   itself still hands off with TimeoutNow once the change committed);
    /// - by a peer with no configuration yet (it is being added and knows no member): it
    ///   accepts a leader's AppendEntries, Heartbeat and InstallSnapshot, which bring it one;
    /// - the same leader traffic from a leader a member named when it refused this peer's
    ///   vote, in that term: this peer's log lacks the entry that added that leader.
    ///
    /// Who a sender *is* is the transport's to prove (with TLS, certificates name stores);
    /// this check keeps out removed members and strangers.
    fn accepts_sender(&self, message: &Message) -> bool {
        if self.planted(Planted::SkipMemberCheck) {
            return true;
        }
        let configuration = self.configurations.current();
        if configuration.contains(&message.from) {
            return true;
        }
        if self.role == Role::Leader && self.progress.contains_key(&message.from) {
            return true;
        }
        if message.term == self.term && self.leader.as_ref() == Some(&message.from) {
            return true;
        }
        let leader_traffic = matches!(
            message.body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
        );
        let vouched = matches!(&self.vouched_leader,
            Some((term, leader)) if *term == message.term && *leader == message.from);
        leader_traffic && (configuration.is_empty() || vouched)
    }

    /// A member refused this peer's vote on behalf of a leader this peer's configuration
    /// lacks (its log is behind the entry that added it): that leader's traffic is taken
    /// in that term (see `RequestVoteResponse::leader`).
    fn note_vouched_leader(&mut self, message: &Message) {
        if let MessageBody::RequestVoteResponse {
            granted: false,
            leader: Some(leader),
            ..
        } = &message.body
        {
            if *leader != self.id && !self.configurations.current().contains(leader) {
                self.vouched_leader = Some((message.term, leader.clone()));
            }
        }
    }

    /// Terms and indexes from the network are bounded before any arithmetic touches them:
    /// a term more than [`TERM_AHEAD_MAX`] ahead of this peer's or above [`TERM_MAX`], an
    /// index above [`INDEX_MAX`], or an echo of a tick or read round this leader has not
    /// reached (it would stretch the lease or confirm reads no heartbeat confirmed) is
    /// refused.
    pub fn check_bounds(&self, message: &Message) -> Result<(), RaftError> {
        let bad = |why: String| {
            Err(RaftError::InvalidArgument(format!(
                "message {} from {} dropped: {why}",
                message.body.name(),
                message.from
            )))
        };
        let term = message.term;
        if term > TERM_MAX || term.get() > self.term.get().saturating_add(TERM_AHEAD_MAX) {
            return bad(format!(
                "term {term} is too far ahead of this peer's term {} (at most {TERM_AHEAD_MAX} \
                 ahead, at most {TERM_MAX})",
                self.term
            ));
        }
        let mut indexes: [LogIndex; 3] = [LogIndex::ZERO; 3];
        let mut terms: [Term; 2] = [Term::ZERO; 2];
        let mut echo_seen: Option<Echo> = None;
        match &message.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => {
                indexes[0] = *last_log_index;
                terms[0] = *last_log_term;
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                ..
            } => {
                let count = u64::try_from(entries.len()).unwrap_or(u64::MAX);
                indexes = [*prev_log_index, *leader_commit, prev_log_index.plus(count)];
                terms[0] = *prev_log_term;
            }
            MessageBody::AppendEntriesResponse { result, echo } => {
                if let AppendResult::Reject {
                    rejected,
                    hint,
                    hint_term,
                } = result
                {
                    indexes = [*rejected, *hint, LogIndex::ZERO];
                    terms[0] = *hint_term;
                } else if let AppendResult::Success { last_index } = result {
                    indexes[0] = *last_index;
                }
                echo_seen = Some(*echo);
            }
            MessageBody::HeartbeatResponse { echo } => echo_seen = Some(*echo),
            MessageBody::Heartbeat { commit, .. } => indexes[0] = *commit,
            MessageBody::InstallSnapshot { meta } => {
                indexes[0] = meta.index;
                terms[0] = meta.term;
            }
            MessageBody::InstallSnapshotResponse { installed } => {
                indexes[0] = installed.unwrap_or(LogIndex::ZERO);
            }
            MessageBody::ReadIndexResponse { result, .. } => {
                indexes[0] = *result.as_ref().unwrap_or(&LogIndex::ZERO);
            }
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::ReadIndexRequest { .. } => {}
        }
        if let Some(index) = indexes.iter().find(|i| **i > INDEX_MAX) {
            return bad(format!("index {index} above the limit {INDEX_MAX}"));
        }
        if let Some(t) = terms.iter().find(|t| **t > term) {
            return bad(format!("names term {t}, after the message's term {term}"));
        }
        if let Some(echo) = echo_seen {
            if self.role == Role::Leader
                && term == self.term
                && (echo.tick > self.now || echo.read_seq > self.reads.read_seq())
            {
                return bad(format!(
                    "echoes tick {} and read round {}, which this leader has not reached \
                     ({} and {})",
                    echo.tick,
                    echo.read_seq,
                    self.now,
                    self.reads.read_seq()
                ));
            }
        }
        Ok(())
    }

    /// Validates a message before the protocol sees it, so that a buggy or hostile peer
    /// cannot trip an internal assertion: entries must follow `prev_log_index` one by one
    /// with terms that never exceed the message's term or go backwards; acknowledgements may
    /// not claim indexes beyond this leader's log. The error says what was wrong; `step`
    /// drops such a message and counts it in [`Raft::dropped_messages`] (the runtime exports
    /// the count and logs the reason at debug level).
    pub fn check_message(&self, message: &Message) -> Result<(), RaftError> {
        let bad = |why: String| {
            Err(RaftError::InvalidArgument(format!(
                "message {} from {} dropped: {why}",
                message.body.name(),
                message.from
            )))
        };
        match &message.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                ..
            } => {
                if *prev_log_term > message.term {
                    return bad(format!(
                        "prev_log_term {prev_log_term} after term {}",
                        message.term
                    ));
                }
                let mut expected = prev_log_index.next();
                let mut term = *prev_log_term;
                for entry in entries {
                    if entry.index != expected {
                        return bad(format!("entry {} where {expected} was due", entry.index));
                    }
                    if entry.term < term || entry.term > message.term {
                        return bad(format!("entry {} has term {}", entry.index, entry.term));
                    }
                    if let EntryPayload::Configuration(configuration) = &entry.payload {
                        if let Err(why) = configuration.validate() {
                            return bad(format!("entry {}: {why}", entry.index));
                        }
                    }
                    expected = expected.next();
                    term = entry.term;
                }
            }
            MessageBody::AppendEntriesResponse {
                result:
                    AppendResult::Reject {
                        rejected: last_index,
                        ..
                    },
                ..
            }
            | MessageBody::AppendEntriesResponse {
                result: AppendResult::Success { last_index },
                ..
            }
            | MessageBody::InstallSnapshotResponse {
                installed: Some(last_index),
            } if *last_index > self.log.last_index() && message.term == self.term => {
                return bad(format!(
                    "acknowledges {last_index} beyond the last index {}",
                    self.log.last_index()
                ));
            }
            MessageBody::Heartbeat {
                commit,
                hibernate: true,
                ..
            } if *commit == LogIndex::ZERO => {
                // A leader hibernates only once an entry of its term committed.
                return bad("hibernate heartbeat with commit 0".into());
            }
            MessageBody::InstallSnapshot { meta } => {
                if meta.term > message.term {
                    return bad(format!(
                        "snapshot term {} after term {}",
                        meta.term, message.term
                    ));
                }
                if let Err(why) = meta.configuration.validate() {
                    return bad(format!("snapshot configuration: {why}"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Proposes one entry of application data. On success returns where it will be if it
    /// commits; the entry is committed when the state machine is handed `(index, term)`.
    pub fn propose(
        &mut self,
        data: Bytes,
        expected_term: Option<Term>,
    ) -> Result<(LogIndex, Term), RaftError> {
        self.wake();
        self.check_can_propose(expected_term, data.len() as u64)?;
        let index = self.log.last_index().next();
        let entry = Entry {
            index,
            term: self.term,
            payload: EntryPayload::Normal(data),
        };
        self.count_uncommitted(index, entry.size_bytes());
        self.log.append_one(entry);
        self.append_pending = true;
        Ok((index, self.term))
    }

    /// Proposes many entries at once; they get consecutive indexes. Returns the first and
    /// last index and the term.
    pub fn propose_batch<I: IntoIterator<Item = Bytes>>(
        &mut self,
        batch: I,
        expected_term: Option<Term>,
    ) -> Result<(LogIndex, LogIndex, Term), RaftError> {
        self.wake();
        self.check_can_propose(expected_term, 0)?;
        let first = self.log.last_index().next();
        let mut index = first.prev();
        let mut bytes = 0;
        for data in batch {
            index = index.next();
            let entry = Entry {
                index,
                term: self.term,
                payload: EntryPayload::Normal(data),
            };
            bytes += entry.size_bytes();
            self.log.append_one(entry);
        }
        if index < first {
            return Err(RaftError::InvalidArgument("empty proposal batch".into()));
        }
        self.count_uncommitted(index, bytes);
        self.append_pending = true;
        Ok((first, index, self.term))
    }

    /// Counts `bytes` of entries proposed up to `last` as uncommitted until `last` commits
    /// (a batch is released whole, so a partly committed batch briefly counts in full).
    fn count_uncommitted(&mut self, last: LogIndex, bytes: u64) {
        self.uncommitted_bytes += bytes;
        self.uncommitted_batches.push_back((last, bytes));
    }

    fn check_can_propose(&self, expected: Option<Term>, bytes: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if let Some(transfer) = &self.transfer {
            return Err(RaftError::Transferring {
                target: transfer.target.clone(),
            });
        }
        if let Some(expected) = expected {
            if expected != self.term {
                return Err(RaftError::WrongTerm {
                    expected,
                    actual: self.term,
                });
            }
        }
        if self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max {
            return Err(RaftError::Busy(format!(
                "{} uncommitted bytes exceed uncommitted_bytes_max {}",
                self.uncommitted_bytes + bytes,
                self.config.uncommitted_bytes_max
            )));
        }
        Ok(())
    }

    /// Requests a linearizable read identified by `id`. The result arrives in
    /// [`Ready::reads`] once the state machine has applied the read index.
    pub fn read(&mut self, id: u64, mode: ReadMode) -> Result<(), RaftError> {
        self.wake();
        self.start_read(id, mode)
    }

    /// Storage reports the entries handed out up to `index` (with `term`) durable.
    pub fn on_persisted(&mut self, index: LogIndex, term: Term) {
        if self.log.on_persisted(index, term).is_none() {
            return;
        }
        if self.log.durable_index() >= self.term_start_index {
            // The first entry of the term is durable, so the hard state written before it is.
            self.leader_term_unsure = false;
        }
        if self.role == Role::Leader {
            let now = self.now;
            if let Some(me) = self.progress.get_mut(&self.id) {
                me.update_match(index, now);
            }
            self.maybe_commit();
        }
    }

    /// The state machine applied everything up to `index`.
    pub fn on_applied(&mut self, index: LogIndex) {
        assert!(
            index <= self.log.applying,
            "peer {} applied {index} beyond what it was handed ({})",
            self.id,
            self.log.applying
        );
        if index > self.log.applied {
            self.log.applied = index;
            self.release_applied_reads();
        }
    }

    /// Metadata for a snapshot of the state machine at `index` (at most the applied index).
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Result<SnapshotMeta, RaftError> {
        if index > self.log.applied {
            return Err(RaftError::InvalidArgument(format!(
                "snapshot index {index} beyond applied index {}",
                self.log.applied
            )));
        }
        let term = self.log.term(index).map_err(|_| RaftError::Compacted {
            first_index: self.log.first_index(),
        })?;
        Ok(SnapshotMeta {
            index,
            term,
            configuration: self.configurations.at(index).clone(),
        })
    }

    /// The driver saved a snapshot durably. The log is then compacted back to the previous
    /// snapshot, so slow followers can still catch up from the log (SOFAJRaft).
    pub fn on_snapshot_saved(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.latest_snapshot.index {
            return;
        }
        self.last_snapshot_tick = self.now;
        let keep_from = self.latest_snapshot.index;
        self.previous_snapshot_index = keep_from;
        self.latest_snapshot = meta;
        if keep_from > self.log.compacted_index {
            if let Ok(term) = self.log.term(keep_from) {
                self.log.compacted_to(keep_from, term);
                self.configurations.compact_to(keep_from);
                self.ready.compact_to = Some((keep_from, term));
            }
        }
    }

    /// The driver finished installing the snapshot from [`Ready::snapshot`] durably (state
    /// machine loaded, log replaced by the snapshot).
    ///
    /// An older install that completes after a newer one was requested still counts: the
    /// driver's state machine and log now hold it, so the core moves to it too and keeps
    /// waiting for the newer one.
    pub fn on_snapshot_installed(&mut self, meta: &SnapshotMeta) {
        let Some((installing, source)) = self.installing_snapshot.take() else {
            return;
        };
        if installing != *meta {
            let superseded = meta.index < installing.index && meta.index > self.log.applied;
            self.installing_snapshot = Some((installing, source.clone()));
            if !superseded {
                return;
            }
        }
        self.log.restore(meta.index, meta.term);
        self.configurations
            .reset(meta.index, meta.configuration.clone());
        self.previous_snapshot_index = meta.index;
        self.latest_snapshot = meta.clone();
        self.last_snapshot_tick = self.now;
        self.release_applied_reads();
        let to = self.leader.clone().unwrap_or(source);
        self.send(
            to,
            MessageBody::InstallSnapshotResponse {
                installed: Some(meta.index),
            },
        );
    }

    /// The driver could not install the snapshot; the leader will retry.
    pub fn on_snapshot_install_failed(&mut self, meta: &SnapshotMeta) {
        if let Some((installing, source)) = self.installing_snapshot.take() {
            if installing == *meta {
                let to = self.leader.clone().unwrap_or(source);
                self.send(to, MessageBody::InstallSnapshotResponse { installed: None });
            } else {
                self.installing_snapshot = Some((installing, source));
            }
        }
    }

    /// True if [`Raft::ready`] would return work.
    #[must_use]
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
            || self.log.has_unpersisted()
            || (self.append_pending && self.role == Role::Leader)
            || self.reads_flushable()
            || (self.log.applicable_index() > self.log.applying
                && self.installing_snapshot.is_none())
            || self.hard_state() != self.handed_out_hard_state
    }

    /// Collects the work accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush_reads_leader();
            let commit_news = self.config.commit_broadcast && self.log.committed > self.commit_sent;
            if self.append_pending || commit_news {
                self.broadcast_append();
            }
        } else {
            self.flush_reads_follower();
        }
        let hard_state = self.hard_state();
        if hard_state != self.handed_out_hard_state {
            self.ready.hard_state = Some(hard_state.clone());
            self.handed_out_hard_state = hard_state;
        }
        self.ready.entries = self.log.take_unpersisted();
        self.collect_committed_entries();
        std::mem::take(&mut self.ready)
    }

    /// Queued reads can go out now: a leader sends its round only once it has committed
    /// an entry of its term; a follower forwards (or fails) them at once.
    fn reads_flushable(&self) -> bool {
        self.reads.has_unsent() && (self.role != Role::Leader || self.leader_started)
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote.clone(),
            commit: self.log.committed,
        }
    }

    fn collect_committed_entries(&mut self) {
        if self.installing_snapshot.is_some() {
            // The snapshot replaces the state machine: entries after the old applied index
            // would be applied on top of it in the wrong order.
            return;
        }
        let high = self.log.applicable_index();
        if high <= self.log.applying {
            return;
        }
        let low = self.log.applying.next();
        let high = high.min(low.plus(self.config.apply_batch_max as u64 - 1));
        let entries = match self.log.entries(low, high.next(), u64::MAX) {
            Ok(entries) => entries,
            Err(e) => panic!(
                "peer {} cannot read committed entries [{low}, {high}]: {e}",
                self.id
            ),
        };
        for entry in &entries {
            if let EntryPayload::Configuration(c) = &entry.payload {
                self.ready.events.push(Event::ConfigurationCommitted {
                    index: entry.index,
                    configuration: c.clone(),
                });
            }
        }
        if let Some(last) = entries.last() {
            self.log.applying = last.index;
        }
        self.ready.committed_entries = entries;
    }

    // ----- role transitions -------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.config.election_timeout_ticks;
        self.randomized_election_timeout = base + self.rng.below(base);
    }

    fn set_leader(&mut self, leader: Option<PeerId>) {
        if self.leader == leader {
            return;
        }
        if let Some(old) = self.leader.take() {
            if old != self.id {
                self.ready.events.push(Event::StopFollowing {
                    leader: old,
                    term: self.following_term,
                });
            }
        }
        self.leader_echo_tick = 0;
        if let Some(new) = &leader {
            if *new != self.id {
                self.following_term = self.term;
                self.ready.events.push(Event::StartFollowing {
                    leader: new.clone(),
                    term: self.term,
                });
                // A new leader is somebody: start again from the best priority.
                self.target_priority = self.configurations.current().max_voter_priority();
                self.priority_wait_rounds = 0;
            }
        }
        self.leader = leader;
        self.reads.leader_changed(&self.leader, &mut self.ready);
    }

    fn become_follower(&mut self, term: Term, leader: Option<PeerId>) {
        // Before the term moves on: `LeaderStop` reports the term this peer led.
        if self.role == Role::Leader {
            self.stop_leading();
        }
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.leader_echo_tick = 0;
        }
        self.stop_hibernating();
        self.role = Role::Follower;
        self.votes.clear();
        self.set_leader(leader);
        self.reset_election_timer();
    }

    fn stop_leading(&mut self) {
        let hint = RaftError::NotLeader { leader: None };
        self.reads
            .fail_all_leader(&hint, &self.id, self.term, &mut self.ready);
        if let Some(change) = self.change.take() {
            change.fail(self.not_leader(), &mut self.ready);
        }
        if let Some(transfer) = self.transfer.take() {
            let result = if transfer.timeout_now_sent {
                Ok(())
            } else {
                Err(RaftError::NotLeader { leader: None })
            };
            self.ready.events.push(Event::TransferFinished {
                target: transfer.target,
                result,
            });
        }
        for peer in self.progress.keys() {
            if *peer != self.id {
                self.ready.events.push(Event::Replicator {
                    peer: peer.clone(),
                    change: ReplicatorChange::Destroyed,
                });
            }
        }
        self.progress.clear();
        self.leader_started = false;
        self.uncommitted_bytes = 0;
        self.uncommitted_batches.clear();
        self.ready
            .events
            .push(Event::LeaderStop { term: self.term });
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "peer {} term {}",
            self.id,
            self.term
        );
        self.stop_hibernating();
        self.role = Role::Leader;
        // Only our own vote: no request went out, so nothing proves the term durable yet.
        self.leader_term_unsure = self.votes.len() <= 1;
        self.lease_disabled = false;
        self.votes.clear();
        self.set_leader(Some(self.id.clone()));
        self.heartbeat_elapsed = 0;
        self.leader_started = false;
        self.progress.clear();
        self.sync_progress();
        // The first entry of the term: commit it to learn what is committed (thesis §6.4)
        // and to signal "leader start". A locally reset configuration is written instead,
        // so it becomes durable and replicated.
        let payload = if self.configuration_forced {
            self.configuration_forced = false;
            EntryPayload::Configuration(self.configurations.current().clone())
        } else {
            EntryPayload::NoOp
        };
        let index = self.log.last_index().next();
        self.term_start_index = index;
        let entry = Entry {
            index,
            term: self.term,
            payload,
        };
        if let EntryPayload::Configuration(c) = &entry.payload {
            self.configurations.push(index, c.clone());
        }
        self.log.append_one(entry);
        self.append_pending = true;
        self.commit_sent = LogIndex::ZERO;
    }

    /// Makes the progress map hold exactly the peers the leader replicates to: every peer
    /// of the configuration plus peers catching up for a change, and this peer itself.
    fn sync_progress(&mut self) {
        let mut wanted = self.configurations.current().all_peers();
        wanted.insert(self.id.clone());
        if let Some(change) = &self.change {
            wanted.extend(change.catching_up().cloned());
        }
        let removed: Vec<PeerId> = self
            .progress
            .keys()
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        for peer in removed {
            self.progress.remove(&peer);
            self.ready.events.push(Event::Replicator {
                peer,
                change: ReplicatorChange::Destroyed,
            });
        }
        let next = self.log.last_index().next();
        for peer in wanted {
            if self.progress.contains_key(&peer) {
                continue;
            }
            let mut pr = Progress::new(
                next,
                self.now,
                self.config.inflight_msgs_max,
                self.config.inflight_bytes_max,
            );
            if peer == self.id {
                pr.match_index = self.log.durable_index();
                pr.become_replicate();
            } else {
                self.ready.events.push(Event::Replicator {
                    peer: peer.clone(),
                    change: ReplicatorChange::Created,
                });
            }
            self.progress.insert(peer, pr);
        }
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            leader: self.leader.clone().filter(|l| *l != self.id),
        }
    }

    fn is_sole_voter(&self) -> bool {
        let c = self.configurations.current();
        !c.is_joint() && c.voters.len() == 1 && c.voters.contains(&self.id)
    }

    fn send(&mut self, to: PeerId, body: MessageBody) {
        if self.role == Role::Leader && self.leader_term_unsure {
            // Elected without asking anyone (sole voter): nothing of this term may leave
            // before the term and vote are durable, or a crash could reuse the term.
            self.send_after_persist(to, body);
            return;
        }
        self.ready.messages.push(Message {
            from: self.id.clone(),
            to,
            term: self.term,
            body,
        });
    }

    fn send_after_persist(&mut self, to: PeerId, body: MessageBody) {
        self.ready.messages_after_persist.push(Message {
            from: self.id.clone(),
            to,
            term: self.term,
            body,
        });
    }

    fn tick_snapshot(&mut self) {
        let interval = self.config.snapshot_interval_ticks;
        if interval == 0 || self.now < self.last_snapshot_tick + interval {
            return;
        }
        self.last_snapshot_tick = self.now;
        let margin = self.config.snapshot_log_margin;
        if self.log.applied.distance_from(self.latest_snapshot.index) > margin
            && self.log.applied > self.latest_snapshot.index
        {
            self.ready.events.push(Event::SnapshotDue);
        }
    }

    /// Starts an election now (with pre-vote), as if the election timer fired. Does nothing
    /// on a leader or on a peer that may not campaign (learner, priority 0, not a member).
    pub fn campaign_now(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        if self.may_campaign() {
            self.campaign(false);
        }
    }

    /// Tells the core whether the driver can take more entries. While busy, a follower
    /// answers AppendEntries with busy; the leader pauses that peer until its next
    /// heartbeat answer, then probes again.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Changes the election timeout at run time (SOFAJRaft's `resetElectionTimeoutMs`).
    ///
    /// Change it on every peer of the group. A leader's lease is derived from its own
    /// setting and is safe only while it does not exceed the followers' vote guard: lower
    /// it on the leader first, raise it on the leader last.
    pub fn set_election_timeout(&mut self, ticks: u64) -> Result<(), RaftError> {
        let mut config = self.config.clone();
        config.election_timeout_ticks = ticks;
        config.validate()?;
        self.config = config;
        self.reset_election_timer();
        Ok(())
    }

    /// Unsafe: replaces the configuration locally, without consensus, to recover a group
    /// that lost a majority (SOFAJRaft's `resetPeers`). If this peer then wins an election it
    /// writes the configuration as its first entry.
    ///
    /// Refused while this peer leads with a quorum heard within its lease, or heard its
    /// leader within an election timeout (the group has a leader, so a reset would make a
    /// second one); the runtime also refuses it while a majority of the members' processes
    /// answer. A hibernating leader (it holds no lease, and nothing ticks its step-down: it
    /// may have lost its majority while it slept) or one that heard no quorum for a lease
    /// steps down first.
    pub fn reset_peers(&mut self, voters: Vec<PeerId>) -> Result<(), RaftError> {
        if self.role == Role::Leader {
            if !self.hibernating && self.quorum_heard_recently() {
                return Err(RaftError::InvalidArgument(format!(
                    "reset-peers refused: {} leads term {} with a quorum heard within its \
                     lease (change the membership instead)",
                    self.id, self.term
                )));
            }
            let term = self.term;
            self.become_follower(term, None);
        }
        if let Some(leader) = self.leader.as_ref().filter(|_| self.vote_guarded()) {
            return Err(RaftError::InvalidArgument(format!(
                "reset-peers refused: leader {leader} of term {} was heard within an election \
                 timeout (change the membership through it instead)",
                self.term
            )));
        }
        let mut next = self.configurations.current().leave_joint();
        next.voters = voters.into_iter().collect();
        next.learners.retain(|l| !next.voters.contains(l));
        next.validate_target()?;
        self.configurations.force(next);
        self.configuration_forced = true;
        self.become_follower(self.term, None);
        self.target_priority = self.configurations.current().max_voter_priority();
        if self.is_sole_voter() {
            self.campaign(false);
        }
        Ok(())
    }
}

/// A stable hash of a peer name, so each peer's random sequence differs under one seed.
fn hash_name(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
