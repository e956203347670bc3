//! VMX capability discovery from the capability MSRs (Intel SDM vol. 3D, appendix A) and the
//! VM-execution, VM-exit and VM-entry controls this backend runs guests with.
//!
//! Everything here is a pure function of MSR values read through [`MsrSource`], so the tests
//! feed values recorded from several CPU models (see `testdata.rs`).
//!
//! # The control policy
//! Each control word is computed with the SDM's allowed-0/allowed-1 rule (appendix A.3–A.5,
//! and A.2 "Reserved Controls and Default Settings"):
//! a bit is 1 if the CPU requires it (allowed-0 setting is 1, from the `TRUE_*` MSR when
//! `IA32_VMX_BASIC[55]` says they exist), or if this backend wants it and the CPU allows it
//! (allowed-1 setting is 1), or if it is a *default1* bit whose meaning this crate does not
//! know (set in the low half of the legacy MSR) and the CPU allows it. A bit this backend
//! requires but the CPU does not allow is an error naming the feature.
//!
//! - Pin-based: external-interrupt exiting, NMI exiting and virtual NMIs are required (NMI-window
//!   exiting needs virtual NMIs). No posted interrupts, no preemption timer.
//! - Primary processor-based: HLT, MOV-DR, RDPMC, CR8-load and CR8-store exiting (no TPR shadow:
//!   without it a 64-bit guest's `MOV CR8` would reach the host's TPR), unconditional I/O
//!   exiting (as KVM) or I/O bitmaps on request, secondary controls: required. Interrupt-window
//!   and NMI-window exiting must be available (they are set on demand). MSR bitmaps, TSC
//!   offsetting and MONITOR/MWAIT exiting are used when available (without MSR bitmaps every
//!   RDMSR/WRMSR exits; a CPU that cannot exit on MWAIT has no MWAIT). CR3-load/store and INVLPG
//!   exiting stay off: EPT makes them unnecessary.
//! - Secondary: EPT and unrestricted guest are required (CPUs without them need shadow paging
//!   and real-mode emulation, a later step: refused at VM creation). VPID when INVVPID supports
//!   single- or all-context invalidation; WBINVD exiting when available; RDTSCP, INVPCID and
//!   XSAVES/XRSTORS enabled only when the guest CPUID has them (otherwise they fault with #UD,
//!   as on a CPU without them).
//! - VM-exit: host address-space size, save debug controls, save/load IA32_PAT and IA32_EFER
//!   are required. **Acknowledge interrupt on exit is left 0**: KVM and vmm(4) acknowledge the
//!   interrupt and call the host's IDT handler themselves, which needs an indirect call through
//!   the IDT and a hand-built interrupt frame. Here the interrupt stays pending in the local
//!   APIC and the host takes it through its own entry path as soon as the caller re-enables
//!   interrupts after the exit (as NetBSD NVMM does); the exit is decoded as an external
//!   interrupt without a vector.
//! - VM-entry: load debug controls, load IA32_PAT and IA32_EFER are required; "IA-32e mode
//!   guest" must be available and is set per entry from the guest's EFER.LMA.
//! - EPT: 4-level walks, write-back paging-structure memory type, INVEPT with single- or
//!   all-context invalidation.

use core::fmt;
use x86::msr;
use x86::vmx::vmcs::control::{
    EntryControls, ExitControls, PinbasedControls, PrimaryControls, SecondaryControls,
};

/// Where MSR values come from: `rdmsr` in the kernel, recordings in tests.
pub trait MsrSource {
    /// Reads MSR `index`. Only called for MSRs the capability MSRs say exist.
    fn rdmsr(&self, index: u32) -> u64;
}

/// `IA32_VMX_BASIC[55]`: the `IA32_VMX_TRUE_*_CTLS` MSRs exist.
pub const BASIC_TRUE_CTLS: u64 = 1 << 55;
/// `IA32_VMX_BASIC[48]`: VMXON/VMCS addresses are limited to 32 bits.
pub const BASIC_PHYS_32BIT: u64 = 1 << 48;
/// `IA32_VMX_BASIC[54]`: the VM-exit instruction-information field is valid for INS/OUTS.
pub const BASIC_INS_OUTS_INFO: u64 = 1 << 54;
/// Memory type 6 (write-back) in `IA32_VMX_BASIC[53:50]` and the EPTP.
pub const MEMTYPE_WB: u64 = 6;

/// `IA32_VMX_EPT_VPID_CAP` bits (SDM A.10).
pub mod ept_vpid_cap {
    /// Execute-only EPT translations.
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    /// 4-level page walks.
    pub const WALK_4: u64 = 1 << 6;
    /// 5-level page walks.
    pub const WALK_5: u64 = 1 << 7;
    /// Uncacheable paging-structure memory type.
    pub const MEMTYPE_UC: u64 = 1 << 8;
    /// Write-back paging-structure memory type.
    pub const MEMTYPE_WB: u64 = 1 << 14;
    /// 2 MiB EPT pages.
    pub const PAGE_2M: u64 = 1 << 16;
    /// 1 GiB EPT pages.
    pub const PAGE_1G: u64 = 1 << 17;
    /// INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// Accessed and dirty flags.
    pub const AD: u64 = 1 << 21;
    /// Advanced VM-exit information for EPT violations.
    pub const ADV_EXIT_INFO: u64 = 1 << 22;
    /// INVEPT single-context.
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    /// INVEPT all-context.
    pub const INVEPT_ALL: u64 = 1 << 26;
    /// INVVPID.
    pub const INVVPID: u64 = 1 << 32;
    /// INVVPID individual-address.
    pub const INVVPID_ADDR: u64 = 1 << 40;
    /// INVVPID single-context.
    pub const INVVPID_SINGLE: u64 = 1 << 41;
    /// INVVPID all-context.
    pub const INVVPID_ALL: u64 = 1 << 42;
    /// INVVPID single-context-retaining-globals.
    pub const INVVPID_SINGLE_GLOBALS: u64 = 1 << 43;
}

