//! Hostile but well-formed input: messages from strangers, terms and indexes at
//! the top of their range, forged echoes, and membership changes that would leave a group
//! without a live majority. Each test checks the leader stays in office, nothing wraps, and
//! the group keeps committing.

use bytes::Bytes;
use flotilla_raft::{
    Configuration, Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, PeerId, RaftError,
    Role, Term, INDEX_MAX, TERM_AHEAD_MAX, TERM_MAX,
};

use crate::util::{elected, id, run, tick_rounds, tick_until};

const TIMEOUT: usize = 10;

fn message(from: &PeerId, to: &PeerId, term: Term, body: MessageBody) -> Message {
    Message {
        from: from.clone(),
        to: to.clone(),
        term,
        body,
    }
}

fn vote_request(transfer: bool) -> MessageBody {
    MessageBody::RequestVote {
        pre_vote: false,
        last_log_index: LogIndex(1_000_000),
        last_log_term: Term(1),
        leadership_transfer: transfer,
    }
}

fn append(prev: LogIndex, prev_term: Term, term: Term, data: &str) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: prev,
        prev_log_term: prev_term,
        entries: vec![Entry {
            index: prev.next(),
            term,
            payload: EntryPayload::Normal(Bytes::copy_from_slice(data.as_bytes())),
        }],
        leader_commit: prev.next(),
        echo: Echo::default(),
    }
}

/// The group still commits a proposal through its leader `leader`.
fn still_commits(c: &mut flotilla_raft::testkit::Cluster, leader: &PeerId, data: &str) {
    let before = c.node(leader).raft.committed();
    c.propose(leader, data.as_bytes())
        .unwrap_or_else(|e| panic!("{leader} refused {data}: {e}"));
    run(c);
    assert!(
        c.node(leader).raft.committed() > before,
        "{data} did not commit"
    );
}

#[test]
fn a_stranger_cannot_depose_the_leader_or_write() {
    let (mut c, ids) = elected(3);
    let (leader, follower) = (&ids[0], &ids[1]);
    let stranger = id("stranger");
    let term = c.node(leader).raft.term();
    let last = c.node(follower).raft.last_index();
    let last_term = term;
    // A vote with a higher term (plain and flagged as a transfer), and a forged leader's
    // AppendEntries with an entry and a commit, to every member.
    for to in &ids {
        for body in [
            vote_request(false),
            vote_request(true),
            append(last, last_term, term.next(), "forged"),
            MessageBody::TimeoutNow,
        ] {
            c.raft(to).step(message(&stranger, to, term.next(), body));
            c.process(to);
        }
    }
    run(&mut c);
    assert_eq!(c.node(leader).raft.role(), Role::Leader);
    assert_eq!(
        c.node(leader).raft.term(),
        term,
        "the stranger moved the term"
    );
    for peer in &ids {
        assert!(
            !c.applied_data(peer)
                .contains(&Bytes::from_static(b"forged")),
            "{peer} applied the stranger's entry"
        );
        assert!(c.node(peer).raft.dropped_messages().non_member >= 3);
    }
    still_commits(&mut c, leader, "after");
}

#[test]
fn a_term_at_the_top_of_the_range_is_refused_and_nothing_wraps() {
    let (mut c, ids) = elected(3);
    let (leader, follower) = (&ids[0], &ids[1]);
    let term = c.node(leader).raft.term();
    for huge in [
        Term(u64::MAX),
        Term(TERM_MAX.get() + 1),
        Term(term.get() + TERM_AHEAD_MAX + 1),
    ] {
        for to in [leader, follower] {
            let from = if to == leader { follower } else { leader };
            c.raft(to)
                .step(message(from, to, huge, vote_request(false)));
            c.raft(to).step(message(
                from,
                to,
                huge,
                append(LogIndex(1), term, huge, "x"),
            ));
            c.process(to);
        }
    }
    run(&mut c);
    assert_eq!(c.node(leader).raft.term(), term);
    assert_eq!(c.node(leader).raft.role(), Role::Leader);
    assert!(c.node(follower).raft.dropped_messages().out_of_bounds >= 6);
    let why = c.node(follower).raft.dropped_messages().last_reason.clone();
    assert!(
        matches!(&why, Some(RaftError::InvalidArgument(w)) if w.contains("too far ahead")),
        "{why:?}"
    );
    still_commits(&mut c, leader, "after");
}

