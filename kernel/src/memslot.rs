//! Guest memory slots (`KVM_SET_USER_MEMORY_REGION`), dirty logging and guest-page pinning.
//!
//! The rules are Linux's `kvm_set_memory_region()`: page alignment, one address space, slot ids
//! below [`KVM_USER_MEM_SLOTS`], no overlap on create/move (`EEXIST`), delete with size 0 (of an
//! existing slot, else `EINVAL`), a modification may only move the slot or change
//! `KVM_MEM_LOG_DIRTY_PAGES` (same size, same user address, same `KVM_MEM_READONLY`).
//! Locking: a [`Memslots`] lives inside the VM lock (`[m]` in `vm.rs`).

use crate::errno::{KResult, EEXIST, EFAULT, EINVAL, ENOENT};
use crate::hmem::HSlice;
use crate::host::{Host, MmRef, PAGE_SIZE};

/// Number of user memslots (`KVM_CAP_NR_MEMSLOTS`); Linux x86 had 509 until 5.x.
pub const KVM_USER_MEM_SLOTS: usize = 509;
/// Largest slot in pages (Linux `KVM_MEM_MAX_NR_PAGES`; dirty bitmaps are indexed by u32).
pub const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;
/// `KVM_MEM_LOG_DIRTY_PAGES`.
pub const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// `KVM_MEM_READONLY`.
pub const KVM_MEM_READONLY: u32 = 1 << 1;
/// End of the user address range a slot may name (Linux x86-64 `TASK_SIZE_MAX`, 4-level paging;
/// below OpenBSD's `VM_MAXUSER_ADDRESS` too, which the pin service checks on its own).
pub const USER_VA_END: u64 = (1 << 47) - PAGE_SIZE as u64;

const PAGE_SHIFT: u32 = 12;

/// A `KVM_SET_USER_MEMORY_REGION` request, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// `slot` (address space in the high 16 bits, id in the low 16).
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes (0 deletes).
    pub memory_size: u64,
    /// Start of the backing range in the VM's process.
    pub userspace_addr: u64,
}

/// What a successful update changed, for the VM to flush second-level mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed (same region set again).
    None,
    /// A new slot.
    Create,
    /// A slot was deleted; its old guest range was `[gfn, gfn+npages)`.
    Delete { gfn: u64, npages: u64 },
    /// A slot moved away from `[gfn, gfn+npages)`.
    Move { gfn: u64, npages: u64 },
    /// Only `KVM_MEM_LOG_DIRTY_PAGES` changed (turned on: write-protect the slot).
    Flags { log_on: bool },
}

/// The result of [`Memslots::pin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// Host physical address of the wired page.
    pub pa: u64,
    /// A read-only wiring (user address, physical address) this pin replaced, to unwire once
    /// no second-level mapping can reach it.
    pub stale: Option<(u64, u64)>,
}

/// One memslot.
pub struct Slot<H: Host> {
    /// First guest frame.
    pub base_gfn: u64,
    /// Number of pages (0 = slot unused).
    pub npages: u64,
    /// Backing user address.
    pub userspace_addr: u64,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    dirty: Option<HSlice<u64, H>>,
    /// Wired pages by page index: `pa | PIN_PRESENT | PIN_WRITABLE` (allocated at first pin).
    pins: Option<HSlice<u64, H>>,
}

const PIN_PRESENT: u64 = 1;
const PIN_WRITABLE: u64 = 2;

impl<H: Host> Slot<H> {
    fn contains(&self, gfn: u64) -> bool {
        self.npages != 0 && gfn >= self.base_gfn && gfn - self.base_gfn < self.npages
    }
}

/// The memslots of one VM (one address space), with pins and dirty bitmaps.
pub struct Memslots<H: Host> {
    host: &'static H,
    slots: HSlice<Slot<H>, H>,
    nr_pages: u64,
    nr_pins: usize,
}

/// Bytes of a dirty bitmap for `npages` (Linux: aligned to `unsigned long`).
pub fn dirty_bitmap_bytes(npages: u64) -> u64 {
    npages.div_ceil(64) * 8
}

impl<H: Host> Memslots<H> {
    /// Empty slots.
    #[inline(never)]
    pub fn new(host: &'static H) -> KResult<Self> {
        let slots = HSlice::new_with(host, KVM_USER_MEM_SLOTS, |_| Slot {
            base_gfn: 0,
            npages: 0,
            userspace_addr: 0,
            flags: 0,
            dirty: None,
            pins: None,
        })?;
        Ok(Self {
            host,
            slots,
            nr_pages: 0,
            nr_pins: 0,
        })
    }

