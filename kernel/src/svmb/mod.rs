//! The AMD SVM backend: the core's [`Backend`] over the `svm` crate (VMCB, world switch, exit
//! decoding) and `ept` (nested page tables).
//!
//! Resources: one I/O and one MSR permission map for the whole system (identical for every
//! guest: every port and every MSR outside `svm::permmap::PASSTHROUGH_MSRS` exits), a host
//! save area and a host VMSAVE page per CPU, SVM enabled lazily on the CPU a vCPU first runs
//! on (DESIGN §2: per-CPU setup is lazy) and disabled on every CPU at detach; per VM the NPT
//! ([`npt`]); per vCPU a VMCB page, an XSAVE page and the software state ([`SvmVcpuState`]).
//!
//! Without NRIPS (QEMU TCG) the next RIP of an intercepted instruction comes from the
//! instruction's architectural length (CPUID, RDMSR, WRMSR 2 bytes; HLT 1; XSETBV, VMMCALL 3):
//! a guest that puts redundant prefixes on them misexecutes only itself. IN/OUT always come with
//! the next RIP (EXITINFO2); string I/O and MMIO are emulated by the core from RIP.

pub mod npt;
pub mod state;

use core::cell::UnsafeCell;
use core::fmt::Write as _;

use kvm_abi::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use svm::cpuid::{CpuidSource, DetectError, SvmCaps};
use svm::exit::{DecodedExit, SvmExit};
use svm::hw::SvmHw;
use svm::intercept::{set_iret_intercept, Paging};
use svm::permmap;
use svm::vcpu::{self as sv, Reinjection, VmcbSetup};
use svm::vmcb::{CleanBits, EventInj, EventType, Vmcb};

use crate::backend::{Backend, CpuidResult, EntryGate, Exit, GuestException, IoCompletion};
use crate::errno::{KResult, EINVAL, ENODEV, ENOMEM};
use crate::hmem::{HBox, HPage, HSlice};
use crate::host::{Host, LogLevel, Page};
use crate::singlestep;

pub use npt::SvmVm;
pub use state::SvmVcpuState;

/// Debug aid: log exit 2^n and every 20000th exit (and every unusual one) at error level.
const DEBUG_EXITS: bool = false;

/// EFER.NXE.
const EFER_NXE: u64 = 1 << 11;
/// CR4.OSXSAVE.
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
/// `KVM_ENOSYS` as a hypercall result.
const KVM_ENOSYS: u64 = (-1000i64) as u64;

struct Cpuid(fn(u32, u32) -> CpuidResult);

/// How one attempt to run the guest ended.
enum Entered {
    /// The entry gate kept the vCPU out (a signal or a posted event); nothing ran.
    Gated,
    /// The guest ran and exited.
    Exited(DecodedExit),
}

impl CpuidSource for Cpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = (self.0)(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
}

/// One CPU's SVM resources. Touched only on that CPU with preemption disabled (entry) or
/// from `run_on_all_cpus` at detach, never concurrently.
struct PerCpu {
    hsave: Option<Page>,
    host_vmcb: Option<Page>,
    asids: Option<svm::asid::AsidAllocator>,
    /// SVM usable on this CPU.
    enabled: bool,
    /// We turned it on (so we turn it off at detach); false when another hypervisor on the
    /// host (vmm(4)) had EFER.SVME and its host save area set up, which we then share.
    owned: bool,
}

struct PerCpuCell(UnsafeCell<PerCpu>);

// SAFETY: each cell is used only by code running on its own CPU with preemption disabled (or
// by the detach callback on that CPU with no guest running), so accesses never overlap.
unsafe impl Sync for PerCpuCell {}
// SAFETY: as above; the pages it holds are plain host pages.
unsafe impl Send for PerCpuCell {}

/// The SVM backend over hardware `W` (the real instructions in the kernel object, a fake in
/// host tests).
pub struct SvmBackend<H: Host, W: SvmHw + Sync + 'static> {
    host: &'static H,
    hw: W,
    cpuid: fn(u32, u32) -> CpuidResult,
    caps: SvmCaps,
    /// `Err` when this CPU cannot run guests with this backend (no NPT): VM creation fails.
    usable: Result<(), DetectError>,
    npt_format: ept::Format,
    phys_bits: u8,
    /// Host XCR0; 0 when the host has no XSAVE enabled (FXSAVE is used).
    host_xcr0: u64,
    /// Components switched with XSAVE/XRSTOR.
    fpu_mask: u64,
    /// The CPU has `TSC_AUX` (switched around entries: RDTSCP/RDPID are not intercepted).
    tsc_aux: bool,
    iopm: Page,
    msrpm: Page,
    percpu: HSlice<PerCpuCell, H>,
}

// SAFETY: the permission-map pages (`Page` holds raw pointers) are written only in `new`
// and afterwards read only by the processor; per-CPU state is `PerCpuCell` (see there).
unsafe impl<H: Host, W: SvmHw + Sync + 'static> Sync for SvmBackend<H, W> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<H: Host, W: SvmHw + Sync + Send + 'static> Send for SvmBackend<H, W> {}

const IOPM_PAGES: u32 = (permmap::IOPM_SIZE / 4096) as u32;
const MSRPM_PAGES: u32 = (permmap::MSRPM_SIZE / 4096) as u32;

