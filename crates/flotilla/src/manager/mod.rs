//! `flotilla manager --docker`: the placement driver's eyes on Docker (docs/DESIGN.md, "The
//! container manager"). It watches Docker's event stream for containers labelled
//! `flotilla.store` and the volumes that hold their data, and tells the placement driver
//! the one thing only Docker knows: a store's data is gone for good because the volume
//! that held it was removed. It then marks that store offline (`admin store remove`), and
//! the PD replaces its replicas at once, instead of after `max-store-down-time`, with its
//! own rules (one change per region at a time, learner first, never below a majority).
//! A container that stops, restarts, or is destroyed and recreated on the same volume keeps
//! its store: the manager only logs it. It never changes a region's membership itself.
//!
//! What it learns (which volume holds which store) is kept in a state file, written before
//! it acts on it; what it decided is the PD's (the offline mark, the operators), so a
//! manager restarted mid-replacement finds the work going on without it, and on start it
//! reconciles: a known volume that no longer exists is handled as removed.

mod docker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::pd as proto;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::FileConfig;
use crate::kv::ClientArgs;
use crate::output::{Failure, EXIT_FAILED};
use docker::Docker;

/// The label that marks a container as a Flotilla store (any value).
pub const STORE_LABEL: &str = "flotilla.store";
/// Optional label: the store's address (`--advertise-addr`), when its arguments do not say.
pub const ADDRESS_LABEL: &str = "flotilla.address";
/// Optional label: where the store's data dir is inside the container (default `/data`).
pub const DATA_DIR_LABEL: &str = "flotilla.data-dir";
/// The data dir inside a container when no label names it (the image's `VOLUME`).
const DEFAULT_DATA_DIR: &str = "/data";
/// How long a started container's store is asked who it is before the manager gives up
/// on learning it (a store opening a large data dir may take a while to serve).
const LEARN_WITHIN: Duration = Duration::from_secs(60);
/// Longest wait between reconnections to Docker.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often a store removal the PD did not take is asked for again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct ManagerArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Watch Docker (the only container runtime supported so far; required)
    #[arg(long)]
    docker: bool,
    /// Docker's API socket
    #[arg(long, value_name = "PATH", default_value = docker::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the manager keeps what it learned (which volume holds which store)
    #[arg(long, value_name = "FILE", default_value = "flotilla-manager.json")]
    state: PathBuf,
    /// Reconcile once (learn the running stores, handle volumes removed while the manager
    /// was away) and exit, instead of watching
    #[arg(long)]
    once: bool,
    /// Log filter (tracing's `RUST_LOG` syntax)
    #[arg(long, default_value = "info")]
    log: String,
}

/// What the manager knows of a volume that held a store's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The store whose data dir the volume held.
    pub store: String,
    /// The container last seen running it.
    pub container: String,
    /// The store's address then.
    pub address: String,
    /// Docker removed the volume.
    #[serde(default)]
    pub removed: bool,
    /// The volume was removed and the PD took the store's removal (marked offline).
    #[serde(default)]
    pub gone: bool,
    /// The volume was removed and the PD refused the store's removal for good (it knows
    /// no such store, say): why. Not asked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The state file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knowledge {
    /// Volume name → what it held.
    pub volumes: BTreeMap<String, Held>,
    /// The time (nanoseconds since the epoch) of the last Docker event handled: the
    /// stream reopens from its second, and what was handled already is skipped.
    pub last_event: Option<i64>,
}

impl Knowledge {
    fn load(path: &Path) -> Result<Knowledge, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a manager state file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Knowledge::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file whole (a temporary file renamed over it, then synced).
    fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, &text)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// A store container as Docker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreContainer {
    /// Its name (without the leading `/`).
    pub name: String,
    /// Running now.
    pub running: bool,
    /// When it last started (Docker's `State.StartedAt`).
    pub started_at: String,
    /// The named volume mounted at its data dir, if one is.
    pub volume: Option<String>,
    /// The store's address: the `flotilla.address` label, else `--advertise-addr`, else
    /// `--addr` from its arguments.
    pub address: Option<String>,
}

