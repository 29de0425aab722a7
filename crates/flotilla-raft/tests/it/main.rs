//! Integration tests of the core, compiled into one binary to save link time.

mod features;
mod hygiene;
mod interaction;
mod paper;
mod smoke;
mod util;
