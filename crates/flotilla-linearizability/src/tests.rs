//! Tests of the checker: hand-written histories (valid, stale reads, lost writes,
//! compare-and-set, indeterminate operations, malformed input, budget), random histories,
//! and agreement with a brute-force checker on small ones.

use crate::*;
use std::collections::HashSet;

// ----- builders ------------------------------------------------------------------------

fn op(client: u64, kind: OpKind, invoke: u64, complete: u64, outcome: OpOutcome) -> Operation {
    Operation {
        client,
        key: 0,
        kind,
        invoke,
        complete,
        outcome,
    }
}

fn read(client: u64, invoke: u64, complete: u64, value: Value) -> Operation {
    op(
        client,
        OpKind::Read,
        invoke,
        complete,
        OpOutcome::ReadOk(value),
    )
}

fn write(client: u64, invoke: u64, complete: u64, value: u64) -> Operation {
    op(
        client,
        OpKind::Write(value),
        invoke,
        complete,
        OpOutcome::WriteOk,
    )
}

fn write_indeterminate(client: u64, invoke: u64, value: u64) -> Operation {
    op(
        client,
        OpKind::Write(value),
        invoke,
        0,
        OpOutcome::Indeterminate,
    )
}

fn cas(
    client: u64,
    invoke: u64,
    complete: u64,
    expected: Value,
    new: u64,
    swapped: bool,
) -> Operation {
    let kind = OpKind::Cas { expected, new };
    op(client, kind, invoke, complete, OpOutcome::CasOk(swapped))
}

fn with_key(mut ops: Vec<Operation>, key: u64) -> Vec<Operation> {
    for op in &mut ops {
        op.key = key;
    }
    ops
}

fn check(ops: &[Operation]) -> Verdict {
    Checker::default().check(ops)
}

#[track_caller]
fn assert_linearizable(ops: &[Operation]) {
    let verdict = check(ops);
    assert_eq!(verdict, Verdict::Linearizable, "history: {ops:#?}");
}

/// Asserts a violation on `key` and returns its explanation.
#[track_caller]
fn assert_violation(ops: &[Operation], key: u64) -> String {
    match check(ops) {
        Verdict::Violation {
            key: k,
            explanation,
        } => {
            assert_eq!(k, key, "{explanation}");
            assert!(explanation.contains(&format!("key {key}")), "{explanation}");
            explanation
        }
        other => panic!("expected a violation on key {key}, got {other:?}; history: {ops:#?}"),
    }
}

// ----- hand-written histories ----------------------------------------------------------

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
    assert_eq!(Checker::default().check_key(3, &[]), Verdict::Linearizable);
}

#[test]
fn sequential_valid_history() {
    assert_linearizable(&[
        read(1, 0, 1, None),
        write(1, 2, 3, 10),
        read(2, 4, 5, Some(10)),
        cas(2, 6, 7, Some(10), 11, true),
        read(1, 8, 9, Some(11)),
        cas(1, 10, 11, Some(10), 12, false),
        write(2, 12, 13, 13),
        read(1, 14, 15, Some(13)),
    ]);
}

#[test]
fn concurrent_overlapping_ops_are_valid() {
    // Both writes overlap; the reads pin the order 2 then 1, and a read overlapping a
    // write may see either value.
    assert_linearizable(&[
        write(1, 0, 10, 1),
        write(2, 1, 9, 2),
        read(3, 2, 3, Some(2)),
        read(4, 4, 12, Some(1)),
        read(5, 11, 13, Some(1)),
        write(1, 14, 20, 3),
        read(2, 15, 16, Some(1)),
        read(3, 17, 18, Some(3)),
        read(4, 19, 25, Some(3)),
    ]);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The read completes exactly when the write is invoked: they may be ordered either way.
    assert_linearizable(&[read(1, 0, 5, Some(1)), write(2, 5, 10, 1)]);
    // But strictly before is strictly before.
    assert_violation(&[read(1, 0, 4, Some(1)), write(2, 5, 10, 1)], 0);
}

