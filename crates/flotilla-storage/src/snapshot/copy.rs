//! The receiving side of a snapshot transfer: pulls a remote snapshot's files chunk by chunk
//! from a [`SnapshotSource`], verifies each against the manifest, and installs the result
//! through the same commit point as a local writer.
//!
//! Owns: resumption and validation of what a source sends. Progress lives in
//! `download-<index>-<term>/` next to the snapshots: the received manifest, the files as far
//! as they got, and `.progress`, an append-only log of checkpoints (file number, bytes made
//! durable, CRC32C of those bytes), each record CRC'd and written only after the file's
//! bytes were fsynced. A later copy of the same snapshot (same index, term and manifest
//! bytes) re-reads and verifies each checkpointed prefix, then asks the source only for what
//! follows (SOFAJRaft restarts from zero).
//!
//! Every file is fetched, even one the local newest snapshot holds with the same name, size
//! and checksum: a CRC32C cannot tell such files apart when they end with their own CRC32C
//! (every record of the KV store's range export does), since the CRC of any data followed
//! by its CRC is one constant. Reusing by checksum installed another range's file into a
//! region's snapshot (found by flotilla-chaos: two empty lock-record files of the same size,
//! one for the range before a split, one for after).
//!
//! Must never: install a file whose size or checksum differs from the manifest, write
//! outside the download directory (names are validated in [`super::manifest`]), allocate
//! what a source claims without bounds, or leave anything under a `snapshot-` name unless
//! the whole snapshot verified. Bad input from the source removes the download directory; a
//! source that merely fails (connection lost) keeps it for the next attempt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BufMut;
use flotilla_raft::SnapshotMeta;

use super::manifest::{Manifest, MANIFEST_BYTES_MAX, MANIFEST_NAME};
use super::throttle::Throttle;
use super::{
    checksum_prefix, io, write_manifest, SnapshotReader, SnapshotStore,
    SNAPSHOT_CHUNK_BYTES_DEFAULT, SNAPSHOT_CHUNK_BYTES_MAX,
};
use crate::codec::{checksum, Reader};
use crate::error::StorageError;
use crate::fs::{FileSystem, WritableFile};

/// Name of the checkpoint log inside a download directory.
const PROGRESS_NAME: &str = ".progress";
const PROGRESS_RECORD_BYTES: usize = 20;
/// Default bytes between checkpoints of a file being received.
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 1024 * 1024;

/// Where a snapshot is copied from: the local [`SnapshotReader`] in tests, the network in
/// the runtime. Everything it returns is untrusted.
pub trait SnapshotSource {
    /// The encoded manifest ([`Manifest::encode`]).
    fn manifest(&self) -> Result<Vec<u8>, StorageError>;
    /// Up to `len_max` bytes of file `name` from `offset`.
    fn read_chunk(&self, name: &str, offset: u64, len_max: u32) -> Result<Vec<u8>, StorageError>;
}

impl SnapshotSource for SnapshotReader {
    fn manifest(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self.manifest_bytes())
    }

    fn read_chunk(&self, name: &str, offset: u64, len_max: u32) -> Result<Vec<u8>, StorageError> {
        SnapshotReader::read_chunk(self, name, offset, len_max)
    }
}

/// How a copy runs.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Bytes asked for per chunk (capped at [`SNAPSHOT_CHUNK_BYTES_MAX`]).
    pub chunk_bytes: u32,
    /// Bytes received between checkpoints (a resume re-fetches at most this much per file).
    pub checkpoint_bytes: u64,
    /// Rate limit shared with other transfers, if any.
    pub throttle: Option<Arc<Throttle>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
            checkpoint_bytes: CHECKPOINT_BYTES_DEFAULT,
            throttle: None,
        }
    }
}

/// What a successful copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Chunks asked of the source.
    pub chunks_fetched: u64,
    /// Bytes received from the source.
    pub bytes_fetched: u64,
    /// Bytes kept from an earlier, interrupted copy (verified, not fetched again).
    pub bytes_resumed: u64,
}

