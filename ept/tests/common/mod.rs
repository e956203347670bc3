//! Test support: simulated table memory, an independent full-table checker that decodes entries
//! with literal bit positions from the SDM/APM (not the crate's constants), and a simulated
//! processor that sets accessed/dirty flags the way the hardware walker does.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use ept::{Format, MemType, Perms, TableMemory};

/// Table pages live at and above this address; leaves must never reach it.
pub const TABLE_BASE: u64 = 1 << 44;
/// Host pages handed to `map` in tests lie below this.
pub const HOST_LIMIT: u64 = 1 << 40;
/// MAXPHYADDR used in tests.
pub const PHYS_BITS: u8 = 46;

/// Linux's IA32_PAT: WB, WC, UC-, UC, WB, WP, UC-, WT.
pub const LINUX_PAT: u64 = 0x0407_0500_0007_0106;
/// OpenBSD's IA32_PAT: WB, WC, UC-, UC, WB, WC, UC-, UC (no WT, no WP).
pub const OPENBSD_PAT: u64 = 0x0007_0106_0007_0106;

/// Simulated physical memory for table pages, with allocation-failure injection.
pub struct FakeMem {
    pages: HashMap<u64, Box<[AtomicU64; 512]>>,
    next: u64,
    /// Allocations still allowed (`None`: unlimited).
    pub budget: Cell<Option<usize>>,
    /// Pages currently allocated, shared so that it survives the table being dropped.
    pub live: Rc<Cell<usize>>,
    pub allocs: usize,
}

impl FakeMem {
    pub fn new() -> Self {
        FakeMem { pages: HashMap::new(), next: TABLE_BASE, budget: Cell::new(None), live: Rc::new(Cell::new(0)), allocs: 0 }
    }

    pub fn is_page(&self, pa: u64) -> bool {
        self.pages.contains_key(&pa)
    }

    pub fn live_pages(&self) -> HashSet<u64> {
        self.pages.keys().copied().collect()
    }
}

impl TableMemory for FakeMem {
    fn alloc_page(&mut self) -> Option<u64> {
        match self.budget.get() {
            Some(0) => return None,
            Some(n) => self.budget.set(Some(n - 1)),
            None => {}
        }
        // Never reuse an address: a dangling reference to a freed page then panics in `entries`.
        let pa = self.next;
        self.next += 4096;
        self.pages.insert(pa, Box::new([const { AtomicU64::new(0) }; 512]));
        self.live.set(self.live.get() + 1);
        self.allocs += 1;
        Some(pa)
    }

    fn free_page(&mut self, pa: u64) {
        assert!(self.pages.remove(&pa).is_some(), "free of unknown page {pa:#x}");
        self.live.set(self.live.get() - 1);
    }

    fn entries(&self, pa: u64) -> &[AtomicU64; 512] {
        self.pages.get(&pa).unwrap_or_else(|| panic!("access to non-table page {pa:#x}"))
    }
}

/// A leaf as decoded by the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CLeaf {
    pub gpa: u64,
    pub size: u64,
    pub hpa: u64,
    pub perms: Perms,
    pub mem_type: MemType,
    pub ignore_pat: bool,
    pub accessed: bool,
    pub dirty: bool,
    /// Table holding the leaf and its index, for the simulated processor.
    pub table: u64,
    pub index: usize,
}

/// Result of a full walk.
pub struct Walked {
    pub leaves: Vec<CLeaf>,
    pub tables: HashSet<u64>,
}

fn span(level: u8) -> u64 {
    1u64 << (12 + 9 * (u32::from(level) - 1))
}

fn mem_type(bits: u64) -> MemType {
    match bits {
        0 => MemType::Uncacheable,
        1 => MemType::WriteCombining,
        4 => MemType::WriteThrough,
        5 => MemType::WriteProtected,
        6 => MemType::WriteBack,
        _ => panic!("invalid memory type {bits}"),
    }
}

