//! Observability: `NodeManager::metrics_text` (per store) and `metrics_text_for` (groups in
//! detail) are valid Prometheus text and count what a cluster did; `NodeManager::describe` dumps every group.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_node::{MetricsQuery, MetricsQueryError, NodeManager, ReadMode};

use crate::cluster::Cluster;

/// Label pairs in order.
type Labels = Vec<(String, String)>;

/// One sample line: name, labels (in order), value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parses `{a="x",b="y"}` (escapes: `\\`, `\"`, `\n`); returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("no '{'")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = &rest[..eq];
        if !valid_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((key.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value_text = rest.strip_prefix(' ').ok_or("no space before the value")?;
    // No timestamps are written; a value is exactly one token.
    let value = parse_value(value_text).ok_or(format!("bad value {value_text:?}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base);
            }
        }
    }
    None
}

/// Checks the Prometheus text format line by line; returns every sample.
fn check_prometheus(text: &str) -> Vec<Sample> {
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        assert!(!line.is_empty(), "{at}: empty line");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{at}: bad name");
            assert!(helps.insert(name.to_string()), "{at}: second HELP");
            assert!(!types.contains_key(name), "{at}: HELP after TYPE");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(parts.next().is_none(), "{at}: trailing text");
            assert!(valid_name(name), "{at}: bad name");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}: bad type"
            );
            assert!(helps.contains(name), "{at}: TYPE without HELP");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{at}: second TYPE"
            );
            if let Some(previous) = current.replace(name.to_string()) {
                finished.insert(previous);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{at}: unknown comment");
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{at}: {e}"));
        let family = family_of(&sample.name, &types)
            .unwrap_or_else(|| panic!("{at}: sample before its HELP and TYPE"));
        assert_eq!(
            current.as_deref(),
            Some(family),
            "{at}: sample outside its family's block"
        );
        assert!(!finished.contains(family), "{at}: family split");
        if types[family] == "counter" {
            assert!(
                sample.name.ends_with("_total"),
                "{at}: counter without _total"
            );
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types);
    samples
}

/// Buckets cumulative, `le` increasing, ending with `+Inf` equal to `_count`.
fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        // Per label set without `le`: the buckets in order, the count.
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
        for s in samples {
            if s.name == format!("{family}_bucket") {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .unwrap_or_else(|| panic!("{family}: bucket without le"));
                let le = parse_value(&le.1).unwrap_or_else(|| panic!("{family}: bad le"));
                let key: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                buckets.entry(key).or_default().push((le, s.value));
            } else if s.name == format!("{family}_count") {
                assert!(counts.insert(s.labels.clone(), s.value).is_none());
            }
        }
        assert_eq!(
            buckets.keys().collect::<Vec<_>>(),
            counts.keys().collect::<Vec<_>>(),
            "{family}: bucket and count label sets differ"
        );
        for (labels, series) in &buckets {
            for pair in series.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{family}{labels:?}: le not increasing"
                );
                assert!(pair[0].1 <= pair[1].1, "{family}{labels:?}: not cumulative");
            }
            let (le, last) = *series.last().unwrap();
            assert_eq!(le, f64::INFINITY, "{family}{labels:?}: no +Inf bucket last");
            assert_eq!(last, counts[labels], "{family}{labels:?}: +Inf != _count");
        }
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[test]
fn checker_refuses_broken_text() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{group=\"1\"} 3\n";
    assert_eq!(check_prometheus(good).len(), 1);
    let broken = [
        "a_total 1\n",
        "# TYPE a_total counter\na_total 1\n",
        "# HELP 1a A.\n# TYPE 1a counter\n1a 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
        "# HELP g G.\n# TYPE g gauge\ng{a=\"x} 1\n",
    ];
    for text in broken {
        let refused = std::panic::catch_unwind(|| check_prometheus(text)).is_err();
        assert!(refused, "accepted: {text}");
    }
}