    /// Applies a `KVM_SET_USER_MEMORY_REGION`; pins of a deleted or moved slot are dropped.
    /// `unmap(gfn, npages)` runs for the old range of a deleted or moved slot before its pages
    /// are unwired: it must remove every second-level mapping of the range and complete the
    /// TLB invalidation, so that no guest can reach a page after it was unwired.
    pub fn set(
        &mut self,
        mm: MmRef,
        mem: &Region,
        mut unmap: impl FnMut(u64, u64),
    ) -> KResult<Change> {
        if mem.flags & !(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY) != 0 {
            return Err(EINVAL);
        }
        let as_id = mem.slot >> 16;
        let id = (mem.slot & 0xffff) as usize;
        if id >= KVM_USER_MEM_SLOTS {
            return Err(EINVAL);
        }
        let page_mask = PAGE_SIZE as u64 - 1;
        if mem.memory_size & page_mask != 0 || mem.guest_phys_addr & page_mask != 0 {
            return Err(EINVAL);
        }
        if mem.userspace_addr & page_mask != 0
            || mem
                .userspace_addr
                .checked_add(mem.memory_size)
                .is_none_or(|e| e > USER_VA_END)
        {
            return Err(EINVAL);
        }
        if as_id != 0 {
            return Err(EINVAL);
        }
        if mem.guest_phys_addr.checked_add(mem.memory_size).is_none() {
            return Err(EINVAL);
        }
        let npages = mem.memory_size >> PAGE_SHIFT;
        if npages > KVM_MEM_MAX_NR_PAGES {
            return Err(EINVAL);
        }
        let base_gfn = mem.guest_phys_addr >> PAGE_SHIFT;
        let old = self.slots.get(id).ok_or(EINVAL)?;
        let (old_gfn, old_npages, old_uaddr, old_flags) =
            (old.base_gfn, old.npages, old.userspace_addr, old.flags);

        if npages == 0 {
            if old_npages == 0 {
                return Err(EINVAL);
            }
            unmap(old_gfn, old_npages);
            self.unpin_slot(mm, id);
            let s = self.slots.get_mut(id).ok_or(EINVAL)?;
            s.npages = 0;
            s.dirty = None;
            self.nr_pages -= old_npages;
            return Ok(Change::Delete {
                gfn: old_gfn,
                npages: old_npages,
            });
        }

        let change = if old_npages == 0 {
            self.nr_pages.checked_add(npages).ok_or(EINVAL)?;
            Change::Create
        } else {
            if mem.userspace_addr != old_uaddr
                || npages != old_npages
                || (mem.flags ^ old_flags) & KVM_MEM_READONLY != 0
            {
                return Err(EINVAL);
            }
            if base_gfn != old_gfn {
                Change::Move {
                    gfn: old_gfn,
                    npages: old_npages,
                }
            } else if mem.flags != old_flags {
                Change::Flags {
                    log_on: mem.flags & KVM_MEM_LOG_DIRTY_PAGES != 0,
                }
            } else {
                return Ok(Change::None);
            }
        };
        if matches!(change, Change::Create | Change::Move { .. }) {
            let end = base_gfn + npages;
            let overlap = self.slots.iter().enumerate().any(|(i, s)| {
                i != id && s.npages != 0 && s.base_gfn < end && base_gfn < s.base_gfn + s.npages
            });
            if overlap {
                return Err(EEXIST);
            }
        }
        // Dirty bitmap: kept across move/flags-only when logging stays on, else (re)allocated.
        let host = self.host;
        let want_log = mem.flags & KVM_MEM_LOG_DIRTY_PAGES != 0;
        let new_bitmap = if !want_log {
            None
        } else if let Some(b) = self.slots.get_mut(id).and_then(|s| s.dirty.take()) {
            Some(b)
        } else {
            let words = usize::try_from(dirty_bitmap_bytes(npages) / 8).map_err(|_| EINVAL)?;
            Some(HSlice::new_zeroed(host, words)?)
        };
        if matches!(change, Change::Move { .. }) {
            unmap(old_gfn, old_npages);
            self.unpin_slot(mm, id);
        }
        let s = self.slots.get_mut(id).ok_or(EINVAL)?;
        s.base_gfn = base_gfn;
        s.npages = npages;
        s.userspace_addr = mem.userspace_addr;
        s.flags = mem.flags;
        s.dirty = new_bitmap;
        if change == Change::Create {
            self.nr_pages += npages;
        }
        Ok(change)
    }

    /// The slot containing `gfn`, with its id.
    pub fn find(&self, gfn: u64) -> Option<(usize, &Slot<H>)> {
        self.slots.iter().enumerate().find(|(_, s)| s.contains(gfn))
    }

    /// The slot with id `id`, if in use.
    pub fn slot(&self, id: usize) -> Option<&Slot<H>> {
        self.slots.get(id).filter(|s| s.npages != 0)
    }

    /// Number of slots in use.
    pub fn nr_used(&self) -> usize {
        self.slots.iter().filter(|s| s.npages != 0).count()
    }

    /// User address backing guest physical address `gpa` (`EFAULT` if no slot covers it).
    pub fn gpa_to_uaddr(&self, gpa: u64, write: bool) -> KResult<u64> {
        let gfn = gpa >> PAGE_SHIFT;
        let (_, s) = self.find(gfn).ok_or(EFAULT)?;
        if write && s.flags & KVM_MEM_READONLY != 0 {
            return Err(EFAULT);
        }
        Ok(s.userspace_addr + ((gfn - s.base_gfn) << PAGE_SHIFT) + (gpa & (PAGE_SIZE as u64 - 1)))
    }

