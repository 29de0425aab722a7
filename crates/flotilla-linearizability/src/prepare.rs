//! Normalisation and unique-value analysis (steps 1 and 2 of the crate docs), and the
//! structures the search runs on ([`Prepared`]: interned register states, operations
//! numbered by return order, the time-ordered event list, indeterminate classes). It
//! rejects malformed histories and values nobody wrote; it must never change a verdict,
//! only make the search cheaper.

use std::collections::HashMap;

use crate::history::{describe, OpKind, OpOutcome, Operation, Value};

/// Effect of a retained operation, in terms of real values.
#[derive(Clone, Copy, Debug)]
enum RawStep {
    Read(Value),
    Write(u64),
    /// A compare-and-set that swapped (or, if indeterminate, that may have swapped).
    CasSwap {
        expected: Value,
        new: u64,
    },
    /// A compare-and-set that completed without swapping.
    CasNoSwap {
        expected: Value,
    },
}

impl RawStep {
    /// The value this step stores, if it stores one.
    fn written(self) -> Option<u64> {
        match self {
            RawStep::Write(value) | RawStep::CasSwap { new: value, .. } => Some(value),
            RawStep::Read(_) | RawStep::CasNoSwap { .. } => None,
        }
    }
}

/// A retained operation before the search structures are built.
#[derive(Clone, Copy, Debug)]
struct RawOp {
    /// Position in the `ops` slice handed to `check_indexed`.
    local: usize,
    step: RawStep,
    invoke: u64,
    /// `None` = must not be assumed to have taken effect (indeterminate, completion at +inf).
    deadline: Option<u64>,
}

impl RawOp {
    /// The value this operation must see to succeed, if it certainly took effect.
    fn observed(&self) -> Option<Value> {
        self.deadline?;
        match self.step {
            RawStep::Read(value) => Some(value),
            RawStep::CasSwap { expected, .. } => Some(expected),
            RawStep::Write(_) | RawStep::CasNoSwap { .. } => None,
        }
    }
}

/// Interned register state used by the search. Id 0 is `None`; one id stands for every value
/// nobody observes or compares against.
pub(crate) type ValId = usize;

/// Effect of an operation on interned states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Read(ValId),
    Write(ValId),
    CasSwap { expected: ValId, new: ValId },
    CasNoSwap { expected: ValId },
}

impl Step {
    /// The register state after this step, or `None` if the step cannot happen in `state`.
    pub(crate) fn apply(self, state: ValId) -> Option<ValId> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(new) => Some(new),
            Step::CasSwap { expected, new } => (state == expected).then_some(new),
            Step::CasNoSwap { expected } => (state != expected).then_some(state),
        }
    }

    /// Whether the step may store a value (reads and non-swapping CAS never do).
    pub(crate) fn stores(self) -> bool {
        matches!(self, Step::Write(_) | Step::CasSwap { .. })
    }
}

/// Sentinel for "no node".
pub(crate) const NIL: usize = usize::MAX;

/// An operation as the search sees it. Operations `0..n_det` must take effect and are numbered
/// in the order of their return events; the remaining ones are indeterminate.
#[derive(Clone, Debug)]
pub(crate) struct SearchOp {
    pub(crate) local: usize,
    pub(crate) step: Step,
    /// Interned value this operation must observe (only for operations that must take effect).
    pub(crate) observes: Option<ValId>,
    /// Real value stored by `step`, if it stores one (for explanations).
    pub(crate) written: Value,
    pub(crate) call_node: usize,
    /// `NIL` for indeterminate operations.
    pub(crate) ret_node: usize,
}

/// Everything the search needs for one key.
pub(crate) struct Prepared {
    pub(crate) ops: Vec<SearchOp>,
    pub(crate) n_det: usize,
    /// `(op, is_call)` per event node, in time order.
    pub(crate) nodes: Vec<(usize, bool)>,
    /// Initial number of pending observers per interned value.
    pub(crate) pending: Vec<usize>,
    /// Initial number of pending non-swapping CAS operations expecting each interned value.
    pub(crate) pending_no_swap: Vec<usize>,
    /// Per interned value: no operation that must take effect observes it and no
    /// indeterminate CAS expects it. Only a non-swapping CAS can tell such a value apart from
    /// any other, which makes optional stores of it rarely useful (see `Search::junk_helps`).
    pub(crate) passive: Vec<bool>,
    /// Whether a value, once overwritten, can never be stored again.
    pub(crate) unique: Vec<bool>,
    /// Per indeterminate operation (indexed from `n_det`): its class. Operations with the same
    /// step are interchangeable once both have been invoked, as neither has a deadline.
    pub(crate) ind_class: Vec<usize>,
    /// Per class: its operations, in call order.
    pub(crate) class_members: Vec<Vec<usize>>,
}

