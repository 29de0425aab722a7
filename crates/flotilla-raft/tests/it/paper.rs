//! Tests that each check one sentence of the Raft paper (Ongaro and Ousterhout, "In Search
//! of an Understandable Consensus Algorithm", extended version) or of Ongaro's thesis. The
//! sentence is quoted on the test.

use bytes::Bytes;
use flotilla_raft::testkit::{durable_entries, Cluster};
use flotilla_raft::{
    AppendResult, Configuration, Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, PeerId,
    RaftError, ReadMode, Role, Term,
};

use crate::util::{
    deliver_until, elected, id, ids, propose_quiet, run, run_dropping, sent, tick_rounds,
    tick_until,
};

const TIMEOUT: u64 = 10; // Config::new's election_timeout_ticks

fn message(from: &PeerId, to: &PeerId, term: Term, body: MessageBody) -> Message {
    Message {
        from: from.clone(),
        to: to.clone(),
        term,
        body,
    }
}

fn append(prev: (u64, u64), entries: Vec<Entry>, leader_commit: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries,
        leader_commit: LogIndex(leader_commit),
        echo: Echo::default(),
    }
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Normal(Bytes::copy_from_slice(data.as_bytes())),
    }
}

fn vote_request(last_index: u64, last_term: u64) -> MessageBody {
    MessageBody::RequestVote {
        pre_vote: false,
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
        leadership_transfer: false,
    }
}

/// Steps `m` into its recipient and returns what the recipient sent in answer.
fn step(c: &mut Cluster, m: Message) -> Vec<Message> {
    let to = m.to.clone();
    c.queue.clear();
    c.raft(&to).step(m);
    c.process(&to);
    c.queue.drain(..).collect()
}

fn granted(answers: &[Message]) -> Option<bool> {
    answers.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

/// Raft paper §5.1: "If a candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state."
#[test]
fn leader_with_an_out_of_date_term_reverts_to_follower() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let newer = c.node(n1).raft.term().next();
    let body = MessageBody::HeartbeatResponse {
        echo: Echo::default(),
    };
    step(&mut c, message(n2, n1, newer, body));
    assert_eq!(c.node(n1).raft.role(), Role::Follower);
    assert_eq!(c.node(n1).raft.term(), newer);
}

/// Raft paper §5.1: "If a server receives a request with a stale term number, it rejects
/// the request."
#[test]
fn request_with_a_stale_term_is_rejected() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let last = c.node(n2).raft.last_index();
    let stale = append((1, 1), vec![entry(2, 0, "stale")], 2);
    let answers = step(&mut c, message(n1, n2, Term(0), stale));
    assert_eq!(c.node(n2).raft.last_index(), last, "stale entries stored");
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].term,
        Term(1),
        "the answer carries the newer term"
    );
    assert!(!matches!(
        answers[0].body,
        MessageBody::AppendEntriesResponse {
            result: AppendResult::Success { .. },
            ..
        }
    ));
}

/// Raft paper §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis".
#[test]
fn a_server_votes_for_at_most_one_candidate_per_term() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let first = step(&mut c, message(n2, n1, Term(1), vote_request(0, 0)));
    assert_eq!(granted(&first), Some(true));
    let second = step(&mut c, message(n3, n1, Term(1), vote_request(0, 0)));
    assert_eq!(granted(&second), Some(false));
    assert_eq!(c.node(n1).hard_state.vote, Some(n2.clone()));
}

/// Raft paper §5.2: "A candidate wins an election if it receives votes from a majority of
/// the servers in the full cluster for the same term."
#[test]
fn a_candidate_needs_votes_from_a_majority_of_the_full_cluster() {
    for (reachable, wins) in [(2, false), (3, true)] {
        let mut c = Cluster::new(5);
        let ids = ids(5);
        let n1 = &ids[0];
        c.raft(n1).campaign_now();
        c.process(n1);
        assert!(deliver_until(&mut c, |c| c.node(n1).raft.role() == Role::Candidate));
        for unreachable in &ids[reachable..] {
            c.cut_both(n1, unreachable);
        }
        run(&mut c);
        let role = c.node(n1).raft.role();
        assert_eq!(
            role == Role::Leader,
            wins,
            "{reachable} of 5 voters: {role}"
        );
    }
}

