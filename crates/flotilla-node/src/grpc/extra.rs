//! Services an application serves on the process's one address next to the raft stream
//! and the CLI service: further gRPC services (the KV store's `Kv` service) and plain HTTP
//! `GET` endpoints (`/metrics` for Prometheus, which scrapes over HTTP/1.1).
//!
//! Owns: routing of a request to the extra service whose gRPC prefix or HTTP path it names.
//! Must never: shadow the raft or CLI services (their paths are matched first).

use std::convert::Infallible;
use std::sync::Arc;

use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// A gRPC server (tonic-generated) as a shareable object.
trait GrpcHandler: Send + Sync {
    fn handle(&self, request: HttpRequest) -> BoxFuture<HttpResponse, Infallible>;
}

impl<S> GrpcHandler for S
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn handle(&self, request: HttpRequest) -> BoxFuture<HttpResponse, Infallible> {
        // tonic's generated servers are always ready: no poll_ready needed.
        let mut service = self.clone();
        Box::pin(async move { service.call(request).await })
    }
}

#[derive(Clone)]
enum Kind {
    Grpc {
        prefix: String,
        handler: Arc<dyn GrpcHandler>,
    },
    HttpGet {
        path: String,
        content_type: &'static str,
        body: Arc<dyn Fn() -> String + Send + Sync>,
    },
}

/// One more service on the process's address ([`super::GrpcServer::serve_with`]).
#[derive(Clone)]
pub struct ExtraService {
    kind: Kind,
}

impl std::fmt::Debug for ExtraService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Grpc { prefix, .. } => write!(f, "ExtraService(gRPC {prefix})"),
            Kind::HttpGet { path, .. } => write!(f, "ExtraService(GET {path})"),
        }
    }
}

impl ExtraService {
    /// A tonic-generated gRPC server (e.g. `KvServer::new(..)`), reached by its service
    /// name's path prefix (`/package.Service/`).
    pub fn grpc<S>(server: S) -> ExtraService
    where
        S: Service<HttpRequest, Response = HttpResponse, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        ExtraService {
            kind: Kind::Grpc {
                prefix: format!("/{}/", S::NAME),
                handler: Arc::new(server),
            },
        }
    }

    /// A plain HTTP `GET path` answered with `body()` as Prometheus-style text
    /// (`text/plain; version=0.0.4`), over HTTP/1.1 or HTTP/2.
    pub fn http_get(path: &str, body: impl Fn() -> String + Send + Sync + 'static) -> ExtraService {
        ExtraService {
            kind: Kind::HttpGet {
                path: path.to_string(),
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: Arc::new(body),
            },
        }
    }

    /// Whether `request` is for this service.
    pub(crate) fn claims(&self, request: &HttpRequest) -> bool {
        match &self.kind {
            Kind::Grpc { prefix, .. } => request.uri().path().starts_with(prefix.as_str()),
            Kind::HttpGet { path, .. } => request.uri().path() == path,
        }
    }

    /// Answers `request` (one this service [`ExtraService::claims`]).
    pub(crate) fn call(&self, request: HttpRequest) -> BoxFuture<HttpResponse, Infallible> {
        match &self.kind {
            Kind::Grpc { handler, .. } => handler.handle(request),
            Kind::HttpGet {
                path,
                content_type,
                body,
            } => {
                let response = if request.method() == http::Method::GET {
                    http::Response::builder()
                        .status(http::StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, *content_type)
                        .body(tonic::body::Body::new(body()))
                } else {
                    http::Response::builder()
                        .status(http::StatusCode::METHOD_NOT_ALLOWED)
                        .header(http::header::ALLOW, "GET")
                        .body(tonic::body::Body::new(format!("{path} answers GET only\n")))
                };
                let response = response.unwrap_or_else(|_| {
                    http::Response::new(tonic::body::Body::new(String::from("internal error\n")))
                });
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
