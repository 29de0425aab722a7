//! A simulated client's state: the operation it has in flight and what it last saw. Plain
//! data, so that the simulated node (which queues client requests while it is paused) names
//! it without depending on the workload that drives clients.

use std::collections::BTreeMap;

use flotilla_linearizability::OpKind;

/// One client operation in flight.
#[derive(Clone, Debug)]
pub struct ClientOp {
    pub(super) op_id: u64,
    pub(super) key: u64,
    pub(super) kind: OpKind,
    pub(super) invoke: u64,
}

/// A simulated client: its operation in flight (at most one), the last value it saw per key,
/// and the node it sends to first.
pub(super) struct Client {
    pub(super) op: Option<ClientOp>,
    pub(super) last_seen: BTreeMap<u64, Option<u64>>,
    pub(super) preferred: usize,
}
