//! One or more tests per protocol feature of the core (the SOFAJRaft parity list in
//! `reference/sofajraft.md` §1). Each test fails if its feature is missing or broken.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use flotilla_raft::testkit::{durable_entries, Cluster};
use flotilla_raft::{
    AppendResult, ChangeStage, Config, Configuration, EntryPayload, Event, LogIndex, Message,
    MessageBody, PeerId, Priority, RaftError, ReadMode, ReadResult, Role, Term,
};

use crate::util::{
    appends_with_entries, cluster_with, deliver_until, elected, elected_with, has_event, id, ids,
    propose_many, propose_quiet, replicator_state, run, run_dropping, sent, tick_rounds,
    tick_until,
};

const TIMEOUT: u64 = 10; // Config::new's election_timeout_ticks

fn role(c: &Cluster, peer: &PeerId) -> Role {
    c.node(peer).raft.role()
}

fn term(c: &Cluster, peer: &PeerId) -> Term {
    c.node(peer).raft.term()
}

fn stage_name(c: &Cluster, leader: &PeerId) -> Option<&'static str> {
    c.node(leader)
        .raft
        .status()
        .change_stage
        .map(|stage| match stage {
            ChangeStage::CatchingUp { .. } => "CatchingUp",
            ChangeStage::Joint { .. } => "Joint",
            ChangeStage::Final { .. } => "Final",
        })
}

fn voters(names: &[&PeerId]) -> BTreeSet<PeerId> {
    names.iter().map(|p| (*p).clone()).collect()
}

/// Ticks `peer` alone until it leaves the follower role; returns how many ticks it took.
fn ticks_until_campaign(c: &mut Cluster, peer: &PeerId) -> u64 {
    let mut ticks = 0;
    while role(c, peer) == Role::Follower {
        c.tick(peer);
        ticks += 1;
        assert!(ticks < 10 * TIMEOUT, "{peer} never campaigned");
    }
    ticks
}

/// Isolates `lagging`, commits entries on `leader`, and snapshots twice so that the log no
/// longer holds what `lagging` needs. Returns the second snapshot's index.
fn leave_behind_a_compacted_log(c: &mut Cluster, leader: &PeerId, lagging: &PeerId) -> LogIndex {
    c.isolate(lagging);
    propose_many(c, leader, "a", 3);
    c.snapshot(leader);
    propose_many(c, leader, "b", 3);
    let meta = c.snapshot(leader);
    let first = c.node(leader).raft.first_index();
    let needed = c.node(lagging).raft.last_index().next();
    assert!(
        first > needed,
        "log starts at {first}, {lagging} needs {needed}"
    );
    c.heal();
    meta.index
}

// ----- election ------------------------------------------------------------------------

/// Peers draw different election timeouts in [T, 2T), and ticking alone elects a leader.
#[test]
fn election_timeouts_are_randomized_and_ticking_elects_a_leader() {
    let mut c = Cluster::new(5);
    let mut fired = BTreeMap::new();
    for peer in ids(5) {
        fired.insert(peer.clone(), ticks_until_campaign(&mut c, &peer));
    }
    for (peer, ticks) in &fired {
        assert!((TIMEOUT..2 * TIMEOUT).contains(ticks), "{peer}: {ticks}");
    }
    let distinct: BTreeSet<u64> = fired.values().copied().collect();
    assert!(
        distinct.len() > 1,
        "every peer drew the same timeout: {fired:?}"
    );

    let mut c = Cluster::new(5);
    let rounds = tick_until(&mut c, 10 * TIMEOUT as usize, |c| c.leader().is_some());
    assert!(rounds.is_some(), "{}", c.describe_states());
}

/// Thesis §9.6: a partitioned peer does not raise its term, so when it returns it does not
/// depose the leader.
#[test]
fn pre_vote_keeps_a_returning_partitioned_peer_from_disrupting_the_leader() {
    let (mut c, ids) = elected(3);
    let (leader, lost) = (&ids[0], &ids[2]);
    let leader_term = term(&c, leader);
    c.isolate(lost);
    for _ in 0..10 * TIMEOUT {
        c.tick(lost);
        run(&mut c);
    }
    assert_eq!(
        term(&c, lost),
        leader_term,
        "an isolated peer raised its term"
    );
    c.heal();
    tick_rounds(&mut c, 3 * TIMEOUT as usize);
    assert_eq!(c.leader(), Some(leader.clone()));
    assert_eq!(term(&c, leader), leader_term);
    assert_eq!(c.node(lost).raft.leader(), Some(leader));
}

/// A voter refuses a pre-vote while it hears a live leader, and grants it once it has not
/// heard one for an election timeout.
#[test]
fn pre_vote_is_refused_while_the_voter_hears_a_live_leader() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let leader_term = term(&c, n1);
    c.raft(n3).campaign_now();
    c.process(n3);
    let msgs = run(&mut c);
    let answers: Vec<&Message> = sent(&msgs, n2, n3, "PreVoteResponse").collect();
    assert_eq!(answers.len(), 1, "{msgs:?}");
    assert!(matches!(
        answers[0].body,
        MessageBody::RequestVoteResponse { granted: false, .. }
    ));
    assert_eq!(c.leader(), Some(n1.clone()));
    assert_eq!(term(&c, n3), leader_term);

    // Once the leader has been silent for an election timeout, the same request is granted.
    c.isolate(n1);
    for _ in 0..TIMEOUT {
        c.tick(n2);
    }
    c.queue.clear();
    c.raft(n3).campaign_now();
    c.process(n3);
    let msgs = run(&mut c);
    assert!(sent(&msgs, n2, n3, "PreVoteResponse").any(|m| matches!(
        m.body,
        MessageBody::RequestVoteResponse { granted: true, .. }
    )));
    assert_eq!(role(&c, n3), Role::Leader);
}

/// A candidate whose vote round times out goes back to pre-vote without raising its term.
#[test]
fn candidate_whose_vote_times_out_steps_back_to_pre_vote() {
    let mut c = Cluster::new(3);
    let n1 = id("n1");
    c.raft(&n1).campaign_now();
    c.process(&n1);
    assert!(deliver_until(&mut c, |c| role(c, &n1) == Role::Candidate));
    c.queue.clear(); // the vote requests are lost
    let candidate_term = term(&c, &n1);
    assert_eq!(candidate_term, Term(1));
    let mut ticks = 0;
    while role(&c, &n1) == Role::Candidate {
        c.tick(&n1);
        ticks += 1;
        assert!(ticks < 10 * TIMEOUT);
    }
    assert_eq!(role(&c, &n1), Role::PreCandidate);
    assert_eq!(
        term(&c, &n1),
        candidate_term,
        "pre-vote must not bump the term"
    );
    assert_eq!(c.node(&n1).hard_state.term, candidate_term);
    let pre_votes: Vec<&Message> = c
        .queue
        .iter()
        .filter(|m| m.body.name() == "PreVote")
        .collect();
    assert_eq!(pre_votes.len(), 2);
    assert!(pre_votes.iter().all(|m| m.term == candidate_term.next()));
}

