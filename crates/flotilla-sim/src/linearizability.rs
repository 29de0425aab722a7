//! Linearizability checking for register histories, one key at a time.
//!
//! This module owns Flotilla's *correctness oracle* for client-visible behaviour: given the
//! history of read / write / compare-and-set operations that clients invoked and the responses
//! they saw (from the deterministic simulator, or from a chaos harness driving real processes),
//! it decides whether some sequential execution of a register explains every response while
//! respecting real time. It knows nothing about Raft; it only sees operations.
//!
//! # Model
//!
//! Every key is an independent register whose initial value is `None`. Values written by the
//! workload are unique per key. An operation occupies the interval `[invoke, complete]` and must
//! take effect atomically at some instant inside it; boundaries are inclusive, so operation `A`
//! is only required to precede `B` when `A.complete < B.invoke`. [`OpOutcome::Failed`] operations
//! and reads with an [`OpOutcome::Indeterminate`] outcome constrain nothing and are dropped. An
//! indeterminate write or compare-and-set may take effect at any instant after its invocation,
//! or never.
//!
//! # Algorithm
//!
//! Registers are independent, so a history is split by key and every key is checked on its own
//! (linearizability is compositional). For one key:
//!
//! 1. **Normalisation.** Dropped operations are removed and malformed ones (an outcome that does
//!    not fit the operation kind, or a completion before the invocation) are reported.
//! 2. **Unique-value analysis.** Since each value has at most one writer, an operation that
//!    *observes* `v` (a read returning `v`, or a successful compare-and-set expecting `v`) must
//!    be linearized after the writer of `v`. So an observed value that nobody wrote is a
//!    violation; the writer's interval is clipped to end no later than its earliest observer's
//!    completion (a violation if that is before the writer's invocation); and an indeterminate
//!    writer whose value was observed certainly took effect, so it becomes an ordinary operation
//!    with that clipped deadline. Clipping only adds constraints every valid linearization
//!    already satisfies, so it never changes the verdict; it just makes the search cheaper.
//!    Values with several writers (a workload that breaks the uniqueness promise) are left
//!    alone, so the checker stays correct for them, merely slower.
//! 3. **Search.** The Wing & Gong search with Lowe's refinements (often called WGL). The call
//!    and return events of the operations that must take effect are kept, sorted by time
//!    (calls first on ties), in a doubly linked list. The search repeatedly picks an operation
//!    whose call precedes the first pending return, applies it to the register, and *lifts*
//!    both of its events out of the list; when no candidate works it backtracks. Every
//!    configuration (the set of linearized operations plus the register state) that failed is
//!    memoised and never explored again. Indeterminate operations are *optional*: their
//!    completion is at +infinity, so they have a call but no return event and never force a
//!    backtrack. They are tried after the mandatory candidates, and the search succeeds as soon
//!    as every operation that must take effect is linearized, so the ones that never took
//!    effect are simply skipped at the end.
//!
//! The search also prunes, in ways that never change the verdict:
//!
//! * A read (or a compare-and-set that did not swap) that can be linearized now is taken
//!   without branching: it does not change the register, so any successful continuation can be
//!   rearranged to perform it first.
//! * Overwriting a value that has a unique writer while some pending operation still has to
//!   observe it is a dead end (the value can never come back), so it is not attempted.
//! * Values that no operation reads or compares against are indistinguishable to the rest of
//!   the history and share one abstract register state.
//! * Optional operations only add options, so a configuration that used a superset of the
//!   optional operations of a failed configuration (same mandatory set and state) fails too.
//!   Optional operations with the same effect are interchangeable and tried in call order, one
//!   per kind. An optional store is not tried when it cannot matter: when it leaves the state
//!   unchanged, when it is immediately overwritten, or when it stores a value that nothing
//!   observes and no non-swapping compare-and-set could tell apart from the current one.
//!
//! The memo table stores the mandatory part of a configuration compactly as "every operation
//! whose return is before position `f`, plus the few later ones", so its size grows with
//! concurrency rather than with history length.
//!
//! # Budget
//!
//! Every configuration the search generates counts against [`Checker`]'s per-key budget. A key
//! whose search exhausts the budget before reaching a decision is reported as
//! [`Verdict::Unknown`] — never as a pass.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// A value written to a register. Values written by the workload are unique per key; `None` =
/// key absent / never written.
pub type Value = Option<u64>;

