/*	$OpenBSD$	*/

/*
 * Copyright (c) 2026 The okvm authors
 *
 * Permission to use, copy, modify, and distribute this software for any
 * purpose with or without fee is hereby granted, provided that the above
 * copyright notice and this permission notice appear in all copies.
 *
 * THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
 * WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
 * MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
 * ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
 * WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
 * ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
 * OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
 */

/*
 * kvm(4): the host services okvm.o calls (okvm_host_* in okvm.h), each a
 * call or two into the OpenBSD kernel.  Errors go back as negated Linux
 * errno values (OKVM_E*).
 */

#include <sys/param.h>
#include <sys/systm.h>
#include <sys/atomic.h>
#include <sys/event.h>
#include <sys/file.h>
#include <sys/filedesc.h>
#include <sys/malloc.h>
#include <sys/pipe.h>
#include <sys/proc.h>
#include <sys/queue.h>
#include <sys/rwlock.h>
#include <sys/sched.h>
#include <sys/signalvar.h>
#include <sys/specdev.h>
#include <sys/task.h>
#include <sys/time.h>
#include <sys/timeout.h>
#include <sys/user.h>
#include <sys/xcall.h>

#include <uvm/uvm.h>

#include <machine/cpu.h>
#include <machine/cpufunc.h>
#include <machine/fpu.h>
#include <machine/intr.h>
#include <machine/specialreg.h>

#include <dev/kvm/okvm.h>
#include <dev/kvm/kvmvar.h>

extern uint64_t tsc_frequency;		/* arch/amd64/amd64/tsc.c */

/*
 * Locks used to protect struct members in this file:
 *	I	immutable after creation
 *	a	atomic operations
 *	c	owned by the thread running on that CPU
 *	E	kvm_ev_lock
 *	p	the notifier pipe's pipe_lock
 *	s	ke_siglock
 */

/* A one-shot timer. */
struct kvm_timer {
	struct timeout	 kt_to;		/* [I] fires fn(arg) at softclock */
};

/* Per-CPU state. */
struct kvm_pcpu {
	u_int		 kp_nopreempt;	/* [c] okvm_host_preempt_disable() */
} __aligned(64);

struct kvm_pcpu	 kvm_pcpu[MAXCPUS];

/* okvm_host_run_on_all_cpus() call on one CPU. */
struct kvm_xcall {
	okvm_cpu_fn_t	 kx_fn;
	void		*kx_arg;
	int32_t		 kx_ret;
};

/*
 * Event notifiers (ioeventfd, irqfd): QEMU's are pipes on OpenBSD and it
 * hands kvm(4) the read end (NOTES.md).  The notifier is the struct pipe
 * behind that descriptor: the buffer its reads return.  One okvm_eventfd
 * per pipe, found by the pipe in kvm_ev_list, so that every descriptor of
 * it gives the same handle; it keeps a reference on the file, which keeps
 * the pipe.
 *
 * Signals and watches run on kvm_evtq, a task queue of kvm(4)'s own: the
 * pipe calls (pipe_notify(), pipe_notify_drain() in kern/sys_pipe.c, kernel
 * patch) take the pipe's rwlock and never wait for its I/O lock there (a
 * process can hold that across a fault on its own memory); they fail with
 * EBUSY instead, and the task retries a tick later.
 */
struct okvm_eventfd {
	LIST_ENTRY(okvm_eventfd) ke_entry;	/* [E] on kvm_ev_list */
	struct file	*ke_fp;		/* [I] referenced pipe descriptor */
	struct pipe	*ke_pipe;	/* [I] its f_data: the notifier */
	u_int		 ke_refs;	/* [E] gets and watches */
	struct rwlock	 ke_siglock;	/* delivery of ke_sigpending */
	volatile u_int	 ke_sigpending;	/* [a] a signal waits for delivery */
	struct task	 ke_sigtask;	/* delivers it */
	struct timeout	 ke_sigto;	/* retries ke_sigtask */
};

