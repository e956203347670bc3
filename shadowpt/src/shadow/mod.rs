//! Shadow paging: a virtual TLB of host page tables that the CPU walks in place of the guest's.
//!
//! See the crate documentation for the design; this module holds the public API.

mod desc;
mod spte;
#[cfg(test)]
mod tests;

use crate::guest_memory::{GuestMemory, NotRam};
use crate::pfec::{PFEC_I, PFEC_P, PFEC_U, PFEC_W};
use crate::regs::{CpuModel, PagingMode, PagingRegs, CR4_PSE, EFER_NXE};
use crate::walk::{level_geometry, walk, Access, AccessKind, Translation, WalkError};
use core::sync::atomic::Ordering;
use desc::{Desc, DescStore, D_LEAF_ZOMBIES, D_VALID, D_ZOMBIE};
use ept::TableMemory;
use spte::{SPTE_ADDR, SPTE_ZOMBIE};

/// Maximum number of cached shadow roots (guest CR3 + mode).
pub const MAX_ROOTS: usize = 16;
/// Smallest accepted `max_pages`.
pub const MIN_PAGES: usize = 16;
/// Largest accepted `max_pages` (bounded by the descriptor store).
pub const MAX_PAGES: usize = desc::MAX_META_PAGES * 64;

/// A host page backing a guest frame, as the core's memslots give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFrame {
    /// Host physical address of the 4 KiB page.
    pub hpa: u64,
    /// The memslot allows writes.
    pub writable: bool,
}

/// The core's memslots, seen from the shadow MMU.
///
/// Every present shadow leaf holds exactly one pin on the host page it maps; the pin is dropped
/// only after the TLB flush that made the leaf unreachable ([`ShadowMmu::flush_done`]), or at
/// teardown.
pub trait GuestFrames {
    /// Looks up and pins the host page backing the 4 KiB guest frame at `gpa`; `None` when no
    /// memslot covers it (MMIO).
    fn pin(&mut self, gpa: u64) -> Option<HostFrame>;
    /// Drops one pin taken by [`GuestFrames::pin`].
    fn unpin(&mut self, hpa: u64);
}

/// A cached shadow root held by a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootId(u8);

/// TLB invalidation the core must perform before the guest runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Flush {
    /// Nothing to invalidate.
    None,
    /// Invalidate this linear address on the current vCPU (INVVPID individual address / INVLPGA).
    Page(u64),
    /// Invalidate all guest translations on every vCPU using this MMU, then call
    /// [`ShadowMmu::flush_done`].
    All,
}

impl Flush {
    /// The stronger of two requirements.
    pub fn merge(self, other: Flush) -> Flush {
        match (self, other) {
            (Flush::All, _) | (_, Flush::All) => Flush::All,
            (Flush::Page(a), Flush::Page(b)) if a != b => Flush::All,
            (Flush::Page(a), _) | (_, Flush::Page(a)) => Flush::Page(a),
            _ => Flush::None,
        }
    }
}

/// What the core does after a shadow page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Re-enter the guest: the access will be retried (a shadow entry was installed, or a race
    /// must settle).
    Retry,
    /// Deliver #PF to the guest with this error code; CR2 = the faulting linear address.
    InjectPf(u32),
    /// The access targets a guest-physical address without a memslot, or writes a read-only
    /// memslot: emulate the instruction as MMIO.
    Mmio {
        /// Guest-physical address of the access.
        gpa: u64,
    },
    /// Emulate the instruction: a write to a guest page-table page (call
    /// [`ShadowMmu::guest_pt_write`] after performing it) or a supervisor write to a read-only
    /// page with CR0.WP = 0.
    Emulate {
        /// Guest-physical address of the access.
        gpa: u64,
    },
    /// A guest paging structure lies outside guest RAM.
    NotRam(NotRam),
}

/// The result of [`ShadowMmu::page_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultResult {
    /// What to do with the faulting access.
    pub outcome: FaultOutcome,
    /// TLB invalidation required before re-entering the guest.
    pub flush: Flush,
}

/// Shadow MMU errors (never a panic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// [`TableMemory::alloc_page`] failed; state is consistent, the operation may be retried.
    OutOfMemory,
    /// `max_pages` outside `MIN_PAGES..=MAX_PAGES`.
    BadConfig,
    /// Every root slot is held by a vCPU.
    NoFreeRoot,
    /// The root id is not held, or its key does not match the registers (switch_root missed).
    BadRoot,
    /// A PAE shadow root must lie below 4 GiB (32-bit CR3) and the page given was not.
    PaeRootAbove4G,
}

/// What identifies the translations of a root: guest mode and the bits that change walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RootKey {
    mode: PagingMode,
    table: u64,
    pdptes: [u64; 4],
    pse: bool,
    nxe: bool,
}

