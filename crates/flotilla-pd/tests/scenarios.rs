//! Planners as data: every file under `tests/scenarios/` describes a cluster and, written
//! by hand, the operators a careful operator would want; this runs `plan` on it, compares,
//! and checks the generic invariants on every output. Then the same invariants over
//! generated views, with convergence, and against the planted remove-before-add planner.
//!
//! Scenario format (one statement a line, `#` starts a comment; the first comment says
//! what the scenario tests):
//!
//! ```text
//! config KEY VALUE                       # as `admin pd config set`
//! store N STATE [KEY=VALUE...] [adds=N] [removes=N]
//!                                        # STATE: up|disconnected|down|offline|tombstone
//! region ID voters A,B,C [learners D] [leader A] [joint] [hot] [bytes N] [keys N]
//! regions FIRST-LAST voters A,B,C [leaders A,B,C (in turn)] [hot] [bytes N] [keys N]
//! inflight REGION KIND [STEP N, STEP N]  # an operator already in flight, its steps to do
//! expect
//! region ID KIND: STEP N, STEP N         # or `nothing`
//! ```
//!
//! Stores are small integers standing for `StoreId(n)`; each store's region, leader and
//! byte counts are computed from the regions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use flotilla_pd::planner::{
    apply_to_view, has_quorum, may_touch, plan, plan_remove_before_add, step_is_safe, ClusterView,
    RegionView, StoreState, StoreView,
};
use flotilla_pd::{
    Operator, OperatorKind, PdConfig, RegionRecord, Step, StoreId, StoreMark, StoreRecord,
};

struct Scenario {
    name: String,
    view: ClusterView,
    expect: Vec<String>,
}

fn store_ids(text: &str) -> Result<BTreeSet<StoreId>, String> {
    text.split(',')
        .map(|n| {
            n.parse::<u64>()
                .map(StoreId)
                .map_err(|_| format!("bad store list {text:?}"))
        })
        .collect()
}

/// `transfer-leader 2, add-learner 4` (the words after `inflight REGION KIND`).
fn parse_steps(words: &[&str]) -> Result<Vec<Step>, String> {
    let text = words.join(" ");
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|step| {
            let (action, store) = step
                .split_once(' ')
                .ok_or_else(|| format!("bad step {step:?}"))?;
            let store = StoreId(
                store
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad store in step {step:?}"))?,
            );
            Ok(match action {
                "add-learner" => Step::AddLearner(store),
                "promote-learner" => Step::PromoteLearner(store),
                "remove-voter" => Step::RemoveVoter(store),
                "remove-learner" => Step::RemoveLearner(store),
                "transfer-leader" => Step::TransferLeader(store),
                "split" => Step::Split(store),
                "split-by-load" => Step::SplitByLoad(store),
                _ => return Err(format!("unknown step {action:?}")),
            })
        })
        .collect()
}

fn parse_store(words: &[&str]) -> Result<StoreView, String> {
    let [id, state, rest @ ..] = words else {
        return Err("store needs an id and a state".into());
    };
    let id = StoreId(id.parse().map_err(|_| format!("bad store id {id:?}"))?);
    let (state, mark) = match *state {
        "up" => (StoreState::Up, StoreMark::Serving),
        "disconnected" => (StoreState::Disconnected, StoreMark::Serving),
        "down" => (StoreState::Down, StoreMark::Serving),
        "offline" => (StoreState::Offline, StoreMark::Offline),
        "tombstone" => (StoreState::Tombstone, StoreMark::Tombstone),
        other => return Err(format!("unknown store state {other:?}")),
    };
    let mut view = StoreView {
        record: StoreRecord {
            id,
            address: format!("store-{}:7000", id.0),
            labels: BTreeMap::new(),
            state: mark,
        },
        state,
        region_count: 0,
        leader_count: 0,
        used_bytes: 0,
        recent_adds: 0,
        recent_removes: 0,
    };
    for word in rest {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("bad store word {word:?}"))?;
        let number = || {
            value
                .parse::<u32>()
                .map_err(|_| format!("bad number in {word:?}"))
        };
        match key {
            "adds" => view.recent_adds = number()?,
            "removes" => view.recent_removes = number()?,
            _ => {
                view.record
                    .labels
                    .insert(key.to_string(), value.to_string());
            }
        }
    }
    Ok(view)
}

