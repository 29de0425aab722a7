//! Durable raft meta (term and vote) of every group of a process: one small file per group,
//! replaced atomically on every save (SOFAJRaft's `RaftMetaStorage`, but fsynced always).
//!
//! Owns: the meta file format and the replace protocol — write `<group>.meta.tmp`, fsync it,
//! rename it over `<group>.meta`, fsync the directory — so that after any crash a group's
//! meta is either the old or the new record, never a torn one. Every file is validated when
//! the store opens (the gateway); later loads answer from memory. Must never: report a save
//! durable before the directory fsync returned, return a default for a file that exists but
//! does not verify, or accept anything after a failed write or fsync.
//!
//! File format (little-endian), one record per file:
//!
//! ```text
//! 0   4  magic "FLMT"
//! 4   1  version (1)
//! 5   4  body length n
//! 9   n  body: group u64, term u64, vote flag u8 (0 none, 1 some), [vote: u32 len + UTF-8]
//! 9+n 4  CRC32C of bytes 0..9+n
//! ```
//!
//! Votes are rare (one save per election at most), so one file and three fsyncs per save
//! cost nothing measurable; the shared log is where batching matters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BufMut;
use flotilla_raft::{PeerId, Term};

use crate::codec::{frame, put_blob, unframe, Reader, FRAME_HEADER_BYTES};
use crate::error::StorageError;
use crate::fs::FileSystem;
use crate::traits::{GroupId, MetaStorage, RaftMeta};

const MAGIC: &[u8; 4] = b"FLMT";
const VERSION: u8 = 1;
/// Largest meta file accepted: a peer id is a host:port string, so anything bigger is damage.
pub const META_FILE_BYTES_MAX: usize = 64 * 1024;
const SUFFIX: &str = ".meta";
const TEMP_SUFFIX: &str = ".meta.tmp";

/// Raft meta in one directory, one file per group, every save fsynced.
pub struct FileMetaStorage {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// What is on disk, validated at open and updated after each durable save.
    metas: BTreeMap<GroupId, RaftMeta>,
    /// Set by the first failed write or fsync; every later call is refused.
    failed: Option<String>,
}

impl std::fmt::Debug for FileMetaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMetaStorage")
            .field("dir", &self.dir)
            .field("groups", &self.metas.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl FileMetaStorage {
    /// Opens (creating if needed) the meta directory `dir`: removes temporary files left by
    /// a crash and validates every meta file. A file that does not verify fails the open
    /// with its path and the offset of the bad field.
    pub fn open(fs: Arc<dyn FileSystem>, dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        fs.create_dir_all(&dir)
            .map_err(|e| StorageError::io("create directory", &dir, e))?;
        let names = fs
            .list(&dir)
            .map_err(|e| StorageError::io("list", &dir, e))?;
        let mut metas = BTreeMap::new();
        let mut removed_temp = false;
        for name in names {
            let path = dir.join(&name);
            if name.ends_with(TEMP_SUFFIX) {
                // A save that crashed before its rename: never acknowledged, drop it.
                fs.remove_file(&path)
                    .map_err(|e| StorageError::io("remove temporary meta", &path, e))?;
                removed_temp = true;
            } else if let Some(stem) = name.strip_suffix(SUFFIX) {
                let group: GroupId = stem.parse().map_err(|_| StorageError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("meta file name {name:?} does not name a group"),
                })?;
                let bytes = fs
                    .read_all(&path)
                    .map_err(|e| StorageError::io("read meta", &path, e))?;
                metas.insert(group, decode(&path, group, &bytes)?);
            }
            // Other names are not ours; they are left alone.
        }
        if removed_temp {
            fs.sync_dir(&dir)
                .map_err(|e| StorageError::io("fsync directory", &dir, e))?;
        }
        Ok(FileMetaStorage {
            fs,
            dir,
            metas,
            failed: None,
        })
    }

    /// The directory holding the meta files.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, group: GroupId) -> PathBuf {
        self.dir.join(format!("{group}{SUFFIX}"))
    }

    fn temp_path_of(&self, group: GroupId) -> PathBuf {
        self.dir.join(format!("{group}{TEMP_SUFFIX}"))
    }

    fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// The replace protocol; any error leaves `<group>.meta` as it was (or, when only the
    /// final directory fsync failed, renamed but possibly not durable — either value is
    /// safe because the caller was not told the new one is durable).
    fn write_durably(&self, group: GroupId, record: &[u8]) -> Result<(), StorageError> {
        let temp = self.temp_path_of(group);
        let path = self.path_of(group);
        if self.fs.exists(&temp) {
            self.fs
                .remove_file(&temp)
                .map_err(|e| StorageError::io("remove temporary meta", &temp, e))?;
        }
        let mut file = self
            .fs
            .open_append(&temp)
            .map_err(|e| StorageError::io("create temporary meta", &temp, e))?;
        file.append(record)
            .map_err(|e| StorageError::io("write meta", &temp, e))?;
        file.sync()
            .map_err(|e| StorageError::io("fsync meta", &temp, e))?;
        drop(file);
        self.fs
            .rename(&temp, &path)
            .map_err(|e| StorageError::io("rename meta", &path, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io("fsync directory", &self.dir, e))
    }
}

