//! CPUID policy: what `KVM_GET_SUPPORTED_CPUID` reports (host CPUID filtered to what okvm
//! virtualizes) and how a guest `CPUID` is answered from the table set by `KVM_SET_CPUID2`.

use kvm_abi::kvm_cpuid_entry2;

use crate::backend::{Backend, CpuidResult};

/// Largest CPUID table (Linux `KVM_MAX_CPUID_ENTRIES`).
pub const KVM_MAX_CPUID_ENTRIES: usize = 256;
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (sic, Linux's spelling).
pub const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// Leaf 1 EDX bits okvm virtualizes: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA
/// CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2 (MCE/MCA: the core's machine-check banks, `msrs::Mce`;
/// no DS/ACPI/TM/PBE).
const L1_EDX: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 1 ECX bits: SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES XSAVE AVX F16C
/// RDRAND (no VMX/SMX, no TSC deadline, no PCID); x2APIC is added: see [`L1_ECX_X2APIC`].
/// x2APIC, emulated by the in-kernel local APIC whatever the host has (as Linux reports it;
/// QEMU removes it from guests that have no in-kernel irqchip).
pub const L1_ECX_X2APIC: u32 = 1 << 21;
/// TSC-deadline timer, emulated by the in-kernel local APIC. Not in the supported CPUID (as in
/// Linux): QEMU adds it itself when it has an in-kernel irqchip and
/// `KVM_CAP_TSC_DEADLINE_TIMER`.
pub const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const L1_ECX: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 9)
    | (1 << 12)
    | (1 << 13)
    | (1 << 19)
    | (1 << 20)
    | (1 << 22)
    | (1 << 23)
    | (1 << 25)
    | (1 << 26)
    | (1 << 28)
    | (1 << 29)
    | (1 << 30);
/// Leaf 7.0 EBX: FSGSBASE BMI1 AVX2 SMEP BMI2 ERMS RDSEED ADX SMAP CLFLUSHOPT SHA.
const L7_EBX: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 5)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 23)
    | (1 << 29);
/// Leaf 8000_0001h ECX: LAHF ABM SSE4A MISALIGNSSE PREFETCHW.
const E1_ECX: u32 = (1 << 0) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8);
/// Leaf 8000_0001h EDX: SYSCALL NX MMXEXT FXSR_OPT RDTSCP LM (and the leaf-1 aliases AMD repeats).
const E1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 22) | (1 << 25) | (1 << 27) | (1 << 29);
/// Leaf 1 ECX: XSAVE (cleared in the host leaf when the host runs without XSAVE).
pub const L1_ECX_XSAVE: u32 = 1 << 26;
/// XCR0 components okvm context-switches: x87, SSE, AVX.
pub const SUPPORTED_XCR0: u64 = 0x7;

fn entry(function: u32, index: u32, flags: u32, r: CpuidResult) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
        ..zerocopy::FromZeros::new_zeroed()
    }
}

/// Limits one host CPUID leaf to the XSAVE state components the host has enabled in XCR0
/// (`host_xcr0`; 0 when the host does not use XSAVE). The guest's XCR0 is loaded with XSETBV in
/// host context, so it can only name components the host enabled: without host XSAVE there is no
/// XSAVE at all, without host AVX state no AVX (Linux: `supported_xcr0 = host_xcr0 & ...`).
pub fn limit_to_host_xcr0(leaf: u32, subleaf: u32, mut r: CpuidResult, host_xcr0: u64) -> CpuidResult {
    const L1_ECX_OSXSAVE: u32 = 1 << 27;
    const L1_ECX_AVX_FAMILY: u32 = (1 << 12) | (1 << 28) | (1 << 29); // FMA, AVX, F16C
    const L7_EBX_AVX2: u32 = 1 << 5;
    const XCR0_AVX: u64 = 1 << 2;
    match (leaf, subleaf) {
        (1, _) => {
            if host_xcr0 == 0 {
                r.ecx &= !(L1_ECX_XSAVE | L1_ECX_OSXSAVE);
            }
            if host_xcr0 & XCR0_AVX == 0 {
                r.ecx &= !L1_ECX_AVX_FAMILY;
            }
        }
        (7, 0) if host_xcr0 & XCR0_AVX == 0 => r.ebx &= !L7_EBX_AVX2,
        (0xd, 0) => {
            r.eax &= host_xcr0 as u32;
            r.edx &= (host_xcr0 >> 32) as u32;
        }
        _ => {}
    }
    r
}

