//! Driving the cores as a runtime would: starting a node (recovering from its disk), sending
//! and delivering messages, processing each core's `Ready` (persisting through the simulated
//! disk, completing writes, fetching and installing snapshots, applying committed entries,
//! taking snapshots) and reporting events. It follows the core's contract exactly; checks
//! of what it observes live in `invariants`.

use flotilla_linearizability::{OpKind, OpOutcome};
use flotilla_raft::{
    Entry, EntryPayload, Event, HardState, LogIndex, Message, PeerId, Raft, ReadMode, SnapshotMeta,
};
use flotilla_storage::RaftMeta;

use crate::chain::{chain_hash, Chain};
use crate::kv::{Command, CommandKind};
use crate::node::{write_batch, Disk, PendingWrite, SimSnapshot, SimStore, GROUP};

use super::workload::{read_mode, PROBE_KEY};
use super::{EventKind, Simulation};

impl Simulation {
    pub(super) fn start_node(&mut self, node: usize) {
        let mut config = self.raft_config.clone();
        config.id = self.nodes[node].id.clone();
        config.random_seed = self.config.seed ^ (node as u64).wrapping_mul(0x9e37_79b9);
        // Only the very first start is known to have acknowledged nobody.
        config.start_with_vote_guard = self.nodes[node].incarnation > 0;
        let bootstrap = self.bootstrap.clone();
        let n = &mut self.nodes[node];
        n.load_durable_state();
        let applied = n.applied_index;
        let (store, hard_state) = match &mut n.disk {
            Disk::Memory(storage) => (SimStore::Memory(storage.clone()), n.hard_state.clone()),
            Disk::SharedLog(disk) => {
                let meta = match disk.open() {
                    Ok(meta) => meta,
                    Err(e) => {
                        let detail = format!("node {} cannot recover its disk: {e}", n.id);
                        self.violate("storage recovery", detail);
                        return;
                    }
                };
                let Some(log) = disk.log.as_ref() else {
                    return;
                };
                let torn = log.recovery().torn_bytes_cut;
                let snapshot = n.snapshot.as_ref().map_or(bootstrap, |s| s.meta.clone());
                let store = SimStore::SharedLog {
                    log: log.group(GROUP),
                    snapshot,
                };
                // The commit index is not stored: the core clamps it up to the snapshot.
                let hard_state = HardState {
                    term: meta.term,
                    vote: meta.vote,
                    commit: LogIndex::ZERO,
                };
                if torn > 0 {
                    self.count("torn tails cut");
                }
                self.check_recovered(node, &store, &hard_state);
                if self.violation.is_some() {
                    return;
                }
                (store, hard_state)
            }
        };
        let n = &mut self.nodes[node];
        let raft = Raft::new(config, store, hard_state, applied);
        let raft = match raft {
            Ok(raft) => raft,
            Err(e) => {
                let detail = format!("node {} cannot restart from its durable state: {e}", n.id);
                self.violate("restart", detail);
                return;
            }
        };
        #[cfg(feature = "planted-bugs")]
        let raft = {
            let mut raft = raft;
            raft.set_planted_bugs(self.config.bugs);
            raft
        };
        let n = &mut self.nodes[node];
        n.raft = Some(raft);
        n.observed_commit = n.raft.as_ref().map_or(LogIndex::ZERO, Raft::committed);
        // A new process knows nothing of the others yet.
        self.heard[node] = vec![None; self.nodes.len()];
        self.watched[node] = None;
        self.process(node);
    }

