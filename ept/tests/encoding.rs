//! Known bit encodings (Intel SDM Vol. 3C "EPT Translation Mechanism" and "Extended-Page-Table
//! Pointer (EPTP)"; AMD APM Vol. 2 "Long-Mode Page Translation", "PAT Indexing", "Nested Paging"),
//! written as literal values and checked against what a real table stores in memory.

mod common;

use common::{FakeMem, LINUX_PAT, OPENBSD_PAT, PHYS_BITS};
use ept::{ept_entry, x86_entry, Attrs, Config, Error, Format, MemType, PageSize, Perms, Table, TableMemory};

const EPT: Format = Format::Ept { accessed_dirty: true };
const NPT: Format = Format::Npt { nx: true, host_pat: LINUX_PAT };

fn table(format: Format) -> Table<FakeMem> {
    Table::new(FakeMem::new(), Config { format, gpa_bits: 48, phys_bits: PHYS_BITS }).unwrap()
}

fn attrs(perms: Perms, mem_type: MemType) -> Attrs {
    Attrs { perms, mem_type, ignore_pat: false }
}

/// The raw entries on the path to `gpa`, PML4E first.
fn path(t: &Table<FakeMem>, gpa: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut table = t.root_pa().unwrap();
    for level in (1..=4u8).rev() {
        let index = (gpa >> (12 + 9 * (level - 1))) as usize & 511;
        let raw = t.memory().entries(table)[index].load(std::sync::atomic::Ordering::Relaxed);
        out.push(raw);
        match t.format().kind(raw, level) {
            ept::Kind::Table(child) => table = child,
            _ => break,
        }
    }
    out
}

#[test]
fn eptp_encoding() {
    // Bits 2:0 memory type WB = 6, bits 5:3 walk length - 1 = 3, bit 6 A/D enable.
    assert_eq!(ept_entry::eptp(0x1234_5000, false), 0x1234_501e);
    assert_eq!(ept_entry::eptp(0x1234_5000, true), 0x1234_505e);
    let t = table(EPT);
    assert_eq!(t.root_pointer(), Some(t.root_pa().unwrap() | 0x5e));
    let t = table(Format::Ept { accessed_dirty: false });
    assert_eq!(t.root_pointer(), Some(t.root_pa().unwrap() | 0x1e));
}

#[test]
fn ncr3_is_root_address() {
    let t = table(NPT);
    assert_eq!(t.root_pointer(), t.root_pa());
}

#[test]
fn ept_entries_in_memory() {
    let mut t = table(EPT);
    let rwx = Perms::READ | Perms::WRITE | Perms::EXEC;
    // 4 KiB page, RW, WB: R|W (0x3) | WB << 3 (0x30).
    let _ = t.map(0x4000_1000, 0x7777_7000, 0x1000, attrs(Perms::READ | Perms::WRITE, MemType::WriteBack), PageSize::Size1G).unwrap();
    let p = path(&t, 0x4000_1000);
    assert_eq!(p.len(), 4);
    for e in &p[..3] {
        // Table references: R|W|X, bits 7:3 zero.
        assert_eq!(e & 0xfff, 0x7);
    }
    assert_eq!(p[3], 0x7777_7033);
    // 2 MiB page, RWX, UC, ignore PAT: 0x7 | 0 << 3 | 0x40 | large 0x80.
    let a = Attrs { perms: rwx, mem_type: MemType::Uncacheable, ignore_pat: true };
    let _ = t.map(0x8020_0000, 0x1_0040_0000, 0x20_0000, a, PageSize::Size1G).unwrap();
    let p = path(&t, 0x8020_0000);
    assert_eq!(p.len(), 3);
    assert_eq!(p[2], 0x1_0040_00c7);
    // 1 GiB page, R+X, WT (4): 0x5 | 0x20 | 0x80.
    let _ = t.map(0x1_0000_0000, 0x40_0000_0000 - 0x4000_0000, 0x4000_0000, attrs(Perms::READ | Perms::EXEC, MemType::WriteThrough), PageSize::Size1G).unwrap();
    let p = path(&t, 0x1_0000_0000);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1], 0x3f_c000_00a5);
    // WC = 1, WP = 5 in bits 5:3.
    let _ = t.map(0x2000, 0x3000, 0x1000, attrs(Perms::READ, MemType::WriteCombining), PageSize::Size4K).unwrap();
    assert_eq!(path(&t, 0x2000)[3], 0x3009);
    let _ = t.map(0x5000, 0x3000, 0x1000, attrs(Perms::READ, MemType::WriteProtected), PageSize::Size4K).unwrap();
    assert_eq!(path(&t, 0x5000)[3], 0x3029);
}

