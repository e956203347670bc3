//! Instruction emulation for MMIO and string port I/O (Linux `x86_emulate_instruction` and its
//! `emulator_*` callbacks): the core's [`emulate::Cpu`] for a vCPU.
//!
//! # State
//! Each vCPU owns, in the host heap (never on the kernel stack), an [`Emulator`] and an
//! [`EmuRegs`] snapshot. Every emulation step loads GPRs/RIP/RFLAGS (`get_regs`) and segments/
//! control registers (`get_sregs`) from the backend, runs [`Emulator::step`] and writes back
//! what changed (`set_regs`; `set_fpu` after an SSE move to an XMM register). XMM registers
//! are fetched (`get_fpu`) only when an SSE move asks for one. Nothing needs the backend's
//! instruction decoding: the emulator fetches the bytes at RIP and sets RIP itself, so
//! backends without NRIPS or decode assists (QEMU TCG's SVM) work the same.
//!
//! # Memory
//! - Linear addresses are translated with [`shadowpt::walk`] when CR0.PG = 1 (CR3, CR4, EFER,
//!   CPL, RFLAGS.AC; MAXPHYADDR and 1 GiB pages from the vCPU's CPUID). PAE PDPTEs are read
//!   from the PDPT at CR3 at each step, as AMD's nested paging does (VMX caches them at CR3
//!   load; a guest that rewrites live PDPTEs without reloading CR3 may see a difference).
//!   Guest #PF is returned to the emulator (which reports it as an exception to inject).
//! - Guest-physical addresses in a memslot are RAM: read and written with the host's
//!   copyin/copyout at the slot's user address, under the VM lock so the slot cannot go away
//!   meanwhile (as Linux's SRCU read side). Writes mark the dirty bitmap. An address outside
//!   every memslot, or a write to a `KVM_MEM_READONLY` slot, is MMIO (Linux semantics).
//! - Page-walk accessed/dirty updates need a compare-exchange on guest memory that other vCPUs
//!   (and the hardware walker) update concurrently: the page-table page is wired with the
//!   memslot's pin table (`Memslots::pin`) and the 64-bit entry word is accessed with an
//!   atomic `lock cmpxchg` through the page's kernel address (`Host::phys_kva`, the direct
//!   map), under the VM lock (unpins happen only under it). The word is 8-byte aligned inside
//!   a wired page of a registered slot; user memory is never dereferenced (SMAP) and nothing
//!   outside the slots is touched. A successful exchange marks the page dirty.
//! - MMIO: reads always go to userspace (`KVM_EXIT_MMIO`, at most 8 bytes each); a write that
//!   hits an ioeventfd signals it and completes in the kernel; else it goes to the coalesced
//!   MMIO ring when the range lies in a registered zone and the ring has room, else to
//!   userspace. Port output likewise: ioeventfds first (every element of a string batch must
//!   hit, or the batch goes on), then a coalesced PIO zone (every element of a batch, or none).
//!
//! # Outcomes (Linux behaviour)
//! - Exception: injected with [`Backend::queue_exception`] (CR2 for #PF). If an interrupt or
//!   NMI is already queued, it is delivered first and the faulting instruction simply runs
//!   again afterwards (the CPU recognises the interrupt at the instruction boundary).
//! - Unsupported instruction: with `KVM_CAP_EXIT_ON_EMULATION_FAILURE` enabled, or at CPL 0,
//!   `KVM_EXIT_INTERNAL_ERROR`/`KVM_INTERNAL_ERROR_EMULATION` with the instruction bytes
//!   (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`); without the capability #UD is
//!   queued as well, and at CPL > 0 the guest just gets the #UD (Linux
//!   `handle_emulation_failure`). Instructions are never skipped.
//! - Done: RFLAGS.RF is cleared, an STI/MOV SS interrupt shadow ends, and RFLAGS.TF raises a
//!   single-step #DB (DR6.BS) as after any instruction.
//! - A second-level fault taken while delivering an event is not emulated:
//!   `KVM_INTERNAL_ERROR_DELIVERY_EV`, as Linux does.
//!
//! # Limits
//! Guests with CR4.PKE or CR4.PKS (protection keys are not exposed in CPUID) get an emulation
//! failure instead of a protection-key check. The TSS I/O-bitmap reads of `INS`/`OUTS` at
//! CPL 3 are recognised by their address (inside TR's segment) and walked as implicit
//! supervisor accesses, since the emulator's interface does not mark them.

