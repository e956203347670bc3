//! Model-based property tests: random sequences of map / unmap / protect / grant / lookup /
//! harvest / simulated processor accesses / invalidations, with random allocation failures,
//! compared after every step with a reference map at 4 KiB granularity, in both formats.
//!
//! The reference keeps runs of consecutive 4 KiB pages (so that 1 GiB mappings stay cheap); every
//! comparison is still page-exact: each page of each leaf found by an independent full walk must
//! be in the reference with the same host address, rights and memory type, and the page counts
//! must be equal.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{cpu_access, full_walk, CLeaf, FakeMem, HOST_LIMIT, LINUX_PAT, OPENBSD_PAT, PHYS_BITS};
use ept::{Attrs, Config, Error, Format, Invalidation, MemType, PageSize, Perms, RemovedLeaf, Table};
use proptest::prelude::*;

const PAGE: u64 = 4096;
const G1: u64 = 1 << 30;
const M2: u64 = 1 << 21;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    pages: u64,
    hpa: u64,
    perms: Perms,
    mt: MemType,
    ipat: bool,
    /// Largest leaf the mapping call allowed.
    max: u64,
}

/// Reference: runs keyed by first GPA, plus dirty-page knowledge.
#[derive(Default)]
struct Model {
    runs: BTreeMap<u64, Run>,
    /// Pages written since their last harvest: their leaf must be dirty.
    must: BTreeSet<u64>,
    /// Leaf spans that were written at some time: a dirty leaf must lie inside one.
    may: Vec<(u64, u64)>,
}

impl Model {
    fn find(&self, g: u64) -> Option<(u64, Run)> {
        let (&s, &r) = self.runs.range(..=g).next_back()?;
        (g < s + r.pages * PAGE).then_some((s, r))
    }

    fn split(&mut self, at: u64) {
        if let Some((s, r)) = self.find(at) {
            if s < at {
                let left = (at - s) / PAGE;
                self.runs.insert(s, Run { pages: left, ..r });
                self.runs.insert(at, Run { pages: r.pages - left, hpa: r.hpa + (at - s), ..r });
            }
        }
    }

    fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        if self.find(start).is_some() {
            return Some(start);
        }
        self.runs.range(start..end).next().map(|(&s, _)| s)
    }

    fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, Run)> {
        self.split(start);
        self.split(end);
        let keys: Vec<u64> = self.runs.range(start..end).map(|(&k, _)| k).collect();
        let out = keys.iter().map(|k| (*k, self.runs.remove(k).unwrap())).collect();
        let gone: Vec<u64> = self.must.range(start..end).copied().collect();
        for g in gone {
            self.must.remove(&g);
        }
        out
    }

    /// Returns whether some mapped page lost a right.
    fn change(&mut self, start: u64, end: u64, clear: Perms, set: Perms) -> bool {
        self.split(start);
        self.split(end);
        let mut reduced = false;
        for (_, r) in self.runs.range_mut(start..end) {
            reduced |= !(r.perms & clear).is_empty();
            r.perms = (r.perms - clear) | set;
        }
        reduced
    }

    fn pages(&self) -> u64 {
        self.runs.values().map(|r| r.pages).sum()
    }
}

/// Asserts that `leaves` (disjoint, sorted) cover exactly the pages of `runs`, page by page.
fn assert_same(leaves: &[CLeaf], runs: &BTreeMap<u64, Run>) {
    let model = Model { runs: runs.clone(), ..Model::default() };
    let mut total = 0;
    for l in leaves {
        let mut c = l.gpa;
        while c < l.gpa + l.size {
            let (s, r) = model.find(c).unwrap_or_else(|| panic!("table maps {c:#x}, reference does not: {l:?}"));
            assert_eq!(r.hpa + (c - s), l.hpa + (c - l.gpa), "host address of {c:#x}");
            assert_eq!((r.perms, r.mt, r.ipat), (l.perms, l.mem_type, l.ignore_pat), "attributes of {c:#x}");
            assert!(l.size <= r.max, "leaf of {:#x} bytes where at most {:#x} allowed", l.size, r.max);
            c = (s + r.pages * PAGE).min(l.gpa + l.size);
        }
        total += l.size / PAGE;
    }
    assert_eq!(total, model.pages(), "page count");
}

