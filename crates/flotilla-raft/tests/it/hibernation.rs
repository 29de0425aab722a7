//! Hibernation of idle groups (docs/DESIGN.md, "Idle groups cost nothing"): when a leader
//! hibernates, which followers follow it, what wakes them, and that neither the lease nor
//! an election is fooled by a silence that was asked for. Each test fails if the behaviour
//! it names breaks.

use bytes::Bytes;
use flotilla_raft::testkit::{hibernating_test_config, Cluster, TEST_HIBERNATE_IDLE_TICKS};
use flotilla_raft::{Echo, LogIndex, Message, MessageBody, PeerId, ReadMode, Role, Term};

use crate::util::{elected_with, run, sent, tick_rounds, tick_until};

/// Rounds (tick every peer, deliver everything) within which an idle group must hibernate.
const SETTLE_ROUNDS: usize = 4 * TEST_HIBERNATE_IDLE_TICKS as usize;

fn hibernating(c: &Cluster, peer: &PeerId) -> bool {
    c.node(peer).raft.is_hibernating()
}

fn all_hibernating(c: &Cluster) -> bool {
    c.nodes.values().all(|n| n.raft.is_hibernating())
}

/// A 3-peer group with hibernation on, `n1` elected and every peer hibernating.
fn hibernated() -> (Cluster, Vec<PeerId>) {
    let (mut c, ids) = elected_with(3, hibernating_test_config);
    run(&mut c);
    let rounds = tick_until(&mut c, SETTLE_ROUNDS, all_hibernating);
    assert!(
        rounds.is_some(),
        "an idle group did not hibernate:\n{}",
        c.describe_states()
    );
    (c, ids)
}

/// Ticks and delivers, `rounds` times, for `peers` only (the driver does not tick the
/// others, as the runtime does not tick a hibernating group). Returns the messages.
fn tick_only(c: &mut Cluster, peers: &[&PeerId], rounds: usize) -> Vec<Message> {
    let mut seen = Vec::new();
    for _ in 0..rounds {
        for peer in peers {
            c.tick(peer);
        }
        seen.extend(run(c));
    }
    seen
}

fn heartbeat(from: &PeerId, to: &PeerId, term: Term, commit: u64, tick: u64) -> Message {
    Message {
        from: from.clone(),
        to: to.clone(),
        term,
        body: MessageBody::Heartbeat {
            commit: LogIndex(commit),
            echo: Echo { tick, read_seq: 0 },
            hibernate: true,
            transfer_target: None,
        },
    }
}

fn hibernate_marks(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::Heartbeat {
                    hibernate: true,
                    transfer_target: None,
                    ..
                }
            )
        })
        .count()
}

/// A leader hibernates only when nothing is pending: not while a peer lags its last index,
/// not while a read waits for its round; once everything settled it sends one marked
/// heartbeat per peer and then nothing at all.
#[test]
fn leader_hibernates_only_when_quiescent() {
    let (mut c, ids) = elected_with(3, hibernating_test_config);
    let (n1, n3) = (&ids[0], &ids[2]);
    run(&mut c);
    c.cut_both(n1, n3);
    c.propose(n1, b"x").expect("n1 leads");
    let seen = tick_rounds(&mut c, 3 * SETTLE_ROUNDS);
    assert!(!hibernating(&c, n1), "hibernated while {n3} lagged");
    assert_eq!(hibernate_marks(&seen), 0);

    c.heal();
    let seen = tick_rounds(&mut c, SETTLE_ROUNDS);
    assert!(all_hibernating(&c), "{}", c.describe_states());
    assert_eq!(
        hibernate_marks(&seen),
        2,
        "one marked heartbeat per follower"
    );
    assert_eq!(c.node(n3).raft.committed(), c.node(n1).raft.last_index());
    let seen = tick_rounds(&mut c, 50);
    assert!(seen.is_empty(), "a hibernating group sent {seen:?}");

    // A read that cannot be confirmed keeps the leader awake until it times out.
    c.isolate(n1);
    c.raft(n1).read(1, ReadMode::ReadIndex).expect("n1 leads");
    c.process(n1);
    for _ in 0..(3 * TEST_HIBERNATE_IDLE_TICKS) {
        c.tick(n1);
        assert!(!hibernating(&c, n1), "hibernated with a read pending");
    }
}