use core::cell::{Cell, RefCell};
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};

use emulate::{Access, Cpu, Emulator, Mem, Outcome, PageFault, Seg, Segment, IO_BUF};
use kvm_abi::{
    kvm_cpuid_entry2, kvm_fpu, kvm_regs, kvm_run, kvm_run_mmio, kvm_segment, kvm_sregs,
    kvm_vcpu_events,
};
use zerocopy::FromZeros;

use crate::backend::{Backend, GuestException};
use crate::cpuid;
use crate::errno::{KResult, EFAULT};
use crate::host::Host;
use crate::irqchip::lapic::Lapic;
use crate::vcpu::{Pending, Vcpu, VcpuState};
use crate::vm::Vm;

/// The initial emulator state, copied into each vCPU's heap box (it never passes the stack).
pub static EMULATOR_INIT: Emulator = Emulator::new();

/// The register snapshot the emulator works on, and staging for port-input data (host heap,
/// one per vCPU).
#[derive(FromZeros)]
pub struct EmuRegs {
    /// GPRs, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER.
    pub sregs: kvm_sregs,
    /// XMM registers (loaded only for SSE moves).
    pub fpu: kvm_fpu,
    /// Port-input data copied from the shared PIO page before `complete_read`.
    pub io: [u8; IO_BUF],
}

/// Why the core abandoned an emulation step (the emulator itself did not fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// A paging-structure entry kept changing while A/D bits were set: re-enter the guest,
    /// which executes the instruction again.
    Retry,
    /// A guest paging structure lies outside guest RAM (guest-physical address).
    PtNotRam(u64),
    /// Memslot memory could not be accessed (the process unmapped it): `KVM_RUN` → `EFAULT`.
    HostFault,
}

/// RFLAGS bits the core handles around an emulated instruction.
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const CR4_PKE: u64 = 1 << 22;
const CR4_PKS: u64 = 1 << 24;
/// DR6.BS: single-step trap.
const DR6_BS: u64 = 1 << 14;

/// `kvm_segment` → the emulator's segment.
fn segment(s: &kvm_segment) -> Segment {
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        typ: s.r#type,
        s: s.s != 0,
        dpl: s.dpl,
        present: s.present != 0,
        avl: s.avl != 0,
        l: s.l != 0,
        db: s.db != 0,
        g: s.g != 0,
        unusable: s.unusable != 0,
    }
}

/// CPL as the CPU defines it: 0 in real mode, 3 in virtual-8086 mode, else SS.DPL (which is
/// what `kvm_sregs` reports as the CPL on VMX and SVM alike).
fn cpl(regs: &kvm_regs, sregs: &kvm_sregs) -> u8 {
    if sregs.cr0 & 1 == 0 {
        0
    } else if regs.rflags & RFLAGS_VM != 0 {
        3
    } else {
        sregs.ss.dpl & 3
    }
}

/// MAXPHYADDR and 1 GiB-page support from the guest CPUID (Linux `cpuid_maxphyaddr`: 36 when
/// leaf 0x80000008 is absent).
fn cpu_model(cpuid: &[kvm_cpuid_entry2]) -> shadowpt::CpuModel {
    let m = (cpuid::lookup(cpuid, 0x8000_0008, 0).eax & 0xff) as u8;
    shadowpt::CpuModel {
        max_phys_addr: if m == 0 { 36 } else { m },
        gbpages: cpuid::lookup(cpuid, 0x8000_0001, 0).edx & (1 << 26) != 0,
    }
}

/// Guest page tables as the walker sees them: 64-bit words of wired memslot pages, accessed
/// atomically through their kernel address (see the module comment).
struct PtMem<'a, H: Host, B: Backend> {
    vm: &'a Vm<H, B>,
}

