//! What a store does with a split its region's state machine applied (see `crate::split`
//! for the rule itself): record the parent's smaller range and the child in `store.meta`,
//! start the child's raft group where the split entry left the parent's log, and delete
//! the split's record from the engine. The record is deleted last, so a crash anywhere in
//! between leaves it for the next start, which finishes the job before it opens any region.
//!
//! Owns: that order, and its idempotence (a record acted on twice changes nothing the
//! second time). Must never: reopen a parent with its range from before the split, or
//! start a child whose parent this store no longer hosts.
//!
//! A replica that has not applied the split yet drops whatever the child's other replicas
//! send it (the node runtime drops frames for a group it does not host): it creates no
//! peer of the child and no range of it overlaps the parent's. Once it applies the split it
//! starts the child at the split entry, and the child's leader catches it up from its log,
//! or from the snapshot the child took as it started.

use bytes::Bytes;

use super::meta::{HostedRegion, MetaChange, RegionStart};
use super::Store;
use crate::command::KvCommand;
use crate::engine::meta_keys;
use crate::error::KvError;
use crate::ids::RegionId;
use crate::region::Region;
use crate::service::proto::pd::AllocIdsRequest;
use crate::split::{record_key, SplitRecord};

/// Where [`Store::split_region_at`] splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitAt {
    /// At this key (empty: the key that halves the region's bytes).
    Key(Bytes),
    /// At the key that divides the writes this leader proposed lately (load-based split).
    Load,
}

/// Most split records read back at a start (one per split a crash cut short; in practice
/// a handful).
const RECORDS_READ_MAX: usize = crate::limits::SCAN_LIMIT_MAX;

impl Store {
    /// Splits region `id`, which this store must lead, at `key` (`admin split`; an empty
    /// key: the engine's middle key of the region by size): a child id from the placement
    /// driver, then the split entry through the region's log.
    /// Answers the parent and the child as they are after it. Refused, changing nothing:
    /// a key not strictly inside the region, a region this store does not lead, no PD
    /// leader reachable for the id, or (when the entry applies) a region that moved on
    /// meanwhile or is changing membership.
    pub async fn split_region(
        &self,
        id: RegionId,
        key: Bytes,
    ) -> Result<(Region, Region), KvError> {
        self.split_region_at(id, SplitAt::Key(key), None).await
    }

