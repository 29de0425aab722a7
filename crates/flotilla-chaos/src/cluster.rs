//! The server processes: starting `flotilla server` on a host (inside its namespace, and
//! under libfaketime when its clock is skewed), killing, pausing, resuming and stopping
//! it, damaging its log while it is down, and asking the cluster who leads, who is a
//! member, and what the placement driver (PD) is doing. The harness changes no membership
//! to repair the cluster: the PD does; a person's membership command (the `membership`
//! nemesis) goes through `flotilla admin`, as an operator's would.
//!
//! Owns: every child process (each dies with the harness: `PR_SET_PDEATHSIG`), the data
//! directories and the server logs (one per node, appended across restarts with a line
//! saying why each start happened). Must never: leave a process running after teardown, or
//! treat a process that died on its own as one the harness stopped.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use flotilla_kv::client::{ClientOptions, KvClient};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::net::{Host, Network};
use crate::rng::Rng;

/// How long a started server has to print that it serves before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd server has to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest one `flotilla admin` call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Lines the journal keeps (older ones are dropped from memory; the file keeps them all).
const JOURNAL_LINES_MAX: usize = 100_000;

/// Timestamped notes of what the harness did, printed and kept for the run's directory.
#[derive(Debug)]
pub struct Journal {
    start: Instant,
    lines: Mutex<Vec<String>>,
    quiet: bool,
}

impl Journal {
    /// A journal whose clock starts now.
    pub fn new(start: Instant, quiet: bool) -> Journal {
        Journal {
            start,
            lines: Mutex::new(Vec::new()),
            quiet,
        }
    }

    /// Seconds since the run started.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Microseconds since the run started (the histories' clock).
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Notes `text`.
    pub fn note(&self, text: impl AsRef<str>) {
        let line = format!("[{:8.3}s] {}", self.elapsed_s(), text.as_ref());
        if !self.quiet {
            println!("  {line}");
        }
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() >= JOURNAL_LINES_MAX {
            lines.remove(0);
        }
        lines.push(line);
    }