/*
 * A watch: a knote with our own filterops on the pipe's klist.  The pipe
 * calls its f_event under pipe_lock whenever it has news (pipe_wakeup());
 * it queues kw_task when the buffer holds data and returns 0, so the knote,
 * which has no kqueue, is never activated (knote_locked() only touches
 * kn_kq for an event that returns non-zero).  kw_task drains the pipe and
 * calls fn(arg).
 */
struct okvm_eventfd_watch {
	struct knote	 kw_kn;		/* [p] on ke_pipe's pipe_klist */
	struct okvm_eventfd *kw_e;	/* [I] referenced */
	okvm_fn_t	 kw_fn;		/* [I] */
	void		*kw_arg;	/* [I] */
	volatile u_int	 kw_dead;	/* [p] unwatch has begun */
	struct task	 kw_task;	/* drains the pipe, calls fn */
	struct timeout	 kw_to;		/* retries kw_task */
};

struct rwlock	 kvm_ev_lock = RWLOCK_INITIALIZER("kvmev");
LIST_HEAD(, okvm_eventfd) kvm_ev_list = LIST_HEAD_INITIALIZER(kvm_ev_list);
struct taskq	*kvm_evtq;		/* [I] signal and watch tasks */

void
kvm_host_init(void)
{
	memset(kvm_pcpu, 0, sizeof(kvm_pcpu));
	kvm_evtq = taskq_create("kvmev", 1, IPL_SOFTCLOCK, TASKQ_MPSAFE);
}

static struct cpu_info *
kvm_cpu_info(uint32_t idx)
{
	struct cpu_info *ci;
	CPU_INFO_ITERATOR cii;

	CPU_INFO_FOREACH(cii, ci) {
		if (CPU_INFO_UNIT(ci) == idx)
			return (ci);
	}
	return (NULL);
}

/* Pages. */

int32_t
okvm_host_page_alloc(void **va, uint64_t *pa)
{
	paddr_t p;
	void *v;

	v = km_alloc(PAGE_SIZE, &kv_page, &kp_zero, &kd_waitok);
	if (v == NULL)
		return (-OKVM_ENOMEM);
	if (!pmap_extract(pmap_kernel(), (vaddr_t)v, &p)) {
		km_free(v, PAGE_SIZE, &kv_page, &kp_zero);
		return (-OKVM_ENOMEM);
	}
	*va = v;
	*pa = p;
	return (0);
}

/*
 * The page may be mapped into a process through kvmmmap(): remove every
 * user mapping first.  udv_fault() looks the page up and enters it while
 * holding the kernel lock, so taking it here orders the two.
 */
void
okvm_host_page_free(void *va, uint64_t pa)
{
	struct vm_page *pg;

	pg = PHYS_TO_VM_PAGE(pa);
	if (pg != NULL) {
		KERNEL_LOCK();
		pmap_page_protect(pg, PROT_NONE);
		KERNEL_UNLOCK();
	}
	km_free(va, PAGE_SIZE, &kv_page, &kp_zero);
}

/*
 * Physically contiguous pages (SVM permission maps): one segment, zeroed,
 * never mapped into a process.
 */
const struct kmem_pa_mode okvm_kp_contig = {
	.kp_constraint = &no_constraint,
	.kp_maxseg = 1,
	.kp_zero = 1
};

int32_t
okvm_host_contig_alloc(uint32_t npages, void **va, uint64_t *pa)
{
	paddr_t p;
	void *v;

	if (npages == 0 || npages > 16)
		return (-OKVM_ENOMEM);
	v = km_alloc(ptoa(npages), &kv_any, &okvm_kp_contig, &kd_waitok);
	if (v == NULL)
		return (-OKVM_ENOMEM);
	if (!pmap_extract(pmap_kernel(), (vaddr_t)v, &p)) {
		km_free(v, ptoa(npages), &kv_any, &okvm_kp_contig);
		return (-OKVM_ENOMEM);
	}
	*va = v;
	*pa = p;
	return (0);
}

void
okvm_host_contig_free(void *va, uint64_t pa, uint32_t npages)
{
	km_free(va, ptoa(npages), &kv_any, &okvm_kp_contig);
}

/* Kernel heap. */

