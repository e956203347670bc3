//! Architectural control-register bits and the guest paging state the walker and the shadow MMU take.

/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical-address extension (PAE, 4-level and 5-level paging).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging when in IA-32e mode.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP: supervisor-mode execution prevention.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor-mode access prevention.
pub const CR4_SMAP: u64 = 1 << 21;
/// CR4.PKE: protection keys for user-mode pages.
pub const CR4_PKE: u64 = 1 << 22;
/// CR4.PKS: protection keys for supervisor-mode pages.
pub const CR4_PKS: u64 = 1 << 24;
/// IA32_EFER.LMA: IA-32e mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_EFER.NXE: execute-disable bit enabled.
pub const EFER_NXE: u64 = 1 << 11;

/// Which paging structures translate linear addresses (SDM Vol. 3 §4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear address = physical address (32 bits).
    Off,
    /// 32-bit paging (CR4.PAE = 0), with 4 MiB pages when CR4.PSE = 1.
    Bits32,
    /// PAE paging: four PDPTEs cached at CR3 load, then PD and PT.
    Pae,
    /// 4-level paging (IA32_EFER.LMA = 1, CR4.LA57 = 0).
    Level4,
    /// 5-level paging (IA32_EFER.LMA = 1, CR4.LA57 = 1).
    Level5,
}

impl PagingMode {
    /// The paging mode selected by CR0, CR4 and IA32_EFER (LMA, not LME, decides long mode).
    pub fn from_regs(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                PagingMode::Level5
            } else {
                PagingMode::Level4
            }
        } else if cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32
        }
    }

    /// True for the modes whose entries are 64 bits wide and may carry XD (PAE, 4- and 5-level).
    pub fn is_pae_format(self) -> bool {
        matches!(
            self,
            PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5
        )
    }

    /// True in IA-32e mode (4-level or 5-level paging).
    pub fn is_long(self) -> bool {
        matches!(self, PagingMode::Level4 | PagingMode::Level5)
    }
}

/// The guest's paging-related register state, as the vCPU has it at the time of the access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest IA32_EFER.
    pub efer: u64,
    /// PDPTEs cached by the last CR3 load in PAE mode (see [`crate::load_pdptes`]); unused otherwise.
    pub pdptes: [u64; 4],
    /// PKRU register (user-page protection keys).
    pub pkru: u32,
    /// IA32_PKRS MSR (supervisor-page protection keys).
    pub pkrs: u32,
}

impl PagingRegs {
    /// The paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        PagingMode::from_regs(self.cr0, self.cr4, self.efer)
    }

    /// True when execute-disable is in effect: EFER.NXE with a PAE-format mode.
    pub fn nx_enabled(&self) -> bool {
        self.efer & EFER_NXE != 0 && self.mode().is_pae_format()
    }
}

/// CPU model facts the walk depends on (from the vCPU's CPUID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// MAXPHYADDR (CPUID 0x80000008 EAX bits 7:0); clamped to 32..=52.
    pub max_phys_addr: u8,
    /// 1 GiB pages supported (CPUID 0x80000001 EDX bit 26); otherwise PS in a PDPTE is reserved.
    pub gbpages: bool,
}

impl CpuModel {
    /// MAXPHYADDR clamped to the architectural range.
    pub fn maxphyaddr(&self) -> u32 {
        u32::from(self.max_phys_addr).clamp(32, 52)
    }

    /// Mask of physical-address bits 51:12 that lie below MAXPHYADDR.
    pub fn addr_mask(&self) -> u64 {
        ((1u64 << self.maxphyaddr()) - 1) & !0xFFF
    }
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel {
            max_phys_addr: 46,
            gbpages: true,
        }
    }
}
