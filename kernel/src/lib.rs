//! okvm's OS-independent core: the KVM object model, memslots, ioctl dispatch and run loop.
//!
//! This is the only crate that exports C symbols; the OS glue (OpenBSD's, or the test-only
//! Linux one) links it as `okvm.o` and talks to it through `okvm.h`.
#![cfg_attr(not(test), no_std)]

#[cfg(all(not(test), target_os = "none"))]
mod panic;
