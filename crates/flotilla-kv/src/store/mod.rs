//! The store engine: one per process (RheaKV's `StoreEngine`), hosting one region peer per
//! region it replicates, each a raft group of the process's [`NodeManager`] over one shared
//! [`KvEngine`]. A store listens nowhere: `crate::server::StoreServer` serves it on the
//! process's one address (and `open` says how a store opens).
//!
//! Owns: the data directory (`store.meta`, `addresses` (the address book), `raft/` for
//! the node runtime, `kv/` for the fjall engine), the store's identity (a random store id
//! made with the data dir; the address is only where it is: see `bootstrap` for how a
//! cluster is made once), bootstrap of static regions, request admission (region, epoch, range,
//! limits, no empty key, the space quota: see `quota`) before anything is proposed, the
//! regions it hosts (`OpenRegion` validated against them; `CloseRegion` for a peer opened
//! by mistake), and a clean shutdown that hands leadership off (`hand_off`, then `close`
//! once nothing serves the store). Must never: let an empty
//! data directory stand in for a store that had data (it is always a new store), propose a
//! request it has not validated, or host two regions that share a key.
//!
//! Membership changes move a region's `conf_version` (to the index of the configuration's
//! entry) and a peer removed from its region is destroyed on its store (see `peers`).
//! Not yet: no split or merge, so `Epoch::version` stays 1.

mod backup;
pub mod bootstrap;
mod leases;
mod load;
mod lock;
mod membership;
mod merge;
pub mod meta;
mod open;
pub mod pd;
mod peers;
mod quota;
mod split;
pub mod watch;
mod watch_stats;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_node::grpc::TlsConfig;
use flotilla_node::{AddressBook, Node, NodeError, NodeManager, PeerId, RaftError, ReadMode};

use crate::command::{KvCommand, KvOutput};
use crate::engine::KvEngine;
use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::limits::{REGIONS_PER_STORE_MAX, SCAN_REPLY_BYTES_MAX};
use crate::region::Region;
use crate::state_machine::{completion_error, KvRegionHandle, KvStateMachine};
use lock::DataDirLock;
pub use lock::LOCK_FILE;
/// File name of the address book inside the data directory.
pub const ADDRESS_BOOK_FILE: &str = "addresses";
pub use merge::MergeView;
use meta::{HostedRegion, MetaChange, StoreMeta, STORE_META_BYTES_MAX};
pub use open::init;
pub(crate) use open::LockedDataDir;
use quota::SpaceQuota;
pub use quota::{QUOTA_BYTES_DEFAULT, USAGE_INTERVAL};
pub use split::SplitAt;

/// Which [`KvEngine`] a store keeps its data in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// In memory: rebuilt from the raft snapshot and log at every restart.
    Memory,
    /// fjall (LSM tree) under `data-dir/kv`: the default.
    #[default]
    Fjall,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(text: &str) -> Result<EngineKind, String> {
        match text {
            "memory" => Ok(EngineKind::Memory),
            "fjall" => Ok(EngineKind::Fjall),
            other => Err(format!(
                "unknown engine {other:?}: expected memory or fjall"
            )),
        }
    }
}

/// How a store starts.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Address to listen on (`host:port`; port 0 picks a free port: the server that binds
    /// it resolves the port before the store opens).
    pub address: String,
    /// Address the other stores and clients reach this store at (`host:port`, host names
    /// allowed; `None`: the listen address). It may change from one start to the next:
    /// the store keeps its id and data and tells the cluster.
    pub advertise: Option<String>,
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Addresses of the initial members of a new cluster (this store's advertised address
    /// among them). A store that belongs to no cluster asks them: it bootstraps a cluster
    /// with them only when all are empty, else joins theirs as a new store (see
    /// `bootstrap`). A store that belongs to a cluster tells them its address at start.
    pub peers: Option<Vec<String>>,
    /// Static regions a new cluster splits the key space into.
    pub regions: u32,
    /// Storage engine.
    pub engine: EngineKind,
    /// Raft tick (SOFAJRaft: 100 ms; election timeout = 10 ticks).
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_timeout_ticks: u64,
    /// Snapshot every this many ticks (0: never automatically).
    pub snapshot_interval_ticks: u64,
    /// Longest a request waits for its raft group (apply or read) before it is answered
    /// `Unknown` (a write) or `TimedOut` (a read).
    pub request_timeout: Duration,
    /// Mutual TLS for peers and clients; `None`: plain text.
    pub tls: Option<TlsConfig>,
    /// Size of the data directory at which writes that add data are refused with
    /// [`KvError::NoSpace`] until it falls back below (see `quota`); 0: unlimited.
    pub quota_bytes: u64,
    /// Most raft messages one frame between stores carries, sent or accepted (1 ..=
    /// [`flotilla_node::grpc::codec::FRAME_MESSAGES_MAX`], the default). Every store of a
    /// cluster must use the same value; lowered in tests so that a few dozen regions need
    /// several frames.
    pub frame_messages_max: usize,
    /// How many stores the meta group (the placement driver's raft group) starts on when
    /// this store bootstraps a cluster: the first ones by store id (default 3).
    pub pd_replicas: u32,
    /// This store's labels (`--label zone=a`): the placement driver spreads a region's
    /// replicas over distinct values where the stores allow it.
    pub labels: BTreeMap<String, String>,
    /// Placement driver settings given as `flotilla server` flags (`max-replicas`,
    /// `max-store-down-time`, ...): they only seed the PD's configuration, once (see
    /// `pd`); `admin pd config set` changes it afterwards.
    pub pd_settings: Vec<(String, String)>,
    /// How often this store sends its heartbeat to the placement driver (default 10 s).
    pub pd_heartbeat: Duration,
    /// How long watch history is kept, and how long a region records it after its last
    /// watcher left (`crate::watch`; default [`crate::watch::RETENTION_MS_DEFAULT`] ms).
    pub watch_retention: Duration,
    /// A backup directory (`flotilla admin backup`) to seed a new cluster from: the store
    /// (its data dir new, or made by `--init`) becomes the one member of a new cluster
    /// holding every region of the backup, and other stores join it (see `crate::backup`).
    pub restore: Option<PathBuf>,
}

