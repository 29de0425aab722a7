//! The snapshot store of one raft group: a directory per snapshot, each holding the state
//! machine's files and a [`Manifest`] (SOFAJRaft's `SnapshotStorage`, with checksums on
//! every file and resumable transfer).
//!
//! Owns: the directory layout under the store's root, the write protocol that makes a
//! snapshot appear all at once, verification at open, retention (the newest snapshot is
//! kept; an older one is deleted only once no [`SnapshotReader`] pins it) and, in [`copy`],
//! the receiving side of a transfer. Must never: show a snapshot under its final name before
//! every byte of it and the manifest are durable, install a file whose checksum does not
//! match its manifest, or delete a snapshot a reader still holds.
//!
//! Layout under the root:
//!
//! ```text
//! snapshot-<index, 20 digits>/   a complete snapshot: its files + `manifest`
//! temp-<n>/                      a SnapshotWriter at work; removed at open
//! download-<index>-<term>/       a transfer in progress: `manifest`, `.progress`, files;
//!                                kept across restarts so the transfer can resume
//! ```
//!
//! Writing ([`SnapshotWriter::finish`]): fsync every file, write and fsync the manifest,
//! fsync the temporary directory, rename it to `snapshot-<index>`, fsync the root. The
//! rename is the commit point: before it a crash leaves the old snapshot and a `temp-`
//! directory (removed at the next open), after it the new snapshot is complete on disk.
//!
//! Opening ([`SnapshotStore::open`]): `temp-` directories are removed; the newest
//! `snapshot-` directory is verified in full (manifest checksum, then every file's size and
//! CRC32C); older ones are deleted. **If the newest snapshot does not verify, the open fails
//! with the bad file named and no older snapshot is used**: the log was compacted up to the
//! newest snapshot, so an older one would leave a silent gap between it and the log. The
//! operator removes the damaged directory and the peer fetches a snapshot from its leader.
//! (A complete-named snapshot cannot be damaged by a crash, only by the disk.)
//!
//! Retention: superseded snapshots wait in a list until no reader holds them; they are
//! deleted on the next install or [`SnapshotStore::collect_garbage`] (a reader's drop only
//! releases its hold: no I/O, and so no unreported error, in a destructor).
//!
//! Tests run this store over [`crate::fs::SimFs`]; there is no separate in-memory snapshot
//! store.

pub mod copy;
pub mod manifest;
pub mod throttle;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_raft::{LogIndex, SnapshotMeta};

use crate::codec::checksum;
use crate::error::StorageError;
use crate::fs::{FileSystem, WritableFile};

pub use copy::{copy_snapshot, CopyOptions, CopyReport, SnapshotSource};
pub use manifest::{FileEntry, Manifest, MANIFEST_NAME};
pub use throttle::{Clock, ManualClock, SystemClock, Throttle};

/// Default size of a transfer chunk (SOFAJRaft's 128 KiB).
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: u32 = 128 * 1024;
/// Largest chunk a reader serves or a copier asks for, whatever the caller passes.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Buffer used to checksum or copy files locally.
const LOCAL_IO_BYTES: usize = 256 * 1024;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const TEMP_PREFIX: &str = "temp-";
const DOWNLOAD_PREFIX: &str = "download-";

/// A complete, verified snapshot on disk. Immutable.
#[derive(Debug)]
struct Snapshot {
    dir: PathBuf,
    manifest: Manifest,
}

#[derive(Debug, Default)]
struct State {
    /// The snapshot a reader gets; `None` before the first one.
    newest: Option<Arc<Snapshot>>,
    /// Superseded snapshots; each is deleted once only this list holds it.
    retired: Vec<Arc<Snapshot>>,
    next_temp: u64,
    /// Set by the first failed write or fsync; every later mutation is refused.
    failed: Option<String>,
}

struct Shared {
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
    state: Mutex<State>,
}

/// The snapshot store of one group. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct SnapshotStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("root", &self.shared.root)
            .field("state", &*self.state())
            .finish()
    }
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |e| StorageError::io(op, path, e)
}

fn snapshot_dir_name(index: LogIndex) -> String {
    format!("{SNAPSHOT_PREFIX}{:020}", index.get())
}

impl SnapshotStore {
    /// A store held entirely in memory (over a fresh [`crate::fs::SimFs`]), for tests and
    /// the simulator: the same code paths, nothing survives the process.
    pub fn in_memory() -> Result<Self, StorageError> {
        SnapshotStore::open(Arc::new(crate::fs::SimFs::new()), "/snapshots")
    }

