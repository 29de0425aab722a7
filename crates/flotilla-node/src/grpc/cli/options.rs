//! [`CliOptions`]: the tuning of a [`super::CliClient`] — its attempts and back-off, time
//! limits, TLS, and whether membership changes are forced.

use std::time::Duration;

use super::super::tls::TlsConfig;

/// Tuning of [`CliClient`](super::CliClient).
#[derive(Clone, Debug)]
pub struct CliOptions {
    /// Calls one operation may make (redirects and retries included; at least 1).
    pub attempts_max: usize,
    /// First pause between retries (doubling up to `backoff_max`).
    pub backoff_initial: Duration,
    /// Largest pause between retries.
    pub backoff_max: Duration,
    /// Limit on connecting to an endpoint.
    pub connect_timeout: Duration,
    /// Limit on one call (a membership change waits for its commit and catch-up). A call
    /// that times out after it was sent has an unknown outcome.
    pub call_timeout: Duration,
    /// Mutual TLS, for a cluster whose servers require it; `None` (the default): plain
    /// text. A TLS handshake failure makes that endpoint unreachable, its reason in the
    /// [`CliError::Unreachable`](super::CliError::Unreachable) message.
    pub tls: Option<TlsConfig>,
    /// Membership changes skip the strict reconfiguration check (a change that would leave
    /// fewer live voters than a majority), and `reset_peers` is allowed at all (it is still
    /// refused while the group has a live leader or quorum). Default: off.
    pub force: bool,
}

impl Default for CliOptions {
    fn default() -> CliOptions {
        CliOptions {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(30),
            tls: None,
            force: false,
        }
    }
}
