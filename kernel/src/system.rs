//! The system object (`/dev/kvm`), handle dispatch and the system ioctls.
//!
//! Handles given to the glue are pointers to objects whose first field is a [`Head`] with a magic
//! number, so `okvm_ioctl` can route a handle to the system, a VM or a vCPU. Lifetimes:
//! - the system lives from `okvm_attach` to `okvm_detach` (no per-open state, like Linux);
//! - a VM lives while its descriptor or any vCPU descriptor is open (`Vm::refs`); the last
//!   release tears it down (vCPUs, pages, pins, memslots, backend state);
//! - a vCPU lives as long as its VM (Linux frees vCPUs only in `kvm_destroy_vm`).

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

use kvm_abi::{kvm_cpuid2, kvm_cpuid_entry2, kvm_msr_entry, kvm_msr_list, kvm_msrs};
use zerocopy::{FromZeros, IntoBytes};

use crate::backend::Backend;
use crate::caps;
use crate::cpuid::{self, KVM_MAX_CPUID_ENTRIES};
use crate::errno::{to_ret, KResult, E2BIG, EBUSY, EFAULT, EINVAL};
use crate::hmem::HSlice;
use crate::host::{Host, PAGE_SIZE};
use crate::msrs;
use crate::user;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// Most MSRs one `KVM_GET_MSRS`/`KVM_SET_MSRS` may name (Linux `MAX_IO_MSRS`; `nmsrs` must be below).
pub const MAX_IO_MSRS: u32 = 256;

/// Magic numbers at the start of every object reachable through a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Magic {
    /// [`System`].
    System = 0x6f6b_5359,
    /// [`Vm`].
    Vm = 0x6f6b_564d,
    /// [`Vcpu`].
    Vcpu = 0x6f6b_5643,
}

/// First field of every handle object.
#[repr(C)]
pub struct Head {
    /// A [`Magic`] value, cleared when the object is freed.
    pub magic: u32,
}

/// The core: host, backend, and what `/dev/kvm` reports.
#[repr(C)]
pub struct System<H: Host, B: Backend> {
    head: Head,
    /// [I] The host services.
    pub host: &'static H,
    /// [I] The hardware backend.
    pub backend: B,
    /// [I] `KVM_GET_SUPPORTED_CPUID` table.
    cpuid: [kvm_cpuid_entry2; 32],
    /// [I] Entries in `cpuid`.
    ncpuid: usize,
    /// [a] Live VMs (detach refuses while nonzero).
    pub nr_vms: AtomicUsize,
}

impl<H: Host, B: Backend> System<H, B> {
    /// Sets up the core over `host` and `backend` (host tests; the value passes the stack).
    pub fn new(host: &'static H, backend: B) -> Self {
        let mut cpuid = [kvm_cpuid_entry2::new_zeroed(); 32];
        let ncpuid = cpuid::supported(&backend, &mut cpuid);
        Self {
            head: Head {
                magic: Magic::System as u32,
            },
            host,
            backend,
            cpuid,
            ncpuid,
            nr_vms: AtomicUsize::new(0),
        }
    }

    /// Sets up the core in place at `this` (`okvm_attach`: no large value on the kernel stack).
    ///
    /// # Safety
    /// `this` is valid for writes of a `System` and not in use.
    pub unsafe fn init_in_place(this: *mut Self, host: &'static H, backend: B) {
        // SAFETY: every field is written exactly once through valid raw field pointers.
        unsafe {
            core::ptr::addr_of_mut!((*this).head).write(Head {
                magic: Magic::System as u32,
            });
            core::ptr::addr_of_mut!((*this).host).write(host);
            core::ptr::addr_of_mut!((*this).backend).write(backend);
            core::ptr::addr_of_mut!((*this).nr_vms).write(AtomicUsize::new(0));
            let table = core::ptr::addr_of_mut!((*this).cpuid);
            for i in 0..32 {
                table
                    .cast::<kvm_cpuid_entry2>()
                    .add(i)
                    .write(kvm_cpuid_entry2::new_zeroed());
            }
            let n = cpuid::supported(&(*this).backend, &mut *table);
            core::ptr::addr_of_mut!((*this).ncpuid).write(n);
        }
    }

