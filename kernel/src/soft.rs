//! The soft backend: keeps vCPU state in memory and has no hardware world switch.
//!
//! The kernel object uses it until the VMX/SVM backends land: every state ioctl works, and
//! `KVM_RUN` reports `KVM_EXIT_FAIL_ENTRY` (no hardware entry possible). Host tests use it as the
//! **fake backend**: a script of [`Step`]s makes `run` play guest exits (I/O, MMIO, HLT, ...)
//! with their architectural effects on RIP and RAX.

use kvm_abi::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::backend::{Backend, CpuidResult, EntryGate, Exit, GuestException, IoCompletion};
use crate::cpuid::SUPPORTED_XCR0;
use crate::errno::{KResult, EINVAL};
use crate::hmem::HBox;
use crate::host::Host;
use crate::msrs::{MsrStore, MSR_IA32_APICBASE};
use crate::singlestep;

/// One scripted guest exit and the length of the instruction that caused it.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// vCPU id that plays it.
    pub vcpu: u32,
    /// The exit `run` returns.
    pub exit: Exit,
    /// Bytes RIP advances when the instruction completes.
    pub insn_len: u64,
}

/// Per-vCPU state of the soft backend.
#[derive(FromZeros)]
pub struct SoftVcpu {
    id: u32,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcr0: u64,
    guest_xcr0: u64,
    msrs: MsrStore,
    events: kvm_vcpu_events,
    dr: kvm_debugregs,
    irq_window: u8,
    pending_len: u64,
    /// Vectors delivered to the guest so far (tests read them).
    pub delivered: [u8; 16],
    /// Number of valid entries in `delivered`.
    pub ndelivered: u32,
    /// NMIs delivered.
    pub nmis: u32,
    /// Exceptions delivered so far (tests read them).
    pub exceptions: u32,
    /// The last exception delivered (vector, error code if any) and CR2 at delivery.
    pub last_exception: kvm_abi::kvm_vcpu_events_exception,
    /// CR2 when the last exception was delivered.
    pub last_exception_cr2: u64,
    /// Tests: the next scripted exit happens while delivering interrupt `reinject_vector`
    /// (it is left queued for re-injection, as a hardware backend reports it).
    pub reinject: bool,
    /// The vector for `reinject`.
    pub reinject_vector: u8,
}

/// The soft backend. `H` gives it heap memory for vCPU state.
pub struct SoftBackend<H: Host> {
    host: &'static H,
    cpuid: fn(u32, u32) -> CpuidResult,
    #[cfg(test)]
    /// Scripted exits (tests only).
    pub script: std::sync::Mutex<std::collections::VecDeque<Step>>,
    #[cfg(test)]
    /// Tests only: while set, `run` of vCPU [`SoftBackend::hold_id`] stays "in the guest".
    pub hold: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    /// Tests only: the vCPU id `hold` applies to.
    pub hold_id: std::sync::atomic::AtomicU32,
    #[cfg(test)]
    /// Tests only: set once the held vCPU entered `run`.
    pub holding: std::sync::atomic::AtomicBool,
}

