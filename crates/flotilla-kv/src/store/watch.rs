//! Serving watches (`crate::watch`): a region's history from a cursor, then its live
//! entries; and the upkeep of history: the retention trim, and the end of interest nobody
//! renews.
//!
//! A watch is served by the region's leader: it proposes the interest entry (starting
//! the history, or renewing it) and renews it every [`renew_every`] while the stream is
//! open; a leader that lost the lead ends the stream (`NotLeader`) and the client resumes
//! at the new one. The live broadcast is bounded ([`crate::watch::LIVE_ENTRIES_MAX`]): a
//! watcher that falls behind is cut off with `Compacted` naming its own position, from
//! which it resumes through the history.
//!
//! Owns: the order of a watch's messages (history before live, no entry twice, no entry
//! skipped) and the handovers at splits and merges. Must never: answer a position whose
//! history this replica does not hold completely, except with `Compacted`.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::command::{KvCommand, KvOutput};
use crate::engine::WriteBatch;
use crate::error::KvError;
use crate::ids::RegionId;
use crate::watch::{Cursor, Merged, WatchItem, WatchOp, WatchRecord, WHOLE};

use super::Store;

/// Messages of one watch stream buffered before the stream waits for its reader.
const STREAM_BUFFER: usize = 64;
/// History records read per page.
const HISTORY_PAGE: usize = 256;
/// History records one region's trim removes per round.
const TRIM_PER_ROUND: usize = 1024;
/// Bytes of keys and values one message carries before an entry's events go on in the
/// next (a reply is at most `KV_MESSAGE_BYTES_MAX`, 16 MiB; a value at most 1 MiB).
const MESSAGE_BYTES: usize = 1024 * 1024;
/// How often a stream checks that its region still lives here.
const GONE_CHECK: Duration = Duration::from_secs(1);

