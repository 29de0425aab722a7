//! [`KvClient`]: the Rust client of a Flotilla cluster (RheaKV's `RheaKVStore` client side).
//!
//! It keeps a route table (regions by start key, with the leader last seen), sends each
//! request to the region's leader (or, for follower reads, to any of its peers), follows
//! "not leader" hints, refreshes routes on a stale epoch or an unknown region, when a store
//! is unreachable, and every `route_refresh_every` in the background, and backs off on
//! "busy". A request whose connection was refused never left the client: it is a definite
//! failure, retried elsewhere even for a write. Concurrent single-key puts, deletes and gets to one region are batched
//! into one request, by draining what is queued while earlier batches are in flight —
//! never by waiting for a timer (RheaKV batches up to 100 ops or 32 KiB; so does this).
//! One batch per region and class is in flight normally; when a whole batch's worth of
//! ops waits behind it, another sender starts, up to `batches_in_flight_max`, so under a
//! heavy load the region's leader has the next batch to propose while one is being made
//! durable, and under a light one batches stay as large as they can be (each request
//! costs CPU on both ends).
//!
//! Owns: routing, retries and the outcome classification. Must never: retry a write whose
//! outcome is unknown (a timeout or a connection lost after sending): such a write is
//! answered with [`ClientError::indeterminate`] set, and the caller decides.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_node::grpc::{connect_channel, TlsConfig, ERROR_KIND_KEY, LEADER_KEY};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::region::Region;
use crate::service::proto::{self, kv_client::KvClient as GrpcKvClient};
use crate::service::{region_of, KV_MESSAGE_BYTES_MAX};

/// A KV service client on `channel` with the server's message limits both ways
/// ([`KV_MESSAGE_BYTES_MAX`]): tonic's 4 MiB default decoding limit would refuse a scan
/// reply the server is allowed to send (five 1 MiB values).
fn grpc_client(channel: Channel) -> GrpcKvClient<Channel> {
    GrpcKvClient::new(channel)
        .max_decoding_message_size(KV_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(KV_MESSAGE_BYTES_MAX)
}

/// How reads are made linearizable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// ReadIndex on the leader (one heartbeat round to a quorum).
    #[default]
    Index,
    /// The leader's lease (ReadIndex when the lease is not valid).
    Lease,
    /// Any peer of the region, after a ReadIndex from the leader.
    Follower,
}

impl std::str::FromStr for ReadConsistency {
    type Err = String;

    fn from_str(text: &str) -> Result<ReadConsistency, String> {
        match text {
            "index" => Ok(ReadConsistency::Index),
            "lease" => Ok(ReadConsistency::Lease),
            "follower" => Ok(ReadConsistency::Follower),
            other => Err(format!(
                "unknown read mode {other:?}: expected index, lease or follower"
            )),
        }
    }
}

impl ReadConsistency {
    fn proto(self) -> i32 {
        match self {
            ReadConsistency::Index => proto::ReadMode::ReadIndex as i32,
            ReadConsistency::Lease => proto::ReadMode::Lease as i32,
            ReadConsistency::Follower => proto::ReadMode::Follower as i32,
        }
    }
}

/// Tuning of a [`KvClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest one operation may take, retries included.
    pub timeout: Duration,
    /// Limit on connecting to one store.
    pub connect_timeout: Duration,
    /// Requests one operation may send (redirects and retries included; at least 1).
    pub attempts_max: usize,
    /// Batch concurrent single-key puts, deletes and gets per region.
    pub batching: bool,
    /// Most ops in one batch.
    pub batch_ops_max: usize,
    /// Most key and value bytes in one batch.
    pub batch_bytes_max: usize,
    /// Most batches of one region and class (writes, or gets of one read mode) in flight
    /// at once (at least 1).
    pub batches_in_flight_max: usize,
    /// Mutual TLS; `None`: plain text.
    pub tls: Option<TlsConfig>,
    /// Refresh the route table in the background this often, so that a client left idle
    /// while the stores are replaced one by one (containers moving) still knows current
    /// members when it is used again; `None`: only when a request needs it.
    pub route_refresh_every: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempts_max: 64,
            batching: true,
            batch_ops_max: 100,
            batch_bytes_max: 32 * 1024,
            batches_in_flight_max: 4,
            tls: None,
            route_refresh_every: Some(Duration::from_secs(5)),
        }
    }
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// The error kind (`NotLeader`, `KeyTooLarge`, `Unavailable`, `Unknown`, ...): the
    /// server's `flotilla-error-kind`, or the client's own.
    pub kind: String,
    /// What happened.
    pub message: String,
    /// True when a write may or may not have taken effect.
    pub indeterminate: bool,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if self.indeterminate {
            f.write_str(" (the outcome is unknown: the write may or may not have applied)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    fn definite(kind: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            kind: kind.to_string(),
            message: message.into(),
            indeterminate: false,
        }
    }

    fn unknown(message: impl Into<String>) -> ClientError {
        ClientError {
            kind: "Unknown".into(),
            message: message.into(),
            indeterminate: true,
        }
    }
}

/// A region as the client routes it.
#[derive(Clone, Debug)]
pub struct Route {
    /// The region.
    pub region: Region,
    /// Its leader as last seen.
    pub leader: Option<String>,
    /// Voters.
    pub peers: Vec<String>,
    /// Learners.
    pub learners: Vec<String>,
}

/// How a failed attempt is handled.
enum Next {
    /// Retry at the leader named (or another peer when `None`).
    Redirect(Option<String>),
    /// Routes are stale: refresh them and retry.
    Reroute,
    /// Transient refusal: back off and retry.
    Backoff,
    /// The outcome may be unknown (a write) / the peer may be gone (a read).
    Lost,
    /// Final: report it.
    Fail,
}

