//! A [`Host`] on std for host tests: simulated user memory, counted pages/heap/pins/locks, and a
//! table of fake event notifiers ("eventfds").
//!
//! # Event notifiers
//! Tests create notifiers with [`FakeHost::eventfd_create`] (a descriptor number in the same
//! space as the VM/vCPU descriptors; [`FakeHost::eventfd_dup`] gives a second descriptor of the
//! same notifier), signal them as userspace would with [`FakeHost::eventfd_write`] and read
//! (and clear) their counters with [`FakeHost::eventfd_read`]. Watch callbacks (irqfd) never
//! run inside a host service: a signal, from userspace or from the core, marks every watch of
//! the notifier pending, and [`FakeHost::eventfd_pump`] (called by the test, on a thread that
//! holds no okvm lock, like a glue's workqueue) consumes the counter and runs the pending
//! callbacks. `eventfd_unwatch` waits for a callback that a pump runs on another thread. The
//! core's references and watches are counted in [`Counts`], so a leak fails `assert_clean`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::errno::{KResult, EBADF, EFAULT, EINTR, EINVAL, EMFILE, ETIMEDOUT};
use crate::host::{
    FdKind, Host, HostFn, LogLevel, MmRef, Page, RawEventFd, RawEventFdWatch, RawLock, RawTimer,
    PAGE_SIZE,
};

/// Live-object counters; every one must be zero after a test tears everything down.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Pages from page_alloc not yet freed.
    pub pages: i64,
    /// Heap bytes not yet freed.
    pub heap_bytes: i64,
    /// Pinned user pages not yet unpinned.
    pub pins: i64,
    /// Locks not yet freed.
    pub locks: i64,
    /// Address-space references not yet released.
    pub mm_refs: i64,
    /// Timers not yet freed.
    pub timers: i64,
    /// Notifier references from `eventfd_get` not yet put.
    pub eventfd_refs: i64,
    /// Notifier watches not yet unwatched.
    pub eventfd_watches: i64,
}

/// One fake notifier.
#[derive(Default)]
struct FakeEventFd {
    /// The eventfd counter (signals not yet consumed).
    counter: u64,
    /// Open descriptors naming it.
    fds: u32,
    /// References held by the core.
    refs: i64,
}

/// One watch (irqfd) on a fake notifier.
struct FakeWatch {
    efd: usize,
    f: HostFn,
    arg: usize,
    pending: bool,
    running: bool,
}

/// The notifier table: descriptors, notifiers and watches by id.
#[derive(Default)]
struct FakeEvents {
    fds: BTreeMap<i32, usize>,
    objs: BTreeMap<usize, FakeEventFd>,
    watches: BTreeMap<usize, FakeWatch>,
    next_id: usize,
}

impl FakeEvents {
    fn mark_pending(&mut self, efd: usize) {
        for w in self.watches.values_mut().filter(|w| w.efd == efd) {
            w.pending = true;
        }
    }

    /// Drops the notifier when no descriptor and no core reference names it any more.
    fn reap(&mut self, efd: usize) {
        if self
            .objs
            .get(&efd)
            .is_some_and(|o| o.fds == 0 && o.refs == 0)
            && !self.watches.values().any(|w| w.efd == efd)
        {
            self.objs.remove(&efd);
        }
    }
}

/// Simulated user memory: page aligned (so the core's atomics through `phys_kva` are aligned).
struct UserRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

