//! Walker results against hand-computed examples from SDM Vol. 3 chapter 4.

use crate::test_mem::TestMem;
use crate::*;

const P: u64 = PTE_P;
const RW: u64 = PTE_RW;
const US: u64 = PTE_US;
const A: u64 = PTE_A;
const D: u64 = PTE_D;
const PS: u64 = PTE_PS;
const XD: u64 = PTE_XD;

fn cpu() -> CpuModel {
    CpuModel {
        max_phys_addr: 46,
        gbpages: true,
    }
}

fn r32(cr4: u64) -> PagingRegs {
    PagingRegs {
        cr0: CR0_PG | CR0_WP,
        cr3: 0x1000,
        cr4,
        ..Default::default()
    }
}

fn rpae(mem: &TestMem, efer: u64) -> PagingRegs {
    let cr3 = 0x1020; // PDPT at 0x1020 (32-byte aligned).
    PagingRegs {
        cr0: CR0_PG | CR0_WP,
        cr3,
        cr4: CR4_PAE,
        efer,
        pdptes: load_pdptes(mem, cr3, &cpu()).unwrap(),
        ..Default::default()
    }
}

fn r64(cr4: u64, efer: u64) -> PagingRegs {
    PagingRegs {
        cr0: CR0_PG | CR0_WP,
        cr3: 0x1000,
        cr4: CR4_PAE | cr4,
        efer: EFER_LMA | efer,
        ..Default::default()
    }
}

fn rd(cpl: u8) -> Access {
    Access::new(AccessKind::Read, cpl, false)
}
fn wr(cpl: u8) -> Access {
    Access::new(AccessKind::Write, cpl, false)
}
fn fx(cpl: u8) -> Access {
    Access::new(AccessKind::Fetch, cpl, false)
}

fn pf(mem: &TestMem, regs: &PagingRegs, acc: Access, la: u64) -> u32 {
    match walk(mem, regs, &cpu(), &acc, la) {
        Err(WalkError::PageFault(p)) => p.error_code,
        other => panic!("expected #PF, got {other:?}"),
    }
}

fn ok(mem: &TestMem, regs: &PagingRegs, acc: Access, la: u64) -> Translation {
    walk(mem, regs, &cpu(), &acc, la).unwrap_or_else(|e| panic!("expected translation: {e:?}"))
}

#[test]
fn paging_off_is_identity_on_32_bits() {
    let mem = TestMem::new();
    let regs = PagingRegs::default();
    let t = ok(&mem, &regs, wr(3), 0x1_2345_6789);
    assert_eq!(t.gpa, 0x2345_6789);
    assert_eq!(t.table_count, 0);
    assert!(t.perms.user && t.perms.writable && t.perms.executable);
}

/// 32-bit paging, 4 KiB page: la 0x0040_3123 → PDE 1 (at CR3 + 4), PTE 3 (at PT + 12).
fn setup_32() -> TestMem {
    let mut m = TestMem::new();
    m.write32(0x1004, 0x2000 | (P | RW | US) as u32);
    m.write32(0x200C, 0x0055_5000 | (P | RW | US) as u32);
    m
}

#[test]
fn bits32_4k_translation_sets_accessed_then_dirty() {
    let mem = setup_32();
    let regs = r32(0);
    let t = ok(&mem, &regs, rd(3), 0x0040_3123);
    assert_eq!(t.gpa, 0x0055_5123);
    assert_eq!(t.page_size, PageSize::Size4K);
    assert_eq!(t.tables(), &[0x1000, 0x2000]);
    assert_eq!(mem.read32(0x1004), 0x2000 | (P | RW | US | A) as u32);
    assert_eq!(mem.read32(0x200C), 0x0055_5000 | (P | RW | US | A) as u32);
    // The neighbouring 32-bit entry in the same 64-bit word is untouched.
    assert_eq!(mem.read32(0x1000), 0);
    assert!(!t.dirty);
    let t = ok(&mem, &regs, wr(3), 0x0040_3123);
    assert!(t.dirty);
    assert_eq!(
        mem.read32(0x200C),
        0x0055_5000 | (P | RW | US | A | D) as u32
    );
    // D is never set in a non-leaf entry.
    assert_eq!(mem.read32(0x1004), 0x2000 | (P | RW | US | A) as u32);
}

