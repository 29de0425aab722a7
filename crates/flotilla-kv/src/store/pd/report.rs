//! What every store tells the placement driver, and how it finds it: the store heartbeat
//! (every `--pd-heartbeat`, 10 s by default: identity, address, labels, space, and the
//! region peers it hosts with the configuration each knows) and the region reports of the
//! regions it leads (when their leader, configuration or epoch changed or their size by
//! more than an eighth, and otherwise every [`super::REGION_REPORT_EVERY`] unless asleep;
//! a hibernating region changes nothing, so 1,000 sleeping regions cost one heartbeat).
//! The loop learns which regions it leads from their state machines' leader events, and
//! looks each second only at those that changed and those not looked at for six
//! heartbeats; a region's size is measured by its leader when it first leads it and then,
//! if it was written, at most every six heartbeats. The heartbeat's answer names the peers
//! the PD knows to be removed from their regions: each is checked here again, then
//! destroyed.
//!
//! Owns: the loop that sends them, and the way to the PD leader (the address last heard,
//! then the meta group's members, then every store this one knows, following a refusal's
//! hint). Must never: report a configuration it does not know to be committed (the PD
//! destroys peers on its word), or take a stale-peer answer without checking it locally.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Weak;
use std::time::{Duration, Instant};

use flotilla_node::grpc::{connect_channel, ERROR_KIND_KEY, LEADER_KEY};
use flotilla_node::{Configuration, PeerId, Role};
use tonic::transport::{Channel, Endpoint};

use super::super::{lock, Store, StoreInner};
use super::{META_GROUP, REGION_REPORT_EVERY};
use crate::engine::RangeSize;
use crate::ids::RegionId;
use crate::service::proto::pd as proto;
use crate::service::proto::pd::pd_client::PdClient;

/// Limit on one call to the PD.
const PD_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the loop looks for regions whose report is due.
const REPORT_POLL: Duration = Duration::from_secs(1);
/// Most addresses one call tries before it gives up for this round.
const PD_CALL_TRIES_MAX: usize = 8;

/// Most regions whose size one poll measures (a store that just started, or took over
/// many leaders, measures them over a few seconds rather than all at once).
const SIZES_PER_POLL: usize = 64;
/// Every this many store heartbeats name the peers the store holds.
const HEARTBEATS_PER_PEER_LIST: u32 = 6;
/// Most led regions one poll looks at (the rest wait for the next poll).
const LOOKS_PER_POLL: usize = 512;
/// A region written fast is measured again this soon after its last measure (instead of
/// at the slow look, a minute by default), once [`grown_enough`] says it may have grown
/// by an eighth: a region filling at 30,000 keys/s reaches a split threshold seconds after
/// passing it, not a minute.
const GROWTH_MEASURE_MIN: Duration = Duration::from_secs(10);
/// Longest range (both keys together) a peer list names with a peer: a list of 10,000
/// peers stays under 2 MiB.
const HOSTED_RANGE_BYTES_MAX: usize = 128;
/// Fewest keys written since a region's last measure for it to be measured early.
const GROWTH_WRITES_MIN: u64 = 10_000;

/// How many times its last walk took an early measure of a region waits at least: the
/// early measures of a region rewritten in place (whose writes never grow it) then cost at
/// most 1 % of a core (a walk of a million keys takes a few hundred milliseconds).
const GROWTH_MEASURE_COST_FACTOR: u32 = 100;

/// Whether `written` keys written since measure `m` may have grown the region by an eighth
/// of the keys it held (every write a new key, the worst case), and at least
/// [`GROWTH_WRITES_MIN`]: then it is measured again after [`GROWTH_MEASURE_MIN`], or a
/// hundred times its last walk's duration if longer.
fn grown_enough(m: &Measured, written: u64) -> bool {
    let wait = GROWTH_MEASURE_MIN.max(m.took.saturating_mul(GROWTH_MEASURE_COST_FACTOR));
    written.saturating_sub(m.written) >= (m.size.keys / 8).max(GROWTH_WRITES_MIN)
        && m.at.elapsed() >= wait
}

/// What a region leader last reported of a region, to report again only on a change.
#[derive(Clone, PartialEq, Eq)]
struct Reported {
    conf_version: u64,
    version: u64,
    voters: Vec<String>,
    learners: Vec<String>,
    joint: bool,
    bytes: u64,
    keys: u64,
    write_rate: u64,
}

