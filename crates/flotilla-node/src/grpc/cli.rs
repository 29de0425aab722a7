//! The CLI service (SOFAJRaft's `CliService`) over gRPC, and [`CliClient`], its Rust client.
//!
//! The service (`proto/cli.proto`, `flotilla.cli.v1.Cli`) is served on the process's one
//! address next to the raft stream, when the server was given the manager
//! ([`crate::grpc::GrpcServer::serve_with_cli`]). Membership changes, transfers and the
//! leader-only queries are answered by the group's leader; others refuse with `NotLeader`
//! and the leader they know of, which the client follows.
//!
//! Errors: every refusal is a gRPC status whose metadata carries [`ERROR_KIND_KEY`] (the
//! [`RaftError`] / [`NodeError`] kind, or `NoSuchGroup`) and, when known, [`LEADER_KEY`]
//! (the leader's address). The code follows the kind ([`status_of`]); an outcome that is
//! unknown is `UNKNOWN`.
//!
//! Owns: validation of requests (peer ids, list sizes), the error mapping, the client's
//! leader discovery and bounded retries. Must never: retry an operation whose outcome is
//! unknown (the client answers [`CliError::Unknown`] instead), or trust a peer's answer
//! without checking it.
//!
//! TLS: a server given a [`super::TlsConfig`] serves the CLI service under mutual TLS too;
//! a client then needs one in [`CliOptions::tls`] (its certificate signed by the cluster's
//! CA), and a plain-text client is refused at the handshake.
//!
//! Not yet: `ResetLearners` is two changes (removals, then additions), not one atomic
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_raft::{PeerId, RaftError};
use flotilla_storage::GroupId;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::tls::{self, TlsConfig};
use crate::error::NodeError;
use crate::identity::{AddressBook, Identity};
use crate::manager::NodeManager;
use crate::node::Node;

/// The protobuf messages and the tonic client and server generated from `proto/cli.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flotilla.cli.v1");
}

use proto::cli_client::CliClient as GrpcCliClient;

/// Names the receiving process in every CLI call's metadata (see [`check_receiver`]).
#[derive(Clone, Debug)]
pub struct Stamp {
    store: MetadataValue<tonic::metadata::Ascii>,
    cluster: MetadataValue<tonic::metadata::Ascii>,
}

impl Stamp {
    /// A stamp naming the process `store` of `cluster`; `None` if the id is not ASCII
    /// metadata.
    #[must_use]
    pub fn new(store: &str, cluster: u64) -> Option<Stamp> {
        Some(Stamp {
            store: MetadataValue::try_from(store).ok()?,
            cluster: MetadataValue::try_from(format!("{cluster:016x}")).ok()?,
        })
    }
}

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(STORE_KEY, self.store.clone());
        request
            .metadata_mut()
            .insert(CLUSTER_KEY, self.cluster.clone());
        Ok(request)
    }
}

/// A CLI client whose calls name their receiver.
type Stamped = GrpcCliClient<tonic::service::interceptor::InterceptedService<Channel, Stamp>>;

/// Status metadata key naming the error kind (`NotLeader`, `Busy`, `Unknown`, ...).
pub const ERROR_KIND_KEY: &str = "flotilla-error-kind";
/// Status metadata key carrying the leader's address, when the refusing peer knows it (and
/// knows where it is).
pub const LEADER_KEY: &str = "flotilla-leader";
/// Status metadata key carrying the leader's peer id, when the refusing peer knows it.
pub const LEADER_ID_KEY: &str = "flotilla-leader-id";
/// Request metadata key naming the receiving process's peer id (every CLI call but
/// `Identify`).
pub const STORE_KEY: &str = "flotilla-store";
/// Request metadata key naming the cluster id (16 hex digits) of the receiving process.
pub const CLUSTER_KEY: &str = "flotilla-cluster";
const IDENTIFY_PATH: &str = "/flotilla.cli.v1.Cli/Identify";

/// Refuses a call whose metadata (`get` reads a key) does not name `identity`'s peer id
/// ([`STORE_KEY`]) and cluster ([`CLUSTER_KEY`]): `FAILED_PRECONDITION`, kind
/// `WrongStore`, counted and logged once per source like a misaddressed frame.
pub fn check_receiver(
    get: impl Fn(&str) -> Option<String>,
    identity: &Identity,
    what: &str,
    source: &str,
) -> Result<(), Status> {
    let refuse =
        |message: String| Err(status_with(Code::FailedPrecondition, "WrongStore", message));
    let (Some(store), Some(cluster)) = (get(STORE_KEY), get(CLUSTER_KEY)) else {
        return refuse(format!(
            "a {what} must name the receiving store ({STORE_KEY}) and cluster ({CLUSTER_KEY}) \
             in its metadata: ask Identify first"
        ));
    };
    let Ok(cluster) = u64::from_str_radix(&cluster, 16) else {
        return refuse(format!(
            "{CLUSTER_KEY}: {cluster:?} is not a hex cluster id"
        ));
    };
    identity
        .check(&store, cluster, what, source)
        .or_else(|refused| refuse(identity.describe(&refused)))
}

/// Longest peer id accepted in a request or an answer (the wire codec's limit too).
pub use crate::limits::PEER_ID_BYTES_MAX;
/// Most peers one request may name.
pub const REQUEST_PEERS_MAX: usize = 1024;

/// Where the CLI service finds a group's [`Node`] on this process.
pub trait CliNodes: Send + Sync + 'static {
    /// This process's node of `group`, if it has one.
    fn node(&self, group: GroupId) -> Option<Node>;

    /// Where the peers are: answers and leader hints name addresses from it.
    fn addresses(&self) -> AddressBook;

    /// This process's peer id and cluster (what `Identify` answers).
    fn identity(&self) -> Arc<Identity>;
}

impl CliNodes for NodeManager {
    fn node(&self, group: GroupId) -> Option<Node> {
        NodeManager::node(self, group)
    }

    fn addresses(&self) -> AddressBook {
        NodeManager::addresses(self).clone()
    }

