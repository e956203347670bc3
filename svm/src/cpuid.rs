//! SVM feature detection from CPUID leaves 8000_0001h and 8000_000Ah (AMD APM vol. 3, appendix E,
//! "Obtaining Processor Information Via the CPUID Instruction"; vol. 2 §15.4 "Enabling SVM").
//!
//! Everything here is a pure function of CPUID values read through [`CpuidSource`], so tests feed
//! recorded values.

use bitflags::bitflags;

/// Where CPUID values come from: the `cpuid` instruction in the kernel, recordings in tests.
pub trait CpuidSource {
    /// Executes CPUID with `eax = leaf`, `ecx = subleaf`; returns `[eax, ebx, ecx, edx]`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// CPUID leaf of the largest extended function and the vendor string.
pub const LEAF_EXT_MAX: u32 = 0x8000_0000;
/// CPUID leaf of the extended feature flags (ECX bit 2 is SVM).
pub const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// CPUID leaf of the SVM revision, ASID count and SVM feature flags.
pub const LEAF_SVM: u32 = 0x8000_000A;
/// 8000_0001h ECX bit 2: Secure Virtual Machine.
pub const EXT_ECX_SVM: u32 = 1 << 2;

bitflags! {
    /// CPUID 8000_000Ah EDX: optional SVM features (APM vol. 3, CPUID Fn8000_000A_EDX).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SvmFeatures: u32 {
        /// Nested paging (NPT).
        const NP = 1 << 0;
        /// LBR virtualization.
        const LBR_VIRT = 1 << 1;
        /// SVM lock (VM_CR.LOCK / SVM_KEY).
        const SVML = 1 << 2;
        /// Next-RIP save on #VMEXIT (the VMCB nRIP field).
        const NRIPS = 1 << 3;
        /// MSR-based TSC rate control.
        const TSC_RATE_MSR = 1 << 4;
        /// VMCB clean bits.
        const VMCB_CLEAN = 1 << 5;
        /// TLB_CONTROL values 3 and 7 (flush by ASID).
        const FLUSH_BY_ASID = 1 << 6;
        /// Decode assists (CR/DR/INTn/INVLPG operand decode, guest instruction bytes).
        const DECODE_ASSISTS = 1 << 7;
        /// PMC virtualization.
        const PMC_VIRT = 1 << 8;
        /// PAUSE intercept filter (count).
        const PAUSE_FILTER = 1 << 10;
        /// PAUSE filter cycle-count threshold.
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        /// Advanced virtual interrupt controller.
        const AVIC = 1 << 13;
        /// VMSAVE and VMLOAD virtualization.
        const V_VMSAVE_VMLOAD = 1 << 15;
        /// Virtual global interrupt flag.
        const VGIF = 1 << 16;
        /// Guest mode execute trap.
        const GMET = 1 << 17;
        /// x2APIC mode of the AVIC.
        const X2AVIC = 1 << 18;
        /// Supervisor shadow-stack restrictions check.
        const SSS_CHECK = 1 << 19;
        /// SPEC_CTRL virtualization.
        const SPEC_CTRL = 1 << 20;
        /// Read-only guest page table support.
        const ROGPT = 1 << 21;
        /// Host MCE override.
        const HOST_MCE_OVERRIDE = 1 << 23;
        /// INVLPGB/TLBSYNC hypervisor enable.
        const TLBI_CTL = 1 << 24;
        /// Virtual NMI.
        const VNMI = 1 << 25;
        /// IBS virtualization.
        const IBS_VIRT = 1 << 26;
        /// Extended LVT AVIC access changes.
        const EXT_LVT_AVIC_ACCESS_CHG = 1 << 27;
        /// Nested-virtualization VMCB address check.
        const NESTED_VIRT_VMCB_ADDR_CHK = 1 << 28;
        /// Bus-lock threshold.
        const BUS_LOCK_THRESHOLD = 1 << 29;
        // Bits this crate does not name are kept (see `from_bits_retain` in `detect`).
        const _ = !0;
    }
}

/// What the SVM backend knows about the processor it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmCaps {
    /// SVM revision number (8000_000Ah EAX bits 7:0).
    pub revision: u8,
    /// Number of address space identifiers (8000_000Ah EBX). ASID 0 is the host's, so guests
    /// get `1..nasid`.
    pub nasid: u32,
    /// Optional features (8000_000Ah EDX).
    pub features: SvmFeatures,
}