/// A leader that hears no quorum within its lease steps down (SOFAJRaft: lease = 90% of the
/// election timeout), so it never leads on an expired lease and is gone before any other
/// peer may be elected.
#[test]
fn leader_without_a_quorum_steps_down_after_its_lease_ends() {
    let (mut c, ids) = elected(3);
    let leader = &ids[0];
    tick_rounds(&mut c, 3 * TIMEOUT as usize);
    assert_eq!(role(&c, leader), Role::Leader, "a connected leader stays");
    assert!(c.node(leader).raft.lease_valid());
    let leader_term = term(&c, leader);
    let lease = Config::new(leader.clone()).lease_ticks();
    c.isolate(leader);
    let mut ticks = 0;
    while role(&c, leader) == Role::Leader {
        c.tick(leader);
        run(&mut c);
        ticks += 1;
        assert!(
            ticks <= lease + 1,
            "still leading after {ticks} ticks alone"
        );
    }
    assert!(ticks >= lease - 1, "stepped down after only {ticks} ticks");
    assert!(!c.node(leader).raft.lease_valid());
    assert_eq!(term(&c, leader), leader_term);
    assert!(has_event(&c, leader, |e| *e
        == Event::LeaderStop { term: leader_term }));
}

/// While joint, a leader that hears a quorum of the new configuration but not of the old
/// one steps down.
#[test]
fn joint_leader_steps_down_when_the_old_quorum_is_lost() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let (n4, n5) = (id("n4"), id("n5"));
    c.add_node(n4.clone(), Configuration::default());
    c.add_node(n5.clone(), Configuration::default());
    let target = Configuration::new(voters(&[n1, &n4, &n5]));
    c.raft(n1).change_configuration(target).unwrap();
    c.process(n1);
    c.tick(n1); // the heartbeat round probes the new peers
    assert!(deliver_until(&mut c, |c| stage_name(c, n1) == Some("Joint")));
    c.cut_both(n1, n2);
    c.cut_both(n1, n3);
    let leader_term = term(&c, n1);
    let rounds = tick_until(&mut c, 3 * TIMEOUT as usize, |c| {
        role(c, n1) != Role::Leader
    });
    assert!(
        rounds.is_some(),
        "joint leader kept leading without the old quorum"
    );
    assert_eq!(
        term(&c, n1),
        leader_term,
        "stepped down by itself, not deposed"
    );
}

fn with_priorities(priorities: &[(&PeerId, i32)]) -> Configuration {
    let mut conf = Configuration::new(priorities.iter().map(|(p, _)| (*p).clone()));
    conf.priorities = priorities
        .iter()
        .map(|(p, v)| ((*p).clone(), Priority(*v)))
        .collect();
    conf
}

/// The peer of highest priority wins even when another peer's timer fires first.
#[test]
fn priority_election_prefers_the_highest_priority() {
    let ids = ids(3);
    let mut probe = Cluster::new(3);
    let fired: Vec<(u64, PeerId)> = ids
        .iter()
        .map(|p| (ticks_until_campaign(&mut probe, p), p.clone()))
        .collect();
    let slowest = fired.iter().max().map(|(_, p)| p.clone()).unwrap();

    // Control: without priorities somebody else wins.
    let mut plain = Cluster::new(3);
    tick_until(&mut plain, 10 * TIMEOUT as usize, |c| c.leader().is_some()).unwrap();
    assert_ne!(plain.leader(), Some(slowest.clone()), "{fired:?}");

    let priorities: Vec<(&PeerId, i32)> = ids
        .iter()
        .map(|p| (p, if *p == slowest { 100 } else { 10 }))
        .collect();
    let mut c = cluster_with(&with_priorities(&priorities), &ids, Config::new);
    tick_until(&mut c, 10 * TIMEOUT as usize, |c| c.leader().is_some()).unwrap();
    assert_eq!(c.leader(), Some(slowest));
}

/// With the high-priority peer down, a lower one waits while the target priority decays,
/// then wins; a peer of priority 0 never campaigns.
#[test]
fn priority_decays_until_a_lower_peer_may_win_and_zero_never_leads() {
    let ids = ids(3);
    let (high, low, never) = (&ids[0], &ids[1], &ids[2]);
    let conf = with_priorities(&[(high, 100), (low, 40), (never, 0)]);
    let mut c = cluster_with(&conf, &ids, Config::new);
    c.isolate(high);
    let mut rounds = 0;
    while c.leader().filter(|l| l != high).is_none() {
        c.tick_all();
        run(&mut c);
        rounds += 1;
        assert_eq!(role(&c, never), Role::Follower, "priority 0 campaigned");
        assert!(rounds < 40 * TIMEOUT, "{}", c.describe_states());
        if rounds == 2 * TIMEOUT {
            assert_eq!(term(&c, low), Term(0), "low priority did not wait");
        }
    }
    assert_eq!(c.leader(), Some(low.clone()));
    assert!(
        rounds > 4 * TIMEOUT,
        "won after {rounds} rounds: no decay needed?"
    );
}

/// Priority 0 means "never leader", leadership transfer included: a transfer to such a peer
/// is refused, `any` skips it, and a stray TimeoutNow does not make it campaign.
#[test]
fn priority_zero_is_never_a_transfer_target() {
    let ids = ids(3);
    let (high, mid, never) = (&ids[0], &ids[1], &ids[2]);
    let conf = with_priorities(&[(high, 10), (mid, 5), (never, 0)]);
    let mut c = cluster_with(&conf, &ids, Config::new);
    tick_until(&mut c, 400, |c| c.leader().is_some()).expect("elected");
    let leader = c.leader().expect("a leader");
    propose_quiet(&mut c, &leader, "x");
    let err = c
        .raft(&leader)
        .transfer_leadership(Some(never.clone()))
        .unwrap_err();
    assert!(matches!(err, RaftError::InvalidArgument(_)), "{err:?}");
    let chosen = c.raft(&leader).transfer_leadership(None).expect("a target");
    assert_ne!(&chosen, never, "transfer to any picked the priority-0 peer");
    let term_before = term(&c, never);
    c.raft(never).step(Message {
        from: leader.clone(),
        to: never.clone(),
        term: term_before,
        body: MessageBody::TimeoutNow,
    });
    c.process(never);
    assert_eq!(role(&c, never), Role::Follower);
    assert_eq!(
        term(&c, never),
        term_before,
        "priority 0 campaigned on TimeoutNow"
    );
}

/// SOFAJRaft: a single-member group elects itself at start, without a tick.
#[test]
fn single_member_group_elects_itself_at_start() {
    let mut c = Cluster::new(1);
    let n1 = id("n1");
    assert_eq!(role(&c, &n1), Role::Leader);
    assert!(has_event(&c, &n1, |e| matches!(
        e,
        Event::LeaderStart { .. }
    )));
    c.propose(&n1, b"x").unwrap();
    assert_eq!(c.applied_data(&n1), vec![Bytes::from_static(b"x")]);
}

/// "Leader start" is signalled only once the first entry of the term commits.
#[test]
fn leader_start_waits_for_the_first_entry_of_the_term_to_commit() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.raft(n1).campaign_now();
    c.process(n1);
    assert!(deliver_until(&mut c, |c| role(c, n1) == Role::Leader));
    c.node_mut(n2).hold_persist = true;
    c.node_mut(n3).hold_persist = true;
    run(&mut c);
    assert_eq!(role(&c, n1), Role::Leader);
    assert_eq!(c.node(n1).raft.committed(), LogIndex(0));
    assert!(!has_event(&c, n1, |e| matches!(
        e,
        Event::LeaderStart { .. }
    )));
    c.release_persist(n2);
    run(&mut c);
    assert_eq!(c.node(n1).raft.committed(), LogIndex(1));
    assert!(has_event(&c, n1, |e| *e == Event::LeaderStart { term: Term(1) }));
}