#[test]
fn stale_read_is_a_violation() {
    let explanation = assert_violation(
        &[
            write(1, 0, 10, 1),
            read(2, 11, 12, Some(1)),
            write(1, 20, 30, 2),
            read(2, 35, 40, Some(1)),
        ],
        0,
    );
    assert!(explanation.contains("op#3"), "{explanation}");
}

#[test]
fn lost_write_is_a_violation() {
    // Write 2 was acknowledged, yet later non-overlapping reads see the older value 1.
    assert_violation(
        &[
            write(1, 0, 10, 1),
            write(2, 20, 30, 2),
            read(3, 40, 50, Some(1)),
            read(3, 60, 70, Some(1)),
        ],
        0,
    );
}

#[test]
fn value_reappearing_needs_search_to_refute() {
    // Concurrent writes; the reads see 1, then 2, then 1 again — impossible.
    assert_violation(
        &[
            write(1, 0, 10, 1),
            write(2, 0, 10, 2),
            read(3, 20, 30, Some(1)),
            read(3, 40, 50, Some(2)),
            read(3, 60, 70, Some(1)),
        ],
        0,
    );
    // Reading the initial value after a completed write.
    assert_violation(&[write(1, 0, 10, 1), read(2, 20, 30, None)], 0);
}

#[test]
fn read_of_never_written_value_is_a_violation() {
    let explanation = assert_violation(&[write(1, 0, 10, 1), read(2, 20, 30, Some(99))], 0);
    assert!(
        explanation.contains("op#1") && explanation.contains("99"),
        "{explanation}"
    );
    // A write that definitely failed does not count as a writer.
    let failed = op(1, OpKind::Write(99), 0, 10, OpOutcome::Failed);
    assert_violation(&[failed, read(2, 20, 30, Some(99))], 0);
}

#[test]
fn read_before_its_write_was_invoked_is_a_violation() {
    let explanation = assert_violation(&[read(1, 0, 10, Some(5)), write(2, 20, 30, 5)], 0);
    assert!(
        explanation.contains("op#0") && explanation.contains("op#1"),
        "{explanation}"
    );
}

#[test]
fn cas_valid_cases() {
    // Successful cas from the initial value, then a failed one.
    assert_linearizable(&[
        cas(1, 0, 10, None, 1, true),
        cas(2, 20, 30, None, 2, false),
        read(3, 40, 50, Some(1)),
    ]);
    // Two concurrent cas expecting the same value: exactly one can win.
    assert_linearizable(&[
        write(1, 0, 5, 1),
        cas(2, 10, 20, Some(1), 2, true),
        cas(3, 10, 20, Some(1), 3, false),
        read(4, 30, 40, Some(2)),
    ]);
    // A failed cas overlapping a write: it linearizes before the write.
    assert_linearizable(&[
        write(1, 0, 5, 1),
        write(2, 10, 20, 2),
        cas(3, 12, 30, Some(1), 3, false),
        read(4, 40, 50, Some(2)),
    ]);
}

#[test]
fn cas_invalid_cases() {
    // Two concurrent cas expecting the same value both claim to have swapped.
    assert_violation(
        &[
            write(1, 0, 5, 1),
            cas(2, 10, 20, Some(1), 2, true),
            cas(3, 10, 20, Some(1), 3, true),
        ],
        0,
    );
    // cas claims a swap but the register held another value.
    assert_violation(
        &[
            write(1, 0, 5, 1),
            write(1, 6, 7, 2),
            cas(2, 10, 20, Some(1), 3, true),
        ],
        0,
    );
    // cas claims no swap although the register certainly held the expected value.
    assert_violation(
        &[
            write(1, 0, 5, 1),
            cas(2, 10, 20, Some(1), 3, false),
            read(3, 30, 40, Some(1)),
        ],
        0,
    );
    // Failed cas from the initial value while nothing else happened.
    assert_violation(&[cas(1, 0, 10, None, 1, false)], 0);
}