/// The `IA32_VMX_TRUE_*_CTLS` MSRs (present when `IA32_VMX_BASIC[55]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrueCtls {
    /// `IA32_VMX_TRUE_PINBASED_CTLS` (0x48d).
    pub pinbased: u64,
    /// `IA32_VMX_TRUE_PROCBASED_CTLS` (0x48e).
    pub procbased: u64,
    /// `IA32_VMX_TRUE_EXIT_CTLS` (0x48f).
    pub exit: u64,
    /// `IA32_VMX_TRUE_ENTRY_CTLS` (0x490).
    pub entry: u64,
}

/// The raw VMX capability MSRs of one CPU. Optional MSRs are `None` when the CPU says they do
/// not exist (reading them would fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCapMsrs {
    /// `IA32_VMX_BASIC` (0x480).
    pub basic: u64,
    /// `IA32_VMX_PINBASED_CTLS` (0x481).
    pub pinbased: u64,
    /// `IA32_VMX_PROCBASED_CTLS` (0x482).
    pub procbased: u64,
    /// `IA32_VMX_EXIT_CTLS` (0x483).
    pub exit: u64,
    /// `IA32_VMX_ENTRY_CTLS` (0x484).
    pub entry: u64,
    /// `IA32_VMX_MISC` (0x485).
    pub misc: u64,
    /// `IA32_VMX_CR0_FIXED0` (0x486).
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1` (0x487).
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0` (0x488).
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1` (0x489).
    pub cr4_fixed1: u64,
    /// `IA32_VMX_PROCBASED_CTLS2` (0x48b), when primary control bit 31 may be 1.
    pub procbased2: Option<u64>,
    /// `IA32_VMX_EPT_VPID_CAP` (0x48c), when EPT or VPID may be enabled.
    pub ept_vpid_cap: Option<u64>,
    /// The `TRUE` control MSRs, when `IA32_VMX_BASIC[55]`.
    pub true_ctls: Option<TrueCtls>,
    /// `IA32_VMX_VMFUNC` (0x491), when "enable VM functions" may be 1.
    pub vmfunc: Option<u64>,
}

const fn allowed1(ctl_msr: u64) -> u32 {
    (ctl_msr >> 32) as u32
}

const fn allowed0(ctl_msr: u64) -> u32 {
    ctl_msr as u32
}

impl VmxCapMsrs {
    /// Reads the capability MSRs that exist on this CPU, following the SDM's existence rules
    /// (appendix A): never reads an MSR the others say is absent.
    pub fn read(src: &impl MsrSource) -> Self {
        let basic = src.rdmsr(msr::IA32_VMX_BASIC);
        let procbased = src.rdmsr(msr::IA32_VMX_PROCBASED_CTLS);
        let procbased2 = (allowed1(procbased) & PrimaryControls::SECONDARY_CONTROLS.bits() != 0)
            .then(|| src.rdmsr(msr::IA32_VMX_PROCBASED_CTLS2));
        let p2 = procbased2.map_or(0, allowed1);
        let ept_or_vpid =
            SecondaryControls::ENABLE_EPT.bits() | SecondaryControls::ENABLE_VPID.bits();
        let ept_vpid_cap = (p2 & ept_or_vpid != 0).then(|| src.rdmsr(msr::IA32_VMX_EPT_VPID_CAP));
        let vmfunc = (p2 & SecondaryControls::ENABLE_VM_FUNCTIONS.bits() != 0)
            .then(|| src.rdmsr(msr::IA32_VMX_VMFUNC));
        let true_ctls = (basic & BASIC_TRUE_CTLS != 0).then(|| TrueCtls {
            pinbased: src.rdmsr(msr::IA32_VMX_TRUE_PINBASED_CTLS),
            procbased: src.rdmsr(msr::IA32_VMX_TRUE_PROCBASED_CTLS),
            exit: src.rdmsr(msr::IA32_VMX_TRUE_EXIT_CTLS),
            entry: src.rdmsr(msr::IA32_VMX_TRUE_ENTRY_CTLS),
        });
        Self {
            basic,
            pinbased: src.rdmsr(msr::IA32_VMX_PINBASED_CTLS),
            procbased,
            exit: src.rdmsr(msr::IA32_VMX_EXIT_CTLS),
            entry: src.rdmsr(msr::IA32_VMX_ENTRY_CTLS),
            misc: src.rdmsr(msr::IA32_VMX_MISC),
            cr0_fixed0: src.rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: src.rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: src.rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: src.rdmsr(msr::IA32_VMX_CR4_FIXED1),
            procbased2,
            ept_vpid_cap,
            true_ctls,
            vmfunc,
        }
    }

    /// VMCS revision identifier (`IA32_VMX_BASIC[30:0]`), written at offset 0 of VMXON and
    /// VMCS regions.
    pub const fn revision_id(&self) -> u32 {
        self.basic as u32 & 0x7fff_ffff
    }

    /// Bytes the CPU needs for a VMCS or VMXON region (`IA32_VMX_BASIC[44:32]`).
    pub const fn region_size(&self) -> u32 {
        ((self.basic >> 32) & 0x1fff) as u32
    }

    /// Memory type the CPU uses for the VMCS (`IA32_VMX_BASIC[53:50]`).
    pub const fn vmcs_memory_type(&self) -> u64 {
        (self.basic >> 50) & 0xf
    }

    /// Recommended maximum number of entries in each MSR load/store list
    /// (`512 * (IA32_VMX_MISC[27:25] + 1)`, SDM A.6).
    pub const fn max_msr_list_entries(&self) -> u32 {
        512 * (((self.misc >> 25) & 7) as u32 + 1)
    }

    /// `IA32_VMX_MISC[5]`: VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    pub const fn exit_stores_lma(&self) -> bool {
        self.misc & (1 << 5) != 0
    }

    /// The control MSR pair (capability, default1 bits) of `word`.
    fn ctl(&self, word: ControlWord) -> (u64, u32) {
        let t = self.true_ctls;
        match word {
            ControlWord::Pin => (
                t.map_or(self.pinbased, |t| t.pinbased),
                allowed0(self.pinbased),
            ),
            ControlWord::Proc => (
                t.map_or(self.procbased, |t| t.procbased),
                allowed0(self.procbased),
            ),
            ControlWord::Proc2 => (self.procbased2.unwrap_or(0), 0),
            ControlWord::Exit => (t.map_or(self.exit, |t| t.exit), allowed0(self.exit)),
            ControlWord::Entry => (t.map_or(self.entry, |t| t.entry), allowed0(self.entry)),
        }
    }
}

/// One of the five VMX control words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWord {
    /// Pin-based VM-execution controls.
    Pin,
    /// Primary processor-based VM-execution controls.
    Proc,
    /// Secondary processor-based VM-execution controls.
    Proc2,
    /// VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl ControlWord {
    /// The bits of this word that have a meaning this crate knows (every other default1 bit
    /// is kept at 1, as the SDM recommends).
    const fn known(self) -> u32 {
        match self {
            ControlWord::Pin => PinbasedControls::all().bits(),
            ControlWord::Proc => PrimaryControls::all().bits(),
            ControlWord::Proc2 => SecondaryControls::all().bits(),
            ControlWord::Exit => ExitControls::all().bits(),
            ControlWord::Entry => EntryControls::all().bits(),
        }
    }

    const fn name(self) -> &'static str {
        match self {
            ControlWord::Pin => "pin-based VM-execution control",
            ControlWord::Proc => "primary processor-based VM-execution control",
            ControlWord::Proc2 => "secondary processor-based VM-execution control",
            ControlWord::Exit => "VM-exit control",
            ControlWord::Entry => "VM-entry control",
        }
    }
}

/// A hardware feature this backend cannot run guests without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// A control bit that must be allowed to be 1.
    Control {
        /// Which control word.
        word: ControlWord,
        /// Bit number.
        bit: u8,
        /// What it is called in the SDM.
        name: &'static str,
    },
    /// EPT 4-level page walks (`IA32_VMX_EPT_VPID_CAP[6]`).
    Ept4LevelWalk,
    /// Write-back EPT paging-structure memory type (`IA32_VMX_EPT_VPID_CAP[14]`).
    EptWriteBack,
    /// INVEPT with single- or all-context invalidation (`IA32_VMX_EPT_VPID_CAP[20,25,26]`).
    Invept,
}

/// Why this CPU's VMX cannot run guests with this backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapError {
    /// A required feature is missing.
    Missing(Feature),
    /// VMXON/VMCS regions limited to 32-bit physical addresses (`IA32_VMX_BASIC[48]`).
    PhysAddr32,
    /// The VMCS region is larger than a page or empty.
    RegionSize(u32),
    /// The VMCS must be accessed with a memory type other than write-back.
    VmcsMemoryType(u64),
    /// A control MSR requires a bit to be 1 that it does not allow to be 1.
    Inconsistent(ControlWord),
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Control { word, bit, name } => {
                write!(f, "{name} ({} bit {bit})", word.name())
            }
            Feature::Ept4LevelWalk => {
                f.write_str("EPT 4-level page walks (IA32_VMX_EPT_VPID_CAP[6])")
            }
            Feature::EptWriteBack => {
                f.write_str("write-back EPT paging structures (IA32_VMX_EPT_VPID_CAP[14])")
            }
            Feature::Invept => f.write_str(
                "INVEPT single- or all-context invalidation (IA32_VMX_EPT_VPID_CAP[20,25,26])",
            ),
        }
    }
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::Missing(
                feat @ Feature::Control {
                    word: ControlWord::Proc2,
                    bit,
                    ..
                },
            ) if *bit == 1 || *bit == 7 => {
                write!(
                    f,
                    "vmx: the CPU lacks {feat}; shadow paging and real-mode emulation are not \
                     implemented yet"
                )
            }
            CapError::Missing(feat) => write!(f, "vmx: the CPU lacks {feat}"),
            CapError::PhysAddr32 => f.write_str("vmx: VMCS addresses limited to 32 bits"),
            CapError::RegionSize(n) => write!(f, "vmx: unsupported VMCS region size {n}"),
            CapError::VmcsMemoryType(t) => write!(f, "vmx: VMCS memory type {t} is not write-back"),
            CapError::Inconsistent(w) => {
                write!(
                    f,
                    "vmx: the {} MSR requires a bit it does not allow",
                    w.name()
                )
            }
        }
    }
}

/// What the guest's CPUID allows, for the controls that enable instructions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CPUID.8000_0001h:EDX.RDTSCP.
    pub rdtscp: bool,
    /// CPUID.(7,0):EBX.INVPCID.
    pub invpcid: bool,
    /// CPUID.(0Dh,1):EAX.XSAVES.
    pub xsaves: bool,
}

/// Choices the caller makes about the controls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlPolicy {
    /// What the guest CPUID allows.
    pub guest: GuestFeatures,
    /// Use I/O bitmaps A/B instead of unconditional I/O exiting.
    pub io_bitmaps: bool,
}

/// The control words to program into a VMCS. `entry` lacks "IA-32e mode guest", which
/// [`Controls::entry_for`] adds from the guest's EFER.LMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based VM-execution controls.
    pub pin: u32,
    /// Primary processor-based VM-execution controls (without the window-exiting bits).
    pub proc: u32,
    /// Secondary processor-based VM-execution controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls, without "IA-32e mode guest".
    pub entry: u32,
}

impl Controls {
    /// The VM-entry controls for a guest whose EFER.LMA is `lma`.
    pub const fn entry_for(&self, lma: bool) -> u32 {
        if lma {
            self.entry | EntryControls::IA32E_MODE_GUEST.bits()
        } else {
            self.entry & !EntryControls::IA32E_MODE_GUEST.bits()
        }
    }

    /// Whether VPID is enabled (the VMCS then needs a non-zero VPID).
    pub const fn vpid(&self) -> bool {
        self.proc2 & SecondaryControls::ENABLE_VPID.bits() != 0
    }
}

/// One control word being built: required and wanted bits against the CPU's allowed settings.
struct Word {
    word: ControlWord,
    cap: u64,
    value: u32,
}

impl Word {
    fn new(m: &VmxCapMsrs, word: ControlWord) -> Result<Self, CapError> {
        let (cap, default1) = m.ctl(word);
        if allowed0(cap) & !allowed1(cap) != 0 {
            return Err(CapError::Inconsistent(word));
        }
        // Required-1 bits, plus default1 bits whose meaning this crate does not know.
        let value = allowed0(cap) | (default1 & !word.known() & allowed1(cap));
        Ok(Self { word, cap, value })
    }

    fn allows(&self, bits: u32) -> bool {
        allowed1(self.cap) & bits == bits
    }

    /// Requires `bits` (one bit) to be allowed; sets it when `set`.
    fn require(&mut self, bits: u32, name: &'static str, set: bool) -> Result<(), CapError> {
        if !self.allows(bits) {
            return Err(CapError::Missing(Feature::Control {
                word: self.word,
                bit: bits.trailing_zeros() as u8,
                name,
            }));
        }
        if set {
            self.value |= bits;
        }
        Ok(())
    }

    /// Sets `bits` if the CPU allows them.
    fn want(&mut self, bits: u32, cond: bool) {
        if cond && self.allows(bits) {
            self.value |= bits;
        }
    }

    fn finish(self) -> u32 {
        self.value
    }
}

/// The EPT and VPID facilities the controls rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptVpidCaps {
    /// The raw `IA32_VMX_EPT_VPID_CAP` (0 if absent).
    pub raw: u64,
}

impl EptVpidCaps {
    /// INVEPT single-context invalidation.
    pub const fn invept_single(&self) -> bool {
        self.raw & ept_vpid_cap::INVEPT != 0 && self.raw & ept_vpid_cap::INVEPT_SINGLE != 0
    }
    /// INVEPT all-context invalidation.
    pub const fn invept_all(&self) -> bool {
        self.raw & ept_vpid_cap::INVEPT != 0 && self.raw & ept_vpid_cap::INVEPT_ALL != 0
    }
    /// INVVPID single-context invalidation.
    pub const fn invvpid_single(&self) -> bool {
        self.raw & ept_vpid_cap::INVVPID != 0 && self.raw & ept_vpid_cap::INVVPID_SINGLE != 0
    }
    /// INVVPID all-context invalidation.
    pub const fn invvpid_all(&self) -> bool {
        self.raw & ept_vpid_cap::INVVPID != 0 && self.raw & ept_vpid_cap::INVVPID_ALL != 0
    }
    /// EPT accessed/dirty flags.
    pub const fn ad(&self) -> bool {
        self.raw & ept_vpid_cap::AD != 0
    }
    /// 2 MiB EPT pages.
    pub const fn page_2m(&self) -> bool {
        self.raw & ept_vpid_cap::PAGE_2M != 0
    }
    /// 1 GiB EPT pages.
    pub const fn page_1g(&self) -> bool {
        self.raw & ept_vpid_cap::PAGE_1G != 0
    }
}

/// Computes the controls for `policy` from the CPU's capability MSRs, or names the missing
/// feature. Pure: the same MSRs and policy always give the same controls.
pub fn compute_controls(m: &VmxCapMsrs, policy: &ControlPolicy) -> Result<Controls, CapError> {
    use EntryControls as En;
    use ExitControls as Ex;
    use PinbasedControls as Pin;
    use PrimaryControls as P;
    use SecondaryControls as S;

    let mut pin = Word::new(m, ControlWord::Pin)?;
    pin.require(
        Pin::EXTERNAL_INTERRUPT_EXITING.bits(),
        "external-interrupt exiting",
        true,
    )?;
    pin.require(Pin::NMI_EXITING.bits(), "NMI exiting", true)?;
    pin.require(Pin::VIRTUAL_NMIS.bits(), "virtual NMIs", true)?;

    let mut p = Word::new(m, ControlWord::Proc)?;
    p.require(P::HLT_EXITING.bits(), "HLT exiting", true)?;
    p.require(P::MOV_DR_EXITING.bits(), "MOV-DR exiting", true)?;
    p.require(P::RDPMC_EXITING.bits(), "RDPMC exiting", true)?;
    p.require(P::CR8_LOAD_EXITING.bits(), "CR8-load exiting", true)?;
    p.require(P::CR8_STORE_EXITING.bits(), "CR8-store exiting", true)?;
    if policy.io_bitmaps {
        p.require(P::USE_IO_BITMAPS.bits(), "use I/O bitmaps", true)?;
    } else {
        p.require(
            P::UNCOND_IO_EXITING.bits(),
            "unconditional I/O exiting",
            true,
        )?;
    }
    p.require(
        P::SECONDARY_CONTROLS.bits(),
        "activate secondary controls",
        true,
    )?;
    p.require(
        P::INTERRUPT_WINDOW_EXITING.bits(),
        "interrupt-window exiting",
        false,
    )?;
    p.require(P::NMI_WINDOW_EXITING.bits(), "NMI-window exiting", false)?;
    p.want(P::USE_MSR_BITMAPS.bits(), true);
    p.want(P::USE_TSC_OFFSETTING.bits(), true);
    p.want(P::MWAIT_EXITING.bits(), true);
    p.want(P::MONITOR_EXITING.bits(), true);
    // CR3-load/store and INVLPG exiting are known default1 bits, so `Word::new` left them 0
    // unless the CPU insists (allowed-0 setting of 1, e.g. without the TRUE MSRs).

    let mut s = Word::new(m, ControlWord::Proc2)?;
    s.require(S::ENABLE_EPT.bits(), "enable EPT", true)?;
    s.require(S::UNRESTRICTED_GUEST.bits(), "unrestricted guest", true)?;
    let ev = EptVpidCaps {
        raw: m.ept_vpid_cap.unwrap_or(0),
    };
    if ev.raw & ept_vpid_cap::WALK_4 == 0 {
        return Err(CapError::Missing(Feature::Ept4LevelWalk));
    }
    if ev.raw & ept_vpid_cap::MEMTYPE_WB == 0 {
        return Err(CapError::Missing(Feature::EptWriteBack));
    }
    if !ev.invept_single() && !ev.invept_all() {
        return Err(CapError::Missing(Feature::Invept));
    }
    s.want(
        S::ENABLE_VPID.bits(),
        ev.invvpid_single() || ev.invvpid_all(),
    );
    s.want(S::WBINVD_EXITING.bits(), true);
    s.want(S::ENABLE_RDTSCP.bits(), policy.guest.rdtscp);
    s.want(S::ENABLE_INVPCID.bits(), policy.guest.invpcid);
    s.want(S::ENABLE_XSAVES_XRSTORS.bits(), policy.guest.xsaves);

    let mut x = Word::new(m, ControlWord::Exit)?;
    x.require(Ex::SAVE_DEBUG_CONTROLS.bits(), "save debug controls", true)?;
    x.require(
        Ex::HOST_ADDRESS_SPACE_SIZE.bits(),
        "host address-space size",
        true,
    )?;
    x.require(Ex::SAVE_IA32_PAT.bits(), "save IA32_PAT", true)?;
    x.require(Ex::LOAD_IA32_PAT.bits(), "load IA32_PAT", true)?;
    x.require(Ex::SAVE_IA32_EFER.bits(), "save IA32_EFER", true)?;
    x.require(Ex::LOAD_IA32_EFER.bits(), "load IA32_EFER", true)?;
    // "Acknowledge interrupt on exit" stays 0 (see the module documentation).

    let mut e = Word::new(m, ControlWord::Entry)?;
    e.require(En::LOAD_DEBUG_CONTROLS.bits(), "load debug controls", true)?;
    e.require(En::LOAD_IA32_PAT.bits(), "load IA32_PAT", true)?;
    e.require(En::LOAD_IA32_EFER.bits(), "load IA32_EFER", true)?;
    e.require(En::IA32E_MODE_GUEST.bits(), "IA-32e mode guest", false)?;

    Ok(Controls {
        pin: pin.finish(),
        proc: p.finish(),
        proc2: s.finish(),
        exit: x.finish(),
        entry: e.finish(),
    })
}

/// The decoded capabilities of this CPU's VMX, checked usable by this backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// The raw MSRs.
    pub msrs: VmxCapMsrs,
    /// EPT/VPID facilities.
    pub ept_vpid: EptVpidCaps,
}

impl VmxCaps {
    /// Checks that this backend can run guests on a CPU with `msrs` (at VM creation): region
    /// layout, and that the controls can be computed for a guest with no optional features.
    pub fn new(msrs: VmxCapMsrs) -> Result<Self, CapError> {
        if msrs.basic & BASIC_PHYS_32BIT != 0 {
            return Err(CapError::PhysAddr32);
        }
        let size = msrs.region_size();
        if size == 0 || size > 4096 {
            return Err(CapError::RegionSize(size));
        }
        if msrs.vmcs_memory_type() != MEMTYPE_WB {
            return Err(CapError::VmcsMemoryType(msrs.vmcs_memory_type()));
        }
        compute_controls(&msrs, &ControlPolicy::default())?;
        Ok(Self {
            msrs,
            ept_vpid: EptVpidCaps {
                raw: msrs.ept_vpid_cap.unwrap_or(0),
            },
        })
    }

    /// The controls for `policy` (cannot fail once [`VmxCaps::new`] succeeded: the optional
    /// features only add bits the CPU allows).
    pub fn controls(&self, policy: &ControlPolicy) -> Result<Controls, CapError> {
        compute_controls(&self.msrs, policy)
    }

    /// CR0 bits the CPU requires to be 1 in VMX operation for a guest: `IA32_VMX_CR0_FIXED0`
    /// without PE and PG, which unrestricted guests may clear.
    pub const fn guest_cr0_fixed1_bits(&self) -> u64 {
        self.msrs.cr0_fixed0 & !(CR0_PE | CR0_PG)
    }

    /// CR0 bits the CPU requires to be 0 (not set in `IA32_VMX_CR0_FIXED1`), limited to the
    /// architectural low 32 bits.
    pub const fn cr0_fixed0_bits(&self) -> u64 {
        !self.msrs.cr0_fixed1 & 0xffff_ffff
    }

    /// CR4 bits the CPU requires to be 1 (`IA32_VMX_CR4_FIXED0`, i.e. VMXE).
    pub const fn cr4_fixed1_bits(&self) -> u64 {
        self.msrs.cr4_fixed0
    }

    /// CR4 bits the CPU requires to be 0.
    pub const fn cr4_fixed0_bits(&self) -> u64 {
        !self.msrs.cr4_fixed1
    }
}

/// CR0.PE.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.NE.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;

/// `IA32_FEATURE_CONTROL` (0x3a) bit 0: the MSR is locked.
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
/// `IA32_FEATURE_CONTROL` bit 2: VMXON allowed outside SMX operation.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Why VMXON cannot be executed on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxonError {
    /// Firmware left `IA32_FEATURE_CONTROL` unlocked or locked with VMX disabled outside SMX.
    DisabledByFirmware {
        /// The MSR value.
        feature_control: u64,
    },
    /// The host CR0 or CR4 violates the VMX fixed bits.
    HostCr {
        /// Host CR0.
        cr0: u64,
        /// Host CR4 (with VMXE set).
        cr4: u64,
    },
}

/// Checks the conditions of VMXON (SDM §24.7 "Enabling and Entering VMX Operation") that
/// software must establish: `IA32_FEATURE_CONTROL` locked with VMX outside SMX enabled, and the
/// host's CR0/CR4 (CR4 with VMXE set) within the fixed bits.
pub fn check_vmxon(
    caps: &VmxCapMsrs,
    feature_control: u64,
    cr0: u64,
    cr4: u64,
) -> Result<(), VmxonError> {
    let need = FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX;
    if feature_control & need != need {
        return Err(VmxonError::DisabledByFirmware { feature_control });
    }
    let cr4 = cr4 | CR4_VMXE;
    let ok = |v: u64, f0: u64, f1: u64| v & f0 == f0 && v & !f1 & 0xffff_ffff == 0;
    if !ok(cr0, caps.cr0_fixed0, caps.cr0_fixed1) || !ok(cr4, caps.cr4_fixed0, caps.cr4_fixed1) {
        return Err(VmxonError::HostCr { cr0, cr4 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;
    use proptest::prelude::*;

    const ALL_GUEST: ControlPolicy = ControlPolicy {
        guest: GuestFeatures {
            rdtscp: true,
            invpcid: true,
            xsaves: true,
        },
        io_bitmaps: false,
    };

    #[test]
    fn read_follows_existence_rules() {
        // `Recorded` panics on an absent MSR: the reader must not touch EPT_VPID_CAP, the TRUE
        // MSRs or VMFUNC on CPUs that lack them.
        for m in [
            BOCHS_SKYLAKE_X,
            BOCHS_HASWELL,
            BOCHS_LYNNFIELD,
            BOCHS_PENRYN,
            REAL_SKYLAKE_X,
            REAL_SANDY_BRIDGE,
            REAL_PENRYN,
        ] {
            assert_eq!(VmxCapMsrs::read(&as_msrs(&m)), m);
        }
    }

    #[test]
    fn bochs_skylake_x_controls() {
        let caps = VmxCaps::new(BOCHS_SKYLAKE_X).unwrap();
        assert_eq!(BOCHS_SKYLAKE_X.revision_id(), 0x2b);
        assert_eq!(BOCHS_SKYLAKE_X.region_size(), 4096);
        assert_eq!(BOCHS_SKYLAKE_X.max_msr_list_entries(), 512);
        let c = caps.controls(&ControlPolicy::default()).unwrap();
        // Pin: reserved 1,2,4 + external interrupt, NMI, virtual NMIs.
        assert_eq!(c.pin, 0x3f);
        // Primary: TRUE allowed-0 bits (no CR3 exiting), HLT, MOV-DR, RDPMC, CR8 load/store,
        // unconditional I/O, secondary, MSR bitmaps, TSC offsetting, MONITOR/MWAIT.
        assert_eq!(c.proc, 0xb598_6dfa);
        assert_eq!(c.proc & (3 << 15), 0, "no CR3 exiting with EPT");
        assert_eq!(c.proc & (1 << 9), 0, "no INVLPG exiting with EPT");
        assert_eq!(c.proc & (1 << 21), 0, "no TPR shadow");
        assert_eq!(
            c.proc & ((1 << 2) | (1 << 22)),
            0,
            "windows are set on demand"
        );
        // Secondary: EPT, VPID, WBINVD exiting, unrestricted guest.
        assert_eq!(c.proc2, 0xe2);
        assert!(c.vpid());
        // Exit: reserved bits, save debug controls, host address-space size, PAT/EFER
        // save/load; no acknowledge-interrupt-on-exit.
        assert_eq!(c.exit, 0x003f_6fff);
        assert_eq!(c.exit & (1 << 15), 0);
        // Entry: reserved bits, load debug controls, load PAT/EFER.
        assert_eq!(c.entry, 0xd1ff);
        assert_eq!(c.entry_for(true), 0xd3ff);
        assert_eq!(c.entry_for(false), 0xd1ff);
        // Guest CPUID features enable RDTSCP, INVPCID and XSAVES.
        let c = caps.controls(&ALL_GUEST).unwrap();
        assert_eq!(c.proc2, 0x0010_10ea);
        // I/O bitmaps instead of unconditional I/O exiting.
        let c = caps
            .controls(&ControlPolicy {
                io_bitmaps: true,
                ..ControlPolicy::default()
            })
            .unwrap();
        assert_eq!(c.proc & (3 << 24), 2 << 24);
        assert!(caps.ept_vpid.ad() && caps.ept_vpid.page_1g() && caps.ept_vpid.page_2m());
        assert!(caps.ept_vpid.invept_single() && caps.ept_vpid.invvpid_all());
    }

    #[test]
    fn bochs_haswell_lacks_xsaves() {
        let caps = VmxCaps::new(BOCHS_HASWELL).unwrap();
        let c = caps.controls(&ALL_GUEST).unwrap();
        // RDTSCP and INVPCID exist; XSAVES does not: left 0 (XSAVES faults in the guest).
        assert_eq!(c.proc2, 0x10ea);
        assert_eq!(c.proc, 0xb598_6dfa);
    }

    #[test]
    fn real_cpus() {
        let sky = VmxCaps::new(REAL_SKYLAKE_X).unwrap();
        assert_eq!(sky.msrs.region_size(), 1024);
        let c = sky.controls(&ALL_GUEST).unwrap();
        assert_eq!(
            (c.pin, c.proc, c.exit, c.entry),
            (0x3f, 0xb598_6dfa, 0x003f_6fff, 0xd1ff)
        );
        assert_eq!(c.proc2, 0x0010_10ea);
        let snb = VmxCaps::new(REAL_SANDY_BRIDGE).unwrap();
        let c = snb.controls(&ALL_GUEST).unwrap();
        // No INVPCID or XSAVES on Sandy Bridge.
        assert_eq!(c.proc2, 0xea);
    }

    #[test]
    fn without_true_msrs_default1_bits_stay_set() {
        // Sandy Bridge as if IA32_VMX_BASIC[55] were clear: CR3-load/store exiting cannot be
        // turned off, nor save/load debug controls.
        let mut m = REAL_SANDY_BRIDGE;
        m.basic &= !BASIC_TRUE_CTLS;
        m.true_ctls = None;
        assert_eq!(VmxCapMsrs::read(&as_msrs(&m)), m);
        let c = VmxCaps::new(m)
            .unwrap()
            .controls(&ControlPolicy::default())
            .unwrap();
        assert_eq!(c.proc, 0xb599_edfa);
        assert_eq!(c.proc & (3 << 15), 3 << 15);
    }

    #[test]
    fn lynnfield_and_penryn_are_refused_with_the_missing_feature() {
        let e = VmxCaps::new(BOCHS_LYNNFIELD).unwrap_err();
        assert_eq!(
            e,
            CapError::Missing(Feature::Control {
                word: ControlWord::Proc2,
                bit: 7,
                name: "unrestricted guest"
            })
        );
        let text = e.to_string();
        assert!(text.contains("unrestricted guest"), "{text}");
        assert!(
            text.contains("secondary processor-based VM-execution control bit 7"),
            "{text}"
        );
        assert!(text.contains("not implemented yet"), "{text}");
        for m in [BOCHS_PENRYN, REAL_PENRYN] {
            let e = VmxCaps::new(m).unwrap_err();
            assert_eq!(
                e,
                CapError::Missing(Feature::Control {
                    word: ControlWord::Proc2,
                    bit: 1,
                    name: "enable EPT"
                })
            );
            assert!(e.to_string().contains("enable EPT"));
        }
    }

    #[test]
    fn other_refusals() {
        let mut m = BOCHS_SKYLAKE_X;
        m.basic |= BASIC_PHYS_32BIT;
        assert_eq!(VmxCaps::new(m), Err(CapError::PhysAddr32));
        let mut m = BOCHS_SKYLAKE_X;
        m.basic &= !(0xf << 50); // memory type 0 (UC)
        assert_eq!(VmxCaps::new(m), Err(CapError::VmcsMemoryType(0)));
        let mut m = BOCHS_SKYLAKE_X;
        m.basic = (m.basic & !(0x1fff << 32)) | (0x1fff << 32);
        assert_eq!(VmxCaps::new(m), Err(CapError::RegionSize(0x1fff)));
        let mut m = BOCHS_SKYLAKE_X;
        m.ept_vpid_cap = Some(0x0000_0f01_0610_4141); // no 2M pages is fine, no INVEPT is not
        assert!(VmxCaps::new(m).is_ok());
        m.ept_vpid_cap = Some(0x0000_0f01_0600_4141);
        assert_eq!(VmxCaps::new(m), Err(CapError::Missing(Feature::Invept)));
        m.ept_vpid_cap = Some(0x0000_0f01_0611_0141);
        assert_eq!(
            VmxCaps::new(m),
            Err(CapError::Missing(Feature::EptWriteBack))
        );
        m.ept_vpid_cap = Some(0x0000_0f01_0611_4101);
        assert_eq!(
            VmxCaps::new(m),
            Err(CapError::Missing(Feature::Ept4LevelWalk))
        );
        // No INVVPID: VPID stays off.
        m.ept_vpid_cap = Some(0x0611_4141);
        assert!(!VmxCaps::new(m)
            .unwrap()
            .controls(&ControlPolicy::default())
            .unwrap()
            .vpid());
        // A control MSR requiring a bit it does not allow.
        let mut m = BOCHS_SKYLAKE_X;
        m.true_ctls = m.true_ctls.map(|t| TrueCtls {
            pinbased: 0x16 | 1 << 8,
            ..t
        });
        assert_eq!(
            VmxCaps::new(m),
            Err(CapError::Inconsistent(ControlWord::Pin))
        );
        // Without PAT loading (Penryn-like exit controls on an EPT CPU).
        let mut m = BOCHS_SKYLAKE_X;
        m.true_ctls = m.true_ctls.map(|t| TrueCtls {
            exit: 0x0003_ffff_0003_6dfb,
            ..t
        });
        assert_eq!(
            VmxCaps::new(m),
            Err(CapError::Missing(Feature::Control {
                word: ControlWord::Exit,
                bit: 18,
                name: "save IA32_PAT"
            }))
        );
    }

    #[test]
    fn vmxon_preconditions() {
        let m = BOCHS_SKYLAKE_X;
        let cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
        assert_eq!(check_vmxon(&m, 5, cr0, 0x0000_06f0), Ok(()));
        assert_eq!(
            check_vmxon(&m, 1, cr0, 0x6f0),
            Err(VmxonError::DisabledByFirmware { feature_control: 1 })
        );
        assert_eq!(
            check_vmxon(&m, 4, cr0, 0x6f0),
            Err(VmxonError::DisabledByFirmware { feature_control: 4 })
        );
        // CR0.NE clear violates CR0_FIXED0.
        assert!(matches!(
            check_vmxon(&m, 5, cr0 & !0x20, 0x6f0),
            Err(VmxonError::HostCr { .. })
        ));
        // CR4.PKE (bit 22) is not allowed by Bochs's Skylake-X.
        assert!(matches!(
            check_vmxon(&m, 5, cr0, 0x6f0 | 1 << 22),
            Err(VmxonError::HostCr { .. })
        ));
    }

    fn ctl_msr() -> impl Strategy<Value = u64> {
        (any::<u32>(), any::<u32>()).prop_map(|(a0, extra)| {
            let a1 = a0 | extra;
            u64::from(a1) << 32 | u64::from(a0)
        })
    }

    proptest! {
        /// Whatever the MSRs say, computed controls obey allowed-0/allowed-1, and a refusal
        /// names a bit the CPU really does not allow.
        #[test]
        fn controls_obey_allowed_settings(
            pin in ctl_msr(), proc in ctl_msr(), exit in ctl_msr(), entry in ctl_msr(),
            tpin in ctl_msr(), tproc in ctl_msr(), texit in ctl_msr(), tentry in ctl_msr(),
            p2 in any::<u32>(), ept in any::<u64>(), has_true in any::<bool>(),
            rdtscp in any::<bool>(), invpcid in any::<bool>(), xsaves in any::<bool>(),
            io_bitmaps in any::<bool>(),
        ) {
            let m = VmxCapMsrs {
                basic: BOCHS_BASIC_FOR_TESTS & !BASIC_TRUE_CTLS
                    | if has_true { BASIC_TRUE_CTLS } else { 0 },
                pinbased: pin, procbased: proc, exit, entry,
                procbased2: Some(u64::from(p2) << 32),
                ept_vpid_cap: Some(ept),
                true_ctls: has_true.then_some(TrueCtls {
                    pinbased: tpin, procbased: tproc, exit: texit, entry: tentry,
                }),
                ..BOCHS_SKYLAKE_X
            };
            let policy = ControlPolicy {
                guest: GuestFeatures { rdtscp, invpcid, xsaves },
                io_bitmaps,
            };
            let caps = |w: ControlWord| m.ctl(w).0;
            match compute_controls(&m, &policy) {
                Ok(c) => {
                    for (w, v) in [
                        (ControlWord::Pin, c.pin), (ControlWord::Proc, c.proc),
                        (ControlWord::Proc2, c.proc2), (ControlWord::Exit, c.exit),
                        (ControlWord::Entry, c.entry_for(true)),
                    ] {
                        let cap = caps(w);
                        prop_assert_eq!(v & !allowed1(cap), 0, "{:?}", w);
                        prop_assert_eq!(v & allowed0(cap), allowed0(cap), "{:?}", w);
                    }
                    prop_assert!(c.pin & 0x29 == 0x29);
                    prop_assert!(c.proc2 & 0x82 == 0x82);
                    prop_assert!(c.exit & (1 << 15) == 0 || allowed0(caps(ControlWord::Exit)) & (1 << 15) != 0);
                }
                Err(CapError::Missing(Feature::Control { word, bit, .. })) => {
                    prop_assert_eq!(allowed1(caps(word)) & (1 << bit), 0);
                }
                Err(CapError::Inconsistent(w)) => {
                    prop_assert_ne!(allowed0(caps(w)) & !allowed1(caps(w)), 0);
                }
                Err(_) => {}
            }
        }
    }

    const BOCHS_BASIC_FOR_TESTS: u64 = 0x00d8_1000_0000_002b;
}
