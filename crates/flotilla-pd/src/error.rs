//! The crate's typed errors.
//!
//! Owns: [`PdError`], what a decoder or a snapshot load reports. Must never: carry a
//! message that does not say which thing was wrong.

/// What went wrong decoding or loading placement-driver data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PdError {
    /// Bytes from the log, a peer or a disk that do not decode (short, trailing, over a
    /// limit, an unknown tag or version).
    #[error("corrupt {0}")]
    Corrupt(String),
    /// A snapshot that could not be read.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// A field that did not decode: its message already names what was being read and the
/// field (see [`flotilla_storage::fields`]).
impl From<flotilla_storage::fields::DecodeError> for PdError {
    fn from(error: flotilla_storage::fields::DecodeError) -> PdError {
        PdError::Corrupt(error.0)
    }
}