impl RootKey {
    fn from_regs(regs: &PagingRegs, cpu: &CpuModel) -> Self {
        let mode = regs.mode();
        let mut k = RootKey {
            mode,
            table: 0,
            pdptes: [0; 4],
            pse: false,
            nxe: false,
        };
        match mode {
            PagingMode::Off => {}
            PagingMode::Bits32 => {
                k.table = regs.cr3 & 0xFFFF_F000;
                k.pse = regs.cr4 & CR4_PSE != 0;
            }
            PagingMode::Pae => {
                k.pdptes = regs.pdptes;
                k.nxe = regs.efer & EFER_NXE != 0;
            }
            PagingMode::Level4 | PagingMode::Level5 => {
                k.table = regs.cr3 & cpu.addr_mask();
                k.nxe = regs.efer & EFER_NXE != 0;
            }
        }
        k
    }
}

#[derive(Clone, Copy, Debug)]
struct RootSlot {
    key: RootKey,
    /// Root page (0: slot empty).
    pa: u64,
    /// Legacy roots: the four preallocated page directories.
    pds: [u64; 4],
    users: u32,
    last_used: u64,
}

const EMPTY_ROOT: RootSlot = RootSlot {
    key: RootKey {
        mode: PagingMode::Off,
        table: 0,
        pdptes: [0; 4],
        pse: false,
        nxe: false,
    },
    pa: 0,
    pds: [0; 4],
    users: 0,
    last_used: 0,
};

/// Hardware levels of the shadow format for a guest mode: PAE (3) below long mode.
fn hw_levels(mode: PagingMode) -> u8 {
    match mode {
        PagingMode::Level5 => 5,
        PagingMode::Level4 => 4,
        _ => 3,
    }
}

/// Linear-address bits the hardware walk uses.
fn la_mask(mode: PagingMode) -> u64 {
    match mode {
        PagingMode::Level5 => (1 << 57) - 1,
        PagingMode::Level4 => (1 << 48) - 1,
        _ => 0xFFFF_FFFF,
    }
}

/// Index of `la` in a shadow table of `level` (1 = PT).
fn sidx(la: u64, level: u8) -> usize {
    ((la >> (12 + 9 * (u32::from(level) - 1))) & 511) as usize
}

const REGION: u64 = 1 << 21;

fn load(tm: &dyn TableMemory, pa: u64, i: usize) -> u64 {
    tm.entries(pa)
        .get(i)
        .map_or(0, |a| a.load(Ordering::Acquire))
}

fn store(tm: &dyn TableMemory, pa: u64, i: usize, v: u64) {
    if let Some(a) = tm.entries(pa).get(i) {
        a.store(v, Ordering::Release);
    }
}

/// Shadow page tables for one VM (shared by its vCPUs under the core's lock).
pub struct ShadowMmu {
    cpu: CpuModel,
    max_pages: usize,
    /// Page tables and intermediate tables held, zombies included (roots and metadata pages are
    /// bounded separately: at most 5 × MAX_ROOTS and MAX_PAGES / 64).
    pages: usize,
    roots: [RootSlot; MAX_ROOTS],
    descs: DescStore,
    /// Unlinked intermediate tables awaiting the TLB flush (linked through entry 0).
    zombie_pages: u64,
    tick: u64,
}

impl ShadowMmu {
    /// An empty shadow MMU for vCPUs of CPU model `cpu`, holding at most `max_pages` shadow
    /// page-table pages (besides roots and metadata).
    ///
    /// While it is in use, the hardware must run the guest with CR0.WP = 1, EFER.NXE = 1,
    /// CR4.PAE = 1 (and LMA/LA57 as the guest's), CR4.SMEP/SMAP/PKE/PKS as the guest's when guest
    /// paging is on (clear when it is off), and the guest's PKRU.
    pub fn new(cpu: CpuModel, max_pages: usize) -> Result<Self, Error> {
        if !(MIN_PAGES..=MAX_PAGES).contains(&max_pages) {
            return Err(Error::BadConfig);
        }
        Ok(ShadowMmu {
            cpu,
            max_pages,
            pages: 0,
            roots: [EMPTY_ROOT; MAX_ROOTS],
            descs: DescStore::new(),
            zombie_pages: 0,
            tick: 0,
        })
    }

    /// Every page held: shadow tables, zombies, roots and metadata.
    pub fn pages_in_use(&self) -> usize {
        let roots: usize = self
            .roots
            .iter()
            .filter(|r| r.pa != 0)
            .map(|r| if r.key.mode.is_long() { 1 } else { 5 })
            .sum();
        self.pages + roots + self.descs.pages()
    }

    fn root(&self, id: RootId) -> Result<&RootSlot, Error> {
        match self.roots.get(usize::from(id.0)) {
            Some(r) if r.pa != 0 && r.users > 0 => Ok(r),
            _ => Err(Error::BadRoot),
        }
    }

    /// Host physical address to load in the hardware CR3 while running on `root` (a PAE PDPT,
    /// below 4 GiB, for guests outside long mode; a PML4 or PML5 otherwise).
    pub fn root_hpa(&self, root: RootId) -> Result<u64, Error> {
        Ok(self.root(root)?.pa)
    }

