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
 * kvm(4): interfaces between the kvm pseudo-device (kvm.c), the host
 * services for okvm.o (okvm_host.c) and the rest of the kernel
 * (sys_ioctl() in kern/sys_generic.c, the cdevsw in conf.c).
 */

#ifndef _DEV_KVM_KVMVAR_H_
#define _DEV_KVM_KVMVAR_H_

#ifdef _KERNEL

/*
 * Minor numbers: the low CLONE_SHIFT bits are the descriptor kind
 * (OKVM_KIND_*), the bits above the instance number handed out from the
 * clone bitmap of the /dev/kvm vnode (see spec_open_clone()).
 */
#define KVM_KIND(dev)		(minor(dev) & ((1 << CLONE_SHIFT) - 1))
#define KVM_INST(dev)		(minor(dev) >> CLONE_SHIFT)
#define KVM_NINST		(CLONE_MAPSZ * NBBY)

struct file;
struct proc;

/* cdevsw entry points (conf.c: cdev_kvm_init). */
void	kvmattach(int);
int	kvmopen(dev_t, int, int, struct proc *);
int	kvmclose(dev_t, int, int, struct proc *);
int	kvmioctl(dev_t, u_long, caddr_t, int, struct proc *);
paddr_t	kvmmmap(dev_t, off_t, int);

/* sys_ioctl() bypass: Linux ioctl semantics for descriptors of kvm(4). */
int	kvm_isfile(struct file *);
int	kvm_ioctl_bypass(struct proc *, struct file *, u_long, void *,
	    register_t *);

/* okvm_host.c -> kvm.c */
int	kvm_errno(int64_t);
int	kvm_install_fd(uint32_t, void *);
void	kvm_log(uint32_t, const char *, size_t);

/* kvm.c -> okvm_host.c */
void	kvm_host_init(void);

/* vmm(4) (dev/vmm/vmm.c, kernel patch): keep VMX/SVM on for kvm(4). */
int	vmm_ext_enter(void);
void	vmm_ext_leave(void);

#endif /* _KERNEL */

#endif /* _DEV_KVM_KVMVAR_H_ */
