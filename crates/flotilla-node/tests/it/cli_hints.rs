//! `CliClient` during an election: two processes whose NotLeader hints point at each other
//! (each still believes the other leads) must not use up the client's attempts at once;
//! the client follows a hint naming a process it already asked only after a pause, so it
//! outlasts the election and reaches the leader that emerges.

use std::time::{Duration, Instant};

use flotilla_node::grpc::cli::{proto, ERROR_KIND_KEY, LEADER_KEY};
use flotilla_node::grpc::{CliClient, CliOptions};
use flotilla_node::PeerId;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A CLI server that answers NotLeader naming `hint` until `leads_from` has passed (if
/// ever), then answers `GetPeers` as the leader. Every other call is refused.
struct Stub {
    hint: PeerId,
    started: Instant,
    leads_from: Option<Duration>,
    peers: Vec<String>,
}

impl Stub {
    fn not_leader(&self) -> Status {
        let mut status = Status::failed_precondition("not the leader (stub)");
        status
            .metadata_mut()
            .insert(ERROR_KIND_KEY, MetadataValue::from_static("NotLeader"));
        status.metadata_mut().insert(
            LEADER_KEY,
            MetadataValue::try_from(self.hint.as_str()).expect("ascii address"),
        );
        status
    }

    fn leads(&self) -> bool {
        self.leads_from
            .is_some_and(|after| self.started.elapsed() >= after)
    }
}

fn refused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not served by this stub"))
}

#[tonic::async_trait]
impl proto::cli_server::Cli for Stub {
    async fn identify(
        &self,
        _: Request<proto::IdentifyRequest>,
    ) -> Result<Response<proto::IdentifyReply>, Status> {
        Ok(Response::new(proto::IdentifyReply {
            peer: "stub".into(),
            cluster: 0,
            address: String::new(),
        }))
    }
    async fn add_peer(
        &self,
        _: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn remove_peer(
        &self,
        _: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn change_peers(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn add_learners(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn remove_learners(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn reset_learners(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn promote_learner(
        &self,
        _: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn reset_peers(
        &self,
        _: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        refused()
    }
    async fn transfer_leader(
        &self,
        _: Request<proto::PeerRequest>,
    ) -> Result<Response<proto::LeaderReply>, Status> {
        refused()
    }
    async fn snapshot(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::SnapshotReply>, Status> {
        refused()
    }
    async fn get_leader(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::LeaderReply>, Status> {
        refused()
    }
    async fn get_peers(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        if self.leads() {
            Ok(Response::new(proto::PeersReply {
                peers: self.peers.clone(),
                addresses: self.peers.clone(),
            }))
        } else {
            Err(self.not_leader())
        }
    }
    async fn get_alive_peers(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        refused()
    }
    async fn get_learners(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        refused()
    }
    async fn get_alive_learners(
        &self,
        _: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::PeersReply>, Status> {
        refused()
    }
    async fn rebalance(
        &self,
        _: Request<proto::RebalanceRequest>,
    ) -> Result<Response<proto::RebalanceReply>, Status> {
        refused()
    }
}

async fn listener() -> (tokio::net::TcpListener, PeerId) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = PeerId::new(&listener.local_addr().expect("address").to_string());
    (listener, address)
}

fn serve(listener: tokio::net::TcpListener, stub: Stub) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                proto::cli_server::CliServer::new(stub),
                TcpIncoming::from(listener),
                std::future::pending::<()>(),
            )
            .await;
    })
}

/// Two processes, `a` and `b`, each naming the other as leader; `b` leads from
/// `b_leads_from` on (if ever). Returns what `get_peers` through `a` answered.
async fn ask_during_election(b_leads_from: Option<Duration>) -> Result<Vec<PeerId>, String> {
    let (a_listener, a) = listener().await;
    let (b_listener, b) = listener().await;
    let peers = vec![a.to_string(), b.to_string()];
    let started = Instant::now();
    let servers = [
        serve(
            a_listener,
            Stub {
                hint: b.clone(),
                started,
                leads_from: None,
                peers: peers.clone(),
            },
        ),
        serve(
            b_listener,
            Stub {
                hint: a.clone(),
                started,
                leads_from: b_leads_from,
                peers,
            },
        ),
    ];
    let client = CliClient::new(vec![a], 1)
        .expect("client")
        .with_options(CliOptions::default());
    let answer = client.get_peers().await.map_err(|e| e.to_string());
    for server in servers {
        server.abort();
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_pointing_at_each_other_are_followed_after_a_pause() {
    // The election ends 300 ms in: the client's ten attempts, paced by its back-off once
    // the hints go round in a circle, still have some left by then.
    let answer = ask_during_election(Some(Duration::from_millis(300))).await;
    let peers = answer.expect("the client outlasted the election");
    assert_eq!(peers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_that_never_settle_end_in_not_leader() {
    let answer = ask_during_election(None).await;
    let error = answer.expect_err("no process ever leads");
    assert!(
        error.contains("NotLeader") || error.contains("not the leader"),
        "{error}"
    );
}
