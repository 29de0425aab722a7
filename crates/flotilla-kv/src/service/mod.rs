//! The KV service (`proto/kv.proto`, `flotilla.kv.v1.Kv`): RheaKV's region KV API over
//! gRPC, served for a [`Store`] on its one address next to the raft stream, the CLI service
//! and `GET /metrics` (composed by `crate::server`).
//!
//! Owns: translation between protobuf and the store's calls, and the error mapping: every
//! refusal is a gRPC status whose metadata carries `flotilla-error-kind` (and
//! `flotilla-leader` when a leader is known), the same keys as the CLI service. Must never:
//! let a malformed request reach the store (field limits are checked here or by the
//! store before anything is proposed).

use flotilla_node::grpc::roles::{self, Role};
use flotilla_node::grpc::{ERROR_KIND_KEY, LEADER_KEY};
use flotilla_node::ReadMode;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::command::{KvCommand, KvOutput};
use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::region::region_of;
use crate::store::{SplitAt, Store};

/// The protobuf messages and the tonic client and server generated from `proto/kv.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;

mod pd;
pub mod watch;
pub(crate) use pd::pd_server;
pub use pd::PdService;

pub use crate::limits::KV_MESSAGE_BYTES_MAX;
pub use crate::region::REGION_KEY;

/// The kind name of `error` carried in `flotilla-error-kind`.
#[must_use]
pub fn kind_of(error: &KvError) -> String {
    match error {
        KvError::KeyEmpty => "KeyEmpty".into(),
        KvError::RegionRefused(_) => "RegionRefused".into(),
        KvError::NoSpace { .. } => "NoSpace".into(),
        KvError::KeyTooLarge { .. } => "KeyTooLarge".into(),
        KvError::ValueTooLarge { .. } => "ValueTooLarge".into(),
        KvError::BatchTooLarge { .. } => "BatchTooLarge".into(),
        KvError::CommandTooLarge { .. } => "CommandTooLarge".into(),
        KvError::ScanLimitTooLarge { .. } => "ScanLimitTooLarge".into(),
        KvError::KeyOutOfRegion { .. } => "KeyOutOfRegion".into(),
        KvError::InvalidRange { .. } => "InvalidRange".into(),
        KvError::Corrupt(_) => "Corrupt".into(),
        KvError::Engine(_) | KvError::RangeInconsistent { .. } => "Engine".into(),
        KvError::StaleEpoch { .. } => "StaleEpoch".into(),
        KvError::NotLeader { .. } => "NotLeader".into(),
        KvError::NoSuchRegion(_) => "NoSuchRegion".into(),
        KvError::Busy(_) => "Busy".into(),
        KvError::Unknown(_) => "Unknown".into(),
        KvError::Refused(_) => "Refused".into(),
        KvError::Node { kind, .. } => kind.clone(),
    }
}

fn code_of(error: &KvError) -> Code {
    match error {
        KvError::KeyEmpty
        | KvError::RegionRefused(_)
        | KvError::KeyTooLarge { .. }
        | KvError::ValueTooLarge { .. }
        | KvError::BatchTooLarge { .. }
        | KvError::CommandTooLarge { .. }
        | KvError::ScanLimitTooLarge { .. }
        | KvError::KeyOutOfRegion { .. }
        | KvError::InvalidRange { .. }
        | KvError::Corrupt(_)
        | KvError::Refused(_) => Code::InvalidArgument,
        KvError::StaleEpoch { .. } | KvError::NotLeader { .. } => Code::FailedPrecondition,
        KvError::NoSuchRegion(_) => Code::NotFound,
        // etcd answers its NOSPACE alarm with RESOURCE_EXHAUSTED too.
        KvError::Busy(_) | KvError::NoSpace { .. } => Code::ResourceExhausted,
        KvError::Unknown(_) => Code::Unknown,
        KvError::Engine(_) | KvError::RangeInconsistent { .. } => Code::Internal,
        KvError::Node { kind, .. } => match kind.as_str() {
            "TimedOut" => Code::DeadlineExceeded,
            "InvalidArgument" => Code::InvalidArgument,
            "Io" | "StateMachine" => Code::Internal,
            _ => Code::Unavailable,
        },
    }
}

