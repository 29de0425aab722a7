//! A bytes-per-second throttle for snapshot transfer (SOFAJRaft's `SnapshotThrottle`), over
//! an injectable clock so tests check its arithmetic without sleeping.
//!
//! Owns: the token-bucket arithmetic — tokens accrue at `bytes_per_second` up to
//! `burst_bytes`; taking more than is there books a debt that the caller waits out. Kept in
//! byte-nanoseconds so no rounding ever lets the long-run rate exceed the limit. Must never:
//! sleep while holding its lock (concurrent transfers share one throttle).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Time as the throttle sees it.
pub trait Clock: Send + Sync {
    /// Time elapsed since an arbitrary fixed origin (monotonic).
    fn now(&self) -> Duration;
    /// Waits for `duration`.
    fn sleep(&self, duration: Duration);
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A clock that only moves when told to, or when slept on (for tests and the simulator).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

#[derive(Debug)]
struct Bucket {
    /// Available byte-nanoseconds (bytes × 10⁹); negative while in debt.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    updated: Duration,
}

/// Limits transfer to `bytes_per_second`, allowing bursts of `burst_bytes`.
pub struct Throttle {
    bytes_per_second: u64,
    burst_bytes: u64,
    clock: Arc<dyn Clock>,
    bucket: Mutex<Bucket>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("bytes_per_second", &self.bytes_per_second)
            .field("burst_bytes", &self.burst_bytes)
            .finish()
    }
}

impl Throttle {
    /// A throttle starting with a full bucket. `bytes_per_second` must be positive.
    #[must_use]
    pub fn new(bytes_per_second: u64, burst_bytes: u64, clock: Arc<dyn Clock>) -> Throttle {
        assert!(bytes_per_second > 0, "a throttle needs a positive rate");
        let updated = clock.now();
        Throttle {
            bytes_per_second,
            burst_bytes,
            clock,
            bucket: Mutex::new(Bucket {
                tokens: i128::from(burst_bytes) * NANOS_PER_SECOND,
                updated,
            }),
        }
    }

    /// The configured rate.
    #[must_use]
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Books `bytes` and returns how long the caller must wait before sending them.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let now = self.clock.now();
        let rate = i128::from(self.bytes_per_second);
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_sub(bucket.updated).as_nanos();
        let elapsed = i128::try_from(elapsed).unwrap_or(i128::MAX / rate);
        let capacity = i128::from(self.burst_bytes) * NANOS_PER_SECOND;
        bucket.tokens = bucket
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        bucket.updated = bucket.updated.max(now);
        bucket.tokens -= i128::from(bytes) * NANOS_PER_SECOND;
        if bucket.tokens >= 0 {
            return Duration::ZERO;
        }
        // Debt in byte-nanoseconds / rate = nanoseconds to wait, rounded up.
        let debt = -bucket.tokens;
        let wait = (debt + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }

    /// Waits (on the clock) until `bytes` may be sent.
    pub fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(rate: u64, burst: u64) -> (Arc<ManualClock>, Throttle) {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::new(rate, burst, clock.clone());
        (clock, t)
    }

    #[test]
    fn burst_is_free_then_debt_is_waited_out() {
        let (clock, t) = throttle(1000, 1000);
        assert_eq!(
            t.reserve(1000),
            Duration::ZERO,
            "a full bucket pays for 1000"
        );
        assert_eq!(t.reserve(500), Duration::from_millis(500));
        clock.advance(Duration::from_millis(500));
        assert_eq!(t.reserve(250), Duration::from_millis(250));
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            t.reserve(1000),
            Duration::ZERO,
            "refill is capped at the burst"
        );
        assert_eq!(t.reserve(1), Duration::from_millis(1));
    }

    #[test]
    fn waits_round_up_and_the_long_run_rate_holds() {
        let (clock, t) = throttle(3, 0);
        // 1 byte at 3 B/s = 333_333_333.3 ns: rounded up, never down.
        assert_eq!(t.reserve(1), Duration::from_nanos(333_333_334));
        // Sending 128 KiB chunks at 1 MiB/s through acquire() (which sleeps on the fake
        // clock) takes exactly as long as the rate allows.
        let (clock2, t2) = throttle(1 << 20, 0);
        for _ in 0..80 {
            t2.acquire(128 * 1024);
        }
        assert_eq!(clock2.now(), Duration::from_secs(10));
        drop(clock);
    }
}
