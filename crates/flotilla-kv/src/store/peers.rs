//! What happens to a region peer of this store after it starts: its region's epoch moves
//! with every membership change (recorded in `store.meta`, so a restart starts from it),
//! and a peer removed from its region is destroyed — its raft log and snapshots deleted,
//! its keys deleted from the engine, its line removed from `store.meta` — instead of
//! staying open and idle until restart.
//!
//! How a store learns that its peer was removed: from whoever saw the region's
//! configuration move on without it — the placement driver, or `admin remove-peer` — and
//! checked here again before anything is deleted (see [`Store::destroy_stale_peer`]). Not
//! from the peer itself: a removed peer rarely hears that its removal committed (the leader
//! stops sending to it), and a peer that sees a committed configuration without itself may
//! be one added back later, replaying the region's history (peer ids are store ids here, not
//! one id per incarnation as in TiKV, so the two look alike).
//!
//! Owns: the order of a destruction — `store.meta` first (a restart never reopens the peer
//! half-destroyed), then the raft group, then the engine's keys — and the clean slate of a
//! peer created empty (any leftover of an earlier peer of the same region on this store,
//! from a destruction a crash cut short, is purged before it starts). Must never: destroy
//! a peer that a configuration this store knows to be committed still holds, or keep an
//! earlier peer's log or applied index under a new one.

use std::sync::Weak;

use flotilla_node::PeerId;
use tokio::sync::mpsc::UnboundedReceiver;

use super::meta::MetaChange;
use super::{lock, Store, StoreInner};
use crate::engine::WriteBatch;
use crate::error::KvError;
use crate::ids::RegionId;
use crate::region::Region;
use crate::state_machine::{applied_key, RegionEvent};

impl Store {
    /// Handles one event of a region's state machine.
    async fn on_region_event(&self, event: RegionEvent) {
        match event {
            RegionEvent::Configuration { region, .. } => {
                lock(&self.inner.pd.led).dirty.insert(region.id.0);
                if let Err(e) = self.record_epoch(&region).await {
                    tracing::warn!(region = %region.id, error = %e, "cannot record the region's new epoch; a restart starts from the older one and catches up");
                }
            }
            RegionEvent::Split(record) => {
                lock(&self.inner.pd.led).dirty.insert(record.parent.id.0);
                if let Err(e) = self.finish_split(&record, true).await {
                    tracing::error!(parent = %record.parent, child = %record.child, error = %e, "cannot finish the split on this store; a restart finishes it");
                }
            }
            RegionEvent::Merged(record) => {
                lock(&self.inner.pd.led).dirty.insert(record.target.id.0);
                if let Err(e) = self.finish_merge(&record).await {
                    tracing::error!(source = %record.source, target = %record.target, error = %e, "cannot finish the merge on this store; a restart finishes it");
                }
            }
            RegionEvent::Adopted(region) => {
                lock(&self.inner.pd.led).dirty.insert(region.id.0);
                // A source the snapshot's wider range absorbed goes first, so that
                // `store.meta` never holds two regions over one key.
                if let Err(e) = self.finish_merges_absorbed_by(&region).await {
                    tracing::error!(region = %region, error = %e, "cannot drop a merge source the region's snapshot absorbed; a restart finishes it");
                }
                if let Err(e) = self.record_adopted(&region).await {
                    tracing::warn!(region = %region.id, error = %e, "cannot record the region a snapshot brought; a restart takes it from the snapshot again");
                }
            }
            RegionEvent::Leader { region, leading } => {
                let mut led = lock(&self.inner.pd.led);
                if leading {
                    led.led.insert(region.0);
                    led.dirty.insert(region.0);
                } else {
                    led.led.remove(&region.0);
                    led.lost.insert(region.0);
                }
            }
        }
    }