    /// Opens (creating if needed) the store at `root`: removes writers' temporary
    /// directories, verifies the newest snapshot in full and deletes older ones. Fails,
    /// naming the file, if the newest snapshot does not verify (see the module docs).
    pub fn open(fs: Arc<dyn FileSystem>, root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        // The directory is made with the first snapshot written or copied (`ensure_root`):
        // a process with ten thousand groups and no snapshots keeps no empty directories
        // (nothing to create at start, nothing for a disk-usage walk to visit).
        let names = if fs.exists(&root) {
            fs.list(&root).map_err(io("list", &root))?
        } else {
            Vec::new()
        };
        let mut snapshots: Vec<(u64, PathBuf)> = Vec::new();
        let mut downloads: Vec<(u64, PathBuf)> = Vec::new();
        let mut remove: Vec<PathBuf> = Vec::new();
        for name in names {
            let path = root.join(&name);
            if name.starts_with(TEMP_PREFIX) {
                remove.push(path);
            } else if let Some(rest) = name.strip_prefix(SNAPSHOT_PREFIX) {
                match rest.parse::<u64>() {
                    Ok(index) => snapshots.push((index, path)),
                    Err(_) => remove.push(path),
                }
            } else if let Some(rest) = name.strip_prefix(DOWNLOAD_PREFIX) {
                match rest.split('-').next().and_then(|i| i.parse::<u64>().ok()) {
                    Some(index) => downloads.push((index, path)),
                    None => remove.push(path),
                }
            }
            // Other names are not ours and are left alone.
        }
        snapshots.sort();
        downloads.sort();
        let newest = match snapshots.pop() {
            Some((index, dir)) => {
                let manifest = verify_snapshot(fs.as_ref(), &dir)?;
                if manifest.meta.index.get() != index {
                    return Err(StorageError::Corrupt {
                        path: dir.join(MANIFEST_NAME),
                        offset: 0,
                        reason: format!(
                            "manifest says index {}, directory says {index}",
                            manifest.meta.index
                        ),
                    });
                }
                Some(Arc::new(Snapshot { dir, manifest }))
            }
            None => None,
        };
        let newest_index = newest.as_ref().map_or(0, |s| s.manifest.meta.index.get());
        remove.extend(snapshots.into_iter().map(|(_, dir)| dir));
        // Keep only the newest download, and only if it is newer than what we have.
        if let Some((index, dir)) = downloads.pop() {
            if index <= newest_index {
                remove.push(dir);
            }
        }
        remove.extend(downloads.into_iter().map(|(_, dir)| dir));
        for dir in &remove {
            fs.remove_dir_all(dir).map_err(io("remove", dir))?;
        }
        if !remove.is_empty() {
            fs.sync_dir(&root).map_err(io("fsync directory", &root))?;
        }
        Ok(SnapshotStore {
            shared: Arc::new(Shared {
                fs,
                root,
                state: Mutex::new(State {
                    newest,
                    ..State::default()
                }),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data behind the lock: a panic elsewhere leaves nothing half-updated that
        // later code relies on.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn fs(&self) -> &dyn FileSystem {
        self.shared.fs.as_ref()
    }

    /// The store's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Metadata of the newest snapshot.
    #[must_use]
    pub fn newest_meta(&self) -> Option<SnapshotMeta> {
        self.state()
            .newest
            .as_ref()
            .map(|s| s.manifest.meta.clone())
    }

    /// A reader of the newest snapshot; it pins that snapshot until dropped.
    #[must_use]
    pub fn open_reader(&self) -> Option<SnapshotReader> {
        let state = self.state();
        state.newest.as_ref().map(|s| SnapshotReader {
            fs: self.shared.fs.clone(),
            snapshot: s.clone(),
        })
    }

    /// Number of superseded snapshots still on disk because a reader holds them.
    #[must_use]
    pub fn retired_count(&self) -> usize {
        self.state().retired.len()
    }

    /// Starts a snapshot covering up to `meta.index`. Refused if the store already has a
    /// snapshot at or after that index.
    pub fn create_writer(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, StorageError> {
        let temp = {
            let mut state = self.state();
            check_usable(&state, &meta)?;
            state.next_temp += 1;
            self.shared
                .root
                .join(format!("{TEMP_PREFIX}{}", state.next_temp))
        };
        let result = self.ensure_root().and_then(|()| {
            self.fs()
                .create_dir_all(&temp)
                .map_err(io("create directory", &temp))
        });
        self.check_io(result)?;
        Ok(SnapshotWriter {
            store: self.clone(),
            temp,
            meta,
            files: BTreeMap::new(),
            done: false,
        })
    }

    /// Deletes superseded snapshots no reader holds any more; returns how many.
    pub fn collect_garbage(&self) -> Result<usize, StorageError> {
        let mut state = self.state();
        self.collect_garbage_locked(&mut state)
    }

    fn collect_garbage_locked(&self, state: &mut State) -> Result<usize, StorageError> {
        if let Some(why) = &state.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        let (unused, held): (Vec<_>, Vec<_>) = std::mem::take(&mut state.retired)
            .into_iter()
            .partition(|s| Arc::strong_count(s) == 1);
        state.retired = held;
        for s in &unused {
            if let Err(e) = self.fs().remove_dir_all(&s.dir) {
                let e = StorageError::io("remove snapshot", &s.dir, e);
                state.failed = Some(e.to_string());
                return Err(e);
            }
        }
        if !unused.is_empty() {
            let root = &self.shared.root;
            if let Err(e) = self.fs().sync_dir(root) {
                let e = StorageError::io("fsync directory", root, e);
                state.failed = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(unused.len())
    }

    /// Marks the store failed if `result` is an I/O error (a failed write or fsync).
    pub(crate) fn check_io<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e @ StorageError::Io { .. }) = &result {
            let mut state = self.state();
            state.failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    pub(crate) fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.state().failed {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// The commit point shared by writers and copies: `temp` holds every file and the
    /// manifest, all fsynced, and `temp` itself was fsynced. Renames it to its final name,
    /// fsyncs the root, makes it the newest snapshot and retires the previous one.
    pub(crate) fn install(
        &self,
        temp: &Path,
        manifest: Manifest,
    ) -> Result<SnapshotReader, StorageError> {
        let mut state = self.state();
        check_usable(&state, &manifest.meta)?;
        let root = &self.shared.root;
        let dir = root.join(snapshot_dir_name(manifest.meta.index));
        let renamed = self
            .fs()
            .rename(temp, &dir)
            .map_err(io("rename snapshot", &dir))
            .and_then(|()| {
                self.fs()
                    .sync_dir(root)
                    .map_err(io("fsync directory", root))
            });
        if let Err(e) = renamed {
            state.failed = Some(e.to_string());
            return Err(e);
        }
        let snapshot = Arc::new(Snapshot { dir, manifest });
        if let Some(old) = state.newest.replace(snapshot.clone()) {
            state.retired.push(old);
        }
        self.collect_garbage_locked(&mut state)?;
        Ok(SnapshotReader {
            fs: self.shared.fs.clone(),
            snapshot,
        })
    }

    pub(crate) fn download_dir(&self, meta: &SnapshotMeta) -> PathBuf {
        self.shared.root.join(format!(
            "{DOWNLOAD_PREFIX}{:020}-{:020}",
            meta.index.get(),
            meta.term.get()
        ))
    }

    /// Creates the store's directory if it does not exist yet, and makes its name durable
    /// (every directory it had to create, fsynced in its parent) before anything is written
    /// in it.
    pub(crate) fn ensure_root(&self) -> Result<(), StorageError> {
        let root = &self.shared.root;
        if self.fs().exists(root) {
            return Ok(());
        }
        // The directories to make, deepest first, up to the first that exists.
        let mut missing = Vec::new();
        let mut dir = root.as_path();
        while !self.fs().exists(dir) {
            missing.push(dir.to_path_buf());
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
                _ => break,
            }
        }
        self.fs()
            .create_dir_all(root)
            .map_err(io("create directory", root))?;
        for made in missing.iter().rev() {
            if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.fs()
                    .sync_dir(parent)
                    .map_err(io("fsync directory", parent))?;
            }
        }
        Ok(())
    }

    /// Download directories other than `keep`.
    pub(crate) fn other_downloads(&self, keep: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let root = &self.shared.root;
        if !self.fs().exists(root) {
            return Ok(Vec::new());
        }
        let names = self.fs().list(root).map_err(io("list", root))?;
        Ok(names
            .iter()
            .filter(|n| n.starts_with(DOWNLOAD_PREFIX))
            .map(|n| root.join(n))
            .filter(|p| p != keep)
            .collect())
    }
}

fn check_usable(state: &State, meta: &SnapshotMeta) -> Result<(), StorageError> {
    if let Some(why) = &state.failed {
        return Err(StorageError::Failed(why.clone()));
    }
    if let Some(newest) = &state.newest {
        if newest.manifest.meta.index >= meta.index {
            return Err(StorageError::InvalidArgument(format!(
                "a snapshot at index {} exists; refusing one at index {}",
                newest.manifest.meta.index, meta.index
            )));
        }
    }
    Ok(())
}

/// Reads and validates `dir/manifest`, then checks every file's size and CRC32C.
fn verify_snapshot(fs: &dyn FileSystem, dir: &Path) -> Result<Manifest, StorageError> {
    let path = dir.join(MANIFEST_NAME);
    let bytes = fs.read_all(&path).map_err(io("read manifest", &path))?;
    let manifest = Manifest::decode(&path, &bytes)?;
    for file in &manifest.files {
        let path = dir.join(&file.name);
        let (size, crc) = checksum_file(fs, &path)?;
        if size != file.size {
            return Err(StorageError::Corrupt {
                path,
                offset: size.min(file.size),
                reason: format!("{size} bytes, manifest says {}", file.size),
            });
        }
        if crc != file.checksum {
            return Err(StorageError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "checksum mismatch: manifest says {:#010x}, file has {crc:#010x}",
                    file.checksum
                ),
            });
        }
    }
    Ok(manifest)
}

/// Size and CRC32C of the first `len` bytes of `path` (the whole file when `None`).
pub(crate) fn checksum_prefix(
    fs: &dyn FileSystem,
    path: &Path,
    len: Option<u64>,
) -> Result<(u64, u32), StorageError> {
    let file = fs.open_read(path).map_err(io("open", path))?;
    let size = file.size().map_err(io("stat", path))?;
    let len = len.unwrap_or(size);
    if len > size {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: size,
            reason: format!("{size} bytes, expected at least {len}"),
        });
    }
    let mut crc = 0u32;
    let mut buf = vec![0u8; LOCAL_IO_BYTES];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(LOCAL_IO_BYTES as u64)).unwrap_or(0);
        file.read_exact_at(offset, &mut buf[..n])
            .map_err(io("read", path))?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        offset += n as u64;
    }
    Ok((len, crc))
}

