//! How `NodeManager::metrics_text` grows with the number of groups: three managers on
//! `LocalTransport`, groups added in two steps, the size of each manager's default text
//! measured after each step. The default text is per store: an extra group adds no series.

use std::time::{Duration, Instant};

use flotilla_node::{MetricsQuery, NodeManager};

use crate::cluster::Cluster;

/// Bytes and lines of the default text of `manager`.
fn size(manager: &NodeManager) -> (usize, usize) {
    let text = manager.metrics_text();
    (text.len(), text.lines().count())
}

/// Adds groups `from..to` on every process and waits until each knows a leader.
async fn add_groups(cluster: &mut Cluster, from: u64, to: u64) {
    for group in from..to {
        cluster.add_group(group).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for group in from..to {
        for i in 0..cluster.processes.len() {
            while cluster.node(i, group).unwrap().status().leader.is_none() {
                assert!(Instant::now() < deadline, "group {group} elected no leader");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The default text of each process at `first` and at `second` groups; answers the largest
/// growth in bytes and in lines per extra group, and prints the figures.
async fn measure(first: u64, second: u64) -> (f64, f64) {
    let mut cluster = Cluster::new(&format!("metrics-scale-{second}"), 3).await;
    add_groups(&mut cluster, 1, first + 1).await;
    let managers = |c: &Cluster| -> Vec<(usize, usize)> {
        c.processes
            .iter()
            .map(|p| size(p.manager.as_ref().unwrap()))
            .collect()
    };
    let before = managers(&cluster);
    add_groups(&mut cluster, first + 1, second + 1).await;
    let after = managers(&cluster);
    let mut growth = (0.0f64, 0.0f64);
    let extra = (second - first) as f64;
    for (i, ((b0, l0), (b1, l1))) in before.iter().zip(&after).enumerate() {
        let bytes = (*b1 as f64 - *b0 as f64) / extra;
        let lines = (*l1 as f64 - *l0 as f64) / extra;
        println!(
            "process {i}: {first} groups {b0} bytes {l0} lines; {second} groups {b1} bytes \
             {l1} lines; {bytes:.2} bytes and {lines:.3} lines per extra group"
        );
        growth = (growth.0.max(bytes), growth.1.max(lines));
    }
    let manager = cluster.processes[0].manager.as_ref().unwrap();
    let detail = manager.metrics_text_for(MetricsQuery::AllGroups).unwrap();
    let one = manager.metrics_text_for(MetricsQuery::Group(1)).unwrap();
    println!(
        "process 0: ?groups=all {} bytes {} lines; ?group=1 {} bytes {} lines",
        detail.len(),
        detail.lines().count(),
        one.len(),
        one.lines().count()
    );
    for i in 0..3 {
        cluster.stop(i).await;
    }
    growth
}

/// The measurement of the README: 1,000 groups. Run with
/// `cargo test -p flotilla-node --test it metrics_scale -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (1,000 groups on three managers): run on demand"]
async fn metrics_text_at_a_thousand_groups() {
    let (bytes, lines) = measure(500, 1000).await;
    // Counts grow a digit now and then; the laggards are at most LAGGARDS_MAX lines each.
    assert!(bytes < 1.0, "{bytes} bytes per extra group");
    assert!(lines < 0.05, "{lines} lines per extra group");
}

/// Thirty more groups add no series to the default text: a few bytes where counts gain a
/// digit, and the laggards (bounded) at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_groups_add_no_series_by_default() {
    let (bytes, lines) = measure(10, 40).await;
    let laggard_lines = (2 * flotilla_node::LAGGARDS_MAX) as f64 / 30.0;
    assert!(bytes < 20.0, "{bytes} bytes per extra group");
    assert!(lines <= laggard_lines, "{lines} lines per extra group");
}
