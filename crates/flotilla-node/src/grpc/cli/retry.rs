//! The CLI client's retry policy: what a failed call means — try the leader a refusal
//! hints at, another endpoint, the same one again, or stop — and the back-off between
//! attempts.
//!
//! Owns: the classification of failures, in particular that a change whose outcome is
//! unknown is never retried. Must never: do I/O or touch the client's state (it says what
//! the client must forget or learn; [`super::CliClient`] does it).

use std::time::Duration;

use flotilla_raft::PeerId;
use tonic::{Code, Status};

use super::super::tls;
use super::error::CliError;
use super::metadata::{ERROR_KIND_KEY, LEADER_KEY};
use super::options::CliOptions;
use super::peers::peer_answer;

/// How a status that did not come from a CLI server (no [`ERROR_KIND_KEY`]) is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A query or a local read: safe to retry anywhere.
    Idempotent,
    /// A change: once sent, a broken call has an unknown outcome.
    Change,
}

/// What one attempt's failure means for the next.
pub(crate) enum Next {
    /// Try this endpoint next (a leader hint).
    Redirect(PeerId),
    /// Try the next endpoint after a pause.
    Elsewhere,
    /// Try the same endpoint after a pause.
    Again,
}

/// What a failed call changes in the client's routing, before it goes on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routing {
    /// Nothing.
    Keep,
    /// The endpoint called: its connection (and its place as the cached leader) go.
    Forget,
    /// The cached leader becomes this one (`None`: unknown).
    Leader(Option<PeerId>),
}

/// The text of metadata `key` of `status`, if any.
fn header(status: &Status, key: &str) -> Option<String> {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The pause before attempt `attempt + 1`: doubling from [`CliOptions::backoff_initial`] up
/// to [`CliOptions::backoff_max`].
pub(crate) fn backoff(options: &CliOptions, attempt: usize) -> Duration {
    let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
    options
        .backoff_initial
        .saturating_mul(1u32 << shift)
        .min(options.backoff_max)
}

/// Classifies a failed call to `to`: either what to try next, or the final error; and what
/// the client must change in its routing first.
pub(crate) fn judge(
    to: &PeerId,
    status: &Status,
    effect: Effect,
) -> (Routing, Result<Next, CliError>) {
    let Some(kind) = header(status, ERROR_KIND_KEY) else {
        // Not a CLI server's answer: the connection broke or the call timed out.
        // UNIMPLEMENTED: that process serves no CLI, so nothing was done there.
        let next = match effect {
            _ if status.code() == Code::Unimplemented => Ok(Next::Elsewhere),
            Effect::Idempotent => Ok(Next::Elsewhere),
            Effect::Change => Err(CliError::Unknown(format!(
                "{to}: {} ({:?}) after the request was sent; it may or may not have \
                 taken effect",
                status.message(),
                status.code()
            ))),
        };
        return (Routing::Forget, next);
    };
    let leader = header(status, LEADER_KEY).and_then(|l| peer_answer(&l).ok());
    match kind.as_str() {
        "NotLeader" => {
            let hint = leader.filter(|l| l != to);
            let next = Ok(hint.clone().map_or(Next::Elsewhere, Next::Redirect));
            (Routing::Leader(hint), next)
        }
        // The address belongs to another process now: ask elsewhere.
        "WrongStore" => (Routing::Forget, Ok(Next::Elsewhere)),
        "ShutDown" | "NoSuchGroup" | "Removed" => (Routing::Leader(None), Ok(Next::Elsewhere)),
        "Busy" | "Transferring" | "LeaderNotReady" => (Routing::Keep, Ok(Next::Again)),
        "Unknown" => (
            Routing::Keep,
            Err(CliError::Unknown(format!("{to}: {}", status.message()))),
        ),
        "TimedOut" if effect == Effect::Change => (
            Routing::Keep,
            Err(CliError::Unknown(format!("{to}: {}", status.message()))),
        ),
        _ => (
            Routing::Keep,
            Err(CliError::Refused {
                code: status.code(),
                kind,
                message: status.message().to_owned(),
                leader,
            }),
        ),
    }
}

/// The error a failed call ends with when it is not retried.
pub(crate) fn refused(status: &Status) -> CliError {
    let kind = header(status, ERROR_KIND_KEY);
    let message = match (&kind, std::error::Error::source(status)) {
        // A transport failure: tonic's message alone ("transport error") does not say
        // what happened (a connection refused, a TLS alert...); its causes do.
        (None, Some(cause)) => format!("{}: {}", status.message(), tls::error_chain(cause)),
        _ => status.message().to_owned(),
    };
    CliError::Refused {
        code: status.code(),
        kind: kind.unwrap_or_else(|| "Transport".into()),
        message,
        leader: header(status, LEADER_KEY).and_then(|l| peer_answer(&l).ok()),
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn refusal(kind: &'static str, leader: Option<&'static str>) -> Status {
        let mut status = Status::new(Code::FailedPrecondition, "refused");
        let metadata = status.metadata_mut();
        metadata.insert(ERROR_KIND_KEY, MetadataValue::from_static(kind));
        if let Some(leader) = leader {
            metadata.insert(LEADER_KEY, MetadataValue::from_static(leader));
        }
        status
    }

    #[test]
    fn a_broken_call_is_retried_elsewhere_unless_it_was_a_change() {
        let to = PeerId::new("a:1");
        let broken = Status::unavailable("connection reset");
        let (routing, next) = judge(&to, &broken, Effect::Idempotent);
        assert_eq!(routing, Routing::Forget);
        assert!(matches!(next, Ok(Next::Elsewhere)));
        let (routing, next) = judge(&to, &broken, Effect::Change);
        assert_eq!(routing, Routing::Forget);
        assert!(matches!(next, Err(CliError::Unknown(_))));
    }

    #[test]
    fn not_leader_follows_the_hint_unless_it_names_the_refusing_process() {
        let to = PeerId::new("a:1");
        let (routing, next) = judge(&to, &refusal("NotLeader", Some("b:2")), Effect::Change);
        assert_eq!(routing, Routing::Leader(Some(PeerId::new("b:2"))));
        assert!(matches!(next, Ok(Next::Redirect(hint)) if hint == PeerId::new("b:2")));
        let (routing, next) = judge(&to, &refusal("NotLeader", Some("a:1")), Effect::Change);
        assert_eq!(routing, Routing::Leader(None));
        assert!(matches!(next, Ok(Next::Elsewhere)));
    }

    #[test]
    fn busy_waits_and_unknown_or_other_kinds_end_the_call() {
        let to = PeerId::new("a:1");
        let (routing, next) = judge(&to, &refusal("Busy", None), Effect::Change);
        assert_eq!(routing, Routing::Keep);
        assert!(matches!(next, Ok(Next::Again)));
        let (_, next) = judge(&to, &refusal("TimedOut", None), Effect::Change);
        assert!(matches!(next, Err(CliError::Unknown(_))));
        let (_, next) = judge(&to, &refusal("TimedOut", None), Effect::Idempotent);
        assert!(matches!(next, Err(CliError::Refused { kind, .. }) if kind == "TimedOut"));
        let (routing, next) = judge(&to, &refusal("NoSuchGroup", None), Effect::Idempotent);
        assert_eq!(routing, Routing::Leader(None));
        assert!(matches!(next, Ok(Next::Elsewhere)));
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let options = CliOptions::default();
        assert_eq!(backoff(&options, 0), options.backoff_initial);
        assert_eq!(backoff(&options, 1), options.backoff_initial * 2);
        assert_eq!(backoff(&options, 60), options.backoff_max);
    }
}
