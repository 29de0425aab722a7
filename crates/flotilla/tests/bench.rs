//! End-to-end test of `flotilla bench` against real server processes: the `--json` contract
//! scripts depend on (one object with `ops_per_sec`, `p50_ms`, `p99_ms`, `p999_ms`,
//! `max_ms`, `errors`), an op-count run of every workload, and the refusals.

use serde_json::Value;

mod support;
use support::{json, three_nodes};

/// Runs `flotilla bench ARGS --json`: (exit code, the one JSON object on stdout).
fn bench(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    json(&all)
}

fn number(value: &Value, field: &str) -> f64 {
    value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {value}"))
}

#[test]
fn every_workload_reports_the_json_contract() {
    let cluster = three_nodes("bench", 3);
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
