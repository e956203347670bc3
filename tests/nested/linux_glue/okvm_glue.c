// SPDX-License-Identifier: ISC
/*
 * okvm Linux host glue (test-only): makes okvm.o a Linux module so that the nested harness can
 * run the same programs on okvm and on Linux KVM inside one L1 Linux.
 *
 * It registers the misc device /dev/kvm, gives VM and vCPU descriptors as anonymous inodes,
 * maps vCPU pages on fault, and implements the host services of okvm.h with Linux calls. It
 * never interprets an ioctl: command word and argument go to okvm_ioctl unchanged.
 *
 * Only one of Linux KVM and okvm can be loaded at a time (both claim the kvm misc minor).
 */
#include <linux/anon_inodes.h>
#include <linux/eventfd.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/hrtimer.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/io.h>
#include <asm/fpu/api.h>
#include <asm/processor-flags.h>
#include <asm/tlbflush.h>
#include <asm/tsc.h>

#include "okvm.h"

/* ---- descriptors ---- */

static long
lglue_fd_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	return (long)okvm_ioctl(f->private_data, (uint32_t)cmd, (uint64_t)arg);
}

static int
lglue_fd_release(struct inode *inode, struct file *f)
{
	okvm_release(f->private_data);
	return 0;
}

/* vCPU pages: the core names the physical page; the mapping holds a page reference, so a page
 * the core frees stays allocated until it is unmapped. */
static vm_fault_t
lglue_vcpu_fault(struct vm_fault *vmf)
{
	uint64_t pa;
	struct page *pg;

	if (okvm_mmap(vmf->vma->vm_file->private_data, vmf->pgoff, &pa) != 0)
		return VM_FAULT_SIGBUS;
	pg = pfn_to_page(pa >> PAGE_SHIFT);
	get_page(pg);
	vmf->page = pg;
	return 0;
}

static const struct vm_operations_struct lglue_vcpu_vm_ops = {
	.fault = lglue_vcpu_fault,
};

static int
lglue_vcpu_mmap(struct file *f, struct vm_area_struct *vma)
{
	vma->vm_ops = &lglue_vcpu_vm_ops;
	return 0;
}

static const struct file_operations lglue_vm_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = lglue_fd_ioctl,
	.compat_ioctl = lglue_fd_ioctl,
	.release = lglue_fd_release,
	.llseek = noop_llseek,
};

static const struct file_operations lglue_vcpu_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = lglue_fd_ioctl,
	.compat_ioctl = lglue_fd_ioctl,
	.mmap = lglue_vcpu_mmap,
	.release = lglue_fd_release,
	.llseek = noop_llseek,
};

static int
lglue_dev_open(struct inode *inode, struct file *f)
{
	okvm_handle_t h;
	int32_t r = okvm_open(&h);

	if (r < 0)
		return r;
	f->private_data = h;
	return 0;
}

static const struct file_operations lglue_dev_fops = {
	.owner = THIS_MODULE,
	.open = lglue_dev_open,
	.unlocked_ioctl = lglue_fd_ioctl,
	.compat_ioctl = lglue_fd_ioctl,
	.release = lglue_fd_release,
	.llseek = noop_llseek,
};

static struct miscdevice lglue_misc = {
	.minor = KVM_MINOR,
	.name = "kvm",
	.fops = &lglue_dev_fops,
	.mode = 0666,
};

int32_t
okvm_host_install_fd(uint32_t kind, okvm_handle_t h)
{
	switch (kind) {
	case OKVM_KIND_VM:
		return anon_inode_getfd("kvm-vm", &lglue_vm_fops, h, O_RDWR | O_CLOEXEC);
	case OKVM_KIND_VCPU:
		return anon_inode_getfd("kvm-vcpu", &lglue_vcpu_fops, h, O_RDWR | O_CLOEXEC);
	}
	return -EINVAL;
}

/* ---- memory ---- */

