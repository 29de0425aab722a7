//! Snapshot store: write, crash at every boundary, corruption, pinning, resumable transfer,
//! reuse of identical files, bad source input, and one smoke test on the real file system.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_raft::{Configuration, LogIndex, PeerId, SnapshotMeta, Term};
use flotilla_storage::fs::{FileSystem, SimFs, StdFs};
use flotilla_storage::snapshot::MANIFEST_NAME;
use flotilla_storage::{copy_snapshot, CopyOptions, SnapshotSource, SnapshotStore, StorageError};

const ROOT: &str = "/data/snap";

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(2),
        configuration: Configuration::new(["a:1", "b:1", "c:1"].map(PeerId::new)),
    }
}

fn open(fs: &SimFs, root: &str) -> SnapshotStore {
    SnapshotStore::open(Arc::new(fs.clone()), root).unwrap()
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

fn write(store: &SnapshotStore, index: u64, files: &[(&str, Vec<u8>)]) -> Result<(), StorageError> {
    let mut w = store.create_writer(meta(index))?;
    for (name, data) in files {
        for part in data.chunks(40) {
            w.append(name, part)?;
        }
    }
    w.finish().map(drop)
}

fn read_file(store: &SnapshotStore, name: &str) -> Vec<u8> {
    let r = store.open_reader().unwrap();
    let size = r.manifest().file(name).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        out.extend(r.read_chunk(name, out.len() as u64, 7).unwrap());
    }
    out
}

#[test]
fn write_reopen_and_read_back_in_chunks() {
    let fs = SimFs::new();
    let store = open(&fs, ROOT);
    assert!(store.open_reader().is_none());
    write(
        &store,
        10,
        &[("data", content(1, 100)), ("index", content(2, 3))],
    )
    .unwrap();
    fs.crash(|_| 0);
    let store = open(&fs, ROOT);
    assert_eq!(store.newest_meta(), Some(meta(10)));
    assert_eq!(read_file(&store, "data"), content(1, 100));
    assert_eq!(read_file(&store, "index"), content(2, 3));
    let r = store.open_reader().unwrap();
    assert!(
        r.read_chunk("data", 100, 10).unwrap().is_empty(),
        "at the end"
    );
    assert!(r.read_chunk("nope", 0, 10).is_err());
    // An older or equal index is refused.
    assert!(store.create_writer(meta(10)).is_err());
}

/// Crash at every write and fsync boundary of writing a second snapshot: after recovery
/// the store opens with the old or the new snapshot complete and valid, the new one if
/// `finish` returned Ok, and no temporary directory left.
#[test]
fn crash_at_every_boundary_leaves_old_or_new_snapshot() {
    let old = [("data", content(1, 90))];
    let new = [("data", content(3, 130)), ("extra", content(4, 50))];
    for n in 0.. {
        let fs = SimFs::new();
        let store = open(&fs, ROOT);
        write(&store, 5, &old).unwrap();
        fs.stop_at(fs.operations() + n);
        let result = write(&store, 9, &new);
        fs.crash(|unsynced| unsynced / 2);
        let store = SnapshotStore::open(Arc::new(fs.clone()), ROOT)
            .unwrap_or_else(|e| panic!("boundary {n}: open failed: {e}"));
        let index = store.newest_meta().unwrap().index.get();
        match index {
            5 => {
                assert!(result.is_err(), "boundary {n}: acknowledged snapshot lost");
                assert_eq!(read_file(&store, "data"), content(1, 90));
            }
            9 => {
                assert_eq!(read_file(&store, "data"), content(3, 130));
                assert_eq!(read_file(&store, "extra"), content(4, 50));
            }
            other => panic!("boundary {n}: snapshot {other}"),
        }
        let names = fs.list(Path::new(ROOT)).unwrap();
        assert_eq!(names.len(), 1, "boundary {n}: leftovers {names:?}");
        if result.is_ok() {
            assert!(n > 5);
            break;
        }
    }
}

