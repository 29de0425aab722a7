//! The requests a [`crate::Node`] handle queues to its group's round, each with the channel
//! its answer comes back on.
//!
//! Owns: the shape of a request (what the round needs to carry it out and answer it).
//! Must never: carry anything unbounded the handle did not check (entry sizes are checked
//! by the handle before queueing).

use std::collections::BTreeSet;

use bytes::Bytes;
use flotilla_raft::{LogIndex, PeerId, ReadMode, SnapshotMeta, Term};
use tokio::sync::oneshot;

use crate::error::NodeError;

/// A membership operation (SOFAJRaft's CLI operations on one node).
#[derive(Clone, Debug)]
pub(crate) enum Membership {
    AddPeer(PeerId),
    RemovePeer(PeerId),
    ChangePeers(BTreeSet<PeerId>),
    AddLearners(Vec<PeerId>),
    RemoveLearners(Vec<PeerId>),
    PromoteLearner(PeerId),
    ResetPeers(Vec<PeerId>),
}

/// A request to a group's round.
pub(crate) enum Request {
    Apply {
        data: Bytes,
        expected_term: Option<Term>,
        done: oneshot::Sender<Result<Bytes, NodeError>>,
    },
    Read {
        mode: ReadMode,
        done: oneshot::Sender<Result<LogIndex, NodeError>>,
    },
    Change {
        change: Membership,
        /// Skip the strict reconfiguration check (see [`Node::change_peers_forced`]).
        force: bool,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
    Transfer {
        target: Option<PeerId>,
        done: oneshot::Sender<Result<PeerId, NodeError>>,
    },
    Snapshot {
        done: oneshot::Sender<Result<SnapshotMeta, NodeError>>,
    },
    Describe {
        done: oneshot::Sender<Result<String, NodeError>>,
    },
    SetElectionTimeout {
        ticks: u64,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
    Campaign {
        done: oneshot::Sender<Result<(), NodeError>>,
    },
}
