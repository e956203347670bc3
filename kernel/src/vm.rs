//! The VM object and the VM ioctls.
//!
//! Locking (`[x]` marks in field comments):
//! - `[I]` immutable after creation;
//! - `[a]` atomic;
//! - `[m]` the VM lock (`Vm::st`): memslots, vCPU creation, coalesced zones. Held only for the
//!   duration of one ioctl or one fault resolution, never across a guest run, so `KVM_RUN` on
//!   one vCPU never waits for another vCPU's run. Lock order: vCPU lock, then VM lock.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use kvm_abi::kvm_coalesced_mmio_zone;

use crate::backend::Backend;
use crate::caps::{self, KVM_MAX_VCPUS, KVM_MAX_VCPU_IDS};
use crate::clock::VmClock;
use crate::errno::{KResult, EEXIST, EFAULT, EINVAL, EIO, ENOMEM, ENOSPC, ENOTTY};
use crate::eventfd::ioeventfd::IoEventFds;
use crate::eventfd::irqfd::IrqFds;
use crate::hmem::{HBox, HPage, HSlice};
use crate::host::{FdKind, Host, MmRef};
use crate::irqchip::{self, IrqChip};
use crate::memslot::{Change, Memslots, Region};
use crate::sync::HMutex;
use crate::system::{Head, Magic, System};
use crate::user;
use crate::vcpu::Vcpu;

/// Most coalesced MMIO/PIO zones per VM (Linux's bus limit is larger; beyond this: `ENOSPC`).
pub const MAX_COALESCED_ZONES: usize = 64;

/// A registered coalesced zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, zerocopy::FromZeros)]
pub struct Zone {
    /// Start address (guest physical or port).
    pub addr: u64,
    /// Length in bytes.
    pub size: u32,
    /// Port I/O zone.
    pub pio: bool,
}

/// VM state under the VM lock.
pub struct VmState<H: Host> {
    /// Guest memory.
    pub slots: Memslots<H>,
    /// vCPUs created so far (also the next index).
    pub created_vcpus: u32,
    /// `KVM_SET_TSS_ADDR` (for a VMX backend's real-mode TSS).
    pub tss_addr: u64,
    /// `KVM_SET_IDENTITY_MAP_ADDR`.
    pub identity_map_addr: u64,
    /// Coalesced zones (heap: keeps the VM small enough to build on a kernel stack).
    pub zones: HSlice<Zone, H>,
    /// Number of valid `zones`.
    pub nzones: usize,
}

/// A VM.
#[repr(C)]
pub struct Vm<H: Host, B: Backend> {
    head: Head,
    /// [I] The system.
    pub sys: &'static System<H, B>,
    /// [I] The owner's address space.
    pub mm: MmRef,
    /// [a] Descriptor references: the VM descriptor plus one per vCPU descriptor.
    refs: AtomicUsize,
    /// [I] Backend per-VM state (internally synchronized).
    pub bvm: B::Vm,
    /// [I] The coalesced MMIO ring page (mapped at page 2 of every vCPU descriptor).
    pub ring: HPage<H>,
    /// [m] written, [a] read: vCPU pointers by creation index.
    vcpus: HSlice<AtomicPtr<Vcpu<H, B>>, H>,
    /// [a] Number of published `vcpus`.
    online: AtomicU32,
    /// [m] The locked state.
    pub st: HMutex<VmState<H>, H>,
    /// [a] `KVM_CAP_EXIT_ON_EMULATION_FAILURE` enabled.
    exit_on_emulation_failure: AtomicBool,
    /// The in-kernel irqchip (split mode: local APICs, GSI routes).
    pub irq: IrqChip<H>,
    /// [a] The VM clock (`KVM_GET_CLOCK` / `KVM_SET_CLOCK`).
    pub clock: VmClock,
    /// The in-kernel PIT (`KVM_CREATE_PIT2`).
    pub pit: irqchip::pitdev::PitSlot<H>,
    /// `KVM_IOEVENTFD` tables (own leaf lock; heap, to keep the VM small on the stack).
    pub ioeventfds: HBox<IoEventFds<H>, H>,
    /// `KVM_IRQFD` list (own lock; emptied by the VM descriptor's close and by `put` before
    /// anything is freed).
    pub irqfds: HBox<IrqFds<H>, H>,
}

