//! # flotilla-raft: the consensus core
//!
//! A deterministic Raft state machine with no I/O, no clock, no threads and no unseeded
//! randomness (see `docs/DESIGN.md`, "Sans-I/O core"). A driver — the runtime, the simulator or a
//! test — feeds it ticks, messages, proposals, reads, configuration changes and "storage
//! finished" notices, and after each input collects a [`Ready`]: messages to send, entries
//! and hard state to persist, snapshots to install, committed entries to apply, reads that
//! became safe and events for the application.
//!
//! The protocol covers what SOFAJRaft's node does: pre-vote, priority election, leader lease
//! and step-down, pipelined replication with per-peer probe / replicate / snapshot states,
//! ReadIndex and lease reads (on followers and learners too), snapshots and compaction,
//! joint-consensus membership changes with a catch-up stage, learners, and leadership
//! transfer; and, beyond SOFAJRaft, hibernation of idle groups (`Config::hibernate_idle_ticks`,
//! [`Raft::is_hibernating`]), which the runtime drives.
//!
//! Modules are cut by the invariant they own: [`quorum`] (majorities), [`progress`] (what a
//! leader knows of a peer), [`membership`] (configurations), `log` (the unstable tail and
//! the durable watermark) and [`Raft`] (the protocol).

#![deny(missing_docs)]

mod config;
mod error;
mod ids;
mod log;
pub mod membership;
mod message;
pub mod progress;
pub mod quorum;
mod raft;
mod ready;
mod rng;
pub mod testkit;
mod types;

pub use config::Config;
pub use error::{RaftError, StoreError};
pub use ids::{LogIndex, PeerId, Priority, Term};
pub use log::{LogStore, MemStorage};
pub use membership::{Configuration, ConfigurationHistory};
pub use message::{AppendResult, Echo, Message, MessageBody, INDEX_MAX, TERM_AHEAD_MAX, TERM_MAX};
#[cfg(feature = "planted-bugs")]
pub use raft::PlantedBugs;
pub use raft::{election_rank, ChangeStage, DroppedMessages, Raft, Status};
pub use ready::{Event, ReadMode, ReadResult, Ready, ReplicatorChange};
pub use rng::Rng;
pub use types::{Entry, EntryPayload, HardState, Role, SnapshotMeta, ENTRY_OVERHEAD_BYTES};
