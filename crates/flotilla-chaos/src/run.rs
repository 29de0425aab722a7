//! One run: start a cluster, run the workload while the nemeses cycle fault / heal, heal
//! everything, read the final state, stop the cluster, check the histories, and keep the
//! run's directory (histories, journal, server logs, data) when anything failed.
//!
//! Owns: the run's timeline and its result. Must never: call a run passed when a checker
//! could not decide, or delete the evidence of a failing run.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_kv::client::KvClient;
use flotilla_linearizability::Checker;

use crate::checker::{self, quantile};
use crate::cluster::{Cluster, Journal, ServerConfig};
use crate::history::{self, Outcome, RegisterEvent, SetRead};
use crate::nemesis::{self, Nemesis, NemesisConfig};
use crate::net::Network;
use crate::pd;
use crate::rng::Rng;
use crate::workload::{self, Shared, WorkloadConfig};

/// How long the cluster has to elect leaders at the start, and to recover after the last
/// heal before the final reads.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final heal waits for the PD to converge, beyond `max-store-down-time`
/// (generous: a replacement the last cycle started may still run, on two cores).
const FINAL_CONVERGE_AFTER_DOWN: Duration = Duration::from_secs(90);
/// Wait after the workload stops, so that requests the servers still hold (their request
/// timeout is 5 s) end before the final reads.
const QUIESCE: Duration = Duration::from_secs(6);
/// Findings printed per kind (all are in the run's report file).
const SHOWN_MAX: usize = 10;

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The nemeses selected.
    pub nemeses: Vec<Nemesis>,
    /// Cluster size.
    pub nodes: usize,
    /// How long the workload and the nemeses run.
    pub time_limit: Duration,
    /// The seed of every choice.
    pub seed: u64,
    /// The servers.
    pub server: ServerConfig,
    /// The clients.
    pub workload: WorkloadConfig,
    /// Nemesis settings.
    pub nemesis: NemesisConfig,
    /// Healthy time before each fault.
    pub interval: Duration,
    /// The longest a fault lasts (each lasts 20% to 100% of it).
    pub fault_duration: Duration,
    /// Force loopback (no namespaces).
    pub loopback: bool,
    /// The run's directory.
    pub dir: PathBuf,
    /// Keep the directory even when the run passed.
    pub keep: bool,
    /// The linearizability checker's budget per key.
    pub checker_states: u64,
    /// Print only the result line.
    pub quiet: bool,
}

/// What one run found.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// The nemeses that ran.
    pub nemeses: String,
    /// Cluster size.
    pub nodes: usize,
    /// Seconds of workload.
    pub seconds: u64,
    /// The seed.
    pub seed: u64,
    /// Operations recorded (workload, probes, final reads).
    pub ops: usize,
    /// Operations whose outcome is unknown.
    pub indeterminate: usize,
    /// Keys not linearizable, set anomalies, servers that died on their own.
    pub violations: usize,
    /// Keys the checker could not decide, stores never read, a cluster that did not recover.
    pub unknown: usize,
    /// Acknowledged writes lost.
    pub lost: usize,
    /// Fault cycles.
    pub faults: usize,
    /// Recovery time of each heal (ms).
    pub recoveries_ms: Vec<u64>,
    /// The run's directory when kept.
    pub kept: Option<PathBuf>,
    /// "namespaces" or why loopback.
    pub network: String,
}

impl RunResult {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.violations == 0 && self.unknown == 0 && self.lost == 0
    }
}

/// Everything the checks say, for the report file and the output.
#[derive(Default)]
struct Findings {
    lines: Vec<String>,
}

impl Findings {
    fn section(&mut self, title: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.lines.push(format!("{title} ({}):", items.len()));
        self.lines.extend(items.iter().map(|i| format!("  {i}")));
    }

    fn print(&self) {
        let mut shown = 0;
        for line in &self.lines {
            if line.starts_with("  ") {
                shown += 1;
                if shown > SHOWN_MAX {
                    continue;
                }
            } else {
                if shown > SHOWN_MAX {
                    println!("    ... {} more in the report", shown - SHOWN_MAX);
                }
                shown = 0;
            }
            println!("    {line}");
        }
        if shown > SHOWN_MAX {
            println!("    ... {} more in the report", shown - SHOWN_MAX);
        }
    }
}