#[test]
fn indeterminate_write_that_shows_up_is_linearizable() {
    assert_linearizable(&[
        write(1, 0, 10, 1),
        write_indeterminate(2, 20, 2),
        read(3, 30, 40, Some(1)),
        read(3, 50, 60, Some(2)),
        read(3, 1000, 1001, Some(2)),
    ]);
}

#[test]
fn indeterminate_write_cannot_take_effect_before_invocation() {
    assert_violation(&[write_indeterminate(2, 20, 2), read(3, 0, 10, Some(2))], 0);
    // Nor can it take effect twice: once its value was overwritten it is gone.
    assert_violation(
        &[
            write_indeterminate(1, 0, 1),
            read(2, 10, 20, Some(1)),
            write(3, 30, 40, 2),
            read(2, 50, 60, Some(1)),
        ],
        0,
    );
}

#[test]
fn indeterminate_write_that_never_shows_up_is_linearizable() {
    assert_linearizable(&[
        write(1, 0, 10, 1),
        write_indeterminate(2, 5, 2),
        read(3, 20, 30, Some(1)),
        write(1, 40, 50, 3),
        read(3, 60, 70, Some(3)),
    ]);
    // Even when nothing ever overwrites the current value.
    assert_linearizable(&[
        write(1, 0, 10, 1),
        write_indeterminate(2, 5, 2),
        read(3, 20, 30, Some(1)),
        read(3, 40, 50, Some(1)),
    ]);
}

#[test]
fn unobserved_indeterminate_write_can_explain_a_failed_cas() {
    // The cas could only fail if the indeterminate write landed in between.
    assert_linearizable(&[
        write(1, 0, 10, 1),
        write_indeterminate(2, 5, 2),
        cas(3, 20, 30, Some(1), 3, false),
    ]);
    // Without it, the same history is a violation.
    assert_violation(&[write(1, 0, 10, 1), cas(3, 20, 30, Some(1), 3, false)], 0);
}

#[test]
fn indeterminate_cas_whose_value_shows_up_must_have_swapped() {
    let indeterminate_cas = |client, invoke, expected, new| {
        op(
            client,
            OpKind::Cas { expected, new },
            invoke,
            0,
            OpOutcome::Indeterminate,
        )
    };
    assert_linearizable(&[
        write(1, 0, 10, 1),
        indeterminate_cas(2, 20, Some(1), 2),
        read(3, 30, 40, Some(2)),
    ]);
    // Its new value shows up, but the register never held its expected value in time.
    assert_violation(
        &[
            write(1, 0, 10, 1),
            write(1, 11, 12, 5),
            indeterminate_cas(2, 20, Some(1), 2),
            read(3, 30, 40, Some(2)),
        ],
        0,
    );
}

#[test]
fn failed_ops_and_indeterminate_reads_are_dropped() {
    assert_linearizable(&[
        write(1, 0, 10, 1),
        op(2, OpKind::Write(2), 20, 30, OpOutcome::Failed),
        op(2, OpKind::Read, 20, 30, OpOutcome::Indeterminate),
        op(2, OpKind::Read, 20, 30, OpOutcome::Failed),
        op(
            2,
            OpKind::Cas {
                expected: Some(1),
                new: 3,
            },
            20,
            30,
            OpOutcome::Failed,
        ),
        read(3, 40, 50, Some(1)),
    ]);
}

#[test]
fn malformed_operations_are_reported() {
    let explanation = assert_violation(&[op(1, OpKind::Read, 0, 10, OpOutcome::WriteOk)], 0);
    assert!(explanation.contains("malformed"), "{explanation}");
    assert_violation(&[read(1, 10, 5, None)], 0);
}

#[test]
fn budget_exhaustion_is_unknown_never_a_pass() {
    let mut rng = XorShift::new(7);
    let history = random_history(&mut rng, 4, 400, 60);
    assert_eq!(Checker::default().check(&history), Verdict::Linearizable);
    assert_eq!(
        Checker::new(10).check(&history),
        Verdict::Unknown { key: 4 }
    );
    assert_eq!(
        Checker::new(10).check_key(4, &history),
        Verdict::Unknown { key: 4 }
    );
}