    /// Selects the root for the vCPU's current registers (MOV to CR3, CR0/CR4/EFER writes that
    /// change the paging mode, PDPTE reloads), releasing `old`. Cached roots stay coherent
    /// through write protection of guest page tables, so a root found in the cache is reused.
    /// The core must flush the vCPU's guest TLB (VPID/ASID) when the returned root differs.
    pub fn switch_root(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        old: Option<RootId>,
        regs: &PagingRegs,
    ) -> Result<RootId, Error> {
        let key = RootKey::from_regs(regs, &self.cpu);
        self.tick += 1;
        let found = self.roots.iter().position(|r| r.pa != 0 && r.key == key);
        let idx = match found {
            Some(i) => i,
            None => self.new_root(tm, frames, key, old)?,
        };
        if let Some(o) = old {
            self.release_root(o)?;
        }
        let tick = self.tick;
        let slot = self.roots.get_mut(idx).ok_or(Error::BadRoot)?;
        slot.users += 1;
        slot.last_used = tick;
        Ok(RootId(idx as u8))
    }

    /// Drops a vCPU's hold on `root` (vCPU destruction). The root stays cached.
    pub fn release_root(&mut self, root: RootId) -> Result<(), Error> {
        self.root(root)?;
        if let Some(r) = self.roots.get_mut(usize::from(root.0)) {
            r.users -= 1;
        }
        Ok(())
    }

    fn new_root(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        key: RootKey,
        keep: Option<RootId>,
    ) -> Result<usize, Error> {
        let idx = match self.roots.iter().position(|r| r.pa == 0) {
            Some(i) => i,
            None => {
                // Evict the least recently used root no vCPU holds (other than `keep`, which
                // the caller is about to release but may still be running on).
                let keep = keep.map(|k| usize::from(k.0));
                let victim = (0..MAX_ROOTS)
                    .filter(|&i| Some(i) != keep)
                    .filter(|&i| self.roots.get(i).is_some_and(|r| r.users == 0))
                    .min_by_key(|&i| self.roots.get(i).map_or(u64::MAX, |r| r.last_used))
                    .ok_or(Error::NoFreeRoot)?;
                self.drop_root(tm, frames, victim);
                victim
            }
        };
        let legacy = !key.mode.is_long();
        let pa = tm.alloc_page().ok_or(Error::OutOfMemory)?;
        let mut pds = [0u64; 4];
        if legacy {
            if pa >= 1 << 32 {
                tm.free_page(pa);
                return Err(Error::PaeRootAbove4G);
            }
            for i in 0..4 {
                match tm.alloc_page() {
                    Some(pd) => {
                        if let Some(s) = pds.get_mut(i) {
                            *s = pd;
                        }
                        store(tm, pa, i, spte::pae_pdpte(pd));
                    }
                    None => {
                        for &pd in pds.iter().filter(|&&p| p != 0) {
                            tm.free_page(pd);
                        }
                        tm.free_page(pa);
                        return Err(Error::OutOfMemory);
                    }
                }
            }
        }
        if let Some(slot) = self.roots.get_mut(idx) {
            *slot = RootSlot {
                key,
                pa,
                pds,
                users: 0,
                last_used: self.tick,
            };
        }
        Ok(idx)
    }

    /// Frees a root no vCPU holds, with everything below it, immediately.
    fn drop_root(&mut self, tm: &mut dyn TableMemory, frames: &mut dyn GuestFrames, idx: usize) {
        self.clear_below_root(tm, frames, idx, true);
        if let Some(r) = self.roots.get_mut(idx) {
            let r = core::mem::replace(r, EMPTY_ROOT);
            for &pd in r.pds.iter().filter(|&&p| p != 0) {
                tm.free_page(pd);
            }
            if r.pa != 0 {
                tm.free_page(r.pa);
            }
        }
    }

