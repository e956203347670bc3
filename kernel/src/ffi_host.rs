//! The host services of okvm.h as Rust declarations, and [`CHost`], the [`Host`] that calls them.
//!
//! The signatures here are checked against include/okvm.h by a test (`tests::header`): keep one
//! declaration per function, written with the okvm.h type aliases below.

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;

use crate::errno::{from_host, KResult, EFAULT, EINVAL, ENOMEM};
use crate::host::{
    FdKind, Host, HostFn, LogLevel, MmRef, Page, RawEventFd, RawEventFdWatch, RawLock, RawTimer,
};

/// okvm.h `okvm_handle_t`.
pub type OkvmHandle = *mut c_void;
/// okvm.h `okvm_lock_t`.
pub type OkvmLock = *mut c_void;
/// okvm.h `okvm_mm_t`.
pub type OkvmMm = *mut c_void;
/// okvm.h `okvm_timer_t`.
pub type OkvmTimer = *mut c_void;
/// okvm.h `okvm_fn_t`.
pub type OkvmFn = Option<unsafe extern "C" fn(*mut c_void)>;
/// okvm.h `okvm_eventfd_t` (a `struct okvm_eventfd *`).
pub type OkvmEventFd = *mut c_void;
/// okvm.h `okvm_eventfd_watch_t` (a `struct okvm_eventfd_watch *`).
pub type OkvmEventFdWatch = *mut c_void;
/// okvm.h `okvm_cpu_fn_t`.
pub type OkvmCpuFn = Option<unsafe extern "C" fn(*mut c_void) -> i32>;

extern "C" {
    pub fn okvm_host_page_alloc(va: *mut *mut c_void, pa: *mut u64) -> i32;
    pub fn okvm_host_page_free(va: *mut c_void, pa: u64);
    pub fn okvm_host_contig_alloc(npages: u32, va: *mut *mut c_void, pa: *mut u64) -> i32;
    pub fn okvm_host_contig_free(va: *mut c_void, pa: u64, npages: u32);
    pub fn okvm_host_heap_alloc(size: usize) -> *mut c_void;
    pub fn okvm_host_heap_free(p: *mut c_void, size: usize);
    pub fn okvm_host_copyin(dst: *mut c_void, uaddr: u64, len: usize) -> i32;
    pub fn okvm_host_copyout(uaddr: u64, src: *const c_void, len: usize) -> i32;
    pub fn okvm_host_mm_current() -> OkvmMm;
    pub fn okvm_host_mm_is_current(mm: OkvmMm) -> i32;
    pub fn okvm_host_mm_release(mm: OkvmMm);
    pub fn okvm_host_pin_page(mm: OkvmMm, uaddr: u64, writable: i32, pa: *mut u64) -> i32;
    pub fn okvm_host_unpin_page(mm: OkvmMm, uaddr: u64, pa: u64, dirty: i32);
    pub fn okvm_host_phys_kva(pa: u64) -> *mut c_void;
    pub fn okvm_host_lock_alloc() -> OkvmLock;
    pub fn okvm_host_lock_free(l: OkvmLock);
    pub fn okvm_host_lock(l: OkvmLock);
    pub fn okvm_host_unlock(l: OkvmLock);
    pub fn okvm_host_sleep(chan: *const c_void, l: OkvmLock, timeout_ns: u64) -> i32;
    pub fn okvm_host_wakeup(chan: *const c_void);
    pub fn okvm_host_cpu_current() -> u32;
    pub fn okvm_host_cpu_count() -> u32;
    pub fn okvm_host_run_on_all_cpus(f: OkvmCpuFn, arg: *mut c_void) -> i32;
    pub fn okvm_host_cpu_kick(cpu: u32);
    pub fn okvm_host_preempt_disable();
    pub fn okvm_host_preempt_enable();
    pub fn okvm_host_signal_pending() -> i32;
    pub fn okvm_host_should_yield() -> i32;
    pub fn okvm_host_yield();
    pub fn okvm_host_nanotime() -> u64;
    pub fn okvm_host_tsc_khz() -> u64;
    pub fn okvm_host_timer_alloc(f: OkvmFn, arg: *mut c_void) -> OkvmTimer;
    pub fn okvm_host_timer_arm(t: OkvmTimer, ns: u64);
    pub fn okvm_host_timer_cancel(t: OkvmTimer);
    pub fn okvm_host_timer_free(t: OkvmTimer);
    pub fn okvm_host_fpu_enter();
    pub fn okvm_host_fpu_leave();
    pub fn okvm_host_vmx_enable() -> i32;
    pub fn okvm_host_vmx_disable();
    pub fn okvm_host_install_fd(kind: u32, h: OkvmHandle) -> i32;
    pub fn okvm_host_eventfd_get(fd: i32, e: *mut OkvmEventFd) -> i32;
    pub fn okvm_host_eventfd_put(e: OkvmEventFd);
    pub fn okvm_host_eventfd_signal(e: OkvmEventFd);
    pub fn okvm_host_eventfd_watch(
        e: OkvmEventFd,
        f: OkvmFn,
        arg: *mut c_void,
        w: *mut OkvmEventFdWatch,
    ) -> i32;
    pub fn okvm_host_eventfd_unwatch(w: OkvmEventFdWatch);
    pub fn okvm_host_log(level: u32, msg: *const c_char, len: usize);
    pub fn okvm_host_panic(file: *const c_char, file_len: usize, line: u32) -> !;
}