// ----- replication ---------------------------------------------------------------------

/// The leader probes a new follower, pipelines once it matches, and sends a snapshot to a
/// follower behind its first index.
#[test]
fn replicator_moves_between_probe_replicate_and_snapshot() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.raft(n1).campaign_now();
    c.process(n1);
    assert!(deliver_until(&mut c, |c| role(c, n1) == Role::Leader));
    assert_eq!(replicator_state(&c, n1, n2), "Probe");
    run(&mut c);
    assert_eq!(replicator_state(&c, n1, n2), "Replicate");

    leave_behind_a_compacted_log(&mut c, n1, n3);
    let mut saw_snapshot = false;
    for _ in 0..3 * TIMEOUT {
        c.tick(n1);
        if deliver_until(&mut c, |c| replicator_state(c, n1, n3) == "Snapshot") {
            saw_snapshot = true;
            break;
        }
    }
    assert!(saw_snapshot, "{}", c.node(n1).raft.describe());
    run(&mut c); // n3 installs the snapshot; the leader probes after it
    c.propose(n1, b"after").unwrap();
    assert_eq!(replicator_state(&c, n1, n3), "Replicate");
    tick_rounds(&mut c, 1);
    assert_eq!(c.applied_data(n3), c.applied_data(n1));
}

fn small_window(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.inflight_msgs_max = 4;
    config.append_entries_max = 1;
    config
}

/// At most `inflight_msgs_max` AppendEntries are in flight to a follower that does not answer.
#[test]
fn pipelining_stops_at_the_inflight_window() {
    assert_eq!(Config::new(id("n1")).inflight_msgs_max, 256);
    let (mut c, ids) = elected_with(3, small_window);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.cut.insert((n2.clone(), n1.clone())); // n2's answers are lost
    let mut msgs = Vec::new();
    for i in 0..10 {
        propose_quiet(&mut c, n1, &format!("e{i}"));
        msgs.extend(run(&mut c));
    }
    assert_eq!(appends_with_entries(&msgs, n1, n2).len(), 4);
    assert_eq!(appends_with_entries(&msgs, n1, n3).len(), 10);
}

fn three_entries_per_append(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.append_entries_max = 3;
    config
}

fn hundred_bytes_per_append(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.append_bytes_max = 100;
    config
}

/// Catches up `n3` after 10 entries of 20 bytes and returns the AppendEntries it was sent.
fn catch_up_after_ten_entries(make: fn(PeerId) -> Config) -> (Cluster, Vec<Message>) {
    let (mut c, ids) = elected_with(3, make);
    let (n1, n3) = (&ids[0], &ids[2]);
    c.isolate(n3);
    for i in 0..10 {
        c.propose(n1, format!("{i:020}").as_bytes()).unwrap();
    }
    c.heal();
    let msgs = tick_rounds(&mut c, 2 * TIMEOUT as usize);
    assert_eq!(c.applied_data(n3), c.applied_data(n1));
    let appends = appends_with_entries(&msgs, n1, n3)
        .into_iter()
        .cloned()
        .collect();
    (c, appends)
}

fn entries_of(m: &Message) -> &[flotilla_raft::Entry] {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries,
        _ => &[],
    }
}

/// No AppendEntries carries more than `append_entries_max` entries.
#[test]
fn append_entries_respect_the_entry_limit() {
    let (_, appends) = catch_up_after_ten_entries(three_entries_per_append);
    let counts: Vec<usize> = appends.iter().map(|m| entries_of(m).len()).collect();
    assert!(counts.iter().all(|n| *n <= 3), "{counts:?}");
    assert!(counts.contains(&3), "catch-up never batched: {counts:?}");
}

/// No AppendEntries carries more than `append_bytes_max` bytes (unless one entry alone is
/// larger).
#[test]
fn append_entries_respect_the_byte_limit() {
    let (_, appends) = catch_up_after_ten_entries(hundred_bytes_per_append);
    let sizes: Vec<u64> = appends
        .iter()
        .map(|m| {
            entries_of(m)
                .iter()
                .map(flotilla_raft::Entry::size_bytes)
                .sum()
        })
        .collect();
    assert!(sizes.iter().all(|s| *s <= 100), "{sizes:?}");
    let counts: Vec<usize> = appends.iter().map(|m| entries_of(m).len()).collect();
    assert!(counts.contains(&2), "catch-up never batched: {counts:?}");
}

/// A follower with a long divergent log of an old term is repaired in a few round trips
/// (one per conflicting term), not one per entry.
#[test]
fn fast_back_off_repairs_a_long_divergent_log_in_few_round_trips() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    // n1, leader of term 1, is cut off and appends 50 entries nobody else will see.
    c.isolate(n1);
    for i in 0..50 {
        propose_quiet(&mut c, n1, &format!("lost{i}"));
    }
    run(&mut c);
    // n2 and n3 elect a leader in term 2 and commit 60 entries.
    let mut ticks = 0;
    while c.leader().filter(|l| l != n1).is_none() {
        c.tick(n2);
        c.tick(n3);
        run(&mut c);
        ticks += 1;
        assert!(ticks < 20 * TIMEOUT, "{}", c.describe_states());
    }
    let second = c.leader().unwrap();
    let third = if second == *n2 {
        n3.clone()
    } else {
        n2.clone()
    };
    propose_many(&mut c, &second, "kept", 60);
    // A third leader starts probing n1 from the end of its own, longer log.
    c.raft(&second)
        .transfer_leadership(Some(third.clone()))
        .unwrap();
    c.process(&second);
    run(&mut c);
    assert_eq!(c.leader(), Some(third.clone()));
    c.heal();
    let msgs = tick_rounds(&mut c, 5);
    assert_eq!(c.applied_data(n1), c.applied_data(&third));
    let rejects = sent(&msgs, n1, &third, "AppendEntriesResponse")
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendEntriesResponse {
                    result: AppendResult::Reject { .. },
                    ..
                }
            )
        })
        .count();
    assert!(
        rejects <= 3,
        "{rejects} rejections to repair 50 divergent entries"
    );
}

fn quick_snapshot_retry(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.snapshot_install_timeout_ticks = 2;
    config
}

/// A follower whose driver is full (`set_busy`) answers busy; the leader stops sending it
/// entries, and replication resumes once the driver clears the flag.
#[test]
fn follower_busy_by_its_driver_is_paused_then_resumed() {
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    c.raft(n3).set_busy(true);
    propose_quiet(&mut c, n1, "a");
    run(&mut c);
    assert_eq!(replicator_state(&c, n1, n3), "Probe");
    assert!(
        c.applied_data(n3).is_empty(),
        "a busy follower stored entries"
    );
    propose_quiet(&mut c, n1, "b");
    let msgs = run(&mut c);
    assert_eq!(
        sent(&msgs, n1, n3, "AppendEntries").count(),
        0,
        "not paused"
    );
    c.raft(n3).set_busy(false);
    tick_rounds(&mut c, 2);
    assert_eq!(c.applied_data(n3).len(), 2, "{}", c.describe_states());
}