/// What an operation asked the register to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read the current value.
    Read,
    /// Unconditionally overwrite the current value.
    Write(u64),
    /// compare-and-set: if current == expected { current = new }
    Cas {
        /// Value the register must hold for the swap to happen.
        expected: Value,
        /// Value stored if the swap happens.
        new: u64,
    },
}

/// What the client learned about an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// read returned this value
    ReadOk(Value),
    /// write acknowledged
    WriteOk,
    /// cas completed; true = swapped, false = it did not swap (current != expected at its
    /// linearization point)
    CasOk(bool),
    /// definitely did not take effect (e.g. rejected before being proposed) — the op can be
    /// dropped from the history
    Failed,
    /// outcome unknown (timeout, leader lost): may or may not have taken effect, at any time
    /// after invoke (no upper bound on its linearization point)
    Indeterminate,
}

/// One client operation as observed from outside the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Client that issued the operation (used only in explanations).
    pub client: u64,
    /// Register the operation addresses.
    pub key: u64,
    /// What was requested.
    pub kind: OpKind,
    /// Logical or real time of invocation.
    pub invoke: u64,
    /// Time of response (ignored for [`OpOutcome::Indeterminate`]: treated as +infinity).
    pub complete: u64,
    /// What the client learned.
    pub outcome: OpOutcome,
}

/// Result of checking a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some sequential execution explains every response and respects real time.
    Linearizable,
    /// not linearizable; a short human-readable explanation naming the key and the operations
    /// involved
    Violation {
        /// The offending key.
        key: u64,
        /// Why the key's history is not linearizable.
        explanation: String,
    },
    /// search budget exhausted before a decision
    Unknown {
        /// The key whose search ran out of budget.
        key: u64,
    },
}

impl Verdict {
    /// `true` only for [`Verdict::Linearizable`]; an [`Verdict::Unknown`] is not a pass.
    #[must_use]
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Default search budget: configurations explored per key before giving up with
/// [`Verdict::Unknown`].
pub const DEFAULT_MAX_STATES_PER_KEY: u64 = 1_000_000;

/// Per-key linearizability checker for register histories. See the module docs for the
/// algorithm.
///
/// The budget bounds the search states generated per key: every time the search tries to
/// linearize one more operation from some configuration (and the step is possible), that is
/// one state, whether the resulting configuration turns out new or already refuted. A key
/// whose search would need more reports [`Verdict::Unknown`]. Keys decided without searching
/// (malformed histories, values nobody wrote, nothing that must take effect) use none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checker {
    max_states_per_key: u64,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STATES_PER_KEY)
    }
}

impl Checker {
    /// A checker that explores at most `max_states_per_key` search configurations per key.
    #[must_use]
    pub fn new(max_states_per_key: u64) -> Self {
        Self { max_states_per_key }
    }

    /// The per-key search budget.
    #[must_use]
    pub fn max_states_per_key(&self) -> u64 {
        self.max_states_per_key
    }

    /// Checks every key independently (registers are independent); returns the first
    /// Violation (keys are visited in ascending order), else Unknown if any key ran out of
    /// budget, else Linearizable.
    ///
    /// Operations are named in explanations by their index in `history` (`op#index`).
    #[must_use]
    pub fn check(&self, history: &[Operation]) -> Verdict {
        let mut by_key: BTreeMap<u64, Vec<(usize, &Operation)>> = BTreeMap::new();
        for (index, op) in history.iter().enumerate() {
            by_key.entry(op.key).or_default().push((index, op));
        }
        let mut unknown = None;
        for (&key, ops) in &by_key {
            match self.check_indexed(key, ops).verdict {
                Verdict::Linearizable => {}
                Verdict::Unknown { key } => {
                    unknown.get_or_insert(key);
                }
                violation @ Verdict::Violation { .. } => return violation,
            }
        }
        unknown.map_or(Verdict::Linearizable, |key| Verdict::Unknown { key })
    }