impl Reported {
    /// Whether `self`, reported last, still says what `now` says: the same shape, and a
    /// size (bytes and keys) within an eighth (a growing region is reported as it grows,
    /// not on every write; the slow report carries the rest).
    fn still_says(&self, now: &Reported) -> bool {
        let same_shape = (self.conf_version, self.version, self.joint)
            == (now.conf_version, now.version, now.joint)
            && self.voters == now.voters
            && self.learners == now.learners;
        same_shape
            && self.bytes.abs_diff(now.bytes) <= self.bytes / 8
            && self.keys.abs_diff(now.keys) <= self.keys / 8
            && self.write_rate.abs_diff(now.write_rate) <= self.write_rate / 4
    }
}

/// A region's size as last measured here, with the applied index and the version (a
/// split changes the range: a measure from before it says nothing of the halves) it was
/// measured at.
struct Measured {
    applied: u64,
    version: u64,
    size: RangeSize,
    at: Instant,
    /// The region's keys written (its load's counter) when measured.
    written: u64,
    /// How long the walk took.
    took: Duration,
}

/// What the report loop keeps between polls.
#[derive(Default)]
struct LoopState {
    tracked: HashMap<u64, Tracked>,
    /// The regions looked at, in the order they were (each with when): the next due.
    queue: VecDeque<(Instant, u64)>,
}

/// What the report loop keeps of a region led here.
struct Tracked {
    /// When the loop last looked at it.
    looked: Instant,
    /// What it last reported, and when.
    reported: Option<(Reported, Instant)>,
    measured: Option<Measured>,
    /// Keys written through this store when the loop last looked, and when: the write
    /// rate reported is the difference over the time between two looks.
    written: Option<(u64, Instant)>,
    /// The write rate measured at the last look (keys per second).
    write_rate: u64,
}

impl Reported {
    fn of(report: &proto::RegionReport) -> Reported {
        Reported {
            conf_version: report.conf_version,
            version: report.version,
            voters: report.voters.clone(),
            learners: report.learners.clone(),
            joint: report.joint,
            bytes: report.approximate_bytes,
            keys: report.approximate_keys,
            write_rate: report.write_keys_per_sec,
        }
    }
}

/// The configuration of a region led here that is known to be committed, with its
/// version: the last one the state machine heard committed, or (before it heard of any
/// since the start) the configuration in force when every entry of the log is committed.
fn committed_configuration(
    heard: Option<(flotilla_node::LogIndex, Configuration)>,
    status: &flotilla_node::NodeStatus,
    conf_version: u64,
) -> Option<(u64, Configuration)> {
    match heard {
        Some((index, configuration)) => Some((index.0.max(conf_version), configuration)),
        None if status.committed >= status.last_index => {
            Some((conf_version, status.configuration.clone()))
        }
        None => None,
    }
}

fn ids(set: &BTreeSet<PeerId>) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_string()).collect()
}

/// A report of a region, from the configuration known committed, with its size and write
/// rate (keys per second).
fn report_of(
    id: u64,
    range: (bytes::Bytes, bytes::Bytes),
    version: u64,
    status: &flotilla_node::NodeStatus,
    committed: (u64, Configuration),
    me: &PeerId,
    (size, write_rate): (RangeSize, u64),
) -> proto::RegionReport {
    let (conf_version, configuration) = committed;
    proto::RegionReport {
        id,
        start: range.0,
        end: range.1,
        conf_version,
        version,
        voters: ids(&configuration.voters),
        learners: ids(&configuration.learners),
        joint: configuration.old_voters.is_some() || status.configuration.old_voters.is_some(),
        leader: me.as_str().to_string(),
        approximate_bytes: size.bytes,
        approximate_keys: size.keys,
        write_keys_per_sec: write_rate,
        commit_index: status.committed.0,
        alive: status
            .alive_peers
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
    }
}

impl Store {
    /// Marks for a look now the tracked regions written enough since their last measure
    /// to have grown by an eighth ([`grown_enough`]): they are measured and reported.
    fn look_at_growing(&self, state: &LoopState) {
        let growing: Vec<u64> = state
            .tracked
            .iter()
            .filter(|(id, entry)| {
                entry.measured.as_ref().is_some_and(|m| {
                    self.peer(RegionId(**id))
                        .is_some_and(|peer| grown_enough(m, peer.load.keys_written()))
                })
            })
            .map(|(id, _)| *id)
            .collect();
        if !growing.is_empty() {
            lock(&self.inner.pd.led).dirty.extend(growing);
        }
    }

