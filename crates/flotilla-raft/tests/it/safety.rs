//! Safety rules found by review rather than by the paper: each test fails if its rule is
//! broken.

use bytes::Bytes;
use flotilla_raft::testkit::Cluster;
use flotilla_raft::{
    Config, Configuration, Echo, Entry, EntryPayload, Event, HardState, LogIndex, LogStore,
    Message, MessageBody, PeerId, Raft, RaftError, ReplicatorChange, Role, SnapshotMeta,
    StoreError, Term,
};

use crate::util::{elected, ids, propose_quiet, run, tick_rounds};

/// Once a leadership transfer sent TimeoutNow, the target may be elected without waiting for
/// the vote guard, so the old leader's lease is worthless: lease reads fall back to ReadIndex
/// for the rest of its term, even if the transfer times out.
#[test]
fn lease_ends_when_a_transfer_sends_timeout_now() {
    let (mut c, ids) = elected(3);
    let (n1, n2) = (&ids[0], &ids[1]);
    tick_rounds(&mut c, 2);
    assert!(c.node(n1).raft.lease_valid());
    c.cut_both(n1, n2); // TimeoutNow will be lost: the transfer times out
    c.raft(n1)
        .transfer_leadership(Some(n2.clone()))
        .expect("transfer starts");
    c.process(n1);
    assert!(!c.node(n1).raft.lease_valid(), "lease survived TimeoutNow");
    tick_rounds(&mut c, 12); // transfer timeout: n1 resumes
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    assert!(
        !c.node(n1).raft.lease_valid(),
        "lease came back in the same term"
    );
}

/// A sole voter elects itself without asking anyone. Until its term is durable, nothing of
/// that term may reach a learner: a crash could otherwise reuse the term for other entries.
#[test]
fn sole_voter_sends_nothing_before_its_term_is_durable() {
    let mut c = Cluster::new(0);
    let ids = ids(2);
    let (n1, learner) = (&ids[0], &ids[1]);
    let mut conf = Configuration::new([n1.clone()]);
    conf.learners.insert(learner.clone());
    c.add_node(learner.clone(), conf.clone());
    // Hold n1's writes from its very first Ready on.
    c.add_node_holding_persist(n1.clone(), conf);
    assert_eq!(c.node(n1).raft.role(), Role::Leader);
    propose_quiet(&mut c, n1, "x");
    let to_learner = |m: &Message| m.to == *learner && m.body.name() == "AppendEntries";
    assert!(
        !c.queue.iter().any(to_learner),
        "leader traffic left before its term was durable"
    );
    c.release_persist(n1);
    let msgs = run(&mut c);
    assert!(msgs.iter().any(to_learner), "replication never started");
}

/// A follower installing a snapshot is handed no committed entries: they would be applied
/// on top of the snapshot, out of order.
#[test]
fn no_entries_are_applied_while_a_snapshot_installs() {
    let (mut c, ids) = elected(3);
    let (n1, n3) = (&ids[0], &ids[2]);
    let term = c.node(n1).raft.term();
    let last = c.node(n3).raft.last_index();
    let send = |c: &mut Cluster, body: MessageBody| {
        c.raft(n3).step(Message {
            from: n1.clone(),
            to: n3.clone(),
            term,
            body,
        });
        c.process(n3);
    };
    // Entries that are durable on n3 but not yet known committed there.
    let entries: Vec<Entry> = (1..=4)
        .map(|i| Entry {
            index: last.plus(i),
            term,
            payload: EntryPayload::Normal(Bytes::from_static(b"e")),
        })
        .collect();
    send(
        &mut c,
        MessageBody::AppendEntries {
            prev_log_index: last,
            prev_log_term: term,
            entries,
            leader_commit: last,
            echo: Echo::default(),
        },
    );
    let applied_before = c.node(n3).applied_index;
    c.node_mut(n3).hold_persist = true; // the install below never completes
    let meta = SnapshotMeta {
        index: last.plus(10),
        term,
        configuration: c.node(n3).raft.configuration().clone(),
    };
    send(&mut c, MessageBody::InstallSnapshot { meta });
    send(
        &mut c,
        MessageBody::Heartbeat {
            commit: last.plus(4),
            echo: Echo::default(),
            hibernate: false,
            transfer_target: None,
        },
    );
    assert_eq!(c.node(n3).raft.committed(), last.plus(4));
    assert_eq!(
        c.node(n3).applied_index,
        applied_before,
        "entries applied while the snapshot was installing"
    );
}

