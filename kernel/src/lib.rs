//! okvm's OS-independent core: the KVM object model, memslots, ioctl dispatch and run loop.
//!
//! This is the only crate that exports C symbols; the OS glue (OpenBSD's, or the test-only
//! Linux one) links it as `okvm.o` and talks to it through `include/okvm.h` (Rust side:
//! `ffi_host.rs` for host services, `ffi.rs` for entry points).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod anyb;
pub mod backend;
pub mod caps;
pub mod clock;
pub mod cpuid;
pub mod emul;
pub mod errno;
pub mod eventfd;
pub mod ffi;
pub mod ffi_host;
pub mod hmem;
pub mod host;
pub mod irqchip;
pub mod mce;
pub mod memslot;
pub mod msrs;
pub mod run;
pub mod singlestep;
pub mod soft;
pub mod svmb;
pub mod sync;
pub mod system;
pub mod user;
pub mod vcpu;
pub mod vm;
pub mod vmxb;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod tests;

#[cfg(all(not(test), target_os = "none"))]
mod panic;
