//! The virtual machine control block (AMD APM vol. 2, appendix B "Layout of VMCB").
//!
//! One 4 KiB page: the control area (Table B-1, "VMCB Layout, Control Area", offsets 000h–3FFh)
//! followed by the state save area (Table B-2, "VMCB Layout, State Save Area", offsets relative
//! to 400h). Every field offset is asserted at compile time against those tables.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;

/// A segment register in the state save area: selector, packed attributes, limit, base
/// (Table B-2; attribute format in §15.5.1 "Basic Operation", "Segment State in the VMCB").
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Packed attributes: descriptor bits 47:40 in 7:0, descriptor bits 55:52 in 11:8.
    pub attrib: u16,
    /// Expanded 32-bit limit (already scaled by G).
    pub limit: u32,
    /// Base address.
    pub base: u64,
}
const_assert_eq!(size_of::<VmcbSegment>(), 16);

/// The VMCB control area (Table B-1).
#[repr(C)]
#[derive(Debug)]
pub struct VmcbControl {
    /// 000h: bits 15:0 intercept reads of CR0–CR15, bits 31:16 intercept writes.
    pub intercept_cr: u32,
    /// 004h: bits 15:0 intercept reads of DR0–DR15, bits 31:16 intercept writes.
    pub intercept_dr: u32,
    /// 008h: intercept exception vectors 0–31 (bit n = vector n).
    pub intercept_exceptions: u32,
    /// 00Ch: [`crate::intercept::InterceptMisc1`].
    pub intercept_misc1: u32,
    /// 010h: [`crate::intercept::InterceptMisc2`].
    pub intercept_misc2: u32,
    /// 014h: [`crate::intercept::InterceptMisc3`].
    pub intercept_misc3: u32,
    _reserved_018: [u8; 0x24],
    /// 03Ch: PAUSE filter threshold (cycles).
    pub pause_filter_threshold: u16,
    /// 03Eh: PAUSE filter count.
    pub pause_filter_count: u16,
    /// 040h: physical base address of the I/O permission map (4 KiB aligned).
    pub iopm_base_pa: u64,
    /// 048h: physical base address of the MSR permission map (4 KiB aligned).
    pub msrpm_base_pa: u64,
    /// 050h: TSC offset added to the guest's view of the TSC.
    pub tsc_offset: u64,
    /// 058h: guest ASID (bits 31:0 of the quadword).
    pub guest_asid: u32,
    /// 05Ch: TLB_CONTROL (bits 39:32 of the quadword at 058h), see [`TlbControl`].
    pub tlb_control: u8,
    _reserved_05d: [u8; 3],
    /// 060h: V_TPR, V_IRQ, VGIF, V_NMI, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, ... ([`IntCtl`]).
    pub int_ctl: u32,
    /// 064h: V_INTR_VECTOR (bits 39:32 of the quadword at 060h, low byte here).
    pub int_vector: u32,
    /// 068h: bit 0 INTERRUPT_SHADOW, bit 1 GUEST_INTERRUPT_MASK.
    pub int_state: u64,
    /// 070h: EXITCODE.
    pub exit_code: u64,
    /// 078h: EXITINFO1.
    pub exit_info1: u64,
    /// 080h: EXITINFO2.
    pub exit_info2: u64,
    /// 088h: EXITINTINFO (event being delivered when the exit happened, [`EventInj`] format).
    pub exit_int_info: u64,
    /// 090h: bit 0 NP_ENABLE, 1 SEV, 2 SEV-ES, 3 GMET, 4 SSSCheckEn, 5 VTE.
    pub np_control: u64,
    /// 098h: AVIC APIC_BAR.
    pub avic_apic_bar: u64,
    /// 0A0h: guest physical address of the GHCB (SEV-ES).
    pub ghcb_pa: u64,
    /// 0A8h: EVENTINJ ([`EventInj`] format).
    pub event_inj: u64,
    /// 0B0h: N_CR3, the nested page table root.
    pub n_cr3: u64,
    /// 0B8h: bit 0 LBR virtualization enable, bit 1 virtualized VMSAVE/VMLOAD enable.
    pub virt_ext: u64,
    /// 0C0h: VMCB clean bits ([`CleanBits`]), bits 31:0.
    pub clean: u32,
    _reserved_0c4: u32,
    /// 0C8h: nRIP, the next sequential instruction pointer (with NRIPS).
    pub next_rip: u64,
    /// 0D0h: number of guest instruction bytes fetched (decode assists).
    pub insn_len: u8,
    /// 0D1h–0DFh: guest instruction bytes (decode assists).
    pub insn_bytes: [u8; 15],
    /// 0E0h: AVIC APIC_BACKING_PAGE pointer.
    pub avic_backing_page: u64,
    _reserved_0e8: u64,
    /// 0F0h: AVIC LOGICAL_TABLE pointer.
    pub avic_logical_table: u64,
    /// 0F8h: AVIC PHYSICAL_TABLE pointer and max index.
    pub avic_physical_table: u64,
    _reserved_100: u64,
    /// 108h: VMSA pointer (SEV-ES).
    pub vmsa_pa: u64,
    /// 110h: VMGEXIT_RAX (SEV-ES).
    pub vmgexit_rax: u64,
    /// 118h: VMGEXIT_CPL (SEV-ES).
    pub vmgexit_cpl: u8,
    _reserved_119: [u8; 7],
    /// 120h: bus-lock threshold counter.
    pub bus_lock_counter: u16,
    _reserved_122: [u8; 0x3e0 - 0x122],
    /// 3E0h–3FFh: reserved for host usage (the processor never touches it).
    pub host_reserved: [u8; 0x20],
}

