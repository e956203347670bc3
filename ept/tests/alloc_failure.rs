//! Allocation failure injected at every allocation of an operation: after each failure the table
//! passes a full consistency walk, translates exactly as before the operation (all-or-nothing),
//! and once the owed invalidation is acknowledged holds only reachable pages.

mod common;

use common::{full_walk, CLeaf, FakeMem, LINUX_PAT, PHYS_BITS};
use ept::{Attrs, Config, Error, Format, MemType, PageSize, Perms, Table};

const PAGE: u64 = 4096;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const G512: u64 = 1 << 39;

const FORMATS: [Format; 2] = [Format::Ept { accessed_dirty: true }, Format::Npt { nx: true, host_pat: LINUX_PAT }];

/// Translation contents, independent of page sizes: maximal runs of (gpa, end, hpa, attributes).
fn runs(leaves: &[CLeaf]) -> Vec<(u64, u64, u64, Perms, MemType)> {
    let mut out: Vec<(u64, u64, u64, Perms, MemType)> = Vec::new();
    for l in leaves {
        if let Some(last) = out.last_mut() {
            if last.1 == l.gpa && last.2 + (last.1 - last.0) == l.hpa && (last.3, last.4) == (l.perms, l.mem_type) {
                last.1 += l.size;
                continue;
            }
        }
        out.push((l.gpa, l.gpa + l.size, l.hpa, l.perms, l.mem_type));
    }
    out
}

fn snapshot(t: &Table<FakeMem>) -> Vec<(u64, u64, u64, Perms, MemType)> {
    runs(&full_walk(t.memory(), t.root_pa().unwrap(), t.format()).leaves)
}

fn rw() -> Attrs {
    Attrs { perms: Perms::READ | Perms::WRITE, mem_type: MemType::WriteBack, ignore_pat: false }
}

/// A table with a 1 GiB leaf at 1 GiB, 2 MiB leaves at 3 GiB, 4 KiB leaves at 4 GiB, and a
/// mapping across the first 512 GiB boundary.
fn populated(format: Format) -> Table<FakeMem> {
    let mut t = Table::new(FakeMem::new(), Config { format, gpa_bits: 48, phys_bits: PHYS_BITS }).unwrap();
    let _ = t.map(G1, 4 * G1, G1, rw(), PageSize::Size1G).unwrap();
    let _ = t.map(3 * G1, 6 * G1, 4 * M2, rw(), PageSize::Size2M).unwrap();
    let _ = t.map(4 * G1, 7 * G1, 64 * PAGE, rw(), PageSize::Size4K).unwrap();
    let _ = t.map(G512 - 2 * M2, 8 * G1, 4 * M2, rw(), PageSize::Size1G).unwrap();
    t.finish_invalidation();
    t
}

type Operation = fn(&mut Table<FakeMem>) -> Result<(), Error>;

/// Runs `op` on fresh copies of `setup()` failing the k-th allocation, k = 0, 1, ... until it
/// succeeds; returns how many failure points there were.
fn every_failure_point(format: Format, setup: fn(Format) -> Table<FakeMem>, op: Operation) -> usize {
    let mut reference = setup(format);
    op(&mut reference).unwrap();
    let expected = snapshot(&reference);
    for k in 0.. {
        let mut t = setup(format);
        let before = snapshot(&t);
        let pages_before = t.table_pages();
        t.memory().budget.set(Some(k));
        let r = op(&mut t);
        t.memory().budget.set(None);
        let after = snapshot(&t);
        match r {
            Ok(()) => {
                assert_eq!(after, expected, "{format:?}: result with {k} allocations differs");
                return k;
            }
            Err(e) => {
                assert_eq!(e, Error::OutOfMemory);
                assert_eq!(after, before, "{format:?}: failure after {k} allocations changed translations");
                assert_eq!(t.memory().live.get(), t.table_pages());
                t.finish_invalidation();
                let w = full_walk(t.memory(), t.root_pa().unwrap(), format);
                assert_eq!(w.tables, t.memory().live_pages(), "unreachable or freed-while-linked pages");
                // Splits may persist (they do not change translations); nothing else is kept.
                assert!(t.table_pages() >= pages_before);
            }
        }
    }
    unreachable!()
}

fn empty(format: Format) -> Table<FakeMem> {
    Table::new(FakeMem::new(), Config { format, gpa_bits: 48, phys_bits: PHYS_BITS }).unwrap()
}