/// A GPA: absolute, or the `n`-th page of the reference's mappings (to hit mapped pages often).
#[derive(Clone, Copy, Debug)]
enum At {
    Abs(u64),
    Mapped(u64),
    /// A few pages after the last accessed page.
    Recent(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Map { gpa: u64, pages: u64, hpa: u64, perms: Perms, mt: MemType, ipat: bool, max: PageSize },
    Unmap { gpa: At, pages: u64 },
    Protect { gpa: At, pages: u64, clear: Perms },
    Grant { gpa: At, pages: u64, set: Perms },
    Lookup { gpa: At },
    Harvest { gpa: At, pages: u64 },
    Access { gpa: At, write: bool },
    Flush,
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// Table-page allocations allowed during this step (`None`: unlimited).
    budget: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    format: Format,
    gpa_bits: u8,
    /// Every map limited to 4 KiB leaves: dirty flags are then exact per page.
    small: bool,
}

fn addr(limit: u64) -> impl Strategy<Value = u64> {
    let base = prop_oneof![Just(0u64), (1u64..8).prop_map(|k| k * G1), Just(limit - G1)];
    let off = prop_oneof![
        Just(0u64),
        (0u64..1024).prop_map(|p| p * PAGE),
        (0u64..512).prop_map(|k| k * M2),
        (1u64..4, 0u64..3).prop_map(|(k, p)| k * M2 - p * PAGE),
    ];
    (base, off).prop_map(|(b, o)| b + o)
}

fn at(limit: u64) -> impl Strategy<Value = At> {
    prop_oneof![2 => addr(limit).prop_map(At::Abs), 4 => any::<u64>().prop_map(At::Mapped), 1 => any::<u8>().prop_map(At::Recent)]
}

fn npages() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1u64..=16,
        2 => 1u64..=1100,
        2 => (1u64..=3).prop_map(|k| k * 512),
        1 => Just(262_144u64),
        1 => (0u64..3).prop_map(|k| 262_144 + k * 511),
        1 => Just(2 * 262_144u64),
    ]
}

fn perms() -> impl Strategy<Value = Perms> {
    prop_oneof![
        10 => (any::<bool>(), any::<bool>()).prop_map(|(w, x)| {
            let mut p = Perms::READ;
            p.set(Perms::WRITE, w);
            p.set(Perms::EXEC, x);
            p
        }),
        1 => (0u8..8).prop_map(Perms::from_bits_truncate),
    ]
}

fn mem_type() -> impl Strategy<Value = MemType> {
    prop_oneof![
        6 => Just(MemType::WriteBack),
        1 => Just(MemType::Uncacheable),
        1 => Just(MemType::WriteCombining),
        1 => Just(MemType::WriteThrough),
        1 => Just(MemType::WriteProtected),
    ]
}