#[test]
fn indexes_beyond_the_bound_are_refused() {
    let (mut c, ids) = elected(3);
    let (leader, follower) = (&ids[0], &ids[1]);
    let term = c.node(leader).raft.term();
    let top = LogIndex(u64::MAX - 1);
    let bodies = [
        append(top, term, term, "x"),
        append(INDEX_MAX, term, term, "x"),
        MessageBody::Heartbeat {
            commit: LogIndex(u64::MAX),
            echo: Echo::default(),
            hibernate: false,
            transfer_target: None,
        },
    ];
    for body in bodies {
        c.raft(follower).step(message(leader, follower, term, body));
        c.process(follower);
    }
    run(&mut c);
    assert_eq!(c.node(follower).raft.dropped_messages().out_of_bounds, 3);
    assert!(c.node(follower).raft.committed() < LogIndex(1000));
    still_commits(&mut c, leader, "after");
}

#[test]
fn an_echo_from_the_future_does_not_stretch_the_lease() {
    let (mut c, ids) = elected(3);
    let (leader, follower) = (&ids[0], &ids[1]);
    let term = c.node(leader).raft.term();
    let forged = Echo {
        tick: u64::MAX,
        read_seq: u64::MAX,
    };
    c.raft(leader).step(message(
        follower,
        leader,
        term,
        MessageBody::HeartbeatResponse { echo: forged },
    ));
    assert_eq!(c.node(leader).raft.dropped_messages().out_of_bounds, 1);
    // Isolated, the leader must lose its lease within an election timeout as usual.
    c.isolate(leader);
    tick_rounds(&mut c, 2 * TIMEOUT);
    assert!(
        !c.node(leader).raft.lease_valid(),
        "forged echo kept the lease"
    );
}

#[test]
fn a_peer_at_the_term_bound_does_not_campaign() {
    // A stored term at the bound (as a region bricked before this fix would have): the
    // peer neither campaigns nor wraps, and its answers cannot depose the others' leader.
    assert_eq!(Term(u64::MAX).next(), Term(u64::MAX), "next() saturates");
    assert_eq!(
        LogIndex(u64::MAX).plus(5),
        LogIndex(u64::MAX),
        "plus() saturates"
    );
    let (mut c, ids) = elected(3);
    let (leader, n3) = (&ids[0], &ids[2]);
    let term = c.node(leader).raft.term();
    c.node_mut(n3).hard_state.term = TERM_MAX;
    c.restart(n3);
    c.isolate(leader);
    tick_rounds(&mut c, 5 * TIMEOUT);
    assert_eq!(c.node(n3).raft.term(), TERM_MAX, "the bounded term moved");
    assert_ne!(c.node(n3).raft.role(), Role::Candidate);
    assert_ne!(c.node(n3).raft.role(), Role::Leader);
    c.heal();
    tick_rounds(&mut c, 5 * TIMEOUT);
    let now = c.leader().expect("a leader among the others");
    assert_ne!(&now, n3);
    assert!(c.node(&now).raft.term() < Term(term.get() + 100));
    still_commits(&mut c, &now, "after");
}

