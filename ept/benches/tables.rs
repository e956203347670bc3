//! Throughput figures of the table operations (a benchmark: it prints, it asserts nothing on
//! time). Run: `cargo bench -p ept`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{FakeMem, LINUX_PAT, PHYS_BITS};
use ept::{Attrs, Config, Format, MemType, PageSize, Perms, Table};

const PAGE: u64 = 4096;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;

fn per_page(label: &str, format: Format, pages: u64, f: impl FnOnce()) {
    let t0 = Instant::now();
    f();
    let ns = t0.elapsed().as_nanos() as f64;
    println!("{format:?}: {label}: {:.1} ns per 4 KiB page ({pages} pages)", ns / pages as f64);
}

fn main() {
    let rw = Attrs { perms: Perms::READ | Perms::WRITE, mem_type: MemType::WriteBack, ignore_pat: false };
    for format in [Format::Ept { accessed_dirty: true }, Format::Npt { nx: true, host_pat: LINUX_PAT }] {
        let mut t = Table::new(FakeMem::new(), Config { format, gpa_bits: 48, phys_bits: PHYS_BITS }).unwrap();
        let n = G1 / PAGE;
        per_page("map 1 GiB as 4 KiB leaves", format, n, || {
            let _ = t.map(0, 0, G1, rw, PageSize::Size4K).unwrap();
        });
        per_page("one-page map (fault path) x 4096", format, 4096, || {
            for i in 0..4096 {
                let _ = t.map(4 * G1 + i * PAGE, G1 + i * PAGE, PAGE, rw, PageSize::Size4K).unwrap();
            }
        });
        per_page("write-protect 1 GiB of 4 KiB leaves", format, n, || {
            let _ = t.protect(0, G1, Perms::WRITE).unwrap();
        });
        let mut bitmap = vec![0u64; (n / 64) as usize];
        per_page("harvest 1 GiB of clean 4 KiB leaves", format, n, || {
            let _ = t.harvest_dirty(0, G1, &mut bitmap).unwrap();
        });
        let mut removed = 0u64;
        per_page("unmap 1 GiB of 4 KiB leaves", format, n, || {
            let _ = t.unmap(0, G1, |_| removed += 1).unwrap();
        });
        assert_eq!(removed, n);
        per_page("map 1 GiB as 2 MiB leaves", format, n, || {
            let _ = t.map(8 * G1, 0, G1, rw, PageSize::Size2M).unwrap();
        });
        per_page("split 1 page out of a 2 MiB leaf (unmap)", format, 512, || {
            let _ = t.unmap(8 * G1 + M2 + PAGE, PAGE, |_| {}).unwrap();
        });
        let _ = t.teardown(|_| {});
        t.finish_invalidation();
        assert_eq!(t.table_pages(), 0);
    }
}
