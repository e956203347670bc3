//! Guest page-table walks for every paging mode, and shadow paging for CPUs without EPT/NPT.
//!
//! # Walker ([`walk`])
//! One iterative walk for paging off, 32-bit (PSE, PSE-36), PAE (PDPTEs cached at CR3 load: see
//! [`load_pdptes`]), 4-level and 5-level paging. It implements the access rights of SDM Vol. 3
//! §4.6 (U/S, R/W with CR0.WP, NX with EFER.NXE, SMEP, SMAP with RFLAGS.AC and implicit accesses,
//! protection keys PKRU/PKRS), the reserved-bit checks of §4.3-4.5 (MAXPHYADDR, PS in
//! PML5E/PML4E, PS in a PDPTE without 1 GiB pages, XD without NXE) and produces page-fault
//! error codes as §4.7 specifies (P, W/R, U/S, RSVD, I/D, PK). Accessed and dirty flags are set
//! with compare-exchange through [`GuestMemory`], only when the access succeeds (KVM does the
//! same). A paging structure outside guest RAM is [`WalkError::NotRam`], never a #PF.
//! Shadow-stack (SS) and SGX error-code bits are not produced: CET and SGX are not exposed.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod guest_memory;
mod pfec;
mod regs;
mod shadow;
mod walk;

#[cfg(test)]
mod test_mem;
#[cfg(test)]
mod walk_tests;

pub use guest_memory::{GuestMemory, NotRam};
pub use pfec::{PageFault, PFEC_I, PFEC_P, PFEC_PK, PFEC_RSVD, PFEC_U, PFEC_W};
pub use regs::{
    CpuModel, PagingMode, PagingRegs, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_PSE,
    CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE,
};
pub use shadow::{
    Error, FaultOutcome, FaultResult, Flush, GuestFrames, HostFrame, RootId, ShadowMmu, MAX_PAGES,
    MAX_ROOTS, MIN_PAGES,
};
pub use walk::{
    level_geometry, load_pdptes, walk, Access, AccessKind, PageSize, PdpteError, Permissions,
    Translation, WalkError, MAX_WALK_TABLES, PTE_A, PTE_D, PTE_G, PTE_P, PTE_PAT_4K, PTE_PAT_LARGE,
    PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, PTE_XD,
};
