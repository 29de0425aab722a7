//! The simulated network: delay, loss, duplication, reordering and partitions of every
//! shape the simulator's nemesis uses.
//!
//! Owns: whether and when a message from one node reaches another. Must never: change a
//! message's contents.

use std::collections::BTreeSet;

use flotilla_raft::Rng;

/// Network behaviour of one simulation.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Shortest delivery delay, in time units.
    pub delay_min: u64,
    /// Longest usual delivery delay.
    pub delay_max: u64,
    /// Percent of messages that take up to 20x longer (reordering).
    pub slow_percent: u64,
    /// Percent of messages lost.
    pub loss_percent: u64,
    /// Percent of messages delivered twice.
    pub duplicate_percent: u64,
}

/// The shapes of partition the nemesis creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Two random halves that cannot talk.
    Halves,
    /// One node cut off from everyone.
    Isolate(usize),
    /// Two halves plus one node that talks to both (Jepsen's "bridge").
    Bridge,
    /// Each node talks only to its neighbours on a ring: everyone sees a majority, no two
    /// see the same one (Jepsen's "majorities ring").
    MajorityRing,
    /// Random directed links dropped: a talks to b but b not to a.
    OneWay,
}

/// Which directed links are down.
#[derive(Clone, Debug, Default)]
pub struct Network {
    blocked: BTreeSet<(usize, usize)>,
}

impl Network {
    /// True if messages from `from` to `to` are dropped.
    #[must_use]
    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// True if any link is down.
    #[must_use]
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn block_both(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    /// Creates a partition of `kind` among `n` nodes; returns a description.
    pub fn partition(&mut self, kind: PartitionKind, n: usize, rng: &mut Rng) -> String {
        self.heal();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, rng);
        match kind {
            PartitionKind::Halves => {
                let cut = 1 + rng.below((n - 1) as u64) as usize;
                let (a, b) = order.split_at(cut);
                for x in a {
                    for y in b {
                        self.block_both(*x, *y);
                    }
                }
                format!("partition halves {a:?} | {b:?}")
            }
            PartitionKind::Isolate(node) => {
                for other in 0..n {
                    if other != node {
                        self.block_both(node, other);
                    }
                }
                format!("partition isolate {node}")
            }
            PartitionKind::Bridge => {
                let bridge = order[0];
                let rest = &order[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                for x in a {
                    for y in b {
                        self.block_both(*x, *y);
                    }
                }
                format!("partition bridge {bridge} between {a:?} and {b:?}")
            }
            PartitionKind::MajorityRing => {
                // Node order[i] talks to the nodes within `reach` positions on the ring:
                // itself plus its neighbours make a majority, and no two nodes share one.
                let reach = (n / 2).div_ceil(2);
                for i in 0..n {
                    for j in 0..n {
                        let d = (i + n - j) % n;
                        if i != j && d.min(n - d) > reach {
                            self.blocked.insert((order[i], order[j]));
                        }
                    }
                }
                format!("partition majority ring {order:?}")
            }
            PartitionKind::OneWay => {
                let links = 1 + rng.below(n as u64) as usize;
                for _ in 0..links {
                    let a = rng.below(n as u64) as usize;
                    let b = rng.below(n as u64) as usize;
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
                format!("partition one-way {:?}", self.blocked)
            }
        }
    }
}

/// Fisher-Yates with the simulation's generator.
pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below((i + 1) as u64) as usize;
        items.swap(i, j);
    }
}