impl StoreOptions {
    /// Defaults: one region, fjall, 100 ms ticks, 1 s election timeout, a snapshot every
    /// hour, 5 s request timeout, no TLS, a quota of [`QUOTA_BYTES_DEFAULT`].
    #[must_use]
    pub fn new(address: impl Into<String>, data_dir: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            address: address.into(),
            advertise: None,
            data_dir: data_dir.into(),
            peers: None,
            regions: 1,
            engine: EngineKind::Fjall,
            tick: Duration::from_millis(100),
            election_timeout_ticks: 10,
            snapshot_interval_ticks: 36_000,
            request_timeout: Duration::from_secs(5),
            tls: None,
            quota_bytes: QUOTA_BYTES_DEFAULT,
            frame_messages_max: flotilla_node::grpc::codec::FRAME_MESSAGES_MAX,
            pd_replicas: 3,
            labels: BTreeMap::new(),
            pd_settings: Vec::new(),
            pd_heartbeat: pd::STORE_HEARTBEAT_DEFAULT,
            restore: None,
            watch_retention: Duration::from_millis(crate::watch::RETENTION_MS_DEFAULT),
        }
    }
}

/// Why a store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad options (the message names the option).
    #[error("{0}")]
    InvalidOptions(String),
    /// The listening address could not be bound (by `crate::server::StoreServer`).
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// The address.
        address: String,
        /// The OS's reason (e.g. address already in use).
        reason: String,
    },
    /// The data directory belongs to something else, or is damaged.
    #[error("data dir {dir}: {reason}")]
    DataDir {
        /// The directory.
        dir: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The raft runtime or the engine failed to start.
    #[error("{0}")]
    Start(String),
}

/// One region peer of this store.
#[derive(Clone)]
struct RegionPeer {
    node: Node,
    /// What the region's state machine reports (engine failure, applied index).
    machine: KvRegionHandle,
    /// The writes this store proposed while leading it (load-based split).
    load: Arc<load::WriteLoad>,
}

/// What the store knows of one region (`admin status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStatus {
    /// The region.
    pub region: Region,
    /// The address of the leader this store knows of (`Some("")` when it knows the
    /// leader's id but not where it is).
    pub leader: Option<String>,
    /// The leader's store id.
    pub leader_id: Option<String>,
    /// This store's term in the region's group.
    pub term: u64,
    /// Voters' addresses (empty where not known), in the order of `peer_ids`.
    pub peers: Vec<String>,
    /// Voters' store ids.
    pub peer_ids: Vec<String>,
    /// Learners' addresses (empty where not known), in the order of `learner_ids`.
    pub learners: Vec<String>,
    /// Learners' store ids.
    pub learner_ids: Vec<String>,
    /// Commit index on this store.
    pub commit_index: u64,
    /// Applied index on this store.
    pub applied_index: u64,
    /// This store's role ("leader", "follower", "candidate", "learner").
    pub role: String,
}

