//! The Intel VMX backend: the core's [`Backend`] over the `vmx` crate (capabilities and
//! controls, VMCS access, exit decoding, state conversion, world switch) and `ept` (EPT tables).
//!
//! Resources: one MSR bitmap for the whole system; per CPU a VMXON region when the host does
//! not already hold the CPU in VMX root operation (OpenBSD: vmm(4) does; Linux test glue: the
//! core executes VMXON, host service `vmx_enable`), VMX enabled lazily on the CPU a vCPU first
//! uses and disabled on every CPU at detach; per VM the EPT (`svmb::npt`'s second-level table
//! and invalidation protocol, which is backend-neutral: `Format::Ept`); per vCPU a VMCS page,
//! an XSAVE page and the software state ([`VmxVcpuState`]).
//!
//! # The VMCS and migration
//! A vCPU's VMCS is current only inside one backend call on one CPU with preemption disabled,
//! and VMCLEARed before preemption is enabled again. It is therefore never active on a CPU the
//! vCPU thread has left: migration needs no cross-CPU VMCLEAR, and the VMCS memory is always
//! up to date. The price is a VMLAUNCH (never VMRESUME) per entry and a VMPTRLD/VMCLEAR pair per
//! state ioctl that needs the VMCS; RIP, RSP, RFLAGS, the interruptibility state and the event
//! queue are cached in memory, so the run loop's own register accesses need no VMCS.
//!
//! # TLB
//! INVEPT (single-context, else all-context) before an entry when the VM's table generation
//! moved, when the vCPU last ran on another CPU, when another vCPU ran last on this CPU, or
//! after an emulated CR0/CR4 write (or `KVM_SET_SREGS`) that the real instruction would have
//! flushed for (with VPID, VM transitions do not flush): every cached combined (EPTP, VPID)
//! mapping that could be stale is dropped, with INVVPID single-context besides.
//!
//! # Limits (documented, not silent)
//! PAE paging outside long mode needs the PDPTEs loaded from guest memory into the VMCS: not
//! done, such a CR0/CR4 write ends in `KVM_EXIT_INTERNAL_ERROR`. The VM exit leaves the host's
//! TR limit at 0x67, GDTR/IDTR limits at 0xFFFF and LDTR null (processes using ioperm or an
//! LDT are not expected to run vCPUs). DR0–DR3 are not loaded into the hardware (guest hardware
//! breakpoints do not fire; MOV DR is emulated), and the exit leaves DR7 = 400h and
//! IA32_DEBUGCTL = 0 (host hardware breakpoints are not restored).

pub mod hw;
pub mod state;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use kvm_abi::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use vmx::caps::{CapError, ControlPolicy, Controls, GuestFeatures, MsrSource, VmxCapMsrs, VmxCaps};
use vmx::exit::{self as vx, CrAccess, Event, EventType, RawExit, VmxExit};
use vmx::hw::{InveptType, InvvpidType};
use vmx::state::{self as vs, interruptibility, EFER_LMA, EFER_LME};
use vmx::switch::EnterStatus;
use vmx::vmcs::Vmcs;
use x86::vmx::vmcs::control::PrimaryControls;
use x86::vmx::vmcs::{control, guest, ro};

use crate::backend::{Backend, CpuidResult, EntryGate, Exit, GuestException, IoCompletion};
use crate::errno::{KResult, EINVAL, EIO, ENODEV, ENOMEM};
use crate::hmem::{HBox, HPage, HSlice};
use crate::host::{Host, LogLevel, Page};
use crate::msrs;
use crate::singlestep;
// XSAVE-page conversions and the machine-check MSR set are the SVM adapter's (shared).
use crate::svmb::state as fpu;

pub use crate::svmb::npt::SvmVm as VmxVm;
pub use hw::{Cur, RealVmxHw, VmxHw};
pub use state::VmxVcpuState;

/// CR4.OSXSAVE in CPUID.1:ECX.
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
/// `IA32_FEATURE_CONTROL`.
const MSR_FEATURE_CONTROL: u32 = 0x3a;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
/// EFER bits a guest may set: SCE, LME, LMA, NXE.
const EFER_VALID: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11;
const CR0_PE: u64 = 1;
const CR0_TS: u64 = 1 << 3;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
/// CR0 bits whose change flushes the TLB (PG, WP, CD): an emulated write must flush too.
const CR0_FLUSH: u64 = CR0_PG | (1 << 16) | (1 << 30);
/// CR4 bits whose change flushes the TLB: PSE, PAE, PGE, PCIDE, SMEP, SMAP.
const CR4_FLUSH: u64 = (1 << 4) | CR4_PAE | (1 << 7) | (1 << 17) | (1 << 20) | (1 << 21);
/// The MSRs switched by software around each entry, in [`VmxVcpuState`] order.
const SWITCHED_MSRS: [u32; 5] = [
    msrs::MSR_STAR,
    msrs::MSR_LSTAR,
    msrs::MSR_CSTAR,
    msrs::MSR_SYSCALL_MASK,
    msrs::MSR_KERNEL_GS_BASE,
];

struct HwMsrs<'a, W: VmxHw>(&'a W);

impl<W: VmxHw> MsrSource for HwMsrs<'_, W> {
    fn rdmsr(&self, index: u32) -> u64 {
        self.0.rdmsr(index)
    }
}

/// One CPU's VMX resources. Touched only on that CPU with preemption disabled (or by the
/// detach callback on that CPU with no guest running), never concurrently.
struct PerCpu {
    vmxon: Option<Page>,
    /// VMX root operation is available on this CPU.
    enabled: bool,
    /// The host holds VMX root operation (the core never executes VMXON/VMXOFF here).
    host_owned: bool,
    /// The vCPU state (address) that last entered a guest on this CPU.
    last_vcpu: usize,
}

struct PerCpuCell(UnsafeCell<PerCpu>);

// SAFETY: each cell is used only by code running on its own CPU with preemption disabled (or
// by the detach callback on that CPU with no guest running), so accesses never overlap.
unsafe impl Sync for PerCpuCell {}
// SAFETY: as above; the page it holds is a plain host page.
unsafe impl Send for PerCpuCell {}

/// The VMX backend over hardware `W` (the real instructions in the kernel object, a fake in
/// host tests).
pub struct VmxBackend<H: Host, W: VmxHw + Sync + 'static> {
    host: &'static H,
    hw: W,
    cpuid: fn(u32, u32) -> CpuidResult,
    msrs: VmxCapMsrs,
    /// `Err` when this backend cannot run guests on this CPU (no EPT, no unrestricted guest,
    /// ...): VM creation fails with the reason in the log.
    caps: Result<VmxCaps, CapError>,
    phys_bits: u8,
    /// Host XCR0; 0 when the host has no XSAVE enabled (FXSAVE is used).
    host_xcr0: u64,
    /// Components switched with XSAVE/XRSTOR.
    fpu_mask: u64,
    /// The CPU has `TSC_AUX` (switched around entries: RDTSCP/RDPID read it directly).
    tsc_aux: bool,
    msr_bitmap: Page,
    percpu: HSlice<PerCpuCell, H>,
    next_vpid: AtomicU32,
}

// SAFETY: the MSR bitmap page is written only in `new` and afterwards read only by the
// processor; per-CPU state is `PerCpuCell` (see there).
unsafe impl<H: Host, W: VmxHw + Sync + 'static> Sync for VmxBackend<H, W> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<H: Host, W: VmxHw + Sync + Send + 'static> Send for VmxBackend<H, W> {}