/// Copies the snapshot `source` offers into `store` and makes it the newest. On a source
/// failure the progress is kept and the same call later resumes; on bad source input the
/// download is discarded and the error names the file.
pub fn copy_snapshot(
    source: &dyn SnapshotSource,
    store: &SnapshotStore,
    options: &CopyOptions,
) -> Result<(SnapshotReader, CopyReport), StorageError> {
    store.check_not_failed()?;
    let manifest_bytes = source.manifest()?;
    let manifest_path = Path::new("<source>").join(MANIFEST_NAME);
    if manifest_bytes.len() > MANIFEST_BYTES_MAX {
        return Err(StorageError::Corrupt {
            path: manifest_path,
            offset: 0,
            reason: format!("manifest of {} bytes", manifest_bytes.len()),
        });
    }
    let manifest = Manifest::decode(&manifest_path, &manifest_bytes)?;
    if let Some(newest) = store.newest_meta() {
        if newest.index >= manifest.meta.index {
            return Err(StorageError::InvalidArgument(format!(
                "have a snapshot at index {}, offered one at index {}",
                newest.index, manifest.meta.index
            )));
        }
    }
    let mut copy = Copy {
        source,
        store,
        dir: store.download_dir(&manifest.meta),
        manifest,
        options,
        report: CopyReport::default(),
    };
    let result = copy.run(&manifest_bytes);
    match result {
        Ok(reader) => Ok((reader, copy.report)),
        Err(CopyError::Source(e)) => Err(e),
        Err(CopyError::Local(e)) => store.check_io(Err(e)),
        Err(CopyError::BadInput(e)) => {
            // Nothing of this source's snapshot may survive: remove the download.
            let removed = store
                .fs()
                .remove_dir_all(&copy.dir)
                .map_err(io("remove", &copy.dir))
                .and_then(|()| {
                    store
                        .fs()
                        .sync_dir(store.root())
                        .map_err(io("fsync directory", store.root()))
                });
            store.check_io(removed)?;
            Err(e)
        }
    }
}

/// Why a copy stopped, deciding what happens to the download directory.
enum CopyError {
    /// The source failed to answer: keep progress.
    Source(StorageError),
    /// The source answered wrongly: discard the download.
    BadInput(StorageError),
    /// The local disk failed: the store is failed.
    Local(StorageError),
}

fn local(e: StorageError) -> CopyError {
    CopyError::Local(e)
}

struct Copy<'a> {
    source: &'a dyn SnapshotSource,
    store: &'a SnapshotStore,
    dir: PathBuf,
    manifest: Manifest,
    options: &'a CopyOptions,
    report: CopyReport,
}

/// A file being received.
struct Receiving {
    index: u32,
    path: PathBuf,
    handle: Box<dyn WritableFile>,
    len: u64,
    crc: u32,
}

