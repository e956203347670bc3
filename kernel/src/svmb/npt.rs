//! Per-VM SVM state: the nested page table (ept/'s NPT format over host pages) and the
//! invalidation protocol that makes a change visible to every vCPU before pages are released.
//!
//! Protocol (ept/'s design comment): change the table, then bump the VM's TLB generation and
//! wait until no vCPU is still in guest mode with an older view (kicking the CPUs it runs on),
//! then [`ept::Table::finish_invalidation`]; only then may the core unwire host pages. A vCPU
//! marks itself in guest mode *before* it reads the generation, and flushes its ASID on entry
//! when the generation moved, so a vCPU entering concurrently either is waited for or flushes.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ept::{Attrs, Config, Format, Invalidation, MemType, PageSize, Perms, Table, TableMemory};

use crate::caps::KVM_MAX_VCPUS;
use crate::errno::{KResult, EFAULT, ENOMEM};
use crate::hmem::HSlice;
use crate::host::{Host, Page};
use crate::sync::HMutex;

/// Table pages from the host's page allocator, reached through the host's physical-to-kernel
/// address service (the direct map on amd64).
pub struct HostTableMemory<H: Host> {
    host: &'static H,
}

impl<H: Host> TableMemory for HostTableMemory<H> {
    fn alloc_page(&mut self) -> Option<u64> {
        let p = self.host.page_alloc()?;
        if self.host.phys_kva(p.pa) == Some(p.va) {
            return Some(p.pa);
        }
        // Without a usable physical-to-virtual translation the page cannot be a table page.
        // SAFETY: the page was just allocated and is not used.
        unsafe { self.host.page_free(p) };
        None
    }

    fn free_page(&mut self, pa: u64) {
        if let Some(va) = self.host.phys_kva(pa) {
            // SAFETY: ept/ frees only pages it allocated and no table references any more.
            unsafe { self.host.page_free(Page { va, pa }) };
        }
    }

    fn entries(&self, pa: u64) -> &[AtomicU64; ept::ENTRIES_PER_PAGE] {
        // alloc_page checked that phys_kva gives the page's address; pages stay until freed.
        let va = self
            .host
            .phys_kva(pa)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr());
        // SAFETY: `pa` is a live table page (TableMemory contract) whose kernel address
        // phys_kva returned at allocation; 4096 bytes, page aligned, accessed atomically.
        unsafe { &*va.cast::<[AtomicU64; ept::ENTRIES_PER_PAGE]>() }
    }
}

/// `running` slot value: bit 0 = in guest mode, bits 63:1 = the CPU.
const IN_GUEST: u64 = 1;

/// Per-VM SVM state.
pub struct SvmVm<H: Host> {
    host: &'static H,
    /// [m] The nested page table (also taken alone by the backend's map/unmap).
    npt: HMutex<Table<HostTableMemory<H>>, H>,
    /// [I] nCR3.
    pub n_cr3: u64,
    /// [a] Bumped after every change that needs an ASID flush.
    pub tlb_gen: AtomicU64,
    /// [a] Per vCPU index: in guest mode and on which CPU.
    running: HSlice<AtomicU64, H>,
    /// [a] vCPU indexes handed out.
    pub nvcpus: AtomicU32,
}

impl<H: Host> SvmVm<H> {
    /// An empty nested page table of `format`.
    pub fn new(host: &'static H, format: Format, phys_bits: u8) -> KResult<Self> {
        let config = Config {
            format,
            gpa_bits: 48.min(phys_bits).max(32),
            phys_bits,
        };
        let t = Table::new(HostTableMemory { host }, config).map_err(|_| ENOMEM)?;
        let n_cr3 = t.root_pointer().ok_or(ENOMEM)?;
        Ok(Self {
            host,
            npt: HMutex::new(host, t)?,
            n_cr3,
            tlb_gen: AtomicU64::new(0),
            running: HSlice::new_with(host, KVM_MAX_VCPUS as usize, |_| AtomicU64::new(0))?,
            nvcpus: AtomicU32::new(0),
        })
    }

    /// Marks vCPU `index` in guest mode on `cpu` (before it reads [`SvmVm::tlb_gen`]).
    pub fn enter(&self, index: u32, cpu: u32) {
        if let Some(s) = self.running.get(index as usize) {
            s.store(u64::from(cpu) << 1 | IN_GUEST, Ordering::SeqCst);
        }
    }

    /// Marks vCPU `index` out of guest mode.
    pub fn leave(&self, index: u32) {
        if let Some(s) = self.running.get(index as usize) {
            s.store(0, Ordering::SeqCst);
        }
    }

