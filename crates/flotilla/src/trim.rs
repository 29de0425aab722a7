//! Giving freed heap memory back to the system.
//!
//! glibc's allocator keeps pages a thread freed in that thread's arena until the arena's
//! top is free, so the churn of a start (thousands of groups opened, elected, reported to
//! the placement driver) leaves megabytes of free but resident memory behind that an idle
//! store never uses again. A store calls `malloc_trim` now and then, which hands every
//! whole free page back (`MADV_DONTNEED`): the resident set then follows the live heap.
//! Other allocators and C libraries return memory by themselves; there this does nothing.

use std::time::Duration;

/// How often the heap is trimmed. Trimming a heap of tens of megabytes takes well under a
/// millisecond; a page given back and used again costs one page fault.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Trims the heap every [`TRIM_EVERY`] until the runtime stops.
pub fn spawn() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            // SAFETY: malloc_trim takes a size and touches only the allocator's own
            // state, under the allocator's locks. It is short enough to run in place.
            unsafe { libc::malloc_trim(0) };
        }
    });
}
