//! Opening a store: the data directory (locked first, one process per directory), its
//! identity (`store.meta`: a fresh store id for an empty directory, see `bootstrap`), the
//! address book, the engine, the raft runtime and the regions the store hosts — and nothing
//! on the network: a store listens nowhere. `crate::server::StoreServer` binds the
//! listener between the lock and the open and serves the store (the one place that
//! composes them); [`Store::open`] is the same without a listener.
//!
//! Owns: the order of a start (lock, plan, checks, then writes) and the clean-up of a
//! start that failed (a directory it created is left absent). Must never: write into a data
//! directory before holding its lock, or let an empty data directory stand in for a store
//! that had data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use flotilla_node::grpc::{GrpcOptions, GrpcTransport, TlsConfig};
use flotilla_node::{AddressBook, ManagerOptions, NodeManager, StoreId};

use super::lock::{DataDirLock, LOCK_FILE};
use super::meta::{static_regions, HostedRegion, RegionStart, StoreMeta, STORE_META_FILE};
use super::quota::SpaceQuota;
use super::{
    lock, measure_usage, measure_usage_every, membership, EngineKind, Store, StoreError,
    StoreInner, StoreOptions, ADDRESS_BOOK_FILE,
};
use crate::engine::{FjallEngine, KvEngine, MemoryEngine};

/// A data directory counts as empty if it is missing or holds nothing.
/// Empty but for the lock file this process holds.
fn dir_is_empty(dir: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .all(|entry| entry.file_name() == LOCK_FILE)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::DataDir {
            dir: dir.display().to_string(),
            reason: format!("cannot list it: {e}"),
        }),
    }
}

/// What `open` decided from the options and the data directory.
struct Plan {
    meta: StoreMeta,
    fresh: bool,
    /// A verified backup to import before the store's meta is first saved (`--restore`).
    restore: Option<crate::backup::Verified>,
}

/// The meta of a store seeded from `backup`: the one member of a new cluster, its meta
/// group's one voter, and a voter of every region of the backup, each region's log starting
/// after its snapshot (as a region split off another does).
fn restored_meta(store: StoreId, backup: &crate::backup::Backup) -> StoreMeta {
    let me = store.peer_id();
    StoreMeta {
        store,
        cluster: flotilla_node::identity::random_nonzero_u64(),
        bootstrap: None,
        pd: Some(vec![me.clone()]),
        regions: backup
            .regions
            .iter()
            .map(|r| HostedRegion {
                region: r.region.clone(),
                initial_peers: vec![me.clone()],
                start: Some(RegionStart {
                    index: r.index,
                    term: r.term,
                    learners: Vec::new(),
                }),
            })
            .collect(),
    }
}

fn plan(options: &StoreOptions, advertise: &str) -> Result<Plan, StoreError> {
    let dir = &options.data_dir;
    let data_dir_error = |reason: String| StoreError::DataDir {
        dir: dir.display().to_string(),
        reason,
    };
    // A store that belongs to no cluster bootstraps or joins through --peers, which must
    // name it; a member only tells them its address (it may have moved since).
    let check_peers = |cluster: u64| -> Result<(), StoreError> {
        match &options.peers {
            Some(peers) if cluster == 0 && !peers.iter().any(|p| p.trim() == advertise) => {
                Err(StoreError::InvalidOptions(format!(
                    "--peers {} does not include this store's advertised address {advertise}",
                    peers.join(",")
                )))
            }
            _ => Ok(()),
        }
    };
    static_regions(options.regions).map_err(StoreError::InvalidOptions)?;
    let loaded = StoreMeta::load(dir).map_err(data_dir_error)?;
    if let Some(from) = &options.restore {
        // A restore makes a new cluster of one store: the others join it afterwards.
        if let Some(others) = options
            .peers
            .as_ref()
            .filter(|peers| peers.iter().any(|p| p.trim() != advertise))
        {
            return Err(StoreError::InvalidOptions(format!(
                "--restore starts a new cluster on this store alone: leave out --peers {} \
                 (start the other stores afterwards with --peers {advertise})",
                others.join(",")
            )));
        }
        let store = match &loaded {
            Some(meta) if meta.cluster != 0 || !meta.regions.is_empty() => {
                return Err(data_dir_error(format!(
                    "--restore needs a new data dir, and this one holds store {} of cluster \
                     {:016x}: nothing was changed",
                    meta.store, meta.cluster
                )))
            }
            // Made by `--init` (its certificate may name its id): the id is kept.
            Some(meta) => meta.store,
            None if !dir_is_empty(dir)? => {
                return Err(data_dir_error(format!(
                    "--restore needs a new data dir; this one is not empty and holds no \
                     {STORE_META_FILE}"
                )))
            }
            None => StoreId::random(),
        };
        let verified = crate::backup::verify(from).map_err(|why| {
            StoreError::InvalidOptions(format!(
                "--restore {}: {why}; nothing was changed",
                from.display()
            ))
        })?;
        return Ok(Plan {
            meta: restored_meta(store, &verified.backup),
            fresh: true,
            restore: Some(verified),
        });
    }
    match loaded {
        Some(meta) => {
            check_peers(meta.cluster)?;
            Ok(Plan {
                meta,
                fresh: false,
                restore: None,
            })
        }
        None => {
            check_peers(0)?;
            if !dir_is_empty(dir)? {
                return Err(data_dir_error(format!(
                    "it is not empty and holds no {STORE_META_FILE}: not a Flotilla data dir \
                     (or a `--restore` that was cut short: empty it and restore again)"
                )));
            }
            // A new data dir is a new store, whatever its address or command line.
            Ok(Plan {
                meta: StoreMeta {
                    store: StoreId::random(),
                    cluster: 0,
                    bootstrap: None,
                    pd: None,
                    regions: Vec::new(),
                },
                fresh: true,
                restore: None,
            })
        }
    }
}