/// A follower installing a snapshot answers Busy; the leader stops sending to it until the
/// next heartbeat, then probes again.
#[test]
fn busy_follower_is_paused_until_the_next_heartbeat() {
    let (mut c, ids) = elected_with(3, quick_snapshot_retry);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    leave_behind_a_compacted_log(&mut c, n1, n3);
    c.node_mut(n3).hold_persist = true; // n3 sits on the snapshot: it stays "installing"
    let is_busy = |m: &Message| {
        m.from == *n3
            && matches!(
                m.body,
                MessageBody::AppendEntriesResponse {
                    result: AppendResult::Busy,
                    ..
                }
            )
    };
    let mut busy = false;
    for _ in 0..5 * TIMEOUT {
        c.tick(n1);
        if run(&mut c).iter().any(is_busy) {
            busy = true;
            break;
        }
    }
    assert!(busy, "{}", c.node(n1).raft.describe());
    assert_eq!(replicator_state(&c, n1, n3), "Probe");

    propose_quiet(&mut c, n1, "while-busy");
    let msgs = run(&mut c);
    assert_eq!(
        sent(&msgs, n1, n3, "AppendEntries").count(),
        0,
        "not paused"
    );
    assert_eq!(appends_with_entries(&msgs, n1, n2).len(), 1);

    // The next heartbeat probes again (the probe falls back to the snapshot: the entries
    // after n3's match are compacted).
    c.tick(n1);
    let msgs = run(&mut c);
    let probes = sent(&msgs, n1, n3, "AppendEntries").count()
        + sent(&msgs, n1, n3, "InstallSnapshot").count();
    assert_eq!(probes, 1, "no probe after the heartbeat");

    c.release_persist(n3);
    tick_rounds(&mut c, 3);
    assert_eq!(c.applied_data(n3), c.applied_data(n1));
}

fn one_entry_per_append(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.append_entries_max = 1;
    config
}

/// Raft paper §5.4.2 (Figure 8): "Raft never commits log entries from previous terms by
/// counting replicas. Only log entries from the leader's current term are committed by
/// counting replicas".
#[test]
fn only_entries_of_the_current_term_commit_by_counting_replicas() {
    let (mut c, ids) = elected_with(3, one_entry_per_append);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    // n1 (term 1) replicates x to n2 only and never hears that n2 stored it.
    c.cut_both(n1, n3);
    c.cut.insert((n2.clone(), n1.clone()));
    propose_quiet(&mut c, n1, "x");
    run(&mut c);
    assert_eq!(c.node(n2).raft.last_index(), LogIndex(2));
    assert_eq!(c.node(n1).raft.committed(), LogIndex(1));
    // n2 wins term 2 with n3's vote.
    c.heal();
    c.isolate(n1);
    for _ in 0..TIMEOUT {
        c.tick(n3);
    }
    c.queue.clear();
    c.raft(n2).campaign_now();
    c.process(n2);
    assert!(deliver_until(&mut c, |c| role(c, n2) == Role::Leader));
    // n3 stores the term-1 entry: a majority holds it, yet it must not commit...
    let n3_has_x = |c: &Cluster| c.node(n2).raft.status().matched[n3] >= LogIndex(2);
    assert!(deliver_until(&mut c, n3_has_x));
    assert_eq!(c.node(n3).raft.last_index(), LogIndex(2));
    assert_eq!(c.node(n2).raft.committed(), LogIndex(1));
    // ...until the term-2 entry after it reaches a majority too.
    run(&mut c);
    assert_eq!(c.node(n2).raft.committed(), LogIndex(3));
    assert_eq!(c.applied_data(n3), vec![Bytes::from_static(b"x")]);
}

fn with_learner(n: usize) -> (Configuration, Vec<PeerId>) {
    let all = ids(n + 1);
    let mut conf = Configuration::new(all[..n].iter().cloned());
    conf.learners.insert(all[n].clone());
    (conf, all)
}

/// Learners receive entries but never count toward the commit quorum.
#[test]
fn learners_never_count_toward_commit() {
    let (conf, all) = with_learner(3);
    let (n1, n2, n3, n4) = (&all[0], &all[1], &all[2], &all[3]);
    let mut c = cluster_with(&conf, &all, Config::new);
    c.elect(n1);
    let committed = c.node(n1).raft.committed();
    c.cut_both(n1, n2);
    c.cut_both(n1, n3);
    propose_quiet(&mut c, n1, "x");
    run(&mut c);
    let last = c.node(n1).raft.last_index();
    assert_eq!(
        c.node(n1).raft.status().matched[n4],
        last,
        "learner stored it"
    );
    assert_eq!(c.node(n1).raft.committed(), committed, "learner counted");
    c.heal();
    tick_rounds(&mut c, TIMEOUT as usize);
    assert_eq!(c.node(n1).raft.committed(), last);
    assert_eq!(c.applied_data(n4), vec![Bytes::from_static(b"x")]);
}

// ----- linearizable reads --------------------------------------------------------------

fn read(c: &mut Cluster, peer: &PeerId, read_id: u64, mode: ReadMode) {
    c.raft(peer).read(read_id, mode).unwrap();
    c.process(peer);
}

fn ok(read_id: u64, index: LogIndex) -> ReadResult {
    ReadResult {
        id: read_id,
        result: Ok(index),
    }
}

/// ReadIndex: answered only after a heartbeat round reached a quorum, and only once the
/// state machine applied the read index.
#[test]
fn read_index_waits_for_a_quorum_round_and_for_apply() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    read(&mut c, n1, 1, ReadMode::ReadIndex);
    assert!(c.node(n1).reads.is_empty());
    let delivered_response = |c: &Cluster| !c.node(n1).reads.is_empty();
    let mut msgs = Vec::new();
    while !delivered_response(&c) {
        msgs.push(c.deliver_one().expect("read never answered"));
    }
    assert_eq!(
        msgs.iter()
            .filter(|m| m.to == *n1 && m.body.name() == "HeartbeatResponse")
            .count(),
        1,
        "answered without a quorum round: {msgs:?}"
    );
    assert_eq!(c.node(n1).reads, vec![ok(1, LogIndex(1))]);

    // Committed (by the followers) but not yet durable, hence not applied, on the leader.
    c.node_mut(n1).hold_persist = true;
    propose_quiet(&mut c, n1, "x");
    run(&mut c);
    assert_eq!(c.node(n1).raft.committed(), LogIndex(2));
    assert_eq!(c.node(n1).applied_index, LogIndex(1));
    read(&mut c, n1, 2, ReadMode::ReadIndex);
    run(&mut c);
    assert_eq!(c.node(n1).reads.len(), 1, "answered before apply");
    c.release_persist(n1);
    assert_eq!(c.node(n1).reads[1], ok(2, LogIndex(2)));
}

/// A lease read is answered at once, without a heartbeat round, while the lease is valid.
#[test]
fn lease_read_skips_the_round_while_the_lease_is_valid() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    tick_rounds(&mut c, 2);
    assert!(c.node(n1).raft.lease_valid());
    let committed = c.node(n1).raft.committed();
    read(&mut c, n1, 1, ReadMode::Lease);
    assert_eq!(c.node(n1).reads, vec![ok(1, committed)]);
    assert!(c.queue.is_empty(), "a lease read sent {:?}", c.queue);
    // The same read in ReadIndex mode needs the round.
    read(&mut c, n1, 2, ReadMode::ReadIndex);
    assert_eq!(c.node(n1).reads.len(), 1);
    assert!(c.queue.iter().any(|m| m.body.name() == "Heartbeat"));
}

