//! Host state and guest state in the VMCS.
//!
//! Host state is written from a snapshot the caller gathers on the CPU ([`HostState`]), with
//! the checks of SDM §27.2.3 "Checks on Host Segment and Descriptor-Table Registers" done first.
//! Guest state converts from and to the `kvm_abi` types the way Linux KVM's VMX backend
//! reports it (access rights ↔ KVM's unpacked segment fields with the "unusable" bit,
//! interruptibility, pending debug exceptions); `KVM_SET_SREGS` values that Linux refuses with
//! `EINVAL` are refused here too ([`StateError`]). Other invalid states reach the CPU and end as
//! a VM-entry failure, which the core reports as `KVM_EXIT_FAIL_ENTRY` (as Linux does with
//! unrestricted guest).
//!
//! CR0 and CR4 are fully intercepted (guest/host masks of all ones): the guest sees the read
//! shadows, the processor runs with the VMX fixed bits added (CR0.NE, CR4.VMXE), and every
//! `MOV to CR0/CR4` exits so the core can update EFER.LMA and the "IA-32e mode guest" control.

use crate::caps::{Controls, VmxCaps, CR0_PG};
use crate::vmcs::{VmFail, Vmcs};
use core::mem::offset_of;
use kvm_abi::{
    kvm_debugregs, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
    KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI,
};
use static_assertions::const_assert_eq;
use x86::vmx::vmcs::{control, guest, host};
use zerocopy::FromZeros;

/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR0.NW.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
pub const CR0_CD: u64 = 1 << 30;
/// RFLAGS bit 1 (always 1).
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Guest interruptibility state bits (SDM Table 25-3).
pub mod interruptibility {
    /// Blocking by STI.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS.
    pub const MOV_SS: u32 = 1 << 1;
    /// Blocking by SMI.
    pub const SMI: u32 = 1 << 2;
    /// Blocking by NMI (virtual-NMI blocking with virtual NMIs).
    pub const NMI: u32 = 1 << 3;
}

/// Pending debug exceptions bit 14: BS (single step).
pub const PENDING_DBG_BS: u64 = 1 << 14;

/// The guest registers the world switch loads before and saves after the guest runs (RSP,
/// RIP and RFLAGS are in the VMCS). `gpr` is indexed by the x86 register number (0 = RAX ...
/// 15 = R15); `gpr[4]` (RSP) is unused.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// RAX, RCX, RDX, RBX, (RSP), RBP, RSI, RDI, R8-R15.
    pub gpr: [u64; 16],
    /// CR2 (not part of the VMCS guest state).
    pub cr2: u64,
}

// `switch.rs` addresses the fields by offset.
const_assert_eq!(offset_of!(GuestRegs, gpr), 0);
const_assert_eq!(offset_of!(GuestRegs, cr2), 128);
const_assert_eq!(core::mem::size_of::<GuestRegs>(), 136);

/// Guest state kept beside the VMCS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestExtra {
    /// GPRs and CR2.
    pub regs: GuestRegs,
    /// DR0–DR3 (switched by software).
    pub db: [u64; 4],
    /// DR6 (switched by software).
    pub dr6: u64,
    /// CR8 (TPR): without a TPR shadow every CR8 access exits and the value lives here.
    pub cr8: u64,
}

/// A segment register.
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

/// The VMCS fields of a guest segment: selector, base, limit, access rights.
const fn seg_fields(s: Seg) -> [u32; 4] {
    match s {
        Seg::Es => [
            guest::ES_SELECTOR,
            guest::ES_BASE,
            guest::ES_LIMIT,
            guest::ES_ACCESS_RIGHTS,
        ],
        Seg::Cs => [
            guest::CS_SELECTOR,
            guest::CS_BASE,
            guest::CS_LIMIT,
            guest::CS_ACCESS_RIGHTS,
        ],
        Seg::Ss => [
            guest::SS_SELECTOR,
            guest::SS_BASE,
            guest::SS_LIMIT,
            guest::SS_ACCESS_RIGHTS,
        ],
        Seg::Ds => [
            guest::DS_SELECTOR,
            guest::DS_BASE,
            guest::DS_LIMIT,
            guest::DS_ACCESS_RIGHTS,
        ],
        Seg::Fs => [
            guest::FS_SELECTOR,
            guest::FS_BASE,
            guest::FS_LIMIT,
            guest::FS_ACCESS_RIGHTS,
        ],
        Seg::Gs => [
            guest::GS_SELECTOR,
            guest::GS_BASE,
            guest::GS_LIMIT,
            guest::GS_ACCESS_RIGHTS,
        ],
        Seg::Ldtr => [
            guest::LDTR_SELECTOR,
            guest::LDTR_BASE,
            guest::LDTR_LIMIT,
            guest::LDTR_ACCESS_RIGHTS,
        ],
        Seg::Tr => [
            guest::TR_SELECTOR,
            guest::TR_BASE,
            guest::TR_LIMIT,
            guest::TR_ACCESS_RIGHTS,
        ],
    }
}