impl<H: Host, W: SvmHw + Sync + 'static> SvmBackend<H, W> {
    /// Probes SVM with `cpuid`; `Err` (with a log line) when the CPU has no SVM at all or
    /// memory is short. A CPU with SVM but no NPT gets a backend that refuses VM creation.
    pub fn new(host: &'static H, hw: W, cpuid: fn(u32, u32) -> CpuidResult) -> KResult<Self> {
        let src = Cpuid(cpuid);
        let caps = svm::cpuid::detect(&src).map_err(|e| {
            host.log(LogLevel::Error, e.message());
            ENODEV
        })?;
        let usable = svm::cpuid::check_usable(&caps);
        let efer = hw.rdmsr(svm::hw::MSR_EFER);
        let host_pat = hw.rdmsr(0x277);
        let npt_format = ept::Format::Npt {
            nx: efer & EFER_NXE != 0,
            host_pat,
        };
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
        let iopm = host.contig_alloc(IOPM_PAGES).ok_or(ENOMEM)?;
        let Some(msrpm) = host.contig_alloc(MSRPM_PAGES) else {
            // SAFETY: just allocated, unused.
            unsafe { host.contig_free(iopm, IOPM_PAGES) };
            return Err(ENOMEM);
        };
        // SAFETY: both are live, exclusively owned allocations of exactly these sizes.
        unsafe {
            permmap::iopm_intercept_all(&mut *iopm.va.as_ptr().cast::<[u8; permmap::IOPM_SIZE]>());
            permmap::msrpm_build_kvm(&mut *msrpm.va.as_ptr().cast::<[u8; permmap::MSRPM_SIZE]>());
        }
        let ncpu = host.cpu_count().max(1) as usize;
        // Every CPU's host save area and host VMSAVE page now: the entry path runs with
        // preemption disabled, where the host allocator may not sleep.
        let percpu = HSlice::new_with(host, ncpu, |_| {
            PerCpuCell(UnsafeCell::new(PerCpu {
                hsave: host.page_alloc(),
                host_vmcb: host.page_alloc(),
                asids: svm::asid::AsidAllocator::new(caps.nasid),
                enabled: false,
                owned: false,
            }))
        });
        let complete = percpu.as_ref().is_ok_and(|p| {
            p.iter().all(|c| {
                // SAFETY: not shared yet.
                let pc = unsafe { &*c.0.get() };
                pc.hsave.is_some() && pc.host_vmcb.is_some()
            })
        });
        if !complete {
            if let Ok(p) = percpu {
                free_percpu(host, p);
            }
            // SAFETY: just allocated, unused.
            unsafe {
                host.contig_free(iopm, IOPM_PAGES);
                host.contig_free(msrpm, MSRPM_PAGES);
            }
            return Err(ENOMEM);
        }
        let Ok(percpu) = percpu else {
            return Err(ENOMEM);
        };
        Ok(Self {
            host,
            hw,
            cpuid,
            caps,
            usable,
            npt_format,
            phys_bits,
            host_xcr0,
            fpu_mask,
            tsc_aux: crate::msrs::host_has_tsc_aux(cpuid),
            iopm,
            msrpm,
            percpu,
        })
    }

    /// The SVM capabilities found.
    pub fn caps(&self) -> &SvmCaps {
        &self.caps
    }

    /// Whether guests can run (NPT present).
    pub fn usable(&self) -> Result<(), DetectError> {
        self.usable
    }

    /// The hardware (tests drive the fake through it).
    pub fn hw(&self) -> &W {
        &self.hw
    }

    /// Turns SVM off on the calling CPU if this backend turned it on, and frees that CPU's
    /// pages. Called on every CPU at detach (no guest runs anywhere).
    pub fn disable_this_cpu(&self) {
        let cpu = self.host.cpu_current() as usize;
        let Some(c) = self.percpu.get(cpu) else {
            return;
        };
        // SAFETY: on this CPU, no guest running (detach contract).
        let pc = unsafe { &mut *c.0.get() };
        if pc.enabled && pc.owned {
            svm::hw::disable(&self.hw);
        }
        pc.enabled = false;
        pc.owned = false;
    }

    /// The per-CPU resources of `cpu`, SVM enabled on it. The caller runs on `cpu` with
    /// preemption disabled.
    #[allow(clippy::mut_from_ref)]
    fn this_cpu(&self, cpu: u32) -> Option<&mut PerCpu> {
        let c = self.percpu.get(cpu as usize)?;
        // SAFETY: the caller runs on `cpu` with preemption disabled (PerCpuCell contract).
        let pc = unsafe { &mut *c.0.get() };
        if !pc.enabled {
            let efer = self.hw.rdmsr(svm::hw::MSR_EFER);
            if efer & svm::state::EFER_SVME != 0 && self.hw.rdmsr(svm::hw::MSR_VM_HSAVE_PA) != 0 {
                // Another hypervisor (vmm(4)) owns SVM on this CPU: share its setup (VMRUNs on
                // one CPU never overlap, so one host save area serves both).
                pc.enabled = true;
                return Some(pc);
            }
            let hsave = pc.hsave.as_ref()?.pa;
            if let Err(e) = svm::hw::enable(&self.hw, hsave) {
                let msg = match e {
                    svm::hw::EnableError::DisabledByFirmware { .. } => {
                        "okvm: svm: SVM disabled by firmware (VM_CR.SVMDIS)"
                    }
                    svm::hw::EnableError::BadHostSaveArea(_) => "okvm: svm: bad host save area",
                };
                self.host.log(LogLevel::Error, msg);
                return None;
            }
            pc.enabled = true;
            pc.owned = true;
        }
        Some(pc)
    }
}

