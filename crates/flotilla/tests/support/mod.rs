//! Helpers shared by the `flotilla` binary's process tests: free loopback ports, temporary
//! data dirs, `flotilla server` processes killed on drop, and the `--json` contract of
//! `flotilla kv` and `flotilla admin` (exactly one JSON object on stdout, an exit status).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
/// Fast timeouts for tests: 50 ms ticks, 500 ms election timeout.
pub const TIMING: [&str; 4] = ["--tick-ms", "50", "--election-timeout-ms", "500"];

/// `n` distinct free loopback addresses (see [`free_address`]).
pub fn free_addresses(n: usize) -> Vec<String> {
    (0..n).map(|_| free_address()).collect()
}

/// A free loopback address, never one this test binary handed out before: the tests run
/// in parallel, and a port freed by one may be given to another before the first one's
/// server binds it (a cluster test once got two stores on one address).
pub fn free_address() -> String {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let address = listener.local_addr().expect("local address");
        if handed.insert(address.port()) {
            return address.to_string();
        }
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-cli-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `flotilla server`; killed when dropped.
pub struct Server {
    pub address: String,
    pub child: Option<Child>,
}

impl Server {
    pub fn start(address: &str, peers: Option<&str>, data_dir: &Path, regions: u32) -> Server {
        Server::start_with(address, peers, data_dir, regions, &[])
    }

    /// [`Server::start`] with more flags (e.g. `--quota-bytes`).
    pub fn start_with(
        address: &str,
        peers: Option<&str>,
        data_dir: &Path,
        regions: u32,
        extra: &[&str],
    ) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(["server", "--addr", address])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--regions", &regions.to_string(), "--engine", "fjall"])
            .args(TIMING)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // FLOTILLA_TEST_LOGS=DIR keeps every server's log there (named by its address).
        if let Some(dir) = std::env::var_os("FLOTILLA_TEST_LOGS") {
            let name = address.replace(':', "_");
            if let Ok(file) = std::fs::File::create(Path::new(&dir).join(format!("{name}.log"))) {
                command.stderr(file);
            }
        }
        if let Some(peers) = peers {
            command.args(["--peers", peers]);
        }
        let child = command.spawn().expect("start flotilla server");
        Server {
            address: address.to_string(),
            child: Some(child),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla")
}

/// Runs a `--json` command: (exit code, the one JSON object it printed).
pub fn json(args: &[&str]) -> (i32, Value) {
    let output = run(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stdout for {args:?}, got {stdout:?} (stderr {})",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    assert!(value.is_object(), "{value}");
    (output.status.code().unwrap_or(-1), value)
}

pub fn kv(endpoints: &str, op: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "kv",
        "--endpoints",
        endpoints,
        "--json",
        "--timeout-ms",
        "3000",
    ];
    args.extend_from_slice(op);
    json(&args)
}

pub fn admin(endpoints: &str, op: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "admin",
        "--endpoints",
        endpoints,
        "--json",
        "--timeout-ms",
        "10000",
    ];
    args.extend_from_slice(op);
    json(&args)
}

/// Waits until every region has a leader; returns the status.
pub fn wait_for_leaders(endpoints: &str, regions: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, status) = admin(endpoints, &["status"]);
        if code == 0 {
            let list = status["regions"].as_array().cloned().unwrap_or_default();
            if list.len() == regions && list.iter().all(|r| r["leader"].is_string()) {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leaders within 30 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn put_until_ok(endpoints: &str, key: &str, value: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (code, answer) = kv(endpoints, &["put", key, value]);
        if code == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "put {key} kept failing for {within:?}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct ThreeNodes {
    pub _dir: TempDir,
    pub dir: PathBuf,
    pub servers: Vec<Server>,
    pub endpoints: String,
}

impl ThreeNodes {
    /// Kills (SIGKILL) the store listening at `address`.
    pub fn kill_at(&mut self, address: &str) {
        self.servers
            .iter_mut()
            .find(|s| s.address == address)
            .unwrap_or_else(|| panic!("no store of this cluster at {address}"))
            .kill();
    }
}

pub fn three_nodes(name: &str, regions: u32) -> ThreeNodes {
    let dir = TempDir::new(name);
    let addresses = free_addresses(3);
    let peers = addresses.join(",");
    let servers = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| Server::start(a, Some(&peers), &dir.0.join(format!("s{i}")), regions))
        .collect();
    // Bootstrap runs in the background: wait until every store hosts every region too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = wait_for_leaders(&peers, regions as usize);
        let stores = status["stores"].as_array().cloned().unwrap_or_default();
        let settled = stores.len() == 3
            && stores
                .iter()
                .all(|s| s["reachable"] == true && s["regions"] == u64::from(regions));
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stores not settled in 30 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ThreeNodes {
        dir: dir.0.clone(),
        _dir: dir,
        servers,
        endpoints: peers,
    }
}

/// `GET /metrics` of a store over HTTP/1.1 (the whole answer, headers included): the
/// store's text, the same size whatever its number of regions.
pub fn metrics(address: &str) -> String {
    http_get(address, "/metrics")
}

/// `GET target` (a path and query, e.g. `/metrics?group=1`) of a store over HTTP/1.1 (the
/// whole answer, status line and headers included).
pub fn http_get(address: &str, target: &str) -> String {
    let mut tcp = TcpStream::connect(address).expect("connect for an HTTP GET");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!("GET {target} HTTP/1.1\r\nHost: flotilla\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).expect("request");
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    text
}

/// The value of the sample that starts `line_start` in a metrics text.
pub fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_start} in:\n{text}"))
}