    /// Unlinks every page table and intermediate table of root `idx`: freed at once when
    /// `immediate` (no CPU can hold them), else left as zombies for [`ShadowMmu::flush_done`].
    fn clear_below_root(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        idx: usize,
        immediate: bool,
    ) {
        for slot in 0..self.descs.capacity() {
            let d = self.descs.get(tm, slot);
            if d.flags & D_VALID != 0 && usize::from(d.root) == idx {
                if d.flags & D_ZOMBIE == 0 {
                    self.unlink_pt(tm, &d);
                }
                if immediate {
                    self.release_pt(tm, frames, slot, &d);
                } else {
                    self.descs.set_flags(tm, slot, d.flags | D_ZOMBIE);
                }
            }
        }
        let Some(root) = self.roots.get(idx).copied() else {
            return;
        };
        if root.pa == 0 || !root.key.mode.is_long() {
            return; // legacy roots keep their four page directories
        }
        // Post-order walk of the intermediate tables (levels hw_levels-1 ..= 2), iterative.
        let top = hw_levels(root.key.mode);
        let mut stack = [(root.pa, top, 0usize); 5];
        let mut depth = 1usize;
        while depth > 0 {
            let Some(&(pa, level, next)) = stack.get(depth - 1) else {
                break;
            };
            let child = if level > 2 {
                (next..512).find(|&i| spte::present(load(tm, pa, i)))
            } else {
                None
            };
            match child {
                Some(i) => {
                    if let Some(f) = stack.get_mut(depth - 1) {
                        f.2 = i + 1;
                    }
                    let cpa = load(tm, pa, i) & SPTE_ADDR;
                    if let Some(f) = stack.get_mut(depth) {
                        *f = (cpa, level - 1, 0);
                        depth += 1;
                    }
                }
                None => {
                    depth -= 1;
                    if depth == 0 {
                        break; // the root itself stays
                    }
                    if let Some(&(ppa, _, pnext)) = stack.get(depth - 1) {
                        store(tm, ppa, pnext - 1, 0);
                    }
                    if immediate {
                        tm.free_page(pa);
                        self.pages = self.pages.saturating_sub(1);
                    } else {
                        store(tm, pa, 0, self.zombie_pages);
                        self.zombie_pages = pa;
                    }
                }
            }
        }
    }

    /// Unpins every leaf of page table `slot` and frees it and its descriptor.
    fn release_pt(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        slot: usize,
        d: &Desc,
    ) {
        for i in 0..512 {
            let e = load(tm, d.pt, i);
            if spte::present(e) || e & SPTE_ZOMBIE != 0 {
                frames.unpin(e & SPTE_ADDR);
            }
        }
        tm.free_page(d.pt);
        self.pages = self.pages.saturating_sub(1);
        self.descs.clear(tm, slot);
    }

    /// Clears the PDE that links page table `d` into its root.
    fn unlink_pt(&self, tm: &dyn TableMemory, d: &Desc) {
        if let Some((pd, i)) = self.pde_of(tm, usize::from(d.root), d.region) {
            store(tm, pd, i, 0);
        }
    }

    /// The page directory and index whose entry maps the region of `la` in root `idx`, if the
    /// path to it exists.
    fn pde_of(&self, tm: &dyn TableMemory, idx: usize, la: u64) -> Option<(u64, usize)> {
        let root = self.roots.get(idx)?;
        let mut table = root.pa;
        let mut level = hw_levels(root.key.mode);
        while level > 2 {
            let e = load(tm, table, sidx(la, level));
            if !spte::present(e) {
                return None;
            }
            table = e & SPTE_ADDR;
            level -= 1;
        }
        Some((table, sidx(la, 2)))
    }

    /// Number of tables (intermediate + page table) missing on the path to `la`'s leaf.
    fn missing_tables(&self, tm: &dyn TableMemory, idx: usize, la: u64) -> usize {
        let Some(root) = self.roots.get(idx) else {
            return 0;
        };
        let mut table = root.pa;
        let mut level = hw_levels(root.key.mode);
        while level > 1 {
            let e = load(tm, table, sidx(la, level));
            if !spte::present(e) {
                return usize::from(level - 1);
            }
            table = e & SPTE_ADDR;
            level -= 1;
        }
        0
    }

    /// The live descriptor of root `idx` for the region containing `la`.
    fn find_desc(&self, tm: &dyn TableMemory, idx: usize, region: u64) -> Option<(usize, Desc)> {
        (0..self.descs.capacity()).find_map(|s| {
            if self.descs.flags(tm, s) & (D_VALID | D_ZOMBIE) != D_VALID {
                return None;
            }
            let d = self.descs.get(tm, s);
            (usize::from(d.root) == idx && d.region == region).then_some((s, d))
        })
    }

    /// True if a live shadow page table was derived from guest paging-structure page `gpa`.
    fn is_tracked(&self, tm: &dyn TableMemory, gpa: u64) -> bool {
        (0..self.descs.capacity()).any(|s| {
            self.descs.flags(tm, s) & (D_VALID | D_ZOMBIE) == D_VALID
                && self.descs.get(tm, s).chain().contains(&gpa)
        })
    }

    /// Whether any guest paging-structure page is tracked (write-protected) at `gpa`'s page.
    pub fn is_write_protected(&self, tm: &dyn TableMemory, gpa: u64) -> bool {
        self.is_tracked(tm, gpa & !0xFFF)
    }

    /// Clears R/W in every live leaf mapping host page `hpa`. True if one changed.
    fn write_protect_hpa(&self, tm: &dyn TableMemory, hpa: u64) -> bool {
        let mut changed = false;
        for s in 0..self.descs.capacity() {
            if self.descs.flags(tm, s) & (D_VALID | D_ZOMBIE) != D_VALID {
                continue;
            }
            let pt = self.descs.get(tm, s).pt;
            for i in 0..512 {
                let e = load(tm, pt, i);
                if spte::present(e) && e & SPTE_ADDR == hpa && e & crate::walk::PTE_RW != 0 {
                    store(tm, pt, i, e & !(crate::walk::PTE_RW | crate::walk::PTE_D));
                    changed = true;
                }
            }
        }
        changed
    }