    /// Every line noted.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How the servers run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `flotilla` binary.
    pub bin: PathBuf,
    /// `--regions`.
    pub regions: u32,
    /// `--tick-ms`.
    pub tick_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--engine`.
    pub engine: String,
    /// `--pd-heartbeat-ms`: how often each store reports to the PD.
    pub pd_heartbeat_ms: u64,
    /// `--max-store-down-time`: how long the PD waits before it replaces a silent store's
    /// replicas.
    pub max_store_down_time: Duration,
}

/// A clock skew: libfaketime's rate and wall-clock offset for one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Skew {
    /// Speed of the process's clocks (monotonic ones included) relative to real time.
    pub rate: f64,
    /// Offset of its wall clock, seconds.
    pub offset_s: i64,
}

/// One server process slot: an address and a data directory, across restarts.
#[derive(Debug)]
pub struct Node {
    /// Short name (`n1`, `n2`, ...).
    pub name: String,
    /// Where it runs.
    pub host: Host,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log (stdout and stderr of every start).
    pub log_path: PathBuf,
    /// `--peers` for its starts (`None`: it starts empty and waits to be added).
    pub bootstrap: Option<String>,
    child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// Its clock skew while it runs under libfaketime.
    pub skew: Option<Skew>,
    /// Replaced (drift) and gone for good.
    pub retired: bool,
    /// The address it was first started at (the one the workload's clients were given for
    /// the first members); `readdress` moves it away and back.
    pub home_address: String,
    /// The store id in its data dir (`store.meta`) as of its last start; `None` before its
    /// first start and after a wipe. A wiped store comes back with a new one.
    pub store_id: Option<String>,
}

impl Node {
    /// Where it listens and is reached now (not who it is: that is [`Node::store_id`]).
    pub fn address(&self) -> &str {
        &self.host.address
    }

    /// Whether a process is running (or paused).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| i32::try_from(p).ok())
    }
}

/// A process that exited without being asked to.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    /// The node.
    pub name: String,
    /// How it exited.
    pub status: String,
    /// The end of its log.
    pub log_tail: String,
}

/// A region as its leader reports it.
#[derive(Clone, Debug)]
pub struct LeaderView {
    /// The node that leads it.
    pub index: usize,
    /// Its voters' store ids.
    pub peer_ids: Vec<String>,
    /// Its voters' addresses, in the same order ("" where the leader knows none).
    pub peers: Vec<String>,
    /// Its learners' store ids.
    pub learner_ids: Vec<String>,
    /// The first key of its range.
    pub start: bytes::Bytes,
    /// The end of its range (exclusive; empty: the end of the key space).
    pub end: bytes::Bytes,
}

impl LeaderView {
    /// The address the leader has for voter `id`, if `id` is a voter.
    pub fn address_of(&self, id: &str) -> Option<&str> {
        let at = self.peer_ids.iter().position(|p| p == id)?;
        self.peers.get(at).map(String::as_str)
    }
}

/// Why a start failed.
#[derive(Debug)]
pub struct StartFailure {
    /// How the process ended (or that it never said it serves).
    pub status: String,
    /// What it printed in this start.
    pub output: String,
}

/// The store id written in `DATA_DIR/store.meta` (its second line: `store <16 hex>`), if
/// the file is there and says one.
pub fn read_store_id(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("store.meta")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("store "))
        .map(str::trim)
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// The servers of one run.
pub struct Cluster {
    /// How servers run.
    pub config: ServerConfig,
    /// The run's directory (data, logs).
    pub dir: PathBuf,
    /// The hosts' network.
    pub network: Network,
    /// Every node slot ever used (retired ones included).
    pub nodes: Vec<Node>,
    /// The stores the harness keeps in the cluster (node indexes): every one not stopped
    /// for good. The PD places each region's replicas on some of them.
    pub members: Vec<usize>,
    /// Store ids the harness stopped for good (a drifted store's, a wiped store's old
    /// one): once the PD has repaired, no region counts any of them as a member.
    pub gone_ids: std::collections::BTreeSet<String>,
    /// libfaketime's multi-threaded library, if installed.
    pub faketime: Option<PathBuf>,
    /// What happened.
    pub journal: Arc<Journal>,
    /// Processes that died on their own.
    pub unexpected_exits: Vec<UnexpectedExit>,
    /// The endpoints the workload's clients were given (fixed for the run: a moved or
    /// retired store's old address stays in their list).
    pub client_endpoints: Vec<String>,
    /// A client used for status queries (set once the cluster is up).
    admin_client: Option<KvClient>,
}

/// libfaketime's library for multi-threaded programs, if installed.
pub fn find_faketime() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("faketime/libfaketimeMT.so.1"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/faketime/libfaketimeMT.so.1"));
    candidates.into_iter().find(|p| p.is_file())
}

fn exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last `bytes` of a file, as text.
fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

/// A file's contents from `offset` on, as text.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let _ = file.seek(SeekFrom::Start(offset));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Cluster {
    /// A cluster with no nodes yet.
    pub fn new(
        config: ServerConfig,
        dir: PathBuf,
        network: Network,
        journal: Arc<Journal>,
    ) -> Cluster {
        Cluster {
            config,
            dir,
            network,
            nodes: Vec::new(),
            members: Vec::new(),
            gone_ids: std::collections::BTreeSet::new(),
            faketime: find_faketime(),
            journal,
            unexpected_exits: Vec::new(),
            client_endpoints: Vec::new(),
            admin_client: None,
        }
    }

    /// Adds a node slot on a new host (not started).
    pub async fn add_node(&mut self, bootstrap: Option<String>) -> anyhow::Result<usize> {
        let host = self.network.add_host().await?;
        let index = self.nodes.len();
        let name = format!("n{}", index + 1);
        let data_dir = self.dir.join("data").join(&name);
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        std::fs::create_dir_all(self.dir.join("logs"))?;
        self.nodes.push(Node {
            name,
            home_address: host.address.clone(),
            store_id: None,
            host,
            data_dir,
            log_path,
            bootstrap,
            child: None,
            paused: false,
            skew: None,
            retired: false,
        });
        Ok(index)
    }

    /// Names and addresses, for messages: `n2 (10.200.1.2:7100)`.
    pub fn label(&self, index: usize) -> String {
        format!(
            "{} ({})",
            self.nodes[index].name,
            self.nodes[index].address()
        )
    }

    /// Labels of several nodes.
    pub fn labels(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&i| self.nodes[i].name.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Addresses of the stores the harness keeps.
    pub fn member_addresses(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|&i| self.nodes[i].address().to_string())
            .collect()
    }

    /// Store ids of the stores the harness keeps that run now (started at least once
    /// since their last wipe, not paused).
    pub fn running_ids(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|&&i| self.nodes[i].is_up() && !self.nodes[i].paused)
            .filter_map(|&i| self.nodes[i].store_id.clone())
            .collect()
    }

    /// The node whose store has id `id`, if any node's does.
    pub fn node_of_id(&self, id: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].store_id.as_deref() == Some(id))
    }

    /// A store id with the name of its node when one has it: `3f2a...c1 (n2)`.
    pub fn id_label(&self, id: &str) -> String {
        match self.node_of_id(id) {
            Some(i) => format!("{id} ({})", self.nodes[i].name),
            None => id.to_string(),
        }
    }

    /// Nodes that are not retired.
    pub fn active(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].retired)
            .collect()
    }

    /// Nodes with a process that is not paused.
    pub fn responsive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up() && !self.nodes[i].paused)
            .collect()
    }

    fn server_command(&self, index: usize) -> anyhow::Result<Command> {
        let node = &self.nodes[index];
        let prefix = Network::exec_prefix(&node.host);
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.config.bin);
                c
            }
            None => Command::new(&self.config.bin),
        };
        command
            .arg("server")
            .args(["--addr", node.address()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--regions", &self.config.regions.to_string()])
            .args(["--engine", &self.config.engine])
            .args(["--tick-ms", &self.config.tick_ms.to_string()])
            .args([
                "--election-timeout-ms",
                &self.config.election_timeout_ms.to_string(),
            ])
            .args([
                "--pd-heartbeat-ms",
                &self.config.pd_heartbeat_ms.to_string(),
            ])
            .args([
                "--max-store-down-time",
                &format!("{}ms", self.config.max_store_down_time.as_millis()),
            ])
            .args([
                "--log",
                "warn,flotilla=info,flotilla_kv=info,flotilla_node=info",
            ]);
        if let Some(peers) = &node.bootstrap {
            command.args(["--peers", peers]);
        }
        if let Some(skew) = node.skew {
            let library = self.faketime.as_ref().ok_or_else(|| {
                anyhow!("clock skew needs libfaketime (apt-get install faketime)")
            })?;
            command
                .env("LD_PRELOAD", library)
                .env(
                    "FAKETIME",
                    format!("{:+}s x{:.4}", skew.offset_s, skew.rate),
                )
                .env("FAKETIME_NO_CACHE", "1");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("cannot open {}", node.log_path.display()))?;
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SAFETY: the closure only calls prctl, which is async-signal-safe. The process
        // dies with the harness (the parent is the main thread, which lives until exit).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Starts the node's server and waits until it says it serves. `why` goes in its log.
    pub async fn start(&mut self, index: usize, why: &str) -> Result<(), StartFailure> {
        let failure = |status: String| StartFailure {
            status,
            output: String::new(),
        };
        if self.nodes[index].is_up() {
            return Ok(());
        }
        let log_path = self.nodes[index].log_path.clone();
        let skew = self.nodes[index].skew;
        {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| failure(format!("cannot open {}: {e}", log_path.display())))?;
            let _ = writeln!(
                log,
                "==== flotilla-chaos {:.3}s: starting ({why}){}",
                self.journal.elapsed_s(),
                skew.map(|s| format!(
                    " with clock rate {:.4} and wall-clock offset {:+} s",
                    s.rate, s.offset_s
                ))
                .unwrap_or_default()
            );
        }
        let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut command = self
            .server_command(index)
            .map_err(|e| failure(format!("{e:#}")))?;
        let child = command
            .spawn()
            .map_err(|e| failure(format!("cannot start {}: {e}", self.config.bin.display())))?;
        let node = &mut self.nodes[index];
        node.child = Some(child);
        node.paused = false;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let output = read_from(&log_path, offset);
            if output.contains("serving raft") {
                // store.meta is written before the store serves.
                let node = &mut self.nodes[index];
                node.store_id = read_store_id(&node.data_dir);
                return Ok(());
            }
            let node = &mut self.nodes[index];
            let exited = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                node.child = None;
                return Err(StartFailure {
                    status: exit_text(status),
                    output: read_from(&log_path, offset),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartFailure {
                    status: format!("did not report serving within {START_TIMEOUT:?}"),
                    output,
                });
            }
        }
    }

    /// `kill -9`, and reaps it.
    pub async fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        node.paused = false;
    }

    /// SIGTERM (the server hands leadership off), then `kill -9` if it has not stopped.
    pub async fn stop(&mut self, index: usize) {
        self.resume(index);
        let node = &mut self.nodes[index];
        let Some(mut child) = node.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let (Some(pid), false) = (node.pid(), node.paused) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            node.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let (Some(pid), true) = (node.pid(), node.paused) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        node.paused = false;
    }

    /// Notices processes that exited without being asked to (each is a finding: a server
    /// must not die on its own).
    pub fn reap_exits(&mut self) -> Vec<UnexpectedExit> {
        let mut found = Vec::new();
        for node in &mut self.nodes {
            let exited = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                node.child = None;
                node.paused = false;
                found.push(UnexpectedExit {
                    name: node.name.clone(),
                    status: exit_text(status),
                    log_tail: tail(&node.log_path, 4000),
                });
            }
        }
        for exit in &found {
            self.journal.note(format!(
                "FINDING: {} exited on its own ({}); end of its log:\n{}",
                exit.name, exit.status, exit.log_tail
            ));
        }
        self.unexpected_exits.extend(found.iter().cloned());
        found
    }

    /// Connects the status client (once the first members serve).
    pub async fn connect_admin(&mut self) -> anyhow::Result<()> {
        let options = ClientOptions {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            batching: false,
            ..ClientOptions::default()
        };
        let client = KvClient::connect(self.member_addresses(), options)
            .await
            .map_err(|e| anyhow!("cannot reach the cluster: {e}"))?;
        self.admin_client = Some(client);
        Ok(())
    }

    /// Every responsive node's report of its regions, queried concurrently.
    pub async fn reports(&self) -> Vec<(usize, flotilla_kv::service::proto::RegionsReply)> {
        let Some(client) = &self.admin_client else {
            return Vec::new();
        };
        let asks: Vec<_> = self
            .responsive()
            .into_iter()
            .map(|index| {
                let client = client.clone();
                let address = self.nodes[index].address().to_string();
                tokio::spawn(async move { (index, client.regions_of(&address).await) })
            })
            .collect();
        let mut replies = Vec::new();
        for ask in asks {
            if let Ok((index, Ok(reply))) = ask.await {
                replies.push((index, reply));
            }
        }
        replies
    }

    /// Asks node `index` to split `region` at `key` (empty: at its middle key by size).
    /// Answers the child's id and first key.
    pub async fn split_region(
        &self,
        index: usize,
        region: u64,
        key: bytes::Bytes,
    ) -> anyhow::Result<(u64, bytes::Bytes)> {
        let client = self
            .admin_client
            .as_ref()
            .ok_or_else(|| anyhow!("no admin client"))?;
        let reply = client
            .split_region(self.nodes[index].address(), region, key)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let child = reply.child.unwrap_or_default();
        Ok((child.id, child.start))
    }

    /// The cluster id the store at node `index` reports (0 while it belongs to none).
    pub async fn cluster_of(&self, index: usize) -> Option<u64> {
        let client = self.admin_client.as_ref()?;
        client
            .regions_of(self.nodes[index].address())
            .await
            .ok()
            .map(|reply| reply.cluster)
    }

    /// Per region: the leader with the highest term any node reports, and the region's
    /// voters as that leader reports them — by store id (an address says where a store is,
    /// not which one: a wiped store comes back at its old address as another store) and
    /// by address.
    pub async fn leaders(&self) -> BTreeMap<u64, LeaderView> {
        let mut best: BTreeMap<u64, (u64, LeaderView)> = BTreeMap::new();
        for (index, reply) in self.reports().await {
            for info in reply.regions.iter().filter(|i| i.role == "leader") {
                if best.get(&info.id).is_none_or(|(term, _)| info.term > *term) {
                    let view = LeaderView {
                        index,
                        peer_ids: info.peer_ids.clone(),
                        peers: info.peers.clone(),
                        learner_ids: info.learner_ids.clone(),
                        start: info.start.clone(),
                        end: info.end.clone(),
                    };
                    best.insert(info.id, (info.term, view));
                }
            }
        }
        best.into_iter().map(|(id, (_, view))| (id, view)).collect()
    }

    /// The node leading the most regions.
    pub async fn leader(&self) -> Option<usize> {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for view in self.leaders().await.into_values() {
            *counts.entry(view.index).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(index, count)| (*count, usize::MAX - index))
            .map(|(i, _)| i)
    }

    /// Waits until every region has a leader; returns how long it took.
    pub async fn wait_for_leaders(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let leaders = self.leaders().await;
            if leaders.len() == self.config.regions as usize {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!(
                    "only {} of {} regions have a leader after {within:?}",
                    leaders.len(),
                    self.config.regions
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `flotilla admin --json OP ARGS` against the responsive members; the JSON
    /// answer on success.
    pub async fn admin(&self, op: &[&str]) -> anyhow::Result<Value> {
        let endpoints: Vec<String> = self
            .responsive()
            .into_iter()
            .filter(|i| !self.nodes[*i].retired)
            .map(|i| self.nodes[i].address().to_string())
            .collect();
        if endpoints.is_empty() {
            bail!("no responsive store to send `admin {}` to", op.join(" "));
        }
        let mut command = Command::new(&self.config.bin);
        command
            .arg("admin")
            .args(["--endpoints", &endpoints.join(",")])
            .args(["--json", "--timeout-ms", "15000"])
            .args(op)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(ADMIN_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "`admin {}` did not finish within {ADMIN_TIMEOUT:?}",
                    op.join(" ")
                )
            })?
            .with_context(|| format!("cannot run {}", self.config.bin.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let answer: Value = stdout
            .lines()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                anyhow!(
                    "`admin {}` printed no JSON ({}): {} {}",
                    op.join(" "),
                    exit_text(output.status),
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })?;
        if answer["ok"].as_bool() == Some(true) {
            Ok(answer)
        } else {
            bail!(
                "`admin {}` failed: {} ({}{})",
                op.join(" "),
                answer["message"].as_str().unwrap_or("?"),
                answer["error"].as_str().unwrap_or("?"),
                if answer["indeterminate"].as_bool() == Some(true) {
                    ", outcome unknown"
                } else {
                    ""
                }
            )
        }
    }

    /// Damages the node's raft log while it is down: cuts its tail or flips bytes. Returns
    /// what was done.
    pub fn damage_log(&self, index: usize, rng: &mut Rng) -> anyhow::Result<String> {
        let node = &self.nodes[index];
        assert!(!node.is_up(), "damage_log on {} while it runs", node.name);
        let dir = node.data_dir.join("raft").join("log");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        const HEADER: u64 = 20;
        segments.retain(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > HEADER));
        let Some(last) = segments.last().cloned() else {
            bail!(
                "{} has no log segment with records to damage",
                dir.display()
            );
        };
        if rng.chance(0.5) {
            let len = std::fs::metadata(&last)?.len();
            let cut = 1 + rng.below((len - HEADER).min(8192));
            let file = std::fs::OpenOptions::new().write(true).open(&last)?;
            file.set_len(len - cut)?;
            file.sync_all()?;
            Ok(format!(
                "cut the last {cut} bytes of {} ({len} bytes)",
                last.display()
            ))
        } else {
            let target = segments[rng.index(segments.len())].clone();
            let len = std::fs::metadata(&target)?.len();
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&target)?;
            let flips = 1 + rng.below(3);
            let mut offsets = Vec::new();
            for _ in 0..flips {
                let offset = HEADER + rng.below(len - HEADER);
                let mut byte = [0u8; 1];
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(&mut byte)?;
                byte[0] ^= 1 + rng.below(255) as u8;
                file.seek(SeekFrom::Start(offset))?;
                file.write_all(&byte)?;
                offsets.push(offset.to_string());
            }
            file.sync_all()?;
            Ok(format!(
                "flipped bytes at offsets {} of {} ({len} bytes)",
                offsets.join(","),
                target.display()
            ))
        }
    }

    /// Empties the node's data directory (it must be down). Its command line stays: started
    /// again with its `--peers`, it joins the cluster as a new store (a new id) that no
    /// region counts on; the PD replaces its old id's replicas (see `pd.rs`).
    pub fn wipe(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        assert!(!node.is_up(), "wipe of {} while it runs", node.name);
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)
                .with_context(|| format!("cannot remove {}", node.data_dir.display()))?;
        }
        node.store_id = None;
        Ok(())
    }

    /// Makes the node's `--peers` fit a start on an empty data dir: the server refuses a
    /// list that does not name its own address, which a moved store's first list may not;
    /// its address is then added, as an operator would (the rest stays as it was, stale
    /// entries included). Returns a note when the list changed.
    pub fn fit_bootstrap_for_empty_start(&mut self, index: usize) -> Option<String> {
        let own = self.nodes[index].address().to_string();
        let list = self.nodes[index].bootstrap.clone()?;
        if list.split(',').any(|p| p.trim() == own) {
            return None;
        }
        let peers = format!("{list},{own}");
        let note = format!(
            "{}'s --peers {list} do not name its address: started with --peers {peers}",
            self.nodes[index].name
        );
        self.nodes[index].bootstrap = Some(peers);
        Some(note)
    }

    /// Whether the node's `--peers` name a running store other than itself (an empty store
    /// joins the cluster through one; otherwise it waits, and is added by `add-peer`).
    pub fn bootstrap_names_a_running_store(&self, index: usize) -> bool {
        let Some(list) = &self.nodes[index].bootstrap else {
            return false;
        };
        list.split(',').map(str::trim).any(|p| {
            self.active()
                .into_iter()
                .any(|i| i != index && self.nodes[i].is_up() && self.nodes[i].address() == p)
        })
    }

    /// Stops every process (SIGKILL: the histories are already recorded) and removes the
    /// network.
    pub async fn teardown(&mut self) {
        for index in 0..self.nodes.len() {
            self.resume(index);
            self.kill(index).await;
        }
        self.network.teardown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_id_is_read_from_store_meta() {
        let dir = std::env::temp_dir().join(format!("flotilla-chaos-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_store_id(&dir), None);
        std::fs::write(
            dir.join("store.meta"),
            "flotilla-store 2\nstore 3f2a00000000c0c1\ncluster 00000000000000aa\nbootstrap -\ncrc 0\n",
        )
        .unwrap();
        assert_eq!(read_store_id(&dir).as_deref(), Some("3f2a00000000c0c1"));
        std::fs::write(dir.join("store.meta"), "flotilla-store 2\nstore nothex\n").unwrap();
        assert_eq!(read_store_id(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