impl<H: Host, B: Backend> Vm<H, B> {
    /// `KVM_CREATE_VM`: type 0 only; returns the new descriptor.
    #[inline(never)]
    pub fn create(sys: &'static System<H, B>, ty: u64) -> KResult<i64> {
        if ty != 0 {
            return Err(EINVAL);
        }
        let host = sys.host;
        let mm = host.mm_current().ok_or(ENOMEM)?;
        let vm = match Self::alloc(sys, mm) {
            Ok(v) => v,
            Err(e) => {
                host.mm_release(mm);
                return Err(e);
            }
        };
        let raw = vm.into_raw();
        sys.nr_vms.fetch_add(1, Ordering::SeqCst);
        match host.install_fd(FdKind::Vm, raw.as_ptr().cast::<c_void>()) {
            Ok(fd) => Ok(i64::from(fd)),
            Err(e) => {
                // SAFETY: the descriptor was not installed; ours is the only reference.
                unsafe { Self::put(raw.as_ptr()) };
                Err(e)
            }
        }
    }

    #[inline(never)]
    fn alloc(sys: &'static System<H, B>, mm: MmRef) -> KResult<HBox<Self, H>> {
        let host = sys.host;
        let st = VmState {
            slots: Memslots::new(host)?,
            created_vcpus: 0,
            tss_addr: 0,
            identity_map_addr: 0xfeff_c000,
            zones: HSlice::new_zeroed(host, MAX_COALESCED_ZONES)?,
            nzones: 0,
        };
        let vm = Vm {
            head: Head {
                magic: Magic::Vm as u32,
            },
            sys,
            mm,
            refs: AtomicUsize::new(1),
            bvm: sys.backend.vm_create()?,
            ring: HPage::new(host)?,
            vcpus: HSlice::new_with(host, KVM_MAX_VCPUS as usize, |_| {
                AtomicPtr::new(core::ptr::null_mut())
            })?,
            online: AtomicU32::new(0),
            st: HMutex::new(host, st)?,
            exit_on_emulation_failure: AtomicBool::new(false),
            irq: IrqChip::new(host)?,
            clock: VmClock::new(host.nanotime()),
            pit: irqchip::pitdev::PitSlot::new(host),
            ioeventfds: IoEventFds::boxed(host)?,
            irqfds: IrqFds::boxed(host)?,
        };
        HBox::new(host, vm)
    }