impl<H: Host, W: VmxHw + Sync + 'static> VmxBackend<H, W> {
    /// Reads the VMX capability MSRs; a CPU this backend cannot run guests on gets a backend
    /// that refuses VM creation with the missing feature named. `Err` only when memory is short.
    pub fn new(host: &'static H, hw: W, cpuid: fn(u32, u32) -> CpuidResult) -> KResult<Self> {
        let msrs = VmxCapMsrs::read(&HwMsrs(&hw));
        let caps = VmxCaps::new(msrs);
        let ext_max = cpuid(0x8000_0000, 0).eax;
        let phys_bits = if ext_max >= 0x8000_0008 {
            (cpuid(0x8000_0008, 0).eax & 0xff) as u8
        } else {
            36
        }
        .clamp(32, 52);
        let host_xcr0 = if cpuid(1, 0).ecx & CPUID1_ECX_OSXSAVE != 0 {
            hw.xgetbv0()
        } else {
            0
        };
        let fpu_mask = if host_xcr0 != 0 {
            host_xcr0 & crate::cpuid::SUPPORTED_XCR0
        } else {
            3
        };
        let msr_bitmap = host.page_alloc().ok_or(ENOMEM)?;
        // SAFETY: a live, exclusively owned page.
        let page = unsafe { &mut *msr_bitmap.va.as_ptr().cast::<[u8; 4096]>() };
        let mut bm = vmx::bitmaps::MsrBitmap::new_intercept_all(page);
        // Held in the VMCS guest state (FS/GS base) or switched and read back by software
        // (KERNEL_GS_BASE): the guest may access them directly.
        for m in [MSR_FS_BASE, MSR_GS_BASE, msrs::MSR_KERNEL_GS_BASE] {
            bm.set_passthrough(m, vmx::bitmaps::MsrAccess::Read, true);
            bm.set_passthrough(m, vmx::bitmaps::MsrAccess::Write, true);
        }
        let ncpu = host.cpu_count().max(1) as usize;
        // Every CPU's VMXON region now: the entry path runs with preemption disabled, where
        // the host allocator may not sleep. (A CPU whose page is missing cannot run guests.)
        let usable = caps.is_ok();
        let percpu = match HSlice::new_with(host, ncpu, |_| {
            PerCpuCell(UnsafeCell::new(PerCpu {
                vmxon: if usable { host.page_alloc() } else { None },
                enabled: false,
                host_owned: false,
                last_vcpu: 0,
            }))
        }) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: just allocated, unused.
                unsafe { host.page_free(msr_bitmap) };
                return Err(e);
            }
        };
        Ok(Self {
            host,
            hw,
            cpuid,
            msrs,
            caps,
            phys_bits,
            host_xcr0,
            fpu_mask,
            tsc_aux: crate::msrs::host_has_tsc_aux(cpuid),
            msr_bitmap,
            percpu,
            next_vpid: AtomicU32::new(0),
        })
    }

    /// Whether guests can run, or why not.
    pub fn usable(&self) -> Result<&VmxCaps, CapError> {
        self.caps.as_ref().map_err(|e| *e)
    }

    /// The hardware (tests drive the fake through it).
    pub fn hw(&self) -> &W {
        &self.hw
    }

    /// Leaves VMX operation on the calling CPU if this backend entered it, and frees that
    /// CPU's VMXON region. Called on every CPU at detach (no guest runs anywhere).
    pub fn disable_this_cpu(&self) {
        let cpu = self.host.cpu_current() as usize;
        let Some(c) = self.percpu.get(cpu) else {
            return;
        };
        // SAFETY: on this CPU, no guest running (detach contract).
        let pc = unsafe { &mut *c.0.get() };
        if pc.enabled && !pc.host_owned {
            // SAFETY: no VMCS of this backend is current (every call VMCLEARs its VMCS).
            let _ = unsafe { self.hw.vmxoff() };
            self.host.vmx_disable();
        }
        pc.enabled = false;
    }

    /// The per-CPU resources of `cpu`, VMX root operation available on it. The caller runs
    /// on `cpu` with preemption disabled.
    #[allow(clippy::mut_from_ref)]
    fn this_cpu(&self, cpu: u32) -> Option<&mut PerCpu> {
        let caps = self.caps.as_ref().ok()?;
        let c = self.percpu.get(cpu as usize)?;
        // SAFETY: the caller runs on `cpu` with preemption disabled (PerCpuCell contract).
        let pc = unsafe { &mut *c.0.get() };
        if pc.enabled {
            return Some(pc);
        }
        match self.host.vmx_enable() {
            Ok(true) => {
                pc.host_owned = true;
                pc.enabled = true;
                return Some(pc);
            }
            Ok(false) => {}
            Err(_) => {
                self.host.log(
                    LogLevel::Error,
                    "okvm: vmx: the host refused VMX operation (another hypervisor?)",
                );
                return None;
            }
        }
        let fc = self.hw.rdmsr(MSR_FEATURE_CONTROL);
        if vmx::caps::check_vmxon(&caps.msrs, fc, self.hw.read_cr0(), self.hw.read_cr4()).is_err() {
            self.host.vmx_disable();
            self.host.log(
                LogLevel::Error,
                "okvm: vmx: VMXON not possible (IA32_FEATURE_CONTROL or host CR0/CR4)",
            );
            return None;
        }
        let Some(region) = pc.vmxon.as_ref() else {
            self.host.vmx_disable();
            return None;
        };
        // SAFETY: an exclusively owned page.
        vmx::hw::init_region(
            unsafe { &mut *region.va.as_ptr().cast::<[u8; 4096]>() },
            caps.msrs.revision_id(),
        );
        // SAFETY: CR4.VMXE is set (vmx_enable), the fixed bits and FEATURE_CONTROL were
        // checked, the region stays allocated until detach.
        if unsafe { self.hw.vmxon(region.pa) }.is_err() {
            self.host.vmx_disable();
            self.host.log(LogLevel::Error, "okvm: vmx: VMXON failed");
            return None;
        }
        pc.enabled = true;
        Some(pc)
    }

    /// Runs `f` with `v`'s VMCS current on this CPU (preemption disabled, VMCLEARed after).
    fn with_vmcs<R>(
        &self,
        v: &mut VmxVcpu<H>,
        f: impl FnOnce(&mut Cur<'_, W>, &mut VmxVcpuState) -> R,
    ) -> KResult<R> {
        let pa = v.vmcs.pa();
        self.host.preempt_disable();
        let r = match self.this_cpu(self.host.cpu_current()) {
            None => Err(ENODEV),
            // SAFETY: VMX root operation on this CPU; the VMCS region is this vCPU's, and it
            // is active on no other CPU (always VMCLEARed before preemption is enabled).
            Some(_) => match unsafe { self.hw.vmptrld(pa) } {
                Err(_) => Err(EIO),
                Ok(()) => {
                    let r = f(&mut Cur(&self.hw), &mut v.st);
                    // SAFETY: as above.
                    let _ = unsafe { self.hw.vmclear(pa) };
                    Ok(r)
                }
            },
        };
        self.host.preempt_enable();
        r
    }

    fn ctl_for(&self, guest: GuestFeatures) -> Option<Controls> {
        let caps = self.caps.as_ref().ok()?;
        caps.controls(&ControlPolicy {
            guest,
            io_bitmaps: false,
        })
        .ok()
    }
}

impl<H: Host, W: VmxHw + Sync + 'static> Drop for VmxBackend<H, W> {
    fn drop(&mut self) {
        for c in self.percpu.iter_mut() {
            if let Some(p) = c.0.get_mut().vmxon.take() {
                // SAFETY: VMX is off (detach) or was never on with this page.
                unsafe { self.host.page_free(p) };
            }
        }
        // SAFETY: no VMCS references the bitmap any more (no VM exists at detach).
        unsafe {
            self.host.page_free(Page {
                va: self.msr_bitmap.va,
                pa: self.msr_bitmap.pa,
            })
        };
    }
}

