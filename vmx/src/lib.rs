//! Intel VMX backend: capability discovery, VMCS programming, world switch and exit decoding.
//!
//! Knows nothing of KVM objects: it takes and returns guest state as `kvm_abi` types and
//! reports decoded exits to the core. See `../shared/DESIGN.md` §1.
#![cfg_attr(not(any(test, feature = "testdata")), no_std)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bitmaps;
pub mod caps;
pub mod exit;
pub mod hw;
pub mod state;
pub mod switch;
/// Recorded capability MSRs (test data for this and other crates' host tests).
#[cfg(any(test, feature = "testdata"))]
#[allow(clippy::panic)]
pub mod testdata;
pub mod vmcs;