/// The [`Host`] of the kernel object: every method is one okvm.h host service.
pub struct CHost;

/// The one instance (a zero-sized value).
pub static CHOST: CHost = CHost;

fn ok_or_efault(r: i32) -> KResult<()> {
    if r == 0 {
        Ok(())
    } else {
        from_host(i64::from(r)).and(Err(EFAULT))
    }
}

// SAFETY (for every call below): the host services have the C signatures declared above
// (checked against okvm.h by a test); arguments are valid for the documented contract.
// Raw pointers here (sleep channels, callback arguments, handles) are opaque tokens the host
// never dereferences as Rust data, hence the allow.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
impl Host for CHost {
    fn page_alloc(&self) -> Option<Page> {
        let mut va = core::ptr::null_mut();
        let mut pa = 0u64;
        // SAFETY: see impl comment; out-pointers are valid locals.
        let r = unsafe { okvm_host_page_alloc(&mut va, &mut pa) };
        if r != 0 {
            return None;
        }
        NonNull::new(va.cast::<u8>()).map(|va| Page { va, pa })
    }
    unsafe fn page_free(&self, page: Page) {
        // SAFETY: see impl comment; the caller gives up the page.
        unsafe { okvm_host_page_free(page.va.as_ptr().cast(), page.pa) }
    }
    fn contig_alloc(&self, npages: u32) -> Option<Page> {
        let mut va = core::ptr::null_mut();
        let mut pa = 0u64;
        // SAFETY: see impl comment; out-pointers are valid locals.
        let r = unsafe { okvm_host_contig_alloc(npages, &mut va, &mut pa) };
        if r != 0 {
            return None;
        }
        NonNull::new(va.cast::<u8>()).map(|va| Page { va, pa })
    }
    unsafe fn contig_free(&self, page: Page, npages: u32) {
        // SAFETY: see impl comment; the caller gives up the pages.
        unsafe { okvm_host_contig_free(page.va.as_ptr().cast(), page.pa, npages) }
    }
    fn heap_alloc(&self, size: usize) -> Option<NonNull<u8>> {
        // SAFETY: see impl comment.
        NonNull::new(unsafe { okvm_host_heap_alloc(size) }.cast::<u8>())
    }
    unsafe fn heap_free(&self, p: NonNull<u8>, size: usize) {
        // SAFETY: see impl comment; the caller gives up the block.
        unsafe { okvm_host_heap_free(p.as_ptr().cast(), size) }
    }
    fn copyin(&self, dst: &mut [u8], uaddr: u64) -> KResult<()> {
        // SAFETY: see impl comment; dst is a valid writable buffer of dst.len() bytes.
        ok_or_efault(unsafe { okvm_host_copyin(dst.as_mut_ptr().cast(), uaddr, dst.len()) })
    }
    fn copyout(&self, uaddr: u64, src: &[u8]) -> KResult<()> {
        // SAFETY: see impl comment; src is a valid buffer of src.len() bytes.
        ok_or_efault(unsafe { okvm_host_copyout(uaddr, src.as_ptr().cast(), src.len()) })
    }
    fn mm_current(&self) -> Option<MmRef> {
        // SAFETY: see impl comment.
        NonNull::new(unsafe { okvm_host_mm_current() }).map(MmRef)
    }
    fn mm_is_current(&self, mm: MmRef) -> bool {
        // SAFETY: see impl comment; mm is a live reference.
        unsafe { okvm_host_mm_is_current(mm.0.as_ptr()) != 0 }
    }
    fn mm_release(&self, mm: MmRef) {
        // SAFETY: see impl comment; the caller gives up its reference.
        unsafe { okvm_host_mm_release(mm.0.as_ptr()) }
    }
    fn pin_page(&self, mm: MmRef, uaddr: u64, writable: bool) -> KResult<u64> {
        let mut pa = 0u64;
        // SAFETY: see impl comment.
        let r = unsafe { okvm_host_pin_page(mm.0.as_ptr(), uaddr, i32::from(writable), &mut pa) };
        if r == 0 {
            Ok(pa)
        } else {
            from_host(i64::from(r)).and(Err(EFAULT))
        }
    }
    fn unpin_page(&self, mm: MmRef, uaddr: u64, pa: u64, dirty: bool) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_unpin_page(mm.0.as_ptr(), uaddr, pa, i32::from(dirty)) }
    }
    fn phys_kva(&self, pa: u64) -> Option<NonNull<u8>> {
        // SAFETY: see impl comment.
        NonNull::new(unsafe { okvm_host_phys_kva(pa) }.cast::<u8>())
    }
    fn lock_alloc(&self) -> Option<RawLock> {
        // SAFETY: see impl comment.
        NonNull::new(unsafe { okvm_host_lock_alloc() }).map(RawLock)
    }
    unsafe fn lock_free(&self, l: RawLock) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_lock_free(l.0.as_ptr()) }
    }
    fn lock(&self, l: RawLock) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_lock(l.0.as_ptr()) }
    }
    fn unlock(&self, l: RawLock) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_unlock(l.0.as_ptr()) }
    }
    fn sleep(&self, chan: *const c_void, l: RawLock, timeout_ns: u64) -> KResult<()> {
        // SAFETY: see impl comment; l is held by the caller.
        from_host(i64::from(unsafe {
            okvm_host_sleep(chan, l.0.as_ptr(), timeout_ns)
        }))
        .map(|_| ())
    }
    fn wakeup(&self, chan: *const c_void) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_wakeup(chan) }
    }
    fn cpu_current(&self) -> u32 {
        // SAFETY: see impl comment.
        unsafe { okvm_host_cpu_current() }
    }
    fn cpu_count(&self) -> u32 {
        // SAFETY: see impl comment.
        unsafe { okvm_host_cpu_count() }
    }
    fn run_on_all_cpus(
        &self,
        f: unsafe extern "C" fn(*mut c_void) -> i32,
        arg: *mut c_void,
    ) -> i32 {
        // SAFETY: see impl comment.
        unsafe { okvm_host_run_on_all_cpus(Some(f), arg) }
    }
    fn cpu_kick(&self, cpu: u32) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_cpu_kick(cpu) }
    }
    fn preempt_disable(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_preempt_disable() }
    }
    fn preempt_enable(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_preempt_enable() }
    }
    fn signal_pending(&self) -> bool {
        // SAFETY: see impl comment.
        unsafe { okvm_host_signal_pending() != 0 }
    }
    fn should_yield(&self) -> bool {
        // SAFETY: see impl comment.
        unsafe { okvm_host_should_yield() != 0 }
    }
    fn yield_now(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_yield() }
    }
    fn nanotime(&self) -> u64 {
        // SAFETY: see impl comment.
        unsafe { okvm_host_nanotime() }
    }
    fn tsc_khz(&self) -> u64 {
        // SAFETY: see impl comment.
        unsafe { okvm_host_tsc_khz() }
    }
    fn timer_alloc(&self, f: HostFn, arg: *mut c_void) -> Option<RawTimer> {
        // SAFETY: see impl comment.
        NonNull::new(unsafe { okvm_host_timer_alloc(Some(f), arg) }).map(RawTimer)
    }
    fn timer_arm(&self, t: RawTimer, ns: u64) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_timer_arm(t.0.as_ptr(), ns) }
    }
    fn timer_cancel(&self, t: RawTimer) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_timer_cancel(t.0.as_ptr()) }
    }
    unsafe fn timer_free(&self, t: RawTimer) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_timer_free(t.0.as_ptr()) }
    }
    fn fpu_enter(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_fpu_enter() }
    }
    fn fpu_leave(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_fpu_leave() }
    }
    fn vmx_enable(&self) -> KResult<bool> {
        // SAFETY: see impl comment; called with preemption disabled (trait contract).
        let r = unsafe { okvm_host_vmx_enable() };
        from_host(i64::from(r)).map(|v| v == 1)
    }
    fn vmx_disable(&self) {
        // SAFETY: see impl comment.
        unsafe { okvm_host_vmx_disable() }
    }
    fn install_fd(&self, kind: FdKind, handle: *mut c_void) -> KResult<i32> {
        // SAFETY: see impl comment; handle stays valid until okvm_release.
        let r = unsafe { okvm_host_install_fd(kind as u32, handle) };
        from_host(i64::from(r))
            .map(|fd| i32::try_from(fd).unwrap_or(i32::MAX))
            .map_err(|e| if e.0 == 0 { ENOMEM } else { e })
    }
    fn log(&self, level: LogLevel, msg: &str) {
        // SAFETY: see impl comment; msg is valid for msg.len() bytes.
        unsafe { okvm_host_log(level as u32, msg.as_ptr().cast(), msg.len()) }
    }
    fn eventfd_get(&self, fd: i32) -> KResult<RawEventFd> {
        let mut e = core::ptr::null_mut();
        // SAFETY: see impl comment; the out-pointer is a valid local.
        let r = unsafe { okvm_host_eventfd_get(fd, &mut e) };
        from_host(i64::from(r))?;
        NonNull::new(e).map(RawEventFd).ok_or(EINVAL)
    }
    unsafe fn eventfd_put(&self, e: RawEventFd) {
        // SAFETY: see impl comment; the caller gives up its reference.
        unsafe { okvm_host_eventfd_put(e.0.as_ptr()) }
    }
    fn eventfd_signal(&self, e: RawEventFd) {
        // SAFETY: see impl comment; e is a live reference (trait contract).
        unsafe { okvm_host_eventfd_signal(e.0.as_ptr()) }
    }
    unsafe fn eventfd_watch(
        &self,
        e: RawEventFd,
        f: HostFn,
        arg: *mut c_void,
    ) -> KResult<RawEventFdWatch> {
        let mut w = core::ptr::null_mut();
        // SAFETY: see impl comment; the caller keeps e and arg valid until the unwatch.
        let r = unsafe { okvm_host_eventfd_watch(e.0.as_ptr(), Some(f), arg, &mut w) };
        from_host(i64::from(r))?;
        NonNull::new(w).map(RawEventFdWatch).ok_or(ENOMEM)
    }
    unsafe fn eventfd_unwatch(&self, w: RawEventFdWatch) {
        // SAFETY: see impl comment; the caller gives up the watch.
        unsafe { okvm_host_eventfd_unwatch(w.0.as_ptr()) }
    }
}