void *
okvm_host_heap_alloc(size_t size)
{
	if (size == 0)
		size = 1;
	return (malloc(size, M_DEVBUF, M_WAITOK | M_ZERO | M_CANFAIL));
}

void
okvm_host_heap_free(void *p, size_t size)
{
	if (size == 0)
		size = 1;
	free(p, M_DEVBUF, size);
}

/* User memory of the current process. */

int32_t
okvm_host_copyin(void *dst, uint64_t uaddr, size_t len)
{
	if (copyin((const void *)uaddr, dst, len) != 0)
		return (-OKVM_EFAULT);
	return (0);
}

int32_t
okvm_host_copyout(uint64_t uaddr, const void *src, size_t len)
{
	if (copyout(src, (void *)uaddr, len) != 0)
		return (-OKVM_EFAULT);
	return (0);
}

/* Address spaces. */

okvm_mm_t
okvm_host_mm_current(void)
{
	struct vmspace *vm = curproc->p_vmspace;

	uvmspace_addref(vm);
	return (vm);
}

int32_t
okvm_host_mm_is_current(okvm_mm_t mm)
{
	return (curproc->p_vmspace == (struct vmspace *)mm);
}

void
okvm_host_mm_release(okvm_mm_t mm)
{
	uvmspace_free((struct vmspace *)mm);
}

/*
 * Guest memory.  A wired page is still freed if its mapping goes away
 * (munmap(2), mmap(2) over it, madvise(2)), so the map entry holding it is
 * made immutable first, as vmm(4) does with vmd's guest memory: the
 * process cannot remove guest RAM under a running guest.
 */
int32_t
okvm_host_pin_page(okvm_mm_t mm, uint64_t uaddr, int32_t writable,
    uint64_t *pa)
{
	struct vmspace *vm = mm;
	struct vm_map *map = &vm->vm_map;
	struct vm_map_entry *entry;
	vaddr_t va = uaddr, start = 0, end = 0;
	vm_prot_t prot = PROT_READ | (writable ? PROT_WRITE : 0);
	int immutable = 0, found;
	paddr_t p;

	if ((va & PAGE_MASK) != 0 || va < VM_MIN_ADDRESS ||
	    va >= VM_MAXUSER_ADDRESS - PAGE_SIZE)
		return (-OKVM_EFAULT);

	vm_map_lock_read(map);
	found = uvm_map_lookup_entry(map, va, &entry);
	if (found) {
		start = entry->start;
		end = entry->end;
		immutable = (entry->etype & UVM_ET_IMMUTABLE) != 0;
	}
	vm_map_unlock_read(map);
	if (!found)
		return (-OKVM_EFAULT);
	if (!immutable && uvm_map_immutable(map, start, end, 1) != 0)
		return (-OKVM_EFAULT);

	if (uvm_fault_wire(map, va, va + PAGE_SIZE, prot) != 0)
		return (-OKVM_EFAULT);
	if (!pmap_extract(vm_map_pmap(map), va, &p)) {
		uvm_fault_unwire(map, va, va + PAGE_SIZE);
		return (-OKVM_EFAULT);
	}
	*pa = p;
	return (0);
}

void
okvm_host_unpin_page(okvm_mm_t mm, uint64_t uaddr, uint64_t pa,
    int32_t dirty)
{
	struct vmspace *vm = mm;
	struct vm_page *pg;

	/* The guest wrote through its own tables: uvm cannot know. */
	if (dirty && (pg = PHYS_TO_VM_PAGE(pa)) != NULL)
		atomic_clearbits_int(&pg->pg_flags, PG_CLEAN);
	uvm_fault_unwire(&vm->vm_map, (vaddr_t)uaddr,
	    (vaddr_t)uaddr + PAGE_SIZE);
}

/*
 * Kernel address of a page wired by okvm_host_pin_page: the amd64 direct
 * map covers all physical memory.
 */
void *
okvm_host_phys_kva(uint64_t pa)
{
	return ((void *)PMAP_DIRECT_MAP((paddr_t)pa));
}

/* Locks: rwlock(9) used as a sleepable mutex. */