    /// Makes leaf `i` of live page table `slot` not present, keeping its pin until the flush.
    fn zap_leaf(&self, tm: &dyn TableMemory, slot: usize, d: &Desc, i: usize) -> bool {
        let e = load(tm, d.pt, i);
        if !spte::present(e) {
            return false;
        }
        store(tm, d.pt, i, (e & SPTE_ADDR) | SPTE_ZOMBIE);
        self.descs.set_flags(tm, slot, d.flags | D_LEAF_ZOMBIES);
        true
    }

    /// Unlinks live page table `slot`; it is freed by [`ShadowMmu::flush_done`].
    fn zap_pt(&self, tm: &dyn TableMemory, slot: usize, d: &Desc) {
        self.unlink_pt(tm, d);
        self.descs.set_flags(tm, slot, d.flags | D_ZOMBIE);
    }

    /// Unlinks everything below every root (memslot changes, shadow-page exhaustion). Freed by
    /// [`ShadowMmu::flush_done`] after the returned flush.
    pub fn zap_all(&mut self, tm: &mut dyn TableMemory, frames: &mut dyn GuestFrames) -> Flush {
        for idx in 0..MAX_ROOTS {
            if self.roots.get(idx).is_some_and(|r| r.pa != 0) {
                self.clear_below_root(tm, frames, idx, false);
            }
        }
        Flush::All
    }

    /// Releases what zaps left behind (unpins host pages, frees tables). Call after the TLB
    /// flush requested with [`Flush::All`] has completed on every vCPU.
    pub fn flush_done(&mut self, tm: &mut dyn TableMemory, frames: &mut dyn GuestFrames) {
        for slot in 0..self.descs.capacity() {
            let flags = self.descs.flags(tm, slot);
            if flags & D_VALID == 0 {
                continue;
            }
            let d = self.descs.get(tm, slot);
            if flags & D_ZOMBIE != 0 {
                self.release_pt(tm, frames, slot, &d);
            } else if flags & D_LEAF_ZOMBIES != 0 {
                for i in 0..512 {
                    let e = load(tm, d.pt, i);
                    if e & SPTE_ZOMBIE != 0 && !spte::present(e) {
                        frames.unpin(e & SPTE_ADDR);
                        store(tm, d.pt, i, 0);
                    }
                }
                self.descs.set_flags(tm, slot, flags & !D_LEAF_ZOMBIES);
            }
        }
        while self.zombie_pages != 0 {
            let pa = self.zombie_pages;
            self.zombie_pages = load(tm, pa, 0);
            tm.free_page(pa);
            self.pages = self.pages.saturating_sub(1);
        }
    }

    /// Frees every page and drops every pin (VM teardown; no vCPU runs).
    pub fn teardown(&mut self, tm: &mut dyn TableMemory, frames: &mut dyn GuestFrames) {
        self.flush_done(tm, frames);
        for idx in 0..MAX_ROOTS {
            if self.roots.get(idx).is_some_and(|r| r.pa != 0) {
                self.drop_root(tm, frames, idx);
            }
        }
        for pa in self.descs.take_pages() {
            tm.free_page(pa);
        }
    }

    /// The shadow leaf entry mapping `la` in `root`, if present (inspection and tests).
    pub fn lookup(&self, tm: &dyn TableMemory, root: RootId, la: u64) -> Option<u64> {
        let r = self.root(root).ok()?;
        let la = la & la_mask(r.key.mode);
        let (pd, i) = self.pde_of(tm, usize::from(root.0), la)?;
        let pde = load(tm, pd, i);
        if !spte::present(pde) {
            return None;
        }
        let e = load(tm, pde & SPTE_ADDR, sidx(la, 1));
        spte::present(e).then_some(e)
    }

    /// A guest write of `len` bytes at `gpa` to a write-protected page (the core emulated it):
    /// zaps the shadow entries derived from the bytes written.
    pub fn guest_pt_write(&mut self, tm: &mut dyn TableMemory, gpa: u64, len: u64) -> Flush {
        let page = gpa & !0xFFF;
        let off = gpa & 0xFFF;
        let last_off = off.saturating_add(len.max(1) - 1).min(0xFFF);
        let mut flush = Flush::None;
        for slot in 0..self.descs.capacity() {
            if self.descs.flags(tm, slot) & (D_VALID | D_ZOMBIE) != D_VALID {
                continue;
            }
            let d = self.descs.get(tm, slot);
            let Some(mode) = self.roots.get(usize::from(d.root)).map(|r| r.key.mode) else {
                continue;
            };
            let depth = level_geometry(mode).count();
            let full = usize::from(d.chain_len) == depth;
            for (k, (shift, mask, bytes)) in level_geometry(mode).enumerate() {
                if d.chain.get(k) != Some(&page) || k >= usize::from(d.chain_len) {
                    continue;
                }
                let (first, last) = (off / bytes, last_off / bytes);
                if full && k + 1 == depth {
                    // The page table itself: one guest PTE per shadow leaf.
                    let base = (d.region >> 12) & mask;
                    for i in first.max(base)..=last.min(base + 511) {
                        if self.zap_leaf(tm, slot, &self.descs.get(tm, slot), (i - base) as usize) {
                            flush = Flush::All;
                        }
                    }
                } else {
                    let i = (d.region >> shift) & mask;
                    if (first..=last).contains(&i) {
                        self.zap_pt(tm, slot, &self.descs.get(tm, slot));
                        flush = Flush::All;
                        break;
                    }
                }
            }
        }
        flush
    }

