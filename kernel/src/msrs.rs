//! MSR policy: the lists `KVM_GET_MSR_INDEX_LIST` / `KVM_GET_MSR_FEATURE_INDEX_LIST` report, the
//! feature MSR values, and a store for MSRs that live in memory (used by the soft backend and by
//! hardware backends for MSRs the VMCS/VMCB does not hold).

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

/// What `KVM_GET_MSR_INDEX_LIST` reports: MSRs saved/restored through `KVM_GET/SET_MSRS`.
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
    matches!(index, 0x200..=0x20f | 0x250 | 0x258 | 0x259 | 0x268..=0x26f | MSR_MTRR_DEF_TYPE)
}

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

/// Whether the CPU has `TSC_AUX`, which RDTSCP and RDPID read without any intercept (CPUID
/// 8000_0001h EDX.RDTSCP[27] or 7.0 ECX.RDPID[22]): a backend must then load the guest's
/// value around every entry, or the guest reads the host's (Linux: its CPU number).
pub fn host_has_tsc_aux(cpuid: fn(u32, u32) -> crate::backend::CpuidResult) -> bool {
    let ext = cpuid(0x8000_0000, 0).eax >= 0x8000_0001
        && cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
    let basic = cpuid(0, 0).eax >= 7 && cpuid(7, 0).ecx & (1 << 22) != 0;
    ext || basic
}