/// How often a stream renews its region's interest: well within the retention.
#[must_use]
pub fn renew_every(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Counts `message` in the store's watch metrics as it is sent.
fn count(stats: &super::watch_stats::WatchStats, message: &WatchMessage) {
    match message {
        WatchMessage::Events { events, .. } => stats.sent(events.len(), false),
        WatchMessage::Compacted { .. } => stats.sent(0, true),
        _ => {}
    }
}

/// Merges a resumed cursor is followed through, at most.
const MERGE_CHAIN_MAX: usize = 16;

/// Where a merged source's cursor goes on: the target, its range version, the commit.
#[derive(Clone, Copy, Debug)]
struct Handover {
    region: RegionId,
    version: u64,
    commit: u64,
}

impl Handover {
    /// `cursor` (its keys as they are now) placed right after the commit in the target.
    fn cursor(&self, cursor: &Cursor) -> Cursor {
        Cursor {
            region: self.region,
            version: self.version,
            index: self.commit,
            event: WHOLE,
            ..cursor.clone()
        }
    }
}

/// How a cursor of a merged source is served by the target.
enum Resolved {
    /// From this position in the target.
    Here(Cursor),
    /// The source's rest first (its history still here, up to its last change), then
    /// the handover.
    Prelude(Cursor, (Handover, u64)),
    /// Not servable: the stream's only message.
    Gone(WatchMessage),
}

/// One message of a watch stream.
#[derive(Clone, Debug)]
pub enum WatchMessage {
    /// Events of entry `cursor.index` (numbered in the entry), and the cursor after them;
    /// with no events: the cursor's position (the first message, and a handover to the
    /// region a merge moved its keys to, after which the stream ends).
    Events {
        /// The cursor after the events.
        cursor: Cursor,
        /// The events, each with its number in the entry.
        events: Vec<(u32, WatchItem)>,
    },
    /// A split handed part of the cursor's keys to `child` (watched there from right
    /// after the split); `cursor` keeps the rest (the stream ends if that is nothing).
    Split {
        /// The cursor after the split.
        cursor: Cursor,
        /// The new cursor in the child.
        child: Cursor,
    },
    /// The history the cursor needs is gone, or it fell behind the live broadcast: the
    /// stream ends. `resume_from`: the oldest position it can resume from.
    Compacted {
        /// Why.
        message: String,
        /// The oldest position it can resume from, if one is known.
        resume_from: Option<Cursor>,
    },
    /// The stream ends with this error; the watcher resumes from its cursor (elsewhere).
    Failed(KvError),
}

impl Store {
    /// Starts serving a watch of `cursor`'s keys in region `id` (this store must lead
    /// it): `from_now` places the cursor at the region's applied index first. A cursor of
    /// another region is one of a merged source whose keys went to `id`.
    pub async fn watch(
        &self,
        id: RegionId,
        mut cursor: Cursor,
        from_now: bool,
    ) -> Result<mpsc::Receiver<WatchMessage>, KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        let engine = self.inner.engine.clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let version = peer.machine.region().epoch.version;
        // A cursor of a merged source (maybe through several merges) continues here.
        let mut prelude = None;
        if cursor.region != id {
            match self.resolve_merged(id, version, cursor)? {
                Resolved::Here(here) => cursor = here,
                Resolved::Prelude(source, handover) => {
                    cursor = source;
                    prelude = Some(handover);
                }
                Resolved::Gone(message) => {
                    self.watch_send_now(&tx, message);
                    return Ok(rx);
                }
            }
        }
        if from_now {
            // Checked before anything is proposed: a piece wider than the region is placed
            // again by the client, and leaves no interest entry behind.
            let region = peer.machine.region();
            if !region.contains_range(&cursor.start, &cursor.end) {
                return Err(KvError::StaleEpoch {
                    region: id,
                    current: region.epoch,
                    given: crate::ids::Epoch {
                        conf_version: region.epoch.conf_version,
                        version: cursor.version,
                    },
                    now: Some(region.encode()),
                });
            }
        }
        let region = peer.machine.region();
        let since = match self
            .write(id, region.epoch, KvCommand::Watch(WatchOp::Interest))
            .await?
        {
            KvOutput::Counter(since) => since,
            other => {
                return Err(KvError::Unknown(format!(
                    "the state machine answered a watch interest with {other:?}"
                )))
            }
        };
        let hub = peer.machine.watch().clone();
        let live = hub.subscribe();
        if from_now {
            cursor.version = peer.machine.region().epoch.version;
            cursor.index = peer.machine.applied_index().0;
            cursor.event = WHOLE;
        }
        let floor = since
            .saturating_add(1)
            .max(crate::watch::local_floor(engine.as_ref(), id)?);
        let here = prelude.as_ref().map_or_else(
            || cursor.clone(),
            |(handover, _): &(Handover, u64)| handover.cursor(&cursor),
        );
        if here.needed() < floor {
            let resume_from = Cursor {
                index: floor - 1,
                event: WHOLE,
                ..here.clone()
            };
            self.watch_send_now(
                &tx,
                WatchMessage::Compacted {
                    message: format!(
                        "region {id} holds history from entry {floor} on; the watch needs it from \
                     entry {}",
                        here.needed()
                    ),
                    resume_from: Some(resume_from),
                },
            );
            return Ok(rx);
        }
        let store = self.clone();
        tokio::spawn(async move {
            store.inner.watch_stats.opened();
            let mut stream = Stream {
                store: store.clone(),
                cursor,
                tx,
                hub,
                since,
                region: id,
            };
            let end = stream.serve(&store, id, prelude, live).await;
            if let Some(message) = end {
                stream.send(message).await;
            }
            store.inner.watch_stats.closed();
        });
        Ok(rx)
    }

    /// Where a cursor of region `cursor.region`, merged away (maybe through several
    /// merges, each a pure handover), continues in region `id` (range version `version`).
    /// A cursor whose region this store knows no merge of may be the region's own
    /// elsewhere (routes behind): a retryable `NoSuchRegion`.
    fn resolve_merged(
        &self,
        id: RegionId,
        version: u64,
        mut cursor: Cursor,
    ) -> Result<Resolved, KvError> {
        let engine = self.inner.engine.as_ref();
        for _ in 0..MERGE_CHAIN_MAX {
            let Some(merged) = engine
                .meta_get(&crate::watch::merged_key(cursor.region))?
                .map(|value| Merged::decode(&value))
                .transpose()?
            else {
                return Err(KvError::NoSuchRegion(cursor.region));
            };
            let handover = Handover {
                region: merged.target,
                version,
                commit: merged.commit,
            };
            if cursor.needed() > merged.last {
                // Every change of the source reached the watcher: on in the target.
                cursor = handover.cursor(&cursor);
                if cursor.region == id {
                    return Ok(Resolved::Here(cursor));
                }
                continue;
            }
            let gone = |why: String| {
                Resolved::Gone(WatchMessage::Compacted {
                    message: why,
                    resume_from: (merged.target == id).then(|| handover.cursor(&cursor)),
                })
            };
            if merged.target != id {
                return Ok(gone(format!(
                    "region {} merged into region {} with changes the watch did not have, and \
                     region {id} does not serve them",
                    cursor.region, merged.target
                )));
            }
            // The source's history is still here if its retention did not pass.
            let floor = match crate::watch::read_interest(engine, cursor.region)? {
                Some(interest) if merged.last != u64::MAX => interest
                    .since
                    .saturating_add(1)
                    .max(crate::watch::local_floor(engine, cursor.region)?),
                _ => u64::MAX,
            };
            if cursor.needed() < floor {
                return Ok(gone(format!(
                    "region {} merged into region {id} at entry {} and its history from entry {} \
                     on is gone",
                    cursor.region,
                    merged.commit,
                    cursor.needed()
                )));
            }
            return Ok(Resolved::Prelude(cursor, (handover, merged.last)));
        }
        Ok(Resolved::Gone(WatchMessage::Compacted {
            message: format!("more than {MERGE_CHAIN_MAX} merges since the watch's position"),
            resume_from: None,
        }))
    }

    /// Sends the only message of a stream that ends at once (counted; the channel is
    /// new, so there is room).
    fn watch_send_now(&self, tx: &mpsc::Sender<WatchMessage>, message: WatchMessage) {
        count(&self.inner.watch_stats, &message);
        let _ = tx.try_send(message);
    }

    /// The watch metrics in Prometheus text format.
    pub(super) fn watch_metrics_text(&self) -> String {
        let recording = self
            .all_peers()
            .iter()
            .filter(|peer| peer.machine.watch().interest().is_some())
            .count();
        self.inner.watch_stats.metrics_text(recording as u64)
    }

    /// Where a region's keys went once it is gone from this store: a message moving the
    /// cursor to the merge's target (every change of the region reached it), else an
    /// error the watcher resumes from (elsewhere, or through the target's copy of the
    /// region's history).
    fn watch_gone(&self, id: RegionId, cursor: &Cursor) -> WatchMessage {
        let merged = self
            .inner
            .engine
            .meta_get(&crate::watch::merged_key(id))
            .and_then(|value| value.map(|v| Merged::decode(&v)).transpose());
        match merged {
            Ok(Some(merged)) if cursor.needed() > merged.last => WatchMessage::Events {
                cursor: Cursor {
                    region: merged.target,
                    index: merged.commit,
                    event: WHOLE,
                    ..cursor.clone()
                },
                events: Vec::new(),
            },
            Ok(_) => WatchMessage::Failed(KvError::NoSuchRegion(id)),
            Err(e) => WatchMessage::Failed(e),
        }
    }

    /// One round of history upkeep: each region's records older than the retention are
    /// trimmed (raising the local floor), and a region this store leads whose interest
    /// nobody renewed for the retention has it ended.
    pub(super) async fn watch_upkeep(&self) {
        let retention = self.inner.watch_retention;
        let horizon = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(retention)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        // History of a merged source (no longer hosted here, kept for its watchers) is
        // trimmed too, and forgotten once empty. A region hosted but not started yet (a
        // store starting) is left for a later round: its state machine owns its floor.
        let engine = self.inner.engine.clone();
        let hubs: std::collections::BTreeMap<RegionId, std::sync::Arc<crate::watch::WatchHub>> =
            self.all_peers()
                .iter()
                .map(|peer| (peer.machine.region().id, peer.machine.watch().clone()))
                .collect();
        let hosted: std::collections::BTreeSet<RegionId> = self
            .inner
            .meta
            .lock()
            .await
            .regions
            .iter()
            .map(|hosted| hosted.region.id)
            .collect();
        let trimmed = tokio::task::spawn_blocking(move || {
            for region in crate::watch::regions_with_history(engine.as_ref())? {
                let owner = match hubs.get(&region) {
                    Some(hub) => Owner::Running(hub),
                    None if hosted.contains(&region) => continue,
                    None => Owner::Merged,
                };
                trim(engine.as_ref(), owner, region, horizon)?;
            }
            Ok::<(), KvError>(())
        })
        .await
        .map_err(|e| KvError::Engine(format!("the watch trim panicked: {e}")))
        .and_then(|r| r);
        if let Err(why) = trimmed {
            tracing::warn!(error = %why, "watch history trim failed");
        }
        for peer in self.all_peers() {
            if peer.machine.failed() {
                continue;
            }
            let region = peer.machine.region();
            let hub = peer.machine.watch();
            let Some(interest) = hub.interest() else {
                continue;
            };
            if !peer.node.is_leader() || hub.renewed_ago() < retention {
                continue;
            }
            let end = KvCommand::Watch(WatchOp::End {
                renewals: interest.renewals,
            });
            match self.write(region.id, region.epoch, end).await {
                Ok(KvOutput::Swapped(true)) => {
                    tracing::info!(region = %region.id, "watch interest ended: nobody renewed it");
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::debug!(region = %region.id, error = %why, "watch interest end not proposed");
                }
            }
        }
    }
}