#[test]
fn bits32_ps_ignored_without_cr4_pse() {
    let mut mem = setup_32();
    mem.write32(0x1004, 0x2000 | (P | RW | US | PS) as u32);
    let t = ok(&mem, &r32(0), rd(0), 0x0040_3123);
    assert_eq!(t.gpa, 0x0055_5123);
    let t = ok(&mem, &r32(CR4_PSE), rd(0), 0x0040_3123);
    assert_eq!(t.page_size, PageSize::Size4M);
    // PDE bits 31:22 are 0; bit 13 (from the PT address 0x2000) is now PSE-36 address bit 32.
    assert_eq!(t.gpa, 0x1_0000_3123);
}

#[test]
fn bits32_pse36_large_page() {
    let mut mem = TestMem::new();
    // PDE 1: frame 0x0840_0000, bits 39:32 = 0x05 in PDE bits 20:13, PAT (bit 12), dirty write.
    mem.write32(
        0x1004,
        0x0840_0000 | (0x05 << 13) | (1 << 12) | (P | RW | PS) as u32,
    );
    let regs = r32(CR4_PSE);
    let t = ok(&mem, &regs, wr(0), 0x0043_2100);
    assert_eq!(t.gpa, 0x5_0843_2100);
    assert_eq!(t.page_size, PageSize::Size4M);
    assert_eq!(t.pat_index, 4);
    assert_eq!(mem.read32(0x1004) as u64 & (A | D), A | D);
    // MAXPHYADDR 36: bit 36 of the address (PDE bit 17) is reserved.
    mem.write32(0x1004, 0x0840_0000 | (0x10 << 13) | (P | RW | PS) as u32);
    let c36 = CpuModel {
        max_phys_addr: 36,
        gbpages: false,
    };
    let e = walk(&mem, &regs, &c36, &rd(0), 0x0040_0000);
    assert_eq!(
        e,
        Err(WalkError::PageFault(PageFault {
            error_code: PFEC_P | PFEC_RSVD
        }))
    );
    // ... but fine with MAXPHYADDR 40.
    let c40 = CpuModel {
        max_phys_addr: 40,
        gbpages: false,
    };
    assert_eq!(
        walk(&mem, &regs, &c40, &rd(0), 0x0040_0000).unwrap().gpa,
        0x10_0840_0000
    );
    // Bit 21 is always reserved in a 4 MiB PDE.
    mem.write32(0x1004, 0x0840_0000 | (1 << 21) | (P | PS) as u32);
    assert_eq!(
        pf(&mem, &regs, wr(3), 0x0040_0000),
        PFEC_P | PFEC_RSVD | PFEC_W | PFEC_U
    );
}

#[test]
fn bits32_fetch_reports_id_only_with_smep() {
    let mut regs = r32(0);
    regs.efer = EFER_NXE; // NXE without PAE: no I/D (SDM §4.7).
    let mut m = TestMem::new();
    m.add_page(0x1000);
    assert_eq!(pf(&m, &regs, fx(0), 0x1000), 0);
    regs.cr4 |= CR4_SMEP;
    assert_eq!(pf(&m, &regs, fx(0), 0x1000), PFEC_I);
    assert_eq!(pf(&m, &regs, fx(3), 0x1000), PFEC_I | PFEC_U);
}

#[test]
fn bits32_has_no_execute_disable() {
    let mut mem = setup_32();
    mem.write32(0x200C, 0x0055_5000 | (P | US) as u32);
    let mut regs = r32(0);
    regs.efer = EFER_NXE;
    let t = ok(&mem, &regs, fx(3), 0x0040_3000);
    assert!(t.perms.executable);
}

