//! The snapshot fetch service between processes: a follower that must install its leader's
//! snapshot pulls it, manifest first and then file by file in chunks, over the
//! [`crate::Transport`] (SOFAJRaft's `FileService` + `CopySession`).
//!
//! Two halves:
//!
//! - **Serving** ([`SnapshotService`], reached through a manager's [`crate::Inbox`]): answers
//!   a [`SnapshotRequest`] for `(group, index, term)` from the group's snapshot store. The
//!   reader it serves from is kept (pinned) between requests, so a snapshot superseded
//!   mid-transfer is not deleted under a receiver that is still copying it.
//! - **Receiving** (`crate::install`, `run_install`): runs `flotilla_storage::copy_snapshot`
//!   (resumable, checksummed, throttled) on a blocking-pool thread, off the manager's round,
//!   through a [`flotilla_storage::SnapshotSource`] that turns every chunk into one
//!   transport request of the format below, under one overall deadline and a cancel flag
//!   (a newer install supersedes it). The outcome goes back to the round, which loads the
//!   state machine, resets the group's log and tells the core.
//!
//! Owns: the request format and the rule that only the exact snapshot asked for is served.
//! Must never: serve a snapshot other than the `(index, term)` requested, touch the shared
//! log or a state machine (the round does), block the round or an async worker, or run past
//! its deadline by more than one chunk's timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_raft::{LogIndex, PeerId, SnapshotMeta, Term};
use flotilla_storage::{GroupId, SnapshotReader, SnapshotStore};

/// A pinned reader unused for this long is released (the transfer was abandoned).
const SERVED_IDLE_MAX: Duration = Duration::from_secs(600);

/// Which part of a snapshot a fetch asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPart {
    /// The encoded manifest (meta, then every file's name, size and checksum).
    Manifest,
    /// Up to `len_max` bytes of file `name` from `offset`.
    Chunk {
        /// File name, as listed in the manifest.
        name: String,
        /// Byte offset in the file.
        offset: u64,
        /// Most bytes wanted (the server may send fewer only at the end of the file).
        len_max: u32,
    },
}

/// One request of a snapshot transfer: a part of `group`'s snapshot at `(index, term)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The peer asked (the serving process's peer id): another process refuses.
    pub to: PeerId,
    /// The cluster of both (0: none): a process of another cluster refuses.
    pub cluster: u64,
    /// The group.
    pub group: GroupId,
    /// Last index the snapshot covers.
    pub index: LogIndex,
    /// Term of that index.
    pub term: Term,
    /// What is wanted.
    pub part: SnapshotPart,
}

/// The answer a transport hands back for one [`SnapshotRequest`]: the bytes, or why not.
pub type SnapshotFetch = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

#[derive(Default)]
struct Served {
    /// Every group's snapshot store on this process.
    stores: BTreeMap<GroupId, SnapshotStore>,
    /// Per group: the reader being served and when it was last used.
    readers: BTreeMap<GroupId, (SnapshotReader, Instant)>,
}

/// Serves this process's snapshots to peers that install them. Cheap to clone.
#[derive(Clone, Default)]
pub struct SnapshotService {
    served: Arc<Mutex<Served>>,
    /// Checked against every request's receiver (`None`: a bare service in tests).
    identity: Option<Arc<crate::identity::Identity>>,
}

impl std::fmt::Debug for SnapshotService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let served = self.lock();
        f.debug_struct("SnapshotService")
            .field("groups", &served.stores.keys().collect::<Vec<_>>())
            .field("pinned", &served.readers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SnapshotService {
    /// A service that refuses requests naming another peer id or cluster than `identity`.
    pub(crate) fn with_identity(identity: Arc<crate::identity::Identity>) -> SnapshotService {
        SnapshotService {
            served: Arc::default(),
            identity: Some(identity),
        }
    }

    // Short critical sections, no await inside: a std mutex is right.
    fn lock(&self) -> MutexGuard<'_, Served> {
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn register(&self, group: GroupId, store: SnapshotStore) {
        self.lock().stores.insert(group, store);
    }

    pub(crate) fn unregister(&self, group: GroupId) {
        self.lock().stores.remove(&group);
    }

    /// Answers one request. Does file I/O: call it from a blocking context (a transport
    /// server runs it on tokio's blocking pool), never on an async worker.
    pub fn serve(&self, request: &SnapshotRequest) -> Result<Bytes, String> {
        if let Some(identity) = &self.identity {
            identity
                .check(
                    request.to.as_str(),
                    request.cluster,
                    "snapshot fetch",
                    &format!("group {}", request.group),
                )
                .map_err(|refused| identity.describe(&refused))?;
        }
        let reader = self.reader_for(request)?;
        match &request.part {
            SnapshotPart::Manifest => Ok(Bytes::from(reader.manifest_bytes())),
            SnapshotPart::Chunk {
                name,
                offset,
                len_max,
            } => reader
                .read_chunk(name, *offset, *len_max)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
        }
    }

    /// The reader of exactly the snapshot asked for: the pinned one, or the newest if it
    /// is that one (then pinned in its place).
    fn reader_for(&self, request: &SnapshotRequest) -> Result<SnapshotReader, String> {
        let now = Instant::now();
        let mut served = self.lock();
        served
            .readers
            .retain(|_, (_, used)| now.duration_since(*used) < SERVED_IDLE_MAX);
        let wanted = |meta: &SnapshotMeta| meta.index == request.index && meta.term == request.term;
        if let Some((reader, used)) = served.readers.get_mut(&request.group) {
            if wanted(reader.meta()) {
                *used = now;
                return Ok(reader.clone());
            }
        }
        let store = served
            .stores
            .get(&request.group)
            .ok_or_else(|| format!("group {} is not hosted here", request.group))?;
        let reader = store
            .open_reader()
            .filter(|r| wanted(r.meta()))
            .ok_or_else(|| {
                format!(
                    "group {} has no snapshot at index {} term {}",
                    request.group, request.index, request.term
                )
            })?;
        served.readers.insert(request.group, (reader.clone(), now));
        Ok(reader)
    }
}
