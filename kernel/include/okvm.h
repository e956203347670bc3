/*
 * okvm.h -- the one interface between the okvm core (okvm.o, Rust) and an OS glue (C).
 *
 * Two directions:
 *   - entry points okvm_*() are defined by the core and called by the glue;
 *   - host services okvm_host_*() are defined by the glue and called by the core.
 * Every symbol okvm.o exports is an entry point declared here; every symbol it needs from the
 * glue is a host service declared here (plus the kernel's memcpy/memset/memmove/memcmp and
 * retpoline thunks). kernel/src/ffi.rs is the Rust side; a test compiles this header against
 * prototypes generated from ffi.rs and compares the name sets, so the two cannot drift.
 *
 * Conventions:
 *   - Results are "non-negative value or negative errno". Errno values are Linux's (the KVM ABI
 *     is Linux's); OKVM_E* below lists every one the core returns, so a glue on an OS with other
 *     numbers translates them (OpenBSD: EAGAIN, ENOSYS, EOPNOTSUPP, ETIMEDOUT differ).
 *   - User addresses are uint64_t values of the calling process; the core never dereferences
 *     them, it calls okvm_host_copyin/copyout.
 *   - Physical addresses are host physical addresses (uint64_t).
 *   - Host services are called from thread context (never from interrupts), possibly with an
 *     okvm lock held; they may sleep unless noted. The one exception: a timer callback (soft-
 *     interrupt context) calls okvm_host_wakeup and okvm_host_cpu_kick, which must not sleep.
 */
#ifndef OKVM_H
#define OKVM_H

#include <stddef.h>
#include <stdint.h>

/* Linux errno values returned (negated) by the entry points. */
#define OKVM_EPERM	1	/* not permitted */
#define OKVM_ENOENT	2	/* no such slot/entry */
#define OKVM_EINTR	4	/* signal pending (KVM_RUN) */
#define OKVM_EIO	5	/* caller is not the VM's process */
#define OKVM_ENXIO	6	/* no such device or address */
#define OKVM_E2BIG	7	/* user buffer too small; needed size copied back */
#define OKVM_EBADF	9	/* bad descriptor */
#define OKVM_EAGAIN	11	/* try again */
#define OKVM_ENOMEM	12	/* out of memory */
#define OKVM_EFAULT	14	/* bad user address */
#define OKVM_EBUSY	16	/* busy (detach with live objects, ...) */
#define OKVM_EEXIST	17	/* exists (overlapping memslot, duplicate vCPU id) */
#define OKVM_ENODEV	19	/* no usable virtualization hardware */
#define OKVM_EINVAL	22	/* invalid argument */
#define OKVM_EMFILE	24	/* too many open files (fd install) */
#define OKVM_ENOTTY	25	/* unknown ioctl for this descriptor */
#define OKVM_ENOSPC	28	/* no space (coalesced MMIO zones) */
#define OKVM_ENOSYS	38	/* not implemented */
#define OKVM_EOPNOTSUPP	95	/* not supported */
#define OKVM_ETIMEDOUT	110	/* okvm_host_sleep timed out */

/* Descriptor kinds, as okvm_host_install_fd receives them (also the clone minor's low byte). */
#define OKVM_KIND_SYSTEM	0	/* /dev/kvm */
#define OKVM_KIND_VM		1	/* from KVM_CREATE_VM */
#define OKVM_KIND_VCPU		2	/* from KVM_CREATE_VCPU; mmappable */

/* Log levels for okvm_host_log. */
#define OKVM_LOG_ERROR	0
#define OKVM_LOG_WARN	1
#define OKVM_LOG_INFO	2