    /// Guest INVLPG of `la` on a vCPU running on `root` (also INVPCID individual-address with
    /// `root` = each root): zaps the shadow entries of the guest page containing `la`.
    pub fn invlpg(
        &mut self,
        tm: &mut dyn TableMemory,
        root: RootId,
        la: u64,
    ) -> Result<Flush, Error> {
        self.root(root)?;
        Ok(self.invlpg_in(tm, usize::from(root.0), la))
    }

    /// [`ShadowMmu::invlpg`] in root slot `idx`.
    fn invlpg_in(&mut self, tm: &mut dyn TableMemory, idx: usize, la: u64) -> Flush {
        let Some(mode) = self.roots.get(idx).map(|r| r.key.mode) else {
            return Flush::None;
        };
        let la = la & la_mask(mode);
        let depth = level_geometry(mode).count();
        let mut flush = Flush::None;
        for slot in 0..self.descs.capacity() {
            if self.descs.flags(tm, slot) & (D_VALID | D_ZOMBIE) != D_VALID {
                continue;
            }
            let d = self.descs.get(tm, slot);
            if usize::from(d.root) != idx {
                continue;
            }
            let leaf_shift = if usize::from(d.chain_len) == depth || d.chain_len == 0 {
                12
            } else {
                level_geometry(mode)
                    .nth(usize::from(d.chain_len) - 1)
                    .map_or(12, |(shift, _, _)| shift)
            };
            let cover = leaf_shift.max(21);
            if d.region >> cover != la >> cover {
                continue;
            }
            if leaf_shift == 12 {
                if self.zap_leaf(tm, slot, &d, sidx(la, 1)) {
                    flush = Flush::All;
                }
            } else {
                self.zap_pt(tm, slot, &d);
                flush = Flush::All;
            }
        }
        flush
    }

    /// INVPCID individual-address: [`ShadowMmu::invlpg`] in every cached root (roots are not
    /// tagged with PCIDs, so this is the conservative choice). (Single-context and all-context INVPCID, and CR3 loads, need no shadow change: cached
    /// roots are kept exactly in sync with guest tables by write protection; the core flushes
    /// the hardware TLB.)
    pub fn invpcid_address(&mut self, tm: &mut dyn TableMemory, la: u64) -> Flush {
        let mut flush = Flush::None;
        for idx in 0..MAX_ROOTS {
            if self.roots.get(idx).is_some_and(|r| r.pa != 0) {
                flush = flush.merge(self.invlpg_in(tm, idx, la));
            }
        }
        flush
    }

