//! The store's side of `admin backup`: a snapshot of a region it leads that holds every
//! write acknowledged before the request (see `crate::backup` for the rest).

use flotilla_node::{ReadMode, SnapshotMeta};

use super::Store;
use crate::error::KvError;
use crate::ids::RegionId;

impl Store {
    /// Makes (or finds) a snapshot of region `id` at or past a linearizable read point:
    /// every write acknowledged before this call is in it. Only the leader answers; a region
    /// frozen for a merge is refused (`RegionMerging`): its keys are about to move to the target.
    pub async fn backup_snapshot(&self, id: RegionId) -> Result<SnapshotMeta, KvError> {
        let peer = self.peer(id).ok_or(KvError::NoSuchRegion(id))?;
        let epoch = peer.machine.region().epoch;
        // The read refuses a follower, a failed engine and a frozen merge source.
        self.read_ready(id, epoch, Some(ReadMode::ReadIndex))
            .await?;
        let meta = peer
            .node
            .snapshot_meta()
            .await
            .map_err(|e| self.node_error(id, e))?;
        // Frozen between the read and the snapshot: that snapshot would carry the merge.
        if let Some(state) = peer.machine.merging() {
            let region = peer.machine.region();
            return Err(crate::state_machine::merging_refusal(&region, &state));
        }
        tracing::info!(region = %id, index = %meta.index, term = %meta.term, "snapshot made for a backup");
        Ok(meta)
    }
}
