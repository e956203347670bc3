//! Address space identifiers (AMD APM vol. 2 §15.16 "TLB Control"): per-CPU allocation with
//! generations, so that a vCPU keeps its ASID while it stays on one CPU and no two guests
//! share an ASID on a CPU without a flush in between.

use crate::vmcb::TlbControl;

/// The ASIDs of one physical CPU: hands out `1..nasid` and starts a new generation (with a
/// full TLB flush) when they run out. ASID 0 is the host's.
#[derive(Debug, Clone)]
pub struct AsidAllocator {
    next: u32,
    max: u32,
    generation: u64,
}

/// A vCPU's ASID and where it is valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuAsid {
    /// The ASID, 0 before the first assignment.
    pub asid: u32,
    generation: u64,
    cpu: Option<u32>,
}

impl AsidAllocator {
    /// An allocator for a CPU with `nasid` ASIDs (CPUID 8000_000Ah EBX); `None` below 2.
    pub fn new(nasid: u32) -> Option<Self> {
        (nasid >= 2).then_some(AsidAllocator {
            next: 1,
            max: nasid - 1,
            generation: 1,
        })
    }

    /// Makes sure `v` holds an ASID valid on `cpu` (the CPU this allocator belongs to).
    /// Returns the TLB flush the next VMRUN needs when the ASID changed: a fresh ASID may hold
    /// stale entries of an earlier guest (or of another hypervisor sharing the CPU, such as
    /// vmm(4)), so it is flushed; running out of ASIDs flushes everything.
    pub fn assign(
        &mut self,
        v: &mut VcpuAsid,
        cpu: u32,
        flush_by_asid: bool,
    ) -> Option<TlbControl> {
        if v.asid != 0 && v.cpu == Some(cpu) && v.generation == self.generation {
            return None;
        }
        let mut flush_all = !flush_by_asid;
        if self.next > self.max {
            self.generation = self.generation.wrapping_add(1);
            self.next = 1;
            flush_all = true;
        }
        *v = VcpuAsid {
            asid: self.next,
            generation: self.generation,
            cpu: Some(cpu),
        };
        self.next += 1;
        Some(if flush_all {
            TlbControl::FlushAll
        } else {
            TlbControl::FlushAsid
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_tcg_16_asids_roll_over_with_a_full_flush() {
        let mut a = AsidAllocator::new(16).unwrap();
        let mut v: Vec<VcpuAsid> = vec![VcpuAsid::default(); 16];
        for (i, x) in v.iter_mut().take(15).enumerate() {
            assert_eq!(a.assign(x, 0, true), Some(TlbControl::FlushAsid));
            assert_eq!(x.asid, i as u32 + 1);
        }
        // Still valid: no change, no flush.
        assert_eq!(a.assign(&mut v[3], 0, true), None);
        assert_eq!(v[3].asid, 4);
        // The 16th vCPU exhausts ASIDs 1..15: new generation, flush all, ASID 1 again.
        assert_eq!(a.assign(&mut v[15], 0, true), Some(TlbControl::FlushAll));
        assert_eq!(v[15].asid, 1);
        // Old-generation vCPUs get new ASIDs, never a duplicate of a live one.
        assert_eq!(a.assign(&mut v[0], 0, true), Some(TlbControl::FlushAsid));
        assert_eq!(v[0].asid, 2);
    }

    #[test]
    fn moving_cpu_or_no_flush_by_asid() {
        let mut cpu0 = AsidAllocator::new(4).unwrap();
        let mut cpu1 = AsidAllocator::new(4).unwrap();
        let mut v = VcpuAsid::default();
        assert_eq!(cpu0.assign(&mut v, 0, false), Some(TlbControl::FlushAll));
        assert_eq!(cpu0.assign(&mut v, 0, false), None);
        // Same ASID number, but assigned by another CPU: reassigned on cpu 1.
        assert_eq!(cpu1.assign(&mut v, 1, true), Some(TlbControl::FlushAsid));
        assert_eq!(cpu0.assign(&mut v, 0, true), Some(TlbControl::FlushAsid));
        assert_eq!(v.asid, 2);
        assert!(AsidAllocator::new(1).is_none());
    }
}
