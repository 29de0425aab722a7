//! Integration tests of the core, compiled into one binary to save link time.

mod interaction;
mod smoke;
