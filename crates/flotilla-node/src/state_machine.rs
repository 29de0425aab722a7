//! The application's replicated state machine and the batched iterator it applies from
//! (SOFAJRaft's `StateMachine` and `Iterator`).
//!
//! Owns: the callback contract. Every callback runs on the manager's round thread (a tokio
//! blocking-pool thread, never an async worker), one group at a time, in log order. Must
//! never: hand a proposer's completion to any peer but the leader that accepted the
//! proposal, or hand an entry twice.

use bytes::Bytes;
use flotilla_raft::{Configuration, LogIndex, PeerId, Term};
use flotilla_storage::{SnapshotReader, SnapshotWriter};
use tokio::sync::oneshot;

use crate::error::NodeError;

/// The proposer's completion for one entry. Complete it with the state machine's result;
/// dropping it uncompleted answers the proposer with an empty result (the entry did apply).
#[derive(Debug)]
pub struct Completion {
    sender: Option<oneshot::Sender<Result<Bytes, NodeError>>>,
    /// Set when handed to the state machine with its committed entry: only then does
    /// dropping it mean success. A completion dropped before that (the runtime stopped)
    /// answers "unknown", never "failed".
    applied: bool,
}

impl Completion {
    pub(crate) fn new(sender: oneshot::Sender<Result<Bytes, NodeError>>) -> Completion {
        Completion {
            sender: Some(sender),
            applied: false,
        }
    }

    /// The entry is being handed to the state machine: from now on, dropping the
    /// completion uncompleted means the entry applied with an empty result.
    fn mark_applied(&mut self) {
        self.applied = true;
    }

    /// Answers the proposer: `Ok(result)`, or the state machine's error for this entry.
    pub fn complete(mut self, result: Result<Bytes, String>) {
        let answer =
            result.map_err(|why| NodeError::Raft(flotilla_raft::RaftError::StateMachine(why)));
        self.send(answer);
    }

    pub(crate) fn fail(mut self, error: NodeError) {
        self.send(Err(error));
    }

    fn send(&mut self, answer: Result<Bytes, NodeError>) {
        if let Some(sender) = self.sender.take() {
            // The proposer may have stopped waiting; nothing to do then.
            let _ = sender.send(answer);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // An entry never handed out (the state machine stopped early) or dropped while the
        // state machine panicked did not apply here: its outcome is unknown, not success.
        let answer = if self.applied && !std::thread::panicking() {
            Ok(Bytes::new())
        } else {
            Err(NodeError::Unknown(
                "the node stopped before applying the entry".into(),
            ))
        };
        self.send(answer);
    }
}

/// One committed entry of application data.
#[derive(Debug)]
pub struct Task {
    /// Log index.
    pub index: LogIndex,
    /// Term of the leader that created it.
    pub term: Term,
    /// The data proposed with `Node::apply`.
    pub data: Bytes,
    /// The proposer's completion: present only on the leader that accepted the proposal.
    pub completion: Option<Completion>,
}

/// A batch of committed entries, in log order (SOFAJRaft's `Iterator`). The state machine
/// must consume it to the end; entries left unconsumed stop the group with an error.
#[derive(Debug)]
pub struct ApplyIter {
    tasks: std::vec::IntoIter<Task>,
}

impl ApplyIter {
    pub(crate) fn new(tasks: Vec<Task>) -> ApplyIter {
        ApplyIter {
            tasks: tasks.into_iter(),
        }
    }

    /// Entries not consumed yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.tasks.len()
    }
}

impl Iterator for ApplyIter {
    type Item = Task;

    fn next(&mut self) -> Option<Task> {
        let mut task = self.tasks.next()?;
        if let Some(completion) = task.completion.as_mut() {
            completion.mark_applied();
        }
        Some(task)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.tasks.size_hint()
    }
}

/// A replicated state machine (SOFAJRaft's `StateMachine`). Only `on_apply` and the two
/// snapshot callbacks must be written; the others default to doing nothing.
///
/// Callbacks run on a blocking-pool thread, so they may do synchronous I/O, but a slow
/// callback delays every group of the manager: keep them short.
pub trait StateMachine: Send + 'static {
    /// Applies a batch of committed entries in log order.
    fn on_apply(&mut self, iter: &mut ApplyIter);

    /// Writes the state as of the last applied entry into `writer` (files of a snapshot).
    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String>;

    /// Replaces the state with the snapshot `reader` holds (at restart or when the leader
    /// sent one).
    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String>;

    /// Whether the snapshot the leader sent may be loaded, asked before
    /// [`StateMachine::on_snapshot_load`] (not at restart). An `Err` changes nothing: the
    /// install counts as failed, the peer keeps its state, and the leader sends a snapshot
    /// again later (a newer one, if it took one meanwhile). For a state machine that can
    /// tell a snapshot is of no use to it yet, e.g. one describing more than this peer
    /// may hold.
    fn check_snapshot(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let _ = reader;
        Ok(())
    }

    /// This peer became leader and an entry of `term` committed.
    fn on_leader_start(&mut self, term: Term) {
        let _ = term;
    }

    /// This peer stopped leading `term`.
    fn on_leader_stop(&mut self, term: Term) {
        let _ = term;
    }

    /// This peer follows `leader` in `term`.
    fn on_start_following(&mut self, leader: &PeerId, term: Term) {
        let _ = (leader, term);
    }

    /// This peer stopped following `leader` (it led `term`).
    fn on_stop_following(&mut self, leader: &PeerId, term: Term) {
        let _ = (leader, term);
    }

    /// A configuration entry committed.
    fn on_configuration_committed(&mut self, configuration: &Configuration) {
        let _ = configuration;
    }

    /// A configuration entry committed at `index` (the index orders configurations: a
    /// later one has a larger index). By default calls
    /// [`StateMachine::on_configuration_committed`]; a state machine that versions its
    /// membership (a KV region's `conf_version`) overrides this one instead.
    fn on_configuration_committed_at(&mut self, index: LogIndex, configuration: &Configuration) {
        let _ = index;
        self.on_configuration_committed(configuration);
    }

    /// The configuration in force at `index`, in apply order: called for each
    /// configuration entry when the entries before it have been applied and those after
    /// it not yet, and with a snapshot's configuration (at the snapshot's index) after
    /// the group opens from or installs it, or with its initial one when it starts
    /// without. Unlike [`StateMachine::on_configuration_committed_at`] (which follows the
    /// commit index), every replica sees the same configuration at the same point of its
    /// applied state, so a command may depend on it (a region split hands the child the
    /// parent's peers).
    fn on_configuration_applied(&mut self, index: LogIndex, configuration: &Configuration) {
        let _ = (index, configuration);
    }

    /// The group stopped because of `error` (storage failure, state machine failure).
    fn on_error(&mut self, error: &NodeError) {
        let _ = error;
    }

    /// The group is shutting down; no callback follows.
    fn on_shutdown(&mut self) {}
}