    /// [`Store::split_region`], refused with [`KvError::StaleEpoch`] (nothing changed)
    /// unless the region's version is `version` when one is given: the placement driver
    /// retries a split whose answer it lost, and must never split the parent twice.
    pub async fn split_region_at(
        &self,
        id: RegionId,
        at: SplitAt,
        version: Option<u64>,
    ) -> Result<(Region, Region), KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        let region = peer.machine.region();
        if let Some(version) = version.filter(|v| *v != region.epoch.version) {
            return Err(KvError::StaleEpoch {
                region: id,
                current: region.epoch,
                given: crate::region::Epoch::new(region.epoch.conf_version, version),
                now: Some(region.encode()),
            });
        }
        let key = match at {
            SplitAt::Key(key) if !key.is_empty() => key,
            SplitAt::Key(_) => self.middle_key(&region).await?,
            SplitAt::Load => peer
                .load
                .split_key(&region.start, &region.end)
                .ok_or_else(|| {
                    KvError::Refused(format!(
                        "{region}: too few writes seen here, or all to one key, to divide its load"
                    ))
                })?,
        };
        let probe = KvCommand::Split {
            key: key.clone(),
            child: RegionId(u64::MAX),
            version: region.epoch.version,
        };
        probe.validate()?;
        probe.check_region(&region)?;
        if !peer.node.is_leader() {
            return Err(self.not_leader(id, &peer));
        }
        let child = self
            .call_pd(
                |mut client| async move { client.alloc_ids(AllocIdsRequest { count: 1 }).await },
            )
            .await
            .map_err(|why| KvError::Node {
                kind: "PdUnavailable".into(),
                message: format!("no id for the split's child region: {why}"),
            })?
            .first;
        let command = KvCommand::Split {
            key,
            child: RegionId(child),
            version: region.epoch.version,
        };
        self.propose(id, region.epoch, command).await?;
        let parent = peer.machine.region();
        // The store's event task starts the child just after the entry applied.
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            if let Some(peer) = self.peer(RegionId(child)) {
                return Ok((parent, peer.machine.region()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KvError::Unknown(format!(
                    "region {id} split, but its child {child} has not started on this store \
                     within {:?}",
                    self.inner.request_timeout
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The key that halves `region`'s bytes on this store's engine.
    async fn middle_key(&self, region: &Region) -> Result<Bytes, KvError> {
        let engine = self.inner.engine.clone();
        let (start, end) = (region.start.clone(), region.end.clone());
        let middle = tokio::task::spawn_blocking(move || engine.middle_key(&start, &end))
            .await
            .map_err(|e| KvError::Engine(format!("finding a split key panicked: {e}")))??;
        middle.ok_or_else(|| {
            KvError::Refused(format!(
                "{region} holds fewer than two keys: there is nothing to split"
            ))
        })
    }

    /// Records `record`'s split in `store.meta` and starts the child (unless `start` is
    /// false: at open, where every hosted region starts next), then deletes the record.
    /// Nothing is done for a parent this store no longer hosts.
    pub(crate) async fn finish_split(
        &self,
        record: &SplitRecord,
        start: bool,
    ) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        let parent = meta
            .regions
            .iter()
            .find(|h| h.region.id == record.parent.id)
            .cloned();
        let child_hosted = meta.regions.iter().any(|h| h.region.id == record.child.id);
        // A replica that joined the parent after the split entry (it replays the entry from
        // a snapshot taken before it) is no member of the child: it only shrinks.
        let me = &self.inner.id;
        let member = record.voters.contains(me) || record.learners.contains(me);
        let mut child = None;
        if let Some(parent) = parent {
            let mut changes = Vec::new();
            if parent.region.epoch.version < record.parent.epoch.version {
                let mut updated = parent.clone();
                let conf_version = parent
                    .region
                    .epoch
                    .conf_version
                    .max(record.parent.epoch.conf_version);
                updated.region = record.parent.clone();
                updated.region.epoch.conf_version = conf_version;
                changes.push(MetaChange::Region(updated));
            }
            if !child_hosted && !member {
                tracing::info!(parent = %record.parent, child = %record.child, store = %me, "split from before this store joined the region: the child is not hosted here");
            }
            if !child_hosted && member {
                let hosted = HostedRegion {
                    region: record.child.clone(),
                    initial_peers: record.voters.clone(),
                    start: Some(RegionStart {
                        index: record.index.0,
                        term: record.term.0,
                        learners: record.learners.clone(),
                    }),
                };
                changes.push(MetaChange::Region(hosted.clone()));
                child = Some(hosted);
            }
            if !changes.is_empty() {
                self.record_meta(&mut meta, changes).await?;
            }
        } else {
            tracing::info!(parent = %record.parent.id, child = %record.child, "split of a region no longer hosted here: nothing to start");
        }
        if let (Some(hosted), true) = (child, start) {
            self.start_region(&hosted)
                .await
                .map_err(|e| KvError::Engine(e.to_string()))?;
            self.inner
                .splits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(parent = %record.parent, child = %record.child, store = %self.inner.id, "split child started");
        }
        drop(meta);
        if start {
            self.snapshot_parent(record.parent.id);
        }
        let engine = self.inner.engine.clone();
        let key = record_key(record.child.id);
        tokio::task::spawn_blocking(move || engine.meta_delete(key))
            .await
            .map_err(|e| KvError::Engine(format!("deleting a split record panicked: {e}")))?
    }

    /// Takes a snapshot of the parent of a split just applied, in the background: the
    /// parent's newest snapshot must describe it as it is now, because a peer added later
    /// (a learner the PD adds to balance) is caught up from that snapshot, and a replica
    /// opened with the smaller range refuses one of the larger range from before the split.
    pub(crate) fn snapshot_parent(&self, parent: RegionId) {
        let Some(peer) = self.peer(parent) else {
            return;
        };
        tokio::spawn(async move {
            match peer.node.snapshot().await {
                Ok(index) => {
                    tracing::debug!(region = %parent, %index, "snapshot of a region after its split");
                }
                Err(e) => {
                    tracing::info!(region = %parent, error = %e, "no snapshot of a region after its split (the next periodic one will do)");
                }
            }
        });
    }

    /// Finishes the splits a crash left unrecorded (their records are still in the
    /// engine). Runs at open, before any region starts.
    pub(crate) async fn finish_recorded_splits(&self) -> Result<(), KvError> {
        let engine = self.inner.engine.clone();
        let records = tokio::task::spawn_blocking(move || {
            let mut end = meta_keys::SPLIT_PREFIX.to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            engine.meta_scan(meta_keys::SPLIT_PREFIX, &end, RECORDS_READ_MAX)
        })
        .await
        .map_err(|e| KvError::Engine(format!("reading split records panicked: {e}")))??;
        for (key, value) in records {
            let record = SplitRecord::decode(&value).map_err(|e| {
                KvError::Corrupt(format!("split record {}: {e}", crate::error::show(&key)))
            })?;
            tracing::info!(parent = %record.parent, child = %record.child, "finishing a split recorded before a restart");
            self.finish_split(&record, false).await?;
        }
        Ok(())
    }
}
