//! `KVM_IOEVENTFD`: guest writes that signal a notifier instead of exiting to userspace (Linux
//! `kvm_ioeventfd`, `ioeventfd_in_range`, `ioeventfd_check_collision`).
//!
//! # Rules (Linux's)
//! - Buses: MMIO, PIO (`KVM_IOEVENTFD_FLAG_PIO`) and the virtio-ccw notify bus (s390: accepted
//!   and kept, never written on x86). Flags outside `KVM_IOEVENTFD_VALID_FLAG_MASK`, a length
//!   other than 0/1/2/4/8, an `addr + len` overflow, or length 0 with `DATAMATCH`: `EINVAL`.
//! - A write hits an ioeventfd when its address is the ioeventfd's address exactly, and either
//!   the ioeventfd has length 0 (any length; also on the PIO bus, as Linux allows it), or the
//!   lengths are equal and the ioeventfd has no `DATAMATCH` or the written value (little-endian,
//!   zero-extended) equals `datamatch`. The collision rule guarantees at most one hit.
//! - Assign: `EEXIST` when an ioeventfd of the same bus and address could take the same write
//!   (either length 0; or same length and either without datamatch or equal datamatch),
//!   whatever its notifier. Deassign: the entry with the same bus, notifier, address, length,
//!   datamatch flag and (with the flag) datamatch; `ENOENT` if none. Deassign validates nothing
//!   else (as Linux).
//! - Limit: [`NR_IOBUS_DEVS`] per bus, then `ENOSPC`. Linux excludes ioeventfds from its bus
//!   limit (they are bounded by the process's descriptors); okvm bounds them because each one
//!   is kernel memory that userspace chooses to allocate. QEMU registers a few per virtio queue.
//!
//! # vCPU path
//! Each bus is an array sorted by address, in the host heap, behind its own small lock that
//! the vCPU path holds only for a binary search and the signal (a leaf lock: nothing else is
//! taken under it; `okvm_host_eventfd_signal` never sleeps). An atomic count per bus lets a VM
//! without ioeventfds skip the lock entirely. Assign/deassign happen under the same lock, so
//! once a deassign returns no vCPU signals the removed notifier any more and its reference can
//! be dropped.

use core::sync::atomic::{AtomicUsize, Ordering};

use kvm_abi::{
    kvm_ioeventfd, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_DEASSIGN,
    KVM_IOEVENTFD_FLAG_PIO, KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY, KVM_IOEVENTFD_VALID_FLAG_MASK,
};

use super::HVec;
use crate::errno::{KResult, EEXIST, EINVAL, ENOENT};
use crate::hmem::HBox;
use crate::host::{Host, RawEventFd};
use crate::sync::HMutex;

/// Most ioeventfds per bus (Linux `NR_IOBUS_DEVS`); beyond: `ENOSPC`.
pub const NR_IOBUS_DEVS: usize = 1000;

/// One registered ioeventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ent {
    addr: u64,
    datamatch: u64,
    e: RawEventFd,
    /// 0 (any length), 1, 2, 4 or 8.
    len: u8,
    /// No `DATAMATCH`: any value hits.
    wildcard: bool,
}

impl Ent {
    /// Whether a write of `data` at `addr` hits this ioeventfd (Linux `ioeventfd_in_range`).
    fn hit(&self, addr: u64, data: &[u8]) -> bool {
        if addr != self.addr {
            return false;
        }
        if self.len == 0 {
            return true;
        }
        if usize::from(self.len) != data.len() {
            return false;
        }
        self.wildcard || le_value(data) == self.datamatch
    }

    /// Whether `self` and `o` (same bus) could both take one write (Linux
    /// `ioeventfd_check_collision`).
    fn collides(&self, o: &Ent) -> bool {
        self.addr == o.addr
            && (self.len == 0
                || o.len == 0
                || (self.len == o.len
                    && (self.wildcard || o.wildcard || self.datamatch == o.datamatch)))
    }
}

/// Little-endian value of up to 8 bytes.
fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(data) {
        *d = *s;
    }
    u64::from_le_bytes(v)
}

/// The buses, each sorted by address.
struct Buses<H: Host> {
    mmio: HVec<Ent, H>,
    pio: HVec<Ent, H>,
    ccw: HVec<Ent, H>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bus {
    Mmio,
    Pio,
    Ccw,
}

/// Linux `ioeventfd_bus_from_flags`.
fn bus_of(flags: u32) -> Bus {
    if flags & KVM_IOEVENTFD_FLAG_PIO != 0 {
        Bus::Pio
    } else if flags & KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY != 0 {
        Bus::Ccw
    } else {
        Bus::Mmio
    }
}

impl<H: Host> Buses<H> {
    fn bus(&mut self, b: Bus) -> &mut HVec<Ent, H> {
        match b {
            Bus::Mmio => &mut self.mmio,
            Bus::Pio => &mut self.pio,
            Bus::Ccw => &mut self.ccw,
        }
    }
}

/// The ioeventfds of one VM.
pub struct IoEventFds<H: Host> {
    host: &'static H,
    /// [a] Entries on the MMIO bus (written under `buses`).
    nr_mmio: AtomicUsize,
    /// [a] Entries on the PIO bus (written under `buses`).
    nr_pio: AtomicUsize,
    /// The tables (leaf lock).
    buses: HMutex<Buses<H>, H>,
}

impl<H: Host> IoEventFds<H> {
    /// No ioeventfd.
    pub fn new(host: &'static H) -> KResult<Self> {
        Ok(Self {
            host,
            nr_mmio: AtomicUsize::new(0),
            nr_pio: AtomicUsize::new(0),
            buses: HMutex::new(
                host,
                Buses {
                    mmio: HVec::default(),
                    pio: HVec::default(),
                    ccw: HVec::default(),
                },
            )?,
        })
    }

