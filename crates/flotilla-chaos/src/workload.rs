//! The workloads, run by concurrent client tasks through `flotilla_kv::client::KvClient`:
//!
//! - **register**: keys used a bounded number of times each (fresh keys replace used ones,
//!   as Jepsen's independent keys do, so each key's history stays small enough to check);
//!   reads in the selected modes, writes of values unique to the run, and compare-and-set
//!   from the last value the clients saw.
//! - **set**: adds of unique elements (each a key of its own, spread over every region),
//!   then, once every fault healed and the PD converged, each region's part of the set read
//!   on every voter of the region (a follower read sent to that store itself, clipped to
//!   the region's range: a store hosts only the regions the PD placed on it).
//!
//! - **lock** (always, two clients besides the others): acquire one lock, a fenced write
//!   of the register `crate::locks` names with the token, release (`crate::locks::check`).
//! - **lease** (always, one client besides the others): grant a lease, attach a key of its
//!   own, keep it alive a few times, then read the key until it is gone
//!   (`crate::leases::check`: never missed while the lease surely lives, never seen once it
//!   surely ended).
//! - **watch** (always, two clients besides the others): a writer puts unique values to a
//!   few keys of a prefix while a watcher of it is killed and resumed from its last token
//!   every few seconds (`crate::watches::check`: every acknowledged write delivered
//!   exactly once, in order per key).
//! - **sequence** (always, one client besides the others): `seq next` on a few sequences
//!   spread over the regions, recording every range acknowledged; no value may be handed
//!   out twice (`crate::checker::check_sequences`).
//!
//! Also the recovery probe: after a heal, a write to every region until each succeeds.
//!
//! Owns: issuing operations and recording exactly what the client learned, with times.
//! Must never: record an operation whose outcome is unknown as failed, or retry one.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_kv::client::{ClientError, ClientOptions, KvClient, ReadConsistency};
use flotilla_kv::service::proto::{self, kv_client::KvClient as GrpcKvClient};

use crate::cluster::Journal;
use crate::history::{self, Outcome, RegisterEvent, RegisterOp, SetAdd, SetRead, PROBE_KEY_BASE};
use crate::rng::Rng;

/// Operations one run may record (then the workload stops: histories must fit in memory
/// and in the checker's time).
pub const HISTORY_OPS_MAX: usize = 2_000_000;
/// Client id of the recovery probe in the history.
const PROBE_CLIENT: u64 = 1_000_000;
/// Client id of the final reads.
const FINAL_CLIENT: u64 = 1_000_001;
/// Keys in use at any time by the register workload.
const REGISTER_LANES: u64 = 4;
/// Elements per page of the final set read (the store's scan limit is 10,000).
const SCAN_PAGE: u32 = 5_000;
/// Sequences the sequence client draws from.
const SEQUENCES: u64 = 4;
/// Largest step the sequence client asks for.
const SEQUENCE_STEP_MAX: u64 = 100;

/// One range a `seq next` answered: handed out to this client, never to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceRange {
    /// Which sequence.
    pub sequence: u64,
    /// `[start, end)`.
    pub start: u64,
    /// See `start`.
    pub end: u64,
}

/// The name of sequence `id`, spread over the regions like the other keys.
pub fn sequence_key(id: u64) -> Bytes {
    let mut key = vec![spread(id ^ 0xaaaa)];
    key.extend_from_slice(format!("q{id:04}").as_bytes());
    Bytes::from(key)
}

/// Which workloads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workloads {
    /// Register only.
    Register,
    /// Set only.
    Set,
    /// Both, half of the clients each.
    Both,
}

impl std::str::FromStr for Workloads {
    type Err = String;

    fn from_str(text: &str) -> Result<Workloads, String> {
        match text {
            "register" => Ok(Workloads::Register),
            "set" => Ok(Workloads::Set),
            "both" => Ok(Workloads::Both),
            other => Err(format!(
                "unknown workload {other:?}: expected register, set or both"
            )),
        }
    }
}

/// Workload settings.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Which workloads.
    pub workloads: Workloads,
    /// Client tasks.
    pub clients: usize,
    /// Read modes the register's reads use (one at random per read).
    pub read_modes: Vec<ReadConsistency>,
    /// Operations per register key before it is retired.
    pub ops_per_key: u64,
    /// Longest one operation may take (the client's own timeout is a little shorter).
    pub op_timeout: Duration,
    /// Upper bound of the random pause between one client's operations.
    pub think_max: Duration,
}

/// The name of a read mode, as histories record it.
pub fn mode_name(mode: ReadConsistency) -> &'static str {
    match mode {
        ReadConsistency::Index => "index",
        ReadConsistency::Lease => "lease",
        ReadConsistency::Follower => "follower",
    }
}