/// A follower hibernates on its leader's marked heartbeat only if its own log ends exactly
/// where the heartbeat says, in the leader's term; otherwise it answers (which wakes the
/// leader) and keeps its election timer running. A mark older than something the leader
/// sent since is ignored.
#[test]
fn follower_hibernates_only_when_its_log_matches() {
    let (mut c, ids) = elected_with(3, hibernating_test_config);
    let (n1, n2) = (&ids[0], &ids[1]);
    run(&mut c);
    let term = c.node(n1).raft.term();
    let last = c.node(n2).raft.last_index().get();

    // Claims one entry more than n2 holds.
    c.raft(n2).step(heartbeat(n1, n2, term, last + 1, 1_000));
    c.process(n2);
    assert!(!hibernating(&c, n2));
    assert_eq!(
        sent(&Vec::from(c.queue.clone()), n2, n1, "HeartbeatResponse").count(),
        1
    );
    c.queue.clear();

    // Holds an entry beyond the claimed last index (appended, not yet committed here).
    c.propose(n1, b"x").expect("n1 leads");
    let term_x = c.node(n1).raft.term();
    c.raft(n1)
        .propose(Bytes::from_static(b"tail"), None)
        .expect("n1 leads");
    c.process(n1);
    let to_n2 = c
        .queue
        .iter()
        .position(|m| m.to == *n2)
        .expect("append to n2");
    let append = c.queue.remove(to_n2).expect("present");
    c.queue.clear();
    c.raft(n2).step(append);
    c.process(n2);
    c.queue.clear();
    let last = c.node(n2).raft.committed().get();
    assert_eq!(c.node(n2).raft.last_index().get(), last + 1);
    c.raft(n2).step(heartbeat(n1, n2, term_x, last, 1_000));
    c.process(n2);
    assert!(!hibernating(&c, n2), "hibernated with a longer log");
    c.queue.clear();
    let last = last + 1;

    // Matches: hibernates, and does not answer.
    c.raft(n2).step(heartbeat(n1, n2, term, last, 1_001));
    c.process(n2);
    assert!(hibernating(&c, n2));
    assert!(c.queue.is_empty(), "answered: {:?}", c.queue);
    c.queue.clear();

    // Woken, then an old mark arrives late: it is answered, not obeyed.
    c.raft(n2).wake();
    c.process(n2);
    c.queue.clear();
    c.raft(n2).step(heartbeat(n1, n2, term, last, 5));
    c.process(n2);
    assert!(!hibernating(&c, n2), "obeyed a stale hibernate mark");
    assert_eq!(
        sent(&Vec::from(c.queue.clone()), n2, n1, "HeartbeatResponse").count(),
        1
    );
}

/// The leader's clock stands still while it hibernates, so its lease ends when it
/// hibernates. A deposed leader woken by a lease read must not answer from the old lease:
/// the read waits for a fresh quorum round, which never comes.
#[test]
fn no_lease_read_after_waking_without_a_fresh_round() {
    let (mut c, ids) = hibernated();
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    assert!(!c.node(n1).raft.lease_valid());

    // n1's process is cut off; the others' drivers notice and wake their peers.
    c.isolate(n1);
    c.raft(n2).wake_and_campaign();
    c.raft(n3).wake_and_campaign();
    c.process(n2);
    c.process(n3);
    run(&mut c);
    let elected = (0..100).find(|_| {
        tick_only(&mut c, &[n2, n3], 1);
        c.leader().is_some_and(|l| l != *n1)
    });
    assert!(elected.is_some(), "{}", c.describe_states());
    let leader = c.leader().expect("checked");
    c.propose(&leader, b"x").expect("new leader");
    assert!(c.node(n2).raft.committed() > c.node(n1).raft.committed());

    // n1 still believes it leads; only its own input wakes it, never a tick.
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    c.raft(n1)
        .read(7, ReadMode::Lease)
        .expect("n1 believes it leads");
    c.process(n1);
    run(&mut c);
    assert!(
        c.node(n1).reads.iter().all(|r| r.result.is_err()),
        "stale lease read answered: {:?}",
        c.node(n1).reads
    );
    tick_only(&mut c, &[n1], 30);
    assert!(c.node(n1).reads.iter().all(|r| r.result.is_err()));
}

/// After waking, a lease read waits for the heartbeat the leader sends as it wakes, then is
/// answered; the quiet group does not serve it from before the hibernation.
#[test]
fn lease_read_after_waking_waits_for_a_quorum_round() {
    let (mut c, ids) = hibernated();
    let n1 = &ids[0];
    let committed = c.node(n1).raft.committed();
    c.raft(n1).read(1, ReadMode::Lease).expect("n1 leads");
    c.process(n1);
    assert!(c.node(n1).reads.is_empty(), "answered without a round");
    assert!(!hibernating(&c, n1));
    run(&mut c);
    assert_eq!(c.node(n1).reads.len(), 1);
    assert_eq!(c.node(n1).reads[0].result, Ok(committed));
    assert!(c.node(n1).raft.lease_valid());
}

