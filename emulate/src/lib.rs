//! The in-kernel x86 instruction emulator used for MMIO and string port I/O.
#![cfg_attr(not(test), no_std)]