    pub(super) fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let (Some(&from), Some(&to)) = (
                self.index_of.get(&message.from),
                self.index_of.get(&message.to),
            ) else {
                continue;
            };
            if self.network.is_blocked(from, to) || self.rng.below(100) < self.net.loss_percent {
                continue;
            }
            let mut delay =
                self.net.delay_min + self.rng.below(self.net.delay_max - self.net.delay_min + 1);
            if self.rng.below(100) < self.net.slow_percent {
                delay *= 1 + self.rng.below(20);
            }
            if self.rng.below(100) < self.net.duplicate_percent {
                let extra = delay + self.rng.below(self.net.delay_max * 4 + 1);
                self.schedule(extra, EventKind::Deliver(message.clone()));
            }
            self.schedule(delay, EventKind::Deliver(message));
        }
    }

    pub(super) fn deliver(&mut self, message: Message) {
        let Some(&to) = self.index_of.get(&message.to) else {
            return;
        };
        let n = &mut self.nodes[to];
        if n.raft.is_none() {
            return;
        }
        if n.paused {
            n.inbox.push(message);
            return;
        }
        if let Some(&from) = self.index_of.get(&message.from) {
            // Any frame from a process says it is alive (its incarnation comes in beacons).
            let incarnation = self.heard[to][from].map_or(0, |(_, i)| i);
            self.heard[to][from] = Some((self.now, incarnation));
        }
        let from = self.index_of.get(&message.from).copied();
        let was_hibernating = self.is_hibernating(to);
        let n = &mut self.nodes[to];
        if let Some(raft) = n.raft.as_mut() {
            raft.step(message);
        }
        self.note_woken(to, was_hibernating, from);
        self.process(to);
    }

    pub(super) fn resume(&mut self, node: usize) {
        if !self.nodes[node].paused {
            return;
        }
        self.note(format!("resume {}", self.nodes[node].id));
        let n = &mut self.nodes[node];
        n.paused = false;
        let queued = std::mem::take(&mut n.queued_requests);
        let (lease_reads, others): (Vec<_>, Vec<_>) = queued
            .into_iter()
            .partition(|(_, op)| op.kind == OpKind::Read && read_mode(op.op_id) == ReadMode::Lease);
        // A resumed process may serve requests that waited in its socket before its timers
        // fire: the core must stay safe for writes and ReadIndex reads regardless.
        for (client, op) in others {
            if self.clients[client]
                .op
                .as_ref()
                .is_some_and(|o| o.op_id == op.op_id)
            {
                self.submit(node, client, &op);
            }
        }
        // Lease reads are different: the runtime contract is that elapsed time is fed to
        // the core (as ticks) before a lease is trusted, so the clock moves first.
        let missed = std::mem::take(&mut self.nodes[node].missed_ticks);
        for _ in 0..missed {
            if let Some(raft) = self.nodes[node].raft.as_mut() {
                if !raft.is_hibernating() {
                    raft.tick();
                }
            }
            self.process(node);
        }
        // The silence of others measured while this process stood still is its own (the
        // runtime forgives a late round the same way).
        let now = self.now;
        for entry in self.heard[node].iter_mut().flatten() {
            entry.0 = now;
        }
        for (client, op) in lease_reads {
            if self.clients[client]
                .op
                .as_ref()
                .is_some_and(|o| o.op_id == op.op_id)
            {
                self.submit(node, client, &op);
            }
        }
        self.complete_writes(node);
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        for message in inbox {
            if let Some(raft) = self.nodes[node].raft.as_mut() {
                raft.step(message);
            }
            self.process(node);
        }
    }

    // ----- the driver: the Ready contract ----------------------------------------------

    /// Drains the node's `Ready`s: send, queue writes, check, apply, answer reads.
    pub(super) fn process(&mut self, node: usize) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 100_000 {
                let id = self.nodes[node].id.clone();
                self.violate("ready settles", format!("{id} keeps reporting work"));
                return;
            }
            let Some(raft) = self.nodes[node].raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                return;
            }
            let mut ready = raft.ready();
            self.send(std::mem::take(&mut ready.messages));
            self.record_emitted_entries(node, &ready.entries);
            let needs_write = ready.hard_state.is_some()
                || !ready.entries.is_empty()
                || ready.compact_to.is_some()
                || !ready.messages_after_persist.is_empty()
                || ready.snapshot.is_some();
            if needs_write {
                let latency = 1 + self.rng.below(self.persist_latency_max);
                let n = &mut self.nodes[node];
                let done_at = n
                    .pending
                    .back()
                    .map_or(self.now, |w| w.done_at)
                    .max(self.now + latency);
                let snapshot = ready.snapshot.take().zip(ready.snapshot_source.take());
                n.pending.push_back(PendingWrite {
                    hard_state: ready.hard_state.take(),
                    entries: std::mem::take(&mut ready.entries),
                    compact: ready.compact_to,
                    after: std::mem::take(&mut ready.messages_after_persist),
                    snapshot,
                    done_at,
                });
                let incarnation = n.incarnation;
                self.schedule(
                    done_at - self.now,
                    EventKind::PersistDone { node, incarnation },
                );
            }
            self.observe(node);
            if self.violation.is_some() {
                return;
            }
            self.apply(node, std::mem::take(&mut ready.committed_entries));
            for read in std::mem::take(&mut ready.reads) {
                self.complete_read(node, read.id, read.result.is_ok());
            }
            for event in std::mem::take(&mut ready.events) {
                self.on_event(node, event);
            }
        }
    }

    pub(super) fn complete_writes(&mut self, node: usize) {
        while self.nodes[node]
            .pending
            .front()
            .is_some_and(|w| w.done_at <= self.now)
        {
            let Some(write) = self.nodes[node].pending.pop_front() else {
                break;
            };
            self.complete_write(node, write);
            if self.nodes[node].raft.is_none() {
                return;
            }
            self.process(node);
        }
    }

    pub(super) fn complete_write(&mut self, node: usize, write: PendingWrite) {
        // The snapshot's data, if it is to be installed (fetched before the write, so that
        // the log is reset in the same batch).
        let snapshot = write
            .snapshot
            .as_ref()
            .map(|(meta, source)| (meta.clone(), self.fetch_snapshot(meta, source)));
        let n = &mut self.nodes[node];
        match &mut n.disk {
            Disk::Memory(storage) => {
                if let Some((index, term)) = write.compact {
                    storage.compact(index, term);
                }
                storage.append(&write.entries);
            }
            Disk::SharedLog(disk) => {
                let reset = snapshot
                    .as_ref()
                    .filter(|(_, data)| data.is_some())
                    .map(|(meta, _)| (meta.index, meta.term));
                let batch = write_batch(&write, reset);
                let meta = write
                    .hard_state
                    .as_ref()
                    .filter(|hs| (&hs.term, &hs.vote) != (&n.hard_state.term, &n.hard_state.vote))
                    .map(|hs| RaftMeta {
                        term: hs.term,
                        vote: hs.vote.clone(),
                    });
                let written = disk.write(&batch, meta.as_ref());
                let reclaimed = disk.take_reclaimed();
                if let Err(e) = written {
                    let detail = format!("{}: {e}", n.id);
                    self.violate("storage write", detail);
                    return;
                }
                for _ in 0..reclaimed {
                    self.count("segments reclaimed");
                }
            }
        }
        let n = &mut self.nodes[node];
        if let Some(hs) = write.hard_state {
            n.hard_state = hs;
        }
        if let Some(last) = write.entries.last() {
            n.durable.append(&write.entries);
            let (index, term) = (last.index, last.term);
            if let Some(raft) = n.raft.as_mut() {
                raft.on_persisted(index, term);
            }
        }
        self.send(write.after);
        if let Some((meta, data)) = snapshot {
            self.install_snapshot(node, meta, data);
        }
    }

    /// The snapshot `source` offers, if it is up and still holds `meta`.
    pub(super) fn fetch_snapshot(
        &self,
        meta: &SnapshotMeta,
        source: &PeerId,
    ) -> Option<SimSnapshot> {
        self.index_of
            .get(source)
            .map(|&s| &self.nodes[s])
            .filter(|s| s.raft.is_some())
            .and_then(|s| s.snapshot.clone())
            .filter(|s| s.meta == *meta)
    }

    /// Installs a fetched snapshot (on the shared log, the log was already reset in the
    /// write that carried it).
    pub(super) fn install_snapshot(
        &mut self,
        node: usize,
        meta: SnapshotMeta,
        data: Option<SimSnapshot>,
    ) {
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        let Some(snapshot) = data else {
            raft.on_snapshot_install_failed(&meta);
            return;
        };
        if let Disk::Memory(storage) = &n.disk {
            storage.install_snapshot(meta.clone());
        }
        n.kv = snapshot.kv.clone();
        n.applied_hash = snapshot.chain_hash;
        n.applied_index = meta.index;
        n.durable = Chain::new(meta.index, snapshot.chain_hash);
        n.view = n.durable.clone();
        n.snapshot = Some(snapshot);
        raft.on_snapshot_installed(&meta);
        let id = n.id.clone();
        self.note(format!("{id} installed snapshot at {}", meta.index));
        self.count("snapshots installed");
    }

    pub(super) fn apply(&mut self, node: usize, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for entry in entries {
            self.apply_one(node, entry);
            if self.violation.is_some() {
                return;
            }
        }
        let n = &mut self.nodes[node];
        n.applied_index = last;
        if let Some(raft) = n.raft.as_mut() {
            raft.on_applied(last);
        }
    }

    pub(super) fn apply_one(&mut self, node: usize, entry: Entry) {
        let n = &mut self.nodes[node];
        if entry.index != n.applied_index.next() {
            let detail = format!(
                "{} applied {} after {}: not in order",
                n.id, entry.index, n.applied_index
            );
            self.violate("state machine safety", detail);
            return;
        }
        n.applied_index = entry.index;
        n.applied_hash = chain_hash(n.applied_hash, &entry);
        let slot = entry.index.get() as usize - 1;
        match self.canon.get(slot).copied().flatten() {
            Some(h) if h != n.applied_hash => {
                let detail = format!(
                    "{} applied {}@{} which differs from the committed entry at that index",
                    n.id, entry.index, entry.term
                );
                self.violate("state machine safety", detail);
                return;
            }
            Some(_) => {}
            None => {
                if self.canon.len() <= slot {
                    self.canon.resize(slot + 1, None);
                }
                self.canon[slot] = Some(n.applied_hash);
            }
        }
        let EntryPayload::Normal(data) = &entry.payload else {
            return;
        };
        let Some(command) = Command::decode(data) else {
            return;
        };
        let swapped = n.kv.apply(&command);
        let proposal = n.proposals.remove(&entry.index);
        let Some((term, request)) = proposal else {
            return;
        };
        if command.key == PROBE_KEY {
            if term == entry.term && self.recovered_at.is_none() && self.healed_at.is_some() {
                self.recovered_at = Some(self.now);
                self.end_at = Some(self.now + 3_000);
            }
            return;
        }
        let outcome = if term == entry.term && command.op_id == request.op_id {
            match command.kind {
                CommandKind::Write(_) => OpOutcome::WriteOk,
                CommandKind::Cas { .. } => OpOutcome::CasOk(swapped),
            }
        } else {
            // Another entry took the index: ours was overwritten and can never commit.
            OpOutcome::Failed
        };
        self.complete_op(request.client, request.op_id, outcome);
    }

    pub(super) fn on_event(&mut self, node: usize, event: Event) {
        match event {
            Event::SnapshotDue => self.take_snapshot(node),
            Event::LeaderStart { term } => {
                let id = self.nodes[node].id.clone();
                self.note(format!("{id} leader start term {term}"));
            }
            Event::MembershipChangeFinished { result } => {
                let id = self.nodes[node].id.clone();
                let text = match result {
                    Ok(c) => {
                        self.count("membership changes");
                        format!("ok voters={:?} learners={:?}", c.voters, c.learners)
                    }
                    Err(e) => format!("failed: {e}"),
                };
                self.note(format!("{id} membership change {text}"));
            }
            Event::TransferFinished { target, result } => {
                let id = self.nodes[node].id.clone();
                if result.is_ok() {
                    self.count("leadership transfers");
                }
                self.note(format!("{id} transfer to {target}: {result:?}"));
            }
            _ => {}
        }
    }

    pub(super) fn take_snapshot(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let Some(raft) = n.raft.as_mut() else {
            return;
        };
        let Ok(meta) = raft.snapshot_meta_at(n.applied_index) else {
            return;
        };
        // Saved synchronously: the snapshot is durable before the core hears of it.
        if let Disk::Memory(storage) = &n.disk {
            storage.set_snapshot(meta.clone());
        }
        n.snapshot = Some(SimSnapshot {
            meta: meta.clone(),
            kv: n.kv.clone(),
            chain_hash: n.applied_hash,
        });
        raft.on_snapshot_saved(meta);
        self.process(node);
    }
}
