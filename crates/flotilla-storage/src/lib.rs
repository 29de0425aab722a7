//! # flotilla-storage: durable state for many raft groups per process
//!
//! Work in progress (issue 3). So far: the file layer ([`fs`]) every component is written
//! against, with a simulated file system for crash and fault tests.

#![deny(missing_docs)]

pub mod fs;
