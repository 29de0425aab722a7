//! The safety checks run after every step: at most one leader per term, log matching,
//! leader completeness, state-machine safety, commit never decreasing, applied <= committed,
//! nothing committed without a quorum of the configuration(s) in force, and (over real
//! storage) that recovery returns exactly the log acknowledged durable. Read-only over the
//! cores: a check must never change what it checks, only report a [`Violation`].

use flotilla_raft::{Entry, HardState, LogIndex, LogStore, PeerId, Raft, Role, Term};

use crate::chain::chain_hash;
use crate::node::SimStore;

use super::Simulation;

impl Simulation {
    /// At a restart on the shared log: the recovered log holds exactly the durable log the
    /// simulator tracked (what was acknowledged to the core as persisted) from its first
    /// index on (entries compacted away are exempt), and the recovered term and vote are
    /// the acknowledged ones.
    pub(super) fn check_recovered(
        &mut self,
        node: usize,
        store: &SimStore,
        hard_state: &HardState,
    ) {
        let n = &self.nodes[node];
        let id = n.id.clone();
        if (&hard_state.term, &hard_state.vote) != (&n.hard_state.term, &n.hard_state.vote) {
            let detail = format!(
                "{id} recovered term {} vote {:?}, but term {} vote {:?} was acknowledged",
                hard_state.term, hard_state.vote, n.hard_state.term, n.hard_state.vote
            );
            self.violate("recovery returns what was durable", detail);
            return;
        }
        let durable = &n.durable;
        let (first, last) = (store.first_index(), store.last_index());
        let Some(mut previous) = durable.hash_at(first.prev()) else {
            let detail = format!(
                "{id} recovered a log from {first} to {last}, but the durable log runs from {} \
                 to {}",
                durable.base_index().next(),
                durable.last_index()
            );
            self.violate("recovery returns what was durable", detail);
            return;
        };
        let compaction_term = store.term(first.prev());
        if let Some(expected) = durable.term_at(first.prev()) {
            if compaction_term != Ok(expected) {
                let detail = format!(
                    "{id} recovered compaction point {} of term {compaction_term:?}, durable \
                     term {expected}",
                    first.prev()
                );
                self.violate("recovery returns what was durable", detail);
                return;
            }
        }
        let entries = if first <= last {
            store.entries(first, last.next(), u64::MAX)
        } else {
            Ok(Vec::new())
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                let detail = format!("{id} cannot read its recovered log {first}..={last}: {e}");
                self.violate("recovery returns what was durable", detail);
                return;
            }
        };
        let mut differs = None;
        let mut expected_index = first;
        for entry in &entries {
            if entry.index != expected_index {
                differs = Some((expected_index, "is missing from the recovered log"));
                break;
            }
            previous = chain_hash(previous, entry);
            match durable.hash_at(entry.index) {
                Some(h) if h == previous => {}
                Some(_) => {
                    differs = Some((entry.index, "differs from the durable entry"));
                    break;
                }
                None => {
                    differs = Some((entry.index, "was recovered but never acknowledged"));
                    break;
                }
            }
            expected_index = expected_index.next();
        }
        if differs.is_none() && expected_index <= durable.last_index() {
            differs = Some((expected_index, "was acknowledged but not recovered"));
        }
        if let Some((index, what)) = differs {
            let detail = format!(
                "{id}: entry {index} {what} (recovered {first}..={last}, durable up to {})",
                durable.last_index()
            );
            self.violate("recovery returns what was durable", detail);
        }
    }

    // ----- invariants ------------------------------------------------------------------

    /// Log matching: the same (index, term) always carries the same history.
    pub(super) fn record_emitted_entries(&mut self, node: usize, entries: &[Entry]) {
        let added = self.nodes[node].view.append(entries);
        for (index, term, hash) in added {
            match self.entry_hashes.get(&(index, term)) {
                Some(existing) if *existing != hash => {
                    let id = self.nodes[node].id.clone();
                    let detail = format!(
                        "{id} holds {index}@{term} with a history different from another peer's"
                    );
                    self.violate("log matching", detail);
                    return;
                }
                Some(_) => {}
                None => {
                    self.entry_hashes.insert((index, term), hash);
                }
            }
        }
    }

    /// Checks after every step: one leader per term, leader completeness, commit never
    /// decreasing, applied <= committed, every commit agreeing with the committed log and
    /// stored on a quorum of the configuration(s) in force.
    pub(super) fn observe(&mut self, node: usize) {
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else {
            return;
        };
        let (role, term, committed, applied) =
            (raft.role(), raft.term(), raft.committed(), raft.applied());
        let id = n.id.clone();
        if applied > committed {
            self.violate(
                "applied <= committed",
                format!("{id} applied {applied} > {committed}"),
            );
            return;
        }
        if committed < n.observed_commit {
            let detail = format!("{id} commit went from {} to {committed}", n.observed_commit);
            self.violate("commit never decreases", detail);
            return;
        }
        let hibernating = raft.is_hibernating();
        let became_leader = role == Role::Leader && n.observed_role != (Role::Leader, term);
        let commit_advanced = committed > n.observed_commit;
        if hibernating && !self.asleep[node] {
            self.count("hibernations");
        }
        self.asleep[node] = hibernating;
        let n = &mut self.nodes[node];
        n.observed_role = (role, term);
        n.observed_commit = committed;
        if role == Role::Leader {
            if let Some(other) = self.leaders.insert(term, node) {
                if other != node {
                    let detail = format!("{} and {id} both led term {term}", self.nodes[other].id);
                    self.violate("one leader per term", detail);
                    return;
                }
            }
        }
        if became_leader {
            self.note(format!("{id} became leader of term {term}"));
            self.count("elections won");
            self.check_leader_completeness(node);
        }
        if commit_advanced {
            self.check_commit(node, committed);
            if role == Role::Leader {
                self.check_commit_quorum(node, committed);
                self.check_commit_term(node, committed, term);
            }
        }
    }

    /// Leader completeness (Raft paper §5.4.3): an entry committed in term T is in the log
    /// of every leader of a term above T. A leader elected late, in a term below entries
    /// committed meanwhile (its votes waited in a paused process while the others moved on),
    /// need not hold those: it can commit nothing and steps down at the first answer.
    pub(super) fn check_leader_completeness(&mut self, node: usize) {
        let n = &self.nodes[node];
        let Some(term) = n.raft.as_ref().map(Raft::term) else {
            return;
        };
        // The newest committed entry of a term below the leader's (committed terms never
        // decrease along the log).
        let mut slot = self.canon.len();
        let expected = loop {
            if slot == 0 {
                return;
            }
            let Some(hash) = self.canon[slot - 1] else {
                return;
            };
            match self.committed_term(LogIndex(slot as u64), hash) {
                Some(t) if t >= term => slot -= 1,
                Some(_) => break hash,
                None => return,
            }
        };
        let last_committed = LogIndex(slot as u64);
        if n.view.base_index() > last_committed {
            return;
        }
        if n.view.hash_at(last_committed) != Some(expected) {
            let detail = format!(
                "{} became leader without committed entry {last_committed} (its log ends at {})",
                n.id,
                n.view.last_index()
            );
            self.violate("leader completeness", detail);
        }
    }

    /// The term of the entry at `index` whose chain hash is `hash`, if any core emitted it.
    pub(super) fn committed_term(&self, index: LogIndex, hash: u64) -> Option<Term> {
        self.entry_hashes
            .range((index, Term::ZERO)..=(index, Term(u64::MAX)))
            .find(|(_, h)| **h == hash)
            .map(|((_, term), _)| *term)
    }

    pub(super) fn check_commit(&mut self, node: usize, committed: LogIndex) {
        let n = &self.nodes[node];
        let Some(hash) = n.view.hash_at(committed) else {
            let detail = format!(
                "{} committed {committed} outside its log (base {}, last {})",
                n.id,
                n.view.base_index(),
                n.view.last_index()
            );
            self.violate("commit within log", detail);
            return;
        };
        let slot = committed.get() as usize;
        if slot == 0 {
            return;
        }
        if slot <= self.canon.len() {
            if let Some(known) = self.canon[slot - 1] {
                if known != hash {
                    let detail = format!(
                        "{} committed a different entry at {committed} than was committed before",
                        n.id
                    );
                    self.violate("state machine safety", detail);
                }
            } else {
                self.canon[slot - 1] = Some(hash);
            }
            return;
        }
        // Extend the committed log with this node's entries, after checking it agrees with
        // what was committed so far.
        let last = LogIndex(self.canon.len() as u64);
        if let Some(Some(known)) = self.canon.last().copied() {
            if n.view.base_index() <= last && n.view.hash_at(last) != Some(known) {
                let detail = format!(
                    "{} committed {committed} on a log that disagrees with committed entry {last}",
                    n.id
                );
                self.violate("state machine safety", detail);
                return;
            }
        }
        let mut index = last.next();
        while index <= committed {
            let h = n.view.hash_at(index);
            self.canon.push(h);
            index = index.next();
        }
    }

    /// Nothing commits unless a quorum of every configuration in force stores it durably.
    pub(super) fn check_commit_quorum(&mut self, node: usize, committed: LogIndex) {
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else {
            return;
        };
        let Some(hash) = n.view.hash_at(committed) else {
            return;
        };
        let configuration = raft.configuration().clone();
        let stored = |peer: &PeerId| -> bool {
            self.index_of.get(peer).is_some_and(|&i| {
                let d = &self.nodes[i].durable;
                d.hash_at(committed) == Some(hash) || d.base_index() >= committed
            })
        };
        let halves = std::iter::once(&configuration.voters).chain(configuration.old_voters.iter());
        for voters in halves {
            let count = voters.iter().filter(|p| stored(p)).count();
            if count < voters.len() / 2 + 1 {
                let detail = format!(
                    "{} committed {committed} stored durably on {count} of voters {voters:?}",
                    n.id
                );
                self.violate("commit needs a quorum", detail);
                return;
            }
        }
    }

    /// Raft paper §5.4.2: a leader advances its commit index only to an entry of its own
    /// term; earlier entries commit indirectly.
    pub(super) fn check_commit_term(&mut self, node: usize, committed: LogIndex, term: Term) {
        let n = &self.nodes[node];
        let entry_term = n.view.term_at(committed);
        if entry_term.is_some_and(|t| t != term) {
            let detail = format!(
                "leader {} of term {term} committed {committed} of term {:?} by counting",
                n.id, entry_term
            );
            self.violate("leader commits only its own term", detail);
        }
    }

    // ----- liveness probe ----------------------------------------------------------------
}