/// The VMCB state save area (Table B-2; offsets relative to 400h).
#[repr(C)]
#[derive(Debug)]
pub struct VmcbSave {
    /// 000h.
    pub es: VmcbSegment,
    /// 010h.
    pub cs: VmcbSegment,
    /// 020h.
    pub ss: VmcbSegment,
    /// 030h.
    pub ds: VmcbSegment,
    /// 040h.
    pub fs: VmcbSegment,
    /// 050h.
    pub gs: VmcbSegment,
    /// 060h: only limit and base are used.
    pub gdtr: VmcbSegment,
    /// 070h.
    pub ldtr: VmcbSegment,
    /// 080h: only limit and base are used.
    pub idtr: VmcbSegment,
    /// 090h.
    pub tr: VmcbSegment,
    _reserved_0a0: [u8; 0x2a],
    /// 0CAh: VMPL (SEV-SNP).
    pub vmpl: u8,
    /// 0CBh: CPL.
    pub cpl: u8,
    _reserved_0cc: u32,
    /// 0D0h: EFER (SVME must be set for VMRUN to succeed).
    pub efer: u64,
    _reserved_0d8: [u8; 0x148 - 0xd8],
    /// 148h.
    pub cr4: u64,
    /// 150h.
    pub cr3: u64,
    /// 158h.
    pub cr0: u64,
    /// 160h.
    pub dr7: u64,
    /// 168h.
    pub dr6: u64,
    /// 170h.
    pub rflags: u64,
    /// 178h.
    pub rip: u64,
    _reserved_180: [u8; 0x1d8 - 0x180],
    /// 1D8h.
    pub rsp: u64,
    /// 1E0h: S_CET.
    pub s_cet: u64,
    /// 1E8h: SSP.
    pub ssp: u64,
    /// 1F0h: ISST_ADDR.
    pub isst_addr: u64,
    /// 1F8h.
    pub rax: u64,
    /// 200h.
    pub star: u64,
    /// 208h.
    pub lstar: u64,
    /// 210h.
    pub cstar: u64,
    /// 218h.
    pub sfmask: u64,
    /// 220h.
    pub kernel_gs_base: u64,
    /// 228h.
    pub sysenter_cs: u64,
    /// 230h.
    pub sysenter_esp: u64,
    /// 238h.
    pub sysenter_eip: u64,
    /// 240h.
    pub cr2: u64,
    _reserved_248: [u8; 0x268 - 0x248],
    /// 268h: guest PAT (used only with nested paging).
    pub g_pat: u64,
    /// 270h: DBGCTL (with LBR virtualization).
    pub dbgctl: u64,
    /// 278h: BR_FROM.
    pub br_from: u64,
    /// 280h: BR_TO.
    pub br_to: u64,
    /// 288h: LASTEXCPFROM.
    pub last_excp_from: u64,
    /// 290h: LASTEXCPTO.
    pub last_excp_to: u64,
    _reserved_298: [u8; 0x2e0 - 0x298],
    /// 2E0h: guest SPEC_CTRL (with SPEC_CTRL virtualization).
    pub spec_ctrl: u64,
    _reserved_2e8: [u8; 0xc00 - 0x2e8],
}