    /// Whether the host runs with XSAVE enabled: the XSAVE bit of the supported leaf 1, which
    /// the backend clears when the host's CR4.OSXSAVE is off (Linux
    /// `boot_cpu_has(X86_FEATURE_XSAVE)`, cleared when the kernel disables XSAVE).
    pub fn host_xsave(&self) -> bool {
        self.cpuid
            .get(..self.ncpuid)
            .and_then(|t| t.iter().find(|e| e.function == 1))
            .is_some_and(|e| e.ecx & cpuid::L1_ECX_XSAVE != 0)
    }

    /// The handle of `/dev/kvm` (`okvm_open`).
    pub fn handle(&'static self) -> *mut c_void {
        (self as *const Self).cast_mut().cast()
    }

    /// Whether the core can be detached (no VM alive); `EBUSY` otherwise.
    pub fn can_detach(&self) -> KResult<()> {
        if self.nr_vms.load(Ordering::SeqCst) != 0 {
            return Err(EBUSY);
        }
        Ok(())
    }

    /// The supported CPUID table.
    pub fn supported_cpuid(&self) -> &[kvm_cpuid_entry2] {
        self.cpuid.get(..self.ncpuid).unwrap_or(&[])
    }

    fn magic_of(h: *mut c_void) -> Option<Magic> {
        if h.is_null() {
            return None;
        }
        // SAFETY: the glue only passes handles the core gave it and not yet released
        // (okvm.h contract); every such object starts with a Head.
        let m = unsafe { (*h.cast::<Head>()).magic };
        [Magic::System, Magic::Vm, Magic::Vcpu]
            .into_iter()
            .find(|x| *x as u32 == m)
    }

    /// `okvm_ioctl`: routes to the object behind `h`; returns a value or `-errno`.
    ///
    /// # Safety
    /// `h` is a live handle from this system (not released).
    pub unsafe fn ioctl(&'static self, h: *mut c_void, cmd: u32, arg: u64) -> i64 {
        to_ret(match Self::magic_of(h) {
            Some(Magic::System) => self.sys_ioctl(cmd, arg),
            // SAFETY: the magic says h is a live Vm of this system.
            Some(Magic::Vm) => unsafe { &*h.cast::<Vm<H, B>>() }.ioctl(cmd, arg),
            // SAFETY: the magic says h is a live Vcpu of this system.
            Some(Magic::Vcpu) => unsafe { &*h.cast::<Vcpu<H, B>>() }.ioctl(cmd, arg),
            None => Err(crate::errno::EBADF),
        })
    }

    /// `okvm_mmap`: physical address of page `pgoff` of the descriptor of `h`.
    ///
    /// # Safety
    /// `h` is a live handle from this system.
    pub unsafe fn mmap(&'static self, h: *mut c_void, pgoff: u64) -> KResult<u64> {
        match Self::magic_of(h) {
            // SAFETY: the magic says h is a live Vcpu.
            Some(Magic::Vcpu) => unsafe { &*h.cast::<Vcpu<H, B>>() }.mmap_page(pgoff),
            _ => Err(EINVAL),
        }
    }

    /// `okvm_release`: the descriptor of `h` was closed.
    ///
    /// # Safety
    /// `h` is a live handle from this system; it is not used again.
    pub unsafe fn release(&'static self, h: *mut c_void) {
        match Self::magic_of(h) {
            // SAFETY: the descriptor's reference keeps the VM alive until `put`, and is given
            // up exactly once.
            Some(Magic::Vm) => unsafe {
                // Linux `kvm_vm_release`: closing the VM descriptor ends every irqfd, even
                // while vCPU descriptors keep the VM itself alive (no VM ioctl can add one).
                (*h.cast::<Vm<H, B>>()).irqfds.shutdown();
                Vm::<H, B>::put(h.cast())
            },
            // SAFETY: as above; a vCPU descriptor holds one reference on its VM.
            Some(Magic::Vcpu) => unsafe { Vm::<H, B>::put((*h.cast::<Vcpu<H, B>>()).vm_ptr()) },
            _ => {}
        }
    }