/// A lease read falls back to ReadIndex once the lease has lapsed. The lease counts from
/// when a quorum's acknowledged message was *sent*, step-down from when the answers were
/// *received*: answers delayed in the network leave a window where the leader still leads
/// on an expired lease, and there a lease read must pay for a heartbeat round.
#[test]
fn lease_read_falls_back_to_read_index_when_the_lease_has_lapsed() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    run(&mut c);
    c.tick(n1); // heartbeats to n2 and n3
    assert_eq!(c.queue.len(), 2, "{:?}", c.queue);
    c.deliver_one();
    c.deliver_one(); // the answers now wait in the queue
    for _ in 0..4 {
        c.tick(n1);
    }
    // From now on n1 reaches nobody; the old answers arrive late.
    c.cut.insert((n1.clone(), n2.clone()));
    c.cut.insert((n1.clone(), n3.clone()));
    run(&mut c);
    let mut guard = 0;
    while c.node(n1).raft.lease_valid() {
        c.tick(n1);
        run(&mut c);
        guard += 1;
        assert!(guard < TIMEOUT, "lease never lapsed");
    }
    assert_eq!(
        role(&c, n1),
        Role::Leader,
        "stepped down before the lease lapsed"
    );
    read(&mut c, n1, 1, ReadMode::Lease);
    assert!(c.node(n1).reads.is_empty(), "answered on a lapsed lease");
    c.heal();
    c.tick(n1);
    run(&mut c);
    assert_eq!(c.node(n1).reads, vec![ok(1, c.node(n1).raft.committed())]);
}

/// Right after an election the lease is not valid: a lease read waits for the first entry
/// of the term to commit and for a heartbeat round.
#[test]
fn lease_read_right_after_election_waits_for_leader_start() {
    let mut c = Cluster::new(3);
    let ids = ids(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.raft(n1).campaign_now();
    c.process(n1);
    assert!(deliver_until(&mut c, |c| role(c, n1) == Role::Leader));
    c.node_mut(n2).hold_persist = true;
    c.node_mut(n3).hold_persist = true;
    assert!(!c.node(n1).raft.lease_valid());
    read(&mut c, n1, 1, ReadMode::Lease);
    run(&mut c);
    assert!(c.node(n1).reads.is_empty());
    c.release_persist(n2);
    c.release_persist(n3);
    let msgs = run(&mut c);
    assert_eq!(c.node(n1).reads, vec![ok(1, LogIndex(1))]);
    assert!(msgs.iter().any(|m| matches!(
        m.body,
        MessageBody::Heartbeat { echo, .. } if echo.read_seq > 0
    )));
}

/// Followers and learners ask the leader for a read index and answer from their own state.
#[test]
fn followers_and_learners_read_through_the_leader() {
    let (conf, all) = with_learner(3);
    let (n1, n2, n4) = (&all[0], &all[1], &all[3]);
    let mut c = cluster_with(&conf, &all, Config::new);
    c.elect(n1);
    c.propose(n1, b"x").unwrap();
    let committed = c.node(n1).raft.committed();
    for (read_id, reader) in [(1, n2), (2, n4)] {
        read(&mut c, reader, read_id, ReadMode::ReadIndex);
        let msgs = run(&mut c);
        assert_eq!(sent(&msgs, reader, n1, "ReadIndexRequest").count(), 1);
        assert_eq!(sent(&msgs, n1, reader, "ReadIndexResponse").count(), 1);
        assert_eq!(c.node(reader).reads, vec![ok(read_id, committed)]);
    }
}

fn is_append_to<'a>(peer: &'a PeerId) -> impl Fn(&Message) -> bool + 'a {
    move |m| m.to == *peer && m.body.name() == "AppendEntries"
}

/// A follower's read waits until the follower itself has applied the read index.
#[test]
fn follower_read_waits_for_its_own_apply() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    propose_quiet(&mut c, n1, "x");
    run_dropping(&mut c, is_append_to(n2));
    let index = c.node(n1).raft.committed();
    assert_eq!(index, LogIndex(2));
    read(&mut c, n2, 1, ReadMode::ReadIndex);
    let msgs = run_dropping(&mut c, is_append_to(n2));
    assert_eq!(sent(&msgs, n1, n2, "ReadIndexResponse").count(), 1);
    assert!(c.node(n2).reads.is_empty(), "answered before applying");
    tick_until(&mut c, 3 * TIMEOUT as usize, |c| {
        !c.node(n2).reads.is_empty()
    })
    .unwrap();
    assert_eq!(c.node(n2).reads, vec![ok(1, index)]);
    assert!(c.node(n2).applied_index >= index);
}

/// One heartbeat round confirms every read queued before it; a follower forwards many reads
/// in one request.
#[test]
fn one_heartbeat_round_confirms_many_reads() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    for read_id in 1..=10 {
        c.raft(n1).read(read_id, ReadMode::ReadIndex).unwrap();
    }
    c.process(n1);
    let msgs = run(&mut c);
    let heartbeats = msgs.iter().filter(|m| m.body.name() == "Heartbeat").count();
    assert_eq!(heartbeats, 2, "one round to two followers");
    assert_eq!(c.node(n1).reads.len(), 10);
    assert!(c.node(n1).reads.iter().all(|r| r.result.is_ok()));

    for read_id in 11..=20 {
        c.raft(n2).read(read_id, ReadMode::ReadIndex).unwrap();
    }
    c.process(n2);
    let msgs = run(&mut c);
    assert_eq!(sent(&msgs, n2, n1, "ReadIndexRequest").count(), 1);
    assert_eq!(
        msgs.iter().filter(|m| m.body.name() == "Heartbeat").count(),
        2
    );
    assert_eq!(c.node(n2).reads.len(), 10);
    assert!(c.node(n2).reads.iter().all(|r| r.result.is_ok()));
}

fn lag_bound(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.read_index_lag_max = Some(2);
    config
}

/// A reader whose applied index lags the read index by more than `read_index_lag_max`
/// fails at once with `ReadLagging`.
#[test]
fn reader_far_behind_the_read_index_fails_fast() {
    let (mut c, ids) = elected_with(3, lag_bound);
    let (n1, n2) = (&ids[0], &ids[1]);
    for i in 0..5 {
        propose_quiet(&mut c, n1, &format!("e{i}"));
        run_dropping(&mut c, is_append_to(n2));
    }
    assert_eq!(c.node(n1).raft.committed(), LogIndex(6));
    read(&mut c, n2, 1, ReadMode::ReadIndex);
    run_dropping(&mut c, is_append_to(n2));
    let lagging = RaftError::ReadLagging {
        read_index: LogIndex(6),
        applied: LogIndex(1),
    };
    assert_eq!(
        c.node(n2).reads,
        vec![ReadResult {
            id: 1,
            result: Err(lagging)
        }]
    );
}

fn short_read_timeout(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.read_timeout_ticks = 5;
    config
}