impl<H: Host, B: Backend> PtMem<'_, H, B> {
    /// Runs `f` on the atomic word at `gpa` with the page wired (writable if `write`) and the
    /// VM lock held; `dirty(result)` says whether to mark the page dirty.
    fn with_word<R>(
        &self,
        gpa: u64,
        write: bool,
        f: impl FnOnce(&AtomicU64) -> R,
        dirty: impl FnOnce(&R) -> bool,
    ) -> Result<R, shadowpt::NotRam> {
        let not_ram = shadowpt::NotRam { gpa };
        if gpa & 7 != 0 {
            return Err(not_ram);
        }
        let vm = self.vm;
        let mut st = vm.st.lock();
        let gfn = gpa >> 12;
        let p = st.slots.pin(vm.mm, gfn, write).map_err(|_| not_ram)?;
        if let Some(stale) = p.stale {
            // The writable wiring replaced a read-only one (maybe another page): the
            // second-level mapping of the old one goes (and is flushed) before it is unwired.
            vm.sys.backend.unmap_gfns(&vm.bvm, gfn, 1);
            st.slots.unpin_stale(vm.mm, stale);
        }
        let hpa = p.pa;
        let kva = vm.sys.host.phys_kva(hpa & !0xfff).ok_or(not_ram)?;
        // SAFETY: the page is wired by the memslot pin table and stays wired while the VM lock
        // (held here) is held: unpinning happens only under it. The offset is below 4096 and
        // 8-byte aligned, so the word lies inside the page and is aligned for AtomicU64. The
        // page is guest RAM that other CPUs access only through the hardware (plain or locked
        // accesses), for which a locked compare-exchange is the architectural way to update.
        let word = unsafe { AtomicU64::from_ptr(kva.as_ptr().add((gpa & 0xff8) as usize).cast()) };
        let r = f(word);
        if dirty(&r) {
            st.slots.mark_dirty(gfn);
        }
        Ok(r)
    }
}

impl<H: Host, B: Backend> shadowpt::GuestMemory for PtMem<'_, H, B> {
    fn read_u64(&self, gpa: u64) -> Result<u64, shadowpt::NotRam> {
        self.with_word(gpa, false, |w| w.load(Ordering::SeqCst), |_| false)
    }

    fn cmpxchg_u64(&self, gpa: u64, old: u64, new: u64) -> Result<bool, shadowpt::NotRam> {
        self.with_word(
            gpa,
            true,
            |w| {
                w.compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            },
            |ok| *ok,
        )
    }
}

/// The vCPU as the emulator sees it during one step.
pub struct EmuCpu<'a, H: Host, B: Backend> {
    vcpu: &'a Vcpu<H, B>,
    b: &'a B,
    bv: RefCell<&'a mut B::Vcpu>,
    regs: &'a mut kvm_regs,
    sregs: &'a kvm_sregs,
    fpu: RefCell<&'a mut kvm_fpu>,
    fpu_loaded: Cell<bool>,
    fpu_dirty: bool,
    regs_dirty: bool,
    paging: shadowpt::PagingRegs,
    model: shadowpt::CpuModel,
    abort: Option<Abort>,
    /// The in-kernel local APIC (split irqchip): its xAPIC page is MMIO handled here.
    lapic: Option<&'a mut Lapic>,
}

