//! The snapshot manifest: what a snapshot covers (last included index and term, the
//! configuration) and, for each of its files, the name, size and CRC32C.
//!
//! Owns: the manifest's byte layout and its validation — the one gateway through which a
//! manifest read from disk or received from a remote source enters; code after it may trust
//! names (safe single path components, unique), sizes and counts. Must never: accept a
//! manifest whose checksum, lengths or names do not verify.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   4  magic "FLSN"
//! 4   1  version (1)
//! 5   4  body length n
//! 9   n  body: snapshot meta (codec::put_snapshot_meta), file count u32,
//!            per file: name (u32 len + UTF-8), size u64, CRC32C u32
//! 9+n 4  CRC32C of bytes 0..9+n
//! ```

use std::path::Path;

use bytes::BufMut;
use flotilla_raft::SnapshotMeta;

use crate::codec::{
    frame, get_snapshot_meta, put_blob, put_snapshot_meta, unframe, Reader, FRAME_HEADER_BYTES,
};
use crate::error::StorageError;

const MAGIC: &[u8; 4] = b"FLSN";
const VERSION: u8 = 1;
/// Name of the manifest file inside a snapshot directory.
pub const MANIFEST_NAME: &str = "manifest";
/// Largest manifest accepted (from disk or from a source).
pub const MANIFEST_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most files one snapshot may hold.
pub const SNAPSHOT_FILES_MAX: usize = 65_536;
/// Longest file name accepted, in bytes.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Largest single snapshot file accepted (1 TiB): a bigger claim is damage, not data.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 1 << 40;
/// Snapshot file names may not start with this: the store's own files inside a snapshot
/// or download directory do.
pub(crate) const RESERVED_PREFIX: &str = ".";

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// File name inside the snapshot directory (one safe path component).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C of the whole file.
    pub checksum: u32,
}

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Last included index and term, and the configuration at that index.
    pub meta: SnapshotMeta,
    /// The files, sorted by name, names unique.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The entry for `name`, if the snapshot has such a file.
    #[must_use]
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.files.get(i))
    }

    /// Total bytes of all files.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Encodes the manifest (files must already be sorted and valid).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.files.windows(2).all(|w| w[0].name < w[1].name),
            "manifest files must be sorted and unique"
        );
        let mut body = Vec::new();
        put_snapshot_meta(&mut body, &self.meta);
        body.put_u32_le(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        for f in &self.files {
            put_blob(&mut body, f.name.as_bytes());
            body.put_u64_le(f.size);
            body.put_u32_le(f.checksum);
        }
        frame(MAGIC, VERSION, &body)
    }

    /// Validates and decodes a manifest; errors name `path` (where the bytes came from) and
    /// the offset of what was wrong.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest, StorageError> {
        let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let body = unframe(path, bytes, MAGIC, VERSION, MANIFEST_BYTES_MAX)?;
        let crc_at = FRAME_HEADER_BYTES + body.len();
        let mut r = Reader::new(body);
        let at = |r: &Reader<'_>| crc_at - r.remaining();
        let meta = get_snapshot_meta(&mut r).map_err(|e| corrupt(FRAME_HEADER_BYTES, e.0))?;
        let count_at = at(&r);
        let count = r.u32().map_err(|e| corrupt(count_at, e.0))? as usize;
        // Each file takes at least 16 bytes: a bogus count cannot make us allocate much.
        if count > SNAPSHOT_FILES_MAX || count > r.remaining() / 16 {
            return Err(corrupt(count_at, format!("file count {count}")));
        }
        let mut files = Vec::with_capacity(count);
        for _ in 0..count {
            let file_at = at(&r);
            let name = r.string().map_err(|e| corrupt(file_at, e.0))?.to_string();
            validate_name(&name).map_err(|why| corrupt(file_at, why))?;
            let size = r.u64().map_err(|e| corrupt(file_at, e.0))?;
            if size > SNAPSHOT_FILE_BYTES_MAX {
                return Err(corrupt(
                    file_at,
                    format!("file {name:?} claims {size} bytes"),
                ));
            }
            let checksum = r.u32().map_err(|e| corrupt(file_at, e.0))?;
            if let Some(last) = files.last() {
                let last: &FileEntry = last;
                if last.name >= name {
                    return Err(corrupt(file_at, format!("file {name:?} out of order")));
                }
            }
            files.push(FileEntry {
                name,
                size,
                checksum,
            });
        }
        r.finish().map_err(|e| corrupt(at(&r), e.0))?;
        Ok(Manifest { meta, files })
    }
}

/// A snapshot file name must be one plain path component and not the manifest's name, so a
/// manifest from a remote source can never make us write outside the snapshot directory.
pub fn validate_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > FILE_NAME_BYTES_MAX
        || name == "."
        || name == ".."
        || name == MANIFEST_NAME
        || name.starts_with(RESERVED_PREFIX)
        || name.contains(['/', '\\', '\0']);
    if bad {
        Err(format!("bad snapshot file name {name:?}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::{Configuration, LogIndex, PeerId, Term};

    fn sample() -> Manifest {
        Manifest {
            meta: SnapshotMeta {
                index: LogIndex(10),
                term: Term(3),
                configuration: Configuration::new(["a:1", "b:1"].map(PeerId::new)),
            },
            files: vec![
                FileEntry {
                    name: "data".into(),
                    size: 5,
                    checksum: 7,
                },
                FileEntry {
                    name: "index".into(),
                    size: 0,
                    checksum: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_every_flip_detected() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(Path::new("m"), &bytes).unwrap(), m);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                Manifest::decode(Path::new("m"), &bad).is_err(),
                "flip at {i}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(Path::new("m"), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn unsafe_names_refused() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "manifest",
            ".download-progress",
        ] {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
        assert!(validate_name("data.sst").is_ok());
    }
}
