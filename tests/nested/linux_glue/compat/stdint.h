/* okvm.h includes <stdint.h>; the Linux kernel defines the fixed-width types itself. */
#include <linux/types.h>