struct StoreInner {
    /// Held for as long as the store runs (see `lock`).
    _lock: DataDirLock,
    /// This store's id, as the peer id of its peers.
    id: PeerId,
    /// Where this store says it is.
    advertise: String,
    /// Where every store is (this one included).
    addresses: AddressBook,
    /// `--peers`, as given.
    peers: Option<Vec<String>>,
    /// Static regions a bootstrap makes.
    regions_at_bootstrap: u32,
    /// TLS for the calls this store makes to others (bootstrap, announcements).
    tls: Option<TlsConfig>,
    data_dir: PathBuf,
    engine: Arc<dyn KvEngine>,
    manager: NodeManager,
    regions: RwLock<BTreeMap<RegionId, RegionPeer>>,
    /// Serialises changes of `store.meta` (and the region map with them).
    meta: tokio::sync::Mutex<StoreMeta>,
    cluster: Mutex<u64>,
    request_timeout: Duration,
    fresh: bool,
    /// The data directory's size against its quota (the NOSPACE alarm).
    quota: SpaceQuota,
    /// The task measuring the data directory, stopped by [`Store::hand_off`].
    usage_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The lease reaper (`leases`), stopped by [`Store::hand_off`].
    lease_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A client of the cluster with this store's TLS (made when first needed): the
    /// reaper's deletions and forwarded keep-alives go through it.
    cluster_client: tokio::sync::Mutex<Option<crate::client::KvClient>>,
    /// The task bootstrapping, joining or announcing this store, stopped by shutdown.
    membership_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the regions' state machines send their events (see `peers`).
    events: tokio::sync::mpsc::UnboundedSender<crate::state_machine::RegionEvent>,
    /// The task handling them, stopped by [`Store::close`].
    events_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When each region was last asked to open here (`OpenRegion`, taken under the meta
    /// lock): a stale-peer verdict from before then is out of date (the PD may be adding
    /// this store back; see `peers::destroy_stale_peer`).
    opened_at: Mutex<HashMap<RegionId, Instant>>,
    /// Splits applied here whose child this store started (`flotilla_store_splits_total`).
    splits: std::sync::atomic::AtomicU64,
    /// Merges finished here: a source dropped after its target absorbed it
    /// (`flotilla_store_merges_total`).
    merges: std::sync::atomic::AtomicU64,
    /// Stores the meta group starts on at a bootstrap by this store.
    pd_replicas: u32,
    /// The placement driver as this store runs it (see `pd`).
    pd: pd::PdRuntime,
    /// How long watch history is kept (`StoreOptions::watch_retention`).
    watch_retention: Duration,
    /// What the watch streams did (metrics).
    watch_stats: watch_stats::WatchStats,
    /// Lock and lease clocks as this store applied them, shared by its regions (a split's
    /// child and a merge's target go on from them: `KvStateMachine::with_clocks`).
    lock_clocks: Arc<crate::lock::LockClocks>,
    lease_clocks: Arc<crate::lock::LockClocks>,
}

/// A running store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("id", &self.inner.id)
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The checks of [`Store::open_region`] against what this store knows (`meta`), for a
/// region id it does not host yet.
fn check_open(meta: &StoreMeta, region: &Region, cluster: u64) -> Result<(), KvError> {
    if cluster == 0 {
        return Err(KvError::RegionRefused("cluster id 0 is not valid".into()));
    }
    if meta.cluster != 0 && meta.cluster != cluster {
        return Err(KvError::RegionRefused(format!(
            "this store belongs to cluster {:016x}, not {cluster:016x}",
            meta.cluster
        )));
    }
    if let Some(overlapped) = meta.regions.iter().find(|h| h.region.overlaps(region)) {
        return Err(KvError::RegionRefused(format!(
            "{region} overlaps {} which this store hosts: a store's regions never share a key",
            overlapped.region
        )));
    }
    if meta.regions.len() >= REGIONS_PER_STORE_MAX {
        return Err(KvError::RegionRefused(format!(
            "this store already hosts {} regions, the most regions_per_store_max \
             ({REGIONS_PER_STORE_MAX}) allows",
            meta.regions.len()
        )));
    }
    Ok(())
}

/// Refuses a `store.meta` larger than a restart reads back.
fn check_meta_size(meta: &StoreMeta, adding: &HostedRegion) -> Result<(), KvError> {
    let size = (meta.render().len() + meta::region_line_len(adding) + 1) as u64;
    if size > STORE_META_BYTES_MAX {
        return Err(KvError::RegionRefused(format!(
            "store.meta would grow to {size} bytes, over its {STORE_META_BYTES_MAX}-byte limit"
        )));
    }
    Ok(())
}

impl Store {
    async fn start_region(&self, hosted: &HostedRegion) -> Result<Node, StoreError> {
        let mut machine = KvStateMachine::new(hosted.region.clone(), self.inner.engine.clone())
            .with_clocks(
                self.inner.lock_clocks.clone(),
                self.inner.lease_clocks.clone(),
            )
            .with_events(self.inner.events.clone());
        machine.restore().map_err(|e| {
            StoreError::Start(format!("cannot read {}'s state: {e}", hosted.region))
        })?;
        let handle = machine.handle();
        let manager = &self.inner.manager;
        let id = hosted.region.id.0;
        let node = match hosted.group_start() {
            Some(start) => manager.add_group_at(id, start, machine).await,
            None => {
                manager
                    .add_group(id, hosted.initial_peers.clone(), machine)
                    .await
            }
        }
        .map_err(|e| StoreError::Start(format!("cannot start {}: {e}", hosted.region)))?;
        self.inner
            .regions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                hosted.region.id,
                RegionPeer {
                    node: node.clone(),
                    machine: handle,
                    load: Arc::default(),
                },
            );
        Ok(node)
    }

    /// This store's id, as the peer id its peers have in every region.
    #[must_use]
    pub fn id(&self) -> &PeerId {
        &self.inner.id
    }

    /// The address this store advertises (where the others reach it).
    #[must_use]
    pub fn advertised_address(&self) -> &str {
        &self.inner.advertise
    }

    /// Where every store this one knows of is (itself included).
    #[must_use]
    pub fn addresses(&self) -> &AddressBook {
        &self.inner.addresses
    }

    /// The address of `peer` (empty when not known).
    #[must_use]
    pub fn address_of(&self, peer: &PeerId) -> String {
        self.inner.addresses.resolve(peer).unwrap_or_default()
    }

    /// The cluster this store belongs to (0: none yet).
    #[must_use]
    pub fn cluster(&self) -> u64 {
        *lock(&self.inner.cluster)
    }