    /// Checks one key's operations (all with the same key).
    ///
    /// Operations whose key differs from `key` are ignored. Operations are named in
    /// explanations by their index in `ops` (`op#index`).
    #[must_use]
    pub fn check_key(&self, key: u64, ops: &[Operation]) -> Verdict {
        self.check_key_counting(key, ops).0
    }

    /// Like [`Self::check_key`], but also returns how many search configurations were
    /// generated (what the budget is compared against), which helps tune the budget.
    #[must_use]
    pub fn check_key_counting(&self, key: u64, ops: &[Operation]) -> (Verdict, u64) {
        let indexed: Vec<(usize, &Operation)> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.key == key)
            .collect();
        let report = self.check_indexed(key, &indexed);
        (report.verdict, report.states)
    }

    /// Checks one key; `ops` pairs each operation with the index used to name it.
    fn check_indexed(&self, key: u64, ops: &[(usize, &Operation)]) -> KeyReport {
        let prepared = match prepare(key, ops) {
            Ok(prepared) => prepared,
            Err(explanation) => {
                return KeyReport {
                    verdict: Verdict::Violation { key, explanation },
                    states: 0,
                }
            }
        };
        let mut search = Search::new(&prepared, self.max_states_per_key);
        let outcome = search.run();
        let verdict = match outcome {
            SearchOutcome::Linearizable => Verdict::Linearizable,
            SearchOutcome::OutOfBudget => Verdict::Unknown { key },
            SearchOutcome::Violation(dead_end) => Verdict::Violation {
                key,
                explanation: explain_dead_end(key, ops, &prepared, dead_end.as_ref()),
            },
        };
        KeyReport {
            verdict,
            states: search.states,
        }
    }
}

/// Verdict for one key plus the number of configurations the search generated.
struct KeyReport {
    verdict: Verdict,
    states: u64,
}

// ---------------------------------------------------------------------------------------------
// Normalisation and unique-value analysis
// ---------------------------------------------------------------------------------------------

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
type ValId = usize;

/// Effect of an operation on interned states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Read(ValId),
    Write(ValId),
    CasSwap { expected: ValId, new: ValId },
    CasNoSwap { expected: ValId },
}

impl Step {
    /// The register state after this step, or `None` if the step cannot happen in `state`.
    fn apply(self, state: ValId) -> Option<ValId> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(new) => Some(new),
            Step::CasSwap { expected, new } => (state == expected).then_some(new),
            Step::CasNoSwap { expected } => (state != expected).then_some(state),
        }
    }

    /// Whether the step may store a value (reads and non-swapping CAS never do).
    fn stores(self) -> bool {
        matches!(self, Step::Write(_) | Step::CasSwap { .. })
    }
}

/// Sentinel for "no node".
const NIL: usize = usize::MAX;

/// An operation as the search sees it. Operations `0..n_det` must take effect and are numbered
/// in the order of their return events; the remaining ones are indeterminate.
#[derive(Clone, Debug)]
struct SearchOp {
    local: usize,
    step: Step,
    /// Interned value this operation must observe (only for operations that must take effect).
    observes: Option<ValId>,
    /// Real value stored by `step`, if it stores one (for explanations).
    written: Value,
    call_node: usize,
    /// `NIL` for indeterminate operations.
    ret_node: usize,
}

/// Everything the search needs for one key.
struct Prepared {
    ops: Vec<SearchOp>,
    n_det: usize,
    /// `(op, is_call)` per event node, in time order.
    nodes: Vec<(usize, bool)>,
    /// Initial number of pending observers per interned value.
    pending: Vec<usize>,
    /// Initial number of pending non-swapping CAS operations expecting each interned value.
    pending_no_swap: Vec<usize>,
    /// Per interned value: no operation that must take effect observes it and no
    /// indeterminate CAS expects it. Only a non-swapping CAS can tell such a value apart from
    /// any other, which makes optional stores of it rarely useful (see `Search::junk_helps`).
    passive: Vec<bool>,
    /// Whether a value, once overwritten, can never be stored again.
    unique: Vec<bool>,
    /// Per indeterminate operation (indexed from `n_det`): its class. Operations with the same
    /// step are interchangeable once both have been invoked, as neither has a deadline.
    ind_class: Vec<usize>,
    /// Per class: its operations, in call order.
    class_members: Vec<Vec<usize>>,
}