/// Access-rights bit 16: segment unusable.
pub const AR_UNUSABLE: u32 = 1 << 16;

/// Packs KVM's segment fields into the VMX access-rights format (SDM Table 25-2): type 3:0,
/// S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16. A segment that is unusable or
/// not present is marked unusable (a usable segment must be present).
pub fn pack_ar(s: &kvm_segment) -> u32 {
    let unusable = s.unusable != 0 || s.present == 0;
    u32::from(s.r#type & 0xf)
        | u32::from(s.s & 1) << 4
        | u32::from(s.dpl & 3) << 5
        | u32::from(s.present & 1) << 7
        | u32::from(s.avl & 1) << 12
        | u32::from(s.l & 1) << 13
        | u32::from(s.db & 1) << 14
        | u32::from(s.g & 1) << 15
        | if unusable { AR_UNUSABLE } else { 0 }
}

/// Unpacks access rights into KVM's fields as Linux reports them: `present` is the inverse
/// of `unusable` (so userspace that drops `unusable` still round-trips).
pub fn unpack_ar(ar: u32) -> kvm_segment {
    let bit = |n: u32| ((ar >> n) & 1) as u8;
    let unusable = bit(16);
    kvm_segment {
        r#type: (ar & 0xf) as u8,
        s: bit(4),
        dpl: ((ar >> 5) & 3) as u8,
        present: 1 - unusable,
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable,
        ..FromZeros::new_zeroed()
    }
}

/// The value [`set_segment`] stores and [`get_segment`] returns for `s`: what a
/// `KVM_SET_SREGS` / `KVM_GET_SREGS` round trip gives on Linux with unrestricted guest.
pub fn normalize_segment(which: Seg, s: &kvm_segment) -> kvm_segment {
    let mut t = *s;
    if which != Seg::Ldtr {
        // Linux sets the accessed bit (older QEMU cleared it; entry would fail).
        t.r#type |= 1;
    }
    let mut out = unpack_ar(pack_ar(&t));
    out.selector = s.selector;
    out.base = s.base;
    out.limit = s.limit;
    out
}

/// Writes a guest segment (`KVM_SET_SREGS` semantics with unrestricted guest).
pub fn set_segment(v: &mut impl Vmcs, which: Seg, s: &kvm_segment) -> Result<(), VmFail> {
    let [sel, base, limit, ar] = seg_fields(which);
    let mut t = *s;
    if which != Seg::Ldtr {
        t.r#type |= 1;
    }
    v.write(sel, u64::from(s.selector))?;
    v.write(base, s.base)?;
    v.write(limit, u64::from(s.limit))?;
    v.write(ar, u64::from(pack_ar(&t)))
}

/// Reads a guest segment as `KVM_GET_SREGS` reports it.
pub fn get_segment(v: &impl Vmcs, which: Seg) -> Result<kvm_segment, VmFail> {
    let [sel, base, limit, ar] = seg_fields(which);
    let mut s = unpack_ar(v.read(ar)? as u32);
    s.selector = v.read(sel)? as u16;
    s.base = v.read(base)?;
    s.limit = v.read(limit)? as u32;
    Ok(s)
}

/// Why `KVM_SET_SREGS` / `KVM_SET_DEBUGREGS` values are refused (`EINVAL`, as on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// CR0 bits 63:32 set, NW without CD, or PG without PE (`kvm_is_valid_cr0`).
    Cr0(u64),
    /// CR4 with bits the CPU does not support, or VMXE (no nested VMX).
    Cr4(u64),
    /// EFER.LME with CR0.PG but without CR4.PAE or EFER.LMA, or EFER.LMA / CS.L outside long
    /// mode (`kvm_is_valid_sregs`).
    LongMode,
    /// DR6 or DR7 with bits 63:32 set.
    DebugReg,
}

