//! A second-level table: its root, page accounting, deferred freeing and the public operations.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::format::{entry_span, Attrs, Format, Invalidation, Kind, Leaf, PageSize, Perms, LEVELS};
use crate::memory::ENTRIES_PER_PAGE;
use crate::ops::{HarvestDirty, Map, ChangePerms, Remove};
use crate::{Error, TableMemory};

/// Shape of a table: its format and the address widths it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Entry format (EPT or NPT) and its options.
    pub format: Format,
    /// Guest-physical address width (at most 48 for a 4-level table). GPAs at or above
    /// `1 << gpa_bits` are refused.
    pub gpa_bits: u8,
    /// Host MAXPHYADDR (at most 52). Host addresses at or above `1 << phys_bits` are refused.
    pub phys_bits: u8,
}

/// A leaf removed by [`Table::unmap`] or [`Table::teardown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovedLeaf {
    /// First GPA the leaf mapped.
    pub gpa: u64,
    /// Host-physical base of the page it mapped.
    pub hpa: u64,
    /// Size of that page.
    pub size: PageSize,
    /// The hardware dirty flag was set when the leaf was removed (always false for EPT without
    /// accessed/dirty flags).
    pub dirty: bool,
}

/// Result of [`Table::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Host-physical address of the looked-up GPA.
    pub hpa: u64,
    /// First GPA of the leaf that maps it.
    pub leaf_gpa: u64,
    /// Page size of that leaf.
    pub size: PageSize,
    /// The leaf's contents.
    pub leaf: Leaf,
}

/// A second-level (EPT or NPT) page table.
///
/// Software access is exclusive (`&mut self`); the only concurrent writer is the processor, which
/// sets accessed/dirty flags. Every update of a present leaf is an atomic read-modify-write so
/// that no flag the processor sets is lost.
pub struct Table<M: TableMemory> {
    mem: M,
    format: Format,
    /// Physical address of the PML4 table (meaningless once torn down).
    pub(crate) root: u64,
    alive: bool,
    gpa_limit: u64,
    phys_limit: u64,
    /// Table pages held: linked in the tree or waiting in the deferred list.
    pages: usize,
    /// Detached table pages waiting for the invalidation before they may be freed, linked
    /// through their entry 0 (a 4 KiB-aligned address is a not-present entry in both formats).
    deferred_head: u64,
    deferred_count: usize,
    /// Changes since the last [`Table::finish_invalidation`] that cached translations may not
    /// reflect yet.
    flush_pending: bool,
}

/// The entry `index` (taken modulo 512) of `entries`.
fn slot(entries: &[AtomicU64; ENTRIES_PER_PAGE], index: usize) -> &AtomicU64 {
    #[allow(clippy::indexing_slicing)] // masked to 0..512, the array's length
    &entries[index & (ENTRIES_PER_PAGE - 1)]
}

/// Checks a 4 KiB-aligned range `[start, start + len)` against `limit`; returns its end.
fn range_end(start: u64, len: u64, limit: u64) -> Option<u64> {
    let end = start.checked_add(len)?;
    (start & 0xfff == 0 && len & 0xfff == 0 && end <= limit).then_some(end)
}

impl<M: TableMemory> Table<M> {
    /// Creates an empty table (allocates its root page).
    pub fn new(mut mem: M, config: Config) -> Result<Self, Error> {
        if !(12..=48).contains(&config.gpa_bits) || !(12..=52).contains(&config.phys_bits) {
            return Err(Error::InvalidConfig);
        }
        let root = mem.alloc_page().ok_or(Error::OutOfMemory)?;
        Ok(Table {
            mem,
            format: config.format,
            root,
            alive: true,
            gpa_limit: 1u64 << config.gpa_bits,
            phys_limit: 1u64 << config.phys_bits,
            pages: 1,
            deferred_head: 0,
            deferred_count: 0,
            flush_pending: false,
        })
    }

    /// The entry format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The page source (tests inspect simulated memory through it).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Physical address of the root (PML4) table, or `None` after [`Table::teardown`].
    pub fn root_pa(&self) -> Option<u64> {
        self.alive.then_some(self.root)
    }

    /// The value to load into the VMCS EPTP field or the VMCB nCR3 field, or `None` after
    /// [`Table::teardown`].
    pub fn root_pointer(&self) -> Option<u64> {
        self.root_pa().map(|r| self.format.root_pointer(r))
    }