okvm_lock_t
okvm_host_lock_alloc(void)
{
	struct rwlock *l;

	l = malloc(sizeof(*l), M_DEVBUF, M_WAITOK | M_ZERO | M_CANFAIL);
	if (l != NULL)
		rw_init(l, "okvmlk");
	return (l);
}

void
okvm_host_lock_free(okvm_lock_t l)
{
	free(l, M_DEVBUF, sizeof(struct rwlock));
}

void
okvm_host_lock(okvm_lock_t l)
{
	rw_enter_write((struct rwlock *)l);
}

void
okvm_host_unlock(okvm_lock_t l)
{
	rw_exit_write((struct rwlock *)l);
}

int32_t
okvm_host_sleep(const void *chan, okvm_lock_t l, uint64_t timeout_ns)
{
	int error;

	KASSERT(kvm_pcpu[CPU_INFO_UNIT(curcpu())].kp_nopreempt == 0);
	error = rwsleep_nsec(chan, (struct rwlock *)l, PWAIT | PCATCH,
	    "okvm", timeout_ns == 0 ? INFSLP : timeout_ns);
	switch (error) {
	case 0:
		return (0);
	case EWOULDBLOCK:
		return (-OKVM_ETIMEDOUT);
	default:			/* EINTR, ERESTART */
		return (-OKVM_EINTR);
	}
}

void
okvm_host_wakeup(const void *chan)
{
	wakeup(chan);
}

/* CPUs. */

uint32_t
okvm_host_cpu_current(void)
{
	return (CPU_INFO_UNIT(curcpu()));
}

uint32_t
okvm_host_cpu_count(void)
{
	return (ncpus);
}

static void
kvm_xcall_fn(void *arg)
{
	struct kvm_xcall *kx = arg;

	kx->kx_ret = (*kx->kx_fn)(kx->kx_arg);
}

/* fn runs on each CPU in turn, at IPL_SOFTCLOCK (cpu_xcall(9)). */
int32_t
okvm_host_run_on_all_cpus(okvm_cpu_fn_t fn, void *arg)
{
	struct kvm_xcall kx;
	struct cpu_info *ci;
	CPU_INFO_ITERATOR cii;

	CPU_INFO_FOREACH(cii, ci) {
		if ((ci->ci_flags & CPUF_RUNNING) == 0)
			return (-OKVM_EAGAIN);
	}
	CPU_INFO_FOREACH(cii, ci) {
		kx.kx_fn = fn;
		kx.kx_arg = arg;
		kx.kx_ret = 0;
		cpu_xcall_sync(ci, kvm_xcall_fn, &kx, "okvmxc");
		if (kx.kx_ret != 0)
			return (kx.kx_ret);
	}
	return (0);
}

/* Any interrupt makes a CPU in guest mode exit; X86_IPI_NOP does no more. */
void
okvm_host_cpu_kick(uint32_t cpu)
{
	struct cpu_info *ci = kvm_cpu_info(cpu);

	if (ci != NULL && ci != curcpu())
		x86_send_ipi(ci, X86_IPI_NOP);
}

/*
 * OpenBSD does not preempt kernel threads: a thread leaves its CPU only
 * when it sleeps or yields, which the core must not do in between.  The
 * count lets okvm_host_sleep() catch that.
 */
void
okvm_host_preempt_disable(void)
{
	kvm_pcpu[CPU_INFO_UNIT(curcpu())].kp_nopreempt++;
}

void
okvm_host_preempt_enable(void)
{
	struct kvm_pcpu *kp = &kvm_pcpu[CPU_INFO_UNIT(curcpu())];

	KASSERT(kp->kp_nopreempt > 0);
	kp->kp_nopreempt--;
}

/* Threads. */

int32_t
okvm_host_signal_pending(void)
{
	struct proc *p = curproc;

	/* An unmasked signal, or another thread is exiting the process. */
	if (SIGPENDING(p) != 0)
		return (1);
	if (p->p_p->ps_single != NULL && p->p_p->ps_single != p)
		return (1);
	return (0);
}