/// The whole VMCB: one naturally aligned 4 KiB page.
///
/// Deliberately not `Clone`/`Copy`: it lives in a host page and must never be copied onto the
/// kernel stack.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct Vmcb {
    /// 000h–3FFh.
    pub control: VmcbControl,
    /// 400h–FFFh.
    pub save: VmcbSave,
}

/// Offset of the state save area in the VMCB.
pub const SAVE_AREA_OFFSET: usize = 0x400;

const_assert_eq!(size_of::<VmcbControl>(), 0x400);
const_assert_eq!(size_of::<VmcbSave>(), 0xc00);
const_assert_eq!(size_of::<Vmcb>(), 4096);
const_assert_eq!(offset_of!(Vmcb, save), SAVE_AREA_OFFSET);

// Table B-1, "VMCB Layout, Control Area".
const_assert_eq!(offset_of!(VmcbControl, intercept_cr), 0x000);
const_assert_eq!(offset_of!(VmcbControl, intercept_dr), 0x004);
const_assert_eq!(offset_of!(VmcbControl, intercept_exceptions), 0x008);
const_assert_eq!(offset_of!(VmcbControl, intercept_misc1), 0x00c);
const_assert_eq!(offset_of!(VmcbControl, intercept_misc2), 0x010);
const_assert_eq!(offset_of!(VmcbControl, intercept_misc3), 0x014);
const_assert_eq!(offset_of!(VmcbControl, pause_filter_threshold), 0x03c);
const_assert_eq!(offset_of!(VmcbControl, pause_filter_count), 0x03e);
const_assert_eq!(offset_of!(VmcbControl, iopm_base_pa), 0x040);
const_assert_eq!(offset_of!(VmcbControl, msrpm_base_pa), 0x048);
const_assert_eq!(offset_of!(VmcbControl, tsc_offset), 0x050);
const_assert_eq!(offset_of!(VmcbControl, guest_asid), 0x058);
const_assert_eq!(offset_of!(VmcbControl, tlb_control), 0x05c);
const_assert_eq!(offset_of!(VmcbControl, int_ctl), 0x060);
const_assert_eq!(offset_of!(VmcbControl, int_vector), 0x064);
const_assert_eq!(offset_of!(VmcbControl, int_state), 0x068);
const_assert_eq!(offset_of!(VmcbControl, exit_code), 0x070);
const_assert_eq!(offset_of!(VmcbControl, exit_info1), 0x078);
const_assert_eq!(offset_of!(VmcbControl, exit_info2), 0x080);
const_assert_eq!(offset_of!(VmcbControl, exit_int_info), 0x088);
const_assert_eq!(offset_of!(VmcbControl, np_control), 0x090);
const_assert_eq!(offset_of!(VmcbControl, avic_apic_bar), 0x098);
const_assert_eq!(offset_of!(VmcbControl, ghcb_pa), 0x0a0);
const_assert_eq!(offset_of!(VmcbControl, event_inj), 0x0a8);
const_assert_eq!(offset_of!(VmcbControl, n_cr3), 0x0b0);
const_assert_eq!(offset_of!(VmcbControl, virt_ext), 0x0b8);
const_assert_eq!(offset_of!(VmcbControl, clean), 0x0c0);
const_assert_eq!(offset_of!(VmcbControl, next_rip), 0x0c8);
const_assert_eq!(offset_of!(VmcbControl, insn_len), 0x0d0);
const_assert_eq!(offset_of!(VmcbControl, insn_bytes), 0x0d1);
const_assert_eq!(offset_of!(VmcbControl, avic_backing_page), 0x0e0);
const_assert_eq!(offset_of!(VmcbControl, avic_logical_table), 0x0f0);
const_assert_eq!(offset_of!(VmcbControl, avic_physical_table), 0x0f8);
const_assert_eq!(offset_of!(VmcbControl, vmsa_pa), 0x108);
const_assert_eq!(offset_of!(VmcbControl, vmgexit_rax), 0x110);
const_assert_eq!(offset_of!(VmcbControl, vmgexit_cpl), 0x118);
const_assert_eq!(offset_of!(VmcbControl, bus_lock_counter), 0x120);
const_assert_eq!(offset_of!(VmcbControl, host_reserved), 0x3e0);