fn classify(status: &Status) -> (Next, ClientError) {
    let kind = status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let leader = status
        .metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let message = status.message().to_string();
    let Some(kind) = kind else {
        // No kind: the call failed below the service (connection lost, deadline).
        let error = match status.code() {
            Code::DeadlineExceeded => ClientError::unknown(format!("deadline exceeded: {message}")),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument => {
                ClientError::definite("InvalidArgument", message)
            }
            Code::Unimplemented => ClientError::definite("Unimplemented", message),
            _ => ClientError::unknown(format!("{:?}: {message}", status.code())),
        };
        let next = if error.indeterminate {
            Next::Lost
        } else {
            Next::Fail
        };
        return (next, error);
    };
    let next = match kind.as_str() {
        "NotLeader" => Next::Redirect(leader),
        "StaleEpoch" | "NoSuchRegion" | "NoSuchGroup" | "Removed" => Next::Reroute,
        "Busy" | "Transferring" | "LeaderNotReady" | "ReadLagging" | "ShutDown" => Next::Backoff,
        "Unknown" | "TimedOut" => Next::Lost,
        _ => Next::Fail,
    };
    let indeterminate = matches!(next, Next::Lost);
    (
        next,
        ClientError {
            kind,
            message,
            indeterminate,
        },
    )
}

/// One request of the KV service.
#[derive(Clone)]
enum Call {
    Get(proto::GetRequest),
    MultiGet(proto::MultiGetRequest),
    Scan(proto::ScanRequest),
    Write(proto::WriteRequest),
}

enum Reply {
    Get(proto::GetReply),
    MultiGet(proto::MultiGetReply),
    Scan(proto::ScanReply),
    Write(proto::WriteReply),
}

impl Call {
    fn set_context(&mut self, context: proto::RegionContext) {
        let slot = match self {
            Call::Get(r) => &mut r.context,
            Call::MultiGet(r) => &mut r.context,
            Call::Scan(r) => &mut r.context,
            Call::Write(r) => &mut r.context,
        };
        *slot = Some(context);
    }

    fn is_write(&self) -> bool {
        matches!(self, Call::Write(_))
    }

    fn read(&self) -> Option<ReadConsistency> {
        let mode = match self {
            Call::Get(r) => r.read,
            Call::MultiGet(r) => r.read,
            Call::Scan(r) => r.read,
            Call::Write(_) => return None,
        };
        Some(if mode == proto::ReadMode::Follower as i32 {
            ReadConsistency::Follower
        } else if mode == proto::ReadMode::Lease as i32 {
            ReadConsistency::Lease
        } else {
            ReadConsistency::Index
        })
    }