    /// Number of table pages this table holds (including detached pages awaiting
    /// [`Table::finish_invalidation`]).
    pub fn table_pages(&self) -> usize {
        self.pages
    }

    /// The invalidation owed for every change since the last [`Table::finish_invalidation`]
    /// (also after an operation that returned an error).
    pub fn pending_invalidation(&self) -> Invalidation {
        if self.flush_pending {
            self.format.flush()
        } else {
            Invalidation::None
        }
    }

    /// Tells the table that the caller performed [`Table::pending_invalidation`] on every CPU
    /// that may cache its translations: detached table pages are now given back to the host.
    pub fn finish_invalidation(&mut self) {
        while self.deferred_count > 0 {
            let pa = self.deferred_head;
            let e0 = slot(self.mem.entries(pa), 0);
            self.deferred_head = e0.load(Ordering::Acquire);
            e0.store(0, Ordering::Relaxed);
            self.deferred_count -= 1;
            self.free_now(pa);
        }
        self.flush_pending = false;
    }

    /// Maps `[gpa, gpa + len)` to the host-physically contiguous `[hpa, hpa + len)` with `attrs`,
    /// using leaves up to `max_page` where GPA and HPA are both aligned to the leaf size.
    ///
    /// All or nothing: on error no page of the range is left mapped by this call (pages mapped
    /// before it are untouched). A range that overlaps an existing translation gives
    /// [`Error::AlreadyMapped`]. Returns the pending invalidation (mapping into not-present entries
    /// adds none; a failed call may add one, see [`Table::pending_invalidation`]).
    pub fn map(&mut self, gpa: u64, hpa: u64, len: u64, attrs: Attrs, max_page: PageSize) -> Result<Invalidation, Error> {
        self.check_alive()?;
        let end = range_end(gpa, len, self.gpa_limit).ok_or(Error::InvalidGpaRange)?;
        range_end(hpa, len, self.phys_limit).ok_or(Error::InvalidHpa)?;
        self.format.check_attrs(&attrs)?;
        let mut op = Map { hpa_base: hpa, attrs, max_level: max_page.level(), at: gpa };
        if let Err(e) = self.walk(gpa, end, &mut op) {
            // Undo: everything in [gpa, op.at) was mapped by this call. On allocation failure the
            // page at op.at is unmapped but new empty tables may lead to it; include it so that
            // they are pruned. No leaf straddles these bounds, so the removal cannot allocate.
            let undo_end = if matches!(e, Error::AlreadyMapped(_)) { op.at } else { op.at + 0x1000 };
            let mut forget = Remove { report: |_| {} };
            // Cannot fail: Remove only allocates to split a leaf straddling the range.
            let _ = self.walk(gpa, undo_end, &mut forget);
            return Err(e);
        }
        Ok(self.pending_invalidation())
    }

    /// Unmaps `[gpa, gpa + len)`, calling `on_removed` for every leaf removed (unmapped ranges
    /// are skipped). Large leaves straddling the range's ends are split first.
    ///
    /// All or nothing: the only failure is [`Error::OutOfMemory`] while splitting, before any
    /// translation changed (a split keeps every translation as it was). Perform the returned
    /// invalidation before releasing the reported host pages.
    pub fn unmap(&mut self, gpa: u64, len: u64, on_removed: impl FnMut(RemovedLeaf)) -> Result<Invalidation, Error> {
        self.check_alive()?;
        let end = range_end(gpa, len, self.gpa_limit).ok_or(Error::InvalidGpaRange)?;
        self.split_at(gpa)?;
        self.split_at(end)?;
        self.walk(gpa, end, &mut Remove { report: on_removed })?;
        Ok(self.pending_invalidation())
    }

    /// Removes `remove` from the rights of every page mapped in `[gpa, gpa + len)` (e.g. WRITE
    /// for dirty logging). [`Perms::READ`] cannot be removed (unmap instead), nor EXEC on NPT
    /// without NX. All or nothing, like [`Table::unmap`].
    pub fn protect(&mut self, gpa: u64, len: u64, remove: Perms) -> Result<Invalidation, Error> {
        self.change_perms(gpa, len, remove, Perms::empty())
    }

    /// Adds `add` to the rights of every page mapped in `[gpa, gpa + len)` (e.g. WRITE after a
    /// dirty-logging write fault). All or nothing, like [`Table::unmap`]. Adds no invalidation.
    pub fn grant(&mut self, gpa: u64, len: u64, add: Perms) -> Result<Invalidation, Error> {
        self.change_perms(gpa, len, Perms::empty(), add)
    }