    /// The led regions to look at now: those whose leadership or configuration changed
    /// (`dirty`), and those not looked at for `every` — at most [`LOOKS_PER_POLL`], the
    /// changed ones first. Ids no longer led are dropped.
    fn regions_to_look_at(&self, state: &mut LoopState, every: Duration) -> Vec<u64> {
        let now = Instant::now();
        let mut led = lock(&self.inner.pd.led);
        let dirty = std::mem::take(&mut led.dirty);
        // Lost since the last look (and perhaps led again: then it is dirty too and is
        // reported afresh).
        for id in std::mem::take(&mut led.lost) {
            state.tracked.remove(&id);
        }
        let mut out: Vec<u64> = dirty
            .into_iter()
            .filter(|id| led.led.contains(id))
            .collect();
        let mut chosen: BTreeSet<u64> = out.iter().copied().collect();
        // The queue is in the order regions were looked at: only its front can be due.
        while out.len() < LOOKS_PER_POLL {
            let Some(&(at, id)) = state.queue.front() else {
                break;
            };
            if now.saturating_duration_since(at) < every {
                break;
            }
            state.queue.pop_front();
            let current = state.tracked.get(&id).is_some_and(|t| t.looked == at);
            if current && led.led.contains(&id) && chosen.insert(id) {
                out.push(id);
            }
        }
        // Left for the next poll: what did not fit.
        let (now, later) = out.split_at(out.len().min(LOOKS_PER_POLL));
        led.dirty.extend(later.iter().copied());
        now.to_vec()
    }

    /// The reports due of the regions this store leads (the meta group included): the
    /// regions `regions_to_look_at` names, measured first when never measured or written
    /// since a measure older than `every` (off the async threads, at most
    /// [`SIZES_PER_POLL`] a poll), reported when what they say changed, and otherwise
    /// every [`REGION_REPORT_EVERY`] unless asleep and unchanged.
    async fn due_reports(
        &self,
        state: &mut LoopState,
        every: Duration,
    ) -> Vec<proto::RegionReport> {
        let me = self.inner.id.clone();
        let mut candidates = Vec::new();
        let mut to_measure = Vec::new();
        let mut not_yet = Vec::new();
        let mut written_at = HashMap::new();
        for id in self.regions_to_look_at(state, every) {
            let tracked = &mut state.tracked;
            let Some(peer) = self.peer(RegionId(id)) else {
                tracked.remove(&id);
                continue;
            };
            let status = peer.node.status();
            if status.role != Role::Leader {
                // Its leader event came before its status said so: look again shortly.
                not_yet.push(id);
                continue;
            }
            let region = peer.machine.region();
            let entry = tracked.entry(id).or_insert_with(|| Tracked {
                looked: Instant::now(),
                reported: None,
                measured: None,
                written: None,
                write_rate: 0,
            });
            entry.looked = Instant::now();
            let written = peer.load.keys_written();
            if let Some((before, at)) = entry.written {
                let seconds = at.elapsed().as_secs_f64();
                if seconds >= 0.5 {
                    entry.write_rate = (written.saturating_sub(before) as f64 / seconds) as u64;
                    entry.written = Some((written, Instant::now()));
                }
            } else {
                entry.written = Some((written, Instant::now()));
            }
            state.queue.push_back((entry.looked, id));
            let stale_size = entry.measured.as_ref().is_none_or(|m| {
                m.version != region.epoch.version
                    || (m.applied != status.applied.0
                        && (m.at.elapsed() >= every || grown_enough(m, written)))
            });
            if stale_size && to_measure.len() < SIZES_PER_POLL {
                written_at.insert(id, written);
                to_measure.push((
                    id,
                    (status.applied.0, region.epoch.version),
                    region.start.clone(),
                    region.end.clone(),
                ));
            }
            let committed = committed_configuration(
                peer.machine.committed_configuration(),
                &status,
                region.epoch.conf_version,
            );
            match committed {
                Some(committed) => candidates.push((region, status, committed)),
                // Not known committed yet (a leader whose first entry is not committed):
                // look again shortly rather than at the next slow look.
                None => not_yet.push(id),
            }
        }
        if !not_yet.is_empty() {
            lock(&self.inner.pd.led).dirty.extend(not_yet);
        }
        let tracked = &mut state.tracked;
        for (id, (applied, version), (size, took)) in self.measure(to_measure).await {
            if let Some(entry) = tracked.get_mut(&id) {
                entry.measured = Some(Measured {
                    applied,
                    version,
                    size,
                    at: Instant::now(),
                    written: written_at.get(&id).copied().unwrap_or(0),
                    took,
                });
            }
        }
        let mut reports = Vec::new();
        for (region, status, committed) in candidates {
            let id = region.id.0;
            let Some(entry) = tracked.get_mut(&id) else {
                continue;
            };
            // A measure from before a split (or a merge) is not reported with the new range.
            let size = entry
                .measured
                .as_ref()
                .filter(|m| m.version == region.epoch.version)
                .map_or(RangeSize::default(), |m| m.size);
            let report = report_of(
                id,
                (region.start.clone(), region.end.clone()),
                region.epoch.version,
                &status,
                committed,
                &me,
                (size, entry.write_rate),
            );
            let key = Reported::of(&report);
            let due = entry.reported.as_ref().is_none_or(|(last, at)| {
                !last.still_says(&key)
                    || (!status.hibernating && at.elapsed() >= REGION_REPORT_EVERY)
            });
            if due {
                entry.reported = Some((key, Instant::now()));
                reports.push(report);
            }
        }
        if let Some(report) = self.meta_report(tracked) {
            reports.push(report);
        }
        reports
    }

