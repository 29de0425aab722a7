//! [`KvClient`]: the Rust client of a Flotilla cluster (RheaKV's `RheaKVStore` client side).
//!
//! It keeps a route table (regions by start key, with the leader last seen), sends each
//! request to the region's leader (or, for follower reads, to any of its peers), follows
//! "not leader" hints, refreshes routes on a stale epoch or an unknown region, when a store
//! is unreachable, and every `route_refresh_every` in the background, and backs off on
//! "busy". A request whose connection was refused never left the client: it is a definite
//! failure, retried elsewhere even for a write. Concurrent single-key puts, deletes and
//! gets to one region are batched into one request, by draining what is queued while
//! earlier batches are in flight — never by waiting for a timer (RheaKV batches up to 100
//! ops or 32 KiB; so does this). One batch per region and class is in flight normally;
//! when a whole batch's worth of ops waits behind it, another sender starts, up to
//! `batches_in_flight_max`, so under a heavy load the region's leader has the next batch
//! to propose while one is being made durable, and under a light one batches stay as
//! large as they can be (each request costs CPU on both ends).
//!
//! The parts, each in its own file, below this one: `routing` (the route table: which
//! region, which store), `connection` (a channel per store, the stores skipped for now,
//! the KV calls), `retry` (what a failed attempt means, the backoff), `batch` (the batch
//! queues and what a batch becomes), `error` ([`ClientError`] and what an op's result
//! means) and `options`. This file holds [`KvClient`]'s public surface and the one loop
//! that sends a request with retries.
//!
//! Owns: routing, retries and the outcome classification. Must never: retry a write whose
//! outcome is unknown (a timeout or a connection lost after sending): such a write is
//! answered with [`ClientError::indeterminate`] set, and the caller decides.

mod alive;
mod batch;
mod connection;
mod error;
mod lease;
mod options;
mod retry;
mod routing;
mod watch;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::region::Region;
use crate::service::proto;
use batch::{op_value_len, BatchClass, Batcher, Batchers, Pending};
use connection::{grpc_client, Call, Connections, Reply};
pub use error::ClientError;
use error::{
    counter, done, error_chain, key_moved, lock_state, previous, range, swapped, wrong_reply,
    wrong_reply_unknown,
};
pub use lease::{KeepAliveStream, LeaseKeeper};
pub use options::{ClientOptions, ReadConsistency};
use retry::{classify, never_sent, pause, stale_region, Next, BACKOFF_FIRST};
pub use routing::Route;
use routing::{covers_key_space, RouteTable, STORES_LEARNED_MAX};
pub use watch::{WatchError, WatchEvent, WatchEventKind, Watcher};
pub use watchdog::LockWatchdog;

/// Pause before an op whose key left its region is routed again (the stores' reports
/// catch up with a split within a few rounds).
const KEY_MOVED_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether a write op's result is a refusal because its key left the region it was sent
/// to (nothing was written).
fn moved(result: &proto::OpResult) -> bool {
    matches!(&result.result, Some(proto::op_result::Result::Error(why)) if key_moved(why))
}

/// Whether a request was refused, changing nothing, because a key it carried is not in
/// the region it was sent to (the region split since the client routed it).
fn left_region(error: &ClientError) -> bool {
    (error.kind == "KeyOutOfRegion" || error.kind == crate::state_machine::MERGING_KIND)
        && !error.indeterminate
}

