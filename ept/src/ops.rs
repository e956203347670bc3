//! The visitors that implement map, remove, permission changes and dirty harvesting on top of
//! the range walker.

use core::sync::atomic::Ordering;

use crate::format::{Attrs, Perms};
use crate::table::{RemovedLeaf, Table};
use crate::walk::{Slot, Step, Visitor};
use crate::{Error, PageSize, TableMemory};

/// Maps a range to a contiguous host range.
pub(crate) struct Map {
    /// HPA of the range's first page.
    pub hpa_base: u64,
    pub attrs: Attrs,
    /// Largest level a leaf may be written at (1..=3).
    pub max_level: u8,
    /// GPA being handled when the walk stopped; everything before it was mapped by this walk.
    pub at: u64,
}

impl<M: TableMemory> Visitor<M> for Map {
    const PRUNE: bool = false;

    fn empty(&mut self, t: &mut Table<M>, s: &Slot, start: u64, end: u64) -> Result<Step, Error> {
        self.at = s.start.max(start);
        let hpa = self.hpa_base + (self.at - start);
        let size = s.end - s.start;
        if s.level <= self.max_level && s.inside(start, end) && hpa.is_multiple_of(size) {
            let e = t.format().encode_leaf(s.level, hpa, &self.attrs, false, false);
            t.store(s.table, s.index, e);
            return Ok(Step::Next);
        }
        // Level 1 always fits (4 KiB-aligned range), so here s.level > 1.
        let child = t.alloc()?;
        t.store(s.table, s.index, t.format().table_entry(child));
        Ok(Step::Descend(child))
    }

    fn leaf(&mut self, _t: &mut Table<M>, s: &Slot, _raw: u64, start: u64, _end: u64) -> Result<Step, Error> {
        self.at = s.start.max(start);
        Err(Error::AlreadyMapped(self.at))
    }
}

/// Removes every leaf in the range, reporting each; prunes tables left empty.
pub(crate) struct Remove<F: FnMut(RemovedLeaf)> {
    pub report: F,
}

impl<M: TableMemory, F: FnMut(RemovedLeaf)> Visitor<M> for Remove<F> {
    const PRUNE: bool = true;

    fn leaf(&mut self, t: &mut Table<M>, s: &Slot, raw: u64, start: u64, end: u64) -> Result<Step, Error> {
        if !s.inside(start, end) {
            // Callers split the range's ends first; this only guards the invariant.
            return t.split(s, raw).map(Step::Descend);
        }
        let old = t.entry(s.table, s.index).swap(0, Ordering::AcqRel);
        let leaf = t.format().decode_leaf(old, s.level);
        t.need_flush();
        (self.report)(RemovedLeaf {
            gpa: s.start,
            hpa: leaf.hpa,
            size: PageSize::from_level(s.level).unwrap_or(PageSize::Size4K),
            dirty: leaf.dirty,
        });
        Ok(Step::Next)
    }
}

/// Clears then sets rights of every leaf in the range.
pub(crate) struct ChangePerms {
    pub clear: Perms,
    pub set: Perms,
}

impl<M: TableMemory> Visitor<M> for ChangePerms {
    const PRUNE: bool = false;

    fn leaf(&mut self, t: &mut Table<M>, s: &Slot, raw: u64, start: u64, end: u64) -> Result<Step, Error> {
        if !s.inside(start, end) {
            return t.split(s, raw).map(Step::Descend);
        }
        let format = t.format();
        let old_perms = format.decode_leaf(raw, s.level).attrs.perms;
        let new_perms = (old_perms - self.clear) | self.set;
        if new_perms == old_perms {
            return Ok(Step::Next);
        }
        // Rights are not A/D flags, so the processor cannot change them under us; the update
        // only has to keep the flags it may set meanwhile.
        let _ = t.entry(s.table, s.index).fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
            Some(format.with_perms(e, new_perms))
        });
        if !(old_perms & self.clear).is_empty() {
            t.need_flush();
        }
        Ok(Step::Next)
    }
}

/// Collects and clears hardware dirty flags into a bitmap.
pub(crate) struct HarvestDirty<'a> {
    pub bitmap: &'a mut [u64],
    pub dirty_bit: u64,
}

impl<M: TableMemory> Visitor<M> for HarvestDirty<'_> {
    const PRUNE: bool = false;

    fn leaf(&mut self, t: &mut Table<M>, s: &Slot, raw: u64, start: u64, end: u64) -> Result<Step, Error> {
        if raw & self.dirty_bit == 0 {
            return Ok(Step::Next);
        }
        if s.inside(start, end) {
            t.entry(s.table, s.index).fetch_and(!self.dirty_bit, Ordering::AcqRel);
            // A cached entry would let further writes go unrecorded.
            t.need_flush();
        }
        let first = (s.start.max(start) - start) >> 12;
        let last = (s.end.min(end) - start) >> 12;
        set_bits(self.bitmap, first, last);
        Ok(Step::Next)
    }
}

/// Sets bits `[first, last)` of `bitmap` (the caller checked its length).
fn set_bits(bitmap: &mut [u64], first: u64, last: u64) {
    let mut bit = first;
    while bit < last {
        let word = (bit / 64) as usize;
        let shift = bit % 64;
        let n = (64 - shift).min(last - bit);
        let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << shift };
        if let Some(w) = bitmap.get_mut(word) {
            *w |= mask;
        }
        bit += n;
    }
}
