//! Per-peer replication state kept by the leader (SOFAJRaft's replicator, etcd's tracker).
//!
//! Owns: what the leader knows of each follower or learner — match and next index, the
//! probe / replicate / snapshot state, the inflight window of pipelined AppendEntries, and
//! liveness stamps. Must never: decide commit or send messages; `raft` does that with what
//! this module reports.

use std::collections::VecDeque;

use crate::ids::LogIndex;

/// Replication state of one peer (etcd's `StateProbe` / `StateReplicate` / `StateSnapshot`,
/// SOFAJRaft's replicator states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the peer's log matches: one AppendEntries at a time.
    Probe,
    /// The logs match up to `match_index`: AppendEntries are pipelined up to the window.
    Replicate,
    /// A snapshot at `index` is being installed; entries wait until it is.
    Snapshot {
        /// Index of the snapshot being sent.
        index: LogIndex,
        /// Tick the install started, for its deadline.
        since_tick: u64,
    },
}

/// A bounded window of AppendEntries sent but not yet acknowledged, by last index and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    sent: VecDeque<(LogIndex, u64)>,
    bytes: u64,
    count_max: usize,
    bytes_max: u64,
}

impl Inflights {
    /// An empty window holding at most `count_max` messages and `bytes_max` bytes
    /// (`0` = no byte limit).
    #[must_use]
    pub fn new(count_max: usize, bytes_max: u64) -> Inflights {
        assert!(
            count_max > 0,
            "inflight window must hold at least one message"
        );
        Inflights {
            sent: VecDeque::new(),
            bytes: 0,
            count_max,
            bytes_max,
        }
    }

    /// True when no further message may be sent.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.sent.len() >= self.count_max || (self.bytes_max > 0 && self.bytes >= self.bytes_max)
    }

    /// Number of messages in flight.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// True if nothing is in flight.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Records a message whose last entry is `last` carrying `bytes`.
    pub fn add(&mut self, last: LogIndex, bytes: u64) {
        if let Some((prev, _)) = self.sent.back() {
            assert!(last > *prev, "inflight {last} not after {prev}");
        }
        self.sent.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last entry is at or before `acked`.
    pub fn free_to(&mut self, acked: LogIndex) {
        while let Some((last, bytes)) = self.sent.front() {
            if *last > acked {
                break;
            }
            self.bytes -= *bytes;
            self.sent.pop_front();
        }
    }

    /// Forgets everything in flight.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }
}

/// What the leader knows of one peer.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durably stored on the peer. Invariant: `match_index <
    /// next_index`.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Replication state.
    pub state: ProgressState,
    /// In probe state: an AppendEntries is outstanding, or the peer answered busy; nothing
    /// more is sent until a response or the next heartbeat.
    pub paused: bool,
    /// Pipelined AppendEntries not yet acknowledged.
    pub inflights: Inflights,
    /// Leader tick at which anything was last received from the peer (step-down check).
    pub last_heard_tick: u64,
    /// Highest leader tick echoed back by the peer: the peer received a message the leader
    /// sent at that tick (leader lease).
    pub echoed_tick: u64,
    /// Highest read-round sequence echoed back (ReadIndex confirmation).
    pub echoed_read_seq: u64,
    /// Tick at which `match_index` last advanced (catch-up deadline).
    pub last_progress_tick: u64,
}

