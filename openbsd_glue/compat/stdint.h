/*	$OpenBSD$	*/

/*
 * kvm(4): okvm.h is shared with a Linux test glue and includes <stdint.h>;
 * the kernel is built with -nostdinc.  The kernel's types do.
 */

#ifndef _DEV_KVM_COMPAT_STDINT_H_
#define _DEV_KVM_COMPAT_STDINT_H_

#include <sys/types.h>

#endif /* _DEV_KVM_COMPAT_STDINT_H_ */
