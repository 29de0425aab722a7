//! End-to-end tests of the `flotilla` binary: real server processes on loopback, driven
//! with `flotilla kv` and `flotilla admin` as a user or a script would.
