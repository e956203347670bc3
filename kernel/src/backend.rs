//! The hardware backend interface (VMX or SVM): what the core asks of one.
//!
//! Modelled on the part of Linux's `kvm_x86_ops` a userspace-irqchip VMM needs, kept small:
//! create/destroy, guest state in `kvm_abi` types, run until a [`Exit`], event injection and
//! the interrupt window. Dispatch is static: the core is generic over `B: Backend`, and the
//! kernel object instantiates it with one concrete type (an enum over VMX/SVM once they exist).
//!
//! Instruction emulation (MMIO, string I/O: `run.rs`, `emul.rs`) uses only these methods:
//! `get_regs`/`set_regs` (GPRs, RIP, RFLAGS, written back between exits: `set_regs` must not
//! disturb queued events), `get_sregs` (segments, CR0/CR3/CR4, EFER, CPL = SS.DPL), `get_fpu`/
//! `set_fpu` (XMM registers, only for SSE moves), `get_events`/`set_events` (event-delivery
//! check, clearing the STI/MOV SS shadow), `get_debugregs`/`set_debugregs` (RFLAGS.TF
//! single-step) and `queue_exception`.

use kvm_abi::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};

use crate::errno::KResult;

/// CPUID output registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Why the guest stopped running, normalized across VMX and SVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Handled by the backend (or a host interrupt / kick); re-enter unless something is pending.
    Continue,
    /// `IN`/`OUT` of `size` bytes (1, 2, 4) at `port`; for `OUT`, `data` holds the value. The
    /// instruction completes through [`Backend::complete_io`].
    Io {
        port: u16,
        size: u8,
        out: bool,
        data: u32,
    },
    /// `INS`/`OUTS` (with or without `REP`): the core emulates the instruction at RIP with
    /// `emulate/`. RIP must still point at the instruction; the fields are informational (the
    /// core decodes the instruction itself, so no instruction length or decode assist is needed).
    IoString { port: u16, size: u8, out: bool },
    /// A decoded MMIO access of `len` (1..=8) bytes at `gpa`; for writes `data` holds the bytes.
    /// Completes through [`Backend::complete_mmio`].
    Mmio {
        gpa: u64,
        len: u8,
        write: bool,
        data: [u8; 8],
    },
    /// A second-level page fault at `gpa` (EPT violation / NPF): the core maps guest memory or,
    /// outside every memslot (or for a write to a read-only slot), emulates the instruction at
    /// RIP as MMIO. RIP must point at the faulting instruction; the backend need not decode it
    /// (no NRIPS / decode assists / instruction length needed: the emulator fetches and decodes
    /// it and sets RIP). If the fault happened while delivering an event, the backend must report
    /// that event as injected in `get_events` (the core then reports
    /// `KVM_INTERNAL_ERROR_DELIVERY_EV` instead of emulating, as Linux does).
    PageFault { gpa: u64, write: bool, fetch: bool },
    /// `HLT` (RIP already past it).
    Hlt,
    /// The interrupt window requested by [`Backend::set_irq_window`] opened.
    IrqWindow,
    /// `CPUID` with EAX=`leaf`, ECX=`subleaf`: complete with [`Backend::complete_cpuid`].
    Cpuid { leaf: u32, subleaf: u32 },
    /// `RDMSR` of `index`: complete with [`Backend::complete_rdmsr`].
    Rdmsr { index: u32 },
    /// `WRMSR` of `data` to `index`: complete with [`Backend::complete_wrmsr`].
    Wrmsr { index: u32, data: u64 },
    /// Triple fault or other shutdown condition.
    Shutdown,
    /// VM entry failed with this hardware reason.
    FailEntry { reason: u64 },
    /// The backend cannot continue (`KVM_INTERNAL_ERROR_*` suberror).
    Internal { suberror: u32 },
}

/// How an I/O or MMIO exit completes after userspace handled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCompletion {
    /// `OUT` / MMIO write: just finish the instruction.
    Write,
    /// `IN` of `size` bytes: the value read (zero-extended).
    PioIn { size: u8, value: u32 },
    /// MMIO read of `len` bytes.
    MmioRead { len: u8, data: [u8; 8] },
}

