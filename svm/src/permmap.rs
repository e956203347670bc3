//! MSR and I/O permission maps (AMD APM vol. 2 §15.11 "MSR Intercepts", the table "MSR
//! Ranges of the MSRPM"; §15.10.1 "I/O Permissions Map"), built over caller-provided memory.
//!
//! A set bit means "intercept". The maps are physically contiguous pages the host allocates;
//! these functions only compute bits.

/// Size of the MSR permission map: 8 KiB (two 4 KiB pages).
pub const MSRPM_SIZE: usize = 8192;
/// Size of the I/O permission map: 12 KiB (three 4 KiB pages; the third covers accesses of
/// up to 4 bytes that start at the highest ports).
pub const IOPM_SIZE: usize = 12288;

/// The three MSR ranges the MSRPM covers: (first MSR, byte offset of its bit pair 0).
/// Each range covers 8192 MSRs with 2 bits each, i.e. 2 KiB. 1800h–1FFFh is reserved.
const MSRPM_RANGES: [(u32, usize); 3] = [
    (0x0000_0000, 0x0000),
    (0xc000_0000, 0x0800),
    (0xc001_0000, 0x1000),
];
const MSRS_PER_RANGE: u32 = 0x2000;

/// Bit index of `msr`'s read-intercept bit in the MSRPM, or `None` when the MSR lies outside
/// the three ranges (such MSRs are always intercepted by the processor).
pub fn msrpm_bit(msr: u32) -> Option<usize> {
    MSRPM_RANGES.iter().find_map(|&(base, off)| {
        let i = msr.checked_sub(base)?;
        (i < MSRS_PER_RANGE).then(|| off * 8 + i as usize * 2)
    })
}

/// Error for an MSR the MSRPM cannot pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrOutOfRange(pub u32);

/// Sets every bit: every RDMSR/WRMSR exits. The starting point of every map.
pub fn msrpm_intercept_all(map: &mut [u8; MSRPM_SIZE]) {
    map.fill(0xff);
}

/// Chooses whether reads and writes of `msr` exit.
pub fn msrpm_set(
    map: &mut [u8; MSRPM_SIZE],
    msr: u32,
    intercept_read: bool,
    intercept_write: bool,
) -> Result<(), MsrOutOfRange> {
    let bit = msrpm_bit(msr).ok_or(MsrOutOfRange(msr))?;
    // The pair is 2-bit aligned, so both bits are in the same byte.
    let byte = map.get_mut(bit / 8).ok_or(MsrOutOfRange(msr))?;
    let shift = bit % 8;
    *byte &= !(3 << shift);
    *byte |= (intercept_read as u8 | (intercept_write as u8) << 1) << shift;
    Ok(())
}

/// What the processor does for `msr` with this map: (read exits, write exits).
pub fn msrpm_get(map: &[u8; MSRPM_SIZE], msr: u32) -> (bool, bool) {
    match msrpm_bit(msr).and_then(|bit| Some((map.get(bit / 8)? >> (bit % 8)) & 3)) {
        Some(pair) => (pair & 1 != 0, pair & 2 != 0),
        None => (true, true),
    }
}

/// MSRs whose guest values the VMCB holds and VMRUN/VMLOAD/VMSAVE switch, so the guest may
/// read and write them directly: FS.base, GS.base, KernelGSbase, STAR, LSTAR, CSTAR, SFMASK,
/// SYSENTER_CS/ESP/EIP. Everything else (EFER above all: SVME must stay set) exits.
pub const PASSTHROUGH_MSRS: [u32; 10] = [
    0xc000_0100, // FS.base
    0xc000_0101, // GS.base
    0xc000_0102, // KernelGSbase
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0x0000_0174, // SYSENTER_CS
    0x0000_0175, // SYSENTER_ESP
    0x0000_0176, // SYSENTER_EIP
];

/// Builds the MSRPM a KVM guest runs with: everything intercepted but [`PASSTHROUGH_MSRS`].
pub fn msrpm_build_kvm(map: &mut [u8; MSRPM_SIZE]) {
    msrpm_intercept_all(map);
    for msr in PASSTHROUGH_MSRS {
        // In range by construction (the test checks it); ignore the impossible error.
        let _ = msrpm_set(map, msr, false, false);
    }
}

/// Sets every bit: every IN/OUT/INS/OUTS exits (what KVM does).
pub fn iopm_intercept_all(map: &mut [u8; IOPM_SIZE]) {
    map.fill(0xff);
}