fn region(id: u64, voters: BTreeSet<StoreId>) -> RegionView {
    let start = if id == 0 {
        Bytes::new()
    } else {
        Bytes::from(format!("r{id:08}"))
    };
    let end = if id == 0 {
        Bytes::new()
    } else {
        Bytes::from(format!("r{:08}", id + 1))
    };
    RegionView {
        record: RegionRecord {
            id,
            start,
            end,
            conf_version: 1,
            version: 1,
            voters,
            learners: BTreeSet::new(),
        },
        leader: None,
        approximate_bytes: 0,
        approximate_keys: 0,
        hot: false,
        settled: false,
        in_joint: false,
        failed: Vec::new(),
    }
}

/// `region`/`regions` lines: the regions they describe.
fn parse_regions(words: &[&str]) -> Result<Vec<RegionView>, String> {
    let [kind, ids, rest @ ..] = words else {
        return Err("region needs an id".into());
    };
    let range: Vec<u64> = match ids.split_once('-') {
        Some((a, b)) if *kind == "regions" => {
            let a: u64 = a.parse().map_err(|_| format!("bad range {ids:?}"))?;
            let b: u64 = b.parse().map_err(|_| format!("bad range {ids:?}"))?;
            (a..=b).collect()
        }
        _ => vec![ids.parse().map_err(|_| format!("bad region id {ids:?}"))?],
    };
    let mut regions: Vec<RegionView> = range
        .iter()
        .map(|id| region(*id, BTreeSet::new()))
        .collect();
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        if *word == "joint" {
            regions.iter_mut().for_each(|r| r.in_joint = true);
            continue;
        }
        if *word == "hot" {
            regions.iter_mut().for_each(|r| r.hot = true);
            continue;
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{word} needs a value"))?;
        match *word {
            "voters" => regions
                .iter_mut()
                .try_for_each(|r| store_ids(value).map(|v| r.record.voters = v))?,
            "learners" => regions
                .iter_mut()
                .try_for_each(|r| store_ids(value).map(|l| r.record.learners = l))?,
            "leader" | "leaders" => {
                let leaders: Vec<StoreId> = store_ids(value)?.into_iter().collect();
                let order: Vec<StoreId> = value
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .map(StoreId)
                    .collect();
                let turn = if order.len() == leaders.len() {
                    order
                } else {
                    leaders
                };
                for (i, r) in regions.iter_mut().enumerate() {
                    r.leader = Some(turn[i % turn.len()]);
                }
            }
            "bytes" => {
                let bytes: u64 = value.parse().map_err(|_| format!("bad bytes {value:?}"))?;
                regions.iter_mut().for_each(|r| r.approximate_bytes = bytes);
            }
            "keys" => {
                let keys: u64 = value.parse().map_err(|_| format!("bad keys {value:?}"))?;
                regions.iter_mut().for_each(|r| r.approximate_keys = keys);
            }
            "failed" => regions
                .iter_mut()
                .try_for_each(|r| store_ids(value).map(|f| r.failed = f.into_iter().collect()))?,
            other => return Err(format!("unknown region word {other:?}")),
        }
    }
    Ok(regions)
}

/// Each store's region, leader and byte counts from the regions.
fn recount(view: &mut ClusterView) {
    for store in &mut view.stores {
        let id = store.record.id;
        let held = view.regions.iter().filter(|r| r.record.has_peer(id));
        store.region_count = held.clone().count();
        store.used_bytes = held.map(|r| r.approximate_bytes).sum();
        store.leader_count = view.regions.iter().filter(|r| r.leader == Some(id)).count();
    }
}

