/*
 * /init of the L2 guest: print the boot marker with the L2 uptime and the number of CPUs the
 * kernel brought up on the console, power off. The harness looks for
 * "OKVM-L2-MARKER ... cpus=N" in the L1 QEMU's serial output.
 *
 * With `okvm.virtio` on the kernel command line it first loads the modules listed in
 * /modules/order (virtio core, virtio-pci, virtio-rng, virtio-blk), reads 64 bytes from
 * /dev/hwrng and 4096 bytes from /dev/vda, so each device's virtqueue kick (a guest write to
 * its notify register, which QEMU serves with an ioeventfd) and completion interrupt (MSI-X:
 * QEMU sends it with KVM_SIGNAL_MSI for virtio-rng, through an irqfd for a virtio-blk run by an
 * iothread) must work; the marker then also says `mods=LOADED/LISTED rng=BYTES blk=BYTES
 * msi_irqs=N` (N = MSI interrupts counted for virtio devices in /proc/interrupts). All of that
 * runs in a child that reports through a pipe, so a hung device costs 60 s, not the marker.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Read up to size-1 bytes of a file into buf (NUL-terminated); returns the length or -1. */
static int
slurp(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY), n, len = 0;
	if (fd < 0)
		return -1;
	while (len < (int)size - 1 && (n = (int)read(fd, buf + len, size - 1 - (size_t)len)) > 0)
		len += n;
	buf[len] = 0;
	close(fd);
	return len;
}

/* Load the modules named in /modules/order, one per line; returns how many loaded. */
static int
load_modules(int con, int *listed)
{
	static char order[1024];
	char path[256], *line, *save = NULL;
	int loaded = 0;
	*listed = 0;
	if (slurp("/modules/order", order, sizeof order) < 0)
		return 0;
	for (line = strtok_r(order, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		(*listed)++;
		snprintf(path, sizeof path, "/modules/%s", line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && syscall(SYS_finit_module, fd, "", 0) == 0)
			loaded++;
		else
			dprintf(con, "l2init: loading %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	return loaded;
}

/* Read up to size bytes of a device; returns the byte count or -errno. */
static int
read_dev(const char *path, size_t size)
{
	static unsigned char buf[4096];
	int fd = open(path, O_RDONLY), n = 0, r = 0;
	if (fd < 0)
		return -errno;
	if (size > sizeof buf)
		size = sizeof buf;
	while (n < (int)size && (r = (int)read(fd, buf + n, size - (size_t)n)) > 0)
		n += r;
	if (n == 0 && r < 0)
		n = -errno;
	close(fd);
	return n;
}

/* Sum of the interrupt counts of /proc/interrupts lines that name a virtio device and MSI. */
static long
virtio_msi_irqs(void)
{
	static char text[16384];
	long total = 0;
	char *line, *save = NULL;
	if (slurp("/proc/interrupts", text, sizeof text) < 0)
		return -1;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strstr(line, "virtio") || !strstr(line, "MSI"))
			continue;
		char *p = strchr(line, ':');
		while (p) {
			char *end;
			long n = strtol(p + 1, &end, 10);
			if (end == p + 1)
				break;
			total += n;
			p = end;
		}
	}
	return total;
}

int
main(void)
{
	static char stat[4096], cmdline[1024];
	char up[64] = "?", line[256], extra[128] = "";
	int fd = open("/dev/console", O_WRONLY), n, cpus = 0;
	const char *p;

	if (fd < 0)
		fd = 1;
	mount("proc", "/proc", "proc", 0, NULL);
	if (slurp("/proc/cmdline", cmdline, sizeof cmdline) > 0 && strstr(cmdline, "okvm.virtio")) {
		/* A read from (or the probe of) a device whose interrupt never comes blocks
		 * unkillably: a child does the work, the parent waits at most 60 s. */
		int pfd[2];
		strcpy(extra, " virtio=timeout");
		if (pipe(pfd) == 0 && fork() == 0) {
			int listed, loaded = load_modules(fd, &listed);
			mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
			int rng = read_dev("/dev/hwrng", 64);
			int blk = read_dev("/dev/vda", 4096);
			dprintf(pfd[1], " mods=%d/%d rng=%d blk=%d", loaded, listed, rng, blk);
			_exit(0);
		}
		struct pollfd pl = { .fd = pfd[0], .events = POLLIN };
		if (poll(&pl, 1, 60000) == 1 && (n = (int)read(pfd[0], extra, sizeof extra - 40)) > 0)
			extra[n] = 0;
		n = (int)strlen(extra);
		snprintf(extra + n, sizeof extra - (size_t)n, " msi_irqs=%ld", virtio_msi_irqs());
	}
	if (slurp("/proc/uptime", up, sizeof up) < 0)
		strcpy(up, "?");
	up[strcspn(up, " \n")] = 0;
	/* Online CPUs: the "cpuN " lines of /proc/stat. */
	if (slurp("/proc/stat", stat, sizeof stat) > 0)
		for (p = stat; (p = strstr(p, "\ncpu")) != NULL; p += 4)
			if (p[4] >= '0' && p[4] <= '9')
				cpus++;
	n = snprintf(line, sizeof line, "\nOKVM-L2-MARKER uptime=%s cpus=%d%s\n", up, cpus, extra);
	if (write(fd, line, (size_t)n) != n)
		return 1;
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