#[test]
fn npt_entries_in_memory() {
    let mut t = table(NPT);
    // Table references: P|RW|US.
    let _ = t.map(0x4000_1000, 0x7777_7000, 0x1000, attrs(Perms::READ | Perms::WRITE | Perms::EXEC, MemType::WriteBack), PageSize::Size1G).unwrap();
    let p = path(&t, 0x4000_1000);
    assert_eq!(p.len(), 4);
    for e in &p[..3] {
        assert_eq!(e & 0xfff, 0x7);
        assert_eq!(e >> 63, 0);
    }
    // WB is Linux PAT index 0: no PWT/PCD/PAT bits.
    assert_eq!(p[3], 0x7777_7007);
    // Read-only, non-executable, UC (Linux PAT index 3: PWT|PCD): P|US|PWT|PCD, NX.
    let _ = t.map(0x2000, 0x3000, 0x1000, attrs(Perms::READ, MemType::Uncacheable), PageSize::Size4K).unwrap();
    assert_eq!(path(&t, 0x2000)[3], 0x8000_0000_0000_301d);
    // WT is Linux PAT index 7: 4 KiB PAT bit is bit 7.
    let _ = t.map(0x5000, 0x3000, 0x1000, attrs(Perms::READ | Perms::EXEC, MemType::WriteThrough), PageSize::Size4K).unwrap();
    assert_eq!(path(&t, 0x5000)[3], 0x3000 | 0x80 | 0x18 | 0x5);
    // 2 MiB WP = Linux PAT index 5: PWT and the large-page PAT bit 12, plus PS.
    let _ = t.map(0x80_0000, 0x20_0000, 0x20_0000, attrs(Perms::READ | Perms::WRITE | Perms::EXEC, MemType::WriteProtected), PageSize::Size2M).unwrap();
    let p = path(&t, 0x80_0000);
    assert_eq!(p.len(), 3);
    assert_eq!(p[2], 0x20_0000 | 0x1000 | 0x80 | 0x8 | 0x7);
    // 2 MiB WC = index 1: PWT only.
    let _ = t.map(0xa0_0000, 0x20_0000, 0x20_0000, attrs(Perms::READ | Perms::EXEC, MemType::WriteCombining), PageSize::Size2M).unwrap();
    assert_eq!(path(&t, 0xa0_0000)[2], 0x20_0000 | 0x80 | 0x8 | 0x5);
}

#[test]
fn npt_without_nx_and_pat_limits() {
    let mut t = table(Format::Npt { nx: false, host_pat: OPENBSD_PAT });
    let wb = attrs(Perms::READ | Perms::WRITE, MemType::WriteBack);
    // Non-executable pages need NX (host EFER.NXE).
    assert_eq!(t.map(0, 0x1000, 0x1000, wb, PageSize::Size4K), Err(Error::InvalidPermissions));
    let rwx = Perms::READ | Perms::WRITE | Perms::EXEC;
    // OpenBSD's PAT has no WT or WP entry.
    assert_eq!(t.map(0, 0x1000, 0x1000, attrs(rwx, MemType::WriteThrough), PageSize::Size4K), Err(Error::MemTypeUnavailable));
    assert_eq!(t.map(0, 0x1000, 0x1000, attrs(rwx, MemType::WriteProtected), PageSize::Size4K), Err(Error::MemTypeUnavailable));
    // Ignore-PAT does not exist in nested paging.
    let ipat = Attrs { perms: rwx, mem_type: MemType::WriteBack, ignore_pat: true };
    assert_eq!(t.map(0, 0x1000, 0x1000, ipat, PageSize::Size4K), Err(Error::MemTypeUnavailable));
    let _ = t.map(0, 0x1000, 0x1000, attrs(rwx, MemType::Uncacheable), PageSize::Size4K).unwrap();
    assert_eq!(path(&t, 0)[3], 0x1000 | 0x18 | 0x7);
    assert_eq!(t.protect(0, 0x1000, Perms::EXEC), Err(Error::InvalidPermissions));
    assert_eq!(t.table_pages(), 4);
}

