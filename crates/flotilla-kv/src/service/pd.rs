//! The placement driver's gRPC service (`proto/pd.proto`, `flotilla.pd.v1.Pd`), served by
//! every store next to the KV service. Every call is answered by the PD leader (the store
//! leading the meta group); another store refuses with `NotLeader` naming it, or
//! `PdUnavailable` when it knows none (callers follow the hint: `crate::store`'s reports
//! and `flotilla admin`).
//!
//! Owns: translation between protobuf and the store's PD calls, and who may make them
//! under TLS (stores report; stores and admins ask and change). Must never: let a request
//! change anything before the store checked it.

use flotilla_node::grpc::roles::Role;
use tonic::{Request, Response, Status};

use super::proto::pd as proto;
use super::{require, status_of};
use crate::store::Store;

/// The PD service of one store.
#[derive(Clone, Debug)]
pub struct PdService {
    store: Store,
}

/// The PD service of `store` (what `crate::server` serves).
pub(crate) fn pd_server(store: Store) -> proto::pd_server::PdServer<PdService> {
    proto::pd_server::PdServer::new(PdService { store })
        .max_decoding_message_size(crate::limits::KV_MESSAGE_BYTES_MAX)
}

#[tonic::async_trait]
impl proto::pd_server::Pd for PdService {
    async fn store_heartbeat(
        &self,
        request: Request<proto::StoreHeartbeatRequest>,
    ) -> Result<Response<proto::StoreHeartbeatReply>, Status> {
        require(&request, &[Role::Store], "a store heartbeat")?;
        self.store
            .on_store_heartbeat(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn region_heartbeat(
        &self,
        request: Request<proto::RegionHeartbeatRequest>,
    ) -> Result<Response<proto::RegionHeartbeatReply>, Status> {
        require(&request, &[Role::Store], "a region report")?;
        self.store
            .on_region_heartbeat(request.into_inner())
            .await
            .map(|()| Response::new(proto::RegionHeartbeatReply {}))
            .map_err(|e| status_of(&e))
    }

    async fn status(
        &self,
        request: Request<proto::PdStatusRequest>,
    ) -> Result<Response<proto::PdStatusReply>, Status> {
        require(
            &request,
            &[Role::Store, Role::Admin, Role::Client],
            "pd status",
        )?;
        self.store
            .pd_status()
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn config_set(
        &self,
        request: Request<proto::ConfigSetRequest>,
    ) -> Result<Response<proto::ConfigSetReply>, Status> {
        require(&request, &[Role::Admin], "pd config set")?;
        let request = request.into_inner();
        self.store
            .pd_config_set(&request.key, &request.value)
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn store_remove(
        &self,
        request: Request<proto::StoreRemoveRequest>,
    ) -> Result<Response<proto::StoreRemoveReply>, Status> {
        require(&request, &[Role::Admin], "store remove")?;
        self.store
            .pd_store_remove(&request.into_inner().store)
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn pause(
        &self,
        request: Request<proto::PauseRequest>,
    ) -> Result<Response<proto::PauseReply>, Status> {
        require(&request, &[Role::Admin], "pd pause")?;
        self.store
            .pd_pause(request.into_inner().paused)
            .await
            .map(|paused| Response::new(proto::PauseReply { paused }))
            .map_err(|e| status_of(&e))
    }

    async fn alloc_ids(
        &self,
        request: Request<proto::AllocIdsRequest>,
    ) -> Result<Response<proto::AllocIdsReply>, Status> {
        require(&request, &[Role::Store, Role::Admin], "pd alloc ids")?;
        self.store
            .pd_alloc_ids(request.into_inner().count)
            .await
            .map(|(first, count)| Response::new(proto::AllocIdsReply { first, count }))
            .map_err(|e| status_of(&e))
    }

    async fn merge(
        &self,
        request: Request<proto::MergeRequest>,
    ) -> Result<Response<proto::MergeReply>, Status> {
        require(&request, &[Role::Admin], "pd merge")?;
        let request = request.into_inner();
        self.store
            .pd_merge(request.source, request.target)
            .await
            .map(|(operator, steps)| Response::new(proto::MergeReply { operator, steps }))
            .map_err(|e| status_of(&e))
    }

    async fn hold(
        &self,
        request: Request<proto::HoldRequest>,
    ) -> Result<Response<proto::HoldReply>, Status> {
        require(&request, &[Role::Admin], "pd hold")?;
        let request = request.into_inner();
        let by: String = request.by.chars().take(128).collect();
        self.store
            .pd_hold(request.region, request.hold, &by)
            .map(|held| Response::new(proto::HoldReply { held }))
            .map_err(|e| status_of(&e))
    }

    async fn open_meta_peer(
        &self,
        request: Request<proto::OpenMetaPeerRequest>,
    ) -> Result<Response<proto::OpenMetaPeerReply>, Status> {
        super::check_receiver_of(&self.store, &request, "OpenMetaPeer")?;
        self.store
            .open_meta_peer(request.into_inner().cluster)
            .await
            .map(|()| Response::new(proto::OpenMetaPeerReply {}))
            .map_err(|e| status_of(&e))
    }
}
