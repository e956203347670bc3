//! Machine checks of a vCPU (`KVM_CAP_MCE`): `KVM_X86_SETUP_MCE`, `KVM_X86_SET_MCE`, the
//! delivery of the #MC it raises, and the core's MSR path, which answers the machine-check MSRs
//! ([`Mce`], `msrs.rs`) for every backend and hands every other MSR to the backend.
//!
//! An injected uncorrected error raises #MC (vector 18, no error code) at the next entry, as
//! soon as no other event occupies the injection slot; one that arrives while `MCG_STATUS.MCIP`
//! is set or with CR4.MCE clear shuts the vCPU down: the next `KVM_RUN` returns
//! `KVM_EXIT_SHUTDOWN` (Linux `KVM_REQ_TRIPLE_FAULT`). A vCPU halted in the in-kernel APIC
//! becomes runnable for its #MC.

use kvm_abi::{kvm_sregs, kvm_vcpu_events, kvm_x86_mce};
use zerocopy::FromZeros;

use crate::backend::{Backend, GuestException};
use crate::errno::KResult;
use crate::host::Host;
use crate::msrs::{McAction, Mce};
use crate::user;
use crate::vcpu::{Vcpu, VcpuState};

/// CR4.MCE.
const CR4_MCE: u64 = 1 << 6;

/// The machine-check exception.
const MC: GuestException = GuestException {
    vector: 18,
    error_code: None,
    cr2: None,
};

impl<H: Host, B: Backend> Vcpu<H, B> {
    /// `KVM_X86_SETUP_MCE`: `arg` points to the `MCG_CAP` value.
    #[inline(never)]
    pub(crate) fn setup_mce(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let cap: u64 = user::read(self.vm().sys.host, arg)?;
        st.mce.setup(cap).map(|()| 0)
    }

    /// `KVM_X86_SET_MCE` (Linux `kvm_vcpu_ioctl_x86_set_mce`).
    #[inline(never)]
    pub(crate) fn set_mce(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let m: kvm_x86_mce = user::read(self.vm().sys.host, arg)?;
        let b = &self.vm().sys.backend;
        let mut sregs = kvm_sregs::new_zeroed();
        b.get_sregs(&mut st.b, &mut sregs);
        let cr4_mce = sregs.cr4 & CR4_MCE != 0;
        match st
            .mce
            .inject(m.bank, m.status, m.addr, m.misc, m.mcg_status, cr4_mce)?
        {
            McAction::None => {}
            McAction::Shutdown => st.shutdown_req = true,
            McAction::RaiseMc => {
                st.mc_pending = true;
                self.deliver_mc(st);
                // A pending exception ends an in-kernel HLT (Linux `kvm_vcpu_has_events`).
                if let Some(l) = st.lapic.as_mut() {
                    if l.mp_state == kvm_abi::KVM_MP_STATE_HALTED {
                        l.mp_state = kvm_abi::KVM_MP_STATE_RUNNABLE;
                    }
                }
            }
        }
        Ok(0)
    }

    /// Queues a pending #MC when the injection slot is free (no exception, NMI or interrupt
    /// queued or being re-injected); otherwise it waits for a later entry.
    pub(crate) fn deliver_mc(&self, st: &mut VcpuState<H, B>) {
        if !st.mc_pending {
            return;
        }
        let b = &self.vm().sys.backend;
        let mut ev = kvm_vcpu_events::new_zeroed();
        b.get_events(&mut st.b, &mut ev);
        if ev.exception.injected != 0
            || ev.exception.pending != 0
            || ev.nmi.injected != 0
            || ev.interrupt.injected != 0
        {
            return;
        }
        b.queue_exception(&mut st.b, MC);
        st.mc_pending = false;
    }

    /// Reads MSR `index` for the guest (`host` false) or `KVM_GET_MSRS` (`host` true).
    pub(crate) fn msr_get(&self, st: &mut VcpuState<H, B>, index: u32, host: bool) -> KResult<u64> {
        if Mce::handles(index) {
            return st.mce.get(index, host);
        }
        self.vm().sys.backend.get_msr(&mut st.b, index, host)
    }

    /// Writes MSR `index` for the guest (`host` false) or `KVM_SET_MSRS` (`host` true).
    pub(crate) fn msr_set(
        &self,
        st: &mut VcpuState<H, B>,
        index: u32,
        data: u64,
        host: bool,
    ) -> KResult<()> {
        if Mce::handles(index) {
            return st.mce.set(index, data, host);
        }
        self.vm().sys.backend.set_msr(&mut st.b, index, data, host)
    }
}
