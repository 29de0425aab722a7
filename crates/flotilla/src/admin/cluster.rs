//! The cluster as its stores report it, and stores named on the command line.
//!
//! Owns: asking every store it can find for its regions (`gather`), merging the answers
//! into one view per region, the directory of where every store is, and turning a store id
//! or an address typed by a person into a store (`peer_arg`). Must never: change anything on
//! a store (it only asks), or trust an answer's store id without parsing it.

use std::collections::BTreeMap;

use flotilla_kv::client::{ClientError, KvClient};
use flotilla_kv::service::proto::{RegionInfo, RegionsReply};
use flotilla_node::{PeerId, StoreId};

use crate::output::Failure;

/// A store named on the command line: its id, and its address when known.
#[derive(Clone, Debug)]
pub(super) struct StoreRef {
    pub(super) id: PeerId,
    pub(super) address: Option<String>,
}

impl std::fmt::Display for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Some(address) => write!(f, "{} ({address})", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// Every store the cluster knows: store id → address, from the stores' address books and
/// their own answers.
pub(super) type Directory = BTreeMap<String, String>;

/// What the stores answered when asked for their regions.
pub(super) struct Cluster {
    /// Every answer, one per store that answered.
    pub(super) replies: Vec<RegionsReply>,
    /// The addresses asked that did not answer, with why.
    pub(super) unreachable: Vec<(String, ClientError)>,
    /// The merged view of every region, by id: for each, the report of the store that leads
    /// it with the highest term (or else the highest term seen).
    pub(super) regions: Vec<RegionInfo>,
    pub(super) directory: Directory,
}

impl Cluster {
    /// Every store address known, those that answered first.
    pub(super) fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.replies.iter().map(|r| r.store.clone()).collect();
        out.extend(self.directory.values().cloned());
        out.extend(self.unreachable.iter().map(|(a, _)| a.clone()));
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|a| !a.is_empty() && seen.insert(a.clone()));
        out
    }

    /// Whether any store knows of store `id`: one answered as it, an address book lists it,
    /// or a region names it as a voter or learner.
    pub(super) fn knows(&self, id: &str) -> bool {
        self.directory.contains_key(id)
            || self.replies.iter().any(|r| r.store_id == id)
            || self.replies.iter().flat_map(|r| &r.regions).any(|info| {
                info.peer_ids
                    .iter()
                    .chain(&info.learner_ids)
                    .any(|p| p == id)
            })
    }
}

/// Asks every store the client can find (its endpoints and every region's members) for its
/// regions, at once.
pub(super) async fn gather(client: &KvClient) -> Cluster {
    let (replies, unreachable) = client.stores().await;
    let mut best: BTreeMap<u64, RegionInfo> = BTreeMap::new();
    for reply in &replies {
        for info in &reply.regions {
            let key = |i: &RegionInfo| (i.role == "leader", i.term, i.commit_index);
            let better = best.get(&info.id).is_none_or(|old| key(info) > key(old));
            if better {
                best.insert(info.id, info.clone());
            }
        }
    }
    let mut directory = Directory::new();
    for reply in &replies {
        for store in &reply.stores {
            if StoreId::parse(&store.id).is_ok() && !store.address.is_empty() {
                directory
                    .entry(store.id.clone())
                    .or_insert_with(|| store.address.clone());
            }
        }
    }
    // A store's own word on where it is wins.
    for reply in &replies {
        directory.insert(reply.store_id.clone(), reply.store.clone());
    }
    Cluster {
        replies,
        unreachable,
        regions: best.into_values().collect(),
        directory,
    }
}

/// A store named by its id (16 hex digits) or its address (HOST:PORT): an address is
/// asked who it is (the store answering there, whatever store used to be there).
pub(super) async fn peer_arg(
    client: &KvClient,
    directory: &Directory,
    text: &str,
) -> Result<StoreRef, Failure> {
    let text = text.trim();
    if let Ok(id) = StoreId::parse(text) {
        return Ok(StoreRef {
            id: id.peer_id(),
            address: directory.get(&id.to_string()).cloned(),
        });
    }
    if flotilla_node::identity::check_address(text).is_err() {
        return Err(Failure::usage(format!(
            "{text:?} is neither a store id (16 hex digits) nor an address HOST:PORT"
        )));
    }
    let reply = client.hello(text).await;
    // A store that does not answer (a dead member being removed): the cluster's books say
    // which store was last there.
    if reply.is_err() {
        if let Some((id, _)) = directory.iter().find(|(_, a)| a.as_str() == text) {
            if let Ok(id) = StoreId::parse(id) {
                return Ok(StoreRef {
                    id: id.peer_id(),
                    address: Some(text.to_string()),
                });
            }
        }
    }
    let reply = reply.map_err(|e| {
        let mut failure = Failure::from(e);
        failure.message = format!(
            "cannot ask {text} which store it is (is `flotilla server --addr {text}` running?): {}",
            failure.message
        );
        failure
    })?;
    let id = reply
        .store
        .as_ref()
        .and_then(|s| StoreId::parse(&s.id).ok())
        .ok_or_else(|| {
            Failure::failed("InvalidAnswer", format!("{text} named no valid store id"))
        })?;
    Ok(StoreRef {
        id: id.peer_id(),
        address: Some(text.to_string()),
    })
}