int32_t
okvm_host_page_alloc(void **va, uint64_t *pa)
{
	struct page *pg = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);

	if (pg == NULL)
		return -ENOMEM;
	*va = page_address(pg);
	*pa = page_to_phys(pg);
	return 0;
}

void
okvm_host_page_free(void *va, uint64_t pa)
{
	/* User mappings hold their own reference (lglue_vcpu_fault): this drops the core's. */
	put_page(virt_to_page(va));
}

int32_t
okvm_host_contig_alloc(uint32_t npages, void **va, uint64_t *pa)
{
	struct page *pg;

	if (npages == 0 || npages > 16)
		return -ENOMEM;
	pg = alloc_pages(GFP_KERNEL_ACCOUNT | __GFP_ZERO, get_order(npages * PAGE_SIZE));
	if (pg == NULL)
		return -ENOMEM;
	*va = page_address(pg);
	*pa = page_to_phys(pg);
	return 0;
}

void
okvm_host_contig_free(void *va, uint64_t pa, uint32_t npages)
{
	__free_pages(virt_to_page(va), get_order(npages * PAGE_SIZE));
}

/* Pinned guest pages and our own pages are lowmem on x86-64: the direct map. */
void *
okvm_host_phys_kva(uint64_t pa)
{
	unsigned long pfn = pa >> PAGE_SHIFT;

	if (!pfn_valid(pfn))
		return NULL;
	return page_address(pfn_to_page(pfn));
}

void *
okvm_host_heap_alloc(size_t size)
{
	/* kmalloc objects of 16 bytes and more are 16-byte aligned; vmalloc ones page aligned. */
	return kvzalloc(size < 16 ? 16 : size, GFP_KERNEL_ACCOUNT);
}

void
okvm_host_heap_free(void *p, size_t size)
{
	kvfree(p);
}

int32_t
okvm_host_copyin(void *dst, uint64_t uaddr, size_t len)
{
	return copy_from_user(dst, (const void __user *)(uintptr_t)uaddr, len) ? -EFAULT : 0;
}

int32_t
okvm_host_copyout(uint64_t uaddr, const void *src, size_t len)
{
	return copy_to_user((void __user *)(uintptr_t)uaddr, src, len) ? -EFAULT : 0;
}

okvm_mm_t
okvm_host_mm_current(void)
{
	struct mm_struct *mm = current->mm;

	if (mm == NULL)
		return NULL;
	mmgrab(mm);
	return mm;
}

int32_t
okvm_host_mm_is_current(okvm_mm_t mm)
{
	return current->mm == mm;
}

void
okvm_host_mm_release(okvm_mm_t mm)
{
	mmdrop(mm);
}

int32_t
okvm_host_pin_page(okvm_mm_t mmp, uint64_t uaddr, int32_t writable, uint64_t *pa)
{
	struct mm_struct *mm = mmp;
	struct page *pg;
	long n;

	if (uaddr & ~PAGE_MASK)
		return -EINVAL;
	if (!mmget_not_zero(mm))
		return -EFAULT;
	mmap_read_lock(mm);
	n = pin_user_pages_remote(mm, (unsigned long)uaddr, 1, writable ? FOLL_WRITE : 0, &pg, NULL, NULL);
	mmap_read_unlock(mm);
	mmput(mm);
	if (n != 1)
		return -EFAULT;
	*pa = page_to_phys(pg);
	return 0;
}

void
okvm_host_unpin_page(okvm_mm_t mm, uint64_t uaddr, uint64_t pa, int32_t dirty)
{
	struct page *pg = pfn_to_page(pa >> PAGE_SHIFT);

	unpin_user_pages_dirty_lock(&pg, 1, dirty != 0);
}

/* ---- locks, sleep and wakeup ---- */

okvm_lock_t
okvm_host_lock_alloc(void)
{
	struct mutex *m = kmalloc(sizeof *m, GFP_KERNEL_ACCOUNT);

	if (m != NULL)
		mutex_init(m);
	return m;
}