/// The checks Linux makes on `KVM_SET_SREGS` (`kvm_is_valid_sregs`, `kvm_is_valid_cr0/cr4`,
/// `vmx_is_valid_cr4`), with the CR4 bits the processor supports in VMX operation.
pub fn check_sregs(caps: &VmxCaps, s: &kvm_sregs) -> Result<(), StateError> {
    let cr0 = s.cr0;
    if cr0 >> 32 != 0
        || (cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0)
        || (cr0 & CR0_PG != 0 && cr0 & 1 == 0)
    {
        return Err(StateError::Cr0(cr0));
    }
    if s.cr4 & caps.cr4_fixed0_bits() != 0 || s.cr4 & CR4_VMXE != 0 {
        return Err(StateError::Cr4(s.cr4));
    }
    if s.efer & EFER_LME != 0 && cr0 & CR0_PG != 0 {
        if s.cr4 & CR4_PAE == 0 || s.efer & EFER_LMA == 0 {
            return Err(StateError::LongMode);
        }
    } else if s.efer & EFER_LMA != 0 || s.cs.l != 0 {
        return Err(StateError::LongMode);
    }
    Ok(())
}

const SEGS: [Seg; 8] = [
    Seg::Cs,
    Seg::Ds,
    Seg::Es,
    Seg::Fs,
    Seg::Gs,
    Seg::Ss,
    Seg::Tr,
    Seg::Ldtr,
];

fn sreg_seg(s: &kvm_sregs, which: Seg) -> &kvm_segment {
    match which {
        Seg::Es => &s.es,
        Seg::Cs => &s.cs,
        Seg::Ss => &s.ss,
        Seg::Ds => &s.ds,
        Seg::Fs => &s.fs,
        Seg::Gs => &s.gs,
        Seg::Ldtr => &s.ldt,
        Seg::Tr => &s.tr,
    }
}

fn sreg_seg_mut(s: &mut kvm_sregs, which: Seg) -> &mut kvm_segment {
    match which {
        Seg::Es => &mut s.es,
        Seg::Cs => &mut s.cs,
        Seg::Ss => &mut s.ss,
        Seg::Ds => &mut s.ds,
        Seg::Fs => &mut s.fs,
        Seg::Gs => &mut s.gs,
        Seg::Ldtr => &mut s.ldt,
        Seg::Tr => &mut s.tr,
    }
}

/// Writes guest CR0 as the guest sees it: read shadow = `cr0`, processor CR0 = `cr0` plus the
/// fixed-1 bits (NE), guest/host mask all ones.
pub fn set_cr0(v: &mut impl Vmcs, caps: &VmxCaps, cr0: u64) -> Result<(), VmFail> {
    v.write(control::CR0_READ_SHADOW, cr0)?;
    v.write(control::CR0_GUEST_HOST_MASK, u64::MAX)?;
    v.write(
        guest::CR0,
        (cr0 | caps.guest_cr0_fixed1_bits()) & !caps.cr0_fixed0_bits(),
    )
}

/// Writes guest CR4: read shadow = `cr4`, processor CR4 = `cr4 | VMXE`, mask all ones.
pub fn set_cr4(v: &mut impl Vmcs, caps: &VmxCaps, cr4: u64) -> Result<(), VmFail> {
    v.write(control::CR4_READ_SHADOW, cr4)?;
    v.write(control::CR4_GUEST_HOST_MASK, u64::MAX)?;
    v.write(guest::CR4, cr4 | caps.cr4_fixed1_bits())
}

/// Writes guest EFER and the matching "IA-32e mode guest" entry control.
pub fn set_efer(v: &mut impl Vmcs, ctl: &Controls, efer: u64) -> Result<(), VmFail> {
    v.write(guest::IA32_EFER_FULL, efer)?;
    v.write(
        control::VMENTRY_CONTROLS,
        u64::from(ctl.entry_for(efer & EFER_LMA != 0)),
    )
}