/// A restarted peer refuses votes for an election timeout: it may have answered a leader
/// (whose lease counts on it) without its term being durable.
#[test]
fn a_restarted_peer_refuses_votes_for_an_election_timeout() {
    let (mut c, ids) = elected(3);
    let (n2, n3) = (&ids[1], &ids[2]);
    c.restart(n3);
    let term = c.node(n3).raft.term();
    c.raft(n3).step(Message {
        from: n2.clone(),
        to: n3.clone(),
        term: term.next(),
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: LogIndex(100),
            last_log_term: term.next(),
            leadership_transfer: false,
        },
    });
    c.process(n3);
    assert_eq!(
        c.node(n3).raft.term(),
        term,
        "a guarded peer learned the new term"
    );
    let granted = c.queue.iter().any(|m| {
        m.from == *n3
            && matches!(
                m.body,
                MessageBody::RequestVoteResponse { granted: true, .. }
            )
    });
    assert!(!granted, "restarted peer voted inside its guard");
}

/// Storage comes from a disk: a store that cannot answer for its own compaction point is
/// refused with an error, not a panic.
#[test]
fn an_inconsistent_store_is_refused_at_start() {
    struct Broken;
    impl LogStore for Broken {
        fn first_index(&self) -> LogIndex {
            LogIndex(5)
        }
        fn last_index(&self) -> LogIndex {
            LogIndex(9)
        }
        fn term(&self, _: LogIndex) -> Result<Term, StoreError> {
            Err(StoreError::Io("bad sector".into()))
        }
        fn entries(&self, _: LogIndex, _: LogIndex, _: u64) -> Result<Vec<Entry>, StoreError> {
            Err(StoreError::Io("bad sector".into()))
        }
        fn snapshot_meta(&self) -> SnapshotMeta {
            SnapshotMeta::default()
        }
    }
    let config = Config::new(PeerId::new("n1"));
    let result = Raft::new(config, Broken, HardState::default(), LogIndex::ZERO);
    match result {
        Err(RaftError::Io(why)) => assert!(why.contains("bad sector"), "{why}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("an inconsistent store was accepted"),
    }
}

/// Messages come from the network. Garbage that is well-typed but nonsensical (random kinds,
/// indexes, terms and entries) must never crash a peer; once it stops, the group elects a
/// leader and commits again.
#[test]
fn garbage_messages_never_crash_a_peer() {
    let (mut c, ids) = elected(3);
    let mut rng = flotilla_raft::Rng::new(7);
    let mut pick = |n: u64| rng.below(n);
    for round in 0..3000u64 {
        let from = ids[pick(3) as usize].clone();
        let to = ids[pick(3) as usize].clone();
        // Half the garbage carries the receiver's own term, so it reaches the role's
        // handlers instead of being sorted out by the term rules.
        let own_term = c.node(&to).raft.term();
        let own_last = c.node(&to).raft.last_index();
        let term = if pick(2) == 0 {
            own_term
        } else {
            Term(pick(6))
        };
        let index = |v: u64| LogIndex(v);
        let body = match pick(12) {
            0 => MessageBody::RequestVote {
                pre_vote: pick(2) == 0,
                last_log_index: index(pick(50)),
                last_log_term: Term(pick(6)),
                leadership_transfer: pick(4) == 0,
            },
            1 => MessageBody::RequestVoteResponse {
                pre_vote: pick(2) == 0,
                granted: pick(2) == 0,
                leader: None,
            },
            2 => {
                // Sometimes right at the end of the receiver's log, so the consistency
                // check passes and the entries themselves are what is wrong.
                let prev = if pick(2) == 0 {
                    own_last.get()
                } else {
                    pick(40)
                };
                let entries = (0..pick(4))
                    .map(|i| Entry {
                        index: index(prev + 1 + i + pick(2)),
                        term: Term(pick(6)),
                        payload: EntryPayload::Normal(Bytes::from_static(b"g")),
                    })
                    .collect();
                let prev_log_term = if prev == own_last.get() {
                    flotilla_raft::testkit::durable_entries(&c.node(&to).storage)
                        .last()
                        .map_or(Term(0), |e| e.term)
                } else {
                    Term(pick(6))
                };
                MessageBody::AppendEntries {
                    prev_log_index: index(prev),
                    prev_log_term,
                    entries,
                    leader_commit: index(pick(60)),
                    echo: Echo {
                        tick: pick(100),
                        read_seq: pick(10),
                    },
                }
            }
            3 => MessageBody::AppendEntriesResponse {
                result: match pick(3) {
                    0 => flotilla_raft::AppendResult::Success {
                        last_index: index(pick(60)),
                    },
                    1 => flotilla_raft::AppendResult::Reject {
                        rejected: index(pick(60)),
                        hint: index(pick(60)),
                        hint_term: Term(pick(6)),
                    },
                    _ => flotilla_raft::AppendResult::Busy,
                },
                echo: Echo {
                    tick: pick(100),
                    read_seq: pick(10),
                },
            },
            4 => MessageBody::Heartbeat {
                commit: index(pick(60)),
                echo: Echo::default(),
                hibernate: pick(2) == 0,
                transfer_target: None,
            },
            5 => MessageBody::HeartbeatResponse {
                echo: Echo {
                    tick: pick(100),
                    read_seq: pick(10),
                },
            },
            6 => MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: index(pick(60)),
                    term: Term(pick(6)),
                    configuration: Configuration::new(ids.iter().cloned()),
                },
            },
            7 => MessageBody::InstallSnapshotResponse {
                installed: (pick(2) == 0).then(|| index(pick(60))),
            },
            8 => MessageBody::TimeoutNow,
            9 => MessageBody::ReadIndexRequest {
                batch: pick(5),
                lease: pick(2) == 0,
            },
            10 => MessageBody::ReadIndexResponse {
                batch: pick(5),
                result: Ok(index(pick(60))),
            },
            _ => {
                // Real traffic keeps flowing in between.
                if let Some(leader) = c.leader() {
                    let _ = c
                        .raft(&leader)
                        .propose(Bytes::from(format!("p{round}")), None);
                    c.process(&leader);
                }
                c.tick_all();
                run(&mut c);
                continue;
            }
        };
        c.raft(&to).step(Message {
            from,
            to: to.clone(),
            term,
            body,
        });
        c.process(&to);
        run(&mut c);
    }
    // The garbage stops: the group recovers and commits.
    let mut committed = false;
    for _ in 0..400 {
        c.tick_all();
        run(&mut c);
        if let Some(leader) = c.leader() {
            if c.raft(&leader)
                .propose(Bytes::from_static(b"after"), None)
                .is_ok()
            {
                c.process(&leader);
                run(&mut c);
                let applied = c.applied_data(&leader);
                if applied.last().is_some_and(|d| d.as_ref() == b"after") {
                    committed = true;
                    break;
                }
            }
        }
    }
    assert!(
        committed,
        "no commit after the garbage stopped\n{}",
        c.describe_states()
    );
}