/// Runs one test.
pub async fn run(config: RunConfig) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("cannot create {}", config.dir.display()))?;
    let started = Instant::now();
    let journal = Arc::new(Journal::new(started, config.quiet));
    let (network, fallback) = Network::create(config.loopback).await;
    let mut nemeses = config.nemeses.clone();
    let network_name = match &fallback {
        None => "namespaces".to_string(),
        Some(why) => {
            let skipped: Vec<Nemesis> = nemeses
                .iter()
                .copied()
                .filter(|n| n.needs_network())
                .collect();
            nemeses.retain(|n| !n.needs_network());
            println!(
                "  network namespaces unavailable ({why}): running on loopback{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(", without {}", Nemesis::list_name(&skipped))
                }
            );
            format!("loopback ({why})")
        }
    };
    let mut cluster = Cluster::new(
        config.server.clone(),
        config.dir.clone(),
        network,
        journal.clone(),
    );
    if nemeses.contains(&Nemesis::Clock) && cluster.faketime.is_none() {
        println!(
            "  libfaketime not found (apt-get install faketime): running without the clock nemesis"
        );
        nemeses.retain(|n| *n != Nemesis::Clock);
    }
    let outcome = drive(&config, &nemeses, &mut cluster, &journal).await;
    cluster.teardown().await;
    let (shared, driven) = outcome?;
    let mut result = check_and_report(&config, &nemeses, &cluster, &journal, &shared, driven)?;
    result.network = network_name;
    Ok(result)
}

/// What the timeline produced besides the histories.
struct Driven {
    faults: usize,
    /// From the start of each fault that restarted servers to its recovery, µs since the
    /// run started (`crate::leases::check`).
    restarts: Vec<(u64, u64)>,
    recoveries_ms: Vec<u64>,
    liveness: Vec<String>,
    set_reads: Vec<SetRead>,
    unread_keys: Vec<u64>,
    workload_seconds: u64,
}

async fn drive(
    config: &RunConfig,
    nemeses: &[Nemesis],
    cluster: &mut Cluster,
    journal: &Arc<Journal>,
) -> anyhow::Result<(Arc<Shared>, Driven)> {
    let mut rng = Rng::new(config.seed);
    start_cluster(config, cluster, journal).await?;
    let shared = Shared::new(journal.clone(), config.workload.clone());
    // The clients' endpoints are fixed for the run; the nemeses that move stores keep one of
    // them live, and the clients find moved and new stores through the stores' answers.
    cluster.client_endpoints = cluster.member_addresses();
    let mut clients = Vec::new();
    for _ in 0..config.workload.clients.div_ceil(4).max(1) {
        let client = KvClient::connect(cluster.member_addresses(), shared.client_options())
            .await
            .map_err(|e| anyhow::anyhow!("the workload client cannot connect: {e}"))?;
        clients.push(client);
    }
    let probe_client = KvClient::connect(cluster.member_addresses(), shared.client_options())
        .await
        .map_err(|e| anyhow::anyhow!("the probe client cannot connect: {e}"))?;
    let workers = shared.spawn_clients(&clients, &mut rng);

    let workload_start = Instant::now();
    let deadline = workload_start + config.time_limit;
    let mut nemesis_rng = rng.fork(0x6e65_6d65);
    let mut driven = Driven {
        faults: 0,
        restarts: Vec::new(),
        recoveries_ms: Vec::new(),
        liveness: Vec::new(),
        set_reads: Vec::new(),
        unread_keys: Vec::new(),
        workload_seconds: 0,
    };
    while !nemeses.is_empty()
        && Instant::now() + config.interval + config.fault_duration <= deadline
    {
        tokio::time::sleep(config.interval).await;
        cycle(
            config,
            nemeses,
            cluster,
            &shared,
            &probe_client,
            &mut nemesis_rng,
            &mut driven,
        )
        .await;
    }
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    driven.workload_seconds = workload_start.elapsed().as_secs();

    // Stop the workload; every operation ends within its timeout.
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = tokio::time::timeout(config.workload.op_timeout * 2, worker).await;
    }
    journal.note(format!(
        "workload stopped: {} register and {} set operations",
        shared.register.lock().map(|r| r.len()).unwrap_or(0),
        shared.set_adds.lock().map(|s| s.len()).unwrap_or(0)
    ));
    final_heal(cluster, &shared, &probe_client, &mut driven.liveness).await;
    final_reads(config, cluster, &shared, &probe_client, &mut driven).await;
    cluster.reap_exits();
    Ok((shared, driven))
}

