//! Guest state conversion between the `kvm_abi` types and the VMCB (plus the registers the
//! VMCB does not hold).
//!
//! Where KVM's SVM backend reports state in a particular way, this module does the same, so a
//! `KVM_GET_*` on okvm returns what Linux returns: synthesized G bit, `unusable` = not present,
//! TR busy, accessed bit on data segments, SS.DPL = CPL (Linux `svm_get_segment` behaviour,
//! re-derived from the APM segment format and KVM's documented ABI).

use crate::vcpu::mark_dirty;
use crate::vmcb::{
    CleanBits, EventInj, EventType, IntCtl, Vmcb, VmcbSave, VmcbSegment, INT_STATE_SHADOW,
};
use core::mem::offset_of;
use kvm_abi::{
    kvm_debugregs, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
    KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI,
};
use static_assertions::const_assert_eq;

/// EFER.SVME (bit 12): must be set in the guest VMCB's EFER or VMRUN fails.
pub const EFER_SVME: u64 = 1 << 12;
/// RFLAGS bit 1, always 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// CR4.MCE (bit 6).
pub const CR4_MCE: u64 = 1 << 6;

/// The guest general-purpose registers VMRUN does not load from the VMCB (everything except
/// RAX, RSP, RIP, RFLAGS). The world switch loads them before VMRUN and stores them after.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestGprs {
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

// The world switch (`switch.rs`) addresses these by offset.
const_assert_eq!(offset_of!(GuestGprs, rbx), 0x00);
const_assert_eq!(offset_of!(GuestGprs, rcx), 0x08);
const_assert_eq!(offset_of!(GuestGprs, rdx), 0x10);
const_assert_eq!(offset_of!(GuestGprs, rsi), 0x18);
const_assert_eq!(offset_of!(GuestGprs, rdi), 0x20);
const_assert_eq!(offset_of!(GuestGprs, rbp), 0x28);
const_assert_eq!(offset_of!(GuestGprs, r8), 0x30);
const_assert_eq!(offset_of!(GuestGprs, r9), 0x38);
const_assert_eq!(offset_of!(GuestGprs, r10), 0x40);
const_assert_eq!(offset_of!(GuestGprs, r11), 0x48);
const_assert_eq!(offset_of!(GuestGprs, r12), 0x50);
const_assert_eq!(offset_of!(GuestGprs, r13), 0x58);
const_assert_eq!(offset_of!(GuestGprs, r14), 0x60);
const_assert_eq!(offset_of!(GuestGprs, r15), 0x68);
const_assert_eq!(core::mem::size_of::<GuestGprs>(), 0x70);

impl GuestGprs {
    /// Register `n` in the x86 encoding order (0 = RAX ... 15 = R15); RAX and RSP live in the
    /// VMCB, so they come from `save`.
    pub fn get(&self, save: &VmcbSave, n: u8) -> u64 {
        match n & 15 {
            0 => save.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => save.rsp,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }

    /// Writes register `n` (encoding order); RAX and RSP go to `save`.
    pub fn set(&mut self, save: &mut VmcbSave, n: u8, v: u64) {
        let r = match n & 15 {
            0 => &mut save.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            4 => &mut save.rsp,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            _ => &mut self.r15,
        };
        *r = v;
    }
}

/// Guest state kept beside the VMCB: the GPRs of [`GuestGprs`], DR0–DR3 (VMRUN does not switch
/// them), and the CR4 bits the host forces on in the VMCB although the guest did not set them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestExtra {
    /// GPRs outside the VMCB.
    pub gprs: GuestGprs,
    /// DR0–DR3.
    pub db: [u64; 4],
    /// CR4 bits set in the VMCB by the host only (e.g. CR4.MCE, so that a machine check in the
    /// guest exits instead of shutting the processor down). Hidden from the guest's view; only
    /// exact while CR4 accesses are intercepted.
    pub cr4_forced: u64,
}

/// Which segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// LDTR.
    Ldtr,
    /// TR.
    Tr,
}

