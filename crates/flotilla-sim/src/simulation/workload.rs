//! The client workload and the liveness probe: clients issue reads (ReadIndex and lease, on
//! any peer), writes and compare-and-set on a few registers, each with a deadline, and every
//! operation and its outcome goes into the history the linearizability checker reads; after
//! the final heal the probe measures how long until a leader commits. Outcomes it cannot
//! know are recorded as indeterminate, never as failed.

use std::collections::BTreeMap;

use flotilla_linearizability::{OpKind, OpOutcome, Operation};
use flotilla_raft::{LogIndex, Raft, RaftError, ReadMode, Role, Term};

use crate::kv::{Command, CommandKind};
use crate::node::{Request, SimNode, SimStore};

use super::client::ClientOp;
use super::config::TICK;
use super::{EventKind, Simulation};

/// Key the liveness probe writes; clients never use it.
pub(super) const PROBE_KEY: u64 = u64::MAX;

impl Simulation {
    pub(super) fn tick_probe(&mut self, node: usize) {
        if self.healed_at.is_none() || self.recovered_at.is_some() {
            return;
        }
        if let Some((p, index, term)) = self.probe {
            let pending = self.nodes[p]
                .proposals
                .get(&index)
                .is_some_and(|(t, _)| *t == term);
            let still_leading = self.nodes[p]
                .raft
                .as_ref()
                .is_some_and(|r| r.term() == term && r.role() == Role::Leader);
            if pending && still_leading {
                return;
            }
        }
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        if raft.role() != Role::Leader {
            return;
        }
        let command = Command {
            op_id: 0,
            key: PROBE_KEY,
            kind: CommandKind::Write(0),
        };
        if let Ok((index, term)) = raft.propose(command.encode(), None) {
            let request = Request {
                client: usize::MAX,
                op_id: 0,
            };
            n.proposals.insert(index, (term, request));
            self.probe = Some((node, index, term));
            self.process(node);
        }
    }

    // ----- clients -----------------------------------------------------------------------

    pub(super) fn client_wake(&mut self, client: usize, deadline_of: Option<u64>) {
        match (self.clients[client].op.clone(), deadline_of) {
            (None, None) => self.start_op(client),
            (Some(op), Some(op_id)) if op.op_id == op_id => {
                // The client gives up: a read tells nothing, a write may or may not happen.
                self.clients[client].op = None;
                let outcome = match op.kind {
                    OpKind::Read => OpOutcome::Failed,
                    _ => OpOutcome::Indeterminate,
                };
                self.record(client, &op, outcome);
                self.start_op(client);
            }
            _ => {} // a stale wake-up: the operation it was for already finished
        }
    }

    pub(super) fn start_op(&mut self, client: usize) {
        if self.now < self.quiet_until {
            let resume = self.quiet_until - self.now + self.rng.below(2_000);
            self.schedule(resume, EventKind::ClientWake(client, None));
            return;
        }
        let op_id = self.next_op;
        self.next_op += 1;
        let key = self.rng.below(self.config.keys);
        let kind = match self.rng.below(100) {
            0..=39 => OpKind::Read,
            40..=74 => OpKind::Write(op_id),
            _ => {
                let expected = self.clients[client].last_seen.get(&key).copied().flatten();
                OpKind::Cas {
                    expected,
                    new: op_id,
                }
            }
        };
        let op = ClientOp {
            op_id,
            key,
            kind,
            invoke: self.now,
        };
        let node = if self.rng.below(100) < 70 {
            self.clients[client].preferred
        } else {
            self.rng.below(self.nodes.len() as u64) as usize
        };
        self.clients[client].op = Some(op.clone());
        self.schedule(30 * TICK, EventKind::ClientWake(client, Some(op_id)));
        let n = &mut self.nodes[node];
        if n.paused && n.raft.is_some() {
            // The request waits in the stopped process's socket.
            n.queued_requests.push((client, op));
            return;
        }
        self.submit(node, client, &op);
    }

    /// Hands a client's request to a node's core.
    pub(super) fn submit(&mut self, node: usize, client: usize, op: &ClientOp) {
        let was_hibernating = self.is_hibernating(node);
        self.submit_to_core(node, client, op);
        self.note_woken(node, was_hibernating, None);
    }

