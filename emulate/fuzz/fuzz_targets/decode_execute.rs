//! Fuzz target: decode and execute arbitrary bytes in any mode (see `harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod harness;

fuzz_target!(|data: &[u8]| harness::run_one(data));