impl<H: Host, B: Backend> EmuCpu<'_, H, B> {
    fn cpl_now(&self) -> u8 {
        cpl(self.regs, self.sregs)
    }

    /// The TSS I/O-permission reads of INS/OUTS/IN/OUT (≤ 2 bytes inside TR's segment) are
    /// implicit supervisor accesses.
    fn implicit(&self, la: u64, kind: shadowpt::AccessKind, len: usize) -> bool {
        let tr = &self.sregs.tr;
        kind == shadowpt::AccessKind::Read
            && len <= 2
            && la >= tr.base
            && la - tr.base <= u64::from(tr.limit)
    }

    /// Linear → guest-physical. `Ok(None)` when the step is being abandoned.
    fn translate(&mut self, la: u64, access: Access, len: usize) -> Result<Option<u64>, PageFault> {
        if self.abort.is_some() {
            return Ok(None);
        }
        let kind = match access {
            Access::Read => shadowpt::AccessKind::Read,
            Access::ReadForWrite | Access::Write => shadowpt::AccessKind::Write,
            Access::Fetch => shadowpt::AccessKind::Fetch,
        };
        let implicit = self.implicit(la, kind, len);
        let a = shadowpt::Access {
            kind,
            cpl: if implicit { 0 } else { self.cpl_now() },
            implicit,
            ac: self.regs.rflags & RFLAGS_AC != 0,
            update_ad: true,
        };
        let mem = PtMem { vm: self.vcpu.vm() };
        match shadowpt::walk(&mem, &self.paging, &self.model, &a, la) {
            Ok(t) => Ok(Some(t.gpa)),
            Err(shadowpt::WalkError::PageFault(pf)) => Err(PageFault {
                error_code: pf.error_code,
                address: la,
            }),
            Err(shadowpt::WalkError::NotRam(n)) => {
                self.abort = Some(Abort::PtNotRam(n.gpa));
                Ok(None)
            }
            Err(shadowpt::WalkError::Contended) => {
                self.abort = Some(Abort::Retry);
                Ok(None)
            }
        }
    }

    fn load_fpu(&self) {
        if self.fpu_loaded.get() {
            return;
        }
        if let (Ok(mut bv), Ok(mut fpu)) = (self.bv.try_borrow_mut(), self.fpu.try_borrow_mut()) {
            self.b.get_fpu(&mut bv, &mut fpu);
            self.fpu_loaded.set(true);
        }
    }
}

