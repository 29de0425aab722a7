//! Deterministic cluster simulator (in progress).
