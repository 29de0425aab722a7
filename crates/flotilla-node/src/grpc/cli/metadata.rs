//! What CLI calls and their refusals carry in gRPC metadata, both ways: the receiver a call
//! names ([`Stamp`], checked by [`check_receiver`]), and the error kind and leader hint of a
//! refusal ([`status_of`], read back by the client).
//!
//! Owns: the metadata keys, the mapping of a [`NodeError`] to a status code and kind, and
//! the receiver check. Must never: refuse a call naming this process correctly, or let a
//! refusal's code disagree with its kind.

use flotilla_raft::{PeerId, RaftError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::error::NodeError;
use crate::identity::{AddressBook, Identity};

/// Names the receiving process in every CLI call's metadata (see [`check_receiver`]).
#[derive(Clone, Debug)]
pub struct Stamp {
    pub(crate) store: MetadataValue<tonic::metadata::Ascii>,
    pub(crate) cluster: MetadataValue<tonic::metadata::Ascii>,
}

impl Stamp {
    /// A stamp naming the process `store` of `cluster`; `None` if the id is not ASCII
    /// metadata.
    #[must_use]
    pub fn new(store: &str, cluster: u64) -> Option<Stamp> {
        Some(Stamp {
            store: MetadataValue::try_from(store).ok()?,
            cluster: MetadataValue::try_from(format!("{cluster:016x}")).ok()?,
        })
    }
}

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(STORE_KEY, self.store.clone());
        request
            .metadata_mut()
            .insert(CLUSTER_KEY, self.cluster.clone());
        Ok(request)
    }
}

/// Status metadata key naming the error kind (`NotLeader`, `Busy`, `Unknown`, ...).
pub const ERROR_KIND_KEY: &str = "flotilla-error-kind";
/// Status metadata key carrying the leader's address, when the refusing peer knows it (and
/// knows where it is).
pub const LEADER_KEY: &str = "flotilla-leader";
/// Status metadata key carrying the leader's peer id, when the refusing peer knows it.
pub const LEADER_ID_KEY: &str = "flotilla-leader-id";
/// Request metadata key naming the receiving process's peer id (every CLI call but
/// `Identify`).
pub const STORE_KEY: &str = "flotilla-store";
/// Request metadata key naming the cluster id (16 hex digits) of the receiving process.
pub const CLUSTER_KEY: &str = "flotilla-cluster";
/// The one CLI call that names no receiver: how a client learns whom it talks to.
pub(crate) const IDENTIFY_PATH: &str = "/flotilla.cli.v1.Cli/Identify";

/// Refuses a call whose metadata (`get` reads a key) does not name `identity`'s peer id
/// ([`STORE_KEY`]) and cluster ([`CLUSTER_KEY`]): `FAILED_PRECONDITION`, kind
/// `WrongStore`, counted and logged once per source like a misaddressed frame.
pub fn check_receiver(
    get: impl Fn(&str) -> Option<String>,
    identity: &Identity,
    what: &str,
    source: &str,
) -> Result<(), Status> {
    let refuse =
        |message: String| Err(status_with(Code::FailedPrecondition, "WrongStore", message));
    let (Some(store), Some(cluster)) = (get(STORE_KEY), get(CLUSTER_KEY)) else {
        return refuse(format!(
            "a {what} must name the receiving store ({STORE_KEY}) and cluster ({CLUSTER_KEY}) \
             in its metadata: ask Identify first"
        ));
    };
    let Ok(cluster) = u64::from_str_radix(&cluster, 16) else {
        return refuse(format!(
            "{CLUSTER_KEY}: {cluster:?} is not a hex cluster id"
        ));
    };
    identity
        .check(&store, cluster, what, source)
        .or_else(|refused| refuse(identity.describe(&refused)))
}

/// The kind name of `error` carried in [`ERROR_KIND_KEY`].
#[must_use]
pub fn kind_of(error: &NodeError) -> &'static str {
    match error {
        NodeError::Raft(e) => match e {
            RaftError::NotLeader { .. } => "NotLeader",
            RaftError::Busy(_) => "Busy",
            RaftError::TimedOut(_) => "TimedOut",
            RaftError::Stale(_) => "Stale",
            RaftError::CatchUpFailed { .. } => "CatchUpFailed",
            RaftError::Removed => "Removed",
            RaftError::Transferring { .. } => "Transferring",
            RaftError::Compacted { .. } => "Compacted",
            RaftError::ShutDown => "ShutDown",
            RaftError::WrongTerm { .. } => "WrongTerm",
            RaftError::ReadLagging { .. } => "ReadLagging",
            RaftError::LeaderNotReady => "LeaderNotReady",
            RaftError::StateMachine(_) => "StateMachine",
            RaftError::Io(_) => "Io",
            RaftError::InvalidArgument(_) => "InvalidArgument",
        },
        NodeError::Io(_) => "Io",
        NodeError::ShutDown => "ShutDown",
        NodeError::Unknown(_) => "Unknown",
    }
}

/// The status code of `error`'s kind.
fn code_of(error: &NodeError) -> Code {
    match error {
        NodeError::Raft(e) => match e {
            RaftError::NotLeader { .. } | RaftError::Removed | RaftError::WrongTerm { .. } => {
                Code::FailedPrecondition
            }
            RaftError::Busy(_) => Code::ResourceExhausted,
            RaftError::TimedOut(_) => Code::DeadlineExceeded,
            RaftError::Stale(_) | RaftError::CatchUpFailed { .. } => Code::Aborted,
            RaftError::Transferring { .. }
            | RaftError::ShutDown
            | RaftError::ReadLagging { .. }
            | RaftError::LeaderNotReady => Code::Unavailable,
            RaftError::Compacted { .. } => Code::OutOfRange,
            RaftError::StateMachine(_) | RaftError::Io(_) => Code::Internal,
            RaftError::InvalidArgument(_) => Code::InvalidArgument,
        },
        NodeError::Io(_) => Code::Internal,
        NodeError::ShutDown => Code::Unavailable,
        NodeError::Unknown(_) => Code::Unknown,
    }
}

/// Puts the leader hint in `status`'s metadata: its address ([`LEADER_KEY`], when
/// `addresses` knows it) and its peer id ([`LEADER_ID_KEY`]).
pub fn insert_leader(status: &mut Status, leader: &PeerId, addresses: &AddressBook) {
    if let Some(address) = addresses.resolve(leader) {
        if let Ok(value) = MetadataValue::try_from(address.as_str()) {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    if let Ok(value) = MetadataValue::try_from(leader.as_str()) {
        status.metadata_mut().insert(LEADER_ID_KEY, value);
    }
}

/// A status of `code` whose metadata names `kind`.
pub(crate) fn status_with(code: Code, kind: &'static str, message: String) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind));
    status
}

/// The status a CLI call ends with when it failed with `error`: the code follows the kind,
/// the metadata names the kind and the leader hint (its address from `addresses`).
#[must_use]
pub fn status_of(error: &NodeError, addresses: &AddressBook) -> Status {
    let mut status = status_with(code_of(error), kind_of(error), error.to_string());
    if let Some(leader) = error.leader_hint() {
        insert_leader(&mut status, leader, addresses);
    }
    status
}

/// `INVALID_ARGUMENT`, kind `InvalidArgument`.
pub(crate) fn invalid(message: String) -> Status {
    status_with(Code::InvalidArgument, "InvalidArgument", message)
}