fn op(limit: u64, small: bool) -> impl Strategy<Value = Op> {
    let max = if small {
        Just(PageSize::Size4K).boxed()
    } else {
        prop_oneof![Just(PageSize::Size4K), Just(PageSize::Size2M), Just(PageSize::Size1G), Just(PageSize::Size1G)].boxed()
    };
    let hpa_delta = prop_oneof![Just(0u64), (0u64..4).prop_map(|k| k * G1), (0u64..8).prop_map(|k| k * M2), (0u64..8).prop_map(|k| k * PAGE)];
    // Large-page configurations map whole 2 MiB / 1 GiB multiples more often.
    let map_pages = if small {
        npages().boxed()
    } else {
        prop_oneof![2 => npages(), 1 => (1u64..=8).prop_map(|k| k * 512), 1 => (1u64..=2).prop_map(|k| k * 262_144)].boxed()
    };
    let map = (addr(limit), map_pages, hpa_delta, perms(), mem_type(), prop::bool::weighted(0.1), max).prop_map(
        |(gpa, pages, d, perms, mt, ipat, max)| {
            // Keep 4 KiB-only mappings to a few table pages: a 1 GiB range of 4 KiB leaves would
            // make every full walk slow without testing anything more.
            let pages = if max == PageSize::Size4K { pages.min(1100) } else { pages };
            Op::Map { gpa, pages, hpa: (gpa & (G1 * 256 - 1)) + d, perms, mt, ipat, max }
        },
    );
    prop_oneof![
        6 => map,
        3 => (at(limit), npages()).prop_map(|(gpa, pages)| Op::Unmap { gpa, pages }),
        2 => (at(limit), npages(), perms()).prop_map(|(gpa, pages, clear)| Op::Protect { gpa, pages, clear }),
        1 => (at(limit), npages(), perms()).prop_map(|(gpa, pages, set)| Op::Grant { gpa, pages, set }),
        2 => at(limit).prop_map(|gpa| Op::Lookup { gpa }),
        2 => (at(limit), npages()).prop_map(|(gpa, pages)| Op::Harvest { gpa, pages }),
        6 => (at(limit), any::<bool>()).prop_map(|(gpa, write)| Op::Access { gpa, write }),
        1 => Just(Op::Flush),
    ]
}

fn steps(limit: u64, small: bool) -> impl Strategy<Value = Vec<Step>> {
    let budget = prop_oneof![8 => Just(None), 2 => (0usize..4).prop_map(Some)];
    prop::collection::vec((op(limit, small), budget).prop_map(|(op, budget)| Step { op, budget }), 1..32)
}

fn attrs_error(format: Format, a: &Attrs) -> Option<Error> {
    if !a.perms.contains(Perms::READ) {
        return Some(Error::InvalidPermissions);
    }
    match format {
        Format::Ept { .. } => None,
        Format::Npt { nx, host_pat } => {
            if !nx && !a.perms.contains(Perms::EXEC) {
                return Some(Error::InvalidPermissions);
            }
            let available = (0..8).any(|i| host_pat >> (8 * i) & 7 == a.mem_type as u64);
            (a.ignore_pat || !available).then_some(Error::MemTypeUnavailable)
        }
    }
}

/// Checks a result against the expected error, allowing an allocation failure when a budget was set.
fn check_result<T: std::fmt::Debug>(r: &Result<T, Error>, expected: Option<Error>, budget: Option<usize>) -> bool {
    match (r, expected) {
        (Err(Error::OutOfMemory), _) if budget.is_some() => false,
        (Err(e), Some(x)) => {
            assert_eq!(*e, x);
            false
        }
        (Err(e), None) => panic!("unexpected error {e:?}"),
        (Ok(v), Some(x)) => panic!("expected {x:?}, got Ok({v:?})"),
        (Ok(_), None) => true,
    }
}

