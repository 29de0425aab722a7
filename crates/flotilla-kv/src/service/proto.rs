//! The code protox and tonic generate from `proto/kv.proto` and `proto/pd.proto` at build time (see `build.rs`):
//! the messages of the KV service and its tonic client and server.
//!
//! Owns: nothing but the generated code. A leaf of the crate: the store (its `Hello`
//! exchange), the service and the client all name these messages, so they live apart from
//! the service that implements them. Must never: hold hand-written code.

tonic::include_proto!("flotilla.kv.v1");

/// The placement driver's service (`proto/pd.proto`).
pub mod pd {
    tonic::include_proto!("flotilla.pd.v1");
}