/// An exception the core asks the backend to deliver at the next guest entry
/// ([`Backend::queue_exception`]), e.g. a fault raised by an emulated instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestException {
    /// Vector (0..=31).
    pub vector: u8,
    /// Error code to push, for the vectors that have one.
    pub error_code: Option<u32>,
    /// For #PF: the faulting linear address, loaded into CR2 before delivery.
    pub cr2: Option<u64>,
}

/// A VMX or SVM implementation.
pub trait Backend: Sync + 'static {
    /// Per-VM backend state (second-level tables, ASID/VPID, ...).
    type Vm: Send + Sync;
    /// Per-vCPU backend state (VMCS/VMCB, saved guest registers, ...). Dropped at teardown.
    type Vcpu: Send;

    /// Short name for logs ("vmx", "svm", "soft").
    fn name(&self) -> &'static str;
    /// The host CPU's CPUID (the input of `KVM_GET_SUPPORTED_CPUID`).
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;

    /// Creates the per-VM state.
    fn vm_create(&self) -> KResult<Self::Vm>;
    /// Creates vCPU `id` in its power-on state (Intel SDM 10.1.1 / APM 14.1.3).
    fn vcpu_create(&self, vm: &Self::Vm, id: u32) -> KResult<Self::Vcpu>;

    /// Reads the general-purpose registers.
    fn get_regs(&self, v: &mut Self::Vcpu, out: &mut kvm_regs);
    /// Writes the general-purpose registers (RIP and RFLAGS included); queued events stay.
    fn set_regs(&self, v: &mut Self::Vcpu, regs: &kvm_regs);
    /// Reads segment, control and descriptor-table registers and the pending-interrupt bitmap.
    fn get_sregs(&self, v: &mut Self::Vcpu, out: &mut kvm_sregs);
    /// Writes them; `EINVAL` for states the CPU cannot hold.
    fn set_sregs(&self, v: &mut Self::Vcpu, sregs: &kvm_sregs) -> KResult<()>;
    /// Reads the legacy FPU/SSE state.
    fn get_fpu(&self, v: &mut Self::Vcpu, out: &mut kvm_fpu);
    /// Writes the legacy FPU/SSE state.
    fn set_fpu(&self, v: &mut Self::Vcpu, fpu: &kvm_fpu);
    /// Reads the XSAVE area (standard format).
    fn get_xsave(&self, v: &mut Self::Vcpu, out: &mut kvm_xsave);
    /// Writes the XSAVE area; `EINVAL` for features the guest may not use.
    fn set_xsave(&self, v: &mut Self::Vcpu, xsave: &kvm_xsave) -> KResult<()>;
    /// Reads XCR0.
    fn get_xcrs(&self, v: &mut Self::Vcpu, out: &mut kvm_xcrs);
    /// Writes XCR0; `EINVAL` when invalid.
    fn set_xcrs(&self, v: &mut Self::Vcpu, xcrs: &kvm_xcrs) -> KResult<()>;
    /// Reads an MSR (`host` = from `KVM_GET_MSRS`); `Err` when unsupported.
    fn get_msr(&self, v: &mut Self::Vcpu, index: u32, host: bool) -> KResult<u64>;
    /// Writes an MSR (`host` = from `KVM_SET_MSRS`); `Err` when unsupported or invalid.
    fn set_msr(&self, v: &mut Self::Vcpu, index: u32, data: u64, host: bool) -> KResult<()>;
    /// Reads pending/injected exception, interrupt, NMI state and the interrupt shadow.
    fn get_events(&self, v: &mut Self::Vcpu, out: &mut kvm_vcpu_events);
    /// Writes them (flags already validated by the core).
    fn set_events(&self, v: &mut Self::Vcpu, ev: &kvm_vcpu_events) -> KResult<()>;
    /// Reads DR0-3, DR6, DR7.
    fn get_debugregs(&self, v: &mut Self::Vcpu, out: &mut kvm_debugregs);
    /// Writes DR0-3, DR6, DR7; `EINVAL` for reserved bits set in the upper halves.
    fn set_debugregs(&self, v: &mut Self::Vcpu, dr: &kvm_debugregs) -> KResult<()>;
    /// The guest CPUID table changed (`KVM_SET_CPUID2`).
    fn cpuid_changed(&self, v: &mut Self::Vcpu, entries: &[kvm_cpuid_entry2]);

    /// Queues external interrupt `vector` (userspace irqchip, `KVM_INTERRUPT`) for the next entry.
    fn queue_interrupt(&self, v: &mut Self::Vcpu, vector: u8);
    /// Whether an interrupt is queued and not yet delivered.
    fn interrupt_queued(&self, v: &mut Self::Vcpu) -> bool;
    /// Queues an NMI (`KVM_NMI`).
    fn queue_nmi(&self, v: &mut Self::Vcpu);
    /// Whether the guest can take an external interrupt now (RFLAGS.IF, no STI/MOV SS shadow,
    /// no event being delivered).
    fn interrupt_allowed(&self, v: &mut Self::Vcpu) -> bool;
    /// RFLAGS.IF.
    fn if_flag(&self, v: &mut Self::Vcpu) -> bool;
    /// Requests (or cancels) an [`Exit::IrqWindow`] when interrupts become allowed.
    fn set_irq_window(&self, v: &mut Self::Vcpu, on: bool);
    /// CR8 (TPR), as `kvm_run.cr8` reports it.
    fn get_cr8(&self, v: &mut Self::Vcpu) -> u64;
    /// Writes CR8 from `kvm_run.cr8` (userspace irqchip); `EINVAL` for reserved bits.
    fn set_cr8(&self, v: &mut Self::Vcpu, cr8: u64) -> KResult<()>;
    /// `IA32_APIC_BASE`, as `kvm_run.apic_base` reports it.
    fn get_apic_base(&self, v: &mut Self::Vcpu) -> u64;

    /// Enters the guest until the next exit the backend cannot handle alone. Immediately
    /// before the world switch, with host interrupts and preemption off, the backend calls
    /// `gate.enter(cpu)`; when that says to stay out, it returns [`Exit::Continue`] without
    /// entering (the pending event is kept for the next entry).
    fn run<G: EntryGate>(&self, vm: &Self::Vm, v: &mut Self::Vcpu, gate: &G) -> Exit;
    /// Completes an [`Exit::Io`] or [`Exit::Mmio`] (writes the read value, advances RIP).
    fn complete_io(&self, v: &mut Self::Vcpu, c: IoCompletion);
    /// Completes an [`Exit::Cpuid`] with the core's answer (and advances RIP).
    fn complete_cpuid(&self, v: &mut Self::Vcpu, r: CpuidResult);
    /// Completes an [`Exit::Rdmsr`]: `Some(value)` into EDX:EAX, `None` injects #GP.
    fn complete_rdmsr(&self, v: &mut Self::Vcpu, value: Option<u64>);
    /// Completes an [`Exit::Wrmsr`]: `true` advances RIP, `false` injects #GP.
    fn complete_wrmsr(&self, v: &mut Self::Vcpu, ok: bool);
    /// Queues exception `e` for delivery at the next entry (hardware event injection: VMX
    /// VM-entry interruption information, SVM EVENTINJ), with CR2 loaded first for #PF.
    /// RIP/RFLAGS are whatever the core last wrote with `set_regs` (the emulator leaves RIP at
    /// the faulting instruction). The core calls this only when `get_events` shows no
    /// exception, NMI or interrupt queued or being re-injected, so the backend never has to
    /// combine events (double fault rules). Linux: `kvm_x86_ops.inject_exception`.
    fn queue_exception(&self, v: &mut Self::Vcpu, e: GuestException);
    /// Maps guest frame `gfn` to host physical `hpa` in the VM's second-level tables.
    fn map_gfn(&self, vm: &Self::Vm, gfn: u64, hpa: u64, writable: bool) -> KResult<()>;
    /// Removes second-level mappings of `[gfn, gfn + npages)` (slot deleted or moved).
    fn unmap_gfns(&self, vm: &Self::Vm, gfn: u64, npages: u64);
}

/// The core's last look before a guest entry (Linux: `vcpu->mode = IN_GUEST_MODE`, then the
/// request and signal checks with interrupts off). A sender that posts an interrupt, or a
/// signal, first makes its event visible and then kicks the CPU the vCPU runs on; checking
/// here, after the CPU is published and with interrupts off, closes the window in which the
/// kick's IPI would be taken by the host before the entry and the guest would then run on
/// without the event.
pub trait EntryGate {
    /// Called on host CPU `cpu` with interrupts and preemption disabled, just before the
    /// world switch. Records that the vCPU runs on `cpu`; returns `true` when the entry must
    /// be abandoned (a signal is pending or an event was posted since the last check).
    fn enter(&self, cpu: u32) -> bool;
}
