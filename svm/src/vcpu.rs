//! One vCPU's VMCB over its life: initial programming, what happens before and after each
//! VMRUN (ASID, TLB control, clean bits, DR0–DR3, decoding), and event injection.
//!
//! The caller (the core's backend adapter) owns the pages: the VMCB, the permission maps, the
//! host save area and the host VMSAVE page all come from the host's page allocator.

use crate::asid::{AsidAllocator, VcpuAsid};
use crate::cpuid::SvmCaps;
use crate::exit::{decode, DecodedExit};
use crate::hw::SvmHw;
use crate::intercept::{set_interrupt_window, DebugIntercepts, InterceptMisc1, Intercepts, Paging};
use crate::state::{GuestExtra, EFER_SVME, RFLAGS_FIXED};
use crate::vmcb::{
    CleanBits, EventInj, EventType, IntCtl, TlbControl, Vmcb, VmcbSegment, EVENTINJ_VALID,
    INT_STATE_SHADOW, NP_ENABLE,
};

/// The power-on PAT (APM vol. 2 §7.8.2): WB, WT, UC-, UC, WB, WT, UC-, UC.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// Where a vCPU's VMCB points.
#[derive(Debug, Clone, Copy)]
pub struct VmcbSetup {
    /// Physical address of the 12 KiB I/O permission map.
    pub iopm_pa: u64,
    /// Physical address of the 8 KiB MSR permission map.
    pub msrpm_pa: u64,
    /// Nested or shadow paging (shadow is refused by `cpuid::check_usable` for now).
    pub paging: Paging,
    /// Root of the nested page tables (ept/'s NPT format), with nested paging.
    pub n_cr3: u64,
}

/// Programs `vmcb` for a new vCPU in the x86 reset state (APM vol. 2 §14.1.3, the values
/// KVM reports after `KVM_CREATE_VCPU`).
pub fn init_vmcb(vmcb: &mut Vmcb, setup: &VmcbSetup) {
    vmcb.clear();
    let c = &mut vmcb.control;
    Intercepts::for_kvm(setup.paging, DebugIntercepts::default()).apply(c);
    c.iopm_base_pa = setup.iopm_pa;
    c.msrpm_base_pa = setup.msrpm_pa;
    if setup.paging == Paging::Nested {
        c.np_control = NP_ENABLE;
        c.n_cr3 = setup.n_cr3;
    }
    // The guest's IF and TPR only mask virtual interrupts; host interrupts always exit.
    c.int_ctl = IntCtl::V_INTR_MASKING.bits();
    let s = &mut vmcb.save;
    let data = VmcbSegment {
        selector: 0,
        attrib: 0x093,
        limit: 0xffff,
        base: 0,
    };
    s.cs = VmcbSegment {
        selector: 0xf000,
        attrib: 0x09b,
        limit: 0xffff,
        base: 0xffff_0000,
    };
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.gdtr = VmcbSegment {
        limit: 0xffff,
        ..VmcbSegment::default()
    };
    s.idtr = VmcbSegment {
        limit: 0xffff,
        ..VmcbSegment::default()
    };
    s.ldtr = VmcbSegment {
        selector: 0,
        attrib: 0x082,
        limit: 0xffff,
        base: 0,
    };
    s.tr = VmcbSegment {
        selector: 0,
        attrib: 0x08b,
        limit: 0xffff,
        base: 0,
    };
    s.cr0 = 0x6000_0010;
    s.efer = EFER_SVME;
    s.rip = 0xfff0;
    s.rflags = RFLAGS_FIXED;
    s.dr6 = 0xffff_0ff0;
    s.dr7 = 0x400;
    s.g_pat = PAT_RESET;
}

/// Marks groups of VMCB fields as changed by software, so the processor reloads them.
pub fn mark_dirty(vmcb: &mut Vmcb, bits: CleanBits) {
    vmcb.control.clean &= !bits.bits();
}