/* Opaque objects. */
typedef void *okvm_handle_t;		/* a core object behind one descriptor */
typedef void *okvm_lock_t;		/* a glue lock (sleepable mutex) */
typedef void *okvm_mm_t;		/* a referenced process address space */
typedef void *okvm_timer_t;		/* a glue one-shot timer */
typedef void (*okvm_fn_t)(void *);	/* timer / notifier-watch callback */
typedef int32_t (*okvm_cpu_fn_t)(void *);	/* per-CPU callback, 0 or -errno */
/* An event notifier of a process (Linux: eventfd; OpenBSD: pipe read end). */
typedef struct okvm_eventfd *okvm_eventfd_t;
/* A watch set on a notifier by okvm_host_eventfd_watch. */
typedef struct okvm_eventfd_watch *okvm_eventfd_watch_t;

/* ------------------------------------------------------------------------------------------ */
/* Entry points (defined by okvm.o, called by the glue).                                       */
/* ------------------------------------------------------------------------------------------ */

/* Probe the CPU and set up the core; 0 or -errno. Call once, before any other entry point. */
int32_t	okvm_attach(void);
/* Tear down the core; -EBUSY while any VM exists. No other entry point may run concurrently. */
int32_t	okvm_detach(void);
/* An open of /dev/kvm: stores the system handle in *out; 0 or -errno. */
int32_t	okvm_open(okvm_handle_t *out);
/*
 * An ioctl on the descriptor of handle h: cmd is the raw 32-bit Linux command word (mask a
 * sign-extended int to 32 bits), arg the raw argument (user pointer or value). The core copies
 * in/out itself with Linux's semantics (including copy-back on some errors). Returns the
 * syscall's value (>= 0; for KVM_CREATE_VM/KVM_CREATE_VCPU the new fd) or -errno.
 * Concurrent calls on the same or different handles are allowed, but not with okvm_release(h).
 */
int64_t	okvm_ioctl(okvm_handle_t h, uint32_t cmd, uint64_t arg);
/*
 * mmap fault/lookup: physical address of page pgoff of descriptor h in *pa; 0 or -EINVAL.
 * vCPU descriptors: page 0 is struct kvm_run, 1 the PIO data page, 2 the coalesced MMIO ring.
 * The page stays allocated until the VM is torn down (see okvm_host_page_free).
 */
int32_t	okvm_mmap(okvm_handle_t h, uint64_t pgoff, uint64_t *pa);
/* The last reference to the descriptor of h went away (close). h is invalid afterwards. */
void	okvm_release(okvm_handle_t h);

/* ------------------------------------------------------------------------------------------ */
/* Host services (defined by the glue, called by okvm.o).                                      */
/* ------------------------------------------------------------------------------------------ */

/* Pages: one zeroed, wired 4 KiB page; *va its kernel address, *pa its physical one. 0/-ENOMEM. */
int32_t	okvm_host_page_alloc(void **va, uint64_t *pa);
/* Free a page; the glue first removes every user mapping of it (it may have been mmapped). */
void	okvm_host_page_free(void *va, uint64_t pa);
/*
 * Physically contiguous pages (SVM's I/O and MSR permission maps): npages (1..16) zeroed, wired
 * pages at kernel address *va and physical address *pa, never mapped into a process. 0/-ENOMEM.
 */
int32_t	okvm_host_contig_alloc(uint32_t npages, void **va, uint64_t *pa);
/* Free pages from okvm_host_contig_alloc (same va, pa and npages). */
void	okvm_host_contig_free(void *va, uint64_t pa, uint32_t npages);

/* Kernel heap: size zeroed bytes, 16-byte aligned, NULL when short. */
void	*okvm_host_heap_alloc(size_t size);
/* Free a heap block with the size it was allocated with. */
void	okvm_host_heap_free(void *p, size_t size);

/* Copy len bytes from user address uaddr of the current process to dst; 0 or -EFAULT. */
int32_t	okvm_host_copyin(void *dst, uint64_t uaddr, size_t len);
/* Copy len bytes from src to user address uaddr of the current process; 0 or -EFAULT. */
int32_t	okvm_host_copyout(uint64_t uaddr, const void *src, size_t len);