/// A read that cannot be confirmed fails with `TimedOut` after `read_timeout_ticks`.
#[test]
fn unconfirmed_read_times_out() {
    let (mut c, ids) = elected_with(3, short_read_timeout);
    let n1 = &ids[0];
    c.isolate(n1);
    read(&mut c, n1, 1, ReadMode::ReadIndex);
    run(&mut c);
    for _ in 1..5 {
        c.tick(n1);
        run(&mut c);
        assert!(c.node(n1).reads.is_empty());
    }
    c.tick(n1);
    run(&mut c);
    assert_eq!(role(&c, n1), Role::Leader);
    let reads = &c.node(n1).reads;
    assert_eq!(reads.len(), 1);
    assert!(
        matches!(reads[0].result, Err(RaftError::TimedOut(_))),
        "{reads:?}"
    );
}

// ----- snapshots and compaction --------------------------------------------------------

fn periodic_snapshots(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.snapshot_interval_ticks = 5;
    config.snapshot_log_margin = 3;
    config
}

fn snapshot_due(c: &Cluster, peer: &PeerId) -> bool {
    has_event(c, peer, |e| *e == Event::SnapshotDue)
}

/// `SnapshotDue` comes every `snapshot_interval_ticks`, once more than
/// `snapshot_log_margin` entries were applied since the last snapshot.
#[test]
fn snapshot_is_due_after_the_interval_once_enough_was_applied() {
    let (mut c, ids) = elected_with(3, periodic_snapshots);
    let n1 = &ids[0];
    propose_many(&mut c, n1, "a", 2); // applied 3: not beyond the margin
    tick_rounds(&mut c, 5);
    assert!(!snapshot_due(&c, n1));
    propose_many(&mut c, n1, "b", 2); // applied 5
    tick_rounds(&mut c, 4);
    assert!(!snapshot_due(&c, n1), "due before the interval");
    tick_rounds(&mut c, 1);
    assert!(snapshot_due(&c, n1));
}

/// After a new snapshot the log is kept back to the previous one.
#[test]
fn compaction_keeps_the_log_back_to_the_previous_snapshot() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    propose_many(&mut c, n1, "a", 5);
    let first = c.snapshot(n1);
    assert_eq!(c.node(n1).raft.first_index(), LogIndex(1));
    propose_many(&mut c, n1, "b", 5);
    let second = c.snapshot(n1);
    assert_eq!(c.node(n1).raft.first_index(), first.index.next());
    let stored = durable_entries(&c.node(n1).storage);
    assert_eq!(stored.first().map(|e| e.index), Some(first.index.next()));
    assert_eq!(c.node(n1).raft.status().snapshot_index, second.index);
}

/// A follower that needs compacted entries is sent a snapshot and ends with the same data.
#[test]
fn follower_behind_the_first_index_is_sent_a_snapshot() {
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    let snapshot_index = leave_behind_a_compacted_log(&mut c, n1, n3);
    let msgs = tick_rounds(&mut c, 2 * TIMEOUT as usize);
    assert!(sent(&msgs, n1, n3, "InstallSnapshot").count() >= 1);
    assert_eq!(c.node(n3).raft.status().snapshot_index, snapshot_index);
    assert_eq!(c.applied_data(n3), c.applied_data(n1));
    assert_eq!(c.applied_data(n3).len(), 6);
}

fn joining_from_snapshot(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.join_from_snapshot = true;
    config
}

/// Under `join_from_snapshot` a peer that joins empty takes no entry before a snapshot,
/// although the leader's log still starts at entry 1: it answers `NeedSnapshot`, the
/// leader (which has no snapshot yet) asks its driver for one, and sends it once it
/// exists; the joiner then holds the same data and takes entries from there on.
#[test]
fn a_joiner_takes_a_snapshot_before_any_entry_when_configured_to() {
    let (mut c, ids) = elected_with(3, joining_from_snapshot);
    let n1 = &ids[0];
    for data in [&b"a"[..], b"b", b"c"] {
        c.propose(n1, data).unwrap();
        run(&mut c);
    }
    let n4 = id("n4");
    c.add_node(n4.clone(), Configuration::default());
    c.raft(n1).add_learners(std::slice::from_ref(&n4)).unwrap();
    c.process(n1);
    let msgs = tick_rounds(&mut c, 3);
    let refused = sent(&msgs, &n4, n1, "AppendEntriesResponse")
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendEntriesResponse {
                    result: AppendResult::NeedSnapshot,
                    ..
                }
            )
        })
        .count();
    assert!(refused >= 1, "the joiner never asked for a snapshot");
    assert!(
        c.applied_data(&n4).is_empty(),
        "the joiner applied entries before a snapshot"
    );
    assert_eq!(c.node(&n4).raft.status().last_index, LogIndex::ZERO);
    assert!(has_event(&c, n1, |e| *e == Event::SnapshotDue));
    let meta = c.snapshot(n1);
    let msgs = tick_rounds(&mut c, 2 * TIMEOUT as usize);
    assert!(sent(&msgs, n1, &n4, "InstallSnapshot").count() >= 1);
    assert_eq!(c.node(&n4).raft.status().snapshot_index, meta.index);
    c.propose(n1, b"d").unwrap();
    run(&mut c);
    assert_eq!(c.applied_data(&n4), c.applied_data(n1));
    assert_eq!(c.applied_data(&n4).len(), 4);
}

/// Without `join_from_snapshot` (the default) a joiner replays the log from entry 1.
#[test]
fn by_default_a_joiner_replays_the_log_from_the_first_entry() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    c.propose(n1, b"a").unwrap();
    run(&mut c);
    let n4 = id("n4");
    c.add_node(n4.clone(), Configuration::default());
    c.raft(n1).add_learners(std::slice::from_ref(&n4)).unwrap();
    c.process(n1);
    tick_rounds(&mut c, 3);
    assert_eq!(c.node(&n4).raft.status().snapshot_index, LogIndex::ZERO);
    assert_eq!(c.applied_data(&n4), c.applied_data(n1));
}

// ----- membership ----------------------------------------------------------------------

fn change_finished(c: &Cluster, leader: &PeerId) -> Option<Result<Configuration, RaftError>> {
    c.node(leader).events.iter().find_map(|e| match e {
        Event::MembershipChangeFinished { result } => Some(result.clone()),
        _ => None,
    })
}

/// Adding a voter goes through catch-up, C(old,new) naming the old voters, then C(new).
#[test]
fn membership_change_goes_through_catch_up_joint_and_final() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let n4 = id("n4");
    c.add_node(n4.clone(), Configuration::default());
    c.raft(n1).add_peer(n4.clone()).unwrap();
    let mut stages = vec![stage_name(&c, n1).unwrap()];
    c.process(n1);
    c.tick(n1); // the heartbeat round probes the new peer
    while let Some(stage) = stage_name(&c, n1) {
        if stages.last() != Some(&stage) {
            stages.push(stage);
        }
        c.deliver_one().expect("change never finished");
    }
    assert_eq!(stages, ["CatchingUp", "Joint", "Final"]);
    let joint = durable_entries(&c.node(n1).storage)
        .into_iter()
        .find_map(|e| match e.payload {
            EntryPayload::Configuration(conf) if conf.is_joint() => Some(conf),
            _ => None,
        })
        .expect("no joint entry");
    assert_eq!(joint.old_voters, Some(voters(&[n1, n2, n3])));
    assert_eq!(joint.voters, voters(&[n1, n2, n3, &n4]));
    let result = change_finished(&c, n1).expect("no outcome");
    assert_eq!(result.unwrap().voters, voters(&[n1, n2, n3, &n4]));
    run(&mut c);
    for peer in [n1, n2, n3, &n4] {
        assert_eq!(c.node(peer).raft.configuration().voters.len(), 4);
    }
}

