//! The simulator itself: seeds replay exactly, and a short run of every cluster size is
//! clean. (The long run is `cargo run --release -p flotilla-sim -- --seeds 2000`.)

use flotilla_sim::{nodes_for_seed, run_seed, SimConfig};

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