#[test]
fn corruption_of_manifest_or_file_is_refused_naming_the_file() {
    let fs = SimFs::new();
    let store = open(&fs, ROOT);
    write(&store, 4, &[("data", content(1, 64))]).unwrap();
    let dir = PathBuf::from(ROOT).join(format!("snapshot-{:020}", 4));
    for name in [MANIFEST_NAME, "data"] {
        let path = dir.join(name);
        let len = fs.len_of(&path).unwrap() as usize;
        for offset in [0, len / 2, len - 1] {
            fs.corrupt(&path, offset, 0x40).unwrap();
            let err = SnapshotStore::open(Arc::new(fs.clone()), ROOT).unwrap_err();
            assert!(
                matches!(&err, StorageError::Corrupt { path: p, .. } if p == &path),
                "{name} flip at {offset}: {err}"
            );
            fs.corrupt(&path, offset, 0x40).unwrap();
        }
    }
    // A truncated file is refused too.
    fs.truncate(&dir.join("data"), 10).unwrap();
    let err = SnapshotStore::open(Arc::new(fs.clone()), ROOT).unwrap_err();
    assert!(err.to_string().contains("data"), "{err}");
}

#[test]
fn a_reader_pins_an_old_snapshot_until_dropped() {
    let fs = SimFs::new();
    let store = open(&fs, ROOT);
    write(&store, 1, &[("data", content(1, 10))]).unwrap();
    let pinned = store.open_reader().unwrap();
    write(&store, 2, &[("data", content(2, 10))]).unwrap();
    assert_eq!(store.retired_count(), 1);
    assert!(fs.exists(pinned.path()));
    assert_eq!(pinned.read_chunk("data", 0, 100).unwrap(), content(1, 10));
    let path = pinned.path().to_path_buf();
    drop(pinned);
    assert_eq!(store.collect_garbage().unwrap(), 1);
    assert!(!fs.exists(&path));
    assert_eq!(store.newest_meta().unwrap().index, LogIndex(2));
}

/// A source over a reader that counts the chunks it served and can fail or lie.
struct TestSource {
    inner: flotilla_storage::SnapshotReader,
    served: Cell<u64>,
    fail_after: Option<u64>,
    lie: Option<fn(Vec<u8>) -> Vec<u8>>,
    manifest_override: Option<Vec<u8>>,
}

impl TestSource {
    fn new(inner: flotilla_storage::SnapshotReader) -> TestSource {
        TestSource {
            inner,
            served: Cell::new(0),
            fail_after: None,
            lie: None,
            manifest_override: None,
        }
    }
}

impl SnapshotSource for TestSource {
    fn manifest(&self) -> Result<Vec<u8>, StorageError> {
        Ok(self
            .manifest_override
            .clone()
            .unwrap_or_else(|| self.inner.manifest_bytes()))
    }

    fn read_chunk(&self, name: &str, offset: u64, len_max: u32) -> Result<Vec<u8>, StorageError> {
        if self.fail_after.is_some_and(|n| self.served.get() >= n) {
            return Err(StorageError::Failed("connection reset".into()));
        }
        self.served.set(self.served.get() + 1);
        let chunk = self.inner.read_chunk(name, offset, len_max)?;
        Ok(match self.lie {
            Some(lie) => lie(chunk),
            None => chunk,
        })
    }
}

fn leader_snapshot(fs: &SimFs) -> SnapshotStore {
    let leader = open(fs, "/leader");
    write(
        &leader,
        20,
        &[("a", content(5, 100)), ("b", content(6, 64))],
    )
    .unwrap();
    leader
}

fn options() -> CopyOptions {
    CopyOptions {
        chunk_bytes: 16,
        checkpoint_bytes: 16,
        throttle: None,
    }
}

#[test]
fn transfer_resumes_after_a_broken_source_without_refetching() {
    let fs = SimFs::new();
    let leader = leader_snapshot(&fs);
    // 100 bytes = 7 chunks of 16, 64 bytes = 4 chunks.
    let total_chunks = 7 + 4;
    let follower = open(&fs, ROOT);
    let mut source = TestSource::new(leader.open_reader().unwrap());
    source.fail_after = Some(5);
    assert!(copy_snapshot(&source, &follower, &options()).is_err());
    assert!(follower.newest_meta().is_none(), "nothing installed");
    // The follower restarts too: progress is on disk.
    fs.crash(|_| 0);
    let follower = open(&fs, ROOT);
    let leader = open(&fs, "/leader");
    let source = TestSource::new(leader.open_reader().unwrap());
    source.served.set(5);
    let (reader, report) = copy_snapshot(&source, &follower, &options()).unwrap();
    assert_eq!(
        source.served.get(),
        total_chunks,
        "no verified chunk fetched twice"
    );
    assert_eq!(report.bytes_resumed, 5 * 16);
    assert_eq!(reader.meta(), &meta(20));
    assert_eq!(read_file(&follower, "a"), content(5, 100));
    assert_eq!(read_file(&follower, "b"), content(6, 64));
    fs.crash(|_| 0);
    assert_eq!(open(&fs, ROOT).newest_meta(), Some(meta(20)));
}