impl Progress {
    /// A peer about to be probed from `next_index`.
    #[must_use]
    pub fn new(next_index: LogIndex, now: u64, window: usize, window_bytes: u64) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            paused: false,
            inflights: Inflights::new(window, window_bytes),
            last_heard_tick: now,
            echoed_tick: 0,
            echoed_read_seq: 0,
            last_progress_tick: now,
        }
    }

    /// Goes back to probing from just after the match index.
    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { index, .. } = self.state {
            self.next_index = self.match_index.max(index).next();
        } else {
            self.next_index = self.match_index.next();
        }
        self.state = ProgressState::Probe;
        self.paused = false;
        self.inflights.reset();
    }

    /// Starts pipelining: the logs are known to match up to `match_index`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.paused = false;
        self.inflights.reset();
    }

    /// Starts installing a snapshot at `index`.
    pub fn become_snapshot(&mut self, index: LogIndex, now: u64) {
        self.state = ProgressState::Snapshot {
            index,
            since_tick: now,
        };
        self.paused = false;
        self.inflights.reset();
    }

    /// Records that the peer stores everything up to `index`. Returns true if that is new.
    pub fn update_match(&mut self, index: LogIndex, now: u64) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.last_progress_tick = now;
            self.paused = false;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        advanced
    }

    /// True when the leader may send this peer an AppendEntries now.
    #[must_use]
    pub fn can_send(&self) -> bool {
        match self.state {
            ProgressState::Probe => !self.paused,
            ProgressState::Replicate => !self.inflights.is_full(),
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Handles a rejection of the AppendEntries whose previous index was `rejected`; `hint`
    /// is the highest index at which the peer's log might still match. Returns false if the
    /// rejection is stale (it refers to an index already known to match) and was ignored.
    ///
    /// A peer that rejects the very probe it was last sent, at or below what it had
    /// acknowledged, has lost entries it once stored (a damaged or restored disk: storage
    /// that broke Raft's durability assumption). Its match index is then forgotten and the
    /// probe goes back to its hint, so the peer is repaired instead of silently dropping out
    /// of replication forever. Forgetting a match index is always safe: the commit index
    /// never moves back, and the peer counts again only once it acknowledges anew.
    pub fn back_off(&mut self, rejected: LogIndex, hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false; // stale: we already know the logs match there
            }
            self.become_probe();
            self.next_index = self.match_index.next().max(hint.next().min(rejected));
            return true;
        }
        if self.next_index.prev() != rejected {
            return false; // stale response to an older probe
        }
        if rejected <= self.match_index {
            if hint >= self.match_index {
                return false; // nothing says the peer lost anything
            }
            self.match_index = LogIndex::ZERO;
        }
        self.next_index = self.match_index.next().max(hint.next().min(rejected));
        self.paused = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_count_and_bytes() {
        let mut w = Inflights::new(2, 100);
        w.add(LogIndex(1), 10);
        assert!(!w.is_full());
        w.add(LogIndex(2), 10);
        assert!(w.is_full());
        w.free_to(LogIndex(1));
        assert!(!w.is_full());
        w.add(LogIndex(5), 95);
        assert!(w.is_full(), "byte limit reached");
        w.free_to(LogIndex(5));
        assert!(w.is_empty());
    }

    #[test]
    fn back_off_uses_hint_and_ignores_stale() {
        let mut p = Progress::new(LogIndex(101), 0, 256, 0);
        p.next_index = LogIndex(101);
        // Peer rejects prev=100 and says its log ends at 40.
        assert!(p.back_off(LogIndex(100), LogIndex(40)));
        assert_eq!(p.next_index, LogIndex(41));
        // A duplicate of the same rejection is stale now.
        assert!(!p.back_off(LogIndex(100), LogIndex(40)));
        assert_eq!(p.next_index, LogIndex(41));
    }

    #[test]
    fn back_off_forgets_a_match_the_peer_lost() {
        let mut p = Progress::new(LogIndex(101), 0, 256, 0);
        p.update_match(LogIndex(90), 0);
        p.become_replicate();
        // Stale in replicate state: at or below the match.
        assert!(!p.back_off(LogIndex(90), LogIndex(30)));
        assert_eq!(p.match_index, LogIndex(90));
        // A rejection above the match: probe from just after the match.
        assert!(p.back_off(LogIndex(95), LogIndex(30)));
        assert_eq!(p.next_index, LogIndex(91));
        assert_eq!(p.match_index, LogIndex(90));
        // A stale rejection of an older probe changes nothing.
        assert!(!p.back_off(LogIndex(60), LogIndex(30)));
        assert_eq!(p.match_index, LogIndex(90));
        // The current probe, at the match, rejected with a hint below it: entries the peer
        // acknowledged are gone; forget the match and probe from the hint.
        assert!(p.back_off(LogIndex(90), LogIndex(30)));
        assert_eq!(p.match_index, LogIndex::ZERO);
        assert_eq!(p.next_index, LogIndex(31));
    }
}