    /// Records `region` as a snapshot brought it (range and epoch) in `store.meta`, when
    /// its epoch is newer than the one recorded: a replica that installed a snapshot taken
    /// after splits it never applied holds a smaller range now, and the store must know it
    /// (a child of those splits may be opened here next, beside it).
    async fn record_adopted(&self, region: &Region) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        let Some(hosted) = meta.regions.iter().find(|h| h.region.id == region.id) else {
            return Ok(());
        };
        if !region.epoch.supersedes(&hosted.region.epoch) {
            return Ok(());
        }
        let mut updated = hosted.clone();
        updated.region = region.clone();
        updated.region.epoch.conf_version = region
            .epoch
            .conf_version
            .max(hosted.region.epoch.conf_version);
        tracing::info!(region = %region, "a snapshot brought the region as it is now; recorded");
        self.record_meta(&mut meta, vec![MetaChange::Region(updated)])
            .await
    }

    /// Records `region`'s epoch in `store.meta` when it is newer than the one recorded.
    async fn record_epoch(&self, region: &Region) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        let Some(hosted) = meta.regions.iter().find(|h| h.region.id == region.id) else {
            return Ok(());
        };
        if hosted.region.epoch >= region.epoch
            || hosted.region.start != region.start
            || hosted.region.end != region.end
        {
            return Ok(());
        }
        let mut updated = hosted.clone();
        updated.region.epoch = region.epoch;
        self.record_meta(&mut meta, vec![MetaChange::Region(updated)])
            .await
    }

    /// Destroys this store's peer of region `id` on the placement driver's word that the
    /// region moved on without this store: its configuration at `conf_version` (the index
    /// of that configuration's entry) does not hold this store. Checked here again: the
    /// local peer must not know a configuration at or past `conf_version` (it would know
    /// whether it still belongs), and must hold no entry past it (a peer added back
    /// after that configuration would have received later entries), and must not lead; and
    /// the region must not have been asked to open here since `asked_at` (when the
    /// heartbeat the verdict answers was made): the PD may have started adding this store
    /// back since, and the entries that say so may not have arrived yet (found by
    /// flotilla-chaos: a learner destroyed 8 ms after it was added never caught up).
    /// Answers whether the peer was destroyed.
    pub async fn destroy_stale_peer(
        &self,
        id: RegionId,
        conf_version: u64,
        members: &[PeerId],
        asked_at: std::time::Instant,
    ) -> Result<bool, KvError> {
        let Some(peer) = self.peer(id) else {
            return Ok(false);
        };
        if members.contains(&self.inner.id) {
            return Ok(false);
        }
        let local = peer.machine.region().epoch.conf_version;
        let status = peer.node.status();
        let leads = status.role == flotilla_node::Role::Leader;
        if leads || local >= conf_version || status.last_index.0 > conf_version {
            return Ok(false);
        }
        let why = format!(
            "the region's configuration at {conf_version} does not hold this store (this peer \
             knows configuration {local} and holds entries up to {})",
            status.last_index
        );
        self.destroy_peer(id, &why, Some(asked_at)).await
    }

    /// Destroys this store's peer of region `id`: `store.meta` first, then the raft group
    /// (its log and snapshots), then the region's keys in the engine. With
    /// `unless_opened_since`, nothing is done if the region was asked to open here since
    /// then (checked under the meta lock `open_region` takes). Answers whether it did.
    pub(crate) async fn destroy_peer(
        &self,
        id: RegionId,
        why: &str,
        unless_opened_since: Option<std::time::Instant>,
    ) -> Result<bool, KvError> {
        let mut meta = self.inner.meta.lock().await;
        let opened = lock(&self.inner.opened_at).get(&id).copied();
        if let (Some(since), Some(opened)) = (unless_opened_since, opened) {
            if opened >= since {
                tracing::info!(region = %id, store = %self.inner.id, "a removed peer is kept: the region was asked to open here since the placement driver judged it stale");
                return Ok(false);
            }
        }
        let Some(hosted) = meta.regions.iter().find(|h| h.region.id == id).cloned() else {
            return Ok(false);
        };
        if let Some(state) = self.peer(id).and_then(|p| p.machine.merging()) {
            // Its keys are about to be the target's: only the merge's end drops it.
            tracing::warn!(region = %id, target = %state.target, why, "a frozen merge source is not destroyed");
            return Ok(false);
        }
        self.record_meta(&mut meta, vec![MetaChange::Removed(id)])
            .await?;
        self.inner
            .regions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        // Keys another region of this store covers are that region's (a merge target's
        // range over a stale replica of its source): only the group goes then.
        let shared = meta.regions.iter().any(|other| {
            let (a, b) = (&other.region, &hosted.region);
            (a.end.is_empty() || b.start < a.end) && (b.end.is_empty() || a.start < b.end)
        });
        if shared {
            self.inner
                .manager
                .purge_group(id.0)
                .await
                .map_err(|e| KvError::Engine(format!("purging region {id}'s raft group: {e}")))?;
            tracing::warn!(region = %id, store = %self.inner.id, why, "peer destroyed: its log and snapshots are deleted; its keys are another region's here and stay");
            return Ok(true);
        }
        self.purge_leftovers(&hosted.region).await?;
        tracing::warn!(region = %id, store = %self.inner.id, why, "peer destroyed: its log, snapshots and keys on this store are deleted");
        Ok(true)
    }

    /// Deletes whatever this store keeps of region `region` outside `store.meta`: its raft
    /// group (stopped if it runs; log and snapshots deleted) and its keys and applied index
    /// in the engine. The range belongs to no other region of this store (`store.meta`
    /// never holds two that share a key), so nothing else is touched.
    pub(super) async fn purge_leftovers(&self, region: &Region) -> Result<(), KvError> {
        self.inner
            .manager
            .purge_group(region.id.0)
            .await
            .map_err(|e| {
                KvError::Engine(format!("purging region {}'s raft group: {e}", region.id))
            })?;
        let mut batch = WriteBatch::new();
        batch.delete_range(region.start.clone(), region.end.clone());
        batch.meta_delete(applied_key(region.id));
        let engine = self.inner.engine.clone();
        let id = region.id;
        tokio::task::spawn_blocking(move || {
            engine.write(batch)?;
            super::watch::forget_region(engine.as_ref(), id)
        })
        .await
        .map_err(|e| KvError::Engine(format!("deleting region keys panicked: {e}")))?
        .map_err(|e| KvError::Engine(format!("deleting region {}'s keys: {e}", region.id)))
    }
}

/// The task that handles the region events of a store, in order, until the store closes.
pub(super) async fn run(inner: Weak<StoreInner>, mut events: UnboundedReceiver<RegionEvent>) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        Store { inner }.on_region_event(event).await;
    }
}