/// Raft paper §5.2: "If the leader's term (included in its RPC) is at least as large as the
/// candidate's current term, then the candidate recognizes the leader as legitimate and
/// returns to follower state."
#[test]
fn candidate_recognizes_a_leader_of_its_term() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n2, n3) = (&ids[1], &ids[2]);
    c.raft(n2).campaign_now();
    c.process(n2);
    assert!(deliver_until(&mut c, |c| c.node(n2).raft.role() == Role::Candidate));
    let candidate_term = c.node(n2).raft.term();
    step(
        &mut c,
        message(n3, n2, candidate_term, append((0, 0), vec![], 0)),
    );
    assert_eq!(c.node(n2).raft.role(), Role::Follower);
    assert_eq!(c.node(n2).raft.leader(), Some(n3));
}

/// Raft paper §5.2: "If the term in the RPC is smaller than the candidate's current term,
/// then the candidate rejects the RPC and continues in candidate state."
#[test]
fn candidate_rejects_a_leader_of_an_older_term() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n2, n3) = (&ids[1], &ids[2]);
    c.raft(n2).campaign_now();
    c.process(n2);
    assert!(deliver_until(&mut c, |c| c.node(n2).raft.role() == Role::Candidate));
    step(&mut c, message(n3, n2, Term(0), append((0, 0), vec![], 0)));
    assert_eq!(c.node(n2).raft.role(), Role::Candidate);
    assert_eq!(c.node(n2).raft.leader(), None);
}

/// Raft paper §5.2, rules for followers (Figure 2): "If election timeout elapses without
/// receiving AppendEntries RPC from current leader or granting vote to candidate: convert to
/// candidate".
#[test]
fn follower_campaigns_only_when_the_leader_falls_silent() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let term = c.node(n2).raft.term();
    tick_rounds(&mut c, 5 * TIMEOUT as usize);
    assert_eq!(
        c.node(n2).raft.term(),
        term,
        "campaigned despite heartbeats"
    );
    c.isolate(n1);
    let mut ticks = 0;
    while c.node(n2).raft.role() == Role::Follower {
        c.tick(n2);
        ticks += 1;
        assert!(
            ticks < 2 * TIMEOUT,
            "no campaign after {ticks} silent ticks"
        );
    }
}

/// Raft paper §5.3: "If the follower does not find an entry in its log with the same index
/// and term, then it refuses the new entries."
#[test]
fn follower_refuses_entries_that_do_not_follow_its_log() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let gap = append((5, 1), vec![entry(6, 1, "x")], 1);
    let answers = step(&mut c, message(n1, n2, Term(1), gap));
    assert_eq!(c.node(n2).raft.last_index(), LogIndex(1));
    assert!(matches!(
        answers[0].body,
        MessageBody::AppendEntriesResponse {
            result: AppendResult::Reject { .. },
            ..
        }
    ));
}

/// Raft paper §5.3: "In Raft, the leader handles inconsistencies by forcing the followers'
/// logs to duplicate its own. This means that conflicting entries in follower logs will be
/// overwritten with entries from the leader's log."
#[test]
fn conflicting_follower_entries_are_overwritten_by_the_leader() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.isolate(n1);
    for i in 0..3 {
        propose_quiet(&mut c, n1, &format!("lost{i}"));
    }
    run(&mut c);
    tick_until(&mut c, 10 * TIMEOUT as usize, |c| {
        c.leader().is_some_and(|l| l != *n1)
    })
    .expect("no new leader");
    let leader = c.leader().unwrap();
    c.propose(&leader, b"kept").unwrap();
    c.heal();
    tick_rounds(&mut c, 3);
    let log = |p: &PeerId| durable_entries(&c.node(p).storage);
    assert_eq!(log(n1), log(n2));
    assert_eq!(log(n1), log(n3));
    assert_eq!(c.applied_data(n1), vec![Bytes::from_static(b"kept")]);
}

/// Raft paper §5.3: "The leader keeps track of the highest index it knows to be committed,
/// and it includes that index in future AppendEntries RPCs (including heartbeats) so that
/// the other servers eventually find out."
#[test]
fn followers_learn_the_commit_index_from_heartbeats() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    propose_quiet(&mut c, n1, "x");
    // n2 stores x but misses every AppendEntries that would tell it x committed.
    let n2_has_x = |c: &Cluster| c.node(n2).raft.last_index() == LogIndex(2);
    assert!(deliver_until(&mut c, n2_has_x));
    run_dropping(&mut c, |m| m.to == *n2 && m.body.name() == "AppendEntries");
    assert_eq!(c.node(n1).raft.committed(), LogIndex(2));
    assert_eq!(c.node(n2).raft.committed(), LogIndex(1));
    c.tick(n1);
    let msgs = run_dropping(&mut c, |m| m.to == *n2 && m.body.name() == "AppendEntries");
    assert!(sent(&msgs, n1, n2, "Heartbeat").count() > 0);
    assert_eq!(c.node(n2).raft.committed(), LogIndex(2));
    assert_eq!(c.applied_data(n2), vec![Bytes::from_static(b"x")]);
}

