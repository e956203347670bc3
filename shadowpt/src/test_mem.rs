//! Simulated guest-physical memory for tests: sparse RAM pages; anything else is not RAM.

use crate::guest_memory::{GuestMemory, NotRam};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sparse guest RAM made of 4 KiB pages that tests add explicitly.
#[derive(Default)]
pub struct TestMem {
    pages: HashMap<u64, Box<[AtomicU64; 512]>>,
}

impl TestMem {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the page containing `gpa` RAM (zero-filled) if it is not already.
    pub fn add_page(&mut self, gpa: u64) {
        self.pages
            .entry(gpa & !0xFFF)
            .or_insert_with(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
    }

    fn word(&self, gpa: u64) -> Result<&AtomicU64, NotRam> {
        let page = self.pages.get(&(gpa & !0xFFF)).ok_or(NotRam { gpa })?;
        Ok(&page[((gpa & 0xFFF) / 8) as usize])
    }

    /// Writes a 64-bit entry (page added if needed).
    pub fn write64(&mut self, gpa: u64, v: u64) {
        self.add_page(gpa);
        self.word(gpa).unwrap().store(v, Ordering::SeqCst);
    }

    /// Writes a 32-bit entry (page added if needed).
    pub fn write32(&mut self, gpa: u64, v: u32) {
        self.add_page(gpa);
        let w = self.word(gpa & !7).unwrap();
        let shift = (gpa & 4) * 8;
        let old = w.load(Ordering::SeqCst);
        w.store(
            (old & !(0xFFFF_FFFFu64 << shift)) | (u64::from(v) << shift),
            Ordering::SeqCst,
        );
    }

    pub fn read64(&self, gpa: u64) -> u64 {
        self.word(gpa).unwrap().load(Ordering::SeqCst)
    }

    pub fn read32(&self, gpa: u64) -> u32 {
        (self.read64(gpa & !7) >> ((gpa & 4) * 8)) as u32
    }
}

impl GuestMemory for TestMem {
    fn read_u64(&self, gpa: u64) -> Result<u64, NotRam> {
        Ok(self.word(gpa)?.load(Ordering::SeqCst))
    }

    fn cmpxchg_u64(&self, gpa: u64, old: u64, new: u64) -> Result<bool, NotRam> {
        Ok(self
            .word(gpa)?
            .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok())
    }
}