fn checksum_file(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u32), StorageError> {
    checksum_prefix(fs, path, None)
}

/// A snapshot being written by the state machine into a temporary directory. Dropping it
/// unfinished removes the directory on a best-effort basis (the next open removes it in any
/// case); [`SnapshotWriter::abort`] does so and reports errors.
pub struct SnapshotWriter {
    store: SnapshotStore,
    temp: PathBuf,
    meta: SnapshotMeta,
    files: BTreeMap<String, WriterFile>,
    done: bool,
}

struct WriterFile {
    /// `None` for a file the caller wrote itself into [`SnapshotWriter::path`].
    handle: Option<Box<dyn WritableFile>>,
    size: u64,
    crc: u32,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("temp", &self.temp)
            .field("meta", &self.meta)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SnapshotWriter {
    /// The temporary directory (for state machines that write files themselves; register
    /// each with [`SnapshotWriter::add_file`]).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// What the snapshot will cover.
    #[must_use]
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Appends `data` to file `name`, creating it on first use.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        manifest::validate_name(name).map_err(StorageError::InvalidArgument)?;
        self.store.check_not_failed()?;
        let path = self.temp.join(name);
        if !self.files.contains_key(name) {
            let opened = self
                .store
                .fs()
                .open_append(&path)
                .map_err(io("create", &path));
            let handle = self.store.check_io(opened)?;
            let file = WriterFile {
                handle: Some(handle),
                size: 0,
                crc: 0,
            };
            self.files.insert(name.to_string(), file);
        }
        let file = self
            .files
            .get_mut(name)
            .ok_or_else(|| StorageError::InvalidArgument(format!("no file {name:?}")))?;
        let Some(handle) = file.handle.as_mut() else {
            return Err(StorageError::InvalidArgument(format!(
                "{name:?} was added with add_file; write it directly"
            )));
        };
        let written = handle.append(data).map_err(io("write", &path));
        self.store.check_io(written)?;
        file.size += data.len() as u64;
        file.crc = crc32c::crc32c_append(file.crc, data);
        Ok(())
    }

