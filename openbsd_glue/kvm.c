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
 * kvm(4): the Linux KVM ioctl interface, implemented by okvm.o.
 *
 * This file is the device side of the glue: the cdevsw entry points of the
 * kvm major, the sys_ioctl() bypass that gives kvm descriptors Linux ioctl
 * semantics, and the descriptors for VMs and vCPUs.
 *
 * Every descriptor is a character-device vnode of the kvm major.  Opening
 * /dev/kvm (minor 0) clones a vnode through spec_open_clone(); VM and vCPU
 * descriptors are made here with cdevvp() and are clones of the same
 * /dev/kvm vnode, their instance number taken from its clone bitmap.  The
 * minor is instance << CLONE_SHIFT | kind, so kvmmmap() finds its vCPU from
 * the minor alone, and spec_close() returns the instance to the bitmap.
 * Clone vnodes answer VOP_GETATTR through their parent, which mmap(2) of a
 * writable descriptor needs.
 */

#include <sys/param.h>
#include <sys/systm.h>
#include <sys/conf.h>
#include <sys/fcntl.h>
#include <sys/file.h>
#include <sys/filedesc.h>
#include <sys/filio.h>
#include <sys/ioccom.h>
#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/mutex.h>
#include <sys/proc.h>
#include <sys/queue.h>
#include <sys/specdev.h>
#include <sys/vnode.h>

#include <dev/kvm/okvm.h>
#include <dev/kvm/kvmvar.h>

#include "vmm.h"

#if NVMM == 0
#error "kvm(4) shares VMX/SVM state with vmm(4): configure vmm0 too"
#endif

/*
 * Locks used to protect struct members in this file:
 *	I	immutable after kvmattach()
 *	k	kvm_mtx
 *	K	kernel lock
 */

/* One descriptor instance (clone minor). */
struct kvm_inst {
	okvm_handle_t	 ki_handle;	/* [k] core object, NULL if free */
	uint32_t	 ki_kind;	/* [k] OKVM_KIND_* */
	u_int		 ki_mmaps;	/* [k] kvmmmap() calls in flight */
	int		 ki_closing;	/* [k] kvmclose() waits for ki_mmaps */
};

/* An ioctl in progress that may create descriptors (KVM_CREATE_*). */
struct kvm_ctx {
	LIST_ENTRY(kvm_ctx)	 kc_entry;	/* [k] */
	struct proc		*kc_proc;	/* [I] the calling thread */
	struct vnode		*kc_pvp;	/* [I] /dev/kvm vnode (parent) */
};

int		 kvm_major = -1;		/* [I] our cdevsw index */
int		 kvm_attached;			/* [I] okvm_attach() succeeded */
int		 kvm_attaching;			/* [I] attach line still open */
struct mutex	 kvm_mtx = MUTEX_INITIALIZER(IPL_NONE);
struct kvm_inst	 kvm_insts[KVM_NINST];		/* [k] by instance number */
LIST_HEAD(, kvm_ctx) kvm_ctxs = LIST_HEAD_INITIALIZER(kvm_ctxs); /* [k] */

static int	kvm_inst_alloc(struct vnode *);
static void	kvm_inst_free(struct vnode *, int);

void
kvmattach(int n)
{
	int32_t error;
	int i;

	for (i = 0; i < nchrdev; i++) {
		if (cdevsw[i].d_open == kvmopen) {
			kvm_major = i;
			break;
		}
	}
	kvm_host_init();

	/* The core's INFO lines during attach complete this line. */
	printf("kvm0 at root: okvm");
	kvm_attaching = 1;
	error = okvm_attach();
	kvm_attaching = 0;
	if (kvm_major == -1) {
		printf(": no cdevsw entry, disabled\n");
		return;
	}
	if (error != 0) {
		printf(": disabled, error %d\n", kvm_errno(error));
		return;
	}
	printf("\n");
	kvm_attached = 1;
}