#[test]
fn every_mapping_must_be_readable() {
    for format in [EPT, NPT] {
        let mut t = table(format);
        let a = attrs(Perms::WRITE | Perms::EXEC, MemType::WriteBack);
        assert_eq!(t.map(0, 0x1000, 0x1000, a, PageSize::Size4K), Err(Error::InvalidPermissions));
        let _ = t.map(0, 0x1000, 0x1000, attrs(Perms::READ, MemType::WriteBack), PageSize::Size4K).unwrap();
        assert_eq!(t.protect(0, 0x1000, Perms::READ), Err(Error::InvalidPermissions));
    }
}

#[test]
fn x86_pat_helpers() {
    for large in [false, true] {
        for i in 0..8u8 {
            assert_eq!(x86_entry::pat_index(x86_entry::pat_bits(i, large), large), i);
        }
    }
    assert_eq!(x86_entry::pat_bits(7, false), 0x98);
    assert_eq!(x86_entry::pat_bits(7, true), 0x1018);
    assert_eq!(x86_entry::pat_entry_type(LINUX_PAT, 5), 5);
    assert_eq!(x86_entry::pat_entry_type(LINUX_PAT, 2), x86_entry::PAT_UC_MINUS);
}

#[test]
fn address_limits() {
    for format in [EPT, NPT] {
        let a = attrs(Perms::READ | Perms::EXEC, MemType::WriteBack);
        let mut t = Table::new(FakeMem::new(), Config { format, gpa_bits: 39, phys_bits: 40 }).unwrap();
        let top = 1u64 << 39;
        assert_eq!(t.map(top - 0x1000, 0, 0x2000, a, PageSize::Size4K), Err(Error::InvalidGpaRange));
        assert_eq!(t.map(top, 0, 0x1000, a, PageSize::Size4K), Err(Error::InvalidGpaRange));
        assert_eq!(t.map(u64::MAX - 0xfff, 0, 0x1000, a, PageSize::Size4K), Err(Error::InvalidGpaRange));
        assert_eq!(t.map(0x800, 0, 0x1000, a, PageSize::Size4K), Err(Error::InvalidGpaRange));
        assert_eq!(t.map(0, 0x800, 0x1000, a, PageSize::Size4K), Err(Error::InvalidHpa));
        assert_eq!(t.map(0, (1 << 40) - 0x1000, 0x2000, a, PageSize::Size4K), Err(Error::InvalidHpa));
        assert_eq!(t.lookup(top), Err(Error::InvalidGpaRange));
        assert_eq!(t.unmap(top - 0x1000, 0x2000, |_| {}), Err(Error::InvalidGpaRange));
        let _ = t.map(top - 0x1000, (1 << 40) - 0x1000, 0x1000, a, PageSize::Size4K).unwrap();
        assert_eq!(t.lookup(top - 1).unwrap().unwrap().hpa, (1 << 40) - 1);
        assert_eq!(t.table_pages(), 4);
        assert!(Table::new(FakeMem::new(), Config { format, gpa_bits: 49, phys_bits: 40 }).is_err());
    }
}

#[test]
fn harvest_needs_dirty_flags() {
    let mut t = table(Format::Ept { accessed_dirty: false });
    let mut bm = [0u64; 1];
    assert_eq!(t.harvest_dirty(0, 0x1000, &mut bm), Err(Error::NoDirtyTracking));
    let mut t = table(EPT);
    assert_eq!(t.harvest_dirty(0, 65 * 0x1000, &mut bm), Err(Error::BitmapTooSmall));
}