/// Turns one key's operations into search structures, or explains why the history is
/// malformed or trivially not linearizable.
fn prepare(key: u64, ops: &[(usize, &Operation)]) -> Result<Prepared, String> {
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

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

/// A small multiplicative hasher for the memo table's word slices (std's `SipHash` is much
/// slower, and there is no adversary here).
#[derive(Clone, Copy, Debug, Default)]
struct WordHasher {
    hash: u64,
}

impl WordHasher {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(26) ^ word).wrapping_mul(Self::MULTIPLIER);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        // Final avalanche so that both the low and the high bits are well mixed.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }
}

/// Configurations known to fail, keyed by the must-take-effect part of the linearized set and
/// the register state. Each entry holds the indeterminate parts it failed with, concatenated
/// (each `LinSet::ind`-sized); a configuration that has used a superset of one of them is
/// dominated, since it has fewer options left.
type MemoTable = HashMap<Box<[u64]>, Vec<u64>, BuildHasherDefault<WordHasher>>;

/// Whether every bit of `small` is also set in `big`.
fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

/// The set of linearized operations.
///
/// Operations that must take effect are numbered by return order, so the set is "all ids below
/// `first_unset`" plus a few ids above it (bounded by concurrency); that is what the memo key
/// stores. Indeterminate operations get their own small bitset.
struct LinSet {
    det: Vec<u64>,
    ind: Vec<u64>,
    n_det: usize,
    first_unset: usize,
    det_count: usize,
}

impl LinSet {
    fn new(n_det: usize, n_ind: usize) -> Self {
        Self {
            det: vec![0; n_det.div_ceil(64)],
            ind: vec![0; n_ind.div_ceil(64)],
            n_det,
            first_unset: 0,
            det_count: 0,
        }
    }

    fn bit(id: usize) -> (usize, u64) {
        (id / 64, 1u64 << (id % 64))
    }

    fn insert(&mut self, id: usize) {
        if id < self.n_det {
            let (word, mask) = Self::bit(id);
            self.det[word] |= mask;
            self.det_count += 1;
            while self.first_unset < self.n_det {
                let (word, mask) = Self::bit(self.first_unset);
                if self.det[word] & mask == 0 {
                    break;
                }
                self.first_unset += 1;
            }
        } else {
            let (word, mask) = Self::bit(id - self.n_det);
            self.ind[word] |= mask;
        }
    }

    fn remove(&mut self, id: usize) {
        if id < self.n_det {
            let (word, mask) = Self::bit(id);
            self.det[word] &= !mask;
            self.det_count -= 1;
            self.first_unset = self.first_unset.min(id);
        } else {
            let (word, mask) = Self::bit(id - self.n_det);
            self.ind[word] &= !mask;
        }
    }

    /// Whether every operation that must take effect has been linearized.
    fn complete(&self) -> bool {
        self.det_count == self.n_det
    }

    /// Canonical memo key for the must-take-effect part of the set together with register
    /// state `state`: `[first_unset, state, words from first_unset's word up to the last set
    /// bit]` (every id below `first_unset` is in the set, so this determines it).
    fn det_key(&self, state: ValId, out: &mut Vec<u64>) {
        out.clear();
        out.push(self.first_unset as u64);
        out.push(state as u64);
        let mut above = self.det_count - self.first_unset;
        let mut word = self.first_unset / 64;
        let mut low_mask = !0u64 << (self.first_unset % 64);
        while above > 0 && word < self.det.len() {
            let bits = self.det[word];
            out.push(bits);
            above = above.saturating_sub((bits & low_mask).count_ones() as usize);
            low_mask = !0;
            word += 1;
        }
    }
}

