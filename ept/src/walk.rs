//! The range walker: visits, in GPA order, every entry that intersects a GPA range, descending into
//! lower tables with an explicit stack bounded by the number of levels (no recursion).

use crate::format::{entry_span, Kind, LEVELS};
use crate::memory::ENTRIES_PER_PAGE;
use crate::table::Table;
use crate::{Error, TableMemory};

/// One entry being visited.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Physical address of the table holding the entry.
    pub table: u64,
    /// Index of the entry in that table.
    pub index: usize,
    /// Level of that table (4 = PML4, 1 = page table).
    pub level: u8,
    /// First GPA the entry covers.
    pub start: u64,
    /// One past the last GPA the entry covers.
    pub end: u64,
}

impl Slot {
    /// Whether the entry's whole span lies inside `[start, end)`.
    pub fn inside(&self, start: u64, end: u64) -> bool {
        self.start >= start && self.end <= end
    }
}

/// What the walker does after a visitor handled an entry.
pub(crate) enum Step {
    /// Continue after this entry's span.
    Next,
    /// Descend into the table at this physical address, which the entry now references.
    Descend(u64),
}

/// Per-operation behaviour of a range walk.
pub(crate) trait Visitor<M: TableMemory> {
    /// Detach and free (deferred) every table the walk leaves empty, except the root.
    const PRUNE: bool;

    /// A not-present entry intersecting `[start, end)`.
    fn empty(&mut self, _t: &mut Table<M>, _s: &Slot, _start: u64, _end: u64) -> Result<Step, Error> {
        Ok(Step::Next)
    }

    /// A leaf (raw value `raw`) intersecting `[start, end)`.
    fn leaf(&mut self, t: &mut Table<M>, s: &Slot, raw: u64, start: u64, end: u64) -> Result<Step, Error>;
}

#[derive(Clone, Copy, Default)]
struct Frame {
    table: u64,
    level: u8,
    base: u64,
    parent_index: usize,
}

impl<M: TableMemory> Table<M> {
    /// Walks `[start, end)` (4 KiB aligned, `end` at most the GPA limit) with visitor `v`.
    ///
    /// On an error from the visitor the walk stops at once; tables already left are pruned (for a
    /// pruning visitor), the others stay as they are.
    pub(crate) fn walk<V: Visitor<M>>(&mut self, start: u64, end: u64, v: &mut V) -> Result<(), Error> {
        let mut stack = [Frame::default(); LEVELS as usize];
        let mut depth = 0usize;
        if let Some(f) = stack.get_mut(0) {
            *f = Frame { table: self.root, level: LEVELS, base: 0, parent_index: 0 };
            depth = 1;
        }
        let mut gpa = start;
        while let Some(top) = depth.checked_sub(1).and_then(|i| stack.get(i)).copied() {
            let span = entry_span(top.level);
            let table_end = top.base + span * ENTRIES_PER_PAGE as u64;
            if gpa >= end || gpa >= table_end {
                depth -= 1;
                if V::PRUNE {
                    if let Some(parent) = depth.checked_sub(1).and_then(|i| stack.get(i)) {
                        self.prune(parent.table, top.parent_index, top.table);
                    }
                }
                continue;
            }
            let index = ((gpa - top.base) / span) as usize;
            let entry_start = top.base + index as u64 * span;
            let s = Slot { table: top.table, index, level: top.level, start: entry_start, end: entry_start + span };
            let raw = self.load(s.table, s.index);
            let step = match self.format().kind(raw, s.level) {
                Kind::Table(child) => Step::Descend(child),
                Kind::Empty => v.empty(self, &s, start, end)?,
                Kind::Leaf => v.leaf(self, &s, raw, start, end)?,
            };
            match step {
                Step::Descend(child) if s.level > 1 && depth < stack.len() => {
                    if let Some(f) = stack.get_mut(depth) {
                        *f = Frame { table: child, level: s.level - 1, base: s.start, parent_index: s.index };
                        depth += 1;
                    }
                }
                // `Next`; a level-1 entry never references a table (and depth stays within LEVELS),
                // so the guard above never turns a descent into a skip.
                _ => gpa = s.end,
            }
        }
        Ok(())
    }
}