    /// True if the data directory was empty when the store opened.
    #[must_use]
    pub fn was_fresh(&self) -> bool {
        self.inner.fresh
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The node runtime (metrics, describe, the CLI service).
    #[must_use]
    pub fn manager(&self) -> &NodeManager {
        &self.inner.manager
    }

    /// Every metric of this store in Prometheus text format: the node runtime's, then the
    /// store's own (regions hosted and led).
    #[must_use]
    pub fn metrics_text(&self) -> String {
        let mut text = self.inner.manager.metrics_text();
        let regions = self.regions();
        let led = regions.iter().filter(|r| r.role == "leader").count();
        text.push_str(&flotilla_node::exposition::gauges_text(&[
            (
                "flotilla_store_regions",
                "Regions this store hosts a peer of.",
                regions.len() as u64,
            ),
            (
                "flotilla_store_regions_led",
                "Regions this store's peer leads.",
                led as u64,
            ),
        ]));
        text.push_str(&flotilla_node::exposition::counters_text(&[
            (
                "flotilla_store_splits_total",
                "Region splits this store applied as a replica of the parent and started \
                 the child of.",
                self.inner.splits.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "flotilla_store_merges_total",
                "Region merges this store applied as a replica of the target and dropped \
                 the source of.",
                self.inner.merges.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ]));
        text.push_str(&self.inner.quota.metrics_text());
        text.push_str(&self.watch_metrics_text());
        text.push_str(&self.pd_metrics_text());
        text
    }

    /// The refusal of a request only the leader of region `id` takes, naming the leader
    /// `peer` knows of (by address, when the address book has it).
    fn not_leader(&self, id: RegionId, peer: &RegionPeer) -> KvError {
        KvError::NotLeader {
            region: id,
            leader: peer
                .node
                .leader_id()
                .and_then(|l| self.inner.addresses.resolve(&l)),
        }
    }

    fn peer(&self, id: RegionId) -> Option<RegionPeer> {
        self.inner
            .regions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The region's peer and the region as it is now, if `epoch` names the region's
    /// current range: its `version` must be the current one. Its `conf_version` may differ
    /// (as TiKV checks data requests): a membership change does not change which keys the
    /// region holds, so a client whose routes predate one need not retry; the answer to a
    /// stale `version` carries the region as it is now (`KvError::StaleEpoch`).
    fn admit(&self, id: RegionId, epoch: Epoch) -> Result<(RegionPeer, Region), KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        let region = peer.machine.region();
        if region.epoch.version != epoch.version {
            return Err(KvError::StaleEpoch {
                region: id,
                current: region.epoch,
                given: epoch,
                now: Some(region.encode()),
            });
        }
        Ok((peer, region))
    }

    /// Every region peer of this store (a copy: the map's lock is not held after).
    fn all_peers(&self) -> Vec<RegionPeer> {
        self.inner
            .regions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Whether the store is ready to serve (`GET /ready`, `flotilla health`): it belongs to
    /// a cluster, and every region it hosts knows a leader and has not stopped. `Ok` says
    /// how many regions; `Err` says what is not ready (at most five regions named).
    pub fn readiness(&self) -> Result<String, String> {
        if self.cluster() == 0 {
            return Err(
                "not ready: the store belongs to no cluster yet (it waits to be \
                        bootstrapped or given a region)"
                    .into(),
            );
        }
        let peers = self.all_peers();
        let mut leaderless = Vec::new();
        let mut stopped = Vec::new();
        for peer in &peers {
            let id = peer.machine.region().id;
            if peer.machine.failed() {
                stopped.push(id.to_string());
            } else if peer.node.with_status(|s| s.leader.is_none()) {
                leaderless.push(id.to_string());
            }
        }
        let name = |ids: &mut Vec<String>| {
            ids.sort();
            let more = ids.len().saturating_sub(5);
            let mut text = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        match (stopped.is_empty(), leaderless.is_empty()) {
            (true, true) => Ok(format!(
                "ready: cluster {:016x}, {} regions, each with a known leader",
                self.cluster(),
                peers.len()
            )),
            (false, _) => Err(format!(
                "not ready: the replicas of regions {} stopped here",
                name(&mut stopped)
            )),
            (true, false) => Err(format!(
                "not ready: regions {} know no leader",
                name(&mut leaderless)
            )),
        }
    }

    /// What this store knows of every region it hosts.
    #[must_use]
    pub fn regions(&self) -> Vec<RegionStatus> {
        let peers = self.all_peers();
        peers
            .into_iter()
            .map(|peer| {
                let status = peer.node.status();
                let learner = status.configuration.learners.contains(&self.inner.id);
                let role = if learner {
                    "learner".to_string()
                } else {
                    format!("{:?}", status.role).to_lowercase()
                };
                let ids = |set: &std::collections::BTreeSet<PeerId>| -> Vec<String> {
                    set.iter().map(|p| p.as_str().to_string()).collect()
                };
                let at = |set: &std::collections::BTreeSet<PeerId>| -> Vec<String> {
                    set.iter().map(|p| self.address_of(p)).collect()
                };
                RegionStatus {
                    region: peer.machine.region(),
                    leader: status.leader.as_ref().map(|l| self.address_of(l)),
                    leader_id: status.leader.map(|l| l.as_str().to_string()),
                    term: status.term.0,
                    peers: at(&status.configuration.voters),
                    peer_ids: ids(&status.configuration.voters),
                    learners: at(&status.configuration.learners),
                    learner_ids: ids(&status.configuration.learners),
                    commit_index: status.committed.0,
                    applied_index: status.applied.0,
                    role,
                }
            })
            .collect()
    }

    /// Creates an empty peer of `region` on this store, to be added by the region's leader
    /// (`admin add-peer` calls this on the new store first). Idempotent (the same id and
    /// range again). Refused with [`KvError::RegionRefused`], nothing changed: cluster id 0
    /// or another cluster than this store's, a region id this store hosts with another
    /// range, a range overlapping a region this store hosts (it would take those keys'
    /// routes), more than [`REGIONS_PER_STORE_MAX`] regions, or a `store.meta` that would
    /// outgrow what a restart reads back.
    pub async fn open_region(&self, region: Region, cluster: u64) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        lock(&self.inner.opened_at).insert(region.id, Instant::now());
        if let Some(existing) = meta.regions.iter().find(|h| h.region.id == region.id) {
            let existing = &existing.region;
            if existing.start == region.start && existing.end == region.end {
                return Ok(());
            }
            return Err(KvError::RegionRefused(format!(
                "this store already hosts {existing}, which differs from {region}"
            )));
        }
        check_open(&meta, &region, cluster)?;
        if self.peer(region.id).is_some() || self.inner.manager.node(region.id.0).is_some() {
            // Closed since this process started: its raft group is still in the runtime.
            return Err(KvError::RegionRefused(format!(
                "region {} was closed on this store since it started; restart the store to \
                 open it again",
                region.id
            )));
        }
        let hosted = HostedRegion {
            region,
            initial_peers: Vec::new(),
            start: None,
        };
        check_meta_size(&meta, &hosted)?;
        // A peer created empty starts from a clean slate: an earlier peer of this region
        // on this store, destroyed by a run that a crash cut short, left nothing behind.
        self.purge_leftovers(&hosted.region).await?;
        let mut changes = Vec::new();
        if meta.cluster != cluster {
            changes.push(MetaChange::Cluster(cluster));
        }
        changes.push(MetaChange::Region(hosted.clone()));
        self.record_meta(&mut meta, changes).await?;
        self.set_cluster(cluster);
        self.start_region(&hosted)
            .await
            .map_err(|e| KvError::Engine(e.to_string()))?;
        Ok(())
    }

    /// Removes this store's peer of region `id`, opened by mistake: from `store.meta` and
    /// from what the store serves and reports. Refused with [`KvError::RegionRefused`]
    /// unless the peer belongs to no configuration (it was never added, nor bootstrapped)
    /// and its log is empty (it holds no data). Once the store hosts no region it belongs
    /// to no cluster again (a mistaken `OpenRegion` may have bound it to one).
    /// Its raft group is removed from the node runtime too (`NodeManager::remove_group`,
    /// which checks again that it belongs to no configuration and holds no entry), so the
    /// same region id may be opened again at once.
    pub async fn close_region(&self, id: RegionId) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        let status = peer.node.status();
        let configuration = &status.configuration;
        if !configuration.voters.is_empty() || !configuration.learners.is_empty() {
            let members: Vec<&str> = configuration
                .voters
                .iter()
                .chain(&configuration.learners)
                .map(PeerId::as_str)
                .collect();
            return Err(KvError::RegionRefused(format!(
                "region {id} on this store belongs to a configuration ({}): remove the store \
                 from the region with `admin remove-peer` instead",
                members.join(",")
            )));
        }
        if status.last_index.0 != 0 || status.applied.0 != 0 {
            return Err(KvError::RegionRefused(format!(
                "region {id} on this store holds log entries up to {} (applied {}): it holds \
                 data",
                status.last_index, status.applied
            )));
        }
        self.inner
            .manager
            .remove_group(id.0)
            .await
            .map_err(|e| KvError::RegionRefused(format!("region {id}: {e}")))?;
        let mut changes = vec![MetaChange::Removed(id)];
        if meta.regions.iter().all(|hosted| hosted.region.id == id) {
            changes.push(MetaChange::Cluster(0));
        }
        self.record_meta(&mut meta, changes).await?;
        self.inner
            .regions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        self.set_cluster(meta.cluster);
        tracing::warn!(region = %id, "region closed on this store (it held nothing)");
        Ok(())
    }

    /// Makes `changes` durable in the change log (one fsync), then applies them to `meta`;
    /// folds the log into `store.meta` once it has outgrown it. One region's change costs
    /// the same however many regions the store hosts (the fold is amortised).
    async fn record_meta(
        &self,
        meta: &mut StoreMeta,
        changes: Vec<MetaChange>,
    ) -> Result<(), KvError> {
        let dir = self.inner.data_dir.clone();
        let to_append = changes.clone();
        let log_bytes = tokio::task::spawn_blocking(move || StoreMeta::append(&dir, &to_append))
            .await
            .map_err(|e| KvError::Engine(format!("appending to store.meta.log panicked: {e}")))?
            .map_err(KvError::Engine)?;
        for change in &changes {
            meta.apply(change);
        }
        if meta.log_due(log_bytes) {
            self.save_meta(meta).await?;
        }
        Ok(())
    }

    async fn save_meta(&self, next: &StoreMeta) -> Result<(), KvError> {
        let dir = self.inner.data_dir.clone();
        let to_save = next.clone();
        tokio::task::spawn_blocking(move || to_save.save(&dir))
            .await
            .map_err(|e| KvError::Engine(format!("saving store.meta panicked: {e}")))?
            .map_err(KvError::Engine)
    }

    fn node_error(&self, region: RegionId, error: NodeError) -> KvError {
        match error {
            NodeError::Raft(RaftError::NotLeader { leader }) => KvError::NotLeader {
                region,
                leader: leader
                    .and_then(|l| self.inner.addresses.resolve(&l))
                    .filter(|a| !a.is_empty()),
            },
            NodeError::Raft(RaftError::Busy(why)) => KvError::Busy(why),
            NodeError::Unknown(why) | NodeError::Raft(RaftError::TimedOut(why)) => {
                KvError::Unknown(why)
            }
            other => KvError::Node {
                kind: flotilla_node::grpc::kind_of(&other).to_string(),
                message: other.to_string(),
            },
        }
    }

    /// Waits until a read of `region` at this store is linearizable (`mode`: leader
    /// ReadIndex, leader lease, or `None` for a follower read through ReadIndex).
    async fn read_ready(
        &self,
        id: RegionId,
        epoch: Epoch,
        mode: Option<ReadMode>,
    ) -> Result<Region, KvError> {
        let (peer, region) = self.admit(id, epoch)?;
        if peer.machine.failed() {
            return Err(KvError::Engine(format!(
                "region {id}: the storage engine failed while applying; this peer serves no reads"
            )));
        }
        if mode.is_some() && !peer.node.is_leader() {
            return Err(KvError::NotLeader {
                region: id,
                leader: peer
                    .node
                    .leader_id()
                    .and_then(|l| self.inner.addresses.resolve(&l)),
            });
        }
        let read = peer.node.read_index(mode.unwrap_or(ReadMode::ReadIndex));
        match tokio::time::timeout(self.inner.request_timeout, read).await {
            // Checked once the replica applied up to the read point: a source frozen by
            // then may already be absorbed by its target, which takes writes to its keys.
            Ok(Ok(_)) => match peer.machine.merging() {
                Some(state) => Err(crate::state_machine::merging_refusal(&region, &state)),
                None => Ok(region),
            },
            Ok(Err(e)) => Err(self.node_error(id, e)),
            Err(_) => Err(KvError::Node {
                kind: "TimedOut".into(),
                message: format!(
                    "read of region {id} not confirmed within {:?}",
                    self.inner.request_timeout
                ),
            }),
        }
    }

    /// A linearizable get.
    pub async fn get(
        &self,
        id: RegionId,
        epoch: Epoch,
        key: Bytes,
        mode: Option<ReadMode>,
    ) -> Result<Option<Bytes>, KvError> {
        crate::limits::check_key(&key)?;
        let (_, region) = self.admit(id, epoch)?;
        region.check_key(&key)?;
        self.read_ready(id, epoch, mode).await?;
        self.inner.engine.get(&key)
    }

    /// The leases `keys` of region `id` follow (0: none), as this store's engine holds
    /// them now; all 0 at once for a region none of whose keys ever followed one.
    pub fn lease_marks(&self, id: RegionId, keys: &[Bytes]) -> Result<Vec<u64>, KvError> {
        let none = || Ok(vec![0; keys.len()]);
        let Some(peer) = self.peer(id) else {
            return none();
        };
        if !peer.machine.may_have_lease_keys() {
            return none();
        }
        keys.iter()
            .map(|key| {
                self.inner
                    .engine
                    .meta_get(&crate::lease::mark_key(key))?
                    .map_or(Ok(0), |mark| crate::lease::decode_mark(&mark))
            })
            .collect()
    }

    /// A linearizable multi-get (every key in the region).
    pub async fn multi_get(
        &self,
        id: RegionId,
        epoch: Epoch,
        keys: Vec<Bytes>,
        mode: Option<ReadMode>,
    ) -> Result<Vec<Option<Bytes>>, KvError> {
        crate::limits::check_batch_len(keys.len())?;
        let (_, region) = self.admit(id, epoch)?;
        for key in &keys {
            crate::limits::check_key(key)?;
            region.check_key(key)?;
        }
        self.read_ready(id, epoch, mode).await?;
        self.inner.engine.multi_get(&keys)
    }

    /// A linearizable scan of `[start, end)` clipped to the region (an empty `end`: to the
    /// region's end). With `keys_only` every value is empty: the engine scans keys only
    /// ([`KvEngine::scan_keys`]) and no value is copied. The answer stops at
    /// [`SCAN_REPLY_BYTES_MAX`] bytes of keys and values (after one pair at least): the
    /// flag is true when pairs under `limit` were left for another call.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        id: RegionId,
        epoch: Epoch,
        start: Bytes,
        end: Bytes,
        limit: usize,
        reverse: bool,
        keys_only: bool,
        mode: Option<ReadMode>,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), KvError> {
        crate::limits::check_scan_limit(limit)?;
        crate::limits::check_range(&start, &end)?;
        let (_, region) = self.admit(id, epoch)?;
        let start = if start < region.start {
            region.start.clone()
        } else {
            start
        };
        let end = match (end.is_empty(), region.end.is_empty()) {
            (true, _) => region.end.clone(),
            (false, true) => end,
            (false, false) => end.min(region.end.clone()),
        };
        if !end.is_empty() && start >= end {
            return Ok((Vec::new(), false));
        }
        self.read_ready(id, epoch, mode).await?;
        let engine = &self.inner.engine;
        if keys_only {
            let (keys, more) =
                engine.scan_keys(&start, &end, limit, reverse, SCAN_REPLY_BYTES_MAX)?;
            let pairs = keys.into_iter().map(|key| (key, Bytes::new())).collect();
            return Ok((pairs, more));
        }
        engine.scan_within(&start, &end, limit, reverse, SCAN_REPLY_BYTES_MAX)
    }

    /// Applies `command` through the region's raft log; answers its output once applied.
    /// `KvError::Unknown`: the command may or may not have applied.
    pub async fn write(
        &self,
        id: RegionId,
        epoch: Epoch,
        command: KvCommand,
    ) -> Result<KvOutput, KvError> {
        command.validate()?;
        let command = self.stamp_locks(id, command);
        if command.is_admin() {
            return Err(KvError::Refused(
                "a split or merge step is not a write: ask for it with `admin split` or \
                 `admin merge`"
                    .into(),
            ));
        }
        if self.inner.quota.alarm() {
            if let KvCommand::Batch(elements) = &command {
                if elements.iter().any(|e| !e.adds_data()) {
                    return self.write_without_additions(id, epoch, elements).await;
                }
            }
            if command.adds_data() {
                return Err(self.no_space());
            }
        }
        self.propose(id, epoch, command).await
    }

    /// The command with every lock operation in it stamped with the time this store (the
    /// region's leader, if the proposal is to succeed) gives it (`crate::lock`): whatever a
    /// client sent is replaced.
    fn stamp_locks(&self, id: RegionId, command: KvCommand) -> KvCommand {
        let is_lock = |c: &KvCommand| matches!(c, KvCommand::Lock { .. } | KvCommand::Lease { .. });
        let has_lock = match &command {
            KvCommand::Batch(elements) => elements.iter().any(is_lock),
            other => is_lock(other),
        };
        // Most writes hold no lock operation: no lookup for them.
        if !has_lock {
            return command;
        }
        let Some(peer) = self.peer(id) else {
            return command;
        };
        // The wall clock only seeds a fresh holder's token (`crate::lock`); before 1970 or
        // unreadable, 0 leaves tokens counting on.
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let stamp = |command: KvCommand| match command {
            KvCommand::Lock { name, op, .. } => KvCommand::Lock {
                now_ms: peer.machine.lock_stamp(&name),
                wall_ms,
                name,
                op,
            },
            KvCommand::Lease { key, op, .. } => KvCommand::Lease {
                now_ms: peer.machine.lease_stamp(&key),
                key,
                op,
            },
            other => other,
        };
        match command {
            KvCommand::Batch(elements) => {
                KvCommand::Batch(elements.into_iter().map(stamp).collect())
            }
            other => stamp(other),
        }
    }

    /// The NOSPACE refusal, with the last measurement.
    fn no_space(&self) -> KvError {
        KvError::NoSpace {
            store: format!("{} ({})", self.inner.advertise, self.inner.id),
            used: self.inner.quota.used_bytes(),
            quota: self.inner.quota.quota_bytes(),
        }
    }

    /// A batch of commands under the NOSPACE alarm: its elements that add data are refused
    /// (each with its own [`KvError::NoSpace`] result), the others (deletes) are applied.
    async fn write_without_additions(
        &self,
        id: RegionId,
        epoch: Epoch,
        elements: &[KvCommand],
    ) -> Result<KvOutput, KvError> {
        let kept: Vec<KvCommand> = elements
            .iter()
            .filter(|e| !e.adds_data())
            .cloned()
            .collect();
        let kept_count = kept.len();
        let KvOutput::Batch(applied) = self.propose(id, epoch, KvCommand::Batch(kept)).await?
        else {
            return Err(KvError::Unknown(
                "the state machine answered a batch with a single output".into(),
            ));
        };
        if applied.len() != kept_count {
            return Err(KvError::Unknown(format!(
                "the state machine answered {} results to a batch of {kept_count}",
                applied.len()
            )));
        }
        let refusal = self.no_space().to_string();
        let mut applied = applied.into_iter();
        let results = elements
            .iter()
            .map(|element| {
                if element.adds_data() {
                    Err(refusal.clone())
                } else {
                    applied.next().unwrap_or_else(|| Err(refusal.clone()))
                }
            })
            .collect();
        Ok(KvOutput::Batch(results))
    }

    /// Proposes a validated `command` through the region's raft log; answers its output
    /// once applied.
    async fn propose(
        &self,
        id: RegionId,
        epoch: Epoch,
        command: KvCommand,
    ) -> Result<KvOutput, KvError> {
        let (peer, region) = self.admit(id, epoch)?;
        command.check_region(&region)?;
        if !command.is_admin() {
            if let Some(state) = peer.machine.merging() {
                return Err(crate::state_machine::merging_refusal(&region, &state));
            }
        }
        if !peer.node.is_leader() {
            return Err(self.not_leader(id, &peer));
        }
        let encoded = command.encode();
        crate::limits::check_command_bytes(encoded.len())?;
        peer.load.record(&command);
        let apply = peer.node.apply(encoded, None);
        let output = match tokio::time::timeout(self.inner.request_timeout, apply).await {
            Ok(Ok(output)) => output,
            Ok(Err(NodeError::Raft(RaftError::StateMachine(why)))) => {
                return Err(completion_error(why))
            }
            Ok(Err(e)) => return Err(self.node_error(id, e)),
            Err(_) => {
                return Err(KvError::Unknown(format!(
                    "region {id}: not applied within {:?}; the write may still apply",
                    self.inner.request_timeout
                )))
            }
        };
        KvOutput::decode(&output)
            .map_err(|e| KvError::Unknown(format!("the state machine's answer: {e}")))
    }

    /// The first half of stopping: every region this store leads hands leadership to
    /// another peer (bounded by `handoff`), then the data directory is no longer measured.
    /// The store still answers: a transfer needs its peers' messages, so whatever serves the
    /// store keeps serving until this returns (`crate::server::StoreServer::shutdown`).
    pub async fn hand_off(&self, handoff: Duration) {
        let mut nodes: Vec<Node> = self.all_peers().into_iter().map(|p| p.node).collect();
        nodes.extend(self.meta_peer().map(|m| m.node));
        let transfers = nodes
            .into_iter()
            .filter(|node| node.is_leader() && node.list_peers().len() > 1)
            .map(|node| async move {
                let _ = tokio::time::timeout(handoff, node.transfer_leadership(None)).await;
            });
        futures_join_all(transfers).await;
        if let Some(task) = lock(&self.inner.usage_task).take() {
            task.abort();
        }
        if let Some(task) = lock(&self.inner.lease_task).take() {
            task.abort();
        }
    }

    /// The second half of stopping, once nothing serves the store any more: the runtime
    /// stops and the engine is flushed.
    pub async fn close(&self) {
        if let Some(task) = lock(&self.inner.lease_task).take() {
            task.abort();
        }
        if let Some(task) = lock(&self.inner.events_task).take() {
            task.abort();
        }
        self.stop_pd_tasks();
        self.inner.manager.shutdown().await;
        let engine = self.inner.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.flush()).await;
    }