impl MetaStorage for FileMetaStorage {
    fn load(&self, group: GroupId) -> Result<RaftMeta, StorageError> {
        self.check_not_failed()?;
        Ok(self.metas.get(&group).cloned().unwrap_or_default())
    }

    fn save(&mut self, group: GroupId, meta: &RaftMeta) -> Result<(), StorageError> {
        self.check_not_failed()?;
        let record = encode(group, meta);
        // Pair the check across I/O: what we write must decode to what we were given.
        debug_assert_eq!(
            decode(Path::new("<encoded>"), group, &record).ok().as_ref(),
            Some(meta)
        );
        if let Err(e) = self.write_durably(group, &record) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.metas.insert(group, meta.clone());
        Ok(())
    }
}

fn encode(group: GroupId, meta: &RaftMeta) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.put_u64_le(group);
    body.put_u64_le(meta.term.get());
    match &meta.vote {
        Some(peer) => {
            body.put_u8(1);
            put_blob(&mut body, peer.as_str().as_bytes());
        }
        None => body.put_u8(0),
    }
    frame(MAGIC, VERSION, &body)
}

/// Validates and decodes one meta file. Errors name `path` and the offset of the bad field.
fn decode(path: &Path, group: GroupId, bytes: &[u8]) -> Result<RaftMeta, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let body = unframe(path, bytes, MAGIC, VERSION, META_FILE_BYTES_MAX)?;
    let crc_at = FRAME_HEADER_BYTES + body.len();
    let mut r = Reader::new(body);
    let stored_group = r.u64().map_err(|e| corrupt(9, e.0))?;
    if stored_group != group {
        return Err(corrupt(
            9,
            format!("record is for group {stored_group}, file is for group {group}"),
        ));
    }
    let term = Term(r.u64().map_err(|e| corrupt(17, e.0))?);
    let vote = match r.u8().map_err(|e| corrupt(25, e.0))? {
        0 => None,
        1 => Some(PeerId::new(r.string().map_err(|e| corrupt(26, e.0))?)),
        other => return Err(corrupt(25, format!("bad vote flag {other}"))),
    };
    r.finish().map_err(|e| corrupt(crc_at, e.0))?;
    Ok(RaftMeta { term, vote })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultKind, SimFs, StdFs};

    fn meta(term: u64, vote: Option<&str>) -> RaftMeta {
        RaftMeta {
            term: Term(term),
            vote: vote.map(PeerId::new),
        }
    }

    fn open(fs: &SimFs) -> FileMetaStorage {
        FileMetaStorage::open(Arc::new(fs.clone()), "/data/meta").unwrap()
    }

    #[test]
    fn save_and_load_round_trip_across_reopen() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        assert_eq!(store.load(7).unwrap(), RaftMeta::default());
        store.save(7, &meta(3, Some("10.0.0.1:8080"))).unwrap();
        store.save(8, &meta(1, None)).unwrap();
        store.save(7, &meta(4, None)).unwrap();
        fs.crash(|_| 0);
        let store = open(&fs);
        assert_eq!(store.load(7).unwrap(), meta(4, None));
        assert_eq!(store.load(8).unwrap(), meta(1, None));
        assert_eq!(store.load(9).unwrap(), RaftMeta::default());
    }

    /// Crash at every write and fsync boundary of a save: afterwards the meta is the old
    /// or the new value, never torn, and a save that returned Ok survives.
    #[test]
    fn crash_at_every_boundary_keeps_old_or_new() {
        let old = meta(5, Some("a:1"));
        let new = meta(6, Some("b:2"));
        for n in 0.. {
            let mut acknowledged = false;
            // A clean loss, and a crash that keeps half of every file's unsynced bytes.
            for keep_half in [false, true] {
                let fs = SimFs::new();
                let mut store = open(&fs);
                store.save(1, &old).unwrap();
                fs.stop_at(fs.operations() + n);
                let result = store.save(1, &new);
                fs.crash(|unsynced| if keep_half { unsynced / 2 } else { 0 });
                let loaded = open(&fs).load(1).unwrap();
                if result.is_ok() {
                    assert_eq!(loaded, new, "boundary {n}: acknowledged save lost");
                } else {
                    assert!(loaded == old || loaded == new, "boundary {n}: {loaded:?}");
                }
                acknowledged = result.is_ok();
            }
            if acknowledged {
                assert!(n >= 5, "a save takes five durable steps");
                break;
            }
        }
    }

    #[test]
    fn a_failed_write_or_fsync_keeps_the_old_value_and_fails_the_store() {
        // A save is five operations: create temp, write, fsync, rename, fsync directory.
        for n in 1..=5 {
            let fs = SimFs::new();
            let mut store = open(&fs);
            store.save(1, &meta(2, None)).unwrap();
            fs.fail_at(fs.operations() + n, None);
            let err = store.save(1, &meta(3, None)).unwrap_err();
            assert!(matches!(err, StorageError::Io { .. }), "{err}");
            assert!(matches!(
                store.save(1, &meta(4, None)),
                Err(StorageError::Failed(_))
            ));
            assert!(store.load(1).is_err(), "a failed store answers nothing");
            fs.crash(|_| 0);
            assert_eq!(open(&fs).load(1).unwrap(), meta(2, None), "failure at {n}");
        }
        let fs = SimFs::new();
        let mut store = open(&fs);
        fs.fail_at(fs.operations() + 3, Some(FaultKind::Sync));
        assert!(store.save(1, &meta(1, None)).is_err());
    }

    #[test]
    fn corruption_is_an_error_naming_file_and_offset() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        store.save(3, &meta(9, Some("peer:1"))).unwrap();
        let path = PathBuf::from("/data/meta/3.meta");
        let len = fs.len_of(&path).unwrap() as usize;
        for offset in 0..len {
            fs.corrupt(&path, offset, 0x10).unwrap();
            let err = FileMetaStorage::open(Arc::new(fs.clone()), "/data/meta").unwrap_err();
            match &err {
                StorageError::Corrupt { path: p, .. } => assert_eq!(p, &path),
                other => panic!("flip at {offset}: expected corruption, got {other}"),
            }
            assert!(err.to_string().contains("3.meta"), "{err}");
            fs.corrupt(&path, offset, 0x10).unwrap();
        }
        assert_eq!(open(&fs).load(3).unwrap(), meta(9, Some("peer:1")));
    }

    #[test]
    fn leftover_temp_file_is_removed_at_open() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        store.save(1, &meta(1, None)).unwrap();
        let temp = Path::new("/data/meta/1.meta.tmp");
        let mut f = fs.open_append(temp).unwrap();
        f.append(b"garbage").unwrap();
        f.sync().unwrap();
        let store = open(&fs);
        assert!(!fs.exists(temp));
        assert_eq!(store.load(1).unwrap(), meta(1, None));
    }

    #[test]
    fn std_fs_smoke() {
        let dir = std::env::temp_dir().join(format!("flotilla-meta-test-{}", std::process::id()));
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let mut store = FileMetaStorage::open(fs.clone(), &dir).unwrap();
        store.save(42, &meta(7, Some("h:1"))).unwrap();
        store.save(42, &meta(8, Some("h:2"))).unwrap();
        let store = FileMetaStorage::open(fs.clone(), &dir).unwrap();
        assert_eq!(store.load(42).unwrap(), meta(8, Some("h:2")));
        fs.remove_dir_all(&dir).unwrap();
    }
}