struct Harness {
    setup: Setup,
    t: Table<FakeMem>,
    m: Model,
    limit: u64,
    /// The test knows an invalidation is owed.
    owed: bool,
    /// Last page accessed by the simulated processor.
    recent: u64,
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let cfg = Config { format: setup.format, gpa_bits: setup.gpa_bits, phys_bits: PHYS_BITS };
        Harness { setup, t: Table::new(FakeMem::new(), cfg).unwrap(), m: Model::default(), limit: 1 << setup.gpa_bits, owed: false, recent: 0 }
    }

    fn resolve(&self, a: At) -> u64 {
        match a {
            At::Abs(g) => g,
            At::Mapped(n) if !self.m.runs.is_empty() => {
                let runs = self.m.runs.len() as u64;
                let (s, r) = self.m.runs.iter().nth((n % runs) as usize).unwrap();
                s + (n / runs) % r.pages * PAGE
            }
            At::Mapped(n) => (n % 1024) * PAGE,
            At::Recent(k) => (self.recent + PAGE + u64::from(k % 4) * PAGE).min(self.limit - PAGE),
        }
    }

    fn range(&self, gpa: u64, pages: u64) -> Option<u64> {
        let end = gpa + pages * PAGE;
        (end <= self.limit).then_some(end)
    }

    fn has_dirty(&self) -> bool {
        !matches!(self.setup.format, Format::Ept { accessed_dirty: false })
    }

    /// Full walk, page-exact comparison, dirty-flag invariants, page accounting.
    fn check(&self) -> Vec<CLeaf> {
        let root = self.t.root_pa().unwrap();
        let w = full_walk(self.t.memory(), root, self.setup.format);
        assert_same(&w.leaves, &self.m.runs);
        for l in &w.leaves {
            if self.has_dirty() && self.m.must.range(l.gpa..l.gpa + l.size).next().is_some() {
                assert!(l.dirty, "written page lost its dirty flag: {l:?}");
            }
            if l.dirty {
                assert!(self.m.may.iter().any(|&(s, e)| s <= l.gpa && l.gpa + l.size <= e), "dirty flag never caused: {l:?}");
            }
            if self.setup.small && self.has_dirty() {
                assert_eq!(l.dirty, self.m.must.contains(&l.gpa), "exact dirty flag of {:#x}", l.gpa);
            }
        }
        // Every live page is reachable or awaiting the invalidation; the table counts them all.
        assert_eq!(self.t.memory().live.get(), self.t.table_pages());
        assert!(w.tables.len() <= self.t.table_pages());
        if self.owed {
            assert_eq!(self.t.pending_invalidation(), self.setup.format.flush());
        }
        w.leaves
    }

    fn step(&mut self, s: &Step) {
        self.t.memory().budget.set(s.budget);
        match s.op.clone() {
            Op::Map { gpa, pages, hpa, perms, mt, ipat, max } => {
                let a = Attrs { perms, mem_type: mt, ignore_pat: ipat };
                let r = self.t.map(gpa, hpa, pages * PAGE, a, max);
                let expected = match self.range(gpa, pages) {
                    None => Some(Error::InvalidGpaRange),
                    Some(end) => attrs_error(self.setup.format, &a).or_else(|| self.m.first_mapped(gpa, end).map(Error::AlreadyMapped)),
                };
                assert!(hpa + pages * PAGE <= HOST_LIMIT);
                if check_result(&r, expected, s.budget) {
                    self.m.runs.insert(gpa, Run { pages, hpa, perms, mt, ipat, max: max.bytes() });
                }
            }
            Op::Unmap { gpa, pages } => {
                let gpa = self.resolve(gpa);
                let mut removed: Vec<RemovedLeaf> = Vec::new();
                let r = self.t.unmap(gpa, pages * PAGE, |l| removed.push(l));
                let expected = self.range(gpa, pages).is_none().then_some(Error::InvalidGpaRange);
                if check_result(&r, expected, s.budget) {
                    let end = gpa + pages * PAGE;
                    let leaves: Vec<CLeaf> = removed
                        .iter()
                        .map(|l| {
                            assert!(l.gpa >= gpa && l.gpa + l.size.bytes() <= end, "removed leaf outside range: {l:?}");
                            if self.has_dirty() && self.m.must.range(l.gpa..l.gpa + l.size.bytes()).next().is_some() {
                                assert!(l.dirty, "removed leaf lost dirty flag: {l:?}");
                            }
                            // Attributes are not reported: take them from the reference.
                            let (_, run) = self.m.find(l.gpa).expect("removed unmapped page");
                            CLeaf {
                                gpa: l.gpa,
                                size: l.size.bytes(),
                                hpa: l.hpa,
                                perms: run.perms,
                                mem_type: run.mt,
                                ignore_pat: run.ipat,
                                accessed: false,
                                dirty: l.dirty,
                                table: 0,
                                index: 0,
                            }
                        })
                        .collect();
                    let gone: BTreeMap<u64, Run> = self.m.remove(gpa, end).into_iter().collect();
                    assert_same(&leaves, &gone);
                    self.owed |= !gone.is_empty();
                } else {
                    assert!(removed.is_empty(), "failed unmap removed leaves");
                }
            }
            Op::Protect { gpa, pages, clear } | Op::Grant { gpa, pages, set: clear } => {
                let grant = matches!(s.op, Op::Grant { .. });
                let gpa = self.resolve(gpa);
                let r = if grant { self.t.grant(gpa, pages * PAGE, clear) } else { self.t.protect(gpa, pages * PAGE, clear) };
                let no_nx = matches!(self.setup.format, Format::Npt { nx: false, .. });
                let expected = if self.range(gpa, pages).is_none() {
                    Some(Error::InvalidGpaRange)
                } else if !grant && (clear.contains(Perms::READ) || (no_nx && clear.contains(Perms::EXEC))) {
                    Some(Error::InvalidPermissions)
                } else {
                    None
                };
                if check_result(&r, expected, s.budget) {
                    let end = gpa + pages * PAGE;
                    let reduced = if grant {
                        self.m.change(gpa, end, Perms::empty(), clear)
                    } else {
                        self.m.change(gpa, end, clear, Perms::empty())
                    };
                    self.owed |= reduced;
                }
            }
            Op::Lookup { gpa } => {
                let gpa = self.resolve(gpa);
                let r = self.t.lookup(gpa).unwrap();
                match (r, self.m.find(gpa)) {
                    (None, None) => {}
                    (Some(tr), Some((s, run))) => {
                        assert_eq!(tr.hpa, run.hpa + (gpa - s));
                        assert_eq!((tr.leaf.attrs.perms, tr.leaf.attrs.mem_type, tr.leaf.attrs.ignore_pat), (run.perms, run.mt, run.ipat));
                        assert!(tr.leaf_gpa <= gpa && gpa < tr.leaf_gpa + tr.size.bytes());
                    }
                    (a, b) => panic!("lookup {gpa:#x}: table {a:?}, reference {b:?}"),
                }
            }
            Op::Harvest { gpa, pages } => {
                let gpa = self.resolve(gpa);
                let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
                let r = self.t.harvest_dirty(gpa, pages * PAGE, &mut bitmap);
                let expected = if self.range(gpa, pages).is_none() {
                    Some(Error::InvalidGpaRange)
                } else if !self.has_dirty() {
                    Some(Error::NoDirtyTracking)
                } else {
                    None
                };
                if check_result(&r, expected, None) {
                    let end = gpa + pages * PAGE;
                    let bit = |g: u64| bitmap[((g - gpa) / PAGE / 64) as usize] >> ((g - gpa) / PAGE % 64) & 1 != 0;
                    for &g in self.m.must.range(gpa..end) {
                        assert!(bit(g), "dirty page {g:#x} not harvested");
                    }
                    for p in 0..pages {
                        let g = gpa + p * PAGE;
                        if bit(g) {
                            assert!(self.m.find(g).is_some(), "harvested unmapped page {g:#x}");
                            assert!(self.m.may.iter().any(|&(s, e)| s <= g && g < e), "harvested never-written page {g:#x}");
                            if self.setup.small {
                                assert!(self.m.must.contains(&g), "harvested clean page {g:#x}");
                                self.owed = true;
                            }
                        }
                    }
                    // Forget pages whose flag was cleared (all of them, except under a large leaf
                    // reaching outside the range, which keeps its flag).
                    let in_range: Vec<u64> = self.m.must.range(gpa..end).copied().collect();
                    for g in in_range {
                        let tr = self.t.lookup(g).unwrap().unwrap();
                        if !tr.leaf.dirty {
                            assert!(tr.leaf_gpa >= gpa && tr.leaf_gpa + tr.size.bytes() <= end);
                            self.m.must.remove(&g);
                        } else {
                            assert!(tr.leaf_gpa < gpa || tr.leaf_gpa + tr.size.bytes() > end, "flag of a harvested leaf kept");
                        }
                    }
                }
            }
            Op::Access { gpa, write } => {
                let gpa = self.resolve(gpa);
                let root = self.t.root_pa().unwrap();
                let l = cpu_access(self.t.memory(), root, self.setup.format, gpa, write);
                self.recent = gpa & !(PAGE - 1);
                let allowed = self.m.find(gpa).is_some_and(|(_, r)| !write || r.perms.contains(Perms::WRITE));
                assert_eq!(l.is_some(), allowed, "access {gpa:#x} write {write}");
                if let (Some(l), true) = (l, write) {
                    if self.has_dirty() {
                        self.m.must.insert(gpa & !(PAGE - 1));
                        self.m.may.push((l.gpa, l.gpa + l.size));
                    }
                }
            }
            Op::Flush => {
                self.t.finish_invalidation();
                self.owed = false;
                assert_eq!(self.t.pending_invalidation(), Invalidation::None);
                let w = full_walk(self.t.memory(), self.t.root_pa().unwrap(), self.setup.format);
                assert_eq!(w.tables, self.t.memory().live_pages(), "pages leaked or freed while linked");
            }
        }
        self.t.memory().budget.set(None);
        self.check();
    }

    fn finish(mut self) {
        let mut removed = Vec::new();
        let inv = self.t.teardown(|l| removed.push(l));
        assert_eq!(inv, self.setup.format.flush());
        let total: u64 = removed.iter().map(|l| l.size.bytes() / PAGE).sum();
        assert_eq!(total, self.m.pages());
        for l in &removed {
            let (s, r) = self.m.find(l.gpa).unwrap();
            assert_eq!(l.hpa, r.hpa + (l.gpa - s));
        }
        assert_eq!(self.t.lookup(0), Err(Error::TornDown));
        self.t.finish_invalidation();
        assert_eq!(self.t.table_pages(), 0);
        assert_eq!(self.t.memory().live.get(), 0, "table pages left after teardown");
    }
}

