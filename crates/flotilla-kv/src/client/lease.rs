//! Leases from the client (`crate::lease`): grant, keep-alive, revoke, time to live, puts
//! that follow a lease, and the check every read makes of the leases its keys follow.
//!
//! A read answer names the lease each key follows; the client uses the value only if the
//! lease is alive at its home after the answer (a status through the home's log, which
//! carries the leader's time). A lease never comes back once ended, so alive then means
//! alive when the key was read. An answer "alive, `remaining` ms left" is remembered until
//! `remaining` less the clock margin has passed here, so a read of a key whose lease was
//! just checked costs no second round trip.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{op_error, wrong_reply_unknown};
use super::{ClientError, KvClient};
use crate::lease::{LeaseOp, LeaseState};
use crate::service::proto;

fn lease_state(result: proto::OpResult) -> Result<LeaseState, ClientError> {
    if let Some(error) = op_error(&result) {
        return Err(error);
    }
    match result.result {
        Some(proto::op_result::Result::Lease(s)) => Ok(LeaseState {
            ttl_ms: s.ttl_ms,
            remaining_ms: s.remaining_ms,
            alive: s.alive,
            keys: s.keys,
        }),
        _ => Err(wrong_reply_unknown()),
    }
}

/// A fresh lease id: random, non-zero, below 2^63 (etcd's ids are signed).
fn new_id() -> u64 {
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let id = hasher.finish() >> 1;
        if id != 0 {
            return id;
        }
    }
}

impl KvClient {
    /// Applies `op` on lease `id` at its home.
    pub async fn lease(&self, id: u64, op: LeaseOp) -> Result<LeaseState, ClientError> {
        use proto::lease_request::Kind;
        let (kind, ttl_ms, key, keys) = match op {
            LeaseOp::Grant { ttl_ms } => (Kind::Grant, ttl_ms, Bytes::new(), Vec::new()),
            LeaseOp::KeepAlive => (Kind::KeepAlive, 0, Bytes::new(), Vec::new()),
            LeaseOp::Revoke => (Kind::Revoke, 0, Bytes::new(), Vec::new()),
            LeaseOp::Attach { key } => (Kind::Attach, 0, key, Vec::new()),
            LeaseOp::Status => (Kind::Status, 0, Bytes::new(), Vec::new()),
            LeaseOp::Expire => (Kind::Expire, 0, Bytes::new(), Vec::new()),
            LeaseOp::Forget { keys } => (Kind::Forget, 0, Bytes::new(), keys),
        };
        let op = proto::op::Op::Lease(proto::LeaseRequest {
            id,
            kind: kind as i32,
            ttl_ms,
            key,
            keys,
        });
        let asked_at = Instant::now();
        let result = lease_state(self.write_one(crate::lease::route_key(id), op).await?);
        match &result {
            Ok(state) if state.alive => {
                self.inner
                    .leases_alive
                    .remember(id, asked_at, state.remaining_ms);
            }
            _ => self.inner.leases_alive.forget(id),
        }
        result
    }

