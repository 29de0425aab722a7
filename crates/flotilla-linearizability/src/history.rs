//! The history types: what a client asked a register to do ([`OpKind`]), what it learned
//! ([`OpOutcome`]), one timed operation ([`Operation`]) and the checker's answer ([`Verdict`]),
//! plus the one-line description of an operation that explanations use. Plain data: this
//! file must never know about the search.

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

pub(crate) fn fmt_value(value: Value) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// One-line description of an operation, e.g. `op#3 (client 2, read -> 7, [10, 20])`.
pub(crate) fn describe(index: usize, op: &Operation) -> String {
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