/// Turns one key's operations into search structures, or explains why the history is
/// malformed or trivially not linearizable.
pub(crate) fn prepare(key: u64, ops: &[(usize, &Operation)]) -> Result<Prepared, String> {
    let mut raw = normalise(key, ops)?;
    let writers = writers_by_value(&raw);
    clip_to_observers(key, ops, &mut raw, &writers)?;
    Ok(build(&raw, &writers))
}

/// Drops operations that constrain nothing and rejects malformed ones.
fn normalise(key: u64, ops: &[(usize, &Operation)]) -> Result<Vec<RawOp>, String> {
    let mut raw = Vec::with_capacity(ops.len());
    for (local, &(index, op)) in ops.iter().enumerate() {
        let step = match (&op.kind, &op.outcome) {
            (_, OpOutcome::Failed) | (OpKind::Read, OpOutcome::Indeterminate) => continue,
            (OpKind::Read, OpOutcome::ReadOk(value)) => RawStep::Read(*value),
            (OpKind::Write(value), OpOutcome::WriteOk | OpOutcome::Indeterminate) => {
                RawStep::Write(*value)
            }
            (OpKind::Cas { expected, new }, OpOutcome::CasOk(true) | OpOutcome::Indeterminate) => {
                RawStep::CasSwap {
                    expected: *expected,
                    new: *new,
                }
            }
            (OpKind::Cas { expected, .. }, OpOutcome::CasOk(false)) => RawStep::CasNoSwap {
                expected: *expected,
            },
            _ => {
                return Err(format!(
                    "key {key}: malformed history: {} has an outcome that does not match its kind",
                    describe(index, op)
                ))
            }
        };
        let deadline = if op.outcome == OpOutcome::Indeterminate {
            None
        } else if op.complete < op.invoke {
            return Err(format!(
                "key {key}: malformed history: {} completed before it was invoked",
                describe(index, op)
            ));
        } else {
            Some(op.complete)
        };
        raw.push(RawOp {
            local,
            step,
            invoke: op.invoke,
            deadline,
        });
    }
    Ok(raw)
}

/// Indices (into `raw`) of the operations that may store each value.
fn writers_by_value(raw: &[RawOp]) -> HashMap<u64, Vec<usize>> {
    let mut writers: HashMap<u64, Vec<usize>> = HashMap::new();
    for (r, op) in raw.iter().enumerate() {
        if let Some(value) = op.step.written() {
            writers.entry(value).or_default().push(r);
        }
    }
    writers
}

/// Unique-value analysis: reports observed values nobody wrote, and clips the deadline of each
/// value's sole writer to its earliest observer's deadline (turning indeterminate writers whose
/// value was observed into operations that must take effect). Runs to a fixpoint, since a
/// compare-and-set whose deadline moves is itself an observer of its expected value.
fn clip_to_observers(
    key: u64,
    ops: &[(usize, &Operation)],
    raw: &mut [RawOp],
    writers: &HashMap<u64, Vec<usize>>,
) -> Result<(), String> {
    let mut observers: HashMap<u64, Vec<usize>> = HashMap::new();
    for (r, op) in raw.iter().enumerate() {
        if let Some(Some(value)) = op.observed() {
            observers.entry(value).or_default().push(r);
        }
    }
    let mut work: Vec<u64> = observers.keys().copied().collect();
    // Pop the smallest value first so that explanations are deterministic.
    work.sort_unstable_by(|a, b| b.cmp(a));
    while let Some(value) = work.pop() {
        let Some(value_observers) = observers.get(&value) else {
            continue;
        };
        let earliest = value_observers
            .iter()
            .filter_map(|&r| raw[r].deadline.map(|deadline| (deadline, r)))
            .min();
        let Some((bound, observer)) = earliest else {
            continue;
        };
        let writer = match writers.get(&value).map(Vec::as_slice) {
            None | Some([]) => {
                let first = value_observers.iter().copied().min().unwrap_or(observer);
                return Err(format!(
                    "key {key}: {} observed value {value}, which no operation wrote (or every \
                     write of it definitely failed)",
                    describe_raw(ops, &raw[first])
                ));
            }
            Some(&[writer]) => writer,
            Some(_) => continue,
        };
        if bound < raw[writer].invoke {
            return Err(format!(
                "key {key}: {} observed value {value} and must have taken effect by time \
                 {bound}, but the only write of {value}, {}, was invoked later",
                describe_raw(ops, &raw[observer]),
                describe_raw(ops, &raw[writer])
            ));
        }
        let was_indeterminate = match raw[writer].deadline {
            Some(deadline) if deadline <= bound => continue,
            Some(_) => false,
            None => true,
        };
        raw[writer].deadline = Some(bound);
        if let RawStep::CasSwap {
            expected: Some(expected),
            ..
        } = raw[writer].step
        {
            if was_indeterminate {
                observers.entry(expected).or_default().push(writer);
            }
            work.push(expected);
        }
    }
    Ok(())
}

