//! Table-page memory: how paging structures (EPT/NPT tables, shadow page tables) get their pages.

use core::sync::atomic::AtomicU64;

/// Number of 8-byte entries in one 4 KiB paging-structure page.
pub const ENTRIES_PER_PAGE: usize = 512;

/// Source of 4 KiB pages for paging structures that the hardware walks by physical address.
///
/// The core implements this with the host's page allocator (OpenBSD: direct-mapped pages; Linux test
/// glue: `alloc_page` + `page_address`); host tests implement it over simulated physical memory.
/// Entries are atomics because the CPU's page walker reads (and, for A/D bits, writes) them while
/// software updates them.
pub trait TableMemory {
    /// Allocates one zeroed, 4 KiB-aligned page and returns its host physical address, or `None`
    /// when memory is exhausted (the caller turns that into an error, never a panic).
    fn alloc_page(&mut self) -> Option<u64>;

    /// Returns a page obtained from [`TableMemory::alloc_page`] to the host.
    ///
    /// The caller guarantees that no paging structure still references `pa` and that any
    /// required TLB invalidation has been done.
    fn free_page(&mut self, pa: u64);

    /// The entries of a page obtained from [`TableMemory::alloc_page`] and not yet freed.
    ///
    /// Implementations may assume `pa` is such a page (callers never pass anything else).
    fn entries(&self, pa: u64) -> &[AtomicU64; ENTRIES_PER_PAGE];
}
