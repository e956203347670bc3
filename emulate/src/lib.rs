//! The in-kernel x86 instruction emulator used for MMIO and string port I/O.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod cpu;
pub mod decode;
