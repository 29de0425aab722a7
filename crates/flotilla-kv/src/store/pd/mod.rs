//! The placement driver (PD) as a store runs it (docs/placement-driver.md). Every store
//! reports to the PD (`report`: its heartbeat every 10 s, and the regions it leads when
//! they change); the stores that host the meta group (raft group 0, the PD's durable
//! state: `flotilla_pd`) keep a replica of it, and the one that leads it is the PD: it
//! keeps what heartbeats say in memory (`leader`), plans with `flotilla_pd`'s pure
//! planners and drives each operator step by step (`execute`), recording every step in the
//! meta group so that a new PD leader resumes or cancels what it inherits.
//!
//! Owns: the meta group's peer on this store, the PD's soft state while this store leads
//! it, and the tasks that report, plan and execute. Must never: write a heartbeat to the
//! meta group (only durable facts that changed), act before it heard the stores after
//! becoming leader, or act on a region without checking its live state first.

mod admin;
mod execute;
mod leader;
mod metrics;
mod report;
mod runtime;

use std::sync::{Arc, RwLock};

use flotilla_node::{NodeError, PeerId, RaftError};
use flotilla_pd::{PdCommand, PdOutput, PdStateMachine};

use super::meta::MetaChange;
use super::{lock, Store, StoreError};
use crate::error::KvError;

pub(crate) use runtime::{Committed, MetaMachine, MetaPeer, PdRuntime};
pub use runtime::{META_GROUP, REGION_REPORT_EVERY, STORE_HEARTBEAT_DEFAULT};

impl Store {
    /// Starts (or restarts) this store's peer of the meta group: `peers` are its initial
    /// voters (empty for a peer created empty, to be added by the meta group's leader).
    pub(crate) async fn start_meta_group(&self, peers: Vec<PeerId>) -> Result<(), StoreError> {
        let inner = PdStateMachine::new();
        let handle = inner.handle();
        let committed: Committed = Arc::new(RwLock::new(None));
        let machine = MetaMachine {
            inner,
            committed: committed.clone(),
        };
        let node = self
            .inner
            .manager
            .add_group(META_GROUP, peers, machine)
            .await
            .map_err(|e| StoreError::Start(format!("cannot start the meta group: {e}")))?;
        *lock(&self.inner.pd.meta) = Some(MetaPeer {
            node,
            handle,
            committed,
        });
        Ok(())
    }

    /// Creates an empty peer of the meta group on this store, to be added by the meta
    /// group's leader (the PD repairing its own group). Idempotent; refused for another
    /// cluster than this store's.
    pub async fn open_meta_peer(&self, cluster: u64) -> Result<(), KvError> {
        let mut meta = self.inner.meta.lock().await;
        if meta.pd.is_some() {
            return Ok(());
        }
        if cluster == 0 || meta.cluster != cluster {
            return Err(KvError::RegionRefused(format!(
                "this store belongs to cluster {:016x}, not {cluster:016x}",
                meta.cluster
            )));
        }
        self.inner
            .manager
            .purge_group(META_GROUP)
            .await
            .map_err(|e| KvError::Engine(format!("purging the meta group's leftovers: {e}")))?;
        self.record_meta(&mut meta, vec![MetaChange::Pd(Some(Vec::new()))])
            .await?;
        self.start_meta_group(Vec::new())
            .await
            .map_err(|e| KvError::Engine(e.to_string()))?;
        tracing::info!(store = %self.inner.id, "empty meta group peer opened, to be added by the placement driver");
        Ok(())
    }

    /// Destroys this store's meta group peer on the PD's word that the meta group's
    /// configuration at `conf_version` holds only `members`: checked as
    /// [`Store::destroy_stale_peer`] checks a region's.
    pub(crate) async fn destroy_stale_meta_peer(
        &self,
        conf_version: u64,
        members: &[PeerId],
    ) -> Result<bool, KvError> {
        let Some(peer) = self.meta_peer() else {
            return Ok(false);
        };
        let status = peer.node.status();
        let local = peer.committed().map_or(1, |(index, _)| index.0);
        if members.contains(&self.inner.id)
            || status.role == flotilla_node::Role::Leader
            || local >= conf_version
            || status.last_index.0 > conf_version
        {
            return Ok(false);
        }
        let mut meta = self.inner.meta.lock().await;
        self.record_meta(&mut meta, vec![MetaChange::Pd(None)])
            .await?;
        *lock(&self.inner.pd.meta) = None;
        self.inner
            .manager
            .purge_group(META_GROUP)
            .await
            .map_err(|e| KvError::Engine(format!("purging the meta group's peer: {e}")))?;
        tracing::warn!(store = %self.inner.id, conf_version, "meta group peer destroyed: the meta group moved on without this store");
        Ok(true)
    }

    /// This store's peer of the meta group, if it hosts one.
    pub(crate) fn meta_peer(&self) -> Option<MetaPeer> {
        lock(&self.inner.pd.meta).clone()
    }

    /// Whether this store leads the meta group: it is the PD.
    #[must_use]
    pub fn is_pd_leader(&self) -> bool {
        self.meta_peer().is_some_and(|m| m.node.is_leader())
    }

    /// The PD leader's address, as far as this store knows (its own when it leads).
    #[must_use]
    pub fn pd_leader_address(&self) -> Option<String> {
        if let Some(meta) = self.meta_peer() {
            if let Some(leader) = meta.node.leader_id() {
                return self
                    .inner
                    .addresses
                    .resolve(&leader)
                    .filter(|a| !a.is_empty());
            }
        }
        lock(&self.inner.pd.known_leader).clone()
    }

    /// Proposes `command` to the meta group through this store's peer, which must lead it.
    pub(crate) async fn pd_propose(&self, command: &PdCommand) -> Result<PdOutput, KvError> {
        let meta = self.meta_peer().ok_or_else(|| KvError::Node {
            kind: "PdUnavailable".into(),
            message: "this store hosts no peer of the meta group".into(),
        })?;
        let apply = meta.node.apply(command.encode(), None);
        let answer = match tokio::time::timeout(self.inner.request_timeout, apply).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(NodeError::Raft(RaftError::NotLeader { leader }))) => {
                return Err(KvError::NotLeader {
                    region: crate::ids::RegionId(META_GROUP),
                    leader: leader.and_then(|l| self.inner.addresses.resolve(&l)),
                })
            }
            Ok(Err(e)) => return Err(self.node_error(crate::ids::RegionId(META_GROUP), e)),
            Err(_) => {
                return Err(KvError::Unknown(format!(
                    "the meta group did not apply a command within {:?}",
                    self.inner.request_timeout
                )))
            }
        };
        PdOutput::decode(&answer)
            .map_err(|e| KvError::Unknown(format!("the meta group's answer: {e}")))
    }

    /// Starts the tasks of the PD on this store: the reports every store sends, and the
    /// scheduler that acts while this store leads the meta group.
    pub(crate) fn start_pd_tasks(&self) {
        let weak = Arc::downgrade(&self.inner);
        let reports = tokio::spawn(report::run(weak.clone()));
        let scheduler = tokio::spawn(leader::run(weak));
        lock(&self.inner.pd.tasks).extend([reports, scheduler]);
    }

    /// Stops the PD's tasks (the store is closing).
    pub(crate) fn stop_pd_tasks(&self) {
        for task in lock(&self.inner.pd.tasks).drain(..) {
            task.abort();
        }
    }
}
