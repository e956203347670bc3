//! Test doubles: the fake host (std) and helpers to drive the core like a VMM would.

pub mod host;