    /// Performs an NPT invalidation: new generation, then every vCPU in guest mode is kicked
    /// and waited for (it flushes its ASID at its next entry).
    fn invalidate(&self) {
        self.tlb_gen.fetch_add(1, Ordering::SeqCst);
        let me = self.host.cpu_current();
        let n = (self.nvcpus.load(Ordering::SeqCst) as usize).min(self.running.len());
        for s in self.running.iter().take(n) {
            let v = s.load(Ordering::SeqCst);
            if v & IN_GUEST == 0 {
                continue;
            }
            let cpu = (v >> 1) as u32;
            if cpu != me {
                self.host.cpu_kick(cpu);
            }
            // The vCPU leaves guest mode at the next host interrupt (INTR is intercepted).
            while s.load(Ordering::SeqCst) == v {
                core::hint::spin_loop();
            }
        }
    }

    fn settle(&self, t: &mut Table<HostTableMemory<H>>, inv: Invalidation) {
        if inv != Invalidation::None || t.pending_invalidation() != Invalidation::None {
            self.invalidate();
        }
        t.finish_invalidation();
    }

    /// Maps guest frame `gfn` to `hpa` (4 KiB), read-only unless `writable`, replacing any
    /// older mapping of `gfn`. On failure `gfn` is left unmapped (and flushed).
    pub fn map(&self, gfn: u64, hpa: u64, writable: bool) -> KResult<()> {
        let gpa = gfn.checked_mul(4096).ok_or(EFAULT)?;
        let mut t = self.npt.lock();
        let mut perms = Perms::READ | Perms::EXEC;
        if writable {
            perms |= Perms::WRITE;
        }
        match t.lookup(gpa) {
            Ok(Some(tr)) if tr.hpa & !0xfff == hpa & !0xfff => {
                // Same page: only rights to add (adding rights owes no invalidation).
                let r = if writable {
                    t.grant(gpa & !0xfff, 4096, Perms::WRITE)
                } else {
                    Ok(Invalidation::None)
                };
                let inv = r.unwrap_or(Invalidation::NptFlushAsid);
                self.settle(&mut t, inv);
                return Ok(());
            }
            Ok(Some(_)) => {
                let inv = t
                    .unmap(gpa, 4096, |_| {})
                    .unwrap_or(Invalidation::NptFlushAsid);
                self.settle(&mut t, inv);
            }
            Ok(None) => {}
            Err(_) => return Err(EFAULT),
        }
        let attrs = Attrs {
            perms,
            mem_type: MemType::WriteBack,
            ignore_pat: false,
        };
        let r = t.map(gpa, hpa & !0xfff, 4096, attrs, PageSize::Size4K);
        let inv = match r {
            Ok(i) => i,
            Err(ept::Error::OutOfMemory) => {
                self.settle(&mut t, Invalidation::None);
                return Err(ENOMEM);
            }
            Err(_) => {
                self.settle(&mut t, Invalidation::None);
                return Err(EFAULT);
            }
        };
        self.settle(&mut t, inv);
        Ok(())
    }

    /// Unmaps `[gfn, gfn + npages)` and completes the invalidation before returning.
    pub fn unmap(&self, gfn: u64, npages: u64) {
        let (Some(gpa), Some(len)) = (gfn.checked_mul(4096), npages.checked_mul(4096)) else {
            return;
        };
        let mut t = self.npt.lock();
        // Unmapping 4 KiB leaves never splits, so it cannot fail for lack of memory; a range
        // beyond the table's GPA width was never mapped.
        let inv = t.unmap(gpa, len, |_| {}).unwrap_or(Invalidation::None);
        self.settle(&mut t, inv);
    }

    /// The host physical address `gfn` maps to, if any (tests).
    pub fn lookup(&self, gfn: u64) -> Option<(u64, bool)> {
        let t = self.npt.lock();
        let tr = t.lookup(gfn.checked_mul(4096)?).ok()??;
        Some((tr.hpa, tr.leaf.attrs.perms.contains(Perms::WRITE)))
    }
}

impl<H: Host> Drop for SvmVm<H> {
    fn drop(&mut self) {
        // No vCPU of this VM exists any more (vCPUs are dropped first); a new owner of any of
        // their ASIDs flushes it before use, so freeing the tables needs no further flush.
        let t = self.npt.get_mut();
        let _ = t.teardown(|_| {});
        t.finish_invalidation();
    }
}
