//! [`ClientError`]: why an operation of a [`super::KvClient`] failed, and what the stores'
//! answers mean: the result of each op of a write (done, swapped, the previous value, or
//! the refusal of that one op) and a malformed reply.
//!
//! Owns: the outcome of an answer, definite or indeterminate. Must never: call an answer
//! that may hide an applied write definite (a malformed answer to a write is `Unknown`).

use bytes::Bytes;

use crate::service::proto;

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// The error kind (`NotLeader`, `KeyTooLarge`, `Unavailable`, `Unknown`, ...): the
    /// server's `flotilla-error-kind`, or the client's own.
    pub kind: String,
    /// What happened.
    pub message: String,
    /// True when a write may or may not have taken effect.
    pub indeterminate: bool,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if self.indeterminate {
            f.write_str(" (the outcome is unknown: the write may or may not have applied)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    pub(super) fn definite(kind: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            kind: kind.to_string(),
            message: message.into(),
            indeterminate: false,
        }
    }

    pub(super) fn unknown(message: impl Into<String>) -> ClientError {
        ClientError {
            kind: "Unknown".into(),
            message: message.into(),
            indeterminate: true,
        }
    }
}

pub(super) fn wrong_reply() -> ClientError {
    ClientError::definite("InvalidAnswer", "the store answered with a malformed reply")
}

pub(super) fn wrong_reply_unknown() -> ClientError {
    ClientError::unknown("the store answered a write with a malformed reply")
}

/// The kind of an op refused inside a batch, whose result carries only the message: the
/// refusals a caller acts on keep their kind, the rest are `Refused`.
pub(super) fn element_error_kind(message: &str) -> &'static str {
    // The texts of `KvError::NoSpace`, `KvError::KeyEmpty` and `KvError::KeyOutOfRegion`
    // (a test checks they match).
    if message.starts_with("no space:") {
        "NoSpace"
    } else if message == "key is empty" {
        "KeyEmpty"
    } else if key_moved(message) {
        "KeyOutOfRegion"
    } else if message.starts_with(crate::lock::NOT_OWNER_PREFIX) {
        crate::lock::NOT_OWNER_KIND
    } else if message.starts_with(crate::fence::FENCED_PREFIX) {
        crate::fence::FENCED_KIND
    } else if message.starts_with(crate::lease::NOT_FOUND_PREFIX) {
        crate::lease::NOT_FOUND_KIND
    } else {
        "Refused"
    }
}

/// Whether an op's refusal says its key is no longer in the region it was sent to: the
/// region split (or will merge) between the client's routing and the op's apply. Such an
/// op changed nothing, and goes to the key's region as it is now.
pub(super) fn key_moved(message: &str) -> bool {
    (message.starts_with("key ") && message.contains(" is outside region "))
        || region_merging(message)
}

/// Whether a refusal says the region is frozen for a merge (the text of
/// `crate::state_machine::merging_refusal`): nothing changed, and the key's region is the
/// merge's target once it commits (or the source again if it rolls back).
pub(super) fn region_merging(message: &str) -> bool {
    message.starts_with("region ") && message.contains(" is merging into region ")
}

pub(super) fn op_error(result: &proto::OpResult) -> Option<ClientError> {
    match &result.result {
        Some(proto::op_result::Result::Error(why)) => {
            Some(ClientError::definite(element_error_kind(why), why.clone()))
        }
        None => Some(wrong_reply_unknown()),
        _ => None,
    }
}

pub(super) fn done(result: proto::OpResult) -> Result<(), ClientError> {
    match op_error(&result) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

pub(super) fn swapped(result: proto::OpResult) -> Result<bool, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Swapped(swapped)) => Ok(swapped),
        _ => Err(wrong_reply_unknown()),
    }
}

pub(super) fn range(result: proto::OpResult) -> Result<(u64, u64), ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Range(r)) if r.start <= r.end => Ok((r.start, r.end)),
        _ => Err(wrong_reply_unknown()),
    }
}

pub(super) fn lock_state(result: proto::OpResult) -> Result<crate::lock::LockState, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Lock(s)) => Ok(crate::lock::LockState {
            acquired: s.acquired,
            held: s.held,
            owner: s.owner,
            token: s.token,
            lease_ms: s.lease_ms,
            remaining_ms: s.remaining_ms,
            count: s.count,
        }),
        _ => Err(wrong_reply_unknown()),
    }
}

pub(super) fn counter(result: proto::OpResult) -> Result<u64, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Counter(next)) => Ok(next),
        _ => Err(wrong_reply_unknown()),
    }
}

pub(super) fn previous(result: proto::OpResult) -> Result<Option<Bytes>, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Previous(value)) => Ok(value.found.then_some(value.value)),
        _ => Err(wrong_reply_unknown()),
    }
}

/// `error` and its sources, joined.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_element_refusals_keep_their_kind() {
        let no_space = crate::KvError::NoSpace {
            store: "s:1".into(),
            used: 2,
            quota: 1,
        };
        assert_eq!(element_error_kind(&no_space.to_string()), "NoSpace");
        assert_eq!(
            element_error_kind(&crate::KvError::KeyEmpty.to_string()),
            "KeyEmpty"
        );
        // A key that left its region (a split between routing and apply) is rerouted.
        let region = crate::Region::new(
            crate::RegionId(1),
            bytes::Bytes::new(),
            bytes::Bytes::from_static(b"m"),
            crate::Epoch::new(1, 2),
        )
        .unwrap();
        let moved = region.out_of_region(b"z").to_string();
        assert!(key_moved(&moved), "{moved}");
        assert_eq!(element_error_kind(&moved), "KeyOutOfRegion");
        assert_eq!(element_error_kind("something else went wrong"), "Refused");
        assert!(!key_moved("value too large"));
    }
}