/* Log lines of the core: appended to the attach line while attaching. */
void
kvm_log(uint32_t level, const char *msg, size_t len)
{
	int n = len > 200 ? 200 : (int)len;

	if (kvm_attaching && level == OKVM_LOG_INFO)
		printf(", %.*s", n, msg);
	else if (kvm_attaching)
		printf(": %.*s", n, msg);
	else
		printf("kvm0: %.*s\n", n, msg);
}

/*
 * Linux errno (negated, from the core) to OpenBSD errno.  The values
 * below 35 that the core uses are the same on both systems.
 */
int
kvm_errno(int64_t r)
{
	switch (-r) {
	case OKVM_EAGAIN:
		return (EAGAIN);
	case OKVM_ENOSYS:
		return (ENOSYS);
	case OKVM_EOPNOTSUPP:
		return (EOPNOTSUPP);
	case OKVM_ETIMEDOUT:
		return (ETIMEDOUT);
	case OKVM_EPERM:
	case OKVM_ENOENT:
	case OKVM_EINTR:
	case OKVM_EIO:
	case OKVM_ENXIO:
	case OKVM_E2BIG:
	case OKVM_EBADF:
	case OKVM_ENOMEM:
	case OKVM_EFAULT:
	case OKVM_EBUSY:
	case OKVM_EEXIST:
	case OKVM_ENODEV:
	case OKVM_EINVAL:
	case OKVM_EMFILE:
	case OKVM_ENOTTY:
	case OKVM_ENOSPC:
		return ((int)-r);
	default:
		return (EIO);
	}
}

int
kvmopen(dev_t dev, int flag, int mode, struct proc *p)
{
	struct kvm_inst *ki;
	okvm_handle_t h;
	int32_t error;

	/* Only /dev/kvm opens; VM and vCPU descriptors come from ioctls. */
	if (!kvm_attached)
		return (ENXIO);
	if (KVM_KIND(dev) != OKVM_KIND_SYSTEM || KVM_INST(dev) == 0)
		return (ENXIO);
	if ((flag & (FREAD | FWRITE)) != (FREAD | FWRITE))
		return (EACCES);

	error = okvm_open(&h);
	if (error != 0)
		return (kvm_errno(error));
	mtx_enter(&kvm_mtx);
	ki = &kvm_insts[KVM_INST(dev)];
	if (ki->ki_handle != NULL) {
		mtx_leave(&kvm_mtx);
		okvm_release(h);
		return (EBUSY);
	}
	ki->ki_handle = h;
	ki->ki_kind = OKVM_KIND_SYSTEM;
	ki->ki_mmaps = 0;
	ki->ki_closing = 0;
	mtx_leave(&kvm_mtx);
	return (0);
}

/* Last close of a descriptor: the core drops its object. */
int
kvmclose(dev_t dev, int flag, int mode, struct proc *p)
{
	struct kvm_inst *ki;
	okvm_handle_t h;

	if (KVM_INST(dev) == 0)
		return (0);
	mtx_enter(&kvm_mtx);
	ki = &kvm_insts[KVM_INST(dev)];
	if (ki->ki_handle == NULL) {
		mtx_leave(&kvm_mtx);
		return (0);
	}
	ki->ki_closing = 1;
	while (ki->ki_mmaps > 0)
		msleep_nsec(ki, &kvm_mtx, PWAIT, "kvmcls", INFSLP);
	h = ki->ki_handle;
	ki->ki_handle = NULL;
	ki->ki_closing = 0;
	mtx_leave(&kvm_mtx);

	okvm_release(h);
	if (ki->ki_kind != OKVM_KIND_SYSTEM)
		vmm_ext_leave();
	return (0);
}

/*
 * Reached only through VOP_IOCTL (fcntl(2) F_SETFL, FIONBIO): sys_ioctl()
 * sends every ioctl on a kvm descriptor to kvm_ioctl_bypass().
 */