int32_t
okvm_host_should_yield(void)
{
	return ((curcpu()->ci_schedstate.spc_schedflags &
	    SPCF_SHOULDYIELD) != 0);
}

void
okvm_host_yield(void)
{
	KASSERT(kvm_pcpu[CPU_INFO_UNIT(curcpu())].kp_nopreempt == 0);
	yield();
}

/* Time. */

uint64_t
okvm_host_nanotime(void)
{
	return (nsecuptime());
}

uint64_t
okvm_host_tsc_khz(void)
{
	return (tsc_frequency / 1000);
}

okvm_timer_t
okvm_host_timer_alloc(okvm_fn_t fn, void *arg)
{
	struct kvm_timer *kt;

	kt = malloc(sizeof(*kt), M_DEVBUF, M_WAITOK | M_ZERO | M_CANFAIL);
	if (kt != NULL)
		timeout_set(&kt->kt_to, fn, arg);
	return (kt);
}

void
okvm_host_timer_arm(okvm_timer_t t, uint64_t ns)
{
	struct kvm_timer *kt = t;

	timeout_add_nsec(&kt->kt_to, ns);
}

void
okvm_host_timer_cancel(okvm_timer_t t)
{
	struct kvm_timer *kt = t;

	timeout_del_barrier(&kt->kt_to);
}

void
okvm_host_timer_free(okvm_timer_t t)
{
	free(t, M_DEVBUF, sizeof(struct kvm_timer));
}

/*
 * FPU hand-over, as vmm_fpurestore()/vmm_fpusave() do: the user's xsave
 * state goes to the PCB and CPUPF_USERXSTATE is cleared, so the return to
 * user mode reloads it (locore.S); the CPU's FPU is then the core's.
 */
void
okvm_host_fpu_enter(void)
{
	struct cpu_info *ci;
	u_long s;

	s = intr_disable();
	ci = curcpu();
	if (ci->ci_pflags & CPUPF_USERXSTATE) {
		ci->ci_pflags &= ~CPUPF_USERXSTATE;
		fpusavereset(&curproc->p_addr->u_pcb.pcb_savefpu);
	}
	intr_restore(s);
}

void
okvm_host_fpu_leave(void)
{
	/* The host %xcr0, in case the guest's is still loaded. */
	if (xsave_mask)
		xsetbv(0, xsave_mask & XFEATURE_XCR0_MASK);
}

/*
 * VMX root operation belongs to vmm(4) (DESIGN 2, NOTES.md): kvm(4) holds vmm_ext_enter() while
 * any VM or vCPU descriptor exists, so vmm_start() has executed VMXON on every CPU (CPUF_VMM).
 * The core then only VMPTRLDs/VMCLEARs its own VMCSs.
 */
int32_t
okvm_host_vmx_enable(void)
{
	if (curcpu()->ci_flags & CPUF_VMM)
		return (1);
	return (-OKVM_ENODEV);
}

void
okvm_host_vmx_disable(void)
{
	/* Never called: okvm_host_vmx_enable never asks the core to execute VMXON here. */
}

/* Event notifiers: pipes (see struct okvm_eventfd). */

static void	kvm_ev_sigtask(void *);
static void	kvm_ev_sigretry(void *);
static void	kvm_ev_flush(struct okvm_eventfd *);
static void	kvm_ev_rele(struct okvm_eventfd *);
static int	kvm_watch_event(struct knote *, long);
static void	kvm_watch_task(void *);
static void	kvm_watch_retry(void *);

const struct filterops kvm_watch_filtops = {
	.f_flags	= FILTEROP_MPSAFE,
	.f_attach	= NULL,
	.f_detach	= NULL,		/* no kqueue: unwatch unhooks it */
	.f_event	= kvm_watch_event,
	.f_modify	= NULL,
	.f_process	= NULL,
};

