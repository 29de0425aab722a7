//! What a leader tracks of a membership change or a leadership transfer in progress: the
//! change's target and [`ChangeStage`], the transfer's target and deadline. Data only, so
//! the state the protocol file holds does not depend on the change protocol in `change`
//! (which moves a change through its stages).

use std::collections::BTreeSet;

use crate::error::RaftError;
use crate::ids::{LogIndex, PeerId};
use crate::membership::Configuration;
use crate::ready::{Event, Ready};

/// Where a membership change stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeStage {
    /// New voters are receiving the log; they join once within `catchup_margin`.
    CatchingUp {
        /// Peers still behind.
        peers: BTreeSet<PeerId>,
    },
    /// The joint configuration was appended at `index` and waits to commit.
    Joint {
        /// Index of the joint entry.
        index: LogIndex,
    },
    /// The final configuration was appended at `index` and waits to commit.
    Final {
        /// Index of the final entry.
        index: LogIndex,
    },
}

/// A change requested on this leader.
#[derive(Debug)]
pub(super) struct MembershipChange {
    pub(super) target: Configuration,
    pub(super) stage: ChangeStage,
}

impl MembershipChange {
    pub(super) fn catching_up(&self) -> impl Iterator<Item = &PeerId> {
        let peers = match &self.stage {
            ChangeStage::CatchingUp { peers } => Some(peers),
            _ => None,
        };
        peers.into_iter().flatten()
    }

    pub(super) fn fail(self, error: RaftError, ready: &mut Ready) {
        ready
            .events
            .push(Event::MembershipChangeFinished { result: Err(error) });
    }
}

/// A leadership transfer in progress.
#[derive(Debug)]
pub(super) struct Transfer {
    pub(super) target: PeerId,
    pub(super) deadline: u64,
    pub(super) timeout_now_sent: bool,
}