int
kvmioctl(dev_t dev, u_long cmd, caddr_t data, int flag, struct proc *p)
{
	switch (cmd) {
	case FIONBIO:
		return (0);
	case FIOASYNC:
		return (*(int *)data == 0 ? 0 : EOPNOTSUPP);
	default:
		return (ENOTTY);
	}
}

/*
 * mmap(2) check and fault time: the physical page at off.  Called with the
 * kernel lock held from udv_attach() and udv_fault(); the latter enters the
 * page into the pmap before it drops the kernel lock, and
 * okvm_host_page_free() removes all user mappings of a page under the
 * kernel lock, so no mapping survives the page.  The mapping may outlive
 * the descriptor: then the instance is gone (or belongs to a new object
 * of another process, which the core refuses).
 */
paddr_t
kvmmmap(dev_t dev, off_t off, int prot)
{
	struct kvm_inst *ki;
	okvm_handle_t h;
	uint64_t pa;
	int32_t error;

	if (off < 0 || (off & PAGE_MASK) != 0 || KVM_INST(dev) == 0)
		return (-1);
	mtx_enter(&kvm_mtx);
	ki = &kvm_insts[KVM_INST(dev)];
	if (ki->ki_handle == NULL || ki->ki_closing ||
	    ki->ki_kind != KVM_KIND(dev)) {
		mtx_leave(&kvm_mtx);
		return (-1);
	}
	h = ki->ki_handle;
	ki->ki_mmaps++;
	mtx_leave(&kvm_mtx);

	error = okvm_mmap(h, (uint64_t)off >> PAGE_SHIFT, &pa);

	mtx_enter(&kvm_mtx);
	if (--ki->ki_mmaps == 0 && ki->ki_closing)
		wakeup(ki);
	mtx_leave(&kvm_mtx);
	if (error != 0)
		return (-1);
	return ((paddr_t)pa);
}

/* Is fp a descriptor of kvm(4)? */
int
kvm_isfile(struct file *fp)
{
	struct vnode *vp;

	if (kvm_major == -1 || fp->f_type != DTYPE_VNODE)
		return (0);
	vp = fp->f_data;
	return (vp->v_type == VCHR && major(vp->v_rdev) == kvm_major);
}

/*
 * sys_ioctl() for kvm descriptors, before any generic IOC_IN/IOC_OUT
 * handling: the raw 32-bit Linux command word and the raw argument go to
 * the core, which copies in and out itself with Linux semantics; its
 * non-negative result is the syscall's return value.
 */
int
kvm_ioctl_bypass(struct proc *p, struct file *fp, u_long com, void *data,
    register_t *retval)
{
	struct vnode *vp = fp->f_data;
	struct kvm_inst *ki;
	struct kvm_ctx ctx;
	okvm_handle_t h;
	int64_t r;

	if ((fp->f_flag & (FREAD | FWRITE)) != (FREAD | FWRITE))
		return (EBADF);
	if (KVM_INST(vp->v_rdev) == 0 || (vp->v_flag & VCLONE) == 0)
		return (ENXIO);

	/* The file reference held by sys_ioctl() keeps kvmclose() away. */
	mtx_enter(&kvm_mtx);
	ki = &kvm_insts[KVM_INST(vp->v_rdev)];
	h = ki->ki_handle;
	if (h == NULL || ki->ki_kind != KVM_KIND(vp->v_rdev)) {
		mtx_leave(&kvm_mtx);
		return (ENXIO);
	}
	ctx.kc_proc = p;
	ctx.kc_pvp = vp->v_specparent;
	LIST_INSERT_HEAD(&kvm_ctxs, &ctx, kc_entry);
	mtx_leave(&kvm_mtx);

	r = okvm_ioctl(h, (uint32_t)(com & 0xffffffffUL), (uint64_t)data);

	mtx_enter(&kvm_mtx);
	LIST_REMOVE(&ctx, kc_entry);
	mtx_leave(&kvm_mtx);

	if (r < 0)
		return (kvm_errno(r));
	*retval = (register_t)r;
	return (0);
}