/// Imports a verified backup into `engine`, then saves the store's `meta` (only then is
/// the data dir a store: see `plan`).
async fn restore_into(
    engine: &Arc<dyn KvEngine>,
    verified: crate::backup::Verified,
    meta: &StoreMeta,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let into = engine.clone();
    let regions = verified.backup.regions.len();
    tokio::task::spawn_blocking(move || import_backup(&into, &verified))
        .await
        .map_err(|e| StoreError::Start(format!("restoring panicked: {e}")))??;
    meta.save(data_dir).map_err(|reason| StoreError::DataDir {
        dir: data_dir.display().to_string(),
        reason,
    })?;
    tracing::info!(
        store = %meta.store,
        cluster = format_args!("{:016x}", meta.cluster),
        regions,
        "a new cluster seeded from a backup: this store is its one member; start the others \
         with --peers naming this store, and the placement driver replicates every region \
         onto them"
    );
    Ok(())
}

/// Loads every region of a verified backup into `engine` (each as its state machine loads a
/// snapshot: the data verified first, then imported, then the applied index set). Blocking.
fn import_backup(
    engine: &Arc<dyn KvEngine>,
    verified: &crate::backup::Verified,
) -> Result<(), StoreError> {
    use flotilla_node::StateMachine as _;
    for (entry, reader) in verified.backup.regions.iter().zip(&verified.snapshots) {
        let mut machine =
            crate::state_machine::KvStateMachine::new(entry.region.clone(), engine.clone());
        machine
            .on_snapshot_load(reader)
            .map_err(|why| StoreError::Start(format!("restoring {}: {why}", entry.region)))?;
        tracing::info!(region = %entry.region, keys = entry.keys, index = entry.index, "region restored from the backup");
    }
    engine
        .flush()
        .map_err(|e| StoreError::Start(format!("restoring: flushing the engine: {e}")))
}

/// Under TLS a store's certificate must name it: `flotilla://store/ID` with this data dir's
/// store id (its peers accept frames only as the store a certificate names).
fn check_certificate(tls: &TlsConfig, store: StoreId) -> Result<(), StoreError> {
    use flotilla_node::grpc::roles::Role;
    let wanted = format!("{}store/{store}", flotilla_node::grpc::roles::URI_PREFIX);
    match tls.role() {
        Ok(peer) if peer.role == Role::Store && peer.name == store.to_string() => Ok(()),
        Ok(peer) => Err(StoreError::InvalidOptions(format!(
            "--tls-cert names {peer}, but this data dir is store {store}: give this store a \
             certificate with the URI SAN {wanted} (`flotilla server --init` creates a data \
             dir and prints its store id first)"
        ))),
        Err(why) => Err(StoreError::InvalidOptions(format!(
            "--tls-cert: {why}; a store needs the URI SAN {wanted}"
        ))),
    }
}