fn seg_mut(s: &mut VmcbSave, which: Seg) -> &mut VmcbSegment {
    match which {
        Seg::Es => &mut s.es,
        Seg::Cs => &mut s.cs,
        Seg::Ss => &mut s.ss,
        Seg::Ds => &mut s.ds,
        Seg::Fs => &mut s.fs,
        Seg::Gs => &mut s.gs,
        Seg::Ldtr => &mut s.ldtr,
        Seg::Tr => &mut s.tr,
    }
}

fn seg_ref(s: &VmcbSave, which: Seg) -> &VmcbSegment {
    match which {
        Seg::Es => &s.es,
        Seg::Cs => &s.cs,
        Seg::Ss => &s.ss,
        Seg::Ds => &s.ds,
        Seg::Fs => &s.fs,
        Seg::Gs => &s.gs,
        Seg::Ldtr => &s.ldtr,
        Seg::Tr => &s.tr,
    }
}

/// Packs KVM's unpacked attribute fields into the VMCB's 12-bit format: type 3:0, S 4,
/// DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11. An unusable segment is packed not present.
pub fn pack_attrib(s: &kvm_segment) -> u16 {
    let present = s.present & 1 != 0 && s.unusable == 0;
    u16::from(s.r#type & 0xf)
        | u16::from(s.s & 1) << 4
        | u16::from(s.dpl & 3) << 5
        | u16::from(present) << 7
        | u16::from(s.avl & 1) << 8
        | u16::from(s.l & 1) << 9
        | u16::from(s.db & 1) << 10
        | u16::from(s.g & 1) << 11
}

/// Unpacks a VMCB segment into KVM's format, without KVM's per-register adjustments.
pub fn unpack_segment(v: &VmcbSegment) -> kvm_segment {
    let a = v.attrib;
    let bit = |n: u16| ((a >> n) & 1) as u8;
    kvm_segment {
        base: v.base,
        limit: v.limit,
        selector: v.selector,
        r#type: (a & 0xf) as u8,
        s: bit(4),
        dpl: ((a >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(8),
        l: bit(9),
        db: bit(10),
        g: bit(11),
        unusable: 0,
        padding: 0,
    }
}

/// Writes segment `which` as `KVM_SET_SREGS` does: SS.DPL also sets the VMCB CPL. The caller
/// marks [`CleanBits::SEG`] dirty ([`set_sregs`] does).
pub fn set_segment(save: &mut VmcbSave, which: Seg, s: &kvm_segment) {
    *seg_mut(save, which) = VmcbSegment {
        selector: s.selector,
        attrib: pack_attrib(s),
        limit: s.limit,
        base: s.base,
    };
    if which == Seg::Ss {
        save.cpl = s.dpl & 3;
    }
}

/// Reads segment `which` as `KVM_GET_SREGS` reports it on SVM.
pub fn get_segment(save: &VmcbSave, which: Seg) -> kvm_segment {
    let mut s = unpack_segment(seg_ref(save, which));
    // The processor does not observe G in the VMCB (limits are expanded); report the value a
    // descriptor with this limit must have had.
    s.g = u8::from(s.limit > 0xf_ffff);
    // The VMCB has no unusable bit: not present means unusable.
    s.unusable = u8::from(s.present == 0);
    match which {
        // The busy bit of the cached TSS type is not exposed by all processors.
        Seg::Tr => s.r#type |= 2,
        // The cached accessed bit is always 1 for usable data segments.
        Seg::Ds | Seg::Es | Seg::Fs | Seg::Gs if s.unusable == 0 => s.r#type |= 1,
        Seg::Ss => {
            if s.unusable != 0 {
                s.db = 0;
            }
            s.dpl = save.cpl & 3;
        }
        _ => {}
    }
    s
}

/// `KVM_SET_REGS`: RAX/RSP/RIP/RFLAGS into the VMCB (RFLAGS bit 1 forced), the rest into `g`.
pub fn set_regs(save: &mut VmcbSave, g: &mut GuestGprs, r: &kvm_regs) {
    save.rax = r.rax;
    save.rsp = r.rsp;
    save.rip = r.rip;
    save.rflags = r.rflags | RFLAGS_FIXED;
    *g = GuestGprs {
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
    };
}

/// `KVM_GET_REGS`.
pub fn get_regs(save: &VmcbSave, g: &GuestGprs, out: &mut kvm_regs) {
    *out = kvm_regs {
        rax: save.rax,
        rbx: g.rbx,
        rcx: g.rcx,
        rdx: g.rdx,
        rsi: g.rsi,
        rdi: g.rdi,
        rsp: save.rsp,
        rbp: g.rbp,
        r8: g.r8,
        r9: g.r9,
        r10: g.r10,
        r11: g.r11,
        r12: g.r12,
        r13: g.r13,
        r14: g.r14,
        r15: g.r15,
        rip: save.rip,
        rflags: save.rflags,
    };
}

/// Why guest state cannot be loaded into the VMCB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// EFER.SVME from userspace: nested SVM is not offered to guests.
    NestedSvm,
}

/// `KVM_SET_SREGS`: segments, descriptor tables, CR0/CR2/CR3/CR4, CR8 (V_TPR) and EFER
/// (with SVME forced on, as VMRUN requires). `cr4_forced` are the CR4 bits the host wants set
/// in the VMCB whatever the guest's value (see [`GuestExtra::cr4_forced`]).
///
/// The caller has validated the architectural consistency (`kvm_is_valid_sregs`-style checks
/// live in the core) and handles `apic_base` and `interrupt_bitmap`.
pub fn set_sregs(
    vmcb: &mut Vmcb,
    extra: &mut GuestExtra,
    s: &kvm_sregs,
    cr4_forced: u64,
) -> Result<(), StateError> {
    if s.efer & EFER_SVME != 0 {
        return Err(StateError::NestedSvm);
    }
    let save = &mut vmcb.save;
    for (which, seg) in [
        (Seg::Cs, &s.cs),
        (Seg::Ds, &s.ds),
        (Seg::Es, &s.es),
        (Seg::Fs, &s.fs),
        (Seg::Gs, &s.gs),
        (Seg::Ss, &s.ss),
        (Seg::Tr, &s.tr),
        (Seg::Ldtr, &s.ldt),
    ] {
        set_segment(save, which, seg);
    }
    save.gdtr = VmcbSegment {
        limit: u32::from(s.gdt.limit),
        base: s.gdt.base,
        ..Default::default()
    };
    save.idtr = VmcbSegment {
        limit: u32::from(s.idt.limit),
        base: s.idt.base,
        ..Default::default()
    };
    save.cr0 = s.cr0;
    save.cr2 = s.cr2;
    save.cr3 = s.cr3;
    save.cr4 = s.cr4 | cr4_forced;
    extra.cr4_forced = cr4_forced & !s.cr4;
    save.efer = s.efer | EFER_SVME;
    set_cr8(vmcb, s.cr8);
    mark_dirty(
        vmcb,
        CleanBits::SEG | CleanBits::DT | CleanBits::CRX | CleanBits::CR2,
    );
    Ok(())
}

/// Writes EFER from a guest or userspace WRMSR that the core validated; SVME stays set in the
/// VMCB. Refuses SVME itself (no nested SVM).
pub fn set_efer(vmcb: &mut Vmcb, efer: u64) -> Result<(), StateError> {
    if efer & EFER_SVME != 0 {
        return Err(StateError::NestedSvm);
    }
    vmcb.save.efer = efer | EFER_SVME;
    mark_dirty(vmcb, CleanBits::CRX);
    Ok(())
}

/// EFER as the guest sees it.
pub fn get_efer(vmcb: &Vmcb) -> u64 {
    vmcb.save.efer & !EFER_SVME
}

/// Writes the guest PAT (G_PAT, used with nested paging); the core validated the value.
pub fn set_pat(vmcb: &mut Vmcb, pat: u64) {
    vmcb.save.g_pat = pat;
    mark_dirty(vmcb, CleanBits::NP);
}

/// `KVM_GET_SREGS` (everything but `apic_base` and `interrupt_bitmap`, which the caller fills).
pub fn get_sregs(vmcb: &Vmcb, extra: &GuestExtra, out: &mut kvm_sregs) {
    let save = &vmcb.save;
    out.cs = get_segment(save, Seg::Cs);
    out.ds = get_segment(save, Seg::Ds);
    out.es = get_segment(save, Seg::Es);
    out.fs = get_segment(save, Seg::Fs);
    out.gs = get_segment(save, Seg::Gs);
    out.ss = get_segment(save, Seg::Ss);
    out.tr = get_segment(save, Seg::Tr);
    out.ldt = get_segment(save, Seg::Ldtr);
    out.gdt = kvm_dtable {
        base: save.gdtr.base,
        limit: save.gdtr.limit as u16,
        padding: [0; 3],
    };
    out.idt = kvm_dtable {
        base: save.idtr.base,
        limit: save.idtr.limit as u16,
        padding: [0; 3],
    };
    out.cr0 = save.cr0;
    out.cr2 = save.cr2;
    out.cr3 = save.cr3;
    out.cr4 = save.cr4 & !extra.cr4_forced;
    out.cr8 = get_cr8(vmcb);
    out.efer = save.efer & !EFER_SVME;
}

/// CR8 as the guest sees it: V_TPR bits 3:0.
pub fn get_cr8(vmcb: &Vmcb) -> u64 {
    u64::from(IntCtl::from_bits_retain(vmcb.control.int_ctl).v_tpr() & 0xf)
}

/// Writes CR8 into V_TPR (the caller rejects values above 15 and clears the TPR clean bit).
pub fn set_cr8(vmcb: &mut Vmcb, cr8: u64) {
    let c = IntCtl::from_bits_retain(vmcb.control.int_ctl).with_v_tpr((cr8 & 0xf) as u8);
    vmcb.control.int_ctl = c.bits();
    mark_dirty(vmcb, CleanBits::TPR);
}

/// `KVM_SET_DEBUGREGS`: DR6/DR7 into the VMCB, DR0–DR3 into `extra` (the caller validated the
/// upper halves of DR6/DR7, which VMRUN rejects when non-zero).
pub fn set_debugregs(vmcb: &mut Vmcb, extra: &mut GuestExtra, d: &kvm_debugregs) {
    extra.db = d.db;
    vmcb.save.dr6 = d.dr6;
    vmcb.save.dr7 = d.dr7;
    mark_dirty(vmcb, CleanBits::DRX);
}

/// `KVM_GET_DEBUGREGS` (flags and reserved zero).
pub fn get_debugregs(vmcb: &Vmcb, extra: &GuestExtra, out: &mut kvm_debugregs) {
    out.db = extra.db;
    out.dr6 = vmcb.save.dr6;
    out.dr7 = vmcb.save.dr7;
    out.flags = 0;
    out.reserved = [0; 9];
}

/// The interrupt shadow as `kvm_vcpu_events.interrupt.shadow` reports it: SVM does not say
/// whether STI or MOV SS caused it, so both bits, as KVM reports.
pub fn get_interrupt_shadow(vmcb: &Vmcb) -> u8 {
    if vmcb.control.int_state & INT_STATE_SHADOW != 0 {
        KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI
    } else {
        0
    }
}

/// Sets or clears the interrupt shadow from `kvm_vcpu_events.interrupt.shadow`.
pub fn set_interrupt_shadow(vmcb: &mut Vmcb, shadow: u8) {
    if shadow & (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI) != 0 {
        vmcb.control.int_state |= INT_STATE_SHADOW;
    } else {
        vmcb.control.int_state &= !INT_STATE_SHADOW;
    }
}

/// Records an event that was being delivered (EXITINTINFO) or is about to be (EVENTINJ) in
/// the `injected` fields of `kvm_vcpu_events`, as KVM reports it after an exit. Other fields
/// are left alone.
pub fn event_to_kvm(ev: &EventInj, out: &mut kvm_vcpu_events) {
    match ev.kind {
        EventType::Exception => {
            out.exception.injected = 1;
            out.exception.nr = ev.vector;
            out.exception.has_error_code = u8::from(ev.error_code.is_some());
            out.exception.error_code = ev.error_code.unwrap_or(0);
        }
        EventType::Nmi => out.nmi.injected = 1,
        EventType::Intr | EventType::SoftInt => {
            out.interrupt.injected = 1;
            out.interrupt.nr = ev.vector;
            out.interrupt.soft = u8::from(ev.kind == EventType::SoftInt);
        }
    }
}

/// The event to inject from the `injected` fields of `kvm_vcpu_events`, in delivery priority:
/// exception, then NMI, then interrupt (KVM keeps at most one of them injected).
pub fn event_from_kvm(ev: &kvm_vcpu_events) -> Option<EventInj> {
    if ev.exception.injected != 0 {
        return Some(EventInj {
            vector: ev.exception.nr,
            kind: EventType::Exception,
            error_code: (ev.exception.has_error_code != 0).then_some(ev.exception.error_code),
        });
    }
    if ev.nmi.injected != 0 {
        return Some(EventInj {
            vector: 2,
            kind: EventType::Nmi,
            error_code: None,
        });
    }
    if ev.interrupt.injected != 0 {
        let kind = if ev.interrupt.soft != 0 {
            EventType::SoftInt
        } else {
            EventType::Intr
        };
        return Some(EventInj {
            vector: ev.interrupt.nr,
            kind,
            error_code: None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    fn vmcb() -> Box<Vmcb> {
        // SAFETY: all-zero is a valid Vmcb.
        Box::new(unsafe { core::mem::zeroed() })
    }

    fn seg(ty: u8, s: u8, dpl: u8, p: u8, l: u8, db: u8, limit: u32) -> kvm_segment {
        kvm_segment {
            base: 0,
            limit,
            selector: 0x10,
            r#type: ty,
            present: p,
            dpl,
            db,
            s,
            l,
            g: u8::from(limit > 0xf_ffff),
            avl: 0,
            unusable: u8::from(p == 0),
            padding: 0,
        }
    }

    #[test]
    fn attribute_packing_matches_descriptor_bits() {
        // 64-bit code: type 0xb, S, DPL 0, P, L, G -> 0xa9b (descriptor bits 47:40 = 0x9b,
        // 55:52 = 0xa).
        assert_eq!(pack_attrib(&seg(0xb, 1, 0, 1, 1, 0, 0xffff_ffff)), 0xa9b);
        // Flat 32-bit data, DPL 3: 0xcf3.
        assert_eq!(pack_attrib(&seg(0x3, 1, 3, 1, 0, 1, 0xffff_ffff)), 0xcf3);
        // Real-mode CS after reset: type 0xb, S, P, limit 0xffff -> 0x09b.
        assert_eq!(pack_attrib(&seg(0xb, 1, 0, 1, 0, 0, 0xffff)), 0x09b);
        // Unusable: P cleared even if present says 1.
        let mut u = seg(0x3, 1, 0, 1, 0, 1, 0xffff);
        u.unusable = 1;
        assert_eq!(pack_attrib(&u), 0x413);
    }

    #[test]
    fn kvm_get_segment_adjustments() {
        let mut v = vmcb();
        // TR loaded with type 9 (available TSS): reported busy (0xb).
        v.save.tr = VmcbSegment {
            selector: 0x40,
            attrib: 0x089,
            limit: 0x67,
            base: 0x1000,
        };
        let tr = get_segment(&v.save, Seg::Tr);
        assert_eq!((tr.r#type, tr.present, tr.g, tr.unusable), (0xb, 1, 0, 0));
        // DS with the accessed bit clear: reported accessed.
        v.save.ds = VmcbSegment {
            selector: 0x18,
            attrib: 0xc92,
            limit: 0xffff_ffff,
            base: 0,
        };
        let ds = get_segment(&v.save, Seg::Ds);
        assert_eq!((ds.r#type, ds.g, ds.db), (0x3, 1, 1));
        // Null SS in 64-bit mode with a stale D/B: unusable, D/B cleared, DPL = CPL.
        v.save.ss = VmcbSegment {
            selector: 0,
            attrib: 0x400,
            limit: 0,
            base: 0,
        };
        v.save.cpl = 3;
        let ss = get_segment(&v.save, Seg::Ss);
        assert_eq!((ss.unusable, ss.db, ss.dpl, ss.present), (1, 0, 3, 0));
        // G synthesized from the limit, not from the attribute.
        v.save.fs = VmcbSegment {
            selector: 0,
            attrib: 0x093,
            limit: 0x10_0000,
            base: 0,
        };
        assert_eq!(get_segment(&v.save, Seg::Fs).g, 1);
        // Setting SS sets CPL.
        set_segment(&mut v.save, Seg::Ss, &seg(3, 1, 0, 1, 0, 1, 0xffff_ffff));
        assert_eq!(v.save.cpl, 0);
    }

    fn reset_sregs() -> kvm_sregs {
        // The x86 reset state QEMU loads (APM 14.1.3): CS F000:FFF0 base FFFF0000, CR0 ET|CD|NW.
        let mut s = kvm_sregs::new_zeroed();
        let data = kvm_segment {
            selector: 0,
            base: 0,
            ..seg(3, 1, 0, 1, 0, 0, 0xffff)
        };
        s.cs = kvm_segment {
            selector: 0xf000,
            base: 0xffff_0000,
            ..seg(0xb, 1, 0, 1, 0, 0, 0xffff)
        };
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
        s.tr = seg(0xb, 0, 0, 1, 0, 0, 0xffff);
        s.ldt = seg(0x2, 0, 0, 1, 0, 0, 0xffff);
        s.gdt.limit = 0xffff;
        s.idt.limit = 0xffff;
        s.cr0 = 0x6000_0010;
        s
    }

    #[test]
    fn sregs_reset_state_round_trips_and_forces_svme_and_mce() {
        let mut v = vmcb();
        let mut x = GuestExtra::default();
        let s = reset_sregs();
        set_sregs(&mut v, &mut x, &s, CR4_MCE).unwrap();
        assert_eq!(v.save.efer, EFER_SVME);
        assert_eq!(v.save.cr4, CR4_MCE);
        assert_eq!(v.save.cs.attrib, 0x09b);
        assert_eq!(v.save.cs.base, 0xffff_0000);
        let mut out = kvm_sregs::new_zeroed();
        get_sregs(&v, &x, &mut out);
        assert_eq!(out, s);
        // A guest that sets MCE itself keeps seeing it.
        let s2 = kvm_sregs {
            cr4: CR4_MCE | 0x20,
            ..s
        };
        set_sregs(&mut v, &mut x, &s2, CR4_MCE).unwrap();
        get_sregs(&v, &x, &mut out);
        assert_eq!(out.cr4, CR4_MCE | 0x20);
        // Nested SVM is refused.
        let s3 = kvm_sregs {
            efer: EFER_SVME,
            ..s
        };
        assert_eq!(
            set_sregs(&mut v, &mut x, &s3, 0),
            Err(StateError::NestedSvm)
        );
    }

    #[test]
    fn setters_mark_their_clean_bits_dirty() {
        let mut v = vmcb();
        let mut x = GuestExtra::default();
        v.control.clean = 0x1fff;
        set_sregs(&mut v, &mut x, &reset_sregs(), 0).unwrap();
        let want =
            CleanBits::SEG | CleanBits::DT | CleanBits::CRX | CleanBits::CR2 | CleanBits::TPR;
        assert_eq!(v.control.clean, 0x1fff & !want.bits());
        v.control.clean = 0x1fff;
        set_debugregs(&mut v, &mut x, &kvm_debugregs::new_zeroed());
        assert_eq!(v.control.clean, 0x1fff & !CleanBits::DRX.bits());
        v.control.clean = 0x1fff;
        set_pat(&mut v, 6);
        assert_eq!(v.control.clean, 0x1fff & !CleanBits::NP.bits());
        v.control.clean = 0x1fff;
        set_efer(&mut v, 0x500).unwrap();
        assert_eq!(
            (v.control.clean, v.save.efer, get_efer(&v)),
            (0x1fff & !CleanBits::CRX.bits(), 0x1500, 0x500)
        );
        assert_eq!(set_efer(&mut v, EFER_SVME), Err(StateError::NestedSvm));
    }

    #[test]
    fn cr8_is_v_tpr() {
        let mut v = vmcb();
        v.control.int_ctl = IntCtl::V_INTR_MASKING.bits();
        set_cr8(&mut v, 0xa);
        assert_eq!(v.control.int_ctl, IntCtl::V_INTR_MASKING.bits() | 0xa);
        assert_eq!(get_cr8(&v), 0xa);
    }

    #[test]
    fn interrupt_shadow_and_events() {
        let mut v = vmcb();
        set_interrupt_shadow(&mut v, KVM_X86_SHADOW_INT_STI);
        assert_eq!(v.control.int_state, 1);
        assert_eq!(get_interrupt_shadow(&v), 3);
        set_interrupt_shadow(&mut v, 0);
        assert_eq!(get_interrupt_shadow(&v), 0);

        let mut ev = kvm_vcpu_events::new_zeroed();
        let pf = EventInj {
            vector: 14,
            kind: EventType::Exception,
            error_code: Some(6),
        };
        event_to_kvm(&pf, &mut ev);
        assert_eq!(
            (
                ev.exception.injected,
                ev.exception.nr,
                ev.exception.error_code
            ),
            (1, 14, 6)
        );
        assert_eq!(event_from_kvm(&ev), Some(pf));
        let mut ev = kvm_vcpu_events::new_zeroed();
        let soft = EventInj {
            vector: 0x80,
            kind: EventType::SoftInt,
            error_code: None,
        };
        event_to_kvm(&soft, &mut ev);
        assert_eq!((ev.interrupt.injected, ev.interrupt.soft), (1, 1));
        assert_eq!(event_from_kvm(&ev), Some(soft));
        assert_eq!(event_from_kvm(&kvm_vcpu_events::new_zeroed()), None);
    }

    #[test]
    fn gpr_index_order() {
        let mut v = vmcb();
        let mut g = GuestGprs::default();
        for n in 0..16u8 {
            g.set(&mut v.save, n, 0x100 + u64::from(n));
        }
        assert_eq!(
            (v.save.rax, v.save.rsp, g.rbx, g.rcx, g.r15),
            (0x100, 0x104, 0x103, 0x101, 0x10f)
        );
        for n in 0..16u8 {
            assert_eq!(g.get(&v.save, n), 0x100 + u64::from(n));
        }
    }

    fn any_regs() -> impl Strategy<Value = kvm_regs> {
        proptest::array::uniform18(any::<u64>()).prop_map(|a| kvm_regs {
            rax: a[0],
            rbx: a[1],
            rcx: a[2],
            rdx: a[3],
            rsi: a[4],
            rdi: a[5],
            rsp: a[6],
            rbp: a[7],
            r8: a[8],
            r9: a[9],
            r10: a[10],
            r11: a[11],
            r12: a[12],
            r13: a[13],
            r14: a[14],
            r15: a[15],
            rip: a[16],
            rflags: a[17] | RFLAGS_FIXED,
        })
    }

    /// Any segment in the form KVM_GET_SREGS produces for `which`.
    fn any_segment(which: Seg) -> impl Strategy<Value = kvm_segment> {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u16>(),
            0u8..16,
            any::<[bool; 6]>(),
            0u8..4,
        )
            .prop_map(
                move |(base, limit, selector, ty, [s, p, avl, l, db, _], dpl)| {
                    let mut k = kvm_segment {
                        base,
                        limit,
                        selector,
                        r#type: ty,
                        present: u8::from(p),
                        dpl,
                        db: u8::from(db),
                        s: u8::from(s),
                        l: u8::from(l),
                        g: u8::from(limit > 0xf_ffff),
                        avl: u8::from(avl),
                        unusable: u8::from(!p),
                        padding: 0,
                    };
                    match which {
                        Seg::Tr => k.r#type |= 2,
                        Seg::Ds | Seg::Es | Seg::Fs | Seg::Gs if p => k.r#type |= 1,
                        Seg::Ss if !p => k.db = 0,
                        _ => {}
                    }
                    k
                },
            )
    }

    proptest! {
        #[test]
        fn regs_round_trip(r in any_regs()) {
            let mut v = vmcb();
            let mut g = GuestGprs::default();
            set_regs(&mut v.save, &mut g, &r);
            let mut out = kvm_regs::new_zeroed();
            get_regs(&v.save, &g, &mut out);
            prop_assert_eq!(out, r);
        }

        #[test]
        fn segments_round_trip_in_kvm_form(
            (which, s) in prop::sample::select(
                vec![Seg::Es, Seg::Cs, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs, Seg::Ldtr, Seg::Tr],
            )
            .prop_flat_map(|w| (Just(w), any_segment(w))),
        ) {
            let mut v = vmcb();
            set_segment(&mut v.save, which, &s);
            prop_assert_eq!(get_segment(&v.save, which), s);
        }

        #[test]
        fn vmcb_segments_survive_get_then_set(
            selector in any::<u16>(), attrib in 0u16..0x1000, limit in any::<u32>(), base in any::<u64>(),
        ) {
            // VMCB -> KVM -> VMCB keeps every attribute bit of a present segment except the
            // ones KVM reports differently (G, TR busy, data accessed).
            let mut v = vmcb();
            let orig = VmcbSegment { selector, attrib: attrib | 0x80, limit, base };
            v.save.cs = orig;
            let k = get_segment(&v.save, Seg::Cs);
            set_segment(&mut v.save, Seg::Cs, &k);
            prop_assert_eq!(v.save.cs.attrib & !0x800, orig.attrib & !0x800);
            prop_assert_eq!((v.save.cs.base, v.save.cs.limit, v.save.cs.selector), (base, limit, selector));
        }

        #[test]
        fn sregs_round_trip(
            cr0 in any::<u32>(), cr2 in any::<u64>(), cr3 in any::<u64>(), cr4 in any::<u64>(),
            cr8 in 0u64..16, efer in any::<u64>(), gdt in any::<(u64, u16)>(), idt in any::<(u64, u16)>(),
            forced in prop::sample::select(vec![0, CR4_MCE]),
        ) {
            let mut s = reset_sregs();
            s.cr0 = u64::from(cr0);
            s.cr2 = cr2;
            s.cr3 = cr3;
            s.cr4 = cr4;
            s.cr8 = cr8;
            s.efer = efer & !EFER_SVME;
            s.gdt = kvm_dtable { base: gdt.0, limit: gdt.1, padding: [0; 3] };
            s.idt = kvm_dtable { base: idt.0, limit: idt.1, padding: [0; 3] };
            let mut v = vmcb();
            let mut x = GuestExtra::default();
            set_sregs(&mut v, &mut x, &s, forced).unwrap();
            prop_assert!(v.save.efer & EFER_SVME != 0);
            prop_assert_eq!(v.save.cr4 & forced, forced);
            let mut out = kvm_sregs::new_zeroed();
            get_sregs(&v, &x, &mut out);
            prop_assert_eq!(out, s);
        }

        #[test]
        fn debugregs_round_trip(db in any::<[u64; 4]>(), dr6 in any::<u32>(), dr7 in any::<u32>()) {
            let d = kvm_debugregs { db, dr6: u64::from(dr6), dr7: u64::from(dr7), flags: 0, reserved: [0; 9] };
            let mut v = vmcb();
            let mut x = GuestExtra::default();
            set_debugregs(&mut v, &mut x, &d);
            let mut out = kvm_debugregs::new_zeroed();
            get_debugregs(&v, &x, &mut out);
            prop_assert_eq!(out, d);
        }

        #[test]
        fn injected_events_round_trip(vector in any::<u8>(), kind in 0u8..4, ec in proptest::option::of(any::<u32>())) {
            let kind = [EventType::Intr, EventType::Nmi, EventType::Exception, EventType::SoftInt][kind as usize];
            let ev = EventInj {
                vector: if kind == EventType::Nmi { 2 } else { vector },
                kind,
                error_code: if kind == EventType::Exception { ec } else { None },
            };
            let mut k = kvm_vcpu_events::new_zeroed();
            event_to_kvm(&ev, &mut k);
            prop_assert_eq!(event_from_kvm(&k), Some(ev));
            prop_assert_eq!(EventInj::decode(ev.encode()), Ok(Some(ev)));
        }
    }
}