    /// Sets the cluster everywhere this process keeps it (the store's view and the id its
    /// runtime checks frames against).
    fn set_cluster(&self, cluster: u64) {
        *lock(&self.inner.cluster) = cluster;
        self.inner.manager.set_cluster(cluster);
    }
}

/// Measures the data directory once (on the blocking pool) and records it.
async fn measure_usage(inner: &StoreInner) {
    let dir = inner.data_dir.clone();
    match tokio::task::spawn_blocking(move || quota::directory_bytes(&dir)).await {
        Ok(Ok(bytes)) => inner.quota.record(bytes, &inner.advertise),
        Ok(Err(why)) => {
            tracing::warn!(store = %inner.id, error = %why, "measuring the data dir failed; the NOSPACE alarm keeps its state");
        }
        Err(e) => {
            tracing::warn!(store = %inner.id, error = %e, "measuring the data dir panicked");
        }
    }
}

/// Measures the data directory every [`USAGE_INTERVAL`] while the store lives.
async fn measure_usage_every(inner: std::sync::Weak<StoreInner>) {
    let mut ticks = tokio::time::interval(USAGE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        measure_usage(&inner).await;
    }
}

/// Runs futures concurrently (a tiny `join_all`, to avoid a dependency for it).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        let _ = handle.await;
    }
}