#[test]
fn pagetable_outside_ram_is_not_a_page_fault() {
    let mut mem = TestMem::new();
    mem.write32(0x1004, 0x0900_0000 | (P | RW) as u32);
    let e = walk(&mem, &r32(0), &cpu(), &rd(0), 0x0040_3000);
    assert_eq!(e, Err(WalkError::NotRam(NotRam { gpa: 0x0900_000C })));
}

/// PAE: PDPT at 0x1020. la 0xC020_1ABC → PDPTE 3, PDE 1, PTE 1.
fn setup_pae() -> TestMem {
    let mut m = TestMem::new();
    m.write64(0x1020 + 3 * 8, 0x3000 | P);
    m.write64(0x3008, 0x4000 | P | RW | US);
    m.write64(0x4008, 0x0012_3000 | P | RW | US);
    m
}

#[test]
fn pae_4k_and_2m_pages() {
    let mut mem = setup_pae();
    let regs = rpae(&mem, 0);
    let t = ok(&mem, &regs, rd(3), 0xC020_1ABC);
    assert_eq!(t.gpa, 0x0012_3ABC);
    assert_eq!(t.tables(), &[0x3000, 0x4000]);
    // The PDPTE has no accessed flag: untouched.
    assert_eq!(mem.read64(0x1038), 0x3000 | P);
    assert_eq!(mem.read64(0x3008), 0x4000 | P | RW | US | A);
    // 2 MiB page at 0x1_0060_0000 (above 4 GiB is fine in PAE).
    mem.write64(0x3008, 0x1_0060_0000 | P | RW | US | PS);
    let t = ok(&mem, &regs, wr(3), 0xC020_1ABC);
    assert_eq!(t.gpa, 0x1_0060_1ABC);
    assert_eq!(t.page_size, PageSize::Size2M);
    assert_eq!(mem.read64(0x3008), 0x1_0060_0000 | P | RW | US | PS | A | D);
    // Bits 20:13 of a 2 MiB PDE are reserved.
    mem.write64(0x3008, 0x1_0060_0000 | (1 << 13) | P | RW | US | PS);
    assert_eq!(
        pf(&mem, &regs, rd(3), 0xC020_1ABC),
        PFEC_P | PFEC_RSVD | PFEC_U
    );
}

#[test]
fn pae_reserved_bits_and_nx() {
    let mut mem = setup_pae();
    // Bits 62:MAXPHYADDR are reserved in PAE paging (unlike 4-level, where 62:52 are ignored).
    mem.write64(0x4008, 0x0012_3000 | (1 << 55) | P | RW | US);
    let regs = rpae(&mem, EFER_NXE);
    assert_eq!(pf(&mem, &regs, rd(0), 0xC020_1000), PFEC_P | PFEC_RSVD);
    // XD with NXE = 1: no execution, I/D reported.
    mem.write64(0x4008, 0x0012_3000 | XD | P | RW | US);
    assert_eq!(pf(&mem, &regs, fx(0), 0xC020_1000), PFEC_P | PFEC_I);
    assert!(!ok(&mem, &regs, rd(0), 0xC020_1000).perms.executable);
    // XD with NXE = 0: reserved bit; a fetch fault without SMEP has no I/D.
    let regs = rpae(&mem, 0);
    assert_eq!(pf(&mem, &regs, fx(0), 0xC020_1000), PFEC_P | PFEC_RSVD);
    assert_eq!(pf(&mem, &regs, rd(0), 0xC020_1000), PFEC_P | PFEC_RSVD);
}

