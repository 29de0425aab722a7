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
