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
//!
//! # Shadow paging ([`ShadowMmu`])
//! A virtual TLB for CPUs without EPT/NPT, one per VM, used under the core's lock.
//! - **Format.** Shadow tables are ordinary x86 tables with host physical addresses: 4-level
//!   (5-level for LA57 guests) in long mode, PAE (a 4-entry PDPT below 4 GiB with four
//!   preallocated page directories, as KVM's `pae_root`) for guests with paging off, 32-bit or
//!   PAE paging. Every leaf is 4 KiB; guest 2 MiB/4 MiB/1 GiB pages are split. Leaves carry the
//!   guest's effective U/S and XD, its PAT/PCD/PWT and (long mode) protection key, never G. The
//!   hardware runs with CR0.WP = 1 and EFER.NXE = 1; SMEP/SMAP/PKE/PKS/PKRU are the guest's, so
//!   the CPU applies them itself.
//! - **Filling.** On a hardware #PF, [`ShadowMmu::page_fault`] walks the guest tables (setting
//!   A/D), pins the backing host page through [`GuestFrames`] and installs one leaf. A leaf is
//!   writable only if the guest's R/W and D are set, the memslot is writable and the frame is
//!   not a guest page table. Guest faults come back as #PF to inject; MMIO, writes to read-only
//!   slots, writes to guest page tables and CR0.WP = 0 supervisor writes to read-only pages come
//!   back for emulation.
//! - **Coherence.** Each shadow page table (2 MiB of linear addresses) records the chain of
//!   guest paging-structure pages it was derived from. Those pages are write-protected in every
//!   root (existing writable leaves are downgraded when a page joins the set), so guest writes to
//!   them trap; the core emulates them and calls [`ShadowMmu::guest_pt_write`], which zaps only
//!   the shadow entries derived from the bytes written. This keeps every cached root exact, so
//!   roots are cached by (guest CR3, mode bits, PAE PDPTEs) and reused on CR3 loads; a change of
//!   paging mode (CR0.PG, CR4.PAE/PSE/LA57, EFER.LMA/NXE) selects another root. INVLPG and
//!   INVPCID individual-address zap the guest page containing the address (including all of a
//!   large page); single/all-context INVPCID need no shadow change (the hardware TLB flush is
//!   the core's).
//! - **Release after flush.** Zapped leaves and unlinked tables stay pinned/allocated
//!   ("zombies", marked in ignored bits or linked through entry 0) until the core reports the
//!   TLB flush done ([`ShadowMmu::flush_done`]): no CPU can reach a host page after its unpin.
//! - **Bounded memory.** All table and metadata pages come from [`ept::TableMemory`]; no heap.
//!   Shadow page tables and intermediate tables are capped (`max_pages`); roots (≤ 16) and
//!   descriptor pages are bounded separately. At the cap, unused roots are evicted, then
//!   everything below all roots is zapped and the fault retried after the flush. Allocation
//!   failure is [`Error::OutOfMemory`] with the state left consistent. All walks are iterative.
//! - **Limits.** Dependency lookups scan the descriptors (O(shadow page tables) per fault, and
//!   O(leaves) when a page first becomes a guest page table); guest-frame aliases (two GPAs for
//!   one host page) and writes by devices/userspace to guest page tables are not tracked (as in
//!   KVM); an implicit supervisor access at CPL < 3 with RFLAGS.AC = 1 to a user page, which
//!   SMAP forbids, is indistinguishable from a spurious fault and is retried.
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