/// Per-vCPU entry bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryState {
    /// The vCPU's ASID.
    pub asid: VcpuAsid,
    /// The CPU the VMCB last ran on.
    pub last_cpu: Option<u32>,
    /// A flush of this vCPU's TLB entries was requested (nested tables changed).
    pub flush_requested: bool,
}

/// Prepares the VMCB for VMRUN on `cpu` (whose ASIDs `asids` hands out).
pub fn prepare_entry(
    vmcb: &mut Vmcb,
    caps: &SvmCaps,
    st: &mut EntryState,
    cpu: u32,
    asids: &mut AsidAllocator,
) {
    if st.last_cpu != Some(cpu) {
        // Another CPU may have cached this VMCB: nothing is clean here.
        vmcb.control.clean = 0;
        st.last_cpu = Some(cpu);
    }
    let mut tlb = TlbControl::DoNothing;
    if let Some(t) = asids.assign(&mut st.asid, cpu, caps.has_flush_by_asid()) {
        vmcb.control.guest_asid = st.asid.asid;
        mark_dirty(vmcb, CleanBits::ASID);
        tlb = t;
    }
    if st.flush_requested && tlb == TlbControl::DoNothing {
        tlb = if caps.has_flush_by_asid() {
            TlbControl::FlushAsid
        } else {
            TlbControl::FlushAll
        };
    }
    st.flush_requested = false;
    vmcb.control.tlb_control = tlb as u8;
    if !caps.has_vmcb_clean() {
        vmcb.control.clean = 0;
    }
}

/// Clean bits this crate tracks: everything it marks dirty when it changes a field.
pub const TRACKED_CLEAN: CleanBits = CleanBits::I
    .union(CleanBits::IOPM)
    .union(CleanBits::ASID)
    .union(CleanBits::TPR)
    .union(CleanBits::NP)
    .union(CleanBits::CRX)
    .union(CleanBits::DRX)
    .union(CleanBits::DT)
    .union(CleanBits::SEG)
    .union(CleanBits::CR2);