/// A proposal wakes the group: the entry commits and applies everywhere, and once quiet
/// again the group goes back to sleep.
#[test]
fn proposal_wakes_the_group_and_commits() {
    let (mut c, ids) = hibernated();
    let n1 = &ids[0];
    let (index, _) = c.propose(n1, b"x").expect("n1 leads");
    for peer in &ids {
        assert_eq!(c.node(peer).raft.committed(), index, "{peer}");
        assert_eq!(
            c.applied_data(peer).last(),
            Some(&Bytes::from_static(b"x")),
            "{peer}"
        );
        assert!(!hibernating(&c, peer), "{peer} slept through the proposal");
    }
    assert!(tick_until(&mut c, SETTLE_ROUNDS, all_hibernating).is_some());
}

/// When the leader's process is gone, followers woken by their driver campaign at once
/// (pre-vote first) and elect a new leader, which commits.
#[test]
fn follower_woken_by_its_driver_campaigns_and_wins() {
    let (mut c, ids) = hibernated();
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let term = c.node(n2).raft.term();
    c.isolate(n1);
    c.raft(n2).wake_and_campaign();
    c.process(n2);
    assert_eq!(
        c.node(n2).raft.role(),
        Role::PreCandidate,
        "no prompt campaign"
    );
    c.raft(n3).wake_and_campaign();
    c.process(n3);
    run(&mut c);
    let elected = tick_until(&mut c, 100, |c| {
        c.nodes
            .iter()
            .any(|(p, n)| p != n1 && n.raft.role() == Role::Leader)
    });
    assert!(elected.is_some(), "{}", c.describe_states());
    let leader = [n2, n3]
        .into_iter()
        .find(|p| c.node(p).raft.role() == Role::Leader)
        .expect("checked")
        .clone();
    assert!(c.node(&leader).raft.term() > term);
    let (index, _) = c.propose(&leader, b"after").expect("new leader");
    assert_eq!(c.node(n2).raft.committed(), index);
    assert_eq!(c.node(n3).raft.committed(), index);
}

/// A hibernating follower still hears its leader: it refuses a (pre-)vote, and the leader
/// — woken by the request — keeps its term.
#[test]
fn vote_request_to_a_hibernating_follower_is_refused() {
    let (mut c, ids) = hibernated();
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let term = c.node(n1).raft.term();
    for _ in 0..100 {
        c.tick(n3); // long asleep: its own vote guard has run out
    }
    // n2's driver misjudged n1 gone; n1 is alive.
    c.raft(n2).wake_and_campaign();
    c.process(n2);
    let seen = run(&mut c);
    let answers: Vec<&Message> = sent(&seen, n3, n2, "PreVoteResponse").collect();
    assert_eq!(answers.len(), 1, "{seen:?}");
    assert!(matches!(
        answers[0].body,
        MessageBody::RequestVoteResponse { granted: false, .. }
    ));
    tick_rounds(&mut c, 30);
    assert_eq!(c.leader().as_ref(), Some(n1));
    for peer in &ids {
        assert_eq!(c.node(peer).raft.term(), term, "{peer}");
    }
}

/// Waking a follower (its driver had a request for it) wakes the leader through the
/// follower's answer to the marked heartbeat; ticks the follower got while asleep do not
/// count toward its election timeout, and no election follows.
#[test]
fn waking_a_follower_causes_no_election() {
    let (mut c, ids) = hibernated();
    let (n1, n2) = (&ids[0], &ids[1]);
    let term = c.node(n1).raft.term();
    for _ in 0..100 {
        c.tick(n2); // a driver that keeps ticking: harmless
    }
    assert!(hibernating(&c, n2));
    c.raft(n2).wake();
    c.process(n2);
    let seen = run(&mut c);
    let first = seen.first().expect("the woken follower sent nothing");
    assert_eq!(
        (&first.from, &first.to, first.body.name()),
        (n2, n1, "HeartbeatResponse")
    );
    assert!(
        !hibernating(&c, n1),
        "the follower's answer did not wake the leader"
    );
    let seen = tick_rounds(&mut c, 5 * 10);
    assert!(
        !seen.iter().any(|m| m.body.name().contains("Vote")),
        "an election followed the wake"
    );
    assert_eq!(c.node(n2).raft.term(), term);
    assert_eq!(c.leader().as_ref(), Some(n1));
    assert!(all_hibernating(&c), "did not go back to sleep");
}

