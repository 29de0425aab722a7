//! Errors of the storage module.
//!
//! Owns: the distinction callers need — an I/O failure (the store is now failed and must be
//! stopped), corruption found while reading (named by file and offset), and ordinary
//! operating errors (compacted, unavailable, invalid argument). Must never: hide which file
//! or offset a corruption was found at.

use std::fmt;
use std::io;
use std::path::PathBuf;

use flotilla_raft::LogIndex;

/// An error from the storage module.
#[derive(Debug)]
pub enum StorageError {
    /// An operating-system call failed. For a write or an fsync this is fatal: the store
    /// refuses everything afterwards ([`StorageError::Failed`]).
    Io {
        /// What was being done ("append", "fsync", "open", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Data read back does not verify (checksum, length or format).
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An earlier write or fsync failed; nothing is accepted or acknowledged any more.
    Failed(String),
    /// The entries were compacted away.
    Compacted {
        /// First index still stored.
        first_index: LogIndex,
    },
    /// The entry is not in the log.
    Unavailable {
        /// The index asked for.
        index: LogIndex,
    },
    /// The request is malformed; the message says how.
    InvalidArgument(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            StorageError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "corruption in {} at offset {offset}: {reason}",
                path.display()
            ),
            StorageError::Failed(why) => write!(f, "storage failed earlier: {why}"),
            StorageError::Compacted { first_index } => {
                write!(f, "log compacted; first index is {first_index}")
            }
            StorageError::Unavailable { index } => write!(f, "index {index} is not in the log"),
            StorageError::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl StorageError {
    /// An I/O error for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<StorageError> for flotilla_raft::StoreError {
    fn from(e: StorageError) -> flotilla_raft::StoreError {
        match e {
            StorageError::Compacted { .. } => flotilla_raft::StoreError::Compacted,
            StorageError::Unavailable { .. } => flotilla_raft::StoreError::Unavailable,
            other => flotilla_raft::StoreError::Io(other.to_string()),
        }
    }
}
