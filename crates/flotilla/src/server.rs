//! `flotilla server`: one store of a cluster, until SIGTERM or Ctrl-C (then every region it
//! leads hands leadership off before it stops).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use flotilla_kv::server::StoreServer;
use flotilla_kv::store::{EngineKind, StoreOptions};

use crate::config::{self, FileConfig};
use crate::output::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// `flotilla server` flags.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on, HOST:PORT, serving peers, clients and administration. It may
    /// change from one start to the next: the store is its data dir (a store id made with
    /// it), not its address.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Address the other stores and clients reach this store at, HOST:PORT (host names
    /// allowed), when it differs from --addr (behind a Docker bridge, in a pod)
    /// [default: --addr].
    #[arg(long, value_name = "HOST:PORT")]
    advertise_addr: Option<String>,
    /// Data directory (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Only create the data dir of a new store (or find the one there) and print its store
    /// id, then exit: what a certificate naming the store (URI SAN flotilla://store/ID)
    /// needs before the store first starts. Needs only --data-dir.
    #[arg(long)]
    init: bool,
    /// Addresses of the initial members of a new cluster, this one's advertised address
    /// included (the same list on each). A store in no cluster asks them: it bootstraps a
    /// cluster with them only once every one answered that it is empty, else it joins
    /// their cluster as a new, empty store (add it with `admin add-peer`). Without it, an
    /// empty store waits to be added.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Seed a new cluster from a backup (`flotilla admin backup DIR`): this store, on a new
    /// data dir and without other --peers, becomes the one member of a new cluster holding
    /// every region of the backup (checked in full first; a backup that does not verify
    /// changes nothing). Start the other stores with --peers naming this one: the placement
    /// driver replicates every region onto them.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// Static regions a new cluster splits the key space into [default: 1].
    #[arg(long, value_name = "N")]
    regions: Option<u32>,
    /// Storage engine: memory or fjall [default: fjall].
    #[arg(long, value_name = "ENGINE")]
    engine: Option<String>,
    /// Raft tick in milliseconds [default: 100].
    #[arg(long, value_name = "MS")]
    tick_ms: Option<u64>,
    /// Election timeout in milliseconds, a multiple of the tick [default: 1000].
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u64>,
    /// Seconds between automatic snapshots of each region [default: 3600].
    #[arg(long, value_name = "S")]
    snapshot_interval_s: Option<u64>,
    /// Most raft messages in one frame between stores, sent or accepted; every store of a
    /// cluster must use the same value (tests lower it) [default: 65536, the maximum].
    #[arg(long, value_name = "N")]
    frame_messages_max: Option<usize>,
    /// Log filter (tracing's env-filter syntax) [default: warn,flotilla=info].
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Threads serving gRPC (peers, clients, administration) [default: half the cores, at
    /// least 1]. The raft round has a thread of its own and the engine its own too.
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Size of the data directory, in bytes, past which the store refuses writes that add
    /// data (error NoSpace) while reads, deletes and compaction go on; the alarm clears
    /// once usage is back below. 0: unlimited [default: 8589934592, 8 GiB].
    #[arg(long, value_name = "BYTES")]
    quota_bytes: Option<u64>,
    /// How long watch history is kept (a watcher resumes from a token within it), and how
    /// long a region goes on recording history after its last watcher left [default:
    /// 300000, 5 minutes; at least 1000].
    #[arg(long, value_name = "MS")]
    watch_retention_ms: Option<u64>,
    /// Stores the placement driver's raft group (the meta group) starts on when this store
    /// bootstraps a cluster: the first ones by store id [default: 3].
    #[arg(long, value_name = "N")]
    pd_replicas: Option<u32>,
    /// A label of this store, `KEY=VALUE` (repeatable, e.g. `--label zone=a`): the
    /// placement driver spreads a region's replicas over distinct values.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Seeds the placement driver's `max-replicas` (voters per region) when the cluster
    /// has none set yet; `admin pd config set` changes it afterwards [default: 3].
    #[arg(long, value_name = "N")]
    max_replicas: Option<u32>,
    /// Seeds the placement driver's `max-store-down-time` (after it, a silent store's
    /// replicas are replaced), written `500ms`, `10s`, `2m` [default: 2m].
    #[arg(long, value_name = "DURATION")]
    max_store_down_time: Option<String>,
    /// How often this store sends its heartbeat to the placement driver [default: 10000].
    #[arg(long, value_name = "MS")]
    pd_heartbeat_ms: Option<u64>,
    /// CA certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This store's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// This store's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

/// What `run` needs besides the store's options.
struct Process {
    log: String,
    worker_threads: usize,
}

/// Most gRPC threads (a typo guard: more threads than this only add switching).
const WORKER_THREADS_MAX: usize = 1024;

/// Half the cores, at least 1. On a 2-core machine one gRPC thread beat two in side-by-side
/// runs (fewer cross-thread wake-ups per request: server CPU per op 10-15% lower at 1 to
/// 64 clients, the same at 256), and the round and engine threads need the other core.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn options(args: ServerArgs, file: &FileConfig) -> Result<(StoreOptions, Process), String> {
    let pd = pd_options(&args, file)?;
    let addr = args
        .addr
        .or_else(|| file.addr.clone())
        .ok_or("missing --addr HOST:PORT")?;
    let data_dir = args
        .data_dir
        .or_else(|| file.data_dir.clone())
        .ok_or("missing --data-dir DIR")?;
    let mut options = StoreOptions::new(addr, data_dir);
    options.pd_replicas = pd.replicas;
    options.labels = pd.labels;
    options.pd_settings = pd.settings;
    options.pd_heartbeat = pd.heartbeat;
    options.advertise = args.advertise_addr.or_else(|| file.advertise_addr.clone());
    options.peers = args
        .peers
        .or_else(|| file.peers.clone())
        .map(config::list)
        .filter(|p| !p.is_empty());
    options.regions = args.regions.or(file.regions).unwrap_or(1);
    options.restore = args.restore;
    if options.regions == 0 {
        return Err("--regions must be at least 1".into());
    }
    options.engine = match args.engine.clone().or_else(|| file.engine.clone()) {
        Some(name) => name
            .parse::<EngineKind>()
            .map_err(|e| format!("--engine: {e}"))?,
        None => EngineKind::Fjall,
    };
    let tick_ms = args.tick_ms.or(file.tick_ms).unwrap_or(100);
    if tick_ms == 0 || tick_ms > 10_000 {
        return Err(format!("--tick-ms {tick_ms}: must be 1 to 10000"));
    }
    let election_ms = args
        .election_timeout_ms
        .or(file.election_timeout_ms)
        .unwrap_or(tick_ms * 10);
    let ticks = election_ms / tick_ms;
    if !election_ms.is_multiple_of(tick_ms) || ticks < 3 {
        return Err(format!(
            "--election-timeout-ms {election_ms}: must be a multiple of --tick-ms {tick_ms}, at least 3 ticks"
        ));
    }
    options.tick = Duration::from_millis(tick_ms);
    options.election_timeout_ticks = ticks;
    let snapshot_s = args
        .snapshot_interval_s
        .or(file.snapshot_interval_s)
        .unwrap_or(3600);
    options.snapshot_interval_ticks = snapshot_s.saturating_mul(1000) / tick_ms;
    if let Some(messages) = args.frame_messages_max {
        let max = flotilla_node::grpc::codec::FRAME_MESSAGES_MAX;
        if messages == 0 || messages > max {
            return Err(format!(
                "--frame-messages-max {messages}: must be 1 to {max}"
            ));
        }
        options.frame_messages_max = messages;
    }
    options.quota_bytes = args
        .quota_bytes
        .or(file.quota_bytes)
        .unwrap_or(flotilla_kv::store::QUOTA_BYTES_DEFAULT);
    let retention = args
        .watch_retention_ms
        .or(file.watch_retention_ms)
        .unwrap_or(flotilla_kv::watch::RETENTION_MS_DEFAULT);
    if retention < flotilla_kv::watch::RETENTION_MS_MIN {
        return Err(format!(
            "--watch-retention-ms {retention}: must be at least {}",
            flotilla_kv::watch::RETENTION_MS_MIN
        ));
    }
    options.watch_retention = Duration::from_millis(retention);
    options.tls = config::tls(
        args.tls_ca.or_else(|| file.tls_ca.clone()),
        args.tls_cert.or_else(|| file.tls_cert.clone()),
        args.tls_key.or_else(|| file.tls_key.clone()),
    )?;
    let log = args
        .log
        .or_else(|| file.log.clone())
        .unwrap_or_else(|| "warn,flotilla=info,flotilla_kv=info".into());
    let worker_threads = args
        .worker_threads
        .or(file.worker_threads)
        .unwrap_or_else(default_worker_threads);
    if worker_threads == 0 || worker_threads > WORKER_THREADS_MAX {
        return Err(format!(
            "--worker-threads {worker_threads}: must be 1 to {WORKER_THREADS_MAX}"
        ));
    }
    Ok((
        options,
        Process {
            log,
            worker_threads,
        },
    ))
}