#[test]
fn pae_pdptes_are_cached_and_checked_at_load() {
    let mut mem = setup_pae();
    let regs = rpae(&mem, 0);
    // Clearing the PDPTE in memory does not affect the cached copy.
    mem.write64(0x1038, 0);
    assert_eq!(ok(&mem, &regs, rd(0), 0xC020_1ABC).gpa, 0x0012_3ABC);
    // A not-present cached PDPTE: #PF with P = 0.
    assert_eq!(pf(&mem, &regs, wr(3), 0x4000_0000), PFEC_W | PFEC_U);
    // Reserved bits in a present PDPTE (bits 2:1, 8:5, 63:M) fail the load (#GP).
    for bad in [RW, US, A, 1 << 8, 1 << 50, XD] {
        mem.write64(0x1038, 0x3000 | P | bad);
        assert_eq!(
            load_pdptes(&mem, 0x1020, &cpu()),
            Err(PdpteError::ReservedBit),
            "{bad:#x}"
        );
    }
    // Reserved bits in a not-present PDPTE do not matter.
    mem.write64(0x1038, 0x3000 | RW);
    assert!(load_pdptes(&mem, 0x1020, &cpu()).is_ok());
    assert_eq!(
        load_pdptes(&mem, 0x9_0000, &cpu()),
        Err(PdpteError::NotRam(NotRam { gpa: 0x9_0000 }))
    );
}

/// 4-level: la 0x0000_7F80_4020_3456 → PML4 255, PDPT 1, PD 1, PT 3.
const LA4: u64 = 0x0000_7F80_4020_3456;
fn setup_4level() -> TestMem {
    let mut m = TestMem::new();
    m.write64(0x1000 + 255 * 8, 0x2000 | P | RW | US);
    m.write64(0x2008, 0x3000 | P | RW | US);
    m.write64(0x3008, 0x4000 | P | RW | US);
    m.write64(0x4018, 0x00AB_C000 | P | RW | US);
    m
}

#[test]
fn level4_4k_translation_and_ad_bits() {
    let mem = setup_4level();
    let regs = r64(0, EFER_NXE);
    let t = ok(&mem, &regs, wr(3), LA4);
    assert_eq!(t.gpa, 0x00AB_C456);
    assert_eq!(t.tables(), &[0x1000, 0x2000, 0x3000, 0x4000]);
    for gpa in [0x1000 + 255 * 8, 0x2008, 0x3008] {
        assert_eq!(mem.read64(gpa) & (A | D), A, "{gpa:#x}");
    }
    assert_eq!(mem.read64(0x4018) & (A | D), A | D);
    // Upper address bits (sign extension) are not used by the 4-level walk.
    assert_eq!(
        ok(
            &mem,
            &regs,
            rd(0),
            0xFFFF_7F80_4020_3456 & 0x0000_FFFF_FFFF_FFFF
        )
        .gpa,
        0xABC456
    );
}

#[test]
fn level4_large_pages_and_their_reserved_bits() {
    let mut mem = setup_4level();
    let regs = r64(0, EFER_NXE);
    // 1 GiB page.
    mem.write64(
        0x2008,
        0x40_0000_0000 | P | RW | US | PS | PTE_PAT_LARGE | PTE_PCD,
    );
    let t = ok(&mem, &regs, rd(3), LA4);
    assert_eq!(t.page_size, PageSize::Size1G);
    assert_eq!(t.gpa, 0x40_0020_3456);
    assert_eq!(t.pat_index, 0b110);
    assert_eq!(t.tables(), &[0x1000, 0x2000]);
    // Without 1 GiB page support, PS in a PDPTE is reserved.
    let c = CpuModel {
        max_phys_addr: 46,
        gbpages: false,
    };
    assert_eq!(
        walk(&mem, &regs, &c, &rd(3), LA4),
        Err(WalkError::PageFault(PageFault {
            error_code: PFEC_P | PFEC_RSVD | PFEC_U
        }))
    );
    // Bits 29:13 of a 1 GiB PDPTE are reserved.
    mem.write64(0x2008, 0x40_0000_0000 | (1 << 29) | P | RW | US | PS);
    assert_eq!(pf(&mem, &regs, rd(3), LA4), PFEC_P | PFEC_RSVD | PFEC_U);
    // 2 MiB page.
    mem.write64(0x2008, 0x3000 | P | RW | US);
    mem.write64(0x3008, 0x0060_0000 | P | RW | US | PS);
    let t = ok(&mem, &regs, rd(3), LA4);
    assert_eq!((t.page_size, t.gpa), (PageSize::Size2M, 0x0060_3456));
    // PS in a PML4E is reserved; so is it in a PML5E.
    mem.write64(0x1000 + 255 * 8, 0x2000 | P | RW | US | PS);
    assert_eq!(
        pf(&mem, &regs, fx(3), LA4),
        PFEC_P | PFEC_RSVD | PFEC_U | PFEC_I
    );
}

