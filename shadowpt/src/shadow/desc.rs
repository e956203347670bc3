//! Descriptors of shadow page tables (the leaf level), stored in metadata pages from
//! [`TableMemory`]: no heap. 64 descriptors of 8 words per page.

use core::sync::atomic::Ordering;
use ept::TableMemory;

/// Descriptors per metadata page.
const DESCS_PER_PAGE: usize = 64;
/// Words per descriptor.
const DESC_WORDS: usize = 8;
/// Maximum metadata pages (bounds the number of shadow page tables to 4096).
pub(crate) const MAX_META_PAGES: usize = 64;

/// Descriptor flag: slot in use.
pub(crate) const D_VALID: u64 = 1 << 0;
/// Descriptor flag: the page table is unlinked, waiting for the TLB flush before it is freed.
pub(crate) const D_ZOMBIE: u64 = 1 << 1;
/// Descriptor flag: some leaves are zapped and wait for the TLB flush before being unpinned.
pub(crate) const D_LEAF_ZOMBIES: u64 = 1 << 2;

/// One shadow page table: which root it belongs to, which 2 MiB of linear addresses it maps and
/// which guest paging-structure pages its entries were derived from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Host physical address of the shadow page table.
    pub pt: u64,
    /// D_* flags.
    pub flags: u64,
    /// Index of the root slot.
    pub root: u8,
    /// Number of valid entries in `chain`.
    pub chain_len: u8,
    /// Linear address of the first byte mapped (2 MiB aligned).
    pub region: u64,
    /// Guest paging-structure pages read to translate the region, top-down.
    pub chain: [u64; 5],
}

impl Desc {
    /// The valid part of the chain.
    pub fn chain(&self) -> &[u64] {
        self.chain.get(..usize::from(self.chain_len)).unwrap_or(&[])
    }
}

/// The descriptor table: pages and slot addressing.
pub(crate) struct DescStore {
    pages: [u64; MAX_META_PAGES],
    count: usize,
}

impl DescStore {
    pub const fn new() -> Self {
        DescStore {
            pages: [0; MAX_META_PAGES],
            count: 0,
        }
    }

    /// Number of slots available in allocated pages.
    pub fn capacity(&self) -> usize {
        self.count * DESCS_PER_PAGE
    }

    /// Number of metadata pages held.
    pub fn pages(&self) -> usize {
        self.count
    }

    fn word(&self, slot: usize, w: usize) -> Option<(u64, usize)> {
        let page = *self.pages.get(slot / DESCS_PER_PAGE)?;
        Some((page, (slot % DESCS_PER_PAGE) * DESC_WORDS + w))
    }

    fn load(&self, tm: &dyn TableMemory, slot: usize, w: usize) -> u64 {
        match self.word(slot, w) {
            Some((page, i)) => tm
                .entries(page)
                .get(i)
                .map_or(0, |a| a.load(Ordering::Relaxed)),
            None => 0,
        }
    }

    fn store(&self, tm: &dyn TableMemory, slot: usize, w: usize, v: u64) {
        if let Some((page, i)) = self.word(slot, w) {
            if let Some(a) = tm.entries(page).get(i) {
                a.store(v, Ordering::Relaxed);
            }
        }
    }

    /// The flags word of `slot` alone (cheap scan filter).
    pub fn flags(&self, tm: &dyn TableMemory, slot: usize) -> u64 {
        self.load(tm, slot, 0) & 0xFFF
    }

    /// Reads descriptor `slot`.
    pub fn get(&self, tm: &dyn TableMemory, slot: usize) -> Desc {
        let w0 = self.load(tm, slot, 0);
        let w1 = self.load(tm, slot, 1);
        let mut chain = [0u64; 5];
        for (k, c) in chain.iter_mut().enumerate() {
            *c = self.load(tm, slot, 3 + k);
        }
        Desc {
            pt: w0 & !0xFFF,
            flags: w0 & 0xFFF,
            root: (w1 & 0xFF) as u8,
            chain_len: ((w1 >> 8) & 0xFF) as u8,
            region: self.load(tm, slot, 2),
            chain,
        }
    }

    /// Writes descriptor `slot`.
    pub fn set(&self, tm: &dyn TableMemory, slot: usize, d: &Desc) {
        self.store(tm, slot, 0, d.pt | (d.flags & 0xFFF));
        self.store(
            tm,
            slot,
            1,
            u64::from(d.root) | (u64::from(d.chain_len) << 8),
        );
        self.store(tm, slot, 2, d.region);
        for (k, c) in d.chain.iter().enumerate() {
            self.store(tm, slot, 3 + k, *c);
        }
    }

    /// Updates only the flags of `slot`.
    pub fn set_flags(&self, tm: &dyn TableMemory, slot: usize, flags: u64) {
        let w0 = self.load(tm, slot, 0);
        self.store(tm, slot, 0, (w0 & !0xFFF) | (flags & 0xFFF));
    }

    /// Frees `slot`.
    pub fn clear(&self, tm: &dyn TableMemory, slot: usize) {
        for w in 0..DESC_WORDS {
            self.store(tm, slot, w, 0);
        }
    }

    /// A free slot, if any allocated page has one.
    pub fn free_slot(&self, tm: &dyn TableMemory) -> Option<usize> {
        (0..self.capacity()).find(|&s| self.flags(tm, s) & D_VALID == 0)
    }

    /// True when a new page can be added.
    pub fn can_grow(&self) -> bool {
        self.count < MAX_META_PAGES
    }

    /// Adds a metadata page obtained from the table memory (zeroed).
    pub fn add_page(&mut self, pa: u64) {
        if let Some(p) = self.pages.get_mut(self.count) {
            *p = pa;
            self.count += 1;
        }
    }

    /// Removes and returns every metadata page (teardown).
    pub fn take_pages(&mut self) -> impl Iterator<Item = u64> + '_ {
        let n = self.count;
        self.count = 0;
        self.pages
            .iter_mut()
            .take(n)
            .map(|p| core::mem::replace(p, 0))
    }
}
