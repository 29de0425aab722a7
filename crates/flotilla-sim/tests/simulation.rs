//! The simulator itself: seeds replay exactly, and a short run of every cluster size is
//! clean. (The long run is `cargo run --release -p flotilla-sim -- --seeds 2000`.)

use flotilla_sim::{nodes_for_seed, run_seed, SimConfig, StorageMode};

#[test]
fn a_seed_replays_identically() {
    for seed in [7, 8, 9] {
        let a = run_seed(SimConfig::new(seed, nodes_for_seed(seed)));
        let b = run_seed(SimConfig::new(seed, nodes_for_seed(seed)));
        assert_eq!(a.steps, b.steps, "seed {seed} took a different path");
        assert_eq!(
            a.operations, b.operations,
            "seed {seed} recorded other operations"
        );
        assert_eq!(a.recovery_ticks, b.recovery_ticks);
        assert!(
            a.steps > 1_000,
            "seed {seed} did almost nothing: {} steps",
            a.steps
        );
        assert!(a.operations > 100, "seed {seed} ran few client operations");
    }
}

#[test]
fn different_seeds_take_different_paths() {
    let a = run_seed(SimConfig::new(1, 3));
    let b = run_seed(SimConfig::new(2, 3));
    assert_ne!((a.steps, a.operations), (b.steps, b.operations));
}

#[test]
fn clusters_of_three_five_and_seven_stay_safe_and_recover() {
    for seed in 100..130 {
        let nodes = nodes_for_seed(seed);
        let report = run_seed(SimConfig::new(seed, nodes));
        if let Some(v) = &report.violation {
            panic!(
                "seed {seed} nodes {nodes}: {}: {}\n{}",
                v.invariant,
                v.detail,
                v.trace.join("\n")
            );
        }
        assert!(
            !report.unknown,
            "seed {seed}: linearizability check ran out of budget"
        );
        assert!(
            report.recovery_ticks.is_some(),
            "seed {seed}: no commit after the final heal"
        );
    }
}

/// The real storage module under simulated crashes: every restart recovers the shared log
/// and meta from a simulated file system (sometimes with a torn tail) and must find
/// exactly what was acknowledged as durable; the cluster stays safe and recovers.
#[test]
fn shared_log_storage_survives_crashes_and_torn_tails() {
    let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for seed in 200..215 {
        let nodes = nodes_for_seed(seed);
        let mut config = SimConfig::new(seed, nodes);
        config.storage = StorageMode::SharedLog;
        let report = run_seed(config);
        if let Some(v) = &report.violation {
            panic!(
                "seed {seed} nodes {nodes} (shared log): {}: {}\n{}",
                v.invariant,
                v.detail,
                v.trace.join("\n")
            );
        }
        assert!(!report.unknown, "seed {seed}: linearizability unknown");
        assert!(
            report.recovery_ticks.is_some(),
            "seed {seed}: no commit after the final heal"
        );
        for (what, n) in report.stats {
            *totals.entry(what).or_insert(0) += n;
        }
    }
    let stat = |what: &str| totals.get(what).copied().unwrap_or(0);
    assert!(stat("crashes") > 0, "no crash happened: {totals:?}");
    assert!(
        stat("torn tails") > 0 && stat("torn tails cut") > 0,
        "no crash left a torn tail for recovery to cut: {totals:?}"
    );
    assert!(
        stat("segments reclaimed") > 0,
        "no segment was reclaimed: {totals:?}"
    );
}

#[test]
fn a_shared_log_seed_replays_identically() {
    let run = || {
        let mut config = SimConfig::new(11, nodes_for_seed(11));
        config.storage = StorageMode::SharedLog;
        run_seed(config)
    };
    let (a, b) = (run(), run());
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.operations, b.operations);
    assert_eq!(a.stats, b.stats);
}

/// Idle groups hibernate in the simulator as in the runtime (not ticked; woken by requests,
/// messages, and the liveness beacons of a silent or restarted leader): the cluster stays
/// safe and recovers, and hibernation and its wakes really happen.
#[test]
fn hibernating_clusters_stay_safe_and_recover() {
    let mut hibernations = 0;
    let mut woken_to_campaign = 0;
    let mut woken_to_vote = 0;
    for seed in 200..220 {
        let nodes = nodes_for_seed(seed);
        let mut config = SimConfig::new(seed, nodes);
        config.hibernation = true;
        let report = run_seed(config);
        if let Some(v) = &report.violation {
            panic!(
                "seed {seed} nodes {nodes} with hibernation: {}: {}\n{}",
                v.invariant,
                v.detail,
                v.trace.join("\n")
            );
        }
        assert!(!report.unknown, "seed {seed}: checker ran out of budget");
        assert!(
            report.recovery_ticks.is_some(),
            "seed {seed}: no commit after the final heal"
        );
        hibernations += report.stats.get("hibernations").copied().unwrap_or(0);
        // One follower per group campaigns at once, the others wake to vote for it.
        woken_to_campaign += report
            .stats
            .get("hibernation wakes (leader silent, campaigning)")
            .copied()
            .unwrap_or(0);
        woken_to_vote += report
            .stats
            .get("hibernation wakes (leader silent, waiting to vote)")
            .copied()
            .unwrap_or(0);
    }
    assert!(
        hibernations > 20,
        "only {hibernations} hibernations in 20 seeds"
    );
    assert!(
        woken_to_campaign > 0,
        "no follower was ever woken to campaign"
    );
    assert!(
        woken_to_vote > 0,
        "no follower was ever woken to vote for another"
    );
}