impl Copy<'_> {
    fn fs(&self) -> &dyn FileSystem {
        self.store.fs()
    }

    fn run(&mut self, manifest_bytes: &[u8]) -> Result<SnapshotReader, CopyError> {
        let checkpoints = self.prepare(manifest_bytes).map_err(local)?;
        let mut progress = self
            .fs()
            .open_append(&self.dir.join(PROGRESS_NAME))
            .map_err(io("open", &self.dir.join(PROGRESS_NAME)))
            .map_err(local)?;
        let files = self.manifest.files.clone();
        for (index, entry) in files.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| {
                CopyError::BadInput(StorageError::InvalidArgument("too many files".into()))
            })?;
            let mut file = self.resume_file(index, &entry.name, checkpoints.get(&index))?;
            self.report.bytes_resumed += file.len;
            self.fetch(&mut file, entry.size, progress.as_mut())?;
            if file.len != entry.size || file.crc != entry.checksum {
                return Err(CopyError::BadInput(StorageError::Corrupt {
                    path: file.path.clone(),
                    offset: 0,
                    reason: format!(
                        "received {} bytes with checksum {:#010x}; manifest says {} bytes, {:#010x}",
                        file.len, file.crc, entry.size, entry.checksum
                    ),
                }));
            }
        }
        drop(progress);
        self.commit().map_err(local)
    }

    /// Creates the download directory, or validates an existing one for this manifest.
    /// Returns the last checkpoint of each file.
    fn prepare(
        &mut self,
        manifest_bytes: &[u8],
    ) -> Result<BTreeMap<u32, (u64, u32)>, StorageError> {
        let fs = self.store.shared.fs.clone();
        let root = self.store.root().to_path_buf();
        self.store.ensure_root()?;
        // A newer install cancels an older one: drop any other download.
        let others = self.store.other_downloads(&self.dir)?;
        for other in &others {
            fs.remove_dir_all(other).map_err(io("remove", other))?;
        }
        let manifest_path = self.dir.join(MANIFEST_NAME);
        if fs.exists(&self.dir) {
            let same = fs
                .read_all(&manifest_path)
                .is_ok_and(|stored| stored == manifest_bytes);
            if same {
                if !others.is_empty() {
                    fs.sync_dir(&root).map_err(io("fsync directory", &root))?;
                }
                return Ok(read_checkpoints(fs.as_ref(), &self.dir, &self.manifest));
            }
            fs.remove_dir_all(&self.dir)
                .map_err(io("remove", &self.dir))?;
        }
        fs.create_dir_all(&self.dir)
            .map_err(io("create directory", &self.dir))?;
        write_manifest(fs.as_ref(), &self.dir, &self.manifest)?;
        let progress = self.dir.join(PROGRESS_NAME);
        let mut file = fs.open_append(&progress).map_err(io("create", &progress))?;
        file.sync().map_err(io("fsync", &progress))?;
        fs.sync_dir(&self.dir)
            .map_err(io("fsync directory", &self.dir))?;
        fs.sync_dir(&root).map_err(io("fsync directory", &root))?;
        Ok(BTreeMap::new())
    }

    /// Opens file `index` positioned after its last verified checkpoint (or empty).
    fn resume_file(
        &self,
        index: u32,
        name: &str,
        checkpoint: Option<&(u64, u32)>,
    ) -> Result<Receiving, CopyError> {
        let fs = self.fs();
        let path = self.dir.join(name);
        let (mut len, mut crc) = (0, 0);
        if let Some(&(want_len, want_crc)) = checkpoint {
            // Verify what is there: a mismatch (local damage) restarts the file.
            if let Ok((l, c)) = checksum_prefix(fs, &path, Some(want_len)) {
                if c == want_crc {
                    (len, crc) = (l, c);
                }
            }
        }
        let existed = fs.exists(&path);
        if existed {
            let size = fs
                .open_read(&path)
                .and_then(|f| f.size())
                .map_err(io("stat", &path))
                .map_err(local)?;
            if size != len {
                // Bytes after the checkpoint were never verified: cut them.
                fs.truncate(&path, len)
                    .and_then(|()| fs.sync_file(&path))
                    .map_err(io("truncate", &path))
                    .map_err(local)?;
            }
        }
        let handle = fs
            .open_append(&path)
            .map_err(io("create", &path))
            .map_err(local)?;
        if !existed {
            // The name must survive a crash for its checkpoints to be of use.
            fs.sync_dir(&self.dir)
                .map_err(io("fsync directory", &self.dir))
                .map_err(local)?;
        }
        Ok(Receiving {
            index,
            path,
            handle,
            len,
            crc,
        })
    }

    /// Fetches the rest of `file` from the source, checkpointing as it goes.
    fn fetch(
        &mut self,
        file: &mut Receiving,
        size: u64,
        progress: &mut dyn WritableFile,
    ) -> Result<(), CopyError> {
        let chunk_bytes = self.options.chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX);
        let checkpoint_bytes = self.options.checkpoint_bytes.max(1);
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut since_checkpoint = 0u64;
        while file.len < size {
            let want =
                u32::try_from((size - file.len).min(u64::from(chunk_bytes))).unwrap_or(chunk_bytes);
            if let Some(throttle) = &self.options.throttle {
                throttle.acquire(u64::from(want));
            }
            self.report.chunks_fetched += 1;
            let chunk = match self.source.read_chunk(&name, file.len, want) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Keep what arrived so a later attempt resumes after it.
                    if since_checkpoint > 0 {
                        checkpoint(file, progress).map_err(local)?;
                    }
                    return Err(CopyError::Source(e));
                }
            };
            if chunk.is_empty() || chunk.len() > want as usize {
                return Err(CopyError::BadInput(StorageError::Corrupt {
                    path: file.path.clone(),
                    offset: file.len,
                    reason: format!(
                        "source sent {} bytes for a chunk of at most {want}",
                        chunk.len()
                    ),
                }));
            }
            file.handle
                .append(&chunk)
                .map_err(io("write", &file.path))
                .map_err(local)?;
            file.len += chunk.len() as u64;
            file.crc = crc32c::crc32c_append(file.crc, &chunk);
            self.report.bytes_fetched += chunk.len() as u64;
            since_checkpoint += chunk.len() as u64;
            if since_checkpoint >= checkpoint_bytes {
                checkpoint(file, progress).map_err(local)?;
                since_checkpoint = 0;
            }
        }
        checkpoint(file, progress).map_err(local)
    }

    /// Every file verified: drop the progress log, fsync the directory, install.
    fn commit(&mut self) -> Result<SnapshotReader, StorageError> {
        let fs = self.store.shared.fs.clone();
        let progress = self.dir.join(PROGRESS_NAME);
        fs.remove_file(&progress).map_err(io("remove", &progress))?;
        fs.sync_dir(&self.dir)
            .map_err(io("fsync directory", &self.dir))?;
        self.store.install(&self.dir, self.manifest.clone())
    }
}

