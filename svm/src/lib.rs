//! AMD SVM backend: feature detection, VMCB programming, world switch and exit decoding.
//!
//! Knows nothing of KVM objects: it takes and returns guest state as `kvm_abi` types and
//! reports normalized exits to the core. See `../shared/DESIGN.md` §1.
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

pub mod asid;
pub mod cpuid;
pub mod exit;
pub mod hw;
pub mod intercept;
pub mod permmap;
pub mod state;
mod switch;
pub mod vcpu;
pub mod vmcb;
