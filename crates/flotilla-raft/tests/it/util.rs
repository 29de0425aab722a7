//! Helpers shared by the paper and feature tests: building clusters, delivering messages
//! while recording them, and reading what the leader knows of its peers.

use bytes::Bytes;
use flotilla_raft::testkit::{peer_ids, Cluster};
use flotilla_raft::{Config, Configuration, Event, Message, MessageBody, PeerId, Role};

/// Upper bound on delivery steps or ticks in a helper loop; reaching it fails the test.
const STEPS_MAX: usize = 100_000;

/// `n1`..`nN`.
pub fn ids(n: usize) -> Vec<PeerId> {
    peer_ids(n)
}

/// A peer id from its name.
pub fn id(name: &str) -> PeerId {
    PeerId::new(name)
}

/// A cluster of `peers`, each bootstrapped with `configuration`, with options from `make`.
pub fn cluster_with(
    configuration: &Configuration,
    peers: &[PeerId],
    make: fn(PeerId) -> Config,
) -> Cluster {
    let mut c = Cluster::with_config(0, make);
    for p in peers {
        c.add_node(p.clone(), configuration.clone());
    }
    c
}

/// A cluster of `n` voters with default options and `n1` elected; everything delivered.
pub fn elected(n: usize) -> (Cluster, Vec<PeerId>) {
    elected_with(n, Config::new)
}

/// Like [`elected`], with options from `make`.
pub fn elected_with(n: usize, make: fn(PeerId) -> Config) -> (Cluster, Vec<PeerId>) {
    let mut c = Cluster::with_config(n, make);
    let ids = ids(n);
    if n > 1 {
        assert_eq!(
            c.elect(&ids[0]),
            Some(ids[0].clone()),
            "{}",
            c.describe_states()
        );
    }
    assert_eq!(c.node(&ids[0]).raft.role(), Role::Leader);
    (c, ids)
}

/// Delivers every queued message (and those they cause) and returns them all, dropped
/// ones included, in delivery order.
pub fn run(c: &mut Cluster) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Some(m) = c.deliver_one() {
        seen.push(m);
        assert!(seen.len() < STEPS_MAX, "cluster does not stabilize");
    }
    seen
}

/// Delivers messages one at a time until `done` holds. Returns false if the queue emptied
/// first.
pub fn deliver_until(c: &mut Cluster, done: impl Fn(&Cluster) -> bool) -> bool {
    while !done(c) {
        if c.deliver_one().is_none() {
            return false;
        }
    }
    true
}

/// Like [`run`], but messages for which `drop` holds are lost instead of delivered.
pub fn run_dropping(c: &mut Cluster, drop: impl Fn(&Message) -> bool) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Some(front) = c.queue.front() {
        let m = if drop(front) {
            c.queue.pop_front()
        } else {
            c.deliver_one()
        };
        seen.extend(m);
        assert!(seen.len() < STEPS_MAX, "cluster does not stabilize");
    }
    seen
}

/// Ticks every peer once and delivers everything, `rounds` times. Returns the messages.
pub fn tick_rounds(c: &mut Cluster, rounds: usize) -> Vec<Message> {
    let mut seen = Vec::new();
    for _ in 0..rounds {
        c.tick_all();
        seen.extend(run(c));
    }
    seen
}

/// Ticks every peer and delivers, round after round, until `done` holds. Returns the
/// number of rounds it took, or `None` after `rounds_max` rounds.
pub fn tick_until(
    c: &mut Cluster,
    rounds_max: usize,
    done: impl Fn(&Cluster) -> bool,
) -> Option<usize> {
    for round in 0..=rounds_max {
        if done(c) {
            return Some(round);
        }
        c.tick_all();
        run(c);
    }
    None
}

/// Proposes `data` on `leader` without delivering anything.
pub fn propose_quiet(c: &mut Cluster, leader: &PeerId, data: &str) {
    c.raft(leader)
        .propose(Bytes::copy_from_slice(data.as_bytes()), None)
        .unwrap_or_else(|e| panic!("{leader} refused a proposal: {e}"));
    c.process(leader);
}

/// Proposes `count` entries named `{prefix}{i}` on `leader`, delivering after each.
pub fn propose_many(c: &mut Cluster, leader: &PeerId, prefix: &str, count: usize) {
    for i in 0..count {
        c.propose(leader, format!("{prefix}{i}").as_bytes())
            .unwrap_or_else(|e| panic!("{leader} refused proposal {i}: {e}"));
    }
}

/// Messages of kind `name` (see `MessageBody::name`) from `from` to `to`.
pub fn sent<'a>(
    messages: &'a [Message],
    from: &'a PeerId,
    to: &'a PeerId,
    name: &'a str,
) -> impl Iterator<Item = &'a Message> + 'a {
    messages
        .iter()
        .filter(move |m| m.from == *from && m.to == *to && m.body.name() == name)
}

/// AppendEntries from `from` to `to` that carry at least one entry.
pub fn appends_with_entries<'a>(
    messages: &'a [Message],
    from: &'a PeerId,
    to: &'a PeerId,
) -> Vec<&'a Message> {
    sent(messages, from, to, "AppendEntries")
        .filter(|m| matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty()))
        .collect()
}

/// The replicator state of `peer` as the leader `leader` reports it in `describe()`
/// (`Probe`, `Replicate` or `Snapshot`).
pub fn replicator_state(c: &Cluster, leader: &PeerId, peer: &PeerId) -> String {
    let describe = c.node(leader).raft.describe();
    let prefix = format!("replicator {peer} state=");
    let line = describe
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no replicator for {peer} on {leader}:\n{describe}"));
    let state = &line[prefix.len()..];
    let end = state.find([' ', '{']).unwrap_or(state.len());
    state[..end].to_string()
}

/// True if `peer` recorded an event matching `wanted`.
pub fn has_event(c: &Cluster, peer: &PeerId, wanted: impl Fn(&Event) -> bool) -> bool {
    c.node(peer).events.iter().any(wanted)
}
