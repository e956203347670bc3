//! A kernel-recipe probe for the object lint: `#[no_mangle]` entry points that instantiate the
//! real hardware path ([`svm::hw::RealSvm`], the world switch) and the decoding and state code
//! around it, so that `cargo xtask lint` can check the machine code the kernel will link before
//! the core uses this crate. Build and lint (see `svm/README` in the module docs of `svm`):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Crelocation-model=static -Zcf-protection=branch \
//!   -Cjump-tables=no -Zretpoline-external-thunk -Zplt=yes -Zemit-stack-sizes" \
//!   cargo rustc -p svm --example kobj_probe --release --target x86_64-unknown-none \
//!   -Zbuild-std=core,compiler_builtins --target-dir target/kobj-svm
//! ld -r --whole-archive --gc-sections -u svm_probe_enter -u svm_probe_state \
//!   -u svm_probe_enable target/kobj-svm/x86_64-unknown-none/release/examples/libkobj_probe.a \
//!   -o target/svm-probe.o
//! cargo xtask lint target/svm-probe.o
//! ```
//! On the host (`cargo test` builds examples) it is an ordinary std staticlib.
#![cfg_attr(target_os = "none", no_std)]

use kvm_abi::{kvm_regs, kvm_sregs};
use svm::cpuid::SvmCaps;
use svm::hw::RealSvm;
use svm::state::GuestExtra;
use svm::vmcb::Vmcb;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Prepare, enter and decode, as the backend will; returns the EXITCODE.
///
/// # Safety
/// Only for linking; never called.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn svm_probe_enter(
    vmcb: &mut Vmcb,
    caps: &SvmCaps,
    st: &mut svm::vcpu::EntryState,
    asids: &mut svm::asid::AsidAllocator,
    extra: &mut GuestExtra,
    pas: &[u64; 2],
) -> u64 {
    svm::vcpu::prepare_entry(vmcb, caps, st, 0, asids);
    // SAFETY: probe only, never executed.
    let e = unsafe { svm::vcpu::enter(&RealSvm, caps, vmcb, pas[0], pas[1], extra) };
    svm::vcpu::reinject(vmcb, &e);
    match e.next_rip {
        Some(rip) => {
            svm::vcpu::skip_instruction(vmcb, rip);
            vmcb.control.exit_code
        }
        None => 0,
    }
}

/// State conversion both ways.
#[unsafe(no_mangle)]
pub extern "C" fn svm_probe_state(
    vmcb: &mut Vmcb,
    extra: &mut GuestExtra,
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
) -> i32 {
    svm::state::set_regs(&mut vmcb.save, &mut extra.gprs, regs);
    if svm::state::set_sregs(vmcb, extra, sregs, svm::state::CR4_MCE).is_err() {
        return -22;
    }
    svm::state::get_regs(&vmcb.save, &extra.gprs, regs);
    svm::state::get_sregs(vmcb, extra, sregs);
    0
}

/// Enabling SVM on this CPU and INVLPGA.
#[unsafe(no_mangle)]
pub extern "C" fn svm_probe_enable(hsave_pa: u64) -> i32 {
    match svm::hw::enable(&RealSvm, hsave_pa) {
        Ok(()) => {
            // SAFETY: probe only, never executed.
            unsafe { svm::hw::SvmHw::invlpga(&RealSvm, 0, 1) };
            0
        }
        Err(_) => -5,
    }
}
