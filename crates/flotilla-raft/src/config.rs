//! Options of one core, with SOFAJRaft's defaults expressed in ticks.
//!
//! Owns: the names, defaults and validity of every limit and timeout. Must never: read a
//! clock; a tick is whatever period the runtime drives (100 ms by default, so the defaults
//! below equal SOFAJRaft's millisecond defaults).

use crate::error::RaftError;
use crate::ids::PeerId;

/// Options of one core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This peer.
    pub id: PeerId,
    /// Minimum election timeout; each election waits a random time in `[T, 2T)`. SOFAJRaft:
    /// 1000 ms, randomized over a further 1000 ms.
    pub election_timeout_ticks: u64,
    /// Heartbeat period; SOFAJRaft: election timeout / 10.
    pub heartbeat_interval_ticks: u64,
    /// Leader lease as a percentage of the election timeout (SOFAJRaft: 90).
    pub leader_lease_percent: u64,
    /// AppendEntries in flight per peer (SOFAJRaft: 256).
    pub inflight_msgs_max: usize,
    /// Bytes in flight per peer (0 = no limit beyond the message count).
    pub inflight_bytes_max: u64,
    /// Entries per AppendEntries (SOFAJRaft: 1024).
    pub append_entries_max: usize,
    /// Bytes per AppendEntries (SOFAJRaft: 512 KiB).
    pub append_bytes_max: u64,
    /// Entries handed to the state machine in one batch.
    pub apply_batch_max: usize,
    /// Uncommitted bytes the leader accepts before refusing proposals with `busy`.
    pub uncommitted_bytes_max: u64,
    /// A new peer is caught up when within this many entries of the leader (SOFAJRaft: 1000).
    pub catchup_margin: u64,
    /// A catching-up peer that makes no progress for this long fails the change. The
    /// default, three election timeouts, outlasts a transport's reconnect back-off (the gRPC
    /// transport's is at most 2 s), so a store that just came back on an address that was
    /// unreachable is not refused before the first frame can reach it.
    pub catchup_timeout_ticks: u64,
    /// A leadership transfer that has not completed by then is abandoned.
    pub transfer_timeout_ticks: u64,
    /// Pending reads fail with `timed out` after this long (SOFAJRaft: 2 s).
    pub read_timeout_ticks: u64,
    /// A reader fails fast when its applied index lags the read index by more than this
    /// (`None` = off, SOFAJRaft's default).
    pub read_index_lag_max: Option<u64>,
    /// Period of automatic snapshots (`0` = off; SOFAJRaft: 3600 s).
    pub snapshot_interval_ticks: u64,
    /// An automatic snapshot is skipped unless this many entries were applied since the
    /// last one.
    pub snapshot_log_margin: u64,
    /// A snapshot install that has not answered by then is retried (SOFAJRaft: 5 min).
    pub snapshot_install_timeout_ticks: u64,
    /// Seed of the core's private random generator (election jitter).
    pub random_seed: u64,
    /// Refuse votes for one election timeout after starting. A restarted peer may have
    /// acknowledged a leader (its lease counts on that) without the term being durable yet,
    /// so it must not vote for another until that lease has surely ended. Only a driver
    /// that knows the peer never ran before (a fresh, empty data directory) may turn it off.
    pub start_with_vote_guard: bool,
    /// Hibernation (docs/DESIGN.md, "Idle groups cost nothing"): a leader that has had nothing to
    /// do for this many ticks in a row — every peer matched its last index, everything
    /// committed and applied, no read, change, transfer or snapshot pending — sends one last
    /// heartbeat marked `hibernate` and stops sending; followers whose log matches it stop
    /// their election timer. `0` (the default) never hibernates. Turn it on only under a
    /// driver that wakes the group on demand and calls [`crate::Raft::wake_and_campaign`]
    /// on a hibernating follower whose leader's process stopped answering (see
    /// `Raft::is_hibernating`); every peer of a group should use the same setting.
    pub hibernate_idle_ticks: u64,
    /// A leader tells its followers of every commit at once, with an AppendEntries that may
    /// carry no entries (etcd's behaviour, the default). Off (raft-rs's
    /// `skip_bcast_commit`, as TiKV runs it): the commit index travels with the next
    /// AppendEntries or heartbeat instead (within `heartbeat_interval_ticks`), which saves
    /// one message and its answer per commit to each follower, and a round on each side;
    /// followers then apply up to a heartbeat later. Safety does not depend on it (a
    /// follower applies only what it learned is committed), nor do reads: a ReadIndex
    /// round's heartbeats carry the commit, and lease reads are the leader's.
    pub commit_broadcast: bool,
    /// A peer that joins an existing group (started knowing no members, with an empty log
    /// and no snapshot) takes a snapshot from the leader before any entry: it answers
    /// AppendEntries with [`crate::AppendResult::NeedSnapshot`] until one is installed, and
    /// the leader sends its newest snapshot (asking its driver for one if it has none).
    /// Off (the default), a joiner replays the leader's log from its first entry, which is
    /// right when every peer's state before entry 1 is the same empty state. A driver whose
    /// joiners start from another state than the founders did (a multi-raft store, whose
    /// new replica starts with the region's current range rather than the range the log's
    /// first entries were written against) turns it on: replaying those entries against
    /// that state would not reproduce what the founders applied.
    pub join_from_snapshot: bool,
}

impl Config {
    /// SOFAJRaft's defaults with a 100 ms tick.
    #[must_use]
    pub fn new(id: PeerId) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            leader_lease_percent: 90,
            inflight_msgs_max: 256,
            inflight_bytes_max: 0,
            append_entries_max: 1024,
            append_bytes_max: 512 * 1024,
            apply_batch_max: 4096,
            uncommitted_bytes_max: 256 * 1024 * 1024,
            catchup_margin: 1000,
            catchup_timeout_ticks: 30,
            transfer_timeout_ticks: 10,
            read_timeout_ticks: 20,
            read_index_lag_max: None,
            snapshot_interval_ticks: 36_000,
            snapshot_log_margin: 0,
            snapshot_install_timeout_ticks: 3_000,
            random_seed: 0,
            start_with_vote_guard: true,
            hibernate_idle_ticks: 0,
            commit_broadcast: true,
            join_from_snapshot: false,
        }
    }

    /// Lease length in ticks.
    #[must_use]
    pub fn lease_ticks(&self) -> u64 {
        self.election_timeout_ticks * self.leader_lease_percent / 100
    }

    /// Checks the relations between options; the message names the offending option.
    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |why: &str| Err(RaftError::InvalidArgument(why.to_string()));
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks must be at least 1");
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return fail("election_timeout_ticks must exceed heartbeat_interval_ticks");
        }
        if self.leader_lease_percent == 0 || self.leader_lease_percent >= 100 {
            return fail("leader_lease_percent must be in 1..=99");
        }
        if self.inflight_msgs_max == 0 {
            return fail("inflight_msgs_max must be at least 1");
        }
        if self.append_entries_max == 0 || self.append_bytes_max == 0 {
            return fail("append_entries_max and append_bytes_max must be at least 1");
        }
        if self.apply_batch_max == 0 {
            return fail("apply_batch_max must be at least 1");
        }
        if self.read_timeout_ticks == 0 || self.transfer_timeout_ticks == 0 {
            return fail("read_timeout_ticks and transfer_timeout_ticks must be at least 1");
        }
        Ok(())
    }
}
