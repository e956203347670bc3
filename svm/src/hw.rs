//! The hardware instructions SVM needs, behind [`SvmHw`] so the logic around them is
//! host-tested with a fake; [`RealSvm`] is the `unsafe` implementation for the kernel.

use crate::state::GuestGprs;

/// MSR EFER.
pub const MSR_EFER: u32 = 0xc000_0080;
/// MSR VM_CR (APM vol. 2 §15.30.1): bit 4 SVMDIS, bit 3 LOCK.
pub const MSR_VM_CR: u32 = 0xc001_0114;
/// MSR VM_HSAVE_PA (§15.30.4): physical address of the host save area VMRUN uses.
pub const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
/// VM_CR.SVMDIS: SVME cannot be set.
pub const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_CR.LOCK: SVMDIS is locked (by firmware).
pub const VM_CR_LOCK: u64 = 1 << 3;

/// SVM's privileged instructions.
///
/// # Safety
/// Implementations execute privileged instructions; every method is only valid in the
/// situation its documentation states.
pub unsafe trait SvmHw {
    /// RDMSR.
    fn rdmsr(&self, msr: u32) -> u64;
    /// WRMSR.
    ///
    /// # Safety
    /// `msr`/`value` must be a write the host kernel tolerates (EFER.SVME, VM_HSAVE_PA).
    unsafe fn wrmsr(&self, msr: u32, value: u64);
    /// Reads DR`n` for n in 0..4.
    fn read_db(&self, n: u8) -> u64;
    /// Writes DR`n` for n in 0..4.
    ///
    /// # Safety
    /// The host does not rely on DR0–DR3 while the guest's values are loaded.
    unsafe fn write_db(&self, n: u8, value: u64);
    /// INVLPGA: invalidates the TLB mapping of `va` in `asid`.
    ///
    /// # Safety
    /// EFER.SVME is set on this CPU.
    unsafe fn invlpga(&self, va: u64, asid: u32);
    /// Runs the guest once through the world switch (see `switch.rs` for the contract).
    ///
    /// # Safety
    /// EFER.SVME and VM_HSAVE_PA are set up on this CPU; `vmcb_pa` is the physical address of
    /// a valid guest VMCB page, `host_vmcb_pa` of this CPU's host VMSAVE page; interrupts are
    /// disabled and the thread cannot migrate; the FPU holds the guest's state or none.
    unsafe fn vmrun(&self, vmcb_pa: u64, host_vmcb_pa: u64, gprs: &mut GuestGprs);
}

/// Why SVM could not be turned on on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnableError {
    /// VM_CR.SVMDIS: firmware disabled SVM (and locked it if `locked`).
    DisabledByFirmware {
        /// VM_CR.LOCK was set as well.
        locked: bool,
    },
    /// The host save area is not 4 KiB aligned.
    BadHostSaveArea(u64),
}

/// Turns SVM on for the calling CPU: EFER.SVME and VM_HSAVE_PA (APM §15.4 "Enabling SVM").
/// Idempotent: if SVME is already set (e.g. vmm(4) enabled it), EFER is left alone, but
/// VM_HSAVE_PA is still written (the host save area must be ours or shared knowingly).
pub fn enable(hw: &impl SvmHw, hsave_pa: u64) -> Result<(), EnableError> {
    if hsave_pa & 0xfff != 0 {
        return Err(EnableError::BadHostSaveArea(hsave_pa));
    }
    let vm_cr = hw.rdmsr(MSR_VM_CR);
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(EnableError::DisabledByFirmware {
            locked: vm_cr & VM_CR_LOCK != 0,
        });
    }
    let efer = hw.rdmsr(MSR_EFER);
    // SAFETY: setting EFER.SVME only enables SVM instructions; VM_HSAVE_PA is only used by
    // VMRUN, which only this crate executes.
    unsafe {
        if efer & crate::state::EFER_SVME == 0 {
            hw.wrmsr(MSR_EFER, efer | crate::state::EFER_SVME);
        }
        hw.wrmsr(MSR_VM_HSAVE_PA, hsave_pa);
    }
    Ok(())
}

/// Turns SVM off for the calling CPU (no guest may be running on it).
pub fn disable(hw: &impl SvmHw) {
    let efer = hw.rdmsr(MSR_EFER);
    // SAFETY: clearing SVME and VM_HSAVE_PA when no guest runs on this CPU.
    unsafe {
        hw.wrmsr(MSR_VM_HSAVE_PA, 0);
        hw.wrmsr(MSR_EFER, efer & !crate::state::EFER_SVME);
    }
}

/// The real instructions, for the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSvm;

// SAFETY: each method executes exactly the instruction it names.
unsafe impl SvmHw for RealSvm {
    fn rdmsr(&self, msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: RDMSR of an architectural MSR in ring 0; no memory access.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        u64::from(hi) << 32 | u64::from(lo)
    }

