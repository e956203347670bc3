//! Shadow page-table entry formats (ordinary x86-64 / PAE entries with host physical addresses).

use crate::walk::{
    Translation, PTE_A, PTE_D, PTE_P, PTE_PAT_4K, PTE_PCD, PTE_PWT, PTE_RW, PTE_US, PTE_XD,
};

/// Host physical-address bits 51:12 of an entry.
pub(crate) const SPTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
/// Marks a not-present leaf whose host page is still pinned until the next TLB flush completes
/// (bit 9 is ignored by the CPU; P = 0 so the CPU never uses the entry).
pub(crate) const SPTE_ZOMBIE: u64 = 1 << 9;

/// Entry pointing to a lower shadow table: all rights, so the leaf decides.
pub(crate) fn nonleaf(pa: u64) -> u64 {
    (pa & SPTE_ADDR) | PTE_P | PTE_RW | PTE_US | PTE_A
}

/// A PAE PDPTE (legacy-mode roots): only P and the address are allowed.
pub(crate) fn pae_pdpte(pa: u64) -> u64 {
    (pa & SPTE_ADDR) | PTE_P
}

/// The 4 KiB leaf for a guest translation backed by host page `hpa`. `writable` is already the
/// combination of guest R/W, guest D, memslot permission and page-table write protection;
/// `long` says whether the hardware format has protection keys (4/5-level).
pub(crate) fn leaf(hpa: u64, t: &Translation, writable: bool, long: bool) -> u64 {
    let mut e = (hpa & SPTE_ADDR) | PTE_P | PTE_A;
    if writable {
        e |= PTE_RW | PTE_D;
    }
    if t.perms.user {
        e |= PTE_US;
    }
    if !t.perms.executable {
        e |= PTE_XD;
    }
    e |= u64::from(t.pat_index & 3) * PTE_PWT; // PWT = bit 3, PCD = bit 4
    debug_assert_eq!(PTE_PCD, PTE_PWT << 1);
    if t.pat_index & 4 != 0 {
        e |= PTE_PAT_4K;
    }
    if long {
        e |= u64::from(t.pkey & 0xF) << 59;
    }
    e
}

/// True for a present entry.
pub(crate) fn present(e: u64) -> bool {
    e & PTE_P != 0
}
