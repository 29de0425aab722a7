//! Durable raft meta (term and vote) of every group of a process: one append-only journal
//! for all groups, one write and one fsync per batch however many groups changed
//! (SOFAJRaft's `RaftMetaStorage`, but shared by the groups of a process and fsynced always).
//!
//! Owns: the journal format, its replay at open (a torn tail is cut, corruption anywhere
//! else fails the open naming file and offset), its compaction, and the migration of the
//! older layout (one `<group>.meta` file per group). Every record is validated when the
//! store opens (the gateway); later loads answer from memory. Must never: report a save
//! durable before its fsync returned, return a default for a record that exists but does
//! not verify, or accept anything after a failed write or fsync.
//!
//! Why a journal: at ten thousand groups an election at start or after a store dies changes
//! the term of thousands of groups in one round. One file per group made that thousands of
//! fsyncs per round (three each: file, rename, directory), rounds of seconds, and elections
//! that timed out before they finished. Now a round's meta changes are one record.
//!
//! Journal `DIR/journal`: a sequence of records (little-endian).
//!
//! ```text
//! 0   4  magic "FLMJ"
//! 4   4  body length n (1 ..= JOURNAL_RECORD_BYTES_MAX)
//! 8   4  CRC32C of bytes 0..8 (the header's own checksum)
//! 12  n  body: count u32, then count entries:
//!           group u64, term u64, vote flag u8 (0 none, 1 some), [vote: u32 len + UTF-8]
//! 12+n 4 CRC32C of the body
//! ```
//!
//! A later entry for a group replaces an earlier one. The torn-tail rule is the shared
//! log's: the bytes from the first record that fails to verify are a torn write only if
//! they are shorter than a header, all zeroes, or a header that verifies announcing a
//! record longer than the file; anything else is corruption (a flipped byte in a record
//! that may have been acknowledged is never mistaken for a torn write).
//!
//! Compaction: when the journal holds more than four times what the live entries need (and
//! at least [`JOURNAL_COMPACT_BYTES_MIN`]), the live entries are written to `journal.tmp`,
//! fsynced, renamed over `journal`, and the directory fsynced: either file is a complete
//! journal whenever a crash comes. One change costs the same at ten thousand groups as at
//! ten (amortised).
//!
//! Older layout, still read: `<group>.meta` files (magic "FLMT", version 1; body: group
//! u64, term u64, vote flag, optional vote; framed by [`crate::codec::frame`]). At open they are
//! folded into the journal (journal entries are newer and win), the journal is made durable,
//! then the files are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BufMut;
use flotilla_raft::{PeerId, Term};

use crate::codec::{checksum, frame, put_blob, unframe, Reader, FRAME_HEADER_BYTES};
use crate::error::StorageError;
use crate::fs::{FileSystem, WritableFile};
use crate::traits::{GroupId, MetaStorage, RaftMeta};

const LEGACY_MAGIC: &[u8; 4] = b"FLMT";
const LEGACY_VERSION: u8 = 1;
/// Largest legacy meta file accepted: a peer id is a short string, so anything bigger is
/// damage.
pub const META_FILE_BYTES_MAX: usize = 64 * 1024;
const LEGACY_SUFFIX: &str = ".meta";
const LEGACY_TEMP_SUFFIX: &str = ".meta.tmp";

const JOURNAL: &str = "journal";
const JOURNAL_TEMP: &str = "journal.tmp";
const JOURNAL_MAGIC: &[u8; 4] = b"FLMJ";
/// Bytes of a journal record's header (magic, body length, header CRC).
pub const JOURNAL_HEADER_BYTES: usize = 12;
/// Largest journal record body: a batch of metas is split into records below this.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest journal file opened: compaction keeps it near four times the live entries, so a
/// bigger one is damage (or far more groups than a process holds).
pub const JOURNAL_BYTES_MAX: u64 = 1 << 30;
/// The journal is compacted only once it is at least this large.
pub const JOURNAL_COMPACT_BYTES_MIN: u64 = 1 << 20;
/// Bytes an entry takes besides its vote (group, term, vote flag, vote length).
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;

/// Raft meta of every group of a process in one journal, every save fsynced.
pub struct FileMetaStorage {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// What is on disk, validated at open and updated after each durable save.
    metas: BTreeMap<GroupId, RaftMeta>,
    /// The journal, open for appends.
    journal: Box<dyn WritableFile>,
    /// Bytes the live entries take in a compacted journal (estimate of the floor).
    live_bytes: u64,
    /// Set by the first failed write or fsync; every later call is refused.
    failed: Option<String>,
}