/// The default (per store) text of process `i` of `cluster` (two groups, five applies each,
/// settled): the groups summed up by role and health, the totals of their histograms and
/// counters, their replicators by state; no series per group.
fn check_store_view(cluster: &Cluster, i: usize, samples: &[Sample], text: &str) {
    let at = |name: &str, labels: &[(&str, &str)]| {
        value(samples, name, labels)
            .unwrap_or_else(|| panic!("process {i}: no {name} {labels:?} in\n{text}"))
    };
    for s in samples {
        let per_group = s.labels.iter().any(|(k, _)| k == "group");
        // Laggards are labelled by group, but settled groups have none.
        assert!(
            !per_group,
            "process {i}: a per-group series by default: {s:?}"
        );
    }
    let led = (1..=2)
        .filter(|g| cluster.node(i, *g).unwrap().is_leader())
        .count() as f64;
    assert_eq!(at("flotilla_groups", &[("role", "leader")]), led);
    assert_eq!(at("flotilla_groups", &[("role", "follower")]), 2.0 - led);
    assert_eq!(at("flotilla_groups", &[("role", "candidate")]), 0.0);
    for reason in ["no_leader", "apply_lagging", "followers_lagging"] {
        assert_eq!(at("flotilla_groups_unhealthy", &[("reason", reason)]), 0.0);
    }
    // Both groups' applies: five each and a leader's no-op at least.
    assert!(at("flotilla_apply_seconds_count", &[]) > 0.0);
    assert!(at("flotilla_apply_entries_sum", &[]) >= 12.0);
    assert!(at("flotilla_leader_changes_total", &[]) >= 2.0);
    assert_eq!(at("flotilla_requests_queued", &[]), 0.0);
    assert_eq!(at("flotilla_groups_apply_backlog_entries_count", &[]), 2.0);
    let states: f64 = ["probe", "replicate", "snapshot"]
        .iter()
        .map(|s| at("flotilla_replicators", &[("state", s)]))
        .sum();
    assert_eq!(states, 2.0 * led, "two followers per group led\n{text}");
    assert_eq!(at("flotilla_replicators_lag_entries_count", &[]), 2.0 * led);
}

/// `group`'s detailed text on process `i`: its applies, its role and, where it leads, a
/// gauge per follower with its match index and lag.
fn check_group_detail(cluster: &Cluster, i: usize, group: u64, text: &str) {
    let samples = check_prometheus(text);
    let at = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels)
            .unwrap_or_else(|| panic!("process {i}: no {name} {labels:?} in\n{text}"))
    };
    let g = group.to_string();
    let labels = [("group", g.as_str())];
    for s in &samples {
        assert!(s.labels.contains(&("group".into(), g.clone())), "{s:?}");
    }
    assert!(at("flotilla_apply_seconds_count", &labels) > 0.0);
    // Five applies and the leader's no-op entry at least.
    assert!(at("flotilla_apply_entries_sum", &labels) >= 6.0);
    assert!(at("flotilla_applied_index", &labels) >= 6.0);
    assert!(at("flotilla_leader_changes_total", &labels) >= 1.0);
    assert_eq!(at("flotilla_requests_queued", &labels), 0.0);
    let leads = cluster.node(i, group).unwrap().is_leader();
    assert_eq!(
        at("flotilla_is_leader", &labels),
        f64::from(u8::from(leads))
    );
    let replicators = samples
        .iter()
        .filter(|s| s.name == "flotilla_replicator_match_index")
        .count();
    if !leads {
        assert_eq!(replicators, 0, "process {i} follows group {group}");
        return;
    }
    assert!(at("flotilla_proposal_seconds_count", &labels) >= 5.0);
    assert_eq!(replicators, 2, "{text}");
    let mut matched = 0.0f64;
    for (j, p) in cluster.processes.iter().enumerate() {
        let peer = p.address.as_str();
        if j == i {
            continue;
        }
        let labels = [("group", g.as_str()), ("peer", peer)];
        let match_index = at("flotilla_replicator_match_index", &labels);
        let lag = at("flotilla_replicator_lag_entries", &labels);
        let last = at("flotilla_last_log_index", &[("group", g.as_str())]);
        assert_eq!(lag, last - match_index, "{text}");
        matched = matched.max(match_index);
        let states: f64 = ["probe", "replicate", "snapshot"]
            .iter()
            .map(|s| at("flotilla_replicator_state", &[("peer", peer), ("state", s)]))
            .sum();
        assert_eq!(states, 1.0, "exactly one state per replicator\n{text}");
    }
    // A majority acknowledged the applies: some follower matched them.
    assert!(matched >= 6.0, "{text}");
}

