//! The bad-input suite: one process test per way a well-formed but hostile or
//! careless request could break a cluster. Each test starts real `flotilla server`
//! processes on loopback, sends the request, and asserts the outcome: a clear refusal,
//! nothing changed, and the cluster still serving.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod identity;
mod kv;
mod raft;
mod transport;
