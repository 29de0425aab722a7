//! [`Checker`]: the entry point. It owns the per-key budget and the split of a history by
//! key (registers are independent, so linearizability is checked key by key); per key it
//! runs normalisation (`prepare`), the search (`search`) and, on a violation, the
//! explanation (`explain`). It never looks inside the search.

use std::collections::BTreeMap;

use crate::explain::explain_dead_end;
use crate::history::{Operation, Verdict};
use crate::prepare::prepare;
use crate::search::{Search, SearchOutcome};

/// Default search budget: configurations explored per key before giving up with
/// [`Verdict::Unknown`].
pub const STATES_PER_KEY_MAX_DEFAULT: u64 = 1_000_000;

/// Per-key linearizability checker for register histories. See the crate docs for the
/// algorithm.
///
/// The budget bounds the search states generated per key: every time the search tries to
/// linearize one more operation from some configuration (and the step is possible), that is
/// one state, whether the resulting configuration turns out new or already refuted. A key
/// whose search would need more reports [`Verdict::Unknown`]. Keys decided without searching
/// (malformed histories, values nobody wrote, nothing that must take effect) use none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checker {
    states_per_key_max: u64,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new(STATES_PER_KEY_MAX_DEFAULT)
    }
}

impl Checker {
    /// A checker that explores at most `states_per_key_max` search configurations per key.
    #[must_use]
    pub fn new(states_per_key_max: u64) -> Self {
        Self { states_per_key_max }
    }

    /// The per-key search budget.
    #[must_use]
    pub fn states_per_key_max(&self) -> u64 {
        self.states_per_key_max
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
    pub(crate) fn check_indexed(&self, key: u64, ops: &[(usize, &Operation)]) -> KeyReport {
        let prepared = match prepare(key, ops) {
            Ok(prepared) => prepared,
            Err(explanation) => {
                return KeyReport {
                    verdict: Verdict::Violation { key, explanation },
                    states: 0,
                }
            }
        };
        let mut search = Search::new(&prepared, self.states_per_key_max);
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
pub(crate) struct KeyReport {
    pub(crate) verdict: Verdict,
    pub(crate) states: u64,
}