/// A learner added with `add_learners` receives entries but never campaigns or counts as a
/// voter.
#[test]
fn learner_replicates_but_never_votes() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let n4 = id("n4");
    c.add_node(n4.clone(), Configuration::default());
    c.raft(n1).add_learners(std::slice::from_ref(&n4)).unwrap();
    c.process(n1);
    run(&mut c);
    assert!(change_finished(&c, n1).is_some_and(|r| r.is_ok()));
    c.propose(n1, b"x").unwrap();
    assert_eq!(c.applied_data(&n4), c.applied_data(n1));
    assert!(c.node(&n4).raft.configuration().is_learner(&n4));
    // Only n3 and the learner remain: no leader may emerge, and the learner never campaigns.
    c.isolate(n1);
    c.isolate(n2);
    c.cut.remove(&(n3.clone(), n4.clone()));
    c.cut.remove(&(n4.clone(), n3.clone()));
    for _ in 0..10 * TIMEOUT {
        c.tick(n3);
        c.tick(&n4);
        run(&mut c);
        assert_eq!(role(&c, &n4), Role::Follower);
        assert_ne!(role(&c, n3), Role::Leader);
    }
}

/// `promote_learner` makes a learner a voter, which can then lead.
#[test]
fn promoted_learner_becomes_a_voter() {
    let (conf, all) = with_learner(3);
    let (n1, n4) = (&all[0], &all[3]);
    let mut c = cluster_with(&conf, &all, Config::new);
    c.elect(n1);
    c.raft(n1).promote_learner(n4).unwrap();
    c.process(n1);
    run(&mut c);
    let result = change_finished(&c, n1).expect("no outcome").unwrap();
    assert!(result.voters.contains(n4) && result.learners.is_empty());
    assert!(c.node(n4).raft.configuration().is_voter(n4));
    c.raft(n1).transfer_leadership(Some(n4.clone())).unwrap();
    c.process(n1);
    run(&mut c);
    assert_eq!(c.leader(), Some(n4.clone()));
}

/// Raft paper §6: "the leader steps down (returns to follower state) once it has committed
/// the Cnew log entry." It then wakes a remaining peer with TimeoutNow.
#[test]
fn removed_leader_hands_off_after_the_new_configuration_commits() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    let old_term = term(&c, n1);
    c.raft(n1).remove_peer(n1).unwrap();
    c.process(n1);
    assert!(deliver_until(&mut c, |c| stage_name(c, n1) == Some("Final")));
    assert_eq!(
        role(&c, n1),
        Role::Leader,
        "stepped down before C(new) committed"
    );
    let msgs = run(&mut c); // no ticks: the hand-off needs no election timeout
    assert_ne!(role(&c, n1), Role::Leader);
    assert_eq!(
        msgs.iter()
            .filter(|m| m.body.name() == "TimeoutNow")
            .count(),
        1
    );
    let successor = c.leader().expect("no successor");
    assert!(successor == *n2 || successor == *n3);
    assert_eq!(term(&c, &successor), old_term.next());
    let result = change_finished(&c, n1).expect("no outcome").unwrap();
    assert_eq!(result.voters, voters(&[n2, n3]));
    c.propose(&successor, b"after").unwrap();
    assert_eq!(c.applied_data(n2), vec![Bytes::from_static(b"after")]);
}

/// A second change while one is in progress is refused with `Busy`.
#[test]
fn one_membership_change_at_a_time() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    c.raft(n1).add_peer(id("n4")).unwrap();
    let second = c.raft(n1).add_peer(id("n5"));
    assert!(matches!(second, Err(RaftError::Busy(_))), "{second:?}");
}

/// A new peer that never answers fails the change with `CatchUpFailed`; the configuration
/// is unchanged.
#[test]
fn peer_that_never_catches_up_fails_the_change() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    let ghost = id("n4"); // not in the cluster: messages to it are lost
    let last = c.node(n1).raft.last_index();
    c.raft(n1).add_peer(ghost.clone()).unwrap();
    c.process(n1);
    let rounds = tick_until(&mut c, 5 * TIMEOUT as usize, |c| {
        change_finished(c, n1).is_some()
    });
    assert!(rounds.is_some());
    assert_eq!(
        change_finished(&c, n1),
        Some(Err(RaftError::CatchUpFailed {
            peer: ghost.clone()
        }))
    );
    assert_eq!(
        c.node(n1).raft.last_index(),
        last,
        "a configuration was appended"
    );
    assert!(!c.node(n1).raft.configuration().contains(&ghost));
    assert_eq!(role(&c, n1), Role::Leader);
}

/// Unsafe `reset_peers`: after losing a majority, the survivors are reset to themselves and
/// elect a leader and commit again.
#[test]
fn reset_peers_recovers_a_group_that_lost_its_majority() {
    let (mut c, ids) = elected(5);
    let (n1, n2) = (&ids[0], &ids[1]);
    for lost in &ids[2..] {
        c.isolate(lost);
    }
    let committed = c.node(n1).raft.committed();
    propose_quiet(&mut c, n1, "stuck");
    run(&mut c);
    assert_eq!(
        c.node(n1).raft.committed(),
        committed,
        "two of five committed"
    );
    let survivors = vec![n1.clone(), n2.clone()];
    // While a leader is live (or heard), a reset would make a second one: refused.
    for peer in [n1, n2] {
        let refused = c.raft(peer).reset_peers(survivors.clone());
        assert!(
            matches!(refused, Err(RaftError::InvalidArgument(ref why)) if why.contains("reset-peers refused")),
            "{peer}: {refused:?}"
        );
    }
    // The leader steps down once no quorum answered within its lease; the follower's vote
    // guard lapses an election timeout after it last heard it.
    for _ in 0..3 * TIMEOUT {
        c.tick_all();
        run(&mut c);
    }
    assert_ne!(
        role(&c, n1),
        Role::Leader,
        "n1 kept leading without a quorum"
    );
    c.raft(n1).reset_peers(survivors.clone()).unwrap();
    c.raft(n2).reset_peers(survivors.clone()).unwrap();
    c.process(n1);
    c.process(n2);
    let survivor_leads = |c: &Cluster| {
        c.leader()
            .is_some_and(|l| (l == *n1 || l == *n2) && c.node(&l).raft.committed() > committed)
    };
    tick_until(&mut c, 10 * TIMEOUT as usize, survivor_leads).expect("survivors never led");
    let leader = c.leader().unwrap();
    c.propose(&leader, b"after").unwrap();
    for peer in [n1, n2] {
        assert!(c.applied_data(peer).contains(&Bytes::from_static(b"after")));
        assert_eq!(c.node(peer).raft.configuration().voters, voters(&[n1, n2]));
    }
}

// ----- leadership transfer -------------------------------------------------------------

fn transfer_finished(c: &Cluster, peer: &PeerId) -> Option<Result<(), RaftError>> {
    c.node(peer).events.iter().find_map(|e| match e {
        Event::TransferFinished { result, .. } => Some(result.clone()),
        _ => None,
    })
}