/// A local file with the same name, size and CRC32C as the leader's is fetched all the
/// same: two files that each end with the CRC32C of what precedes it share one whole-file
/// CRC32C, whatever they hold (the KV store's range exports are such files), so a checksum
/// cannot prove the local one identical. Reusing it installed another range's file.
#[test]
fn a_local_file_with_the_same_size_and_checksum_is_fetched_anyway() {
    let sealed = |fill: u8| {
        let mut data = vec![fill; 60];
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_le_bytes());
        data
    };
    let (theirs, ours) = (sealed(1), sealed(2));
    assert_eq!(
        crc32c::crc32c(&theirs),
        crc32c::crc32c(&ours),
        "the premise"
    );
    assert_ne!(theirs, ours);
    let fs = SimFs::new();
    let leader = open(&fs, "/leader");
    write(&leader, 20, &[("a", theirs.clone())]).unwrap();
    let follower = open(&fs, ROOT);
    write(&follower, 3, &[("a", ours)]).unwrap();
    let source = TestSource::new(leader.open_reader().unwrap());
    let (_, report) = copy_snapshot(&source, &follower, &CopyOptions::default()).unwrap();
    assert_eq!(report.bytes_fetched, theirs.len() as u64);
    assert_eq!(read_file(&follower, "a"), theirs);
}

fn assert_nothing_installed(fs: &SimFs, follower: &SnapshotStore) {
    assert!(follower.newest_meta().is_none());
    // The store's directory is made with its first snapshot: absent or empty both mean
    // nothing was left behind.
    let names = fs.list(Path::new(ROOT)).unwrap_or_default();
    assert!(names.is_empty(), "left behind: {names:?}");
}

#[test]
fn bad_source_input_is_refused_and_leaves_nothing() {
    let fs = SimFs::new();
    let leader = leader_snapshot(&fs);
    let follower = open(&fs, ROOT);
    let reader = leader.open_reader().unwrap();

    // A manifest that does not decode.
    let mut source = TestSource::new(reader.clone());
    let mut garbage = reader.manifest_bytes();
    garbage[12] ^= 1;
    source.manifest_override = Some(garbage);
    let err = copy_snapshot(&source, &follower, &options()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert_nothing_installed(&fs, &follower);

    // A manifest naming a file outside the snapshot directory.
    let mut manifest = reader.manifest().clone();
    manifest.files[0].name = "../escape".into();
    let mut source = TestSource::new(reader.clone());
    source.manifest_override = Some(manifest.encode()); // valid checksum, bad name
    assert!(copy_snapshot(&source, &follower, &options()).is_err());
    assert_nothing_installed(&fs, &follower);

    // Chunks longer than asked, empty chunks, flipped bytes.
    let lies: [fn(Vec<u8>) -> Vec<u8>; 3] = [
        |mut c| {
            c.push(0);
            c
        },
        |_| Vec::new(),
        |mut c| {
            c[0] ^= 1;
            c
        },
    ];
    for lie in lies {
        let mut source = TestSource::new(reader.clone());
        source.lie = Some(lie);
        let err = copy_snapshot(&source, &follower, &options()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("download-"),
            "names the file: {err}"
        );
        assert_nothing_installed(&fs, &follower);
    }
}

#[test]
fn std_fs_smoke() {
    let root = std::env::temp_dir().join(format!("flotilla-snapshot-test-{}", std::process::id()));
    let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
    let store = SnapshotStore::open(fs.clone(), &root).unwrap();
    write(&store, 7, &[("data", content(1, 300_000))]).unwrap();
    let store =
        SnapshotStore::open(fs.clone(), root.join("..").join(root.file_name().unwrap())).unwrap();
    assert_eq!(store.newest_meta(), Some(meta(7)));
    let other = SnapshotStore::open(fs.clone(), root.join("copy")).unwrap();
    let (_, report) = copy_snapshot(
        &store.open_reader().unwrap(),
        &other,
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(report.chunks_fetched, 3, "300 000 bytes in 128 KiB chunks");
    fs.remove_dir_all(&root).unwrap();
}
