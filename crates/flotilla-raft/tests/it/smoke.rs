use flotilla_raft::testkit::{peer_ids, Cluster};
use flotilla_raft::Role;

#[test]
fn three_nodes_elect_and_replicate() {
    let mut c = Cluster::new(3);
    let ids = peer_ids(3);
    assert_eq!(c.elect(&ids[0]), Some(ids[0].clone()));
    c.propose(&ids[0], b"x").unwrap();
    c.tick_all();
    c.stabilize();
    for id in &ids {
        assert_eq!(c.applied_data(id).len(), 1, "{}", c.describe_states());
    }
    assert_eq!(c.node(&ids[1]).raft.role(), Role::Follower);
}
