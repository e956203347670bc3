//! The host OS services the core needs (the Rust side of okvm.h's `okvm_host_*` functions).
//!
//! The kernel object implements [`Host`] with the C functions of okvm.h (see `ffi.rs`); host tests
//! implement it with std (`fake::FakeHost`), counting pages, pins, locks and heap bytes so that
//! leaks fail the tests. Every method is one or two OS calls in a glue.

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::errno::KResult;

/// Size of a page (x86-64 base page).
pub const PAGE_SIZE: usize = 4096;

/// One zeroed 4 KiB page of wired kernel memory: its kernel virtual and host physical address.
#[derive(Debug)]
pub struct Page {
    /// Kernel virtual address (page aligned).
    pub va: NonNull<u8>,
    /// Host physical address (page aligned).
    pub pa: u64,
}

/// An opaque host lock (a sleepable mutex; OpenBSD `rwlock`, Linux `mutex`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawLock(pub NonNull<c_void>);

/// An opaque reference to the address space (process) that owns a VM, taken at KVM_CREATE_VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmRef(pub NonNull<c_void>);

/// An opaque host timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTimer(pub NonNull<c_void>);

/// An opaque reference to a process's event notifier (okvm.h `okvm_eventfd_t`): Linux an
/// eventfd, OpenBSD a pipe's read end. Two descriptors of the same notifier give equal values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEventFd(pub NonNull<c_void>);

/// An opaque watch on an event notifier (okvm.h `okvm_eventfd_watch_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEventFdWatch(pub NonNull<c_void>);

/// Kind of descriptor the glue installs for a new object (okvm.h `OKVM_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FdKind {
    /// A VM descriptor (returned by KVM_CREATE_VM).
    Vm = 1,
    /// A vCPU descriptor (returned by KVM_CREATE_VCPU); mmappable.
    Vcpu = 2,
}

/// Log levels for [`Host::log`] (okvm.h `OKVM_LOG_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    /// Something is wrong and the user should know.
    Error = 0,
    /// A guest or userspace did something unusual.
    Warn = 1,
    /// Informational.
    Info = 2,
}

/// Callback type for timers, notifier watches and cross-CPU calls.
pub type HostFn = unsafe extern "C" fn(arg: *mut c_void);

