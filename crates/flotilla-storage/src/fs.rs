//! The file layer every storage component is written against: a small [`FileSystem`]
//! trait with a real implementation ([`StdFs`]) and a simulated one ([`SimFs`]) whose
//! crashes lose exactly what was not made durable, and which can fail any write or fsync
//! on demand.
//!
//! Owns: the durability rules storage code may rely on — appended bytes are durable only
//! after `sync`, a created, renamed or removed name only after `sync_dir` of its directory.
//! Must never: buffer or reorder anything beyond what a POSIX file system may do.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file opened for appending.
pub trait WritableFile: Send {
    /// Appends `data` at the end (not yet durable).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fsync / fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Current length, including bytes not yet durable.
    fn len(&self) -> u64;
    /// True if the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file opened for reading at offsets.
pub trait ReadableFile: Send + Sync {
    /// Fills `buf` from `offset`; fails with `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The operations storage needs from a file system.
pub trait FileSystem: Send + Sync {
    /// Creates `dir` and its parents (durable once the parent directory is synced).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// True if `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Opens `path` for appending, creating it empty if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens `path` for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>>;
    /// Reads a whole (small) file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open_read(path)?;
        let len = usize::try_from(file.size()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0; len];
        file.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }
    /// Cuts `path` to `len` bytes (durable after a `sync` of an append handle or `sync_file`).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the contents of `path` durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` (durable after `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (durable after `sync_dir`).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it (durable after `sync_dir` of its parent).
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

// ----- the real file system ----------------------------------------------------------------

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

struct StdWritable {
    file: fs::File,
    len: u64,
}

impl WritableFile for StdWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }
}

struct StdReadable {
    file: Mutex<fs::File>,
}