/// Frees the per-CPU pages (SVM is off on every CPU, or was never on with them).
fn free_percpu<H: Host>(host: &'static H, mut percpu: HSlice<PerCpuCell, H>) {
    for c in percpu.iter_mut() {
        let pc = c.0.get_mut();
        for p in [pc.hsave.take(), pc.host_vmcb.take()].into_iter().flatten() {
            // SAFETY: no CPU uses the page any more.
            unsafe { host.page_free(p) };
        }
    }
}

impl<H: Host, W: SvmHw + Sync + 'static> Drop for SvmBackend<H, W> {
    fn drop(&mut self) {
        for c in self.percpu.iter_mut() {
            let pc = c.0.get_mut();
            for p in [pc.hsave.take(), pc.host_vmcb.take()].into_iter().flatten() {
                // SAFETY: SVM is off (detach) or was never on with this page; unused.
                unsafe { self.host.page_free(p) };
            }
        }
        // SAFETY: no VMCB references the maps any more (no VM exists at detach).
        unsafe {
            self.host.contig_free(
                Page {
                    va: self.iopm.va,
                    pa: self.iopm.pa,
                },
                IOPM_PAGES,
            );
            self.host.contig_free(
                Page {
                    va: self.msrpm.va,
                    pa: self.msrpm.pa,
                },
                MSRPM_PAGES,
            );
        }
    }
}

/// Writes the attach log line: backend, SVM revision, ASIDs and the features that matter.
pub fn describe<H: Host, W: SvmHw + Sync + 'static>(
    b: &SvmBackend<H, W>,
    out: &mut impl core::fmt::Write,
) {
    use svm::cpuid::SvmFeatures as F;
    let c = &b.caps;
    let f = |x: F| if c.features.contains(x) { "+" } else { "-" };
    let _ = write!(
        out,
        "okvm: core attached, backend svm rev {} asids {} {}npt {}nrips {}decode {}vmcb-clean \
         {}flush-asid {}vgif {}vnmi xcr0 {:#x}",
        c.revision,
        c.nasid,
        f(F::NP),
        f(F::NRIPS),
        f(F::DECODE_ASSISTS),
        f(F::VMCB_CLEAN),
        f(F::FLUSH_BY_ASID),
        f(F::VGIF),
        f(F::VNMI),
        b.host_xcr0,
    );
    if let Err(e) = b.usable {
        let _ = write!(out, "; guests refused: {}", e.message());
    }
}

/// Per-vCPU state of the SVM backend.
pub struct SvmVcpu<H: Host> {
    vmcb: HPage<H>,
    fpu: HPage<H>,
    st: HBox<SvmVcpuState, H>,
}

impl<H: Host> SvmVcpu<H> {
    fn vmcb(&mut self) -> &mut Vmcb {
        // SAFETY: the VMCB page is a live, exclusively owned, page-aligned page; Vmcb is
        // 4096 bytes of plain integers.
        unsafe { &mut *self.vmcb.va().cast::<Vmcb>() }
    }

    fn parts(&mut self) -> (&mut Vmcb, &mut SvmVcpuState) {
        // SAFETY: as in `vmcb`; `st` is a distinct allocation.
        (unsafe { &mut *self.vmcb.va().cast::<Vmcb>() }, &mut self.st)
    }

    fn fpu_bytes(&mut self) -> &mut [u8; 4096] {
        // SAFETY: a live, exclusively owned page.
        unsafe { &mut *self.fpu.va().cast::<[u8; 4096]>() }
    }

    /// The software state (tests).
    pub fn state(&self) -> &SvmVcpuState {
        &self.st
    }

    /// The VMCB (tests).
    pub fn vmcb_ref(&self) -> &Vmcb {
        // SAFETY: as in `vmcb`.
        unsafe { &*self.vmcb.va().cast::<Vmcb>() }
    }

    /// Physical address of the VMCB (tests).
    pub fn vmcb_pa(&self) -> u64 {
        self.vmcb.pa()
    }
}

fn exception(vector: u8, error_code: Option<u32>) -> EventInj {
    EventInj {
        vector,
        kind: EventType::Exception,
        error_code,
    }
}

