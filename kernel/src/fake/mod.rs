//! Test doubles: the fake host (std) and a tiny VMM that drives the core like a glue would.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod host;
pub mod vmm;