/// Builds the supported table into `out`; returns the number of entries.
pub fn supported<B: Backend>(b: &B, out: &mut [kvm_cpuid_entry2; 32]) -> usize {
    let mut n = 0usize;
    let mut push = |e: kvm_cpuid_entry2| {
        if let Some(slot) = out.get_mut(n) {
            *slot = e;
            n += 1;
        }
    };
    let l0 = b.host_cpuid(0, 0);
    let max_basic = l0.eax.min(0xd);
    push(entry(
        0,
        0,
        0,
        CpuidResult {
            eax: max_basic,
            ..l0
        },
    ));
    let l1 = b.host_cpuid(1, 0);
    push(entry(
        1,
        0,
        0,
        CpuidResult {
            eax: l1.eax,
            ebx: l1.ebx & 0x00ff_ffff, // initial APIC ID is the vCPU's, set by userspace
            ecx: (l1.ecx & L1_ECX) | L1_ECX_X2APIC,
            edx: l1.edx & L1_EDX,
        },
    ));
    if max_basic >= 7 {
        let l7 = b.host_cpuid(7, 0);
        push(entry(
            7,
            0,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            CpuidResult {
                eax: 0,
                ebx: l7.ebx & L7_EBX,
                ecx: 0,
                edx: 0,
            },
        ));
    }
    if max_basic >= 0xd && l1.ecx & L1_ECX_XSAVE != 0 {
        let d0 = b.host_cpuid(0xd, 0);
        let xcr0 = u64::from(d0.eax) & SUPPORTED_XCR0;
        let size = if xcr0 & 4 != 0 { 832 } else { 576 };
        push(entry(
            0xd,
            0,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            CpuidResult {
                eax: xcr0 as u32,
                ebx: size,
                ecx: size,
                edx: 0,
            },
        ));
        let d1 = b.host_cpuid(0xd, 1);
        push(entry(
            0xd,
            1,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            CpuidResult {
                eax: d1.eax & 1,
                ..Default::default()
            },
        ));
        if xcr0 & 4 != 0 {
            let d2 = b.host_cpuid(0xd, 2);
            push(entry(
                0xd,
                2,
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                CpuidResult {
                    ecx: 0,
                    edx: 0,
                    ..d2
                },
            ));
        }
    }
    let e0 = b.host_cpuid(0x8000_0000, 0);
    let max_ext = e0.eax.min(0x8000_0008);
    if max_ext >= 0x8000_0000 {
        push(entry(0x8000_0000, 0, 0, CpuidResult { eax: max_ext, ..e0 }));
        if max_ext >= 0x8000_0001 {
            let e1 = b.host_cpuid(0x8000_0001, 0);
            push(entry(
                0x8000_0001,
                0,
                0,
                CpuidResult {
                    eax: e1.eax,
                    ebx: 0,
                    ecx: e1.ecx & E1_ECX,
                    edx: e1.edx & (E1_EDX | (L1_EDX & 0x0183_f3ff)),
                },
            ));
        }
        for leaf in 0x8000_0002..=max_ext.min(0x8000_0006) {
            push(entry(leaf, 0, 0, b.host_cpuid(leaf, 0)));
        }
        if max_ext >= 0x8000_0008 {
            let e8 = b.host_cpuid(0x8000_0008, 0);
            push(entry(
                0x8000_0008,
                0,
                0,
                CpuidResult {
                    eax: e8.eax & 0xffff,
                    ..Default::default()
                },
            ));
        }
    }
    n
}

/// Validates a `KVM_SET_CPUID2` table as Linux's `kvm_check_cpuid` does: the guest's virtual
/// address width (8000_0008h EAX[15:8]) must be 0, 48 or 57.
pub fn check(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .filter(|e| e.function == 0x8000_0008)
        .all(|e| {
            let vbits = (e.eax >> 8) & 0xff;
            vbits == 0 || vbits == 48 || vbits == 57
        })
}

/// Answers a guest `CPUID` from its table: the entry with this function (and index, when the
/// entry's index is significant), else zeros.
pub fn lookup(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> CpuidResult {
    entries
        .iter()
        .find(|e| {
            e.function == leaf
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
        })
        .map_or(CpuidResult::default(), |e| CpuidResult {
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
}

#[cfg(test)]
mod xcr0_tests {
    use super::*;

    fn all_ones() -> CpuidResult {
        CpuidResult { eax: !0, ebx: !0, ecx: !0, edx: !0 }
    }

    #[test]
    fn guest_xsave_features_follow_the_host_xcr0() {
        // Host without XSAVE: no XSAVE/OSXSAVE, no AVX family, leaf 0xD empty.
        let r = limit_to_host_xcr0(1, 0, all_ones(), 0);
        assert_eq!(r.ecx & ((1 << 26) | (1 << 27) | (1 << 28) | (1 << 12) | (1 << 29)), 0);
        assert_eq!(limit_to_host_xcr0(0xd, 0, all_ones(), 0).eax, 0);
        // Host x87+SSE only: XSAVE stays, AVX and AVX2 go, leaf 0xD names x87|SSE.
        let r = limit_to_host_xcr0(1, 0, all_ones(), 0x3);
        assert_eq!(r.ecx & (1 << 26), 1 << 26);
        assert_eq!(r.ecx & (1 << 28), 0);
        assert_eq!(limit_to_host_xcr0(7, 0, all_ones(), 0x3).ebx & (1 << 5), 0);
        assert_eq!(limit_to_host_xcr0(0xd, 0, all_ones(), 0x3).eax, 0x3);
        // Host with AVX: everything the hardware reports stays; other leaves are untouched.
        assert_eq!(limit_to_host_xcr0(1, 0, all_ones(), 0x7), all_ones());
        assert_eq!(limit_to_host_xcr0(7, 0, all_ones(), 0x7), all_ones());
        assert_eq!(limit_to_host_xcr0(0x8000_0001, 0, all_ones(), 0), all_ones());
    }
}