/* Take a reference on the current process's address space (the VM owner); NULL when short. */
okvm_mm_t okvm_host_mm_current(void);
/* 1 if the current process's address space is mm, else 0. */
int32_t	okvm_host_mm_is_current(okvm_mm_t mm);
/* Drop a reference from okvm_host_mm_current. */
void	okvm_host_mm_release(okvm_mm_t mm);
/* Fault in and wire the page at uaddr (page aligned) of mm, writable if asked; *pa. 0/-EFAULT. */
int32_t	okvm_host_pin_page(okvm_mm_t mm, uint64_t uaddr, int32_t writable, uint64_t *pa);
/* Unwire a page pinned by okvm_host_pin_page (same mm, uaddr, pa); dirty if it was written. */
void	okvm_host_unpin_page(okvm_mm_t mm, uint64_t uaddr, uint64_t pa, int32_t dirty);
/*
 * Kernel virtual address of the page at physical address pa (page aligned), which the core has
 * wired with okvm_host_pin_page or allocated with okvm_host_page_alloc and keeps while it uses
 * the address (amd64: the direct map). The core uses it for atomic compare-exchange on guest
 * page-table entries (A/D bits), which copyin/copyout cannot do, and to reach its own
 * second-level table pages by physical address. NULL if the page has no kernel address.
 */
void	*okvm_host_phys_kva(uint64_t pa);

/* Locks: a sleepable mutex; NULL when short. */
okvm_lock_t okvm_host_lock_alloc(void);
/* Free an unheld lock. */
void	okvm_host_lock_free(okvm_lock_t l);
/* Acquire (may sleep). */
void	okvm_host_lock(okvm_lock_t l);
/* Release. */
void	okvm_host_unlock(okvm_lock_t l);
/* Sleep on chan, atomically releasing held lock l, re-acquired on return; timeout_ns 0 = none. */
/* Returns 0 when woken, -EINTR on a signal, -ETIMEDOUT on timeout. */
int32_t	okvm_host_sleep(const void *chan, okvm_lock_t l, uint64_t timeout_ns);
/* Wake every sleeper on chan; never sleeps (also called from timer callbacks). */
void	okvm_host_wakeup(const void *chan);

/* CPUs: index of the current CPU. */
uint32_t okvm_host_cpu_current(void);
/* Number of CPUs. */
uint32_t okvm_host_cpu_count(void);
/* Run fn(arg) on every CPU, wait for all; the first nonzero result or 0. */
int32_t	okvm_host_run_on_all_cpus(okvm_cpu_fn_t fn, void *arg);
/* Send an IPI to cpu so that it leaves guest mode soon (no-op for the current CPU); never
 * sleeps (also called from timer callbacks). */
void	okvm_host_cpu_kick(uint32_t cpu);
/* Keep the current thread on its CPU (nests). */
void	okvm_host_preempt_disable(void);
/* Undo one okvm_host_preempt_disable. */
void	okvm_host_preempt_enable(void);

/* Threads: 1 if the current thread has a signal pending, else 0. */
int32_t	okvm_host_signal_pending(void);
/* 1 if the current thread should give up the CPU, else 0. */
int32_t	okvm_host_should_yield(void);
/* Give up the CPU for a while. */
void	okvm_host_yield(void);

/* Time: monotonic nanoseconds. */
uint64_t okvm_host_nanotime(void);
/* TSC frequency in kHz, 0 if unknown. */
uint64_t okvm_host_tsc_khz(void);
/* Timers: allocate a one-shot timer calling fn(arg) in soft-interrupt context; NULL if short. */
okvm_timer_t okvm_host_timer_alloc(okvm_fn_t fn, void *arg);
/* Arm t to fire once, ns nanoseconds from now (re-arms a pending timer). */
void	okvm_host_timer_arm(okvm_timer_t t, uint64_t ns);
/* Cancel t and wait for a running callback to finish. */
void	okvm_host_timer_cancel(okvm_timer_t t);
/* Free a cancelled timer. */
void	okvm_host_timer_free(okvm_timer_t t);

/* FPU: save the current thread's user FPU/xsave state; the core may then load guest state. */
void	okvm_host_fpu_enter(void);
/* Restore the user FPU/xsave state saved by okvm_host_fpu_enter. */
void	okvm_host_fpu_leave(void);

