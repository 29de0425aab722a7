//! What a store's watch streams did: the `flotilla_watch_*` metrics (`watch`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the watch streams of one store.
#[derive(Debug, Default)]
pub(super) struct WatchStats {
    /// Streams open now.
    streams: AtomicU64,
    /// Events sent.
    events: AtomicU64,
    /// Streams ended with `Compacted`.
    compacted: AtomicU64,
}

impl WatchStats {
    /// A stream opened.
    pub(super) fn opened(&self) {
        self.streams.fetch_add(1, Relaxed);
    }

    /// A stream ended.
    pub(super) fn closed(&self) {
        self.streams.fetch_sub(1, Relaxed);
    }

    /// Counts a message about to be sent: its events, and whether it is a `Compacted`.
    pub(super) fn sent(&self, events: usize, compacted: bool) {
        self.events.fetch_add(events as u64, Relaxed);
        if compacted {
            self.compacted.fetch_add(1, Relaxed);
        }
    }

    /// The metrics in Prometheus text format; `recording`: regions of the store recording
    /// history now.
    pub(super) fn metrics_text(&self, recording: u64) -> String {
        let mut text = flotilla_node::exposition::gauges_text(&[
            (
                "flotilla_watch_streams",
                "Watch streams this store serves now.",
                self.streams.load(Relaxed),
            ),
            (
                "flotilla_watch_regions_recording",
                "Regions of this store recording watch history (someone watched them within \
                 the retention).",
                recording,
            ),
        ]);
        text.push_str(&flotilla_node::exposition::counters_text(&[
            (
                "flotilla_watch_events_total",
                "Watch events this store sent.",
                self.events.load(Relaxed),
            ),
            (
                "flotilla_watch_compacted_total",
                "Watch streams this store ended with Compacted (history gone, or the \
                 watcher fell behind).",
                self.compacted.load(Relaxed),
            ),
        ]));
        text
    }
}