/// Register state during the search: interned id (for the memo) and real value (for
/// explanations).
#[derive(Clone, Copy, Debug)]
struct State {
    id: ValId,
    value: Value,
}

/// One linearized operation on the search stack.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: usize,
    before: State,
    /// Taken without branching (a read-like step): backtracking past it skips alternatives.
    forced: bool,
    /// For indeterminate operations: the first pending return node when it was tried.
    boundary: usize,
}

/// The deepest point at which the search had to give up, for explanations.
#[derive(Clone, Debug)]
struct DeadEnd {
    /// Search depth (operations linearized, optional ones included).
    depth: usize,
    /// The operation whose return event was reached while it was still unlinearized.
    blocking: usize,
    state: State,
    last: Option<usize>,
    /// Snapshot of the linearized set (operations that must take effect).
    linearized: Vec<u64>,
    /// How many operations that must take effect were linearized.
    mandatory_done: usize,
}

impl DeadEnd {
    fn is_linearized(&self, op: usize) -> bool {
        let (word, mask) = LinSet::bit(op);
        self.linearized
            .get(word)
            .is_some_and(|bits| bits & mask != 0)
    }
}

enum SearchOutcome {
    Linearizable,
    Violation(Option<DeadEnd>),
    OutOfBudget,
}

/// Result of trying to linearize one operation next.
enum Attempt {
    Entered,
    Rejected,
    Seen,
    Complete,
    OutOfBudget,
}

/// Where the main loop is.
#[derive(Clone, Copy)]
enum Mode {
    /// Just entered a configuration: look for a read-like step to take without branching.
    Fresh,
    /// Trying operations that must take effect, starting at this event node.
    Walk(usize),
    /// Trying indeterminate operations (classes `class..`) whose call precedes `boundary`,
    /// the first pending return node; `helps` caches [`Search::junk_helps`].
    WalkIndeterminate {
        class: usize,
        boundary: usize,
        helps: Option<bool>,
    },
    /// Current configuration is a dead end.
    Backtrack,
}

struct Search<'p> {
    prepared: &'p Prepared,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
    set: LinSet,
    pending: Vec<usize>,
    pending_no_swap: Vec<usize>,
    /// Per class of interchangeable indeterminate operations, how many have been used. They
    /// are always used in call order, so the used ones form a prefix of the class.
    class_used: Vec<usize>,
    memo: MemoTable,
    key_buf: Vec<u64>,
    states: u64,
    budget: u64,
}

