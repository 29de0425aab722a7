//! What a store does for a merge (see `crate::merge` for the rules): proposes each step
//! through the log of the region it belongs to (the placement driver's executor asks for
//! them, one at a time, through `MergeStep`), and acts on a merge its target applied:
//! records the wider target in `store.meta`, drops the source's raft group, deletes what
//! the engine kept for the source (never its keys: they are the target's now), and deletes
//! the merge's record last, so that a crash anywhere in between leaves the record for the
//! next start, which finishes the job before it opens any region.
//!
//! Owns: that order, and its idempotence. Must never: delete keys of a merged range, or
//! start a source whose target absorbed it.

use super::meta::MetaChange;
use super::Store;
use crate::command::KvCommand;
use crate::engine::{meta_keys, WriteBatch};
use crate::error::KvError;
use crate::ids::{Epoch, RegionId};
use crate::merge::{record_key, region_key, state_key, MergeRecord, MergeState};
use crate::region::Region;
use crate::state_machine::applied_key;

/// Most merge records read back at a start.
const RECORDS_READ_MAX: usize = crate::limits::SCAN_LIMIT_MAX;

/// A region as this store's replica of it stands, for a merge step's checks.
#[derive(Clone, Debug)]
pub struct MergeView {
    /// The region (range and epoch).
    pub region: Region,
    /// The merge it is frozen for, if any.
    pub merging: Option<MergeState>,
    /// Index of the last entry applied here.
    pub applied: flotilla_node::LogIndex,
}

