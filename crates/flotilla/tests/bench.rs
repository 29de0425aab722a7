//! End-to-end test of `flotilla bench` against real server processes: the `--json` contract
//! scripts depend on (one object with `ops_per_sec`, `p50_ms`, `p99_ms`, `p999_ms`,
//! `max_ms`, `errors`), an op-count run of every workload, and the refusals.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

struct Cluster {
    dir: PathBuf,
    endpoints: String,
    children: Vec<Child>,
}

impl Cluster {
    fn start(regions: u32) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-bench-test-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let addresses: Vec<String> = (0..3)
            .map(|_| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
                listener.local_addr().expect("local address").to_string()
            })
            .collect();
        let endpoints = addresses.join(",");
        let children = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                Command::new(BIN)
                    .args(["server", "--addr", address, "--peers", &endpoints])
                    .arg("--data-dir")
                    .arg(dir.join(i.to_string()))
                    .args(["--regions", &regions.to_string(), "--engine", "memory"])
                    .args(["--tick-ms", "50", "--election-timeout-ms", "500"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start flotilla server")
            })
            .collect();
        Cluster {
            dir,
            endpoints,
            children,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `flotilla bench ARGS --json`: (exit code, the one JSON object on stdout).
fn bench(args: &[&str]) -> (i32, Value) {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stdout for {args:?}, got {stdout:?} (stderr {})",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    (output.status.code().unwrap_or(-1), value)
}

fn number(value: &Value, field: &str) -> f64 {
    value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {value}"))
}

#[test]
fn every_workload_reports_the_json_contract() {
    let cluster = Cluster::start(3);
    for (workload, read, reads_expected) in [
        ("write", "index", false),
        ("mix", "index", true),
        ("read", "lease", true),
    ] {
        let (code, report) = bench(&[
            "--endpoints",
            &cluster.endpoints,
            "--workload",
            workload,
            "--read",
            read,
            "--clients",
            "8",
            "--ops",
            "400",
            "--warmup",
            "0",
            "--keys",
            "200",
            "--distribution",
            "zipfian",
        ]);
        assert_eq!(code, 0, "{workload}: {report}");
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["workload"], workload);
        assert_eq!(report["read"], read);
        assert_eq!(report["clients"], 8);
        let ops = number(&report, "ops");
        assert!(
            ops >= 400.0,
            "{workload}: only {ops} ops measured: {report}"
        );
        assert_eq!(
            number(&report, "reads") + number(&report, "writes"),
            ops,
            "{report}"
        );
        assert_eq!(number(&report, "reads") > 0.0, reads_expected, "{report}");
        assert!(number(&report, "writes") > 0.0, "{report}");
        assert_eq!(number(&report, "errors"), 0.0, "{report}");
        assert_eq!(number(&report, "preload_failures"), 0.0, "{report}");
        assert!(number(&report, "ops_per_sec") > 0.0, "{report}");
        let (p50, p99, p999, max) = (
            number(&report, "p50_ms"),
            number(&report, "p99_ms"),
            number(&report, "p999_ms"),
            number(&report, "max_ms"),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "percentiles out of order: {report}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_and_a_build_without_etcd_says_how_to_get_it() {
    for (args, named) in [
        (
            vec!["--endpoints", "127.0.0.1:9", "--clients", "0"],
            "--clients",
        ),
        (
            vec!["--endpoints", "127.0.0.1:9", "--workload", "scan"],
            "scan",
        ),
        (
            vec!["--endpoints", "127.0.0.1:9", "--read", "follower"],
            "--read",
        ),
        (
            vec!["--endpoints", "127.0.0.1:9", "--target", "zk"],
            "--target",
        ),
        (
            vec!["--endpoints", "127.0.0.1:9", "--distribution", "pareto"],
            "pareto",
        ),
        (
            vec!["--endpoints", "127.0.0.1:9", "--value-size", "2000000"],
            "--value-size",
        ),
        (vec!["--workload", "write"], "--endpoints"),
    ] {
        let (code, report) = bench(&args);
        assert_eq!(code, 2, "{args:?}: {report}");
        assert_eq!(report["ok"], false);
        assert_eq!(report["error"], "Usage");
        let message = report["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{args:?}: {message}");
    }
    if !cfg!(feature = "etcd") {
        let (code, report) = bench(&["--target", "etcd", "--endpoints", "127.0.0.1:9"]);
        assert_eq!(code, 1, "{report}");
        assert_eq!(report["error"], "Unsupported");
        let message = report["message"].as_str().unwrap_or_default();
        assert!(message.contains("--features etcd"), "{message}");
    }
}