/// Raft paper, Figure 2, AppendEntries receiver rule 5: "If leaderCommit > commitIndex, set
/// commitIndex = min(leaderCommit, index of last new entry)".
#[test]
fn follower_commit_is_bounded_by_the_last_new_entry() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let body = append((1, 1), vec![entry(2, 1, "x")], 10);
    step(&mut c, message(n1, n2, Term(1), body));
    assert_eq!(c.node(n2).raft.committed(), LogIndex(2));
}

/// Raft paper §5.4.1: "the voter denies its vote if its own log is more up-to-date than
/// that of the candidate."
#[test]
fn voter_denies_a_candidate_with_a_less_up_to_date_log() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.propose(n1, b"x").unwrap(); // n2's log ends at 2@1
    for _ in 0..TIMEOUT {
        c.tick(n2); // past the time it may trust the leader's lease
    }
    c.queue.clear();
    let behind = step(&mut c, message(n3, n2, Term(5), vote_request(1, 1)));
    assert_eq!(granted(&behind), Some(false));
    let current = step(&mut c, message(n3, n2, Term(6), vote_request(2, 1)));
    assert_eq!(granted(&current), Some(true));
}

/// Raft paper §5.5: "if a follower receives an AppendEntries request that includes log
/// entries already present in its log, it ignores those entries in the new request."
#[test]
fn repeated_append_entries_change_nothing() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    propose_quiet(&mut c, n1, "x");
    let first = c
        .queue
        .iter()
        .find(|m| m.to == *n2 && m.body.name() == "AppendEntries")
        .cloned()
        .unwrap();
    run(&mut c);
    let before = durable_entries(&c.node(n2).storage);
    c.raft(n2).step(first);
    let ready = c.raft(n2).ready();
    assert!(ready.entries.is_empty(), "re-persisted {:?}", ready.entries);
    assert!(ready.committed_entries.is_empty());
    assert_eq!(durable_entries(&c.node(n2).storage), before);
}

/// Raft paper, Figure 2: "Persistent state on all servers: (Updated on stable storage
/// before responding to RPCs)".
#[test]
fn votes_and_acknowledgements_wait_for_stable_storage() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    c.node_mut(n2).hold_persist = true;
    let answers = step(&mut c, message(n1, n2, Term(1), vote_request(0, 0)));
    assert_eq!(granted(&answers), None, "vote sent before it was durable");
    c.release_persist(n2);
    assert_eq!(granted(&c.queue.drain(..).collect::<Vec<_>>()), Some(true));

    c.node_mut(n2).hold_persist = true;
    let answers = step(
        &mut c,
        message(n1, n2, Term(1), append((0, 0), vec![entry(1, 1, "x")], 0)),
    );
    assert!(
        answers.is_empty(),
        "acknowledged before durable: {answers:?}"
    );
    c.release_persist(n2);
    assert!(c.queue.iter().any(|m| matches!(
        m.body,
        MessageBody::AppendEntriesResponse {
            result: AppendResult::Success { .. },
            ..
        }
    )));
}

/// Raft paper §6: "Agreement (for elections and entry commitment) requires separate
/// majorities from both the old and new configurations."
#[test]
fn joint_commit_needs_both_majorities() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let (n4, n5) = (id("n4"), id("n5"));
    c.add_node(n4.clone(), Configuration::default());
    c.add_node(n5.clone(), Configuration::default());
    let target = Configuration::new([n1.clone(), n4.clone(), n5.clone()]);
    c.raft(n1).change_configuration(target).unwrap();
    c.process(n1);
    c.tick(n1); // the heartbeat round probes the new peers
    let joint = |c: &Cluster| c.node(n1).raft.configuration().is_joint();
    assert!(deliver_until(&mut c, joint));
    let joint_index = c.node(n1).raft.last_index();
    c.cut_both(n1, n2);
    c.cut_both(n1, n3);
    run(&mut c);
    let matched = c.node(n1).raft.status().matched;
    assert!(matched[&n4] >= joint_index && matched[&n5] >= joint_index);
    assert!(
        c.node(n1).raft.committed() < joint_index,
        "new majority alone committed"
    );
}