/// Who keeps a region's watch history on this store.
enum Owner<'a> {
    /// Its running state machine (with the hub that serializes floor changes).
    Running(&'a crate::watch::WatchHub),
    /// Nobody: the region is not hosted here any more (a merged source's history, kept
    /// for the retention so a watch of it can resume through the target).
    Merged,
}

/// Deletes `region`'s history records applied before `horizon` (ms since the Unix epoch,
/// this replica's clock), at most [`TRIM_PER_ROUND`], raising its local floor past them.
/// A region no longer hosted is forgotten once its last record went, only if this store
/// knows where its keys went (a merge); its floor stays, at its highest.
fn trim(
    engine: &dyn crate::engine::KvEngine,
    owner: Owner<'_>,
    region: RegionId,
    horizon: u64,
) -> Result<(), KvError> {
    let (from, to) = crate::watch::history_range(region, 0);
    let page = engine.meta_scan(&from, &to, TRIM_PER_ROUND)?;
    let whole = page.len();
    let mut batch = WriteBatch::new();
    let mut floor = 0;
    for (key, value) in page {
        let Some(index) = crate::watch::index_of(region, &key) else {
            break;
        };
        // An unreadable record is as good as gone: trimmed with the old ones.
        let old = WatchRecord::decode(&value).map_or(true, |record| record.wall_ms < horizon);
        if !old {
            break;
        }
        batch.meta_delete(key);
        floor = index.saturating_add(1);
    }
    if batch.is_empty() {
        return Ok(());
    }
    match owner {
        Owner::Running(hub) => hub.raise_floor(engine, region, floor, batch),
        Owner::Merged => {
            let last = batch.len() == whole && whole < TRIM_PER_ROUND;
            let merged = engine
                .meta_get(&crate::watch::merged_key(region))?
                .is_some();
            if last && merged {
                // Its last records: the interest goes too, and the floor stays at its
                // highest so that nothing of it is ever served again.
                batch.meta_delete(crate::watch::interest_key(region));
                return crate::watch::raise_floor(engine, region, u64::MAX, batch);
            }
            crate::watch::raise_floor(engine, region, floor, batch)
        }
    }
}