/// Why the SVM backend cannot run on this processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    /// CPUID has no leaf 8000_000Ah (largest extended leaf given).
    NoSvmLeaf(u32),
    /// 8000_0001h ECX.SVM is clear: the processor (or hypervisor below us) has no SVM.
    NoSvm,
    /// Fewer than two ASIDs: no ASID is left for a guest.
    NoAsid,
    /// No nested paging, and shadow paging is not implemented in this backend yet.
    NoNestedPaging,
}

impl DetectError {
    /// A one-line explanation for the kernel log.
    pub const fn message(self) -> &'static str {
        match self {
            DetectError::NoSvmLeaf(_) => "svm: CPUID leaf 8000_000Ah not implemented",
            DetectError::NoSvm => "svm: CPUID 8000_0001h ECX.SVM clear, no AMD-V",
            DetectError::NoAsid => "svm: CPUID 8000_000Ah reports fewer than 2 ASIDs",
            DetectError::NoNestedPaging => {
                "svm: no nested paging (NPT); shadow paging is not supported yet"
            }
        }
    }
}

/// Reads the SVM capabilities, without judging whether they are enough (see [`check_usable`]).
pub fn detect(src: &impl CpuidSource) -> Result<SvmCaps, DetectError> {
    let [max_ext, ..] = src.cpuid(LEAF_EXT_MAX, 0);
    if max_ext < LEAF_SVM {
        return Err(DetectError::NoSvmLeaf(max_ext));
    }
    let [_, _, ecx, _] = src.cpuid(LEAF_EXT_FEATURES, 0);
    if ecx & EXT_ECX_SVM == 0 {
        return Err(DetectError::NoSvm);
    }
    let [eax, ebx, _, edx] = src.cpuid(LEAF_SVM, 0);
    Ok(SvmCaps {
        revision: (eax & 0xff) as u8,
        nasid: ebx,
        features: SvmFeatures::from_bits_retain(edx),
    })
}

/// Decides whether this backend can run guests with `caps`; refuses cleanly otherwise.
///
/// Nested paging is required until the shadow-paging path (shadowpt/) is wired to SVM.
pub fn check_usable(caps: &SvmCaps) -> Result<(), DetectError> {
    if caps.nasid < 2 {
        return Err(DetectError::NoAsid);
    }
    if !caps.features.contains(SvmFeatures::NP) {
        return Err(DetectError::NoNestedPaging);
    }
    Ok(())
}

/// [`detect`] followed by [`check_usable`].
pub fn detect_usable(src: &impl CpuidSource) -> Result<SvmCaps, DetectError> {
    let caps = detect(src)?;
    check_usable(&caps)?;
    Ok(caps)
}

impl SvmCaps {
    /// Whether `#VMEXIT` stores the next sequential RIP in the VMCB nRIP field.
    pub fn has_nrips(&self) -> bool {
        self.features.contains(SvmFeatures::NRIPS)
    }

    /// Whether the processor honours the VMCB clean bits; without it they must be written as 0.
    pub fn has_vmcb_clean(&self) -> bool {
        self.features.contains(SvmFeatures::VMCB_CLEAN)
    }

    /// Whether TLB_CONTROL may ask for a flush of one ASID (3, 7) rather than of all (1).
    pub fn has_flush_by_asid(&self) -> bool {
        self.features.contains(SvmFeatures::FLUSH_BY_ASID)
    }

    /// Whether decode assists fill EXITINFO1 for CR/DR/INVLPG exits and the instruction bytes.
    pub fn has_decode_assists(&self) -> bool {
        self.features.contains(SvmFeatures::DECODE_ASSISTS)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// CPUID values recorded as a map from leaf to registers.
    pub struct Recorded(pub HashMap<u32, [u32; 4]>);

    impl CpuidSource for Recorded {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
            // Out-of-range leaves behave as on AMD: all zero.
            self.0.get(&leaf).copied().unwrap_or([0; 4])
        }
    }