// Table B-2, "VMCB Layout, State Save Area" (offsets from 400h).
const_assert_eq!(offset_of!(VmcbSave, es), 0x000);
const_assert_eq!(offset_of!(VmcbSave, cs), 0x010);
const_assert_eq!(offset_of!(VmcbSave, ss), 0x020);
const_assert_eq!(offset_of!(VmcbSave, ds), 0x030);
const_assert_eq!(offset_of!(VmcbSave, fs), 0x040);
const_assert_eq!(offset_of!(VmcbSave, gs), 0x050);
const_assert_eq!(offset_of!(VmcbSave, gdtr), 0x060);
const_assert_eq!(offset_of!(VmcbSave, ldtr), 0x070);
const_assert_eq!(offset_of!(VmcbSave, idtr), 0x080);
const_assert_eq!(offset_of!(VmcbSave, tr), 0x090);
const_assert_eq!(offset_of!(VmcbSave, vmpl), 0x0ca);
const_assert_eq!(offset_of!(VmcbSave, cpl), 0x0cb);
const_assert_eq!(offset_of!(VmcbSave, efer), 0x0d0);
const_assert_eq!(offset_of!(VmcbSave, cr4), 0x148);
const_assert_eq!(offset_of!(VmcbSave, cr3), 0x150);
const_assert_eq!(offset_of!(VmcbSave, cr0), 0x158);
const_assert_eq!(offset_of!(VmcbSave, dr7), 0x160);
const_assert_eq!(offset_of!(VmcbSave, dr6), 0x168);
const_assert_eq!(offset_of!(VmcbSave, rflags), 0x170);
const_assert_eq!(offset_of!(VmcbSave, rip), 0x178);
const_assert_eq!(offset_of!(VmcbSave, rsp), 0x1d8);
const_assert_eq!(offset_of!(VmcbSave, s_cet), 0x1e0);
const_assert_eq!(offset_of!(VmcbSave, ssp), 0x1e8);
const_assert_eq!(offset_of!(VmcbSave, isst_addr), 0x1f0);
const_assert_eq!(offset_of!(VmcbSave, rax), 0x1f8);
const_assert_eq!(offset_of!(VmcbSave, star), 0x200);
const_assert_eq!(offset_of!(VmcbSave, lstar), 0x208);
const_assert_eq!(offset_of!(VmcbSave, cstar), 0x210);
const_assert_eq!(offset_of!(VmcbSave, sfmask), 0x218);
const_assert_eq!(offset_of!(VmcbSave, kernel_gs_base), 0x220);
const_assert_eq!(offset_of!(VmcbSave, sysenter_cs), 0x228);
const_assert_eq!(offset_of!(VmcbSave, sysenter_esp), 0x230);
const_assert_eq!(offset_of!(VmcbSave, sysenter_eip), 0x238);
const_assert_eq!(offset_of!(VmcbSave, cr2), 0x240);
const_assert_eq!(offset_of!(VmcbSave, g_pat), 0x268);
const_assert_eq!(offset_of!(VmcbSave, dbgctl), 0x270);
const_assert_eq!(offset_of!(VmcbSave, br_from), 0x278);
const_assert_eq!(offset_of!(VmcbSave, br_to), 0x280);
const_assert_eq!(offset_of!(VmcbSave, last_excp_from), 0x288);
const_assert_eq!(offset_of!(VmcbSave, last_excp_to), 0x290);
const_assert_eq!(offset_of!(VmcbSave, spec_ctrl), 0x2e0);

