//! Explanations of violations found by the search: which partial linearization got
//! furthest and why the operation that blocked it cannot take effect. Read-only over the
//! prepared structures and the dead end.

use crate::history::{describe, fmt_value, Operation};
use crate::prepare::Prepared;
use crate::search::DeadEnd;

fn describe_search_op(ops: &[(usize, &Operation)], prepared: &Prepared, op: usize) -> String {
    let (index, operation) = ops[prepared.ops[op].local];
    describe(index, operation)
}

pub(crate) fn explain_dead_end(
    key: u64,
    ops: &[(usize, &Operation)],
    prepared: &Prepared,
    dead_end: Option<&DeadEnd>,
) -> String {
    let Some(dead_end) = dead_end else {
        return format!(
            "key {key}: no linearization of the {} operation(s) exists",
            ops.len()
        );
    };
    let last = dead_end.last.map_or_else(String::new, |op| {
        format!(", ending with {}", describe_search_op(ops, prepared, op))
    });
    let state = dead_end.state;
    let blocking = &prepared.ops[dead_end.blocking];
    let reason = match blocking.step.apply(state.id) {
        None => format!(
            "it is inconsistent with the register holding {}",
            fmt_value(state.value)
        ),
        Some(next) if next != state.id && prepared.unique[state.id] => {
            let stranded = (0..prepared.n_det).find(|&op| {
                op != dead_end.blocking
                    && prepared.ops[op].observes == Some(state.id)
                    && !dead_end.is_linearized(op)
            });
            stranded.map_or_else(
                || "no continuation after it succeeds".to_owned(),
                |op| {
                    format!(
                        "it would overwrite {}, which {} still has to observe",
                        fmt_value(state.value),
                        describe_search_op(ops, prepared, op)
                    )
                },
            )
        }
        Some(_) => "no continuation after it succeeds".to_owned(),
    };
    format!(
        "key {key}: no linearization exists; the longest partial linearization found orders {} \
         of the {} operation(s) that must take effect{last}, leaving the register at {}; then \
         {} cannot take effect before its completion, because {reason}",
        dead_end.mandatory_done,
        prepared.n_det,
        fmt_value(state.value),
        describe_search_op(ops, prepared, dead_end.blocking)
    )
}
