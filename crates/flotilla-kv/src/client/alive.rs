//! The leases a client saw alive, and until when (by its own clock) they surely still are
//! (`super::lease`): what spares a read of a key whose lease was just checked a second
//! round trip to the lease's home.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Leases most recently seen alive, and until when (here) they surely are.
#[derive(Debug, Default)]
pub(super) struct AliveCache {
    until: Mutex<HashMap<u64, Instant>>,
}

/// Leases the cache remembers before it forgets them all.
const ALIVE_CACHE_MAX: usize = 100_000;

impl AliveCache {
    pub(super) fn alive(&self, id: u64) -> bool {
        let until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.get(&id).is_some_and(|t| Instant::now() < *t)
    }

    pub(super) fn remember(&self, id: u64, asked_at: Instant, remaining_ms: u64) {
        // The home's clock may run up to 4 % fast against ours each way (`lock`'s margin).
        let margin = remaining_ms * crate::lock::HOLDER_MARGIN_PERCENT / 100;
        let surely = asked_at + Duration::from_millis(remaining_ms - margin);
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if until.len() >= ALIVE_CACHE_MAX && !until.contains_key(&id) {
            until.clear();
        }
        until.insert(id, surely);
    }

    pub(super) fn forget(&self, id: u64) {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}