/// Raft paper §6: "a server always uses the latest configuration in its log, regardless of
/// whether the entry is committed".
#[test]
fn an_appended_configuration_takes_effect_before_it_commits() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let smaller = Configuration::new([n1.clone(), n2.clone()]);
    let conf_entry = Entry {
        index: LogIndex(2),
        term: Term(1),
        payload: EntryPayload::Configuration(smaller.clone()),
    };
    step(
        &mut c,
        message(n1, n2, Term(1), append((1, 1), vec![conf_entry], 1)),
    );
    assert_eq!(c.node(n2).raft.committed(), LogIndex(1));
    assert_eq!(c.node(n2).raft.configuration(), &smaller);
}

/// Raft paper §8: "Raft handles this by having each leader commit a blank no-op entry into
/// the log at the start of its term."
#[test]
fn a_new_leader_commits_a_no_op_of_its_term() {
    let (c, ids) = elected(3);
    let log = durable_entries(&c.node(&ids[1]).storage);
    let first = log.last().expect("empty log");
    assert_eq!(first.payload, EntryPayload::NoOp);
    assert_eq!(first.term, c.node(&ids[0]).raft.term());
    assert!(c.node(&ids[1]).raft.committed() >= first.index);
}

/// Raft paper §8: "Raft handles this by having the leader exchange heartbeat messages with a
/// majority of the cluster before responding to read-only requests."
#[test]
fn a_deposed_leader_never_answers_a_read() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    c.isolate(n1);
    let mut ticks = 0;
    while c.leader().is_none_or(|l| l == *n1) {
        c.tick(&ids[1]);
        c.tick(&ids[2]);
        run(&mut c);
        ticks += 1;
        assert!(ticks < 10 * TIMEOUT, "no new leader");
    }
    assert_eq!(
        c.node(n1).raft.role(),
        Role::Leader,
        "still believes it leads"
    );
    c.raft(n1).read(1, ReadMode::ReadIndex).unwrap();
    c.process(n1);
    for _ in 0..3 * TIMEOUT {
        c.tick(n1);
        run(&mut c);
    }
    let reads = &c.node(n1).reads;
    assert_eq!(reads.len(), 1);
    assert!(
        matches!(
            reads[0].result,
            Err(RaftError::NotLeader { .. } | RaftError::TimedOut(_))
        ),
        "{reads:?}"
    );
}

/// Raft paper §6: "if a server receives a RequestVote RPC within the minimum election
/// timeout of hearing from a current leader, it does not update its term or grant its
/// vote."
#[test]
fn a_server_hearing_a_leader_ignores_vote_requests() {
    let (mut c, ids) = elected(3);
    let (n2, n3) = (&ids[1], &ids[2]);
    let term = c.node(n2).raft.term();
    let answers = step(&mut c, message(n3, n2, Term(9), vote_request(9, 9)));
    assert_eq!(granted(&answers), Some(false));
    assert_eq!(c.node(n2).raft.term(), term);
}

/// Raft thesis §9.6: "In the Pre-Vote algorithm, a candidate only increments its term if it
/// first learns from a majority of the cluster that they would be willing to grant the
/// candidate their votes".
#[test]
fn pre_vote_without_a_majority_leaves_the_term_alone() {
    let (mut c, ids) = elected(3);
    let n3 = &ids[2];
    let term = c.node(n3).raft.term();
    c.isolate(n3);
    for _ in 0..10 * TIMEOUT {
        c.tick(n3);
        run(&mut c);
    }
    assert_ne!(c.node(n3).raft.role(), Role::Candidate);
    assert_eq!(c.node(n3).raft.term(), term);
    assert_eq!(c.node(n3).hard_state.term, term);
}

/// Raft thesis §3.10: the target of a leadership transfer "starts a new election
/// (incrementing its term and becoming a candidate)" as soon as it receives TimeoutNow.
#[test]
fn timeout_now_starts_an_election_at_once() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let term = c.node(n2).raft.term();
    step(&mut c, message(n1, n2, term, MessageBody::TimeoutNow));
    assert_eq!(c.node(n2).raft.role(), Role::Candidate);
    assert_eq!(c.node(n2).raft.term(), term.next());
}