static int
kvm_inst_alloc(struct vnode *pvp)
{
	int i;

	for (i = 1; i < KVM_NINST; i++) {
		if (isclr(pvp->v_specbitmap, i)) {
			setbit(pvp->v_specbitmap, i);
			return (i);
		}
	}
	return (-1);
}

static void
kvm_inst_free(struct vnode *pvp, int i)
{
	clrbit(pvp->v_specbitmap, i);
}

/*
 * A new descriptor of kind (VM or vCPU) for core object h in the calling
 * process: the fd number, or -errno (Linux) if none was made, in which
 * case the core keeps h.
 */
int
kvm_install_fd(uint32_t kind, void *h)
{
	struct proc *p = curproc;
	struct filedesc *fdp = p->p_fd;
	struct kvm_ctx *kc;
	struct kvm_inst *ki;
	struct vnode *pvp = NULL, *vp;
	struct file *fp;
	int error, fd, inst;

	if (kind != OKVM_KIND_VM && kind != OKVM_KIND_VCPU)
		return (-OKVM_EINVAL);
	mtx_enter(&kvm_mtx);
	LIST_FOREACH(kc, &kvm_ctxs, kc_entry) {
		if (kc->kc_proc == p) {
			pvp = kc->kc_pvp;
			break;
		}
	}
	mtx_leave(&kvm_mtx);
	if (pvp == NULL || pvp->v_specbitmap == NULL)
		return (-OKVM_EBADF);

	/* VMX/SVM stays on while any VM or vCPU descriptor exists. */
	if ((error = vmm_ext_enter()) != 0)
		return (-OKVM_ENODEV);

	/* Same locks as spec_open_clone() and spec_close() use. */
	KERNEL_LOCK();
	vn_lock(pvp, LK_EXCLUSIVE | LK_RETRY);
	inst = kvm_inst_alloc(pvp);
	VOP_UNLOCK(pvp);
	if (inst == -1) {
		KERNEL_UNLOCK();
		vmm_ext_leave();
		return (-OKVM_EMFILE);
	}
	error = cdevvp(makedev(kvm_major, (inst << CLONE_SHIFT) | kind), &vp);
	if (error != 0 || vp == NULL) {
		kvm_inst_free(pvp, inst);
		KERNEL_UNLOCK();
		vmm_ext_leave();
		return (-OKVM_ENOMEM);
	}
	vref(pvp);
	vp->v_specparent = pvp;
	vp->v_flag |= VCLONE;
	vp->v_writecount++;		/* vn_close() undoes this (FWRITE) */
	KERNEL_UNLOCK();

	mtx_enter(&kvm_mtx);
	ki = &kvm_insts[inst];
	KASSERT(ki->ki_handle == NULL);
	ki->ki_handle = h;
	ki->ki_kind = kind;
	ki->ki_mmaps = 0;
	ki->ki_closing = 0;
	mtx_leave(&kvm_mtx);

	fdplock(fdp);
	error = falloc(p, &fp, &fd);
	if (error != 0) {
		fdpunlock(fdp);
		mtx_enter(&kvm_mtx);
		ki->ki_handle = NULL;
		mtx_leave(&kvm_mtx);
		KERNEL_LOCK();
		vp->v_writecount--;
		vp->v_flag &= ~VCLONE;
		vp->v_specparent = NULL;
		vrele(vp);
		kvm_inst_free(pvp, inst);
		vrele(pvp);
		KERNEL_UNLOCK();
		vmm_ext_leave();
		return (error == EMFILE ? -OKVM_EMFILE : -OKVM_ENOMEM);
	}
	/* Linux makes these descriptors O_RDWR | O_CLOEXEC. */
	fp->f_flag = FREAD | FWRITE;
	fp->f_type = DTYPE_VNODE;
	fp->f_ops = &vnops;
	fp->f_data = vp;
	fdinsert(fdp, fd, UF_EXCLOSE, fp);
	fdpunlock(fdp);
	FRELE(fp, p);
	return (fd);
}