/// OS services provided by a glue. Methods mirror okvm.h's `okvm_host_*` one to one.
///
/// # Contract
/// All methods may be called from thread context with no host lock held except where noted;
/// none is called from interrupt context.
pub trait Host: Sync + 'static {
    /// Allocates one zeroed, wired 4 KiB page; `None` when memory is short.
    fn page_alloc(&self) -> Option<Page>;
    /// Frees a page from [`Host::page_alloc`].
    ///
    /// # Safety
    /// The core no longer uses the page. The glue removes any user mapping of it before reuse.
    unsafe fn page_free(&self, page: Page);
    /// Allocates `npages` (1..=16) zeroed, wired, physically contiguous pages that are never
    /// mapped into a process; `None` when short. Returns the first page.
    fn contig_alloc(&self, npages: u32) -> Option<Page>;
    /// Frees pages from [`Host::contig_alloc`].
    ///
    /// # Safety
    /// `page`/`npages` came from `contig_alloc` and the core no longer uses the pages.
    unsafe fn contig_free(&self, page: Page, npages: u32);

    /// Allocates `size` zeroed bytes of kernel heap (16-byte aligned); `None` when short.
    fn heap_alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// Frees a block from [`Host::heap_alloc`] with the same `size`.
    ///
    /// # Safety
    /// `p`/`size` came from `heap_alloc` and the block is not used any more.
    unsafe fn heap_free(&self, p: NonNull<u8>, size: usize);

    /// Copies `dst.len()` bytes from the current process at `uaddr`; `Err(EFAULT)` if unmapped.
    fn copyin(&self, dst: &mut [u8], uaddr: u64) -> KResult<()>;
    /// Copies `src` to the current process at `uaddr`; `Err(EFAULT)` if unmapped or read-only.
    fn copyout(&self, uaddr: u64, src: &[u8]) -> KResult<()>;

    /// Takes a reference on the current process's address space (VM owner).
    fn mm_current(&self) -> Option<MmRef>;
    /// Whether the current process's address space is `mm`.
    fn mm_is_current(&self, mm: MmRef) -> bool;
    /// Drops a reference from [`Host::mm_current`].
    fn mm_release(&self, mm: MmRef);
    /// Faults in and wires the page of `mm` at `uaddr` (page aligned); returns its physical address.
    fn pin_page(&self, mm: MmRef, uaddr: u64, writable: bool) -> KResult<u64>;
    /// Unwires a page pinned by [`Host::pin_page`]; `dirty` if the guest may have written it.
    fn unpin_page(&self, mm: MmRef, uaddr: u64, pa: u64, dirty: bool);
    /// Kernel virtual address of the page at `pa` (page aligned), wired by [`Host::pin_page`]
    /// or allocated by [`Host::page_alloc`], and kept by the caller while it uses the address
    /// (amd64: the direct map). For atomic accesses to guest page tables and for second-level
    /// table pages; `None` if the page has no kernel address.
    fn phys_kva(&self, pa: u64) -> Option<NonNull<u8>>;

    /// Allocates a lock; `None` when memory is short.
    fn lock_alloc(&self) -> Option<RawLock>;
    /// Frees an unheld lock.
    ///
    /// # Safety
    /// `l` came from `lock_alloc`, is not held and is not used any more.
    unsafe fn lock_free(&self, l: RawLock);
    /// Acquires `l` (may sleep).
    fn lock(&self, l: RawLock);
    /// Releases `l`, held by the caller.
    fn unlock(&self, l: RawLock);
    /// Sleeps on `chan` releasing `l` (held) atomically; re-acquires it before returning.
    /// Returns `Ok` when woken, `Err(EINTR)` on a signal, `Err(ETIMEDOUT)` after `timeout_ns`
    /// (0 = no timeout).
    fn sleep(&self, chan: *const c_void, l: RawLock, timeout_ns: u64) -> KResult<()>;
    /// Wakes every sleeper on `chan`. Never sleeps: timer callbacks call it.
    fn wakeup(&self, chan: *const c_void);

    /// Index of the current CPU.
    fn cpu_current(&self) -> u32;
    /// Number of CPUs.
    fn cpu_count(&self) -> u32;
    /// Runs `f(arg)` on every CPU and waits for all; returns the first nonzero `f` result or 0.
    fn run_on_all_cpus(&self, f: unsafe extern "C" fn(*mut c_void) -> i32, arg: *mut c_void)
        -> i32;
    /// Forces `cpu` out of guest mode soon (an IPI). Never sleeps: timer callbacks call it.
    fn cpu_kick(&self, cpu: u32);
    /// Disables preemption/migration of the current thread (nests).
    fn preempt_disable(&self);
    /// Undoes one [`Host::preempt_disable`].
    fn preempt_enable(&self);

    /// Whether the current thread has a signal pending (KVM_RUN then returns -EINTR).
    fn signal_pending(&self) -> bool;
    /// Whether the current thread should give up the CPU.
    fn should_yield(&self) -> bool;
    /// Gives up the CPU for a while.
    fn yield_now(&self);

    /// Monotonic time in nanoseconds.
    fn nanotime(&self) -> u64;
    /// TSC frequency in kHz (0 if unknown).
    fn tsc_khz(&self) -> u64;
    /// Allocates a one-shot timer calling `f(arg)` in soft-interrupt context.
    fn timer_alloc(&self, f: HostFn, arg: *mut c_void) -> Option<RawTimer>;
    /// Arms `t` to fire once `ns` nanoseconds from now (re-arms if pending).
    fn timer_arm(&self, t: RawTimer, ns: u64);
    /// Cancels `t` and waits for a running callback to finish.
    fn timer_cancel(&self, t: RawTimer);
    /// Frees a cancelled timer.
    ///
    /// # Safety
    /// `t` came from `timer_alloc`, is cancelled and not used any more.
    unsafe fn timer_free(&self, t: RawTimer);

    /// Saves the current thread's user FPU state so the core may load guest FPU state.
    fn fpu_enter(&self);
    /// Restores the user FPU state saved by [`Host::fpu_enter`].
    fn fpu_leave(&self);

    /// VMX: makes the current CPU ready for VMX root operation (caller has preemption
    /// disabled). `Ok(true)`: the host already holds the CPU in VMX root operation (OpenBSD
    /// vmm(4)); the core must not execute VMXON/VMXOFF. `Ok(false)`: CR4.VMXE is now set and
    /// the core executes VMXON itself. `Err` (EBUSY) when another hypervisor owns VMX there.
    fn vmx_enable(&self) -> KResult<bool>;
    /// Clears CR4.VMXE after the core's VMXOFF (only after `vmx_enable` gave `Ok(false)`).
    fn vmx_disable(&self);

    /// Installs a new descriptor of `kind` whose ioctls go to `handle`; returns the fd number.
    /// After success the glue calls `okvm_release(handle)` when the descriptor's last reference
    /// goes away.
    fn install_fd(&self, kind: FdKind, handle: *mut c_void) -> KResult<i32>;

    /// Writes a log line.
    fn log(&self, level: LogLevel, msg: &str);

    /// Takes a reference on the event notifier behind descriptor `fd` of the calling process:
    /// `EBADF` if `fd` is not open, `EINVAL` if it is not a notifier. The same notifier (the
    /// same fd twice, or a dup) gives the same [`RawEventFd`].
    fn eventfd_get(&self, fd: i32) -> KResult<RawEventFd>;
    /// Drops a reference from [`Host::eventfd_get`] (thread context, may sleep).
    ///
    /// # Safety
    /// `e` came from `eventfd_get` and this reference is not used afterwards.
    unsafe fn eventfd_put(&self, e: RawEventFd);
    /// Signals `e` once (ioeventfd). Never sleeps: called from a vCPU thread with okvm locks
    /// held.
    fn eventfd_signal(&self, e: RawEventFd);
    /// Watches `e` (irqfd): each time `e` is signaled, the host consumes the signal and calls
    /// `f(arg)` in thread context with no okvm lock held (calls may coalesce); once soon if
    /// `e` is already signaled (never from inside this call: the caller may hold an okvm
    /// lock). `ENOMEM` when short.
    ///
    /// # Safety
    /// `e` is referenced by the caller until after [`Host::eventfd_unwatch`]; `arg` stays valid
    /// for `f` until then.
    unsafe fn eventfd_watch(
        &self,
        e: RawEventFd,
        f: HostFn,
        arg: *mut c_void,
    ) -> KResult<RawEventFdWatch>;
    /// Stops `w`: on return its callback is not running and will not run again. Thread
    /// context, may sleep; never called from the callback itself.
    ///
    /// # Safety
    /// `w` came from `eventfd_watch` and is not used afterwards.
    unsafe fn eventfd_unwatch(&self, w: RawEventFdWatch);
}