    /// Grants a lease of `ttl_ms` under a fresh id: the id and its state.
    pub async fn lease_grant(&self, ttl_ms: u64) -> Result<(u64, LeaseState), ClientError> {
        loop {
            let id = new_id();
            match self.lease(id, LeaseOp::Grant { ttl_ms }).await {
                Ok(state) => return Ok((id, state)),
                // Taken (one chance in 2^63 per lease): another id.
                Err(e) if e.kind == "Refused" && e.message.contains("exists already") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends lease `id` and deletes its keys, in batches of `crate::lease::DELETE_BATCH`
    /// (each only if it still follows the lease), then forgets them at the home. Also
    /// finishes the deletion of a lease that ended before (`revoked` false then). Answers
    /// the keys deleted.
    pub async fn lease_revoke(&self, id: u64) -> Result<usize, ClientError> {
        let state = match self.lease(id, LeaseOp::Revoke).await {
            Ok(state) => state,
            // Ended already (expired, or a revoke cut short): finish its deletion.
            Err(e) if e.kind == crate::lease::NOT_FOUND_KIND => {
                match self.lease(id, LeaseOp::Expire).await {
                    Ok(state) if !state.alive => state,
                    Ok(_) => return Err(e),
                    Err(other) => return Err(other),
                }
            }
            Err(e) => return Err(e),
        };
        if state.keys.is_empty() {
            // Nothing to delete: forgetting nothing drops the record.
            self.lease(id, LeaseOp::Forget { keys: Vec::new() }).await?;
            return Ok(0);
        }
        self.delete_lease_keys(id, state.keys).await
    }

    /// Deletes `keys` of the ended lease `id` where they still follow it, then forgets
    /// them at its home, a batch at a time.
    pub(crate) async fn delete_lease_keys(
        &self,
        id: u64,
        keys: Vec<Bytes>,
    ) -> Result<usize, ClientError> {
        let mut deleted = 0;
        for batch in keys.chunks(crate::lease::DELETE_BATCH) {
            for key in batch {
                let op = proto::op::Op::LeaseDelete(proto::LeaseDelete {
                    key: key.clone(),
                    lease: id,
                });
                let result = self.write_one(key.clone(), op).await?;
                if let Some(error) = op_error(&result) {
                    return Err(error);
                }
                if matches!(result.result, Some(proto::op_result::Result::Swapped(true))) {
                    deleted += 1;
                }
            }
            self.lease(
                id,
                LeaseOp::Forget {
                    keys: batch.to_vec(),
                },
            )
            .await?;
        }
        Ok(deleted)
    }

    /// Sets `key` to `value`, following lease `lease`: the home records the key first
    /// (refused `LeaseNotFound` for a lease that does not exist or ended), then the key's
    /// region writes it. A later put without a lease detaches the key.
    pub async fn put_with_lease(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        lease: u64,
    ) -> Result<(), ClientError> {
        let key = key.into();
        self.lease(lease, LeaseOp::Attach { key: key.clone() })
            .await?;
        let op = proto::Op {
            op: Some(proto::op::Op::Put(proto::Put {
                key: key.clone(),
                value: value.into(),
            })),
            fence: None,
            lease_id: lease,
        };
        let result = self.write_op(key, op).await?;
        match op_error(&result) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Whether lease `id` is alive at its home now (or surely still, as last seen).
    pub async fn lease_alive(&self, id: u64) -> Result<bool, ClientError> {
        if self.inner.leases_alive.alive(id) {
            return Ok(true);
        }
        match self.lease(id, LeaseOp::Status).await {
            Ok(state) => Ok(state.alive),
            Err(e) if e.kind == crate::lease::NOT_FOUND_KIND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A read value, or `None` if it follows a lease that is not alive.
    pub(super) async fn unexpired(
        &self,
        found: Option<(Bytes, u64)>,
    ) -> Result<Option<Bytes>, ClientError> {
        match found {
            Some((value, 0)) => Ok(Some(value)),
            Some((value, lease)) => Ok(self.lease_alive(lease).await?.then_some(value)),
            None => Ok(None),
        }
    }
}

/// A keep-alive stream to one store (etcd's `LeaseKeepAlive`): each
/// [`KeepAliveStream::keep_alive`] sends one request and waits for its answer; the store
/// forwards it to the lease's home.
#[derive(Debug)]
pub struct KeepAliveStream {
    requests: tokio::sync::mpsc::Sender<proto::LeaseKeepAliveRequest>,
    replies: tonic::Streaming<proto::LeaseKeepAliveReply>,
}

impl KvClient {
    /// Opens a keep-alive stream to the first store that takes it (the endpoints, then the
    /// stores the routes name).
    pub async fn lease_keep_alive_stream(&self) -> Result<KeepAliveStream, ClientError> {
        let mut stores = self.inner.endpoints.clone();
        for route in self.routes() {
            for address in route.leader.into_iter().chain(route.peers) {
                if !stores.contains(&address) {
                    stores.push(address);
                }
            }
        }
        let mut last =
            ClientError::definite("Unavailable", "no store to keep leases alive through");
        for address in stores {
            let channel = match self.channel(&address).await {
                Ok(channel) => channel,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let (requests, outbound) = tokio::sync::mpsc::channel(16);
            let mut grpc = proto::kv_client::KvClient::new(channel)
                .max_decoding_message_size(crate::limits::KV_MESSAGE_BYTES_MAX);
            match grpc
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outbound))
                .await
            {
                Ok(response) => {
                    return Ok(KeepAliveStream {
                        requests,
                        replies: response.into_inner(),
                    })
                }
                Err(status) => last = super::retry::classify(&status).1,
            }
        }
        Err(last)
    }
}

impl KeepAliveStream {
    /// Keeps lease `id` alive: its time to live and what is left of it.
    pub async fn keep_alive(&mut self, id: u64) -> Result<LeaseState, ClientError> {
        let closed = || ClientError::definite("Unavailable", "the keep-alive stream closed");
        self.requests
            .send(proto::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| closed())?;
        match self.replies.message().await {
            Ok(Some(reply)) if reply.error_kind.is_empty() => Ok(LeaseState {
                ttl_ms: reply.ttl_ms,
                remaining_ms: reply.remaining_ms,
                alive: true,
                keys: Vec::new(),
            }),
            Ok(Some(reply)) => Err(ClientError {
                indeterminate: reply.error_kind == "Unknown",
                kind: reply.error_kind,
                message: reply.error,
            }),
            Ok(None) => Err(closed()),
            Err(status) => Err(super::retry::classify(&status).1),
        }
    }
}

/// Keeps a lease alive until dropped: a task renews it every third of its time to live,
/// through a keep-alive stream (opened again after an error), and stops at the first
/// `LeaseNotFound` (the lease ended: [`LeaseKeeper::lost`]).
#[derive(Debug)]
pub struct LeaseKeeper {
    id: u64,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping lease `id` (granted with `ttl_ms`) alive through `client`.
    #[must_use]
    pub fn start(client: KvClient, id: u64, ttl_ms: u64) -> LeaseKeeper {
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&lost);
        let period = Duration::from_millis((ttl_ms / 3).max(1));
        let task = tokio::spawn(async move {
            let mut stream: Option<KeepAliveStream> = None;
            loop {
                tokio::time::sleep(period).await;
                if stream.is_none() {
                    match client.lease_keep_alive_stream().await {
                        Ok(opened) => stream = Some(opened),
                        Err(e) => {
                            tracing::debug!(lease = id, error = %e, "keep-alive stream not opened");
                            continue;
                        }
                    }
                }
                let Some(open) = stream.as_mut() else {
                    continue;
                };
                match open.keep_alive(id).await {
                    Ok(_) => {}
                    Err(e) if e.kind == crate::lease::NOT_FOUND_KIND => {
                        flag.store(true, std::sync::atomic::Ordering::Release);
                        return;
                    }
                    // Transient (a leader change, the store gone): a new stream next round.
                    Err(e) => {
                        tracing::debug!(lease = id, error = %e, "keep-alive failed");
                        stream = None;
                    }
                }
            }
        });
        LeaseKeeper { id, lost, task }
    }

    /// The lease kept.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the lease ended under the keeper (it stopped).
    #[must_use]
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
