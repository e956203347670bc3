//! MSR policy: the lists `KVM_GET_MSR_INDEX_LIST` / `KVM_GET_MSR_FEATURE_INDEX_LIST` report, the
//! feature MSR values, a store for MSRs that live in memory (used by the soft backend and by
//! hardware backends for MSRs the VMCS/VMCB does not hold, MTRRs included), and the
//! machine-check MSRs ([`Mce`], held by the core for every backend).

use crate::errno::{KResult, EINVAL};

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_APIC_BASE`.
pub const MSR_IA32_APICBASE: u32 = 0x1b;
/// `IA32_UCODE_REV` (feature MSR).
pub const MSR_IA32_UCODE_REV: u32 = 0x8b;
/// `IA32_ARCH_CAPABILITIES` (feature MSR).
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_PAT`.
pub const MSR_IA32_CR_PAT: u32 = 0x277;
/// `IA32_MTRRCAP` (read-only).
pub const MSR_MTRRCAP: u32 = 0xfe;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `STAR`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `LSTAR`.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `CSTAR`.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `SFMASK`.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `KERNEL_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `TSC_AUX`.
pub const MSR_TSC_AUX: u32 = 0xc000_0103;
/// `MSR_KVM_WALL_CLOCK` (accepted only as 0: no kvmclock is advertised).
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
/// `MSR_KVM_SYSTEM_TIME` (accepted only as 0).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;

/// MSRs the store keeps (saved/restored through `KVM_GET/SET_MSRS`).
pub const MSRS_TO_SAVE: [u32; 13] = [
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_SYSENTER_EIP,
    MSR_STAR,
    MSR_CSTAR,
    MSR_KERNEL_GS_BASE,
    MSR_SYSCALL_MASK,
    MSR_LSTAR,
    MSR_IA32_TSC,
    MSR_IA32_CR_PAT,
    MSR_TSC_AUX,
    MSR_IA32_MISC_ENABLE,
    MSR_IA32_APICBASE,
];

/// Emulated MSRs `KVM_GET_MSR_INDEX_LIST` reports after [`MSRS_TO_SAVE`] (Linux
/// `emulated_msrs`: the machine-check globals; the bank MSRs and `MCG_CAP` are not listed,
/// userspace derives them from `KVM_X86_SETUP_MCE`).
pub const EMULATED_MSRS: [u32; 2] = [MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL];

/// What `KVM_GET_MSR_FEATURE_INDEX_LIST` reports.
pub const FEATURE_MSRS: [u32; 2] = [MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_UCODE_REV];

/// Value of a feature MSR (`KVM_GET_MSRS` on `/dev/kvm`); `None` if not a feature MSR.
pub fn feature_msr(index: u32) -> Option<u64> {
    match index {
        // No speculation-control claims: the guest must assume the worst.
        MSR_IA32_ARCH_CAPABILITIES => Some(0),
        // Linux's default guest microcode revision.
        MSR_IA32_UCODE_REV => Some(0x1_0000_0000),
        _ => None,
    }
}

fn is_mtrr(index: u32) -> bool {
    matches!(
        index,
        MSR_MTRRCAP | 0x200..=0x20f | 0x250 | 0x258 | 0x259 | 0x268..=0x26f | MSR_MTRR_DEF_TYPE
    )
}

/// `MTRRcap`: 8 variable ranges, fixed ranges, write-combining (what KVM reports).
const MTRRCAP_VALUE: u64 = 0x508;

/// Number of entries in an [`MsrStore`].
pub const STORE_SIZE: usize = 48;

/// MSRs kept in memory, with their reset values.
#[derive(Clone, Copy, zerocopy::FromZeros)]
pub struct MsrStore {
    idx: [u32; STORE_SIZE],
    val: [u64; STORE_SIZE],
    n: u32,
}

impl MsrStore {
    /// The power-on values (PAT 0x0007040600070406, MISC_ENABLE fast-strings off).
    pub fn reset(&mut self) {
        self.n = 0;
        let _ = self.put(MSR_IA32_CR_PAT, 0x0007_0406_0007_0406);
        let _ = self.put(MSR_IA32_MISC_ENABLE, 1 << 0);
        let _ = self.put(MSR_IA32_UCODE_REV, 0x1_0000_0000);
    }

    fn put(&mut self, index: u32, v: u64) -> KResult<()> {
        let n = self.n as usize;
        if let Some(i) = self
            .idx
            .get(..n)
            .and_then(|s| s.iter().position(|&x| x == index))
        {
            if let Some(slot) = self.val.get_mut(i) {
                *slot = v;
            }
            return Ok(());
        }
        let (Some(si), Some(sv)) = (self.idx.get_mut(n), self.val.get_mut(n)) else {
            return Err(EINVAL);
        };
        *si = index;
        *sv = v;
        self.n += 1;
        Ok(())
    }

    /// Whether `index` is an MSR this store handles.
    pub fn handles(index: u32) -> bool {
        MSRS_TO_SAVE.contains(&index)
            || FEATURE_MSRS.contains(&index)
            || is_mtrr(index)
            || matches!(
                index,
                MSR_KVM_WALL_CLOCK | MSR_KVM_SYSTEM_TIME | 0x4b56_4d00 | 0x4b56_4d01
            )
    }

    /// Reads `index` (0 if never written); `EINVAL` if not handled.
    pub fn get(&self, index: u32) -> KResult<u64> {
        if !Self::handles(index) {
            return Err(EINVAL);
        }
        if index == MSR_MTRRCAP {
            return Ok(MTRRCAP_VALUE);
        }
        let n = self.n as usize;
        Ok(self
            .idx
            .get(..n)
            .and_then(|s| s.iter().position(|&x| x == index))
            .and_then(|i| self.val.get(i).copied())
            .unwrap_or(0))
    }

    /// Writes `index`; `host` writes may set read-only feature MSRs. `EINVAL` if not handled or
    /// the value is invalid (non-canonical bases, PAT reserved memory types, kvmclock enables).
    pub fn set(&mut self, index: u32, v: u64, host: bool) -> KResult<()> {
        if !Self::handles(index) {
            return Err(EINVAL);
        }
        let canonical = |a: u64| ((a as i64) << 16 >> 16) as u64 == a;
        let ok = match index {
            MSR_LSTAR
            | MSR_CSTAR
            | MSR_KERNEL_GS_BASE
            | MSR_IA32_SYSENTER_ESP
            | MSR_IA32_SYSENTER_EIP => canonical(v),
            MSR_IA32_CR_PAT => {
                (0..8).all(|i| matches!((v >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7))
            }
            MSR_TSC_AUX => v >> 32 == 0,
            MSR_MTRRCAP => false,
            MSR_IA32_ARCH_CAPABILITIES | MSR_IA32_UCODE_REV => host,
            MSR_KVM_WALL_CLOCK | MSR_KVM_SYSTEM_TIME | 0x4b56_4d00 | 0x4b56_4d01 => host && v == 0,
            _ => true,
        };
        if !ok {
            return Err(EINVAL);
        }
        self.put(index, v)
    }
}

/// `IA32_P5_MC_ADDR` (reads 0).
pub const MSR_IA32_P5_MC_ADDR: u32 = 0;
/// `IA32_P5_MC_TYPE` (reads 0).
pub const MSR_IA32_P5_MC_TYPE: u32 = 1;
/// `IA32_MCG_CAP` (read-only: set by `KVM_X86_SETUP_MCE`).
pub const MSR_IA32_MCG_CAP: u32 = 0x179;
/// `IA32_MCG_STATUS`.
pub const MSR_IA32_MCG_STATUS: u32 = 0x17a;
/// `IA32_MCG_CTL` (present with `MCG_CTL_P`).
pub const MSR_IA32_MCG_CTL: u32 = 0x17b;
/// `IA32_MC0_CTL2` (CMCI control; one per bank).
pub const MSR_IA32_MC0_CTL2: u32 = 0x280;
/// `IA32_MC0_CTL`: bank `i` has CTL, STATUS, ADDR, MISC at `0x400 + 4 * i + 0..=3`.
pub const MSR_IA32_MC0_CTL: u32 = 0x400;

/// Most machine-check banks a vCPU can have (Linux `KVM_MAX_MCE_BANKS`, `KVM_CAP_MCE`).
pub const KVM_MAX_MCE_BANKS: u32 = 32;
/// `MCG_CAP` bits 7:0: the number of banks.
pub const MCG_CAP_BANKS_MASK: u64 = 0xff;
/// `MCG_CAP.MCG_CTL_P`: `IA32_MCG_CTL` present.
pub const MCG_CTL_P: u64 = 1 << 8;
/// `MCG_CAP.MCG_CMCI_P`: corrected-error interrupts (`MCi_CTL2`) present.
pub const MCG_CMCI_P: u64 = 1 << 10;
/// `MCG_CAP.MCG_SER_P`: software error recovery (extra `MCi_STATUS` bits).
pub const MCG_SER_P: u64 = 1 << 24;
/// `MCG_CAP.MCG_LMCE_P`: local machine check.
pub const MCG_LMCE_P: u64 = 1 << 27;
/// `MCG_CAP` bits `KVM_X86_SETUP_MCE` accepts besides the bank count and the extended-register
/// count (bits 23:16), which Linux lets through too. No CMCI (the in-kernel APIC has no CMCI
/// LVT entry) and no LMCE (no `IA32_FEATURE_CONTROL` / `MCG_EXT_CTL`).
pub const KVM_MCE_CAP_SUPPORTED: u64 = MCG_CTL_P | MCG_SER_P;
/// `MCG_STATUS.MCIP`: a machine check is in progress.
pub const MCG_STATUS_MCIP: u64 = 1 << 2;
/// `MCi_STATUS.VAL`.
pub const MCI_STATUS_VAL: u64 = 1 << 63;
/// `MCi_STATUS.OVER`: an error was overwritten.
pub const MCI_STATUS_OVER: u64 = 1 << 62;
/// `MCi_STATUS.UC`: uncorrected error.
pub const MCI_STATUS_UC: u64 = 1 << 61;
/// `MCi_STATUS.PCC`: processor context corrupt.
pub const MCI_STATUS_PCC: u64 = 1 << 57;
/// `MCi_STATUS.S`: signalled (SRAR/SRAO).
pub const MCI_STATUS_S: u64 = 1 << 56;
/// `MCi_STATUS.AR`: action required.
pub const MCI_STATUS_AR: u64 = 1 << 55;

/// What [`Mce::inject`] asks of the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McAction {
    /// Recorded in the bank (or dropped, as the CPU would) without an exception.
    None,
    /// Deliver #MC (vector 18).
    RaiseMc,
    /// A machine check while one is in progress or with CR4.MCE clear: shutdown.
    Shutdown,
}

/// The machine-check architecture of one vCPU (Linux `vcpu->arch.mcg_*`, `mce_banks`).
///
/// Rules follow Linux `get_msr_mce` / `set_msr_mce`: bank MSRs beyond the bank count and
/// `MCG_CTL` without `MCG_CTL_P` fault for the guest; `MCi_CTL` takes 0 or all ones (bit 10 and
/// bit 0 may be clear, for old guests); a guest may only write 0 to `MCi_STATUS` (no AMD
/// `HWCR.McStatusWrEn`); `MCi_CTL2` exists only with `MCG_CMCI_P`, which is never offered, so
/// it reads 0 and userspace may write 0 to it.
#[derive(Clone, Copy, zerocopy::FromZeros)]
pub struct Mce {
    mcg_cap: u64,
    mcg_status: u64,
    mcg_ctl: u64,
    /// CTL, STATUS, ADDR, MISC of every bank.
    banks: [u64; 4 * KVM_MAX_MCE_BANKS as usize],
}

impl Mce {
    /// The state at vCPU creation: 32 banks, no `MCG_CTL_P`, everything 0 (Linux).
    pub fn reset(&mut self) {
        self.mcg_cap = u64::from(KVM_MAX_MCE_BANKS);
        self.mcg_status = 0;
        self.mcg_ctl = 0;
        self.banks = [0; 4 * KVM_MAX_MCE_BANKS as usize];
    }

    fn nbanks(&self) -> u32 {
        (self.mcg_cap & MCG_CAP_BANKS_MASK) as u32
    }

    /// Whether `index` is a machine-check MSR (answered here, never by a backend).
    pub fn handles(index: u32) -> bool {
        let max = KVM_MAX_MCE_BANKS;
        matches!(
            index,
            MSR_IA32_P5_MC_ADDR
                | MSR_IA32_P5_MC_TYPE
                | MSR_IA32_MCG_CAP
                | MSR_IA32_MCG_STATUS
                | MSR_IA32_MCG_CTL
        ) || (MSR_IA32_MC0_CTL2..MSR_IA32_MC0_CTL2 + max).contains(&index)
            || (MSR_IA32_MC0_CTL..MSR_IA32_MC0_CTL + 4 * max).contains(&index)
    }

    /// The slot of a bank MSR that exists with the current bank count.
    fn bank_slot(&self, index: u32) -> Option<usize> {
        let off = index.checked_sub(MSR_IA32_MC0_CTL)?;
        (off < 4 * self.nbanks()).then_some(off as usize)
    }

    /// Reads `index` (`host` = `KVM_GET_MSRS`); `EINVAL` = #GP for the guest.
    pub fn get(&self, index: u32, host: bool) -> KResult<u64> {
        match index {
            MSR_IA32_P5_MC_ADDR | MSR_IA32_P5_MC_TYPE => Ok(0),
            MSR_IA32_MCG_CAP => Ok(self.mcg_cap),
            MSR_IA32_MCG_STATUS => Ok(self.mcg_status),
            MSR_IA32_MCG_CTL if self.mcg_cap & MCG_CTL_P != 0 || host => Ok(self.mcg_ctl),
            i if (MSR_IA32_MC0_CTL2..MSR_IA32_MC0_CTL2 + self.nbanks()).contains(&i)
                && (self.mcg_cap & MCG_CMCI_P != 0 || host) =>
            {
                Ok(0)
            }
            i => self
                .bank_slot(i)
                .and_then(|s| self.banks.get(s).copied())
                .ok_or(EINVAL),
        }
    }

    /// Writes `index` (`host` = `KVM_SET_MSRS`); `EINVAL` = #GP for the guest.
    pub fn set(&mut self, index: u32, data: u64, host: bool) -> KResult<()> {
        let cap = self.mcg_cap;
        match index {
            MSR_IA32_MCG_STATUS => self.mcg_status = data,
            MSR_IA32_MCG_CTL => {
                if cap & MCG_CTL_P == 0 && (data != 0 || !host) {
                    return Err(EINVAL);
                }
                if data != 0 && data != !0 {
                    return Err(EINVAL);
                }
                self.mcg_ctl = data;
            }
            // MCi_CTL2 without CMCI: only userspace's 0 (restoring a saved state) is taken.
            i if (MSR_IA32_MC0_CTL2..MSR_IA32_MC0_CTL2 + self.nbanks()).contains(&i) => {
                if cap & MCG_CMCI_P == 0 && (data != 0 || !host) {
                    return Err(EINVAL);
                }
            }
            i => {
                let slot = self.bank_slot(i).ok_or(EINVAL)?;
                let ctl = slot % 4 == 0;
                let status = slot % 4 == 1;
                if ctl && data != 0 && (data | (1 << 10) | 1) != !0 {
                    return Err(EINVAL);
                }
                if status && !host && data != 0 {
                    return Err(EINVAL);
                }
                *self.banks.get_mut(slot).ok_or(EINVAL)? = data;
            }
        }
        Ok(())
    }

    /// `KVM_X86_SETUP_MCE`: 1..=32 banks and only supported capability bits (bits 23:16 pass,
    /// as in Linux); `MCG_CTL` and every `MCi_CTL` become all ones.
    pub fn setup(&mut self, mcg_cap: u64) -> KResult<()> {
        let n = mcg_cap & MCG_CAP_BANKS_MASK;
        if n == 0 || n > u64::from(KVM_MAX_MCE_BANKS) {
            return Err(EINVAL);
        }
        if mcg_cap & !(KVM_MCE_CAP_SUPPORTED | MCG_CAP_BANKS_MASK | 0xff_0000) != 0 {
            return Err(EINVAL);
        }
        self.mcg_cap = mcg_cap;
        if mcg_cap & MCG_CTL_P != 0 {
            self.mcg_ctl = !0;
        }
        for ctl in self.banks.iter_mut().step_by(4).take(n as usize) {
            *ctl = !0;
        }
        Ok(())
    }

    /// `KVM_X86_SET_MCE`: records `status`/`addr`/`misc` in `bank` as the CPU would and says
    /// whether to raise #MC or shut down (`cr4_mce` = the guest's CR4.MCE). `EINVAL` for a bank
    /// beyond the count or a status without VAL. Linux `kvm_vcpu_ioctl_x86_set_mce`.
    pub fn inject(
        &mut self,
        bank: u8,
        status: u64,
        addr: u64,
        misc: u64,
        mcg_status: u64,
        cr4_mce: bool,
    ) -> KResult<McAction> {
        if u32::from(bank) >= self.nbanks() || status & MCI_STATUS_VAL == 0 {
            return Err(EINVAL);
        }
        let b = 4 * usize::from(bank);
        let cur_ctl = self.banks.get(b).copied().ok_or(EINVAL)?;
        let cur_status = self.banks.get(b + 1).copied().ok_or(EINVAL)?;
        let uc = status & MCI_STATUS_UC != 0;
        let ucna =
            uc && mcg_status == 0 && status & (MCI_STATUS_PCC | MCI_STATUS_S | MCI_STATUS_AR) == 0;
        let mut status = status;
        let write = |s: &mut Self, st: u64| {
            if let Some(r) = s.banks.get_mut(b + 1..b + 4) {
                r.copy_from_slice(&[st, addr, misc]);
            }
        };
        if ucna {
            // Uncorrected, no action required: logged; it would signal through CMCI, which is
            // not offered.
            write(self, status);
            self.mcg_status = mcg_status;
            return Ok(McAction::None);
        }
        if uc {
            // Reporting of uncorrected errors disabled globally or for the bank: dropped.
            if (self.mcg_cap & MCG_CTL_P != 0 && self.mcg_ctl != !0) || cur_ctl != !0 {
                return Ok(McAction::None);
            }
            if self.mcg_status & MCG_STATUS_MCIP != 0 || !cr4_mce {
                return Ok(McAction::Shutdown);
            }
            if cur_status & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            write(self, status);
            self.mcg_status = mcg_status;
            return Ok(McAction::RaiseMc);
        }
        if cur_status & MCI_STATUS_VAL == 0 || cur_status & MCI_STATUS_UC == 0 {
            // A corrected error replaces a corrected one (noting the overflow).
            if cur_status & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            write(self, status);
        } else if let Some(s) = self.banks.get_mut(b + 1) {
            // An uncorrected error is never overwritten by a corrected one.
            *s |= MCI_STATUS_OVER;
        }
        Ok(McAction::None)
    }
}

/// Whether the CPU has `TSC_AUX`, which RDTSCP and RDPID read without any intercept (CPUID
/// 8000_0001h EDX.RDTSCP[27] or 7.0 ECX.RDPID[22]): a backend must then load the guest's
/// value around every entry, or the guest reads the host's (Linux: its CPU number).
pub fn host_has_tsc_aux(cpuid: fn(u32, u32) -> crate::backend::CpuidResult) -> bool {
    let ext = cpuid(0x8000_0000, 0).eax >= 0x8000_0001
        && cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
    let basic = cpuid(0, 0).eax >= 7 && cpuid(7, 0).ecx & (1 << 22) != 0;
    ext || basic
}
