//! What a peer tracks of the reads in flight ([`ReadState`]): reads queued for the next
//! round, rounds waiting for a quorum's echo, reads waiting for apply, and reads forwarded
//! to the leader. Data and its bookkeeping only, so the state the protocol file holds does
//! not depend on the read protocol in `read` (which decides when each read may be answered).

use std::collections::{BTreeMap, VecDeque};

use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId, Term};
use crate::message::{Message, MessageBody};
use crate::ready::{ReadMode, ReadResult, Ready};

/// Who asked for a read: this peer's application (by read id) or a follower's batch.
#[derive(Clone, Debug)]
pub(super) enum ReadOrigin {
    Local(u64),
    Remote { peer: PeerId, batch: u64 },
}

/// A read waiting for its index, and when it times out.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) origin: ReadOrigin,
    pub(super) deadline: u64,
}

/// A leader's confirmation round: the reads that wait for a quorum to echo `seq`.
#[derive(Debug)]
pub(super) struct Round {
    pub(super) seq: u64,
    pub(super) index: LogIndex,
    pub(super) reads: Vec<Pending>,
}

/// Every read in flight on this peer, in any role.
#[derive(Debug, Default)]
pub(super) struct ReadState {
    /// Sequence of the latest leader read round; echoed back by followers.
    pub(super) read_seq: u64,
    /// Leader: reads waiting for the next round (or for the leader's first commit).
    pub(super) unsent: Vec<Pending>,
    /// Leader: rounds sent, waiting for a quorum to echo their sequence.
    pub(super) rounds: VecDeque<Round>,
    /// Reads whose index is known, waiting for the state machine to apply it.
    pub(super) waiting_apply: Vec<(u64, LogIndex, u64)>,
    /// Follower: reads to forward to the leader at the next `ready`.
    pub(super) unsent_remote: Vec<(u64, ReadMode, u64)>,
    /// Follower: batches forwarded, by batch id: the leader asked and the reads.
    pub(super) remote_batches: BTreeMap<u64, (PeerId, Vec<(u64, u64)>)>,
    pub(super) next_batch: u64,
}

impl ReadState {
    pub(super) fn read_seq(&self) -> u64 {
        self.read_seq
    }

    pub(super) fn has_unsent(&self) -> bool {
        !self.unsent.is_empty() || !self.unsent_remote.is_empty()
    }

    /// No read is queued, in a round, forwarded or waiting for apply (nothing would time
    /// out if the peer stopped ticking).
    pub(super) fn is_idle(&self) -> bool {
        self.unsent.is_empty()
            && self.rounds.is_empty()
            && self.waiting_apply.is_empty()
            && self.unsent_remote.is_empty()
            && self.remote_batches.is_empty()
    }

    /// Reads forwarded to a leader that is no longer the leader can never be answered.
    pub(super) fn leader_changed(&mut self, leader: &Option<PeerId>, ready: &mut Ready) {
        let stale: Vec<u64> = self
            .remote_batches
            .iter()
            .filter(|(_, (asked, _))| Some(asked) != leader.as_ref())
            .map(|(batch, _)| *batch)
            .collect();
        for batch in stale {
            if let Some((_, reads)) = self.remote_batches.remove(&batch) {
                for (id, _) in reads {
                    let error =
                        RaftError::Stale("leader changed while the read was pending".into());
                    ready.reads.push(ReadResult {
                        id,
                        result: Err(error),
                    });
                }
            }
        }
        if leader.is_none() {
            for (id, _, _) in self.unsent_remote.drain(..) {
                ready.reads.push(ReadResult {
                    id,
                    result: Err(RaftError::NotLeader { leader: None }),
                });
            }
        }
    }

    /// The leader stepped down: every read it had not confirmed fails.
    pub(super) fn fail_all_leader(
        &mut self,
        error: &RaftError,
        me: &PeerId,
        term: Term,
        ready: &mut Ready,
    ) {
        let rounds = self.rounds.drain(..).flat_map(|r| r.reads);
        for pending in self.unsent.drain(..).chain(rounds) {
            match pending.origin {
                ReadOrigin::Local(id) => ready.reads.push(ReadResult {
                    id,
                    result: Err(error.clone()),
                }),
                ReadOrigin::Remote { peer, batch } => ready.messages.push(Message {
                    from: me.clone(),
                    to: peer,
                    term,
                    body: MessageBody::ReadIndexResponse {
                        batch,
                        result: Err(error.clone()),
                    },
                }),
            }
        }
    }
}