void
okvm_host_lock_free(okvm_lock_t l)
{
	mutex_destroy(l);
	kfree(l);
}

void
okvm_host_lock(okvm_lock_t l)
{
	mutex_lock(l);
}

void
okvm_host_unlock(okvm_lock_t l)
{
	mutex_unlock(l);
}

/* Sleep channels as in BSD tsleep/wakeup: hashed wait queues, entries woken by channel. */
#define OKVM_NWQ 64
static wait_queue_head_t lglue_wq[OKVM_NWQ];

struct lglue_waiter {
	struct wait_queue_entry entry;
	const void *chan;
};

static wait_queue_head_t *
lglue_wq_of(const void *chan)
{
	return &lglue_wq[hash_ptr((void *)chan, ilog2(OKVM_NWQ))];
}

static int
lglue_wake_fn(struct wait_queue_entry *e, unsigned int mode, int sync, void *key)
{
	struct lglue_waiter *w = container_of(e, struct lglue_waiter, entry);

	if (w->chan != key)
		return 0;
	return autoremove_wake_function(e, mode, sync, key);
}

int32_t
okvm_host_sleep(const void *chan, okvm_lock_t l, uint64_t timeout_ns)
{
	wait_queue_head_t *wq = lglue_wq_of(chan);
	struct lglue_waiter w = { .chan = chan };
	long left = 1;

	init_wait_entry(&w.entry, 0);
	w.entry.func = lglue_wake_fn;
	prepare_to_wait(wq, &w.entry, TASK_INTERRUPTIBLE);
	mutex_unlock(l);
	if (!signal_pending(current)) {
		if (timeout_ns != 0)
			left = schedule_timeout(max_t(long, 1, nsecs_to_jiffies(timeout_ns)));
		else
			schedule();
	}
	finish_wait(wq, &w.entry);
	mutex_lock(l);
	if (signal_pending(current))
		return -EINTR;
	if (left == 0)
		return -ETIMEDOUT;
	return 0;
}

void
okvm_host_wakeup(const void *chan)
{
	__wake_up(lglue_wq_of(chan), TASK_NORMAL, 0, (void *)chan);
}

/* ---- CPUs and threads ---- */

uint32_t
okvm_host_cpu_current(void)
{
	return raw_smp_processor_id();
}

uint32_t
okvm_host_cpu_count(void)
{
	return nr_cpu_ids;
}

struct lglue_on_cpu {
	okvm_cpu_fn_t fn;
	void *arg;
	atomic_t err;
};

static void
lglue_on_cpu_fn(void *p)
{
	struct lglue_on_cpu *c = p;
	int32_t r = c->fn(c->arg);

	if (r != 0)
		atomic_cmpxchg(&c->err, 0, r);
}

int32_t
okvm_host_run_on_all_cpus(okvm_cpu_fn_t fn, void *arg)
{
	struct lglue_on_cpu c = { .fn = fn, .arg = arg, .err = ATOMIC_INIT(0) };

	on_each_cpu(lglue_on_cpu_fn, &c, 1);
	return atomic_read(&c.err);
}

void
okvm_host_cpu_kick(uint32_t cpu)
{
	/*
	 * A reschedule IPI makes the CPU leave guest mode, as Linux KVM's kvm_vcpu_kick does.
	 * Unlike smp_call_function_single it may be sent from the APIC timer's softirq callback.
	 */
	if (cpu < nr_cpu_ids && cpu != raw_smp_processor_id() && cpu_online(cpu))
		smp_send_reschedule(cpu);
}

void
okvm_host_preempt_disable(void)
{
	preempt_disable();
}

void
okvm_host_preempt_enable(void)
{
	preempt_enable();
}

int32_t
okvm_host_signal_pending(void)
{
	return signal_pending(current) ? 1 : 0;
}

int32_t
okvm_host_should_yield(void)
{
	return need_resched() ? 1 : 0;
}

