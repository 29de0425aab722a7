//! How a store finds its cluster and tells it where it is: the `Hello` exchange, the
//! bootstrap loop of a store that belongs to no cluster yet (decided by `bootstrap`), and
//! the announcement of a store's address at every start (a store that moved is reached at
//! its new address without any membership change).
//!
//! Owns: the one task per store that runs this, stopped by shutdown. Must never: bootstrap
//! a cluster beside one that exists, or record an address for a store of another cluster.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use flotilla_node::grpc::{connect_channel, TlsConfig};
use flotilla_node::StoreId;
use tonic::transport::Endpoint;

use super::bootstrap::{decide, Decision, PeerAnswer};
use super::meta::{static_regions, Bootstrap, HostedRegion, BOOTSTRAP_REPLICAS};
use super::{Store, StoreInner};
use crate::error::KvError;
use crate::service::proto;

/// Pause between two rounds of asking the listed peers while waiting.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(200);
/// A waiting store repeats what it waits for at most this often (and whenever it changes).
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Limit on one `Hello` call.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds of announcing this store's address to the stores it knows (a few seconds apart):
/// a store that misses them learns the address from this store's frames anyway.
const ANNOUNCE_ROUNDS: usize = 5;
/// Most members a bootstrap answer may name.
const BOOTSTRAP_MEMBERS_MAX: usize = 64;

/// The initial voters of static region number `index` (from 0) of a new cluster: `replicas`
/// of its `members` (all of them when fewer), taken in store-id order from position
/// `index`, so that consecutive regions start on different stores and every member gets
/// the same share within one. The same on every member, which all see the same list.
pub(crate) fn static_placement(members: &[StoreId], index: usize, replicas: usize) -> Vec<StoreId> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let mut voters: Vec<StoreId> = (0..replicas.min(n))
        .map(|k| sorted[(index + k) % n])
        .collect();
    voters.sort_unstable();
    voters
}

/// The member that campaigns first in static region number `index` of a new cluster: the
/// first of its voters in [`static_placement`]'s rotation, so each member is asked to lead
/// an equal share.
pub(crate) fn first_leader(members: &[StoreId], index: usize) -> Option<StoreId> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    (!sorted.is_empty()).then(|| sorted[index % sorted.len()])
}

/// The initial members of a new cluster's meta group: the first `replicas` of its members
/// by store id (the same choice on every member, which all see the same list).
pub(crate) fn meta_group_members(members: &[StoreId], replicas: u32) -> Vec<StoreId> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.truncate(replicas.max(1) as usize);
    sorted
}

/// Asks the store at `address` who it is, saying who is asking.
pub(crate) async fn hello(
    address: &str,
    tls: Option<&TlsConfig>,
    request: proto::HelloRequest,
) -> Result<proto::HelloReply, String> {
    let call = async {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("{address} is not a valid address: {e}"))?
            .connect_timeout(HELLO_TIMEOUT)
            .timeout(HELLO_TIMEOUT);
        let channel = connect_channel(&endpoint, tls)
            .await
            .map_err(|e| format!("cannot reach {address}: {e}"))?;
        proto::kv_client::KvClient::new(channel)
            .hello(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{address} refused Hello: {}", status.message()))
    };
    tokio::time::timeout(HELLO_TIMEOUT, call)
        .await
        .map_err(|_| format!("{address} did not answer within {HELLO_TIMEOUT:?}"))?
}

/// Refuses to start when a live store other than `me` answers at `advertise`, naming it.
/// Nobody answering (or this very store, reached through a NAT) is fine.
pub(super) async fn refuse_held_address(
    advertise: &str,
    me: StoreId,
    tls: Option<&TlsConfig>,
) -> Result<(), super::StoreError> {
    let Ok(reply) = hello(advertise, tls, proto::HelloRequest::default()).await else {
        return Ok(());
    };
    match store_info(reply.store.as_ref()) {
        Ok((other, _)) if other != me => Err(super::StoreError::InvalidOptions(format!(
            "--advertise-addr {advertise} is held by the live store {other} (cluster {:016x}): \
             give this store ({me}) an address of its own",
            reply.cluster
        ))),
        _ => Ok(()),
    }
}