/// Writes the attach log line: backend, VMCS revision and the features that matter.
pub fn describe<H: Host, W: VmxHw + Sync + 'static>(
    b: &VmxBackend<H, W>,
    out: &mut impl core::fmt::Write,
) {
    let m = &b.msrs;
    let p2 = m.procbased2.map_or(0, |x| x >> 32);
    let ev = vmx::caps::EptVpidCaps {
        raw: m.ept_vpid_cap.unwrap_or(0),
    };
    let f = |x: bool| if x { "+" } else { "-" };
    let _ = write!(
        out,
        "okvm: core attached, backend vmx rev {:#x} {}ept {}ug {}vpid {}ept-ad {}invept-single \
         xcr0 {:#x}",
        m.revision_id(),
        f(p2 & (1 << 1) != 0),
        f(p2 & (1 << 7) != 0),
        f(p2 & (1 << 5) != 0),
        f(ev.ad()),
        f(ev.invept_single()),
        b.host_xcr0,
    );
    if let Err(e) = &b.caps {
        let _ = write!(out, "; guests refused: {e}");
    }
}

/// Per-vCPU state of the VMX backend.
pub struct VmxVcpu<H: Host> {
    vmcs: HPage<H>,
    fpu: HPage<H>,
    st: HBox<VmxVcpuState, H>,
}

impl<H: Host> VmxVcpu<H> {
    fn fpu_bytes(&mut self) -> &mut [u8; 4096] {
        // SAFETY: a live, exclusively owned page.
        unsafe { &mut *self.fpu.va().cast::<[u8; 4096]>() }
    }

    /// The software state (tests).
    pub fn state(&self) -> &VmxVcpuState {
        &self.st
    }

    /// Physical address of the VMCS (tests).
    pub fn vmcs_pa(&self) -> u64 {
        self.vmcs.pa()
    }
}

/// Sets RIP past an instruction the backend completes itself and ends an STI/MOV SS shadow
/// (Linux `skip_emulated_instruction`); under RFLAGS.TF raises the single-step #DB the CPU
/// did not (`KVM_CAP_X86_ROBUST_SINGLESTEP`, see `singlestep.rs`).
fn skip_to(st: &mut VmxVcpuState, next: u64) {
    st.rip = next;
    st.intr &= !(interruptibility::STI | interruptibility::MOV_SS);
    if st.rflags & singlestep::RFLAGS_TF != 0 && st.inject.is_none() {
        st.extra.dr6 = singlestep::dr6_single_step(st.extra.dr6);
        st.inject = Some(exception(1, None));
    }
}

fn exception(vector: u8, error_code: Option<u32>) -> Event {
    Event {
        vector,
        kind: EventType::HardwareException,
        error_code,
    }
}

/// The reset state of `KVM_GET_SREGS` (SDM table 10-1), for the VMCS's first load.
fn reset_sregs() -> kvm_sregs {
    use zerocopy::FromZeros;
    let seg = |selector: u16, base: u64, ty: u8, s: u8| kvm_abi::kvm_segment {
        base,
        limit: 0xffff,
        selector,
        r#type: ty,
        present: 1,
        s,
        ..FromZeros::new_zeroed()
    };
    let mut s: kvm_sregs = FromZeros::new_zeroed();
    s.cs = seg(0xf000, 0xffff_0000, 0xb, 1);
    s.ds = seg(0, 0, 3, 1);
    s.es = seg(0, 0, 3, 1);
    s.fs = seg(0, 0, 3, 1);
    s.gs = seg(0, 0, 3, 1);
    s.ss = seg(0, 0, 3, 1);
    s.tr = seg(0, 0, 0xb, 0);
    s.ldt = seg(0, 0, 2, 0);
    s.gdt.limit = 0xffff;
    s.idt.limit = 0xffff;
    s.cr0 = 0x6000_0010;
    s
}

fn gpr(st: &VmxVcpuState, n: u8) -> u64 {
    if n == 4 {
        st.rsp
    } else {
        st.extra.regs.gpr.get(usize::from(n)).copied().unwrap_or(0)
    }
}

fn set_gpr(st: &mut VmxVcpuState, n: u8, value: u64) {
    if n == 4 {
        st.rsp = value;
    } else if let Some(r) = st.extra.regs.gpr.get_mut(usize::from(n)) {
        *r = value;
    }
}

fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