impl<'p> Search<'p> {
    fn new(prepared: &'p Prepared, budget: u64) -> Self {
        let n_nodes = prepared.nodes.len();
        let head = n_nodes;
        let tail = n_nodes + 1;
        let mut next = vec![NIL; n_nodes + 2];
        let mut prev = vec![NIL; n_nodes + 2];
        // Only events of operations that must take effect are linked; indeterminate operations
        // are tried separately, after them.
        let det_nodes = (0..n_nodes).filter(|&node| prepared.nodes[node].0 < prepared.n_det);
        let chain: Vec<usize> = std::iter::once(head)
            .chain(det_nodes)
            .chain([tail])
            .collect();
        for pair in chain.windows(2) {
            next[pair[0]] = pair[1];
            prev[pair[1]] = pair[0];
        }
        Self {
            prepared,
            next,
            prev,
            head,
            tail,
            set: LinSet::new(prepared.n_det, prepared.ops.len() - prepared.n_det),
            pending: prepared.pending.clone(),
            pending_no_swap: prepared.pending_no_swap.clone(),
            class_used: vec![0; prepared.class_members.len()],
            memo: MemoTable::default(),
            key_buf: Vec::new(),
            states: 0,
            budget,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    /// Marks `op` linearized: lifts its events out of the list and updates the bookkeeping.
    fn mark(&mut self, op: usize) {
        let prepared = self.prepared;
        let sop = &prepared.ops[op];
        self.set.insert(op);
        if let Some(observed) = sop.observes {
            self.pending[observed] -= 1;
        }
        if let Step::CasNoSwap { expected } = sop.step {
            self.pending_no_swap[expected] -= 1;
        }
        if op < prepared.n_det {
            self.unlink(sop.call_node);
            self.unlink(sop.ret_node);
        } else {
            self.class_used[prepared.ind_class[op - prepared.n_det]] += 1;
        }
    }

    /// Exactly undoes [`Self::mark`] (relinking in reverse order, as dancing links require).
    fn unmark(&mut self, op: usize) {
        let prepared = self.prepared;
        let sop = &prepared.ops[op];
        self.set.remove(op);
        if let Some(observed) = sop.observes {
            self.pending[observed] += 1;
        }
        if let Step::CasNoSwap { expected } = sop.step {
            self.pending_no_swap[expected] += 1;
        }
        if op < prepared.n_det {
            self.relink(sop.ret_node);
            self.relink(sop.call_node);
        } else {
            self.class_used[prepared.ind_class[op - prepared.n_det]] -= 1;
        }
    }

    /// Whether the configuration whose key is in `key_buf` (plus the current indeterminate
    /// set) is dominated by one already known to fail.
    fn dominated(&self) -> bool {
        let ind = &self.set.ind;
        self.memo
            .get(self.key_buf.as_slice())
            .is_some_and(|failed| {
                ind.is_empty()
                    || failed
                        .chunks_exact(ind.len())
                        .any(|seen| is_subset(seen, ind))
            })
    }

    /// Records the current configuration (with register state `state`) as failed.
    fn record_failure(&mut self, state: ValId) {
        self.set.det_key(state, &mut self.key_buf);
        let ind = &self.set.ind;
        if let Some(failed) = self.memo.get_mut(self.key_buf.as_slice()) {
            if !ind.is_empty() {
                // Drop entries the new one dominates, keeping the lists short.
                let mut kept = Vec::with_capacity(failed.len() + ind.len());
                for seen in failed.chunks_exact(ind.len()) {
                    if !is_subset(ind, seen) {
                        kept.extend_from_slice(seen);
                    }
                }
                kept.extend_from_slice(ind);
                *failed = kept;
            }
        } else {
            self.memo
                .insert(self.key_buf.clone().into_boxed_slice(), ind.clone());
        }
    }

    /// Tries to linearize `op` next from the current configuration.
    fn attempt(
        &mut self,
        op: usize,
        boundary: usize,
        state: &mut State,
        stack: &mut Vec<Frame>,
    ) -> Attempt {
        let prepared = self.prepared;
        let sop = &prepared.ops[op];
        let Some(next_id) = sop.step.apply(state.id) else {
            return Attempt::Rejected;
        };
        if matches!(sop.step, Step::Write(_))
            && stack.last().is_some_and(|frame| frame.op >= prepared.n_det)
        {
            // Overwriting what an optional operation just stored, before anything observed it,
            // makes that operation pointless: skipping it (the sibling branch) does as well.
            return Attempt::Rejected;
        }
        if next_id != state.id && prepared.unique[state.id] {
            // The current value can never come back; anyone still waiting to observe it
            // (other than this operation) would be stranded.
            let own = usize::from(sop.observes == Some(state.id));
            if self.pending[state.id] > own {
                return Attempt::Rejected;
            }
        }
        self.states += 1;
        if self.states > self.budget {
            return Attempt::OutOfBudget;
        }
        self.mark(op);
        if self.set.complete() {
            return Attempt::Complete;
        }
        self.set.det_key(next_id, &mut self.key_buf);
        if self.dominated() {
            self.unmark(op);
            return Attempt::Seen;
        }
        let forced = !sop.step.stores();
        stack.push(Frame {
            op,
            before: *state,
            forced,
            boundary,
        });
        *state = State {
            id: next_id,
            value: if forced { state.value } else { sop.written },
        };
        Attempt::Entered
    }

    /// The first unused operation of an indeterminate class, if it is worth trying now.
    ///
    /// Members of a class are interchangeable, so only the first unused one is tried. An
    /// optional store is pointless if it leaves the state as it is, or if it stores a passive
    /// value while [`Self::junk_helps`] says no: every continuation after it then also works
    /// without it. `helps` caches `junk_helps` for the current configuration.
    fn indeterminate_candidate(
        &self,
        class: usize,
        boundary: usize,
        state: ValId,
        helps: &mut Option<bool>,
    ) -> Option<usize> {
        let prepared = self.prepared;
        let op = *prepared.class_members[class].get(self.class_used[class])?;
        let sop = &prepared.ops[op];
        if sop.call_node > boundary {
            return None;
        }
        let next = sop.step.apply(state)?;
        if next == state {
            return None;
        }
        if prepared.passive[next] && !*helps.get_or_insert_with(|| self.junk_helps(state)) {
            return None;
        }
        Some(op)
    }

    /// Whether replacing `state` by a passive value could help: only a pending non-swapping
    /// CAS expecting `state` can tell the difference, and only if it can be linearized before
    /// anything that needs another store (a read, a store, or a successful CAS) must be, i.e.
    /// its call precedes the first pending return of such an operation.
    fn junk_helps(&self, state: ValId) -> bool {
        if self.pending_no_swap[state] == 0 {
            return false;
        }
        let mut node = self.next[self.head];
        while node != self.tail {
            let (op, is_call) = self.prepared.nodes[node];
            match (self.prepared.ops[op].step, is_call) {
                (Step::CasNoSwap { expected }, true) if expected == state => return true,
                (Step::CasNoSwap { .. }, _) | (_, true) => {}
                (_, false) => return false,
            }
            node = self.next[node];
        }
        false
    }

    /// A read-like operation (no store) that can be linearized right now, if any.
    fn read_like_candidate(&self, state: ValId) -> Option<usize> {
        let mut node = self.next[self.head];
        while node != self.tail {
            let (op, is_call) = self.prepared.nodes[node];
            if !is_call {
                return None;
            }
            let step = self.prepared.ops[op].step;
            if !step.stores() && step.apply(state).is_some() {
                return Some(op);
            }
            node = self.next[node];
        }
        None
    }

    fn run(&mut self) -> SearchOutcome {
        let prepared = self.prepared;
        let n_det = prepared.n_det;
        if n_det == 0 {
            return SearchOutcome::Linearizable;
        }
        let mut state = State { id: 0, value: None };
        let mut stack: Vec<Frame> = Vec::new();
        let mut dead_end: Option<DeadEnd> = None;
        let mut mode = Mode::Fresh;
        loop {
            mode = match mode {
                Mode::Fresh => match self.read_like_candidate(state.id) {
                    None => Mode::Walk(self.next[self.head]),
                    Some(op) => match self.attempt(op, NIL, &mut state, &mut stack) {
                        Attempt::Entered => Mode::Fresh,
                        Attempt::Rejected | Attempt::Seen => Mode::Backtrack,
                        Attempt::Complete => return SearchOutcome::Linearizable,
                        Attempt::OutOfBudget => return SearchOutcome::OutOfBudget,
                    },
                },
                Mode::Walk(node) => {
                    let (op, is_call) = prepared.nodes.get(node).copied().unwrap_or((NIL, false));
                    if is_call {
                        match self.attempt(op, NIL, &mut state, &mut stack) {
                            Attempt::Entered => Mode::Fresh,
                            Attempt::Rejected | Attempt::Seen => Mode::Walk(self.next[node]),
                            Attempt::Complete => return SearchOutcome::Linearizable,
                            Attempt::OutOfBudget => return SearchOutcome::OutOfBudget,
                        }
                    } else {
                        // The first pending return (`op`'s): no operation that must take
                        // effect can be tried beyond it.
                        let depth = stack.len();
                        let deepest = match &dead_end {
                            None => true,
                            Some(deepest) => depth > deepest.depth,
                        };
                        if op != NIL && deepest {
                            dead_end = Some(DeadEnd {
                                depth,
                                blocking: op,
                                state,
                                last: stack.last().map(|frame| frame.op),
                                linearized: self.set.det.clone(),
                                mandatory_done: self.set.det_count,
                            });
                        }
                        Mode::WalkIndeterminate {
                            class: 0,
                            boundary: node,
                            helps: None,
                        }
                    }
                }
                Mode::WalkIndeterminate {
                    class,
                    boundary,
                    mut helps,
                } => {
                    if class >= prepared.class_members.len() {
                        Mode::Backtrack
                    } else {
                        let candidate =
                            self.indeterminate_candidate(class, boundary, state.id, &mut helps);
                        let skip = Mode::WalkIndeterminate {
                            class: class + 1,
                            boundary,
                            helps,
                        };
                        match candidate {
                            None => skip,
                            Some(op) => match self.attempt(op, boundary, &mut state, &mut stack) {
                                Attempt::Entered => Mode::Fresh,
                                Attempt::Rejected | Attempt::Seen => skip,
                                Attempt::Complete => return SearchOutcome::Linearizable,
                                Attempt::OutOfBudget => return SearchOutcome::OutOfBudget,
                            },
                        }
                    }
                }
                Mode::Backtrack => loop {
                    let Some(frame) = stack.pop() else {
                        return SearchOutcome::Violation(dead_end);
                    };
                    self.record_failure(state.id);
                    self.unmark(frame.op);
                    state = frame.before;
                    if !frame.forced {
                        break if frame.op < n_det {
                            Mode::Walk(self.next[prepared.ops[frame.op].call_node])
                        } else {
                            Mode::WalkIndeterminate {
                                class: prepared.ind_class[frame.op - n_det] + 1,
                                boundary: frame.boundary,
                                helps: None,
                            }
                        };
                    }
                },
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations
// ---------------------------------------------------------------------------------------------

fn fmt_value(value: Value) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// One-line description of an operation, e.g. `op#3 (client 2, read -> 7, [10, 20])`.
fn describe(index: usize, op: &Operation) -> String {
    let kind = match &op.kind {
        OpKind::Read => "read".to_owned(),
        OpKind::Write(value) => format!("write {value}"),
        OpKind::Cas { expected, new } => format!("cas {} => {new}", fmt_value(*expected)),
    };
    let (outcome, complete) = match &op.outcome {
        OpOutcome::ReadOk(value) => (format!("-> {}", fmt_value(*value)), op.complete.to_string()),
        OpOutcome::WriteOk => ("ok".to_owned(), op.complete.to_string()),
        OpOutcome::CasOk(true) => ("swapped".to_owned(), op.complete.to_string()),
        OpOutcome::CasOk(false) => ("not swapped".to_owned(), op.complete.to_string()),
        OpOutcome::Failed => ("failed".to_owned(), op.complete.to_string()),
        OpOutcome::Indeterminate => ("indeterminate".to_owned(), "?".to_owned()),
    };
    format!(
        "op#{index} (client {}, {kind} {outcome}, [{}, {complete}])",
        op.client, op.invoke
    )
}

fn describe_raw(ops: &[(usize, &Operation)], raw: &RawOp) -> String {
    let (index, op) = ops[raw.local];
    describe(index, op)
}

fn describe_search_op(ops: &[(usize, &Operation)], prepared: &Prepared, op: usize) -> String {
    let (index, operation) = ops[prepared.ops[op].local];
    describe(index, operation)
}

fn explain_dead_end(
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

#[cfg(test)]
mod tests {
    use super::*;
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
                    j != i
                        && done & (1 << j) == 0
                        && must(ops[j])
                        && ops[j].complete < ops[i].invoke
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
        let stores =
            |o: &Operation| matches!(o.outcome, OpOutcome::WriteOk | OpOutcome::CasOk(true));
        let mut found = None;
        'search: for (r, reader) in history.iter().enumerate().skip(from) {
            if !matches!(reader.outcome, OpOutcome::ReadOk(_)) {
                continue;
            }
            for later in history
                .iter()
                .filter(|o| stores(o) && o.complete < reader.invoke)
            {
                for earlier in history.iter().filter(|o| {
                    matches!(o.outcome, OpOutcome::WriteOk) && o.complete < later.invoke
                }) {
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
}