    /// QEMU TCG `-cpu EPYC` (target/i386/cpu.c): the EPYC model asks for NPT and NRIPSAVE, TCG
    /// only implements NPT (TCG_SVM_FEATURES), revision 1 and 16 ASIDs are hard-coded.
    pub fn qemu_tcg_epyc() -> Recorded {
        Recorded(HashMap::from([
            (
                LEAF_EXT_MAX,
                [0x8000_001f, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            ),
            (
                LEAF_EXT_FEATURES,
                [0x0080_0f12, 0, 0x0000_07f7 | EXT_ECX_SVM, 0x2fd3_fbff],
            ),
            (LEAF_SVM, [1, 0x10, 0, SvmFeatures::NP.bits()]),
        ]))
    }

    /// A Zen-2-class EPYC: 32768 ASIDs and EDX 0x0013_BCFF (NP, LBRV, SVML, NRIPS, TSC rate,
    /// VMCB clean, flush by ASID, decode assists, pause filter + threshold, AVIC, virtual
    /// VMSAVE/VMLOAD, vGIF, GMET, SPEC_CTRL, and bit 11, reserved in the APM, kept as is).
    pub fn epyc_zen2() -> Recorded {
        Recorded(HashMap::from([
            (
                LEAF_EXT_MAX,
                [0x8000_0020, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            ),
            (
                LEAF_EXT_FEATURES,
                [0x0083_0f10, 0x4000_0000, 0x75c2_37ff, 0x2fd3_fbff],
            ),
            (LEAF_SVM, [1, 0x8000, 0, 0x0013_bcff]),
        ]))
    }

    #[test]
    fn qemu_tcg_epyc_is_npt_only() {
        let caps = detect_usable(&qemu_tcg_epyc()).expect("usable");
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.nasid, 16);
        assert_eq!(caps.features, SvmFeatures::NP);
        assert!(!caps.has_nrips());
        assert!(!caps.has_decode_assists());
        assert!(!caps.has_vmcb_clean());
        assert!(!caps.has_flush_by_asid());
    }

    #[test]
    fn real_epyc_has_everything_decoded() {
        let caps = detect_usable(&epyc_zen2()).expect("usable");
        assert_eq!(caps.nasid, 32768);
        for f in [
            SvmFeatures::NP,
            SvmFeatures::LBR_VIRT,
            SvmFeatures::SVML,
            SvmFeatures::NRIPS,
            SvmFeatures::TSC_RATE_MSR,
            SvmFeatures::VMCB_CLEAN,
            SvmFeatures::FLUSH_BY_ASID,
            SvmFeatures::DECODE_ASSISTS,
            SvmFeatures::PAUSE_FILTER,
            SvmFeatures::PAUSE_FILTER_THRESHOLD,
            SvmFeatures::AVIC,
            SvmFeatures::V_VMSAVE_VMLOAD,
            SvmFeatures::VGIF,
            SvmFeatures::GMET,
            SvmFeatures::SPEC_CTRL,
        ] {
            assert!(caps.features.contains(f), "{f:?}");
        }
        assert!(!caps.features.contains(SvmFeatures::VNMI));
        assert!(!caps.features.contains(SvmFeatures::X2AVIC));
        // Unnamed bits survive.
        assert_eq!(caps.features.bits(), 0x0013_bcff);
    }

    #[test]
    fn no_npt_is_refused_with_a_clear_error() {
        // QEMU TCG `-cpu qemu64,+svm`: SVM without any optional feature.
        let mut r = qemu_tcg_epyc();
        r.0.insert(LEAF_SVM, [1, 0x10, 0, 0]);
        assert_eq!(detect(&r).map(|c| c.features), Ok(SvmFeatures::empty()));
        assert_eq!(detect_usable(&r), Err(DetectError::NoNestedPaging));
        assert!(DetectError::NoNestedPaging
            .message()
            .contains("shadow paging"));
    }

    #[test]
    fn no_svm_bit_or_leaf() {
        let mut r = qemu_tcg_epyc();
        r.0.insert(LEAF_EXT_FEATURES, [0, 0, 0x0000_07f7 & !EXT_ECX_SVM, 0]);
        assert_eq!(detect(&r), Err(DetectError::NoSvm));
        let mut r = qemu_tcg_epyc();
        r.0.insert(LEAF_EXT_MAX, [0x8000_0008, 0, 0, 0]);
        assert_eq!(detect(&r), Err(DetectError::NoSvmLeaf(0x8000_0008)));
        // An Intel CPU: extended leaves stop at 8000_0008h.
        assert_eq!(
            detect(&Recorded(HashMap::new())),
            Err(DetectError::NoSvmLeaf(0))
        );
    }

    #[test]
    fn too_few_asids() {
        let mut r = epyc_zen2();
        r.0.insert(LEAF_SVM, [1, 1, 0, 0x0013_bcff]);
        assert_eq!(detect_usable(&r), Err(DetectError::NoAsid));
    }
}