/// `KVM_SET_SREGS` (after [`check_sregs`]): segments, GDTR/IDTR, CR0/CR2/CR3/CR4, CR8 and EFER.
/// The caller handles `apic_base` and `interrupt_bitmap`, and for PAE paging outside long mode
/// loads the PDPTEs from guest memory into `GUEST_PDPTE0..3` (EPT uses the VMCS copies).
pub fn set_sregs(
    v: &mut impl Vmcs,
    extra: &mut GuestExtra,
    caps: &VmxCaps,
    ctl: &Controls,
    s: &kvm_sregs,
) -> Result<(), VmFail> {
    for which in SEGS {
        set_segment(v, which, sreg_seg(s, which))?;
    }
    v.write(guest::GDTR_BASE, s.gdt.base)?;
    v.write(guest::GDTR_LIMIT, u64::from(s.gdt.limit))?;
    v.write(guest::IDTR_BASE, s.idt.base)?;
    v.write(guest::IDTR_LIMIT, u64::from(s.idt.limit))?;
    set_cr0(v, caps, s.cr0)?;
    v.write(guest::CR3, s.cr3)?;
    set_cr4(v, caps, s.cr4)?;
    set_efer(v, ctl, s.efer)?;
    extra.regs.cr2 = s.cr2;
    extra.cr8 = s.cr8;
    Ok(())
}

/// `KVM_GET_SREGS` (everything but `apic_base` and `interrupt_bitmap`).
pub fn get_sregs(v: &impl Vmcs, extra: &GuestExtra, out: &mut kvm_sregs) -> Result<(), VmFail> {
    for which in SEGS {
        *sreg_seg_mut(out, which) = get_segment(v, which)?;
    }
    out.gdt = kvm_dtable {
        base: v.read(guest::GDTR_BASE)?,
        limit: v.read(guest::GDTR_LIMIT)? as u16,
        padding: [0; 3],
    };
    out.idt = kvm_dtable {
        base: v.read(guest::IDTR_BASE)?,
        limit: v.read(guest::IDTR_LIMIT)? as u16,
        padding: [0; 3],
    };
    out.cr0 = v.read(control::CR0_READ_SHADOW)?;
    out.cr2 = extra.regs.cr2;
    out.cr3 = v.read(guest::CR3)?;
    out.cr4 = v.read(control::CR4_READ_SHADOW)?;
    out.cr8 = extra.cr8;
    out.efer = v.read(guest::IA32_EFER_FULL)?;
    Ok(())
}

/// `KVM_SET_REGS`: RSP/RIP/RFLAGS (bit 1 forced) into the VMCS, the rest into `regs`.
pub fn set_regs(v: &mut impl Vmcs, regs: &mut GuestRegs, r: &kvm_regs) -> Result<(), VmFail> {
    regs.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, 0, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
        r.r14, r.r15,
    ];
    v.write(guest::RSP, r.rsp)?;
    v.write(guest::RIP, r.rip)?;
    v.write(guest::RFLAGS, r.rflags | RFLAGS_FIXED)
}

/// `KVM_GET_REGS`.
pub fn get_regs(v: &impl Vmcs, regs: &GuestRegs, out: &mut kvm_regs) -> Result<(), VmFail> {
    let [rax, rcx, rdx, rbx, _, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = regs.gpr;
    *out = kvm_regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rsp: v.read(guest::RSP)?,
        rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: v.read(guest::RIP)?,
        rflags: v.read(guest::RFLAGS)?,
    };
    Ok(())
}

/// `KVM_SET_DEBUGREGS`: DR7 into the VMCS (loaded by "load debug controls"), DR0–DR3 and DR6
/// into `extra`. Bits 63:32 of DR6/DR7 are refused as on Linux.
pub fn set_debugregs(
    v: &mut impl Vmcs,
    extra: &mut GuestExtra,
    d: &kvm_debugregs,
) -> Result<Result<(), StateError>, VmFail> {
    if d.dr6 >> 32 != 0 || d.dr7 >> 32 != 0 {
        return Ok(Err(StateError::DebugReg));
    }
    extra.db = d.db;
    extra.dr6 = d.dr6;
    v.write(guest::DR7, d.dr7)?;
    Ok(Ok(()))
}

/// `KVM_GET_DEBUGREGS`.
pub fn get_debugregs(
    v: &impl Vmcs,
    extra: &GuestExtra,
    out: &mut kvm_debugregs,
) -> Result<(), VmFail> {
    out.db = extra.db;
    out.dr6 = extra.dr6;
    out.dr7 = v.read(guest::DR7)?;
    out.flags = 0;
    Ok(())
}

