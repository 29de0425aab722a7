//! flotilla-kv integration tests, one binary (STYLE.md §9): the engine conformance suite
//! run against both engines, the codecs, and the KV state machine in clusters of node
//! managers over `LocalTransport`. No assertion about speed: every wait is a generous
//! deadline.

mod cluster;
mod codec;
mod engines;
mod merge;
mod peers;
mod replication;
mod split;
mod store;
mod util;
mod watch;