    fn change_perms(&mut self, gpa: u64, len: u64, clear: Perms, set: Perms) -> Result<Invalidation, Error> {
        self.check_alive()?;
        let end = range_end(gpa, len, self.gpa_limit).ok_or(Error::InvalidGpaRange)?;
        let no_exec_possible = !matches!(self.format, Format::Npt { nx: false, .. });
        if clear.contains(Perms::READ) || (clear.contains(Perms::EXEC) && !no_exec_possible) {
            return Err(Error::InvalidPermissions);
        }
        if clear.is_empty() && set.is_empty() {
            return Ok(self.pending_invalidation());
        }
        self.split_at(gpa)?;
        self.split_at(end)?;
        self.walk(gpa, end, &mut ChangePerms { clear, set })?;
        Ok(self.pending_invalidation())
    }

    /// Sets bit `(g - gpa) / 4096` of `bitmap` (bit 0 = LSB of word 0) for every page `g` of
    /// `[gpa, gpa + len)` whose leaf has the hardware dirty flag, and clears those flags. Bits of
    /// clean pages are left as they were. A dirty large leaf reaching outside the range reports
    /// its in-range pages and keeps its flag (over-reporting is safe; losing a dirty page is not).
    ///
    /// Never allocates; fails only on bad arguments or [`Error::NoDirtyTracking`].
    pub fn harvest_dirty(&mut self, gpa: u64, len: u64, bitmap: &mut [u64]) -> Result<Invalidation, Error> {
        self.check_alive()?;
        let end = range_end(gpa, len, self.gpa_limit).ok_or(Error::InvalidGpaRange)?;
        let dirty_bit = self.format.dirty_bit().ok_or(Error::NoDirtyTracking)?;
        let pages = len >> 12;
        if (bitmap.len() as u64).saturating_mul(64) < pages {
            return Err(Error::BitmapTooSmall);
        }
        self.walk(gpa, end, &mut HarvestDirty { bitmap, dirty_bit })?;
        Ok(self.pending_invalidation())
    }

    /// The translation of `gpa`, if it is mapped.
    pub fn lookup(&self, gpa: u64) -> Result<Option<Translation>, Error> {
        self.check_alive()?;
        if gpa >= self.gpa_limit {
            return Err(Error::InvalidGpaRange);
        }
        let (mut table, mut level, mut base) = (self.root, LEVELS, 0u64);
        while level >= 1 {
            let span = entry_span(level);
            let index = ((gpa - base) / span) as usize;
            let start = base + index as u64 * span;
            let raw = self.load(table, index);
            match self.format.kind(raw, level) {
                Kind::Empty => return Ok(None),
                Kind::Table(child) => (table, level, base) = (child, level - 1, start),
                Kind::Leaf => {
                    let leaf = self.format.decode_leaf(raw, level);
                    let size = PageSize::from_level(level).unwrap_or(PageSize::Size4K);
                    return Ok(Some(Translation { hpa: leaf.hpa + (gpa - start), leaf_gpa: start, size, leaf }));
                }
            }
        }
        Ok(None)
    }

    /// Removes every leaf (reported to `on_removed`) and detaches every table page including the
    /// root. Perform the returned invalidation, then call [`Table::finish_invalidation`] to give
    /// the pages back; after that the table holds no page. Every other operation then fails with
    /// [`Error::TornDown`].
    pub fn teardown(&mut self, on_removed: impl FnMut(RemovedLeaf)) -> Invalidation {
        if self.alive {
            // Cannot fail: the range covers every leaf whole, so Remove never splits.
            let _ = self.walk(0, self.gpa_limit, &mut Remove { report: on_removed });
            self.defer_free(self.root);
            self.alive = false;
        }
        self.pending_invalidation()
    }

    fn check_alive(&self) -> Result<(), Error> {
        if self.alive {
            Ok(())
        } else {
            Err(Error::TornDown)
        }
    }

    /// Splits large leaves containing `b` until `b` is at a leaf boundary (at most two splits).
    /// Translations are unchanged whether or not this fails.
    fn split_at(&mut self, b: u64) -> Result<(), Error> {
        if b >= self.gpa_limit {
            return Ok(());
        }
        let (mut table, mut level, mut base) = (self.root, LEVELS, 0u64);
        while level >= 1 {
            let span = entry_span(level);
            let index = ((b - base) / span) as usize;
            let start = base + index as u64 * span;
            let raw = self.load(table, index);
            match self.format.kind(raw, level) {
                Kind::Empty => return Ok(()),
                Kind::Leaf if start == b => return Ok(()),
                Kind::Leaf => {
                    let slot = crate::walk::Slot { table, index, level, start, end: start + span };
                    table = self.split(&slot, raw)?;
                }
                Kind::Table(child) => table = child,
            }
            (level, base) = (level - 1, start);
        }
        Ok(())
    }