/// The interruptibility state for `KVM_SET_VCPU_EVENTS`'s interrupt shadow and NMI mask.
/// Combinations the processor refuses on entry are made valid: STI and MOV-SS blocking
/// together keep MOV SS (SDM §27.3.1.5: not both), and STI blocking with RFLAGS.IF = 0 is
/// dropped (it cannot matter then).
pub fn interruptibility_from_events(ev: &kvm_vcpu_events, rflags: u64, old: u32) -> u32 {
    let mut i = old & !(interruptibility::STI | interruptibility::MOV_SS | interruptibility::NMI);
    let shadow = ev.interrupt.shadow;
    if shadow & KVM_X86_SHADOW_INT_MOV_SS != 0 {
        i |= interruptibility::MOV_SS;
    } else if shadow & KVM_X86_SHADOW_INT_STI != 0 && rflags & RFLAGS_IF != 0 {
        i |= interruptibility::STI;
    }
    if ev.nmi.masked != 0 {
        i |= interruptibility::NMI;
    }
    i
}

/// Writes interruptibility state, setting the pending-debug BS bit when the guest single-steps
/// out of an STI/MOV-SS shadow (SDM §27.3.1.5: entry fails otherwise).
pub fn set_interruptibility(v: &mut impl Vmcs, intr: u32) -> Result<(), VmFail> {
    v.write(guest::INTERRUPTIBILITY_STATE, u64::from(intr))?;
    let rflags = v.read(guest::RFLAGS)?;
    let mut pending = v.read(guest::PENDING_DBG_EXCEPTIONS)?;
    if intr & (interruptibility::STI | interruptibility::MOV_SS) != 0 && rflags & RFLAGS_TF != 0 {
        pending |= PENDING_DBG_BS;
    } else {
        pending &= !PENDING_DBG_BS;
    }
    v.write(guest::PENDING_DBG_EXCEPTIONS, pending)
}

/// Fills `KVM_GET_VCPU_EVENTS`'s interrupt shadow and NMI mask from the interruptibility
/// state (the injected/pending events come from the caller's event queue).
pub fn events_from_interruptibility(intr: u32, ev: &mut kvm_vcpu_events) {
    ev.interrupt.shadow = if intr & interruptibility::MOV_SS != 0 {
        KVM_X86_SHADOW_INT_MOV_SS
    } else if intr & interruptibility::STI != 0 {
        KVM_X86_SHADOW_INT_STI
    } else {
        0
    };
    ev.nmi.masked = u8::from(intr & interruptibility::NMI != 0);
}

/// The host state the caller reads on the CPU that will run the guest (with interrupts
/// disabled), for [`write_host_state`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CS, SS, DS, ES, FS, GS, TR selectors.
    pub cs: u16,
    /// SS selector.
    pub ss: u16,
    /// DS selector.
    pub ds: u16,
    /// ES selector.
    pub es: u16,
    /// FS selector.
    pub fs: u16,
    /// GS selector.
    pub gs: u16,
    /// TR selector.
    pub tr: u16,
    /// FS base (`IA32_FS_BASE`).
    pub fs_base: u64,
    /// GS base (`IA32_GS_BASE`: the kernel's per-CPU base in the kernel).
    pub gs_base: u64,
    /// TR base (from the GDT descriptor).
    pub tr_base: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// `IA32_SYSENTER_CS`.
    pub sysenter_cs: u32,
    /// `IA32_SYSENTER_ESP`.
    pub sysenter_esp: u64,
    /// `IA32_SYSENTER_EIP`.
    pub sysenter_eip: u64,
    /// `IA32_EFER`.
    pub efer: u64,
    /// `IA32_PAT`.
    pub pat: u64,
}

/// Why the host state would fail VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStateError {
    /// A selector with RPL or TI set, or a null CS/TR.
    Selector(u16),
    /// A non-canonical base address.
    NonCanonical(u64),
}

const fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