    /// The meta group's report when this store leads it and it is due (the meta group is
    /// repaired like a region; it has no leader events of its own here).
    fn meta_report(&self, tracked: &mut HashMap<u64, Tracked>) -> Option<proto::RegionReport> {
        let meta = self.meta_peer()?;
        let status = meta.node.status();
        if status.role != Role::Leader {
            tracked.remove(&META_GROUP);
            return None;
        }
        let committed = committed_configuration(meta.committed(), &status, 1)?;
        let report = report_of(
            META_GROUP,
            Default::default(),
            1,
            &status,
            committed,
            &self.inner.id,
            (RangeSize::default(), 0),
        );
        let key = Reported::of(&report);
        let entry = tracked.entry(META_GROUP).or_insert_with(|| Tracked {
            looked: Instant::now(),
            reported: None,
            measured: None,
            written: None,
            write_rate: 0,
        });
        let due = entry
            .reported
            .as_ref()
            .is_none_or(|(last, at)| !last.still_says(&key) || at.elapsed() >= REGION_REPORT_EVERY);
        due.then(|| {
            entry.reported = Some((key, Instant::now()));
            report
        })
    }

    /// Measures the regions `due` names (id, applied index and version, range), off the
    /// async threads; answers each size with how long its walk took.
    async fn measure(
        &self,
        due: Vec<(u64, (u64, u64), bytes::Bytes, bytes::Bytes)>,
    ) -> Vec<(u64, (u64, u64), (RangeSize, Duration))> {
        if due.is_empty() {
            return Vec::new();
        }
        let engine = self.inner.engine.clone();
        tokio::task::spawn_blocking(move || {
            due.into_iter()
                .filter_map(|(id, applied, start, end)| {
                    let began = Instant::now();
                    match engine.approximate_size(&start, &end) {
                        Ok(size) => Some((id, applied, (size, began.elapsed()))),
                        Err(e) => {
                            tracing::warn!(region = id, error = %e, "cannot measure a region's size");
                            None
                        }
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The store heartbeat's request, naming the peers held when `with_peers`.
    fn heartbeat_request(&self, with_peers: bool) -> proto::StoreHeartbeatRequest {
        let held = if with_peers {
            self.all_peers()
        } else {
            Vec::new()
        };
        let mut peers: Vec<proto::HostedPeer> = held
            .into_iter()
            .map(|peer| {
                let region = peer.machine.region();
                let (leader, last_index) = peer
                    .node
                    .with_status(|s| (s.role == Role::Leader, s.last_index.0));
                let range_known = region.start.len() + region.end.len() <= HOSTED_RANGE_BYTES_MAX;
                let (start, end) = if range_known {
                    (region.start.clone(), region.end.clone())
                } else {
                    Default::default()
                };
                proto::HostedPeer {
                    region_id: region.id.0,
                    conf_version: region.epoch.conf_version,
                    version: region.epoch.version,
                    leader,
                    last_index,
                    start,
                    end,
                    range_known,
                }
            })
            .collect();
        if let Some(meta) = self.meta_peer().filter(|_| with_peers) {
            let status = meta.node.status();
            peers.push(proto::HostedPeer {
                region_id: META_GROUP,
                conf_version: meta.committed().map_or(1, |(index, _)| index.0.max(1)),
                version: 1,
                leader: status.role == Role::Leader,
                last_index: status.last_index.0,
                ..Default::default()
            });
        }
        proto::StoreHeartbeatRequest {
            store: Some(proto::PdStore {
                id: self.inner.id.as_str().to_string(),
                address: self.inner.advertise.clone(),
                labels: self.inner.pd.labels.clone().into_iter().collect(),
            }),
            cluster: self.cluster(),
            used_bytes: self.inner.quota.used_bytes(),
            quota_bytes: self.inner.quota.quota_bytes(),
            peers,
            failed_regions: self.failed_regions(),
        }
    }

    /// The regions whose replica here stopped (its engine failed under it; it still takes
    /// part in elections but serves nothing), at most 1,024: the PD replaces them.
    fn failed_regions(&self) -> Vec<u64> {
        let mut failed: Vec<u64> = self
            .all_peers()
            .into_iter()
            .filter(|peer| peer.machine.failed())
            .map(|peer| peer.machine.region().id.0)
            .collect();
        failed.sort_unstable();
        failed.truncate(1024);
        failed
    }

    /// Sends the store heartbeat and acts on the stale peers its answer names; answers
    /// whether the PD asked for every region report again, or `None` when the heartbeat
    /// was not delivered.
    async fn send_heartbeat(&self, with_peers: bool) -> Option<bool> {
        let asked_at = Instant::now();
        let request = self.heartbeat_request(with_peers);
        let reply = self
            .call_pd(|mut client| {
                let request = request.clone();
                async move { client.store_heartbeat(request).await }
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(why) => {
                tracing::debug!(store = %self.inner.id, error = %why, "store heartbeat not delivered");
                return None;
            }
        };
        if !reply.pd_leader.is_empty() {
            *lock(&self.inner.pd.known_leader) = Some(reply.pd_leader.clone());
        }
        for store in &reply.stores {
            let Ok(id) = flotilla_node::StoreId::parse(&store.id) else {
                continue;
            };
            let peer = id.peer_id();
            let known = self.inner.addresses.resolve(&peer);
            if peer == self.inner.id
                || known.as_deref() == Some(store.address.as_str())
                || flotilla_node::identity::check_address(&store.address).is_err()
            {
                continue;
            }
            match self.inner.addresses.set(&peer, &store.address) {
                Ok(_) => {
                    tracing::info!(store = %peer, address = %store.address, "address learned from the placement driver")
                }
                Err(e) => {
                    tracing::warn!(store = %peer, error = %e, "cannot record a store's address")
                }
            }
        }
        for stale in reply.stale {
            let members: Vec<PeerId> = stale
                .members
                .iter()
                .filter_map(|m| flotilla_node::StoreId::parse(m).ok())
                .map(flotilla_node::StoreId::peer_id)
                .collect();
            let result = if stale.region_id == META_GROUP {
                self.destroy_stale_meta_peer(stale.conf_version, &members)
                    .await
            } else {
                self.destroy_stale_peer(
                    RegionId(stale.region_id),
                    stale.conf_version,
                    &members,
                    asked_at,
                )
                .await
            };
            if let Err(e) = result {
                tracing::warn!(region = stale.region_id, error = %e, "cannot destroy a peer the placement driver named as removed");
            }
        }
        Some(reply.report_all)
    }

    /// Sends the region reports due.
    async fn send_reports(&self, reports: Vec<proto::RegionReport>) -> bool {
        let request = proto::RegionHeartbeatRequest {
            from: self.inner.id.as_str().to_string(),
            cluster: self.cluster(),
            regions: reports,
        };
        self.call_pd(|mut client| {
            let request = request.clone();
            async move { client.region_heartbeat(request).await }
        })
        .await
        .is_ok()
    }

    /// The addresses to try for the PD leader, best first.
    fn pd_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(known) = self.pd_leader_address() {
            out.push(known);
        }
        if let Some(meta) = self.meta_peer() {
            for peer in meta.node.list_peers() {
                out.extend(self.inner.addresses.resolve(&peer));
            }
        }
        let mut others: Vec<String> = self
            .inner
            .addresses
            .entries()
            .into_iter()
            .map(|(_, address)| address)
            .collect();
        others.sort();
        out.extend(others);
        out.extend(self.listed());
        let mut seen = BTreeSet::new();
        out.retain(|a| !a.is_empty() && seen.insert(a.clone()));
        // Itself last: it answers only when it leads the meta group.
        if let Some(at) = out.iter().position(|a| *a == self.inner.advertise) {
            let me = out.remove(at);
            out.push(me);
        }
        out
    }

    /// Calls the PD leader with `call`, trying the candidates in order and following a
    /// refusal's hint; remembers the address that answered.
    pub(crate) async fn call_pd<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: Fn(PdClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut queue = self.pd_candidates();
        let mut tried = BTreeSet::new();
        let mut last = "no store to ask".to_string();
        while let Some(address) = (!queue.is_empty()).then(|| queue.remove(0)) {
            if !tried.insert(address.clone()) || tried.len() > PD_CALL_TRIES_MAX {
                continue;
            }
            let client = match self.pd_client(&address).await {
                Ok(client) => client,
                Err(why) => {
                    last = why;
                    continue;
                }
            };
            match tokio::time::timeout(PD_CALL_TIMEOUT, call(client)).await {
                Ok(Ok(reply)) => {
                    *lock(&self.inner.pd.known_leader) = Some(address);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => {
                    let kind = status
                        .metadata()
                        .get(ERROR_KIND_KEY)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if kind == "NotLeader" {
                        if let Some(hint) = status
                            .metadata()
                            .get(LEADER_KEY)
                            .and_then(|v| v.to_str().ok())
                        {
                            queue.insert(0, hint.to_string());
                        }
                    }
                    last = format!("{address}: {}", status.message());
                }
                Err(_) => last = format!("{address}: no answer within {PD_CALL_TIMEOUT:?}"),
            }
        }
        Err(last)
    }

    /// A client of the PD service at `address`.
    async fn pd_client(&self, address: &str) -> Result<PdClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("{address} is not a valid address: {e}"))?
            .connect_timeout(PD_CALL_TIMEOUT)
            .timeout(PD_CALL_TIMEOUT);
        let channel = connect_channel(&endpoint, self.inner.tls.as_ref())
            .await
            .map_err(|e| format!("cannot reach {address}: {e}"))?;
        Ok(PdClient::new(channel))
    }
}

/// The reporting loop of a store, until it closes.
pub(super) async fn run(inner: Weak<StoreInner>) {
    let mut state = LoopState::default();
    let mut last_heartbeat: Option<Instant> = None;
    // Heartbeats since the last one that named the peers held (`None`: name them next).
    let mut since_peers: Option<u32> = None;
    let mut poll = tokio::time::interval(REPORT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let Some(store) = inner.upgrade().map(|inner| Store { inner }) else {
            return;
        };
        if store.cluster() == 0 {
            continue;
        }
        // Each led region is looked at again every six heartbeats (a minute by default):
        // a written one is measured again then.
        let every = store
            .inner
            .pd
            .heartbeat
            .saturating_mul(6)
            .min(REGION_REPORT_EVERY);
        store.look_at_growing(&state);
        let reports = store.due_reports(&mut state, every).await;
        if !reports.is_empty() && !store.send_reports(reports.clone()).await {
            // Not delivered: report them again next time.
            let mut led = lock(&store.inner.pd.led);
            for report in &reports {
                if let Some(entry) = state.tracked.get_mut(&report.id) {
                    entry.reported = None;
                }
                if report.id != META_GROUP {
                    led.dirty.insert(report.id);
                }
            }
        }
        if last_heartbeat.is_none_or(|at| at.elapsed() >= store.inner.pd.heartbeat) {
            last_heartbeat = Some(Instant::now());
            let with_peers = since_peers.is_none_or(|n| n + 1 >= HEARTBEATS_PER_PEER_LIST);
            let answer = store.send_heartbeat(with_peers).await;
            since_peers = match answer {
                // A new PD leader hears the peers at once, whatever this one said.
                Some(true) => None,
                Some(false) if with_peers => Some(0),
                Some(false) => since_peers.map(|n| n + 1),
                None => since_peers,
            };
            if answer == Some(true) {
                // A new PD leader: it hears every region led here afresh.
                for entry in state.tracked.values_mut() {
                    entry.reported = None;
                }
                let mut led = lock(&store.inner.pd.led);
                let all = led.led.clone();
                led.dirty.extend(all);
            }
        }
    }
}
