//! The server side of the CLI service: [`CliService`] answers CLI calls with this process's
//! nodes ([`CliNodes`]). Membership changes, transfers and the leader-only queries are
//! answered by the group's leader; others refuse with `NotLeader` and the leader they know
//! of. A `Rebalance` call is driven from this process by a [`super::CliClient`].
//!
//! Owns: validation of requests (peer ids, list sizes) and turning each call into a
//! [`Node`] operation. Must never: act on a request it could not validate.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_raft::{PeerId, RaftError};
use flotilla_storage::GroupId;
use tonic::{Code, Request, Response, Status};

use super::super::tls::TlsConfig;
use super::client::CliClient;
use super::metadata::{invalid, status_of, status_with};
use super::options::CliOptions;
use super::peers::{names, parse_peer, parse_peers, REQUEST_PEERS_MAX};
use super::proto;
use crate::error::NodeError;
use crate::identity::{AddressBook, Identity};
use crate::manager::NodeManager;
use crate::node::Node;

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
        let asked_by = super::super::roles::remote_of(request.extensions());
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