    unsafe fn wrmsr(&self, msr: u32, value: u64) {
        // SAFETY: the caller guarantees the write is acceptable to the host.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
                in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
        }
    }

    fn read_db(&self, n: u8) -> u64 {
        let v: u64;
        // SAFETY: reading a debug register in ring 0 has no side effect.
        unsafe {
            match n & 3 {
                0 => core::arch::asm!("mov {}, dr0", out(reg) v, options(nomem, nostack)),
                1 => core::arch::asm!("mov {}, dr1", out(reg) v, options(nomem, nostack)),
                2 => core::arch::asm!("mov {}, dr2", out(reg) v, options(nomem, nostack)),
                _ => core::arch::asm!("mov {}, dr3", out(reg) v, options(nomem, nostack)),
            }
        }
        v
    }

    unsafe fn write_db(&self, n: u8, value: u64) {
        // SAFETY: the caller guarantees the host does not use DR0–DR3 meanwhile; the
        // addresses only arm breakpoints when DR7 enables them.
        unsafe {
            match n & 3 {
                0 => core::arch::asm!("mov dr0, {}", in(reg) value, options(nomem, nostack)),
                1 => core::arch::asm!("mov dr1, {}", in(reg) value, options(nomem, nostack)),
                2 => core::arch::asm!("mov dr2, {}", in(reg) value, options(nomem, nostack)),
                _ => core::arch::asm!("mov dr3, {}", in(reg) value, options(nomem, nostack)),
            }
        }
    }

    unsafe fn invlpga(&self, va: u64, asid: u32) {
        // SAFETY: the caller guarantees EFER.SVME; INVLPGA only drops TLB entries.
        unsafe {
            core::arch::asm!("invlpga rax, ecx", in("rax") va, in("ecx") asid,
                options(nostack, preserves_flags));
        }
    }

    unsafe fn vmrun(&self, vmcb_pa: u64, host_vmcb_pa: u64, gprs: &mut GuestGprs) {
        // SAFETY: the caller guarantees the preconditions of the world switch.
        unsafe { crate::switch::svm_world_switch(vmcb_pa, host_vmcb_pa, gprs) }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A CPU simulated at the level of MSRs and debug registers; `vmrun` calls a closure that
    /// plays the guest and the processor.
    #[derive(Default)]
    pub struct FakeSvm {
        pub msrs: RefCell<HashMap<u32, u64>>,
        pub writes: RefCell<Vec<(u32, u64)>>,
        pub db: RefCell<[u64; 4]>,
        pub invlpga: RefCell<Vec<(u64, u32)>>,
        #[allow(clippy::type_complexity)]
        pub guest: RefCell<Option<Box<dyn FnMut(u64, &mut GuestGprs, &mut [u64; 4])>>>,
        pub runs: RefCell<u32>,
    }

    unsafe impl SvmHw for FakeSvm {
        fn rdmsr(&self, msr: u32) -> u64 {
            self.msrs.borrow().get(&msr).copied().unwrap_or(0)
        }
        unsafe fn wrmsr(&self, msr: u32, value: u64) {
            self.msrs.borrow_mut().insert(msr, value);
            self.writes.borrow_mut().push((msr, value));
        }
        fn read_db(&self, n: u8) -> u64 {
            self.db.borrow()[usize::from(n & 3)]
        }
        unsafe fn write_db(&self, n: u8, value: u64) {
            self.db.borrow_mut()[usize::from(n & 3)] = value;
        }
        unsafe fn invlpga(&self, va: u64, asid: u32) {
            self.invlpga.borrow_mut().push((va, asid));
        }
        unsafe fn vmrun(&self, vmcb_pa: u64, _host: u64, gprs: &mut GuestGprs) {
            *self.runs.borrow_mut() += 1;
            if let Some(g) = self.guest.borrow_mut().as_mut() {
                g(vmcb_pa, gprs, &mut self.db.borrow_mut());
            }
        }
    }

    #[test]
    fn enable_sets_svme_and_hsave() {
        let hw = FakeSvm::default();
        hw.msrs.borrow_mut().insert(MSR_EFER, 0xd01);
        enable(&hw, 0x12_3000).unwrap();
        assert_eq!(hw.rdmsr(MSR_EFER), 0x1d01);
        assert_eq!(hw.rdmsr(MSR_VM_HSAVE_PA), 0x12_3000);
        // Already enabled (vmm(4) did it): EFER not rewritten.
        hw.writes.borrow_mut().clear();
        enable(&hw, 0x12_3000).unwrap();
        assert_eq!(*hw.writes.borrow(), vec![(MSR_VM_HSAVE_PA, 0x12_3000)]);
        disable(&hw);
        assert_eq!(hw.rdmsr(MSR_EFER), 0xd01);
        assert_eq!(hw.rdmsr(MSR_VM_HSAVE_PA), 0);
    }

    #[test]
    fn enable_refuses_firmware_disabled_and_misaligned() {
        let hw = FakeSvm::default();
        hw.msrs
            .borrow_mut()
            .insert(MSR_VM_CR, VM_CR_SVMDIS | VM_CR_LOCK);
        assert_eq!(
            enable(&hw, 0x1000),
            Err(EnableError::DisabledByFirmware { locked: true })
        );
        assert!(hw.writes.borrow().is_empty());
        assert_eq!(
            enable(&hw, 0x1008),
            Err(EnableError::BadHostSaveArea(0x1008))
        );
    }
}