#[test]
fn map_on_empty_table() {
    for format in FORMATS {
        // Crosses the first 512 GiB boundary: 4 KiB, 2 MiB and 1 GiB leaves, 8 table pages.
        let op: Operation = |t| {
            let gpa = G512 - M2 - 3 * PAGE;
            t.map(gpa, 16 * G1 - M2 - 3 * PAGE, G1 + 2 * M2 + 5 * PAGE, rw(), PageSize::Size1G).map(|_| ())
        };
        let points = every_failure_point(format, empty, op);
        assert!(points >= 6, "{points} failure points");
        let mut t = empty(format);
        op(&mut t).unwrap();
        assert_eq!(t.table_pages(), points + 1);
    }
}

#[test]
fn map_failure_frees_new_tables() {
    for format in FORMATS {
        let op: Operation = |t| t.map(5 * G1, 9 * G1, 8 * M2 + 8 * PAGE, rw(), PageSize::Size2M).map(|_| ());
        let points = every_failure_point(format, populated, op);
        assert!(points >= 2);
        // Rolled back: the page count returns to what it was once the invalidation is done.
        let mut t = populated(format);
        let before = t.table_pages();
        t.memory().budget.set(Some(points - 1));
        assert_eq!(op(&mut t), Err(Error::OutOfMemory));
        t.finish_invalidation();
        assert_eq!(t.table_pages(), before);
    }
}

#[test]
fn map_overlap_rolls_back() {
    for format in FORMATS {
        let mut t = populated(format);
        let before = snapshot(&t);
        let pages = t.table_pages();
        // Starts in free space below 4 GiB, runs into the 4 KiB mappings at 4 GiB.
        let r = t.map(4 * G1 - 3 * M2, 12 * G1, 3 * M2 + 2 * PAGE, rw(), PageSize::Size2M);
        assert_eq!(r, Err(Error::AlreadyMapped(4 * G1)));
        assert_eq!(snapshot(&t), before);
        assert_eq!(t.pending_invalidation(), format.flush());
        t.finish_invalidation();
        assert_eq!(t.table_pages(), pages);
    }
}

#[test]
fn unmap_splitting_both_ends() {
    for format in FORMATS {
        // One page inside the 1 GiB leaf: 1 GiB -> 2 MiB -> 4 KiB.
        let op: Operation = |t| t.unmap(G1 + 3 * M2 + 5 * PAGE, PAGE, |_| {}).map(|_| ());
        assert_eq!(every_failure_point(format, populated, op), 2);
        // From inside the 1 GiB leaf to inside the 2 MiB leaves: splits at both ends.
        let op: Operation = |t| t.unmap(2 * G1 - 3 * PAGE, G1 + M2, |_| {}).map(|_| ());
        assert_eq!(every_failure_point(format, populated, op), 3);
        // Across the 512 GiB boundary, splitting one 2 MiB leaf on each side.
        let op: Operation = |t| t.unmap(G512 - PAGE, 2 * PAGE, |_| {}).map(|_| ());
        assert_eq!(every_failure_point(format, populated, op), 2);
    }
}

#[test]
fn protect_and_grant_splitting() {
    for format in FORMATS {
        let op: Operation = |t| t.protect(2 * G1 - 3 * PAGE, G1 + M2, Perms::WRITE).map(|_| ());
        assert_eq!(every_failure_point(format, populated, op), 3);
        let op: Operation = |t| t.grant(G1 + 7 * PAGE, M2, Perms::EXEC).map(|_| ());
        assert_eq!(every_failure_point(format, populated, op), 3);
    }
}

#[test]
fn teardown_and_drop_free_everything() {
    for format in FORMATS {
        let mut t = populated(format);
        let live = t.memory().live.clone();
        let mut removed = Vec::new();
        let _ = t.unmap(G1 + 5 * PAGE, PAGE, |_| {}).unwrap();
        let inv = t.teardown(|l| removed.push(l));
        assert_eq!(inv, format.flush());
        let bytes: u64 = removed.iter().map(|l| l.size.bytes()).sum();
        assert_eq!(bytes, G1 - PAGE + 4 * M2 + 64 * PAGE + 4 * M2);
        assert!(live.get() > 0, "pages freed before the invalidation was acknowledged");
        t.finish_invalidation();
        assert_eq!(live.get(), 0);
        assert_eq!(t.map(0, 0, PAGE, rw(), PageSize::Size4K), Err(Error::TornDown));

        // Dropping a populated table frees every page too.
        let t = populated(format);
        let live = t.memory().live.clone();
        assert!(live.get() > 0);
        drop(t);
        assert_eq!(live.get(), 0);
    }
}