impl<H: Host, W: SvmHw + Sync + 'static> SvmBackend<H, W> {
    /// Queues the highest-priority pending event in EVENTINJ if the slot is free.
    fn inject_pending(&self, vmcb: &mut Vmcb, s: &mut SvmVcpuState) {
        if sv::injection_pending(vmcb) {
            if s.pending_irq.is_some() {
                // Exit as soon as the queued event is delivered and interrupts are open.
                sv::set_irq_window(vmcb, true);
            }
            return;
        }
        if s.nmi_pending && !s.nmi_masked {
            sv::inject(
                vmcb,
                EventInj {
                    vector: 2,
                    kind: EventType::Nmi,
                    error_code: None,
                },
            );
            s.nmi_pending = false;
            s.nmi_masked = true;
            if set_iret_intercept(&mut vmcb.control, true) {
                sv::mark_dirty(vmcb, CleanBits::I);
            }
            return;
        }
        if let Some(vector) = s.pending_irq.take() {
            sv::inject(
                vmcb,
                EventInj {
                    vector,
                    kind: EventType::Intr,
                    error_code: None,
                },
            );
        }
    }

    /// Sets RIP past the instruction that exited: the reported next RIP, or `len` bytes on.
    fn skip(vmcb: &mut Vmcb, d: &DecodedExit, len: u64) {
        let next = d.next_rip.unwrap_or(vmcb.save.rip.wrapping_add(len));
        Self::skip_to(vmcb, next);
    }

    /// Sets RIP past an instruction the backend completes itself (interrupt shadow ended);
    /// under RFLAGS.TF raises the single-step #DB the CPU did not
    /// (`KVM_CAP_X86_ROBUST_SINGLESTEP`, see `singlestep.rs`).
    fn skip_to(vmcb: &mut Vmcb, next: u64) {
        sv::skip_instruction(vmcb, next);
        if vmcb.save.rflags & singlestep::RFLAGS_TF != 0 && !sv::injection_pending(vmcb) {
            vmcb.save.dr6 = singlestep::dr6_single_step(vmcb.save.dr6);
            sv::mark_dirty(vmcb, CleanBits::DRX);
            sv::inject(vmcb, exception(1, None));
        }
    }

    /// Runs the guest once on this CPU unless `gate` keeps it out. `None` when SVM cannot be
    /// used on it.
    fn enter_once<G: EntryGate>(
        &self,
        vm: &SvmVm<H>,
        v: &mut SvmVcpu<H>,
        gate: &G,
    ) -> Option<Entered> {
        let host = self.host;
        let vmcb_pa = v.vmcb.pa();
        let fpu = v.fpu.va();
        let (vmcb, s) = v.parts();
        host.preempt_disable();
        let cpu = host.cpu_current();
        let Some(pc) = self.this_cpu(cpu) else {
            host.preempt_enable();
            return None;
        };
        let (Some(asids), Some(hv)) = (pc.asids.as_mut(), pc.host_vmcb.as_ref()) else {
            host.preempt_enable();
            return None;
        };
        let host_vmcb_pa = hv.pa;
        let irq = self.hw.irq_disable();
        if gate.enter(cpu) {
            if irq {
                // SAFETY: interrupts were on when we started; nothing was switched.
                unsafe { self.hw.irq_enable() };
            }
            host.preempt_enable();
            return Some(Entered::Gated);
        }
        vm.enter(s.index, cpu);
        let gen = vm.tlb_gen.load(core::sync::atomic::Ordering::SeqCst);
        if gen != s.tlb_gen {
            s.tlb_gen = gen;
            s.entry.flush_requested = true;
        }
        sv::prepare_entry(vmcb, &self.caps, &mut s.entry, cpu, asids);
        // Guest extended state in, guest XCR0 on (host state was saved by fpu_enter).
        // SAFETY: the XSAVE page is 4096-byte aligned and validated by set_xsave/set_fpu; the
        // guest XCR0 is a subset of the host's (set_xcrs / XSETBV checks).
        unsafe {
            if self.host_xcr0 != 0 {
                self.hw.xrstor(fpu, self.fpu_mask);
                if s.xcr0 != self.host_xcr0 {
                    self.hw.xsetbv0(s.xcr0);
                }
            } else {
                self.hw.fxrstor(fpu);
            }
        }
        let aux = self.tsc_aux.then(|| {
            let host_aux = self.hw.rdmsr(crate::msrs::MSR_TSC_AUX);
            let guest_aux = s.msrs.get(crate::msrs::MSR_TSC_AUX).unwrap_or(0);
            if host_aux != guest_aux {
                // SAFETY: TSC_AUX exists (CPUID) and the value was validated (32 bits) on
                // WRMSR / KVM_SET_MSRS; the host's value goes back right after the exit.
                unsafe { self.hw.wrmsr(crate::msrs::MSR_TSC_AUX, guest_aux) };
            }
            (host_aux, guest_aux)
        });
        // The world switch loads the guest's DR0-DR3 and #VMEXIT leaves DR7 at 400h: the
        // host's go back afterwards (DR6/DR7 only when it had breakpoints enabled).
        let host_db = [0u8, 1, 2, 3].map(|n| self.hw.read_db(n));
        let (host_dr6, host_dr7) = self.hw.read_dr6_dr7();
        // SAFETY: SVM is enabled on this CPU with its host save area, interrupts are off,
        // preemption is disabled, the VMCB and host VMSAVE page are ours and prepared.
        let d = unsafe {
            sv::enter(
                &self.hw,
                &self.caps,
                vmcb,
                vmcb_pa,
                host_vmcb_pa,
                &mut s.extra,
            )
        };
        if let Some((host_aux, guest_aux)) = aux {
            if host_aux != guest_aux {
                // SAFETY: restores the host's own value.
                unsafe { self.hw.wrmsr(crate::msrs::MSR_TSC_AUX, host_aux) };
            }
        }
        for (n, (h, g)) in (0u8..).zip(host_db.iter().zip(s.extra.db)) {
            if *h != g {
                // SAFETY: restores the host's own value.
                unsafe { self.hw.write_db(n, *h) };
            }
        }
        if host_dr7 & 0xff != 0 {
            // SAFETY: restores the host's own values.
            unsafe { self.hw.write_dr6_dr7(host_dr6, host_dr7) };
        }
        // SAFETY: as above; the host XCR0 goes back before the host uses extended state.
        unsafe {
            if self.host_xcr0 != 0 {
                if s.xcr0 != self.host_xcr0 {
                    self.hw.xsetbv0(self.host_xcr0);
                }
                self.hw.xsave(fpu, self.fpu_mask);
            } else {
                self.hw.fxsave(fpu);
            }
        }
        vm.leave(s.index);
        if irq {
            // SAFETY: interrupts were on when we started; the guest state is saved.
            unsafe { self.hw.irq_enable() };
        }
        host.preempt_enable();
        Some(Entered::Exited(d))
    }

    /// Turns a decoded #VMEXIT into the core's exit, handling what needs no core decision.
    fn handle(&self, v: &mut SvmVcpu<H>, d: &DecodedExit) -> Exit {
        let (vmcb, s) = v.parts();
        match sv::reinject(vmcb, d) {
            Reinjection::None | Reinjection::Queued(_) => {}
            Reinjection::SoftIntNeedsRip(ev) => {
                // INTn (CD ib) was being delivered: return address past it.
                sv::skip_instruction(vmcb, vmcb.save.rip.wrapping_add(2));
                sv::inject(vmcb, ev);
            }
        }
        if d.bad_exit_int_info.is_some() {
            return Exit::Internal {
                suberror: kvm_abi::KVM_INTERNAL_ERROR_DELIVERY_EV,
            };
        }
        if s.awaiting_iret && !matches!(d.exit, SvmExit::Iret) {
            // The IRET that ended the NMI handler retired.
            s.awaiting_iret = false;
            s.nmi_masked = false;
        }
        let rax = vmcb.save.rax;
        let rcx = s.extra.gprs.rcx;
        let rdx = s.extra.gprs.rdx;
        match d.exit {
            SvmExit::Intr | SvmExit::Nmi | SvmExit::Smi | SvmExit::Init | SvmExit::Pause => {
                Exit::Continue
            }
            SvmExit::Vintr => {
                sv::set_irq_window(vmcb, false);
                Exit::IrqWindow
            }
            SvmExit::Cpuid => {
                s.pending_rip = Some((
                    vmcb.save.rip,
                    d.next_rip.unwrap_or(vmcb.save.rip.wrapping_add(2)),
                ));
                Exit::Cpuid {
                    leaf: rax as u32,
                    subleaf: rcx as u32,
                }
            }
            SvmExit::Hlt => {
                Self::skip(vmcb, d, 1);
                Exit::Hlt
            }
            SvmExit::Io(io) => {
                if io.string {
                    return Exit::IoString {
                        port: io.port,
                        size: io.size,
                        out: !io.input,
                    };
                }
                s.pending_rip = d.next_rip.map(|n| (vmcb.save.rip, n));
                if !io.input && io.port == 0x7e {
                    // KVM_X86_QUIRK_OUT_7E_INC_RIP: QEMU's vapic ROM relies on RIP already
                    // being past `OUT 0x7e` when the exit reaches userspace.
                    if let Some(n) = d.next_rip {
                        Self::skip_to(vmcb, n);
                    }
                    s.pending_rip = None;
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
            SvmExit::Msr { write } => {
                s.pending_rip = Some((
                    vmcb.save.rip,
                    d.next_rip.unwrap_or(vmcb.save.rip.wrapping_add(2)),
                ));
                if write {
                    Exit::Wrmsr {
                        index: rcx as u32,
                        data: (rdx & 0xffff_ffff) << 32 | (rax & 0xffff_ffff),
                    }
                } else {
                    Exit::Rdmsr { index: rcx as u32 }
                }
            }
            SvmExit::Xsetbv => {
                let value = (rdx & 0xffff_ffff) << 32 | (rax & 0xffff_ffff);
                if vmcb.save.cpl == 0 && rcx as u32 == 0 && self.xcr0_valid(s, value) {
                    s.xcr0 = value;
                    Self::skip(vmcb, d, 3);
                } else {
                    sv::inject(vmcb, exception(13, Some(0)));
                }
                Exit::Continue
            }
            SvmExit::Vmmcall => {
                // No hypercalls are offered (no KVM paravirtual CPUID leaves are set by okvm).
                vmcb.save.rax = KVM_ENOSYS;
                Self::skip(vmcb, d, 3);
                Exit::Continue
            }
            SvmExit::Iret => {
                if set_iret_intercept(&mut vmcb.control, false) {
                    sv::mark_dirty(vmcb, CleanBits::I);
                }
                s.awaiting_iret = true;
                Exit::Continue
            }
            SvmExit::Npf { gpa, error } => {
                use svm::exit::NpfError;
                if error.contains(NpfError::RSV) {
                    return Exit::Internal {
                        suberror: kvm_abi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
                    };
                }
                Exit::PageFault {
                    gpa,
                    write: error.contains(NpfError::RW),
                    fetch: error.contains(NpfError::ID),
                }
            }
            SvmExit::Exception {
                vector, error_code, ..
            } => match vector {
                // #DB and #AC are intercepted only so that their delivery cannot loop in
                // microcode; reflect them.
                1 | 17 if !sv::injection_pending(vmcb) => {
                    sv::inject(vmcb, exception(vector, error_code.map(|_| 0)));
                    Exit::Continue
                }
                _ => Exit::Internal {
                    suberror: kvm_abi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
                },
            },
            SvmExit::Instruction { code } => {
                use svm::exit::code as c;
                match code {
                    c::INVD | c::WBINVD => {
                        Self::skip(vmcb, d, 2);
                    }
                    _ if !sv::injection_pending(vmcb) => {
                        // SVM instructions, MONITOR/MWAIT, RDPRU, RSM, ...: not offered.
                        sv::inject(vmcb, exception(6, None));
                    }
                    _ => {}
                }
                Exit::Continue
            }
            SvmExit::Shutdown => Exit::Shutdown,
            SvmExit::Invalid => Exit::FailEntry {
                reason: vmcb.control.exit_code,
            },
            _ => Exit::Internal {
                suberror: kvm_abi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
            },
        }
    }

    fn debug_exit(&self, v: &mut SvmVcpu<H>, e: &Exit) {
        v.st.nexits += 1;
        let n = v.st.nexits;
        if n.is_power_of_two()
            || n.is_multiple_of(20000)
            || !matches!(
                e,
                Exit::Continue
                    | Exit::Io { .. }
                    | Exit::PageFault { .. }
                    | Exit::Cpuid { .. }
                    | Exit::Rdmsr { .. }
                    | Exit::Wrmsr { .. }
                    | Exit::IrqWindow
                    | Exit::Hlt
            )
        {
            let mut line = crate::ffi::LineBuf::new();
            let c = &v.vmcb_ref().control;
            let _ = write!(
                line,
                "okvm dbg #{} code {:#x} i1 {:#x} i2 {:#x} ii {:#x} rip {:#x} {:?}",
                n,
                c.exit_code,
                c.exit_info1,
                c.exit_info2,
                c.exit_int_info,
                v.vmcb_ref().save.rip,
                e
            );
            self.host.log(LogLevel::Error, line.as_str());
        }
    }

    fn xcr0_valid(&self, s: &SvmVcpuState, value: u64) -> bool {
        state::xcr0_valid(self.host_xcr0, self.fpu_mask, s.guest_xcr0, value)
    }

    /// Finishes the instruction that exited: `true` (and RIP past it) when RIP still points at
    /// it; `false` when there is none or userspace moved RIP meanwhile (Linux
    /// `complete_fast_pio_*`: the completion is then dropped).
    fn complete(&self, v: &mut SvmVcpu<H>) -> bool {
        let (vmcb, s) = v.parts();
        match s.pending_rip.take() {
            Some((at, next)) if vmcb.save.rip == at => {
                sv::skip_instruction(vmcb, next);
                true
            }
            _ => false,
        }
    }

    /// Whether the pending completion still applies (RIP unchanged since the exit).
    fn completion_live(v: &mut SvmVcpu<H>) -> bool {
        let (vmcb, s) = v.parts();
        s.pending_rip.is_some_and(|(at, _)| at == vmcb.save.rip)
    }
}

impl<H: Host, W: SvmHw + Sync + 'static> Backend for SvmBackend<H, W> {
    type Vm = SvmVm<H>;
    type Vcpu = SvmVcpu<H>;

    fn name(&self) -> &'static str {
        "svm"
    }

    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::cpuid::limit_to_host_xcr0(leaf, subleaf, (self.cpuid)(leaf, subleaf), self.host_xcr0)
    }

    fn vm_create(&self) -> KResult<SvmVm<H>> {
        if let Err(e) = self.usable {
            self.host.log(LogLevel::Error, e.message());
            return Err(ENODEV);
        }
        SvmVm::new(self.host, self.npt_format, self.phys_bits)
    }

    fn vcpu_create(&self, vm: &SvmVm<H>, id: u32) -> KResult<SvmVcpu<H>> {
        let index = vm.nvcpus.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        let mut v = SvmVcpu {
            vmcb: HPage::new(self.host)?,
            fpu: HPage::new(self.host)?,
            st: HBox::new(self.host, SvmVcpuState::new(id, index))?,
        };
        let setup = VmcbSetup {
            iopm_pa: self.iopm.pa,
            msrpm_pa: self.msrpm.pa,
            paging: Paging::Nested,
            n_cr3: vm.n_cr3,
        };
        let tsc = self.hw.rdtsc();
        let (vmcb, s) = v.parts();
        sv::init_vmcb(vmcb, &setup);
        let _ = s;
        // The guest TSC starts at 0.
        vmcb.control.tsc_offset = 0u64.wrapping_sub(tsc);
        state::reset_fpu(v.fpu_bytes());
        // RDX holds the processor signature at reset (as KVM reports: family/model/stepping).
        let sig = (self.cpuid)(1, 0).eax;
        v.st.extra.gprs.rdx = u64::from(sig);
        Ok(v)
    }

    fn get_regs(&self, v: &mut SvmVcpu<H>, out: &mut kvm_regs) {
        let (vmcb, s) = v.parts();
        svm::state::get_regs(&vmcb.save, &s.extra.gprs, out);
    }

    fn set_regs(&self, v: &mut SvmVcpu<H>, regs: &kvm_regs) {
        let (vmcb, s) = v.parts();
        svm::state::set_regs(&mut vmcb.save, &mut s.extra.gprs, regs);
        vmcb.save.rflags |= svm::state::RFLAGS_FIXED;
    }

    fn get_sregs(&self, v: &mut SvmVcpu<H>, out: &mut kvm_sregs) {
        let (vmcb, s) = v.parts();
        svm::state::get_sregs(vmcb, &s.extra, out);
        out.apic_base = s.apic_base;
        out.interrupt_bitmap = [0; 4];
        if let Some(vec) = s.pending_irq {
            if let Some(w) = out.interrupt_bitmap.get_mut(usize::from(vec / 64)) {
                *w |= 1 << (vec % 64);
            }
        }
    }

    fn set_sregs(&self, v: &mut SvmVcpu<H>, sregs: &kvm_sregs) -> KResult<()> {
        state::check_sregs(sregs)?;
        let (vmcb, s) = v.parts();
        svm::state::set_sregs(vmcb, &mut s.extra, sregs, 0).map_err(|_| EINVAL)?;
        s.apic_base = sregs.apic_base;
        let _ = s
            .msrs
            .set(crate::msrs::MSR_IA32_APICBASE, sregs.apic_base, true);
        // Linux: the lowest set bit of interrupt_bitmap becomes the queued interrupt.
        for (i, w) in sregs.interrupt_bitmap.iter().enumerate() {
            if *w != 0 {
                s.pending_irq = Some((i as u32 * 64 + w.trailing_zeros()) as u8);
                break;
            }
        }
        Ok(())
    }

    fn get_fpu(&self, v: &mut SvmVcpu<H>, out: &mut kvm_fpu) {
        state::get_fpu(v.fpu_bytes(), out);
    }

    fn set_fpu(&self, v: &mut SvmVcpu<H>, fpu: &kvm_fpu) {
        state::set_fpu(v.fpu_bytes(), fpu);
    }

    fn get_xsave(&self, v: &mut SvmVcpu<H>, out: &mut kvm_xsave) {
        state::get_xsave(v.fpu_bytes(), out);
    }

    fn set_xsave(&self, v: &mut SvmVcpu<H>, xsave: &kvm_xsave) -> KResult<()> {
        state::set_xsave(v.fpu_bytes(), xsave, self.fpu_mask)
    }

    fn get_xcrs(&self, v: &mut SvmVcpu<H>, out: &mut kvm_xcrs) {
        state::get_xcrs(self.host_xcr0, v.st.xcr0, out);
    }

    fn set_xcrs(&self, v: &mut SvmVcpu<H>, xcrs: &kvm_xcrs) -> KResult<()> {
        let Some(value) = state::xcr0_of(xcrs) else {
            return Ok(());
        };
        if !self.xcr0_valid(&v.st, value) {
            return Err(EINVAL);
        }
        v.st.xcr0 = value;
        Ok(())
    }

    fn get_msr(&self, v: &mut SvmVcpu<H>, index: u32, _host: bool) -> KResult<u64> {
        let tsc = self.hw.rdtsc();
        let (vmcb, s) = v.parts();
        state::get_msr(vmcb, s, index, tsc)
    }

    fn set_msr(&self, v: &mut SvmVcpu<H>, index: u32, data: u64, host: bool) -> KResult<()> {
        let tsc = self.hw.rdtsc();
        let (vmcb, s) = v.parts();
        state::set_msr(vmcb, s, index, data, host, tsc)
    }

    fn get_events(&self, v: &mut SvmVcpu<H>, out: &mut kvm_vcpu_events) {
        let (vmcb, s) = v.parts();
        state::get_events(vmcb, s, out);
    }

    fn set_events(&self, v: &mut SvmVcpu<H>, ev: &kvm_vcpu_events) -> KResult<()> {
        let (vmcb, s) = v.parts();
        state::set_events(vmcb, s, ev);
        Ok(())
    }

    fn get_debugregs(&self, v: &mut SvmVcpu<H>, out: &mut kvm_debugregs) {
        let (vmcb, s) = v.parts();
        svm::state::get_debugregs(vmcb, &s.extra, out);
    }

    fn set_debugregs(&self, v: &mut SvmVcpu<H>, dr: &kvm_debugregs) -> KResult<()> {
        let (vmcb, s) = v.parts();
        svm::state::set_debugregs(vmcb, &mut s.extra, dr);
        Ok(())
    }

    fn cpuid_changed(&self, v: &mut SvmVcpu<H>, entries: &[kvm_cpuid_entry2]) {
        v.st.guest_xcr0 = entries
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map_or(0, |e| u64::from(e.eax) & crate::cpuid::SUPPORTED_XCR0);
    }

    fn queue_interrupt(&self, v: &mut SvmVcpu<H>, vector: u8) {
        v.st.pending_irq = Some(vector);
    }

    fn interrupt_queued(&self, v: &mut SvmVcpu<H>) -> bool {
        let (vmcb, s) = v.parts();
        s.pending_irq.is_some() || state::injected(vmcb).is_some_and(|e| e.kind == EventType::Intr)
    }

    fn queue_nmi(&self, v: &mut SvmVcpu<H>) {
        v.st.nmi_pending = true;
    }

    fn interrupt_allowed(&self, v: &mut SvmVcpu<H>) -> bool {
        sv::interrupt_allowed(v.vmcb())
    }

    fn if_flag(&self, v: &mut SvmVcpu<H>) -> bool {
        v.vmcb().save.rflags & (1 << 9) != 0
    }

    fn set_irq_window(&self, v: &mut SvmVcpu<H>, on: bool) {
        sv::set_irq_window(v.vmcb(), on);
    }

    fn get_cr8(&self, v: &mut SvmVcpu<H>) -> u64 {
        svm::state::get_cr8(v.vmcb())
    }

    fn set_cr8(&self, v: &mut SvmVcpu<H>, cr8: u64) -> KResult<()> {
        if cr8 & !0xf != 0 {
            return Err(EINVAL);
        }
        svm::state::set_cr8(v.vmcb(), cr8);
        Ok(())
    }

    fn get_apic_base(&self, v: &mut SvmVcpu<H>) -> u64 {
        v.st.apic_base
    }

    fn run<G: EntryGate>(&self, vm: &SvmVm<H>, v: &mut SvmVcpu<H>, gate: &G) -> Exit {
        {
            let (vmcb, s) = v.parts();
            self.inject_pending(vmcb, s);
        }
        match self.enter_once(vm, v, gate) {
            Some(Entered::Gated) => Exit::Continue,
            Some(Entered::Exited(d)) => {
                let e = self.handle(v, &d);
                if DEBUG_EXITS {
                    self.debug_exit(v, &e);
                }
                e
            }
            None => Exit::FailEntry { reason: 0 },
        }
    }

    fn complete_io(&self, v: &mut SvmVcpu<H>, c: IoCompletion) {
        if !Self::completion_live(v) {
            // No exit pending, or userspace moved RIP (e.g. QEMU's vapic): nothing to finish.
            v.st.pending_rip = None;
            return;
        }
        match c {
            IoCompletion::Write => {}
            IoCompletion::PioIn { size, value } => {
                let vmcb = v.vmcb();
                let rax = vmcb.save.rax;
                vmcb.save.rax = match size {
                    1 => (rax & !0xff) | u64::from(value & 0xff),
                    2 => (rax & !0xffff) | u64::from(value & 0xffff),
                    _ => u64::from(value),
                };
            }
            IoCompletion::MmioRead { len, data } => {
                let mut b = [0u8; 8];
                let n = usize::from(len).min(8);
                if let (Some(d), Some(s)) = (b.get_mut(..n), data.get(..n)) {
                    d.copy_from_slice(s);
                }
                v.vmcb().save.rax = u64::from_le_bytes(b);
            }
        }
        self.complete(v);
    }

    fn complete_cpuid(&self, v: &mut SvmVcpu<H>, r: CpuidResult) {
        if !Self::completion_live(v) {
            v.st.pending_rip = None;
            return;
        }
        {
            let (vmcb, s) = v.parts();
            vmcb.save.rax = u64::from(r.eax);
            s.extra.gprs.rbx = u64::from(r.ebx);
            s.extra.gprs.rcx = u64::from(r.ecx);
            s.extra.gprs.rdx = u64::from(r.edx);
        }
        self.complete(v);
    }

    fn complete_rdmsr(&self, v: &mut SvmVcpu<H>, value: Option<u64>) {
        match value {
            Some(x) => {
                if !Self::completion_live(v) {
                    v.st.pending_rip = None;
                    return;
                }
                {
                    let (vmcb, s) = v.parts();
                    vmcb.save.rax = x & 0xffff_ffff;
                    s.extra.gprs.rdx = x >> 32;
                }
                self.complete(v);
            }
            None => {
                v.st.pending_rip = None;
                sv::inject(v.vmcb(), exception(13, Some(0)));
            }
        }
    }

    fn complete_wrmsr(&self, v: &mut SvmVcpu<H>, ok: bool) {
        if ok {
            self.complete(v);
        } else {
            v.st.pending_rip = None;
            sv::inject(v.vmcb(), exception(13, Some(0)));
        }
    }

    fn queue_exception(&self, v: &mut SvmVcpu<H>, e: GuestException) {
        let vmcb = v.vmcb();
        if let Some(cr2) = e.cr2 {
            vmcb.save.cr2 = cr2;
            sv::mark_dirty(vmcb, CleanBits::CR2);
        }
        sv::inject(vmcb, exception(e.vector, e.error_code));
    }

    fn map_gfn(&self, vm: &SvmVm<H>, gfn: u64, hpa: u64, writable: bool) -> KResult<()> {
        vm.map(gfn, hpa, writable)
    }

    fn unmap_gfns(&self, vm: &SvmVm<H>, gfn: u64, npages: u64) {
        vm.unmap(gfn, npages)
    }
}