#[test]
fn level4_maxphyaddr_and_ignored_bits() {
    let mut mem = setup_4level();
    let regs = r64(0, 0);
    let c36 = CpuModel {
        max_phys_addr: 36,
        gbpages: true,
    };
    // Bit 40 is beyond MAXPHYADDR 36: reserved in any level.
    mem.write64(0x3008, 0x4000 | (1 << 40) | P | RW | US);
    assert_eq!(
        walk(&mem, &regs, &c36, &wr(0), LA4),
        Err(WalkError::PageFault(PageFault {
            error_code: PFEC_P | PFEC_RSVD | PFEC_W
        }))
    );
    // With MAXPHYADDR 46 the same bit is an address bit (the table is then not RAM).
    assert_eq!(
        walk(&mem, &regs, &cpu(), &wr(0), LA4),
        Err(WalkError::NotRam(NotRam {
            gpa: 0x100_0000_4018
        }))
    );
    // Bits 58:52 are ignored; bit 63 is reserved without NXE.
    mem.write64(0x3008, 0x4000 | (0x7F << 52) | P | RW | US);
    assert_eq!(ok(&mem, &regs, rd(0), LA4).gpa, 0xABC456);
    mem.write64(0x3008, 0x4000 | XD | P | RW | US);
    assert_eq!(pf(&mem, &regs, rd(0), LA4), PFEC_P | PFEC_RSVD);
    // A not-present entry wins over reserved bits (reserved bits are checked only if P = 1).
    mem.write64(0x3008, 0x4000 | XD | RW | US);
    assert_eq!(pf(&mem, &regs, rd(0), LA4), 0);
}

#[test]
fn level5_walk() {
    // la bits 56:48 = 0x101 → PML5 index 257.
    let la = (0x101u64 << 48) | LA4;
    let mut mem = setup_4level();
    mem.write64(0x1000 + 255 * 8, 0);
    mem.write64(0x5000 + 257 * 8, 0x1000 | P | RW | US); // PML5E → PML4 at 0x1000
    mem.write64(0x1000 + 255 * 8, 0x2000 | P | RW | US);
    let mut regs = r64(CR4_LA57, 0);
    regs.cr3 = 0x5000;
    let t = ok(&mem, &regs, rd(0), la);
    assert_eq!(t.gpa, 0xABC456);
    assert_eq!(t.tables(), &[0x5000, 0x1000, 0x2000, 0x3000, 0x4000]);
    assert_eq!(mem.read64(0x5000 + 257 * 8) & A, A);
    mem.write64(0x5000 + 257 * 8, 0x1000 | P | RW | US | PS);
    assert_eq!(pf(&mem, &regs, rd(0), la), PFEC_P | PFEC_RSVD);
    mem.write64(0x5000 + 257 * 8, 0);
    assert_eq!(pf(&mem, &regs, rd(0), la), 0);
}

/// Sets the 4-level leaf and intermediate flags for permission tests: `upper` goes into the
/// PML4E, `leaf` into the PTE (both also get P).
fn perm_mem(upper: u64, leaf: u64) -> TestMem {
    let mut m = setup_4level();
    m.write64(0x1000 + 255 * 8, 0x2000 | P | upper);
    m.write64(0x4018, 0x00AB_C000 | P | leaf);
    m
}

