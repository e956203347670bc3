//! x86-64 (4-level, long mode) paging-structure entry bits, as used by AMD nested paging and by
//! ordinary/shadow page tables.
//!
//! Sources: AMD APM Vol. 2, section "Long-Mode Page Translation" (figures "4-Kbyte PML4E—Long Mode"
//! through "4-Kbyte PTE—Long Mode", "2-Mbyte PDE—Long Mode", "1-Gbyte PDPE—Long Mode"), section
//! "Page-Attribute Table Mechanism" ("PAT Indexing"), and section "Nested Paging" in chapter "Secure
//! Virtual Machine": nested page tables have exactly this format, every nested walk is a user-mode
//! access (so U/S must be set at every level), and the format follows the *host's* CR4 and EFER
//! (bit 63 is NX only when the host's EFER.NXE is set, otherwise it is reserved). Intel SDM Vol. 3A,
//! chapter "Paging", section "4-Level Paging and 5-Level Paging" gives the same layout.

/// Bit 0: present.
pub const PRESENT: u64 = 1 << 0;
/// Bit 1: read/write (writes allowed when set).
pub const WRITABLE: u64 = 1 << 1;
/// Bit 2: user/supervisor (user accesses allowed when set).
pub const USER: u64 = 1 << 2;
/// Bit 3: page-level write-through (PAT index bit 0).
pub const PWT: u64 = 1 << 3;
/// Bit 4: page-level cache disable (PAT index bit 1).
pub const PCD: u64 = 1 << 4;
/// Bit 5: accessed, set by the processor.
pub const ACCESSED: u64 = 1 << 5;
/// Bit 6 of a leaf: dirty, set by the processor on writes.
pub const DIRTY: u64 = 1 << 6;
/// Bit 7 of a PDPE/PDE: page size (maps a 1 GiB / 2 MiB page). Reserved in a PML4E.
pub const PAGE_SIZE: u64 = 1 << 7;
/// Bit 7 of a PTE: PAT index bit 2 for a 4 KiB page.
pub const PAT_4K: u64 = 1 << 7;
/// Bit 8 of a leaf: global.
pub const GLOBAL: u64 = 1 << 8;
/// Bit 12 of a 2 MiB / 1 GiB leaf: PAT index bit 2 for a large page.
pub const PAT_LARGE: u64 = 1 << 12;
/// Bit 63: no-execute (only when EFER.NXE is set; reserved otherwise).
pub const NO_EXEC: u64 = 1 << 63;
/// Physical-address field of an entry (bits 51:12; bits above MAXPHYADDR are reserved).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// PAT memory-type encoding of UC- ("uncached minus"); the other encodings equal the EPT ones.
pub const PAT_UC_MINUS: u8 = 7;

/// Entry bits selecting PAT entry `index` (0..=7) for a leaf: PWT is index bit 0, PCD bit 1, and
/// the PAT bit (bit 7 of a PTE, bit 12 of a large leaf) bit 2.
pub fn pat_bits(index: u8, large: bool) -> u64 {
    let pat = if large { PAT_LARGE } else { PAT_4K };
    let mut bits = 0;
    if index & 1 != 0 {
        bits |= PWT;
    }
    if index & 2 != 0 {
        bits |= PCD;
    }
    if index & 4 != 0 {
        bits |= pat;
    }
    bits
}

/// The PAT index (0..=7) a leaf entry selects; inverse of [`pat_bits`].
pub fn pat_index(entry: u64, large: bool) -> u8 {
    let pat = if large { PAT_LARGE } else { PAT_4K };
    u8::from(entry & PWT != 0) | (u8::from(entry & PCD != 0) << 1) | (u8::from(entry & pat != 0) << 2)
}

/// The memory type (bits 2:0 of byte `index`) that the IA32_PAT MSR value `pat_msr` holds for
/// PAT entry `index` (taken modulo 8).
pub fn pat_entry_type(pat_msr: u64, index: u8) -> u8 {
    ((pat_msr >> (u32::from(index & 7) * 8)) & 7) as u8
}
