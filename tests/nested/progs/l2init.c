/*
 * /init of the L2 guest: print the boot marker with the L2 uptime and the number of CPUs the
 * kernel brought up on the console, power off. The harness looks for
 * "OKVM-L2-MARKER ... cpus=N" in the L1 QEMU's serial output.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

int
main(void)
{
	char up[64] = "?", line[160], stat[4096];
	int fd = open("/dev/console", O_WRONLY), u, n, cpus = 0;
	const char *p;

	if (fd < 0)
		fd = 1;
	if (mount("proc", "/proc", "proc", 0, NULL) == 0 && (u = open("/proc/uptime", O_RDONLY)) >= 0) {
		n = (int)read(u, up, sizeof up - 1);
		up[n > 0 ? n : 0] = 0;
		up[strcspn(up, " \n")] = 0;
		close(u);
	}
	/* Online CPUs: the "cpuN " lines of /proc/stat. */
	if ((u = open("/proc/stat", O_RDONLY)) >= 0) {
		n = (int)read(u, stat, sizeof stat - 1);
		stat[n > 0 ? n : 0] = 0;
		close(u);
		for (p = stat; (p = strstr(p, "\ncpu")) != NULL; p += 4)
			if (p[4] >= '0' && p[4] <= '9')
				cpus++;
	}
	n = snprintf(line, sizeof line, "\nOKVM-L2-MARKER uptime=%s cpus=%d\n", up, cpus);
	if (write(fd, line, (size_t)n) != n)
		return 1;
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