#[test]
fn user_supervisor_and_read_write_rights() {
    let regs = r64(0, EFER_NXE);
    // Supervisor page (U/S = 0 in one level only).
    let mem = perm_mem(RW, RW | US);
    assert_eq!(pf(&mem, &regs, rd(3), LA4), PFEC_P | PFEC_U);
    assert_eq!(pf(&mem, &regs, fx(3), LA4), PFEC_P | PFEC_U | PFEC_I);
    assert!(!ok(&mem, &regs, rd(0), LA4).perms.user);
    // Implicit supervisor access at CPL 3 is a supervisor access.
    assert!(walk(
        &mem,
        &regs,
        &cpu(),
        &Access::implicit(AccessKind::Read),
        LA4
    )
    .is_ok());
    // Read-only (R/W = 0 in an upper level).
    let mem = perm_mem(US, RW | US);
    assert_eq!(pf(&mem, &regs, wr(3), LA4), PFEC_P | PFEC_W | PFEC_U);
    assert_eq!(pf(&mem, &regs, wr(0), LA4), PFEC_P | PFEC_W);
    // CR0.WP = 0: supervisor writes to read-only pages are allowed, user writes are not.
    let mut nowp = regs;
    nowp.cr0 &= !CR0_WP;
    assert!(ok(&mem, &nowp, wr(0), LA4).dirty);
    assert_eq!(pf(&mem, &nowp, wr(3), LA4), PFEC_P | PFEC_W | PFEC_U);
    // No A/D update on a faulting access.
    let mem = perm_mem(US, US);
    assert_eq!(pf(&mem, &regs, wr(3), LA4), PFEC_P | PFEC_W | PFEC_U);
    assert_eq!(mem.read64(0x4018) & (A | D), 0);
    assert_eq!(mem.read64(0x1000 + 255 * 8) & A, 0);
}

#[test]
fn execute_disable_and_smep() {
    let regs = r64(0, EFER_NXE);
    let mem = perm_mem(RW | US | XD, RW | US);
    assert_eq!(pf(&mem, &regs, fx(3), LA4), PFEC_P | PFEC_U | PFEC_I);
    assert_eq!(pf(&mem, &regs, fx(0), LA4), PFEC_P | PFEC_I);
    // SMEP: supervisor fetch from a user page faults; user fetch does not.
    let mem = perm_mem(RW | US, RW | US);
    let smep = r64(CR4_SMEP, EFER_NXE);
    assert_eq!(pf(&mem, &smep, fx(0), LA4), PFEC_P | PFEC_I);
    ok(&mem, &smep, fx(3), LA4);
    // Supervisor fetch from a supervisor page under SMEP is fine.
    let mem = perm_mem(RW, RW | US);
    ok(&mem, &smep, fx(0), LA4);
}

#[test]
fn smap_with_ac_and_implicit_accesses() {
    let regs = r64(CR4_SMAP, 0);
    let mem = perm_mem(RW | US, RW | US);
    assert_eq!(pf(&mem, &regs, rd(0), LA4), PFEC_P);
    assert_eq!(pf(&mem, &regs, wr(0), LA4), PFEC_P | PFEC_W);
    // RFLAGS.AC = 1 lifts SMAP for explicit accesses...
    ok(&mem, &regs, Access::new(AccessKind::Write, 0, true), LA4);
    // ...but not for implicit ones, even at CPL 3 (and the error code has U/S = 0).
    let mut imp = Access::implicit(AccessKind::Read);
    imp.cpl = 3;
    imp.ac = true;
    assert_eq!(pf(&mem, &regs, imp, LA4), PFEC_P);
    // SMAP does not restrict fetches or user accesses.
    ok(&mem, &regs, fx(0), LA4);
    ok(&mem, &regs, wr(3), LA4);
    // With CR0.WP = 0 and AC = 1, supervisor writes to read-only user pages are allowed.
    let mem = perm_mem(US, US);
    let mut nowp = regs;
    nowp.cr0 &= !CR0_WP;
    ok(&mem, &nowp, Access::new(AccessKind::Write, 0, true), LA4);
    assert_eq!(pf(&mem, &nowp, wr(0), LA4), PFEC_P | PFEC_W);
}

