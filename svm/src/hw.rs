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
    /// Reads DR6 and DR7 (the host's, around a guest entry).
    fn read_dr6_dr7(&self) -> (u64, u64);
    /// Writes DR6 and DR7.
    ///
    /// # Safety
    /// The values are the host's own (restored after #VMEXIT set DR7 to 400h).
    unsafe fn write_dr6_dr7(&self, dr6: u64, dr7: u64);
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

    // Host-CPU operations around a guest entry (interrupt flag, extended state, TSC).

    /// Disables maskable interrupts (CLI); returns whether RFLAGS.IF was set before.
    fn irq_disable(&self) -> bool;
    /// Enables maskable interrupts (STI).
    ///
    /// # Safety
    /// The caller disabled them with [`SvmHw::irq_disable`] and nothing it did since requires
    /// them off any more.
    unsafe fn irq_enable(&self);
    /// XGETBV with ECX = 0 (XCR0); only valid with CR4.OSXSAVE.
    fn xgetbv0(&self) -> u64;
    /// XSETBV with ECX = 0.
    ///
    /// # Safety
    /// `value` is a valid XCR0 for this CPU (a subset of the host's) and the caller restores
    /// the host's value before anything else in the host uses extended state.
    unsafe fn xsetbv0(&self, value: u64);
    /// XSAVE64 of the components in `mask` into the standard-format area `area`.
    ///
    /// # Safety
    /// `area` is 64-byte aligned, writable and at least as large as CPUID 0Dh.EBX says.
    unsafe fn xsave(&self, area: *mut u8, mask: u64);
    /// XRSTOR64 of the components in `mask` from the standard-format area `area`.
    ///
    /// # Safety
    /// `area` is 64-byte aligned, holds a valid XSAVE header (XCOMP_BV = 0, reserved bytes
    /// zero, XSTATE_BV within XCR0) and a valid MXCSR; the host's FPU state was saved.
    unsafe fn xrstor(&self, area: *const u8, mask: u64);
    /// FXSAVE64 into a 512-byte area (CPUs without XSAVE).
    ///
    /// # Safety
    /// `area` is 16-byte aligned and writable for 512 bytes.
    unsafe fn fxsave(&self, area: *mut u8);
    /// FXRSTOR64 from a 512-byte area.
    ///
    /// # Safety
    /// `area` is 16-byte aligned and holds a valid MXCSR; the host's FPU state was saved.
    unsafe fn fxrstor(&self, area: *const u8);
    /// RDTSC.
    fn rdtsc(&self) -> u64;
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

    fn read_dr6_dr7(&self) -> (u64, u64) {
        let (d6, d7): (u64, u64);
        // SAFETY: reading debug registers in ring 0 has no side effect.
        unsafe {
            core::arch::asm!("mov {}, dr6", "mov {}, dr7", out(reg) d6, out(reg) d7,
                options(nomem, nostack));
        }
        (d6, d7)
    }

    unsafe fn write_dr6_dr7(&self, dr6: u64, dr7: u64) {
        // SAFETY: the caller restores the host's own values.
        unsafe {
            core::arch::asm!("mov dr6, {}", "mov dr7, {}", in(reg) dr6, in(reg) dr7,
                options(nomem, nostack));
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

    fn irq_disable(&self) -> bool {
        let flags: u64;
        // SAFETY: reads RFLAGS and clears IF; ring 0.
        unsafe { core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
        flags & (1 << 9) != 0
    }

    unsafe fn irq_enable(&self) {
        // SAFETY: the caller guarantees interrupts may be taken again.
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    }

    fn xgetbv0(&self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV(0) only reads XCR0; the caller checked CR4.OSXSAVE.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        u64::from(hi) << 32 | u64::from(lo)
    }

    unsafe fn xsetbv0(&self, value: u64) {
        // SAFETY: the caller guarantees a valid XCR0 and restores the host's.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32,
                in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags));
        }
    }

    unsafe fn xsave(&self, area: *mut u8, mask: u64) {
        // SAFETY: the caller guarantees an aligned, large enough, writable area.
        unsafe {
            core::arch::asm!("xsave64 [{}]", in(reg) area, in("eax") mask as u32,
                in("edx") (mask >> 32) as u32, options(nostack, preserves_flags));
        }
    }

    unsafe fn xrstor(&self, area: *const u8, mask: u64) {
        // SAFETY: the caller guarantees a valid, aligned area.
        unsafe {
            core::arch::asm!("xrstor64 [{}]", in(reg) area, in("eax") mask as u32,
                in("edx") (mask >> 32) as u32, options(nostack, preserves_flags));
        }
    }

    unsafe fn fxsave(&self, area: *mut u8) {
        // SAFETY: the caller guarantees an aligned, writable 512-byte area.
        unsafe {
            core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags))
        };
    }

    unsafe fn fxrstor(&self, area: *const u8) {
        // SAFETY: the caller guarantees an aligned area with a valid MXCSR.
        unsafe {
            core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags))
        };
    }

    fn rdtsc(&self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: RDTSC has no side effect.
        unsafe {
            core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
        };
        u64::from(hi) << 32 | u64::from(lo)
    }
}

#[cfg(any(test, feature = "fake"))]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
pub mod fake {
    //! A CPU simulated at the level of MSRs, debug registers, XCR0 and the interrupt flag;
    //! `vmrun` calls a closure that plays the guest and the processor. `Sync`, so that the
    //! core's backend adapter can be host-tested with it.
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// The guest closure: VMCB physical address, guest GPRs, DR0-DR3.
    pub type GuestFn = Box<dyn FnMut(u64, &mut GuestGprs, &mut [u64; 4]) + Send>;