    /// Takes a reference (a new vCPU descriptor).
    fn get(&self) {
        self.refs.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops a reference; the last one tears the VM down.
    ///
    /// # Safety
    /// `vm` is live and the caller owns one reference, which it gives up.
    pub unsafe fn put(vm: *mut Self) {
        // SAFETY: the caller's reference keeps vm alive until the decrement.
        let this = unsafe { &*vm };
        if this.refs.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let sys = this.sys;
        let host = sys.host;
        // Irqfd callbacks use the VM through shared references: stop them all (waiting for
        // running ones) while the VM is still intact, before it is owned mutably and freed.
        this.irqfds.shutdown();
        // SAFETY: the count reached zero: no descriptor and no vCPU descriptor refers to the VM
        // any more, so we own it; it came from HBox::into_raw.
        let mut b = unsafe { HBox::from_raw(host, NonNull::new_unchecked(vm)) };
        b.head.magic = 0;
        // The PIT timer's callback looks up vCPU 0: stop it first.
        b.pit.shutdown();
        let n = b.online.load(Ordering::SeqCst) as usize;
        for slot in b.vcpus.iter().take(n) {
            let p = slot.swap(core::ptr::null_mut(), Ordering::SeqCst);
            if let Some(p) = NonNull::new(p) {
                // SAFETY: vCPUs are owned by their VM and freed only here.
                drop(unsafe { HBox::from_raw(host, p) });
            }
        }
        let mm = b.mm;
        b.st.get_mut().slots.unpin_all(mm);
        drop(b);
        host.mm_release(mm);
        sys.nr_vms.fetch_sub(1, Ordering::SeqCst);
    }

    /// The vCPU at creation index `i`.
    pub fn vcpu(&self, i: u32) -> Option<&Vcpu<H, B>> {
        if i >= self.online.load(Ordering::Acquire) {
            return None;
        }
        let p = self.vcpus.get(i as usize)?.load(Ordering::Acquire);
        // SAFETY: published vCPUs live until the VM is torn down, which cannot happen while
        // &self is alive (the caller holds a reference).
        NonNull::new(p).map(|p| unsafe { &*p.as_ptr() })
    }

    /// A VM ioctl. The caller must be the VM's process (Linux: `-EIO` otherwise).
    pub fn ioctl(&self, cmd: u32, arg: u64) -> KResult<i64> {
        use kvm_abi::*;
        let host = self.sys.host;
        if !host.mm_is_current(self.mm) {
            return Err(EIO);
        }
        match cmd {
            KVM_CREATE_VCPU => self.create_vcpu(arg),
            KVM_CHECK_EXTENSION => Ok(caps::check_extension(
                arg,
                host.cpu_count(),
                self.sys.host_xsave(),
            )),
            KVM_SET_USER_MEMORY_REGION => {
                let r: kvm_userspace_memory_region = user::read(host, arg)?;
                self.set_memory_region(&Region {
                    slot: r.slot,
                    flags: r.flags,
                    guest_phys_addr: r.guest_phys_addr,
                    memory_size: r.memory_size,
                    userspace_addr: r.userspace_addr,
                })
                .map(|()| 0)
            }
            KVM_GET_DIRTY_LOG => {
                let log: kvm_dirty_log = user::read(host, arg)?;
                let mut st = self.st.lock();
                let r = st.slots.get_dirty_log(log.slot, log.dirty_bitmap);
                r.map(|(gfn, npages)| {
                    // Like Linux (which also flushes on a failed copy-out), write-protect again.
                    self.sys.backend.unmap_gfns(&self.bvm, gfn, npages);
                    0
                })
            }
            KVM_SET_TSS_ADDR => {
                if arg > u64::from(u32::MAX - 3 * 4096 + 1) {
                    return Err(EINVAL);
                }
                self.st.lock().tss_addr = arg;
                Ok(0)
            }
            KVM_SET_IDENTITY_MAP_ADDR => {
                let mut st = self.st.lock();
                if st.created_vcpus != 0 {
                    return Err(EINVAL);
                }
                let a: u64 = user::read(host, arg)?;
                st.identity_map_addr = a;
                Ok(0)
            }
            KVM_REGISTER_COALESCED_MMIO => {
                let z: kvm_coalesced_mmio_zone = user::read(host, arg)?;
                self.register_zone(&z).map(|()| 0)
            }
            KVM_UNREGISTER_COALESCED_MMIO => {
                let z: kvm_coalesced_mmio_zone = user::read(host, arg)?;
                self.unregister_zone(&z);
                Ok(0)
            }
            KVM_ENABLE_CAP => {
                // KVM_CAP_EXIT_ON_EMULATION_FAILURE here; KVM_CAP_SPLIT_IRQCHIP in irqchip; EINVAL else.
                let c: kvm_enable_cap = user::read(host, arg)?;
                match c.cap {
                    // Linux: EINVAL for flags or values other than 0/1.
                    KVM_CAP_EXIT_ON_EMULATION_FAILURE => {
                        if c.flags != 0 || c.args[0] & !1 != 0 {
                            return Err(EINVAL);
                        }
                        self.exit_on_emulation_failure
                            .store(c.args[0] == 1, Ordering::Relaxed);
                        Ok(0)
                    }
                    _ => irqchip::enable_cap(self, &c),
                }
            }
            KVM_GET_CLOCK => self.clock.get_ioctl(host, arg),
            KVM_SET_CLOCK => self.clock.set_ioctl(host, arg),
            KVM_IOEVENTFD => {
                let a: kvm_ioeventfd = user::read(host, arg)?;
                self.ioeventfds.ioctl(&a)
            }
            KVM_IRQFD => {
                let a: kvm_irqfd = user::read(host, arg)?;
                self.irqfds.ioctl(self, &a)
            }
            _ => irqchip::pitdev::vm_ioctl(self, cmd, arg)
                .or_else(|| irqchip::vm_ioctl(self, cmd, arg))
                .unwrap_or(Err(ENOTTY)),
        }
    }

    fn set_memory_region(&self, r: &Region) -> KResult<()> {
        let mut st = self.st.lock();
        let b = &self.sys.backend;
        // Deleted/moved ranges are unmapped (and flushed) before their pages are unwired.
        let change = st.slots.set(self.mm, r, |gfn, npages| {
            b.unmap_gfns(&self.bvm, gfn, npages)
        })?;
        match change {
            Change::Delete { .. } | Change::Move { .. } => {}
            Change::Flags { log_on: true } => {
                // Dirty logging starts: drop writable mappings so writes fault and get logged.
                if let Some((_, s)) = st.slots.find(r.guest_phys_addr >> 12) {
                    b.unmap_gfns(&self.bvm, s.base_gfn, s.npages);
                }
            }
            Change::None | Change::Create | Change::Flags { log_on: false } => {}
        }
        Ok(())
    }

    fn register_zone(&self, z: &kvm_coalesced_mmio_zone) -> KResult<()> {
        let pio = z.pio();
        if pio > 1 {
            return Err(EINVAL);
        }
        let mut st = self.st.lock();
        let n = st.nzones;
        let slot = st.zones.get_mut(n).ok_or(ENOSPC)?;
        *slot = Zone {
            addr: z.addr,
            size: z.size,
            pio: pio == 1,
        };
        st.nzones += 1;
        Ok(())
    }

    fn unregister_zone(&self, z: &kvm_coalesced_mmio_zone) {
        let mut st = self.st.lock();
        let (addr, end, pio) = (
            z.addr,
            z.addr.saturating_add(u64::from(z.size)),
            z.pio() == 1,
        );
        let n = st.nzones;
        let mut w = 0;
        for r in 0..n {
            let Some(&zz) = st.zones.get(r) else { break };
            let inside = zz.pio == pio
                && zz.addr >= addr
                && zz.addr.saturating_add(u64::from(zz.size)) <= end;
            if !inside {
                if let Some(d) = st.zones.get_mut(w) {
                    *d = zz;
                }
                w += 1;
            }
        }
        st.nzones = w;
    }

    /// Whether an access of `len` bytes at `addr` falls inside a coalesced zone.
    pub fn coalesced(&self, addr: u64, len: u32, pio: bool) -> bool {
        let st = self.st.lock();
        st.zones.iter().take(st.nzones).any(|z| {
            z.pio == pio
                && addr >= z.addr
                && addr.saturating_add(u64::from(len)) <= z.addr.saturating_add(u64::from(z.size))
        })
    }

    /// `KVM_CREATE_VCPU`: Linux's checks (id below `KVM_MAX_VCPU_IDS`, at most `KVM_MAX_VCPUS`,
    /// unique id: `EEXIST`); returns the new vCPU descriptor.
    #[inline(never)]
    fn create_vcpu(&self, arg: u64) -> KResult<i64> {
        if arg >= u64::from(KVM_MAX_VCPU_IDS) {
            return Err(EINVAL);
        }
        let id = arg as u32;
        let host = self.sys.host;
        let mut st = self.st.lock();
        if st.created_vcpus >= KVM_MAX_VCPUS {
            return Err(EINVAL);
        }
        let idx = st.created_vcpus;
        if (0..idx).filter_map(|i| self.vcpu(i)).any(|v| v.id == id) {
            return Err(EEXIST);
        }
        let v = Vcpu::new(self, id)?;
        let p = v.into_raw();
        let slot = self.vcpus.get(idx as usize).ok_or(EINVAL)?;
        slot.store(p.as_ptr(), Ordering::Release);
        st.created_vcpus += 1;
        // The descriptor's reference on the VM, taken before the fd can be closed.
        self.get();
        match host.install_fd(FdKind::Vcpu, p.as_ptr().cast()) {
            Ok(fd) => {
                // Like Linux (online_vcpus after create_vcpu_fd): `Vm::vcpu` (timer and irqfd
                // callbacks, other vCPUs) sees only vCPUs that can no longer be freed here.
                self.online.store(idx + 1, Ordering::Release);
                Ok(i64::from(fd))
            }
            Err(e) => {
                // Like Linux: unpublish and destroy the vCPU, give the count back.
                slot.store(core::ptr::null_mut(), Ordering::Release);
                st.created_vcpus -= 1;
                self.refs.fetch_sub(1, Ordering::SeqCst);
                // SAFETY: the vCPU was never reachable through a descriptor; we own it.
                drop(unsafe { HBox::from_raw(host, p) });
                Err(e)
            }
        }
    }

    /// Whether `KVM_CAP_EXIT_ON_EMULATION_FAILURE` is enabled.
    pub fn exit_on_emulation_failure(&self) -> bool {
        self.exit_on_emulation_failure.load(Ordering::Relaxed)
    }

    /// Resolves a second-level fault at `gpa`: wires the page and maps it. `Ok(false)` when
    /// the access is MMIO: outside every memslot, or a write to a read-only slot (Linux
    /// semantics). `EFAULT` when the slot's user memory cannot be wired.
    pub fn map_guest_page(&self, gpa: u64, write: bool) -> KResult<bool> {
        let gfn = gpa >> 12;
        let mut st = self.st.lock();
        if st.slots.gpa_to_uaddr(gpa, write).is_err() {
            return Ok(false);
        }
        // A read of a writable slot that does not log dirty pages maps the page writable at
        // once (one fault per page instead of two); if the process's page cannot be wired
        // writable (a read-only mapping in a writable slot), it is mapped read-only.
        let eager = !write
            && st.slots.find(gfn).is_some_and(|(_, s)| {
                s.flags
                    & (crate::memslot::KVM_MEM_READONLY | crate::memslot::KVM_MEM_LOG_DIRTY_PAGES)
                    == 0
            });
        let (p, writable) = match eager.then(|| st.slots.pin(self.mm, gfn, true)) {
            Some(Ok(p)) => (p, true),
            _ => (st.slots.pin(self.mm, gfn, write)?, write),
        };
        // `map_gfn` replaces (and flushes) any old mapping of gfn, or leaves none on failure:
        // either way the replaced wiring is unreachable afterwards.
        let r = self.sys.backend.map_gfn(&self.bvm, gfn, p.pa, writable);
        if let Some(stale) = p.stale {
            st.slots.unpin_stale(self.mm, stale);
        }
        r?;
        if write {
            st.slots.mark_dirty(gfn);
        }
        Ok(true)
    }

    /// Copies guest memory at `gpa` into `buf` through the VM's user mapping (`EFAULT` if any
    /// byte is outside memslots).
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> KResult<()> {
        let uaddr = self.st.lock().slots.gpa_to_uaddr(gpa, false)?;
        let end = gpa.checked_add(buf.len() as u64).ok_or(EFAULT)?;
        if buf.is_empty() || (end - 1) >> 12 == gpa >> 12 {
            return self.sys.host.copyin(buf, uaddr);
        }
        Err(EFAULT)
    }
}