#[test]
fn only_the_bad_key_is_reported() {
    let mut rng = XorShift::new(99);
    let mut history = Vec::new();
    for key in [1, 2, 3, 4] {
        history.extend(random_history(&mut rng, key, 200, 40));
    }
    history.extend(with_key(
        vec![write(9, 5000, 5010, 7), write(9, 5020, 5030, 8)],
        3,
    ));
    history.extend(with_key(vec![read(9, 5040, 5050, Some(7))], 3));
    let explanation = assert_violation(&history, 3);
    assert!(
        explanation.contains(&format!("op#{}", history.len() - 1)),
        "{explanation}"
    );
    // Each key can also be checked on its own.
    let checker = Checker::default();
    assert_eq!(checker.check_key(1, &history), Verdict::Linearizable);
    assert!(matches!(
        checker.check_key(3, &history),
        Verdict::Violation { key: 3, .. }
    ));
    // A violation on one key is reported even if another key runs out of budget.
    let mut tight = history.clone();
    tight.extend(with_key(vec![read(9, 0, 1, Some(12345))], 5));
    assert!(matches!(
        Checker::new(50).check(&tight),
        Verdict::Violation { key: 5, .. }
    ));
    assert_eq!(
        Checker::new(50).check(&history[..400]),
        Verdict::Unknown { key: 1 }
    );
}

// ----- randomized histories -------------------------------------------------------------

/// Tiny deterministic PRNG (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A truly linearizable history: a sequential execution of a register whose operation `i`
/// takes effect at time `1000 + 10 * i`, with every interval widened randomly by up to
/// `spread` on each side (which keeps the real-time order consistent with the execution
/// order), a few outcomes turned indeterminate and a few failed operations mixed in.
fn random_history(rng: &mut XorShift, key: u64, n: u64, spread: u64) -> Vec<Operation> {
    random_history_with(rng, key, n, spread, 25)
}

/// [`random_history`] with one operation in `indeterminate_one_in` made indeterminate.
fn random_history_with(
    rng: &mut XorShift,
    key: u64,
    n: u64,
    spread: u64,
    indeterminate_one_in: u64,
) -> Vec<Operation> {
    let mut history = Vec::new();
    let mut current: Value = None;
    let mut written: Vec<u64> = Vec::new();
    let mut fresh = key * 1_000_000;
    for i in 0..n {
        let point = 1000 + 10 * i;
        let invoke = point - rng.below(spread + 1);
        let complete = point + rng.below(spread + 1);
        let client = rng.below(10);
        let (kind, mut outcome) = match rng.below(10) {
            0..=4 => (OpKind::Read, OpOutcome::ReadOk(current)),
            5..=7 => {
                fresh += 1;
                current = Some(fresh);
                written.push(fresh);
                (OpKind::Write(fresh), OpOutcome::WriteOk)
            }
            _ => {
                let expected = match rng.below(3) {
                    0 => current,
                    1 if !written.is_empty() => {
                        let pick = rng.below(written.len() as u64) as usize;
                        Some(written[pick])
                    }
                    _ => None,
                };
                fresh += 1;
                let swapped = expected == current;
                if swapped {
                    current = Some(fresh);
                    written.push(fresh);
                }
                (
                    OpKind::Cas {
                        expected,
                        new: fresh,
                    },
                    OpOutcome::CasOk(swapped),
                )
            }
        };
        if rng.one_in(indeterminate_one_in) {
            outcome = OpOutcome::Indeterminate;
        }
        history.push(Operation {
            client,
            key,
            kind,
            invoke,
            complete,
            outcome,
        });
        if rng.one_in(30) {
            // A write that was rejected: it never took effect.
            fresh += 1;
            let kind = OpKind::Write(fresh);
            let outcome = OpOutcome::Failed;
            history.push(Operation {
                client,
                key,
                kind,
                invoke,
                complete,
                outcome,
            });
        }
    }
    history
}

