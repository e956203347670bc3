//! Intel EPT paging-structure entry bits and the EPT pointer.
//!
//! Source: Intel SDM Vol. 3C, chapter "VMX Support for Address Translation", section "EPT Translation
//! Mechanism" (tables "Format of an EPT PML4 Entry", "... EPT Page-Directory-Pointer-Table Entry that
//! Maps a 1-GByte Page", "... EPT Page-Directory Entry that Maps a 2-MByte Page", "... EPT Page-Table
//! Entry that Maps a 4-KByte Page"), and section "Extended-Page-Table Pointer (EPTP)" in chapter
//! "VM-Execution Control Fields".
//!
//! An EPT entry is *present* when any of bits 2:0 is set (bit 10 also counts when mode-based execute
//! control is on; this crate never sets bit 10). Writable-but-not-readable entries are EPT
//! misconfigurations; this crate always sets R in a present entry.

/// Bit 0: read access allowed.
pub const READ: u64 = 1 << 0;
/// Bit 1: write access allowed.
pub const WRITE: u64 = 1 << 1;
/// Bit 2: execute access allowed (supervisor-mode execute when mode-based execute control is on).
pub const EXEC: u64 = 1 << 2;
/// Bits 2:0 together: an entry that references a lower table grants all three; the leaf decides.
pub const RWX: u64 = READ | WRITE | EXEC;
/// Leaf bits 5:3 hold the EPT memory type (0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 are reserved).
pub const MEMTYPE_SHIFT: u32 = 3;
/// Mask of the leaf memory-type field (bits 5:3).
pub const MEMTYPE_MASK: u64 = 7 << MEMTYPE_SHIFT;
/// Leaf bit 6: ignore the guest PAT memory type (the EPT memory type alone applies).
pub const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDPTE/PDE: the entry maps a 1 GiB / 2 MiB page (0: references a table).
/// Reserved in a PML4E; ignored in a PTE.
pub const LARGE_PAGE: u64 = 1 << 7;
/// Bit 8: accessed flag, set by the processor when EPTP bit 6 enables accessed/dirty flags.
pub const ACCESSED: u64 = 1 << 8;
/// Bit 9 of a leaf: dirty flag, set by the processor on writes when accessed/dirty flags are enabled.
pub const DIRTY: u64 = 1 << 9;
/// Bit 10: user-mode execute access (only with mode-based execute control; unused here).
pub const USER_EXEC: u64 = 1 << 10;
/// Bit 63 of a leaf: suppress #VE (unused here).
pub const SUPPRESS_VE: u64 = 1 << 63;
/// Physical-address field of an entry (bits 51:12; bits above MAXPHYADDR must be zero).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// EPTP bits 2:0: memory type the processor uses to access the EPT paging structures.
pub const EPTP_MEMTYPE_MASK: u64 = 7;
/// EPTP bits 5:3 hold the EPT page-walk length minus one.
pub const EPTP_WALK_LENGTH_SHIFT: u32 = 3;
/// EPTP bit 6: enable accessed and dirty flags for EPT.
pub const EPTP_AD_ENABLE: u64 = 1 << 6;

/// Builds an EPTP for a 4-level EPT whose PML4 table is at `pml4_pa`, walked with memory type
/// write-back (6), with accessed/dirty flags enabled when `accessed_dirty` is true.
///
/// `pml4_pa` must be 4 KiB aligned; its low bits are masked off.
pub fn eptp(pml4_pa: u64, accessed_dirty: bool) -> u64 {
    const WRITE_BACK: u64 = 6;
    const WALK_LENGTH_4: u64 = 4 - 1;
    let ad = if accessed_dirty { EPTP_AD_ENABLE } else { 0 };
    (pml4_pa & ADDR_MASK) | WRITE_BACK | (WALK_LENGTH_4 << EPTP_WALK_LENGTH_SHIFT) | ad
}