    /// Registers a file the caller wrote into [`SnapshotWriter::path`]; `finish` fsyncs and
    /// checksums it.
    pub fn add_file(&mut self, name: &str) -> Result<(), StorageError> {
        manifest::validate_name(name).map_err(StorageError::InvalidArgument)?;
        if self.files.contains_key(name) {
            return Err(StorageError::InvalidArgument(format!(
                "file {name:?} added twice"
            )));
        }
        let file = WriterFile {
            handle: None,
            size: 0,
            crc: 0,
        };
        self.files.insert(name.to_string(), file);
        Ok(())
    }

    /// Makes the snapshot durable and the store's newest: fsyncs every file, writes and
    /// fsyncs the manifest, fsyncs the directory, renames it into place and fsyncs the root.
    pub fn finish(mut self) -> Result<SnapshotReader, StorageError> {
        self.store.check_not_failed()?;
        let result = self.finish_inner();
        let result = self.store.check_io(result);
        if result.is_ok() {
            self.done = true;
        }
        result
    }

    fn finish_inner(&mut self) -> Result<SnapshotReader, StorageError> {
        let fs = self.store.shared.fs.clone();
        let mut entries = Vec::with_capacity(self.files.len());
        for (name, file) in &mut self.files {
            let path = self.temp.join(name);
            match file.handle.as_mut() {
                Some(handle) => handle.sync().map_err(io("fsync", &path))?,
                None => {
                    fs.sync_file(&path).map_err(io("fsync", &path))?;
                    (file.size, file.crc) = checksum_file(fs.as_ref(), &path)?;
                }
            }
            entries.push(FileEntry {
                name: name.clone(),
                size: file.size,
                checksum: file.crc,
            });
        }
        let manifest = Manifest {
            meta: self.meta.clone(),
            files: entries,
        };
        write_manifest(fs.as_ref(), &self.temp, &manifest)?;
        fs.sync_dir(&self.temp)
            .map_err(io("fsync directory", &self.temp))?;
        self.store.install(&self.temp, manifest)
    }