impl ReadableFile for StdReadable {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut file = lock(&self.file);
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.file).metadata()?.len())
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(StdWritable { file, len }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        let file = fs::File::open(path)?;
        Ok(Box::new(StdReadable {
            file: Mutex::new(file),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        fs::OpenOptions::new().write(true).open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ----- the simulated file system -----------------------------------------------------------

/// Which operation an injected fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An append (the bytes are not written).
    Write,
    /// A file or directory sync (nothing becomes durable).
    Sync,
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// Bytes that survive a crash.
    durable: Vec<u8>,
    /// All bytes, durable or not.
    current: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimState {
    /// Every file by path, as the running process sees it.
    files: BTreeMap<PathBuf, SimFile>,
    /// Directories, as the running process sees them.
    dirs: std::collections::BTreeSet<PathBuf>,
    /// Which path names survive a crash: path -> the file's identity at the last sync_dir.
    durable_names: BTreeMap<PathBuf, u64>,
    durable_dirs: std::collections::BTreeSet<PathBuf>,
    /// Identity of each current path's file (renames move it).
    identity: BTreeMap<PathBuf, u64>,
    /// Contents by identity, so a rename that was not made durable can be undone.
    by_identity: BTreeMap<u64, SimFile>,
    next_identity: u64,
    /// Count of write and sync operations so far (crash points).
    operations: u64,
    /// Fail the operation with this number, of this kind (or any kind when `None`).
    fail_at: Option<(u64, Option<FaultKind>)>,
    /// After a failure, or when `stop_at` is reached, every later mutation fails.
    stopped: bool,
    stop_at: Option<u64>,
    /// Directory renames not yet made durable by a `sync_dir` of the new parent: the
    /// durable names under `from` move to `to` only then (POSIX: a directory's entries
    /// travel with it; the rename itself is durable after the parent's fsync).
    pending_dir_renames: Vec<(PathBuf, PathBuf)>,
}

/// An in-memory file system with crash semantics, for fault tests.
///
/// A crash ([`SimFs::crash`]) keeps, for every file, its durable bytes plus (optionally) a
/// prefix of the bytes appended since the last sync — a torn tail — and keeps only the names
/// made durable by `sync_dir`. Faults: the n-th write or sync can be made to fail, and
/// [`SimFs::stop_at`] freezes the disk at a numbered write/sync boundary so a test can crash
/// at every boundary in turn.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

impl SimFs {
    /// An empty file system.
    #[must_use]
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Number of write and sync operations performed so far.
    #[must_use]
    pub fn operations(&self) -> u64 {
        lock(&self.state).operations
    }

    /// Makes operation number `n` (counting from 1, writes and syncs) fail, and with it the
    /// disk: every later mutation fails too, as after a real I/O error.
    pub fn fail_at(&self, n: u64, kind: Option<FaultKind>) {
        lock(&self.state).fail_at = Some((n, kind));
    }

    /// Freezes the disk after operation number `n`: later writes and syncs report an error
    /// and change nothing (the process is about to crash).
    pub fn stop_at(&self, n: u64) {
        lock(&self.state).stop_at = Some(n);
    }

    /// Simulates a power loss. `torn` chooses, per file, how many of its non-durable bytes
    /// survive (`|unsynced_len| -> kept`); pass `|_| 0` for a clean loss.
    pub fn crash(&self, mut torn: impl FnMut(usize) -> usize) {
        let mut s = lock(&self.state);
        // Names revert to the last durable directory state.
        let names = s.durable_names.clone();
        let mut files = BTreeMap::new();
        let mut identity = BTreeMap::new();
        for (path, id) in &names {
            if let Some(file) = s.by_identity.get(id) {
                let unsynced = file.current.len().saturating_sub(file.durable.len());
                let keep = torn(unsynced).min(unsynced);
                let mut content = file.durable.clone();
                if file.current.starts_with(&file.durable) {
                    content.extend_from_slice(&file.current[file.durable.len()..][..keep]);
                }
                let survived = SimFile {
                    durable: content.clone(),
                    current: content,
                };
                files.insert(path.clone(), survived);
                identity.insert(path.clone(), *id);
            }
        }
        s.files = files;
        s.identity = identity;
        s.dirs = s.durable_dirs.clone();
        let by_identity: BTreeMap<u64, SimFile> = s
            .identity
            .iter()
            .filter_map(|(path, id)| s.files.get(path).map(|f| (*id, f.clone())))
            .collect();
        s.by_identity = by_identity;
        s.stopped = false;
        s.stop_at = None;
        s.fail_at = None;
        s.pending_dir_renames.clear();
    }

    /// Overwrites bytes of a file in place, durably (corruption tests).
    pub fn corrupt(&self, path: &Path, offset: usize, xor: u8) -> io::Result<()> {
        let mut s = lock(&self.state);
        let id = *s.identity.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let byte = file
            .current
            .get_mut(offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past end"))?;
        *byte ^= xor;
        if let Some(d) = file.durable.get_mut(offset) {
            *d ^= xor;
        }
        let copy = file.clone();
        s.by_identity.insert(id, copy);
        Ok(())
    }

    /// Length of a file as the process sees it.
    pub fn len_of(&self, path: &Path) -> io::Result<u64> {
        let s = lock(&self.state);
        s.files
            .get(path)
            .map(|f| f.current.len() as u64)
            .ok_or_else(|| not_found(path))
    }

    /// Paths of every file, sorted.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        lock(&self.state).files.keys().cloned().collect()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimState {
    /// Counts a write or sync and decides whether it fails.
    fn begin(&mut self, kind: FaultKind) -> io::Result<()> {
        if self.stopped {
            return Err(io::Error::other("simulated disk failed earlier"));
        }
        self.operations += 1;
        if let Some((n, k)) = self.fail_at {
            if self.operations == n && k.is_none_or(|k| k == kind) {
                self.stopped = true;
                return Err(io::Error::other(format!(
                    "simulated {kind:?} failure at operation {n}"
                )));
            }
        }
        if self.stop_at.is_some_and(|n| self.operations > n) {
            self.stopped = true;
            return Err(io::Error::other("simulated crash point reached"));
        }
        Ok(())
    }

    fn file_mut(&mut self, path: &Path) -> io::Result<&mut SimFile> {
        self.files.get_mut(path).ok_or_else(|| not_found(path))
    }

    fn save(&mut self, path: &Path) {
        if let (Some(id), Some(file)) = (self.identity.get(path), self.files.get(path)) {
            self.by_identity.insert(*id, file.clone());
        }
    }

    fn parent_exists(&self, path: &Path) -> bool {
        path.parent()
            .is_none_or(|p| p.as_os_str().is_empty() || self.dirs.contains(p))
    }
}

struct SimWritable {
    fs: SimFs,
    path: PathBuf,
}

impl WritableFile for SimWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.fs.state);
        s.begin(FaultKind::Write)?;
        s.file_mut(&self.path)?.current.extend_from_slice(data);
        s.save(&self.path);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = lock(&self.fs.state);
        s.begin(FaultKind::Sync)?;
        let file = s.file_mut(&self.path)?;
        file.durable = file.current.clone();
        s.save(&self.path);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.fs.len_of(&self.path).unwrap_or(0)
    }
}

struct SimReadable {
    fs: SimFs,
    path: PathBuf,
}

impl ReadableFile for SimReadable {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = lock(&self.fs.state);
        let file = s
            .files
            .get(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = file
            .current
            .get(start..end)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.fs.len_of(&self.path)
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        let mut current = PathBuf::new();
        for part in dir.components() {
            current.push(part);
            s.dirs.insert(current.clone());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = s.files.keys().map(|p| p.as_path());
        let dirs = s.dirs.iter().map(|p| p.as_path());
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        let s = lock(&self.state);
        s.files.contains_key(path) || s.dirs.contains(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut s = lock(&self.state);
        if !s.files.contains_key(path) {
            if !s.parent_exists(path) {
                return Err(not_found(path.parent().unwrap_or(path)));
            }
            s.begin(FaultKind::Write)?;
            s.next_identity += 1;
            let id = s.next_identity;
            s.files.insert(path.to_path_buf(), SimFile::default());
            s.identity.insert(path.to_path_buf(), id);
            s.by_identity.insert(id, SimFile::default());
        }
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        if !lock(&self.state).files.contains_key(path) {
            return Err(not_found(path));
        }
        Ok(Box::new(SimReadable {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Write)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let file = s.file_mut(path)?;
        file.current.truncate(len);
        s.save(path);
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Sync)?;
        let file = s.file_mut(path)?;
        file.durable = file.current.clone();
        s.save(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Write)?;
        if let Some(file) = s.files.remove(from) {
            let id = s.identity.remove(from).ok_or_else(|| not_found(from))?;
            s.files.insert(to.to_path_buf(), file);
            s.identity.insert(to.to_path_buf(), id);
            return Ok(());
        }
        if s.dirs.contains(from) {
            // Move the directory and everything under it.
            let moved: Vec<PathBuf> = s
                .dirs
                .iter()
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for d in moved {
                s.dirs.remove(&d);
                let rest = d.strip_prefix(from).map_err(|_| not_found(&d))?;
                s.dirs.insert(to.join(rest));
            }
            let files: Vec<PathBuf> = s
                .files
                .keys()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
            for p in files {
                let rest = p
                    .strip_prefix(from)
                    .map_err(|_| not_found(&p))?
                    .to_path_buf();
                if let (Some(file), Some(id)) = (s.files.remove(&p), s.identity.remove(&p)) {
                    s.files.insert(to.join(&rest), file);
                    s.identity.insert(to.join(&rest), id);
                }
            }
            s.pending_dir_renames
                .push((from.to_path_buf(), to.to_path_buf()));
            return Ok(());
        }
        Err(not_found(from))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Write)?;
        s.files.remove(path).ok_or_else(|| not_found(path))?;
        s.identity.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Write)?;
        s.files.retain(|p, _| !p.starts_with(dir));
        s.identity.retain(|p, _| !p.starts_with(dir));
        s.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.begin(FaultKind::Sync)?;
        let in_dir = |p: &Path| p.parent() == Some(dir);
        // Directory renames into `dir` become durable: durable names under the old path
        // now live under the new one.
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut s.pending_dir_renames)
            .into_iter()
            .partition(|(_, to)| in_dir(to));
        s.pending_dir_renames = pending;
        for (from, to) in done {
            let moved: Vec<(PathBuf, u64)> = s
                .durable_names
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, id)| (p.clone(), *id))
                .collect();
            for (p, id) in moved {
                s.durable_names.remove(&p);
                if let Ok(rest) = p.strip_prefix(&from) {
                    s.durable_names.insert(to.join(rest), id);
                }
            }
            let moved: Vec<PathBuf> = s
                .durable_dirs
                .iter()
                .filter(|d| d.starts_with(&from) && **d != from)
                .cloned()
                .collect();
            for d in moved {
                s.durable_dirs.remove(&d);
                if let Ok(rest) = d.strip_prefix(&from) {
                    s.durable_dirs.insert(to.join(rest));
                }
            }
        }
        // Subdirectories of `dir` that are gone (removed) take their durable names with them.
        let gone: Vec<PathBuf> = s
            .durable_dirs
            .iter()
            .filter(|d| in_dir(d) && !s.dirs.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            s.durable_names.retain(|p, _| !p.starts_with(&d));
            s.durable_dirs.retain(|x| !x.starts_with(&d));
        }
        // Names directly in `dir` (files and subdirectories) become durable as they are now.
        let stale: Vec<PathBuf> = s
            .durable_names
            .keys()
            .filter(|p| in_dir(p))
            .cloned()
            .collect();
        for p in stale {
            s.durable_names.remove(&p);
        }
        let current: Vec<(PathBuf, u64)> = s
            .identity
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable_names.extend(current);
        let dirs: Vec<PathBuf> = s.dirs.iter().filter(|d| in_dir(d)).cloned().collect();
        s.durable_dirs.retain(|d| !in_dir(d));
        s.durable_dirs.extend(dirs);
        // The directory itself, and its ancestors, are taken as durable (they were created
        // before anything was written into them).
        let mut up = Some(dir);
        while let Some(d) = up {
            if !d.as_os_str().is_empty() {
                s.durable_dirs.insert(d.to_path_buf());
            }
            up = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_and_names_are_lost_in_a_crash() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.open_append(&dir.join("a")).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        f.append(b" world").unwrap();
        let mut g = fs.open_append(&dir.join("b")).unwrap();
        g.append(b"x").unwrap();
        g.sync().unwrap(); // data durable, name not
        fs.crash(|_| 0);
        assert_eq!(fs.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")), "name was never made durable");
    }

    #[test]
    fn torn_tail_keeps_a_prefix_of_unsynced_bytes() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.open_append(&dir.join("a")).unwrap();
        f.append(b"abc").unwrap();
        f.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        f.append(b"defgh").unwrap();
        fs.crash(|unsynced| unsynced / 2);
        assert_eq!(fs.read_all(&dir.join("a")).unwrap(), b"abcde");
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.open_append(&dir.join("tmp")).unwrap();
        f.append(b"v1").unwrap();
        f.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
        fs.crash(|_| 0);
        assert!(fs.exists(&dir.join("tmp")) && !fs.exists(&dir.join("final")));
        fs.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash(|_| 0);
        assert_eq!(fs.read_all(&dir.join("final")).unwrap(), b"v1");
    }

    #[test]
    fn an_injected_failure_stops_the_disk() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.open_append(&dir.join("a")).unwrap();
        fs.fail_at(fs.operations() + 2, Some(FaultKind::Sync));
        f.append(b"a").unwrap();
        assert!(f.sync().is_err());
        assert!(f.append(b"b").is_err(), "a failed disk must stay failed");
    }

    #[test]
    fn std_fs_round_trip() {
        let dir = std::env::temp_dir().join(format!("flotilla-fs-test-{}", std::process::id()));
        let fs = StdFs;
        fs.create_dir_all(&dir).unwrap();
        let mut f = fs.open_append(&dir.join("a")).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        fs.sync_dir(&dir).unwrap();
        let r = fs.open_read(&dir.join("a")).unwrap();
        let mut buf = [0u8; 3];
        r.read_exact_at(1, &mut buf).unwrap();
        assert_eq!(&buf, b"ell");
        assert_eq!(fs.list(&dir).unwrap(), vec!["a".to_string()]);
        fs.remove_dir_all(&dir).unwrap();
    }
}