impl Store {
    /// This store's replica of region `id` as it stands (no leadership needed).
    pub fn merge_view(&self, id: RegionId) -> Result<MergeView, KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        Ok(MergeView {
            region: peer.machine.region(),
            merging: peer.machine.merging(),
            applied: peer.machine.applied_index(),
        })
    }

    /// [`Store::merge_view`] of a region this store leads (a follower's view may lag).
    fn leader_view(&self, id: RegionId) -> Result<MergeView, KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        if !peer.node.is_leader() {
            return Err(self.not_leader(id, &peer));
        }
        self.merge_view(id)
    }

    /// Proposes an admin `command` to region `id`, which this store must lead.
    async fn propose_step(&self, id: RegionId, command: KvCommand) -> Result<Region, KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        if !peer.node.is_leader() {
            return Err(self.not_leader(id, &peer));
        }
        let region = peer.machine.region();
        self.propose(id, region.epoch, command).await?;
        Ok(peer.machine.region())
    }

    /// Freezes region `source` (at `version`) for a merge into `target` (as the caller
    /// expects it: id, range, epoch). Idempotent: a source frozen for that target already
    /// answers its merge. Refused, changing nothing: not the leader, another version, a
    /// target that does not touch it, a joint configuration, frozen for another target.
    pub async fn prepare_merge(
        &self,
        source: RegionId,
        target: Region,
        version: u64,
    ) -> Result<MergeState, KvError> {
        let view = self.merge_view(source)?;
        if let Some(state) = view.merging {
            if state.target.id == target.id && state.target.epoch == target.epoch {
                return Ok(state);
            }
            return Err(KvError::Refused(format!(
                "region {source} is already merging into {}",
                state.target
            )));
        }
        self.propose_step(source, KvCommand::PrepareMerge { target, version })
            .await?;
        self.merge_view(source)?.merging.ok_or_else(|| {
            KvError::Unknown(format!(
                "region {source}: the prepare applied but the region is not frozen"
            ))
        })
    }

    /// Extends region `target` over the frozen source `state` describes. Answers the
    /// target as it is after (idempotent: a target that covers the source already answers
    /// itself). Refused, changing nothing: not the leader, the target's epoch moved, the
    /// regions are not on the same stores.
    pub async fn commit_merge(
        &self,
        target: RegionId,
        state: MergeState,
    ) -> Result<Region, KvError> {
        let view = self.merge_view(target)?;
        if absorbed(&view.region, &state) {
            return Ok(view.region);
        }
        let region = self
            .propose_step(target, KvCommand::CommitMerge(Box::new(state)))
            .await?;
        Ok(region)
    }

    /// Moves region `target`'s version if it is still at `expected`: no merge expecting
    /// that epoch commits into it afterwards. Answers the target as it is after.
    pub async fn fence_merge(&self, target: RegionId, expected: Epoch) -> Result<Region, KvError> {
        let view = self.leader_view(target)?;
        // Moved past `expected` by an entry applied here (never "older": a new leader's
        // applied state may lag the epoch the caller read).
        let epoch = view.region.epoch;
        if epoch.version > expected.version || epoch.conf_version > expected.conf_version {
            return Ok(view.region);
        }
        self.propose_step(target, KvCommand::FenceMerge { expected })
            .await
    }

    /// Thaws the frozen region `source` (at `version`). Answers it as it is after; a
    /// region not frozen any more answers itself.
    pub async fn rollback_merge(&self, source: RegionId, version: u64) -> Result<Region, KvError> {
        let view = self.leader_view(source)?;
        if view.merging.is_none() && view.region.epoch.version > version {
            // Thawed already (by this rollback, its answer lost).
            return Ok(view.region);
        }
        self.propose_step(source, KvCommand::RollbackMerge { version })
            .await
    }

    /// Records `record`'s merge in `store.meta` (the target's wider range; the source
    /// gone), drops the source's group and what the engine kept for it besides its keys,
    /// then deletes the record. Idempotent.
    pub(crate) async fn finish_merge(&self, record: &MergeRecord) -> Result<(), KvError> {
        let source = record.source.id;
        {
            let mut meta = self.inner.meta.lock().await;
            let mut changes = Vec::new();
            if let Some(target) = meta
                .regions
                .iter()
                .find(|h| h.region.id == record.target.id)
            {
                if target.region.epoch.version < record.target.epoch.version {
                    let mut updated = target.clone();
                    let conf_version = target
                        .region
                        .epoch
                        .conf_version
                        .max(record.target.epoch.conf_version);
                    updated.region = record.target.clone();
                    updated.region.epoch.conf_version = conf_version;
                    changes.push(MetaChange::Region(updated));
                }
            }
            if meta.regions.iter().any(|h| h.region.id == source) {
                changes.push(MetaChange::Removed(source));
            }
            if !changes.is_empty() {
                self.record_meta(&mut meta, changes).await?;
            }
            self.inner
                .regions
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&source);
        }
        // The source's log goes next: what its entries wrote (and the commit) must be on
        // disk first, since no replay can bring them back after that.
        let engine = self.inner.engine.clone();
        tokio::task::spawn_blocking(move || engine.flush())
            .await
            .map_err(|e| {
                KvError::Engine(format!("flushing before a merge's end panicked: {e}"))
            })??;
        self.inner
            .manager
            .purge_group(source.0)
            .await
            .map_err(|e| {
                KvError::Engine(format!("dropping merged region {source}'s group: {e}"))
            })?;
        let mut batch = WriteBatch::new();
        batch.meta_delete(applied_key(source));
        batch.meta_delete(state_key(source));
        batch.meta_delete(region_key(source));
        let engine = self.inner.engine.clone();
        let key = record_key(source);
        tokio::task::spawn_blocking(move || {
            engine.write(batch)?;
            // The source's watch history stays for its retention: a watch of its keys
            // resumes through it into the target (`watch`).
            engine.meta_delete(key)
        })
        .await
        .map_err(|e| KvError::Engine(format!("deleting a merge record panicked: {e}")))??;
        self.inner
            .merges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A replica added to the target later must be caught up from a snapshot of the
        // merged range, never by replaying the commit (its store would not hold the
        // source's keys): the log is compacted past the commit at once.
        self.compact_past_merge(record.target.id);
        tracing::info!(source = %record.source, target = %record.target, store = %self.inner.id, "merge finished on this store: the source's group is dropped, its keys are the target's");
        Ok(())
    }

    /// Drops the frozen sources `target` absorbed without this store applying the commit:
    /// its replica here installed a snapshot taken after the merge, which brought the wider
    /// range (and the source's keys as the target holds them). Nothing to do otherwise.
    pub(crate) async fn finish_merges_absorbed_by(&self, target: &Region) -> Result<(), KvError> {
        let absorbed: Vec<MergeState> = self
            .inner
            .regions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|peer| peer.machine.merging())
            .filter(|state| absorbed(target, state))
            .collect();
        for state in absorbed {
            tracing::info!(source = %state.source, target = %target, "a snapshot of the target covers a frozen source: the merge is finished here");
            let record = MergeRecord {
                source: state.source.clone(),
                target: target.clone(),
                index: state.index,
                term: flotilla_node::Term(0),
            };
            self.finish_merge(&record).await?;
        }
        Ok(())
    }

    /// Finishes the merges a crash left unrecorded (their records are still in the
    /// engine). Runs at open, before any region starts.
    pub(crate) async fn finish_recorded_merges(&self) -> Result<(), KvError> {
        let engine = self.inner.engine.clone();
        let records = tokio::task::spawn_blocking(move || {
            let mut end = meta_keys::MERGED_PREFIX.to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            engine.meta_scan(meta_keys::MERGED_PREFIX, &end, RECORDS_READ_MAX)
        })
        .await
        .map_err(|e| KvError::Engine(format!("reading merge records panicked: {e}")))??;
        for (key, value) in records {
            let record = MergeRecord::decode(&value).map_err(|e| {
                KvError::Corrupt(format!("merge record {}: {e}", crate::error::show(&key)))
            })?;
            tracing::info!(source = %record.source, target = %record.target, "finishing a merge recorded before a restart");
            self.finish_merge(&record).await?;
        }
        Ok(())
    }
}

impl Store {
    /// Compacts region `id`'s log past the entry just applied: a snapshot, then (on the
    /// leader) a no-op entry and a second snapshot, since a snapshot compacts the log back
    /// to the one before it. In the background; a failure leaves it to periodic snapshots.
    fn compact_past_merge(&self, id: RegionId) {
        let Some(peer) = self.peer(id) else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            let first = peer.node.snapshot().await;
            let leads = peer.node.is_leader();
            let second = match (&first, leads) {
                (Ok(_), true) => {
                    let epoch = peer.machine.region().epoch;
                    match store
                        .propose(id, epoch, KvCommand::BatchPut(Vec::new()))
                        .await
                    {
                        Ok(_) => peer.node.snapshot().await.map(Some),
                        Err(e) => {
                            tracing::info!(region = %id, error = %e, "no entry after a merge's snapshot: the log is compacted past the merge by the next periodic snapshots");
                            Ok(None)
                        }
                    }
                }
                _ => Ok(None),
            };
            tracing::info!(region = %id, first = ?first.map_err(|e| e.to_string()), second = ?second.map_err(|e| e.to_string()), "snapshots of a merge's target");
        });
    }
}

/// Whether `target` already covers the source of `state` at a version past the merge.
fn absorbed(target: &Region, state: &MergeState) -> bool {
    target.id == state.target.id
        && target.epoch.version > state.target.epoch.version
        && target.contains_range(&state.source.start, &state.source.end)
}
