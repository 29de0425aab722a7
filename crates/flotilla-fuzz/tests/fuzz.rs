//! The fuzzer's own tests: it finds a planted decoder bug within a bounded number of inputs,
//! replays exactly from its seed, and every real target takes its seeds and 2,000 mutants
//! without a crash.

use flotilla_fuzz::{fuzz, run_one, targets, Options, Report};

/// Inputs per real target in these tests (the CI step runs far more, in `.ci/run`).
const INPUTS_PER_TARGET: u64 = 2000;

fn options(inputs: u64, seed: u64) -> Options {
    Options {
        inputs,
        seed,
        crash_dir: None,
        progress: false,
        crashes_max: 4,
    }
}

fn assert_clean(report: &Report) {
    let crashes: Vec<String> = report.crashes.iter().map(|c| c.describe()).collect();
    assert!(
        report.crashes.is_empty(),
        "{} crashed:\n{}",
        report.target,
        crashes.join("\n")
    );
    assert_eq!(
        report.seeds_refused, 0,
        "{}: a seed from the crate's own encoder was refused",
        report.target
    );
    assert_eq!(report.inputs, INPUTS_PER_TARGET);
    // Mutants must get past the outer checks some of the time, or the target fuzzes
    // nothing but its first check.
    assert!(
        report.corpus > 20,
        "{}: only {} inputs in the corpus: mutants never pass the decoder",
        report.target,
        report.corpus
    );
}

#[test]
fn finds_the_planted_decoder_bug_within_a_bounded_number_of_inputs() {
    let planted = targets::planted::planted();
    for seed in 1..=5 {
        let report = fuzz(&planted, &options(2000, seed));
        let crash = report
            .crashes
            .first()
            .unwrap_or_else(|| panic!("seed {seed}: the planted bug was not found in 2000 inputs"));
        assert!(
            crash.panic.contains("planted.rs"),
            "the crash is not the planted one: {}",
            crash.panic
        );
        // The saved input reproduces it on its own.
        assert!(run_one(&planted, &crash.input).is_err());
        assert!(crash.describe().contains(&flotilla_fuzz::hex(&crash.input)));
    }
}

#[test]
fn a_run_replays_exactly_from_its_seed() {
    let planted = targets::planted::planted();
    let first = fuzz(&planted, &options(1500, 42));
    let again = fuzz(&planted, &options(1500, 42));
    let key = |r: &Report| {
        (
            r.accepted,
            r.corpus,
            r.crashing_inputs,
            r.crashes
                .iter()
                .map(|c| (c.iteration, c.input.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(key(&first), key(&again));
    assert!(first.crashing_inputs > 0);
}

#[test]
fn the_planted_target_is_not_part_of_all() {
    assert!(targets::all().iter().all(|t| t.name != "planted"));
    assert!(targets::by_name("planted").is_none());
}

fn clean_run(name: &str) {
    let target = targets::by_name(name).unwrap_or_else(|| panic!("no target {name}"));
    assert_clean(&fuzz(&target, &options(INPUTS_PER_TARGET, 1)));
}

#[test]
fn raft_frame_takes_2000_inputs_without_a_crash() {
    clean_run("raft-frame");
}

#[test]
fn snapshot_fetch_takes_2000_inputs_without_a_crash() {
    clean_run("snapshot-fetch");
}

#[test]
fn kv_command_takes_2000_inputs_without_a_crash() {
    clean_run("kv-command");
}

#[test]
fn kv_output_takes_2000_inputs_without_a_crash() {
    clean_run("kv-output");
}

#[test]
fn kv_region_takes_2000_inputs_without_a_crash() {
    clean_run("kv-region");
}

#[test]
fn kv_export_takes_2000_inputs_without_a_crash() {
    clean_run("kv-export");
}

#[test]
fn store_meta_takes_2000_inputs_without_a_crash() {
    clean_run("store-meta");
}

#[test]
fn log_segment_takes_2000_inputs_without_a_crash() {
    clean_run("log-segment");
}

#[test]
fn raft_meta_takes_2000_inputs_without_a_crash() {
    clean_run("raft-meta");
}

#[test]
fn snapshot_manifest_takes_2000_inputs_without_a_crash() {
    clean_run("snapshot-manifest");
}

#[test]
fn raft_step_takes_2000_inputs_without_a_crash() {
    clean_run("raft-step");
}

// Fails on today's core: a message with a term at or near u64::MAX is adopted, and the
// next election computes `term + 1` (`Term::next`, flotilla-raft/src/types.rs:31; with an
// index at the maximum, `LogIndex::next` at :59): "attempt to add with overflow", a panic
// with overflow checks and a wrap to term 0 without (issue 12, item 3). Un-ignore once terms
// from the network are bounded and the core's arithmetic is checked.
#[test]
#[ignore = "finds issue 12 item 3 (term/index overflow in the core) until that is fixed"]
fn raft_step_gen_takes_2000_inputs_without_a_crash() {
    clean_run("raft-step-gen");
}

#[test]
fn every_target_has_a_test_here() {
    let source = include_str!("fuzz.rs");
    for target in targets::all() {
        assert!(
            source.contains(&format!("clean_run(\"{}\")", target.name)),
            "target {} has no 2000-input test",
            target.name
        );
    }
}