/// Writes the host-state area: `state` plus HOST_RIP = `host_rip` (the world switch's exit
/// label). HOST_RSP is written by the world switch itself on every entry.
pub fn write_host_state(
    v: &mut impl Vmcs,
    state: &HostState,
    host_rip: u64,
) -> Result<Result<(), HostStateError>, VmFail> {
    let sels = [
        state.cs, state.ss, state.ds, state.es, state.fs, state.gs, state.tr,
    ];
    if let Some(&bad) = sels.iter().find(|s| **s & 7 != 0) {
        return Ok(Err(HostStateError::Selector(bad)));
    }
    if state.cs == 0 || state.tr == 0 {
        return Ok(Err(HostStateError::Selector(0)));
    }
    let bases = [
        state.fs_base,
        state.gs_base,
        state.tr_base,
        state.gdtr_base,
        state.idtr_base,
        state.sysenter_esp,
        state.sysenter_eip,
        host_rip,
    ];
    if let Some(&bad) = bases.iter().find(|b| !canonical(**b)) {
        return Ok(Err(HostStateError::NonCanonical(bad)));
    }
    for (f, val) in [
        (host::CR0, state.cr0),
        (host::CR3, state.cr3),
        (host::CR4, state.cr4),
        (host::CS_SELECTOR, u64::from(state.cs)),
        (host::SS_SELECTOR, u64::from(state.ss)),
        (host::DS_SELECTOR, u64::from(state.ds)),
        (host::ES_SELECTOR, u64::from(state.es)),
        (host::FS_SELECTOR, u64::from(state.fs)),
        (host::GS_SELECTOR, u64::from(state.gs)),
        (host::TR_SELECTOR, u64::from(state.tr)),
        (host::FS_BASE, state.fs_base),
        (host::GS_BASE, state.gs_base),
        (host::TR_BASE, state.tr_base),
        (host::GDTR_BASE, state.gdtr_base),
        (host::IDTR_BASE, state.idtr_base),
        (host::IA32_SYSENTER_CS, u64::from(state.sysenter_cs)),
        (host::IA32_SYSENTER_ESP, state.sysenter_esp),
        (host::IA32_SYSENTER_EIP, state.sysenter_eip),
        (host::IA32_EFER_FULL, state.efer),
        (host::IA32_PAT_FULL, state.pat),
        (host::RIP, host_rip),
    ] {
        v.write(f, val)?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::ControlPolicy;
    use crate::testdata::BOCHS_SKYLAKE_X;
    use crate::vmcs::fake::FakeVmcs;
    use proptest::prelude::*;

    fn z<T: FromZeros>() -> T {
        T::new_zeroed()
    }

    fn caps() -> (VmxCaps, Controls) {
        let c = VmxCaps::new(BOCHS_SKYLAKE_X).unwrap();
        let ctl = c.controls(&ControlPolicy::default()).unwrap();
        (c, ctl)
    }

    fn seg() -> impl Strategy<Value = kvm_segment> {
        (any::<u64>(), any::<u32>(), any::<u16>(), any::<[u8; 9]>()).prop_map(
            |(base, limit, selector, b)| kvm_segment {
                base,
                limit,
                selector,
                r#type: b[0] & 0xf,
                present: b[1] & 1,
                dpl: b[2] & 3,
                db: b[3] & 1,
                s: b[4] & 1,
                l: b[5] & 1,
                g: b[6] & 1,
                avl: b[7] & 1,
                unusable: b[8] & 1,
                padding: 0,
            },
        )
    }

    #[test]
    fn access_rights_format() {
        // 64-bit code segment, DPL 0, accessed: 0xa09b.
        let cs = kvm_segment {
            r#type: 0xb,
            s: 1,
            present: 1,
            l: 1,
            g: 1,
            ..z()
        };
        assert_eq!(pack_ar(&cs), 0xa09b);
        // Not present = unusable.
        let ds = kvm_segment {
            r#type: 3,
            s: 1,
            present: 0,
            ..z()
        };
        assert_eq!(pack_ar(&ds), 0x1_0013);
        let back = unpack_ar(0x1_0013);
        assert_eq!((back.unusable, back.present, back.r#type), (1, 0, 3));
        // Unusable wins over present, and reads back not present.
        let u = kvm_segment {
            present: 1,
            unusable: 1,
            r#type: 3,
            s: 1,
            ..z()
        };
        assert_eq!(unpack_ar(pack_ar(&u)).present, 0);
    }

    proptest! {
        #[test]
        fn segment_round_trip(s in seg(), idx in 0usize..8) {
            let which = SEGS[idx];
            let mut v = FakeVmcs::default();
            set_segment(&mut v, which, &s).unwrap();
            let got = get_segment(&v, which).unwrap();
            prop_assert_eq!(got, normalize_segment(which, &s));
            // Idempotent: a second round trip changes nothing.
            set_segment(&mut v, which, &got).unwrap();
            prop_assert_eq!(get_segment(&v, which).unwrap(), got);
            prop_assert_eq!(got.present, 1 - got.unusable);
            if which != Seg::Ldtr {
                prop_assert_eq!(got.r#type & 1, 1);
            }
        }

        #[test]
        fn regs_round_trip(g in any::<[u64; 18]>()) {
            let r = kvm_regs {
                rax: g[0], rbx: g[1], rcx: g[2], rdx: g[3], rsi: g[4], rdi: g[5], rsp: g[6],
                rbp: g[7], r8: g[8], r9: g[9], r10: g[10], r11: g[11], r12: g[12], r13: g[13],
                r14: g[14], r15: g[15], rip: g[16], rflags: g[17],
            };
            let mut v = FakeVmcs::default();
            let mut regs = GuestRegs::default();
            set_regs(&mut v, &mut regs, &r).unwrap();
            let mut out = kvm_regs::new_zeroed();
            get_regs(&v, &regs, &mut out).unwrap();
            prop_assert_eq!(out, kvm_regs { rflags: r.rflags | 2, ..r });
            prop_assert_eq!(regs.gpr[3], r.rbx);
            prop_assert_eq!(regs.gpr[4], 0);
        }

        #[test]
        fn sregs_round_trip(segs in proptest::collection::vec(seg(), 8), cr in any::<[u64; 4]>(),
                            gdt in any::<(u64, u16)>(), idt in any::<(u64, u16)>(), lma in any::<bool>()) {
            let (caps, ctl) = caps();
            let mut s = kvm_sregs::new_zeroed();
            for (i, which) in SEGS.iter().enumerate() {
                *sreg_seg_mut(&mut s, *which) = segs[i];
            }
            s.gdt = kvm_dtable { base: gdt.0, limit: gdt.1, padding: [0; 3] };
            s.idt = kvm_dtable { base: idt.0, limit: idt.1, padding: [0; 3] };
            s.cr0 = (cr[0] & 0xffff_ffff) | 0x11;
            s.cr2 = cr[1];
            s.cr3 = cr[2];
            s.cr4 = cr[3] & 0x20ff;
            s.cr8 = cr[1] & 0xf;
            s.efer = if lma { 0xd01 } else { 0x1 };
            let mut v = FakeVmcs::default();
            let mut extra = GuestExtra::default();
            set_sregs(&mut v, &mut extra, &caps, &ctl, &s).unwrap();
            let mut out = kvm_sregs::new_zeroed();
            get_sregs(&v, &extra, &mut out).unwrap();
            let mut want = s;
            for which in SEGS {
                *sreg_seg_mut(&mut want, which) = normalize_segment(which, sreg_seg(&s, which));
            }
            prop_assert_eq!(out, want);
            // The processor's CR0 has NE, its CR4 has VMXE; the shadows hide them.
            prop_assert_eq!(v.get(guest::CR0) & 0x20, 0x20);
            prop_assert_eq!(v.get(guest::CR4) & CR4_VMXE, CR4_VMXE);
            prop_assert_eq!(v.get(control::CR0_GUEST_HOST_MASK), u64::MAX);
            prop_assert_eq!(v.get(control::VMENTRY_CONTROLS) & (1 << 9) != 0, lma);
        }

        #[test]
        fn events_shadow_round_trip(shadow in 0u8..4, masked in any::<bool>(), iflag in any::<bool>(), tf in any::<bool>()) {
            let mut ev = kvm_vcpu_events::new_zeroed();
            ev.interrupt.shadow = shadow;
            ev.nmi.masked = u8::from(masked);
            let rflags = 2 | if iflag { RFLAGS_IF } else { 0 } | if tf { RFLAGS_TF } else { 0 };
            let i = interruptibility_from_events(&ev, rflags, interruptibility::SMI);
            prop_assert!(i & 3 != 3, "never both STI and MOV SS");
            prop_assert!(i & interruptibility::SMI != 0, "other bits kept");
            let mut v = FakeVmcs::default();
            v.write(guest::RFLAGS, rflags).unwrap();
            set_interruptibility(&mut v, i).unwrap();
            prop_assert_eq!(v.get(guest::PENDING_DBG_EXCEPTIONS) & PENDING_DBG_BS != 0, tf && i & 3 != 0);
            let mut out = kvm_vcpu_events::new_zeroed();
            events_from_interruptibility(i, &mut out);
            let want_shadow = if shadow & 1 != 0 { 1 } else if shadow & 2 != 0 && iflag { 2 } else { 0 };
            prop_assert_eq!(out.interrupt.shadow, want_shadow);
            prop_assert_eq!(out.nmi.masked, u8::from(masked));
        }
    }

    #[test]
    fn sregs_checks_match_linux() {
        let (caps, _) = caps();
        let ok = kvm_sregs {
            cr0: 0x6000_0010,
            ..z()
        };
        assert_eq!(check_sregs(&caps, &ok), Ok(()));
        let long = kvm_sregs {
            cr0: 0x8000_0011,
            cr4: 0x20,
            efer: 0x500,
            ..z()
        };
        assert_eq!(check_sregs(&caps, &long), Ok(()));
        for (bad, err) in [
            (kvm_sregs { cr0: 1 << 32, ..ok }, StateError::Cr0(1 << 32)),
            (kvm_sregs { cr0: CR0_NW, ..ok }, StateError::Cr0(CR0_NW)),
            (kvm_sregs { cr0: CR0_PG, ..ok }, StateError::Cr0(CR0_PG)),
            (
                kvm_sregs {
                    cr4: CR4_VMXE,
                    ..ok
                },
                StateError::Cr4(CR4_VMXE),
            ),
            // PKE (bit 22) is not supported by Bochs's Skylake-X.
            (kvm_sregs { cr4: 1 << 22, ..ok }, StateError::Cr4(1 << 22)),
            (kvm_sregs { cr4: 0, ..long }, StateError::LongMode),
            (
                kvm_sregs {
                    efer: 0x100,
                    ..long
                },
                StateError::LongMode,
            ),
            (kvm_sregs { efer: 0x400, ..ok }, StateError::LongMode),
        ] {
            assert_eq!(check_sregs(&caps, &bad), Err(err));
        }
        let mut cs_l = ok;
        cs_l.cs.l = 1;
        assert_eq!(check_sregs(&caps, &cs_l), Err(StateError::LongMode));
    }

    #[test]
    fn debugregs() {
        let mut v = FakeVmcs::default();
        let mut extra = GuestExtra::default();
        let d = kvm_debugregs {
            db: [1, 2, 3, 4],
            dr6: 0xffff_0ff0,
            dr7: 0x401,
            ..z()
        };
        assert_eq!(set_debugregs(&mut v, &mut extra, &d), Ok(Ok(())));
        let mut out = kvm_debugregs::new_zeroed();
        get_debugregs(&v, &extra, &mut out).unwrap();
        assert_eq!(out, d);
        let bad = kvm_debugregs { dr7: 1 << 32, ..d };
        assert_eq!(
            set_debugregs(&mut v, &mut extra, &bad),
            Ok(Err(StateError::DebugReg))
        );
    }

    #[test]
    fn host_state() {
        let hs = HostState {
            cr0: 0x8005_0033,
            cr3: 0x1_2000,
            cr4: 0x26f0,
            cs: 0x08,
            ss: 0x10,
            tr: 0x30,
            gs_base: 0xffff_8000_0000_1000,
            tr_base: 0xffff_8000_0000_2000,
            gdtr_base: 0xffff_8000_0000_3000,
            idtr_base: 0xffff_8000_0000_4000,
            efer: 0xd01,
            pat: 0x0007_0406_0007_0406,
            ..Default::default()
        };
        let mut v = FakeVmcs::default();
        assert_eq!(
            write_host_state(&mut v, &hs, 0xffff_ffff_8100_0000),
            Ok(Ok(()))
        );
        assert_eq!(v.get(host::RIP), 0xffff_ffff_8100_0000);
        assert_eq!(v.get(host::TR_SELECTOR), 0x30);
        assert_eq!(v.get(host::IA32_PAT_FULL), hs.pat);
        assert_eq!(v.writes.len(), 21);
        let mut v = FakeVmcs::default();
        let bad = HostState { ds: 0x23, ..hs };
        assert_eq!(
            write_host_state(&mut v, &bad, 0),
            Ok(Err(HostStateError::Selector(0x23)))
        );
        let bad = HostState { tr: 0, ..hs };
        assert_eq!(
            write_host_state(&mut v, &bad, 0),
            Ok(Err(HostStateError::Selector(0)))
        );
        let bad = HostState {
            gs_base: 0x8000_0000_0000_0000,
            ..hs
        };
        assert_eq!(
            write_host_state(&mut v, &bad, 0),
            Ok(Err(HostStateError::NonCanonical(0x8000_0000_0000_0000)))
        );
        assert!(
            v.writes.is_empty(),
            "nothing written when the state is refused"
        );
    }
}
