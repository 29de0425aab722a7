//! [`CliClient`], the Rust client of the CLI service: finds a group's leader, follows "not
//! leader" hints, retries within bounds ([`super::retry`]) and names its receiver in every
//! call ([`super::Stamp`]).
//!
//! Owns: the client's connections, its cached leader and the cluster its endpoints must
//! all belong to. Must never: retry an operation whose outcome is unknown (it answers
//! [`CliError::Unknown`] instead), or trust a peer's answer without checking it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use super::super::outbound::connect_channel;
use super::super::tls;
use super::error::CliError;
use super::metadata::Stamp;
use super::options::CliOptions;
use super::peers::{peer_answer, peers_answer, valid_peer_text};
use super::proto;
use super::proto::cli_client::CliClient as GrpcCliClient;
use super::retry::{self, Effect, Next, Routing};

/// A CLI client whose calls name their receiver.
type Stamped = GrpcCliClient<tonic::service::interceptor::InterceptedService<Channel, Stamp>>;

/// A client of the CLI service for one group, over a list of endpoints (process
/// addresses; the peers its calls name are peer ids, and so are the ones it answers). It finds the leader (asking any endpoint, following hints), retries on "not
/// leader" with the hint and on connection failures with the next endpoint, within
/// [`CliOptions::attempts_max`] and with back-off. Cheap to clone;
/// [`CliClient::for_group`] shares the connections.
#[derive(Clone, Debug)]
pub struct CliClient {
    endpoints: Vec<PeerId>,
    group: GroupId,
    pub(crate) options: CliOptions,
    channels: Arc<Mutex<HashMap<PeerId, (Channel, Stamp)>>>,
    leader: Arc<Mutex<Option<PeerId>>>,
    /// The cluster the first endpoint answered for: every other must answer the same.
    cluster: Arc<Mutex<Option<u64>>>,
}

/// Locks `m`, whatever a panicking holder left.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
                let channel = connect_channel(&endpoint, self.options.tls.as_ref())
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

    /// The pause before attempt `attempt + 1` ([`retry::backoff`]).
    pub(crate) fn backoff(&self, attempt: usize) -> Duration {
        retry::backoff(&self.options, attempt)
    }

    /// Classifies a failed call to `to` ([`retry::judge`]) and updates the routing as it
    /// says: either what to try next, or the final error.
    fn judge(&self, to: &PeerId, status: &Status, effect: Effect) -> Result<Next, CliError> {
        let (routing, next) = retry::judge(to, status, effect);
        match routing {
            Routing::Keep => {}
            Routing::Forget => self.forget(to),
            Routing::Leader(leader) => *lock(&self.leader) = leader,
        }
        next
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
        for attempt in 0..self.options.attempts_max.max(1) {
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
                    last = retry::refused(&status);
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
                Next::Redirect(_) | Next::Elsewhere | Next::Again => Err(retry::refused(&status)),
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
        for attempt in 0..self.options.attempts_max.max(1) {
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
}
