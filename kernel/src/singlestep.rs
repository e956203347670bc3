//! Single-step traps over instructions that retire without the CPU executing them
//! (`KVM_CAP_X86_ROBUST_SINGLESTEP`; Linux `kvm_skip_emulated_instruction` →
//! `kvm_vcpu_do_singlestep`).
//!
//! When the guest runs with RFLAGS.TF and an instruction exits (I/O, CPUID, RDMSR/WRMSR, HLT,
//! XSETBV, ...), the CPU never completes it, so it never raises the single-step #DB that follows
//! it. Whoever retires such an instruction raises it instead: DR6.B0-B3 cleared, DR6.BS set,
//! #DB queued. Three places do that:
//! - the core, for the completions it asks of a backend ([`Vcpu::retire`]: the backend's
//!   `complete_*` moved RIP past the instruction);
//! - the instruction emulator (`emul.rs`, after an emulated instruction);
//! - each backend, for the instructions it skips on its own (`svmb`, `vmxb`, `soft`).
//!
//! No #DB is raised when an exception or NMI already occupies the injection slot (it cannot,
//! after an instruction exit, unless userspace put one there with `KVM_SET_VCPU_EVENTS`).

use kvm_abi::{kvm_debugregs, kvm_regs, kvm_vcpu_events};
use zerocopy::FromZeros;

use crate::backend::{Backend, GuestException};
use crate::errno::KResult;
use crate::host::Host;
use crate::vcpu::{Vcpu, VcpuState};

/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// DR6.BS: the #DB was a single-step trap.
pub const DR6_BS: u64 = 1 << 14;
/// DR6 bits that read as 1 when no condition sets them (Linux `DR6_ACTIVE_LOW`).
const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;
/// DR6 bit 12: reserved (must be 0) in DR6.
const DR6_RESERVED_12: u64 = 1 << 12;

/// DR6 as a single-step trap leaves it (Linux `kvm_deliver_exception_payload` for `DR6_BS`):
/// the breakpoint-match bits B0-B3 cleared, BS set, the always-one bits set; the other bits
/// (BD, BT) are kept, as the processor never clears them.
pub fn dr6_single_step(dr6: u64) -> u64 {
    ((dr6 & !0xf & !DR6_RESERVED_12) | DR6_ACTIVE_LOW | DR6_BS) & 0xffff_ffff
}

/// The single-step #DB.
pub const DB: GuestException = GuestException {
    vector: 1,
    error_code: None,
    cr2: None,
};

/// Raises the single-step #DB through the backend's DR6 and exception queue, unless an
/// exception or NMI is already being injected.
pub fn queue_single_step<B: Backend>(b: &B, v: &mut B::Vcpu) -> KResult<()> {
    let mut ev = kvm_vcpu_events::new_zeroed();
    b.get_events(v, &mut ev);
    if ev.exception.injected != 0 || ev.exception.pending != 0 || ev.nmi.injected != 0 {
        return Ok(());
    }
    let mut dr = kvm_debugregs::new_zeroed();
    b.get_debugregs(v, &mut dr);
    dr.dr6 = dr6_single_step(dr.dr6);
    b.set_debugregs(v, &dr)?;
    b.queue_exception(v, DB);
    Ok(())
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    /// Whether an exception is queued for the next entry.
    pub(crate) fn exception_queued(&self, st: &mut VcpuState<H, B>) -> bool {
        let mut ev = kvm_vcpu_events::new_zeroed();
        self.vm().sys.backend.get_events(&mut st.b, &mut ev);
        ev.exception.injected != 0 || ev.exception.pending != 0
    }

    /// Runs `complete` (a backend `complete_*` call); if it retired the instruction that exited
    /// (RIP moved) while RFLAGS.TF was set, raises the single-step #DB. A completion that
    /// faults (#GP from RDMSR) or that the backend drops (userspace moved RIP) leaves RIP alone.
    #[inline(never)]
    pub(crate) fn retire(
        &self,
        st: &mut VcpuState<H, B>,
        complete: impl FnOnce(&B, &mut B::Vcpu),
    ) -> KResult<()> {
        let b = &self.vm().sys.backend;
        let mut r = kvm_regs::new_zeroed();
        b.get_regs(&mut st.b, &mut r);
        let (rip, tf) = (r.rip, r.rflags & RFLAGS_TF != 0);
        complete(b, &mut st.b);
        if !tf {
            return Ok(());
        }
        b.get_regs(&mut st.b, &mut r);
        if r.rip == rip {
            return Ok(());
        }
        queue_single_step(b, &mut st.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr6_after_a_single_step() {
        assert_eq!(dr6_single_step(0xffff_0ff0), 0xffff_4ff0);
        // B0-B3 from an earlier breakpoint go, BD stays, bit 12 and the upper half are cleared,
        // the always-one bits come back.
        assert_eq!(dr6_single_step(0x1_0000_300f), 0xffff_6ff0);
    }
}