fn parse(name: &str, text: &str) -> Result<Scenario, String> {
    let mut view = ClusterView {
        config: PdConfig::default(),
        stores: Vec::new(),
        regions: Vec::new(),
        operators: Vec::new(),
    };
    let mut expect = None::<Vec<String>>;
    if !text.trim_start().starts_with('#') {
        return Err("a scenario opens with a comment saying what it tests".into());
    }
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", number + 1);
        if let Some(expected) = expect.as_mut() {
            if line != "nothing" {
                expected.push(line.to_string());
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "config" if words.len() == 3 => view.config.set(words[1], words[2]).map_err(at)?,
            "store" => view.stores.push(parse_store(&words[1..]).map_err(at)?),
            "region" | "regions" => view.regions.extend(parse_regions(&words).map_err(at)?),
            "inflight" if words.len() >= 3 => {
                let region: u64 = words[1]
                    .parse()
                    .map_err(|_| at(format!("bad region {:?}", words[1])))?;
                let kind = OperatorKind::parse(words[2])
                    .ok_or_else(|| at(format!("unknown kind {:?}", words[2])))?;
                let record = &view
                    .regions
                    .iter()
                    .find(|r| r.record.id == region)
                    .ok_or_else(|| at("inflight before its region".into()))?
                    .record;
                let steps = parse_steps(&words[3..]).map_err(at)?;
                let mut op = Operator::planned(record, kind, steps);
                op.id = 1000 + region;
                view.operators.push(op);
            }
            "expect" => expect = Some(Vec::new()),
            _ => return Err(at(format!("cannot read {line:?}"))),
        }
    }
    recount(&mut view);
    let expect = expect.ok_or("no expect section")?;
    Ok(Scenario {
        name: name.to_string(),
        view,
        expect,
    })
}

fn describe(op: &Operator) -> String {
    let steps: Vec<String> = op
        .steps
        .iter()
        .map(|s| format!("{} {}", s.action(), s.argument()))
        .collect();
    format!("region {} {}: {}", op.region, op.kind, steps.join(", "))
}

/// The generic invariants on one round's output.
fn check_invariants(view: &ClusterView, ops: &[Operator]) -> Result<(), String> {
    let config = &view.config;
    if config.paused && !ops.is_empty() {
        return Err("planned while paused".into());
    }
    let mut regions = BTreeSet::new();
    let in_flight: BTreeSet<u64> = view.operators.iter().map(|o| o.region).collect();
    let replica_in_flight = view
        .operators
        .iter()
        .filter(|o| o.kind.changes_replicas())
        .count();
    let replica_ops = ops.iter().filter(|o| o.kind.changes_replicas()).count();
    if replica_ops + replica_in_flight > config.replica_schedule_limit as usize && replica_ops > 0 {
        return Err(format!(
            "{replica_ops} replica operators over the limit {}",
            config.replica_schedule_limit
        ));
    }
    let mut adds: BTreeMap<StoreId, u32> = view
        .stores
        .iter()
        .map(|s| (s.record.id, s.recent_adds))
        .collect();
    let mut removes: BTreeMap<StoreId, u32> = view
        .stores
        .iter()
        .map(|s| (s.record.id, s.recent_removes))
        .collect();
    for op in ops {
        let what = describe(op);
        if !regions.insert(op.region) || in_flight.contains(&op.region) {
            return Err(format!("{what}: a second operator on the region"));
        }
        let region = view
            .regions
            .iter()
            .find(|r| r.record.id == op.region)
            .ok_or(format!("{what}: unknown region"))?;
        if op.planned_on != region.record.epoch() || op.id != 0 || op.step != 0 {
            return Err(format!("{what}: not planned on the region's epoch"));
        }
        if !may_touch(region, &view.stores) || !has_quorum(region, &view.stores) {
            return Err(format!(
                "{what}: touches a region without leader or quorum, or in joint"
            ));
        }
        check_add_before_remove(op)?;
        let mut projected = region.clone();
        for step in &op.steps {
            step_is_safe(&projected, step, &view.stores)
                .map_err(|why| format!("{what}: step {step} unsafe: {why}"))?;
            apply_to_view_region(&mut projected, *step);
            match step {
                Step::AddLearner(s) => *adds.entry(*s).or_default() += 1,
                Step::RemoveVoter(s) | Step::RemoveLearner(s) => {
                    *removes.entry(*s).or_default() += 1
                }
                _ => {}
            }
        }
    }
    let limit = config.replica_ops_per_store_per_minute;
    let over = |counts: &BTreeMap<StoreId, u32>, recent: fn(&StoreView) -> u32| {
        view.stores
            .iter()
            .any(|s| counts[&s.record.id] > limit.max(recent(s)))
    };
    if over(&adds, |s| s.recent_adds) || over(&removes, |s| s.recent_removes) {
        return Err("a store over its per-minute limit".into());
    }
    Ok(())
}