    fn identity(&self) -> Arc<Identity> {
        NodeManager::identity(self).clone()
    }
}

/// The kind name of `error` carried in [`ERROR_KIND_KEY`].
#[must_use]
pub fn kind_of(error: &NodeError) -> &'static str {
    match error {
        NodeError::Raft(e) => match e {
            RaftError::NotLeader { .. } => "NotLeader",
            RaftError::Busy(_) => "Busy",
            RaftError::TimedOut(_) => "TimedOut",
            RaftError::Stale(_) => "Stale",
            RaftError::CatchUpFailed { .. } => "CatchUpFailed",
            RaftError::Removed => "Removed",
            RaftError::Transferring { .. } => "Transferring",
            RaftError::Compacted { .. } => "Compacted",
            RaftError::ShutDown => "ShutDown",
            RaftError::WrongTerm { .. } => "WrongTerm",
            RaftError::ReadLagging { .. } => "ReadLagging",
            RaftError::LeaderNotReady => "LeaderNotReady",
            RaftError::StateMachine(_) => "StateMachine",
            RaftError::Io(_) => "Io",
            RaftError::InvalidArgument(_) => "InvalidArgument",
        },
        NodeError::Io(_) => "Io",
        NodeError::ShutDown => "ShutDown",
        NodeError::Unknown(_) => "Unknown",
    }
}

fn code_of(error: &NodeError) -> Code {
    match error {
        NodeError::Raft(e) => match e {
            RaftError::NotLeader { .. } | RaftError::Removed | RaftError::WrongTerm { .. } => {
                Code::FailedPrecondition
            }
            RaftError::Busy(_) => Code::ResourceExhausted,
            RaftError::TimedOut(_) => Code::DeadlineExceeded,
            RaftError::Stale(_) | RaftError::CatchUpFailed { .. } => Code::Aborted,
            RaftError::Transferring { .. }
            | RaftError::ShutDown
            | RaftError::ReadLagging { .. }
            | RaftError::LeaderNotReady => Code::Unavailable,
            RaftError::Compacted { .. } => Code::OutOfRange,
            RaftError::StateMachine(_) | RaftError::Io(_) => Code::Internal,
            RaftError::InvalidArgument(_) => Code::InvalidArgument,
        },
        NodeError::Io(_) => Code::Internal,
        NodeError::ShutDown => Code::Unavailable,
        NodeError::Unknown(_) => Code::Unknown,
    }
}