/// The first byte of a key: spreads keys over the static regions (split by first byte).
fn spread(id: u64) -> u8 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The KV key of register `id`.
pub fn register_key(id: u64) -> Bytes {
    let mut key = vec![spread(id)];
    key.extend_from_slice(format!("r{id:012}").as_bytes());
    Bytes::from(key)
}

/// The KV key of set element `element`.
pub fn set_key(element: u64) -> Bytes {
    let mut key = vec![spread(element ^ 0x5555)];
    key.extend_from_slice(format!("s{element:012}").as_bytes());
    Bytes::from(key)
}

/// The element a key of the set holds, if it is one.
fn set_element(key: &[u8]) -> Option<u64> {
    let rest = key.get(1..)?.strip_prefix(b"s")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The probe key of the region starting at `start`: inside it whatever its end.
fn probe_key(start: &[u8]) -> Bytes {
    let mut key = start.to_vec();
    key.extend_from_slice(b"\x00probe");
    Bytes::from(key)
}

/// A register value as stored.
fn value_bytes(value: u64) -> Bytes {
    Bytes::from(value.to_string())
}

/// A stored register value; `Err` with the bytes shown when it is not one of ours.
fn parse_value(bytes: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "read a value the workload never writes: {:?}",
                String::from_utf8_lossy(bytes)
            )
        })
}

/// What a failed call tells: unknown (may have applied) or failed (did not).
fn failure_outcome(error: &ClientError) -> Outcome {
    if error.indeterminate {
        Outcome::Unknown
    } else {
        Outcome::Failed
    }
}