/// A leader that slept long (its clock counted the ticks) does not step down for want of
/// answers the moment it wakes: its check-quorum window starts again.
#[test]
fn leader_does_not_step_down_on_waking() {
    let (mut c, ids) = hibernated();
    let n1 = &ids[0];
    for _ in 0..100 {
        c.tick(n1);
    }
    c.raft(n1)
        .propose(Bytes::from_static(b"y"), None)
        .expect("n1 leads");
    c.process(n1);
    c.tick(n1); // before any answer arrives
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    run(&mut c);
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
}

/// The gateway drops a hibernate mark that claims commit 0 (a leader hibernates only after
/// an entry of its term committed), naming what was wrong; the follower neither sleeps nor
/// answers.
#[test]
fn hibernate_mark_with_commit_zero_is_dropped_at_the_gateway() {
    let (mut c, ids) = elected_with(3, hibernating_test_config);
    let (n1, n2) = (&ids[0], &ids[1]);
    run(&mut c);
    let term = c.node(n1).raft.term();
    let bad = heartbeat(n1, n2, term, 0, 1_000);
    let why = c
        .node(n2)
        .raft
        .check_message(&bad)
        .expect_err("must be refused");
    assert!(
        why.to_string()
            .contains("hibernate heartbeat with commit 0"),
        "{why}"
    );
    c.raft(n2).step(bad);
    c.process(n2);
    assert!(!hibernating(&c, n2));
    assert!(
        c.queue.is_empty(),
        "answered a dropped message: {:?}",
        c.queue
    );
}

/// A leader's process is gone and both followers' drivers wake them at once: exactly one
/// (the first by `election_rank`) campaigns, the other votes for it, and it wins in the
/// next term — one election, no split vote.
#[test]
fn woken_to_replace_a_gone_leader_one_peer_campaigns_and_wins_at_once() {
    for salt in [0, 1, 7, 1234] {
        let (mut c, ids) = hibernated();
        let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
        let term = c.node(n2).raft.term();
        c.isolate(n1);
        let campaigns = [
            c.raft(n2).wake_to_replace(n1, salt),
            c.raft(n3).wake_to_replace(n1, salt),
        ];
        let first =
            if flotilla_raft::election_rank(salt, n2) < flotilla_raft::election_rank(salt, n3) {
                n2
            } else {
                n3
            };
        assert_eq!(
            campaigns,
            [first == n2, first == n3],
            "salt {salt}: only the first-ranked campaigns"
        );
        c.process(n2);
        c.process(n3);
        run(&mut c);
        let elected = (0..100).find(|_| {
            tick_only(&mut c, &[n2, n3], 1);
            c.leader().is_some_and(|l| l != *n1)
        });
        assert!(elected.is_some(), "salt {salt}: {}", c.describe_states());
        assert_eq!(c.leader().as_ref(), Some(first), "salt {salt}");
        assert_eq!(
            c.node(first).raft.term(),
            Term(term.get() + 1),
            "salt {salt}: one election"
        );
    }
}

/// A leader whose followers died while the group hibernated is never ticked, so its
/// step-down never runs: `reset_peers` on it (the runtime has already checked that no
/// majority of processes answers) steps it down and resets it instead of refusing because
/// it leads. A leader awake with a quorum heard within its lease is still refused.
#[test]
fn reset_peers_steps_down_a_sleeping_leader_that_lost_its_majority() {
    let (mut c, ids) = hibernated();
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    c.isolate(n2);
    c.isolate(n3);
    let survivors = vec![n1.clone()];
    c.raft(n1).reset_peers(survivors.clone()).unwrap();
    c.process(n1);
    let led = tick_until(&mut c, 20 * TEST_HIBERNATE_IDLE_TICKS as usize, |c| {
        c.node(n1).raft.role() == Role::Leader && c.node(n1).raft.configuration().voters.len() == 1
    });
    assert!(
        led.is_some(),
        "n1 did not lead its reset group:\n{}",
        c.describe_states()
    );
    c.propose(n1, b"after reset").unwrap();
    run(&mut c);
    assert!(c
        .applied_data(n1)
        .contains(&Bytes::from_static(b"after reset")));

    // Awake and hearing a quorum: refused.
    let (mut c, ids) = elected_with(3, hibernating_test_config);
    run(&mut c);
    let refused = c.raft(&ids[0]).reset_peers(vec![ids[0].clone()]);
    assert!(
        matches!(refused, Err(flotilla_raft::RaftError::InvalidArgument(ref why)) if why.contains("quorum heard")),
        "{refused:?}"
    );
}