/// Runs `futures` concurrently (as tasks) and collects their outputs, in order (a task
/// that panicked is left out).
async fn futures_join_all_values<T, F>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_node::StoreId;

    fn region(id: u64, start: &'static [u8], end: &'static [u8]) -> Region {
        Region::new(
            RegionId(id),
            Bytes::from_static(start),
            Bytes::from_static(end),
            Epoch::new(1, 1),
        )
        .expect("a valid region")
    }

    fn meta(regions: Vec<Region>) -> StoreMeta {
        StoreMeta {
            store: StoreId(1),
            cluster: 7,
            bootstrap: None,
            pd: None,
            regions: regions
                .into_iter()
                .map(|region| HostedRegion {
                    region,
                    initial_peers: Vec::new(),
                    start: None,
                })
                .collect(),
        }
    }

    fn refusal(result: Result<(), KvError>) -> String {
        match result {
            Err(KvError::RegionRefused(why)) => why,
            other => panic!("expected RegionRefused, got {other:?}"),
        }
    }

    #[test]
    fn open_region_refuses_overlaps_other_clusters_and_cluster_zero() {
        let hosted = meta(vec![region(1, b"", b"m"), region(2, b"m", b"t")]);
        assert!(refusal(check_open(&hosted, &region(9, b"a", b"c"), 7)).contains("overlaps"));
        assert!(refusal(check_open(&hosted, &region(9, b"s", b""), 7)).contains("overlaps"));
        assert!(refusal(check_open(&hosted, &region(9, b"", b""), 7)).contains("overlaps"));
        assert!(refusal(check_open(&hosted, &region(9, b"t", b""), 8)).contains("cluster"));
        assert!(refusal(check_open(&hosted, &region(9, b"t", b""), 0)).contains("cluster id 0"));
        // Adjacent ranges share no key.
        assert_eq!(check_open(&hosted, &region(9, b"t", b""), 7), Ok(()));
        // A store of no cluster yet takes any cluster's region.
        let empty = StoreMeta {
            cluster: 0,
            ..meta(Vec::new())
        };
        assert_eq!(check_open(&empty, &region(9, b"", b""), 5), Ok(()));
    }

    #[test]
    fn open_region_refuses_more_than_regions_per_store_max() {
        let mut full = meta(Vec::new());
        full.regions = (0..REGIONS_PER_STORE_MAX as u64)
            .map(|i| HostedRegion {
                region: Region::new(
                    RegionId(i + 1),
                    Bytes::from(i.to_be_bytes().to_vec()),
                    Bytes::from((i + 1).to_be_bytes().to_vec()),
                    Epoch::new(1, 1),
                )
                .expect("a valid region"),
                initial_peers: Vec::new(),
                start: None,
            })
            .collect();
        let next = region(u64::MAX, b"\xff", b"");
        assert!(refusal(check_open(&full, &next, 7)).contains("regions_per_store_max"));
        full.regions.pop();
        assert_eq!(check_open(&full, &next, 7), Ok(()));
        let adding = HostedRegion {
            region: next,
            initial_peers: Vec::new(),
            start: None,
        };
        assert_eq!(check_meta_size(&full, &adding), Ok(()));
    }
}