/// Puts the leader hint in `status`'s metadata: its address ([`LEADER_KEY`], when
/// `addresses` knows it) and its peer id ([`LEADER_ID_KEY`]).
pub fn insert_leader(status: &mut Status, leader: &PeerId, addresses: &AddressBook) {
    if let Some(address) = addresses.resolve(leader) {
        if let Ok(value) = MetadataValue::try_from(address.as_str()) {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    if let Ok(value) = MetadataValue::try_from(leader.as_str()) {
        status.metadata_mut().insert(LEADER_ID_KEY, value);
    }
}

fn status_with(code: Code, kind: &'static str, message: String) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind));
    status
}

/// The status a CLI call ends with when it failed with `error`: the code follows the kind,
/// the metadata names the kind and the leader hint (its address from `addresses`).
#[must_use]
pub fn status_of(error: &NodeError, addresses: &AddressBook) -> Status {
    let mut status = status_with(code_of(error), kind_of(error), error.to_string());
    if let Some(leader) = error.leader_hint() {
        insert_leader(&mut status, leader, addresses);
    }
    status
}

fn invalid(message: String) -> Status {
    status_with(Code::InvalidArgument, "InvalidArgument", message)
}

fn valid_peer_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= PEER_ID_BYTES_MAX
        && text.chars().all(|c| c.is_ascii_graphic())
}

fn parse_peer(field: &str, text: &str) -> Result<PeerId, Status> {
    if valid_peer_text(text) {
        Ok(PeerId::new(text))
    } else {
        Err(invalid(format!(
            "{field}: a peer id is 1 to {PEER_ID_BYTES_MAX} printable ASCII characters"
        )))
    }
}

fn parse_peers(texts: &[String]) -> Result<Vec<PeerId>, Status> {
    if texts.len() > REQUEST_PEERS_MAX {
        return Err(invalid(format!(
            "peers: {} named, at most {REQUEST_PEERS_MAX}",
            texts.len()
        )));
    }
    texts.iter().map(|t| parse_peer("peers", t)).collect()
}

fn names(peers: impl IntoIterator<Item = PeerId>) -> Vec<String> {
    peers.into_iter().map(|p| p.as_str().to_owned()).collect()
}

/// The server side: answers CLI calls with this process's nodes.
pub(crate) struct CliService {
    nodes: Arc<dyn CliNodes>,
    addresses: AddressBook,
    /// Options of the client a `Rebalance` call drives.
    client_options: CliOptions,
}

impl CliService {
    pub(crate) fn new(nodes: Arc<dyn CliNodes>) -> CliService {
        CliService {
            addresses: nodes.addresses(),
            nodes,
            client_options: CliOptions::default(),
        }
    }

    /// The TLS configuration the server-driven `Rebalance` dials the other processes with
    /// (the server's own).
    pub(crate) fn with_client_tls(mut self, tls: Option<TlsConfig>) -> CliService {
        self.client_options.tls = tls;
        self
    }

    fn node(&self, group: GroupId) -> Result<Node, Status> {
        self.nodes.node(group).ok_or_else(|| {
            status_with(
                Code::NotFound,
                "NoSuchGroup",
                format!("no group {group} on this process"),
            )
        })
    }

    /// The node of `group`, refusing with `NotLeader` (and a hint) unless it leads.
    fn leader_node(&self, group: GroupId) -> Result<Node, Status> {
        let node = self.node(group)?;
        if node.is_leader() {
            Ok(node)
        } else {
            let leader = node.leader_id().filter(|l| l != node.peer_id());
            Err(self.status(&NodeError::Raft(RaftError::NotLeader { leader })))
        }
    }

    fn status(&self, error: &NodeError) -> Status {
        status_of(error, &self.addresses)
    }

    fn done(&self, result: Result<(), NodeError>) -> Result<Response<proto::Done>, Status> {
        result
            .map(|()| Response::new(proto::Done {}))
            .map_err(|e| self.status(&e))
    }

    /// A reply naming `leader` by id and address.
    fn leader_reply(&self, leader: Option<&PeerId>) -> proto::LeaderReply {
        proto::LeaderReply {
            leader: leader.map(|l| l.as_str().to_owned()).unwrap_or_default(),
            address: leader
                .and_then(|l| self.addresses.resolve(l))
                .unwrap_or_default(),
        }
    }

    /// A reply naming `peers` by id, with their addresses (empty where unknown).
    fn peers_reply(&self, peers: impl IntoIterator<Item = PeerId>) -> proto::PeersReply {
        let peers: Vec<PeerId> = peers.into_iter().collect();
        proto::PeersReply {
            addresses: peers
                .iter()
                .map(|p| self.addresses.resolve(p).unwrap_or_default())
                .collect(),
            peers: names(peers),
        }
    }
}

#[tonic::async_trait]
impl proto::cli_server::Cli for CliService {
    async fn identify(
        &self,
        _request: Request<proto::IdentifyRequest>,
    ) -> Result<Response<proto::IdentifyReply>, Status> {
        let identity = self.nodes.identity();
        Ok(Response::new(proto::IdentifyReply {
            peer: identity.id().as_str().to_owned(),
            cluster: identity.cluster(),
            address: self.addresses.resolve(identity.id()).unwrap_or_default(),
        }))
    }

    async fn add_peer(
        &self,
        request: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peer = parse_peer("peer", &r.peer)?;
        let node = self.node(r.group)?;
        self.done(if r.force {
            node.add_peer_forced(peer).await
        } else {
            node.add_peer(peer).await
        })
    }

    async fn remove_peer(
        &self,
        request: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peer = parse_peer("peer", &r.peer)?;
        let node = self.node(r.group)?;
        self.done(if r.force {
            node.remove_peer_forced(peer).await
        } else {
            node.remove_peer(peer).await
        })
    }

    async fn change_peers(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peers: BTreeSet<PeerId> = parse_peers(&r.peers)?.into_iter().collect();
        if peers.is_empty() {
            return Err(invalid("peers: the new voters may not be empty".into()));
        }
        let node = self.node(r.group)?;
        self.done(if r.force {
            node.change_peers_forced(peers).await
        } else {
            node.change_peers(peers).await
        })
    }

    async fn add_learners(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peers = parse_peers(&r.peers)?;
        self.done(self.node(r.group)?.add_learners(peers).await)
    }

    async fn remove_learners(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peers = parse_peers(&r.peers)?;
        self.done(self.node(r.group)?.remove_learners(peers).await)
    }

    async fn reset_learners(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let wanted: BTreeSet<PeerId> = parse_peers(&r.peers)?.into_iter().collect();
        let node = self.leader_node(r.group)?;
        let current: BTreeSet<PeerId> = node.list_learners().into_iter().collect();
        let gone: Vec<PeerId> = current.difference(&wanted).cloned().collect();
        let new: Vec<PeerId> = wanted.difference(&current).cloned().collect();
        if !gone.is_empty() {
            node.remove_learners(gone)
                .await
                .map_err(|e| self.status(&e))?;
        }
        if !new.is_empty() {
            // The removals committed: a failure now leaves a state the caller must check.
            node.add_learners(new).await.map_err(|e| self.status(&e))?;
        }
        Ok(Response::new(proto::Done {}))
    }

    async fn promote_learner(
        &self,
        request: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let r = request.into_inner();
        let peer = parse_peer("peer", &r.peer)?;
        self.done(self.node(r.group)?.promote_learner(peer).await)
    }

    async fn reset_peers(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let asked_by = super::roles::remote_of(request.extensions());
        let r = request.into_inner();
        let peers = parse_peers(&r.peers)?;
        if peers.is_empty() {
            return Err(invalid("peers: the new voters may not be empty".into()));
        }
        if !r.force {
            return Err(invalid(
                "reset-peers replaces the voters without consensus and can lose acknowledged \
                 writes: it needs force (flotilla admin reset-peers ... --force)"
                    .into(),
            ));
        }
        let result = self.node(r.group)?.reset_peers(peers.clone()).await;
        match &result {
            Ok(()) => tracing::warn!(
                group = r.group, ?peers, %asked_by,
                "reset-peers: voters replaced without consensus"
            ),
            Err(e) => tracing::warn!(
                group = r.group, ?peers, %asked_by, error = %e,
                "reset-peers refused"
            ),
        }
        self.done(result)
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::LeaderReply>, Status> {
        let r = request.into_inner();
        let target = if r.peer.is_empty() {
            None
        } else {
            Some(parse_peer("peer", &r.peer)?)
        };
        let leader = self
            .node(r.group)?
            .transfer_leadership(target)
            .await
            .map_err(|e| self.status(&e))?;
        Ok(Response::new(self.leader_reply(Some(&leader))))
    }

    async fn snapshot(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::SnapshotReply>, Status> {
        let r = request.into_inner();
        let index = self
            .node(r.group)?
            .snapshot()
            .await
            .map_err(|e| self.status(&e))?;
        Ok(Response::new(proto::SnapshotReply { index: index.0 }))
    }

    async fn get_leader(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::LeaderReply>, Status> {
        let node = self.node(request.into_inner().group)?;
        Ok(Response::new(self.leader_reply(node.leader_id().as_ref())))
    }

    async fn get_peers(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        let node = self.leader_node(request.into_inner().group)?;
        Ok(Response::new(self.peers_reply(node.list_peers())))
    }

    async fn get_alive_peers(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        let node = self.leader_node(request.into_inner().group)?;
        let voters: BTreeSet<PeerId> = node.list_peers().into_iter().collect();
        let alive = node
            .list_alive_peers()
            .into_iter()
            .filter(|p| voters.contains(p));
        Ok(Response::new(self.peers_reply(alive)))
    }

    async fn get_learners(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        let node = self.leader_node(request.into_inner().group)?;
        Ok(Response::new(self.peers_reply(node.list_learners())))
    }

    async fn get_alive_learners(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        let node = self.leader_node(request.into_inner().group)?;
        let learners: BTreeSet<PeerId> = node.list_learners().into_iter().collect();
        let alive = node
            .list_alive_peers()
            .into_iter()
            .filter(|p| learners.contains(p));
        Ok(Response::new(self.peers_reply(alive)))
    }

    async fn rebalance(
        &self,
        request: Request<proto::RebalanceRequest>,
    ) -> Result<Response<proto::RebalanceReply>, Status> {
        let groups = request.into_inner().groups;
        if groups.len() > REQUEST_PEERS_MAX * 16 {
            return Err(invalid(format!("groups: {} named", groups.len())));
        }
        // The addresses of every process that votes in one of these groups, and this one;
        // the client finds the leaders from there.
        let mut endpoints = BTreeSet::new();
        for group in &groups {
            if let Some(node) = self.nodes.node(*group) {
                let ids = std::iter::once(node.peer_id().clone()).chain(node.list_peers());
                endpoints.extend(
                    ids.filter_map(|id| self.addresses.resolve(&id))
                        .map(|a| PeerId::new(&a)),
                );
            }
        }
        let Some(first) = groups.first() else {
            return Ok(Response::new(proto::RebalanceReply::default()));
        };
        let client = CliClient::new(endpoints.into_iter().collect(), *first)
            .map_err(|e| e.to_status())?
            .with_options(self.client_options.clone());
        let leaders = client.rebalance(&groups).await.map_err(|e| e.to_status())?;
        Ok(Response::new(proto::RebalanceReply {
            leaders: leaders
                .into_iter()
                .map(|(g, l)| (g, l.as_str().to_owned()))
                .collect(),
        }))
    }
}

/// One service for the process's address: CLI calls go to the CLI server, every other call
/// to the raft server (tonic's router needs a feature this crate does not enable).
#[derive(Clone)]
pub(crate) struct Dispatch<R> {
    pub(crate) raft: R,
    pub(crate) cli: Option<proto::cli_server::CliServer<CliService>>,
    /// Services the application added ([`super::ExtraService`]), tried after the CLI's.
    pub(crate) extra: Arc<Vec<super::ExtraService>>,
    /// What CLI calls must name (`None`: not checked).
    pub(crate) identity: Option<Arc<Identity>>,
}

const CLI_PATH_PREFIX: &str = "/flotilla.cli.v1.Cli/";

type HttpResponse = http::Response<tonic::body::Body>;

impl<R> Service<http::Request<tonic::body::Body>> for Dispatch<R>
where
    R: Service<
            http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = Infallible,
            Future = BoxFuture<HttpResponse, Infallible>,
        > + Clone
        + Send
        + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(cli) = &mut self.cli {
            let path = request.uri().path();
            if path.starts_with(CLI_PATH_PREFIX) {
                // Under TLS, administration needs a store or admin certificate.
                let role = super::roles::peer_info(request.extensions()).role;
                if let Err(why) = role.require(
                    &[super::roles::Role::Store, super::roles::Role::Admin],
                    "a CLI call",
                ) {
                    let status = status_with(Code::PermissionDenied, "PermissionDenied", why);
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
                if let Some(identity) = self.identity.as_ref().filter(|_| path != IDENTIFY_PATH) {
                    let headers = request.headers();
                    let get = |key: &str| {
                        headers
                            .get(key)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    if let Err(status) = check_receiver(get, identity, "CLI call", "CLI clients") {
                        return Box::pin(std::future::ready(Ok(status.into_http())));
                    }
                }
                return cli.call(request);
            }
        }
        match self.extra.iter().find(|service| service.claims(&request)) {
            Some(service) => service.call(request),
            None => self.raft.call(request),
        }
    }
}

/// Tuning of [`CliClient`].
#[derive(Clone, Debug)]
pub struct CliOptions {
    /// Calls one operation may make (redirects and retries included; at least 1).
    pub max_attempts: usize,
    /// First pause between retries (doubling up to `backoff_max`).
    pub backoff_initial: Duration,
    /// Largest pause between retries.
    pub backoff_max: Duration,
    /// Limit on connecting to an endpoint.
    pub connect_timeout: Duration,
    /// Limit on one call (a membership change waits for its commit and catch-up). A call
    /// that times out after it was sent has an unknown outcome.
    pub call_timeout: Duration,
    /// Mutual TLS, for a cluster whose servers require it; `None` (the default): plain
    /// text. A TLS handshake failure makes that endpoint unreachable, its reason in the
    /// [`CliError::Unreachable`] message.
    pub tls: Option<TlsConfig>,
    /// Membership changes skip the strict reconfiguration check (a change that would leave
    /// fewer live voters than a majority), and `reset_peers` is allowed at all (it is still
    /// refused while the group has a live leader or quorum). Default: off.
    pub force: bool,
}

impl Default for CliOptions {
    fn default() -> CliOptions {
        CliOptions {
            max_attempts: 10,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(30),
            tls: None,
            force: false,
        }
    }
}

/// Why a [`CliClient`] call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    /// A server refused or failed the operation; nothing more is known than what it said.
    /// `kind` is the [`ERROR_KIND_KEY`] kind (`NotLeader`, `Busy`, `NoSuchGroup`, ...).
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The error kind.
        kind: String,
        /// The server's message.
        message: String,
        /// The address of the leader the server knew of.
        leader: Option<PeerId>,
    },
    /// The operation was sent but its outcome is unknown (the connection broke or the call
    /// timed out after sending, or the server itself could not tell): it may or may not
    /// have taken effect. The client never retries it; check the group's state.
    Unknown(String),
    /// No endpoint could be reached (or none answered usefully) within the attempts; the
    /// operation was not carried out by any of them.
    Unreachable(String),
    /// A server's answer was not valid.
    InvalidAnswer(String),
    /// The client was used wrongly (no endpoints, an invalid peer id).
    InvalidArgument(String),
}

impl CliError {
    /// The error kind: the server's for [`CliError::Refused`], else this variant's name.
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            CliError::Refused { kind, .. } => kind,
            CliError::Unknown(_) => "Unknown",
            CliError::Unreachable(_) => "Unreachable",
            CliError::InvalidAnswer(_) => "InvalidAnswer",
            CliError::InvalidArgument(_) => "InvalidArgument",
        }
    }

    fn to_status(&self) -> Status {
        match self {
            CliError::Refused {
                code,
                kind,
                message,
                leader,
            } => {
                let kind: &'static str = match kind.as_str() {
                    "NotLeader" => "NotLeader",
                    "Busy" => "Busy",
                    "NoSuchGroup" => "NoSuchGroup",
                    "InvalidArgument" => "InvalidArgument",
                    _ => "Refused",
                };
                let mut status = status_with(*code, kind, message.clone());
                // The client's hints are addresses (see `judge`).
                if let Some(value) = leader
                    .as_ref()
                    .and_then(|l| MetadataValue::try_from(l.as_str()).ok())
                {
                    status.metadata_mut().insert(LEADER_KEY, value);
                }
                status
            }
            CliError::Unknown(m) => status_with(Code::Unknown, "Unknown", m.clone()),
            CliError::Unreachable(m) => status_with(Code::Unavailable, "Unreachable", m.clone()),
            CliError::InvalidAnswer(m) => status_with(Code::Internal, "InvalidAnswer", m.clone()),
            CliError::InvalidArgument(m) => invalid(m.clone()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Refused {
                kind,
                message,
                leader,
                ..
            } => {
                write!(f, "refused ({kind}): {message}")?;
                if let Some(l) = leader {
                    write!(f, "; leader {l}")?;
                }
                Ok(())
            }
            CliError::Unknown(m) => write!(f, "outcome unknown: {m}"),
            CliError::Unreachable(m) => write!(f, "unreachable: {m}"),
            CliError::InvalidAnswer(m) => write!(f, "invalid answer: {m}"),
            CliError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for CliError {}

/// How a status that did not come from a CLI server (no [`ERROR_KIND_KEY`]) is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// A query or a local read: safe to retry anywhere.
    Idempotent,
    /// A change: once sent, a broken call has an unknown outcome.
    Change,
}

/// A client of the CLI service for one group, over a list of endpoints (process
/// addresses; the peers its calls name are peer ids, and so are the ones it answers). It finds the leader (asking any endpoint, following hints), retries on "not
/// leader" with the hint and on connection failures with the next endpoint, within
/// [`CliOptions::max_attempts`] and with back-off. Cheap to clone;
/// [`CliClient::for_group`] shares the connections.
#[derive(Clone, Debug)]
pub struct CliClient {
    endpoints: Vec<PeerId>,
    group: GroupId,
    options: CliOptions,
    channels: Arc<Mutex<HashMap<PeerId, (Channel, Stamp)>>>,
    leader: Arc<Mutex<Option<PeerId>>>,
    /// The cluster the first endpoint answered for: every other must answer the same.
    cluster: Arc<Mutex<Option<u64>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header(status: &Status, key: &str) -> Option<String> {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn peer_answer(text: &str) -> Result<PeerId, CliError> {
    if valid_peer_text(text) {
        Ok(PeerId::new(text))
    } else {
        Err(CliError::InvalidAnswer(format!(
            "peer id of {} bytes is not valid",
            text.len()
        )))
    }
}

fn peers_answer(reply: proto::PeersReply) -> Result<Vec<PeerId>, CliError> {
    if reply.peers.len() > REQUEST_PEERS_MAX {
        return Err(CliError::InvalidAnswer(format!(
            "{} peers",
            reply.peers.len()
        )));
    }
    reply.peers.iter().map(|p| peer_answer(p)).collect()
}

/// What one attempt's failure means for the next.
enum Next {
    /// Try this endpoint next (a leader hint).
    Redirect(PeerId),
    /// Try the next endpoint after a pause.
    Elsewhere,
    /// Try the same endpoint after a pause.
    Again,
}

impl CliClient {
    /// A client of `group` over `endpoints` (process addresses, `host:port`).
    pub fn new(endpoints: Vec<PeerId>, group: GroupId) -> Result<CliClient, CliError> {
        if endpoints.is_empty() {
            return Err(CliError::InvalidArgument("no endpoints".into()));
        }
        if let Some(bad) = endpoints.iter().find(|e| !valid_peer_text(e.as_str())) {
            return Err(CliError::InvalidArgument(format!(
                "endpoint {bad:?} is not a valid address"
            )));
        }
        Ok(CliClient {
            endpoints,
            group,
            options: CliOptions::default(),
            channels: Arc::new(Mutex::new(HashMap::new())),
            leader: Arc::new(Mutex::new(None)),
            cluster: Arc::new(Mutex::new(None)),
        })
    }

    /// The same client with other tuning.
    #[must_use]
    pub fn with_options(mut self, options: CliOptions) -> CliClient {
        self.options = options;
        self
    }

    /// A client of another group over the same endpoints and connections.
    #[must_use]
    pub fn for_group(&self, group: GroupId) -> CliClient {
        CliClient {
            endpoints: self.endpoints.clone(),
            group,
            options: self.options.clone(),
            channels: self.channels.clone(),
            leader: Arc::new(Mutex::new(None)),
            cluster: self.cluster.clone(),
        }
    }

    /// The group this client administers.
    #[must_use]
    pub fn group(&self) -> GroupId {
        self.group
    }

    async fn connect(&self, to: &PeerId) -> Result<Stamped, CliError> {
        let cached = lock(&self.channels).get(to).cloned();
        let (channel, stamp) = match cached {
            Some(cached) => cached,
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{to}"))
                    .map_err(|e| CliError::InvalidArgument(format!("endpoint {to}: {e}")))?
                    .connect_timeout(self.options.connect_timeout)
                    .timeout(self.options.call_timeout)
                    .tcp_nodelay(true);
                let channel = super::connect_channel(&endpoint, self.options.tls.as_ref())
                    .await
                    .map_err(|e| {
                        CliError::Unreachable(format!("{to}: {}", tls::error_chain(&e)))
                    })?;
                let stamp = self.identify(to, channel.clone()).await?;
                lock(&self.channels).insert(to.clone(), (channel.clone(), stamp.clone()));
                (channel, stamp)
            }
        };
        Ok(GrpcCliClient::with_interceptor(channel, stamp)
            .max_decoding_message_size(1024 * 1024)
            .max_encoding_message_size(1024 * 1024))
    }

    /// Asks the process at `to` who it is: its calls will name it. Refused when it belongs
    /// to another cluster than the endpoints answered before.
    async fn identify(&self, to: &PeerId, channel: Channel) -> Result<Stamp, CliError> {
        let reply = GrpcCliClient::new(channel)
            .identify(proto::IdentifyRequest {})
            .await
            .map_err(|status| {
                if status.code() == Code::Unimplemented {
                    CliError::Unreachable(format!("{to} serves no CLI"))
                } else if status.code() == Code::PermissionDenied {
                    // Certain and final: this certificate may not administer the cluster.
                    CliError::Refused {
                        code: status.code(),
                        kind: "PermissionDenied".into(),
                        message: format!("{to}: {}", status.message()),
                        leader: None,
                    }
                } else {
                    CliError::Unreachable(format!("{to}: Identify failed: {}", status.message()))
                }
            })?
            .into_inner();
        let peer = peer_answer(&reply.peer)?;
        {
            let mut cluster = lock(&self.cluster);
            match *cluster {
                Some(known) if known != reply.cluster => {
                    return Err(CliError::Refused {
                        code: Code::FailedPrecondition,
                        kind: "WrongCluster".into(),
                        message: format!(
                            "{to} (peer {peer}) belongs to cluster {:016x}, the other endpoints \
                             to {known:016x}",
                            reply.cluster
                        ),
                        leader: None,
                    });
                }
                Some(_) => {}
                None => *cluster = Some(reply.cluster),
            }
        }
        let store = MetadataValue::try_from(peer.as_str())
            .map_err(|_| CliError::InvalidAnswer(format!("{to}: peer id {peer} is not ASCII")))?;
        let cluster = MetadataValue::try_from(format!("{:016x}", reply.cluster))
            .map_err(|_| CliError::InvalidAnswer("cluster id".into()))?;
        Ok(Stamp { store, cluster })
    }

    /// Routes the next calls to the leader at `address` (ignored when empty or invalid).
    fn remember_leader(&self, address: &str) {
        let address = (!address.is_empty())
            .then(|| peer_answer(address).ok())
            .flatten();
        *lock(&self.leader) = address;
    }

    fn forget(&self, to: &PeerId) {
        lock(&self.channels).remove(to);
        let mut leader = lock(&self.leader);
        if leader.as_ref() == Some(to) {
            *leader = None;
        }
    }

    fn backoff(&self, attempt: usize) -> Duration {
        let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
        self.options
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.options.backoff_max)
    }

    /// Classifies a failed call to `to`: either what to try next, or the final error.
    fn judge(&self, to: &PeerId, status: &Status, effect: Effect) -> Result<Next, CliError> {
        let Some(kind) = header(status, ERROR_KIND_KEY) else {
            // Not a CLI server's answer: the connection broke or the call timed out.
            self.forget(to);
            // UNIMPLEMENTED: that process serves no CLI, so nothing was done there.
            return match effect {
                _ if status.code() == Code::Unimplemented => Ok(Next::Elsewhere),
                Effect::Idempotent => Ok(Next::Elsewhere),
                Effect::Change => Err(CliError::Unknown(format!(
                    "{to}: {} ({:?}) after the request was sent; it may or may not have \
                     taken effect",
                    status.message(),
                    status.code()
                ))),
            };
        };
        let leader = header(status, LEADER_KEY).and_then(|l| peer_answer(&l).ok());
        match kind.as_str() {
            "NotLeader" => {
                let hint = leader.filter(|l| l != to);
                *lock(&self.leader) = hint.clone();
                Ok(hint.map_or(Next::Elsewhere, Next::Redirect))
            }
            // The address belongs to another process now: ask elsewhere.
            "WrongStore" => {
                self.forget(to);
                Ok(Next::Elsewhere)
            }
            "ShutDown" | "NoSuchGroup" | "Removed" => {
                *lock(&self.leader) = None;
                Ok(Next::Elsewhere)
            }
            "Busy" | "Transferring" | "LeaderNotReady" => Ok(Next::Again),
            "Unknown" => Err(CliError::Unknown(format!("{to}: {}", status.message()))),
            "TimedOut" if effect == Effect::Change => {
                Err(CliError::Unknown(format!("{to}: {}", status.message())))
            }
            _ => Err(CliError::Refused {
                code: status.code(),
                kind,
                message: status.message().to_owned(),
                leader,
            }),
        }
    }

    fn refused(status: &Status) -> CliError {
        let kind = header(status, ERROR_KIND_KEY);
        let message = match (&kind, std::error::Error::source(status)) {
            // A transport failure: tonic's message alone ("transport error") does not say
            // what happened (a connection refused, a TLS alert...); its causes do.
            (None, Some(cause)) => format!("{}: {}", status.message(), tls::error_chain(cause)),
            _ => status.message().to_owned(),
        };
        CliError::Refused {
            code: status.code(),
            kind: kind.unwrap_or_else(|| "Transport".into()),
            message,
            leader: header(status, LEADER_KEY).and_then(|l| peer_answer(&l).ok()),
        }
    }

    /// Runs `call` on the group's leader: the cached one, else the endpoints in turn,
    /// following hints.
    async fn on_leader<T, F, Fut>(&self, effect: Effect, call: F) -> Result<T, CliError>
    where
        F: Fn(Stamped) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let n = self.endpoints.len();
        let mut next_endpoint = 0usize;
        let mut target = lock(&self.leader).clone();
        let mut last = CliError::Unreachable("no attempt made".into());
        // Processes asked during this call: a hint naming one of them again is a view from
        // before an election that is still running (two stale hints can point at each
        // other), so it is followed only after a pause, like any other retry.
        let mut asked: Vec<PeerId> = Vec::new();
        for attempt in 0..self.options.max_attempts.max(1) {
            let to = match target.take() {
                Some(t) => t,
                None => {
                    let e = self.endpoints[next_endpoint % n].clone();
                    next_endpoint += 1;
                    e
                }
            };
            if !asked.contains(&to) {
                asked.push(to.clone());
            }
            let client = match self.connect(&to).await {
                Ok(c) => c,
                Err(e @ CliError::Unreachable(_)) => {
                    self.forget(&to);
                    last = e;
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match call(client).await {
                Ok(answer) => {
                    *lock(&self.leader) = Some(to);
                    return Ok(answer.into_inner());
                }
                Err(status) => {
                    last = Self::refused(&status);
                    match self.judge(&to, &status, effect)? {
                        Next::Redirect(hint) => {
                            if asked.contains(&hint) {
                                tokio::time::sleep(self.backoff(attempt)).await;
                            }
                            target = Some(hint);
                        }
                        Next::Elsewhere => tokio::time::sleep(self.backoff(attempt)).await,
                        Next::Again => {
                            target = Some(to);
                            tokio::time::sleep(self.backoff(attempt)).await;
                        }
                    }
                }
            }
        }
        Err(last)
    }

    /// Runs `call` once on the process `peer` (no routing).
    async fn on_peer<T, F, Fut>(
        &self,
        peer: &PeerId,
        effect: Effect,
        call: F,
    ) -> Result<T, CliError>
    where
        F: FnOnce(Stamped) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.connect(peer).await?;
        match call(client).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => match self.judge(peer, &status, effect)? {
                Next::Redirect(_) | Next::Elsewhere | Next::Again => Err(Self::refused(&status)),
            },
        }
    }

    fn peer_request(&self, peer: &PeerId) -> proto::PeerRequest {
        proto::PeerRequest {
            group: self.group,
            peer: peer.as_str().to_owned(),
            force: self.options.force,
        }
    }

    fn peers_request<'a>(
        &self,
        peers: impl IntoIterator<Item = &'a PeerId>,
    ) -> proto::PeersRequest {
        proto::PeersRequest {
            group: self.group,
            peers: peers.into_iter().map(|p| p.as_str().to_owned()).collect(),
            force: self.options.force,
        }
    }

    fn group_request(&self) -> proto::GroupRequest {
        proto::GroupRequest { group: self.group }
    }

    /// The group's leader: asks the endpoints in turn until one knows it.
    pub async fn get_leader(&self) -> Result<PeerId, CliError> {
        let n = self.endpoints.len();
        let mut last = CliError::Unreachable("no endpoint knows a leader".into());
        for attempt in 0..self.options.max_attempts.max(1) {
            let to = self.endpoints[attempt % n].clone();
            let request = self.group_request();
            match self
                .on_peer(&to, Effect::Idempotent, |mut c| async move {
                    c.get_leader(request).await
                })
                .await
            {
                Ok(reply) if !reply.leader.is_empty() => {
                    let leader = peer_answer(&reply.leader)?;
                    self.remember_leader(&reply.address);
                    return Ok(leader);
                }
                Ok(_) => {
                    last = CliError::Refused {
                        code: Code::FailedPrecondition,
                        kind: "NotLeader".into(),
                        message: "no leader known".into(),
                        leader: None,
                    };
                }
                Err(e @ (CliError::InvalidAnswer(_) | CliError::InvalidArgument(_))) => {
                    return Err(e)
                }
                Err(e) => last = e,
            }
            if (attempt + 1) % n == 0 {
                tokio::time::sleep(self.backoff(attempt / n)).await;
            }
        }
        Err(last)
    }

    /// Voters of the group (asked of the leader).
    pub async fn get_peers(&self) -> Result<Vec<PeerId>, CliError> {
        let request = self.group_request();
        let reply = self
            .on_leader(Effect::Idempotent, |mut c| {
                let r = request;
                async move { c.get_peers(r).await }
            })
            .await?;
        peers_answer(reply)
    }

    /// Voters the leader heard from within an election timeout.
    pub async fn get_alive_peers(&self) -> Result<Vec<PeerId>, CliError> {
        let request = self.group_request();
        let reply = self
            .on_leader(Effect::Idempotent, |mut c| {
                let r = request;
                async move { c.get_alive_peers(r).await }
            })
            .await?;
        peers_answer(reply)
    }

    /// Learners of the group.
    pub async fn get_learners(&self) -> Result<Vec<PeerId>, CliError> {
        let request = self.group_request();
        let reply = self
            .on_leader(Effect::Idempotent, |mut c| {
                let r = request;
                async move { c.get_learners(r).await }
            })
            .await?;
        peers_answer(reply)
    }

    /// Learners the leader heard from within an election timeout.
    pub async fn get_alive_learners(&self) -> Result<Vec<PeerId>, CliError> {
        let request = self.group_request();
        let reply = self
            .on_leader(Effect::Idempotent, |mut c| {
                let r = request;
                async move { c.get_alive_learners(r).await }
            })
            .await?;
        peers_answer(reply)
    }

    async fn change(
        &self,
        call: impl Fn(Stamped) -> BoxFuture<Response<proto::Done>, Status>,
    ) -> Result<(), CliError> {
        self.on_leader(Effect::Change, call).await.map(|_| ())
    }

    /// Adds a voter (it catches up first).
    pub async fn add_peer(&self, peer: &PeerId) -> Result<(), CliError> {
        let r = self.peer_request(peer);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.add_peer(r).await })
        })
        .await
    }

    /// Removes a voter.
    pub async fn remove_peer(&self, peer: &PeerId) -> Result<(), CliError> {
        let r = self.peer_request(peer);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.remove_peer(r).await })
        })
        .await
    }

    /// Makes the voters exactly `peers`.
    pub async fn change_peers(&self, peers: &[PeerId]) -> Result<(), CliError> {
        let r = self.peers_request(peers);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.change_peers(r).await })
        })
        .await
    }

    /// Adds learners.
    pub async fn add_learners(&self, learners: &[PeerId]) -> Result<(), CliError> {
        let r = self.peers_request(learners);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.add_learners(r).await })
        })
        .await
    }

    /// Removes learners.
    pub async fn remove_learners(&self, learners: &[PeerId]) -> Result<(), CliError> {
        let r = self.peers_request(learners);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.remove_learners(r).await })
        })
        .await
    }

    /// Makes the learners exactly `learners` (two changes on the leader: removals, then
    /// additions).
    pub async fn reset_learners(&self, learners: &[PeerId]) -> Result<(), CliError> {
        let r = self.peers_request(learners);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.reset_learners(r).await })
        })
        .await
    }

    /// Promotes a learner to voter.
    pub async fn promote_learner(&self, learner: &PeerId) -> Result<(), CliError> {
        let r = self.peer_request(learner);
        self.change(|mut c| {
            let r = r.clone();
            Box::pin(async move { c.promote_learner(r).await })
        })
        .await
    }

    /// Unsafe, local to `on`: replaces its voters without consensus (recovery of a group
    /// that lost its majority). Sent to `on` only.
    pub async fn reset_peers(&self, on: &PeerId, peers: &[PeerId]) -> Result<(), CliError> {
        let r = self.peers_request(peers);
        self.on_peer(
            on,
            Effect::Change,
            |mut c| async move { c.reset_peers(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Transfers leadership to `target` (`None`: the most up-to-date peer); answers with
    /// the new leader.
    pub async fn transfer_leader(&self, target: Option<&PeerId>) -> Result<PeerId, CliError> {
        let r = proto::PeerRequest {
            group: self.group,
            peer: target.map(|p| p.as_str().to_owned()).unwrap_or_default(),
            force: false,
        };
        let reply = self
            .on_leader(Effect::Change, |mut c| {
                let r = r.clone();
                async move { c.transfer_leader(r).await }
            })
            .await?;
        let leader = peer_answer(&reply.leader)?;
        self.remember_leader(&reply.address);
        Ok(leader)
    }

    /// Takes a snapshot on the process `on`; answers with its index.
    pub async fn snapshot(&self, on: &PeerId) -> Result<u64, CliError> {
        let r = self.group_request();
        let reply = self
            .on_peer(on, Effect::Idempotent, |mut c| async move {
                c.snapshot(r).await
            })
            .await?;
        Ok(reply.index)
    }

    /// Moves leaders of `groups` so that no process leads more than
    /// `ceil(groups / processes)` of them (processes: every voter of those groups). Driven
    /// from this client; answers with each group's leader afterwards.
    pub async fn rebalance(
        &self,
        groups: &[GroupId],
    ) -> Result<BTreeMap<GroupId, PeerId>, CliError> {
        let mut leaders = BTreeMap::new();
        let mut voters: BTreeMap<GroupId, Vec<PeerId>> = BTreeMap::new();
        let mut processes = BTreeSet::new();
        let clients: BTreeMap<GroupId, CliClient> =
            groups.iter().map(|g| (*g, self.for_group(*g))).collect();
        for (group, client) in &clients {
            let peers = client.get_peers().await?;
            let leader = client.get_leader().await?;
            processes.extend(peers.iter().cloned());
            leaders.insert(*group, leader);
            voters.insert(*group, peers);
        }
        if processes.is_empty() {
            return Ok(leaders);
        }
        let expected = leaders.len().div_ceil(processes.len());
        let mut failures = 0usize;
        while failures <= self.options.max_attempts {
            let mut counts: BTreeMap<PeerId, usize> =
                processes.iter().map(|p| (p.clone(), 0)).collect();
            for leader in leaders.values() {
                *counts.entry(leader.clone()).or_insert(0) += 1;
            }
            let Some((busiest, _)) = counts
                .iter()
                .filter(|(_, c)| **c > expected)
                .max_by_key(|(_, c)| **c)
            else {
                return Ok(leaders);
            };
            // A group the busiest leads, moved to its least-loaded voter under the limit.
            let mut plan = None;
            for (group, leader) in &leaders {
                if leader != busiest {
                    continue;
                }
                let target = voters
                    .get(group)
                    .into_iter()
                    .flatten()
                    .filter(|p| counts.get(*p).copied().unwrap_or(0) < expected)
                    .min_by_key(|p| counts.get(*p).copied().unwrap_or(0));
                if let Some(target) = target {
                    plan = Some((*group, target.clone()));
                    break;
                }
            }
            let Some((group, target)) = plan else {
                return Err(CliError::Refused {
                    code: Code::FailedPrecondition,
                    kind: "Unbalanceable".into(),
                    message: format!("no voter of {busiest}'s groups can take a leader"),
                    leader: None,
                });
            };
            let client = &clients[&group];
            match client.transfer_leader(Some(&target)).await {
                Ok(new) => {
                    leaders.insert(group, new);
                }
                Err(e @ CliError::Unknown(_)) => return Err(e),
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(self.backoff(failures)).await;
                    if let Ok(leader) = client.get_leader().await {
                        leaders.insert(group, leader);
                    }
                }
            }
        }
        Err(CliError::Unreachable(format!(
            "leaders still unbalanced after {failures} failed transfers"
        )))
    }
}