void
okvm_host_yield(void)
{
	cond_resched();
}

/* ---- time and timers ---- */

uint64_t
okvm_host_nanotime(void)
{
	return ktime_get_ns();
}

uint64_t
okvm_host_tsc_khz(void)
{
	return tsc_khz;
}

struct lglue_timer {
	struct hrtimer t;
	okvm_fn_t fn;
	void *arg;
};

static enum hrtimer_restart
lglue_timer_fire(struct hrtimer *h)
{
	struct lglue_timer *t = container_of(h, struct lglue_timer, t);

	t->fn(t->arg);
	return HRTIMER_NORESTART;
}

okvm_timer_t
okvm_host_timer_alloc(okvm_fn_t fn, void *arg)
{
	struct lglue_timer *t = kzalloc(sizeof *t, GFP_KERNEL_ACCOUNT);

	if (t == NULL)
		return NULL;
	hrtimer_init(&t->t, CLOCK_MONOTONIC, HRTIMER_MODE_REL_SOFT);
	t->t.function = lglue_timer_fire;
	t->fn = fn;
	t->arg = arg;
	return t;
}

void
okvm_host_timer_arm(okvm_timer_t tp, uint64_t ns)
{
	struct lglue_timer *t = tp;

	hrtimer_start(&t->t, ns_to_ktime(ns), HRTIMER_MODE_REL_SOFT);
}

void
okvm_host_timer_cancel(okvm_timer_t tp)
{
	struct lglue_timer *t = tp;

	hrtimer_cancel(&t->t);
}

void
okvm_host_timer_free(okvm_timer_t t)
{
	kfree(t);
}

/* ---- FPU ---- */

/* Linux saves the user FPU state in kernel_fpu_begin and restores it on the way back to user
 * space; the section between the two is not preemptible here. */
void
okvm_host_fpu_enter(void)
{
	kernel_fpu_begin();
}

void
okvm_host_fpu_leave(void)
{
	kernel_fpu_end();
}

/* ---- VMX root operation ---- */

/*
 * Linux KVM (kvm_intel) turns VMX on only while it has VMs; okvm executes VMXON itself. CR4
 * goes through cr4_set_bits so that Linux's CR4 shadow keeps VMXE. The callers run with
 * preemption disabled.
 */
int32_t
okvm_host_vmx_enable(void)
{
	if (__read_cr4() & X86_CR4_VMXE)
		return -OKVM_EBUSY;	/* another hypervisor is in VMX operation here */
	cr4_set_bits(X86_CR4_VMXE);
	return 0;
}

void
okvm_host_vmx_disable(void)
{
	cr4_clear_bits(X86_CR4_VMXE);
}

/* ---- event notifiers (ioeventfd, irqfd) ---- */

/*
 * A notifier is an eventfd. Its handle is one glue object per eventfd, found by its context in
 * a list, so that every descriptor of the same eventfd gives the same handle; the object holds
 * a reference on the eventfd's file (vfs_poll needs the file) and on its context.
 */
struct okvm_eventfd {
	struct list_head node;		/* [lglue_ev_lock] lglue_ev_list */
	struct file *file;		/* [I] the eventfd */
	struct eventfd_ctx *ctx;	/* [I] its context */
	unsigned int refs;		/* [lglue_ev_lock] gets + watches */
};

static DEFINE_MUTEX(lglue_ev_lock);
static LIST_HEAD(lglue_ev_list);

/*
 * A watch: a wait-queue entry on the eventfd's wait queue, hooked through vfs_poll with our own
 * poll_table as Linux KVM's irqfd does. The wakeup runs under the wait queue's lock: it takes
 * the count (eventfd_ctx_do_read needs that lock) and queues the work, which calls fn(arg).
 */