/// Makes `file`'s bytes durable, then records how far it got.
fn checkpoint(file: &mut Receiving, progress: &mut dyn WritableFile) -> Result<(), StorageError> {
    file.handle.sync().map_err(io("fsync", &file.path))?;
    let mut record = Vec::with_capacity(PROGRESS_RECORD_BYTES);
    record.put_u32_le(file.index);
    record.put_u64_le(file.len);
    record.put_u32_le(file.crc);
    let crc = checksum(&record);
    record.put_u32_le(crc);
    progress
        .append(&record)
        .and_then(|()| progress.sync())
        .map_err(|e| StorageError::io("write progress", &file.path, e))
}

/// The last valid checkpoint of each file. The log is only an optimisation, so it is read
/// up to its first bad record (a torn tail or damage): anything after is re-fetched, and
/// every checkpoint used is verified against the file's bytes anyway.
fn read_checkpoints(
    fs: &dyn FileSystem,
    dir: &Path,
    manifest: &Manifest,
) -> BTreeMap<u32, (u64, u32)> {
    let mut out = BTreeMap::new();
    let Ok(bytes) = fs.read_all(&dir.join(PROGRESS_NAME)) else {
        return out;
    };
    for record in bytes.chunks_exact(PROGRESS_RECORD_BYTES) {
        let (body, tail) = record.split_at(PROGRESS_RECORD_BYTES - 4);
        let mut r = Reader::new(tail);
        if r.u32().ok() != Some(checksum(body)) {
            break;
        }
        let mut r = Reader::new(body);
        let (Ok(index), Ok(len), Ok(crc)) = (r.u32(), r.u64(), r.u32()) else {
            break;
        };
        let fits = manifest
            .files
            .get(index as usize)
            .is_some_and(|f| len <= f.size);
        if !fits {
            break;
        }
        out.insert(index, (len, crc));
    }
    out
}

/// The metadata a copy would install, without copying (for callers deciding whether to).
pub fn source_meta(source: &dyn SnapshotSource) -> Result<SnapshotMeta, StorageError> {
    let bytes = source.manifest()?;
    Ok(Manifest::decode(&Path::new("<source>").join(MANIFEST_NAME), &bytes)?.meta)
}
