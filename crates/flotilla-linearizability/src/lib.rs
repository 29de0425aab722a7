//! # flotilla-linearizability: linearizability checking for register histories, one key at a time
//!
//! This crate owns Flotilla's *correctness oracle* for client-visible behaviour: given the
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
//!
//! # Layout
//!
//! * `history`: the history types (operations, outcomes, the verdict);
//! * `checker`: [`Checker`], which splits a history by key and runs the steps below per key;
//! * `prepare`: normalisation, unique-value analysis and the search structures;
//! * `search`: the WGL search with its memo table;
//! * `explain`: the human-readable explanation of a violation.
//!
//! It depends on nothing but `std`, so the simulator (`flotilla-sim`) and the chaos harness
//! (`flotilla-chaos`) both use it without either depending on the other.

#![deny(missing_docs)]

mod checker;
mod explain;
mod history;
mod prepare;
mod search;
#[cfg(test)]
mod tests;

pub use checker::{Checker, STATES_PER_KEY_MAX_DEFAULT};
pub use history::{OpKind, OpOutcome, Operation, Value, Verdict};