#[test]
fn random_linearizable_histories_pass() {
    for seed in 0..300 {
        let mut rng = XorShift::new(seed);
        let n = 20 + rng.below(200);
        let spread = rng.below(80);
        let history = random_history(&mut rng, seed % 5, n, spread);
        let report = Checker::default().check_indexed(seed % 5, &indexed(&history));
        assert_eq!(report.verdict, Verdict::Linearizable, "seed {seed}");
    }
}

fn indexed(history: &[Operation]) -> Vec<(usize, &Operation)> {
    history.iter().enumerate().collect()
}

#[test]
fn reading_a_never_written_value_breaks_random_histories() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = XorShift::new(seed);
        let n = 20 + rng.below(200);
        let spread = rng.below(80);
        let mut history = random_history(&mut rng, 1, n, spread);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, OpOutcome::ReadOk(_)))
            .collect();
        if reads.is_empty() {
            continue;
        }
        let victim = reads[rng.below(reads.len() as u64) as usize];
        history[victim].outcome = OpOutcome::ReadOk(Some(u64::MAX - seed));
        let explanation = assert_violation(&history, 1);
        assert!(
            explanation.contains(&format!("op#{victim}")),
            "{explanation}"
        );
        mutated += 1;
    }
    assert!(mutated > 250);
}

#[test]
fn stale_reads_break_random_histories() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = XorShift::new(seed);
        let n = 50 + rng.below(300);
        let spread = rng.below(60);
        let mut history = random_history(&mut rng, 2, n, spread);
        let from = rng.below(history.len() as u64) as usize;
        if plant_stale_read(&mut history, from).is_none() {
            continue;
        }
        let report = Checker::default().check_indexed(2, &indexed(&history));
        assert!(
            matches!(report.verdict, Verdict::Violation { key: 2, .. }),
            "seed {seed}: {:?} after {} states",
            report.verdict,
            report.states
        );
        mutated += 1;
    }
    assert!(mutated > 200, "{mutated}");
}

/// Reference oracle for small histories, straight from the definition: tries every order
/// (and every subset of the indeterminate operations), remembering only which
/// (done-set, value) pairs already failed. No other pruning.
fn brute_force(ops: &[Operation]) -> bool {
    fn effect(op: &Operation, state: Value) -> Option<Value> {
        match (&op.kind, &op.outcome) {
            (OpKind::Read, OpOutcome::ReadOk(value)) => (*value == state).then_some(state),
            (OpKind::Write(value), _) => Some(Some(*value)),
            (OpKind::Cas { expected, new }, OpOutcome::CasOk(true)) => {
                (*expected == state).then_some(Some(*new))
            }
            (OpKind::Cas { expected, .. }, OpOutcome::CasOk(false)) => {
                (*expected != state).then_some(state)
            }
            (OpKind::Cas { expected, new }, _) => Some(if *expected == state {
                Some(*new)
            } else {
                state
            }),
            _ => None,
        }
    }
    fn must(op: &Operation) -> bool {
        op.outcome != OpOutcome::Indeterminate
    }
    fn search(
        ops: &[&Operation],
        done: u64,
        state: Value,
        failed: &mut HashSet<(u64, Value)>,
    ) -> bool {
        if (0..ops.len()).all(|i| done & (1 << i) != 0 || !must(ops[i])) {
            return true;
        }
        if failed.contains(&(done, state)) {
            return false;
        }
        for i in 0..ops.len() {
            let blocked = (0..ops.len()).any(|j| {
                j != i && done & (1 << j) == 0 && must(ops[j]) && ops[j].complete < ops[i].invoke
            });
            if done & (1 << i) != 0 || blocked {
                continue;
            }
            if let Some(next) = effect(ops[i], state) {
                if search(ops, done | (1 << i), next, failed) {
                    return true;
                }
            }
        }
        failed.insert((done, state));
        false
    }
    let kept: Vec<&Operation> = ops
        .iter()
        .filter(|op| {
            op.outcome != OpOutcome::Failed
                && !(op.kind == OpKind::Read && op.outcome == OpOutcome::Indeterminate)
        })
        .collect();
    assert!(kept.len() < 64);
    search(&kept, 0, None, &mut HashSet::new())
}