/// Walks the whole table from `root`, asserting that every entry is a valid encoding, every
/// table page is live, referenced once and (except the root) not empty, and no leaf maps a table
/// page or anything at or above `HOST_LIMIT`. Returns the leaves in GPA order.
pub fn full_walk(mem: &FakeMem, root: u64, format: Format) -> Walked {
    let mut leaves = Vec::new();
    let mut tables = HashSet::new();
    assert!(mem.is_page(root), "root not live");
    tables.insert(root);
    // Explicit stack: (table, level, base).
    let mut stack = vec![(root, 4u8, 0u64)];
    let mut order = Vec::new();
    while let Some((table, level, base)) = stack.pop() {
        let entries = mem.entries(table);
        let mut present = 0;
        let mut children = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let raw = e.load(Ordering::Relaxed);
            let gpa = base + i as u64 * span(level);
            match check_entry(format, raw, level, gpa) {
                None => {
                    assert_eq!(raw, 0, "not-present entry with stray bits {raw:#x}");
                }
                Some(Entry::Table(child)) => {
                    present += 1;
                    assert!(mem.is_page(child), "entry references non-table page {child:#x}");
                    assert!(tables.insert(child), "table {child:#x} referenced twice");
                    children.push((child, level - 1, gpa));
                }
                Some(Entry::Leaf(mut l)) => {
                    present += 1;
                    l.table = table;
                    l.index = i;
                    assert!(l.hpa + l.size <= HOST_LIMIT, "leaf maps beyond host pages: {l:?}");
                    order.push(l);
                }
            }
        }
        assert!(table == root || present > 0, "empty non-root table {table:#x}");
        // Depth-first in GPA order.
        stack.extend(children.into_iter().rev());
    }
    order.sort_by_key(|l| l.gpa);
    leaves.extend(order);
    for w in leaves.windows(2) {
        assert!(w[0].gpa + w[0].size <= w[1].gpa, "overlapping leaves");
    }
    Walked { leaves, tables }
}

enum Entry {
    Table(u64),
    Leaf(CLeaf),
}