struct okvm_eventfd_watch {
	wait_queue_entry_t wait;	/* on *wqh while watching */
	wait_queue_head_t *wqh;		/* [I] the eventfd's wait queue */
	poll_table pt;			/* vfs_poll hook: sets wqh, adds wait */
	struct work_struct work;	/* calls fn(arg) */
	struct okvm_eventfd *e;		/* [I] referenced */
	okvm_fn_t fn;			/* [I] */
	void *arg;			/* [I] */
};

static void
lglue_ev_rele(struct okvm_eventfd *e)
{
	mutex_lock(&lglue_ev_lock);
	if (--e->refs > 0) {
		mutex_unlock(&lglue_ev_lock);
		return;
	}
	list_del(&e->node);
	mutex_unlock(&lglue_ev_lock);
	eventfd_ctx_put(e->ctx);
	fput(e->file);
	kfree(e);
}

int32_t
okvm_host_eventfd_get(int32_t fd, okvm_eventfd_t *ep)
{
	struct okvm_eventfd *e, *n;
	struct eventfd_ctx *ctx;
	struct file *file;

	file = eventfd_fget(fd);	/* -EBADF: no such fd; -EINVAL: not an eventfd */
	if (IS_ERR(file))
		return PTR_ERR(file);
	ctx = eventfd_ctx_fileget(file);
	if (IS_ERR(ctx)) {
		fput(file);
		return PTR_ERR(ctx);
	}
	n = kzalloc(sizeof *n, GFP_KERNEL_ACCOUNT);
	mutex_lock(&lglue_ev_lock);
	list_for_each_entry(e, &lglue_ev_list, node) {
		if (e->ctx == ctx) {
			e->refs++;
			mutex_unlock(&lglue_ev_lock);
			kfree(n);
			eventfd_ctx_put(ctx);
			fput(file);
			*ep = e;
			return 0;
		}
	}
	if (n == NULL) {
		mutex_unlock(&lglue_ev_lock);
		eventfd_ctx_put(ctx);
		fput(file);
		return -ENOMEM;
	}
	n->file = file;
	n->ctx = ctx;
	n->refs = 1;
	list_add(&n->node, &lglue_ev_list);
	mutex_unlock(&lglue_ev_lock);
	*ep = n;
	return 0;
}

void
okvm_host_eventfd_put(okvm_eventfd_t e)
{
	lglue_ev_rele(e);
}

/* eventfd_signal takes the wait queue's spinlock and runs the wakeups; it never sleeps. */
void
okvm_host_eventfd_signal(okvm_eventfd_t e)
{
	eventfd_signal(e->ctx, 1);
}

static void
lglue_watch_work(struct work_struct *work)
{
	struct okvm_eventfd_watch *w = container_of(work, struct okvm_eventfd_watch, work);

	w->fn(w->arg);
}

/* Runs with w->wqh->lock held (eventfd_signal: wake_up_locked_poll), interrupts off. */
static int
lglue_watch_wake(wait_queue_entry_t *wait, unsigned int mode, int sync, void *key)
{
	struct okvm_eventfd_watch *w = container_of(wait, struct okvm_eventfd_watch, wait);
	__u64 cnt;

	if (key_to_poll(key) & EPOLLIN) {
		eventfd_ctx_do_read(w->e->ctx, &cnt);
		if (cnt != 0)
			queue_work(system_wq, &w->work);
	}
	/* Not exclusive: other pollers of the eventfd are woken too (and find it drained). */
	return 0;
}

static void
lglue_watch_ptable(struct file *file, wait_queue_head_t *wqh, poll_table *pt)
{
	struct okvm_eventfd_watch *w = container_of(pt, struct okvm_eventfd_watch, pt);

	w->wqh = wqh;
	add_wait_queue(wqh, &w->wait);
}

