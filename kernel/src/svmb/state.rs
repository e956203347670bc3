//! SVM vCPU state the VMCB does not hold (events, XCR0, in-memory MSRs) and the conversions
//! between `kvm_abi` types and the VMCB / XSAVE page that the `svm` crate does not do.

use kvm_abi::{kvm_fpu, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave};
use svm::state::GuestExtra;
use svm::vcpu::{self as sv, EntryState};
use svm::vmcb::{CleanBits, EventInj, EventType, Vmcb, EVENTINJ_VALID};
use zerocopy::{FromZeros, IntoBytes};

use crate::errno::{KResult, EINVAL};
use crate::msrs::{self, MsrStore};

/// Per-vCPU software state of the SVM backend (heap; the VMCB lives in its own page).
pub struct SvmVcpuState {
    /// GPRs outside the VMCB, DR0–DR3.
    pub extra: GuestExtra,
    /// ASID and last CPU.
    pub entry: EntryState,
    /// Index among the VM's vCPUs (slot in the VM's running table).
    pub index: u32,
    /// vCPU id.
    pub id: u32,
    /// The VM's TLB generation this vCPU last flushed for.
    pub tlb_gen: u64,
    /// Guest XCR0.
    pub xcr0: u64,
    /// XCR0 bits the guest CPUID allows (leaf 0Dh.0 EAX).
    pub guest_xcr0: u64,
    /// MSRs kept in memory.
    pub msrs: MsrStore,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// `KVM_INTERRUPT` vector not yet in EVENTINJ.
    pub pending_irq: Option<u8>,
    /// `KVM_NMI` not yet injected.
    pub nmi_pending: bool,
    /// NMIs blocked (an NMI handler runs; ends after its IRET).
    pub nmi_masked: bool,
    /// The IRET of the NMI handler was intercepted; NMIs unblock after the next exit.
    pub awaiting_iret: bool,
    /// The instruction whose exit the core is completing: (its RIP, the RIP after it).
    pub pending_rip: Option<(u64, u64)>,
    /// Exits so far (debug log).
    pub nexits: u64,
}

impl SvmVcpuState {
    /// Power-on state of the fields outside the VMCB.
    pub fn new(id: u32, index: u32) -> Self {
        let apic_base = 0xfee0_0000 | (1 << 11) | if id == 0 { 1 << 8 } else { 0 };
        let mut msrs = MsrStore::new_zeroed();
        msrs.reset();
        let _ = msrs.set(msrs::MSR_IA32_APICBASE, apic_base, true);
        Self {
            extra: GuestExtra::default(),
            entry: EntryState::default(),
            index,
            id,
            tlb_gen: u64::MAX,
            xcr0: 1,
            guest_xcr0: 0,
            msrs,
            apic_base,
            pending_irq: None,
            nmi_pending: false,
            nmi_masked: false,
            awaiting_iret: false,
            pending_rip: None,
            nexits: 0,
        }
    }
}

// Offsets in the FXSAVE legacy region / XSAVE header.
const FX_FCW: usize = 0;
const FX_FSW: usize = 2;
const FX_FTW: usize = 4;
const FX_FOP: usize = 6;
const FX_FIP: usize = 8;
const FX_FDP: usize = 16;
const FX_MXCSR: usize = 24;
const FX_ST: usize = 32;
const FX_XMM: usize = 160;
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;
const XSAVE_HDR_END: usize = 576;

fn put(a: &mut [u8; 4096], off: usize, b: &[u8]) {
    if let Some(d) = a.get_mut(off..off + b.len()) {
        d.copy_from_slice(b);
    }
}