/// Random small histories, most of them not linearizable, with values drawn from a tiny
/// set (so some break the uniqueness promise, exercising the unoptimised paths too).
fn random_small_history(rng: &mut XorShift, unique_writes: bool) -> Vec<Operation> {
    fn value(rng: &mut XorShift) -> Value {
        if rng.one_in(4) {
            None
        } else {
            Some(1 + rng.below(4))
        }
    }
    let n = 1 + rng.below(7);
    let mut history = Vec::new();
    for i in 0..n {
        let invoke = rng.below(20);
        let complete = invoke + rng.below(12);
        let stored = if unique_writes {
            1 + i
        } else {
            1 + rng.below(4)
        };
        let (kind, outcome) = match rng.below(3) {
            0 => (OpKind::Read, OpOutcome::ReadOk(value(rng))),
            1 => (OpKind::Write(stored), OpOutcome::WriteOk),
            _ => {
                let kind = OpKind::Cas {
                    expected: value(rng),
                    new: stored,
                };
                (kind, OpOutcome::CasOk(rng.one_in(2)))
            }
        };
        let outcome = match rng.below(8) {
            0 => OpOutcome::Indeterminate,
            1 => OpOutcome::Failed,
            _ => outcome,
        };
        let client = rng.below(3);
        history.push(Operation {
            client,
            key: 0,
            kind,
            invoke,
            complete,
            outcome,
        });
    }
    history
}

/// A small linearizable history with many indeterminate operations, then up to two random
/// corruptions (so the result may or may not be linearizable).
fn random_near_linearizable_history(rng: &mut XorShift) -> Vec<Operation> {
    let n = 2 + rng.below(11);
    let spread = rng.below(40);
    let indeterminate_one_in = 1 + rng.below(4);
    let mut history = random_history_with(rng, 0, n, spread, indeterminate_one_in);
    let written: Vec<u64> = history
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Write(value) | OpKind::Cas { new: value, .. } => Some(value),
            OpKind::Read => None,
        })
        .collect();
    for _ in 0..rng.below(3) {
        let len = history.len() as u64;
        let op = &mut history[rng.below(len) as usize];
        let other = if written.is_empty() || rng.one_in(4) {
            None
        } else {
            Some(written[rng.below(written.len() as u64) as usize])
        };
        match (rng.below(4), &op.kind, &op.outcome) {
            (0, OpKind::Read, _) => op.outcome = OpOutcome::ReadOk(other),
            (0, OpKind::Cas { new, .. }, _) => {
                op.kind = OpKind::Cas {
                    expected: other,
                    new: *new,
                };
            }
            (1, _, OpOutcome::CasOk(swapped)) => op.outcome = OpOutcome::CasOk(!swapped),
            (1, OpKind::Write(_), OpOutcome::Indeterminate) => op.outcome = OpOutcome::WriteOk,
            (1, OpKind::Cas { .. }, OpOutcome::Indeterminate) => {
                op.outcome = OpOutcome::CasOk(rng.one_in(2));
            }
            (2, _, _) => op.outcome = OpOutcome::Indeterminate,
            _ => {
                let shift = rng.below(30);
                op.invoke += shift;
                op.complete += shift;
            }
        }
    }
    history
}