    async fn send(self, mut client: GrpcKvClient<Channel>) -> Result<Reply, Status> {
        Ok(match self {
            Call::Get(r) => Reply::Get(client.get(r).await?.into_inner()),
            Call::MultiGet(r) => Reply::MultiGet(client.multi_get(r).await?.into_inner()),
            Call::Scan(r) => Reply::Scan(client.scan(r).await?.into_inner()),
            Call::Write(r) => Reply::Write(client.write(r).await?.into_inner()),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch queue of one region (single-key ops of one class).
#[derive(Default)]
struct Batcher {
    queue: Mutex<BatchQueue>,
}

#[derive(Default)]
struct BatchQueue {
    pending: VecDeque<Pending>,
    /// Senders running (each sends one batch at a time); at most `batches_in_flight_max`.
    senders: usize,
}

enum Pending {
    Write {
        op: proto::Op,
        key: Bytes,
        bytes: usize,
        reply: oneshot::Sender<Result<proto::OpResult, ClientError>>,
    },
    Get {
        key: Bytes,
        reply: oneshot::Sender<Result<Option<Bytes>, ClientError>>,
    },
}

impl Pending {
    fn bytes(&self) -> usize {
        match self {
            Pending::Write { bytes, .. } => *bytes,
            Pending::Get { key, .. } => key.len(),
        }
    }
}

/// Which batch queue a single-key op joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum BatchClass {
    Write,
    Get(ReadConsistency),
}

struct ClientInner {
    endpoints: Vec<String>,
    options: ClientOptions,
    routes: RwLock<BTreeMap<Bytes, Route>>,
    refreshing: tokio::sync::Mutex<()>,
    channels: Mutex<HashMap<String, Channel>>,
    batchers: Mutex<HashMap<(u64, BatchClass), Arc<Batcher>>>,
    cluster: AtomicU64,
    /// Rotates follower reads and leaderless retries over the peers.
    rotation: AtomicUsize,
    /// Stores that refused a connection recently, and until when they are skipped.
    down: Mutex<HashMap<String, Instant>>,
    /// When an unreachable store last triggered a route refresh.
    unreachable_refresh: Mutex<Option<Instant>>,
    /// Requests sent (attempts included).
    requests_sent: AtomicU64,
    /// Single-key operations that went out in batches, and the batches.
    batched_ops: AtomicU64,
    batches_sent: AtomicU64,
}

/// Counters of a [`KvClient`] (shared by its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// KV requests sent, retries included.
    pub requests_sent: u64,
    /// Single-key operations sent in batches.
    pub batched_ops: u64,
    /// Batches sent (each one request per attempt).
    pub batches_sent: u64,
}

/// How long a store that refused a connection is skipped (unless no other is left).
const DOWN_FOR: Duration = Duration::from_millis(500);
/// Least time between two route refreshes caused by an unreachable store.
const UNREACHABLE_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A client of a Flotilla cluster. Cheap to clone; clones share routes and connections.
#[derive(Clone)]
pub struct KvClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for KvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvClient")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

/// The region holding `key` in `routes`.
fn route_in(routes: &BTreeMap<Bytes, Route>, key: &[u8]) -> Option<Route> {
    routes
        .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
        .next_back()
        .map(|(_, route)| route)
        .filter(|route| route.region.contains(key))
        .cloned()
}

impl KvClient {
    /// A client of the cluster reachable at `endpoints` (any of its stores; `host:port`).
    /// Fetches the routes once: fails if no endpoint answers.
    pub async fn connect(
        endpoints: Vec<String>,
        options: ClientOptions,
    ) -> Result<KvClient, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::definite(
                "InvalidArgument",
                "no endpoints given",
            ));
        }
        let client = KvClient {
            inner: Arc::new(ClientInner {
                endpoints,
                options: ClientOptions {
                    attempts_max: options.attempts_max.max(1),
                    batch_ops_max: options.batch_ops_max.max(1),
                    batches_in_flight_max: options.batches_in_flight_max.max(1),
                    ..options
                },
                routes: RwLock::new(BTreeMap::new()),
                refreshing: tokio::sync::Mutex::new(()),
                channels: Mutex::new(HashMap::new()),
                batchers: Mutex::new(HashMap::new()),
                cluster: AtomicU64::new(0),
                rotation: AtomicUsize::new(0),
                down: Mutex::new(HashMap::new()),
                unreachable_refresh: Mutex::new(None),
                requests_sent: AtomicU64::new(0),
                batched_ops: AtomicU64::new(0),
                batches_sent: AtomicU64::new(0),
            }),
        };
        client.refresh_routes().await?;
        if let Some(every) = client.inner.options.route_refresh_every {
            // Holds the client only while refreshing: it ends once every clone is dropped.
            let weak = Arc::downgrade(&client.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every.max(Duration::from_millis(100))).await;
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let _ = KvClient { inner }.refresh_routes().await;
                }
            });
        }
        Ok(client)
    }

    /// Counters since the client was made.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests_sent: self.inner.requests_sent.load(Ordering::Relaxed),
            batched_ops: self.inner.batched_ops.load(Ordering::Relaxed),
            batches_sent: self.inner.batches_sent.load(Ordering::Relaxed),
        }
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The cluster id the stores reported (0 if none did).
    #[must_use]
    pub fn cluster(&self) -> u64 {
        self.inner.cluster.load(Ordering::Relaxed)
    }

    /// The current route table, by start key.
    #[must_use]
    pub fn routes(&self) -> Vec<Route> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// A connected channel to `address` (cached).
    pub async fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        if let Some(channel) = lock(&self.inner.channels).get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                ClientError::definite("InvalidArgument", format!("endpoint {address:?}: {e}"))
            })?
            .connect_timeout(self.inner.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        // Through TLS when configured (the connector does the handshake over plain TCP).
        let channel = connect_channel(&endpoint, self.inner.options.tls.as_ref())
            .await
            .map_err(|e| {
                ClientError::definite(
                    "Unavailable",
                    format!("cannot connect to {address}: {}", error_chain(&e)),
                )
            })?;
        lock(&self.inner.channels).insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn forget_channel(&self, address: &str) {
        lock(&self.inner.channels).remove(address);
    }

    /// Every store's view of its regions: (store address, reply) for each endpoint and
    /// known peer that answered, and the errors of those that did not.
    pub async fn stores(&self) -> (Vec<proto::RegionsReply>, Vec<(String, ClientError)>) {
        let mut addresses: Vec<String> = self.inner.endpoints.clone();
        for route in self.routes() {
            for peer in route.peers.iter().chain(&route.learners) {
                if !peer.is_empty() && !addresses.contains(peer) {
                    addresses.push(peer.clone());
                }
            }
        }
        let mut replies = Vec::new();
        let mut errors = Vec::new();
        let asks: Vec<_> = addresses
            .into_iter()
            .map(|address| {
                let client = self.clone();
                tokio::spawn(async move {
                    let result = client.regions_of(&address).await;
                    (address, result)
                })
            })
            .collect();
        for ask in asks {
            if let Ok((address, result)) = ask.await {
                match result {
                    Ok(reply) => replies.push(reply),
                    Err(e) => errors.push((address, e)),
                }
            }
        }
        (replies, errors)
    }

    /// One store's view of its regions.
    pub async fn regions_of(&self, address: &str) -> Result<proto::RegionsReply, ClientError> {
        let channel = self.channel(address).await?;
        let mut client = grpc_client(channel);
        self.query(address, client.regions(proto::RegionsRequest {}))
            .await
    }

    /// One query of the store at `address` within the client's timeout; a refusal forgets
    /// the channel (the next call reconnects).
    async fn query<T>(
        &self,
        address: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.inner.options.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => {
                self.forget_channel(address);
                Err(classify(&status).1)
            }
            Err(_) => Err(ClientError::definite(
                "TimedOut",
                format!(
                    "{address} did not answer within {:?}",
                    self.inner.options.timeout
                ),
            )),
        }
    }

    /// Asks `store` to create an empty peer of `region` (see `Kv.OpenRegion`).
    pub async fn open_region(
        &self,
        store: &str,
        region: proto::RegionInfo,
    ) -> Result<proto::RegionsReply, ClientError> {
        self.open_region_expecting(store, None, region).await
    }

    /// [`KvClient::open_region`], refused unless the store at `store` is the store `id`
    /// (when given): an address may belong to another store by now.
    pub async fn open_region_expecting(
        &self,
        store: &str,
        id: Option<&str>,
        region: proto::RegionInfo,
    ) -> Result<proto::RegionsReply, ClientError> {
        let request = proto::OpenRegionRequest {
            region: Some(region),
            cluster: self.cluster(),
        };
        let request = self.addressed(store, id, request).await?;
        let channel = self.channel(store).await?;
        let mut client = grpc_client(channel);
        match tokio::time::timeout(self.inner.options.timeout, client.open_region(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify(&status).1),
            Err(_) => Err(ClientError::unknown(format!(
                "{store} did not answer within {:?}",
                self.inner.options.timeout
            ))),
        }
    }

    /// `message` as a request naming the store at `store` and its cluster (what calls that
    /// act on a store's regions must carry), after asking it who it is; refused when it is
    /// not the store `expected` (when given).
    async fn addressed<T>(
        &self,
        store: &str,
        expected: Option<&str>,
        message: T,
    ) -> Result<tonic::Request<T>, ClientError> {
        let reply = self.hello(store).await?;
        let id = reply.store.map(|s| s.id).unwrap_or_default();
        if let Some(expected) = expected.filter(|e| *e != id) {
            return Err(ClientError::definite(
                "WrongStore",
                format!("{store} is store {id} now, not {expected}"),
            ));
        }
        let mut request = tonic::Request::new(message);
        let store_id = tonic::metadata::MetadataValue::try_from(id.as_str()).map_err(|_| {
            ClientError::definite("InvalidAnswer", format!("{store}: store id {id:?}"))
        })?;
        let cluster = tonic::metadata::MetadataValue::try_from(format!("{:016x}", reply.cluster))
            .map_err(|_| ClientError::definite("InvalidAnswer", "cluster id"))?;
        request
            .metadata_mut()
            .insert(flotilla_node::grpc::STORE_KEY, store_id);
        request
            .metadata_mut()
            .insert(flotilla_node::grpc::CLUSTER_KEY, cluster);
        Ok(request)
    }

    /// Asks the store at `address` who it is (`Hello`, as a client: nothing is recorded).
    pub async fn hello(&self, address: &str) -> Result<proto::HelloReply, ClientError> {
        self.hello_with(address, proto::HelloRequest::default())
            .await
    }

    /// Tells the store at `address` that store `id` of cluster `cluster` is at `at` (what
    /// `admin` does for a store it adds, which has no `--peers` to announce itself to).
    pub async fn announce(
        &self,
        address: &str,
        id: &str,
        at: &str,
        cluster: u64,
    ) -> Result<proto::HelloReply, ClientError> {
        let request = proto::HelloRequest {
            from: Some(proto::StoreInfo {
                id: id.to_string(),
                address: at.to_string(),
            }),
            cluster,
            peers: Vec::new(),
        };
        self.hello_with(address, request).await
    }

    async fn hello_with(
        &self,
        address: &str,
        request: proto::HelloRequest,
    ) -> Result<proto::HelloReply, ClientError> {
        let channel = self.channel(address).await?;
        let mut client = grpc_client(channel);
        self.query(address, client.hello(request)).await
    }

    /// Asks `store` to close its peer of region `id`, opened by mistake (see
    /// `Kv.CloseRegion`).
    pub async fn close_region(
        &self,
        store: &str,
        id: u64,
    ) -> Result<proto::RegionsReply, ClientError> {
        self.close_region_expecting(store, None, id).await
    }

    /// [`KvClient::close_region`], refused unless the store at `store` is the store
    /// `store_id` (when given).
    pub async fn close_region_expecting(
        &self,
        store: &str,
        store_id: Option<&str>,
        id: u64,
    ) -> Result<proto::RegionsReply, ClientError> {
        let request = self
            .addressed(store, store_id, proto::CloseRegionRequest { region_id: id })
            .await?;
        let channel = self.channel(store).await?;
        let mut client = grpc_client(channel);
        match tokio::time::timeout(self.inner.options.timeout, client.close_region(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify(&status).1),
            Err(_) => Err(ClientError::unknown(format!(
                "{store} did not answer within {:?}",
                self.inner.options.timeout
            ))),
        }
    }

    /// Rebuilds the route table from what the stores report: per region the newest epoch,
    /// and the leader reported by the store that leads it with the highest term. A region
    /// reported without voters is not routed to.
    pub async fn refresh_routes(&self) -> Result<(), ClientError> {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        let (replies, errors) = self.stores().await;
        if replies.is_empty() {
            let detail = errors
                .iter()
                .map(|(a, e)| format!("{a}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ClientError::definite(
                "Unavailable",
                format!("no store answered ({detail})"),
            ));
        }
        let mut best: BTreeMap<u64, (proto::RegionInfo, bool)> = BTreeMap::new();
        for reply in &replies {
            if reply.cluster != 0 {
                self.inner.cluster.store(reply.cluster, Ordering::Relaxed);
            }
            for info in &reply.regions {
                if info.peers.is_empty() {
                    // A peer that belongs to no configuration (opened, not added yet; or
                    // opened by mistake): it serves nothing, and its range must not take
                    // the routes of the regions that do.
                    continue;
                }
                let leads = info.role == "leader";
                let better = match best.get(&info.id) {
                    None => true,
                    Some((old, old_leads)) => {
                        let new_key = (info.conf_version, info.version, leads, info.term);
                        let old_key = (old.conf_version, old.version, *old_leads, old.term);
                        new_key > old_key
                    }
                };
                if better {
                    best.insert(info.id, (info.clone(), leads));
                }
            }
        }
        let mut routes = BTreeMap::new();
        for (info, _) in best.into_values() {
            let Ok(region) = region_of(&info) else {
                continue;
            };
            routes.insert(
                region.start.clone(),
                Route {
                    region,
                    leader: (!info.leader.is_empty()).then(|| info.leader.clone()),
                    peers: info.peers.clone(),
                    learners: info.learners.clone(),
                },
            );
        }
        *self
            .inner
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = routes;
        Ok(())
    }

    async fn route(&self, key: &[u8]) -> Result<Route, ClientError> {
        let found = route_in(
            &self
                .inner
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            key,
        );
        if let Some(route) = found {
            return Ok(route);
        }
        self.refresh_routes().await?;
        route_in(
            &self
                .inner
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            key,
        )
        .ok_or_else(|| {
            ClientError::definite(
                "NoSuchRegion",
                format!("no region holds key {}", crate::error::show(key)),
            )
        })
    }

    fn set_leader(&self, region: &Region, leader: Option<String>) {
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(route) = routes.get_mut(&region.start) {
            if route.region.id == region.id {
                route.leader = leader;
            }
        }
    }

    fn is_down(&self, address: &str) -> bool {
        let mut down = lock(&self.inner.down);
        match down.get(address) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(address);
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, address: &str) {
        lock(&self.inner.down).insert(address.to_string(), Instant::now() + DOWN_FOR);
        self.refresh_soon();
    }

    /// A store is unreachable: the region may have members this client never heard of
    /// (membership changes do not bump the epoch yet, so no `StaleEpoch` would tell it), and
    /// once every store it knows is gone it could never find them. So refresh the routes in
    /// the background, at most once per [`UNREACHABLE_REFRESH_EVERY`], while some known store
    /// still answers (found by flotilla-chaos: after a few `drift` replacements every client
    /// was stuck on the original, removed stores while the cluster served).
    fn refresh_soon(&self) {
        {
            let mut last = lock(&self.inner.unreachable_refresh);
            if last.is_some_and(|at| at.elapsed() < UNREACHABLE_REFRESH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let client = self.clone();
        tokio::spawn(async move {
            let _ = client.refresh_routes().await;
        });
    }

    /// The store to send to: the leader (unless it is down), else the next live peer in
    /// rotation (any peer if all are down).
    fn pick(&self, route: &Route, follower: bool) -> Option<String> {
        if !follower {
            if let Some(leader) = &route.leader {
                if !self.is_down(leader) {
                    return Some(leader.clone());
                }
            }
        }
        let all: Vec<&String> = if follower {
            route.peers.iter().chain(&route.learners).collect()
        } else {
            route.peers.iter().collect()
        };
        let live: Vec<&String> = all.iter().copied().filter(|p| !self.is_down(p)).collect();
        let candidates = if live.is_empty() { all } else { live };
        if candidates.is_empty() {
            return None;
        }
        let turn = self.inner.rotation.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()].clone())
    }

    /// Sends `call` to the region holding `route_key`, with retries. Returns the reply and
    /// the region that answered.
    async fn call(&self, route_key: &[u8], call: Call) -> Result<(Reply, Region), ClientError> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.timeout;
        let write = call.is_write();
        let follower = call.read() == Some(ReadConsistency::Follower);
        let mut last = ClientError::definite("Unavailable", "no attempt was made");
        let mut backoff = Duration::from_millis(10);
        for attempt in 0..options.attempts_max {
            if attempt > 0 && Instant::now() >= deadline {
                break;
            }
            let route = self.route(route_key).await?;
            let Some(target) = self.pick(&route, follower) else {
                last = ClientError::definite(
                    "Unavailable",
                    format!("region {} has no known peers", route.region.id),
                );
                self.refresh_routes().await.ok();
                continue;
            };
            let channel = match self.channel(&target).await {
                Ok(channel) => channel,
                Err(error) => {
                    // Not sent: safe to try another peer.
                    self.mark_down(&target);
                    if route.leader.as_deref() == Some(target.as_str()) {
                        self.set_leader(&route.region, None);
                    }
                    last = error;
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            // A connection known to be down fails here, before anything is sent.
            if let Err(e) = tonic::client::Grpc::new(channel.clone()).ready().await {
                self.forget_channel(&target);
                self.mark_down(&target);
                self.set_leader(&route.region, None);
                last = ClientError::definite(
                    "Unavailable",
                    format!("{target} is unreachable: {}", error_chain(&e)),
                );
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut request = call.clone();
            request.set_context(proto::RegionContext {
                region_id: route.region.id.0,
                conf_version: route.region.epoch.conf_version,
                version: route.region.epoch.version,
            });
            self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
            let sent = request.send(grpc_client(channel));
            let status = match tokio::time::timeout(remaining, sent).await {
                Ok(Ok(reply)) => {
                    if !follower {
                        self.set_leader(&route.region, Some(target));
                    }
                    return Ok((reply, route.region));
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    let message = format!(
                        "{target} did not answer within the operation timeout ({:?})",
                        options.timeout
                    );
                    return Err(if write {
                        ClientError::unknown(message)
                    } else {
                        ClientError::definite("TimedOut", message)
                    });
                }
            };
            let (next, error) = classify(&status);
            match next {
                Next::Redirect(hint) => {
                    // A hint naming a store that is down (or the one asked) is stale: the
                    // group is electing; wait a little before asking again.
                    let hint = hint.filter(|h| *h != target && !self.is_down(h));
                    if hint.is_none() {
                        self.pause(&mut backoff, deadline).await;
                    }
                    self.set_leader(&route.region, hint);
                }
                Next::Reroute => {
                    self.refresh_routes().await.ok();
                }
                Next::Backoff => self.pause(&mut backoff, deadline).await,
                Next::Lost => {
                    // Whatever happened to this peer, the next request must neither assume
                    // it still leads nor reuse the connection that failed — for writes too:
                    // a client that only writes would otherwise send every later write to a
                    // dead leader for ever, each failing at once with "tcp connect error"
                    // (found by flotilla-chaos: `--nemesis drift,kill --nodes 3 --seed 21`).
                    self.forget_channel(&target);
                    self.set_leader(&route.region, None);
                    if never_sent(&status) {
                        // Refused before anything was sent: a definite failure of this
                        // attempt, and another store may be tried, even for a write.
                        self.mark_down(&target);
                        last = ClientError::definite(
                            "Unavailable",
                            format!("{target} refused the connection: {}", error.message),
                        );
                        if Instant::now() >= deadline {
                            break;
                        }
                        self.pause(&mut backoff, deadline).await;
                        continue;
                    }
                    if write {
                        return Err(ClientError {
                            indeterminate: true,
                            ..error
                        });
                    }
                }
                Next::Fail => return Err(error),
            }
            last = error;
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(ClientError {
            indeterminate: false,
            message: format!("gave up: {}", last.message),
            ..last
        })
    }

    /// Sleeps `backoff` (not past `deadline`) and doubles it, up to 200 ms.
    async fn pause(&self, backoff: &mut Duration, deadline: Instant) {
        let pause = (*backoff).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        *backoff = (*backoff * 2).min(Duration::from_millis(200));
    }

    // ---- reads ----

    /// The value of `key` (`None`: absent).
    pub async fn get(
        &self,
        key: impl Into<Bytes>,
        read: ReadConsistency,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        if self.inner.options.batching {
            let route = self.route(&key).await?;
            let (reply, answer) = oneshot::channel();
            self.enqueue(&route, BatchClass::Get(read), Pending::Get { key, reply });
            return answer
                .await
                .unwrap_or_else(|_| Err(ClientError::definite("ShutDown", "the client stopped")));
        }
        let call = Call::Get(proto::GetRequest {
            context: None,
            key: key.clone(),
            read: read.proto(),
        });
        match self.call(&key, call).await? {
            (Reply::Get(r), _) => Ok(r.found.then_some(r.value)),
            _ => Err(wrong_reply()),
        }
    }

    /// The values of `keys`, in order (split over their regions).
    pub async fn multi_get(
        &self,
        keys: Vec<Bytes>,
        read: ReadConsistency,
    ) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut values = vec![None; keys.len()];
        for (route_key, indexes) in self.group_by_region(&keys).await? {
            let part: Vec<Bytes> = indexes.iter().map(|&i| keys[i].clone()).collect();
            let call = Call::MultiGet(proto::MultiGetRequest {
                context: None,
                keys: part,
                read: read.proto(),
            });
            let Reply::MultiGet(reply) = self.call(&route_key, call).await?.0 else {
                return Err(wrong_reply());
            };
            if reply.values.len() != indexes.len() {
                return Err(wrong_reply());
            }
            for (i, value) in indexes.into_iter().zip(reply.values) {
                values[i] = value.found.then_some(value.value);
            }
        }
        Ok(values)
    }

    /// Up to `limit` pairs of `[start, end)` (an empty `end`: unbounded), ascending, or
    /// descending from the end when `reverse`, across regions.
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: usize,
        reverse: bool,
        read: ReadConsistency,
    ) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        self.scan_pairs(start.into(), end.into(), limit, reverse, false, read)
            .await
    }

    /// The keys of [`KvClient::scan`]'s pairs: no value is read by the store or sent.
    pub async fn scan_keys(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: usize,
        reverse: bool,
        read: ReadConsistency,
    ) -> Result<Vec<Bytes>, ClientError> {
        let pairs = self
            .scan_pairs(start.into(), end.into(), limit, reverse, true, read)
            .await?;
        Ok(pairs.into_iter().map(|(key, _)| key).collect())
    }

    async fn scan_pairs(
        &self,
        start: Bytes,
        end: Bytes,
        limit: usize,
        reverse: bool,
        keys_only: bool,
        read: ReadConsistency,
    ) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        if !end.is_empty() && start > end {
            return Err(ClientError::definite(
                "InvalidRange",
                format!(
                    "scan start {} is after end {}",
                    crate::error::show(&start),
                    crate::error::show(&end)
                ),
            ));
        }
        crate::limits::check_scan_limit(limit)
            .map_err(|e| ClientError::definite("ScanLimitTooLarge", e.to_string()))?;
        let mut out = Vec::new();
        let mut regions = self.regions_overlapping(&start, &end).await?;
        if reverse {
            regions.reverse();
        }
        for region in regions {
            if out.len() >= limit {
                break;
            }
            let route_key = if start > region.start {
                start.clone()
            } else {
                region.start.clone()
            };
            let mut part_start = route_key.clone();
            let mut part_end = end.clone();
            // Pages of one region: a store answers at most scan_reply_bytes_max of keys and
            // values and says when it left pairs for another call.
            while out.len() < limit {
                let call = Call::Scan(proto::ScanRequest {
                    context: None,
                    start: part_start.clone(),
                    end: part_end.clone(),
                    limit: u32::try_from(limit - out.len()).unwrap_or(u32::MAX),
                    reverse,
                    keys_only,
                    read: read.proto(),
                });
                let Reply::Scan(reply) = self.call(&route_key, call).await?.0 else {
                    return Err(wrong_reply());
                };
                let last = reply.entries.last().map(|kv| kv.key.clone());
                out.extend(reply.entries.into_iter().map(|kv| (kv.key, kv.value)));
                let Some(last) = last.filter(|_| reply.more) else {
                    break;
                };
                if reverse {
                    part_end = last;
                } else {
                    // The smallest key after `last`.
                    let mut next = Vec::with_capacity(last.len() + 1);
                    next.extend_from_slice(&last);
                    next.push(0);
                    part_start = Bytes::from(next);
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    // ---- writes ----

    async fn write_one(
        &self,
        key: Bytes,
        op: proto::op::Op,
    ) -> Result<proto::OpResult, ClientError> {
        let op = proto::Op { op: Some(op) };
        if self.inner.options.batching {
            let route = self.route(&key).await?;
            let bytes = key.len() + op_value_len(&op);
            let (reply, answer) = oneshot::channel();
            self.enqueue(
                &route,
                BatchClass::Write,
                Pending::Write {
                    op,
                    key,
                    bytes,
                    reply,
                },
            );
            return answer.await.unwrap_or_else(|_| {
                Err(ClientError::unknown("the client stopped before the answer"))
            });
        }
        let call = Call::Write(proto::WriteRequest {
            context: None,
            ops: vec![op],
        });
        match self.call(&key, call).await? {
            (Reply::Write(mut r), _) if r.results.len() == 1 => Ok(r.results.remove(0)),
            _ => Err(wrong_reply()),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let key = key.into();
        let op = proto::op::Op::Put(proto::Put {
            key: key.clone(),
            value: value.into(),
        });
        done(self.write_one(key, op).await?)
    }

    /// Removes `key`.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<(), ClientError> {
        let key = key.into();
        let op = proto::op::Op::Delete(proto::Delete { key: key.clone() });
        done(self.write_one(key, op).await?)
    }

    /// Sets `key` to `value` if it holds `expected` (`None`: if absent). Answers whether
    /// it did.
    pub async fn compare_and_put(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        let key = key.into();
        let op = proto::op::Op::CompareAndPut(proto::CompareAndPut {
            key: key.clone(),
            expected,
            value: value.into(),
        });
        swapped(self.write_one(key, op).await?)
    }

    /// Sets `key` to `value` if absent; answers the value that was there (`None`: the put
    /// happened).
    pub async fn put_if_absent(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let op = proto::op::Op::PutIfAbsent(proto::Put {
            key: key.clone(),
            value: value.into(),
        });
        previous(self.write_one(key, op).await?)
    }

    /// Sets `key` to `value`; answers the value it replaced.
    pub async fn get_and_put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let op = proto::op::Op::GetAndPut(proto::Put {
            key: key.clone(),
            value: value.into(),
        });
        previous(self.write_one(key, op).await?)
    }

    /// Sets every pair: atomically within each region, region by region.
    pub async fn batch_put(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<(), ClientError> {
        let keys: Vec<Bytes> = pairs.iter().map(|(k, _)| k.clone()).collect();
        for (route_key, indexes) in self.group_by_region(&keys).await? {
            let ops = indexes
                .iter()
                .map(|&i| proto::Op {
                    op: Some(proto::op::Op::Put(proto::Put {
                        key: pairs[i].0.clone(),
                        value: pairs[i].1.clone(),
                    })),
                })
                .collect();
            let call = Call::Write(proto::WriteRequest { context: None, ops });
            let Reply::Write(reply) = self.call(&route_key, call).await?.0 else {
                return Err(wrong_reply());
            };
            for result in reply.results {
                done(result)?;
            }
        }
        Ok(())
    }

    /// Removes every key of `[start, end)` (an empty `end`: unbounded), region by region.
    pub async fn delete_range(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let (start, end) = (start.into(), end.into());
        if !end.is_empty() && start > end {
            return Err(ClientError::definite(
                "InvalidRange",
                "delete-range start is after its end",
            ));
        }
        for region in self.regions_overlapping(&start, &end).await? {
            let part_start = if start > region.start {
                start.clone()
            } else {
                region.start.clone()
            };
            let part_end = match (end.is_empty(), region.end.is_empty()) {
                (true, _) => region.end.clone(),
                (false, true) => end.clone(),
                (false, false) => end.clone().min(region.end.clone()),
            };
            let op = proto::Op {
                op: Some(proto::op::Op::DeleteRange(proto::DeleteRange {
                    start: part_start.clone(),
                    end: part_end,
                })),
            };
            let call = Call::Write(proto::WriteRequest {
                context: None,
                ops: vec![op],
            });
            let Reply::Write(reply) = self.call(&part_start, call).await?.0 else {
                return Err(wrong_reply());
            };
            for result in reply.results {
                done(result)?;
            }
        }
        Ok(())
    }

    // ---- splitting over regions ----

    async fn group_by_region(
        &self,
        keys: &[Bytes],
    ) -> Result<Vec<(Bytes, Vec<usize>)>, ClientError> {
        let mut groups: BTreeMap<u64, (Bytes, Vec<usize>)> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let route = self.route(key).await?;
            groups
                .entry(route.region.id.0)
                .or_insert_with(|| (key.clone(), Vec::new()))
                .1
                .push(i);
        }
        Ok(groups.into_values().collect())
    }

    async fn regions_overlapping(
        &self,
        start: &Bytes,
        end: &Bytes,
    ) -> Result<Vec<Region>, ClientError> {
        // Make sure the region of `start` is known (refreshes the table if not).
        self.route(start).await?;
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(routes
            .values()
            .map(|r| r.region.clone())
            .filter(|r| {
                let after_start = r.end.is_empty() || r.end.as_ref() > start.as_ref();
                let before_end = end.is_empty() || r.start.as_ref() < end.as_ref();
                after_start && before_end
            })
            .collect())
    }

    // ---- batching ----

    fn enqueue(&self, route: &Route, class: BatchClass, pending: Pending) {
        let batcher = lock(&self.inner.batchers)
            .entry((route.region.id.0, class))
            .or_default()
            .clone();
        let start = {
            let mut queue = lock(&batcher.queue);
            queue.pending.push_back(pending);
            let start = starts_sender(queue.senders, queue.pending.len(), &self.inner.options);
            if start {
                queue.senders += 1;
            }
            start
        };
        if start {
            let client = self.clone();
            tokio::spawn(async move { client.drain(batcher, class).await });
        }
    }

    /// One sender: sends what `batcher` holds, batch after batch, until it is empty (other
    /// senders of the same queue may run meanwhile).
    async fn drain(&self, batcher: Arc<Batcher>, class: BatchClass) {
        loop {
            let batch: Vec<Pending> = {
                let mut queue = lock(&batcher.queue);
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(next) = queue.pending.front() {
                    let size = next.bytes();
                    if !batch.is_empty()
                        && (batch.len() >= self.inner.options.batch_ops_max
                            || bytes + size > self.inner.options.batch_bytes_max)
                    {
                        break;
                    }
                    bytes += size;
                    if let Some(p) = queue.pending.pop_front() {
                        batch.push(p);
                    }
                }
                if batch.is_empty() {
                    queue.senders -= 1;
                    return;
                }
                batch
            };
            self.inner.batches_sent.fetch_add(1, Ordering::Relaxed);
            self.inner
                .batched_ops
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            match class {
                BatchClass::Write => self.send_write_batch(batch).await,
                BatchClass::Get(read) => self.send_get_batch(batch, read).await,
            }
        }
    }

    async fn send_write_batch(&self, batch: Vec<Pending>) {
        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut route_key = None;
        for pending in batch {
            if let Pending::Write { op, key, reply, .. } = pending {
                route_key.get_or_insert(key);
                ops.push(op);
                replies.push(reply);
            }
        }
        let Some(route_key) = route_key else { return };
        let call = Call::Write(proto::WriteRequest { context: None, ops });
        match self.call(&route_key, call).await {
            Ok((Reply::Write(reply), _)) if reply.results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(reply.results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(wrong_reply_unknown()));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    async fn send_get_batch(&self, batch: Vec<Pending>, read: ReadConsistency) {
        let mut keys = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for pending in batch {
            if let Pending::Get { key, reply } = pending {
                keys.push(key);
                replies.push(reply);
            }
        }
        let Some(route_key) = keys.first().cloned() else {
            return;
        };
        let call = if keys.len() == 1 {
            Call::Get(proto::GetRequest {
                context: None,
                key: route_key.clone(),
                read: read.proto(),
            })
        } else {
            Call::MultiGet(proto::MultiGetRequest {
                context: None,
                keys,
                read: read.proto(),
            })
        };
        match self.call(&route_key, call).await {
            Ok((Reply::Get(reply), _)) if replies.len() == 1 => {
                for reply_to in replies {
                    let _ = reply_to.send(Ok(reply.found.then(|| reply.value.clone())));
                }
            }
            Ok((Reply::MultiGet(reply), _)) if reply.values.len() == replies.len() => {
                for (reply_to, value) in replies.into_iter().zip(reply.values) {
                    let _ = reply_to.send(Ok(value.found.then_some(value.value)));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(wrong_reply()));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Whether an op queued behind `senders` running senders, leaving `pending` ops waiting,
/// starts another sender: the first always; more only once a whole batch waits.
fn starts_sender(senders: usize, pending: usize, options: &ClientOptions) -> bool {
    senders == 0 || (senders < options.batches_in_flight_max && pending >= options.batch_ops_max)
}

fn op_value_len(op: &proto::Op) -> usize {
    use proto::op::Op;
    match &op.op {
        Some(Op::Put(p) | Op::PutIfAbsent(p) | Op::GetAndPut(p)) => p.value.len(),
        Some(Op::CompareAndPut(c)) => c.value.len() + c.expected.as_ref().map_or(0, Bytes::len),
        _ => 0,
    }
}

fn wrong_reply() -> ClientError {
    ClientError::definite("InvalidAnswer", "the store answered with a malformed reply")
}

fn wrong_reply_unknown() -> ClientError {
    ClientError::unknown("the store answered a write with a malformed reply")
}

/// The kind of an op refused inside a batch, whose result carries only the message: the
/// refusals a caller acts on keep their kind, the rest are `Refused`.
fn element_error_kind(message: &str) -> &'static str {
    // The texts of `KvError::NoSpace` and `KvError::KeyEmpty` (a test checks they match).
    if message.starts_with("no space:") {
        "NoSpace"
    } else if message == "key is empty" {
        "KeyEmpty"
    } else {
        "Refused"
    }
}

fn op_error(result: &proto::OpResult) -> Option<ClientError> {
    match &result.result {
        Some(proto::op_result::Result::Error(why)) => {
            Some(ClientError::definite(element_error_kind(why), why.clone()))
        }
        None => Some(wrong_reply_unknown()),
        _ => None,
    }
}

fn done(result: proto::OpResult) -> Result<(), ClientError> {
    match op_error(&result) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn swapped(result: proto::OpResult) -> Result<bool, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Swapped(swapped)) => Ok(swapped),
        _ => Err(wrong_reply_unknown()),
    }
}

fn previous(result: proto::OpResult) -> Result<Option<Bytes>, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Previous(value)) => Ok(value.found.then_some(value.value)),
        _ => Err(wrong_reply_unknown()),
    }
}

/// `error` and its sources, joined.
/// True if `status` says the request never left this client: the connection it needed was
/// refused or could not be made (tonic reconnects a cached channel lazily, so a store that
/// died shows up here, not when the channel is checked). Nothing reached the store, so even
/// a write may be sent elsewhere without risking a duplicate.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        // hyper-util's connector error: the TCP connect itself failed.
        if cause.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = cause.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request on a channel whose store refuses connections fails as "never sent"; a
    /// request that timed out, or a status without a transport cause, does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_known_to_have_sent_nothing() {
        // A port that was just free: bound, then released, so nothing listens on it.
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address")
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        let status = GrpcKvClient::new(channel)
            .get(proto::GetRequest {
                context: None,
                key: Bytes::from_static(b"k"),
                read: 0,
            })
            .await
            .expect_err("nothing listens there");
        assert!(
            never_sent(&status),
            "not recognised as never sent: {status:?} ({})",
            error_chain(&status)
        );
        assert!(!never_sent(&Status::unavailable("connection reset")));
        assert!(!never_sent(&Status::deadline_exceeded("slow")));
    }

    #[test]
    fn batch_element_refusals_keep_their_kind() {
        let no_space = crate::KvError::NoSpace {
            store: "s:1".into(),
            used: 2,
            quota: 1,
        };
        assert_eq!(element_error_kind(&no_space.to_string()), "NoSpace");
        assert_eq!(
            element_error_kind(&crate::KvError::KeyEmpty.to_string()),
            "KeyEmpty"
        );
        assert_eq!(
            element_error_kind("key \"z\" is outside region 1"),
            "Refused"
        );
    }

    #[test]
    fn a_second_batch_goes_out_only_once_a_whole_batch_waits() {
        let options = ClientOptions {
            batch_ops_max: 100,
            batches_in_flight_max: 3,
            ..ClientOptions::default()
        };
        assert!(
            starts_sender(0, 1, &options),
            "nothing in flight: send at once"
        );
        assert!(
            !starts_sender(1, 1, &options),
            "a lone op waits to join the next batch"
        );
        assert!(!starts_sender(1, 99, &options));
        assert!(
            starts_sender(1, 100, &options),
            "a full batch waits: send it now"
        );
        assert!(starts_sender(2, 150, &options));
        assert!(
            !starts_sender(3, 1000, &options),
            "never more than batches_in_flight_max"
        );
    }
}