/// In an operator that adds a replica, no voter is removed before the new one is promoted.
fn check_add_before_remove(op: &Operator) -> Result<(), String> {
    let promoted = op
        .steps
        .iter()
        .position(|s| matches!(s, Step::PromoteLearner(_)));
    let added = op
        .steps
        .iter()
        .position(|s| matches!(s, Step::AddLearner(_)));
    for (i, step) in op.steps.iter().enumerate() {
        if let Step::RemoveVoter(_) = step {
            if added.is_some() && promoted.is_none_or(|p| p > i) {
                return Err(format!(
                    "{}: removes a voter before its replacement is promoted",
                    describe(op)
                ));
            }
        }
    }
    if let (Some(a), Some(p)) = (added, promoted) {
        if p < a {
            return Err(format!("{}: promotes before adding", describe(op)));
        }
    }
    Ok(())
}

fn apply_to_view_region(region: &mut RegionView, step: Step) {
    let record = &mut region.record;
    match step {
        Step::AddLearner(s) => {
            record.learners.insert(s);
        }
        Step::PromoteLearner(s) => {
            record.learners.remove(&s);
            record.voters.insert(s);
        }
        Step::RemoveVoter(s) => {
            record.voters.remove(&s);
        }
        Step::RemoveLearner(s) => {
            record.learners.remove(&s);
        }
        Step::TransferLeader(s) => region.leader = Some(s),
        Step::Split(_) | Step::SplitByLoad(_) | Step::PrepareMerge { .. } => {
            record.version += 1;
        }
        Step::CommitMerge { .. } => {}
    }
}

