//! Installing a leader's snapshot on a follower: the copy, which runs off the round on a
//! blocking-pool thread, and the round's tracking of the copies running ([`Installs`]).
//!
//! Snapshot install (a `Ready::snapshot`): the copy from the leader runs as a blocking task
//! off the round ([`run_install`], through [`crate::snapshot`]'s fetch protocol), one per
//! group at a time; a newer request cancels the running copy and starts when it ends.
//! While it runs the core answers AppendEntries with busy. At the start of a later round
//! the outcome is taken ([`crate::round`]): the state machine loads the snapshot, the
//! group's log is reset to it (its own write + fsync, before the core hears of it), then
//! `on_snapshot_installed`; on failure `on_snapshot_install_failed`.
//!
//! The copy runs `flotilla_storage::copy_snapshot` (resumable, checksummed, throttled)
//! through a [`flotilla_storage::SnapshotSource`] that turns every chunk into one transport
//! request, under one overall deadline and a cancel flag (a newer install supersedes it).
//!
//! Owns: at most one copy per group, the newer request waiting behind it, and handing every
//! finished copy back to the round exactly once. Must never: run a copy on the round, touch
//! the shared log or a state machine (the round does), or run past its deadline by more
//! than one chunk's timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_raft::{PeerId, SnapshotMeta};
use flotilla_storage::{
    copy_snapshot, CopyOptions, GroupId, SnapshotReader, SnapshotSource, SnapshotStore,
    StorageError, Throttle,
};

use crate::snapshot::{SnapshotPart, SnapshotRequest};
use crate::transport::Transport;
use crate::wake::RoundWake;

/// A snapshot copy running for one group.
struct Install {
    meta: SnapshotMeta,
    cancel: Arc<AtomicBool>,
    /// A newer request that starts once this copy ends.
    next: Option<(SnapshotMeta, PeerId)>,
}

/// The snapshot copies running, one per group, and the finished ones waiting for the round
/// (see the module documentation). Lives on the round thread; the copies report through a
/// shared queue and wake the round.
pub(crate) struct Installs {
    /// Snapshot copies running, one per group.
    running: BTreeMap<GroupId, Install>,
    /// Finished snapshot copies for the round to take; at most one per running copy.
    finished: Arc<Mutex<Vec<InstallDone>>>,
    /// Woken when a copy finished.
    wake: Arc<RoundWake>,
    transport: Arc<dyn Transport>,
    /// Where copies are spawned (the round runs on its own thread).
    runtime: tokio::runtime::Handle,
    options: InstallOptions,
}

impl Installs {
    /// No copy running yet; copies will fetch through `transport`, on `runtime`'s blocking
    /// pool, and wake the round through `wake` when they end.
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        runtime: tokio::runtime::Handle,
        wake: Arc<RoundWake>,
        options: InstallOptions,
    ) -> Installs {
        Installs {
            running: BTreeMap::new(),
            finished: Arc::new(Mutex::new(Vec::new())),
            wake,
            transport,
            runtime,
            options,
        }
    }

    /// True while a copy runs for `id` (its outcome not yet taken).
    pub(crate) fn is_running(&self, id: GroupId) -> bool {
        self.running.contains_key(&id)
    }

    /// Copies running.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    /// If a copy runs for `id`, the request is handled: a newer snapshot cancels the running
    /// copy and waits for its end (the last such request wins); an older one is ignored.
    /// False if no copy runs for `id`.
    pub(crate) fn supersede(&mut self, id: GroupId, meta: &SnapshotMeta, source: &PeerId) -> bool {
        let Some(install) = self.running.get_mut(&id) else {
            return false;
        };
        if install.meta.index < meta.index {
            install.cancel.store(true, Ordering::SeqCst);
            install.next = Some((meta.clone(), source.clone()));
        }
        true
    }

    /// Starts copying `meta` from `source` into `store` (none may run for `id`).
    pub(crate) fn start(
        &mut self,
        id: GroupId,
        meta: SnapshotMeta,
        source: PeerId,
        cluster: u64,
        store: SnapshotStore,
    ) {
        let cancel = Arc::new(AtomicBool::new(false));
        let job = InstallJob {
            transport: self.transport.clone(),
            runtime: self.runtime.clone(),
            peer: source,
            cluster,
            group: id,
            meta: meta.clone(),
            store,
            options: self.options.clone(),
            cancel: cancel.clone(),
        };
        tracing::info!(group = id, index = %meta.index, "installing a snapshot from the leader");
        self.running.insert(
            id,
            Install {
                meta,
                cancel,
                next: None,
            },
        );
        let (finished, wake) = (self.finished.clone(), self.wake.clone());
        // The task's handle is not kept: it always reports through `finished`, and a
        // cancelled or abandoned copy ends at its next chunk.
        drop(self.runtime.spawn_blocking(move || {
            let done = run_install(job);
            finished
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(done);
            wake.notify_one();
        }));
    }

    /// The copies that ended since the last call, for the round to take.
    pub(crate) fn take_finished(&mut self) -> Vec<InstallDone> {
        let mut finished = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *finished)
    }

    /// The copy of `id` ended and its outcome was taken: forgets it, and hands back the
    /// newer request that waited for it, if any.
    pub(crate) fn finished(&mut self, id: GroupId) -> Option<(SnapshotMeta, PeerId)> {
        self.running.remove(&id).and_then(|install| install.next)
    }

    /// Asks every running copy to stop (the manager is stopping).
    pub(crate) fn cancel_all(&self) {
        for install in self.running.values() {
            install.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// How a receiving copy runs (from the manager's options).
#[derive(Clone)]
pub(crate) struct InstallOptions {
    pub(crate) chunk_bytes: u32,
    pub(crate) deadline: Duration,
    pub(crate) throttle: Option<Arc<Throttle>>,
}

/// A snapshot on another process, read through the transport.
struct RemoteSource {
    transport: Arc<dyn Transport>,
    runtime: tokio::runtime::Handle,
    peer: PeerId,
    cluster: u64,
    group: GroupId,
    meta: SnapshotMeta,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
}

impl RemoteSource {
    fn fetch(&self, part: SnapshotPart) -> Result<Vec<u8>, StorageError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(self.error("superseded by a newer install or stopped".into()));
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(self.error("install deadline passed".into()));
        }
        let request = SnapshotRequest {
            to: self.peer.clone(),
            cluster: self.cluster,
            group: self.group,
            index: self.meta.index,
            term: self.meta.term,
            part,
        };
        let fetch = self.transport.fetch_snapshot(&self.peer, request);
        // A blocking-pool thread may wait on a future; the timeout keeps the deadline.
        match self
            .runtime
            .block_on(async { tokio::time::timeout(remaining, fetch).await })
        {
            Ok(Ok(bytes)) => Ok(bytes.to_vec()),
            Ok(Err(why)) => Err(self.error(why)),
            Err(_) => Err(self.error("install deadline passed".into())),
        }
    }

    /// A failure of the source (not bad input): `copy_snapshot` keeps its progress.
    fn error(&self, why: String) -> StorageError {
        StorageError::Io {
            op: "fetch snapshot",
            path: PathBuf::from(self.peer.as_str()),
            source: std::io::Error::other(why),
        }
    }
}

