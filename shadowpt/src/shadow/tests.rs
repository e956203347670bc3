//! Shadow MMU tests: generated guest page tables in every mode, random guest page-table writes,
//! invalidations and mode switches; the hardware walk of the shadow tables (simulated with the
//! walker itself in the host's mode) is checked against the guest walk after every step.

use super::*;
use crate::pfec::PageFault;
use crate::regs::*;
use crate::test_mem::TestMem;
use crate::walk::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

/// Host offset of guest RAM: HPA = GPA + HPA_OFF.
const HPA_OFF: u64 = 0x40_0000_0000;
/// Guest RAM that page tables may live in: [0, RAM_END) (memslots cover more: see Frames).
const RAM_END: u64 = 0x40000;
/// Read-only memslot pages: [RO_START, RAM_END).
const RO_START: u64 = 0x38000;

/// Table pages from a simulated host; counts live pages; can fail allocations.
struct Tables {
    pages: HashMap<u64, Box<[AtomicU64; 512]>>,
    next: u64,
    allocs: u64,
    /// Every `fail_every`-th allocation fails (0: never).
    fail_every: u64,
}

impl Tables {
    fn new(fail_every: u64) -> Self {
        Tables {
            pages: HashMap::new(),
            next: 0x100_0000,
            allocs: 0,
            fail_every,
        }
    }
}