/// Creates the data dir of a new store (a fresh store id, no cluster yet) without starting
/// it, so that its certificate can name its id; returns the id. Refused if the directory is
/// in use or already holds a store (its id is returned then, nothing changed).
pub fn init(data_dir: &Path) -> Result<(StoreId, bool), StoreError> {
    let created = !data_dir.exists();
    let lock = DataDirLock::acquire(data_dir, "flotilla server --init").map_err(|reason| {
        StoreError::DataDir {
            dir: data_dir.display().to_string(),
            reason,
        }
    })?;
    let data_dir_error = |reason: String| StoreError::DataDir {
        dir: data_dir.display().to_string(),
        reason,
    };
    let result = match StoreMeta::load(data_dir).map_err(data_dir_error)? {
        Some(meta) => Ok((meta.store, false)),
        None if !dir_is_empty(data_dir)? => Err(data_dir_error(format!(
            "it is not empty and holds no {STORE_META_FILE}: not a Flotilla data dir"
        ))),
        None => {
            let meta = StoreMeta {
                store: StoreId::random(),
                cluster: 0,
                bootstrap: None,
                pd: None,
                regions: Vec::new(),
            };
            meta.save(data_dir).map_err(data_dir_error)?;
            Ok((meta.store, true))
        }
    };
    drop(lock);
    if result.is_err() && created && dir_is_empty(data_dir).unwrap_or(false) {
        let _ = std::fs::remove_file(data_dir.join(LOCK_FILE));
        let _ = std::fs::remove_dir(data_dir);
    }
    result
}

/// A data directory locked for one start of a store (see `lock`: one process per data
/// directory), not yet a running store. Taken before anything is bound or written; a start
/// that fails hands it back to [`LockedDataDir::abandon`].
pub(crate) struct LockedDataDir {
    lock: DataDirLock,
    path: PathBuf,
    /// Whether this start created the directory (taking the lock makes it).
    created: bool,
}

impl LockedDataDir {
    /// Locks `options.data_dir` (created if missing), naming `options.address` as its
    /// holder for whoever is refused.
    pub(crate) fn lock(options: &StoreOptions) -> Result<LockedDataDir, StoreError> {
        let path = options.data_dir.clone();
        let created = !path.exists();
        let lock = DataDirLock::acquire(&path, &options.address).map_err(|reason| {
            StoreError::DataDir {
                dir: path.display().to_string(),
                reason,
            }
        })?;
        Ok(LockedDataDir {
            lock,
            path,
            created,
        })
    }

    /// A start that failed: releases the lock and leaves a directory this start created as
    /// it was: absent.
    pub(crate) fn abandon(self) {
        let LockedDataDir {
            lock,
            path,
            created,
        } = self;
        drop(lock);
        remove_if_created(&path, created);
    }
}

