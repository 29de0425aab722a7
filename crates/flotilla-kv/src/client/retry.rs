//! The retry policy of a [`super::KvClient`]: what a failed attempt means ([`Next`]: redirect,
//! reroute, back off, lost, fail), whether a request never left the client, and the backoff
//! between attempts.
//!
//! Owns: the classification of every refusal and transport failure, the backoff schedule
//! (10 ms doubling up to 200 ms, never past the operation's deadline). Must never: classify
//! a failure after which a write may have applied as anything but `Lost` (indeterminate).

use std::time::{Duration, Instant};

use flotilla_node::grpc::{ERROR_KIND_KEY, LEADER_KEY};
use tonic::{Code, Status};

use super::error::ClientError;

/// The first pause of an operation's backoff ([`pause`] doubles it).
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(10);

/// How a failed attempt is handled.
pub(super) enum Next {
    /// Retry at the leader named (or another peer when `None`).
    Redirect(Option<String>),
    /// Routes are stale: refresh them and retry.
    Reroute,
    /// Transient refusal: back off and retry.
    Backoff,
    /// The outcome may be unknown (a write) / the peer may be gone (a read).
    Lost,
    /// Final: report it.
    Fail,
}

/// What a failed call's `status` means: how to go on, and the error to report if nothing
/// better comes of it.
pub(super) fn classify(status: &Status) -> (Next, ClientError) {
    let kind = status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let leader = status
        .metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let message = status.message().to_string();
    let Some(kind) = kind else {
        // No kind: the call failed below the service (connection lost, deadline).
        let error = match status.code() {
            Code::DeadlineExceeded => ClientError::unknown(format!("deadline exceeded: {message}")),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument => {
                ClientError::definite("InvalidArgument", message)
            }
            Code::Unimplemented => ClientError::definite("Unimplemented", message),
            _ => ClientError::unknown(format!("{:?}: {message}", status.code())),
        };
        let next = if error.indeterminate {
            Next::Lost
        } else {
            Next::Fail
        };
        return (next, error);
    };
    let next = match kind.as_str() {
        "NotLeader" => Next::Redirect(leader),
        "StaleEpoch" | "NoSuchRegion" | "NoSuchGroup" | "Removed" => Next::Reroute,
        "Busy" | "Transferring" | "LeaderNotReady" | "ReadLagging" | "ShutDown" => Next::Backoff,
        "Unknown" | "TimedOut" => Next::Lost,
        _ => Next::Fail,
    };
    let indeterminate = matches!(next, Next::Lost);
    (
        next,
        ClientError {
            kind,
            message,
            indeterminate,
        },
    )
}

/// The region a `StaleEpoch` refusal carries as it is now (metadata `flotilla-region`,
/// the region's encoding in hex), if any and if it decodes.
pub(super) fn stale_region(status: &Status) -> Option<crate::region::Region> {
    let hex = status
        .metadata()
        .get(crate::region::REGION_KEY)?
        .to_str()
        .ok()?;
    // A region's encoding: two keys and a few fixed fields.
    let encoded_max = 2 * crate::limits::KEY_BYTES_MAX + 64;
    if hex.len() % 2 != 0 || hex.len() > 2 * encoded_max {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    crate::region::Region::decode(&bytes?).ok()
}

/// True if `status` says the request never left this client: the connection it needed was
/// refused or could not be made (tonic reconnects a cached channel lazily, so a store that
/// died shows up here, not when the channel is checked). Nothing reached the store, so even
/// a write may be sent elsewhere without risking a duplicate.
pub(super) fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        // hyper-util's connector error: the TCP connect itself failed.
        if cause.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Sleeps `backoff` (not past `deadline`) and doubles it, up to 200 ms.
pub(super) async fn pause(backoff: &mut Duration, deadline: Instant) {
    let pause = (*backoff).min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(pause).await;
    *backoff = (*backoff * 2).min(Duration::from_millis(200));
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::client::error::error_chain;
    use crate::service::proto::{self, kv_client::KvClient as GrpcKvClient};

    /// A request on a channel whose store refuses connections fails as "never sent"; a
    /// request that timed out, or a status without a transport cause, does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_known_to_have_sent_nothing() {
        // A port that was just free: bound, then released, so nothing listens on it.
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address")
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        let status = GrpcKvClient::new(channel)
            .get(proto::GetRequest {
                context: None,
                key: Bytes::from_static(b"k"),
                read: 0,
            })
            .await
            .expect_err("nothing listens there");
        assert!(
            never_sent(&status),
            "not recognised as never sent: {status:?} ({})",
            error_chain(&status)
        );
        assert!(!never_sent(&Status::unavailable("connection reset")));
        assert!(!never_sent(&Status::deadline_exceeded("slow")));
    }
}