/// Removes what this store kept of `region`'s watches (its peer is gone from here): the
/// interest, the local floor and the history. Where a merged source's keys went stays.
pub(super) fn forget_region(
    engine: &dyn crate::engine::KvEngine,
    region: RegionId,
) -> Result<(), KvError> {
    let mut batch = WriteBatch::new();
    batch.meta_delete(crate::watch::interest_key(region));
    batch.meta_delete(crate::watch::floor_key(region));
    engine.write(batch)?;
    let (from, to) = crate::watch::history_range(region, 0);
    loop {
        let page = engine.meta_scan(&from, &to, TRIM_PER_ROUND)?;
        let full = page.len() == TRIM_PER_ROUND;
        let mut batch = WriteBatch::new();
        for (key, _) in page {
            batch.meta_delete(key);
        }
        if !batch.is_empty() {
            engine.write(batch)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// One watch stream being served.
struct Stream {
    store: Store,
    cursor: Cursor,
    tx: mpsc::Sender<WatchMessage>,
    /// The region's watch state, and the interest the stream started under.
    hub: std::sync::Arc<crate::watch::WatchHub>,
    since: u64,
    /// The region serving it (`hub`'s).
    region: RegionId,
}

impl Stream {
    /// Whether the interest the stream started under still holds: if it ended (nobody
    /// renewed it for the retention) entries went unrecorded, and the stream must not
    /// go on past them as if nothing happened.
    fn interrupted(&self) -> Option<WatchMessage> {
        let intact = self
            .hub
            .interest()
            .is_some_and(|interest| interest.since == self.since);
        (!intact).then(|| {
            WatchMessage::Failed(KvError::Busy(
                "the region's watch interest ended and started again: resume".into(),
            ))
        })
    }

    /// Sends `message`; `false` once the watcher is gone.
    async fn send(&self, message: WatchMessage) -> bool {
        count(&self.store.inner.watch_stats, &message);
        self.tx.send(message).await.is_ok()
    }

    /// Serves the stream until it ends; answers the last message, if any.
    async fn serve(
        &mut self,
        store: &Store,
        id: RegionId,
        prelude: Option<(Handover, u64)>,
        mut live: tokio::sync::broadcast::Receiver<crate::watch::WatchEntry>,
    ) -> Option<WatchMessage> {
        let header = WatchMessage::Events {
            cursor: self.cursor.clone(),
            events: Vec::new(),
        };
        if !self.send(header).await {
            return None;
        }
        // A merged source's rest first, then the handover to the target.
        if let Some((handover, last)) = prelude {
            let source = self.cursor.region;
            match self.replay(store, source, self.cursor.needed(), last).await {
                Delivered::Going => {}
                Delivered::Ended => return None,
                Delivered::Stop(message) => return Some(message),
            }
            // The keys as the source's history left them (a split there narrowed them).
            self.cursor = handover.cursor(&self.cursor);
            let moved = WatchMessage::Events {
                cursor: self.cursor.clone(),
                events: Vec::new(),
            };
            if !self.send(moved).await {
                return None;
            }
        }
        // The history first: every entry written before the live receiver existed is in
        // the engine; the live ones after `next` follow.
        let mut next = self.cursor.needed();
        match self.replay(store, id, next, u64::MAX).await {
            Delivered::Going => next = next.max(self.cursor.needed()),
            Delivered::Ended => return None,
            Delivered::Stop(message) => return Some(message),
        }
        // Then live.
        let renew = renew_every(store.inner.watch_retention);
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + renew, renew);
        let mut checks =
            tokio::time::interval_at(tokio::time::Instant::now() + GONE_CHECK, GONE_CHECK);
        loop {
            tokio::select! {
                // Entries already queued go first: a check of the region must not cut a
                // stream off before what it still holds.
                biased;
                entry = live.recv() => match entry {
                    Ok(entry) => {
                        if entry.index < next {
                            continue;
                        }
                        if let Some(interrupted) = self.interrupted() {
                            return Some(interrupted);
                        }
                        match self.deliver(entry.index, &entry.items).await {
                            Delivered::Going => next = entry.index.saturating_add(1),
                            Delivered::Ended => return None,
                            Delivered::Stop(message) => return Some(message),
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        return Some(WatchMessage::Compacted {
                            message: format!(
                                "the watch fell {missed} entries behind region {id}'s live \
                                 changes (at most {} are held): resume from its position",
                                crate::watch::LIVE_ENTRIES_MAX
                            ),
                            resume_from: Some(self.cursor.clone()),
                        });
                    }
                    Err(RecvError::Closed) => return Some(store.watch_gone(id, &self.cursor)),
                },
                _ = renewals.tick() => {
                    let Some(peer) = store.peer(id) else {
                        return Some(store.watch_gone(id, &self.cursor));
                    };
                    let epoch = peer.machine.region().epoch;
                    let interest = KvCommand::Watch(WatchOp::Interest);
                    match store.write(id, epoch, interest).await {
                        Ok(_) => {}
                        Err(e @ (KvError::NotLeader { .. } | KvError::NoSuchRegion(_))) => {
                            return Some(WatchMessage::Failed(e));
                        }
                        // Busy or slow: the next renewal tries again, well within the
                        // retention.
                        Err(why) => {
                            tracing::debug!(region = %id, error = %why, "watch interest not renewed");
                        }
                    }
                }
                _ = checks.tick() => {
                    // Gone, or opened again (another state machine, another hub).
                    let same = store
                        .peer(id)
                        .is_some_and(|peer| std::sync::Arc::ptr_eq(peer.machine.watch(), &self.hub));
                    if !same {
                        return Some(store.watch_gone(id, &self.cursor));
                    }
                }
                () = self.tx.closed() => return None,
            }
        }
    }

    /// Delivers `region`'s history records from entry `from` up to entry `last`. Each page
    /// read is checked whole: the retention trim removed nothing from `from` on before it
    /// was read (it raises the floor with what it deletes), and (the stream's own region)
    /// the interest did not end meanwhile.
    async fn replay(&mut self, store: &Store, region: RegionId, from: u64, last: u64) -> Delivered {
        let engine = store.inner.engine.clone();
        let failed = |e: KvError| Delivered::Stop(WatchMessage::Failed(e));
        let (mut start, end) = crate::watch::history_range(region, from);
        // The entry whose parts are being gathered (they may straddle pages).
        let mut pending: Option<(u64, Vec<WatchItem>)> = None;
        // The first entry not delivered yet.
        let mut next = from;
        loop {
            let page = match engine.meta_scan(&start, &end, HISTORY_PAGE) {
                Ok(page) => page,
                Err(e) => return failed(e),
            };
            let floor = match crate::watch::local_floor(engine.as_ref(), region) {
                Ok(floor) => floor,
                Err(e) => return failed(e),
            };
            let undelivered = pending.as_ref().map_or(next, |(index, _)| *index);
            if floor > undelivered {
                return Delivered::Stop(WatchMessage::Compacted {
                    message: format!(
                        "region {region}'s history before entry {floor} passed its retention \
                         while the watch read it"
                    ),
                    resume_from: Some(Cursor {
                        index: floor - 1,
                        event: WHOLE,
                        ..self.cursor.clone()
                    }),
                });
            }
            if region == self.region {
                if let Some(interrupted) = self.interrupted() {
                    return Delivered::Stop(interrupted);
                }
            }
            let full = page.len() == HISTORY_PAGE;
            if let Some((key, _)) = page.last() {
                let mut after = key.to_vec();
                after.push(0);
                start = bytes::Bytes::from(after);
            }
            for (key, value) in page {
                let Some(index) = crate::watch::index_of(region, &key) else {
                    continue;
                };
                let record = match WatchRecord::decode(&value) {
                    Ok(record) => record,
                    Err(e) => return failed(e),
                };
                if let Some((at, items)) = &mut pending {
                    if *at == index {
                        items.extend(record.items);
                        continue;
                    }
                }
                if let Some((at, items)) = pending.take() {
                    match self.deliver(at, &items).await {
                        Delivered::Going => next = at.saturating_add(1),
                        other => return other,
                    }
                }
                if index > last {
                    return Delivered::Going;
                }
                pending = Some((index, record.items));
            }
            if !full {
                return match pending.take() {
                    Some((at, items)) => self.deliver(at, &items).await,
                    None => Delivered::Going,
                };
            }
        }
    }

    /// Sends entry `index`'s events the cursor watches (after its position) and moves the
    /// cursor past the entry; a split narrows it and hands the rest to the child.
    async fn deliver(&mut self, index: u64, items: &[WatchItem]) -> Delivered {
        if index < self.cursor.needed() {
            return Delivered::Going;
        }
        let after =
            (index == self.cursor.index && self.cursor.event != WHOLE).then_some(self.cursor.event);
        let mut events = Vec::new();
        let mut bytes = 0;
        for (number, item) in items.iter().enumerate() {
            let number = u32::try_from(number).unwrap_or(u32::MAX - 1);
            if after.is_some_and(|after| number <= after) {
                continue;
            }
            match item {
                WatchItem::Put { key, value } if self.cursor.covers(key) => {
                    bytes += key.len() + value.len();
                    events.push((number, item.clone()));
                }
                WatchItem::Delete { key } if self.cursor.covers(key) => {
                    bytes += key.len();
                    events.push((number, item.clone()));
                }
                WatchItem::Put { .. } | WatchItem::Delete { .. } => {}
                WatchItem::Split {
                    child,
                    version,
                    key,
                } => {
                    let (parent, child) = self.cursor.split(index, *child, *version, key);
                    self.cursor = parent;
                    if let Some(child) = child {
                        let message = WatchMessage::Split {
                            cursor: self.cursor.clone(),
                            child,
                        };
                        if !self.send(message).await {
                            return Delivered::Ended;
                        }
                    }
                    if self.cursor.is_empty() {
                        return Delivered::Ended;
                    }
                }
            }
            // A large entry goes in several messages, each within what a reply may carry;
            // the cursor names the last event sent.
            if bytes >= MESSAGE_BYTES && !events.is_empty() {
                self.cursor.index = index;
                self.cursor.event = number;
                let message = WatchMessage::Events {
                    cursor: self.cursor.clone(),
                    events: std::mem::take(&mut events),
                };
                bytes = 0;
                if !self.send(message).await {
                    return Delivered::Ended;
                }
            }
        }
        self.cursor.index = index;
        self.cursor.event = WHOLE;
        if events.is_empty() {
            return Delivered::Going;
        }
        let message = WatchMessage::Events {
            cursor: self.cursor.clone(),
            events,
        };
        if self.send(message).await {
            Delivered::Going
        } else {
            Delivered::Ended
        }
    }
}

/// Whether a stream goes on after an entry.
enum Delivered {
    Going,
    /// The watcher is gone.
    Ended,
    /// The stream ends with this message.
    Stop(WatchMessage),
}