/// Starts `config.nodes` servers as a new cluster and waits for every region's leader.
async fn start_cluster(
    config: &RunConfig,
    cluster: &mut Cluster,
    journal: &Journal,
) -> anyhow::Result<()> {
    let mut indexes = Vec::new();
    for _ in 0..config.nodes {
        indexes.push(cluster.add_node(None).await?);
    }
    let peers = indexes
        .iter()
        .map(|&i| cluster.nodes[i].address().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for &i in &indexes {
        cluster.nodes[i].bootstrap = Some(peers.clone());
        cluster.start(i, "cluster start").await.map_err(|f| {
            anyhow::anyhow!(
                "{} did not start ({}): {}",
                cluster.label(i),
                f.status,
                f.output.trim()
            )
        })?;
    }
    cluster.members = indexes;
    cluster.connect_admin().await?;
    let took = cluster.wait_for_leaders(SETTLE_TIMEOUT).await.with_context(|| {
        "the cluster elected no leaders (with namespaces, a host firewall dropping bridged traffic would do this)"
    })?;
    journal.note(format!(
        "{} servers up ({peers}); every region has a leader after {} ms",
        config.nodes,
        took.as_millis()
    ));
    Ok(())
}

/// One fault cycle: choose, apply, hold, heal, then time the recovery.
async fn cycle(
    config: &RunConfig,
    nemeses: &[Nemesis],
    cluster: &mut Cluster,
    shared: &Arc<Shared>,
    probe_client: &KvClient,
    rng: &mut Rng,
    driven: &mut Driven,
) {
    let journal = cluster.journal.clone();
    let kinds = nemesis::choose(nemeses, rng);
    let fault_us = journal.now_us();
    let applied = nemesis::apply(&kinds, cluster, rng, &config.nemesis).await;
    driven.faults += 1;
    journal.note(format!(
        "fault {}: {}",
        Nemesis::list_name(&kinds),
        applied.description.join("; ")
    ));
    // Holds vary from a fifth of the maximum to all of it: short ones end while clients
    // still wait for answers from a paused or cut-off leader (the op timeout is longer), so
    // whatever it answers when it comes back is checked, not dropped as a timeout.
    let hold = config.fault_duration.mul_f64(0.2 + 0.8 * rng.unit());
    tokio::time::sleep(hold).await;
    let heal_started = Instant::now();
    let notes = nemesis::heal(applied, cluster, shared, probe_client).await;
    let healed_ms = heal_started.elapsed().as_millis();
    match shared.probe(probe_client, SETTLE_TIMEOUT).await {
        Some(d) => {
            driven.recoveries_ms.push(d.as_millis() as u64);
            if kinds.iter().any(|k| k.restarts_servers()) {
                driven.restarts.push((fault_us, journal.now_us()));
            }
            journal.note(format!(
                "healed in {healed_ms} ms ({}); every region took a write {} ms later",
                if notes.is_empty() {
                    "nothing to note".to_string()
                } else {
                    notes.join("; ")
                },
                d.as_millis()
            ));
        }
        None => {
            let text = format!(
                "no write accepted in every region within {} s after healing {}",
                SETTLE_TIMEOUT.as_secs(),
                Nemesis::list_name(&kinds)
            );
            journal.note(format!("FINDING: {text} ({})", notes.join("; ")));
            driven.liveness.push(text);
        }
    }
    cluster.reap_exits();
}

/// Every node up, the PD converged (every region at `max-replicas` voters on running
/// stores, none on a store stopped for good, no operator in flight), requests still held
/// by the servers ended, and a write acknowledged in every region.
async fn final_heal(
    cluster: &mut Cluster,
    shared: &Arc<Shared>,
    probe_client: &KvClient,
    liveness: &mut Vec<String>,
) {
    let journal = cluster.journal.clone();
    let mut notes = Vec::new();
    nemesis::ensure_running(cluster, &mut notes).await;
    // The split-merge nemesis leaves the PD splitting (or merging) by itself; the final
    // checks read the regions as they end, so the PD stops changing them first (found by
    // a run whose final reads met a child split off a moment before, still electing).
    for (key, value) in [
        ("region-split-keys", "1000000"),
        ("split-merge-interval", "1h"),
    ] {
        if let Err(why) = cluster.admin(&["pd", "config-set", key, value]).await {
            notes.push(format!("final heal: PD {key} {value} not set: {why:#}"));
        }
    }
    let within = cluster.config.max_store_down_time + FINAL_CONVERGE_AFTER_DOWN;
    match pd::wait_converged(cluster, within).await {
        Ok(took) => notes.push(format!(
            "final heal: the PD converged after {} ms",
            took.as_millis()
        )),
        Err(why) => {
            notes.push(format!("FINDING: final heal: {why}"));
            liveness.push(format!("final heal: {why}"));
        }
    }
    for note in notes {
        journal.note(note);
    }
    tokio::time::sleep(QUIESCE).await;
    match shared.probe(probe_client, SETTLE_TIMEOUT).await {
        Some(d) => journal.note(format!(
            "final heal: every region took a write after {} ms",
            d.as_millis()
        )),
        None => {
            let text = format!(
                "after the final heal no write was accepted in every region within {} s",
                SETTLE_TIMEOUT.as_secs()
            );
            journal.note(format!("FINDING: {text}"));
            liveness.push(text);
        }
    }
}

/// Reads every register key; and each region's part of the set on every voter of the
/// region (a follower read on that store, clipped to the region's range): a store is asked
/// only for the elements of the regions it is a voter of.
async fn final_reads(
    config: &RunConfig,
    cluster: &Cluster,
    shared: &Arc<Shared>,
    probe_client: &KvClient,
    driven: &mut Driven,
) {
    driven.unread_keys = shared
        .final_register_reads(probe_client, SETTLE_TIMEOUT)
        .await;
    shared.final_lock_read(probe_client, SETTLE_TIMEOUT).await;
    shared.final_watch(probe_client, SETTLE_TIMEOUT).await;
    let mut asked = 0;
    if config.workload.workloads != workload::Workloads::Register {
        // A region split off just before may still be electing: wait for every key to
        // be covered by a led region, up to the settle timeout, before calling it a gap.
        let asked_at = Instant::now();
        let mut leaders = cluster.leaders().await;
        while crate::pd::uncovered(&leaders).is_some() && asked_at.elapsed() < SETTLE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            leaders = cluster.leaders().await;
        }
        if let Some(gap) = crate::pd::uncovered(&leaders) {
            driven.liveness.push(format!(
                "final set reads: {gap}, so the set's elements there are unread"
            ));
        }
        let mut tasks = Vec::new();
        for (&region, view) in &leaders {
            for id in &view.peer_ids {
                let range = workload::RegionRange {
                    id: region,
                    start: view.start.clone(),
                    end: view.end.clone(),
                };
                let at = cluster
                    .node_of_id(id)
                    .filter(|&i| cluster.nodes[i].is_up() && !cluster.nodes[i].retired);
                let Some(index) = at else {
                    // A voter the harness does not run: what it holds cannot be read.
                    driven.set_reads.push(SetRead {
                        store: cluster.id_label(id),
                        elements: None,
                        error: Some(format!("voter of region {region} but no running store")),
                        region: Some(region),
                        start: Some(history::key_hex(&range.start)),
                        end: Some(history::key_hex(&range.end)),
                    });
                    continue;
                };
                let address = cluster.nodes[index].address().to_string();
                let client = probe_client.clone();
                asked += 1;
                tasks.push(tokio::spawn(async move {
                    workload::read_region_on(&client, &address, &range, SETTLE_TIMEOUT).await
                }));
            }
        }
        for task in tasks {
            if let Ok(read) = task.await {
                driven.set_reads.push(read);
            }
        }
    }
    cluster.journal.note(format!(
        "final reads: {} register keys ({} unanswered), the set: {asked} reads of a region's part on one of its voters",
        shared.register_keys(),
        driven.unread_keys.len(),
    ));
}