impl Vmcb {
    /// Clears the whole page (the state every field starts from before programming).
    pub fn clear(&mut self) {
        // SAFETY: `self` is a valid, exclusive `Vmcb`; every field is a plain integer or an
        // array of integers, for which all-zero bytes are a valid value.
        unsafe { core::ptr::write_bytes(self as *mut Vmcb, 0, 1) };
    }
}

/// TLB_CONTROL values (Table B-1, 058h bits 39:32; §15.16.2 "TLB Flush").
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbControl {
    /// Do nothing.
    DoNothing = 0,
    /// Flush the entire TLB, all ASIDs (usable without FLUSH_BY_ASID).
    FlushAll = 1,
    /// Flush this guest's TLB entries (needs FLUSH_BY_ASID).
    FlushAsid = 3,
    /// Flush this guest's non-global TLB entries (needs FLUSH_BY_ASID).
    FlushAsidNonGlobal = 7,
}

bitflags::bitflags! {
    /// The VMCB clean field (0C0h; §15.15.3 "VMCB Clean Field", Table 15-9 "VMCB Clean Bits").
    /// A set bit tells the processor it may use its cached copy of that group of fields.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CleanBits: u32 {
        /// Intercept vectors, TSC offset, pause filter count.
        const I = 1 << 0;
        /// IOPM_BASE_PA, MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        /// ASID.
        const ASID = 1 << 2;
        /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
        const TPR = 1 << 3;
        /// NP_ENABLE, N_CR3, G_PAT.
        const NP = 1 << 4;
        /// CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// DR6, DR7.
        const DRX = 1 << 6;
        /// GDTR, IDTR.
        const DT = 1 << 7;
        /// CS, DS, SS, ES, CPL.
        const SEG = 1 << 8;
        /// CR2.
        const CR2 = 1 << 9;
        /// DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO.
        const LBR = 1 << 10;
        /// AVIC APIC_BAR, backing page, logical and physical tables.
        const AVIC = 1 << 11;
        /// S_CET, SSP, ISST_ADDR.
        const CET = 1 << 12;
    }
}

bitflags::bitflags! {
    /// The 32-bit word at 060h: virtual interrupt control (Table B-1; §15.21 "Interrupt and
    /// LINT Virtualization"). V_TPR (7:0) and V_INTR_PRIO (19:16) are fields, see the accessors.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IntCtl: u32 {
        /// Bits 7:0: V_TPR, the guest's virtual TPR (CR8) in bits 3:0.
        const V_TPR_MASK = 0xff;
        /// A virtual interrupt is pending.
        const V_IRQ = 1 << 8;
        /// Virtual GIF (with vGIF enabled).
        const VGIF = 1 << 9;
        /// A virtual NMI is pending (with vNMI enabled).
        const V_NMI = 1 << 11;
        /// Virtual NMIs are masked (with vNMI enabled).
        const V_NMI_MASK = 1 << 12;
        /// Bits 19:16: V_INTR_PRIO, priority of the pending virtual interrupt.
        const V_INTR_PRIO_MASK = 0xf << 16;
        /// Ignore V_TPR when deciding whether the virtual interrupt can be taken.
        const V_IGN_TPR = 1 << 20;
        /// Virtualize EFLAGS.IF and TPR masking: the guest's IF and CR8 no longer mask host
        /// interrupts.
        const V_INTR_MASKING = 1 << 24;
        /// Enable virtual GIF.
        const VGIF_ENABLE = 1 << 25;
        /// Enable virtual NMI.
        const V_NMI_ENABLE = 1 << 26;
        /// Enable x2AVIC.
        const X2AVIC_ENABLE = 1 << 30;
        /// Enable AVIC.
        const AVIC_ENABLE = 1 << 31;
    }
}