/// The status a KV call ends with when it failed with `error`.
#[must_use]
pub fn status_of(error: &KvError) -> Status {
    let mut status = Status::new(code_of(error), error.to_string());
    if let Ok(kind) = MetadataValue::try_from(kind_of(error)) {
        status.metadata_mut().insert(ERROR_KIND_KEY, kind);
    }
    if let KvError::StaleEpoch { now: Some(now), .. } = error {
        let encoded: String = now.iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(value) = MetadataValue::try_from(encoded) {
            status.metadata_mut().insert(REGION_KEY, value);
        }
    }
    if let KvError::NotLeader {
        leader: Some(leader),
        ..
    } = error
    {
        if let Ok(value) = MetadataValue::try_from(leader.as_str()) {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    status
}

/// Under TLS, refuses a request whose certificate's role is not in `allowed`.
fn require<T>(request: &Request<T>, allowed: &[Role], what: &str) -> Result<(), Status> {
    roles::peer_info(request.extensions())
        .role
        .require(allowed, what)
        .map(|_| ())
        .map_err(|why| {
            let mut status = Status::permission_denied(why);
            status.metadata_mut().insert(
                ERROR_KIND_KEY,
                MetadataValue::from_static("PermissionDenied"),
            );
            status
        })
}

fn invalid(message: String) -> Status {
    status_of(&KvError::Node {
        kind: "InvalidArgument".into(),
        message,
    })
}

fn context(context: Option<proto::RegionContext>) -> Result<(RegionId, Epoch), Status> {
    let context = context.ok_or_else(|| invalid("request without a region context".into()))?;
    Ok((
        RegionId(context.region_id),
        Epoch::new(context.conf_version, context.version),
    ))
}

fn read_mode(mode: i32) -> Result<Option<ReadMode>, Status> {
    match proto::ReadMode::try_from(mode) {
        Ok(proto::ReadMode::ReadIndex) => Ok(Some(ReadMode::ReadIndex)),
        Ok(proto::ReadMode::Lease) => Ok(Some(ReadMode::Lease)),
        Ok(proto::ReadMode::Follower) => Ok(None),
        Err(_) => Err(invalid(format!("unknown read mode {mode}"))),
    }
}

/// The command of a `Write` request's ops (one op as itself, several as a batch).
pub fn command_of(ops: Vec<proto::Op>) -> Result<KvCommand, Status> {
    if ops.is_empty() {
        return Err(invalid("write without ops".into()));
    }
    let mut commands = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        use proto::op::Op;
        let fence = op.fence;
        let lease = op.lease_id;
        let command = match op.op {
            Some(Op::Put(p)) => KvCommand::Put {
                key: p.key,
                value: p.value,
            },
            Some(Op::Delete(d)) => KvCommand::Delete { key: d.key },
            Some(Op::DeleteRange(r)) => KvCommand::DeleteRange {
                start: r.start,
                end: r.end,
            },
            Some(Op::CompareAndPut(c)) => KvCommand::CompareAndPut {
                key: c.key,
                expected: c.expected,
                value: c.value,
            },
            Some(Op::PutIfAbsent(p)) => KvCommand::PutIfAbsent {
                key: p.key,
                value: p.value,
            },
            Some(Op::GetAndPut(p)) => KvCommand::GetAndPut {
                key: p.key,
                value: p.value,
            },
            Some(Op::SequenceNext(n)) => KvCommand::SequenceNext {
                key: n.key,
                step: n.step,
            },
            Some(Op::SequenceLatest(d)) => KvCommand::SequenceLatest { key: d.key },
            Some(Op::SequenceReset(d)) => KvCommand::SequenceReset { key: d.key },
            Some(Op::Lock(l)) => {
                use proto::lock_request::Kind;
                let op = match Kind::try_from(l.kind) {
                    Ok(Kind::Acquire) => crate::lock::LockOp::Acquire {
                        owner: l.owner,
                        lease_ms: l.lease_ms,
                    },
                    Ok(Kind::Renew) => crate::lock::LockOp::Renew { owner: l.owner },
                    Ok(Kind::Release) => crate::lock::LockOp::Release { owner: l.owner },
                    Ok(Kind::Status) => crate::lock::LockOp::Status,
                    Err(_) => return Err(invalid(format!("op {i}: unknown lock op {}", l.kind))),
                };
                // The leader stamps the time when it proposes (`Store::write`).
                KvCommand::Lock {
                    name: l.name,
                    op,
                    now_ms: 0,
                    wall_ms: 0,
                }
            }
            Some(Op::Lease(l)) => {
                use crate::lease::LeaseOp;
                use proto::lease_request::Kind;
                let op = match Kind::try_from(l.kind) {
                    Ok(Kind::Grant) => LeaseOp::Grant { ttl_ms: l.ttl_ms },
                    Ok(Kind::KeepAlive) => LeaseOp::KeepAlive,
                    Ok(Kind::Revoke) => LeaseOp::Revoke,
                    Ok(Kind::Attach) => LeaseOp::Attach { key: l.key },
                    Ok(Kind::Status) => LeaseOp::Status,
                    Ok(Kind::Expire) => LeaseOp::Expire,
                    Ok(Kind::Forget) => LeaseOp::Forget { keys: l.keys },
                    Err(_) => return Err(invalid(format!("op {i}: unknown lease op {}", l.kind))),
                };
                // The leader stamps the time when it proposes (`Store::write`).
                KvCommand::Lease {
                    key: crate::lease::route_key(l.id),
                    op,
                    now_ms: 0,
                }
            }
            Some(Op::LeaseDelete(d)) => KvCommand::LeaseDelete {
                key: d.key,
                lease: d.lease,
            },
            None => return Err(invalid(format!("op {i} is empty"))),
        };
        let command = if lease == 0 {
            command
        } else {
            KvCommand::Leased {
                lease,
                command: Box::new(command),
            }
        };
        let command = match fence {
            Some(fence) => KvCommand::Fenced {
                lock: fence.lock,
                token: fence.token,
                command: Box::new(command),
            },
            None => command,
        };
        commands.push(command);
    }
    if commands.len() == 1 {
        Ok(commands.pop().unwrap_or(KvCommand::Batch(Vec::new())))
    } else {
        Ok(KvCommand::Batch(commands))
    }
}

fn result_of(output: Result<KvOutput, String>) -> proto::OpResult {
    use proto::op_result::Result as R;
    let result = match output {
        Ok(KvOutput::Done) => R::Done(true),
        Ok(KvOutput::Swapped(swapped)) => R::Swapped(swapped),
        Ok(KvOutput::Previous(previous)) => R::Previous(proto::MaybeValue {
            found: previous.is_some(),
            value: previous.unwrap_or_default(),
            lease: 0,
        }),
        Ok(KvOutput::Range { start, end }) => R::Range(proto::Range { start, end }),
        Ok(KvOutput::Counter(next)) => R::Counter(next),
        Ok(KvOutput::Lock(state)) => R::Lock(proto::LockState {
            acquired: state.acquired,
            held: state.held,
            owner: state.owner,
            token: state.token,
            lease_ms: state.lease_ms,
            remaining_ms: state.remaining_ms,
            count: state.count,
        }),
        Ok(KvOutput::Lease(state)) => R::Lease(proto::LeaseState {
            ttl_ms: state.ttl_ms,
            remaining_ms: state.remaining_ms,
            alive: state.alive,
            keys: state.keys,
        }),
        Ok(KvOutput::Batch(_)) => R::Error("nested batch output".into()),
        Err(why) => R::Error(why),
    };
    proto::OpResult {
        result: Some(result),
    }
}

/// The protobuf form of a region's status.
#[must_use]
pub fn region_info(status: &crate::store::RegionStatus) -> proto::RegionInfo {
    proto::RegionInfo {
        id: status.region.id.0,
        start: status.region.start.clone(),
        end: status.region.end.clone(),
        conf_version: status.region.epoch.conf_version,
        version: status.region.epoch.version,
        leader: status.leader.clone().unwrap_or_default(),
        term: status.term,
        peers: status.peers.clone(),
        learners: status.learners.clone(),
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        role: status.role.clone(),
        leader_id: status.leader_id.clone().unwrap_or_default(),
        peer_ids: status.peer_ids.clone(),
        learner_ids: status.learner_ids.clone(),
    }
}

/// The KV service of one store (what `crate::server` serves: [`kv_server`]).
pub(crate) struct KvService {
    store: Store,
}

/// The KV service of `store`, with the message limits ([`KV_MESSAGE_BYTES_MAX`]) both ways.
pub(crate) fn kv_server(store: Store) -> proto::kv_server::KvServer<KvService> {
    proto::kv_server::KvServer::new(KvService { store })
        .max_decoding_message_size(KV_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(KV_MESSAGE_BYTES_MAX)
}

#[tonic::async_trait]
impl proto::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        let r = request.into_inner();
        let (id, epoch) = context(r.context)?;
        let mode = read_mode(r.read)?;
        let marks = |store: &Store| {
            store
                .lease_marks(id, std::slice::from_ref(&r.key))
                .map(|m| m.first().copied().unwrap_or(0))
                .map_err(|e| status_of(&e))
        };
        // The value and its lease read alike: the mark looked at before and after (a write
        // in between changes the mark or leaves the value under the same lease).
        let mut rounds = 0;
        let (value, lease) = loop {
            let before = marks(&self.store)?;
            let value = self
                .store
                .get(id, epoch, r.key.clone(), mode)
                .await
                .map_err(|e| status_of(&e))?;
            let after = marks(&self.store)?;
            rounds += 1;
            if before == after || rounds == 3 {
                break (value, after.max(before));
            }
        };
        Ok(Response::new(proto::GetReply {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            lease,
        }))
    }

    async fn multi_get(
        &self,
        request: Request<proto::MultiGetRequest>,
    ) -> Result<Response<proto::MultiGetReply>, Status> {
        let r = request.into_inner();
        let (id, epoch) = context(r.context)?;
        let mode = read_mode(r.read)?;
        let values = self
            .store
            .multi_get(id, epoch, r.keys.clone(), mode)
            .await
            .map_err(|e| status_of(&e))?;
        let leases = self
            .store
            .lease_marks(id, &r.keys)
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::MultiGetReply {
            values: values
                .into_iter()
                .zip(leases)
                .map(|(v, lease)| proto::MaybeValue {
                    found: v.is_some(),
                    value: v.unwrap_or_default(),
                    lease,
                })
                .collect(),
        }))
    }

    async fn scan(
        &self,
        request: Request<proto::ScanRequest>,
    ) -> Result<Response<proto::ScanReply>, Status> {
        let r = request.into_inner();
        let (id, epoch) = context(r.context)?;
        let mode = read_mode(r.read)?;
        let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        let (entries, more) = self
            .store
            .scan(
                id,
                epoch,
                r.start,
                r.end,
                limit,
                r.reverse,
                r.keys_only,
                mode,
            )
            .await
            .map_err(|e| status_of(&e))?;
        let keys: Vec<bytes::Bytes> = entries.iter().map(|(key, _)| key.clone()).collect();
        let leases = self
            .store
            .lease_marks(id, &keys)
            .map_err(|e| status_of(&e))?;
        // Keys only: the store read no value, every one here is empty.
        Ok(Response::new(proto::ScanReply {
            entries: entries
                .into_iter()
                .zip(leases)
                .map(|((key, value), lease)| proto::KeyValue { key, value, lease })
                .collect(),
            more,
        }))
    }

    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let r = request.into_inner();
        let (id, epoch) = context(r.context)?;
        let command = command_of(r.ops)?;
        let batched = matches!(command, KvCommand::Batch(_));
        let output = self
            .store
            .write(id, epoch, command)
            .await
            .map_err(|e| status_of(&e))?;
        let results = match (batched, output) {
            (true, KvOutput::Batch(outputs)) => outputs.into_iter().map(result_of).collect(),
            (
                false,
                output @ (KvOutput::Done
                | KvOutput::Swapped(_)
                | KvOutput::Previous(_)
                | KvOutput::Range { .. }
                | KvOutput::Counter(_)
                | KvOutput::Lock(_)
                | KvOutput::Lease(_)),
            ) => vec![result_of(Ok(output))],
            (_, other) => {
                return Err(status_of(&KvError::Unknown(format!(
                    "the state machine answered {other:?} to a {} write",
                    if batched { "batched" } else { "single" }
                ))))
            }
        };
        Ok(Response::new(proto::WriteReply { results }))
    }

    type LeaseKeepAliveStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::LeaseKeepAliveReply, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<tonic::Streaming<proto::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        // One request answered at a time, at most 16 answers waiting: a client that stops
        // reading stops being served.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let id = request.id;
                let reply = match store.lease_keep_alive(id).await {
                    Ok(state) => proto::LeaseKeepAliveReply {
                        id,
                        ttl_ms: state.ttl_ms,
                        remaining_ms: state.remaining_ms,
                        error_kind: String::new(),
                        error: String::new(),
                    },
                    Err(e) => proto::LeaseKeepAliveReply {
                        id,
                        ttl_ms: 0,
                        remaining_ms: 0,
                        error_kind: e.kind,
                        error: e.message,
                    },
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<proto::WatchReply, Status>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let context = request.context.unwrap_or_default();
        let cursor = request
            .cursor
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("watch: the cursor is missing"))
            .and_then(|cursor| watch::cursor_from_proto(cursor).map_err(|e| status_of(&e)))?;
        let mut messages = self
            .store
            .watch(RegionId(context.region_id), cursor, request.from_now)
            .await
            .map_err(|e| status_of(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                // A watcher that went away ends the store's stream at once (it renews the
                // region's interest while it runs), not at the next change.
                let message = tokio::select! {
                    message = messages.recv() => message,
                    () = tx.closed() => return,
                };
                let Some(message) = message else {
                    return;
                };
                let reply = watch::reply_of(message).map_err(|e| status_of(&e));
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn regions(
        &self,
        _request: Request<proto::RegionsRequest>,
    ) -> Result<Response<proto::RegionsReply>, Status> {
        Ok(Response::new(self.regions_reply()))
    }

    async fn open_region(
        &self,
        request: Request<proto::OpenRegionRequest>,
    ) -> Result<Response<proto::RegionsReply>, Status> {
        self.check_receiver(&request, "OpenRegion")?;
        let r = request.into_inner();
        let info = r
            .region
            .ok_or_else(|| invalid("open region without a region".into()))?;
        let region = region_of(&info)
            .map_err(|e| status_of(&KvError::RegionRefused(format!("region {}: {e}", info.id))))?;
        self.store
            .open_region(region, r.cluster)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(self.regions_reply()))
    }

    async fn close_region(
        &self,
        request: Request<proto::CloseRegionRequest>,
    ) -> Result<Response<proto::RegionsReply>, Status> {
        self.check_receiver(&request, "CloseRegion")?;
        let r = request.into_inner();
        self.store
            .close_region(RegionId(r.region_id))
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(self.regions_reply()))
    }

    async fn split_region(
        &self,
        request: Request<proto::SplitRegionRequest>,
    ) -> Result<Response<proto::SplitRegionReply>, Status> {
        // The placement driver runs inside a store: its splits come with a store's role.
        require(&request, &[Role::Admin, Role::Store], "a region split")?;
        let r = request.into_inner();
        let version = (r.version != 0).then_some(r.version);
        let how = if r.by_load {
            SplitAt::Load
        } else {
            SplitAt::Key(r.key)
        };
        let (parent, child) = self
            .store
            .split_region_at(RegionId(r.region_id), how, version)
            .await
            .map_err(|e| status_of(&e))?;
        let info = |region: crate::region::Region| proto::RegionInfo {
            id: region.id.0,
            start: region.start,
            end: region.end,
            conf_version: region.epoch.conf_version,
            version: region.epoch.version,
            ..proto::RegionInfo::default()
        };
        Ok(Response::new(proto::SplitRegionReply {
            parent: Some(info(parent)),
            child: Some(info(child)),
        }))
    }

    async fn backup_region(
        &self,
        request: Request<proto::BackupRegionRequest>,
    ) -> Result<Response<proto::BackupRegionReply>, Status> {
        require(&request, &[Role::Admin], "a region backup")?;
        let id = RegionId(request.into_inner().region_id);
        let meta = self
            .store
            .backup_snapshot(id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::BackupRegionReply {
            store: self.store.id().as_str().to_string(),
            cluster: self.store.cluster(),
            index: meta.index.0,
            term: meta.term.0,
        }))
    }

    async fn merge_step(
        &self,
        request: Request<proto::MergeStepRequest>,
    ) -> Result<Response<proto::MergeStepReply>, Status> {
        require(&request, &[Role::Admin, Role::Store], "a merge step")?;
        let r = request.into_inner();
        let id = RegionId(r.region_id);
        let store = &self.store;
        let fail = |e: KvError| status_of(&e);
        let decode_state = |data: &[u8]| {
            crate::merge::MergeState::decode(data).map_err(|e| {
                status_of(&KvError::Refused(format!(
                    "merge step: the merge state: {e}"
                )))
            })
        };
        match r.phase {
            1 => {
                let target = r.target.ok_or_else(|| {
                    status_of(&KvError::Refused(
                        "merge step: prepare names no target".into(),
                    ))
                })?;
                let target = crate::region::Region::new(
                    RegionId(target.id),
                    target.start,
                    target.end,
                    Epoch::new(target.conf_version, target.version),
                )
                .map_err(fail)?;
                store
                    .prepare_merge(id, target, r.version)
                    .await
                    .map_err(fail)?;
            }
            2 => {
                let state = decode_state(&r.state)?;
                store.commit_merge(id, state).await.map_err(fail)?;
            }
            3 => {
                let expected = Epoch::new(r.expected_conf_version, r.expected_version);
                store.fence_merge(id, expected).await.map_err(fail)?;
            }
            4 => {
                store.rollback_merge(id, r.version).await.map_err(fail)?;
            }
            5 => {}
            other => {
                return Err(status_of(&KvError::Refused(format!(
                    "merge step: unknown phase {other} (1 prepare, 2 commit, 3 fence, 4 roll \
                     back, 5 state)"
                ))))
            }
        }
        let view = store.merge_view(id).map_err(fail)?;
        Ok(Response::new(proto::MergeStepReply {
            region: Some(proto::RegionInfo {
                id: view.region.id.0,
                start: view.region.start.clone(),
                end: view.region.end.clone(),
                conf_version: view.region.epoch.conf_version,
                version: view.region.epoch.version,
                ..proto::RegionInfo::default()
            }),
            state: view.merging.map(|s| s.encode()).unwrap_or_default(),
            applied_index: view.applied.0,
        }))
    }

    async fn hello(
        &self,
        request: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloReply>, Status> {
        // Anyone may ask who a store is; only a store (or an admin adding one) may say
        // where a store is.
        if request.get_ref().from.is_some() {
            require(
                &request,
                &[Role::Store, Role::Admin],
                "a store announcement",
            )?;
        }
        let reply = self
            .store
            .hello(request.into_inner())
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(reply))
    }
}

/// Refuses a call that acts on `store` (its regions, its meta group peer) but names
/// another store or cluster (see `flotilla_node::grpc::check_receiver`), or comes from
/// neither a store nor an admin.
fn check_receiver_of<T>(store: &Store, request: &Request<T>, what: &str) -> Result<(), Status> {
    require(request, &[Role::Store, Role::Admin], what)?;
    let metadata = request.metadata();
    let get = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let source = roles::remote_of(request.extensions());
    flotilla_node::grpc::check_receiver(get, store.manager().identity(), what, &source)
}

impl KvService {
    /// See [`check_receiver_of`].
    fn check_receiver<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        check_receiver_of(&self.store, request, what)
    }

    fn regions_reply(&self) -> proto::RegionsReply {
        proto::RegionsReply {
            store: self.store.advertised_address().to_string(),
            regions: self.store.regions().iter().map(region_info).collect(),
            cluster: self.store.cluster(),
            store_id: self.store.id().as_str().to_string(),
            stores: self
                .store
                .addresses()
                .entries()
                .into_iter()
                .map(|(id, address)| proto::StoreInfo {
                    id: id.as_str().to_string(),
                    address,
                })
                .collect(),
        }
    }
}