struct ClientInner {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// The route table and the pace of its refreshes.
    routes: RouteTable,
    /// A channel per store, and the stores skipped for now.
    connections: Connections,
    /// The batch queues, by region and class.
    batchers: Batchers,
    /// Requests sent (attempts included).
    requests_sent: AtomicU64,
    /// Single-key operations that went out in batches, and the batches.
    batched_ops: AtomicU64,
    batches_sent: AtomicU64,
    /// Leases seen alive, and until when they surely are (`lease`).
    leases_alive: alive::AliveCache,
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
        let connections = Connections::new(options.connect_timeout, options.tls.clone());
        let client = KvClient {
            inner: Arc::new(ClientInner {
                endpoints,
                options: ClientOptions {
                    attempts_max: options.attempts_max.max(1),
                    batch_ops_max: options.batch_ops_max.max(1),
                    batches_in_flight_max: options.batches_in_flight_max.max(1),
                    ..options
                },
                routes: RouteTable::new(),
                connections,
                batchers: Batchers::default(),
                requests_sent: AtomicU64::new(0),
                batched_ops: AtomicU64::new(0),
                batches_sent: AtomicU64::new(0),
                leases_alive: alive::AliveCache::default(),
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
        self.inner.routes.cluster()
    }

    /// The current route table, by start key.
    #[must_use]
    pub fn routes(&self) -> Vec<Route> {
        self.inner.routes.all()
    }

    /// A connected channel to `address` (cached).
    pub async fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        self.inner.connections.channel(address).await
    }

    fn forget_channel(&self, address: &str) {
        self.inner.connections.forget(address);
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
        let (mut replies, mut errors) = self.ask_stores(addresses.clone()).await;
        // The stores asked may not hold every region (a client given only a store that
        // joined and holds nothing yet): then ask the stores their address books name
        // (every store learns every other's address from the placement driver).
        if !covers_key_space(&replies) {
            let more: Vec<String> = replies
                .iter()
                .flat_map(|r| r.stores.iter().map(|s| s.address.clone()))
                .filter(|a| !a.is_empty() && !addresses.contains(a) && !self.is_down(a))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .take(STORES_LEARNED_MAX)
                .collect();
            if !more.is_empty() {
                let (r, e) = self.ask_stores(more).await;
                replies.extend(r);
                errors.extend(e);
            }
        }
        (replies, errors)
    }

    /// Asks each of `addresses` for its regions, all at once.
    async fn ask_stores(
        &self,
        addresses: Vec<String>,
    ) -> (Vec<proto::RegionsReply>, Vec<(String, ClientError)>) {
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

    /// Asks the store at `store`, which must lead region `id`, to split it at `key`
    /// (`admin split`). Does not retry: a `NotLeader` refusal names the leader when known.
    pub async fn split_region(
        &self,
        store: &str,
        id: u64,
        key: Bytes,
    ) -> Result<proto::SplitRegionReply, ClientError> {
        let channel = self.channel(store).await?;
        let mut client = grpc_client(channel);
        let request = proto::SplitRegionRequest {
            region_id: id,
            key,
            version: 0,
            by_load: false,
        };
        match tokio::time::timeout(self.inner.options.timeout, client.split_region(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify(&status).1),
            Err(_) => Err(ClientError::unknown(format!(
                "{store} did not answer within {:?}; the split may still happen",
                self.inner.options.timeout
            ))),
        }
    }

    /// Asks the store at `store`, which must lead region `id`, for a snapshot of it that
    /// holds every write acknowledged before the call (`admin backup`). Does not retry: a
    /// `NotLeader` refusal names the leader when known.
    pub async fn backup_region(
        &self,
        store: &str,
        id: u64,
    ) -> Result<proto::BackupRegionReply, ClientError> {
        let channel = self.channel(store).await?;
        let mut client = grpc_client(channel);
        let request = proto::BackupRegionRequest { region_id: id };
        match tokio::time::timeout(self.inner.options.timeout, client.backup_region(request)).await
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify(&status).1),
            Err(_) => Err(ClientError::definite(
                "TimedOut",
                format!(
                    "{store} did not make region {id}'s snapshot within {:?}",
                    self.inner.options.timeout
                ),
            )),
        }
    }

    /// Rebuilds the route table from what the stores report: per region the newest epoch,
    /// and the leader reported by the store that leads it with the highest term. A region
    /// reported without voters is not routed to.
    pub async fn refresh_routes(&self) -> Result<(), ClientError> {
        let _one_at_a_time = self.inner.routes.one_refresh_at_a_time().await;
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
        self.inner.routes.install(&replies);
        Ok(())
    }