fn run(setup: Setup, steps: &[Step]) {
    let mut h = Harness::new(setup);
    for s in steps {
        h.step(s);
    }
    h.finish();
}

fn setups(format: Format) -> impl Strategy<Value = (Setup, Vec<Step>)> {
    (prop_oneof![Just(39u8), Just(48u8)], prop::bool::weighted(0.25)).prop_flat_map(move |(gpa_bits, small)| {
        (Just(Setup { format, gpa_bits, small }), steps(1 << gpa_bits, small))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ept_with_dirty_flags((setup, steps) in setups(Format::Ept { accessed_dirty: true })) {
        run(setup, &steps);
    }

    #[test]
    fn ept_without_dirty_flags((setup, steps) in setups(Format::Ept { accessed_dirty: false })) {
        run(setup, &steps);
    }

    #[test]
    fn npt_linux_pat((setup, steps) in setups(Format::Npt { nx: true, host_pat: LINUX_PAT })) {
        run(setup, &steps);
    }

    #[test]
    fn npt_no_nx_openbsd_pat((setup, steps) in setups(Format::Npt { nx: false, host_pat: OPENBSD_PAT })) {
        run(setup, &steps);
    }
}

/// Directed: a dirty 1 GiB leaf split by a partial protect keeps every page dirty.
#[test]
fn split_keeps_dirty_flags() {
    let rw = Perms::READ | Perms::WRITE;
    for format in [Format::Ept { accessed_dirty: true }, Format::Npt { nx: true, host_pat: LINUX_PAT }] {
        let setup = Setup { format, gpa_bits: 48, small: false };
        let map = Op::Map { gpa: G1, pages: G1 / PAGE, hpa: 2 * G1, perms: rw, mt: MemType::WriteBack, ipat: false, max: PageSize::Size1G };
        let ops = [
            map,
            Op::Access { gpa: At::Abs(G1 + 5 * PAGE), write: true },
            Op::Protect { gpa: At::Abs(G1 + 3 * PAGE), pages: 1, clear: Perms::WRITE },
            Op::Lookup { gpa: At::Abs(G1 + 5 * PAGE) },
        ];
        let mut h = Harness::new(setup);
        for op in ops {
            h.step(&Step { op, budget: None });
        }
        let tr = h.t.lookup(G1 + 5 * PAGE).unwrap().unwrap();
        assert_eq!(tr.size, PageSize::Size4K);
        assert!(tr.leaf.dirty);
        h.finish();
    }
}