/// Builds the search structures: interned states, operation numbering and the event list.
fn build(raw: &[RawOp], writers: &HashMap<u64, Vec<usize>>) -> Prepared {
    // Intern every value some operation reads or compares against; `None` is always id 0.
    let mut interned: HashMap<Value, ValId> = HashMap::new();
    interned.insert(None, 0);
    let mut intern = |value: Value| {
        let next = interned.len();
        *interned.entry(value).or_insert(next)
    };
    for op in raw {
        match op.step {
            RawStep::Read(value)
            | RawStep::CasSwap {
                expected: value, ..
            }
            | RawStep::CasNoSwap { expected: value } => {
                intern(value);
            }
            RawStep::Write(_) => {}
        }
    }
    let junk = interned.len();
    let id_of = |value: Value| interned.get(&value).copied().unwrap_or(junk);

    let n_values = interned.len() + 1;
    let mut unique = vec![false; n_values];
    for (&value, &id) in &interned {
        unique[id] = match value {
            None => true,
            Some(v) => writers.get(&v).map_or(0, Vec::len) <= 1,
        };
    }
    let mut pending = vec![0usize; n_values];
    let mut pending_no_swap = vec![0usize; n_values];

    // Events sorted by time; at equal times calls come first, so touching intervals overlap.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(raw.len() * 2);
    for (r, op) in raw.iter().enumerate() {
        events.push((op.invoke, false, r));
        if let Some(deadline) = op.deadline {
            events.push((deadline, true, r));
        }
    }
    events.sort_unstable();

    let n_det = raw.iter().filter(|op| op.deadline.is_some()).count();
    let mut order = Vec::with_capacity(raw.len());
    for &(_, is_return, r) in &events {
        if is_return {
            order.push(r);
        }
    }
    for &(_, is_return, r) in &events {
        if !is_return && raw[r].deadline.is_none() {
            order.push(r);
        }
    }
    let mut internal = vec![NIL; raw.len()];
    for (id, &r) in order.iter().enumerate() {
        internal[r] = id;
    }

    let mut ops: Vec<SearchOp> = order
        .iter()
        .map(|&r| {
            let op = &raw[r];
            let step = match op.step {
                RawStep::Read(value) => Step::Read(id_of(value)),
                RawStep::Write(new) => Step::Write(id_of(Some(new))),
                RawStep::CasSwap { expected, new } => Step::CasSwap {
                    expected: id_of(expected),
                    new: id_of(Some(new)),
                },
                RawStep::CasNoSwap { expected } => Step::CasNoSwap {
                    expected: id_of(expected),
                },
            };
            let observes = op.observed().map(id_of);
            if let Some(observed) = observes {
                pending[observed] += 1;
            }
            if let (Step::CasNoSwap { expected }, Some(_)) = (step, op.deadline) {
                pending_no_swap[expected] += 1;
            }
            SearchOp {
                local: op.local,
                step,
                observes,
                written: op.step.written(),
                call_node: NIL,
                ret_node: NIL,
            }
        })
        .collect();

    let mut nodes = Vec::with_capacity(events.len());
    for (node, &(_, is_return, r)) in events.iter().enumerate() {
        let id = internal[r];
        if is_return {
            ops[id].ret_node = node;
        } else {
            ops[id].call_node = node;
        }
        nodes.push((id, !is_return));
    }

    // Indeterminate operations are numbered in call order, so classes list them in call order.
    let mut classes: HashMap<Step, usize> = HashMap::new();
    let mut class_members: Vec<Vec<usize>> = Vec::new();
    let mut ind_class = Vec::with_capacity(ops.len() - n_det);
    let mut passive: Vec<bool> = pending.iter().map(|&observers| observers == 0).collect();
    for (id, op) in ops.iter().enumerate().skip(n_det) {
        let fresh = classes.len();
        let class = *classes.entry(op.step).or_insert(fresh);
        if class == class_members.len() {
            class_members.push(Vec::new());
        }
        class_members[class].push(id);
        ind_class.push(class);
        if let Step::CasSwap { expected, .. } = op.step {
            passive[expected] = false;
        }
    }

    Prepared {
        ops,
        n_det,
        nodes,
        pending,
        pending_no_swap,
        passive,
        unique,
        ind_class,
        class_members,
    }
}

fn describe_raw(ops: &[(usize, &Operation)], raw: &RawOp) -> String {
    let (index, op) = ops[raw.local];
    describe(index, op)
}