    /// The region holding `key`, asking the stores again while none does: right after a
    /// split the stores may report the smaller parent before the child has a leader to
    /// report it, so a key can be in no region for a moment. Gives up with `NoSuchRegion`
    /// after the client's timeout.
    async fn route(&self, key: &[u8]) -> Result<Route, ClientError> {
        if let Some(route) = self.inner.routes.lookup(key) {
            return Ok(route);
        }
        let deadline = tokio::time::Instant::now() + self.inner.options.timeout;
        let mut pause = KEY_MOVED_PAUSE;
        loop {
            self.refresh_routes().await?;
            if let Some(route) = self.inner.routes.lookup(key) {
                return Ok(route);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::definite(
                    "NoSuchRegion",
                    format!("no region holds key {}", crate::error::show(key)),
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
        }
    }

    fn set_leader(&self, region: &Region, leader: Option<String>) {
        self.inner.routes.set_leader(region, leader);
    }

    fn is_down(&self, address: &str) -> bool {
        self.inner.connections.is_down(address)
    }

    fn mark_down(&self, address: &str) {
        self.inner.connections.mark_down(address);
        self.refresh_soon();
    }

    /// A store is unreachable: the region may have members this client never heard of
    /// (a data request checks only the epoch's `version`, so no `StaleEpoch` tells it), and
    /// once every store it knows is gone it could never find them. So refresh the routes in
    /// the background, at most once per [`UNREACHABLE_REFRESH_EVERY`], while some known store
    /// still answers (found by flotilla-chaos: after a few `drift` replacements every client
    /// was stuck on the original, removed stores while the cluster served).
    fn refresh_soon(&self) {
        if !self.inner.routes.unreachable_refresh_due() {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            let _ = client.refresh_routes().await;
        });
    }

    /// The store to send to: the leader (unless it is down), else the next live peer in
    /// rotation (any peer if all are down).
    fn pick(&self, route: &Route, follower: bool) -> Option<String> {
        self.inner
            .routes
            .pick(route, follower, |address| self.is_down(address))
    }

    /// Sends `call` to the region holding `route_key`, with retries. Returns the reply and
    /// the region that answered.
    async fn call(&self, route_key: &[u8], call: Call) -> Result<(Reply, Region), ClientError> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.timeout;
        let write = call.is_write();
        let follower = call.read() == Some(ReadConsistency::Follower);
        let mut last = ClientError::definite("Unavailable", "no attempt was made");
        let mut backoff = BACKOFF_FIRST;
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
                    pause(&mut backoff, deadline).await;
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
                        pause(&mut backoff, deadline).await;
                    }
                    self.set_leader(&route.region, hint);
                }
                Next::Reroute => {
                    // A stale epoch names the region as it is now: take it in and retry
                    // at once; anything else (or a key it no longer holds) asks the stores.
                    let adopted = stale_region(&status)
                        .is_some_and(|now| self.inner.routes.adopt(&route, now));
                    if !adopted || self.inner.routes.lookup(route_key).is_none() {
                        self.refresh_routes().await.ok();
                    }
                }
                Next::Backoff => pause(&mut backoff, deadline).await,
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
                        pause(&mut backoff, deadline).await;
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

    // ---- reads ----

    /// The value of `key` (`None`: absent).
    pub async fn get(
        &self,
        key: impl Into<Bytes>,
        read: ReadConsistency,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let found = self
            .routed_again(|| self.get_once(key.clone(), read))
            .await?;
        self.unexpired(found).await
    }

    async fn get_once(
        &self,
        key: Bytes,
        read: ReadConsistency,
    ) -> Result<Option<(Bytes, u64)>, ClientError> {
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
            (Reply::Get(r), _) => Ok(r.found.then_some((r.value, r.lease))),
            _ => Err(wrong_reply()),
        }
    }

    /// The values of `keys`, in order (split over their regions).
    pub async fn multi_get(
        &self,
        keys: Vec<Bytes>,
        read: ReadConsistency,
    ) -> Result<Vec<Option<Bytes>>, ClientError> {
        let found = self
            .routed_again(|| self.multi_get_once(&keys, read))
            .await?;
        let mut out = Vec::with_capacity(found.len());
        for value in found {
            out.push(self.unexpired(value).await?);
        }
        Ok(out)
    }

    async fn multi_get_once(
        &self,
        keys: &[Bytes],
        read: ReadConsistency,
    ) -> Result<Vec<Option<(Bytes, u64)>>, ClientError> {
        let mut values = vec![None; keys.len()];
        for (route_key, indexes) in self.group_by_region(keys).await? {
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
                values[i] = value.found.then_some((value.value, value.lease));
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
        // A walk of the key space by cursor, one region at a time as the stores have them
        // when asked: each answer is clipped by the store to the region it served it from,
        // which the client learns with it, and the cursor moves past that region. Regions
        // that split or merge during the scan move the next step's routing, never the
        // keys already returned: each key comes once, in order.
        let mut out = Vec::new();
        let mut low = start.clone();
        let mut high = end.clone();
        while out.len() < limit {
            if !high.is_empty() && low >= high {
                break;
            }
            // Forward: the region of `low`. Reverse: the region the table says holds the
            // keys just below `high` (checked against the store's answer below).
            let route_key = if reverse {
                self.route(&low).await?;
                match self
                    .inner
                    .routes
                    .overlapping(&low, &high)
                    .last()
                    .map(|r| r.start.clone())
                {
                    Some(region_start) if region_start > low => region_start,
                    _ => low.clone(),
                }
            } else {
                low.clone()
            };
            let call = Call::Scan(proto::ScanRequest {
                context: None,
                start: low.clone(),
                end: high.clone(),
                limit: u32::try_from(limit - out.len()).unwrap_or(u32::MAX),
                reverse,
                keys_only,
                read: read.proto(),
            });
            let (reply, region) = self
                .routed_again(|| self.call(&route_key, call.clone()))
                .await?;
            let Reply::Scan(reply) = reply else {
                return Err(wrong_reply());
            };
            let reaches_high = region.end.is_empty() || (!high.is_empty() && region.end >= high);
            if reverse && !reaches_high {
                // The table was behind (the region of `high` split or merged): the answer
                // skipped keys between the region's end and `high`. Routed again.
                self.refresh_routes().await.ok();
                tokio::time::sleep(KEY_MOVED_PAUSE).await;
                continue;
            }
            let last = reply.entries.last().map(|kv| kv.key.clone());
            for kv in reply.entries {
                if kv.lease == 0 || self.lease_alive(kv.lease).await? {
                    out.push((kv.key, kv.value));
                }
            }
            match last.filter(|_| reply.more) {
                // More of this region: go on past the last key returned.
                Some(last) if reverse => high = last,
                Some(last) => {
                    // The smallest key after `last`.
                    let mut next = Vec::with_capacity(last.len() + 1);
                    next.extend_from_slice(&last);
                    next.push(0);
                    low = Bytes::from(next);
                }
                // This region is done: on to the next one.
                None if reverse => {
                    if region.start.is_empty() || region.start <= low {
                        break;
                    }
                    high = region.start.clone();
                }
                None => {
                    if reaches_high {
                        break;
                    }
                    low = region.end.clone();
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    // ---- writes ----

    /// Writes one op; an op refused because its key left the region it was sent to (a
    /// split applied between routing and apply: nothing was written) goes again to the
    /// key's region as it is now, until the client's timeout.
    async fn write_one(
        &self,
        key: Bytes,
        op: proto::op::Op,
    ) -> Result<proto::OpResult, ClientError> {
        self.write_one_fenced(key, op, None).await
    }

    async fn write_one_fenced(
        &self,
        key: Bytes,
        op: proto::op::Op,
        fence: Option<proto::Fence>,
    ) -> Result<proto::OpResult, ClientError> {
        let op = proto::Op {
            op: Some(op),
            fence,
            lease_id: 0,
        };
        self.write_op(key, op).await
    }

    /// Writes `op` (routed by `key`), as [`KvClient::write_one`] does.
    async fn write_op(&self, key: Bytes, op: proto::Op) -> Result<proto::OpResult, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.timeout;
        loop {
            let result = self.write_one_attempt(key.clone(), op.clone()).await;
            let again = match &result {
                Ok(result) => moved(result),
                Err(e) => left_region(e),
            };
            if !again || tokio::time::Instant::now() >= deadline {
                return result;
            }
            self.after_key_moved().await;
        }
    }

    /// Runs `attempt` again, routed anew, while it fails because a key left the region it
    /// was sent to (a batch formed before a split holds keys of both halves: every attempt
    /// routes its keys again), until the client's timeout.
    async fn routed_again<T, F, Fut>(&self, attempt: F) -> Result<T, ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.options.timeout;
        loop {
            match attempt().await {
                Err(e) if left_region(&e) && tokio::time::Instant::now() < deadline => {
                    self.after_key_moved().await;
                }
                other => return other,
            }
        }
    }

    /// Routes anew after an op's key left its region.
    async fn after_key_moved(&self) {
        self.refresh_routes().await.ok();
        tokio::time::sleep(KEY_MOVED_PAUSE).await;
    }

    async fn write_one_attempt(
        &self,
        key: Bytes,
        op: proto::Op,
    ) -> Result<proto::OpResult, ClientError> {
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

    /// Sets `key` to `value`, fenced by lock `lock`'s token `token` (see [`crate::fence`]):
    /// refused with kind `Fenced`, changing nothing, if the region holding `key` already
    /// accepted a write fenced by a higher token of that lock.
    pub async fn put_fenced(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        lock: impl Into<Bytes>,
        token: u64,
    ) -> Result<(), ClientError> {
        let key = key.into();
        let op = proto::op::Op::Put(proto::Put {
            key: key.clone(),
            value: value.into(),
        });
        let fence = proto::Fence {
            lock: lock.into(),
            token,
        };
        done(self.write_one_fenced(key, op, Some(fence)).await?)
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

    /// Hands out the next `step` values (1 to 2^32) of the sequence named `key`: `[start,
    /// end)`, never handed out before, also across failovers. An answer that did not come
    /// (`Unknown`) may have consumed a range: ask again for a new one.
    pub async fn sequence_next(
        &self,
        key: impl Into<Bytes>,
        step: u64,
    ) -> Result<(u64, u64), ClientError> {
        let key = key.into();
        let op = proto::op::Op::SequenceNext(proto::SequenceNext {
            key: key.clone(),
            step,
        });
        range(self.write_one(key, op).await?)
    }

    /// One operation on the lock named `name` (see [`crate::lock`]); its time is the
    /// leader's. A renew or release by anyone but the holder fails with kind `NotOwner`.
    pub async fn lock(
        &self,
        name: impl Into<Bytes>,
        op: crate::lock::LockOp,
    ) -> Result<crate::lock::LockState, ClientError> {
        use proto::lock_request::Kind;
        let name = name.into();
        let (kind, owner, lease_ms) = match op {
            crate::lock::LockOp::Acquire { owner, lease_ms } => (Kind::Acquire, owner, lease_ms),
            crate::lock::LockOp::Renew { owner } => (Kind::Renew, owner, 0),
            crate::lock::LockOp::Release { owner } => (Kind::Release, owner, 0),
            crate::lock::LockOp::Status => (Kind::Status, Bytes::new(), 0),
        };
        let op = proto::op::Op::Lock(proto::LockRequest {
            name: name.clone(),
            kind: kind as i32,
            owner,
            lease_ms,
        });
        lock_state(self.write_one(name, op).await?)
    }

    /// Takes the lock `name` for `owner` with a lease, retrying (back-off from 20 ms up to
    /// 500 ms) while another owner holds it, for up to `wait`. Answers the last state:
    /// `acquired` says whether it was taken.
    pub async fn lock_acquire(
        &self,
        name: impl Into<Bytes>,
        owner: impl Into<Bytes>,
        lease_ms: u64,
        wait: std::time::Duration,
    ) -> Result<crate::lock::LockState, ClientError> {
        let name = name.into();
        let owner = owner.into();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let state = self
                .lock(
                    name.clone(),
                    crate::lock::LockOp::Acquire {
                        owner: owner.clone(),
                        lease_ms,
                    },
                )
                .await?;
            let now = tokio::time::Instant::now();
            if state.acquired || now >= deadline {
                return Ok(state);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// The value the sequence named `key` hands out next (0 for a new one).
    pub async fn sequence_latest(&self, key: impl Into<Bytes>) -> Result<u64, ClientError> {
        let key = key.into();
        let op = proto::op::Op::SequenceLatest(proto::Delete { key: key.clone() });
        counter(self.write_one(key, op).await?)
    }

    /// Resets the sequence named `key` to 0.
    pub async fn sequence_reset(&self, key: impl Into<Bytes>) -> Result<(), ClientError> {
        let key = key.into();
        let op = proto::op::Op::SequenceReset(proto::Delete { key: key.clone() });
        done(self.write_one(key, op).await?)
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
    /// Pairs whose key left the region they were sent to (nothing was written for them)
    /// are sent again to their regions as they are now, until the client's timeout.
    pub async fn batch_put(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<(), ClientError> {
        self.routed_again(|| self.batch_put_once(pairs.clone()))
            .await
    }

    async fn batch_put_once(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.timeout;
        let mut left = pairs;
        loop {
            let keys: Vec<Bytes> = left.iter().map(|(k, _)| k.clone()).collect();
            let mut again = Vec::new();
            for (route_key, indexes) in self.group_by_region(&keys).await? {
                let ops = indexes
                    .iter()
                    .map(|&i| proto::Op {
                        op: Some(proto::op::Op::Put(proto::Put {
                            key: left[i].0.clone(),
                            value: left[i].1.clone(),
                        })),
                        fence: None,
                        lease_id: 0,
                    })
                    .collect();
                let call = Call::Write(proto::WriteRequest { context: None, ops });
                let Reply::Write(reply) = self.call(&route_key, call).await?.0 else {
                    return Err(wrong_reply());
                };
                if reply.results.len() != indexes.len() {
                    return Err(wrong_reply_unknown());
                }
                for (result, &i) in reply.results.into_iter().zip(&indexes) {
                    if moved(&result) && tokio::time::Instant::now() < deadline {
                        again.push(left[i].clone());
                    } else {
                        done(result)?;
                    }
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            left = again;
            self.after_key_moved().await;
        }
    }

    /// Removes every key of `[start, end)` (an empty `end`: unbounded), region by region.
    pub async fn delete_range(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let (start, end): (Bytes, Bytes) = (start.into(), end.into());
        self.routed_again(|| self.delete_range_once(start.clone(), end.clone()))
            .await
    }

    async fn delete_range_once(&self, start: Bytes, end: Bytes) -> Result<(), ClientError> {
        if !end.is_empty() && start > end {
            return Err(ClientError::definite(
                "InvalidRange",
                "delete-range start is after its end",
            ));
        }
        let deadline = tokio::time::Instant::now() + self.inner.options.timeout;
        let mut from = start;
        'parts: loop {
            for region in self.regions_overlapping(&from, &end).await? {
                let part_start = if from > region.start {
                    from.clone()
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
                    fence: None,
                    lease_id: 0,
                };
                let call = Call::Write(proto::WriteRequest {
                    context: None,
                    ops: vec![op],
                });
                let Reply::Write(reply) = self.call(&part_start, call).await?.0 else {
                    return Err(wrong_reply());
                };
                for result in reply.results {
                    // The part's region split meanwhile: nothing was deleted; go on from the
                    // part's start over the regions as they are now.
                    if moved(&result) && tokio::time::Instant::now() < deadline {
                        from = part_start;
                        self.after_key_moved().await;
                        continue 'parts;
                    }
                    done(result)?;
                }
            }
            return Ok(());
        }
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
        Ok(self.inner.routes.overlapping(start, end))
    }

    // ---- batching ----

    fn enqueue(&self, route: &Route, class: BatchClass, pending: Pending) {
        let options = &self.inner.options;
        if let Some(batcher) = self
            .inner
            .batchers
            .enqueue(&route.region, class, pending, options)
        {
            let client = self.clone();
            tokio::spawn(async move { client.drain(batcher, class).await });
        }
    }

    /// One sender: sends what `batcher` holds, batch after batch, until it is empty (other
    /// senders of the same queue may run meanwhile).
    async fn drain(&self, batcher: Arc<Batcher>, class: BatchClass) {
        while let Some(batch) = batcher.next_batch(&self.inner.options) {
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
        let Some((route_key, call, replies)) = batch::write_call(batch) else {
            return;
        };
        batch::answer_writes(replies, self.call(&route_key, call).await);
    }

    async fn send_get_batch(&self, batch: Vec<Pending>, read: ReadConsistency) {
        let Some((route_key, call, replies)) = batch::get_call(batch, read) else {
            return;
        };
        batch::answer_gets(replies, self.call(&route_key, call).await);
    }
}
