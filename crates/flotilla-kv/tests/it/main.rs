//! flotilla-kv integration tests, one binary (STYLE.md §9).

mod codec;
