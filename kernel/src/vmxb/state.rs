//! VMX vCPU state kept in memory beside the VMCS: the register cache (RIP, RSP, RFLAGS and
//! interruptibility are read after every exit and written before every entry, so the core's
//! frequent register accesses never need the VMCS), the event queue, the MSRs the VMCS does not
//! hold, and the `KVM_{GET,SET}_VCPU_EVENTS` conversion.

use kvm_abi::kvm_vcpu_events;
use vmx::caps::Controls;
use vmx::exit::{Event, EventType};
use vmx::state::{interruptibility, GuestExtra, HostState, RFLAGS_IF};
use zerocopy::FromZeros;

use crate::msrs::{self, MsrStore};

/// Per-vCPU software state of the VMX backend (heap; the VMCS lives in its own page).
pub struct VmxVcpuState {
    /// GPRs (the world switch's `GuestRegs`), CR2, DR0–DR3, DR6, CR8.
    pub extra: GuestExtra,
    /// Guest RIP.
    pub rip: u64,
    /// Guest RSP.
    pub rsp: u64,
    /// Guest RFLAGS.
    pub rflags: u64,
    /// Guest interruptibility state (STI / MOV SS / NMI blocking).
    pub intr: u32,
    /// The VM-execution controls of this vCPU (guest CPUID decides RDTSCP/INVPCID/XSAVES).
    pub ctl: Controls,
    /// Index among the VM's vCPUs (slot in the VM's running table).
    pub index: u32,
    /// vCPU id.
    pub id: u32,
    /// VPID (0 when VPID is off).
    pub vpid: u16,
    /// The VM's TLB generation this vCPU last invalidated for.
    pub tlb_gen: u64,
    /// The CPU this vCPU last entered the guest on (`u32::MAX`: none).
    pub last_cpu: u32,
    /// Guest XCR0.
    pub xcr0: u64,
    /// XCR0 bits the guest CPUID allows (leaf 0Dh.0 EAX).
    pub guest_xcr0: u64,
    /// MSRs kept in memory (the core's store).
    pub msrs: MsrStore,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// SYSCALL MSRs and KERNEL_GS_BASE: switched by software around each entry.
    pub star: u64,
    /// `IA32_LSTAR`.
    pub lstar: u64,
    /// `IA32_CSTAR`.
    pub cstar: u64,
    /// `IA32_FMASK`.
    pub sfmask: u64,
    /// `IA32_KERNEL_GS_BASE`.
    pub kernel_gs_base: u64,
    /// TSC offset.
    pub tsc_offset: u64,
    /// The event to inject at the next entry (VM-entry interruption information).
    pub inject: Option<Event>,
    /// Instruction length for an injected software interrupt/exception.
    pub inject_len: u32,
    /// `KVM_INTERRUPT` vector not yet injected.
    pub pending_irq: Option<u8>,
    /// `KVM_NMI` not yet injected.
    pub nmi_pending: bool,
    /// Userspace asked for an interrupt-window exit.
    pub irq_window: bool,
    /// The host state last written to the VMCS's host-state area.
    pub host_state: Option<HostState>,
    /// The instruction whose exit the core is completing: its RIP and the RIP after it.
    pub pending_rip: Option<(u64, u64)>,
}

impl VmxVcpuState {
    /// Power-on state of the fields outside the VMCS.
    pub fn new(id: u32, index: u32, ctl: Controls, vpid: u16) -> Self {
        let apic_base = 0xfee0_0000 | (1 << 11) | if id == 0 { 1 << 8 } else { 0 };
        let mut msrs = MsrStore::new_zeroed();
        msrs.reset();
        let _ = msrs.set(msrs::MSR_IA32_APICBASE, apic_base, true);
        Self {
            extra: GuestExtra {
                dr6: 0xffff_0ff0,
                ..GuestExtra::default()
            },
            rip: 0xfff0,
            rsp: 0,
            rflags: 2,
            intr: 0,
            ctl,
            index,
            id,
            vpid,
            tlb_gen: u64::MAX,
            last_cpu: u32::MAX,
            xcr0: 1,
            guest_xcr0: 0,
            msrs,
            apic_base,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            kernel_gs_base: 0,
            tsc_offset: 0,
            inject: None,
            inject_len: 0,
            pending_irq: None,
            nmi_pending: false,
            irq_window: false,
            pending_rip: None,
            host_state: None,
        }
    }

    /// The guest can take an external interrupt now.
    pub fn interrupt_allowed(&self) -> bool {
        self.rflags & RFLAGS_IF != 0
            && self.intr & (interruptibility::STI | interruptibility::MOV_SS) == 0
            && self.inject.is_none()
    }

    /// The guest can take an NMI now (no NMI blocking, no shadow: some processors refuse
    /// NMI injection with STI blocking).
    pub fn nmi_allowed(&self) -> bool {
        self.intr & (interruptibility::STI | interruptibility::MOV_SS | interruptibility::NMI) == 0
            && self.inject.is_none()
    }
}

/// `KVM_GET_VCPU_EVENTS` (the core sets the flags).
pub fn get_events(s: &VmxVcpuState, out: &mut kvm_vcpu_events) {
    if let Some(ev) = s.inject {
        match ev.kind {
            EventType::ExternalInterrupt | EventType::SoftwareInterrupt => {
                out.interrupt.injected = 1;
                out.interrupt.nr = ev.vector;
                out.interrupt.soft = u8::from(ev.kind == EventType::SoftwareInterrupt);
            }
            EventType::Nmi => out.nmi.injected = 1,
            _ => {
                out.exception.injected = 1;
                out.exception.nr = ev.vector;
                out.exception.has_error_code = u8::from(ev.error_code.is_some());
                out.exception.error_code = ev.error_code.unwrap_or(0);
            }
        }
    }
    if let Some(vec) = s.pending_irq {
        out.interrupt.injected = 1;
        out.interrupt.nr = vec;
        out.interrupt.soft = 0;
    }
    vmx::state::events_from_interruptibility(s.intr, out);
    out.nmi.pending = u8::from(s.nmi_pending);
}

/// `KVM_SET_VCPU_EVENTS` (validated and merged by the core).
pub fn set_events(s: &mut VmxVcpuState, ev: &kvm_vcpu_events) {
    s.inject = None;
    s.inject_len = 0;
    s.pending_irq = None;
    if ev.exception.injected != 0 {
        let ec = ev.exception.has_error_code != 0;
        s.inject = Some(Event {
            vector: ev.exception.nr,
            kind: if matches!(ev.exception.nr, 3 | 4) {
                EventType::SoftwareException
            } else {
                EventType::HardwareException
            },
            error_code: ec.then_some(ev.exception.error_code),
        });
    } else if ev.nmi.injected != 0 {
        s.inject = Some(Event {
            vector: 2,
            kind: EventType::Nmi,
            error_code: None,
        });
    }
    if ev.interrupt.injected != 0 {
        if ev.interrupt.soft != 0 {
            if s.inject.is_none() {
                s.inject = Some(Event {
                    vector: ev.interrupt.nr,
                    kind: EventType::SoftwareInterrupt,
                    error_code: None,
                });
            }
        } else {
            s.pending_irq = Some(ev.interrupt.nr);
        }
    }
    s.intr = vmx::state::interruptibility_from_events(ev, s.rflags, s.intr);
    s.nmi_pending = ev.nmi.pending != 0;
}