impl<H: Host, W: VmxHw + Sync + 'static> VmxBackend<H, W> {
    /// Writes every VMCS field of a new vCPU (controls, host-independent constants, reset
    /// guest state). The VMCS is current.
    fn init_vmcs(
        &self,
        c: &mut Cur<'_, W>,
        st: &mut VmxVcpuState,
        caps: &VmxCaps,
        eptp: u64,
    ) -> Result<(), vmx::vmcs::VmFail> {
        let ctl = st.ctl;
        c.write(control::PINBASED_EXEC_CONTROLS, u64::from(ctl.pin))?;
        c.write(
            control::PRIMARY_PROCBASED_EXEC_CONTROLS,
            u64::from(ctl.proc),
        )?;
        c.write(
            control::SECONDARY_PROCBASED_EXEC_CONTROLS,
            u64::from(ctl.proc2),
        )?;
        c.write(control::VMEXIT_CONTROLS, u64::from(ctl.exit))?;
        c.write(control::VMENTRY_CONTROLS, u64::from(ctl.entry_for(false)))?;
        c.write(control::EXCEPTION_BITMAP, 0)?;
        c.write(control::PAGE_FAULT_ERR_CODE_MASK, 0)?;
        c.write(control::PAGE_FAULT_ERR_CODE_MATCH, 0)?;
        c.write(control::CR3_TARGET_COUNT, 0)?;
        c.write(control::VMEXIT_MSR_STORE_COUNT, 0)?;
        c.write(control::VMEXIT_MSR_LOAD_COUNT, 0)?;
        c.write(control::VMENTRY_MSR_LOAD_COUNT, 0)?;
        c.write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
        c.write(control::MSR_BITMAPS_ADDR_FULL, self.msr_bitmap.pa)?;
        c.write(control::EPTP_FULL, eptp)?;
        if ctl.vpid() {
            c.write(control::VPID, u64::from(st.vpid))?;
        }
        c.write(guest::LINK_PTR_FULL, u64::MAX)?;
        c.write(guest::ACTIVITY_STATE, 0)?;
        c.write(guest::INTERRUPTIBILITY_STATE, 0)?;
        c.write(guest::PENDING_DBG_EXCEPTIONS, 0)?;
        c.write(guest::IA32_DEBUGCTL_FULL, 0)?;
        c.write(guest::IA32_PAT_FULL, 0x0007_0406_0007_0406)?;
        c.write(guest::IA32_SYSENTER_CS, 0)?;
        c.write(guest::IA32_SYSENTER_ESP, 0)?;
        c.write(guest::IA32_SYSENTER_EIP, 0)?;
        c.write(guest::DR7, 0x400)?;
        vs::set_sregs(c, &mut st.extra, caps, &ctl, &reset_sregs())
    }

    /// Chooses the event to inject at the next entry and the window exits to request.
    fn inject_pending(st: &mut VmxVcpuState) {
        if st.inject.is_none() && st.nmi_pending && st.nmi_allowed() {
            st.nmi_pending = false;
            st.inject = Some(Event {
                vector: 2,
                kind: EventType::Nmi,
                error_code: None,
            });
        }
        if st.inject.is_none() && st.pending_irq.is_some() && st.interrupt_allowed() {
            if let Some(vector) = st.pending_irq.take() {
                st.inject = Some(Event {
                    vector,
                    kind: EventType::ExternalInterrupt,
                    error_code: None,
                });
            }
        }
    }

    /// Writes the cached guest state and the event/window controls before an entry.
    fn load_guest(c: &mut Cur<'_, W>, st: &VmxVcpuState) -> Result<(), vmx::vmcs::VmFail> {
        c.write(guest::RIP, st.rip)?;
        c.write(guest::RSP, st.rsp)?;
        c.write(guest::RFLAGS, st.rflags | vs::RFLAGS_FIXED)?;
        vs::set_interruptibility(c, st.intr)?;
        let mut proc = st.ctl.proc;
        if st.irq_window || st.pending_irq.is_some() {
            proc |= PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        }
        if st.nmi_pending {
            proc |= PrimaryControls::NMI_WINDOW_EXITING.bits();
        }
        c.write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(proc))?;
        c.write(
            control::SECONDARY_PROCBASED_EXEC_CONTROLS,
            u64::from(st.ctl.proc2),
        )?;
        c.write(control::TSC_OFFSET_FULL, st.tsc_offset)?;
        match st.inject {
            Some(ev) => {
                c.write(
                    control::VMENTRY_INTERRUPTION_INFO_FIELD,
                    u64::from(ev.encode()),
                )?;
                if let Some(ec) = ev.error_code {
                    c.write(control::VMENTRY_EXCEPTION_ERR_CODE, u64::from(ec))?;
                }
                if matches!(
                    ev.kind,
                    EventType::SoftwareInterrupt
                        | EventType::SoftwareException
                        | EventType::PrivilegedSoftwareException
                ) {
                    c.write(control::VMENTRY_INSTRUCTION_LEN, u64::from(st.inject_len))?;
                }
            }
            None => c.write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?,
        }
        Ok(())
    }

    /// Reads the cached guest state back after an exit.
    fn save_guest(c: &Cur<'_, W>, st: &mut VmxVcpuState) -> Result<(), vmx::vmcs::VmFail> {
        st.rip = c.read(guest::RIP)?;
        st.rsp = c.read(guest::RSP)?;
        st.rflags = c.read(guest::RFLAGS)?;
        st.intr = c.read(guest::INTERRUPTIBILITY_STATE)? as u32;
        Ok(())
    }

    /// One entry on this CPU (preemption disabled by the caller), unless `gate` keeps the
    /// vCPU out ([`Exit::Continue`] then, with any event still queued in `inject`).
    fn enter_once<G: EntryGate>(&self, vm: &VmxVm<H>, v: &mut VmxVcpu<H>, gate: &G) -> Exit {
        let fail = Exit::FailEntry { reason: 0 };
        let cpu = self.host.cpu_current();
        let Some(pc) = self.this_cpu(cpu) else {
            return fail;
        };
        let caps_ok = self.caps.as_ref().ok();
        let Some(caps) = caps_ok else { return fail };
        let vmcs_pa = v.vmcs.pa();
        let fpu = v.fpu.va();
        let st: &mut VmxVcpuState = &mut v.st;
        let me = st as *const VmxVcpuState as usize;
        let hw = &self.hw;
        let irq = hw.irq_disable();
        if gate.enter(cpu) {
            if irq {
                // SAFETY: interrupts were on when we started; nothing was switched.
                unsafe { hw.irq_enable() };
            }
            return Exit::Continue;
        }
        // SAFETY: VMX root operation here; the VMCS is this vCPU's and active nowhere else.
        if unsafe { hw.vmptrld(vmcs_pa) }.is_err() {
            if irq {
                // SAFETY: interrupts were on when we started.
                unsafe { hw.irq_enable() };
            }
            return fail;
        }
        let mut c = Cur(hw);
        let hs = hw.host_state();
        // The host-state area survives VMCLEAR/VMPTRLD in the VMCS region: rewrite it only
        // when this thread's host state differs from what the VMCS holds (CPU or CR3 change).
        let host_ok = st.host_state == Some(hs)
            || match vs::write_host_state(&mut c, &hs, vmx::switch::host_rip()) {
                Ok(Ok(())) => {
                    st.host_state = Some(hs);
                    true
                }
                _ => {
                    st.host_state = None;
                    false
                }
            };
        let prepared = host_ok && Self::load_guest(&mut c, st).is_ok();
        let exit = if !prepared {
            fail
        } else {
            vm.enter(st.index, cpu);
            let gen = vm.tlb_gen.load(Ordering::SeqCst);
            if gen != st.tlb_gen || st.last_cpu != cpu || pc.last_vcpu != me {
                st.tlb_gen = gen;
                let kind = if caps.ept_vpid.invept_single() {
                    InveptType::SingleContext
                } else {
                    InveptType::AllContext
                };
                // SAFETY: VMX root operation; the type is supported (checked at attach).
                let _ = unsafe { hw.invept(kind, vm.n_cr3) };
                if st.vpid != 0 && caps.ept_vpid.invvpid_single() {
                    // SAFETY: as above.
                    let _ = unsafe { hw.invvpid(InvvpidType::SingleContext, st.vpid, 0) };
                }
            }
            st.last_cpu = cpu;
            pc.last_vcpu = me;
            let mut host_msrs = [0u64; 5];
            for (h, m) in host_msrs.iter_mut().zip(SWITCHED_MSRS) {
                *h = hw.rdmsr(m);
            }
            let guest_msrs = [st.star, st.lstar, st.cstar, st.sfmask, st.kernel_gs_base];
            let aux = self.tsc_aux.then(|| {
                (
                    hw.rdmsr(msrs::MSR_TSC_AUX),
                    st.msrs.get(msrs::MSR_TSC_AUX).unwrap_or(0),
                )
            });
            // SAFETY: the guest's values were validated on WRMSR / KVM_SET_MSRS; the host's
            // come back before interrupts are enabled again. The XSAVE page is aligned and
            // validated; the guest XCR0 is a subset of the host's.
            unsafe {
                for (m, g) in SWITCHED_MSRS.iter().zip(guest_msrs) {
                    hw.wrmsr(*m, g);
                }
                if let Some((_, g)) = aux.filter(|(h, g)| h != g) {
                    hw.wrmsr(msrs::MSR_TSC_AUX, g);
                }
                if self.host_xcr0 != 0 {
                    hw.xrstor(fpu, self.fpu_mask);
                    if st.xcr0 != self.host_xcr0 {
                        hw.xsetbv0(st.xcr0);
                    }
                } else {
                    hw.fxrstor(fpu);
                }
            }
            // SAFETY: interrupts off, VMX root operation, VMCS current with host state
            // written, no migration (preemption disabled by the caller).
            let status = unsafe { hw.enter(&mut st.extra.regs, false) };
            // SAFETY: the host XCR0 and MSRs go back before the host uses them.
            unsafe {
                if self.host_xcr0 != 0 {
                    if st.xcr0 != self.host_xcr0 {
                        hw.xsetbv0(self.host_xcr0);
                    }
                    hw.xsave(fpu, self.fpu_mask);
                } else {
                    hw.fxsave(fpu);
                }
                st.kernel_gs_base = hw.rdmsr(msrs::MSR_KERNEL_GS_BASE);
                for (m, h) in SWITCHED_MSRS.iter().zip(host_msrs) {
                    hw.wrmsr(*m, h);
                }
                if let Some((h, _)) = aux.filter(|(h, g)| h != g) {
                    hw.wrmsr(msrs::MSR_TSC_AUX, h);
                }
            }
            vm.leave(st.index);
            match status {
                EnterStatus::Exited => match (RawExit::read(&c), Self::save_guest(&c, st)) {
                    (Ok(raw), Ok(())) => {
                        st.inject = None;
                        self.handle(&mut c, st, caps, &raw)
                    }
                    _ => fail,
                },
                EnterStatus::FailValid => Exit::FailEntry {
                    reason: c.read(ro::VM_INSTRUCTION_ERROR).unwrap_or(0),
                },
                EnterStatus::FailInvalid => fail,
            }
        };
        // SAFETY: as for VMPTRLD.
        let _ = unsafe { hw.vmclear(vmcs_pa) };
        if irq {
            // SAFETY: interrupts were on when we started; the guest state is saved. A host
            // interrupt that caused the exit is taken now (ack-on-exit is off).
            unsafe { hw.irq_enable() };
        }
        exit
    }

    /// Turns a VM exit into the core's exit, handling what needs no core decision. The VMCS
    /// is current, interrupts are off.
    fn handle(
        &self,
        c: &mut Cur<'_, W>,
        st: &mut VmxVcpuState,
        caps: &VmxCaps,
        raw: &RawExit,
    ) -> Exit {
        let d = vx::decode(raw, false);
        // An event whose delivery the exit interrupted is delivered again on the next entry.
        if let Some(ev) = d.interrupted {
            st.inject = Some(ev);
            st.inject_len = raw.instruction_len;
            if ev.kind == EventType::Nmi {
                // Virtual-NMI blocking was set by the delivery; it is not delivered yet.
                st.intr &= !interruptibility::NMI;
            }
        }
        let unexpected = Exit::Internal {
            suberror: kvm_abi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
        };
        let len = u64::from(d.instruction_len);
        let next = st.rip.wrapping_add(len);
        let rax = st.extra.regs.gpr[0];
        let rcx = st.extra.regs.gpr[1];
        let rdx = st.extra.regs.gpr[2];
        match d.exit {
            VmxExit::ExternalInterrupt { .. } | VmxExit::Init | VmxExit::Sipi { .. } => {
                Exit::Continue
            }
            VmxExit::Nmi => {
                // SAFETY: the exit consumed a host NMI; interrupts are off.
                unsafe { self.hw.host_nmi() };
                Exit::Continue
            }
            VmxExit::InterruptWindow => {
                if st.irq_window {
                    st.irq_window = false;
                    Exit::IrqWindow
                } else {
                    Exit::Continue
                }
            }
            VmxExit::NmiWindow => Exit::Continue,
            VmxExit::TripleFault => Exit::Shutdown,
            VmxExit::Cpuid => {
                st.pending_rip = Some((st.rip, next));
                Exit::Cpuid {
                    leaf: rax as u32,
                    subleaf: rcx as u32,
                }
            }
            VmxExit::Hlt => {
                skip_to(st, next);
                Exit::Hlt
            }
            VmxExit::Io(io) => {
                if io.string {
                    return Exit::IoString {
                        port: io.port,
                        size: io.size,
                        out: !io.input,
                    };
                }
                st.pending_rip = Some((st.rip, next));
                if !io.input && io.port == 0x7e {
                    // KVM_X86_QUIRK_OUT_7E_INC_RIP: QEMU's vapic ROM relies on RIP already
                    // being past `OUT 0x7e` when the exit reaches userspace.
                    skip_to(st, next);
                    st.pending_rip = None;
                }
                let mask = match io.size {
                    1 => 0xff,
                    2 => 0xffff,
                    _ => 0xffff_ffff,
                };
                Exit::Io {
                    port: io.port,
                    size: io.size,
                    out: !io.input,
                    data: (rax & mask) as u32,
                }
            }
            VmxExit::Rdmsr => {
                st.pending_rip = Some((st.rip, next));
                Exit::Rdmsr { index: rcx as u32 }
            }
            VmxExit::Wrmsr => {
                st.pending_rip = Some((st.rip, next));
                Exit::Wrmsr {
                    index: rcx as u32,
                    data: (rdx & 0xffff_ffff) << 32 | (rax & 0xffff_ffff),
                }
            }
            VmxExit::Xsetbv => {
                let value = (rdx & 0xffff_ffff) << 32 | (rax & 0xffff_ffff);
                let cpl = (c.read(guest::SS_ACCESS_RIGHTS).unwrap_or(0) >> 5) & 3;
                if cpl == 0 && rcx as u32 == 0 && self.xcr0_valid(st, value) {
                    st.xcr0 = value;
                    skip_to(st, next);
                } else {
                    let mut line = crate::ffi::LineBuf::new();
                    let _ = core::fmt::Write::write_fmt(
                        &mut line,
                        format_args!(
                            "okvm: vmx: guest XSETBV({rcx:#x}, {value:#x}) refused: cpl {cpl} \
                             guest cpuid xcr0 {:#x} host xcr0 {:#x}: #GP",
                            st.guest_xcr0, self.host_xcr0
                        ),
                    );
                    self.host.log(LogLevel::Warn, line.as_str());
                    st.inject = Some(exception(13, Some(0)));
                }
                Exit::Continue
            }
            VmxExit::Cr(access) => match self.cr_access(c, st, caps, access) {
                Ok(true) => {
                    skip_to(st, next);
                    Exit::Continue
                }
                Ok(false) => {
                    st.inject = Some(exception(13, Some(0)));
                    Exit::Continue
                }
                Err(e) => e,
            },
            VmxExit::Dr { dr, to_dr, gpr: r } => {
                if to_dr {
                    let val = gpr(st, r);
                    match dr {
                        0..=3 => {
                            if let Some(d) = st.extra.db.get_mut(usize::from(dr)) {
                                *d = val;
                            }
                        }
                        4 | 6 => st.extra.dr6 = (val & 0xffff_ffff) | 0xffff_0ff0,
                        _ => {
                            let _ = c.write(guest::DR7, (val & 0xffff_ffff) | 0x400);
                        }
                    }
                } else {
                    let val = match dr {
                        0..=3 => st.extra.db.get(usize::from(dr)).copied().unwrap_or(0),
                        4 | 6 => st.extra.dr6,
                        _ => c.read(guest::DR7).unwrap_or(0x400),
                    };
                    set_gpr(st, r, val);
                }
                skip_to(st, next);
                Exit::Continue
            }
            VmxExit::EptViolation(e) => {
                if e.nmi_unblocking && d.interrupted.is_none() {
                    st.intr |= interruptibility::NMI;
                }
                Exit::PageFault {
                    gpa: e.gpa,
                    write: e.write,
                    fetch: e.fetch,
                }
            }
            VmxExit::EptMisconfig { .. } => unexpected,
            VmxExit::Instruction { reason } => {
                use vx::reason as r;
                match reason {
                    r::INVD | r::WBINVD | r::PAUSE => skip_to(st, next),
                    _ if st.inject.is_none() => {
                        // VMX instructions, MONITOR/MWAIT, RDPMC, GETSEC, INVPCID, ...:
                        // not offered to the guest.
                        st.inject = Some(exception(6, None));
                    }
                    _ => {}
                }
                Exit::Continue
            }
            VmxExit::FailEntry { reason, .. } => Exit::FailEntry {
                reason: u64::from(reason),
            },
            _ => unexpected,
        }
    }

    /// A CR access exit: `Ok(true)` done (skip the instruction), `Ok(false)` #GP,
    /// `Err(exit)` for what the backend cannot do.
    fn cr_access(
        &self,
        c: &mut Cur<'_, W>,
        st: &mut VmxVcpuState,
        caps: &VmxCaps,
        access: CrAccess,
    ) -> Result<bool, Exit> {
        let unsupported = Exit::Internal {
            suberror: kvm_abi::KVM_INTERNAL_ERROR_EMULATION,
        };
        let vmfail = |_| Exit::FailEntry { reason: 0 };
        let cr0 = c.read(control::CR0_READ_SHADOW).map_err(vmfail)?;
        let cr4 = c.read(control::CR4_READ_SHADOW).map_err(vmfail)?;
        let efer = c.read(guest::IA32_EFER_FULL).map_err(vmfail)?;
        let new_cr0 = match access {
            CrAccess::MovTo { cr: 0, gpr: r } => Some(gpr(st, r)),
            CrAccess::Clts => Some(cr0 & !CR0_TS),
            CrAccess::Lmsw { data, .. } => {
                Some((cr0 & !0xe) | u64::from(data & 0xf) | (cr0 & CR0_PE))
            }
            _ => None,
        };
        if let Some(val) = new_cr0 {
            if val >> 32 != 0 || (val & CR0_PG != 0 && val & CR0_PE == 0) {
                return Ok(false);
            }
            let mut efer2 = efer;
            if val & CR0_PG != 0 && cr0 & CR0_PG == 0 && efer & EFER_LME != 0 {
                if cr4 & CR4_PAE == 0 {
                    return Ok(false);
                }
                efer2 |= EFER_LMA;
            }
            if val & CR0_PG == 0 {
                efer2 &= !EFER_LMA;
            }
            if val & CR0_PG != 0 && cr4 & CR4_PAE != 0 && efer2 & EFER_LMA == 0 {
                // PAE paging outside long mode: the PDPTEs would have to come from guest memory.
                return Err(unsupported);
            }
            vs::set_cr0(c, caps, val).map_err(vmfail)?;
            if (val ^ cr0) & CR0_FLUSH != 0 {
                // The emulated MOV did not flush the VPID-tagged TLB as the real one would.
                st.tlb_gen = u64::MAX;
            }
            if efer2 != efer {
                vs::set_efer(c, &st.ctl, efer2).map_err(vmfail)?;
            }
            return Ok(true);
        }
        match access {
            CrAccess::MovTo { cr: 4, gpr: r } => {
                let val = gpr(st, r);
                if val & caps.cr4_fixed0_bits() != 0
                    || val & vs::CR4_VMXE != 0
                    || (efer & EFER_LMA != 0 && val & CR4_PAE == 0)
                {
                    return Ok(false);
                }
                if cr0 & CR0_PG != 0 && val & CR4_PAE != 0 && efer & EFER_LMA == 0 {
                    return Err(unsupported);
                }
                vs::set_cr4(c, caps, val).map_err(vmfail)?;
                if (val ^ cr4) & CR4_FLUSH != 0 {
                    st.tlb_gen = u64::MAX;
                }
                Ok(true)
            }
            CrAccess::MovTo { cr: 3, gpr: r } => {
                c.write(guest::CR3, gpr(st, r)).map_err(vmfail)?;
                Ok(true)
            }
            CrAccess::MovFrom { cr: 3, gpr: r } => {
                let v = c.read(guest::CR3).map_err(vmfail)?;
                set_gpr(st, r, v);
                Ok(true)
            }
            CrAccess::MovTo { cr: 8, gpr: r } => {
                let v = gpr(st, r);
                if v & !0xf != 0 {
                    return Ok(false);
                }
                st.extra.cr8 = v;
                Ok(true)
            }
            CrAccess::MovFrom { cr: 8, gpr: r } => {
                set_gpr(st, r, st.extra.cr8);
                Ok(true)
            }
            _ => Err(unsupported),
        }
    }

    fn xcr0_valid(&self, s: &VmxVcpuState, value: u64) -> bool {
        fpu::xcr0_valid(self.host_xcr0, self.fpu_mask, s.guest_xcr0, value)
    }

    /// Finishes the instruction that exited (RIP past it, shadow gone) when RIP still points
    /// at it; when there is none or userspace moved RIP meanwhile (e.g. QEMU's vapic), the
    /// completion is dropped, registers included (Linux `complete_fast_pio_*`).
    fn complete(v: &mut VmxVcpu<H>) {
        if let Some((_, next)) = v.st.pending_rip.take() {
            v.st.rip = next;
            v.st.intr &= !(interruptibility::STI | interruptibility::MOV_SS);
        }
    }

    /// Whether the pending completion still applies (RIP unchanged since the exit); drops it
    /// otherwise.
    fn completion_live(v: &mut VmxVcpu<H>) -> bool {
        let live = v.st.pending_rip.is_some_and(|(at, _)| at == v.st.rip);
        if !live {
            v.st.pending_rip = None;
        }
        live
    }

    fn inject_gp(v: &mut VmxVcpu<H>) {
        v.st.pending_rip = None;
        v.st.inject = Some(exception(13, Some(0)));
    }
}

