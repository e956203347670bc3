/* okvm.h includes <stddef.h>; in the Linux kernel (built with -nostdinc) size_t and NULL come
 * from the kernel's own headers. */
#include <linux/stddef.h>
#include <linux/types.h>