    /// Handles a #PF the hardware raised while the guest ran on `root`.
    ///
    /// `error_code` is the hardware's; `cpl` and `ac` are the guest's CPL and RFLAGS.AC at the
    /// fault; `regs` the guest's paging registers (matching the root).
    #[allow(clippy::too_many_arguments)]
    pub fn page_fault(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        mem: &dyn GuestMemory,
        root: RootId,
        regs: &PagingRegs,
        cpl: u8,
        ac: bool,
        la: u64,
        error_code: u32,
    ) -> Result<FaultResult, Error> {
        let r = *self.root(root)?;
        if r.key != RootKey::from_regs(regs, &self.cpu) {
            return Err(Error::BadRoot);
        }
        let idx = usize::from(root.0);
        let mode = r.key.mode;
        let la = la & la_mask(mode);
        let kind = if error_code & PFEC_I != 0 {
            AccessKind::Fetch
        } else if error_code & PFEC_W != 0 {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let access = if error_code & PFEC_U != 0 {
            Access {
                kind,
                cpl: 3,
                implicit: false,
                ac,
                update_ad: true,
            }
        } else {
            // A supervisor access at CPL 3 can only be implicit.
            Access {
                kind,
                cpl: if cpl == 3 { 0 } else { cpl },
                implicit: cpl == 3,
                ac,
                update_ad: true,
            }
        };
        let done = |outcome, flush| Ok(FaultResult { outcome, flush });
        let t = match walk(mem, regs, &self.cpu, &access, la) {
            Ok(t) => t,
            Err(WalkError::PageFault(pf)) => {
                // Whatever the shadow holds for `la` is stale: drop it.
                let flush = match self.find_desc(tm, idx, la & !(REGION - 1)) {
                    Some((slot, d)) if self.zap_leaf(tm, slot, &d, sidx(la, 1)) => Flush::All,
                    _ => Flush::None,
                };
                return done(FaultOutcome::InjectPf(pf.error_code), flush);
            }
            Err(WalkError::NotRam(n)) => return done(FaultOutcome::NotRam(n), Flush::None),
            Err(WalkError::Contended) => return done(FaultOutcome::Retry, Flush::None),
        };
        let Some(frame) = frames.pin(t.gpa & !0xFFF) else {
            return done(FaultOutcome::Mmio { gpa: t.gpa }, Flush::None);
        };
        match self.install(tm, frames, idx, &r, &t, la, frame) {
            Ok(Installed::Changed(flush)) => {
                let outcome = self
                    .write_outcome(tm, kind, &t, frame)
                    .unwrap_or(FaultOutcome::Retry);
                done(outcome, flush)
            }
            Ok(Installed::Unchanged(flush)) => {
                let wp0_supervisor_write = kind == AccessKind::Write
                    && error_code & PFEC_U == 0
                    && regs.cr0 & crate::regs::CR0_WP == 0;
                let outcome = match self.write_outcome(tm, kind, &t, frame) {
                    Some(o) => o,
                    // The hardware runs with CR0.WP = 1, which also makes PKRU.WD apply to
                    // supervisor writes: the guest's CR0.WP = 0 semantics need emulation.
                    None if error_code & PFEC_P != 0 && wp0_supervisor_write => {
                        FaultOutcome::Emulate { gpa: t.gpa }
                    }
                    // The entry already allows the access as the guest's tables do: a stale
                    // TLB entry (another vCPU's leaf upgrade) made the fault spurious. Retry
                    // after a local flush, as KVM does. (An implicit supervisor access at CPL < 3
                    // with RFLAGS.AC = 1 to a user page, which SMAP blocks, looks the same and
                    // is retried too: the hardware error code cannot tell implicit accesses.)
                    None => FaultOutcome::Retry,
                };
                done(outcome, flush.merge(Flush::Page(la)))
            }
            Ok(Installed::Busy(flush)) => done(FaultOutcome::Retry, flush),
            Err(e) => Err(e),
        }
    }

    /// For a write the installed leaf does not allow: why, as the outcome to return.
    fn write_outcome(
        &self,
        tm: &dyn TableMemory,
        kind: AccessKind,
        t: &Translation,
        frame: HostFrame,
    ) -> Option<FaultOutcome> {
        if kind != AccessKind::Write {
            return None;
        }
        if !frame.writable {
            Some(FaultOutcome::Mmio { gpa: t.gpa })
        } else if !t.perms.writable || self.is_tracked(tm, t.gpa & !0xFFF) {
            Some(FaultOutcome::Emulate { gpa: t.gpa })
        } else {
            None
        }
    }

    /// Installs the leaf for translation `t` of `la` in root `idx`, consuming the pin `frame`.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        tm: &mut dyn TableMemory,
        frames: &mut dyn GuestFrames,
        idx: usize,
        r: &RootSlot,
        t: &Translation,
        la: u64,
        frame: HostFrame,
    ) -> Result<Installed, Error> {
        let region = la & !(REGION - 1);
        let mut flush = Flush::None;
        let existing = self.find_desc(tm, idx, region);
        let stale = existing
            .as_ref()
            .is_some_and(|(_, d)| d.chain() != t.tables());
        // Make room first: nothing below is undone on failure except what we allocated.
        let need = self.missing_tables(tm, idx, la) + usize::from(stale);
        if self.pages + need > self.max_pages {
            self.evict_unused_roots(tm, frames);
            if self.pages + need > self.max_pages {
                frames.unpin(frame.hpa);
                return Ok(Installed::Busy(self.zap_all(tm, frames)));
            }
        }
        if self.descs.free_slot(tm).is_none() && self.descs.can_grow() {
            let pa = tm.alloc_page().ok_or_else(|| {
                frames.unpin(frame.hpa);
                Error::OutOfMemory
            })?;
            self.descs.add_page(pa);
        }
        // Guest tables this translation depends on that were not write-protected yet.
        let mut newly = [0u64; 5];
        let mut n = 0;
        for &g in t.tables() {
            if !newly.get(..n).unwrap_or(&[]).contains(&g) && !self.is_tracked(tm, g) {
                if let Some(s) = newly.get_mut(n) {
                    *s = g;
                    n += 1;
                }
            }
        }
        let (slot, d) = match existing {
            Some((slot, d)) if !stale => (slot, d),
            other => {
                if let Some((slot, d)) = other {
                    self.zap_pt(tm, slot, &d);
                    flush = Flush::All;
                }
                match self.new_pt(tm, idx, r, region, t) {
                    Ok(x) => x,
                    Err(e) => {
                        frames.unpin(frame.hpa);
                        return Err(e);
                    }
                }
            }
        };
        for &g in newly.get(..n).unwrap_or(&[]) {
            if let Some(hf) = frames.pin(g) {
                if self.write_protect_hpa(tm, hf.hpa) {
                    flush = Flush::All;
                }
                frames.unpin(hf.hpa);
            }
        }
        let writable =
            t.perms.writable && t.dirty && frame.writable && !self.is_tracked(tm, t.gpa & !0xFFF);
        let new = spte::leaf(frame.hpa, t, writable, r.key.mode.is_long());
        let i = sidx(la, 1);
        let old = load(tm, d.pt, i);
        if old & SPTE_ZOMBIE != 0 {
            // A zap of this slot still waits for its flush.
            frames.unpin(frame.hpa);
            return Ok(Installed::Busy(Flush::All));
        }
        if spte::present(old) {
            if old & SPTE_ADDR != frame.hpa {
                // Different host page: zap the old one (its pin waits for the flush); the retry
                // installs the new one.
                frames.unpin(frame.hpa);
                self.zap_leaf(tm, slot, &d, i);
                return Ok(Installed::Busy(Flush::All));
            }
            frames.unpin(frame.hpa); // the old leaf's pin covers it
            if old == new {
                return Ok(Installed::Unchanged(flush));
            }
            store(tm, d.pt, i, new);
            let reduced = (old & !new) & (crate::walk::PTE_RW | crate::walk::PTE_US) != 0
                || (new & !old) & crate::walk::PTE_XD != 0;
            let f = if reduced { Flush::All } else { Flush::Page(la) };
            return Ok(Installed::Changed(flush.merge(f)));
        }
        store(tm, d.pt, i, new);
        Ok(Installed::Changed(flush))
    }

