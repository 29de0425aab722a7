//! [`StoreServer`]: a store served on its one address (docs/DESIGN.md, "One address per
//! process, gRPC on it"): raft frames, snapshot fetches, the CLI service, the KV service
//! and `GET /metrics`, as `flotilla server` runs it.
//!
//! Owns: the composition of the store ([`Store`], which listens nowhere), its gRPC
//! services and the listener, in the order a start needs: the data directory locked, then
//! the address bound (a port 0 resolved before the store learns where it is), then the
//! store opened, served, and only then its membership task started (a peer that hears of
//! it can reach it); and the order of a shutdown: leadership handed off while the store is
//! still served, then the server stopped, then the store closed. Must never: write into a
//! data directory before its lock is held, or stop serving a store whose regions are still
//! handing leadership off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::grpc::{ExtraService, GrpcServer, HttpRefusal, ServerHandle};
use flotilla_node::{MetricsQuery, Node};

use crate::service::{kv_server, pd_server};
use crate::store::{LockedDataDir, Store, StoreError, StoreOptions};

/// Finds a region's node for the CLI service (group id = region id).
struct StoreNodes(Store);

impl flotilla_node::grpc::CliNodes for StoreNodes {
    fn node(&self, group: u64) -> Option<Node> {
        self.0.manager().node(group)
    }

    fn addresses(&self) -> flotilla_node::AddressBook {
        self.0.addresses().clone()
    }

    fn identity(&self) -> Arc<flotilla_node::Identity> {
        self.0.manager().identity().clone()
    }
}

/// Serves raft, the CLI service, the KV service, `GET /metrics` (per store by default;
/// `?group=ID` or `?groups=all` for groups in detail), `GET /ready` and `GET /live` for
/// `store` on `server`.
fn serve(server: GrpcServer, store: Store) -> ServerHandle {
    let kv = kv_server(store.clone());
    let pd = pd_server(store.clone());
    let metrics_store = store.clone();
    let ready_store = store.clone();
    // `flotilla manager` learns which store a container runs from this line.
    let live_text = format!("live: store {} serves\n", store.id());
    let extra = vec![
        ExtraService::grpc(kv),
        ExtraService::grpc(pd),
        ExtraService::metrics(move |query| match query {
            MetricsQuery::Store => Ok(metrics_store.metrics_text()),
            detail => metrics_store.manager().metrics_text_for(detail),
        }),
        // Kubernetes' probes and `flotilla health`: 200 or 503 with the reason.
        ExtraService::http_get_with_query("/ready", move |_| {
            ready_store
                .readiness()
                .map(|text| format!("{text}\n"))
                .map_err(|message| HttpRefusal {
                    status: 503,
                    message,
                })
        }),
        ExtraService::http_get("/live", move || live_text.clone()),
    ];
    let sink = Arc::new(store.manager().inbox());
    server.serve_with(sink, Some(Arc::new(StoreNodes(store))), extra)
}

/// Binds `options.address` (with TLS when configured); answers the server and the address
/// the store listens on: the bound port for port 0, otherwise the address as given (so
/// `localhost:8081` stays what the other stores were told).
async fn bind(options: &StoreOptions) -> Result<(GrpcServer, String), StoreError> {
    let server = GrpcServer::bind(&options.address)
        .await
        .map_err(|e| StoreError::Listen {
            address: options.address.clone(),
            reason: e.to_string(),
        })?;
    let server = match &options.tls {
        Some(tls) => server.with_tls(tls.clone()),
        None => server,
    }
    .with_frame_messages_max(options.frame_messages_max);
    let bound = server.address().as_str().to_string();
    let listen = if options.address.ends_with(":0") {
        bound
    } else {
        options.address.clone()
    };
    Ok((server, listen))
}

/// A running store and the server that serves it. Stopped by [`StoreServer::shutdown`].
#[derive(Debug)]
pub struct StoreServer {
    store: Store,
    /// The gRPC server, taken by [`StoreServer::shutdown`].
    server: Mutex<Option<ServerHandle>>,
}

impl StoreServer {
    /// Opens (or bootstraps) the store of `options` and serves raft, the CLI service and
    /// the KV service on `options.address`. Must be called within a multi-threaded tokio
    /// runtime.
    ///
    /// The data directory is locked first (one process per data directory, the holder
    /// named when refused), then the address is bound ([`StoreError::Listen`] names it
    /// when it cannot be); a start that fails leaves a directory it created as it was:
    /// absent.
    pub async fn start(mut options: StoreOptions) -> Result<StoreServer, StoreError> {
        let dir = LockedDataDir::lock(&options)?;
        let (server, listen) = match bind(&options).await {
            Ok(bound) => bound,
            Err(e) => {
                dir.abandon();
                return Err(e);
            }
        };
        options.address = listen;
        let store = Store::open_in(dir, options).await?;
        let handle = serve(server, store.clone());
        store.start_membership();
        Ok(StoreServer {
            store,
            server: Mutex::new(Some(handle)),
        })
    }

    /// The store served.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the store: every region it leads hands leadership to another peer first
    /// (bounded by `handoff`) while it is still served, then the server stops, then the
    /// runtime stops and the engine is flushed.
    pub async fn shutdown(&self, handoff: Duration) {
        self.store.hand_off(handoff).await;
        let handle = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
        self.store.close().await;
    }
}