    /// Records a guest write to `gfn` in its slot's dirty bitmap (if logging is on).
    pub fn mark_dirty(&mut self, gfn: u64) {
        if let Some((_, s)) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.contains(gfn))
        {
            let rel = gfn - s.base_gfn;
            if let Some(b) = s.dirty.as_mut() {
                if let Some(w) = b.get_mut((rel / 64) as usize) {
                    *w |= 1 << (rel % 64);
                }
            }
        }
    }

    /// Wires the guest page `gfn` for a second-level mapping and returns its host physical address.
    /// `EFAULT` when no slot covers it (the caller treats that as MMIO) or a write hits a
    /// read-only slot.
    ///
    /// Upgrading a read-only wiring to a writable one may give another page (copy-on-write):
    /// the old wiring is then returned in [`Pinned::stale`], and the caller unwires it with
    /// [`Memslots::unpin_stale`] only after the old second-level mapping is gone and flushed.
    pub fn pin(&mut self, mm: MmRef, gfn: u64, write: bool) -> KResult<Pinned> {
        let host = self.host;
        let (id, _) = self.find(gfn).ok_or(EFAULT)?;
        let s = self.slots.get_mut(id).ok_or(EFAULT)?;
        if write && s.flags & KVM_MEM_READONLY != 0 {
            return Err(EFAULT);
        }
        let idx = usize::try_from(gfn - s.base_gfn).map_err(|_| EFAULT)?;
        let uaddr = s.userspace_addr + ((gfn - s.base_gfn) << PAGE_SHIFT);
        if s.pins.is_none() {
            let n = usize::try_from(s.npages).map_err(|_| EFAULT)?;
            s.pins = Some(HSlice::new_zeroed(host, n)?);
        }
        let e = s.pins.as_mut().and_then(|p| p.get_mut(idx)).ok_or(EFAULT)?;
        let mut stale = None;
        if *e & PIN_PRESENT != 0 {
            if *e & PIN_WRITABLE != 0 || !write {
                return Ok(Pinned {
                    pa: *e & !0xfff,
                    stale: None,
                });
            }
            // Upgrade a read-only wiring to a writable one; the old one is released later.
            stale = Some((uaddr, *e & !0xfff));
        }
        let pa = host.pin_page(mm, uaddr, write)?;
        *e = (pa & !0xfff) | PIN_PRESENT | if write { PIN_WRITABLE } else { 0 };
        if stale.is_none() {
            self.nr_pins += 1;
        }
        Ok(Pinned { pa, stale })
    }

    /// Unwires the old wiring [`Memslots::pin`] replaced (see there).
    pub fn unpin_stale(&mut self, mm: MmRef, stale: (u64, u64)) {
        self.host.unpin_page(mm, stale.0, stale.1, false);
    }

    /// Number of wired pages.
    pub fn nr_pins(&self) -> usize {
        self.nr_pins
    }

    fn unpin_slot(&mut self, mm: MmRef, id: usize) {
        let host = self.host;
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let Some(pins) = s.pins.take() else { return };
        for (i, e) in pins.iter().enumerate() {
            if e & PIN_PRESENT != 0 {
                let uaddr = s.userspace_addr + ((i as u64) << PAGE_SHIFT);
                host.unpin_page(mm, uaddr, e & !0xfff, e & PIN_WRITABLE != 0);
                self.nr_pins -= 1;
            }
        }
    }

    /// Unwires every page (VM teardown).
    pub fn unpin_all(&mut self, mm: MmRef) {
        for id in 0..self.slots.len() {
            self.unpin_slot(mm, id);
        }
    }

    /// `KVM_GET_DIRTY_LOG`: copies the slot's bitmap to `uaddr` and clears it (Linux's
    /// non-manual-protect mode). `EINVAL` for a bad slot id, `ENOENT` without a bitmap.
    /// Returns the slot's guest range, whose mappings the caller drops so that the next
    /// write to each page faults and is logged again.
    pub fn get_dirty_log(&mut self, slot: u32, uaddr: u64) -> KResult<(u64, u64)> {
        let as_id = slot >> 16;
        let id = (slot & 0xffff) as usize;
        if as_id != 0 || id >= KVM_USER_MEM_SLOTS {
            return Err(EINVAL);
        }
        let host = self.host;
        let s = self.slots.get_mut(id).ok_or(EINVAL)?;
        if s.npages == 0 {
            return Err(ENOENT);
        }
        let range = (s.base_gfn, s.npages);
        let b = s.dirty.as_mut().ok_or(ENOENT)?;
        // Snapshot-and-clear in chunks so the stack copy stays small.
        let mut chunk = [0u64; 64];
        let mut off = 0usize;
        let mut res = Ok(());
        for words in b.chunks_mut(64) {
            let n = words.len();
            let dst = chunk.get_mut(..n).ok_or(EINVAL)?;
            dst.copy_from_slice(words);
            words.iter_mut().for_each(|w| *w = 0);
            if res.is_ok() {
                let bytes = zerocopy::IntoBytes::as_bytes(&*dst);
                res = host.copyout(uaddr.wrapping_add(off as u64), bytes);
            }
            off += n * 8;
        }
        res.map(|()| range)
    }
}