impl UserRegion {
    fn new(len: usize, writable: bool) -> Self {
        let layout = Layout::from_size_align(len, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size layout (len is at least one page).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("user memory");
        UserRegion { ptr, len, writable }
    }

    fn data(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by this region.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for UserRegion {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, PAGE_SIZE).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

// SAFETY: the region owns its memory; access is serialized by the FakeHost mutex (and, for
// `phys_kva` users, by atomics).
unsafe impl Send for UserRegion {}

struct FakeLock {
    held: Mutex<bool>,
    cv: Condvar,
}

/// The fake OS.
pub struct FakeHost {
    pages: AtomicI64,
    heap_bytes: AtomicI64,
    pins: AtomicI64,
    locks: AtomicI64,
    mm_refs: AtomicI64,
    timers: AtomicI64,
    heap_sizes: Mutex<HashMap<usize, usize>>,
    user: Mutex<BTreeMap<u64, UserRegion>>,
    next_uaddr: Mutex<u64>,
    /// Simulated pending signal of the calling thread.
    pub signal: AtomicBool,
    /// Whether the calling process is the VM owner (false simulates another process).
    pub same_mm: AtomicBool,
    /// Fail heap allocations after this many more (-1 = never), for ENOMEM paths.
    pub fail_heap_after: AtomicI64,
    /// Installed descriptors: fd -> (kind, handle).
    pub fds: Mutex<BTreeMap<i32, (FdKind, usize)>>,
    next_fd: AtomicU32,
    /// Test probe run inside `install_fd` (before the descriptor exists) with its handle.
    pub install_fd_probe: Mutex<Option<fn(FdKind, usize)>>,
    sleep_cv: Condvar,
    sleep_mx: Mutex<u64>,
    /// Kicks sent.
    pub kicks: AtomicU32,
    /// Fake monotonic clock in ns; 0 = the real clock.
    pub clock: std::sync::atomic::AtomicU64,
    /// Timer arms so far.
    pub timer_arms: AtomicU32,
    /// Log lines.
    pub log: Mutex<Vec<String>>,
    /// `vmx_enable` answers "the host holds VMX root operation" (OpenBSD) when set.
    pub vmx_host_owned: AtomicBool,
    /// `vmx_enable` / `vmx_disable` calls.
    pub vmx_enables: AtomicU32,
    /// See `vmx_enables`.
    pub vmx_disables: AtomicU32,
    events: Mutex<FakeEvents>,
    events_cv: Condvar,
    eventfd_refs: AtomicI64,
    eventfd_watches: AtomicI64,
    /// `eventfd_signal` calls by the core.
    pub eventfd_signals: AtomicU32,
    /// Fail `eventfd_watch` with ENOMEM when set.
    pub fail_watch: AtomicBool,
}

static MM_TOKEN: u8 = 0;

impl FakeHost {
    /// A fresh fake host, leaked so objects can hold `&'static` to it.
    pub fn leak() -> &'static FakeHost {
        Box::leak(Box::new(FakeHost {
            pages: AtomicI64::new(0),
            heap_bytes: AtomicI64::new(0),
            pins: AtomicI64::new(0),
            locks: AtomicI64::new(0),
            mm_refs: AtomicI64::new(0),
            timers: AtomicI64::new(0),
            heap_sizes: Mutex::new(HashMap::new()),
            user: Mutex::new(BTreeMap::new()),
            next_uaddr: Mutex::new(0x10_0000),
            signal: AtomicBool::new(false),
            same_mm: AtomicBool::new(true),
            fail_heap_after: AtomicI64::new(-1),
            fds: Mutex::new(BTreeMap::new()),
            next_fd: AtomicU32::new(10),
            install_fd_probe: Mutex::new(None),
            sleep_cv: Condvar::new(),
            sleep_mx: Mutex::new(0),
            kicks: AtomicU32::new(0),
            clock: std::sync::atomic::AtomicU64::new(0),
            timer_arms: AtomicU32::new(0),
            log: Mutex::new(Vec::new()),
            vmx_host_owned: AtomicBool::new(false),
            vmx_enables: AtomicU32::new(0),
            vmx_disables: AtomicU32::new(0),
            events: Mutex::new(FakeEvents::default()),
            events_cv: Condvar::new(),
            eventfd_refs: AtomicI64::new(0),
            eventfd_watches: AtomicI64::new(0),
            eventfd_signals: AtomicU32::new(0),
            fail_watch: AtomicBool::new(false),
        }))
    }

    /// Current live-object counts.
    pub fn counts(&self) -> Counts {
        Counts {
            pages: self.pages.load(Ordering::SeqCst),
            heap_bytes: self.heap_bytes.load(Ordering::SeqCst),
            pins: self.pins.load(Ordering::SeqCst),
            locks: self.locks.load(Ordering::SeqCst),
            mm_refs: self.mm_refs.load(Ordering::SeqCst),
            timers: self.timers.load(Ordering::SeqCst),
            eventfd_refs: self.eventfd_refs.load(Ordering::SeqCst),
            eventfd_watches: self.eventfd_watches.load(Ordering::SeqCst),
        }
    }

    /// Creates a notifier with one descriptor (like `eventfd(0, 0)`); returns the descriptor.
    pub fn eventfd_create(&self) -> i32 {
        let fd = self.next_fd.fetch_add(1, Ordering::SeqCst) as i32;
        let mut ev = self.events.lock().unwrap();
        ev.next_id += 1;
        let id = ev.next_id;
        ev.objs.insert(
            id,
            FakeEventFd {
                fds: 1,
                ..Default::default()
            },
        );
        ev.fds.insert(fd, id);
        fd
    }

    /// A second descriptor of the notifier behind `fd` (like `dup`).
    pub fn eventfd_dup(&self, fd: i32) -> i32 {
        let nfd = self.next_fd.fetch_add(1, Ordering::SeqCst) as i32;
        let mut ev = self.events.lock().unwrap();
        let id = *ev.fds.get(&fd).expect("dup of a non-eventfd");
        ev.fds.insert(nfd, id);
        ev.objs.get_mut(&id).unwrap().fds += 1;
        nfd
    }

    /// Closes descriptor `fd` of a notifier (the core's references keep it alive).
    pub fn eventfd_close(&self, fd: i32) {
        let mut ev = self.events.lock().unwrap();
        let id = ev.fds.remove(&fd).expect("close of a non-eventfd");
        ev.objs.get_mut(&id).unwrap().fds -= 1;
        ev.reap(id);
    }

    /// Userspace writes 1 to the notifier behind `fd` (callbacks run at the next pump).
    pub fn eventfd_write(&self, fd: i32) {
        let mut ev = self.events.lock().unwrap();
        let id = *ev.fds.get(&fd).expect("write to a non-eventfd");
        ev.objs.get_mut(&id).unwrap().counter += 1;
        ev.mark_pending(id);
    }

    /// Userspace reads the notifier behind `fd`: its counter, reset to 0.
    pub fn eventfd_read(&self, fd: i32) -> u64 {
        let mut ev = self.events.lock().unwrap();
        let id = *ev.fds.get(&fd).expect("read of a non-eventfd");
        std::mem::take(&mut ev.objs.get_mut(&id).unwrap().counter)
    }

    /// Runs the callbacks of every pending watch (each consumes its notifier's counter), on
    /// the calling thread with the table unlocked; repeats while callbacks make more pending.
    /// Returns the number of callbacks run.
    pub fn eventfd_pump(&self) -> usize {
        let mut n = 0;
        loop {
            let mut ev = self.events.lock().unwrap();
            let Some((&wid, _)) = ev.watches.iter().find(|(_, w)| w.pending && !w.running) else {
                return n;
            };
            let w = ev.watches.get_mut(&wid).unwrap();
            w.pending = false;
            w.running = true;
            let (efd, f, arg) = (w.efd, w.f, w.arg);
            if let Some(o) = ev.objs.get_mut(&efd) {
                o.counter = 0;
            }
            drop(ev);
            // SAFETY: the watch is live (unwatch waits for `running` to clear), so the core
            // keeps arg valid for f.
            unsafe { f(arg as *mut c_void) };
            n += 1;
            let mut ev = self.events.lock().unwrap();
            if let Some(w) = ev.watches.get_mut(&wid) {
                w.running = false;
            }
            drop(ev);
            self.events_cv.notify_all();
        }
    }

    /// Number of live watches on the notifier behind `fd`.
    pub fn eventfd_watchers(&self, fd: i32) -> usize {
        let ev = self.events.lock().unwrap();
        let id = *ev.fds.get(&fd).expect("not an eventfd");
        ev.watches.values().filter(|w| w.efd == id).count()
    }

    /// Maps `len` bytes (rounded up to pages) of zeroed user memory; returns its address. A
    /// one-page hole follows each region so overruns fault.
    pub fn user_alloc(&self, len: usize, writable: bool) -> u64 {
        let len = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut next = self.next_uaddr.lock().unwrap();
        let at = *next;
        *next += (len + PAGE_SIZE) as u64;
        self.user
            .lock()
            .unwrap()
            .insert(at, UserRegion::new(len, writable));
        at
    }

    fn with_user<R>(
        &self,
        uaddr: u64,
        len: usize,
        write: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> KResult<R> {
        let mut user = self.user.lock().unwrap();
        let (&start, r) = user.range_mut(..=uaddr).next_back().ok_or(EFAULT)?;
        if write && !r.writable {
            return Err(EFAULT);
        }
        let off = usize::try_from(uaddr - start).map_err(|_| EFAULT)?;
        let end = off.checked_add(len).ok_or(EFAULT)?;
        let s = r.data().get_mut(off..end).ok_or(EFAULT)?;
        Ok(f(s))
    }

    /// Test-side write into user memory (ignores the read-only flag).
    pub fn user_write(&self, uaddr: u64, bytes: &[u8]) {
        self.with_user(uaddr, bytes.len(), false, |d| d.copy_from_slice(bytes))
            .expect("user_write: unmapped");
    }

    /// Test-side read of user memory.
    pub fn user_read(&self, uaddr: u64, len: usize) -> Vec<u8> {
        self.with_user(uaddr, len, false, |d| d.to_vec())
            .expect("user_read: unmapped")
    }

    fn fake_pa(uaddr: u64) -> u64 {
        uaddr | (1 << 50)
    }

    /// Marks the user page at `uaddr` read-only or writable (as `mprotect` would; the whole
    /// region containing it).
    pub fn user_protect(&self, uaddr: u64, writable: bool) {
        let mut user = self.user.lock().unwrap();
        let (_, r) = user.range_mut(..=uaddr).next_back().expect("unmapped");
        r.writable = writable;
    }
}

impl Host for FakeHost {
    fn page_alloc(&self) -> Option<Page> {
        let layout = Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: non-zero size layout.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.pages.fetch_add(1, Ordering::SeqCst);
        Some(Page {
            va: p,
            pa: p.as_ptr() as u64,
        })
    }
    unsafe fn page_free(&self, page: Page) {
        assert_eq!(
            page.va.as_ptr() as u64,
            page.pa,
            "page_free: va/pa mismatch"
        );
        let layout = Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the page came from page_alloc with this layout.
        unsafe { dealloc(page.va.as_ptr(), layout) };
        self.pages.fetch_sub(1, Ordering::SeqCst);
    }
    fn contig_alloc(&self, npages: u32) -> Option<Page> {
        assert!((1..=16).contains(&npages), "contig_alloc({npages})");
        let layout = Layout::from_size_align(PAGE_SIZE * npages as usize, PAGE_SIZE).ok()?;
        // SAFETY: non-zero size layout.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.pages.fetch_add(i64::from(npages), Ordering::SeqCst);
        Some(Page {
            va: p,
            pa: p.as_ptr() as u64,
        })
    }
    unsafe fn contig_free(&self, page: Page, npages: u32) {
        assert_eq!(
            page.va.as_ptr() as u64,
            page.pa,
            "contig_free: va/pa mismatch"
        );
        let layout = Layout::from_size_align(PAGE_SIZE * npages as usize, PAGE_SIZE).unwrap();
        // SAFETY: the pages came from contig_alloc with this layout.
        unsafe { dealloc(page.va.as_ptr(), layout) };
        self.pages.fetch_sub(i64::from(npages), Ordering::SeqCst);
    }
    fn heap_alloc(&self, size: usize) -> Option<NonNull<u8>> {
        let budget = self.fail_heap_after.load(Ordering::SeqCst);
        if budget == 0 {
            return None;
        }
        if budget > 0 {
            self.fail_heap_after.fetch_sub(1, Ordering::SeqCst);
        }
        assert!(size > 0, "heap_alloc(0)");
        let layout = Layout::from_size_align(size, 16).ok()?;
        // SAFETY: non-zero size layout.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.heap_sizes
            .lock()
            .unwrap()
            .insert(p.as_ptr() as usize, size);
        self.heap_bytes.fetch_add(size as i64, Ordering::SeqCst);
        Some(p)
    }
    unsafe fn heap_free(&self, p: NonNull<u8>, size: usize) {
        let recorded = self
            .heap_sizes
            .lock()
            .unwrap()
            .remove(&(p.as_ptr() as usize));
        assert_eq!(
            recorded,
            Some(size),
            "heap_free with a wrong size or pointer"
        );
        // SAFETY: allocated by heap_alloc with this layout.
        unsafe { dealloc(p.as_ptr(), Layout::from_size_align(size, 16).unwrap()) };
        self.heap_bytes.fetch_sub(size as i64, Ordering::SeqCst);
    }
    fn copyin(&self, dst: &mut [u8], uaddr: u64) -> KResult<()> {
        self.with_user(uaddr, dst.len(), false, |s| dst.copy_from_slice(s))
    }
    fn copyout(&self, uaddr: u64, src: &[u8]) -> KResult<()> {
        self.with_user(uaddr, src.len(), true, |d| d.copy_from_slice(src))
    }
    fn mm_current(&self) -> Option<MmRef> {
        self.mm_refs.fetch_add(1, Ordering::SeqCst);
        Some(MmRef(NonNull::from(&MM_TOKEN).cast()))
    }
    fn mm_is_current(&self, _mm: MmRef) -> bool {
        self.same_mm.load(Ordering::SeqCst)
    }
    fn mm_release(&self, _mm: MmRef) {
        self.mm_refs.fetch_sub(1, Ordering::SeqCst);
    }
    fn pin_page(&self, _mm: MmRef, uaddr: u64, writable: bool) -> KResult<u64> {
        assert_eq!(uaddr % PAGE_SIZE as u64, 0, "pin of an unaligned address");
        self.with_user(uaddr, PAGE_SIZE, writable, |_| ())?;
        self.pins.fetch_add(1, Ordering::SeqCst);
        Ok(Self::fake_pa(uaddr))
    }
    fn unpin_page(&self, _mm: MmRef, uaddr: u64, pa: u64, _dirty: bool) {
        assert_eq!(pa, Self::fake_pa(uaddr), "unpin with a wrong pa");
        self.pins.fetch_sub(1, Ordering::SeqCst);
    }
    fn phys_kva(&self, pa: u64) -> Option<NonNull<u8>> {
        if pa & (1 << 50) == 0 {
            // A page from page_alloc: its fake physical address is its address.
            return NonNull::new(pa as *mut u8);
        }
        let uaddr = pa & !(1 << 50);
        assert_eq!(
            pa,
            Self::fake_pa(uaddr),
            "phys_kva of a page the fake never pinned"
        );
        assert_eq!(
            uaddr % PAGE_SIZE as u64,
            0,
            "phys_kva of an unaligned address"
        );
        let mut user = self.user.lock().unwrap();
        let (&start, r) = user.range_mut(..=uaddr).next_back()?;
        let off = usize::try_from(uaddr - start).ok()?;
        if off >= r.len {
            return None;
        }
        // SAFETY: off < len, inside the region's allocation (which lives as long as the host).
        NonNull::new(unsafe { r.ptr.as_ptr().add(off) })
    }
    fn lock_alloc(&self) -> Option<RawLock> {
        self.locks.fetch_add(1, Ordering::SeqCst);
        let b = Box::new(FakeLock {
            held: Mutex::new(false),
            cv: Condvar::new(),
        });
        Some(RawLock(NonNull::from(Box::leak(b)).cast()))
    }
    unsafe fn lock_free(&self, l: RawLock) {
        // SAFETY: l came from lock_alloc (a leaked Box<FakeLock>).
        let b = unsafe { Box::from_raw(l.0.as_ptr().cast::<FakeLock>()) };
        assert!(!*b.held.lock().unwrap(), "freeing a held lock");
        self.locks.fetch_sub(1, Ordering::SeqCst);
    }
    fn lock(&self, l: RawLock) {
        // SAFETY: l is a live FakeLock.
        let fl = unsafe { &*l.0.as_ptr().cast::<FakeLock>() };
        let mut g = fl.held.lock().unwrap();
        while *g {
            g = fl.cv.wait(g).unwrap();
        }
        *g = true;
    }
    fn unlock(&self, l: RawLock) {
        // SAFETY: l is a live FakeLock.
        let fl = unsafe { &*l.0.as_ptr().cast::<FakeLock>() };
        let mut g = fl.held.lock().unwrap();
        assert!(*g, "unlock of an unheld lock");
        *g = false;
        fl.cv.notify_one();
    }
    fn sleep(&self, _chan: *const c_void, l: RawLock, timeout_ns: u64) -> KResult<()> {
        let gen = *self.sleep_mx.lock().unwrap();
        self.unlock(l);
        let mut g = self.sleep_mx.lock().unwrap();
        let dur = Duration::from_nanos(if timeout_ns == 0 {
            50_000_000
        } else {
            timeout_ns
        });
        let mut res = Ok(());
        if *g == gen {
            let (ng, to) = self.sleep_cv.wait_timeout(g, dur).unwrap();
            g = ng;
            if to.timed_out() && timeout_ns != 0 {
                res = Err(ETIMEDOUT);
            }
        }
        drop(g);
        self.lock(l);
        if self.signal.load(Ordering::SeqCst) {
            return Err(EINTR);
        }
        res
    }
    fn wakeup(&self, _chan: *const c_void) {
        *self.sleep_mx.lock().unwrap() += 1;
        self.sleep_cv.notify_all();
    }
    fn cpu_current(&self) -> u32 {
        0
    }
    fn cpu_count(&self) -> u32 {
        4
    }
    fn run_on_all_cpus(
        &self,
        f: unsafe extern "C" fn(*mut c_void) -> i32,
        arg: *mut c_void,
    ) -> i32 {
        for _ in 0..self.cpu_count() {
            // SAFETY: the caller passes a callback valid for arg.
            let r = unsafe { f(arg) };
            if r != 0 {
                return r;
            }
        }
        0
    }
    fn cpu_kick(&self, _cpu: u32) {
        self.kicks.fetch_add(1, Ordering::SeqCst);
    }
    fn preempt_disable(&self) {}
    fn preempt_enable(&self) {}
    fn signal_pending(&self) -> bool {
        self.signal.load(Ordering::SeqCst)
    }
    fn should_yield(&self) -> bool {
        false
    }
    fn yield_now(&self) {
        std::thread::yield_now();
    }
    fn nanotime(&self) -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        let fake = self.clock.load(Ordering::SeqCst);
        if fake != 0 {
            return fake;
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    fn tsc_khz(&self) -> u64 {
        2_000_000
    }
    fn timer_alloc(&self, _f: HostFn, _arg: *mut c_void) -> Option<RawTimer> {
        self.timers.fetch_add(1, Ordering::SeqCst);
        Some(RawTimer(NonNull::from(Box::leak(Box::new(0u64))).cast()))
    }
    fn timer_arm(&self, _t: RawTimer, _ns: u64) {
        self.timer_arms.fetch_add(1, Ordering::SeqCst);
    }
    fn timer_cancel(&self, _t: RawTimer) {}
    unsafe fn timer_free(&self, t: RawTimer) {
        // SAFETY: t came from timer_alloc (a leaked Box<u64>).
        drop(unsafe { Box::from_raw(t.0.as_ptr().cast::<u64>()) });
        self.timers.fetch_sub(1, Ordering::SeqCst);
    }
    fn fpu_enter(&self) {}
    fn fpu_leave(&self) {}
    fn vmx_enable(&self) -> KResult<bool> {
        self.vmx_enables.fetch_add(1, Ordering::SeqCst);
        Ok(self.vmx_host_owned.load(Ordering::SeqCst))
    }
    fn vmx_disable(&self) {
        self.vmx_disables.fetch_add(1, Ordering::SeqCst);
    }
    fn install_fd(&self, kind: FdKind, handle: *mut c_void) -> KResult<i32> {
        let probe = *self.install_fd_probe.lock().unwrap();
        if let Some(f) = probe {
            f(kind, handle as usize);
        }
        let fd = self.next_fd.fetch_add(1, Ordering::SeqCst) as i32;
        if fd > 100_000 {
            return Err(EMFILE);
        }
        self.fds.lock().unwrap().insert(fd, (kind, handle as usize));
        Ok(fd)
    }
    fn log(&self, level: LogLevel, msg: &str) {
        self.log.lock().unwrap().push(format!("{level:?}: {msg}"));
    }
    fn eventfd_get(&self, fd: i32) -> KResult<RawEventFd> {
        let mut ev = self.events.lock().unwrap();
        let Some(&id) = ev.fds.get(&fd) else {
            // Another kind of descriptor (a VM or vCPU) is open but not a notifier.
            return Err(if self.fds.lock().unwrap().contains_key(&fd) {
                EINVAL
            } else {
                EBADF
            });
        };
        ev.objs.get_mut(&id).unwrap().refs += 1;
        self.eventfd_refs.fetch_add(1, Ordering::SeqCst);
        Ok(RawEventFd(
            NonNull::new(std::ptr::without_provenance_mut(id)).unwrap(),
        ))
    }
    unsafe fn eventfd_put(&self, e: RawEventFd) {
        let id = e.0.as_ptr() as usize;
        let mut ev = self.events.lock().unwrap();
        let o = ev
            .objs
            .get_mut(&id)
            .expect("eventfd_put of an unknown notifier");
        assert!(o.refs > 0, "eventfd_put without a reference");
        o.refs -= 1;
        ev.reap(id);
        self.eventfd_refs.fetch_sub(1, Ordering::SeqCst);
    }
    fn eventfd_signal(&self, e: RawEventFd) {
        let id = e.0.as_ptr() as usize;
        let mut ev = self.events.lock().unwrap();
        let o = ev
            .objs
            .get_mut(&id)
            .expect("eventfd_signal of an unknown notifier");
        assert!(o.refs > 0, "eventfd_signal without a reference");
        o.counter += 1;
        ev.mark_pending(id);
        self.eventfd_signals.fetch_add(1, Ordering::SeqCst);
    }
    unsafe fn eventfd_watch(
        &self,
        e: RawEventFd,
        f: HostFn,
        arg: *mut c_void,
    ) -> KResult<RawEventFdWatch> {
        if self.fail_watch.load(Ordering::SeqCst) {
            return Err(crate::errno::ENOMEM);
        }
        let efd = e.0.as_ptr() as usize;
        let mut ev = self.events.lock().unwrap();
        let o = ev
            .objs
            .get(&efd)
            .expect("eventfd_watch of an unknown notifier");
        assert!(o.refs > 0, "eventfd_watch without a reference");
        let pending = o.counter > 0;
        ev.next_id += 1;
        let wid = ev.next_id;
        ev.watches.insert(
            wid,
            FakeWatch {
                efd,
                f,
                arg: arg as usize,
                pending,
                running: false,
            },
        );
        self.eventfd_watches.fetch_add(1, Ordering::SeqCst);
        Ok(RawEventFdWatch(
            NonNull::new(std::ptr::without_provenance_mut(wid)).unwrap(),
        ))
    }
    unsafe fn eventfd_unwatch(&self, w: RawEventFdWatch) {
        let wid = w.0.as_ptr() as usize;
        let mut ev = self.events.lock().unwrap();
        while ev
            .watches
            .get(&wid)
            .expect("unwatch of an unknown watch")
            .running
        {
            ev = self.events_cv.wait(ev).unwrap();
        }
        let efd = ev.watches.remove(&wid).unwrap().efd;
        ev.reap(efd);
        self.eventfd_watches.fetch_sub(1, Ordering::SeqCst);
    }
}