    /// Replaces the large leaf `raw` at `s` by a table of leaves one level down mapping the same
    /// pages with the same attributes and flags; returns the new table.
    ///
    /// No invalidation is needed: every translation stays the same, so a CPU using either the old
    /// large-page or the new small-page entries translates identically (Intel SDM Vol. 3A, "Details
    /// of TLB Use", allows several cached entries for one page; the hazard the SDM warns about in
    /// "Recommended Invalidation" is a *different* translation after a page-size change).
    pub(crate) fn split(&mut self, s: &crate::walk::Slot, raw: u64) -> Result<u64, Error> {
        let child = self.alloc()?;
        let child_level = s.level - 1;
        let child_span = entry_span(child_level);
        let mut old = raw;
        loop {
            if self.format.kind(old, s.level) != Kind::Leaf {
                // Only the processor writes concurrently, and it only sets A/D flags.
                self.free_now(child);
                return Err(Error::Internal);
            }
            let leaf = self.format.decode_leaf(old, s.level);
            for i in 0..ENTRIES_PER_PAGE {
                let e = self.format.encode_leaf(
                    child_level,
                    leaf.hpa + i as u64 * child_span,
                    &leaf.attrs,
                    leaf.accessed,
                    leaf.dirty,
                );
                slot(self.mem.entries(child), i).store(e, Ordering::Relaxed);
            }
            let new = self.format.table_entry(child);
            match slot(self.mem.entries(s.table), s.index).compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(child),
                // The processor set A or D meanwhile: refill with the new flags. Terminates since
                // flags only go from 0 to 1.
                Err(actual) => old = actual,
            }
        }
    }

    /// Detaches `child` from entry `index` of `parent` and defers its freeing if it is empty.
    pub(crate) fn prune(&mut self, parent: u64, index: usize, child: u64) {
        let format = self.format;
        let empty = self.mem.entries(child).iter().all(|e| format.kind(e.load(Ordering::Acquire), 1) == Kind::Empty);
        if empty {
            slot(self.mem.entries(parent), index).store(0, Ordering::Release);
            self.defer_free(child);
        }
    }

    /// Queues a detached table page for freeing after the next invalidation.
    fn defer_free(&mut self, pa: u64) {
        slot(self.mem.entries(pa), 0).store(self.deferred_head, Ordering::Release);
        self.deferred_head = pa;
        self.deferred_count += 1;
        self.flush_pending = true;
    }

    /// Allocates a zeroed table page.
    pub(crate) fn alloc(&mut self) -> Result<u64, Error> {
        let pa = self.mem.alloc_page().ok_or(Error::OutOfMemory)?;
        self.pages += 1;
        Ok(pa)
    }

    /// Frees a table page no CPU can have cached (never linked, or invalidated since).
    fn free_now(&mut self, pa: u64) {
        self.mem.free_page(pa);
        self.pages -= 1;
    }

    /// Marks that cached translations may be stale.
    pub(crate) fn need_flush(&mut self) {
        self.flush_pending = true;
    }

    pub(crate) fn load(&self, table: u64, index: usize) -> u64 {
        slot(self.mem.entries(table), index).load(Ordering::Acquire)
    }

    /// Publishes a new entry (a fresh leaf or table reference into a not-present slot).
    pub(crate) fn store(&self, table: u64, index: usize, value: u64) {
        slot(self.mem.entries(table), index).store(value, Ordering::Release);
    }

    /// The entry itself, for atomic read-modify-write.
    pub(crate) fn entry(&self, table: u64, index: usize) -> &AtomicU64 {
        slot(self.mem.entries(table), index)
    }
}

impl<M: TableMemory> Drop for Table<M> {
    /// Frees every table page at once (leaves are dropped unreported). Only correct when no CPU
    /// can hold cached translations of this table: normally call [`Table::teardown`], invalidate,
    /// then [`Table::finish_invalidation`] before dropping, which leaves nothing to free here.
    fn drop(&mut self) {
        let _ = self.teardown(|_| {});
        self.finish_invalidation();
    }
}