/// A peer restarted on a log that lost entries it had acknowledged (a damaged disk) is
/// repaired: its rejection of what it had acknowledged makes the leader forget that match
/// and replicate the lost entries again, so the peer counts towards commits once more.
/// With the third peer cut off, nothing new commits until the repair is done.
#[test]
fn a_peer_that_lost_acknowledged_entries_is_repaired() {
    let (mut c, ids) = elected(3);
    let (n1, n2, n3) = (&ids[0], &ids[1], &ids[2]);
    crate::util::propose_many(&mut c, n1, "a", 10);
    let last = c.node(n1).raft.last_index();
    assert_eq!(c.node(n3).raft.last_index(), last);
    let kept = LogIndex(last.get() - 6);
    c.node(n3).storage.truncate_after(kept);
    c.restart(n3);
    assert_eq!(c.node(n3).raft.last_index(), kept);
    c.isolate(n2);
    c.node_mut(n1).events.clear();
    for i in 0..3 {
        propose_quiet(&mut c, n1, &format!("b{i}"));
        tick_rounds(&mut c, 2);
    }
    tick_rounds(&mut c, 5);
    let now_last = c.node(n1).raft.last_index();
    assert_eq!(now_last, last.plus(3));
    assert_eq!(
        c.node(n1).raft.committed(),
        now_last,
        "the leader and the repaired peer commit without the cut-off one: {}",
        c.describe_states()
    );
    assert_eq!(c.node(n3).raft.last_index(), now_last);
    assert_eq!(c.applied_data(n3), c.applied_data(n1));
    assert!(
        c.node(n1).events.iter().any(|e| matches!(
            e,
            Event::Replicator { peer, change: ReplicatorChange::LostEntries } if peer == n3
        )),
        "the leader did not report the loss"
    );
}