/// Transfer to a named peer: TimeoutNow makes it campaign at once, without pre-vote.
#[test]
fn transfer_to_a_named_peer() {
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    let old_term = term(&c, n1);
    assert_eq!(
        c.raft(n1).transfer_leadership(Some(n3.clone())),
        Ok(n3.clone())
    );
    c.process(n1);
    let msgs = run(&mut c);
    assert_eq!(sent(&msgs, n1, n3, "TimeoutNow").count(), 1);
    assert!(!msgs.iter().any(|m| m.body.name() == "PreVote"));
    assert_eq!(c.leader(), Some(n3.clone()));
    assert_eq!(term(&c, n3), old_term.next());
    assert_eq!(transfer_finished(&c, n1), Some(Ok(())));
}

/// Transfer to `None` picks the most up-to-date voter.
#[test]
fn transfer_to_any_picks_the_most_up_to_date_peer() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.cut_both(n1, n2);
    c.propose(n1, b"x").unwrap();
    c.heal();
    assert_eq!(c.raft(n1).transfer_leadership(None), Ok(n3.clone()));
    c.process(n1);
    run(&mut c);
    assert_eq!(c.leader(), Some(n3.clone()));
}

/// During a transfer, proposals are refused with `Transferring`; when it times out the
/// leader reports `TimedOut` and accepts proposals again.
#[test]
fn transfer_refuses_writes_and_times_out() {
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    c.isolate(n3);
    c.propose(n1, b"x").unwrap(); // n3 falls behind and cannot catch up
    c.raft(n1).transfer_leadership(Some(n3.clone())).unwrap();
    c.process(n1);
    run(&mut c);
    let refused = c.raft(n1).propose(Bytes::from_static(b"y"), None);
    assert_eq!(refused, Err(RaftError::Transferring { target: n3.clone() }));
    assert_eq!(transfer_finished(&c, n1), None);
    tick_until(&mut c, 3 * TIMEOUT as usize, |c| {
        transfer_finished(c, n1).is_some()
    })
    .unwrap();
    assert!(matches!(
        transfer_finished(&c, n1),
        Some(Err(RaftError::TimedOut(_)))
    ));
    assert_eq!(role(&c, n1), Role::Leader);
    c.propose(n1, b"z").unwrap();
    assert_eq!(c.applied_data(n1).last(), Some(&Bytes::from_static(b"z")));
}

// ----- typed errors --------------------------------------------------------------------

#[test]
fn follower_refuses_proposals_with_a_leader_hint() {
    let (mut c, ids) = elected(3);
    let refused = c.raft(&ids[1]).propose(Bytes::from_static(b"x"), None);
    assert_eq!(
        refused,
        Err(RaftError::NotLeader {
            leader: Some(ids[0].clone())
        })
    );
}

fn small_uncommitted_budget(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.uncommitted_bytes_max = 100;
    config
}

#[test]
fn leader_refuses_proposals_beyond_the_uncommitted_budget() {
    let (mut c, ids) = elected_with(3, small_uncommitted_budget);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    c.cut_both(n1, n2);
    c.cut_both(n1, n3);
    let mut accepted = 0;
    let refused = loop {
        match c.raft(n1).propose(Bytes::from_static(b"0123456789"), None) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10, "no limit on uncommitted bytes");
    };
    assert!(matches!(refused, RaftError::Busy(_)), "{refused:?}");
    assert_eq!(accepted, 3); // 3 entries of 34 bytes fill 100 bytes
    c.process(n1);
    c.heal();
    tick_rounds(&mut c, 3);
    assert!(c
        .raft(n1)
        .propose(Bytes::from_static(b"more"), None)
        .is_ok());
}

#[test]
fn proposal_with_a_stale_expected_term_is_refused() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    let actual = term(&c, n1);
    let refused = c.raft(n1).propose(Bytes::from_static(b"x"), Some(Term(99)));
    assert_eq!(
        refused,
        Err(RaftError::WrongTerm {
            expected: Term(99),
            actual
        })
    );
    assert!(c
        .raft(n1)
        .propose(Bytes::from_static(b"x"), Some(actual))
        .is_ok());
}

#[test]
fn malformed_changes_are_invalid_arguments() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    let ghost = id("n9");
    let raft = c.raft(n1);
    let results = [
        raft.remove_peer(&ghost),
        raft.add_learners(std::slice::from_ref(n2)),
        raft.promote_learner(n2),
        raft.change_peers(BTreeSet::new()),
        raft.transfer_leadership(Some(ghost.clone())).map(|_| ()),
    ];
    for result in results {
        assert!(
            matches!(result, Err(RaftError::InvalidArgument(_))),
            "{result:?}"
        );
    }
    assert_eq!(c.node(n1).raft.status().change_stage, None);
}

#[test]
fn snapshot_below_the_first_index_is_compacted() {
    let (mut c, ids) = elected(3);
    let n1 = &ids[0];
    propose_many(&mut c, n1, "a", 5);
    c.snapshot(n1);
    propose_many(&mut c, n1, "b", 5);
    c.snapshot(n1);
    let first_index = c.node(n1).raft.first_index();
    let below = LogIndex(first_index.get() - 2);
    assert_eq!(
        c.node(n1).raft.snapshot_meta_at(below),
        Err(RaftError::Compacted { first_index })
    );
}

fn without_commit_broadcast(id: PeerId) -> Config {
    let mut config = Config::new(id);
    config.commit_broadcast = false;
    config
}

/// `commit_broadcast` (etcd's behaviour, the default) tells followers of a commit at once
/// with an AppendEntries of no entries; without it (raft-rs's `skip_bcast_commit`) the
/// commit index rides on the next AppendEntries or heartbeat, and no message is spent on it.
#[test]
fn without_commit_broadcast_the_commit_rides_on_the_next_append_or_heartbeat() {
    // Default: two AppendEntries per follower for one proposal (entries, then the commit).
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    propose_quiet(&mut c, n1, "x");
    let msgs = run(&mut c);
    assert_eq!(sent(&msgs, n1, n2, "AppendEntries").count(), 2, "{msgs:?}");
    let last = c.node(n1).raft.status().last_index;
    assert_eq!(c.node(n2).raft.status().committed, last);

    let (mut c, ids) = elected_with(3, without_commit_broadcast);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    propose_quiet(&mut c, n1, "x");
    let msgs = run(&mut c);
    let x = c.node(n1).raft.status().last_index;
    assert_eq!(
        c.node(n1).raft.status().committed,
        x,
        "the leader commits x"
    );
    for follower in [n2, n3] {
        assert_eq!(
            sent(&msgs, n1, follower, "AppendEntries").count(),
            1,
            "only the entries went out: {msgs:?}"
        );
        assert!(
            c.node(follower).raft.status().committed < x,
            "{follower} learned the commit without a message for it"
        );
    }
    // The next proposal's AppendEntries carries the commit of x.
    propose_quiet(&mut c, n1, "y");
    run(&mut c);
    let y = c.node(n1).raft.status().last_index;
    for follower in [n2, n3] {
        assert_eq!(c.node(follower).raft.status().committed, x);
        assert_eq!(
            c.applied_data(follower).last().map(|d| d.as_ref()),
            Some(&b"x"[..])
        );
    }
    // And the next heartbeat carries the commit of y.
    tick_rounds(&mut c, 1);
    for follower in [n2, n3] {
        assert_eq!(c.node(follower).raft.status().committed, y);
        assert_eq!(
            c.applied_data(follower).last().map(|d| d.as_ref()),
            Some(&b"y"[..])
        );
    }
}