impl IntCtl {
    /// V_TPR (bits 3:0 are the guest's CR8).
    pub const fn v_tpr(self) -> u8 {
        (self.bits() & 0xff) as u8
    }

    /// Returns `self` with V_TPR replaced.
    pub const fn with_v_tpr(self, tpr: u8) -> Self {
        Self::from_bits_retain((self.bits() & !0xff) | tpr as u32)
    }

    /// Returns `self` with V_INTR_PRIO replaced (only the low 4 bits of `prio` count).
    pub const fn with_v_intr_prio(self, prio: u8) -> Self {
        Self::from_bits_retain((self.bits() & !(0xf << 16)) | (((prio & 0xf) as u32) << 16))
    }
}

/// 068h bit 0: the guest is in an interrupt shadow (after STI or MOV SS).
pub const INT_STATE_SHADOW: u64 = 1 << 0;
/// 068h bit 1: value of the guest's EFLAGS.IF as the processor sees it for interrupts (read on
/// #VMEXIT when V_INTR_MASKING is on).
pub const INT_STATE_GUEST_INTERRUPT_MASK: u64 = 1 << 1;
/// 090h bit 0: enable nested paging.
pub const NP_ENABLE: u64 = 1 << 0;
/// 0B8h bit 0: LBR virtualization enable.
pub const VIRT_EXT_LBR: u64 = 1 << 0;
/// 0B8h bit 1: virtualized VMSAVE/VMLOAD enable.
pub const VIRT_EXT_V_VMSAVE_VMLOAD: u64 = 1 << 1;

/// Type of an injected or interrupted event (EVENTINJ / EXITINTINFO bits 10:8; §15.20
/// "Event Injection").
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// External or virtual interrupt (INTR).
    Intr = 0,
    /// Non-maskable interrupt.
    Nmi = 2,
    /// Exception (fault or trap).
    Exception = 3,
    /// Software interrupt (INTn).
    SoftInt = 4,
}

impl EventType {
    /// Decodes the 3-bit type field; 1, 5, 6, 7 are reserved (VMRUN fails with them).
    pub const fn from_bits(v: u8) -> Option<Self> {
        match v {
            0 => Some(EventType::Intr),
            2 => Some(EventType::Nmi),
            3 => Some(EventType::Exception),
            4 => Some(EventType::SoftInt),
            _ => None,
        }
    }
}

/// An event in EVENTINJ / EXITINTINFO format: vector (7:0), type (10:8), EV (11, error code
/// valid), V (31, valid), error code (63:32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInj {
    /// Interrupt or exception vector.
    pub vector: u8,
    /// Event type.
    pub kind: EventType,
    /// Error code to push, for exceptions that have one.
    pub error_code: Option<u32>,
}

/// EVENTINJ bit 11: error code valid.
pub const EVENTINJ_EV: u64 = 1 << 11;
/// EVENTINJ bit 31: valid.
pub const EVENTINJ_VALID: u64 = 1 << 31;

impl EventInj {
    /// The 64-bit EVENTINJ encoding, with V set.
    pub const fn encode(self) -> u64 {
        let mut v = self.vector as u64 | (self.kind as u64) << 8 | EVENTINJ_VALID;
        if let Some(ec) = self.error_code {
            v |= EVENTINJ_EV | (ec as u64) << 32;
        }
        v
    }