    /// Creates the page table (and missing intermediate tables) for `region` in root `idx`.
    fn new_pt(
        &mut self,
        tm: &mut dyn TableMemory,
        idx: usize,
        r: &RootSlot,
        region: u64,
        t: &Translation,
    ) -> Result<(usize, Desc), Error> {
        let slot = self.descs.free_slot(tm).ok_or(Error::OutOfMemory)?;
        let mut table = r.pa;
        let mut level = hw_levels(r.key.mode);
        while level > 1 {
            let i = sidx(region, level);
            let e = load(tm, table, i);
            table = if spte::present(e) {
                e & SPTE_ADDR
            } else {
                let pa = tm.alloc_page().ok_or(Error::OutOfMemory)?;
                self.pages += 1;
                store(tm, table, i, spte::nonleaf(pa));
                pa
            };
            level -= 1;
        }
        let mut chain = [0u64; 5];
        for (c, &g) in chain.iter_mut().zip(t.tables()) {
            *c = g;
        }
        let d = Desc {
            pt: table,
            flags: D_VALID,
            root: idx as u8,
            chain_len: t.table_count,
            region,
            chain,
        };
        self.descs.set(tm, slot, &d);
        Ok((slot, d))
    }

    /// Frees every cached root no vCPU holds.
    fn evict_unused_roots(&mut self, tm: &mut dyn TableMemory, frames: &mut dyn GuestFrames) {
        for idx in 0..MAX_ROOTS {
            if self
                .roots
                .get(idx)
                .is_some_and(|r| r.pa != 0 && r.users == 0)
            {
                self.drop_root(tm, frames, idx);
            }
        }
    }
}

#[cfg(test)]
impl ShadowMmu {
    /// Calls `f(root index, linear address, entry)` for every present leaf of a live page table,
    /// and returns the number of zombie leaves and zombie page tables still pinned.
    pub(crate) fn for_each_leaf(
        &self,
        tm: &dyn TableMemory,
        mut f: impl FnMut(usize, u64, u64),
    ) -> usize {
        let mut zombies = 0;
        for s in 0..self.descs.capacity() {
            let flags = self.descs.flags(tm, s);
            if flags & D_VALID == 0 {
                continue;
            }
            let d = self.descs.get(tm, s);
            for i in 0..512u64 {
                let e = load(tm, d.pt, i as usize);
                if flags & D_ZOMBIE != 0 {
                    zombies += usize::from(spte::present(e) || e & SPTE_ZOMBIE != 0);
                } else if spte::present(e) {
                    f(usize::from(d.root), d.region + i * 4096, e);
                } else {
                    zombies += usize::from(e & SPTE_ZOMBIE != 0);
                }
            }
        }
        zombies
    }

    /// The root slot index of a root id.
    pub(crate) fn root_index(root: RootId) -> usize {
        usize::from(root.0)
    }
}

/// What [`ShadowMmu::install`] did.
enum Installed {
    /// A leaf was written (new, or more or less permissive).
    Changed(Flush),
    /// The leaf already was exactly this translation.
    Unchanged(Flush),
    /// Nothing installed yet: retry after the flush (and `flush_done`).
    Busy(Flush),
}