    /// Fake SVM hardware.
    #[derive(Default)]
    pub struct FakeSvm {
        /// MSR values.
        pub msrs: Mutex<HashMap<u32, u64>>,
        /// Every WRMSR, in order.
        pub writes: Mutex<Vec<(u32, u64)>>,
        /// DR0-DR3.
        pub db: Mutex<[u64; 4]>,
        /// Every INVLPGA.
        pub invlpga: Mutex<Vec<(u64, u32)>>,
        /// Plays the guest on VMRUN.
        pub guest: Mutex<Option<GuestFn>>,
        /// Number of VMRUNs.
        pub runs: Mutex<u32>,
        /// RFLAGS.IF (true = enabled); VMRUN asserts it is clear.
        pub irq_on: Mutex<bool>,
        /// XCR0, and XCR0 as it was during the last VMRUN.
        pub xcr0: Mutex<(u64, u64)>,
        /// Number of XSAVE/FXSAVE and XRSTOR/FXRSTOR executed.
        pub fpu_ops: Mutex<(u32, u32)>,
        /// TSC value.
        pub tsc: Mutex<u64>,
        /// DR6 and DR7; VMRUN leaves DR7 at 400h as #VMEXIT does.
        pub dr67: Mutex<(u64, u64)>,
    }

    // SAFETY: a simulation; no instruction is executed.
    unsafe impl SvmHw for FakeSvm {
        fn rdmsr(&self, msr: u32) -> u64 {
            self.msrs.lock().unwrap().get(&msr).copied().unwrap_or(0)
        }
        unsafe fn wrmsr(&self, msr: u32, value: u64) {
            self.msrs.lock().unwrap().insert(msr, value);
            self.writes.lock().unwrap().push((msr, value));
        }
        fn read_db(&self, n: u8) -> u64 {
            self.db.lock().unwrap()[usize::from(n & 3)]
        }
        unsafe fn write_db(&self, n: u8, value: u64) {
            self.db.lock().unwrap()[usize::from(n & 3)] = value;
        }
        unsafe fn invlpga(&self, va: u64, asid: u32) {
            self.invlpga.lock().unwrap().push((va, asid));
        }
        fn read_dr6_dr7(&self) -> (u64, u64) {
            *self.dr67.lock().unwrap()
        }
        unsafe fn write_dr6_dr7(&self, dr6: u64, dr7: u64) {
            *self.dr67.lock().unwrap() = (dr6, dr7);
        }
        unsafe fn vmrun(&self, vmcb_pa: u64, _host: u64, gprs: &mut GuestGprs) {
            assert!(
                !*self.irq_on.lock().unwrap(),
                "VMRUN with interrupts enabled"
            );
            *self.runs.lock().unwrap() += 1;
            {
                let mut x = self.xcr0.lock().unwrap();
                x.1 = x.0;
            }
            let mut db = *self.db.lock().unwrap();
            if let Some(g) = self.guest.lock().unwrap().as_mut() {
                g(vmcb_pa, gprs, &mut db);
            }
            *self.db.lock().unwrap() = db;
            self.dr67.lock().unwrap().1 = 0x400;
        }
        fn irq_disable(&self) -> bool {
            core::mem::replace(&mut *self.irq_on.lock().unwrap(), false)
        }
        unsafe fn irq_enable(&self) {
            *self.irq_on.lock().unwrap() = true;
        }
        fn xgetbv0(&self) -> u64 {
            self.xcr0.lock().unwrap().0
        }
        unsafe fn xsetbv0(&self, value: u64) {
            self.xcr0.lock().unwrap().0 = value;
        }
        unsafe fn xsave(&self, _area: *mut u8, _mask: u64) {
            self.fpu_ops.lock().unwrap().0 += 1;
        }
        unsafe fn xrstor(&self, _area: *const u8, _mask: u64) {
            self.fpu_ops.lock().unwrap().1 += 1;
        }
        unsafe fn fxsave(&self, _area: *mut u8) {
            self.fpu_ops.lock().unwrap().0 += 1;
        }
        unsafe fn fxrstor(&self, _area: *const u8) {
            self.fpu_ops.lock().unwrap().1 += 1;
        }
        fn rdtsc(&self) -> u64 {
            let mut t = self.tsc.lock().unwrap();
            *t += 1000;
            *t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSvm;
    use super::*;

    #[test]
    fn enable_sets_svme_and_hsave() {
        let hw = FakeSvm::default();
        hw.msrs.lock().unwrap().insert(MSR_EFER, 0xd01);
        enable(&hw, 0x12_3000).unwrap();
        assert_eq!(hw.rdmsr(MSR_EFER), 0x1d01);
        assert_eq!(hw.rdmsr(MSR_VM_HSAVE_PA), 0x12_3000);
        // Already enabled (vmm(4) did it): EFER not rewritten.
        hw.writes.lock().unwrap().clear();
        enable(&hw, 0x12_3000).unwrap();
        assert_eq!(
            *hw.writes.lock().unwrap(),
            vec![(MSR_VM_HSAVE_PA, 0x12_3000)]
        );
        disable(&hw);
        assert_eq!(hw.rdmsr(MSR_EFER), 0xd01);
        assert_eq!(hw.rdmsr(MSR_VM_HSAVE_PA), 0);
    }

    #[test]
    fn enable_refuses_firmware_disabled_and_misaligned() {
        let hw = FakeSvm::default();
        hw.msrs
            .lock()
            .unwrap()
            .insert(MSR_VM_CR, VM_CR_SVMDIS | VM_CR_LOCK);
        assert_eq!(
            enable(&hw, 0x1000),
            Err(EnableError::DisabledByFirmware { locked: true })
        );
        assert!(hw.writes.lock().unwrap().is_empty());
        assert_eq!(
            enable(&hw, 0x1008),
            Err(EnableError::BadHostSaveArea(0x1008))
        );
    }
}