#[test]
fn protection_keys() {
    let key = 5u64;
    let mem = perm_mem(RW | US, RW | US | (key << 59));
    let mut regs = r64(CR4_PKE, 0);
    regs.pkru = 1 << (2 * key); // AD5
    assert_eq!(pf(&mem, &regs, rd(3), LA4), PFEC_P | PFEC_U | PFEC_PK);
    assert_eq!(pf(&mem, &regs, rd(0), LA4), PFEC_P | PFEC_PK);
    // Keys never apply to fetches.
    assert_eq!(ok(&mem, &regs, fx(3), LA4).pkey, 5);
    regs.pkru = 2 << (2 * key); // WD5
    ok(&mem, &regs, rd(3), LA4);
    assert_eq!(
        pf(&mem, &regs, wr(3), LA4),
        PFEC_P | PFEC_W | PFEC_U | PFEC_PK
    );
    assert_eq!(pf(&mem, &regs, wr(0), LA4), PFEC_P | PFEC_W | PFEC_PK);
    let mut nowp = regs;
    nowp.cr0 &= !CR0_WP;
    ok(&mem, &nowp, wr(0), LA4);
    // Another key's rights do not matter; PKE = 0 ignores keys.
    regs.pkru = 3 << (2 * 4);
    ok(&mem, &regs, wr(3), LA4);
    let mut off = r64(0, 0);
    off.pkru = u32::MAX;
    ok(&mem, &off, wr(3), LA4);
    // A key violation together with a rights violation: both reported.
    let mem = perm_mem(US, US | (key << 59));
    regs.pkru = 2 << (2 * key);
    assert_eq!(
        pf(&mem, &regs, wr(3), LA4),
        PFEC_P | PFEC_W | PFEC_U | PFEC_PK
    );
    // Supervisor pages use PKRS under CR4.PKS.
    let mem = perm_mem(RW, RW | (key << 59));
    let mut pks = r64(CR4_PKS, 0);
    pks.pkrs = 1 << (2 * key);
    assert_eq!(pf(&mem, &pks, rd(0), LA4), PFEC_P | PFEC_PK);
    pks.pkru = pks.pkrs;
    pks.pkrs = 0;
    ok(&mem, &pks, rd(0), LA4);
}

#[test]
fn translation_without_ad_updates() {
    let mem = setup_4level();
    let mut acc = wr(3);
    acc.update_ad = false;
    let t = ok(&mem, &r64(0, 0), acc, LA4);
    assert!(!t.dirty);
    assert_eq!(mem.read64(0x4018) & (A | D), 0);
}

/// Memory whose compare-exchange always loses the race.
struct Racy(TestMem);
impl GuestMemory for Racy {
    fn read_u64(&self, gpa: u64) -> Result<u64, NotRam> {
        self.0.read_u64(gpa)
    }
    fn cmpxchg_u64(&self, _: u64, _: u64, _: u64) -> Result<bool, NotRam> {
        Ok(false)
    }
}

#[test]
fn lost_ad_races_end_in_contended() {
    let mem = Racy(setup_4level());
    assert_eq!(
        walk(&mem, &r64(0, 0), &cpu(), &rd(0), LA4),
        Err(WalkError::Contended)
    );
    // Already-set A flags need no exchange.
    let m = setup_4level();
    ok(&m, &r64(0, 0), rd(0), LA4);
    let mem = Racy(m);
    assert!(walk(&mem, &r64(0, 0), &cpu(), &rd(0), LA4).is_ok());
}
