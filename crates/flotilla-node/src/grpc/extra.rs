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

use crate::exposition::{MetricsQuery, MetricsQueryError};

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
        body: Arc<HttpBody>,
    },
}

/// What answers a plain `GET`: the query string (without `?`) in, the body or a refusal out.
type HttpBody = dyn Fn(Option<&str>) -> Result<String, HttpRefusal> + Send + Sync;

/// Why a plain `GET` was refused: its HTTP status (4xx, or 503 for a service not ready) and a one-line message for the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRefusal {
    /// The HTTP status code.
    pub status: u16,
    /// What was wrong, in words.
    pub message: String,
}

impl From<MetricsQueryError> for HttpRefusal {
    fn from(error: MetricsQueryError) -> HttpRefusal {
        HttpRefusal {
            status: error.http_status(),
            message: error.to_string(),
        }
    }
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
    /// (`text/plain; version=0.0.4`), over HTTP/1.1 or HTTP/2. A query string is ignored.
    pub fn http_get(path: &str, body: impl Fn() -> String + Send + Sync + 'static) -> ExtraService {
        ExtraService::http_get_with_query(path, move |_| Ok(body()))
    }

    /// A plain HTTP `GET path` whose answer depends on the query string (without `?`):
    /// `body` answers the text, or a refusal sent with its status and message.
    pub fn http_get_with_query(
        path: &str,
        body: impl Fn(Option<&str>) -> Result<String, HttpRefusal> + Send + Sync + 'static,
    ) -> ExtraService {
        ExtraService {
            kind: Kind::HttpGet {
                path: path.to_string(),
                content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body: Arc::new(body),
            },
        }
    }

    /// `GET /metrics` as [`crate::exposition`] describes it: the query string parsed into a
    /// [`MetricsQuery`] and answered by `render` (the store's text for
    /// [`MetricsQuery::Store`], [`crate::NodeManager::metrics_text_for`] for the others);
    /// a malformed query or an unknown group is refused with its status (400, 404) and why.
    pub fn metrics(
        render: impl Fn(MetricsQuery) -> Result<String, MetricsQueryError> + Send + Sync + 'static,
    ) -> ExtraService {
        ExtraService::http_get_with_query("/metrics", move |query| {
            Ok(render(MetricsQuery::parse(query)?)?)
        })
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
                    match body(request.uri().query()) {
                        Ok(text) => http::Response::builder()
                            .status(http::StatusCode::OK)
                            .header(http::header::CONTENT_TYPE, *content_type)
                            .body(tonic::body::Body::new(text)),
                        Err(refusal) => http::Response::builder()
                            .status(
                                http::StatusCode::from_u16(refusal.status)
                                    .unwrap_or(http::StatusCode::BAD_REQUEST),
                            )
                            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                            .body(tonic::body::Body::new(format!("{}\n", refusal.message))),
                    }
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