impl<H: Host> SoftBackend<H> {
    /// A soft backend answering host CPUID with `cpuid`.
    pub fn new(host: &'static H, cpuid: fn(u32, u32) -> CpuidResult) -> Self {
        Self {
            host,
            cpuid,
            #[cfg(test)]
            script: std::sync::Mutex::new(std::collections::VecDeque::new()),
            #[cfg(test)]
            hold: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            hold_id: std::sync::atomic::AtomicU32::new(u32::MAX),
            #[cfg(test)]
            holding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    fn next_step(&self, id: u32) -> Option<Step> {
        let mut s = self.script.lock().unwrap();
        let i = s.iter().position(|st| st.vcpu == id)?;
        s.remove(i)
    }

    #[cfg(not(test))]
    fn next_step(&self, _id: u32) -> Option<Step> {
        None
    }
}

// Offsets in the FXSAVE legacy region of the XSAVE area.
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

fn seg(selector: u16, base: u64, ty: u8) -> kvm_abi::kvm_segment {
    kvm_abi::kvm_segment {
        base,
        limit: 0xffff,
        selector,
        r#type: ty,
        present: 1,
        s: 1,
        ..FromZeros::new_zeroed()
    }
}

impl SoftVcpu {
    /// Power-on state (Intel SDM vol. 3 table 10-1; Linux `kvm_vcpu_reset`).
    fn reset(&mut self) {
        self.regs = FromZeros::new_zeroed();
        self.regs.rflags = 2;
        self.regs.rip = 0xfff0;
        self.regs.rdx = 0x600;
        let s = &mut self.sregs;
        *s = FromZeros::new_zeroed();
        s.cs = seg(0xf000, 0xffff_0000, 0xb);
        s.ds = seg(0, 0, 3);
        s.es = seg(0, 0, 3);
        s.fs = seg(0, 0, 3);
        s.gs = seg(0, 0, 3);
        s.ss = seg(0, 0, 3);
        s.tr = kvm_abi::kvm_segment {
            s: 0,
            r#type: 0xb,
            ..seg(0, 0, 0xb)
        };
        s.ldt = kvm_abi::kvm_segment {
            s: 0,
            r#type: 2,
            ..seg(0, 0, 2)
        };
        s.gdt.limit = 0xffff;
        s.idt.limit = 0xffff;
        s.cr0 = 0x6000_0010;
        s.apic_base = 0xfee0_0000 | (1 << 11) | if self.id == 0 { 1 << 8 } else { 0 };
        self.xsave = FromZeros::new_zeroed();
        self.put_fx(FX_FCW, &0x37fu16.to_le_bytes());
        self.put_fx(FX_MXCSR, &0x1f80u32.to_le_bytes());
        self.put_fx(XSTATE_BV, &3u64.to_le_bytes());
        self.xcr0 = 1;
        self.msrs.reset();
        let _ = self.msrs.set(MSR_IA32_APICBASE, s_apic(&self.sregs), true);
        self.events = FromZeros::new_zeroed();
        self.dr = FromZeros::new_zeroed();
        self.dr.dr6 = 0xffff_0ff0;
        self.dr.dr7 = 0x400;
    }

    fn put_fx(&mut self, off: usize, bytes: &[u8]) {
        if let Some(d) = self.xsave.as_mut_bytes().get_mut(off..off + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }

    fn fx(&self, off: usize, len: usize) -> &[u8] {
        self.xsave.as_bytes().get(off..off + len).unwrap_or(&[])
    }

    fn advance(&mut self) {
        self.regs.rip = self.regs.rip.wrapping_add(self.pending_len);
        self.pending_len = 0;
    }
}

fn s_apic(s: &kvm_sregs) -> u64 {
    s.apic_base
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(a)
}

impl<H: Host> Backend for SoftBackend<H> {
    type Vm = ();
    type Vcpu = HBox<SoftVcpu, H>;

    fn name(&self) -> &'static str {
        "soft"
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        (self.cpuid)(leaf, subleaf)
    }
    fn vm_create(&self) -> KResult<()> {
        Ok(())
    }
    fn vcpu_create(&self, _vm: &(), id: u32) -> KResult<Self::Vcpu> {
        let mut v = HBox::<SoftVcpu, H>::new_zeroed(self.host)?;
        v.id = id;
        v.reset();
        Ok(v)
    }
    fn get_regs(&self, v: &mut Self::Vcpu, out: &mut kvm_regs) {
        *out = v.regs;
    }
    fn set_regs(&self, v: &mut Self::Vcpu, regs: &kvm_regs) {
        v.regs = *regs;
        v.regs.rflags |= 2;
    }
    fn get_sregs(&self, v: &mut Self::Vcpu, out: &mut kvm_sregs) {
        *out = v.sregs;
    }
    fn set_sregs(&self, v: &mut Self::Vcpu, s: &kvm_sregs) -> KResult<()> {
        // Linux kvm_is_valid_sregs: long mode needs PAE, and EFER.LMA must match LME && PG.
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
        // CR4 bits the soft CPU cannot hold (reserved above bit 24, VMXE/SMXE).
        if s.cr4 >> 25 != 0 || s.cr4 & ((1 << 13) | (1 << 14)) != 0 {
            return Err(EINVAL);
        }
        v.sregs = *s;
        let _ = v.msrs.set(MSR_IA32_APICBASE, s.apic_base, true);
        Ok(())
    }
    fn get_fpu(&self, v: &mut Self::Vcpu, out: &mut kvm_fpu) {
        *out = FromZeros::new_zeroed();
        out.fcw = le_u64(v.fx(FX_FCW, 2)) as u16;
        out.fsw = le_u64(v.fx(FX_FSW, 2)) as u16;
        out.ftwx = le_u64(v.fx(FX_FTW, 1)) as u8;
        out.last_opcode = le_u64(v.fx(FX_FOP, 2)) as u16;
        out.last_ip = le_u64(v.fx(FX_FIP, 8));
        out.last_dp = le_u64(v.fx(FX_FDP, 8));
        out.mxcsr = le_u64(v.fx(FX_MXCSR, 4)) as u32;
        out.fpr.as_mut_bytes().copy_from_slice(v.fx(FX_ST, 128));
        out.xmm.as_mut_bytes().copy_from_slice(v.fx(FX_XMM, 256));
    }
    fn set_fpu(&self, v: &mut Self::Vcpu, f: &kvm_fpu) {
        v.put_fx(FX_FCW, &f.fcw.to_le_bytes());
        v.put_fx(FX_FSW, &f.fsw.to_le_bytes());
        v.put_fx(FX_FTW, &[f.ftwx]);
        v.put_fx(FX_FOP, &f.last_opcode.to_le_bytes());
        v.put_fx(FX_FIP, &f.last_ip.to_le_bytes());
        v.put_fx(FX_FDP, &f.last_dp.to_le_bytes());
        v.put_fx(FX_MXCSR, &f.mxcsr.to_le_bytes());
        v.put_fx(FX_ST, f.fpr.as_bytes());
        v.put_fx(FX_XMM, f.xmm.as_bytes());
    }
    fn get_xsave(&self, v: &mut Self::Vcpu, out: &mut kvm_xsave) {
        *out = v.xsave;
    }
    fn set_xsave(&self, v: &mut Self::Vcpu, x: &kvm_xsave) -> KResult<()> {
        // Linux: XSTATE_BV may only name supported components; MXCSR reserved bits must be 0.
        let bv = le_u64(x.as_bytes().get(XSTATE_BV..XSTATE_BV + 8).unwrap_or(&[]));
        let mxcsr = le_u64(x.as_bytes().get(FX_MXCSR..FX_MXCSR + 4).unwrap_or(&[]));
        if bv & !SUPPORTED_XCR0 != 0 || mxcsr & !0xffff != 0 {
            return Err(EINVAL);
        }
        v.xsave = *x;
        Ok(())
    }
    fn get_xcrs(&self, v: &mut Self::Vcpu, out: &mut kvm_xcrs) {
        *out = FromZeros::new_zeroed();
        out.nr_xcrs = 1;
        if let Some(x) = out.xcrs.get_mut(0) {
            x.xcr = 0;
            x.value = v.xcr0;
        }
    }
    fn set_xcrs(&self, v: &mut Self::Vcpu, x: &kvm_xcrs) -> KResult<()> {
        let n = x.nr_xcrs as usize;
        let Some(e) = x.xcrs.get(..n).and_then(|s| s.iter().find(|e| e.xcr == 0)) else {
            return Ok(());
        };
        let valid = v.guest_xcr0 | 1;
        let val = e.value;
        if val & 1 == 0 || val & !valid != 0 || (val & 4 != 0 && val & 2 == 0) {
            return Err(EINVAL);
        }
        v.xcr0 = val;
        Ok(())
    }
    fn get_msr(&self, v: &mut Self::Vcpu, index: u32, _host: bool) -> KResult<u64> {
        v.msrs.get(index)
    }
    fn set_msr(&self, v: &mut Self::Vcpu, index: u32, data: u64, host: bool) -> KResult<()> {
        v.msrs.set(index, data, host)?;
        if index == MSR_IA32_APICBASE {
            v.sregs.apic_base = data;
        }
        Ok(())
    }
    fn get_events(&self, v: &mut Self::Vcpu, out: &mut kvm_vcpu_events) {
        *out = v.events;
    }
    fn set_events(&self, v: &mut Self::Vcpu, ev: &kvm_vcpu_events) -> KResult<()> {
        v.events = *ev;
        Ok(())
    }
    fn get_debugregs(&self, v: &mut Self::Vcpu, out: &mut kvm_debugregs) {
        *out = v.dr;
    }
    fn set_debugregs(&self, v: &mut Self::Vcpu, dr: &kvm_debugregs) -> KResult<()> {
        v.dr = *dr;
        Ok(())
    }
    fn cpuid_changed(&self, v: &mut Self::Vcpu, entries: &[kvm_cpuid_entry2]) {
        v.guest_xcr0 = entries
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map_or(0, |e| u64::from(e.eax) & SUPPORTED_XCR0);
    }
    fn queue_interrupt(&self, v: &mut Self::Vcpu, vector: u8) {
        v.events.interrupt.injected = 1;
        v.events.interrupt.nr = vector;
    }
    fn interrupt_queued(&self, v: &mut Self::Vcpu) -> bool {
        v.events.interrupt.injected != 0
    }
    fn queue_nmi(&self, v: &mut Self::Vcpu) {
        v.events.nmi.pending = 1;
    }
    fn interrupt_allowed(&self, v: &mut Self::Vcpu) -> bool {
        v.regs.rflags & (1 << 9) != 0 && v.events.interrupt.shadow == 0
    }
    fn if_flag(&self, v: &mut Self::Vcpu) -> bool {
        v.regs.rflags & (1 << 9) != 0
    }
    fn set_irq_window(&self, v: &mut Self::Vcpu, on: bool) {
        v.irq_window = u8::from(on);
    }
    fn get_cr8(&self, v: &mut Self::Vcpu) -> u64 {
        v.sregs.cr8
    }
    fn set_cr8(&self, v: &mut Self::Vcpu, cr8: u64) -> KResult<()> {
        if cr8 & !0xf != 0 {
            return Err(EINVAL);
        }
        v.sregs.cr8 = cr8;
        Ok(())
    }
    fn get_apic_base(&self, v: &mut Self::Vcpu) -> u64 {
        v.sregs.apic_base
    }
    fn run<G: EntryGate>(&self, _vm: &(), v: &mut Self::Vcpu, gate: &G) -> Exit {
        // The soft backend has no host CPU: it reports CPU 0 at the gate, like a
        // uniprocessor host.
        if gate.enter(0) {
            return Exit::Continue;
        }
        // Event delivery at entry, as hardware injection would do it. A queued exception goes
        // first and alone; NMIs and interrupts wait for a later entry.
        let exception = v.events.exception.injected != 0;
        if exception {
            v.events.exception.injected = 0;
            v.exceptions += 1;
            v.last_exception = v.events.exception;
            v.last_exception_cr2 = v.sregs.cr2;
        }
        if !exception && v.events.nmi.pending != 0 {
            v.events.nmi.pending = 0;
            v.nmis += 1;
        }
        if !exception && v.events.interrupt.injected != 0 {
            v.events.interrupt.injected = 0;
            let n = v.ndelivered as usize;
            let nr = v.events.interrupt.nr;
            if let Some(d) = v.delivered.get_mut(n) {
                *d = nr;
                v.ndelivered += 1;
            }
        }
        if v.irq_window != 0 && self.interrupt_allowed(v) {
            return Exit::IrqWindow;
        }
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            if self.hold_id.load(SeqCst) == v.id {
                self.holding.store(true, SeqCst);
                while self.hold.load(SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        match self.next_step(v.id) {
            None => Exit::FailEntry { reason: 0 },
            Some(st) => {
                if v.reinject {
                    v.reinject = false;
                    v.events.interrupt.injected = 1;
                    v.events.interrupt.nr = v.reinject_vector;
                }
                v.pending_len = st.insn_len;
                if matches!(st.exit, Exit::Hlt) {
                    // Retired here, as a hardware backend does: with its single-step trap.
                    v.advance();
                    if v.regs.rflags & singlestep::RFLAGS_TF != 0
                        && v.events.exception.injected == 0
                    {
                        v.dr.dr6 = singlestep::dr6_single_step(v.dr.dr6);
                        self.queue_exception(v, singlestep::DB);
                    }
                }
                st.exit
            }
        }
    }
    fn complete_io(&self, v: &mut Self::Vcpu, c: IoCompletion) {
        match c {
            IoCompletion::Write => {}
            IoCompletion::PioIn { size, value } => {
                let rax = v.regs.rax;
                v.regs.rax = match size {
                    1 => (rax & !0xff) | u64::from(value & 0xff),
                    2 => (rax & !0xffff) | u64::from(value & 0xffff),
                    _ => u64::from(value),
                };
            }
            IoCompletion::MmioRead { len, data } => {
                let n = usize::from(len).min(8);
                v.regs.rax = le_u64(data.get(..n).unwrap_or(&[]));
            }
        }
        v.advance();
    }
    fn complete_cpuid(&self, v: &mut Self::Vcpu, r: CpuidResult) {
        v.regs.rax = u64::from(r.eax);
        v.regs.rbx = u64::from(r.ebx);
        v.regs.rcx = u64::from(r.ecx);
        v.regs.rdx = u64::from(r.edx);
        v.advance();
    }
    fn complete_rdmsr(&self, v: &mut Self::Vcpu, value: Option<u64>) {
        match value {
            Some(x) => {
                v.regs.rax = x & 0xffff_ffff;
                v.regs.rdx = x >> 32;
                v.advance();
            }
            None => {
                v.events.exception = kvm_abi::kvm_vcpu_events_exception {
                    injected: 1,
                    nr: 13,
                    has_error_code: 1,
                    ..FromZeros::new_zeroed()
                }
            }
        }
    }
    fn complete_wrmsr(&self, v: &mut Self::Vcpu, ok: bool) {
        if ok {
            v.advance();
        } else {
            v.events.exception = kvm_abi::kvm_vcpu_events_exception {
                injected: 1,
                nr: 13,
                has_error_code: 1,
                ..FromZeros::new_zeroed()
            };
        }
    }
    fn queue_exception(&self, v: &mut Self::Vcpu, e: GuestException) {
        if let Some(cr2) = e.cr2 {
            v.sregs.cr2 = cr2;
        }
        v.events.exception = kvm_abi::kvm_vcpu_events_exception {
            injected: 1,
            nr: e.vector,
            has_error_code: u8::from(e.error_code.is_some()),
            error_code: e.error_code.unwrap_or(0),
            ..FromZeros::new_zeroed()
        };
    }
    fn map_gfn(&self, _vm: &(), _gfn: u64, _hpa: u64, _writable: bool) -> KResult<()> {
        Ok(())
    }
    fn unmap_gfns(&self, _vm: &(), _gfn: u64, _npages: u64) {}
}