#[test]
fn a_change_that_leaves_no_live_majority_is_refused_unless_forced() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.isolate(n3);
    tick_until(&mut c, 5 * TIMEOUT, |c| {
        !c.node(&ids[0]).raft.alive_peers().contains(&ids[2])
    })
    .expect("n3 never counted as down");
    // {n1, n2, n3} -> {n1, n3}: one live voter of two.
    let refused = c.raft(n1).remove_peer(n2);
    assert!(
        matches!(&refused, Err(RaftError::InvalidArgument(w)) if w.contains("live voters")),
        "{refused:?}"
    );
    assert_eq!(c.node(n1).raft.configuration().voters.len(), 3);
    // Removing the dead voter keeps a live majority: allowed.
    c.raft(n1).remove_peer(n3).expect("removing the dead voter");
    c.process(n1);
    tick_until(&mut c, 5 * TIMEOUT, |c| {
        c.node(&ids[0]).raft.configuration().voters.len() == 2
            && c.node(&ids[0]).raft.status().change_stage.is_none()
    })
    .expect("the removal never finished");
    // Forced, the strict check is skipped.
    c.heal();
    let target = Configuration::new([n1.clone(), n2.clone(), n3.clone()]);
    c.raft(n1)
        .change_configuration_forced(target)
        .expect("a forced change is accepted");
}

#[test]
fn a_transfer_vote_counts_only_from_the_target_the_leader_announced() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let term = c.node(n1).raft.term();
    // A member that was never named the transfer target flags its vote as a transfer:
    // n2 hears a live leader and refuses, and n1 keeps leading in its term.
    c.raft(n2)
        .step(message(n3, n2, term.next(), vote_request(true)));
    c.process(n2);
    run(&mut c);
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    assert_eq!(
        c.node(n2).raft.term(),
        term,
        "the forged transfer vote moved n2's term"
    );
    assert_eq!(c.node(n2).raft.dropped_messages().transfer_vote, 1);
    // A real transfer to n3: the leader announces it, n3 wins the next term.
    c.raft(n1)
        .transfer_leadership(Some(n3.clone()))
        .expect("transfer");
    c.process(n1);
    tick_until(&mut c, 5 * TIMEOUT, |c| {
        c.leader().as_ref() == Some(&ids[2])
    })
    .expect("the announced transfer never completed");
    assert_eq!(c.node(n3).raft.term(), term.next());
    still_commits(&mut c, n3, "after");
}

#[test]
fn a_follower_behind_the_entry_that_added_its_new_leader_catches_up() {
    // The member check must not strand a follower whose log lacks the configuration that
    // added the current leader: its pre-vote is refused by members that name the leader,
    // and it takes that leader's traffic on their word.
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    let n4 = id("n4");
    c.add_node(n4.clone(), Configuration::default());
    c.isolate(n3);
    c.raft(n1).add_peer(n4.clone()).expect("add n4");
    c.process(n1);
    tick_until(&mut c, 10 * TIMEOUT, |c| {
        c.node(&ids[0]).raft.configuration().voters.len() == 4
            && c.node(&ids[0]).raft.status().change_stage.is_none()
    })
    .expect("n4 never joined");
    c.raft(n1)
        .transfer_leadership(Some(n4.clone()))
        .expect("transfer");
    c.process(n1);
    tick_until(&mut c, 10 * TIMEOUT, |c| {
        c.leader().as_ref() == Some(&id("n4"))
    })
    .expect("n4 never led");
    still_commits(&mut c, &n4, "while n3 was away");
    assert!(
        !c.node(n3).raft.configuration().contains(&n4),
        "n3's log already holds the configuration with n4"
    );
    c.heal();
    let caught_up = tick_until(&mut c, 20 * TIMEOUT, |c| {
        let (leader, behind) = (c.node(&id("n4")), c.node(&ids[2]));
        behind.raft.configuration().contains(&id("n4"))
            && behind.raft.committed() == leader.raft.committed()
    });
    assert!(
        caught_up.is_some(),
        "n3 never caught up from n4: {}",
        c.describe_states()
    );
    assert_eq!(c.leader(), Some(n4.clone()), "n3 deposed the leader");
}