impl std::fmt::Debug for FileMetaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMetaStorage")
            .field("dir", &self.dir)
            .field("groups", &self.metas.len())
            .field("journal_bytes", &self.journal.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl FileMetaStorage {
    /// Opens (creating if needed) the meta directory `dir`: removes temporary files left by
    /// a crash, reads the older per-group files and the journal (cutting a torn tail), and
    /// folds the older files into the journal. A record that does not verify fails the open
    /// with its path and the offset of the bad field.
    pub fn open(fs: Arc<dyn FileSystem>, dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        fs.create_dir_all(&dir)
            .map_err(|e| StorageError::io("create directory", &dir, e))?;
        let (mut metas, legacy) = read_legacy(fs.as_ref(), &dir)?;
        let journal_path = dir.join(JOURNAL);
        let existed = fs.exists(&journal_path);
        if existed {
            replay_journal(fs.as_ref(), &journal_path, &mut metas)?;
        }
        let live_bytes = live_bytes(&metas);
        let journal = fs
            .open_append(&journal_path)
            .map_err(|e| StorageError::io("open meta journal", &journal_path, e))?;
        if !existed {
            // The new file's name must be durable before anything in it is acknowledged.
            fs.sync_dir(&dir)
                .map_err(|e| StorageError::io("fsync directory", &dir, e))?;
        }
        let mut storage = FileMetaStorage {
            journal,
            fs,
            dir,
            metas,
            live_bytes,
            failed: None,
        };
        if !legacy.is_empty() {
            // The journal first (durable, holding every value), then the old files go.
            storage.compact()?;
            for path in &legacy {
                storage
                    .fs
                    .remove_file(path)
                    .map_err(|e| StorageError::io("remove migrated meta", path, e))?;
            }
            storage
                .fs
                .sync_dir(&storage.dir)
                .map_err(|e| StorageError::io("fsync directory", &storage.dir, e))?;
        }
        Ok(storage)
    }

    /// The directory holding the journal.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the journal now (appended, compacted away or not).
    #[must_use]
    pub fn journal_bytes(&self) -> u64 {
        self.journal.len()
    }

    fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Appends `metas` as one or more records and fsyncs once.
    fn append_durably(&mut self, metas: &[(GroupId, &RaftMeta)]) -> Result<(), StorageError> {
        let path = self.dir.join(JOURNAL);
        for record in encode_records(metas) {
            self.journal
                .append(&record)
                .map_err(|e| StorageError::io("write meta journal", &path, e))?;
        }
        self.journal
            .sync()
            .map_err(|e| StorageError::io("fsync meta journal", &path, e))
    }

    /// Rewrites the journal as the live entries alone (temp file, fsync, rename, fsync the
    /// directory), then appends to the new one.
    fn compact(&mut self) -> Result<(), StorageError> {
        let temp = self.dir.join(JOURNAL_TEMP);
        let path = self.dir.join(JOURNAL);
        if self.fs.exists(&temp) {
            self.fs
                .remove_file(&temp)
                .map_err(|e| StorageError::io("remove temporary meta journal", &temp, e))?;
        }
        let mut file = self
            .fs
            .open_append(&temp)
            .map_err(|e| StorageError::io("create temporary meta journal", &temp, e))?;
        let live: Vec<(GroupId, &RaftMeta)> = self.metas.iter().map(|(g, m)| (*g, m)).collect();
        for record in encode_records(&live) {
            file.append(&record)
                .map_err(|e| StorageError::io("write meta journal", &temp, e))?;
        }
        file.sync()
            .map_err(|e| StorageError::io("fsync meta journal", &temp, e))?;
        drop(file);
        self.fs
            .rename(&temp, &path)
            .map_err(|e| StorageError::io("rename meta journal", &path, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io("fsync directory", &self.dir, e))?;
        self.journal = self
            .fs
            .open_append(&path)
            .map_err(|e| StorageError::io("open meta journal", &path, e))?;
        Ok(())
    }

    fn compaction_due(&self) -> bool {
        let bytes = self.journal.len();
        bytes >= JOURNAL_COMPACT_BYTES_MIN && bytes > self.live_bytes.saturating_mul(4)
    }
}

impl MetaStorage for FileMetaStorage {
    fn load(&self, group: GroupId) -> Result<RaftMeta, StorageError> {
        self.check_not_failed()?;
        Ok(self.metas.get(&group).cloned().unwrap_or_default())
    }

    fn save(&mut self, group: GroupId, meta: &RaftMeta) -> Result<(), StorageError> {
        self.save_many(&[(group, meta.clone())])
    }

    fn save_many(&mut self, metas: &[(GroupId, RaftMeta)]) -> Result<(), StorageError> {
        self.check_not_failed()?;
        if metas.is_empty() {
            return Ok(());
        }
        let borrowed: Vec<(GroupId, &RaftMeta)> = metas.iter().map(|(g, m)| (*g, m)).collect();
        if let Err(e) = self.append_durably(&borrowed) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        for (group, meta) in metas {
            let before = self.metas.insert(*group, meta.clone());
            self.live_bytes = self.live_bytes + entry_bytes(meta) as u64
                - before.as_ref().map_or(0, |m| entry_bytes(m) as u64);
        }
        if self.compaction_due() {
            if let Err(e) = self.compact() {
                // The appended records are durable; a failed compaction leaves the old
                // journal whole (or the new one renamed), and the store refuses from here.
                self.failed = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Bytes `meta` takes as a journal entry.
fn entry_bytes(meta: &RaftMeta) -> usize {
    ENTRY_FIXED_BYTES + meta.vote.as_ref().map_or(0, |v| v.as_str().len())
}

fn live_bytes(metas: &BTreeMap<GroupId, RaftMeta>) -> u64 {
    metas.values().map(|m| entry_bytes(m) as u64).sum()
}

/// `metas` as journal records, each body below [`JOURNAL_RECORD_BYTES_MAX`].
fn encode_records(metas: &[(GroupId, &RaftMeta)]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut count: u32 = 0;
    let flush = |body: &mut Vec<u8>, count: &mut u32, records: &mut Vec<Vec<u8>>| {
        if *count > 0 {
            let mut full = Vec::with_capacity(4 + body.len());
            full.put_u32_le(*count);
            full.extend_from_slice(body);
            records.push(record(&full));
            body.clear();
            *count = 0;
        }
    };
    for (group, meta) in metas {
        if 4 + body.len() + entry_bytes(meta) > JOURNAL_RECORD_BYTES_MAX {
            flush(&mut body, &mut count, &mut records);
        }
        put_entry(&mut body, *group, meta);
        count += 1;
    }
    flush(&mut body, &mut count, &mut records);
    records
}

/// One group's meta as both layouts write it: group u64, term u64, vote flag u8 (0 none,
/// 1 some), then the vote as a u32 length and UTF-8.
fn put_entry(body: &mut Vec<u8>, group: GroupId, meta: &RaftMeta) {
    body.put_u64_le(group);
    body.put_u64_le(meta.term.get());
    match &meta.vote {
        Some(peer) => {
            body.put_u8(1);
            put_blob(body, peer.as_str().as_bytes());
        }
        None => body.put_u8(0),
    }
}

/// One journal record around `body`.
fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(JOURNAL_HEADER_BYTES + body.len() + 4);
    out.put_slice(JOURNAL_MAGIC);
    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
    let header_crc = checksum(&out);
    out.put_u32_le(header_crc);
    out.put_slice(body);
    out.put_u32_le(checksum(body));
    out
}

/// The body length a record header announces, if the header verifies.
fn parse_header(header: &[u8]) -> Option<usize> {
    let mut r = Reader::new(header);
    let magic = r.bytes(4).ok()?;
    let len = r.u32().ok()? as usize;
    let crc = r.u32().ok()?;
    (magic == JOURNAL_MAGIC
        && crc == checksum(&header[..8])
        && (1..=JOURNAL_RECORD_BYTES_MAX).contains(&len))
    .then_some(len)
}

/// Replays the journal at `path` into `metas`; cuts a torn tail (truncate and fsync).
fn replay_journal(
    fs: &dyn FileSystem,
    path: &Path,
    metas: &mut BTreeMap<GroupId, RaftMeta>,
) -> Result<(), StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let bytes = fs
        .read_all(path)
        .map_err(|e| StorageError::io("read meta journal", path, e))?;
    if bytes.len() as u64 > JOURNAL_BYTES_MAX {
        return Err(corrupt(0, format!("{} bytes is too large", bytes.len())));
    }
    let mut at = 0;
    while at < bytes.len() {
        let tail = &bytes[at..];
        let verified = tail
            .get(..JOURNAL_HEADER_BYTES)
            .and_then(parse_header)
            .and_then(|len| {
                let end = JOURNAL_HEADER_BYTES + len;
                let body = tail.get(JOURNAL_HEADER_BYTES..end)?;
                let crc = Reader::new(tail.get(end..end + 4)?).u32().ok()?;
                (crc == checksum(body)).then_some(body)
            });
        let Some(body) = verified else {
            if is_torn(tail) {
                fs.truncate(path, at as u64)
                    .map_err(|e| StorageError::io("cut torn meta journal", path, e))?;
                fs.sync_file(path)
                    .map_err(|e| StorageError::io("fsync meta journal", path, e))?;
                return Ok(());
            }
            return Err(corrupt(at, "a record does not verify".into()));
        };
        decode_body(body, at + JOURNAL_HEADER_BYTES, &corrupt, metas)?;
        at += JOURNAL_HEADER_BYTES + body.len() + 4;
    }
    Ok(())
}

/// The torn-tail rule (see the module docs).
fn is_torn(tail: &[u8]) -> bool {
    if tail.len() < JOURNAL_HEADER_BYTES || tail.iter().all(|&b| b == 0) {
        return true;
    }
    matches!(parse_header(&tail[..JOURNAL_HEADER_BYTES]),
        Some(len) if JOURNAL_HEADER_BYTES + len + 4 > tail.len())
}

/// Applies one record's entries; `base` is the body's offset in the file (for errors).
fn decode_body(
    body: &[u8],
    base: usize,
    corrupt: &dyn Fn(usize, String) -> StorageError,
    metas: &mut BTreeMap<GroupId, RaftMeta>,
) -> Result<(), StorageError> {
    let mut r = Reader::new(body);
    let at = |r: &Reader<'_>| base + body.len() - r.remaining();
    let count = r.u32().map_err(|e| corrupt(base, e.0))?;
    for _ in 0..count {
        let start = at(&r);
        let group = r.u64().map_err(|e| corrupt(start, e.0))?;
        let term = Term(r.u64().map_err(|e| corrupt(start + 8, e.0))?);
        let vote = match r.u8().map_err(|e| corrupt(start + 16, e.0))? {
            0 => None,
            1 => Some(PeerId::new(
                r.string().map_err(|e| corrupt(start + 17, e.0))?,
            )),
            other => return Err(corrupt(start + 16, format!("bad vote flag {other}"))),
        };
        metas.insert(group, RaftMeta { term, vote });
    }
    r.finish().map_err(|e| corrupt(at(&r), e.0))
}

/// The older layout's files in `dir`: their metas and paths (temporary files removed).
fn read_legacy(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<(BTreeMap<GroupId, RaftMeta>, Vec<PathBuf>), StorageError> {
    let names = fs.list(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut metas = BTreeMap::new();
    let mut paths = Vec::new();
    let mut removed_temp = false;
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(LEGACY_TEMP_SUFFIX) || name == JOURNAL_TEMP {
            // A save or compaction that crashed before its rename: never acknowledged.
            fs.remove_file(&path)
                .map_err(|e| StorageError::io("remove temporary meta", &path, e))?;
            removed_temp = true;
        } else if let Some(stem) = name.strip_suffix(LEGACY_SUFFIX) {
            let group: GroupId = stem.parse().map_err(|_| StorageError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("meta file name {name:?} does not name a group"),
            })?;
            let bytes = fs
                .read_all(&path)
                .map_err(|e| StorageError::io("read meta", &path, e))?;
            metas.insert(group, decode_legacy(&path, group, &bytes)?);
            paths.push(path);
        }
        // Other names are not ours; they are left alone.
    }
    if removed_temp {
        fs.sync_dir(dir)
            .map_err(|e| StorageError::io("fsync directory", dir, e))?;
    }
    Ok((metas, paths))
}

/// An older per-group meta file, as the older layout wrote it (tests and the fuzzer make
/// them to check the migration).
#[must_use]
pub fn encode_legacy(group: GroupId, meta: &RaftMeta) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    put_entry(&mut body, group, meta);
    frame(LEGACY_MAGIC, LEGACY_VERSION, &body)
}

/// Validates and decodes one older meta file. Errors name `path` and the offset of the bad
/// field.
fn decode_legacy(path: &Path, group: GroupId, bytes: &[u8]) -> Result<RaftMeta, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let body = unframe(
        path,
        bytes,
        LEGACY_MAGIC,
        LEGACY_VERSION,
        META_FILE_BYTES_MAX,
    )?;
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

    const JOURNAL_PATH: &str = "/data/meta/journal";

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

    /// A round's changes of a thousand groups are one write and one fsync.
    #[test]
    fn many_groups_are_one_write_and_one_fsync() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        let metas: Vec<(GroupId, RaftMeta)> =
            (1..=1000).map(|g| (g, meta(g + 1, Some("peer")))).collect();
        let before = fs.operations();
        store.save_many(&metas).unwrap();
        assert_eq!(fs.operations() - before, 2, "one append and one fsync");
        fs.crash(|_| 0);
        let store = open(&fs);
        for g in 1..=1000 {
            assert_eq!(store.load(g).unwrap(), meta(g + 1, Some("peer")));
        }
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
                store
                    .save_many(&[(1, old.clone()), (2, old.clone())])
                    .unwrap();
                fs.stop_at(fs.operations() + n);
                let result = store.save_many(&[(1, new.clone()), (2, new.clone())]);
                fs.crash(|unsynced| if keep_half { unsynced / 2 } else { 0 });
                let reopened = open(&fs);
                let (one, two) = (reopened.load(1).unwrap(), reopened.load(2).unwrap());
                if result.is_ok() {
                    assert_eq!(
                        (&one, &two),
                        (&new, &new),
                        "boundary {n}: acknowledged save lost"
                    );
                } else {
                    assert!(one == old || one == new, "boundary {n}: {one:?}");
                    assert_eq!(one, two, "boundary {n}: one batch, one outcome");
                }
                acknowledged = result.is_ok();
            }
            if acknowledged {
                assert!(n >= 2, "a save takes two durable steps");
                break;
            }
        }
    }

    #[test]
    fn a_failed_write_or_fsync_keeps_the_old_value_and_fails_the_store() {
        // A save is two operations: append, fsync.
        for n in 1..=2 {
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
        fs.fail_at(fs.operations() + 2, Some(FaultKind::Sync));
        assert!(store.save(1, &meta(1, None)).is_err());
    }

    #[test]
    fn corruption_is_an_error_naming_file_and_offset() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        store.save(3, &meta(9, Some("peer:1"))).unwrap();
        store.save(4, &meta(2, None)).unwrap();
        let path = PathBuf::from(JOURNAL_PATH);
        let len = fs.len_of(&path).unwrap() as usize;
        for offset in 0..len {
            fs.corrupt(&path, offset, 0x10).unwrap();
            let err = FileMetaStorage::open(Arc::new(fs.clone()), "/data/meta").unwrap_err();
            match &err {
                StorageError::Corrupt { path: p, .. } => assert_eq!(p, &path),
                other => panic!("flip at {offset}: expected corruption, got {other}"),
            }
            assert!(err.to_string().contains("journal"), "{err}");
            fs.corrupt(&path, offset, 0x10).unwrap();
        }
        let store = open(&fs);
        assert_eq!(store.load(3).unwrap(), meta(9, Some("peer:1")));
        assert_eq!(store.load(4).unwrap(), meta(2, None));
    }

    /// A torn last record (a prefix of it, or zeroes) is cut; what came before stays.
    #[test]
    fn a_torn_tail_is_cut() {
        for tail in [
            record(b"\x01\x00\x00\x00")[..7].to_vec(),
            record(&[0u8; 40])[..30].to_vec(),
            vec![0u8; 64],
        ] {
            let fs = SimFs::new();
            let mut store = open(&fs);
            store.save(1, &meta(5, Some("x"))).unwrap();
            let good = fs.len_of(Path::new(JOURNAL_PATH)).unwrap();
            let mut file = fs.open_append(Path::new(JOURNAL_PATH)).unwrap();
            file.append(&tail).unwrap();
            file.sync().unwrap();
            let mut store = open(&fs);
            assert_eq!(store.load(1).unwrap(), meta(5, Some("x")));
            assert_eq!(fs.len_of(Path::new(JOURNAL_PATH)).unwrap(), good);
            store.save(2, &meta(1, None)).unwrap();
            assert_eq!(open(&fs).load(2).unwrap(), meta(1, None));
        }
    }

    /// The journal is rewritten as the live entries once it holds four times their size:
    /// bounded however many changes there were, and every crash boundary of the rewrite
    /// keeps every value.
    #[test]
    fn compaction_bounds_the_journal_and_survives_a_crash_anywhere() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        let mut term = 0;
        let mut largest = 0;
        // 100 groups, each batch changes all of them: the journal passes 1 MiB many times.
        for _ in 0..600 {
            term += 1;
            let batch: Vec<(GroupId, RaftMeta)> = (1..=100)
                .map(|g| (g, meta(term, Some("voter-1"))))
                .collect();
            store.save_many(&batch).unwrap();
            largest = largest.max(store.journal_bytes());
        }
        assert!(largest < JOURNAL_COMPACT_BYTES_MIN + 8 * 1024, "{largest}");
        assert!(fs.len_of(Path::new(JOURNAL_PATH)).unwrap() < JOURNAL_COMPACT_BYTES_MIN);
        let reopened = open(&fs);
        assert_eq!(reopened.load(100).unwrap(), meta(term, Some("voter-1")));
        // Crash at every step of one compaction (and the appends before it).
        let mut stopped = 0;
        for n in 0..12 {
            let fs = SimFs::new();
            let mut store = open(&fs);
            let mut term = 0;
            while store.journal_bytes() + 4096 < JOURNAL_COMPACT_BYTES_MIN {
                term += 1;
                let batch: Vec<(GroupId, RaftMeta)> =
                    (1..=100).map(|g| (g, meta(term, Some("v")))).collect();
                store.save_many(&batch).unwrap();
            }
            fs.stop_at(fs.operations() + n);
            let next: Vec<(GroupId, RaftMeta)> =
                (1..=100).map(|g| (g, meta(term + 1, Some("v")))).collect();
            let mut result = Ok(());
            for _ in 0..4 {
                result = store.save_many(&next);
                if result.is_err() {
                    stopped += 1;
                    break;
                }
            }
            fs.crash(|unsynced| unsynced / 2);
            let reopened = open(&fs);
            for g in 1..=100 {
                let loaded = reopened.load(g).unwrap();
                assert!(
                    loaded == meta(term, Some("v")) || loaded == meta(term + 1, Some("v")),
                    "boundary {n}: group {g} {loaded:?}"
                );
                if result.is_ok() {
                    assert_eq!(loaded, meta(term + 1, Some("v")), "boundary {n}");
                }
            }
        }
        assert!(stopped > 0);
    }

    /// The older layout (a file per group) is folded into the journal at open, and a crash
    /// anywhere in the migration loses nothing.
    #[test]
    fn per_group_files_are_migrated_into_the_journal() {
        let legacy = |fs: &SimFs| {
            fs.create_dir_all(Path::new("/data/meta")).unwrap();
            for g in 1..=5u64 {
                let path = PathBuf::from(format!("/data/meta/{g}.meta"));
                let mut file = fs.open_append(&path).unwrap();
                file.append(&encode_legacy(g, &meta(g * 10, Some("old"))))
                    .unwrap();
                file.sync().unwrap();
            }
            fs.sync_dir(Path::new("/data/meta")).unwrap();
        };
        for n in 0..20 {
            let fs = SimFs::new();
            legacy(&fs);
            fs.stop_at(fs.operations() + n);
            let opened = FileMetaStorage::open(Arc::new(fs.clone()), "/data/meta");
            fs.crash(|unsynced| unsynced / 2);
            let store = open(&fs);
            for g in 1..=5u64 {
                assert_eq!(
                    store.load(g).unwrap(),
                    meta(g * 10, Some("old")),
                    "boundary {n}"
                );
            }
            if opened.is_ok() {
                let names = fs.list(Path::new("/data/meta")).unwrap();
                assert_eq!(names, vec!["journal".to_string()], "boundary {n}");
                break;
            }
        }
        // A bad older file is still an error naming it.
        let fs = SimFs::new();
        legacy(&fs);
        fs.corrupt(Path::new("/data/meta/3.meta"), 12, 0x10)
            .unwrap();
        let err = FileMetaStorage::open(Arc::new(fs.clone()), "/data/meta").unwrap_err();
        assert!(err.to_string().contains("3.meta"), "{err}");
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let fs = SimFs::new();
        let mut store = open(&fs);
        store.save(1, &meta(1, None)).unwrap();
        for temp in ["/data/meta/1.meta.tmp", "/data/meta/journal.tmp"] {
            let mut f = fs.open_append(Path::new(temp)).unwrap();
            f.append(b"garbage").unwrap();
            f.sync().unwrap();
        }
        let store = open(&fs);
        assert!(!fs.exists(Path::new("/data/meta/1.meta.tmp")));
        assert!(!fs.exists(Path::new("/data/meta/journal.tmp")));
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