/// Decodes one entry with literal bit positions and asserts it is well formed.
fn check_entry(format: Format, raw: u64, level: u8, gpa: u64) -> Option<Entry> {
    let addr = raw & 0x000f_ffff_ffff_f000;
    assert_eq!(raw >> 52 & 0x7ff, 0, "bits 62:52 set in {raw:#x}");
    match format {
        Format::Ept { accessed_dirty } => {
            // SDM: present iff any of bits 2:0.
            if raw & 7 == 0 {
                return None;
            }
            assert_eq!(raw >> 63, 0, "suppress-#VE set");
            assert_eq!(raw & (1 << 10), 0, "user-execute set");
            let large = raw & (1 << 7) != 0;
            if level == 4 || (level > 1 && !large) {
                assert_eq!(raw & 7, 7, "table entry without RWX: {raw:#x}");
                assert_eq!(raw & 0xf8, 0, "reserved bits 7:3 of a table entry: {raw:#x}");
                assert_eq!(raw & 0xe00, 0, "bits 11:9 of table entry: {raw:#x}");
                if !accessed_dirty {
                    assert_eq!(raw & 0x100, 0);
                }
                return Some(Entry::Table(addr));
            }
            let size = span(level);
            assert!(raw & 1 != 0, "leaf without read: {raw:#x}");
            assert_eq!(addr & (size - 1), 0, "misaligned leaf address {raw:#x}");
            assert_eq!(raw & 0xc00, 0);
            if level == 1 {
                assert_eq!(raw & 0x80, 0, "bit 7 in a PTE");
            }
            if !accessed_dirty {
                assert_eq!(raw & 0x300, 0, "A/D without A/D enabled");
            }
            let mut perms = Perms::READ;
            perms.set(Perms::WRITE, raw & 2 != 0);
            perms.set(Perms::EXEC, raw & 4 != 0);
            Some(Entry::Leaf(CLeaf {
                gpa,
                size,
                hpa: addr,
                perms,
                mem_type: mem_type(raw >> 3 & 7),
                ignore_pat: raw & 0x40 != 0,
                accessed: raw & 0x100 != 0,
                dirty: raw & 0x200 != 0,
                table: 0,
                index: 0,
            }))
        }
        Format::Npt { nx, host_pat } => {
            // APM: present iff P (bit 0).
            if raw & 1 == 0 {
                return None;
            }
            assert!(raw & 4 != 0, "U/S clear: nested walks are user accesses: {raw:#x}");
            if !nx {
                assert_eq!(raw >> 63, 0, "NX with EFER.NXE clear");
            }
            let ps = raw & (1 << 7) != 0;
            if level == 4 || (level > 1 && !ps) {
                assert_eq!(raw & 0x7, 0x7, "table entry without P|RW|US: {raw:#x}");
                assert_eq!(raw & 0x18, 0, "PWT/PCD in table entry");
                assert_eq!(raw & 0xf40, 0, "D/G/AVL in table entry {raw:#x}");
                assert_eq!(raw >> 63, 0, "NX in table entry");
                return Some(Entry::Table(addr));
            }
            let size = span(level);
            let (pat_bit, hpa) = if level == 1 { (raw >> 7 & 1, addr) } else { (raw >> 12 & 1, addr & !0x1000) };
            assert_eq!(hpa & (size - 1), 0, "misaligned leaf address {raw:#x}");
            assert_eq!(raw & 0xf00, 0, "G/AVL set {raw:#x}");
            let index = (raw >> 3 & 1) | (raw >> 4 & 1) << 1 | pat_bit << 2;
            let mut perms = Perms::READ;
            perms.set(Perms::WRITE, raw & 2 != 0);
            perms.set(Perms::EXEC, raw >> 63 == 0);
            Some(Entry::Leaf(CLeaf {
                gpa,
                size,
                hpa,
                perms,
                mem_type: mem_type(host_pat >> (8 * index) & 7),
                ignore_pat: false,
                accessed: raw & 0x20 != 0,
                dirty: raw & 0x40 != 0,
                table: 0,
                index: 0,
            }))
        }
    }
}

/// Simulated processor access to `gpa` through the table: walks it like the hardware, sets the
/// accessed flag at every level and, for a permitted write, the leaf's dirty flag (when the
/// format has A/D flags). Returns the leaf used, or `None` on a violation.
pub fn cpu_access(mem: &FakeMem, root: u64, format: Format, gpa: u64, write: bool) -> Option<CLeaf> {
    let (a_bit, d_bit) = match format {
        Format::Ept { accessed_dirty: true } => (Some(1u64 << 8), Some(1u64 << 9)),
        Format::Ept { accessed_dirty: false } => (None, None),
        Format::Npt { .. } => (Some(1 << 5), Some(1 << 6)),
    };
    let mut table = root;
    let mut level = 4u8;
    let mut base = 0u64;
    loop {
        let index = ((gpa - base) / span(level)) as usize;
        let e = &mem.entries(table)[index];
        let raw = e.load(Ordering::Relaxed);
        let start = base + index as u64 * span(level);
        match check_entry(format, raw, level, start)? {
            Entry::Table(child) => {
                if let Some(a) = a_bit {
                    e.fetch_or(a, Ordering::Relaxed);
                }
                table = child;
                level -= 1;
                base = start;
            }
            Entry::Leaf(mut l) => {
                if write && !l.perms.contains(Perms::WRITE) {
                    return None;
                }
                if let Some(a) = a_bit {
                    e.fetch_or(a, Ordering::Relaxed);
                    l.accessed = true;
                }
                if write {
                    if let Some(d) = d_bit {
                        e.fetch_or(d, Ordering::Relaxed);
                        l.dirty = true;
                    }
                }
                l.table = table;
                l.index = index;
                return Some(l);
            }
        }
    }
}