/// Chooses whether accesses to `port` exit.
pub fn iopm_set(map: &mut [u8; IOPM_SIZE], port: u16, intercept: bool) {
    let p = usize::from(port);
    if let Some(b) = map.get_mut(p / 8) {
        let m = 1u8 << (p % 8);
        if intercept {
            *b |= m;
        } else {
            *b &= !m;
        }
    }
}

/// Whether an access of `size` bytes (1, 2 or 4) at `port` exits: the processor checks the
/// bits of every port the access touches, including bits past port FFFFh (in the third page).
pub fn iopm_intercepts(map: &[u8; IOPM_SIZE], port: u16, size: u8) -> bool {
    (0..usize::from(size)).any(|i| {
        let bit = usize::from(port) + i;
        map.get(bit / 8).is_none_or(|b| b >> (bit % 8) & 1 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrpm_ranges_and_bits() {
        assert_eq!(msrpm_bit(0), Some(0));
        assert_eq!(msrpm_bit(0x1fff), Some(0x7ff * 8 + 6));
        assert_eq!(msrpm_bit(0x2000), None);
        assert_eq!(msrpm_bit(0xc000_0000), Some(0x800 * 8));
        // EFER: C000_0080h -> byte 0x800 + 0x80 / 4 = 0x820, bits 1:0.
        assert_eq!(msrpm_bit(0xc000_0080), Some(0x820 * 8));
        assert_eq!(msrpm_bit(0xc001_0000), Some(0x1000 * 8));
        assert_eq!(msrpm_bit(0xc001_1fff), Some(0x17ff * 8 + 6));
        assert_eq!(msrpm_bit(0xc001_2000), None);
        assert_eq!(msrpm_bit(0x4000_0000), None);
    }

    #[test]
    fn msrpm_set_get() {
        let mut m = Box::new([0u8; MSRPM_SIZE]);
        msrpm_intercept_all(&mut m);
        // SYSENTER_ESP 0x175: bit 0x2ea, byte 0x5d, bits 3:2.
        msrpm_set(&mut m, 0x175, false, true).unwrap();
        assert_eq!(m[0x5d], 0b1111_1011);
        assert_eq!(msrpm_get(&m, 0x175), (false, true));
        assert_eq!(msrpm_get(&m, 0x174), (true, true));
        msrpm_set(&mut m, 0x175, true, false).unwrap();
        assert_eq!(m[0x5d], 0b1111_0111);
        assert_eq!(
            msrpm_set(&mut m, 0x4000_0000, false, false),
            Err(MsrOutOfRange(0x4000_0000))
        );
        assert_eq!(msrpm_get(&m, 0x4000_0000), (true, true));
    }

    #[test]
    fn msrpm_kvm_passes_only_vmcb_switched_msrs() {
        let mut m = Box::new([0u8; MSRPM_SIZE]);
        msrpm_build_kvm(&mut m);
        for msr in PASSTHROUGH_MSRS {
            assert_eq!(msrpm_get(&m, msr), (false, false), "{msr:#x}");
        }
        // EFER, PAT, TSC, APIC base, TSC_AUX stay intercepted.
        for msr in [0xc000_0080, 0x277, 0x10, 0x1b, 0xc000_0103] {
            assert_eq!(msrpm_get(&m, msr), (true, true), "{msr:#x}");
        }
        let clear_bits: u32 = m.iter().map(|b| b.count_zeros()).sum();
        assert_eq!(clear_bits, 2 * PASSTHROUGH_MSRS.len() as u32);
    }

    #[test]
    fn iopm_multi_byte_accesses_check_every_port() {
        let mut m = Box::new([0u8; IOPM_SIZE]);
        iopm_intercept_all(&mut m);
        iopm_set(&mut m, 0x80, false);
        assert!(!iopm_intercepts(&m, 0x80, 1));
        // A word access at 0x80 also touches 0x81, which exits.
        assert!(iopm_intercepts(&m, 0x80, 2));
        iopm_set(&mut m, 0x81, false);
        assert!(!iopm_intercepts(&m, 0x80, 2));
        assert_eq!(m[0x10], 0b1111_1100);
        // The last port: bits past FFFFh live in the third page and are set.
        iopm_set(&mut m, 0xffff, false);
        assert!(!iopm_intercepts(&m, 0xffff, 1));
        assert!(iopm_intercepts(&m, 0xffff, 4));
        assert_eq!(m[0x1fff], 0x7f);
        iopm_set(&mut m, 0xcf8, true);
        assert!(iopm_intercepts(&m, 0xcf8, 4));
    }
}
