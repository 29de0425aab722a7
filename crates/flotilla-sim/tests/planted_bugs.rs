//! Proof that the simulator finds bugs: each planted protocol mistake, switched on alone,
//! must be reported within a bounded number of seeds. Compiled only with the
//! `planted-bugs` feature (`cargo test -p flotilla-sim --features planted-bugs`).

use flotilla_raft::PlantedBugs;
use flotilla_sim::{nodes_for_seed, run_seed, SimConfig};

/// Seeds tried per bug before the test gives up.
const SEEDS_MAX: u64 = 400;

fn seeds_to_detect(bugs: PlantedBugs) -> Option<(u64, String)> {
    for seed in 0..SEEDS_MAX {
        let mut config = SimConfig::new(seed, nodes_for_seed(seed));
        config.bugs = bugs;
        // The member check is what keeps the hostile outsider out.
        config.outsider = bugs.skip_member_check;
        // Hibernation bugs need groups that hibernate.
        config.hibernation = bugs.lease_across_hibernation;
        let report = run_seed(config);
        if let Some(v) = report.violation {
            return Some((seed, format!("{}: {}", v.invariant, v.detail)));
        }
    }
    None
}

fn assert_detected(name: &str, bugs: PlantedBugs) {
    match seeds_to_detect(bugs) {
        Some((seed, what)) => eprintln!("{name}: detected at seed {seed}: {what}"),
        None => panic!("planted bug {name} went undetected in {SEEDS_MAX} seeds"),
    }
}

#[test]
fn granting_two_votes_in_one_term() {
    let bugs = PlantedBugs {
        double_vote: true,
        ..PlantedBugs::default()
    };
    assert_detected("double vote", bugs);
}

#[test]
fn committing_an_old_term_entry_by_counting_replicas() {
    let bugs = PlantedBugs {
        commit_old_term: true,
        ..PlantedBugs::default()
    };
    assert_detected("commit old term", bugs);
}

#[test]
fn answering_read_index_without_a_heartbeat_round() {
    let bugs = PlantedBugs {
        read_without_round: true,
        ..PlantedBugs::default()
    };
    assert_detected("read without round", bugs);
}

#[test]
fn ignoring_the_old_quorum_while_joint() {
    let bugs = PlantedBugs {
        ignore_old_quorum: true,
        ..PlantedBugs::default()
    };
    assert_detected("ignore old quorum", bugs);
}

#[test]
fn not_truncating_a_conflicting_suffix() {
    let bugs = PlantedBugs {
        keep_conflicting_suffix: true,
        ..PlantedBugs::default()
    };
    assert_detected("keep conflicting suffix", bugs);
}

#[test]
fn keeping_the_lease_across_hibernation() {
    let bugs = PlantedBugs {
        lease_across_hibernation: true,
        ..PlantedBugs::default()
    };
    assert_detected("lease across hibernation", bugs);
}

#[test]
fn accepting_messages_from_a_non_member() {
    let bugs = PlantedBugs {
        skip_member_check: true,
        ..PlantedBugs::default()
    };
    assert_detected("skip member check", bugs);
}

#[test]
fn the_correct_core_passes_the_same_seeds() {
    // Control: without planted bugs, the same seeds report nothing.
    for seed in 0..40 {
        let report = run_seed(SimConfig::new(seed, nodes_for_seed(seed)));
        assert!(
            report.violation.is_none(),
            "seed {seed}: {:?}",
            report.violation
        );
        assert!(!report.unknown, "seed {seed}: checker ran out of budget");
        let mut outsider = SimConfig::new(seed, nodes_for_seed(seed));
        outsider.outsider = true;
        let report = run_seed(outsider);
        assert!(
            report.violation.is_none(),
            "seed {seed} with the outsider: {:?}",
            report.violation
        );
        let mut hibernating = SimConfig::new(seed, nodes_for_seed(seed));
        hibernating.hibernation = true;
        let report = run_seed(hibernating);
        assert!(
            report.violation.is_none(),
            "seed {seed} with hibernation: {:?}",
            report.violation
        );
    }
}