/// Checks a `StoreInfo` received from a peer: a valid id, a valid (or empty) address.
fn store_info(info: Option<&proto::StoreInfo>) -> Result<(StoreId, String), String> {
    let info = info.ok_or("no store named")?;
    let id = StoreId::parse(&info.id)?;
    if !info.address.is_empty() {
        flotilla_node::identity::check_address(&info.address)?;
    }
    Ok((id, info.address.clone()))
}

/// What a `HelloReply` says, checked.
fn answer_of(reply: &proto::HelloReply) -> Result<PeerAnswer, String> {
    let (store, _) = store_info(reply.store.as_ref())?;
    if reply.bootstrap_members.len() > BOOTSTRAP_MEMBERS_MAX || reply.peers.len() > 1024 {
        return Err("an answer naming too many stores".into());
    }
    let bootstrap = if reply.bootstrap_members.is_empty() {
        None
    } else {
        let members = reply
            .bootstrap_members
            .iter()
            .map(|m| store_info(Some(m)))
            .collect::<Result<Vec<_>, _>>()?;
        static_regions(reply.bootstrap_regions)?;
        Some((reply.bootstrap_regions, members))
    };
    if reply.bootstrap_pd.len() > BOOTSTRAP_MEMBERS_MAX {
        return Err("an answer naming too many meta group members".into());
    }
    let bootstrap_pd = reply
        .bootstrap_pd
        .iter()
        .map(|id| StoreId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    if reply.bootstrap_replicas > flotilla_pd::model::MAX_REPLICAS_MAX {
        return Err(format!(
            "an answer whose static regions started on {} voters (at most {})",
            reply.bootstrap_replicas,
            flotilla_pd::model::MAX_REPLICAS_MAX
        ));
    }
    Ok(PeerAnswer {
        store,
        cluster: reply.cluster,
        peers: reply.peers.clone(),
        bootstrap,
        bootstrap_pd,
        bootstrap_replicas: reply.bootstrap_replicas,
    })
}

impl Store {
    /// This store's `--max-replicas` (the PD setting it seeds), which a bootstrap by this
    /// store records as the voters of each static region; the default 3 without it.
    fn max_replicas_flag(&self) -> u32 {
        self.inner
            .pd
            .settings
            .iter()
            .find(|(key, _)| key == "max-replicas")
            .and_then(|(_, value)| value.parse().ok())
            .filter(|n| (1..=flotilla_pd::model::MAX_REPLICAS_MAX).contains(n))
            .unwrap_or(BOOTSTRAP_REPLICAS as u32)
    }

    /// This store, as it introduces itself.
    fn info(&self) -> proto::StoreInfo {
        proto::StoreInfo {
            id: self.inner.id.as_str().to_string(),
            address: self.inner.advertise.clone(),
        }
    }

    pub(super) fn listed(&self) -> Vec<String> {
        self.inner
            .peers
            .iter()
            .flatten()
            .map(|p| p.trim().to_string())
            .collect()
    }

    /// Answers a `Hello`: records the caller's address when it may, and says who this
    /// store is.
    pub(crate) async fn hello(
        &self,
        request: proto::HelloRequest,
    ) -> Result<proto::HelloReply, KvError> {
        let ours = self.cluster();
        if request.from.is_some() {
            let (id, address) = store_info(request.from.as_ref())
                .map_err(|e| KvError::Refused(format!("hello: {e}")))?;
            let peer = id.peer_id();
            let related = request.cluster == ours || request.cluster == 0 || ours == 0;
            if related && peer != self.inner.id && !address.is_empty() {
                match self.inner.addresses.set(&peer, &address) {
                    Ok(true) => {
                        tracing::info!(store = %peer, %address, "store announced its address");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(store = %peer, error = %e, "cannot record a store's address")
                    }
                }
            }
        }
        let meta = self.inner.meta.lock().await;
        let bootstrap_replicas = meta.bootstrap.as_ref().map_or(0, |b| b.replicas);
        let (bootstrap_regions, bootstrap_members, bootstrap_pd) = match &meta.bootstrap {
            Some(b) => (
                b.regions,
                b.members
                    .iter()
                    .map(|id| proto::StoreInfo {
                        id: id.to_string(),
                        address: self.address_of(&id.peer_id()),
                    })
                    .collect(),
                b.pd.iter().map(ToString::to_string).collect(),
            ),
            None => (0, Vec::new(), Vec::new()),
        };
        Ok(proto::HelloReply {
            store: Some(self.info()),
            cluster: meta.cluster,
            peers: if meta.cluster == 0 {
                self.listed()
            } else {
                Vec::new()
            },
            bootstrap_regions,
            bootstrap_members,
            bootstrap_pd,
            bootstrap_replicas,
        })
    }

    /// Applies a bootstrap decision (not `Wait`). Returns false if the store found itself
    /// in a cluster meanwhile (an `OpenRegion`): nothing is changed then.
    async fn settle(&self, decision: Decision) -> Result<bool, KvError> {
        let mut meta = self.inner.meta.lock().await;
        if meta.cluster != 0 {
            return Ok(false);
        }
        let mut next = meta.clone();
        let members = match decision {
            Decision::Wait(_) => return Ok(false),
            Decision::Join {
                cluster,
                via,
                known,
            } => {
                for (id, address) in &known {
                    if let Err(e) = self.inner.addresses.set(&id.peer_id(), address) {
                        tracing::warn!(store = %id, error = %e, "cannot record a store's address");
                    }
                }
                next.cluster = cluster;
                self.save_meta(&next).await?;
                *meta = next;
                self.set_cluster(cluster);
                tracing::info!(
                    cluster = format_args!("{cluster:016x}"),
                    store = %self.inner.id,
                    via = %via,
                    "joined an existing cluster as a new, empty store that no region counts on \
                     yet: the placement driver moves replicas to it (or add it to regions with \
                     `flotilla admin add-peer {}`)",
                    self.inner.id
                );
                return Ok(true);
            }
            Decision::Bootstrap { members } => {
                next.cluster = flotilla_node::identity::random_nonzero_u64();
                let ids: Vec<StoreId> = members.iter().map(|(id, _)| *id).collect();
                next.bootstrap = Some(Bootstrap {
                    regions: self.inner.regions_at_bootstrap,
                    pd: meta_group_members(&ids, self.inner.pd_replicas),
                    members: ids,
                    replicas: self.max_replicas_flag(),
                });
                members
            }
            Decision::Adopt {
                cluster,
                regions,
                members,
                pd,
                replicas,
            } => {
                next.cluster = cluster;
                next.bootstrap = Some(Bootstrap {
                    regions,
                    members: members.iter().map(|(id, _)| *id).collect(),
                    pd,
                    replicas,
                });
                members
            }
        };
        let bootstrap = next.bootstrap.clone().unwrap_or(Bootstrap {
            regions: 1,
            members: Vec::new(),
            pd: Vec::new(),
            replicas: 0,
        });
        if bootstrap.pd.iter().any(|id| id.peer_id() == self.inner.id) {
            next.pd = Some(bootstrap.pd.iter().map(|id| id.peer_id()).collect());
        }
        let me = StoreId::parse(self.inner.id.as_str()).map_err(KvError::Refused)?;
        let mut first_leader_here = std::collections::BTreeSet::new();
        next.regions = static_regions(bootstrap.regions)
            .map_err(KvError::Refused)?
            .into_iter()
            .enumerate()
            .filter_map(|(index, region)| {
                let voters =
                    static_placement(&bootstrap.members, index, bootstrap.replicas_or_default());
                if first_leader(&bootstrap.members, index) == Some(me) {
                    first_leader_here.insert(region.id);
                }
                voters.contains(&me).then(|| HostedRegion {
                    region,
                    initial_peers: voters.iter().map(|id| id.peer_id()).collect(),
                    start: None,
                })
            })
            .collect();
        for (id, address) in &members {
            let peer = id.peer_id();
            if peer != self.inner.id && !address.is_empty() {
                if let Err(e) = self.inner.addresses.set(&peer, address) {
                    tracing::warn!(store = %peer, error = %e, "cannot record a member's address");
                }
            }
        }
        self.save_meta(&next).await?;
        let cluster = next.cluster;
        *meta = next.clone();
        self.set_cluster(cluster);
        if let Some(peers) = &next.pd {
            self.start_meta_group(peers.clone())
                .await
                .map_err(|e| KvError::Engine(e.to_string()))?;
        }
        for hosted in &next.regions {
            let node = self
                .start_region(hosted)
                .await
                .map_err(|e| KvError::Engine(e.to_string()))?;
            if first_leader_here.contains(&hosted.region.id) {
                // Its first leader, if the election goes as asked: the leaders of a new
                // cluster start spread over the stores instead of mostly on the one that
                // bootstrapped it (which opens its regions first), so the placement
                // driver has no leaders to move.
                tokio::spawn(async move {
                    let _ = node.campaign().await;
                });
            }
        }
        let named: Vec<String> = members
            .iter()
            .map(|(id, address)| format!("{id}@{address}"))
            .collect();
        tracing::info!(
            cluster = format_args!("{cluster:016x}"),
            store = %self.inner.id,
            members = %named.join(","),
            regions = bootstrap.regions,
            "initial member of a new cluster"
        );
        Ok(true)
    }

    /// The bootstrap loop: asks the listed peers until a decision other than `Wait`.
    async fn bootstrap_loop(inner: &Weak<StoreInner>) {
        let mut said = String::new();
        let mut said_at = tokio::time::Instant::now();
        loop {
            let Some(store) = inner.upgrade().map(|inner| Store { inner }) else {
                return;
            };
            if store.cluster() != 0 {
                return;
            }
            let listed = store.listed();
            let request = proto::HelloRequest {
                from: Some(store.info()),
                cluster: 0,
                peers: listed.clone(),
            };
            let asks = listed
                .iter()
                .filter(|a| **a != store.inner.advertise)
                .map(|address| {
                    let address = address.clone();
                    let request = request.clone();
                    let tls = store.inner.tls.clone();
                    async move {
                        let answer = hello(&address, tls.as_ref(), request)
                            .await
                            .and_then(|reply| answer_of(&reply));
                        (address, answer)
                    }
                });
            let mut answers = BTreeMap::new();
            let mut failures = Vec::new();
            for (address, answer) in super::futures_join_all_values(asks).await {
                match answer {
                    Ok(answer) => {
                        answers.insert(address, answer);
                    }
                    Err(why) => failures.push(why),
                }
            }
            let me = StoreId::parse(store.inner.id.as_str()).unwrap_or(StoreId(0));
            let decision = decide(me, &store.inner.advertise, &listed, &answers);
            match decision {
                Decision::Wait(why) => {
                    let now = tokio::time::Instant::now();
                    if why != said || now.duration_since(said_at) >= WAIT_LOG_EVERY {
                        tracing::info!(store = %store.inner.id, failures = ?failures, "not in a cluster yet: {why}");
                        said = why;
                        said_at = now;
                    }
                }
                decision => match store.settle(decision).await {
                    Ok(_) => {
                        drop(store);
                        Store::announce(inner).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(store = %store.inner.id, error = %e, "could not settle the bootstrap decision; retrying");
                    }
                },
            }
            drop(store);
            tokio::time::sleep(BOOTSTRAP_RETRY).await;
        }
    }

    /// Tells every store this one knows of (and the listed peers) where it is.
    async fn announce(inner: &Weak<StoreInner>) {
        let mut told: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for round in 0..ANNOUNCE_ROUNDS {
            let Some(store) = inner.upgrade().map(|inner| Store { inner }) else {
                return;
            };
            let mut targets: Vec<String> = store
                .inner
                .addresses
                .entries()
                .into_iter()
                .filter(|(id, _)| *id != store.inner.id)
                .map(|(_, address)| address)
                .collect();
            targets.extend(store.listed());
            targets.retain(|a| *a != store.inner.advertise && !told.contains(a));
            targets.sort();
            targets.dedup();
            if targets.is_empty() {
                return;
            }
            let request = proto::HelloRequest {
                from: Some(store.info()),
                cluster: store.cluster(),
                peers: Vec::new(),
            };
            let tls = store.inner.tls.clone();
            drop(store);
            let asks = targets.into_iter().map(|address| {
                let request = request.clone();
                let tls = tls.clone();
                async move {
                    let result = hello(&address, tls.as_ref(), request).await;
                    (address, result)
                }
            });
            for (address, result) in super::futures_join_all_values(asks).await {
                match result {
                    Ok(_) => {
                        told.insert(address);
                    }
                    Err(why) => {
                        tracing::debug!(round, error = %why, "announcing this store's address failed");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The membership task of a store: bootstrap (or join) when it belongs to no cluster and
/// has `--peers`, then (or else) announce its address.
pub(super) async fn run(inner: Weak<StoreInner>) {
    let needs_cluster = inner
        .upgrade()
        .is_some_and(|i| *super::lock(&i.cluster) == 0 && i.peers.is_some());
    if needs_cluster {
        Store::bootstrap_loop(&inner).await;
    } else {
        Store::announce(&inner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five members, 24 regions: every region on 3 distinct members, every member with
    /// 24 * 3 / 5 regions within one, and three members or fewer hold every region.
    #[test]
    fn static_regions_start_on_three_members_spread_evenly() {
        let members: Vec<StoreId> = [50, 10, 40, 20, 30].into_iter().map(StoreId).collect();
        let mut count = std::collections::BTreeMap::new();
        let mut firsts = std::collections::BTreeMap::new();
        for index in 0..24 {
            let voters = static_placement(&members, index, BOOTSTRAP_REPLICAS);
            assert_eq!(voters.len(), 3, "{voters:?}");
            let first = first_leader(&members, index).expect("a first leader");
            assert!(voters.contains(&first), "{first} leads {voters:?}");
            *firsts.entry(first).or_insert(0) += 1;
            let distinct: std::collections::BTreeSet<_> = voters.iter().collect();
            assert_eq!(distinct.len(), 3, "{voters:?}");
            assert_eq!(
                voters,
                static_placement(&members, index, 3),
                "deterministic"
            );
            for v in voters {
                *count.entry(v).or_insert(0) += 1;
            }
        }
        let (min, max) = (count.values().min().unwrap(), count.values().max().unwrap());
        assert!(max - min <= 1, "{count:?}");
        // Every member is asked to lead 24 / 5 regions first, within one.
        assert_eq!(firsts.len(), 5, "{firsts:?}");
        let (min, max) = (
            firsts.values().min().unwrap(),
            firsts.values().max().unwrap(),
        );
        assert!(max - min <= 1, "{firsts:?}");
        let three: Vec<StoreId> = members[..3].to_vec();
        for index in 0..5 {
            assert_eq!(static_placement(&three, index, 3).len(), 3);
        }
        assert_eq!(static_placement(&members[..1], 7, 3), vec![StoreId(50)]);
    }
}