/// State shared by the client tasks.
pub struct Shared {
    /// Times and notes.
    pub journal: Arc<Journal>,
    config: WorkloadConfig,
    /// Next unique value / element.
    next_value: AtomicU64,
    register_ops_started: AtomicU64,
    /// The register history.
    pub register: Mutex<Vec<RegisterEvent>>,
    /// The set's adds.
    pub set_adds: Mutex<Vec<SetAdd>>,
    /// Ranges `seq next` acknowledged.
    pub sequence_ranges: Mutex<Vec<SequenceRange>>,
    /// The lock workload's history.
    pub lock_events: Mutex<Vec<crate::locks::LockEvent>>,
    /// The lease workload's history.
    pub lease_events: Mutex<Vec<crate::leases::LeaseEvent>>,
    /// The watch workload's history.
    pub watch_events: Mutex<Vec<crate::watches::WatchEvent>>,
    /// The watcher's last position (the final catch-up resumes from it).
    watch_token: Mutex<Option<String>>,
    /// Set once the watcher first placed its watch: the writer starts then.
    watch_placed: AtomicBool,
    /// `seq next` calls whose outcome is unknown.
    pub sequence_unknown: AtomicU64,
    /// The last value the clients saw per register key (CAS expects it).
    last_seen: Mutex<HashMap<u64, Option<u64>>>,
    /// Register keys used.
    keys_used: Mutex<BTreeSet<u64>>,
    /// The history key of each probe key (by the region start it is derived from): one
    /// register per stored key, whichever region holds it (after a merge the target takes
    /// its source's start, and with it the source's probe key).
    probe_ids: Mutex<HashMap<Bytes, u64>>,
    /// Set when the workload must stop.
    pub stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Shared state for one run.
    pub fn new(journal: Arc<Journal>, config: WorkloadConfig) -> Arc<Shared> {
        Arc::new(Shared {
            journal,
            config,
            next_value: AtomicU64::new(1),
            register_ops_started: AtomicU64::new(0),
            register: Mutex::new(Vec::new()),
            set_adds: Mutex::new(Vec::new()),
            sequence_ranges: Mutex::new(Vec::new()),
            lock_events: Mutex::new(Vec::new()),
            lease_events: Mutex::new(Vec::new()),
            watch_events: Mutex::new(Vec::new()),
            watch_token: Mutex::new(None),
            watch_placed: AtomicBool::new(false),
            sequence_unknown: AtomicU64::new(0),
            last_seen: Mutex::new(HashMap::new()),
            keys_used: Mutex::new(BTreeSet::new()),
            probe_ids: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// The history key of the probe key of the region starting at `start`.
    fn probe_id(&self, start: &Bytes) -> u64 {
        let mut ids = lock(&self.probe_ids);
        let next = ids.len() as u64;
        PROBE_KEY_BASE + *ids.entry(start.clone()).or_insert(next)
    }

    fn unique(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    fn recorded(&self) -> usize {
        lock(&self.register).len()
            + lock(&self.set_adds).len()
            + lock(&self.sequence_ranges).len()
            + lock(&self.lock_events).len()
            + lock(&self.lease_events).len()
            + lock(&self.watch_events).len()
    }

    fn push_register(&self, event: RegisterEvent) {
        lock(&self.register).push(event);
    }

    /// Client options for the workload's clients.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            // The client gives up a little before the harness does, so that most timeouts
            // come with the client's own classification.
            timeout: self
                .config
                .op_timeout
                .saturating_sub(Duration::from_millis(500)),
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        }
    }

    /// Starts the client tasks; they run until [`Shared::stop`] is set.
    pub fn spawn_clients(
        self: &Arc<Self>,
        clients: &[KvClient],
        rng: &mut Rng,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let count = self.config.clients.max(1);
        let sequence = {
            let shared = self.clone();
            let client = clients[count % clients.len()].clone();
            let rng = rng.fork(count as u64);
            tokio::spawn(async move { shared.sequence_worker(client, rng).await })
        };
        let mut workers: Vec<tokio::task::JoinHandle<()>> = (0..count)
            .map(|worker| {
                let shared = self.clone();
                let client = clients[worker % clients.len()].clone();
                let rng = rng.fork(worker as u64);
                let set = match self.config.workloads {
                    Workloads::Register => false,
                    Workloads::Set => true,
                    Workloads::Both => worker % 2 == 1,
                };
                let id = worker as u64;
                tokio::spawn(async move {
                    if set {
                        shared.set_worker(client, id, rng).await;
                    } else {
                        shared.register_worker(client, id, rng).await;
                    }
                })
            })
            .collect();
        workers.push(sequence);
        {
            let shared = self.clone();
            let index = count + 1 + crate::locks::LOCK_CLIENTS as usize;
            let client = clients[index % clients.len()].clone();
            let rng = rng.fork(index as u64);
            workers.push(tokio::spawn(async move {
                shared.lease_worker(client, rng).await;
            }));
        }
        for role in 0..2u64 {
            let shared = self.clone();
            let index = count + 2 + crate::locks::LOCK_CLIENTS as usize + role as usize;
            let client = clients[index % clients.len()].clone();
            let rng = rng.fork(index as u64);
            workers.push(tokio::spawn(async move {
                if role == 0 {
                    shared.watch_writer(client, rng).await;
                } else {
                    shared.watch_watcher(client, rng).await;
                }
            }));
        }
        for i in 0..crate::locks::LOCK_CLIENTS {
            let shared = self.clone();
            let index = count + 1 + i as usize;
            let client = clients[index % clients.len()].clone();
            let rng = rng.fork(index as u64);
            workers.push(tokio::spawn(async move {
                shared.lock_worker(client, i, rng).await;
            }));
        }
        workers
    }

    /// Acquire, a fenced write with the token, release; every step recorded.
    async fn lock_worker(&self, client: KvClient, worker: u64, mut rng: Rng) {
        use crate::locks::{LockEvent, LockOutcome};
        let owner = Bytes::from(format!("worker-{worker}"));
        let mut n = 0u64;
        let timeout = self.config.op_timeout + crate::locks::ACQUIRE_WAIT;
        while self.keep_going() {
            let record = |op: &str, token: u64, value: String, invoke_us, outcome| LockEvent {
                worker,
                op: op.into(),
                token,
                value,
                invoke_us,
                complete_us: self.journal.now_us(),
                outcome,
            };
            let outcome_of = |e: &ClientError| {
                if e.indeterminate {
                    LockOutcome::Unknown
                } else if e.kind == flotilla_kv::fence::FENCED_KIND {
                    LockOutcome::Fenced
                } else {
                    LockOutcome::Failed
                }
            };
            let invoke = self.journal.now_us();
            let acquired = tokio::time::timeout(
                timeout,
                client.lock_acquire(
                    crate::locks::lock_name(),
                    owner.clone(),
                    crate::locks::LEASE_MS,
                    crate::locks::ACQUIRE_WAIT,
                ),
            )
            .await;
            let token = match acquired {
                Ok(Ok(state)) if state.acquired => {
                    lock(&self.lock_events).push(record(
                        "acquire",
                        0,
                        String::new(),
                        invoke,
                        LockOutcome::Acquired(state.token),
                    ));
                    state.token
                }
                other => {
                    let outcome = match other {
                        Ok(Ok(_)) => LockOutcome::NotAcquired,
                        Ok(Err(e)) if !e.indeterminate => LockOutcome::Failed,
                        _ => LockOutcome::Unknown,
                    };
                    lock(&self.lock_events).push(record(
                        "acquire",
                        0,
                        String::new(),
                        invoke,
                        outcome,
                    ));
                    self.think(&mut rng).await;
                    continue;
                }
            };
            n += 1;
            let value = format!("{token}:{worker}:{n}");
            let invoke = self.journal.now_us();
            let written = tokio::time::timeout(
                self.config.op_timeout,
                client.put_fenced(
                    crate::locks::register_key(),
                    Bytes::from(value.clone()),
                    crate::locks::lock_name(),
                    token,
                ),
            )
            .await;
            let outcome = match written {
                Ok(Ok(())) => LockOutcome::Ok,
                Ok(Err(e)) => outcome_of(&e),
                Err(_) => LockOutcome::Unknown,
            };
            lock(&self.lock_events).push(record("write", token, value, invoke, outcome));
            self.think(&mut rng).await;
            let invoke = self.journal.now_us();
            let released = tokio::time::timeout(
                self.config.op_timeout,
                client.lock(
                    crate::locks::lock_name(),
                    flotilla_kv::lock::LockOp::Release {
                        owner: owner.clone(),
                    },
                ),
            )
            .await;
            let outcome = match released {
                Ok(Ok(_)) => LockOutcome::Ok,
                Ok(Err(e)) => outcome_of(&e),
                Err(_) => LockOutcome::Unknown,
            };
            lock(&self.lock_events).push(record("release", token, String::new(), invoke, outcome));
            self.think(&mut rng).await;
        }
    }

    /// Grants a lease, attaches a key, keeps it alive 0 to 2 times, then reads the key
    /// until it is gone (twice not found) or the run stops; every step recorded.
    async fn lease_worker(&self, client: KvClient, mut rng: Rng) {
        use crate::leases::{key_of, LeaseEvent, LeaseOutcome, LATE_MARGIN_MS, TTL_MS};
        let timeout = self.config.op_timeout;
        let mut n = 0u64;
        while self.keep_going() {
            n += 1;
            let push = |op: &str, invoke_us: u64, outcome: LeaseOutcome| {
                lock(&self.lease_events).push(LeaseEvent {
                    n,
                    op: op.into(),
                    invoke_us,
                    complete_us: self.journal.now_us(),
                    outcome,
                });
            };
            let outcome_of = |error: Option<&ClientError>| match error {
                None => LeaseOutcome::Ok,
                Some(e) if !e.indeterminate => LeaseOutcome::Failed,
                Some(_) => LeaseOutcome::Unknown,
            };
            let invoke = self.journal.now_us();
            let id = match tokio::time::timeout(timeout, client.lease_grant(TTL_MS)).await {
                Ok(Ok((id, _))) => {
                    push("grant", invoke, LeaseOutcome::Ok);
                    id
                }
                other => {
                    let outcome = match other {
                        Ok(Err(e)) => outcome_of(Some(&e)),
                        _ => LeaseOutcome::Unknown,
                    };
                    push("grant", invoke, outcome);
                    self.think(&mut rng).await;
                    continue;
                }
            };
            let invoke = self.journal.now_us();
            let put = tokio::time::timeout(
                timeout,
                client.put_with_lease(key_of(n), Bytes::from_static(b"leased"), id),
            )
            .await;
            let outcome = match put {
                Ok(result) => outcome_of(result.as_ref().err()),
                Err(_) => LeaseOutcome::Unknown,
            };
            push("put", invoke, outcome);
            for _ in 0..rng.below(3) {
                tokio::time::sleep(Duration::from_millis(TTL_MS / 4)).await;
                let invoke = self.journal.now_us();
                let kept = tokio::time::timeout(
                    timeout,
                    client.lease(id, flotilla_kv::lease::LeaseOp::KeepAlive),
                )
                .await;
                let outcome = match kept {
                    Ok(result) => outcome_of(result.as_ref().err()),
                    Err(_) => LeaseOutcome::Unknown,
                };
                push("keep-alive", invoke, outcome);
            }
            // Read until the key is gone, at most a little past the latest it may live.
            let give_up =
                Instant::now() + Duration::from_millis(2 * TTL_MS + LATE_MARGIN_MS + 2_000);
            let mut missing = 0;
            while missing < 2 && Instant::now() < give_up && self.keep_going() {
                tokio::time::sleep(Duration::from_millis(TTL_MS / 8)).await;
                let invoke = self.journal.now_us();
                let read =
                    tokio::time::timeout(timeout, client.get(key_of(n), ReadConsistency::Index))
                        .await;
                if let Ok(Ok(value)) = read {
                    let found = value.is_some();
                    missing = if found { 0 } else { missing + 1 };
                    push("read", invoke, LeaseOutcome::Read(found));
                }
            }
        }
    }

    /// Puts unique values to the watched keys, one at a time, once the watcher is placed.
    async fn watch_writer(&self, client: KvClient, mut rng: Rng) {
        use crate::watches::{key_of, WatchEvent, WriteOutcome, KEYS};
        while !self.watch_placed.load(Ordering::Relaxed) && self.keep_going() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while self.keep_going() {
            let key = rng.below(KEYS);
            let value = self.unique();
            let invoke_us = self.journal.now_us();
            let put = tokio::time::timeout(
                self.config.op_timeout,
                client.put(key_of(key), Bytes::from(value.to_string())),
            )
            .await;
            let outcome = match put {
                Ok(Ok(())) => WriteOutcome::Ok,
                Ok(Err(e)) if !e.indeterminate => WriteOutcome::Failed,
                _ => WriteOutcome::Unknown,
            };
            lock(&self.watch_events).push(WatchEvent::Write {
                key,
                value,
                invoke_us,
                complete_us: self.journal.now_us(),
                outcome,
            });
            self.think(&mut rng).await;
        }
    }

    /// Records one event the watcher delivered, and its token as the watcher's position.
    fn watch_seen(&self, event: &flotilla_kv::client::WatchEvent) {
        use crate::watches::{number_of, WatchEvent};
        let key = number_of(&event.key).unwrap_or(u64::MAX);
        let value = std::str::from_utf8(&event.value)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        lock(&self.watch_events).push(WatchEvent::Seen {
            key,
            value,
            at_us: self.journal.now_us(),
        });
        *lock(&self.watch_token) = Some(event.token.clone());
    }

    /// Reads one watch session until `end` or `until` fails; after a `Compacted` answer
    /// the position becomes the one it names.
    async fn watch_session(
        &self,
        watcher: &mut flotilla_kv::client::Watcher,
        end: tokio::time::Instant,
        until: impl Fn() -> bool,
    ) {
        use crate::watches::WatchEvent;
        while until() {
            match tokio::time::timeout_at(end, watcher.next()).await {
                Err(_) | Ok(None) => return,
                Ok(Some(Ok(event))) => self.watch_seen(&event),
                Ok(Some(Err(e))) => {
                    let compacted = e.kind == flotilla_kv::watch::COMPACTED_KIND;
                    lock(&self.watch_events).push(WatchEvent::Session {
                        what: if compacted { "compacted" } else { "error" }.into(),
                        detail: e.to_string(),
                    });
                    if let (true, Some(resume)) = (compacted, e.resume_from) {
                        *lock(&self.watch_token) = Some(resume);
                    }
                    return;
                }
            }
        }
    }

    /// Watches the prefix in sessions of 0.5 to 3.5 s, each ended by dropping the watch
    /// (a killed watcher) and resumed from the last token.
    async fn watch_watcher(&self, client: KvClient, mut rng: Rng) {
        use crate::watches::{prefix, WatchEvent};
        while self.keep_going() {
            let token = lock(&self.watch_token).clone();
            let watch = tokio::time::timeout(
                self.config.op_timeout,
                client.watch(prefix(), token.as_deref()),
            )
            .await;
            let Ok(Ok(mut watcher)) = watch else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            if token.is_none() {
                *lock(&self.watch_token) = Some(watcher.position().to_string());
                self.watch_placed.store(true, Ordering::Relaxed);
            }
            let end = tokio::time::Instant::now() + Duration::from_millis(500 + rng.below(3_000));
            self.watch_session(&mut watcher, end, || self.keep_going())
                .await;
            drop(watcher);
            lock(&self.watch_events).push(WatchEvent::Session {
                what: "resumed".into(),
                detail: String::new(),
            });
            tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        }
    }

    /// The watcher's catch-up after every fault healed: resumed from its last token, it
    /// reads until every acknowledged write was delivered, or nothing came for a while.
    pub async fn final_watch(&self, client: &KvClient, within: Duration) {
        use crate::watches::{prefix, WatchEvent, WriteOutcome};
        let Some(token) = lock(&self.watch_token).clone() else {
            return;
        };
        let acked: BTreeSet<u64> = lock(&self.watch_events)
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Write {
                    value,
                    outcome: WriteOutcome::Ok,
                    ..
                } => Some(*value),
                _ => None,
            })
            .collect();
        let missing = || {
            let seen: BTreeSet<u64> = lock(&self.watch_events)
                .iter()
                .filter_map(|e| match e {
                    WatchEvent::Seen { value, .. } => Some(*value),
                    _ => None,
                })
                .collect();
            acked.difference(&seen).count()
        };
        let deadline = tokio::time::Instant::now() + within;
        let mut token = token;
        while tokio::time::Instant::now() < deadline && missing() > 0 {
            let Ok(mut watcher) = client.watch(prefix(), Some(&token)).await else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            // Sessions of 5 s, until nothing is missing.
            let end = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
            self.watch_session(&mut watcher, end, || missing() > 0)
                .await;
            token = lock(&self.watch_token).clone().unwrap_or(token);
        }
    }

