//! [`Dispatch`]: the one service on a process's address. CLI calls go to the CLI server
//! (after the role and receiver checks), calls an added service claims go to it, and every
//! other call to the raft server (tonic's router needs a feature this crate does not
//! enable).
//!
//! Owns: routing by path and the checks every CLI call passes before the CLI server sees
//! it. Must never: hand a CLI call to the CLI server without those checks.

use std::convert::Infallible;
use std::sync::Arc;

use tonic::codegen::{http, BoxFuture, Service};
use tonic::Code;

use super::cli::metadata::{check_receiver, status_with, IDENTIFY_PATH};
use super::cli::proto;
use super::cli::CliService;
use super::extra::ExtraService;
use super::roles;
use crate::identity::Identity;

/// One service for the process's address: CLI calls go to the CLI server, every other call
/// to the raft server (tonic's router needs a feature this crate does not enable).
#[derive(Clone)]
pub(crate) struct Dispatch<R> {
    pub(crate) raft: R,
    pub(crate) cli: Option<proto::cli_server::CliServer<CliService>>,
    /// Services the application added ([`ExtraService`]), tried after the CLI's.
    pub(crate) extra: Arc<Vec<ExtraService>>,
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
                let role = roles::peer_info(request.extensions()).role;
                if let Err(why) =
                    role.require(&[roles::Role::Store, roles::Role::Admin], "a CLI call")
                {
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