int32_t
okvm_host_eventfd_watch(okvm_eventfd_t e, okvm_fn_t fn, void *arg, okvm_eventfd_watch_t *wp)
{
	struct okvm_eventfd_watch *w;
	unsigned long flags;
	__u64 cnt;

	w = kzalloc(sizeof *w, GFP_KERNEL_ACCOUNT);
	if (w == NULL)
		return -ENOMEM;
	w->e = e;
	w->fn = fn;
	w->arg = arg;
	INIT_WORK(&w->work, lglue_watch_work);
	init_waitqueue_func_entry(&w->wait, lglue_watch_wake);
	init_poll_funcptr(&w->pt, lglue_watch_ptable);
	mutex_lock(&lglue_ev_lock);
	e->refs++;
	mutex_unlock(&lglue_ev_lock);

	vfs_poll(e->file, &w->pt);	/* eventfd_poll: poll_wait -> lglue_watch_ptable */
	if (w->wqh == NULL) {		/* cannot happen for an eventfd */
		lglue_ev_rele(e);
		kfree(w);
		return -EINVAL;
	}
	/*
	 * Signals from before the watch: take them under the wait queue's lock, as the wakeup
	 * does, so that each count is taken once, here or there.
	 */
	spin_lock_irqsave(&w->wqh->lock, flags);
	eventfd_ctx_do_read(e->ctx, &cnt);
	spin_unlock_irqrestore(&w->wqh->lock, flags);
	if (cnt != 0)
		queue_work(system_wq, &w->work);
	*wp = w;
	return 0;
}

/*
 * Unhook the wait entry (remove_wait_queue takes the queue's lock, so a running wakeup has
 * finished and none can start), then wait for the work: a queued one runs (its count was
 * taken), a running one finishes, and nothing queues it any more. Unlike
 * eventfd_ctx_remove_wait_queue this leaves a signal that arrives after the unhook in the
 * counter, for whoever reads the eventfd next (QEMU reads it once when it takes the notifier
 * back).
 */
void
okvm_host_eventfd_unwatch(okvm_eventfd_watch_t w)
{
	remove_wait_queue(w->wqh, &w->wait);
	flush_work(&w->work);
	lglue_ev_rele(w->e);
	kfree(w);
}

/* ---- logging ---- */

void
okvm_host_log(uint32_t level, const char *msg, size_t len)
{
	int n = len > 512 ? 512 : (int)len;

	switch (level) {
	case OKVM_LOG_ERROR:
		pr_err("okvm: %.*s\n", n, msg);
		break;
	case OKVM_LOG_WARN:
		pr_warn("okvm: %.*s\n", n, msg);
		break;
	default:
		pr_info("okvm: %.*s\n", n, msg);
		break;
	}
}

void
okvm_host_panic(const char *file, size_t file_len, uint32_t line)
{
	panic("okvm: fatal internal error at %.*s:%u\n", (int)min_t(size_t, file_len, 256), file, line);
}

/* ---- module ---- */

static int __init
lglue_glue_init(void)
{
	int i, r;

	for (i = 0; i < OKVM_NWQ; i++)
		init_waitqueue_head(&lglue_wq[i]);
	r = okvm_attach();
	if (r < 0) {
		pr_err("okvm: okvm_attach failed: %d\n", r);
		return r;
	}
	r = misc_register(&lglue_misc);
	if (r < 0) {
		pr_err("okvm: cannot register /dev/kvm (is Linux KVM loaded?): %d\n", r);
		okvm_detach();
		return r;
	}
	return 0;
}

static void __exit
lglue_glue_exit(void)
{
	/* Every descriptor holds a module reference (fops .owner), so no VM is left here. */
	misc_deregister(&lglue_misc);
	okvm_detach();
}

module_init(lglue_glue_init);
module_exit(lglue_glue_exit);
MODULE_DESCRIPTION("okvm core with a test-only Linux host glue");
/* The glue and okvm.o are ISC-licensed, which is GPL-compatible; the kernel's "Dual BSD/GPL"
 * marker gives this test module the GPL-only exports it uses (anon inodes, FPU, pinning). */
MODULE_LICENSE("Dual BSD/GPL");