fn check_and_report(
    config: &RunConfig,
    nemeses: &[Nemesis],
    cluster: &Cluster,
    journal: &Journal,
    shared: &Shared,
    driven: Driven,
) -> anyhow::Result<RunResult> {
    let register: Vec<RegisterEvent> = shared
        .register
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let adds = shared
        .set_adds
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let sequence_ranges = shared
        .sequence_ranges
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let sequence_unknown = shared
        .sequence_unknown
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    let checking = Instant::now();
    let register_report = checker::check_register(&register, &Checker::new(config.checker_states));
    let set_report = checker::check_set(&adds, &driven.set_reads);
    let sequence_violations = checker::check_sequences(&sequence_ranges);
    let lock_events = shared
        .lock_events
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let lock_report = crate::locks::check(&lock_events);
    let lease_events = shared
        .lease_events
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let lease_report = crate::leases::check(&lease_events, &driven.restarts);
    let watch_events = shared
        .watch_events
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let watch_report = crate::watches::check(&watch_events);
    journal.note(watch_report.summary());
    journal.note(lease_report.summary());
    journal.note(lock_report.summary());
    journal.note(format!(
        "checked {} sequence ranges acknowledged ({} unknown): {} handed out twice",
        sequence_ranges.len(),
        sequence_unknown,
        sequence_violations.len()
    ));
    journal.note(format!(
        "checked {} register keys and {} set adds ({} acknowledged) in {} ms",
        register_report.keys,
        set_report.adds,
        set_report.acked,
        checking.elapsed().as_millis()
    ));

    let indeterminate = register
        .iter()
        .filter(|e| e.outcome == Outcome::Unknown)
        .count()
        + adds
            .iter()
            .filter(|a| a.outcome == Outcome::Unknown)
            .count()
        + sequence_unknown
        + watch_report.unknown;
    let mut findings = describe_findings(config, cluster, &driven, &register_report, &set_report);
    findings.section("sequence values handed out twice", &sequence_violations);
    findings.section(
        "lock tokens or fenced writes out of order",
        &lock_report.violations,
    );
    findings.section("lost acknowledged fenced writes", &lock_report.lost);
    findings.section(
        "lease reads out of the lease's bounds",
        &lease_report.violations,
    );
    findings.section(
        "watch events repeated, invented or out of order",
        &watch_report.violations,
    );
    findings.section(
        "acknowledged writes a resumed watch never delivered",
        &watch_report.lost,
    );
    let lock_unread: Vec<String> = if lock_report.final_read || lock_report.writes_acked == 0 {
        Vec::new()
    } else {
        vec!["the lock workload's register: no final read answered".into()]
    };
    findings.section("final reads that never answered (locks)", &lock_unread);

    let violations = register_report.violations.len()
        + set_report.violations()
        + sequence_violations.len()
        + lock_report.violations.len()
        + lease_report.violations.len()
        + watch_report.violations.len()
        + cluster.unexpected_exits.len();
    let unknown = register_report.unknown.len()
        + driven.unread_keys.len()
        + set_report.unread.len()
        + usize::from(!set_report.uncovered.is_empty())
        + driven.liveness.len()
        + lock_unread.len();
    let lost = register_report.lost.len()
        + set_report.lost_count()
        + lock_report.lost.len()
        + watch_report.lost.len();
    let mut result = RunResult {
        nemeses: Nemesis::list_name(nemeses),
        nodes: config.nodes,
        seconds: driven.workload_seconds,
        seed: config.seed,
        ops: register.len()
            + adds.len()
            + sequence_ranges.len()
            + sequence_unknown
            + lock_events.len()
            + lease_events.len()
            + watch_events.len(),
        indeterminate,
        violations,
        unknown,
        lost,
        faults: driven.faults,
        recoveries_ms: driven.recoveries_ms,
        kept: None,
        network: String::new(),
    };

    // Keep the evidence of a failing run.
    history::write_jsonl(&config.dir.join("history-register.jsonl"), &register)?;
    history::write_jsonl(&config.dir.join("history-set.jsonl"), &adds)?;
    history::write_jsonl(&config.dir.join("final-set-reads.jsonl"), &driven.set_reads)?;
    history::write_jsonl(&config.dir.join("history-lock.jsonl"), &lock_events)?;
    history::write_jsonl(&config.dir.join("history-watch.jsonl"), &watch_events)?;
    let mut report = journal.lines();
    report.push(String::new());
    report.push(result_line(&result));
    report.extend(findings.lines.iter().cloned());
    std::fs::write(config.dir.join("report.txt"), report.join("\n") + "\n")?;
    if !findings.lines.is_empty() {
        findings.print();
    }
    if result.passed() && !config.keep {
        let _ = std::fs::remove_dir_all(&config.dir);
    } else {
        result.kept = Some(config.dir.clone());
    }
    Ok(result)
}