impl<H: Host, B: Backend> Cpu for EmuCpu<'_, H, B> {
    fn gpr(&self, n: usize) -> u64 {
        let r = &*self.regs;
        match n {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => r.rsp,
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            15 => r.r15,
            _ => 0,
        }
    }
    fn set_gpr(&mut self, n: usize, value: u64) {
        let r = &mut *self.regs;
        let slot = match n {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => &mut r.rsp,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            15 => &mut r.r15,
            _ => return,
        };
        *slot = value;
        self.regs_dirty = true;
    }
    fn rip(&self) -> u64 {
        self.regs.rip
    }
    fn set_rip(&mut self, value: u64) {
        self.regs.rip = value;
        self.regs_dirty = true;
    }
    fn rflags(&self) -> u64 {
        self.regs.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.regs.rflags = value | 2;
        self.regs_dirty = true;
    }
    fn segment(&self, seg: Seg) -> Segment {
        let s = self.sregs;
        segment(match seg {
            Seg::Es => &s.es,
            Seg::Cs => &s.cs,
            Seg::Ss => &s.ss,
            Seg::Ds => &s.ds,
            Seg::Fs => &s.fs,
            Seg::Gs => &s.gs,
            Seg::Tr => &s.tr,
        })
    }
    fn cr0(&self) -> u64 {
        self.sregs.cr0
    }
    fn cr4(&self) -> u64 {
        self.sregs.cr4
    }
    fn efer(&self) -> u64 {
        self.sregs.efer
    }
    fn cpl(&self) -> u8 {
        self.cpl_now()
    }
    fn xmm(&self, n: usize) -> [u8; 16] {
        self.load_fpu();
        self.fpu
            .try_borrow()
            .ok()
            .and_then(|f| f.xmm.get(n).copied())
            .unwrap_or([0; 16])
    }
    fn set_xmm(&mut self, n: usize, value: [u8; 16]) {
        self.load_fpu();
        if let Some(x) = self.fpu.get_mut().xmm.get_mut(n) {
            *x = value;
            self.fpu_dirty = true;
        }
    }
    fn read_linear(&mut self, la: u64, buf: &mut [u8], access: Access) -> Result<Mem, PageFault> {
        let Some(gpa) = self.translate(la, access, buf.len())? else {
            buf.fill(0);
            return Ok(Mem::Ram);
        };
        let vm = self.vcpu.vm();
        let st = vm.st.lock();
        let Ok(uaddr) = st.slots.gpa_to_uaddr(gpa, false) else {
            return Ok(Mem::Mmio(gpa));
        };
        if !buf.is_empty() && vm.sys.host.copyin(buf, uaddr).is_err() {
            buf.fill(0);
            self.abort = Some(Abort::HostFault);
        }
        Ok(Mem::Ram)
    }
    fn write_linear(&mut self, la: u64, data: &[u8]) -> Result<Mem, PageFault> {
        let Some(gpa) = self.translate(la, Access::Write, data.len())? else {
            return Ok(Mem::Ram);
        };
        let vm = self.vcpu.vm();
        let mut st = vm.st.lock();
        let Ok(uaddr) = st.slots.gpa_to_uaddr(gpa, true) else {
            // Outside every slot, or a read-only slot: the write is MMIO.
            return Ok(Mem::Mmio(gpa));
        };
        if !data.is_empty() {
            if vm.sys.host.copyout(uaddr, data).is_err() {
                self.abort = Some(Abort::HostFault);
            } else {
                st.slots.mark_dirty(gpa >> 12);
            }
        }
        Ok(Mem::Ram)
    }
    fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        // The in-kernel local APIC's page; every other MMIO read goes to userspace.
        let apic = match self.lapic.as_deref_mut() {
            Some(l) => self.vcpu.apic_access(l, gpa, buf, false),
            None => false,
        };
        apic || crate::irqchip::ioapic_mmio(self.vcpu.vm(), gpa, buf, false)
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        if self.abort.is_some() {
            // The step is being abandoned: nothing may reach a device.
            return true;
        }
        if let Some(l) = self.lapic.as_deref_mut() {
            let mut v = [0u8; 8];
            let n = data.len().min(8);
            if let (Some(d), Some(s)) = (v.get_mut(..n), data.get(..n)) {
                d.copy_from_slice(s);
            }
            if self
                .vcpu
                .apic_access(l, gpa, v.get_mut(..n).unwrap_or(&mut []), true)
            {
                return true;
            }
        }
        let vm = self.vcpu.vm();
        let mut v = [0u8; 8];
        let n = data.len().min(8);
        if let (Some(d), Some(s)) = (v.get_mut(..n), data.get(..n)) {
            d.copy_from_slice(s);
            if crate::irqchip::ioapic_mmio(vm, gpa, d, true) {
                return true;
            }
        }
        if vm.ioeventfds.write(false, gpa, data) {
            return true;
        }
        let Ok(len) = u8::try_from(data.len()) else {
            return false;
        };
        vm.coalesced(gpa, u32::from(len), false) && self.vcpu.ring_push_n(gpa, data, len, 1, false)
    }
    fn pio_in(&mut self, port: u16, size: u8, buf: &mut [u8]) -> bool {
        if self.abort.is_some() {
            return true;
        }
        self.vcpu.pit_pio_in_string(port, size, buf)
    }
    fn pio_out(&mut self, port: u16, size: u8, data: &[u8]) -> bool {
        if self.abort.is_some() {
            return true;
        }
        if self.vcpu.pit_pio_out_string(port, size, data) {
            return true;
        }
        let vm = self.vcpu.vm();
        let count = data.len() / usize::from(size.max(1));
        if vm
            .ioeventfds
            .write_n(true, u64::from(port), data, usize::from(size), count)
        {
            return true;
        }
        vm.coalesced(u64::from(port), u32::from(size), true)
            && self
                .vcpu
                .ring_push_n(u64::from(port), data, size, count, true)
    }
}

/// What the run loop does after an emulation step.
pub enum EmuStep {
    /// Re-enter the guest.
    Continue,
    /// `kvm_run` holds an exit: return to userspace.
    ToUser,
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    /// Whether an event is queued or being re-injected (then the core queues no exception).
    fn event_queued(ev: &kvm_vcpu_events) -> bool {
        ev.exception.injected != 0
            || ev.exception.pending != 0
            || ev.nmi.injected != 0
            || ev.nmi.pending != 0
            || ev.interrupt.injected != 0
    }

