//! Integration tests of the core, compiled into one binary to save link time.

mod features;
mod hibernation;
mod hostile;
mod interaction;
mod paper;
mod safety;
mod smoke;
mod util;