impl SnapshotSource for RemoteSource {
    fn manifest(&self) -> Result<Vec<u8>, StorageError> {
        self.fetch(SnapshotPart::Manifest)
    }

    fn read_chunk(&self, name: &str, offset: u64, len_max: u32) -> Result<Vec<u8>, StorageError> {
        self.fetch(SnapshotPart::Chunk {
            name: name.to_string(),
            offset,
            len_max,
        })
    }
}

/// What one install handed back to the round.
pub(crate) struct InstallDone {
    pub(crate) group: GroupId,
    pub(crate) meta: SnapshotMeta,
    pub(crate) result: Result<SnapshotReader, String>,
    /// Bytes fetched from the leader by a copy that completed (a resumed copy counts only
    /// what it fetched again; 0 when the copy failed).
    pub(crate) fetched_bytes: u64,
}

/// One receiving transfer, as the round starts it.
pub(crate) struct InstallJob {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) peer: PeerId,
    pub(crate) cluster: u64,
    pub(crate) group: GroupId,
    pub(crate) meta: SnapshotMeta,
    pub(crate) store: SnapshotStore,
    pub(crate) options: InstallOptions,
    pub(crate) cancel: Arc<AtomicBool>,
}

/// Copies the snapshot into the group's store (blocking: run it on the blocking pool).
/// The result is the new newest snapshot, exactly the one asked for.
pub(crate) fn run_install(job: InstallJob) -> InstallDone {
    let InstallJob {
        transport,
        runtime,
        peer,
        cluster,
        group,
        meta,
        store,
        options,
        cancel,
    } = job;
    let source = RemoteSource {
        transport,
        runtime,
        peer: peer.clone(),
        cluster,
        group,
        meta: meta.clone(),
        deadline: Instant::now() + options.deadline,
        cancel,
    };
    let copy = CopyOptions {
        chunk_bytes: options.chunk_bytes,
        throttle: options.throttle,
        ..CopyOptions::default()
    };
    let mut fetched_bytes = 0;
    let result = match copy_snapshot(&source, &store, &copy) {
        Ok((reader, report)) if reader.meta() == &meta => {
            tracing::info!(group, from = %peer, index = %meta.index, ?report, "snapshot copied");
            fetched_bytes = report.bytes_fetched;
            Ok(reader)
        }
        Ok((reader, report)) => {
            fetched_bytes = report.bytes_fetched;
            Err(format!(
                "the source sent the snapshot at index {} term {}, not the one asked for",
                reader.meta().index,
                reader.meta().term
            ))
        }
        Err(e) => Err(e.to_string()),
    };
    InstallDone {
        group,
        meta,
        result,
        fetched_bytes,
    }
}