impl<H: Host, W: VmxHw + Sync + 'static> Backend for VmxBackend<H, W> {
    type Vm = VmxVm<H>;
    type Vcpu = VmxVcpu<H>;

    fn name(&self) -> &'static str {
        "vmx"
    }

    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::cpuid::limit_to_host_xcr0(leaf, subleaf, (self.cpuid)(leaf, subleaf), self.host_xcr0)
    }

    fn vm_create(&self) -> KResult<VmxVm<H>> {
        let caps = match &self.caps {
            Ok(c) => c,
            Err(e) => {
                let mut line = crate::ffi::LineBuf::new();
                let _ = core::fmt::Write::write_fmt(&mut line, format_args!("okvm: {e}"));
                self.host.log(LogLevel::Error, line.as_str());
                return Err(ENODEV);
            }
        };
        let format = ept::Format::Ept {
            accessed_dirty: caps.ept_vpid.ad(),
        };
        VmxVm::new(self.host, format, self.phys_bits)
    }

    fn vcpu_create(&self, vm: &VmxVm<H>, id: u32) -> KResult<VmxVcpu<H>> {
        let caps = self.caps.as_ref().map_err(|_| ENODEV)?;
        let ctl = self.ctl_for(GuestFeatures::default()).ok_or(ENODEV)?;
        let index = vm.nvcpus.fetch_add(1, Ordering::SeqCst);
        let vpid = if ctl.vpid() {
            // VPIDs 1..=0xffff, reused after wrapping: the INVEPT/INVVPID on each vCPU switch
            // keeps a reused VPID from seeing another vCPU's translations.
            (self.next_vpid.fetch_add(1, Ordering::Relaxed) % 0xffff + 1) as u16
        } else {
            0
        };
        let mut v = VmxVcpu {
            vmcs: HPage::new(self.host)?,
            fpu: HPage::new(self.host)?,
            st: HBox::new(self.host, VmxVcpuState::new(id, index, ctl, vpid))?,
        };
        // SAFETY: a live, exclusively owned page, not yet known to the processor.
        vmx::hw::init_region(
            unsafe { &mut *v.vmcs.va().cast::<[u8; 4096]>() },
            caps.msrs.revision_id(),
        );
        let pa = v.vmcs.pa();
        self.host.preempt_disable();
        let ok = self.this_cpu(self.host.cpu_current()).is_some()
            // SAFETY: VMX root operation; a new VMCS region: VMCLEAR initializes it.
            && unsafe { self.hw.vmclear(pa) }.is_ok();
        self.host.preempt_enable();
        if !ok {
            return Err(ENODEV);
        }
        let eptp = vm.n_cr3;
        let r = self.with_vmcs(&mut v, |c, st| self.init_vmcs(c, st, caps, eptp))?;
        r.map_err(|_| EIO)?;
        v.st.tsc_offset = 0u64.wrapping_sub(self.hw.rdtsc());
        fpu::reset_fpu(v.fpu_bytes());
        // RDX holds the processor signature at reset (as KVM reports it).
        v.st.extra.regs.gpr[2] = u64::from((self.cpuid)(1, 0).eax);
        Ok(v)
    }

    fn get_regs(&self, v: &mut VmxVcpu<H>, out: &mut kvm_regs) {
        let s = &v.st;
        let [rax, rcx, rdx, rbx, _, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] =
            s.extra.regs.gpr;
        *out = kvm_regs {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rsp: s.rsp,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip: s.rip,
            rflags: s.rflags,
        };
    }

    fn set_regs(&self, v: &mut VmxVcpu<H>, r: &kvm_regs) {
        let s = &mut v.st;
        s.extra.regs.gpr = [
            r.rax, r.rcx, r.rdx, r.rbx, 0, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ];
        s.rsp = r.rsp;
        s.rip = r.rip;
        s.rflags = r.rflags | vs::RFLAGS_FIXED;
        // A pending completion stays: it applies only while RIP is still at the instruction.
    }

    fn get_sregs(&self, v: &mut VmxVcpu<H>, out: &mut kvm_sregs) {
        let r = self.with_vmcs(v, |c, st| vs::get_sregs(c, &st.extra, out));
        if !matches!(r, Ok(Ok(()))) {
            self.host.log(
                LogLevel::Error,
                "okvm: vmx: VMCS not readable for KVM_GET_SREGS",
            );
        }
        out.apic_base = v.st.apic_base;
        out.interrupt_bitmap = [0; 4];
        if let Some(vec) = v.st.pending_irq {
            if let Some(w) = out.interrupt_bitmap.get_mut(usize::from(vec / 64)) {
                *w |= 1 << (vec % 64);
            }
        }
    }

    fn set_sregs(&self, v: &mut VmxVcpu<H>, sregs: &kvm_sregs) -> KResult<()> {
        let caps = self.caps.as_ref().map_err(|_| ENODEV)?;
        vs::check_sregs(caps, sregs).map_err(|_| EINVAL)?;
        if sregs.cr0 & CR0_PG != 0 && sregs.cr4 & CR4_PAE != 0 && sregs.efer & EFER_LMA == 0 {
            self.host.log(
                LogLevel::Warn,
                "okvm: vmx: PAE paging outside long mode is not supported",
            );
            return Err(EINVAL);
        }
        let r = self.with_vmcs(v, |c, st| {
            let ctl = st.ctl;
            vs::set_sregs(c, &mut st.extra, caps, &ctl, sregs)
        })?;
        r.map_err(|_| EIO)?;
        let s = &mut v.st;
        // New CR3/CR4/CR0: flush the vCPU's translations at the next entry.
        s.tlb_gen = u64::MAX;
        s.apic_base = sregs.apic_base;
        let _ = s.msrs.set(msrs::MSR_IA32_APICBASE, sregs.apic_base, true);
        for (i, w) in sregs.interrupt_bitmap.iter().enumerate() {
            if *w != 0 {
                s.pending_irq = Some((i as u32 * 64 + w.trailing_zeros()) as u8);
                break;
            }
        }
        Ok(())
    }

    fn get_fpu(&self, v: &mut VmxVcpu<H>, out: &mut kvm_fpu) {
        fpu::get_fpu(v.fpu_bytes(), out);
    }

    fn set_fpu(&self, v: &mut VmxVcpu<H>, f: &kvm_fpu) {
        fpu::set_fpu(v.fpu_bytes(), f);
    }

    fn get_xsave(&self, v: &mut VmxVcpu<H>, out: &mut kvm_xsave) {
        fpu::get_xsave(v.fpu_bytes(), out);
    }

    fn set_xsave(&self, v: &mut VmxVcpu<H>, x: &kvm_xsave) -> KResult<()> {
        fpu::set_xsave(v.fpu_bytes(), x, self.fpu_mask)
    }

    fn get_xcrs(&self, v: &mut VmxVcpu<H>, out: &mut kvm_xcrs) {
        fpu::get_xcrs(self.host_xcr0, v.st.xcr0, out);
    }

    fn set_xcrs(&self, v: &mut VmxVcpu<H>, xcrs: &kvm_xcrs) -> KResult<()> {
        let Some(value) = fpu::xcr0_of(xcrs) else {
            return Ok(());
        };
        if !self.xcr0_valid(&v.st, value) {
            return Err(EINVAL);
        }
        v.st.xcr0 = value;
        Ok(())
    }

    fn get_msr(&self, v: &mut VmxVcpu<H>, index: u32, _host: bool) -> KResult<u64> {
        let s = &v.st;
        let vmcs_field = match index {
            msrs::MSR_STAR => return Ok(s.star),
            msrs::MSR_LSTAR => return Ok(s.lstar),
            msrs::MSR_CSTAR => return Ok(s.cstar),
            msrs::MSR_SYSCALL_MASK => return Ok(s.sfmask),
            msrs::MSR_KERNEL_GS_BASE => return Ok(s.kernel_gs_base),
            msrs::MSR_IA32_TSC => return Ok(self.hw.rdtsc().wrapping_add(s.tsc_offset)),
            MSR_EFER => guest::IA32_EFER_FULL,
            MSR_FS_BASE => guest::FS_BASE,
            MSR_GS_BASE => guest::GS_BASE,
            msrs::MSR_IA32_SYSENTER_CS => guest::IA32_SYSENTER_CS,
            msrs::MSR_IA32_SYSENTER_ESP => guest::IA32_SYSENTER_ESP,
            msrs::MSR_IA32_SYSENTER_EIP => guest::IA32_SYSENTER_EIP,
            msrs::MSR_IA32_CR_PAT => guest::IA32_PAT_FULL,
            _ => return s.msrs.get(index),
        };
        self.with_vmcs(v, |c, _| c.read(vmcs_field))?
            .map_err(|_| EIO)
    }

    fn set_msr(&self, v: &mut VmxVcpu<H>, index: u32, data: u64, host: bool) -> KResult<()> {
        let base_ok = canonical(data);
        match index {
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
            msrs::MSR_STAR => v.st.star = data,
            msrs::MSR_LSTAR => v.st.lstar = data,
            msrs::MSR_CSTAR => v.st.cstar = data,
            msrs::MSR_SYSCALL_MASK => v.st.sfmask = data & 0xffff_ffff,
            msrs::MSR_KERNEL_GS_BASE => v.st.kernel_gs_base = data,
            msrs::MSR_IA32_TSC => v.st.tsc_offset = data.wrapping_sub(self.hw.rdtsc()),
            MSR_EFER => {
                if data & !EFER_VALID != 0 {
                    return Err(EINVAL);
                }
                return self
                    .with_vmcs(v, |c, st| {
                        let cur = c.read(guest::IA32_EFER_FULL)?;
                        // LMA is the processor's to set for a guest write.
                        let val = if host {
                            data
                        } else {
                            (data & !EFER_LMA) | (cur & EFER_LMA)
                        };
                        let ctl = st.ctl;
                        vs::set_efer(c, &ctl, val)
                    })?
                    .map_err(|_| EIO);
            }
            MSR_FS_BASE
            | MSR_GS_BASE
            | msrs::MSR_IA32_SYSENTER_CS
            | msrs::MSR_IA32_SYSENTER_ESP
            | msrs::MSR_IA32_SYSENTER_EIP
            | msrs::MSR_IA32_CR_PAT => {
                let (field, val) = match index {
                    MSR_FS_BASE => (guest::FS_BASE, data),
                    MSR_GS_BASE => (guest::GS_BASE, data),
                    msrs::MSR_IA32_SYSENTER_CS => (guest::IA32_SYSENTER_CS, data & 0xffff_ffff),
                    msrs::MSR_IA32_SYSENTER_ESP => (guest::IA32_SYSENTER_ESP, data),
                    msrs::MSR_IA32_SYSENTER_EIP => (guest::IA32_SYSENTER_EIP, data),
                    _ => {
                        if !(0..8)
                            .all(|i| matches!((data >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7))
                        {
                            return Err(EINVAL);
                        }
                        (guest::IA32_PAT_FULL, data)
                    }
                };
                return self
                    .with_vmcs(v, |c, _| c.write(field, val))?
                    .map_err(|_| EIO);
            }
            _ => {
                v.st.msrs.set(index, data, host)?;
                if index == msrs::MSR_IA32_APICBASE {
                    v.st.apic_base = data;
                }
            }
        }
        Ok(())
    }

    fn get_events(&self, v: &mut VmxVcpu<H>, out: &mut kvm_vcpu_events) {
        state::get_events(&v.st, out);
    }

    fn set_events(&self, v: &mut VmxVcpu<H>, ev: &kvm_vcpu_events) -> KResult<()> {
        state::set_events(&mut v.st, ev);
        if v.st
            .inject
            .is_some_and(|e| e.kind == EventType::SoftwareInterrupt)
        {
            v.st.inject_len = 2;
        }
        Ok(())
    }

    fn get_debugregs(&self, v: &mut VmxVcpu<H>, out: &mut kvm_debugregs) {
        let r = self.with_vmcs(v, |c, st| vs::get_debugregs(c, &st.extra, out));
        if !matches!(r, Ok(Ok(()))) {
            self.host.log(
                LogLevel::Error,
                "okvm: vmx: VMCS not readable for KVM_GET_DEBUGREGS",
            );
        }
    }

    fn set_debugregs(&self, v: &mut VmxVcpu<H>, dr: &kvm_debugregs) -> KResult<()> {
        match self.with_vmcs(v, |c, st| vs::set_debugregs(c, &mut st.extra, dr))? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(EINVAL),
            Err(_) => Err(EIO),
        }
    }

    fn cpuid_changed(&self, v: &mut VmxVcpu<H>, entries: &[kvm_cpuid_entry2]) {
        let find = |f: u32, i: u32| entries.iter().find(|e| e.function == f && e.index == i);
        v.st.guest_xcr0 =
            find(0xd, 0).map_or(0, |e| u64::from(e.eax) & crate::cpuid::SUPPORTED_XCR0);
        let guest = GuestFeatures {
            rdtscp: find(0x8000_0001, 0).is_some_and(|e| e.edx & (1 << 27) != 0),
            invpcid: find(7, 0).is_some_and(|e| e.ebx & (1 << 10) != 0),
            xsaves: find(0xd, 1).is_some_and(|e| e.eax & (1 << 3) != 0),
        };
        if let Some(ctl) = self.ctl_for(guest) {
            // Only the secondary controls depend on the guest features; the new word is
            // written at the next entry.
            v.st.ctl = ctl;
        }
    }

    fn queue_interrupt(&self, v: &mut VmxVcpu<H>, vector: u8) {
        v.st.pending_irq = Some(vector);
    }

    fn interrupt_queued(&self, v: &mut VmxVcpu<H>) -> bool {
        v.st.pending_irq.is_some()
            || v.st
                .inject
                .is_some_and(|e| e.kind == EventType::ExternalInterrupt)
    }

    fn queue_nmi(&self, v: &mut VmxVcpu<H>) {
        v.st.nmi_pending = true;
    }

    fn interrupt_allowed(&self, v: &mut VmxVcpu<H>) -> bool {
        v.st.interrupt_allowed()
    }

    fn if_flag(&self, v: &mut VmxVcpu<H>) -> bool {
        v.st.rflags & vs::RFLAGS_IF != 0
    }

    fn set_irq_window(&self, v: &mut VmxVcpu<H>, on: bool) {
        v.st.irq_window = on;
    }

    fn get_cr8(&self, v: &mut VmxVcpu<H>) -> u64 {
        v.st.extra.cr8
    }

    fn set_cr8(&self, v: &mut VmxVcpu<H>, cr8: u64) -> KResult<()> {
        if cr8 & !0xf != 0 {
            return Err(EINVAL);
        }
        v.st.extra.cr8 = cr8;
        Ok(())
    }

    fn get_apic_base(&self, v: &mut VmxVcpu<H>) -> u64 {
        v.st.apic_base
    }

    fn run<G: EntryGate>(&self, vm: &VmxVm<H>, v: &mut VmxVcpu<H>, gate: &G) -> Exit {
        Self::inject_pending(&mut v.st);
        self.host.preempt_disable();
        let e = self.enter_once(vm, v, gate);
        self.host.preempt_enable();
        e
    }

    fn complete_io(&self, v: &mut VmxVcpu<H>, c: IoCompletion) {
        if !Self::completion_live(v) {
            return;
        }
        let rax = &mut v.st.extra.regs.gpr[0];
        match c {
            IoCompletion::Write => {}
            IoCompletion::PioIn { size, value } => {
                *rax = match size {
                    1 => (*rax & !0xff) | u64::from(value & 0xff),
                    2 => (*rax & !0xffff) | u64::from(value & 0xffff),
                    _ => u64::from(value),
                };
            }
            IoCompletion::MmioRead { len, data } => {
                let mut b = [0u8; 8];
                let n = usize::from(len).min(8);
                if let (Some(d), Some(s)) = (b.get_mut(..n), data.get(..n)) {
                    d.copy_from_slice(s);
                }
                *rax = u64::from_le_bytes(b);
            }
        }
        Self::complete(v);
    }

    fn complete_cpuid(&self, v: &mut VmxVcpu<H>, r: CpuidResult) {
        if !Self::completion_live(v) {
            return;
        }
        let g = &mut v.st.extra.regs.gpr;
        g[0] = u64::from(r.eax);
        g[3] = u64::from(r.ebx);
        g[1] = u64::from(r.ecx);
        g[2] = u64::from(r.edx);
        Self::complete(v);
    }

    fn complete_rdmsr(&self, v: &mut VmxVcpu<H>, value: Option<u64>) {
        match value {
            Some(x) => {
                if !Self::completion_live(v) {
                    return;
                }
                v.st.extra.regs.gpr[0] = x & 0xffff_ffff;
                v.st.extra.regs.gpr[2] = x >> 32;
                Self::complete(v);
            }
            None => Self::inject_gp(v),
        }
    }

    fn complete_wrmsr(&self, v: &mut VmxVcpu<H>, ok: bool) {
        if ok {
            Self::complete(v);
        } else {
            Self::inject_gp(v);
        }
    }

    fn queue_exception(&self, v: &mut VmxVcpu<H>, e: GuestException) {
        if let Some(cr2) = e.cr2 {
            v.st.extra.regs.cr2 = cr2;
        }
        v.st.inject = Some(Event {
            vector: e.vector,
            kind: EventType::HardwareException,
            error_code: e.error_code,
        });
    }

    fn map_gfn(&self, vm: &VmxVm<H>, gfn: u64, hpa: u64, writable: bool) -> KResult<()> {
        vm.map(gfn, hpa, writable)
    }

    fn unmap_gfns(&self, vm: &VmxVm<H>, gfn: u64, npages: u64) {
        vm.unmap(gfn, npages)
    }
}