int32_t
okvm_host_eventfd_get(int32_t fd, okvm_eventfd_t *ep)
{
	struct proc *p = curproc;
	struct okvm_eventfd *e, *n;
	struct file *fp;
	struct pipe *pipe;

	if ((fp = fd_getfile(p->p_fd, fd)) == NULL)
		return (-OKVM_EBADF);
	if (fp->f_type != DTYPE_PIPE) {
		FRELE(fp, p);
		return (-OKVM_EINVAL);
	}
	pipe = fp->f_data;
	n = malloc(sizeof(*n), M_DEVBUF, M_WAITOK | M_ZERO | M_CANFAIL);

	rw_enter_write(&kvm_ev_lock);
	LIST_FOREACH(e, &kvm_ev_list, ke_entry) {
		if (e->ke_pipe == pipe)
			break;
	}
	if (e != NULL)
		e->ke_refs++;
	else if (n != NULL) {
		n->ke_fp = fp;		/* keeps the reference */
		n->ke_pipe = pipe;
		n->ke_refs = 1;
		rw_init(&n->ke_siglock, "kvmevsig");
		task_set(&n->ke_sigtask, kvm_ev_sigtask, n);
		timeout_set(&n->ke_sigto, kvm_ev_sigretry, n);
		LIST_INSERT_HEAD(&kvm_ev_list, n, ke_entry);
	}
	rw_exit_write(&kvm_ev_lock);

	if (e != NULL) {
		/* The same pipe is the same file: e holds a reference. */
		free(n, M_DEVBUF, sizeof(*n));
		FRELE(fp, p);
		*ep = e;
		return (0);
	}
	if (n == NULL) {
		FRELE(fp, p);
		return (-OKVM_ENOMEM);
	}
	*ep = n;
	return (0);
}

void
okvm_host_eventfd_put(okvm_eventfd_t e)
{
	/* A signal from before the put is in the pipe when the put returns. */
	kvm_ev_flush(e);
	kvm_ev_rele(e);
}

/* From a vCPU thread: task_add(9) only takes the task queue's mutex. */
void
okvm_host_eventfd_signal(okvm_eventfd_t e)
{
	atomic_swap_uint(&e->ke_sigpending, 1);
	task_add(kvm_evtq, &e->ke_sigtask);
}

static void
kvm_ev_sigtask(void *arg)
{
	struct okvm_eventfd *e = arg;

	if (e->ke_sigpending == 0)
		return;
	/* kvm_ev_flush() holds it and delivers: retry after it. */
	if (rw_enter(&e->ke_siglock, RW_WRITE | RW_NOSLEEP) != 0) {
		timeout_add(&e->ke_sigto, 1);
		return;
	}
	if (atomic_swap_uint(&e->ke_sigpending, 0) != 0 &&
	    pipe_notify(e->ke_pipe, 0) != 0) {
		/* A reader or writer holds the pipe's I/O lock. */
		atomic_swap_uint(&e->ke_sigpending, 1);
		timeout_add(&e->ke_sigto, 1);
	}
	rw_exit_write(&e->ke_siglock);
}

static void
kvm_ev_sigretry(void *arg)
{
	struct okvm_eventfd *e = arg;

	task_add(kvm_evtq, &e->ke_sigtask);
}

/*
 * Deliver a pending signal now, in the caller's thread, waiting for the
 * pipe if need be; ke_siglock waits for a delivery kvm_ev_sigtask() has
 * begun.
 */
static void
kvm_ev_flush(struct okvm_eventfd *e)
{
	rw_enter_write(&e->ke_siglock);
	if (atomic_swap_uint(&e->ke_sigpending, 0) != 0)
		pipe_notify(e->ke_pipe, 1);
	rw_exit_write(&e->ke_siglock);
}

static void
kvm_ev_rele(struct okvm_eventfd *e)
{
	rw_enter_write(&kvm_ev_lock);
	KASSERT(e->ke_refs > 0);
	if (--e->ke_refs > 0) {
		rw_exit_write(&kvm_ev_lock);
		return;
	}
	LIST_REMOVE(e, ke_entry);
	rw_exit_write(&kvm_ev_lock);

	/*
	 * Nobody signals any more and the last put flushed: the task finds
	 * nothing pending and does not arm the timeout.
	 */
	taskq_del_barrier(kvm_evtq, &e->ke_sigtask);
	timeout_del_barrier(&e->ke_sigto);
	taskq_del_barrier(kvm_evtq, &e->ke_sigtask);
	FRELE(e->ke_fp, curproc);
	free(e, M_DEVBUF, sizeof(*e));
}

