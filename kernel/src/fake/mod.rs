//! Test doubles: the fake host (std) and a tiny VMM that drives the core like a glue would.

pub mod host;
pub mod vmm;