/// Every finding of a run, by kind, in words.
fn describe_findings(
    config: &RunConfig,
    cluster: &Cluster,
    driven: &Driven,
    register_report: &checker::RegisterReport,
    set_report: &checker::SetReport,
) -> Findings {
    let mut findings = Findings::default();
    let violations_text: Vec<String> = register_report
        .violations
        .iter()
        .map(|(key, why)| format!("key {key}: {why}"))
        .collect();
    findings.section("register keys not linearizable", &violations_text);
    findings.section("stale reads", &register_report.stale_reads);
    findings.section("lost acknowledged register writes", &register_report.lost);
    let lost_set: Vec<String> = set_report
        .lost
        .iter()
        .map(|(e, stores)| format!("element {e} (acknowledged) missing on {}", stores.join(",")))
        .collect();
    findings.section("lost acknowledged set adds", &lost_set);
    let unexpected: Vec<String> = set_report
        .unexpected
        .iter()
        .map(|(e, stores)| {
            format!(
                "element {e} present on {} but never added, or its add failed",
                stores.join(",")
            )
        })
        .collect();
    findings.section("unexpected set elements", &unexpected);
    let disagreements: Vec<String> = set_report
        .disagreements
        .iter()
        .map(|e| format!("element {e} (unknown add) on some stores only"))
        .collect();
    findings.section("stores disagreeing after healing", &disagreements);
    let crashes: Vec<String> = cluster
        .unexpected_exits
        .iter()
        .map(|x| {
            format!(
                "{} ({}): {}",
                x.name,
                x.status,
                x.log_tail
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        })
        .collect();
    findings.section(
        "servers that died or failed to start on their own",
        &crashes,
    );
    let unknown_keys: Vec<String> = register_report
        .unknown
        .iter()
        .map(|k| {
            format!(
                "key {k}: search out of budget ({} states)",
                config.checker_states
            )
        })
        .collect();
    findings.section("undecided keys", &unknown_keys);
    let unread: Vec<String> = driven
        .unread_keys
        .iter()
        .map(|k| format!("key {k}: no final read answered"))
        .chain(
            driven
                .set_reads
                .iter()
                .filter(|r| r.elements.is_none())
                .map(|r| {
                    format!(
                        "store {}: the final set read never answered ({})",
                        r.label(),
                        r.error.as_deref().unwrap_or("?")
                    )
                }),
        )
        .collect();
    findings.section("final reads that never answered", &unread);
    if !set_report.uncovered.is_empty() {
        findings.section(
            "acknowledged set elements no final read covered (their region was not read)",
            &[format!(
                "{} elements, first {:?}",
                set_report.uncovered.len(),
                &set_report.uncovered[..set_report.uncovered.len().min(10)]
            )],
        );
    }
    findings.section("liveness", &driven.liveness);
    findings
}

/// One run's result as a line.
pub fn result_line(r: &RunResult) -> String {
    format!(
        "{} nodes={} {} s seed={}: ops={} indeterminate={} violations={} unknown={} lost={} faults={} recovery p50={} max={}",
        r.nemeses,
        r.nodes,
        r.seconds,
        r.seed,
        r.ops,
        r.indeterminate,
        r.violations,
        r.unknown,
        r.lost,
        r.faults,
        ms(quantile(&r.recoveries_ms, 0.5)),
        ms(r.recoveries_ms.iter().max().copied()),
    )
}

/// `1234 ms` or `-`.
pub fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v} ms"))
}