int32_t
okvm_host_eventfd_watch(okvm_eventfd_t e, okvm_fn_t fn, void *arg,
    okvm_eventfd_watch_t *wp)
{
	struct okvm_eventfd_watch *w;
	struct pipe *pipe = e->ke_pipe;

	w = malloc(sizeof(*w), M_DEVBUF, M_WAITOK | M_ZERO | M_CANFAIL);
	if (w == NULL)
		return (-OKVM_ENOMEM);
	w->kw_e = e;
	w->kw_fn = fn;
	w->kw_arg = arg;
	task_set(&w->kw_task, kvm_watch_task, w);
	timeout_set(&w->kw_to, kvm_watch_retry, w);
	w->kw_kn.kn_fop = &kvm_watch_filtops;
	w->kw_kn.kn_hook = w;

	rw_enter_write(&kvm_ev_lock);
	e->ke_refs++;
	rw_exit_write(&kvm_ev_lock);

	/* Data from before the watch counts as one signal. */
	rw_enter_write(pipe->pipe_lock);
	klist_insert_locked(&pipe->pipe_klist, &w->kw_kn);
	if (pipe->pipe_buffer.cnt > 0)
		task_add(kvm_evtq, &w->kw_task);
	rw_exit_write(pipe->pipe_lock);

	*wp = w;
	return (0);
}

/* knote_locked() from pipe_wakeup(): pipe_lock is held. */
static int
kvm_watch_event(struct knote *kn, long hint)
{
	struct okvm_eventfd_watch *w = kn->kn_hook;
	struct pipe *pipe = w->kw_e->ke_pipe;

	rw_assert_wrlock(pipe->pipe_lock);
	if (pipe->pipe_buffer.cnt > 0)
		task_add(kvm_evtq, &w->kw_task);
	return (0);
}

static void
kvm_watch_task(void *arg)
{
	struct okvm_eventfd_watch *w = arg;
	u_int cnt;

	if (w->kw_dead)
		return;
	if (pipe_notify_drain(w->kw_e->ke_pipe, 0, &cnt) != 0) {
		/* A reader or writer holds the pipe's I/O lock. */
		timeout_add(&w->kw_to, 1);
		return;
	}
	if (cnt > 0)
		(*w->kw_fn)(w->kw_arg);
}

static void
kvm_watch_retry(void *arg)
{
	struct okvm_eventfd_watch *w = arg;

	task_add(kvm_evtq, &w->kw_task);
}

/*
 * Unhook the knote (no task is queued from now on but by the timeout),
 * wait for a task that started before kw_dead was set (it may arm the
 * timeout or call fn), then stop the timeout and wait for the last task it
 * may have queued, which sees kw_dead.  Data left in the pipe stays there
 * for the next reader.
 */
void
okvm_host_eventfd_unwatch(okvm_eventfd_watch_t w)
{
	struct pipe *pipe = w->kw_e->ke_pipe;

	rw_enter_write(pipe->pipe_lock);
	klist_remove_locked(&pipe->pipe_klist, &w->kw_kn);
	w->kw_dead = 1;
	rw_exit_write(pipe->pipe_lock);

	taskq_barrier(kvm_evtq);
	timeout_del_barrier(&w->kw_to);
	taskq_del_barrier(kvm_evtq, &w->kw_task);

	kvm_ev_rele(w->kw_e);
	free(w, M_DEVBUF, sizeof(*w));
}

/* Descriptors, logging. */

int32_t
okvm_host_install_fd(uint32_t kind, okvm_handle_t h)
{
	return (kvm_install_fd(kind, h));
}

void
okvm_host_log(uint32_t level, const char *msg, size_t len)
{
	kvm_log(level, msg, len);
}

void
okvm_host_panic(const char *file, size_t file_len, uint32_t line)
{
	int n = file_len > 200 ? 200 : (int)file_len;

	panic("okvm: fatal error at %.*s:%u", n, file, line);
}