fn get_le(a: &[u8], off: usize, len: usize) -> u64 {
    let mut x = [0u8; 8];
    if let (Some(d), Some(s)) = (x.get_mut(..len), a.get(off..off + len)) {
        d.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

/// The reset FPU state: FCW 037Fh, MXCSR 1F80h, x87 and SSE in their initial configuration.
pub fn reset_fpu(a: &mut [u8; 4096]) {
    a.fill(0);
    put(a, FX_FCW, &0x37fu16.to_le_bytes());
    put(a, FX_MXCSR, &0x1f80u32.to_le_bytes());
    put(a, XSTATE_BV, &3u64.to_le_bytes());
}

/// `KVM_GET_FPU` from the XSAVE page.
pub fn get_fpu(a: &[u8; 4096], out: &mut kvm_fpu) {
    *out = FromZeros::new_zeroed();
    out.fcw = get_le(a, FX_FCW, 2) as u16;
    out.fsw = get_le(a, FX_FSW, 2) as u16;
    out.ftwx = get_le(a, FX_FTW, 1) as u8;
    out.last_opcode = get_le(a, FX_FOP, 2) as u16;
    out.last_ip = get_le(a, FX_FIP, 8);
    out.last_dp = get_le(a, FX_FDP, 8);
    out.mxcsr = get_le(a, FX_MXCSR, 4) as u32;
    if let Some(s) = a.get(FX_ST..FX_ST + 128) {
        out.fpr.as_mut_bytes().copy_from_slice(s);
    }
    if let Some(s) = a.get(FX_XMM..FX_XMM + 256) {
        out.xmm.as_mut_bytes().copy_from_slice(s);
    }
}

/// `KVM_SET_FPU` into the XSAVE page (MXCSR reserved bits are dropped: XRSTOR would fault).
pub fn set_fpu(a: &mut [u8; 4096], f: &kvm_fpu) {
    put(a, FX_FCW, &f.fcw.to_le_bytes());
    put(a, FX_FSW, &f.fsw.to_le_bytes());
    put(a, FX_FTW, &[f.ftwx]);
    put(a, FX_FOP, &f.last_opcode.to_le_bytes());
    put(a, FX_FIP, &f.last_ip.to_le_bytes());
    put(a, FX_FDP, &f.last_dp.to_le_bytes());
    put(a, FX_MXCSR, &(f.mxcsr & 0xffff).to_le_bytes());
    put(a, FX_ST, f.fpr.as_bytes());
    put(a, FX_XMM, f.xmm.as_bytes());
    // The legacy components now hold explicit values.
    let bv = get_le(a, XSTATE_BV, 8) | 3;
    put(a, XSTATE_BV, &bv.to_le_bytes());
}

/// `KVM_GET_XSAVE`: the standard-format area.
pub fn get_xsave(a: &[u8; 4096], out: &mut kvm_xsave) {
    out.as_mut_bytes().copy_from_slice(a);
}

/// Whether `value` may be loaded into a guest's XCR0 (both backends; Linux `__kvm_set_xcr`):
/// x87 always on, only components the guest's CPUID offers (`guest_xcr0`) and this backend
/// switches (`fpu_mask`), AVX only with SSE, and never without host XSAVE (`host_xcr0` 0).
pub fn xcr0_valid(host_xcr0: u64, fpu_mask: u64, guest_xcr0: u64, value: u64) -> bool {
    let allowed = (guest_xcr0 | 1) & fpu_mask;
    host_xcr0 != 0 && value & 1 != 0 && value & !allowed == 0 && (value & 4 == 0 || value & 2 != 0)
}

/// `KVM_GET_XCRS`: one entry, XCR0; none when the host runs without XSAVE (`host_xcr0` 0), as
/// Linux answers there.
pub fn get_xcrs(host_xcr0: u64, xcr0: u64, out: &mut kvm_xcrs) {
    *out = FromZeros::new_zeroed();
    if host_xcr0 == 0 {
        return;
    }
    out.nr_xcrs = 1;
    if let Some(x) = out.xcrs.get_mut(0) {
        x.xcr = 0;
        x.value = xcr0;
    }
}

/// `KVM_SET_XCRS`: the XCR0 value among the first `nr_xcrs` entries, if any (others ignored).
pub fn xcr0_of(xcrs: &kvm_xcrs) -> Option<u64> {
    let n = xcrs.nr_xcrs as usize;
    xcrs.xcrs.get(..n)?.iter().find(|e| e.xcr == 0).map(|e| e.value)
}

/// `KVM_SET_XSAVE`: only areas XRSTOR accepts (XSTATE_BV within `mask`, standard format,
/// reserved header bytes zero, MXCSR reserved bits clear), else `EINVAL`.
pub fn set_xsave(a: &mut [u8; 4096], x: &kvm_xsave, mask: u64) -> KResult<()> {
    let b = x.as_bytes();
    let bv = get_le(b, XSTATE_BV, 8);
    let hdr_rest_zero = b
        .get(XCOMP_BV..XSAVE_HDR_END)
        .is_some_and(|r| r.iter().all(|&c| c == 0));
    if bv & !mask != 0 || !hdr_rest_zero || get_le(b, FX_MXCSR, 4) & !0xffff != 0 {
        return Err(EINVAL);
    }
    if let Some(s) = b.get(..4096) {
        a.copy_from_slice(s);
    }
    Ok(())
}

/// Linux `kvm_is_valid_sregs` plus the CR4 bits an SVM guest cannot hold (VMXE, SMXE,
/// reserved bits), so that VMRUN's consistency checks are not the first to notice.
pub fn check_sregs(s: &kvm_sregs) -> KResult<()> {
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    let pg = s.cr0 & (1 << 31) != 0;
    if s.efer & EFER_LME != 0 && pg {
        if s.cr4 & (1 << 5) == 0 || s.efer & EFER_LMA == 0 {
            return Err(EINVAL);
        }
    } else if s.efer & EFER_LMA != 0 {
        return Err(EINVAL);
    }
    if s.cr4 >> 25 != 0 || s.cr4 & ((1 << 13) | (1 << 14)) != 0 {
        return Err(EINVAL);
    }
    if pg && s.cr0 & 1 == 0 {
        return Err(EINVAL);
    }
    if s.cr0 >> 32 != 0 || s.cr8 & !0xf != 0 {
        return Err(EINVAL);
    }
    Ok(())
}

/// The event in EVENTINJ, if any.
pub fn injected(vmcb: &Vmcb) -> Option<EventInj> {
    if vmcb.control.event_inj & EVENTINJ_VALID == 0 {
        return None;
    }
    EventInj::decode(vmcb.control.event_inj).ok().flatten()
}

/// `KVM_GET_VCPU_EVENTS` (the core sets the flags).
pub fn get_events(vmcb: &Vmcb, s: &SvmVcpuState, out: &mut kvm_vcpu_events) {
    if let Some(ev) = injected(vmcb) {
        svm::state::event_to_kvm(&ev, out);
    }
    if let Some(vec) = s.pending_irq {
        out.interrupt.injected = 1;
        out.interrupt.nr = vec;
        out.interrupt.soft = 0;
    }
    out.interrupt.shadow = svm::state::get_interrupt_shadow(vmcb);
    out.nmi.pending = u8::from(s.nmi_pending);
    out.nmi.masked = u8::from(s.nmi_masked);
}

/// `KVM_SET_VCPU_EVENTS` (validated and merged by the core).
pub fn set_events(vmcb: &mut Vmcb, s: &mut SvmVcpuState, ev: &kvm_vcpu_events) {
    vmcb.control.event_inj = 0;
    s.pending_irq = None;
    match svm::state::event_from_kvm(ev) {
        Some(e) if e.kind == EventType::Intr && ev.exception.injected == 0 => {
            s.pending_irq = Some(e.vector)
        }
        Some(e) => {
            sv::inject(vmcb, e);
            if e.kind != EventType::Intr && ev.interrupt.injected != 0 && ev.interrupt.soft == 0 {
                s.pending_irq = Some(ev.interrupt.nr);
            }
        }
        None => {}
    }
    svm::state::set_interrupt_shadow(vmcb, ev.interrupt.shadow);
    s.nmi_pending = ev.nmi.pending != 0;
    s.nmi_masked = ev.nmi.masked != 0;
}

const MSR_EFER: u32 = 0xc000_0080;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
/// EFER bits a guest may set: SCE, LME, LMA, NXE, FFXSR.
const EFER_VALID: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 14;
const EFER_LMA: u64 = 1 << 10;

fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

/// Reads an MSR: VMCB-held ones from the VMCB, the TSC from `tsc` + TSC_OFFSET, the rest from
/// the in-memory store (MTRRs included). Machine-check MSRs never get here: the core answers
/// them (`msrs::Mce`).
pub fn get_msr(vmcb: &Vmcb, s: &SvmVcpuState, index: u32, tsc: u64) -> KResult<u64> {
    let v = &vmcb.save;
    Ok(match index {
        MSR_EFER => svm::state::get_efer(vmcb),
        MSR_FS_BASE => v.fs.base,
        MSR_GS_BASE => v.gs.base,
        msrs::MSR_KERNEL_GS_BASE => v.kernel_gs_base,
        msrs::MSR_STAR => v.star,
        msrs::MSR_LSTAR => v.lstar,
        msrs::MSR_CSTAR => v.cstar,
        msrs::MSR_SYSCALL_MASK => v.sfmask,
        msrs::MSR_IA32_SYSENTER_CS => v.sysenter_cs,
        msrs::MSR_IA32_SYSENTER_ESP => v.sysenter_esp,
        msrs::MSR_IA32_SYSENTER_EIP => v.sysenter_eip,
        msrs::MSR_IA32_CR_PAT => v.g_pat,
        msrs::MSR_IA32_TSC => tsc.wrapping_add(vmcb.control.tsc_offset),
        _ => return s.msrs.get(index),
    })
}

/// Writes an MSR (`host` = `KVM_SET_MSRS`); `EINVAL` makes a guest WRMSR raise #GP.
pub fn set_msr(
    vmcb: &mut Vmcb,
    s: &mut SvmVcpuState,
    index: u32,
    data: u64,
    host: bool,
    tsc: u64,
) -> KResult<()> {
    let base_ok = canonical(data);
    match index {
        MSR_EFER => {
            if data & !EFER_VALID != 0 {
                return Err(EINVAL);
            }
            // LMA is the processor's to set for a guest write.
            let v = if host {
                data
            } else {
                (data & !EFER_LMA) | (svm::state::get_efer(vmcb) & EFER_LMA)
            };
            svm::state::set_efer(vmcb, v).map_err(|_| EINVAL)?;
        }
        MSR_FS_BASE
        | MSR_GS_BASE
        | msrs::MSR_KERNEL_GS_BASE
        | msrs::MSR_LSTAR
        | msrs::MSR_CSTAR
        | msrs::MSR_IA32_SYSENTER_ESP
        | msrs::MSR_IA32_SYSENTER_EIP
            if !base_ok =>
        {
            return Err(EINVAL)
        }
        MSR_FS_BASE => {
            vmcb.save.fs.base = data;
            sv::mark_dirty(vmcb, CleanBits::SEG);
        }
        MSR_GS_BASE => {
            vmcb.save.gs.base = data;
            sv::mark_dirty(vmcb, CleanBits::SEG);
        }
        msrs::MSR_KERNEL_GS_BASE => vmcb.save.kernel_gs_base = data,
        msrs::MSR_STAR => vmcb.save.star = data,
        msrs::MSR_LSTAR => vmcb.save.lstar = data,
        msrs::MSR_CSTAR => vmcb.save.cstar = data,
        msrs::MSR_SYSCALL_MASK => vmcb.save.sfmask = data & 0xffff_ffff,
        msrs::MSR_IA32_SYSENTER_CS => vmcb.save.sysenter_cs = data & 0xffff,
        msrs::MSR_IA32_SYSENTER_ESP => vmcb.save.sysenter_esp = data,
        msrs::MSR_IA32_SYSENTER_EIP => vmcb.save.sysenter_eip = data,
        msrs::MSR_IA32_CR_PAT => {
            if !(0..8).all(|i| matches!((data >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                return Err(EINVAL);
            }
            svm::state::set_pat(vmcb, data);
        }
        msrs::MSR_IA32_TSC => {
            vmcb.control.tsc_offset = data.wrapping_sub(tsc);
            sv::mark_dirty(vmcb, CleanBits::I);
        }
        _ => {
            s.msrs.set(index, data, host)?;
            if index == msrs::MSR_IA32_APICBASE {
                s.apic_base = data;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod xcr_tests {
    use super::*;

    #[test]
    fn xcr0_rules_and_set_xcrs_bounds() {
        // Host x87|SSE|AVX, guest CPUID offers the same.
        assert!(xcr0_valid(7, 7, 7, 7));
        assert!(xcr0_valid(7, 7, 7, 3));
        assert!(!xcr0_valid(7, 7, 7, 2)); // x87 must stay on
        assert!(!xcr0_valid(7, 7, 7, 5)); // AVX without SSE
        assert!(!xcr0_valid(7, 7, 3, 7)); // AVX not in the guest's CPUID
        assert!(!xcr0_valid(0, 7, 7, 1)); // no host XSAVE at all
        let mut x: kvm_xcrs = FromZeros::new_zeroed();
        assert_eq!(xcr0_of(&x), None);
        get_xcrs(0, 1, &mut x); // host without XSAVE: no XCRs to report (Linux)
        assert_eq!((x.nr_xcrs, xcr0_of(&x)), (0, None));
        get_xcrs(7, 3, &mut x);
        assert_eq!((x.nr_xcrs, xcr0_of(&x)), (1, Some(3)));
        x.nr_xcrs = u32::MAX; // userspace count beyond the array: ignored, no panic
        assert_eq!(xcr0_of(&x), None);
    }
}