fn scenarios() -> Vec<Scenario> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(p).expect("a readable scenario");
            parse(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

#[test]
fn scenarios_plan_what_was_written_by_hand() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 14, "only {} scenarios", scenarios.len());
    let mut failures = Vec::new();
    for scenario in &scenarios {
        let ops = plan(&scenario.view);
        let mut got: Vec<(u64, String)> = ops.iter().map(|o| (o.region, describe(o))).collect();
        got.sort();
        let got: Vec<String> = got.into_iter().map(|(_, d)| d).collect();
        let mut expected: Vec<(u64, String)> = scenario
            .expect
            .iter()
            .map(|line| {
                (
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                    line.clone(),
                )
            })
            .collect();
        expected.sort();
        let expected: Vec<String> = expected.into_iter().map(|(_, d)| d).collect();
        if got != expected {
            failures.push(format!(
                "{}:\n  expected {expected:#?}\n  planned  {got:#?}",
                scenario.name
            ));
        }
        if let Err(why) = check_invariants(&scenario.view, &ops) {
            failures.push(format!("{}: invariant: {why}", scenario.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_planted_remove_before_add_planner_is_caught() {
    let caught: Vec<String> = scenarios()
        .iter()
        .filter_map(|s| {
            check_invariants(&s.view, &plan_remove_before_add(&s.view))
                .err()
                .map(|e| format!("{}: {e}", s.name))
        })
        .collect();
    assert!(!caught.is_empty(), "no scenario caught the planted planner");
    assert!(
        caught
            .iter()
            .any(|c| c.contains("before its replacement is promoted")),
        "{caught:#?}"
    );
}

/// xorshift64*: a tiny deterministic generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_view(rng: &mut Rng) -> ClusterView {
    let mut config = PdConfig::default();
    config.max_replicas = 1 + rng.below(5) as u32;
    config.replica_schedule_limit = rng.below(20) as u32;
    config.leader_schedule_limit = rng.below(6) as u32;
    config.replica_ops_per_store_per_minute = 1 + rng.below(15) as u32;
    config.size_balance_percent = 5 + rng.below(50) as u32;
    let store_count = 2 + rng.below(8);
    let states = [
        StoreState::Up,
        StoreState::Up,
        StoreState::Up,
        StoreState::Up,
        StoreState::Disconnected,
        StoreState::Down,
        StoreState::Offline,
        StoreState::Tombstone,
    ];
    let stores: Vec<StoreView> = (1..=store_count)
        .map(|n| {
            let state = states[rng.below(states.len() as u64) as usize];
            let mark = match state {
                StoreState::Offline => StoreMark::Offline,
                StoreState::Tombstone => StoreMark::Tombstone,
                _ => StoreMark::Serving,
            };
            let labels = [("zone".to_string(), format!("z{}", rng.below(3)))].into();
            StoreView {
                record: StoreRecord {
                    id: StoreId(n),
                    address: format!("s{n}"),
                    labels,
                    state: mark,
                },
                state,
                region_count: 0,
                leader_count: 0,
                used_bytes: 0,
                recent_adds: rng.below(3) as u32,
                recent_removes: rng.below(3) as u32,
            }
        })
        .collect();
    let regions = (0..rng.below(30))
        .map(|id| {
            let voters: BTreeSet<StoreId> = (0..1 + rng.below(5))
                .map(|_| StoreId(1 + rng.below(store_count)))
                .collect();
            let mut view = region(id, voters.clone());
            if rng.chance(15) {
                let learner = StoreId(1 + rng.below(store_count));
                if !voters.contains(&learner) {
                    view.record.learners.insert(learner);
                }
            }
            let list: Vec<StoreId> = voters.into_iter().collect();
            view.leader = (!rng.chance(10)).then(|| list[rng.below(list.len() as u64) as usize]);
            view.in_joint = rng.chance(5);
            view.approximate_bytes = if rng.chance(50) { 0 } else { rng.below(1000) };
            view
        })
        .collect();
    let mut view = ClusterView {
        config,
        stores,
        regions,
        operators: Vec::new(),
    };
    recount(&mut view);
    view
}

#[test]
fn generated_views_keep_the_invariants_and_converge() {
    let mut planned = 0;
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut view = random_view(&mut rng);
        if rng.chance(20) {
            view.config.replica_schedule_limit = view.config.replica_schedule_limit.max(1);
            view.config.leader_schedule_limit = view.config.leader_schedule_limit.max(1);
        }
        let mut converged = false;
        for _round in 0..300 {
            let ops = plan(&view);
            check_invariants(&view, &ops).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            if ops.is_empty() {
                converged = true;
                break;
            }
            planned += ops.len();
            for op in &ops {
                apply_to_view(&mut view, op);
            }
        }
        assert!(converged, "seed {seed}: no convergence in 300 rounds");
        let mut paused = view.clone();
        paused.config.paused = true;
        assert!(plan(&paused).is_empty());
    }
    assert!(
        planned > 100,
        "the generated views planned only {planned} operators"
    );
}

/// Plans and applies rounds until nothing is planned; the number of rounds.
fn settle(view: &mut ClusterView, rounds_max: usize) -> usize {
    for round in 0..rounds_max {
        let ops = plan(view);
        check_invariants(view, &ops).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if ops.is_empty() {
            return round;
        }
        for op in &ops {
            apply_to_view(view, op);
        }
    }
    panic!("no convergence in {rounds_max} rounds");
}

#[test]
fn balance_after_two_stores_join_ends_within_one_of_even() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "17-balance-count.txt")
        .expect("the scenario exists");
    let mut view = scenario.view;
    view.config.set("replica-schedule-limit", "16").unwrap();
    view.config.set("leader-schedule-limit", "4").unwrap();
    let rounds = settle(&mut view, 100);
    assert!(rounds > 1, "the limits spread the work over rounds");
    let regions: Vec<usize> = view.stores.iter().map(|s| s.region_count).collect();
    let leaders: Vec<usize> = view.stores.iter().map(|s| s.leader_count).collect();
    let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
    assert!(spread(&regions) <= 1, "regions per store {regions:?}");
    assert!(spread(&leaders) <= 1, "leaders per store {leaders:?}");
    assert_eq!(
        regions.iter().sum::<usize>(),
        72,
        "every region keeps 3 replicas"
    );
}

#[test]
fn a_down_store_is_emptied_and_every_region_gets_back_to_max_replicas() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "22-schedule-limit.txt")
        .expect("the scenario exists");
    let mut view = scenario.view;
    settle(&mut view, 20);
    for region in &view.regions {
        assert_eq!(
            region.record.voters,
            [1, 2, 4].map(StoreId).into(),
            "region {}",
            region.record.id
        );
        assert!(region.record.learners.is_empty());
    }
}