    /// Decodes an EVENTINJ / EXITINTINFO value: `Ok(None)` when V is clear, `Err(raw)` when the
    /// type is reserved (never produced by the processor in EXITINTINFO).
    pub const fn decode(raw: u64) -> Result<Option<Self>, u64> {
        if raw & EVENTINJ_VALID == 0 {
            return Ok(None);
        }
        let kind = match EventType::from_bits(((raw >> 8) & 7) as u8) {
            Some(k) => k,
            None => return Err(raw),
        };
        let error_code = if raw & EVENTINJ_EV != 0 {
            Some((raw >> 32) as u32)
        } else {
            None
        };
        Ok(Some(EventInj {
            vector: raw as u8,
            kind,
            error_code,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_zeroes_the_page() {
        let mut v: Box<Vmcb> = Box::new(unsafe_zeroed());
        v.control.exit_code = 5;
        v.save.rip = 7;
        v.control.host_reserved[31] = 1;
        v.clear();
        let bytes = unsafe_bytes(&v);
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&*v as *const Vmcb as usize % 4096, 0);
    }

    /// A zeroed VMCB without going through the stack-hungry `Default`.
    pub(crate) fn unsafe_zeroed() -> Vmcb {
        // SAFETY: all fields are integers; zero is valid.
        unsafe { core::mem::zeroed() }
    }

    fn unsafe_bytes(v: &Vmcb) -> &[u8] {
        // SAFETY: Vmcb is repr(C) plain data without padding holes (sizes asserted).
        unsafe { core::slice::from_raw_parts(v as *const Vmcb as *const u8, 4096) }
    }

    #[test]
    fn fields_land_at_their_byte_offsets() {
        // Write through the struct, read the bytes back at the APM offsets.
        let mut v: Box<Vmcb> = Box::new(unsafe_zeroed());
        v.control.guest_asid = 0x1234_5678;
        v.control.tlb_control = TlbControl::FlushAsid as u8;
        v.control.event_inj = 0x1122_3344_5566_7788;
        v.save.efer = 0xd01;
        v.save.g_pat = 0x0007_0406_0007_0406;
        v.save.cs.attrib = 0x29b;
        let b = unsafe_bytes(&v);
        assert_eq!(&b[0x58..0x5c], &0x1234_5678u32.to_le_bytes());
        assert_eq!(b[0x5c], 3);
        assert_eq!(&b[0xa8..0xb0], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[0x4d0..0x4d8], &0xd01u64.to_le_bytes());
        assert_eq!(&b[0x668..0x670], &0x0007_0406_0007_0406u64.to_le_bytes());
        assert_eq!(&b[0x412..0x414], &0x29bu16.to_le_bytes());
    }

    #[test]
    fn eventinj_encoding() {
        // #GP(0x10): vector 13, type 3, EV, V, error code in 63:32.
        let gp = EventInj {
            vector: 13,
            kind: EventType::Exception,
            error_code: Some(0x10),
        };
        assert_eq!(gp.encode(), 0x0000_0010_8000_0b0d);
        assert_eq!(EventInj::decode(gp.encode()), Ok(Some(gp)));
        // External interrupt 0x30.
        let irq = EventInj {
            vector: 0x30,
            kind: EventType::Intr,
            error_code: None,
        };
        assert_eq!(irq.encode(), 0x8000_0030);
        // NMI.
        let nmi = EventInj {
            vector: 2,
            kind: EventType::Nmi,
            error_code: None,
        };
        assert_eq!(nmi.encode(), 0x8000_0202);
        assert_eq!(EventInj::decode(0x8000_0202), Ok(Some(nmi)));
        // Invalid and reserved.
        assert_eq!(EventInj::decode(0x0000_0b0d), Ok(None));
        assert_eq!(EventInj::decode(0x8000_0500), Err(0x8000_0500));
    }

    #[test]
    fn int_ctl_fields() {
        let c = IntCtl::V_INTR_MASKING
            .with_v_tpr(0x0c)
            .with_v_intr_prio(0x1f);
        assert_eq!(c.bits(), 0x010f_000c);
        assert_eq!(c.v_tpr(), 0x0c);
        assert_eq!(c.with_v_tpr(3).bits(), 0x010f_0003);
    }
}
