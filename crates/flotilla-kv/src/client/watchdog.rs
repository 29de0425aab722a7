//! The lock watchdog (Redisson's, RheaKV's): a task that renews a held lock every third of
//! its lease until the handle is released or dropped, and stops at the first renewal the
//! store refuses (the lease ended: someone else may hold the lock now).
//!
//! The holder's own view of its lease ([`LockWatchdog::held`]) ends earlier than the
//! store's: it counts from the moment the last successful request was *sent*, and gives up
//! [`crate::lock::HOLDER_MARGIN_PERCENT`] of the lease for clock rates that may differ on
//! both sides. Even so, a pause of the holder's process can outlast it: fence the writes
//! the lock guards (`KvClient::put_fenced` with [`LockWatchdog::token`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{ClientError, KvClient};
use crate::lock::{LockOp, LockState, HOLDER_MARGIN_PERCENT};

/// A lock held and kept alive; dropping it stops the renewals (the lock then ends with its
/// lease), [`LockWatchdog::release`] releases it at once.
pub struct LockWatchdog {
    client: KvClient,
    name: Bytes,
    owner: Bytes,
    token: u64,
    /// Until when the holder counts the lock as held (its own, conservative view).
    valid_until: Arc<Mutex<Instant>>,
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The part of a lease the holder may count on, from a request's sending.
fn usable(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms - lease_ms * HOLDER_MARGIN_PERCENT / 100)
}

impl LockWatchdog {
    /// Takes lock `name` for `owner` (waiting up to `wait` while another holds it) and
    /// keeps it alive. `Ok(None)`: another owner held it throughout.
    pub async fn acquire(
        client: &KvClient,
        name: impl Into<Bytes>,
        owner: impl Into<Bytes>,
        lease_ms: u64,
        wait: Duration,
    ) -> Result<Option<LockWatchdog>, ClientError> {
        let name = name.into();
        let owner = owner.into();
        let sent = Instant::now();
        let state: LockState = client
            .lock_acquire(name.clone(), owner.clone(), lease_ms, wait)
            .await?;
        if !state.acquired {
            return Ok(None);
        }
        // The lease was granted no earlier than this call began: counting from `sent` is
        // on the safe side.
        let valid_until = Arc::new(Mutex::new(sent + usable(lease_ms)));
        let lost = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(renew(
            client.clone(),
            name.clone(),
            owner.clone(),
            lease_ms,
            valid_until.clone(),
            lost.clone(),
        ));
        Ok(Some(LockWatchdog {
            client: client.clone(),
            name,
            owner,
            token: state.token,
            valid_until,
            lost,
            task,
        }))
    }

    /// The fencing token of this hold: put it on the writes the lock guards.
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the holder may still count on the lock: no renewal was refused, and the
    /// last successful one (or the acquire) is recent enough, margin included.
    #[must_use]
    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::Relaxed)
            && Instant::now()
                < *self
                    .valid_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the renewals and releases the lock.
    pub async fn release(self) -> Result<(), ClientError> {
        self.task.abort();
        self.client
            .lock(
                self.name.clone(),
                LockOp::Release {
                    owner: self.owner.clone(),
                },
            )
            .await
            .map(|_| ())
    }
}

impl Drop for LockWatchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews every third of the lease; stops for good at a refusal (`NotOwner`: the lease
/// ended), keeps trying through failures that may pass (no leader for a moment).
async fn renew(
    client: KvClient,
    name: Bytes,
    owner: Bytes,
    lease_ms: u64,
    valid_until: Arc<Mutex<Instant>>,
    lost: Arc<AtomicBool>,
) {
    let every = Duration::from_millis((lease_ms / 3).max(1));
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match client
            .lock(
                name.clone(),
                LockOp::Renew {
                    owner: owner.clone(),
                },
            )
            .await
        {
            Ok(_) => {
                *valid_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = sent + usable(lease_ms);
            }
            Err(e) if e.kind == crate::lock::NOT_OWNER_KIND => {
                lost.store(true, Ordering::Relaxed);
                tracing::warn!(lock = %crate::error::show(&name), error = %e, "lock lost: the watchdog stops");
                return;
            }
            Err(e) => {
                tracing::debug!(lock = %crate::error::show(&name), error = %e, "lock renewal failed; trying again");
            }
        }
    }
}