/// A few applies and reads on three managers: every manager's text is valid, counts its log
/// writes and applies, and the leader's shows a gauge per follower with its match index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_text_is_valid_and_counts_the_work() {
    const GROUPS: [u64; 2] = [1, 2];
    let mut cluster = Cluster::new("metrics", 3).await;
    for group in GROUPS {
        cluster.add_group(group).await;
    }
    for group in GROUPS {
        for i in 1..=5 {
            assert_eq!(cluster.apply(group, 1).await.unwrap(), i);
        }
    }
    let leader = cluster.leader(1).await;
    let leader_node = cluster.node(leader, 1).unwrap();
    leader_node.read_index(ReadMode::ReadIndex).await.unwrap();
    for i in 0..3 {
        for group in GROUPS {
            cluster.wait_counter(i, group, 5).await;
        }
    }
    let managers: Vec<&NodeManager> = cluster
        .processes
        .iter()
        .map(|p| p.manager.as_ref().unwrap())
        .collect();
    for manager in &managers {
        // `describe` is answered at the start of a later round: everything the rounds so
        // far recorded (applies, the published status and replicators) is in place.
        let described = manager.describe().await.unwrap();
        for group in GROUPS {
            assert!(
                described.contains(&format!("group {group}\n")),
                "{described}"
            );
        }
        assert!(described.contains("committed="), "{described}");
        assert!(described.contains("proposals_pending="), "{described}");
        assert!(described.contains(manager.id().as_str()), "{described}");
    }
    for (i, manager) in managers.iter().enumerate() {
        let text = manager.metrics_text();
        let samples = check_prometheus(&text);
        let at = |name: &str, labels: &[(&str, &str)]| {
            value(&samples, name, labels)
                .unwrap_or_else(|| panic!("process {i}: no {name} {labels:?} in\n{text}"))
        };
        assert!(at("flotilla_log_writes_total", &[]) > 0.0);
        assert!(at("flotilla_log_append_seconds_count", &[]) > 0.0);
        assert!(at("flotilla_round_entries_sum", &[]) >= 10.0);
        assert!(at("flotilla_round_duration_seconds_count", &[]) > 0.0);
        // Every process received replication traffic: a leader the appends' answers, a
        // follower the appends themselves (each process leads or follows some group).
        let appends = at(
            "flotilla_messages_received_total",
            &[("kind", "AppendEntries")],
        ) + at(
            "flotilla_messages_received_total",
            &[("kind", "AppendEntriesResponse")],
        );
        assert!(appends > 0.0, "process {i}: no append traffic counted");
        check_store_view(&cluster, i, &samples, &text);
        for group in GROUPS {
            let detail = manager
                .metrics_text_for(MetricsQuery::Group(group))
                .unwrap();
            check_group_detail(&cluster, i, group, &detail);
        }
        let all = manager.metrics_text_for(MetricsQuery::AllGroups).unwrap();
        let all_samples = check_prometheus(&all);
        for group in GROUPS {
            let g = group.to_string();
            assert!(
                value(&all_samples, "flotilla_applied_index", &[("group", &g)]).unwrap() >= 6.0
            );
        }
        assert_eq!(
            manager.metrics_text_for(MetricsQuery::Group(99)),
            Err(MetricsQueryError::UnknownGroup(99))
        );
    }
    let leader_text = managers[leader]
        .metrics_text_for(MetricsQuery::Group(1))
        .unwrap();
    let samples = check_prometheus(&leader_text);
    assert!(
        value(
            &samples,
            "flotilla_read_index_seconds_count",
            &[("group", "1")]
        )
        .unwrap()
            >= 1.0
    );
    for i in 0..3 {
        cluster.stop(i).await;
    }
}