#[test]
fn agrees_with_brute_force_on_near_linearizable_histories() {
    let mut outcomes = [0u32; 2];
    for seed in 0..20_000 {
        let mut rng = XorShift::new(seed);
        let history = random_near_linearizable_history(&mut rng);
        let expected = brute_force(&history);
        let verdict = check(&history);
        assert!(!matches!(verdict, Verdict::Unknown { .. }), "seed {seed}");
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "seed {seed}: {verdict:?} {history:#?}"
        );
        outcomes[usize::from(expected)] += 1;
    }
    assert!(outcomes[0] > 1_000 && outcomes[1] > 1_000, "{outcomes:?}");
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut outcomes = [0u32; 2];
    for seed in 0..20_000 {
        let mut rng = XorShift::new(seed);
        let history = random_small_history(&mut rng, seed % 2 == 0);
        let expected = brute_force(&history);
        let verdict = check(&history);
        assert!(!matches!(verdict, Verdict::Unknown { .. }), "seed {seed}");
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "seed {seed}: {verdict:?} {history:#?}"
        );
        outcomes[usize::from(expected)] += 1;
    }
    // Both verdicts are well represented.
    assert!(outcomes[0] > 2_000 && outcomes[1] > 2_000, "{outcomes:?}");
}

/// Makes the first read at or after index `from` that can be made provably stale return
/// that stale value: the value of an acknowledged write followed, strictly in real time, by
/// another acknowledged store that completed before the read began. No valid linearization
/// can then exist (values are unique, so the old value never comes back), yet the
/// unique-value pre-checks cannot see it: only the search can. Returns the read's index.
fn plant_stale_read(history: &mut [Operation], from: usize) -> Option<usize> {
    let stores = |o: &Operation| matches!(o.outcome, OpOutcome::WriteOk | OpOutcome::CasOk(true));
    let mut found = None;
    'search: for (r, reader) in history.iter().enumerate().skip(from) {
        if !matches!(reader.outcome, OpOutcome::ReadOk(_)) {
            continue;
        }
        for later in history
            .iter()
            .filter(|o| stores(o) && o.complete < reader.invoke)
        {
            for earlier in history
                .iter()
                .filter(|o| matches!(o.outcome, OpOutcome::WriteOk) && o.complete < later.invoke)
            {
                if let OpKind::Write(value) = earlier.kind {
                    found = Some((r, value));
                    break 'search;
                }
            }
        }
    }
    let (r, value) = found?;
    history[r].outcome = OpOutcome::ReadOk(Some(value));
    Some(r)
}

#[test]
fn large_concurrent_histories_are_cheap() {
    // ~5000 operations, up to ~10 in flight at once, a handful indeterminate.
    for seed in 0..3 {
        let mut rng = XorShift::new(1000 + seed);
        let history = random_history(&mut rng, 0, 5000, 50);
        let report = Checker::default().check_indexed(0, &indexed(&history));
        assert_eq!(report.verdict, Verdict::Linearizable);
        assert!(report.states < 50_000, "{} states", report.states);
    }
}

#[test]
fn large_histories_with_many_indeterminate_ops_are_cheap() {
    // One operation in five indeterminate: far more than a handful.
    let mut rng = XorShift::new(4242);
    let history = random_history_with(&mut rng, 0, 3000, 50, 5);
    let report = Checker::default().check_indexed(0, &indexed(&history));
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert!(report.states < 50_000, "{} states", report.states);
}

#[test]
fn stale_read_deep_in_a_large_history_is_found() {
    for seed in 0..3 {
        let mut rng = XorShift::new(2000 + seed);
        let mut history = random_history(&mut rng, 0, 3000, 50);
        let from = history.len() / 2;
        let Some(stale) = plant_stale_read(&mut history, from) else {
            panic!("seed {seed}: no stale read planted")
        };
        let report = Checker::default().check_indexed(0, &indexed(&history));
        let Verdict::Violation {
            key: 0,
            explanation,
        } = &report.verdict
        else {
            panic!(
                "seed {seed}: {:?} after {} states",
                report.verdict, report.states
            )
        };
        assert!(report.states < 500_000, "{} states", report.states);
        assert!(
            explanation.contains(&format!("op#{stale}")),
            "{explanation}"
        );
    }
}