    /// The lock workload's final read of its register (after every fault healed).
    pub async fn final_lock_read(&self, client: &KvClient, within: Duration) {
        use crate::locks::{LockEvent, LockOutcome};
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let invoke_us = self.journal.now_us();
            match client
                .get(crate::locks::register_key(), ReadConsistency::Index)
                .await
            {
                Ok(value) => {
                    lock(&self.lock_events).push(LockEvent {
                        worker: FINAL_CLIENT,
                        op: "final-read".into(),
                        token: 0,
                        value: String::new(),
                        invoke_us,
                        complete_us: self.journal.now_us(),
                        outcome: LockOutcome::Read(
                            value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        ),
                    });
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `seq next` on random sequences, each acknowledged range recorded.
    async fn sequence_worker(&self, client: KvClient, mut rng: Rng) {
        while self.keep_going() {
            let sequence = rng.below(SEQUENCES);
            let step = 1 + rng.below(SEQUENCE_STEP_MAX);
            let answer = tokio::time::timeout(
                self.config.op_timeout,
                client.sequence_next(sequence_key(sequence), step),
            )
            .await;
            match answer {
                Ok(Ok((start, end))) => lock(&self.sequence_ranges).push(SequenceRange {
                    sequence,
                    start,
                    end,
                }),
                Ok(Err(e)) if !e.indeterminate => {}
                _ => {
                    self.sequence_unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.think(&mut rng).await;
        }
    }

    fn keep_going(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if self.recorded() >= HISTORY_OPS_MAX {
            if !self.stop.swap(true, Ordering::Relaxed) {
                self.journal.note(format!(
                    "history reached {HISTORY_OPS_MAX} operations: the workload stops"
                ));
            }
            return false;
        }
        true
    }

    async fn think(&self, rng: &mut Rng) {
        let max = self.config.think_max.as_micros() as u64;
        if max > 0 {
            tokio::time::sleep(Duration::from_micros(rng.below(max))).await;
        }
    }

    async fn register_worker(&self, client: KvClient, worker: u64, mut rng: Rng) {
        let per_generation = self.config.ops_per_key.max(1) * REGISTER_LANES;
        while self.keep_going() {
            let started = self.register_ops_started.fetch_add(1, Ordering::Relaxed);
            let key = started / per_generation * REGISTER_LANES + rng.below(REGISTER_LANES);
            lock(&self.keys_used).insert(key);
            let roll = rng.below(100);
            let event = if roll < 50 {
                let modes = &self.config.read_modes;
                let mode = modes[rng.index(modes.len())];
                self.read(&client, worker, key, register_key(key), mode, false)
                    .await
            } else if roll < 75 {
                self.write(&client, worker, key, register_key(key)).await
            } else {
                self.cas(&client, worker, key).await
            };
            self.push_register(event);
            self.think(&mut rng).await;
        }
    }

    async fn read(
        &self,
        client: &KvClient,
        worker: u64,
        key: u64,
        bytes: Bytes,
        mode: ReadConsistency,
        final_read: bool,
    ) -> RegisterEvent {
        let invoke_us = self.journal.now_us();
        let answer = tokio::time::timeout(self.config.op_timeout, client.get(bytes, mode)).await;
        let complete_us = self.journal.now_us();
        let (outcome, error) = match answer {
            Ok(Ok(None)) => (Outcome::Read(None), None),
            Ok(Ok(Some(value))) => match parse_value(&value) {
                Ok(v) => {
                    lock(&self.last_seen).insert(key, Some(v));
                    (Outcome::Read(Some(v)), None)
                }
                // A value nobody wrote: the checker reports it as such.
                Err(why) => (Outcome::Read(Some(u64::MAX)), Some(why)),
            },
            Ok(Err(e)) => (failure_outcome(&e), Some(e.to_string())),
            Err(_) => (Outcome::Unknown, Some("harness timeout".into())),
        };
        RegisterEvent {
            client: worker,
            key,
            op: RegisterOp::Read {
                mode: mode_name(mode).into(),
            },
            invoke_us,
            complete_us,
            outcome,
            final_read,
            error,
        }
    }

    async fn write(&self, client: &KvClient, worker: u64, key: u64, bytes: Bytes) -> RegisterEvent {
        let value = self.unique();
        let invoke_us = self.journal.now_us();
        let answer = tokio::time::timeout(
            self.config.op_timeout,
            client.put(bytes, value_bytes(value)),
        )
        .await;
        let complete_us = self.journal.now_us();
        let (outcome, error) = match answer {
            Ok(Ok(())) => {
                lock(&self.last_seen).insert(key, Some(value));
                (Outcome::Written, None)
            }
            Ok(Err(e)) => (failure_outcome(&e), Some(e.to_string())),
            Err(_) => (Outcome::Unknown, Some("harness timeout".into())),
        };
        RegisterEvent {
            client: worker,
            key,
            op: RegisterOp::Write { value },
            invoke_us,
            complete_us,
            outcome,
            final_read: false,
            error,
        }
    }

    async fn cas(&self, client: &KvClient, worker: u64, key: u64) -> RegisterEvent {
        let expected = lock(&self.last_seen).get(&key).copied().flatten();
        let new = self.unique();
        let invoke_us = self.journal.now_us();
        let call = client.compare_and_put(
            register_key(key),
            expected.map(value_bytes),
            value_bytes(new),
        );
        let answer = tokio::time::timeout(self.config.op_timeout, call).await;
        let complete_us = self.journal.now_us();
        let (outcome, error) = match answer {
            Ok(Ok(swapped)) => {
                if swapped {
                    lock(&self.last_seen).insert(key, Some(new));
                }
                (Outcome::Cas(swapped), None)
            }
            Ok(Err(e)) => (failure_outcome(&e), Some(e.to_string())),
            Err(_) => (Outcome::Unknown, Some("harness timeout".into())),
        };
        RegisterEvent {
            client: worker,
            key,
            op: RegisterOp::Cas { expected, new },
            invoke_us,
            complete_us,
            outcome,
            final_read: false,
            error,
        }
    }

    async fn set_worker(&self, client: KvClient, worker: u64, mut rng: Rng) {
        while self.keep_going() {
            let element = self.unique();
            let invoke_us = self.journal.now_us();
            let put = client.put(set_key(element), Bytes::from_static(b"1"));
            let answer = tokio::time::timeout(self.config.op_timeout, put).await;
            let complete_us = self.journal.now_us();
            let (outcome, error) = match answer {
                Ok(Ok(())) => (Outcome::Written, None),
                Ok(Err(e)) => (failure_outcome(&e), Some(e.to_string())),
                Err(_) => (Outcome::Unknown, Some("harness timeout".into())),
            };
            lock(&self.set_adds).push(SetAdd {
                client: worker,
                element,
                invoke_us,
                complete_us,
                outcome,
                error,
            });
            self.think(&mut rng).await;
        }
    }

    /// After a heal: writes to every region until each acknowledges one (each write is in
    /// the history, on the region's probe key). Returns how long it took, or `None` if some
    /// region accepted no write `within`.
    pub async fn probe(self: &Arc<Self>, client: &KvClient, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let deadline = started + within;
        // The client's own route table (it follows redirects and refreshes on stale routes
        // itself): a refresh here would ask every store it ever knew, retired ones included,
        // and charge their connect timeouts to the recovery time.
        let mut regions: Vec<Bytes> = client
            .routes()
            .iter()
            .map(|r| r.region.start.clone())
            .collect();
        while regions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = client.refresh_routes().await;
            regions = client
                .routes()
                .iter()
                .map(|r| r.region.start.clone())
                .collect();
        }
        let tasks: Vec<_> = regions
            .into_iter()
            .map(|start| {
                let shared = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let key = shared.probe_id(&start);
                    while Instant::now() < deadline {
                        let event = shared
                            .write(&client, PROBE_CLIENT, key, probe_key(&start))
                            .await;
                        let ok = event.outcome == Outcome::Written;
                        shared.push_register(event);
                        if ok {
                            return true;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    false
                })
            })
            .collect();
        let mut all = !tasks.is_empty();
        for task in tasks {
            all &= task.await.unwrap_or(false);
        }
        all.then(|| started.elapsed())
    }

    /// The final register reads (index reads, after every fault healed): one answered read
    /// per key used, workload and probe keys alike. Returns the keys no read answered.
    pub async fn final_register_reads(
        self: &Arc<Self>,
        client: &KvClient,
        within: Duration,
    ) -> Vec<u64> {
        let deadline = Instant::now() + within;
        let mut keys: Vec<(u64, Bytes)> = lock(&self.keys_used)
            .iter()
            .map(|&k| (k, register_key(k)))
            .collect();
        for route in client.routes() {
            keys.push((
                self.probe_id(&route.region.start),
                probe_key(&route.region.start),
            ));
        }
        let mut unread = Vec::new();
        // A few keys at a time: the cluster just healed.
        for chunk in keys.chunks(16) {
            let tasks: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|(key, bytes)| {
                    let shared = self.clone();
                    let client = client.clone();
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let event = shared
                                .read(
                                    &client,
                                    FINAL_CLIENT,
                                    key,
                                    bytes.clone(),
                                    ReadConsistency::Index,
                                    true,
                                )
                                .await;
                            if matches!(event.outcome, Outcome::Read(_)) {
                                shared.push_register(event);
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Some(key)
                    })
                })
                .collect();
            for task in tasks {
                if let Ok(Some(key)) = task.await {
                    unread.push(key);
                }
            }
        }
        unread
    }

    /// The register keys used so far.
    pub fn register_keys(&self) -> usize {
        lock(&self.keys_used).len()
    }
}

/// A region's range, as its leader reports it.
#[derive(Clone, Debug)]
pub struct RegionRange {
    /// The region.
    pub id: u64,
    /// Its first key.
    pub start: Bytes,
    /// Its end (exclusive; empty: the end of the key space).
    pub end: Bytes,
}

/// Reads the part of the set in `range` from the store at `address` alone: a follower
/// read of the region, page by page, sent to it directly (so what it answers is what it
/// holds, after catching up to the leader's commit index), clipped to the range the
/// region's leader reports.
pub async fn read_region_on(
    client: &KvClient,
    address: &str,
    range: &RegionRange,
    within: Duration,
) -> SetRead {
    let deadline = Instant::now() + within;
    let mut last_error = String::from("no attempt");
    let read = |elements, error| SetRead {
        store: address.to_string(),
        elements,
        error,
        region: Some(range.id),
        start: Some(history::key_hex(&range.start)),
        end: Some(history::key_hex(&range.end)),
    };
    while Instant::now() < deadline {
        match read_region_once(client, address, range).await {
            Ok(elements) => return read(Some(elements), None),
            Err(why) => last_error = why,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    read(None, Some(last_error))
}

async fn read_region_once(
    client: &KvClient,
    address: &str,
    range: &RegionRange,
) -> Result<Vec<u64>, String> {
    let reply = client
        .regions_of(address)
        .await
        .map_err(|e| e.to_string())?;
    let info = reply
        .regions
        .iter()
        .find(|i| i.id == range.id)
        .ok_or_else(|| format!("{address} does not host region {}", range.id))?;
    let channel = client.channel(address).await.map_err(|e| e.to_string())?;
    let mut grpc = GrpcKvClient::new(channel)
        .max_decoding_message_size(flotilla_kv::service::KV_MESSAGE_BYTES_MAX);
    let context = proto::RegionContext {
        region_id: info.id,
        conf_version: info.conf_version,
        version: info.version,
    };
    let mut elements = BTreeSet::new();
    let mut start = range.start.clone();
    loop {
        let request = proto::ScanRequest {
            context: Some(context),
            start: start.clone(),
            end: range.end.clone(),
            limit: SCAN_PAGE,
            reverse: false,
            keys_only: true,
            read: proto::ReadMode::Follower as i32,
        };
        let page = tokio::time::timeout(Duration::from_secs(10), grpc.scan(request))
            .await
            .map_err(|_| format!("scan of region {} on {address} timed out", info.id))?
            .map_err(|status| {
                format!(
                    "scan of region {} on {address}: {}",
                    info.id,
                    status.message()
                )
            })?
            .into_inner();
        let count = page.entries.len();
        for entry in &page.entries {
            if let Some(element) = set_element(&entry.key) {
                elements.insert(element);
            }
        }
        match page.entries.last() {
            Some(last) if count == SCAN_PAGE as usize => {
                let mut next = last.key.to_vec();
                next.push(0);
                start = Bytes::from(next);
            }
            _ => break,
        }
    }
    Ok(elements.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_spread() {
        for element in [0, 1, 77, 123_456_789] {
            assert_eq!(set_element(&set_key(element)), Some(element));
        }
        assert_eq!(set_element(&register_key(5)), None);
        let firsts: BTreeSet<u8> = (0..64).map(|id| register_key(id)[0]).collect();
        assert!(
            firsts.iter().any(|b| *b < 128) && firsts.iter().any(|b| *b >= 128),
            "{firsts:?}"
        );
        assert_eq!(parse_value(b"42"), Ok(42));
        assert!(parse_value(b"x").is_err());
        let probe = probe_key(&[0x80]);
        assert!(probe.as_ref() > &[0x80][..] && probe.as_ref() < &[0x81][..]);
        assert!(probe_key(&[]).as_ref() < &[0x01][..]);
    }
}