    /// [`IoEventFds::new`] in the host heap (out of line: keeps `Vm::alloc`'s frame small).
    #[inline(never)]
    pub fn boxed(host: &'static H) -> KResult<HBox<Self, H>> {
        HBox::new(host, Self::new(host)?)
    }

    /// `KVM_IOEVENTFD`.
    pub fn ioctl(&self, a: &kvm_ioeventfd) -> KResult<i64> {
        if a.flags & KVM_IOEVENTFD_FLAG_DEASSIGN != 0 {
            return self.deassign(a).map(|()| 0);
        }
        if !matches!(a.len, 0 | 1 | 2 | 4 | 8)
            || a.addr.checked_add(u64::from(a.len)).is_none()
            || a.flags & !KVM_IOEVENTFD_VALID_FLAG_MASK != 0
            || (a.len == 0 && a.flags & KVM_IOEVENTFD_FLAG_DATAMATCH != 0)
        {
            return Err(EINVAL);
        }
        let e = self.host.eventfd_get(a.fd)?;
        let r = self.assign(a, e);
        if r.is_err() {
            // SAFETY: our reference from eventfd_get, stored nowhere.
            unsafe { self.host.eventfd_put(e) };
        }
        r.map(|()| 0)
    }

    fn entry(a: &kvm_ioeventfd, e: RawEventFd) -> Ent {
        let wildcard = a.flags & KVM_IOEVENTFD_FLAG_DATAMATCH == 0;
        Ent {
            addr: a.addr,
            datamatch: if wildcard { 0 } else { a.datamatch },
            e,
            len: a.len as u8,
            wildcard,
        }
    }

    fn assign(&self, a: &kvm_ioeventfd, e: RawEventFd) -> KResult<()> {
        let bus = bus_of(a.flags);
        let new = Self::entry(a, e);
        let mut g = self.buses.lock();
        let v = g.bus(bus);
        if v.as_slice().iter().any(|o| o.collides(&new)) {
            return Err(EEXIST);
        }
        v.reserve_one(self.host, NR_IOBUS_DEVS, new)?;
        let at = v.as_slice().partition_point(|o| o.addr <= new.addr);
        v.insert_reserved(at, new);
        self.publish(&mut g);
        Ok(())
    }

    fn deassign(&self, a: &kvm_ioeventfd) -> KResult<()> {
        let e = self.host.eventfd_get(a.fd)?;
        let bus = bus_of(a.flags);
        let want = Self::entry(a, e);
        let removed = {
            let mut g = self.buses.lock();
            let v = g.bus(bus);
            let i = v.as_slice().iter().position(|o| {
                o.e == e
                    && o.addr == want.addr
                    && u32::from(o.len) == a.len
                    && o.wildcard == want.wildcard
                    && (o.wildcard || o.datamatch == want.datamatch)
            });
            let r = i.and_then(|i| v.remove(i));
            self.publish(&mut g);
            r
        };
        // SAFETY: the reference from eventfd_get above.
        unsafe { self.host.eventfd_put(e) };
        let old = removed.ok_or(ENOENT)?;
        // SAFETY: the entry's reference; it left the table under the lock, so no vCPU
        // signals it any more.
        unsafe { self.host.eventfd_put(old.e) };
        Ok(())
    }

    fn publish(&self, g: &mut Buses<H>) {
        self.nr_mmio.store(g.mmio.len(), Ordering::Release);
        self.nr_pio.store(g.pio.len(), Ordering::Release);
    }

    /// A guest write of `data` at guest-physical `addr` (`pio`: at port `addr`) that the core
    /// would hand to userspace: signals the ioeventfd it hits and returns `true` (the write is
    /// complete), else `false`.
    pub fn write(&self, pio: bool, addr: u64, data: &[u8]) -> bool {
        self.write_n(pio, addr, data, data.len().max(1), 1)
    }

    /// `count` writes of `size` bytes each (`data` in order) at the same address, as a string
    /// `OUTS` batch: when every one hits an ioeventfd, each is signaled and `true` returned;
    /// otherwise nothing is signaled and the whole batch goes to userspace.
    pub fn write_n(&self, pio: bool, addr: u64, data: &[u8], size: usize, count: usize) -> bool {
        let nr = if pio { &self.nr_pio } else { &self.nr_mmio };
        if nr.load(Ordering::Acquire) == 0 || count == 0 || size == 0 {
            return false;
        }
        let g = self.buses.lock();
        let v = if pio { &g.pio } else { &g.mmio };
        let s = v.as_slice();
        let first = s.partition_point(|o| o.addr < addr);
        let Some(cands) = s.get(first..) else {
            return false;
        };
        let find = |chunk: &[u8]| {
            cands
                .iter()
                .take_while(|o| o.addr == addr)
                .find(|o| o.hit(addr, chunk))
                .map(|o| o.e)
        };
        let mut chunks = data.chunks(size).take(count);
        if data.len() / size < count || !chunks.all(|c| find(c).is_some()) {
            return false;
        }
        for c in data.chunks(size).take(count) {
            if let Some(e) = find(c) {
                self.host.eventfd_signal(e);
            }
        }
        true
    }
}

impl<H: Host> Drop for IoEventFds<H> {
    fn drop(&mut self) {
        let b = self.buses.get_mut();
        for v in [&mut b.mmio, &mut b.pio, &mut b.ccw] {
            while let Some(o) = v.pop() {
                // SAFETY: the entry's reference; the VM (and every vCPU path) is gone.
                unsafe { self.host.eventfd_put(o.e) };
            }
        }
    }
}
