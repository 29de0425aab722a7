//! Throughput of the consensus core alone: a 3-member group in one process, messages moved
//! between the cores in memory, storage in memory ([`MemStorage`]), persistence reported
//! complete at once. No I/O, no threads, no clock: what is measured is the core plus the
//! minimal driver below.
//!
//! Each iteration proposes a batch of `B` entries (16-byte payload) on the leader and drives
//! the group until all `B` are committed and applied on the leader; divan reports the time
//! per batch (latency of one batch) and entries per second (throughput).
//!
//! Run with `cargo bench -p flotilla-raft --bench core`.
//!
//! The driver is deliberately lean and separate from `testkit` (which clones every message
//! for tracing): messages move by value, and the [`Ready`] contract is followed in order —
//! send `messages`, persist hard state and entries, call `on_persisted`, send
//! `messages_after_persist`, apply `committed_entries` and call `on_applied`. To keep memory
//! bounded over millions of entries, each peer takes a (metadata-only) snapshot every
//! [`SNAPSHOT_EVERY`] applied entries, which lets the core compact its log.

use std::collections::VecDeque;

use bytes::Bytes;
use divan::counter::ItemsCount;
use divan::Bencher;
use flotilla_raft::{
    Config, Configuration, HardState, LogIndex, MemStorage, Message, PeerId, Raft, Ready, Role,
    SnapshotMeta, Term,
};

fn main() {
    divan::main();
}

/// Entries applied between two snapshots on each peer (bounds the in-memory log).
const SNAPSHOT_EVERY: u64 = 1 << 16;

/// The proposals' payload: 16 bytes, shared (cloning it copies no data).
static PAYLOAD: [u8; 16] = *b"flotilla-bench-!";

struct Peer {
    raft: Raft<MemStorage>,
    storage: MemStorage,
    hard_state: HardState,
    snapshot_index: LogIndex,
}

struct Group {
    ids: Vec<PeerId>,
    peers: Vec<Peer>,
    /// Messages in flight, in send order.
    queue: VecDeque<Message>,
    leader: usize,
}

impl Group {
    fn new(n: usize) -> Group {
        let ids: Vec<PeerId> = (1..=n).map(|i| PeerId::new(&format!("n{i}"))).collect();
        let configuration = Configuration::new(ids.iter().cloned());
        let peers = ids
            .iter()
            .map(|id| {
                let storage = MemStorage::new(SnapshotMeta {
                    index: LogIndex::ZERO,
                    term: Term::ZERO,
                    configuration: configuration.clone(),
                });
                // Automatic snapshots off: the driver takes them itself.
                let mut config = Config::new(id.clone());
                config.snapshot_interval_ticks = 0;
                config.start_with_vote_guard = false;
                let raft = Raft::new(
                    config,
                    storage.clone(),
                    HardState::default(),
                    LogIndex::ZERO,
                )
                .expect("valid configuration");
                Peer {
                    raft,
                    storage,
                    hard_state: HardState::default(),
                    snapshot_index: LogIndex::ZERO,
                }
            })
            .collect();
        let mut group = Group {
            ids,
            peers,
            queue: VecDeque::new(),
            leader: 0,
        };
        group.peers[0].raft.campaign_now();
        group.process(0);
        while group.deliver_one() {}
        assert_eq!(group.peers[0].raft.role(), Role::Leader, "n1 must win");
        group
    }

    fn index_of(&self, id: &PeerId) -> usize {
        self.ids
            .iter()
            .position(|p| p == id)
            .expect("message to a known peer")
    }

    /// Acts on everything `i`'s core has to do, following the `Ready` contract.
    fn process(&mut self, i: usize) {
        while self.peers[i].raft.has_ready() {
            let Ready {
                messages,
                hard_state,
                entries,
                compact_to,
                messages_after_persist,
                snapshot,
                committed_entries,
                ..
            } = self.peers[i].raft.ready();
            assert!(snapshot.is_none(), "no peer falls behind a snapshot here");
            self.queue.extend(messages);
            let peer = &mut self.peers[i];
            // "Persist" hard state and entries (one write), then report them durable.
            if let Some(hs) = hard_state {
                peer.hard_state = hs;
            }
            if let Some((index, term)) = compact_to {
                peer.storage.compact(index, term);
            }
            peer.storage.append(&entries);
            if let Some(last) = entries.last() {
                peer.raft.on_persisted(last.index, last.term);
            }
            self.queue.extend(messages_after_persist);
            // "Apply" committed entries.
            if let Some(last) = committed_entries.last() {
                peer.raft.on_applied(last.index);
                if last.index.distance_from(peer.snapshot_index) >= SNAPSHOT_EVERY {
                    let meta = peer.raft.snapshot_meta_at(last.index).expect("applied");
                    peer.storage.set_snapshot(meta.clone());
                    peer.snapshot_index = meta.index;
                    peer.raft.on_snapshot_saved(meta);
                }
            }
        }
    }

    /// Delivers the oldest message in flight. Returns false if there was none.
    fn deliver_one(&mut self) -> bool {
        let Some(message) = self.queue.pop_front() else {
            return false;
        };
        let to = self.index_of(&message.to);
        self.peers[to].raft.step(message);
        self.process(to);
        true
    }

    /// Proposes `batch` entries on the leader and delivers messages until the leader has
    /// applied them all.
    fn commit_batch(&mut self, batch: usize) {
        let leader = self.leader;
        let payload = Bytes::from_static(&PAYLOAD);
        let (_, last, _) = self.peers[leader]
            .raft
            .propose_batch(std::iter::repeat_n(payload, batch), None)
            .expect("leader accepts the batch");
        self.process(leader);
        while self.peers[leader].raft.applied() < last {
            assert!(self.deliver_one(), "group stalled before applying {last}");
        }
    }
}

#[divan::bench(args = [1, 64, 1024], sample_count = 1000)]
fn commit_3_peers(bencher: Bencher, batch: usize) {
    let mut group = Group::new(3);
    // Warm up: reach steady state (pipelines full, logs allocated, a compaction done).
    for _ in 0..(2 * SNAPSHOT_EVERY as usize / batch).min(20_000) {
        group.commit_batch(batch);
    }
    bencher
        .counter(ItemsCount::new(batch))
        .bench_local(|| group.commit_batch(batch));
}