/// The placement driver's flags: where its group starts, this store's labels, and the
/// settings they seed (checked here as the PD checks them, so a typo stops the start).
fn pd_options(args: &ServerArgs, file: &FileConfig) -> Result<PdFlags, String> {
    let replicas = args.pd_replicas.or(file.pd_replicas).unwrap_or(3);
    if replicas == 0 || replicas > 7 {
        return Err(format!("--pd-replicas {replicas}: must be 1 to 7"));
    }
    let mut labels = std::collections::BTreeMap::new();
    let given = if args.label.is_empty() {
        file.label.clone().unwrap_or_default()
    } else {
        args.label.clone()
    };
    for label in given {
        let (key, value) = label
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty() && k.len() <= 64 && v.len() <= 64)
            .ok_or_else(|| format!("--label {label:?}: expected KEY=VALUE, each 1 to 64 bytes"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    if labels.len() > 16 {
        return Err("--label: at most 16 labels".into());
    }
    let mut seeds = Vec::new();
    if let Some(n) = args.max_replicas.or(file.max_replicas) {
        seeds.push(("max-replicas".to_string(), n.to_string()));
    }
    if let Some(d) = args
        .max_store_down_time
        .clone()
        .or_else(|| file.max_store_down_time.clone())
    {
        seeds.push(("max-store-down-time".to_string(), d));
    }
    let mut check = flotilla_pd::model::PdConfig::default();
    for (key, value) in &seeds {
        check.set(key, value).map_err(|e| format!("--{key}: {e}"))?;
    }
    let heartbeat_ms = args
        .pd_heartbeat_ms
        .or(file.pd_heartbeat_ms)
        .unwrap_or(10_000);
    if !(100..=600_000).contains(&heartbeat_ms) {
        return Err(format!(
            "--pd-heartbeat-ms {heartbeat_ms}: must be 100 to 600000"
        ));
    }
    Ok(PdFlags {
        replicas,
        labels,
        settings: seeds,
        heartbeat: Duration::from_millis(heartbeat_ms),
    })
}

/// What the placement driver's flags say (see [`pd_options`]).
struct PdFlags {
    replicas: u32,
    labels: std::collections::BTreeMap<String, String>,
    settings: Vec<(String, String)>,
    heartbeat: Duration,
}

/// Runs the server; returns the exit code.
pub fn run(args: ServerArgs, file: &FileConfig) -> i32 {
    if args.init {
        let Some(dir) = args.data_dir.clone().or_else(|| file.data_dir.clone()) else {
            eprintln!("flotilla server --init: missing --data-dir DIR");
            return EXIT_USAGE;
        };
        return match flotilla_kv::store::init(&dir) {
            Ok((id, created)) => {
                eprintln!(
                    "flotilla server --init: store {id} in {} ({})",
                    dir.display(),
                    if created { "created" } else { "already there" }
                );
                println!("{id}");
                EXIT_OK
            }
            Err(e) => {
                eprintln!("flotilla server --init: {e}");
                EXIT_FAILED
            }
        };
    }
    let (options, process) = match options(args, file) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("flotilla server: {why}");
            return EXIT_USAGE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&process.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(process.worker_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flotilla server: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    runtime.block_on(serve(options))
}

/// Whether `address` (HOST:PORT) is reachable from beyond this machine: it resolves to an
/// address that is not loopback (a wildcard such as 0.0.0.0 counts), or does not resolve.
async fn beyond_loopback(address: &str) -> bool {
    match tokio::net::lookup_host(address).await {
        Ok(mut resolved) => resolved.any(|a| !a.ip().is_loopback()),
        Err(_) => true,
    }
}

async fn serve(options: StoreOptions) -> i32 {
    let data_dir = options.data_dir.clone();
    let plain_text = options.tls.is_none();
    let has_peers = options.peers.is_some();
    let listen = options.address.clone();
    let server = match StoreServer::start(options).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("flotilla server: {e}");
            return match e {
                flotilla_kv::store::StoreError::InvalidOptions(_) => EXIT_USAGE,
                _ => EXIT_FAILED,
            };
        }
    };
    crate::trim::spawn();
    let store = server.store();
    let regions = store.regions().len();
    println!(
        "flotilla server {}: store {}, data in {} ({}), {} region{}, cluster {}",
        store.advertised_address(),
        store.id(),
        data_dir.display(),
        if store.was_fresh() {
            "fresh"
        } else {
            "recovered"
        },
        regions,
        if regions == 1 { "" } else { "s" },
        if store.cluster() == 0 && has_peers {
            "none yet: asking --peers".to_string()
        } else if store.cluster() == 0 {
            "none yet: waiting to be added".to_string()
        } else {
            format!("{:016x}", store.cluster())
        },
    );
    if plain_text && beyond_loopback(&listen).await {
        // Without TLS nothing tells a store from any other process: raft frames, admin
        // calls and writes are accepted from whoever connects.
        eprintln!(
            "flotilla server {}: WARNING: listening beyond loopback without TLS: anyone who \
             can reach this port is trusted, raft traffic and administration included; use \
             --tls-ca/--tls-cert/--tls-key or a private network",
            store.advertised_address()
        );
    }
    println!(
        "serving raft, the KV and CLI services, and GET /metrics on {}",
        store.advertised_address()
    );
    wait_for_stop().await;
    println!(
        "flotilla server {}: stopping (handing leadership off)",
        store.advertised_address()
    );
    server.shutdown(Duration::from_secs(3)).await;
    println!("flotilla server {}: stopped", store.advertised_address());
    EXIT_OK
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn parse(extra: &[&str]) -> Result<(StoreOptions, Process), String> {
        let mut argv = vec!["server", "--addr", "127.0.0.1:1", "--data-dir", "/tmp/x"];
        argv.extend_from_slice(extra);
        let wrapper = Wrapper::try_parse_from(argv).map_err(|e| e.to_string())?;
        options(wrapper.args, &FileConfig::default())
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_and_refuse_zero() {
        let (_, process) = parse(&[]).expect("defaults parse");
        assert!(process.worker_threads >= 1);
        assert!(process.worker_threads <= default_worker_threads().max(1));
        let (_, process) = parse(&["--worker-threads", "3"]).expect("3 parses");
        assert_eq!(process.worker_threads, 3);
        let error = parse(&["--worker-threads", "0"])
            .err()
            .expect("0 is refused");
        assert!(error.contains("--worker-threads"), "{error}");
        let file: FileConfig = toml::from_str("worker-threads = 2").expect("file key");
        assert_eq!(file.worker_threads, Some(2));
    }

    #[test]
    fn quota_defaults_to_8_gib_and_0_is_unlimited() {
        let (options, _) = parse(&[]).expect("defaults parse");
        assert_eq!(options.quota_bytes, 8 * 1024 * 1024 * 1024);
        let (options, _) = parse(&["--quota-bytes", "0"]).expect("0 parses");
        assert_eq!(options.quota_bytes, 0);
        let file: FileConfig = toml::from_str("quota-bytes = 1000").expect("file key");
        assert_eq!(file.quota_bytes, Some(1000));
    }

    #[test]
    fn loopback_addresses_are_told_apart_from_the_rest() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert!(!beyond_loopback("127.0.0.1:7000").await);
            assert!(!beyond_loopback("[::1]:7000").await);
            assert!(!beyond_loopback("localhost:7000").await);
            assert!(beyond_loopback("0.0.0.0:7000").await);
            assert!(beyond_loopback("192.0.2.1:7000").await);
        });
    }
}