    fn sys_ioctl(&'static self, cmd: u32, arg: u64) -> KResult<i64> {
        use kvm_abi::*;
        match cmd {
            KVM_GET_API_VERSION => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                Ok(i64::from(KVM_API_VERSION))
            }
            KVM_CREATE_VM => Vm::create(self, arg),
            KVM_CHECK_EXTENSION => Ok(caps::check_extension(
                arg,
                self.host.cpu_count(),
                self.host_xsave(),
            )),
            KVM_GET_VCPU_MMAP_SIZE => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                Ok(3 * PAGE_SIZE as i64)
            }
            KVM_GET_MSR_INDEX_LIST => self.msr_list(arg, &msrs::MSRS_TO_SAVE, &msrs::EMULATED_MSRS),
            KVM_GET_MSR_FEATURE_INDEX_LIST => self.msr_list(arg, &msrs::FEATURE_MSRS, &[]),
            KVM_X86_GET_MCE_CAP_SUPPORTED => {
                user::write(self.host, arg, &msrs::KVM_MCE_CAP_SUPPORTED).map(|()| 0)
            }
            KVM_GET_MSRS => self.feature_msrs(arg),
            KVM_GET_SUPPORTED_CPUID => self.get_cpuid(arg, self.supported_cpuid()),
            KVM_GET_EMULATED_CPUID => self.get_cpuid(arg, &[]),
            _ => Err(EINVAL),
        }
    }

    /// Linux's MSR-list handshake: the needed count is always copied back; `E2BIG` if the
    /// caller's `nmsrs` is smaller; else the indices (`list` then `more`) follow the header.
    fn msr_list(&self, arg: u64, list: &[u32], more: &[u32]) -> KResult<i64> {
        let mut hdr: kvm_msr_list = user::read(self.host, arg)?;
        let n = hdr.nmsrs;
        let total = list.len() + more.len();
        hdr.nmsrs = total as u32;
        user::write(self.host, arg, &hdr)?;
        if (n as usize) < total {
            return Err(E2BIG);
        }
        let at = arg.checked_add(4).ok_or(EFAULT)?;
        self.host.copyout(at, list.as_bytes())?;
        let at = at.checked_add(4 * list.len() as u64).ok_or(EFAULT)?;
        self.host.copyout(at, more.as_bytes())?;
        Ok(0)
    }

    /// `KVM_GET_MSRS` on `/dev/kvm`: feature MSR values; returns how many were read.
    fn feature_msrs(&self, arg: u64) -> KResult<i64> {
        msr_io(self.host, arg, true, |e| match msrs::feature_msr(e.index) {
            Some(v) => {
                e.data = v;
                true
            }
            None => false,
        })
    }

    /// Linux's `kvm_dev_ioctl_get_cpuid`: `E2BIG` when `nent` is below 1 or below the table size
    /// (header not copied back); else the entries and the final `nent`.
    fn get_cpuid(&self, arg: u64, table: &[kvm_cpuid_entry2]) -> KResult<i64> {
        let mut hdr: kvm_cpuid2 = user::read(self.host, arg)?;
        if hdr.nent < 1 {
            return Err(E2BIG);
        }
        let cap = (hdr.nent as usize).min(KVM_MAX_CPUID_ENTRIES);
        if table.len() > cap {
            return Err(E2BIG);
        }
        let at = arg
            .checked_add(core::mem::size_of::<kvm_cpuid2>() as u64)
            .ok_or(EFAULT)?;
        self.host.copyout(at, table.as_bytes())?;
        hdr.nent = table.len() as u32;
        user::write(self.host, arg, &hdr)?;
        Ok(0)
    }
}

/// Linux's `msr_io`: reads the `kvm_msrs` header (`E2BIG` if `nmsrs >= MAX_IO_MSRS`) and the
/// entries into the heap, applies `f` to each until one fails, copies all entries back if
/// `writeback` (`KVM_GET_MSRS`), and
/// returns the number processed.
pub fn msr_io<H: Host>(
    host: &'static H,
    arg: u64,
    writeback: bool,
    mut f: impl FnMut(&mut kvm_msr_entry) -> bool,
) -> KResult<i64> {
    let hdr: kvm_msrs = user::read(host, arg)?;
    if hdr.nmsrs >= MAX_IO_MSRS {
        return Err(E2BIG);
    }
    let n = hdr.nmsrs as usize;
    let mut entries = HSlice::<kvm_msr_entry, H>::new_zeroed(host, n)?;
    let at = arg
        .checked_add(core::mem::size_of::<kvm_msrs>() as u64)
        .ok_or(EFAULT)?;
    host.copyin(entries.as_mut_bytes(), at)?;
    let mut done = 0i64;
    for e in entries.iter_mut() {
        if !f(e) {
            break;
        }
        done += 1;
    }
    if writeback {
        host.copyout(at, entries.as_bytes())?;
    }
    Ok(done)
}