/// Removes `dir` if this start `created` it and nothing was written into it.
fn remove_if_created(dir: &Path, created: bool) {
    if created {
        // Nothing but the lock file can be in it before store.meta is written.
        if dir_is_empty(dir).unwrap_or(false) {
            let _ = std::fs::remove_file(dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Store {
    /// Opens (or bootstraps) the store without listening anywhere: data directory,
    /// identity, address book, engine, raft runtime and regions, then the task that
    /// bootstraps, joins or announces it (see `membership`). Must be called within a
    /// multi-threaded tokio runtime. `options.address` is taken as where the store is
    /// reached (its advertised address unless `options.advertise` says otherwise); a
    /// store that others must reach is served by `crate::server::StoreServer`.
    ///
    /// The data directory is locked first (one process per data directory, the holder
    /// named when refused); a start that fails leaves a directory it created as it was:
    /// absent.
    pub async fn open(options: StoreOptions) -> Result<Store, StoreError> {
        let dir = LockedDataDir::lock(&options)?;
        let store = Store::open_in(dir, options).await?;
        store.start_membership();
        Ok(store)
    }

    /// Opens the store in `dir`, locked by [`LockedDataDir::lock`] with the same options,
    /// whose `address` is the address the store listens on (a port 0 already resolved by
    /// whoever bound it). Starts no membership task (see [`Store::start_membership`]). A start
    /// that fails leaves a directory it created as it was: absent.
    pub(crate) async fn open_in(
        dir: LockedDataDir,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let LockedDataDir {
            lock,
            path,
            created,
        } = dir;
        let opened = if path == options.data_dir {
            Store::open_locked(options, lock).await
        } else {
            Err(StoreError::InvalidOptions(format!(
                "the data dir locked is {}, the options name {}",
                path.display(),
                options.data_dir.display()
            )))
        };
        if opened.is_err() {
            remove_if_created(&path, created);
        }
        opened
    }

    /// Says what the store is (in a cluster or not yet) and starts the one task that
    /// bootstraps, joins or announces it, stopped with the store. Called once, when the
    /// store can be reached (after its server serves it).
    pub(crate) fn start_membership(&self) {
        let cluster = self.cluster();
        if cluster == 0 {
            tracing::info!(store = %self.inner.id, address = %self.inner.advertise, "store belongs to no cluster yet");
        } else {
            tracing::info!(store = %self.inner.id, cluster = format_args!("{cluster:016x}"), address = %self.inner.advertise, regions = self.all_peers().len(), "store started");
        }
        let task = tokio::spawn(membership::run(Arc::downgrade(&self.inner)));
        *lock(&self.inner.membership_task) = Some(task);
        self.start_pd_tasks();
    }

    async fn open_locked(
        options: StoreOptions,
        dir_lock: DataDirLock,
    ) -> Result<Store, StoreError> {
        let listen = options.address.clone();
        let advertise = options.advertise.clone().unwrap_or_else(|| listen.clone());
        flotilla_node::identity::check_address(&advertise)
            .map_err(|e| StoreError::InvalidOptions(format!("--advertise-addr: {e}")))?;
        let Plan {
            meta,
            fresh,
            restore,
        } = plan(&options, &advertise)?;
        if advertise != listen {
            // Another process could answer there (behind NAT, in another pod): a live store
            // that holds the address keeps it. (On the listen address the server's bind
            // settled it.)
            membership::refuse_held_address(&advertise, meta.store, options.tls.as_ref()).await?;
        }
        std::fs::create_dir_all(&options.data_dir).map_err(|e| StoreError::DataDir {
            dir: options.data_dir.display().to_string(),
            reason: format!("cannot create it: {e}"),
        })?;
        // A restore saves its meta only once every region is imported: a restore cut
        // short leaves a data dir that refuses to start, never a store missing data.
        if restore.is_none() {
            meta.save(&options.data_dir)
                .map_err(|reason| StoreError::DataDir {
                    dir: options.data_dir.display().to_string(),
                    reason,
                })?;
        }
        let addresses =
            AddressBook::open(options.data_dir.join(ADDRESS_BOOK_FILE)).map_err(|reason| {
                StoreError::DataDir {
                    dir: options.data_dir.display().to_string(),
                    reason,
                }
            })?;
        let peer_id = meta.store.peer_id();
        if let Some(tls) = &options.tls {
            check_certificate(tls, meta.store)?;
        }
        if let Some(previous) = addresses.id_at(&advertise).filter(|p| *p != peer_id) {
            tracing::warn!(address = %advertise, previous = %previous, "this address was recorded for another store; it is this store's now");
        }
        if let Some(old) = addresses.get(&peer_id).filter(|a| *a != advertise) {
            tracing::info!(store = %peer_id, from = %old, to = %advertise, "this store moved: it will tell the cluster its new address");
        }
        addresses
            .set(&peer_id, &advertise)
            .map_err(|reason| StoreError::DataDir {
                dir: options.data_dir.display().to_string(),
                reason,
            })?;
        let engine: Arc<dyn KvEngine> = match options.engine {
            EngineKind::Memory => Arc::new(MemoryEngine::new()),
            EngineKind::Fjall => {
                let dir = options.data_dir.join("kv");
                let engine = tokio::task::spawn_blocking(move || FjallEngine::open(dir))
                    .await
                    .map_err(|e| StoreError::Start(format!("opening fjall panicked: {e}")))?
                    .map_err(|e| StoreError::Start(format!("cannot open the fjall engine: {e}")))?;
                Arc::new(engine)
            }
        };
        if let Some(verified) = restore {
            restore_into(&engine, verified, &meta, &options.data_dir).await?;
        }
        let mut manager_options =
            ManagerOptions::new(peer_id.clone(), options.data_dir.join("raft"));
        manager_options.cluster = meta.cluster;
        manager_options.addresses = addresses.clone();
        manager_options.tick = options.tick;
        manager_options.raft.election_timeout_ticks = options.election_timeout_ticks;
        manager_options.raft.snapshot_interval_ticks = options.snapshot_interval_ticks;
        // The commit index rides on the next AppendEntries or heartbeat instead of a message
        // of its own to each follower: 15-20% less CPU per write at 1-16 clients, measured
        // side by side; followers apply up to a heartbeat later (reads are unaffected).
        manager_options.raft.commit_broadcast = false;
        // A replica added to a region starts with the region's current range, not the one
        // its log's first entries were written against: replayed from entry 1, a merge in
        // that log would not bring the source's keys (found by flotilla-chaos: a learner
        // added after a merge replayed the target's log and lacked the source's data). So
        // a replica created empty starts from a snapshot.
        manager_options.raft.join_from_snapshot = true;
        manager_options
            .raft
            .validate()
            .map_err(|e| StoreError::InvalidOptions(format!("raft options: {e}")))?;
        let grpc_options = GrpcOptions {
            tls: options.tls.clone(),
            addresses: addresses.clone(),
            advertise: Some(advertise.clone()),
            frame_messages_max: options.frame_messages_max,
            ..GrpcOptions::default()
        };
        let transport = Arc::new(GrpcTransport::new(grpc_options));
        let manager = NodeManager::open(manager_options, transport)
            .await
            .map_err(|e| StoreError::Start(format!("cannot start the raft runtime: {e}")))?;
        let cluster = meta.cluster;
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(StoreInner {
            _lock: dir_lock,
            id: peer_id,
            advertise,
            addresses,
            peers: options.peers.clone(),
            regions_at_bootstrap: options.regions,
            tls: options.tls.clone(),
            data_dir: options.data_dir.clone(),
            engine,
            manager,
            regions: RwLock::new(BTreeMap::new()),
            meta: tokio::sync::Mutex::new(meta.clone()),
            cluster: Mutex::new(cluster),
            request_timeout: options.request_timeout,
            fresh,
            quota: SpaceQuota::new(options.quota_bytes),
            usage_task: Mutex::new(None),
            lease_task: Mutex::new(None),
            cluster_client: tokio::sync::Mutex::new(None),
            membership_task: Mutex::new(None),
            events,
            events_task: Mutex::new(None),
            opened_at: Mutex::new(std::collections::HashMap::new()),
            splits: std::sync::atomic::AtomicU64::new(0),
            merges: std::sync::atomic::AtomicU64::new(0),
            pd_replicas: options.pd_replicas,
            pd: super::pd::PdRuntime::new(
                options.labels.clone(),
                options.pd_settings.clone(),
                options.pd_heartbeat,
            ),
            watch_retention: options.watch_retention,
            watch_stats: super::watch_stats::WatchStats::default(),
            lock_clocks: Arc::default(),
            lease_clocks: Arc::default(),
        });
        let store = Store { inner };
        let task = tokio::spawn(super::peers::run(Arc::downgrade(&store.inner), events_rx));
        *lock(&store.inner.events_task) = Some(task);
        // Measured once before serving, so a store restarted over its quota refuses at once.
        measure_usage(&store.inner).await;
        let task = tokio::spawn(measure_usage_every(Arc::downgrade(&store.inner)));
        *lock(&store.inner.usage_task) = Some(task);
        let task = tokio::spawn(super::leases::reap_every(Arc::downgrade(&store.inner)));
        *lock(&store.inner.lease_task) = Some(task);
        if let Some(peers) = &meta.pd {
            store.start_meta_group(peers.clone()).await?;
        }
        // A split a crash cut short is finished first: its parent must not start with the
        // range it had before.
        store
            .finish_recorded_splits()
            .await
            .map_err(|e| StoreError::Start(format!("cannot finish a recorded split: {e}")))?;
        // So is a merge: its source must not start over keys its target owns now.
        store
            .finish_recorded_merges()
            .await
            .map_err(|e| StoreError::Start(format!("cannot finish a recorded merge: {e}")))?;
        let regions = store.inner.meta.lock().await.regions.clone();
        for hosted in &regions {
            store.start_region(hosted).await?;
        }
        Ok(store)
    }
}