/// Runs the guest once and decodes the exit: loads DR0–DR3, world switch, stores DR0–DR3,
/// then clears EVENTINJ (delivered, or reported in EXITINTINFO) and TLB_CONTROL and marks the
/// tracked fields clean.
///
/// # Safety
/// As [`SvmHw::vmrun`]; `vmcb_pa` is the physical address of `vmcb`, and
/// [`prepare_entry`] ran on this CPU with interrupts disabled since.
pub unsafe fn enter(
    hw: &impl SvmHw,
    caps: &SvmCaps,
    vmcb: &mut Vmcb,
    vmcb_pa: u64,
    host_vmcb_pa: u64,
    extra: &mut GuestExtra,
) -> DecodedExit {
    for (n, v) in (0u8..).zip(extra.db) {
        // SAFETY: the host does not use DR0–DR3 while a guest runs (DR7 is 0x400 after
        // #VMEXIT, so the guest addresses arm nothing in the host).
        unsafe { hw.write_db(n, v) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { hw.vmrun(vmcb_pa, host_vmcb_pa, &mut extra.gprs) };
    for (n, v) in (0u8..).zip(extra.db.iter_mut()) {
        *v = hw.read_db(n);
    }
    let exit = decode(&vmcb.control, caps.has_nrips(), caps.has_decode_assists());
    vmcb.control.event_inj = 0;
    vmcb.control.tlb_control = TlbControl::DoNothing as u8;
    if caps.has_vmcb_clean() {
        vmcb.control.clean = TRACKED_CLEAN.bits();
    }
    exit
}

/// Completes an intercepted instruction: RIP moves to `next_rip` and the interrupt shadow the
/// instruction may have been in ends (as after any retired instruction).
pub fn skip_instruction(vmcb: &mut Vmcb, next_rip: u64) {
    vmcb.save.rip = next_rip;
    vmcb.control.int_state &= !INT_STATE_SHADOW;
}

/// Queues `ev` for delivery at the next VMRUN.
pub fn inject(vmcb: &mut Vmcb, ev: EventInj) {
    vmcb.control.event_inj = ev.encode();
}

/// Whether an event is queued in EVENTINJ.
pub fn injection_pending(vmcb: &Vmcb) -> bool {
    vmcb.control.event_inj & EVENTINJ_VALID != 0
}

/// Whether the guest can take an external interrupt now: RFLAGS.IF set, no interrupt shadow,
/// nothing queued in EVENTINJ (GIF is always 1 for a guest without nested SVM).
pub fn interrupt_allowed(vmcb: &Vmcb) -> bool {
    vmcb.save.rflags & (1 << 9) != 0
        && vmcb.control.int_state & INT_STATE_SHADOW == 0
        && !injection_pending(vmcb)
}

/// Requests (or cancels) an exit as soon as the guest can take an interrupt: a dummy virtual
/// interrupt (V_IRQ, priority 15, TPR ignored) with the VINTR intercept, the technique of
/// APM vol. 2 §15.21.4 "Injecting Virtual (INTR) Interrupts".
pub fn set_irq_window(vmcb: &mut Vmcb, on: bool) {
    let mut c = IntCtl::from_bits_retain(vmcb.control.int_ctl);
    c.set(IntCtl::V_IRQ | IntCtl::V_IGN_TPR, on);
    c = c.with_v_intr_prio(if on { 0xf } else { 0 });
    vmcb.control.int_ctl = c.bits();
    vmcb.control.int_vector = 0;
    mark_dirty(vmcb, CleanBits::TPR);
    if set_interrupt_window(&mut vmcb.control, on) {
        mark_dirty(vmcb, CleanBits::I);
    }
}

/// Whether the interrupt-window request is armed.
pub fn irq_window_requested(vmcb: &Vmcb) -> bool {
    InterceptMisc1::from_bits_retain(vmcb.control.intercept_misc1).contains(InterceptMisc1::VINTR)
}

/// What re-injecting an interrupted event needs from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reinjection {
    /// Nothing was interrupted.
    None,
    /// Queued again in EVENTINJ as it was.
    Queued(EventInj),
    /// A software interrupt (INTn): EVENTINJ pushes the VMCB RIP as return address, which still
    /// points at the INTn instruction; the caller must advance RIP past it (nRIP or decode)
    /// before re-injecting it with [`inject`].
    SoftIntNeedsRip(EventInj),
}

/// Re-queues the event whose delivery `exit` interrupted (e.g. an NPF on the IDT or the
/// stack during delivery): exceptions, NMIs and external interrupts go back to EVENTINJ.
pub fn reinject(vmcb: &mut Vmcb, exit: &DecodedExit) -> Reinjection {
    match exit.interrupted {
        None => Reinjection::None,
        Some(ev) if ev.kind == EventType::SoftInt => Reinjection::SoftIntNeedsRip(ev),
        Some(ev) => {
            inject(vmcb, ev);
            Reinjection::Queued(ev)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::{detect, tests as cpuid_tests};
    use crate::hw::fake::FakeSvm;
    use crate::state::{get_regs, get_sregs, set_regs};
    use kvm_abi::{kvm_regs, kvm_sregs};
    use zerocopy::FromZeros;

    fn vmcb() -> Box<Vmcb> {
        // SAFETY: all-zero is a valid Vmcb.
        Box::new(unsafe { core::mem::zeroed() })
    }

    const SETUP: VmcbSetup = VmcbSetup {
        iopm_pa: 0x10_0000,
        msrpm_pa: 0x10_3000,
        paging: Paging::Nested,
        n_cr3: 0x20_0000,
    };

    #[test]
    fn new_vcpu_reports_the_kvm_reset_state() {
        let mut v = vmcb();
        init_vmcb(&mut v, &SETUP);
        let x = GuestExtra::default();
        let mut s = kvm_sregs::new_zeroed();
        get_sregs(&v, &x, &mut s);
        // What KVM_GET_SREGS returns for a fresh vCPU on Linux SVM.
        assert_eq!(
            (s.cs.selector, s.cs.base, s.cs.limit, s.cs.r#type),
            (0xf000, 0xffff_0000, 0xffff, 0xb)
        );
        assert_eq!(
            (s.ds.r#type, s.ds.present, s.ds.s, s.ds.unusable),
            (3, 1, 1, 0)
        );
        assert_eq!((s.tr.r#type, s.ldt.r#type), (0xb, 2));
        assert_eq!((s.cr0, s.efer, s.cr8), (0x6000_0010, 0, 0));
        let mut r = kvm_regs::new_zeroed();
        get_regs(&v.save, &x.gprs, &mut r);
        assert_eq!((r.rip, r.rflags), (0xfff0, 2));
        // VMRUN prerequisites.
        assert_ne!(v.save.efer & EFER_SVME, 0);
        assert_ne!(v.control.intercept_misc2 & 1, 0);
        assert_eq!((v.control.np_control, v.control.n_cr3), (1, 0x20_0000));
        assert_eq!(
            (v.control.iopm_base_pa, v.control.msrpm_base_pa),
            (0x10_0000, 0x10_3000)
        );
        assert_eq!(v.save.g_pat, PAT_RESET);
    }

    #[test]
    fn entry_assigns_asid_flushes_and_tracks_clean_bits() {
        let caps = detect(&cpuid_tests::epyc_zen2()).unwrap();
        let mut asids = AsidAllocator::new(caps.nasid).unwrap();
        let mut v = vmcb();
        init_vmcb(&mut v, &SETUP);
        let mut st = EntryState::default();
        prepare_entry(&mut v, &caps, &mut st, 0, &mut asids);
        assert_eq!(
            (v.control.guest_asid, v.control.tlb_control, v.control.clean),
            (1, 3, 0)
        );

        let hw = FakeSvm::default();
        let mut x = GuestExtra {
            db: [1, 2, 3, 4],
            ..Default::default()
        };
        x.gprs.rbx = 7;
        *hw.guest.lock().unwrap() = Some(Box::new(|pa, g, db| {
            // The guest sees its DR0-3 and GPRs, changes some, exits with CPUID.
            assert_eq!(pa, 0x5000);
            assert_eq!(*db, [1, 2, 3, 4]);
            assert_eq!(g.rbx, 7);
            g.rbx = 8;
            db[2] = 0x33;
        }));
        v.control.exit_code = 0x72;
        v.control.next_rip = 0xfff2;
        v.control.event_inj = 0x8000_0030;
        // SAFETY: fake hardware.
        let e = unsafe { enter(&hw, &caps, &mut v, 0x5000, 0x6000, &mut x) };
        assert_eq!(
            (e.exit, e.next_rip),
            (crate::exit::SvmExit::Cpuid, Some(0xfff2))
        );
        assert_eq!((x.gprs.rbx, x.db), (8, [1, 2, 0x33, 4]));
        assert_eq!((v.control.event_inj, v.control.tlb_control), (0, 0));
        assert_eq!(v.control.clean, TRACKED_CLEAN.bits());

        // Same CPU, same ASID: nothing to flush, clean bits kept.
        prepare_entry(&mut v, &caps, &mut st, 0, &mut asids);
        assert_eq!((v.control.guest_asid, v.control.tlb_control), (1, 0));
        assert_eq!(v.control.clean, TRACKED_CLEAN.bits());
        // A requested flush of this ASID.
        st.flush_requested = true;
        prepare_entry(&mut v, &caps, &mut st, 0, &mut asids);
        assert_eq!(v.control.tlb_control, TlbControl::FlushAsid as u8);
        assert!(!st.flush_requested);
        // Moving to CPU 1: nothing clean, new ASID flushed.
        let mut asids1 = AsidAllocator::new(caps.nasid).unwrap();
        prepare_entry(&mut v, &caps, &mut st, 1, &mut asids1);
        assert_eq!((v.control.clean, v.control.tlb_control), (0, 3));
    }

    #[test]
    fn qemu_tcg_never_uses_clean_bits_or_asid_flushes() {
        let caps = detect(&cpuid_tests::qemu_tcg_epyc()).unwrap();
        let mut asids = AsidAllocator::new(caps.nasid).unwrap();
        let mut v = vmcb();
        init_vmcb(&mut v, &SETUP);
        let mut st = EntryState::default();
        prepare_entry(&mut v, &caps, &mut st, 0, &mut asids);
        assert_eq!(v.control.tlb_control, TlbControl::FlushAll as u8);
        let hw = FakeSvm::default();
        let mut x = GuestExtra::default();
        v.control.exit_code = 0x78;
        v.control.next_rip = 0x1234; // stale: no NRIPS
                                     // SAFETY: fake hardware.
        let e = unsafe { enter(&hw, &caps, &mut v, 0x5000, 0x6000, &mut x) };
        assert_eq!((e.exit, e.next_rip), (crate::exit::SvmExit::Hlt, None));
        assert_eq!(v.control.clean, 0);
        st.flush_requested = true;
        prepare_entry(&mut v, &caps, &mut st, 0, &mut asids);
        assert_eq!((v.control.clean, v.control.tlb_control), (0, 1));
    }

    #[test]
    fn interrupt_window_and_injection() {
        let mut v = vmcb();
        init_vmcb(&mut v, &SETUP);
        v.control.clean = TRACKED_CLEAN.bits();
        // IF clear: not allowed; ask for a window.
        assert!(!interrupt_allowed(&v));
        set_irq_window(&mut v, true);
        assert!(irq_window_requested(&v));
        assert_eq!(
            v.control.int_ctl,
            IntCtl::V_INTR_MASKING.bits() | 1 << 8 | 1 << 20 | 0xf << 16
        );
        assert_eq!(v.control.clean & (CleanBits::I | CleanBits::TPR).bits(), 0);
        // The guest executed STI; the VINTR exit arrives; the core injects vector 0x30.
        set_irq_window(&mut v, false);
        assert!(!irq_window_requested(&v));
        assert_eq!(v.control.int_ctl, IntCtl::V_INTR_MASKING.bits());
        v.save.rflags |= 1 << 9;
        assert!(interrupt_allowed(&v));
        v.control.int_state = INT_STATE_SHADOW;
        assert!(!interrupt_allowed(&v));
        skip_instruction(&mut v, 0x1001);
        assert!(interrupt_allowed(&v));
        inject(
            &mut v,
            EventInj {
                vector: 0x30,
                kind: EventType::Intr,
                error_code: None,
            },
        );
        assert_eq!(v.control.event_inj, 0x8000_0030);
        assert!(!interrupt_allowed(&v));
    }

    #[test]
    fn interrupted_delivery_is_reinjected() {
        let mut v = vmcb();
        let mut r = kvm_regs::new_zeroed();
        r.rip = 0x1000;
        set_regs(&mut v.save, &mut GuestExtra::default().gprs, &r);
        let mut e = crate::exit::decode(&v.control, false, false);
        assert_eq!(reinject(&mut v, &e), Reinjection::None);
        let gp = EventInj {
            vector: 13,
            kind: EventType::Exception,
            error_code: Some(0),
        };
        e.interrupted = Some(gp);
        assert_eq!(reinject(&mut v, &e), Reinjection::Queued(gp));
        assert_eq!(v.control.event_inj, gp.encode());
        v.control.event_inj = 0;
        let int80 = EventInj {
            vector: 0x80,
            kind: EventType::SoftInt,
            error_code: None,
        };
        e.interrupted = Some(int80);
        assert_eq!(reinject(&mut v, &e), Reinjection::SoftIntNeedsRip(int80));
        assert_eq!(v.control.event_inj, 0);
    }
}
