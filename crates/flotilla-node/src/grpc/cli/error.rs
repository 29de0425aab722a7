//! [`CliError`]: why a [`super::CliClient`] call failed, and how a server that drove the
//! client itself (the `Rebalance` call) passes it on as a status.
//!
//! Owns: the client's error kinds, above all the line between a refusal (nothing done) and
//! an unknown outcome. Must never: turn an unknown outcome into a refusal.

use std::fmt;

use flotilla_raft::PeerId;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::metadata::{invalid, status_with, LEADER_KEY};

/// Why a [`CliClient`](super::CliClient) call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    /// A server refused or failed the operation; nothing more is known than what it said.
    /// `kind` is the [`ERROR_KIND_KEY`](super::ERROR_KIND_KEY) kind (`NotLeader`, `Busy`, `NoSuchGroup`, ...).
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The error kind.
        kind: String,
        /// The server's message.
        message: String,
        /// The address of the leader the server knew of.
        leader: Option<PeerId>,
    },
    /// The operation was sent but its outcome is unknown (the connection broke or the call
    /// timed out after sending, or the server itself could not tell): it may or may not
    /// have taken effect. The client never retries it; check the group's state.
    Unknown(String),
    /// No endpoint could be reached (or none answered usefully) within the attempts; the
    /// operation was not carried out by any of them.
    Unreachable(String),
    /// A server's answer was not valid.
    InvalidAnswer(String),
    /// The client was used wrongly (no endpoints, an invalid peer id).
    InvalidArgument(String),
}

impl CliError {
    /// The error kind: the server's for [`CliError::Refused`], else this variant's name.
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            CliError::Refused { kind, .. } => kind,
            CliError::Unknown(_) => "Unknown",
            CliError::Unreachable(_) => "Unreachable",
            CliError::InvalidAnswer(_) => "InvalidAnswer",
            CliError::InvalidArgument(_) => "InvalidArgument",
        }
    }

    /// The status a server answers with when the client it drove failed so.
    pub(crate) fn to_status(&self) -> Status {
        match self {
            CliError::Refused {
                code,
                kind,
                message,
                leader,
            } => {
                let kind: &'static str = match kind.as_str() {
                    "NotLeader" => "NotLeader",
                    "Busy" => "Busy",
                    "NoSuchGroup" => "NoSuchGroup",
                    "InvalidArgument" => "InvalidArgument",
                    _ => "Refused",
                };
                let mut status = status_with(*code, kind, message.clone());
                // The client's hints are addresses (see `judge`).
                if let Some(value) = leader
                    .as_ref()
                    .and_then(|l| MetadataValue::try_from(l.as_str()).ok())
                {
                    status.metadata_mut().insert(LEADER_KEY, value);
                }
                status
            }
            CliError::Unknown(m) => status_with(Code::Unknown, "Unknown", m.clone()),
            CliError::Unreachable(m) => status_with(Code::Unavailable, "Unreachable", m.clone()),
            CliError::InvalidAnswer(m) => status_with(Code::Internal, "InvalidAnswer", m.clone()),
            CliError::InvalidArgument(m) => invalid(m.clone()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Refused {
                kind,
                message,
                leader,
                ..
            } => {
                write!(f, "refused ({kind}): {message}")?;
                if let Some(l) = leader {
                    write!(f, "; leader {l}")?;
                }
                Ok(())
            }
            CliError::Unknown(m) => write!(f, "outcome unknown: {m}"),
            CliError::Unreachable(m) => write!(f, "unreachable: {m}"),
            CliError::InvalidAnswer(m) => write!(f, "invalid answer: {m}"),
            CliError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for CliError {}