/// Reads a container inspection (`GET /containers/ID/json`); `None` when it is not a store
/// (no `flotilla.store` label).
#[must_use]
pub fn store_container(inspect: &Value) -> Option<StoreContainer> {
    let labels = &inspect["Config"]["Labels"];
    labels.get(STORE_LABEL)?;
    let data_dir = labels[DATA_DIR_LABEL]
        .as_str()
        .unwrap_or(DEFAULT_DATA_DIR)
        .trim_end_matches('/');
    let volume = inspect["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["Destination"].as_str().map(|d| d.trim_end_matches('/')) == Some(data_dir))
        .filter(|m| m["Type"] == "volume")
        .and_then(|m| m["Name"].as_str())
        .map(str::to_string);
    let args: Vec<&str> = inspect["Args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let address = labels[ADDRESS_LABEL]
        .as_str()
        .map(str::to_string)
        .or_else(|| flag_value(&args, "--advertise-addr"))
        .or_else(|| flag_value(&args, "--addr"));
    Some(StoreContainer {
        name: inspect["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running: inspect["State"]["Running"].as_bool().unwrap_or(false),
        started_at: inspect["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        volume,
        address,
    })
}

/// The value of `--flag V` or `--flag=V` in `args`.
fn flag_value(args: &[&str], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if *arg == flag {
            args.get(i + 1).map(|v| (*v).to_string())
        } else {
            arg.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// The store id in a store's `GET /live` answer (`live: store ID serves`).
#[must_use]
pub fn store_of_live(body: &str) -> Option<String> {
    let rest = body.trim().strip_prefix("live: store ")?;
    let id = rest.split_whitespace().next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// One Docker event as the manager reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A store container started.
    Started(String),
    /// A store container stopped (died, was stopped or killed).
    Stopped(String),
    /// A store container was removed (its named volume stays unless removed too).
    Destroyed(String),
    /// A volume was removed.
    VolumeRemoved(String),
    /// Anything else.
    Other,
}

/// Reads one event of Docker's stream.
#[must_use]
pub fn observe(event: &Value) -> Observed {
    let id = event["Actor"]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let is_store = event["Actor"]["Attributes"].get(STORE_LABEL).is_some();
    match (event["Type"].as_str(), event["Action"].as_str()) {
        (Some("volume"), Some("destroy")) if !id.is_empty() => Observed::VolumeRemoved(id),
        (Some("container"), Some(action)) if is_store && !id.is_empty() => match action {
            "start" => Observed::Started(id),
            // Every stop, kill or crash ends in one `die`.
            "die" => Observed::Stopped(id),
            "destroy" => Observed::Destroyed(id),
            _ => Observed::Other,
        },
        _ => Observed::Other,
    }
}

struct Manager {
    docker: Docker,
    client: KvClient,
    endpoints: Vec<String>,
    state_path: PathBuf,
    knowledge: Knowledge,
    /// Containers being asked who they are, by id: each by a task of its own, so that a
    /// store slow to answer never holds up the events behind it.
    learning: BTreeSet<String>,
    learned_sender: tokio::sync::mpsc::UnboundedSender<Learned>,
    learned: tokio::sync::mpsc::UnboundedReceiver<Learned>,
}

/// What a learning task found: the container (its id) and, if it runs a store on a named
/// volume and answered who it is, that volume and what it holds.
struct Learned {
    id: String,
    found: Option<(String, Held, String)>,
}

/// Runs the manager; returns the exit code.
pub fn run(args: ManagerArgs, file: &FileConfig) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: the log of a manager run as a service is read by tools.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    if !args.docker {
        return Failure::usage("name the container runtime to watch: `--docker`")
            .report("manager", false);
    }
    let settings = match args.client.clone().settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("manager", false),
    };
    let knowledge = match Knowledge::load(&args.state) {
        Ok(knowledge) => knowledge,
        Err(why) => return Failure::usage(why).report("manager", false),
    };
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("manager", false),
    };
    runtime.block_on(async move {
        let client = match KvClient::connect(settings.endpoints.clone(), settings.options).await {
            Ok(client) => client,
            Err(failure) => return Failure::from(failure).report("manager", false),
        };
        let (learned_sender, learned) = tokio::sync::mpsc::unbounded_channel();
        let mut manager = Manager {
            docker: Docker::new(&args.socket),
            client,
            endpoints: settings.endpoints,
            state_path: args.state,
            knowledge,
            learning: BTreeSet::new(),
            learned_sender,
            learned,
        };
        manager.watch(args.once).await
    })
}

impl Manager {
    /// Reconciles, then follows the event stream, reconnecting (and reconciling again)
    /// whenever Docker goes away.
    async fn watch(&mut self, once: bool) -> i32 {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.session(once).await {
                Ok(()) if once => return 0,
                Ok(()) => tracing::warn!("Docker closed its event stream; reconnecting"),
                Err(why) if once => {
                    tracing::error!(error = %why, "reconciling failed");
                    return EXIT_FAILED;
                }
                Err(why) => {
                    tracing::warn!(error = %why, retry_in = ?wait, "lost Docker; reconnecting");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    }

    async fn session(&mut self, once: bool) -> Result<(), String> {
        let version = self.docker.get("/version").await?;
        tracing::info!(
            socket = %self.docker.socket().display(),
            docker = version["Version"].as_str().unwrap_or("?"),
            api = version["ApiVersion"].as_str().unwrap_or("?"),
            "connected to Docker"
        );
        if once {
            self.reconcile().await?;
            while !self.learning.is_empty() {
                match self.learned.recv().await {
                    Some(learned) => self.record(learned).await,
                    None => break,
                }
            }
            return Ok(());
        }
        // The stream opens first, from the second of the last event handled, so that
        // nothing happening during the reconciliation is missed; events handled already
        // are skipped by their time in nanoseconds.
        let handled = self.knowledge.last_event;
        let events = self
            .docker
            .events(handled.map(|nanos| nanos / 1_000_000_000))
            .await?;
        // Read by a task of its own, so that waiting for the next event never holds up
        // the retries below (and a read is never cut short half way).
        let (sender, mut received) = tokio::sync::mpsc::channel(64);
        let reader = tokio::spawn(read_events(events, sender));
        self.reconcile().await?;
        let mut retry = tokio::time::interval(RETRY_EVERY);
        let ended = loop {
            tokio::select! {
                event = received.recv() => match event {
                    Some(Ok(event)) => {
                        let nanos = event["timeNano"].as_i64();
                        if nanos.is_some() && nanos <= handled {
                            continue;
                        }
                        self.handle(observe(&event)).await;
                        if nanos.is_some() {
                            self.knowledge.last_event = nanos;
                            self.save();
                        }
                    }
                    Some(Err(why)) => break Err(why),
                    None => break Ok(()),
                },
                Some(learned) = self.learned.recv() => self.record(learned).await,
                _ = retry.tick() => self.retry_removals().await,
            }
        };
        reader.abort();
        ended
    }

    /// Marks again the stores whose volume was removed but whose removal the PD did not
    /// take yet (it had no leader at that moment, say: the store was the PD's leader).
    async fn retry_removals(&mut self) {
        let pending: Vec<String> = self
            .knowledge
            .volumes
            .iter()
            .filter(|(_, held)| held.removed && !held.gone && held.refused.is_none())
            .map(|(volume, _)| volume.clone())
            .collect();
        for volume in pending {
            self.volume_removed(&volume).await;
        }
    }

    /// Where to reach the cluster: the stores running now as the manager learned them
    /// (containers move, and the `--endpoints` given at start may all be gone), then the
    /// `--endpoints` given.
    fn endpoints(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .knowledge
            .volumes
            .values()
            .filter(|held| !held.removed)
            .map(|held| held.address.clone())
            .collect();
        out.extend(self.endpoints.iter().cloned());
        let mut seen = BTreeSet::new();
        out.retain(|a| seen.insert(a.clone()));
        out
    }

    fn save(&self) {
        if let Err(why) = self.knowledge.save(&self.state_path) {
            tracing::error!(error = %why, "cannot keep what the manager learned");
        }
    }

    /// Learns every running store container; handles every known volume that no longer
    /// exists as removed.
    async fn reconcile(&mut self) -> Result<(), String> {
        let filter = format!(r#"{{"label":["{STORE_LABEL}"]}}"#);
        let path = format!(
            "/containers/json?all=1&filters={}",
            docker::percent_encode(&filter)
        );
        let listed = self.docker.get(&path).await?;
        let mut running = 0;
        for container in listed.as_array().into_iter().flatten() {
            if container["State"] == "running" {
                if let Some(id) = container["Id"].as_str() {
                    running += 1;
                    self.learn(id);
                }
            }
        }
        let volumes = self.docker.get("/volumes").await?;
        let existing: BTreeSet<&str> = volumes["Volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["Name"].as_str())
            .collect();
        let missing: Vec<String> = self
            .knowledge
            .volumes
            .iter()
            .filter(|(name, held)| !held.gone && !existing.contains(name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        tracing::info!(
            running,
            known_volumes = self.knowledge.volumes.len(),
            removed_while_away = missing.len(),
            "reconciled with Docker"
        );
        for volume in missing {
            self.volume_removed(&volume).await;
        }
        Ok(())
    }

    async fn handle(&mut self, observed: Observed) {
        match observed {
            Observed::Started(id) => self.learn(&id),
            Observed::Stopped(id) => self.gone_container(&id, true),
            Observed::Destroyed(id) => self.gone_container(&id, false),
            Observed::VolumeRemoved(volume) => self.volume_removed(&volume).await,
            Observed::Other => {}
        }
    }

    fn gone_container(&self, id: &str, stopped: bool) {
        let short = &id[..id.len().min(12)];
        let held = self
            .knowledge
            .volumes
            .iter()
            .find(|(_, h)| h.container == short || h.container == id);
        match held {
            Some((volume, held)) => tracing::info!(
                container = short,
                store = %held.store,
                volume = %volume,
                what = if stopped { "stopped" } else { "removed" },
                "a store's container went away; its volume stays, so the store keeps its \
                 identity if a container runs on it again (nothing to do; the PD replaces \
                 its replicas only after max-store-down-time)"
            ),
            None => tracing::info!(
                container = short,
                what = if stopped { "stopped" } else { "removed" },
                "a store container went away (not the one last seen running a known store: nothing to do)"
            ),
        }
    }

    /// Starts learning which store the container `id` runs and on which volume (a task
    /// of its own; [`Manager::record`] takes its answer). A container already being asked
    /// about is not asked twice.
    fn learn(&mut self, id: &str) {
        if !self.learning.insert(id.to_string()) {
            return;
        }
        let docker = self.docker.clone();
        let sender = self.learned_sender.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let found = ask_container(&docker, &id).await;
            // The receiver is gone only when the manager exits.
            let _ = sender.send(Learned { id, found });
        });
    }

    /// Keeps what a learning task found.
    async fn record(&mut self, learned: Learned) {
        self.learning.remove(&learned.id);
        let Some((volume, held, name)) = learned.found else {
            return;
        };
        let store = held.store.clone();
        let address = held.address.clone();
        let before = self.knowledge.volumes.insert(volume.clone(), held);
        match before {
            Some(old) if old.store == store && old.address == address && !old.removed => {
                tracing::debug!(container = %name, store = %store, volume = %volume, "a known store");
            }
            Some(old) if old.store == store => tracing::info!(
                container = %name, store = %store, volume = %volume, address = %address,
                previous_address = %old.address,
                "a store started on its volume again: same store, nothing copied"
            ),
            Some(old) => tracing::info!(
                container = %name, store = %store, volume = %volume,
                previous_store = %old.store,
                "a new store on a volume of the same name (the old one was removed)"
            ),
            None => tracing::info!(
                container = %name, store = %store, volume = %volume, address = %address,
                "learned a store's volume"
            ),
        }
        self.save();
        // The volume may have been removed between the task's last look and now, its event
        // handled before this answer (when the volume was not known yet): look once more.
        if let Err(why) = self
            .docker
            .get(&format!("/volumes/{}", docker::percent_encode(&volume)))
            .await
        {
            if why.contains(" with 404") {
                tracing::info!(volume = %volume, store = %store, "a volume learned just now is gone already");
                self.volume_removed(&volume).await;
            }
        }
    }

    /// The volume `volume` was removed: if it held a store, that store's data is gone for
    /// good; mark it offline so the PD replaces its replicas now.
    async fn volume_removed(&mut self, volume: &str) {
        let Some(held) = self.knowledge.volumes.get(volume).cloned() else {
            tracing::debug!(volume, "a volume no known store used was removed");
            return;
        };
        if held.gone || held.refused.is_some() {
            return;
        }
        if !held.removed {
            if let Some(h) = self.knowledge.volumes.get_mut(volume) {
                h.removed = true;
            }
            self.save();
        }
        // A store still answering as that store is not gone, whatever Docker says.
        if ask_store_once(&held.address).await.as_deref() == Some(held.store.as_str()) {
            tracing::warn!(volume, store = %held.store, address = %held.address, "a volume that held a store was removed, yet that store still answers: leaving it alone");
            return;
        }
        let request = proto::StoreRemoveRequest {
            store: held.store.clone(),
        };
        let endpoints = self.endpoints();
        let result = crate::admin::call_pd(&self.client, &endpoints, |mut c| {
            let request = request.clone();
            async move { c.store_remove(request).await }
        })
        .await;
        match result {
            Ok(reply) => {
                tracing::warn!(
                    volume, store = %held.store, state = %reply.state, regions = reply.regions,
                    "the volume that held a store's data was removed: the store is gone for \
                     good; marked offline, so the placement driver replaces its replicas now \
                     (learner first, one change per region at a time)"
                );
                if let Some(h) = self.knowledge.volumes.get_mut(volume) {
                    h.gone = true;
                }
                self.save();
            }
            Err(failure) if failure.message.contains("already a tombstone") => {
                tracing::info!(volume, store = %held.store, "the volume that held a store was removed; the store was removed from the cluster already");
                if let Some(h) = self.knowledge.volumes.get_mut(volume) {
                    h.gone = true;
                }
                self.save();
            }
            Err(failure) if !transient(&failure.kind) => {
                tracing::error!(
                    volume, store = %held.store, error = %failure.message, kind = %failure.kind,
                    "the volume that held a store was removed, but the placement driver \
                     refused the store's removal: not asked again (the PD replaces the \
                     store's replicas after max-store-down-time, or run `flotilla admin \
                     store remove` by hand)"
                );
                if let Some(h) = self.knowledge.volumes.get_mut(volume) {
                    h.refused = Some(failure.message);
                }
                self.save();
            }
            Err(failure) => tracing::error!(
                volume, store = %held.store, error = %failure.message,
                "the volume that held a store was removed, but the placement driver did not \
                 take the store's removal yet; asking again shortly"
            ),
        }
    }
}

/// Whether a failure of the PD call may pass by itself (no leader now, a timeout): the
/// call is made again. Anything else (a refusal, a permission) is the PD's answer.
fn transient(kind: &str) -> bool {
    matches!(
        kind,
        "NotLeader"
            | "PdUnavailable"
            | "Unavailable"
            | "ShutDown"
            | "Busy"
            | "Unknown"
            | "TimedOut"
            | "Timeout"
            | "LeaderNotReady"
            | "Transferring"
            | "Internal"
    )
}

/// Forwards Docker's events to `sender` until the stream ends or fails (the error last).
async fn read_events(
    mut events: docker::Events,
    sender: tokio::sync::mpsc::Sender<Result<Value, String>>,
) {
    loop {
        let next = events.next().await;
        let last = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(event)) => Ok(event),
            Ok(None) => return,
            Err(why) => Err(why),
        };
        if sender.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Which store the container `id` runs and on which volume: `(volume, held, name)`, or
/// `None` (with the reason logged) when that cannot be told.
async fn ask_container(docker: &Docker, id: &str) -> Option<(String, Held, String)> {
    let inspect = match docker.get(&format!("/containers/{id}/json")).await {
        Ok(inspect) => inspect,
        Err(why) => {
            tracing::warn!(container = %id, error = %why, "cannot inspect a store container");
            return None;
        }
    };
    let container = store_container(&inspect).filter(|c| c.running)?;
    let Some(address) = container.address.clone() else {
        tracing::warn!(container = %container.name, "a store container names no address (label `flotilla.address` or `--advertise-addr`): the manager cannot tell which store it runs");
        return None;
    };
    let Some(store) = ask_store(&address).await else {
        tracing::warn!(container = %container.name, address = %address, within = ?LEARN_WITHIN, "a store container's store did not say who it is");
        return None;
    };
    // The answer is this container's only if it held the address all along: a container
    // that stopped meanwhile may have left its address to another store (drift (c): a new
    // store on the old address). Same start, still running: the port was its own
    // throughout, so the answer was too.
    let again = docker.get(&format!("/containers/{id}/json")).await;
    let still = again.ok().as_ref().and_then(store_container);
    if !still.is_some_and(|c| c.running && c.started_at == container.started_at) {
        tracing::info!(container = %container.name, address = %address, "a store container stopped while asked who it is: not learned from that answer");
        return None;
    }
    let Some(volume) = container.volume.clone() else {
        tracing::warn!(container = %container.name, store = %store, "a store's data dir is on no named volume: the manager cannot tell when its data is gone (the PD replaces it after max-store-down-time)");
        return None;
    };
    let held = Held {
        store,
        container: id[..id.len().min(12)].to_string(),
        address,
        removed: false,
        gone: false,
        refused: None,
    };
    Some((volume, held, container.name))
}

/// Asks the store at `address` who it is, for up to [`LEARN_WITHIN`].
async fn ask_store(address: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + LEARN_WITHIN;
    loop {
        if let Some(store) = ask_store_once(address).await {
            return Some(store);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ask_store_once(address: &str) -> Option<String> {
    let address = address.to_string();
    tokio::task::spawn_blocking(move || {
        crate::health::get(&address, "/live", Duration::from_secs(2)).ok()
    })
    .await
    .ok()
    .flatten()
    .filter(|(status, _)| *status == 200)
    .and_then(|(_, body)| store_of_live(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inspect(labels: Value, args: &[&str], mounts: Value) -> Value {
        json!({
            "Name": "/s1",
            "Args": args,
            "State": {"Running": true},
            "Config": {"Labels": labels},
            "Mounts": mounts,
        })
    }

    #[test]
    fn a_store_container_is_read_from_its_inspection() {
        let mounts = json!([
            {"Type": "bind", "Destination": "/etc/x", "Source": "/x"},
            {"Type": "volume", "Name": "flotilla-s1", "Destination": "/data"},
        ]);
        let c = store_container(&inspect(
            json!({"flotilla.store": "s1"}),
            &[
                "server",
                "--addr",
                "127.0.0.1:7101",
                "--advertise-addr=127.0.0.1:7201",
            ],
            mounts.clone(),
        ))
        .expect("a store");
        assert_eq!(c.name, "s1");
        assert!(c.running);
        assert_eq!(c.volume.as_deref(), Some("flotilla-s1"));
        assert_eq!(c.address.as_deref(), Some("127.0.0.1:7201"));
        // `--addr` when nothing else names it; the label wins over both.
        let c = store_container(&inspect(
            json!({"flotilla.store": ""}),
            &["server", "--addr", "127.0.0.1:7101"],
            mounts.clone(),
        ))
        .unwrap();
        assert_eq!(c.address.as_deref(), Some("127.0.0.1:7101"));
        let c = store_container(&inspect(
            json!({"flotilla.store": "", "flotilla.address": "h:1"}),
            &["server", "--addr", "127.0.0.1:7101"],
            mounts,
        ))
        .unwrap();
        assert_eq!(c.address.as_deref(), Some("h:1"));
        // Data on a bind mount, or elsewhere than the labelled data dir: no volume.
        let c = store_container(&inspect(
            json!({"flotilla.store": "", "flotilla.data-dir": "/var/lib/flotilla/"}),
            &[],
            json!([{"Type": "volume", "Name": "v", "Destination": "/data"}]),
        ))
        .unwrap();
        assert_eq!((c.volume, c.address), (None, None));
        // Not a store.
        assert!(store_container(&inspect(json!({"other": "x"}), &[], json!([]))).is_none());
        assert!(store_container(&json!({})).is_none());
    }

    #[test]
    fn events_are_read_and_foreign_ones_ignored() {
        let container = |action: &str, labelled: bool| {
            let attributes = if labelled {
                json!({"name": "s1", "flotilla.store": "s1"})
            } else {
                json!({"name": "web"})
            };
            json!({"Type": "container", "Action": action, "Actor": {"ID": "abc", "Attributes": attributes}})
        };
        assert_eq!(
            observe(&container("start", true)),
            Observed::Started("abc".into())
        );
        assert_eq!(
            observe(&container("die", true)),
            Observed::Stopped("abc".into())
        );
        assert_eq!(
            observe(&container("destroy", true)),
            Observed::Destroyed("abc".into())
        );
        assert_eq!(observe(&container("start", false)), Observed::Other);
        assert_eq!(observe(&container("exec_start", true)), Observed::Other);
        assert_eq!(observe(&container("kill", true)), Observed::Other);
        let volume = json!({"Type": "volume", "Action": "destroy", "Actor": {"ID": "flotilla-s1", "Attributes": {"driver": "local"}}});
        assert_eq!(
            observe(&volume),
            Observed::VolumeRemoved("flotilla-s1".into())
        );
        let created = json!({"Type": "volume", "Action": "create", "Actor": {"ID": "v"}});
        assert_eq!(observe(&created), Observed::Other);
        assert_eq!(observe(&json!({"garbage": 1})), Observed::Other);
    }

    #[test]
    fn only_a_failure_that_may_pass_is_asked_again() {
        for kind in ["NotLeader", "PdUnavailable", "Unavailable", "ShutDown"] {
            assert!(transient(kind), "{kind}");
        }
        for kind in [
            "Refused",
            "PermissionDenied",
            "Unauthenticated",
            "InvalidArgument",
        ] {
            assert!(!transient(kind), "{kind}");
        }
    }

    #[test]
    fn the_store_id_is_read_from_live() {
        assert_eq!(
            store_of_live("live: store 423469c0be1d6040 serves\n").as_deref(),
            Some("423469c0be1d6040")
        );
        assert_eq!(store_of_live("live: the store's process serves"), None);
        assert_eq!(store_of_live("ready: cluster 1"), None);
    }

    #[test]
    fn the_state_file_round_trips_and_a_foreign_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("flotilla-manager-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(Knowledge::load(&path).unwrap(), Knowledge::default());
        let mut knowledge = Knowledge::default();
        knowledge.volumes.insert(
            "v1".into(),
            Held {
                store: "ab".into(),
                container: "c".into(),
                address: "127.0.0.1:1".into(),
                removed: true,
                gone: false,
                refused: Some("the placement driver knows no store ab".into()),
            },
        );
        knowledge.last_event = Some(17);
        knowledge.save(&path).unwrap();
        assert_eq!(Knowledge::load(&path).unwrap(), knowledge);
        std::fs::write(&path, b"[1,2]").unwrap();
        assert!(Knowledge::load(&path)
            .unwrap_err()
            .contains("not a manager state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