impl TableMemory for Tables {
    fn alloc_page(&mut self) -> Option<u64> {
        self.allocs += 1;
        if self.fail_every != 0 && self.allocs.is_multiple_of(self.fail_every) {
            return None;
        }
        let pa = self.next;
        self.next += 0x1000;
        self.pages
            .insert(pa, Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        Some(pa)
    }
    fn free_page(&mut self, pa: u64) {
        assert!(
            self.pages.remove(&pa).is_some(),
            "free of unknown page {pa:#x}"
        );
    }
    fn entries(&self, pa: u64) -> &[AtomicU64; 512] {
        self.pages
            .get(&pa)
            .unwrap_or_else(|| panic!("entries of unknown page {pa:#x}"))
    }
}

/// The host view of the shadow tables, for simulating the hardware walk.
impl GuestMemory for Tables {
    fn read_u64(&self, pa: u64) -> Result<u64, NotRam> {
        let page = self.pages.get(&(pa & !0xFFF)).ok_or(NotRam { gpa: pa })?;
        Ok(page[((pa & 0xFFF) / 8) as usize].load(Ordering::SeqCst))
    }
    fn cmpxchg_u64(&self, _: u64, _: u64, _: u64) -> Result<bool, NotRam> {
        unreachable!("hardware simulation never updates A/D")
    }
}

/// Memslots: RAM with a read-only tail; counts pins.
#[derive(Default)]
struct Frames {
    pins: HashMap<u64, i64>,
}

impl Frames {
    /// Memslots: everything below 4 GiB except an MMIO hole right after the page-table RAM;
    /// the last pages of that RAM are a read-only slot.
    fn frame(gpa: u64) -> Option<HostFrame> {
        let mmio = (RAM_END..RAM_END + 0x8000).contains(&gpa) || gpa >= 1 << 32;
        (!mmio).then_some(HostFrame {
            hpa: (gpa & !0xFFF) + HPA_OFF,
            writable: !(RO_START..RAM_END).contains(&gpa),
        })
    }
    fn total(&self) -> i64 {
        self.pins.values().sum()
    }
}

impl GuestFrames for Frames {
    fn pin(&mut self, gpa: u64) -> Option<HostFrame> {
        let f = Self::frame(gpa)?;
        *self.pins.entry(f.hpa).or_default() += 1;
        Some(f)
    }
    fn unpin(&mut self, hpa: u64) {
        let c = self
            .pins
            .get_mut(&hpa)
            .unwrap_or_else(|| panic!("unpin of unpinned {hpa:#x}"));
        *c -= 1;
        assert!(*c >= 0, "pin count below zero for {hpa:#x}");
        if *c == 0 {
            self.pins.remove(&hpa);
        }
    }
}

fn cpu() -> CpuModel {
    CpuModel {
        max_phys_addr: 46,
        gbpages: true,
    }
}

/// The hardware registers the core would use to run the guest on `root`.
fn hw_regs(mmu: &ShadowMmu, tm: &Tables, root: RootId, guest: &PagingRegs) -> PagingRegs {
    let mode = guest.mode();
    let mut cr4 = CR4_PAE;
    if mode != PagingMode::Off {
        cr4 |= guest.cr4 & (CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
    }
    let mut efer = EFER_NXE;
    if mode.is_long() {
        efer |= EFER_LMA;
    }
    if mode == PagingMode::Level5 {
        cr4 |= CR4_LA57;
    }
    let cr3 = mmu.root_hpa(root).unwrap();
    let mut r = PagingRegs {
        cr0: CR0_PG | CR0_WP,
        cr3,
        cr4,
        efer,
        pdptes: [0; 4],
        pkru: guest.pkru,
        pkrs: guest.pkrs,
    };
    if !mode.is_long() {
        r.pdptes = load_pdptes(tm, cr3, &cpu()).expect("shadow PDPTEs valid");
    }
    r
}

/// The guest's translation with no side effects.
fn oracle(
    mem: &TestMem,
    regs: &PagingRegs,
    acc: &Access,
    la: u64,
) -> Result<Translation, WalkError> {
    let mut a = *acc;
    a.update_ad = false;
    walk(mem, regs, &cpu(), &a, la)
}

/// Every present shadow leaf (in every root whose registers we know) must be exactly the
/// guest translation (same frame, U/S, XD) and no more writable than guest R/W + D, memslot
/// and page-table write protection allow.
fn check_coherent(
    mmu: &ShadowMmu,
    tm: &Tables,
    frames: &Frames,
    mem: &TestMem,
    roots: &HashMap<usize, PagingRegs>,
) {
    let mut leaves = 0i64;
    let zombies = mmu.for_each_leaf(tm, |root, la, e| {
        leaves += 1;
        let regs = roots
            .get(&root)
            .expect("leaf in a root the test never selected");
        let mut plain = *regs;
        plain.cr4 &= !(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
        let t = oracle(mem, &plain, &Access::new(AccessKind::Read, 0, false), la).unwrap_or_else(
            |err| panic!("stale shadow leaf {e:#x} for la {la:#x}: guest says {err:?}"),
        );
        let f = Frames::frame(t.gpa).expect("shadow leaf for a non-RAM frame");
        assert_eq!(e & SPTE_ADDR, f.hpa, "la {la:#x}");
        assert_eq!(e & PTE_US != 0, t.perms.user, "U/S of la {la:#x}");
        assert_eq!(e & PTE_XD != 0, !t.perms.executable, "XD of la {la:#x}");
        if e & PTE_RW != 0 {
            assert!(
                t.perms.writable && t.dirty && f.writable,
                "writable leaf for la {la:#x}"
            );
            assert!(
                !mmu.is_write_protected(tm, t.gpa),
                "writable leaf maps a guest page table"
            );
        }
        if regs.mode().is_long() {
            assert_eq!((e >> 59) & 0xF, u64::from(t.pkey));
        } else {
            assert_eq!(e & (0x7FF << 52), 0, "reserved bits in a PAE-format leaf");
        }
    });
    assert_eq!(zombies, 0, "zombies left after flush_done");
    assert_eq!(frames.total(), leaves, "one pin per present leaf");
    assert_eq!(mmu.pages_in_use(), tm.pages.len(), "page accounting");
}

/// The guest-visible page-table layout for one mode: which pool pages hold tables, which
/// indices matter, and how linear addresses are formed.
struct Layout {
    mode: PagingMode,
}

/// Pool of guest pages usable as paging structures (pages 1..=12).
fn pool_page(n: u64) -> u64 {
    (1 + n % 12) * 0x1000
}

impl Layout {
    /// Index values exercised at each level (top-down), and the level's shift.
    fn levels(&self) -> Vec<(u32, &'static [u64])> {
        match self.mode {
            PagingMode::Off => vec![],
            PagingMode::Bits32 => vec![(22, &[0, 1, 1023]), (12, &[0, 1, 1023])],
            PagingMode::Pae => vec![(30, &[0, 3]), (21, &[0, 1, 511]), (12, &[0, 1, 511])],
            PagingMode::Level4 => {
                vec![
                    (39, &[0, 511]),
                    (30, &[0, 1]),
                    (21, &[0, 1, 511]),
                    (12, &[0, 1, 511]),
                ]
            }
            PagingMode::Level5 => vec![
                (48, &[0, 1]),
                (39, &[0, 511]),
                (30, &[0, 1]),
                (21, &[0, 1]),
                (12, &[0, 1, 511]),
            ],
        }
    }

    fn entry_bytes(&self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    /// A linear address from a random number.
    fn la(&self, r: u64) -> u64 {
        if self.mode == PagingMode::Off {
            return (r % 0x50) * 0x1000 + (r >> 32) % 0x1000;
        }
        let mut la = (r >> 40) % 0x1000;
        let mut x = r;
        for (shift, idx) in self.levels() {
            la |= idx[(x % idx.len() as u64) as usize] << shift;
            x /= idx.len() as u64;
        }
        la
    }

    /// A random entry for the table page containing `gpa`: mostly present, pointing at the
    /// next level's pool pages (or, at the last level and for large pages, at data frames).
    fn entry(&self, gpa: u64, v: u64) -> u64 {
        let depth = self.levels().len() as u64;
        let level = ((gpa >> 12).saturating_sub(1) / 2).min(depth.saturating_sub(1));
        let pct = |shift: u32| (v >> shift) % 100;
        let mut e = 0;
        let last = level + 1 >= depth;
        if pct(0) < 96 {
            e |= PTE_P;
        }
        if pct(7) < if last { 75 } else { 95 } {
            e |= PTE_RW;
        }
        if pct(14) < if last { 75 } else { 95 } {
            e |= PTE_US;
        }
        e |= v & (PTE_A | PTE_D | PTE_PWT | PTE_PCD | PTE_G);
        let shift = self.levels().get(level as usize).map_or(12, |l| l.0);
        let large_ok = matches!(shift, 21 | 22 | 30);
        let leaf = last || (large_ok && pct(21) < 15);
        if leaf && level + 1 < depth {
            e |= PTE_PS;
        }
        let target = if leaf {
            match pct(28) {
                0..=59 => 0x10000 + ((v >> 35) % 40) * 0x1000,  // RAM
                60..=74 => RO_START + ((v >> 35) % 8) * 0x1000, // read-only slot
                75..=84 => RAM_END + ((v >> 35) % 8) * 0x1000,  // MMIO
                _ => pool_page(v >> 35),                        // a page table as data
            }
        } else {
            let next = level + 1;
            let k = if pct(42) < 95 {
                1 + 2 * next + (v >> 49) % 2
            } else {
                1 + (v >> 49) % 12
            };
            k * 0x1000
        };
        e |= if leaf && level + 1 < depth {
            target & !((1u64 << shift) - 1)
        } else {
            target
        };
        if self.mode.is_pae_format() && pct(50) < 8 {
            e |= PTE_XD;
        }
        if self.mode.is_long() {
            e |= ((v >> 57) % 16) << 59;
        }
        if pct(56) < 3 {
            e |= 1 << 45; // reserved with a small MAXPHYADDR, else out of RAM
        }
        if self.mode == PagingMode::Bits32 {
            e &= 0xFFFF_FFFF;
        }
        e
    }

    /// Where an entry write goes: a pool page and an index the walks use.
    fn entry_gpa(&self, r: u64) -> u64 {
        let levels = self.levels();
        let idxs: Vec<u64> = if levels.is_empty() {
            vec![0, 1]
        } else {
            levels.iter().flat_map(|(_, i)| i.iter().copied()).collect()
        };
        let i = idxs[(r % idxs.len() as u64) as usize];
        let page = pool_page(r >> 8); // for PAE, page 1 is the PDPT (read at CR3 loads only)
        page + i * self.entry_bytes()
    }

    fn regs(&self, cr3_sel: u64, flags: u64, mem: &TestMem) -> Option<PagingRegs> {
        let mut r = PagingRegs {
            cr0: CR0_PG,
            cr3: pool_page(cr3_sel % 3),
            ..Default::default()
        };
        if flags & 1 != 0 {
            r.cr0 |= CR0_WP;
        }
        if flags & 2 != 0 {
            r.cr4 |= CR4_SMEP;
        }
        if flags & 4 != 0 {
            r.cr4 |= CR4_SMAP;
        }
        if flags & 8 != 0 {
            r.efer |= EFER_NXE;
        }
        if flags & 16 != 0 {
            r.cr4 |= CR4_PSE;
        }
        if flags & 32 != 0 && self.mode.is_long() {
            r.cr4 |= CR4_PKE;
            r.pkru = (flags >> 8) as u32 & 0x3C3C_3C3C; // some keys restricted
        }
        match self.mode {
            PagingMode::Off => r.cr0 &= !CR0_PG,
            PagingMode::Bits32 => {}
            PagingMode::Pae => {
                r.cr4 |= CR4_PAE;
                r.cr3 = 0x1000 + (cr3_sel % 4) * 32;
                r.pdptes = load_pdptes(mem, r.cr3, &cpu()).ok()?;
            }
            PagingMode::Level4 => {
                r.cr4 |= CR4_PAE;
                r.efer |= EFER_LMA;
            }
            PagingMode::Level5 => {
                r.cr4 |= CR4_PAE | CR4_LA57;
                r.efer |= EFER_LMA;
            }
        }
        Some(r)
    }
}

fn write_entry(mem: &mut TestMem, layout: &Layout, gpa: u64, v: u64) {
    if layout.entry_bytes() == 4 {
        mem.write32(gpa, v as u32);
    } else {
        mem.write64(gpa, v);
    }
}

struct World {
    layout: Layout,
    mem: TestMem,
    tm: Tables,
    frames: Frames,
    mmu: ShadowMmu,
    root: Option<RootId>,
    regs: PagingRegs,
    roots: HashMap<usize, PagingRegs>,
    stats: [u64; 8],
}

impl World {
    fn new(mode: PagingMode, max_pages: usize, fail_every: u64, init: &[u64]) -> World {
        let layout = Layout { mode };
        let mut mem = TestMem::new();
        for p in 0..(RAM_END / 0x1000) {
            mem.add_page(p * 0x1000);
        }
        // Every (pool page, exercised index) slot gets an entry.
        let idxs: Vec<u64> = layout
            .levels()
            .iter()
            .flat_map(|(_, i)| i.iter().copied())
            .collect();
        let mut k = 0usize;
        for page in 1..=12u64 {
            for &i in &idxs {
                let v = init[k % init.len()].rotate_left(k as u32 / init.len() as u32);
                k += 1;
                let gpa = page * 0x1000 + i * layout.entry_bytes();
                let e = layout.entry(gpa, v);
                write_entry(&mut mem, &layout, gpa, e);
            }
        }
        if mode == PagingMode::Pae {
            // Valid PDPTEs for the four possible CR3 values.
            for i in 0..16u64 {
                let v = init.get(i as usize).copied().unwrap_or(i);
                let pdpte = if v % 7 == 0 {
                    0
                } else {
                    ((3 + (v >> 8) % 2) * 0x1000) | PTE_P
                };
                mem.write64(0x1000 + i * 8, pdpte);
            }
        }
        let tm = Tables::new(fail_every);
        let mmu = ShadowMmu::new(cpu(), max_pages).unwrap();
        World {
            layout,
            mem,
            tm,
            frames: Frames::default(),
            mmu,
            root: None,
            regs: PagingRegs::default(),
            roots: HashMap::new(),
            stats: [0; 8],
        }
    }

    fn settle(&mut self, flush: Flush) {
        if flush == Flush::All {
            self.mmu.flush_done(&mut self.tm, &mut self.frames);
        }
    }

    fn switch(&mut self, cr3_sel: u64, flags: u64) {
        let Some(regs) = self.layout.regs(cr3_sel, flags, &self.mem) else {
            return;
        };
        match self
            .mmu
            .switch_root(&mut self.tm, &mut self.frames, self.root, &regs)
        {
            Ok(id) => {
                self.root = Some(id);
                self.regs = regs;
                self.roots.insert(ShadowMmu::root_index(id), regs);
            }
            Err(Error::OutOfMemory) => {}
            Err(e) => panic!("switch_root: {e:?}"),
        }
    }

    /// One guest access, through the simulated hardware and the fault handler.
    fn access(&mut self, la: u64, kind: AccessKind, cpl: u8, ac: bool) {
        let Some(root) = self.root else { return };
        let acc = Access::new(kind, cpl, ac);
        for _ in 0..6 {
            let hw = hw_regs(&self.mmu, &self.tm, root, &self.regs);
            match walk(
                &self.tm,
                &hw,
                &CpuModel {
                    max_phys_addr: 46,
                    gbpages: false,
                },
                &Access {
                    update_ad: false,
                    ..acc
                },
                la,
            ) {
                Ok(h) => {
                    let t = oracle(&self.mem, &self.regs, &acc, la).unwrap_or_else(|e| {
                        panic!("hardware allowed {kind:?} at {la:#x}, guest: {e:?}")
                    });
                    assert_eq!(h.gpa, t.gpa + HPA_OFF, "translation of {la:#x}");
                    if kind == AccessKind::Write {
                        assert!(t.dirty, "write through a shadow entry while guest D = 0");
                        assert!(!self.mmu.is_write_protected(&self.tm, t.gpa));
                        assert!(Frames::frame(t.gpa).unwrap().writable);
                    }
                    self.stats[0] += 1;
                    return;
                }
                Err(WalkError::PageFault(pf)) => {
                    let guest = oracle(&self.mem, &self.regs, &acc, la);
                    let res = self.mmu.page_fault(
                        &mut self.tm,
                        &mut self.frames,
                        &self.mem,
                        root,
                        &self.regs,
                        cpl,
                        ac,
                        la,
                        pf.error_code,
                    );
                    let res = match res {
                        Ok(r) => r,
                        Err(Error::OutOfMemory) => continue,
                        Err(e) => panic!("page_fault: {e:?}"),
                    };
                    self.settle(res.flush);
                    match res.outcome {
                        FaultOutcome::Retry => continue,
                        FaultOutcome::InjectPf(ec) => {
                            assert_eq!(
                                guest,
                                Err(WalkError::PageFault(PageFault { error_code: ec })),
                                "la {la:#x}"
                            );
                            self.stats[1] += 1;
                        }
                        FaultOutcome::NotRam(n) => {
                            assert_eq!(guest, Err(WalkError::NotRam(n)));
                            self.stats[2] += 1;
                        }
                        FaultOutcome::Mmio { gpa } => {
                            let t = guest.expect("MMIO outcome for a faulting access");
                            assert_eq!(t.gpa, gpa);
                            match Frames::frame(gpa) {
                                None => {}
                                Some(f) => assert!(kind == AccessKind::Write && !f.writable),
                            }
                            self.stats[3] += 1;
                        }
                        FaultOutcome::Emulate { gpa } => {
                            let t = guest.expect("emulate outcome for a faulting access");
                            assert_eq!(t.gpa, gpa);
                            assert_eq!(kind, AccessKind::Write);
                            let wp0 = self.regs.cr0 & CR0_WP == 0 && !acc.is_user();
                            assert!(
                                !t.perms.writable
                                    || wp0
                                    || self.mmu.is_write_protected(&self.tm, gpa),
                                "needless emulation at {la:#x}"
                            );
                            self.stats[4] += 1;
                        }
                    }
                    return;
                }
                Err(e) => panic!("hardware walk of shadow tables failed: {e:?}"),
            }
        }
        panic!("no progress on {kind:?} at {la:#x}");
    }

    /// A guest write to a paging-structure entry: direct if some shadow leaf maps the page
    /// writable (the guest could use it), else trapped, emulated and reported.
    fn write_pte(&mut self, gpa: u64, v: u64) {
        let hpa = (gpa & !0xFFF) + HPA_OFF;
        let mut writable_mapped = false;
        self.mmu.for_each_leaf(&self.tm, |_, _, e| {
            writable_mapped |= e & SPTE_ADDR == hpa && e & PTE_RW != 0;
        });
        let e = self.layout.entry(gpa, v);
        write_entry(&mut self.mem, &self.layout, gpa, e);
        if writable_mapped {
            self.stats[5] += 1;
        } else {
            let f = self
                .mmu
                .guest_pt_write(&mut self.tm, gpa, self.layout.entry_bytes());
            self.settle(f);
            self.stats[6] += 1;
        }
    }

    /// Every linear address the workload can touch (one per 4 KiB page).
    fn all_las(&self) -> Vec<u64> {
        let mut las = vec![0u64];
        for (shift, idx) in self.layout.levels() {
            las = las
                .iter()
                .flat_map(|&la| idx.iter().map(move |&i| la | (i << shift)))
                .collect();
        }
        las
    }

    /// A write the shadow MMU is not told about (a device writing a guest page table), then
    /// the invalidations the architecture requires: INVPCID individual-address of each guest
    /// page (one address per large page) whose translation may have used the entry.
    fn dma_write_then_invalidate(&mut self, gpa: u64, v: u64) {
        if self.layout.mode == PagingMode::Off {
            return;
        }
        let mut pages = Vec::new();
        let plain = Access {
            update_ad: false,
            ..Access::new(AccessKind::Read, 0, false)
        };
        for regs in self.roots.values() {
            let mut r = *regs;
            r.cr4 &= !(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
            for la in self.all_las() {
                if let Ok(t) = walk(&self.mem, &r, &cpu(), &plain, la) {
                    let size = t.page_size.bytes();
                    pages.push(la & !(size - 1));
                }
            }
        }
        pages.sort();
        pages.dedup();
        let e = self.layout.entry(gpa, v);
        write_entry(&mut self.mem, &self.layout, gpa, e);
        for la in pages {
            let f = self.mmu.invpcid_address(&mut self.tm, la);
            self.settle(f);
        }
        self.stats[7] += 1;
    }

    fn step(&mut self, op: u8, a: u64, b: u64) {
        match op % 16 {
            0..=7 => {
                let la = self.layout.la(a);
                let kind =
                    [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][(b % 3) as usize];
                let cpl = if (b >> 2).is_multiple_of(2) { 0 } else { 3 };
                self.access(la, kind, cpl, (b >> 3) % 2 == 1);
            }
            8..=11 => self.write_pte(self.layout.entry_gpa(a), b),
            12 => {
                if let Some(root) = self.root {
                    let f = self
                        .mmu
                        .invlpg(&mut self.tm, root, self.layout.la(a))
                        .unwrap();
                    self.settle(f);
                }
            }
            13 | 14 => self.switch(a, b),
            _ if b.is_multiple_of(2) => {
                let f = self.mmu.zap_all(&mut self.tm, &mut self.frames);
                self.settle(f);
            }
            _ => self.dma_write_then_invalidate(self.layout.entry_gpa(a), b),
        }
        check_coherent(&self.mmu, &self.tm, &self.frames, &self.mem, &self.roots);
    }

    fn finish(mut self) -> [u64; 8] {
        self.mmu.teardown(&mut self.tm, &mut self.frames);
        assert!(
            self.tm.pages.is_empty(),
            "{} table pages leaked",
            self.tm.pages.len()
        );
        assert_eq!(self.frames.total(), 0, "pins leaked");
        assert!(self.frames.pins.is_empty());
        self.stats
    }
}

fn mode_of(m: u8) -> PagingMode {
    [
        PagingMode::Off,
        PagingMode::Bits32,
        PagingMode::Pae,
        PagingMode::Level4,
        PagingMode::Level5,
    ][usize::from(m % 5)]
}

fn run(
    mode: PagingMode,
    max_pages: usize,
    fail_every: u64,
    init: &[u64],
    ops: &[(u8, u64, u64)],
) -> [u64; 8] {
    let mut w = World::new(mode, max_pages, fail_every, init);
    w.switch(0, init[0] >> 8);
    for &(op, a, b) in ops {
        w.step(op, a, b);
    }
    w.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn shadow_matches_guest_walks(
        mode in 0u8..5,
        small in any::<bool>(),
        fail in prop_oneof![Just(0u64), 5u64..40],
        init in prop::collection::vec(any::<u64>(), 16..64),
        ops in prop::collection::vec((any::<u8>(), any::<u64>(), any::<u64>()), 1..80),
    ) {
        let max_pages = if small { MIN_PAGES } else { 256 };
        run(mode_of(mode), max_pages, fail, &init, &ops);
    }
}

/// The generated workloads exercise every outcome (a guard against a vacuous property test).
#[test]
fn workloads_reach_every_outcome() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut total = [0u64; 8];
    let strat = (
        prop::collection::vec(any::<u64>(), 32..64),
        prop::collection::vec((any::<u8>(), any::<u64>(), any::<u64>()), 60..80),
    );
    for m in 0..5u8 {
        let mut per_mode = [0u64; 8];
        for _ in 0..20 {
            let (init, ops) = strat.new_tree(&mut runner).unwrap().current();
            let s = run(mode_of(m), 256, 0, &init, &ops);
            for ((t, p), v) in total.iter_mut().zip(per_mode.iter_mut()).zip(s) {
                *t += v;
                *p += v;
            }
        }
        eprintln!("{:?}: {per_mode:?}", mode_of(m));
    }
    eprintln!("outcomes: {total:?}");
    let names = [
        "hw ok",
        "inject",
        "notram",
        "mmio",
        "emulate",
        "direct pt write",
        "trapped pt write",
        "dma write",
    ];
    for (n, v) in names.iter().zip(total) {
        assert!(v > 0, "no {n} in the generated workloads: {total:?}");
    }
}

/// A 4-level guest: PML4 0x1000 → PDPT 0x2000 → PD 0x3000 → PT 0x4000, with PTE `i` mapping
/// la `i << 12` to frame `0x10000 + (i << 12)` (user, writable, not yet dirty), PTE 8 mapping
/// the PT page itself.
fn simple_guest() -> (TestMem, PagingRegs) {
    let mut mem = TestMem::new();
    for p in 0..(RAM_END / 0x1000) {
        mem.add_page(p * 0x1000);
    }
    mem.write64(0x1000, 0x2000 | PTE_P | PTE_RW | PTE_US);
    mem.write64(0x2000, 0x3000 | PTE_P | PTE_RW | PTE_US);
    mem.write64(0x3000, 0x4000 | PTE_P | PTE_RW | PTE_US);
    for i in 0..8u64 {
        mem.write64(
            0x4000 + i * 8,
            (0x10000 + (i << 12)) | PTE_P | PTE_RW | PTE_US,
        );
    }
    mem.write64(0x4000 + 8 * 8, 0x4000 | PTE_P | PTE_RW | PTE_US | PTE_D);
    let regs = PagingRegs {
        cr0: CR0_PG | CR0_WP,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | EFER_NXE,
        ..Default::default()
    };
    (mem, regs)
}

#[allow(clippy::too_many_arguments)]
fn fault(
    mmu: &mut ShadowMmu,
    tm: &mut Tables,
    fr: &mut Frames,
    mem: &TestMem,
    root: RootId,
    regs: &PagingRegs,
    la: u64,
    ec: u32,
) -> FaultResult {
    let r = mmu
        .page_fault(tm, fr, mem, root, regs, 3, false, la, ec)
        .unwrap();
    if r.flush == Flush::All {
        mmu.flush_done(tm, fr);
    }
    r
}

#[test]
fn writable_only_once_guest_dirty_is_set() {
    let (mem, regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    let r = fault(
        &mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x1000, PFEC_U,
    );
    assert_eq!(r.outcome, FaultOutcome::Retry);
    let e = mmu.lookup(&tm, root, 0x1000).unwrap();
    assert_eq!(e & SPTE_ADDR, 0x11000 + HPA_OFF);
    assert_eq!(
        e & (PTE_RW | PTE_US | PTE_P),
        PTE_US | PTE_P,
        "read fill is read-only: D = 0"
    );
    assert_eq!(mem.read64(0x4008) & (PTE_A | PTE_D), PTE_A);
    let r = fault(
        &mut mmu,
        &mut tm,
        &mut fr,
        &mem,
        root,
        &regs,
        0x1000,
        PFEC_U | PFEC_W | PFEC_P,
    );
    assert_eq!(r.outcome, FaultOutcome::Retry);
    assert_eq!(mem.read64(0x4008) & PTE_D, PTE_D);
    assert_ne!(mmu.lookup(&tm, root, 0x1000).unwrap() & PTE_RW, 0);
    assert_eq!(fr.total(), 1, "the upgrade keeps one pin");
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}

#[test]
fn guest_page_tables_are_write_protected_and_writes_zap() {
    let (mem, regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    // la 0x8000 maps the guest PT page: a write must be emulated, the leaf stays read-only.
    let r = fault(
        &mut mmu,
        &mut tm,
        &mut fr,
        &mem,
        root,
        &regs,
        0x8000,
        PFEC_U | PFEC_W,
    );
    assert_eq!(r.outcome, FaultOutcome::Emulate { gpa: 0x4000 });
    assert_eq!(mmu.lookup(&tm, root, 0x8000).unwrap() & PTE_RW, 0);
    fault(
        &mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x2000, PFEC_U,
    );
    assert!(mmu.lookup(&tm, root, 0x2000).is_some());
    // The emulated write to PTE 2 zaps exactly that leaf; its pin lives until flush_done.
    let pins = fr.total();
    assert_eq!(mmu.guest_pt_write(&mut tm, 0x4010, 8), Flush::All);
    assert!(mmu.lookup(&tm, root, 0x2000).is_none());
    assert!(mmu.lookup(&tm, root, 0x8000).is_some());
    assert_eq!(fr.total(), pins);
    mmu.flush_done(&mut tm, &mut fr);
    assert_eq!(fr.total(), pins - 1);
    // A write to the PDE zaps the whole page table.
    assert_eq!(mmu.guest_pt_write(&mut tm, 0x3000, 8), Flush::All);
    assert!(mmu.lookup(&tm, root, 0x8000).is_none());
    mmu.flush_done(&mut tm, &mut fr);
    assert_eq!(fr.total(), 0);
    // A write elsewhere in the PD (another PDE) changes nothing.
    fault(
        &mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x1000, PFEC_U,
    );
    assert_eq!(mmu.guest_pt_write(&mut tm, 0x3008, 8), Flush::None);
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}

#[test]
fn data_page_becoming_a_page_table_loses_write_access() {
    let (mut mem, regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    // la 0x1000 → frame 0x11000, written (writable leaf).
    fault(
        &mut mmu,
        &mut tm,
        &mut fr,
        &mem,
        root,
        &regs,
        0x1000,
        PFEC_U | PFEC_W,
    );
    assert_ne!(mmu.lookup(&tm, root, 0x1000).unwrap() & PTE_RW, 0);
    // The guest makes frame 0x11000 a page table for la 0x20_0000 (PDE 1), and touches it.
    mem.write64(0x3008, 0x11000 | PTE_P | PTE_RW | PTE_US);
    mem.write64(0x11000, 0x12000 | PTE_P | PTE_US);
    assert_eq!(mmu.guest_pt_write(&mut tm, 0x3008, 8), Flush::None);
    let r = fault(
        &mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x20_0000, PFEC_U,
    );
    assert_eq!(
        r.flush,
        Flush::All,
        "downgrade of the data mapping needs a flush"
    );
    assert_eq!(mmu.lookup(&tm, root, 0x1000).unwrap() & PTE_RW, 0);
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}

#[test]
fn roots_are_cached_evicted_lru_and_bounded() {
    let (mem, mut regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let a = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    fault(&mut mmu, &mut tm, &mut fr, &mem, a, &regs, 0x1000, PFEC_U);
    let mut other = regs;
    other.cr3 = 0x5000;
    let b = mmu.switch_root(&mut tm, &mut fr, Some(a), &other).unwrap();
    assert_ne!(a, b);
    // Back to the first CR3: the cached root and its entries are reused.
    let a2 = mmu.switch_root(&mut tm, &mut fr, Some(b), &regs).unwrap();
    assert_eq!(a, a2);
    assert!(mmu.lookup(&tm, a2, 0x1000).is_some());
    // A mode change (NXE) selects another root.
    regs.efer &= !EFER_NXE;
    let c = mmu.switch_root(&mut tm, &mut fr, Some(a2), &regs).unwrap();
    assert_ne!(c, a2);
    // Held roots are never evicted; with every slot held, a new root is refused.
    let mut held = vec![c];
    for i in 0..MAX_ROOTS as u64 + 4 {
        let mut r = other;
        r.cr3 = 0x10000 + i * 0x1000;
        match mmu.switch_root(&mut tm, &mut fr, None, &r) {
            Ok(id) => held.push(id),
            Err(e) => {
                assert_eq!(e, Error::NoFreeRoot);
                assert_eq!(held.len(), MAX_ROOTS);
                break;
            }
        }
    }
    for id in held {
        mmu.release_root(id).unwrap();
    }
    assert_eq!(mmu.release_root(c), Err(Error::BadRoot));
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}

/// Table memory whose pages are all above 4 GiB.
struct HighTables(Tables);
impl TableMemory for HighTables {
    fn alloc_page(&mut self) -> Option<u64> {
        self.0.alloc_page().map(|pa| pa + (1 << 32))
    }
    fn free_page(&mut self, pa: u64) {
        self.0.free_page(pa - (1 << 32));
    }
    fn entries(&self, pa: u64) -> &[AtomicU64; 512] {
        self.0.entries(pa - (1 << 32))
    }
}

#[test]
fn legacy_roots_must_be_below_4g() {
    let (mut tm, mut fr) = (HighTables(Tables::new(0)), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let regs = PagingRegs::default(); // paging off: PAE-format shadow root
    assert_eq!(
        mmu.switch_root(&mut tm, &mut fr, None, &regs),
        Err(Error::PaeRootAbove4G)
    );
    assert!(tm.0.pages.is_empty());
    // Long-mode roots may be anywhere.
    let (_, l4) = simple_guest();
    assert!(mmu.switch_root(&mut tm, &mut fr, None, &l4).is_ok());
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.0.pages.is_empty());
}

#[test]
fn page_cap_forces_zap_and_retry() {
    let (mem, regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), MIN_PAGES).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    // Guest: 1 GiB pages at every PDPT index, so each 2 MiB region needs its own shadow table.
    let mut mem2 = TestMem::new();
    for p in 0..(RAM_END / 0x1000) {
        mem2.add_page(p * 0x1000);
    }
    mem2.write64(0x1000, 0x2000 | PTE_P | PTE_RW | PTE_US);
    for i in 0..512u64 {
        mem2.write64(0x2000 + i * 8, PTE_P | PTE_RW | PTE_US | PTE_PS);
    }
    let _ = mem;
    let mut busy = 0;
    for i in 0..40u64 {
        let la = (i << 30) | 0x10000; // distinct 1 GiB regions, same guest frame
        loop {
            let r = fault(&mut mmu, &mut tm, &mut fr, &mem2, root, &regs, la, PFEC_U);
            if r.outcome == FaultOutcome::Retry && mmu.lookup(&tm, root, la).is_some() {
                break;
            }
            busy += 1;
            assert!(busy < 100, "no progress");
        }
        assert!(
            mmu.pages_in_use() <= MIN_PAGES + 1 + 1,
            "cap exceeded: {}",
            mmu.pages_in_use()
        );
    }
    assert!(busy > 0, "the cap never forced a zap");
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}

#[test]
fn mmu_state_is_small() {
    // The core embeds it in its VM object; keep it far below a kernel stack.
    assert!(
        core::mem::size_of::<ShadowMmu>() <= 4096,
        "{}",
        core::mem::size_of::<ShadowMmu>()
    );
}

#[test]
fn invlpg_drops_every_piece_of_a_large_page() {
    let (mut mem, regs) = simple_guest();
    // PDPTE 1: a 1 GiB page at GPA 0, user, writable.
    mem.write64(0x2008, PTE_P | PTE_RW | PTE_US | PTE_PS);
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    let (a, b) = ((1u64 << 30) + 0x1000, (1u64 << 30) + (5 << 21) + 0x3000);
    for la in [a, b] {
        fault(&mut mmu, &mut tm, &mut fr, &mem, root, &regs, la, PFEC_U);
    }
    assert_eq!(mmu.lookup(&tm, root, b).unwrap() & SPTE_ADDR, (5 << 21) + 0x3000 + HPA_OFF);
    // The guest remaps the 1 GiB page without our knowing (device write), then INVLPGs one
    // address in it: the architecture drops the whole page's translation.
    mem.write64(0x2008, (1 << 30) | PTE_P | PTE_RW | PTE_US | PTE_PS);
    assert_eq!(mmu.invlpg(&mut tm, root, a).unwrap(), Flush::All);
    mmu.flush_done(&mut tm, &mut fr);
    assert!(mmu.lookup(&tm, root, a).is_none());
    assert!(mmu.lookup(&tm, root, b).is_none());
    assert_eq!(fr.total(), 0);
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty());
}

#[test]
fn refill_after_unnotified_pde_change_tracks_the_new_chain() {
    let (mut mem, regs) = simple_guest();
    let (mut tm, mut fr) = (Tables::new(0), Frames::default());
    let mut mmu = ShadowMmu::new(cpu(), 64).unwrap();
    let root = mmu.switch_root(&mut tm, &mut fr, None, &regs).unwrap();
    fault(&mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x1000, PFEC_U);
    // Device write: PDE 0 now points to a new PT at 0x5000; then INVLPG as required.
    mem.write64(0x5008, 0x30000 | PTE_P | PTE_US);
    mem.write64(0x3000, 0x5000 | PTE_P | PTE_RW | PTE_US);
    let f = mmu.invlpg(&mut tm, root, 0x1000).unwrap();
    assert_eq!(f, Flush::All);
    mmu.flush_done(&mut tm, &mut fr);
    fault(&mut mmu, &mut tm, &mut fr, &mem, root, &regs, 0x1000, PFEC_U);
    assert_eq!(mmu.lookup(&tm, root, 0x1000).unwrap() & SPTE_ADDR, 0x30000 + HPA_OFF);
    // The new PT is now write-protected, and a write to it zaps the leaf; the old one is not.
    assert!(mmu.is_write_protected(&tm, 0x5000));
    assert!(!mmu.is_write_protected(&tm, 0x4000));
    assert_eq!(mmu.guest_pt_write(&mut tm, 0x5008, 8), Flush::All);
    mmu.flush_done(&mut tm, &mut fr);
    assert!(mmu.lookup(&tm, root, 0x1000).is_none());
    mmu.teardown(&mut tm, &mut fr);
    assert!(tm.pages.is_empty() && fr.pins.is_empty());
}
