//! AMD SVM backend: feature detection, VMCB programming, world switch and exit decoding.
//!
//! Knows nothing of KVM objects: it takes and returns guest state as `kvm_abi` types and
//! reports decoded exits to the core. See `../shared/DESIGN.md` §1.
//!
//! How the core's backend adapter uses it, per vCPU (pages from the host's allocator):
//! 1. At attach, per CPU: [`cpuid::detect_usable`] (refuses without NPT), [`hw::enable`] with a
//!    host save area, one [`asid::AsidAllocator`] and one host VMSAVE page per CPU.
//! 2. Per VM: the I/O and MSR permission maps ([`permmap::iopm_intercept_all`],
//!    [`permmap::msrpm_build_kvm`]) and the NPT root (ept/).
//! 3. Per vCPU: a VMCB page set up by [`vcpu::init_vmcb`] and a [`state::GuestExtra`];
//!    `KVM_{GET,SET}_{REGS,SREGS,DEBUGREGS}` and parts of `KVM_{GET,SET}_VCPU_EVENTS` through
//!    [`state`].
//! 4. Run: interrupts off, [`vcpu::prepare_entry`], [`vcpu::enter`] (the world switch,
//!    [`hw::RealSvm`]), then act on the [`exit::DecodedExit`]: re-inject what was interrupted
//!    ([`vcpu::reinject`]), complete instructions with [`vcpu::skip_instruction`] (next RIP
//!    from the exit, or from the emulator's decode when the CPU has no NRIPS), inject with
//!    [`vcpu::inject`], open interrupt windows with [`vcpu::set_irq_window`].
#![cfg_attr(not(any(test, feature = "fake")), no_std)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![deny(missing_docs)]

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
