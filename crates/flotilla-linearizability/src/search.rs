//! The search (step 3 of the crate docs): Wing & Gong with Lowe's refinements over the
//! doubly linked event list, with the memo table of configurations known to fail and the
//! pruning rules. It owns the budget count; it must never decide anything the prepared
//! structures did not imply (every pruning keeps the verdict).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::Value;
use crate::prepare::{Prepared, Step, ValId, NIL};

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
pub(crate) struct State {
    pub(crate) id: ValId,
    pub(crate) value: Value,
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
pub(crate) struct DeadEnd {
    /// Search depth (operations linearized, optional ones included).
    pub(crate) depth: usize,
    /// The operation whose return event was reached while it was still unlinearized.
    pub(crate) blocking: usize,
    pub(crate) state: State,
    pub(crate) last: Option<usize>,
    /// Snapshot of the linearized set (operations that must take effect).
    pub(crate) linearized: Vec<u64>,
    /// How many operations that must take effect were linearized.
    pub(crate) mandatory_done: usize,
}

impl DeadEnd {
    pub(crate) fn is_linearized(&self, op: usize) -> bool {
        let (word, mask) = LinSet::bit(op);
        self.linearized
            .get(word)
            .is_some_and(|bits| bits & mask != 0)
    }
}

pub(crate) enum SearchOutcome {
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

pub(crate) struct Search<'p> {
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
    pub(crate) states: u64,
    budget: u64,
}

impl<'p> Search<'p> {
    pub(crate) fn new(prepared: &'p Prepared, budget: u64) -> Self {
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

    pub(crate) fn run(&mut self) -> SearchOutcome {
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
