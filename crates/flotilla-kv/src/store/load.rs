//! The write load of a region on the store that leads it: how many keys its proposals
//! wrote, and a sample of the keys written, from which a split key that divides the load
//! is chosen (load-based split: a region written faster than `region-split-load` keys per
//! second for a while is split there, so that its halves can be led from two stores).
//!
//! The sample is the first key of each of the last [`SAMPLES`] proposals (one key per
//! proposal keeps the cost of a proposal to one short lock; a client's batch holds keys of
//! the one region, so its first key is as good a sample of where that batch writes as any).
//! The split key is the sample's median: about half the recent proposals wrote below it.
//!
//! Owns: the counts and the sample. Must never: hold its lock across anything but a push.

use std::sync::Mutex;

use bytes::Bytes;

use crate::command::KvCommand;

/// Proposals whose first key the sample keeps.
const SAMPLES: usize = 256;
/// Fewest samples a load split key is chosen from.
const SAMPLES_MIN: usize = 16;

/// One region's write load (see the module documentation).
#[derive(Default)]
pub(crate) struct WriteLoad {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Keys written by proposals through this store, ever.
    keys_written: u64,
    /// The first keys of the last proposals, a ring (`next` is the oldest once full).
    samples: Vec<Bytes>,
    next: usize,
}

impl WriteLoad {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a proposal of `command` (a write this store, as leader, proposes).
    pub(crate) fn record(&self, command: &KvCommand) {
        let Some(key) = command.first_key() else {
            return;
        };
        let keys = command.key_count() as u64;
        let mut inner = self.lock();
        inner.keys_written += keys;
        if inner.samples.len() < SAMPLES {
            inner.samples.push(key.clone());
        } else {
            let at = inner.next;
            inner.samples[at] = key.clone();
            inner.next = (at + 1) % SAMPLES;
        }
    }

    /// Keys written by proposals through this store so far (a counter: rates are
    /// differences over time).
    pub(crate) fn keys_written(&self) -> u64 {
        self.lock().keys_written
    }

    /// The key that divides the sampled load of `[start, end)` in two: the median of the
    /// sampled keys strictly inside. `None` with fewer than [`SAMPLES_MIN`] such samples,
    /// or when every sample is the same key (one hot key cannot be divided).
    pub(crate) fn split_key(&self, start: &[u8], end: &[u8]) -> Option<Bytes> {
        let mut keys: Vec<Bytes> = self
            .lock()
            .samples
            .iter()
            .filter(|k| k.as_ref() > start && (end.is_empty() || k.as_ref() < end))
            .cloned()
            .collect();
        if keys.len() < SAMPLES_MIN {
            return None;
        }
        keys.sort_unstable();
        let median = keys[keys.len() / 2].clone();
        // The child takes the median and what follows: some samples must stay below it.
        (keys[0] < median).then_some(median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> KvCommand {
        KvCommand::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
    }

    #[test]
    fn the_split_key_divides_the_sampled_writes() {
        let load = WriteLoad::default();
        assert_eq!(load.split_key(b"", b""), None, "no samples");
        for i in 0..1000 {
            // Three quarters of the writes go to keys a..., the rest to z...
            let key = if i % 4 == 3 {
                format!("z{i:04}")
            } else {
                format!("a{i:04}")
            };
            load.record(&put(&key));
        }
        assert_eq!(load.keys_written(), 1000);
        let key = load.split_key(b"", b"").expect("a key");
        assert!(key.starts_with(b"a"), "{key:?}: the median of a 3:1 load");
        // Within a range: only the samples inside count.
        let key = load.split_key(b"m", b"").expect("a key");
        assert!(key.starts_with(b"z"), "{key:?}");
        assert_eq!(load.split_key(b"b", b"y"), None, "no samples inside");
        let batch = KvCommand::BatchPut(vec![
            (Bytes::from_static(b"k1"), Bytes::from_static(b"v")),
            (Bytes::from_static(b"k2"), Bytes::from_static(b"v")),
        ]);
        load.record(&batch);
        assert_eq!(load.keys_written(), 1002, "a batch counts every key");
    }

    #[test]
    fn one_hot_key_cannot_be_divided() {
        let load = WriteLoad::default();
        for _ in 0..100 {
            load.record(&put("hot"));
        }
        assert_eq!(load.split_key(b"", b""), None);
    }
}