    /// Emulates the instruction at RIP after a fresh exit (`PageFault` outside RAM, or
    /// `IoString`); `gpa` is the faulting address for the diagnostics of a refusal.
    pub fn emulate_exit(&self, st: &mut VcpuState<H, B>, gpa: u64) -> KResult<EmuStep> {
        let b = &self.vm().sys.backend;
        let mut ev = kvm_vcpu_events::new_zeroed();
        b.get_events(&mut st.b, &mut ev);
        // The exit interrupted the delivery of an event (e.g. the IDT or the stack is MMIO):
        // the instruction at RIP is not the one that faulted. Linux refuses the same way.
        let delivering = if ev.exception.injected != 0 {
            Some((ev.exception.nr, 3u64))
        } else if ev.nmi.injected != 0 {
            Some((2, 2))
        } else if ev.interrupt.injected != 0 {
            Some((ev.interrupt.nr, if ev.interrupt.soft != 0 { 4 } else { 0 }))
        } else {
            None
        };
        if let Some((vector, ty)) = delivering {
            st.emu.reset();
            let info = u64::from(vector) | (ty << 8) | (1 << 31);
            let cpu = u64::from(self.vm().sys.host.cpu_current());
            self.set_internal_data(
                kvm_abi::KVM_INTERNAL_ERROR_DELIVERY_EV,
                &[info, 0, 0, gpa, cpu],
            );
            return Ok(EmuStep::ToUser);
        }
        self.emulate_step(st, &ev)
    }

    /// Finishes an emulated access userspace performed (`KVM_RUN` after an emulator exit):
    /// hands read data to the emulator and continues the instruction.
    pub fn emulate_resume(
        &self,
        st: &mut VcpuState<H, B>,
        exit: emulate::Exit,
    ) -> KResult<EmuStep> {
        let ok = match exit {
            emulate::Exit::MmioRead { len, .. } => {
                // SAFETY: live run page of this vCPU; the union member starts at the union's
                // offset; a volatile read of plain bytes (userspace may write concurrently).
                let m = unsafe {
                    addr_of!((*self.run.va().cast::<kvm_run>()).u)
                        .cast::<kvm_run_mmio>()
                        .read_volatile()
                };
                let n = usize::from(len).min(8);
                st.emu.complete_read(m.data.get(..n).unwrap_or(&[]))
            }
            emulate::Exit::PioIn { size, count, .. } => {
                let n = (usize::from(size) * count as usize).min(IO_BUF);
                for (i, d) in st.ectx.io.iter_mut().enumerate().take(n) {
                    // SAFETY: the PIO page is a live page of this vCPU; i < IO_BUF ≤ 4096.
                    *d = unsafe { self.pio.va().add(i).read_volatile() };
                }
                let data = st.ectx.io.get(..n).unwrap_or(&[]);
                st.emu.complete_read(data)
            }
            emulate::Exit::MmioWrite { .. } | emulate::Exit::PioOut { .. } => true,
        };
        if !ok {
            // The emulator and the pending exit disagree: never guess, report it.
            st.emu.reset();
            self.set_emulation_failure(None, &[]);
            return Ok(EmuStep::ToUser);
        }
        let b = &self.vm().sys.backend;
        let mut ev = kvm_vcpu_events::new_zeroed();
        b.get_events(&mut st.b, &mut ev);
        self.emulate_step(st, &ev)
    }