    pub(super) fn submit_to_core(&mut self, node: usize, client: usize, op: &ClientOp) {
        let request = Request {
            client,
            op_id: op.op_id,
        };
        let SimNode {
            raft,
            proposals,
            reads,
            ..
        } = &mut self.nodes[node];
        let accepted = match raft.as_mut() {
            None => Err(RaftError::ShutDown),
            Some(raft) => match &op.kind {
                OpKind::Read => raft.read(op.op_id, read_mode(op.op_id)).map(|()| {
                    reads.insert(op.op_id, request);
                }),
                OpKind::Write(v) => {
                    let kind = CommandKind::Write(*v);
                    propose(raft, proposals, op.op_id, op.key, kind, request)
                }
                OpKind::Cas { expected, new } => {
                    let kind = CommandKind::Cas {
                        expected: *expected,
                        new: *new,
                    };
                    propose(raft, proposals, op.op_id, op.key, kind, request)
                }
            },
        };
        match accepted {
            Ok(()) => self.process(node),
            Err(error) => {
                // Refused before anything was proposed: a definite failure. Follow the
                // leader hint if there is one, else try another node next time.
                let hinted = match &error {
                    RaftError::NotLeader { leader: Some(l) } => self.index_of.get(l).copied(),
                    _ => None,
                };
                self.complete_op(client, op.op_id, OpOutcome::Failed);
                if let Some(leader) = hinted {
                    self.clients[client].preferred = leader;
                }
            }
        }
    }

    pub(super) fn complete_read(&mut self, node: usize, read_id: u64, ok: bool) {
        let Some(request) = self.nodes[node].reads.remove(&read_id) else {
            return;
        };
        let outcome = if ok {
            let Some(op) = self.clients[request.client].op.as_ref() else {
                return;
            };
            if op.op_id != request.op_id {
                return;
            }
            OpOutcome::ReadOk(self.nodes[node].kv.get(op.key))
        } else {
            OpOutcome::Failed
        };
        self.complete_op(request.client, request.op_id, outcome);
    }

    pub(super) fn complete_op(&mut self, client: usize, op_id: u64, outcome: OpOutcome) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(op) = c.op.clone().filter(|op| op.op_id == op_id) else {
            return;
        };
        c.op = None;
        match (&op.kind, &outcome) {
            (_, OpOutcome::ReadOk(v)) => {
                c.last_seen.insert(op.key, *v);
            }
            (OpKind::Write(v), OpOutcome::WriteOk) => {
                c.last_seen.insert(op.key, Some(*v));
            }
            (OpKind::Cas { new, .. }, OpOutcome::CasOk(true)) => {
                c.last_seen.insert(op.key, Some(*new));
            }
            (_, OpOutcome::Failed) => {
                c.preferred = self.rng.below(self.nodes.len() as u64) as usize;
            }
            _ => {}
        }
        self.record(client, &op, outcome);
        let think = self.rng.below(60);
        self.schedule(think, EventKind::ClientWake(client, None));
    }

    pub(super) fn record(&mut self, client: usize, op: &ClientOp, outcome: OpOutcome) {
        let what = match (&op.kind, &outcome) {
            (_, OpOutcome::Indeterminate) => "ops indeterminate",
            (_, OpOutcome::Failed) => "ops failed",
            (OpKind::Read, _) if read_mode(op.op_id) == ReadMode::Lease => "lease reads ok",
            (OpKind::Read, _) => "read-index reads ok",
            (OpKind::Write(_), _) => "writes ok",
            (OpKind::Cas { .. }, _) => "cas ok",
        };
        self.count(what);
        self.history.push(Operation {
            client: client as u64,
            key: op.key,
            kind: op.kind.clone(),
            invoke: op.invoke,
            complete: self.now,
            outcome,
        });
    }

    // ----- nemesis -----------------------------------------------------------------------
}

/// Half the reads use ReadIndex, half the lease.
pub(super) fn read_mode(op_id: u64) -> ReadMode {
    if op_id.is_multiple_of(2) {
        ReadMode::ReadIndex
    } else {
        ReadMode::Lease
    }
}

/// Proposes a client command and remembers which request waits for the entry at its index.
fn propose(
    raft: &mut Raft<SimStore>,
    proposals: &mut BTreeMap<LogIndex, (Term, Request)>,
    op_id: u64,
    key: u64,
    kind: CommandKind,
    request: Request,
) -> Result<(), RaftError> {
    let command = Command { op_id, key, kind };
    let (index, term) = raft.propose(command.encode(), None)?;
    proposals.insert(index, (term, request));
    Ok(())
}
