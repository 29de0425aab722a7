//! [`RoundWake`]: how request handles, the transport's inbox and finished snapshot copies
//! wake the manager's round thread.
//!
//! The round runs on a thread of its own (see `manager`), parked between rounds. A wake-up
//! is one flag and, only when the flag was clear, one `unpark`: one futex wake from the
//! caller straight to the round thread. (Before, a round was a `spawn_blocking` from an
//! async task woken by a `tokio::sync::Notify`: three thread hand-offs per round, which on a
//! 2-core machine cost more CPU than the round itself at low load and added to every
//! write's latency, since a write takes about two rounds on each process.)
//!
//! Owns: never losing a wake-up (a notification before the wait is seen by the wait).
//! Must never: block the caller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Instant;

/// A wake-up flag for the one round thread. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub(crate) struct RoundWake {
    /// Set by `notify_one`, cleared by the wait that consumes it.
    pending: AtomicBool,
    /// The round thread, once it registered.
    thread: OnceLock<Thread>,
}

impl RoundWake {
    /// Asks for a round soon. Callable from any thread, async or not; never blocks.
    pub(crate) fn notify_one(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // A notification before the thread registered is kept in `pending`: its first
            // wait returns at once.
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Registers the calling thread as the one `wait_until` parks.
    pub(crate) fn register(&self) {
        let registered = self.thread.get_or_init(std::thread::current);
        assert_eq!(
            registered.id(),
            std::thread::current().id(),
            "a RoundWake serves one round thread"
        );
    }

    /// Waits (on the registered thread) until notified or until `deadline`; consumes the
    /// notification. Spurious unparks are absorbed here.
    pub(crate) fn wait_until(&self, deadline: Instant) {
        loop {
            if self.pending.swap(false, Ordering::AcqRel) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_notification_before_the_wait_is_not_lost() {
        let wake = RoundWake::default();
        wake.notify_one();
        wake.register();
        let started = Instant::now();
        wake.wait_until(started + Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn the_wait_ends_at_its_deadline_without_a_notification() {
        let wake = RoundWake::default();
        wake.register();
        let deadline = Instant::now() + Duration::from_millis(20);
        wake.wait_until(deadline);
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn another_thread_wakes_the_parked_round_thread() {
        let wake = Arc::new(RoundWake::default());
        let (registered_tx, registered_rx) = std::sync::mpsc::channel();
        let round = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                wake.register();
                registered_tx.send(()).expect("main thread waits");
                let started = Instant::now();
                for _ in 0..100 {
                    wake.wait_until(Instant::now() + Duration::from_secs(60));
                }
                started.elapsed()
            })
        };
        registered_rx.recv().expect("round thread registers");
        for _ in 0..100 {
            wake.notify_one();
            // Let the round thread consume it (or not: a wake-up is never lost, so the
            // round thread must not hang whichever way the race goes).
            while wake.pending.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
        let elapsed = round.join().expect("round thread");
        assert!(elapsed < Duration::from_secs(30), "a wake-up was lost");
    }
}