/*
 * VMX (Intel), on the current CPU, called with preemption disabled: make the CPU ready for VMX
 * root operation. Returns 1 if the host already holds this CPU in VMX root operation (OpenBSD:
 * vmm(4)'s VMXON, kept on by kvm(4)'s vmm_ext_enter while any descriptor exists): the core
 * then only VMPTRLDs its own VMCSs and never executes VMXON/VMXOFF. Returns 0 after setting
 * CR4.VMXE for the core, which then executes VMXON with its own region (a host whose CR4
 * shadow must know about VMXE, e.g. Linux). -EBUSY if another hypervisor owns VMX here.
 */
int32_t	okvm_host_vmx_enable(void);
/* Undo a 0 result of okvm_host_vmx_enable after the core's VMXOFF: clear CR4.VMXE. */
void	okvm_host_vmx_disable(void);

/*
 * Descriptors: install a new descriptor of kind (OKVM_KIND_VM or OKVM_KIND_VCPU) in the current
 * process whose ioctl/mmap/close go to handle h; returns the fd number or -errno. After success
 * the glue calls okvm_release(h) when the descriptor's last reference goes away.
 */
int32_t	okvm_host_install_fd(uint32_t kind, okvm_handle_t h);

/*
 * Event notifiers (KVM_IOEVENTFD, KVM_IRQFD). Take a reference on the notifier behind
 * descriptor fd of the calling process: 0 with *e set; -EBADF if fd is not an open descriptor;
 * -EINVAL if it is not a notifier (Linux: not an eventfd; OpenBSD: not a pipe). Two
 * descriptors of the same notifier (dup'ed, or the same fd twice) give the same *e, so the
 * core compares handles to find "the same eventfd".
 */
int32_t	okvm_host_eventfd_get(int32_t fd, okvm_eventfd_t *e);
/*
 * Drop a reference from okvm_host_eventfd_get (thread context, may sleep). Like unwatch, the
 * last put may wait for any running watch callback (OpenBSD: a barrier on kvm(4)'s one task
 * queue), so the core calls it with no okvm lock held.
 */
void	okvm_host_eventfd_put(okvm_eventfd_t e);
/*
 * Signal e once (ioeventfd): Linux eventfd_signal (counter += 1); OpenBSD: make the pipe's read
 * end readable (one byte, dropped if the pipe is full: a notifier only needs "readable").
 * Called from a vCPU thread, possibly with okvm locks held; must not sleep.
 */
void	okvm_host_eventfd_signal(okvm_eventfd_t e);
/*
 * Watch e (irqfd): from now on, each time e is signaled by anyone, the glue consumes the signal
 * (eventfd: reads the counter to 0; pipe: drains the bytes) and calls fn(arg) from thread
 * context with no okvm lock held (Linux: a workqueue item; OpenBSD: a task(9) on systq).
 * Signals that arrive while a call is pending may coalesce into one call. If e is already
 * signaled when the watch starts, this happens once right away (scheduled like any other call:
 * never from inside okvm_host_eventfd_watch, whose caller may hold an okvm lock).
 * 0 with *w set, or -ENOMEM.
 */
int32_t	okvm_host_eventfd_watch(okvm_eventfd_t e, okvm_fn_t fn, void *arg,
	    okvm_eventfd_watch_t *w);
/*
 * Stop watch w: on return fn(arg) is not running and will not be called again for w (waits for
 * a running call, possibly any watch's). Thread context, may sleep; never called from fn itself
 * nor with an okvm lock held (a callback takes the routing and irqchip locks).
 */
void	okvm_host_eventfd_unwatch(okvm_eventfd_watch_t w);

/* Logging: one line of len bytes (no NUL needed) at level OKVM_LOG_*. */
void	okvm_host_log(uint32_t level, const char *msg, size_t len);
/* Fatal internal error in the core at file:line (file_len bytes); stops the machine. */
void	okvm_host_panic(const char *file, size_t file_len, uint32_t line) __attribute__((noreturn));

#endif /* OKVM_H */