    /// Discards the snapshot and removes its temporary directory.
    pub fn abort(mut self) -> Result<(), StorageError> {
        self.done = true;
        let removed = self
            .store
            .fs()
            .remove_dir_all(&self.temp)
            .map_err(io("remove", &self.temp));
        self.store.check_io(removed)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: a leftover temp directory is removed at the next open anyway.
            let _ = self.store.fs().remove_dir_all(&self.temp);
        }
    }
}

/// Writes `dir/manifest` and fsyncs it (the directory is the caller's to fsync).
pub(crate) fn write_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    manifest: &Manifest,
) -> Result<(), StorageError> {
    let path = dir.join(MANIFEST_NAME);
    let bytes = manifest.encode();
    debug_assert_eq!(
        Manifest::decode(&path, &bytes).ok().as_ref(),
        Some(manifest)
    );
    let mut file = fs.open_append(&path).map_err(io("create", &path))?;
    file.append(&bytes).map_err(io("write", &path))?;
    file.sync().map_err(io("fsync", &path))
}

/// A handle on one complete snapshot: serves its files by chunk and pins it (the store does
/// not delete it while any clone of this handle lives).
#[derive(Clone)]
pub struct SnapshotReader {
    fs: Arc<dyn FileSystem>,
    snapshot: Arc<Snapshot>,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("dir", &self.snapshot.dir)
            .finish()
    }
}

impl SnapshotReader {
    /// Last included index and term, and the configuration.
    #[must_use]
    pub fn meta(&self) -> &SnapshotMeta {
        &self.snapshot.manifest.meta
    }

    /// The verified manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.snapshot.manifest
    }

    /// The snapshot's directory (for state machines loading it).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.snapshot.dir
    }

    /// Up to `len_max` bytes of file `name` from `offset` (fewer only at the end of the
    /// file; empty at or past the end). `len_max` is capped at [`SNAPSHOT_CHUNK_BYTES_MAX`].
    pub fn read_chunk(
        &self,
        name: &str,
        offset: u64,
        len_max: u32,
    ) -> Result<Vec<u8>, StorageError> {
        let entry = self.snapshot.manifest.file(name).ok_or_else(|| {
            StorageError::InvalidArgument(format!("snapshot has no file {name:?}"))
        })?;
        let len = entry
            .size
            .saturating_sub(offset)
            .min(u64::from(len_max.min(SNAPSHOT_CHUNK_BYTES_MAX)));
        let len = usize::try_from(len).unwrap_or(0);
        let mut buf = vec![0u8; len];
        if len > 0 {
            let path = self.snapshot.dir.join(name);
            let file = self.fs.open_read(&path).map_err(io("open", &path))?;
            file.read_exact_at(offset, &mut buf)
                .map_err(io("read", &path))?;
        }
        Ok(buf)
    }

    /// The encoded manifest, as sent to a receiving peer.
    #[must_use]
    pub fn manifest_bytes(&self) -> Vec<u8> {
        self.snapshot.manifest.encode()
    }
}

/// CRC32C of a byte string (exposed for tests and callers building expectations).
#[must_use]
pub fn file_checksum(data: &[u8]) -> u32 {
    checksum(data)
}