    /// One `Emulator::step` against the vCPU, then its outcome.
    fn emulate_step(&self, st: &mut VcpuState<H, B>, ev: &kvm_vcpu_events) -> KResult<EmuStep> {
        let vm = self.vm();
        let b = &vm.sys.backend;
        let VcpuState {
            b: bv,
            emu,
            ectx,
            cpuid,
            pending,
            lapic,
            ..
        } = st;
        let ectx = &mut **ectx;
        b.get_regs(bv, &mut ectx.regs);
        b.get_sregs(bv, &mut ectx.sregs);
        let old_rflags = ectx.regs.rflags;
        let sregs = &ectx.sregs;
        let paging_on = sregs.cr0 & shadowpt::CR0_PG != 0;
        if paging_on && sregs.cr4 & (CR4_PKE | CR4_PKS) != 0 {
            // Protection keys are not exposed; no key check is better than a wrong one.
            emu.reset();
            self.set_emulation_failure(None, &[sregs.cr4]);
            return Ok(EmuStep::ToUser);
        }
        let mut paging = shadowpt::PagingRegs {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            ..Default::default()
        };
        let model = cpu_model(cpuid.as_deref().unwrap_or(&[]));
        if paging.mode() == shadowpt::PagingMode::Pae {
            // PDPTEs outside RAM or with reserved bits: leave them not present (#PF).
            let mem = PtMem { vm };
            paging.pdptes = shadowpt::load_pdptes(&mem, paging.cr3, &model).unwrap_or([0; 4]);
        }
        let mut cpu = EmuCpu {
            vcpu: self,
            b,
            bv: RefCell::new(bv),
            regs: &mut ectx.regs,
            sregs: &ectx.sregs,
            fpu: RefCell::new(&mut ectx.fpu),
            fpu_loaded: Cell::new(false),
            fpu_dirty: false,
            regs_dirty: false,
            paging,
            model,
            abort: None,
            lapic: lapic.as_deref_mut(),
        };
        let outcome = emu.step(&mut cpu);
        let (abort, regs_dirty, fpu_dirty) = (cpu.abort, cpu.regs_dirty, cpu.fpu_dirty);
        if let Some(a) = abort {
            emu.reset();
            return match a {
                Abort::Retry => Ok(EmuStep::Continue),
                Abort::HostFault => Err(EFAULT),
                Abort::PtNotRam(gpa) => {
                    self.set_emulation_failure(None, &[gpa]);
                    Ok(EmuStep::ToUser)
                }
            };
        }
        let cpl = cpl(&ectx.regs, &ectx.sregs);
        let done = outcome == Outcome::Done;
        let mut write_regs = regs_dirty;
        if done && ectx.regs.rflags & RFLAGS_RF != 0 {
            // A completed instruction clears RF (SDM 17.3.1.1).
            ectx.regs.rflags &= !RFLAGS_RF;
            write_regs = true;
        }
        if write_regs {
            b.set_regs(bv, &ectx.regs);
        }
        if fpu_dirty {
            b.set_fpu(bv, &ectx.fpu);
        }
        match outcome {
            Outcome::Done => {
                if ev.interrupt.shadow != 0 {
                    // The instruction the STI/MOV SS shadow covered has executed.
                    let mut n = *ev;
                    n.flags |= kvm_abi::KVM_VCPUEVENT_VALID_SHADOW
                        | kvm_abi::KVM_VCPUEVENT_VALID_NMI_PENDING;
                    n.interrupt.shadow = 0;
                    b.set_events(bv, &n)?;
                }
                if old_rflags & RFLAGS_TF != 0 && !Self::event_queued(ev) {
                    let mut dr = kvm_abi::kvm_debugregs::new_zeroed();
                    b.get_debugregs(bv, &mut dr);
                    dr.dr6 = (dr.dr6 & !0xf) | DR6_BS;
                    b.set_debugregs(bv, &dr)?;
                    b.queue_exception(
                        bv,
                        GuestException {
                            vector: 1,
                            error_code: None,
                            cr2: None,
                        },
                    );
                }
                Ok(EmuStep::Continue)
            }
            Outcome::NeedsUserspace(exit) => {
                *pending = Pending::Emulated(exit);
                self.emulated_exit(emu, exit);
                Ok(EmuStep::ToUser)
            }
            Outcome::Exception(e) => {
                if !Self::event_queued(ev) {
                    b.queue_exception(
                        bv,
                        GuestException {
                            vector: e.vector,
                            error_code: e.error_code,
                            cr2: e.cr2,
                        },
                    );
                }
                Ok(EmuStep::Continue)
            }
            Outcome::Unsupported { bytes, len } => {
                let bytes = bytes.get(..usize::from(len)).unwrap_or(&[]);
                let exit_on_failure = vm.exit_on_emulation_failure();
                if !exit_on_failure && !Self::event_queued(ev) {
                    b.queue_exception(
                        bv,
                        GuestException {
                            vector: emulate::outcome::vector::UD,
                            error_code: None,
                            cr2: None,
                        },
                    );
                }
                if exit_on_failure || cpl == 0 {
                    self.set_emulation_failure(Some(bytes), &[]);
                    Ok(EmuStep::ToUser)
                } else {
                    Ok(EmuStep::Continue)
                }
            }
        }
    }
}
