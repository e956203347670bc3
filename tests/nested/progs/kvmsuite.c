/*
 * kvmsuite: raw-ioctl tests of a /dev/kvm, in the spirit of Linux's KVM selftests.
 *
 * Runs against whatever provides /dev/kvm (Linux KVM or okvm through the Linux host glue) and
 * prints one machine-parsable line per test on stdout:
 *
 *   @@ BEGIN hv=<tag> name=<test>
 *   @@ RESULT hv=<tag> name=<test> status=PASS|FAIL|UNSUPPORTED [key=value ...] [msg="..."]
 *
 * UNSUPPORTED means the first KVM_RUN of a vCPU failed with ENOSYS/EOPNOTSUPP/ENODEV or came back
 * with KVM_EXIT_FAIL_ENTRY (a kernel without a backend that runs guests); every other failure is
 * FAIL (the harness expects PASS from Linux KVM everywhere). Each test runs in a forked child with
 * a time limit, so a crash or a hang of one test is reported and the others still run.
 *
 * usage: kvmsuite [--hv TAG] [-n EXITS] [-t SECONDS] [--list] [TEST...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GUEST_CODE 0x1000UL
#define GUEST_PML4 0x2000UL
#define GUEST_PDPT 0x3000UL
#define GUEST_PD 0x4000UL
#define GUEST_STACK 0x8000UL
#define SLOT0_SIZE 0x200000UL
#define MMIO_GPA 0x10000000UL /* inside the identity map, outside every memslot */

#define PORT_COUNT 0x10
#define PORT_IN 0x11
#define PORT_RESULT 0x12
#define PORT_VALUE 0x13

enum status { PASS, FAIL, UNSUPPORTED };
static const char *status_name[] = { "PASS", "FAIL", "UNSUPPORTED" };

#define SNIPPET(n) extern const uint8_t n##_start[], n##_end[]
SNIPPET(g_pio_real);
SNIPPET(g_pio_long);
SNIPPET(g_mmio);
SNIPPET(g_cpuid);
SNIPPET(g_hlt);
SNIPPET(g_msr);
SNIPPET(g_dirty);
SNIPPET(g_read);
SNIPPET(g_spin);
SNIPPET(g_ioev);
SNIPPET(g_irq);
extern const uint8_t g_irq_handler[];
#define CODE(n) n##_start, (size_t)(n##_end - n##_start)

static unsigned long n_exits = 20000;
static const char *hv = "unknown";

/* ---- reporting (in the test child) ---- */

static char msg[512];
static char metrics[512];

static enum status failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static enum status
failf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '"' || *p == '\n')
			*p = '\'';
	return FAIL;
}

static void metric(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
metric(const char *key, const char *fmt, ...)
{
	size_t len = strlen(metrics);
	va_list ap;
	snprintf(metrics + len, sizeof metrics - len, " %s=", key);
	len = strlen(metrics);
	va_start(ap, fmt);
	vsnprintf(metrics + len, sizeof metrics - len, fmt, ap);
	va_end(ap);
}

/* CHECK(cond, fmt, ...): fail the test with a message naming errno when cond is false. */
#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			int e_ = errno;                                         \
			failf(__VA_ARGS__);                                     \
			size_t l_ = strlen(msg);                                \
			snprintf(msg + l_, sizeof msg - l_, " (line %d, errno %d %s)", \
			    __LINE__, e_, strerror(e_));                        \
			return FAIL;                                            \
		}                                                               \
	} while (0)

/* EXPECT_ERRNO(call, err): the ioctl must fail with exactly err. */
#define EXPECT_ERRNO(call, err, what)                                           \
	do {                                                                    \
		errno = 0;                                                      \
		int r_ = (call);                                                \
		if (r_ != -1 || errno != (err))                                 \
			return failf("%s: got %d errno %d (%s), want errno %d (%s)", \
			    what, r_, errno, strerror(errno), err, strerror(err)); \
	} while (0)

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- a VM with one vCPU and slot 0 = [0, SLOT0_SIZE) ---- */

struct vm {
	int kvm, fd, vcpu;
	struct kvm_run *run;
	size_t runsz;
	uint8_t *mem;
	int ran; /* KVM_RUN succeeded at least once */
};

/* Open a VM with slot 0 and one vCPU; with split, the VM first gets KVM_CAP_SPLIT_IRQCHIP
 * (24 IOAPIC pins, as QEMU asks), which must come before any vCPU exists. */
static enum status
vm_open2(struct vm *v, int split)
{
	memset(v, 0, sizeof *v);
	v->kvm = v->fd = v->vcpu = -1;
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHECK(v->kvm >= 0, "open /dev/kvm");
	v->fd = ioctl(v->kvm, KVM_CREATE_VM, 0);
	CHECK(v->fd >= 0, "KVM_CREATE_VM");
	v->mem = mmap(NULL, SLOT0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(v->mem != MAP_FAILED, "mmap guest memory");
	struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0,
		.memory_size = SLOT0_SIZE, .userspace_addr = (uintptr_t)v->mem };
	CHECK(ioctl(v->fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "KVM_SET_USER_MEMORY_REGION slot 0");
	if (split) {
		struct kvm_enable_cap cap = { .cap = KVM_CAP_SPLIT_IRQCHIP, .args = { 24 } };
		CHECK(ioctl(v->fd, KVM_ENABLE_CAP, &cap) == 0, "KVM_ENABLE_CAP(SPLIT_IRQCHIP, 24)");
	}
	v->vcpu = ioctl(v->fd, KVM_CREATE_VCPU, 0);
	CHECK(v->vcpu >= 0, "KVM_CREATE_VCPU");
	int sz = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	CHECK(sz >= (int)sizeof(struct kvm_run), "KVM_GET_VCPU_MMAP_SIZE = %d", sz);
	v->runsz = (size_t)sz;
	v->run = mmap(NULL, v->runsz, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	CHECK(v->run != MAP_FAILED, "mmap vcpu");
	return PASS;
}

static enum status vm_open(struct vm *v) { return vm_open2(v, 0); }

static void
vm_close(struct vm *v)
{
	if (v->run && v->run != MAP_FAILED)
		munmap(v->run, v->runsz);
	if (v->mem && v->mem != MAP_FAILED)
		munmap(v->mem, SLOT0_SIZE);
	if (v->vcpu >= 0)
		close(v->vcpu);
	if (v->fd >= 0)
		close(v->fd);
	if (v->kvm >= 0)
		close(v->kvm);
}

/* Load code at GUEST_CODE and set the vCPU to real mode (cs=0) or 64-bit long mode with an
 * identity map of the first GiB in 2 MiB pages. */
static enum status
vm_setup(struct vm *v, const uint8_t *code, size_t len, int longmode, struct kvm_regs *regs)
{
	memcpy(v->mem + GUEST_CODE, code, len);
	struct kvm_sregs s;
	CHECK(ioctl(v->vcpu, KVM_GET_SREGS, &s) == 0, "KVM_GET_SREGS");
	if (!longmode) {
		s.cs.base = 0;
		s.cs.selector = 0;
	} else {
		uint64_t *pml4 = (uint64_t *)(v->mem + GUEST_PML4);
		uint64_t *pdpt = (uint64_t *)(v->mem + GUEST_PDPT);
		uint64_t *pd = (uint64_t *)(v->mem + GUEST_PD);
		pml4[0] = GUEST_PDPT | 3;
		pdpt[0] = GUEST_PD | 3;
		for (uint64_t i = 0; i < 512; i++)
			pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB */
		struct kvm_segment seg = { .base = 0, .limit = 0xffffffff, .selector = 8,
			.present = 1, .type = 11, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1 };
		s.cs = seg;
		seg.type = 3;
		seg.selector = 16;
		seg.l = 0;
		seg.db = 1;
		s.ds = s.es = s.fs = s.gs = s.ss = seg;
		s.cr3 = GUEST_PML4;
		s.cr4 = 1 << 5;         /* PAE */
		s.cr0 = 0x80050033;     /* PG AM WP NE ET MP PE */
		s.efer = 0x500;         /* LME LMA */
	}
	CHECK(ioctl(v->vcpu, KVM_SET_SREGS, &s) == 0, "KVM_SET_SREGS");
	regs->rip = GUEST_CODE;
	regs->rflags = 2;
	regs->rsp = GUEST_STACK;
	CHECK(ioctl(v->vcpu, KVM_SET_REGS, regs) == 0, "KVM_SET_REGS");
	return PASS;
}

/* KVM_RUN once; returns the exit reason, -1 on error (msg set, errno kept). */
static int
vm_run(struct vm *v, enum status *st)
{
	if (ioctl(v->vcpu, KVM_RUN, 0) < 0) {
		int e = errno;
		if (!v->ran && (e == ENOSYS || e == EOPNOTSUPP || e == ENODEV)) {
			failf("KVM_RUN unsupported: %s", strerror(e));
			*st = UNSUPPORTED;
		} else {
			failf("KVM_RUN: errno %d %s", e, strerror(e));
			*st = FAIL;
		}
		errno = e;
		return -1;
	}
	if (!v->ran && v->run->exit_reason == KVM_EXIT_FAIL_ENTRY) {
		/* The very first entry of a valid vCPU failed: a kernel without a backend. */
		failf("KVM_RUN unsupported: no backend (KVM_EXIT_FAIL_ENTRY, hardware reason 0x%llx)",
		    (unsigned long long)v->run->fail_entry.hardware_entry_failure_reason);
		*st = UNSUPPORTED;
		return -1;
	}
	v->ran = 1;
	return (int)v->run->exit_reason;
}

static const char *
exit_name(int r)
{
	static char buf[32];
	switch (r) {
	case KVM_EXIT_IO: return "IO";
	case KVM_EXIT_MMIO: return "MMIO";
	case KVM_EXIT_HLT: return "HLT";
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	case KVM_EXIT_INTR: return "INTR";
	}
	snprintf(buf, sizeof buf, "exit%d", r);
	return buf;
}

/* Describe an unexpected exit. */
static enum status
exit_fail(struct vm *v, int r, int want)
{
	struct kvm_regs regs;
	unsigned long long rip = ioctl(v->vcpu, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
	if (r == KVM_EXIT_IO)
		return failf("exit IO port 0x%x dir %u size %u (rip 0x%llx), want %s", v->run->io.port,
		    v->run->io.direction, v->run->io.size, rip, exit_name(want));
	if (r == KVM_EXIT_MMIO)
		return failf("exit MMIO gpa 0x%llx len %u write %u (rip 0x%llx), want %s",
		    (unsigned long long)v->run->mmio.phys_addr, v->run->mmio.len, v->run->mmio.is_write,
		    rip, exit_name(want));
	if (r == KVM_EXIT_FAIL_ENTRY)
		return failf("exit FAIL_ENTRY hw reason 0x%llx (rip 0x%llx), want %s",
		    (unsigned long long)v->run->fail_entry.hardware_entry_failure_reason, rip, exit_name(want));
	if (r == KVM_EXIT_INTERNAL_ERROR)
		return failf("exit INTERNAL_ERROR suberror %u (rip 0x%llx), want %s", v->run->internal.suberror,
		    rip, exit_name(want));
	return failf("exit %s (rip 0x%llx), want %s", exit_name(r), rip, exit_name(want));
}

/* Run until the next exit that is not a count-port out; counts those in *count. */
#define RUN_TO(v, want, count)                                                   \
	do {                                                                     \
		enum status st_;                                                 \
		int r_;                                                          \
		for (;;) {                                                       \
			r_ = vm_run(v, &st_);                                    \
			if (r_ < 0)                                              \
				return st_;                                      \
			if (r_ == KVM_EXIT_IO && (v)->run->io.port == PORT_COUNT && \
			    (v)->run->io.direction == KVM_EXIT_IO_OUT) {          \
				(count)++;                                       \
				continue;                                        \
			}                                                        \
			break;                                                   \
		}                                                                \
		if (r_ != (want))                                                \
			return exit_fail(v, r_, want);                           \
	} while (0)

static uint32_t
io_u32(struct vm *v)
{
	uint32_t x = 0;
	memcpy(&x, (uint8_t *)v->run + v->run->io.data_offset, v->run->io.size);
	return x;
}

/* Expect an IO exit on port with direction/size; for OUT, return its value in *val. */
#define EXPECT_IO(v, port_, dir, size_)                                          \
	do {                                                                     \
		if ((v)->run->io.port != (port_) || (v)->run->io.direction != (dir) || \
		    (v)->run->io.size != (size_) || (v)->run->io.count != 1)     \
			return failf("io exit port 0x%x dir %u size %u count %u, want port 0x%x dir %u size %u", \
			    (v)->run->io.port, (v)->run->io.direction, (v)->run->io.size, \
			    (v)->run->io.count, (port_), (dir), (size_));      \
	} while (0)

static void
rate(double dt, unsigned long n)
{
	metric("exits", "%lu", n);
	metric("secs", "%.3f", dt);
	metric("exits_per_s", "%.0f", n / dt);
	metric("us_per_exit", "%.2f", dt * 1e6 / (double)(n ? n : 1));
}

/* ---- tests ---- */

static enum status
t_api(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHECK(kvm >= 0, "open /dev/kvm");
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	CHECK(api == KVM_API_VERSION, "KVM_GET_API_VERSION = %d", api);
	static const struct { int cap; const char *name; } must[] = {
		{ KVM_CAP_USER_MEMORY, "USER_MEMORY" },
		{ KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR" },
		{ KVM_CAP_EXT_CPUID, "EXT_CPUID" },
		{ KVM_CAP_NR_VCPUS, "NR_VCPUS" },
		{ KVM_CAP_MAX_VCPUS, "MAX_VCPUS" },
		{ KVM_CAP_NR_MEMSLOTS, "NR_MEMSLOTS" },
		{ KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT" },
	};
	for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) {
		int r = ioctl(kvm, KVM_CHECK_EXTENSION, must[i].cap);
		CHECK(r > 0, "KVM_CHECK_EXTENSION(%s) = %d", must[i].name, r);
	}
	int r = ioctl(kvm, KVM_CHECK_EXTENSION, 0x7fffffff);
	CHECK(r == 0, "KVM_CHECK_EXTENSION(unknown) = %d, want 0", r);
	metric("max_vcpus", "%d", ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS));
	metric("memslots", "%d", ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS));
	int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	CHECK(sz >= 4096 && sz % 4096 == 0, "KVM_GET_VCPU_MMAP_SIZE = %d", sz);
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	CHECK(vm >= 0, "KVM_CREATE_VM");
	r = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY);
	CHECK(r > 0, "VM KVM_CHECK_EXTENSION(USER_MEMORY) = %d", r);
	CHECK(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) == 0, "KVM_SET_TSS_ADDR");
	close(vm);
	close(kvm);
	return PASS;
}

static enum status
t_regs(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs r, g;
	memset(&r, 0, sizeof r);
	r.rax = 0x1111222233334444ULL;
	r.rbx = 0x5555666677778888ULL;
	r.r15 = 0x0123456789abcdefULL;
	r.rip = 0xfff0;
	r.rflags = 0x202;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &r) == 0, "KVM_SET_REGS");
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &g) == 0, "KVM_GET_REGS");
	CHECK(memcmp(&r, &g, sizeof r) == 0, "KVM_GET_REGS differs from KVM_SET_REGS (rax %llx rip %llx)",
	    (unsigned long long)g.rax, (unsigned long long)g.rip);
	struct kvm_sregs s, s2;
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s) == 0, "KVM_GET_SREGS");
	CHECK(s.cs.selector == 0xf000 && s.cs.base == 0xffff0000, "reset cs %x base %llx",
	    s.cs.selector, (unsigned long long)s.cs.base);
	s.cr3 = 0x5000;
	s.ds.base = 0x12340;
	s.ds.selector = 0x1234;
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0, "KVM_SET_SREGS");
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s2) == 0, "KVM_GET_SREGS");
	CHECK(s2.cr3 == 0x5000 && s2.ds.base == 0x12340 && s2.ds.selector == 0x1234,
	    "sregs round trip: cr3 %llx ds %x/%llx", (unsigned long long)s2.cr3, s2.ds.selector,
	    (unsigned long long)s2.ds.base);
	vm_close(&v);
	return PASS;
}

/* PIO loop: n counted outs, then an IN whose value the guest echoes back. */
static enum status
pio(int longmode)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { .rcx = n_exits };
	st = longmode ? vm_setup(&v, CODE(g_pio_long), 1, &regs) : vm_setup(&v, CODE(g_pio_real), 0, &regs);
	if (st != PASS)
		return st;
	unsigned long outs = 0;
	double t0 = now();
	RUN_TO(&v, KVM_EXIT_IO, outs);
	double dt = now() - t0;
	CHECK(outs == n_exits, "%lu counted outs, want %lu", outs, n_exits);
	EXPECT_IO(&v, PORT_IN, KVM_EXIT_IO_IN, 1);
	*((uint8_t *)v.run + v.run->io.data_offset) = 0xa5;
	RUN_TO(&v, KVM_EXIT_IO, outs);
	EXPECT_IO(&v, PORT_RESULT, KVM_EXIT_IO_OUT, 4);
	CHECK(io_u32(&v) == 0xa5, "guest read 0x%x from the IN, want 0xa5", io_u32(&v));
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	rate(dt, outs);
	vm_close(&v);
	return PASS;
}

static enum status t_pio_real(void) { return pio(0); }
static enum status t_pio_long(void) { return pio(1); }

static enum status
t_mmio(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { .rcx = n_exits, .rdi = MMIO_GPA + 0x10, .rax = 0xcafe0001 };
	if ((st = vm_setup(&v, CODE(g_mmio), 1, &regs)) != PASS)
		return st;
	unsigned long writes = 0, other = 0;
	double t0 = now();
	for (;;) {
		int r = vm_run(&v, &st);
		if (r < 0)
			return st;
		if (r != KVM_EXIT_MMIO)
			return failf("exit %s after %lu MMIO writes, want MMIO", exit_name(r), writes);
		if (!v.run->mmio.is_write)
			break;
		uint32_t d;
		memcpy(&d, v.run->mmio.data, 4);
		if (v.run->mmio.phys_addr != MMIO_GPA + 0x10 || v.run->mmio.len != 4 || d != 0xcafe0001)
			return failf("MMIO write gpa 0x%llx len %u data 0x%x",
			    (unsigned long long)v.run->mmio.phys_addr, v.run->mmio.len, d);
		writes++;
	}
	double dt = now() - t0;
	CHECK(writes == n_exits, "%lu MMIO writes, want %lu", writes, n_exits);
	CHECK(v.run->mmio.phys_addr == MMIO_GPA + 0x10 && v.run->mmio.len == 4,
	    "MMIO read gpa 0x%llx len %u", (unsigned long long)v.run->mmio.phys_addr, v.run->mmio.len);
	uint32_t val = 0x600dbeef;
	memcpy(v.run->mmio.data, &val, 4);
	RUN_TO(&v, KVM_EXIT_IO, other);
	EXPECT_IO(&v, PORT_RESULT, KVM_EXIT_IO_OUT, 4);
	CHECK(io_u32(&v) == val, "guest read 0x%x from MMIO, want 0x%x", io_u32(&v), val);
	RUN_TO(&v, KVM_EXIT_HLT, other);
	rate(dt, writes);
	vm_close(&v);
	return PASS;
}

static enum status
t_hlt(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { 0 };
	if ((st = vm_setup(&v, CODE(g_hlt), 1, &regs)) != PASS)
		return st;
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	CHECK(outs == 0, "out before the first hlt");
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0, "KVM_GET_REGS");
	CHECK(regs.rip == GUEST_CODE + 1, "rip after hlt = 0x%llx, want 0x%lx",
	    (unsigned long long)regs.rip, GUEST_CODE + 1);
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	CHECK(outs == 1, "%lu outs between the hlts, want 1", outs);
	vm_close(&v);
	return PASS;
}

static enum status
t_cpuid(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHECK(kvm >= 0, "open /dev/kvm");
	size_t n = 256;
	struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof(struct kvm_cpuid_entry2));
	CHECK(c != NULL, "calloc");
	c->nent = 1;
	EXPECT_ERRNO(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c), E2BIG, "KVM_GET_SUPPORTED_CPUID nent=1");
	c->nent = n;
	CHECK(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0, "KVM_GET_SUPPORTED_CPUID");
	CHECK(c->nent > 1 && c->entries[0].function == 0, "supported cpuid: %u entries, first leaf 0x%x",
	    c->nent, c->entries[0].function);
	metric("leaves", "%u", c->nent);
	struct kvm_cpuid_entry2 leaf0 = c->entries[0];
	close(kvm);

	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	CHECK(ioctl(v.vcpu, KVM_SET_CPUID2, c) == 0, "KVM_SET_CPUID2");
	struct kvm_regs regs = { .r8 = n_exits, .rsi = 0 };
	if ((st = vm_setup(&v, CODE(g_cpuid), 1, &regs)) != PASS)
		return st;
	unsigned long outs = 0;
	uint32_t got[4];
	double t0 = now();
	RUN_TO(&v, KVM_EXIT_IO, outs);
	double dt = now() - t0;
	for (int i = 0; i < 4; i++) {
		if (i)
			RUN_TO(&v, KVM_EXIT_IO, outs);
		EXPECT_IO(&v, PORT_VALUE, KVM_EXIT_IO_OUT, 4);
		got[i] = io_u32(&v);
	}
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	CHECK(got[0] == leaf0.ebx && got[1] == leaf0.edx && got[2] == leaf0.ecx && got[3] == leaf0.eax,
	    "guest cpuid(0) = %08x %08x %08x %08x, set %08x %08x %08x %08x", got[3], got[0], got[2],
	    got[1], leaf0.eax, leaf0.ebx, leaf0.ecx, leaf0.edx);
	char vendor[13];
	memcpy(vendor, got, 12);
	vendor[12] = 0;
	metric("vendor", "%s", vendor);
	rate(dt, n_exits);
	free(c);
	vm_close(&v);
	return PASS;
}

static enum status
t_msr(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct { struct kvm_msr_list l; uint32_t more[1024]; } list = { .l.nmsrs = 1024 };
	CHECK(ioctl(v.kvm, KVM_GET_MSR_INDEX_LIST, &list) == 0, "KVM_GET_MSR_INDEX_LIST");
	CHECK(list.l.nmsrs > 4, "KVM_GET_MSR_INDEX_LIST: %u MSRs", list.l.nmsrs);
	int have_kgsbase = 0;
	for (uint32_t i = 0; i < list.l.nmsrs; i++)
		have_kgsbase |= list.l.indices[i] == 0xc0000102;
	CHECK(have_kgsbase, "KERNEL_GS_BASE not in KVM_GET_MSR_INDEX_LIST");
	metric("msrs", "%u", list.l.nmsrs);

	/* SYSENTER_CS/ESP/EIP (32 bits wide on AMD), STAR, LSTAR, KERNEL_GS_BASE (canonical) */
	static const uint32_t idx[] = { 0x174, 0x175, 0x176, 0xc0000081, 0xc0000082, 0xc0000102 };
	static const uint64_t msr_val[] = { 0x10, 0x80001040, 0x80001080, 0x0023001000000000ULL,
		0xffffffff81000000ULL, 0xffff888000123000ULL };
	enum { N = sizeof idx / sizeof idx[0] };
	struct { struct kvm_msrs h; struct kvm_msr_entry e[N]; } m;
	memset(&m, 0, sizeof m);
	m.h.nmsrs = N;
	for (int i = 0; i < N; i++) {
		m.e[i].index = idx[i];
		m.e[i].data = msr_val[i];
	}
	int r = ioctl(v.vcpu, KVM_SET_MSRS, &m);
	CHECK(r == N, "KVM_SET_MSRS set %d of %d", r, N);
	struct { struct kvm_msrs h; struct kvm_msr_entry e[N]; } g;
	memset(&g, 0, sizeof g);
	g.h.nmsrs = N;
	for (int i = 0; i < N; i++)
		g.e[i].index = idx[i];
	r = ioctl(v.vcpu, KVM_GET_MSRS, &g);
	CHECK(r == N, "KVM_GET_MSRS got %d of %d", r, N);
	for (int i = 0; i < N; i++)
		CHECK(g.e[i].data == m.e[i].data, "MSR 0x%x read 0x%llx, wrote 0x%llx", idx[i],
		    (unsigned long long)g.e[i].data, (unsigned long long)m.e[i].data);
	/* An unknown MSR stops the batch at its index. */
	g.h.nmsrs = 2;
	g.e[0].index = 0x174;
	g.e[1].index = 0x4b564dff; /* unused KVM paravirt range */
	r = ioctl(v.vcpu, KVM_GET_MSRS, &g);
	CHECK(r == 1, "KVM_GET_MSRS with an unknown second MSR returned %d, want 1", r);

	/* Guest side: wrmsr/rdmsr KERNEL_GS_BASE, rdmsr SYSENTER_EIP, then rdmsr of an unknown MSR. */
	uint64_t kgs = 0xffff888811223344ULL; /* canonical */
	struct kvm_regs regs = { .r9 = kgs, .r10 = 0x4b564dff };
	if ((st = vm_setup(&v, CODE(g_msr), 1, &regs)) != PASS)
		return st;
	uint32_t got[4];
	unsigned long outs = 0;
	for (int i = 0; i < 4; i++) {
		RUN_TO(&v, KVM_EXIT_IO, outs);
		EXPECT_IO(&v, PORT_VALUE, KVM_EXIT_IO_OUT, 4);
		got[i] = io_u32(&v);
	}
	CHECK(((uint64_t)got[1] << 32 | got[0]) == kgs, "guest rdmsr KERNEL_GS_BASE = %08x%08x", got[1], got[0]);
	CHECK(((uint64_t)got[3] << 32 | got[2]) == m.e[2].data, "guest rdmsr SYSENTER_EIP = %08x%08x",
	    got[3], got[2]);
	g.h.nmsrs = 1;
	g.e[0].index = 0xc0000102;
	CHECK(ioctl(v.vcpu, KVM_GET_MSRS, &g) == 1 && g.e[0].data == kgs, "KVM_GET_MSRS after guest wrmsr = 0x%llx",
	    (unsigned long long)g.e[0].data);
	/* (after the shutdown, state is vendor-specific: SVM resets the vCPU) */
	RUN_TO(&v, KVM_EXIT_SHUTDOWN, outs); /* #GP, no IDT: triple fault */
	vm_close(&v);
	return PASS;
}

/* Complete the MMIO read g_read is stopped at with val; the guest must echo it, then halt.
 * (A pending MMIO read completes on the next KVM_RUN, so it must come before new state.) */
static enum status
finish_read(struct vm *v, uint64_t val)
{
	unsigned long outs = 0;
	uint32_t lo, hi;
	memcpy(v->run->mmio.data, &val, 8);
	RUN_TO(v, KVM_EXIT_IO, outs);
	lo = io_u32(v);
	RUN_TO(v, KVM_EXIT_IO, outs);
	hi = io_u32(v);
	CHECK(((uint64_t)hi << 32 | lo) == val, "MMIO read completed with %08x%08x, want %016llx", hi, lo,
	    (unsigned long long)val);
	RUN_TO(v, KVM_EXIT_HLT, outs);
	return PASS;
}

static enum status
t_memslot(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	size_t sz = 0x10000;
	uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap");
	uint64_t magic = 0x0badc0de12345678ULL;
	memcpy(m + 0x100, &magic, 8);
	uint64_t gpa_a = 0x400000, gpa_b = 0x800000;
	struct kvm_userspace_memory_region r = { .slot = 1, .guest_phys_addr = gpa_a, .memory_size = sz,
		.userspace_addr = (uintptr_t)m };
	CHECK(ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "add slot 1");

	/* read through slot 1 at A */
	struct kvm_regs regs = { .rdi = gpa_a + 0x100 };
	if ((st = vm_setup(&v, CODE(g_read), 1, &regs)) != PASS)
		return st;
	uint32_t lo, hi;
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_IO, outs);
	lo = io_u32(&v);
	RUN_TO(&v, KVM_EXIT_IO, outs);
	hi = io_u32(&v);
	CHECK(((uint64_t)hi << 32 | lo) == magic, "read via slot 1 at A: %08x%08x", hi, lo);
	RUN_TO(&v, KVM_EXIT_HLT, outs);

	/* move slot 1 to B: the same bytes appear there, A becomes MMIO */
	r.guest_phys_addr = gpa_b;
	CHECK(ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "move slot 1");
	regs = (struct kvm_regs){ .rdi = gpa_b + 0x100 };
	if ((st = vm_setup(&v, CODE(g_read), 1, &regs)) != PASS)
		return st;
	RUN_TO(&v, KVM_EXIT_IO, outs);
	lo = io_u32(&v);
	RUN_TO(&v, KVM_EXIT_IO, outs);
	hi = io_u32(&v);
	CHECK(((uint64_t)hi << 32 | lo) == magic, "read via moved slot 1 at B: %08x%08x", hi, lo);
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	regs = (struct kvm_regs){ .rdi = gpa_a + 0x100 };
	if ((st = vm_setup(&v, CODE(g_read), 1, &regs)) != PASS)
		return st;
	RUN_TO(&v, KVM_EXIT_MMIO, outs);
	CHECK(!v.run->mmio.is_write && v.run->mmio.phys_addr == gpa_a + 0x100 && v.run->mmio.len == 8,
	    "old location after move: MMIO gpa 0x%llx len %u write %u",
	    (unsigned long long)v.run->mmio.phys_addr, v.run->mmio.len, v.run->mmio.is_write);
	if ((st = finish_read(&v, 0x1122334455667788ULL)) != PASS)
		return st;

	/* delete slot 1 (size 0): B is MMIO now; re-adding it works */
	r.memory_size = 0;
	CHECK(ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "delete slot 1");
	regs = (struct kvm_regs){ .rdi = gpa_b + 0x100 };
	if ((st = vm_setup(&v, CODE(g_read), 1, &regs)) != PASS)
		return st;
	RUN_TO(&v, KVM_EXIT_MMIO, outs);
	CHECK(v.run->mmio.phys_addr == gpa_b + 0x100, "deleted slot: MMIO gpa 0x%llx",
	    (unsigned long long)v.run->mmio.phys_addr);
	if ((st = finish_read(&v, 0x99aabbccddeeff00ULL)) != PASS)
		return st;
	r.memory_size = sz;
	CHECK(ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "re-add slot 1");
	munmap(m, sz);
	vm_close(&v);
	return PASS;
}

static enum status
t_dirty_log(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	size_t pages = 64, sz = pages * 4096;
	uint8_t *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap");
	uint64_t gpa = 0x400000;
	struct kvm_userspace_memory_region r = { .slot = 2, .flags = KVM_MEM_LOG_DIRTY_PAGES,
		.guest_phys_addr = gpa, .memory_size = sz, .userspace_addr = (uintptr_t)m };
	CHECK(ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) == 0, "add slot 2 with dirty logging");
	uint64_t bitmap[1] = { ~0ULL };
	struct kvm_dirty_log dl = { .slot = 2, .dirty_bitmap = bitmap };
	CHECK(ioctl(v.fd, KVM_GET_DIRTY_LOG, &dl) == 0, "KVM_GET_DIRTY_LOG (initial)");
	CHECK(bitmap[0] == 0, "initial dirty bitmap 0x%llx, want 0", (unsigned long long)bitmap[0]);
	/* guest writes to pages 2, 4, ..., 20 (10 pages, every other one starting at page 2) */
	unsigned writes = 10;
	struct kvm_regs regs = { .rdi = gpa + 2 * 4096, .rcx = writes };
	if ((st = vm_setup(&v, CODE(g_dirty), 1, &regs)) != PASS)
		return st;
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_HLT, outs);
	CHECK(outs == 1, "dirty guest did not finish (%lu outs)", outs);
	uint64_t want = 0;
	for (unsigned k = 0; k < writes; k++)
		want |= 1ULL << (2 + 2 * k);
	CHECK(ioctl(v.fd, KVM_GET_DIRTY_LOG, &dl) == 0, "KVM_GET_DIRTY_LOG");
	CHECK(bitmap[0] == want, "dirty bitmap 0x%llx, want 0x%llx", (unsigned long long)bitmap[0],
	    (unsigned long long)want);
	CHECK(m[2 * 4096] == writes && m[20 * 4096] == 1, "guest bytes not in user memory (%u %u)",
	    m[2 * 4096], m[20 * 4096]);
	CHECK(ioctl(v.fd, KVM_GET_DIRTY_LOG, &dl) == 0, "KVM_GET_DIRTY_LOG (again)");
	CHECK(bitmap[0] == 0, "dirty bitmap not cleared: 0x%llx", (unsigned long long)bitmap[0]);
	dl.slot = 3;
	EXPECT_ERRNO(ioctl(v.fd, KVM_GET_DIRTY_LOG, &dl), ENOENT, "KVM_GET_DIRTY_LOG on an empty slot");
	dl.slot = 0;
	EXPECT_ERRNO(ioctl(v.fd, KVM_GET_DIRTY_LOG, &dl), ENOENT, "KVM_GET_DIRTY_LOG on a slot without logging");
	munmap(m, sz);
	vm_close(&v);
	return PASS;
}

static enum status
t_immediate_exit(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { 0 };
	if ((st = vm_setup(&v, CODE(g_pio_long), 1, &regs)) != PASS)
		return st;
	v.run->immediate_exit = 1;
	errno = 0;
	int r = ioctl(v.vcpu, KVM_RUN, 0);
	if (r < 0 && (errno == ENOSYS || errno == EOPNOTSUPP || errno == ENODEV)) {
		failf("KVM_RUN unsupported: %s", strerror(errno));
		return UNSUPPORTED;
	}
	CHECK(r == -1 && errno == EINTR, "KVM_RUN with immediate_exit returned %d", r);
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0, "KVM_GET_REGS");
	CHECK(regs.rip == GUEST_CODE, "guest ran despite immediate_exit: rip 0x%llx", (unsigned long long)regs.rip);
	v.run->immediate_exit = 0;
	regs.rcx = 1;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0, "KVM_SET_REGS");
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_IO, outs);
	CHECK(outs == 1, "%lu outs after clearing immediate_exit, want 1", outs);
	vm_close(&v);
	return PASS;
}

static struct kvm_run *kick_run;
static void
on_kick(int sig)
{
	(void)sig;
	kick_run->immediate_exit = 1;
}

struct kicker { pthread_t target; double sent; };
static void *
kicker_main(void *arg)
{
	struct kicker *k = arg;
	struct timespec ts = { 0, 200 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	k->sent = now();
	pthread_kill(k->target, SIGUSR1);
	return NULL;
}

static enum status
t_signal_kick(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { 0 };
	if ((st = vm_setup(&v, CODE(g_spin), 1, &regs)) != PASS)
		return st;
	/* IF=1 while spinning: nothing is injected without an irqchip, but emulators may treat a
	 * jump-to-self with interrupts off as a dead loop (Bochs never left it). */
	regs.rflags = 0x202;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0, "KVM_SET_REGS");
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_IO, outs); /* the guest has started */
	kick_run = v.run;
	struct sigaction sa = { .sa_handler = on_kick };
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	struct kicker k = { .target = pthread_self() };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, kicker_main, &k) == 0, "pthread_create");
	errno = 0;
	int r = ioctl(v.vcpu, KVM_RUN, 0); /* spins until the kick */
	int e = errno;
	double lat = now() - k.sent;
	pthread_join(t, NULL);
	errno = e;
	CHECK(r == -1 && e == EINTR, "spinning KVM_RUN after a signal returned %d", r);
	CHECK(v.run->exit_reason == KVM_EXIT_INTR, "exit_reason %s after the kick, want INTR",
	    exit_name((int)v.run->exit_reason));
	metric("kick_ms", "%.2f", lat * 1e3);
	vm_close(&v);
	return PASS;
}

static enum status
t_many_vms(void)
{
	enum { NVM = 16 };
	static struct vm vms[NVM];
	double t0 = now();
	for (int i = 0; i < NVM; i++) {
		enum status st = vm_open(&vms[i]);
		if (st != PASS)
			return st;
		struct kvm_regs regs = { .rcx = (uint64_t)i + 1 };
		if ((st = vm_setup(&vms[i], CODE(g_pio_long), 1, &regs)) != PASS)
			return st;
	}
	/* run them interleaved: each counts its own outs */
	for (int i = 0; i < NVM; i++) {
		unsigned long outs = 0;
		RUN_TO(&vms[i], KVM_EXIT_IO, outs);
		CHECK(outs == (unsigned long)i + 1, "VM %d counted %lu outs, want %d", i, outs, i + 1);
	}
	for (int i = NVM - 1; i >= 0; i--)
		vm_close(&vms[i]);
	metric("vms", "%d", NVM);
	metric("secs", "%.3f", now() - t0);
	return PASS;
}

/* The vCPU and its mapping outlive the VM and /dev/kvm descriptors. */
static enum status
t_lifetime(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	struct kvm_regs regs = { .rcx = 3 };
	if ((st = vm_setup(&v, CODE(g_pio_long), 1, &regs)) != PASS)
		return st;
	close(v.fd);
	close(v.kvm);
	v.fd = v.kvm = -1;
	unsigned long outs = 0;
	RUN_TO(&v, KVM_EXIT_IO, outs);
	CHECK(outs == 3, "%lu outs after closing the VM fd, want 3", outs);
	close(v.vcpu);
	v.vcpu = -1;
	CHECK(v.run->exit_reason == KVM_EXIT_IO, "kvm_run page changed after closing the vCPU fd");
	vm_close(&v);
	return PASS;
}

/* ---- event notifiers: KVM_IOEVENTFD, KVM_IRQFD ---- */

/* One KVM_IOEVENTFD call. */
static int
ioev(int vm, uint64_t addr, uint32_t len, int fd, uint32_t flags, uint64_t datamatch)
{
	struct kvm_ioeventfd a = { .datamatch = datamatch, .addr = addr, .len = len, .fd = fd,
		.flags = flags };
	return ioctl(vm, KVM_IOEVENTFD, &a);
}

/* Read and reset an eventfd's counter (non-blocking: 0 when it was not signaled). */
static uint64_t
ev_take(int fd)
{
	uint64_t n = 0;
	if (read(fd, &n, sizeof n) != (ssize_t)sizeof n)
		return 0;
	return n;
}

/* A guest write that exited to userspace (reason 0: it did not exit). */
struct wexit {
	int reason;
	uint64_t addr;
	uint32_t len;
	uint64_t data;
};

/* Run g_ioev through its next write and the sync `out 0x10` that follows it; *w gets the
 * write's own exit, if it had one. */
static enum status
ioev_step(struct vm *v, struct wexit *w)
{
	enum status st;
	memset(w, 0, sizeof *w);
	for (int i = 0; i < 2; i++) {
		int r = vm_run(v, &st);
		if (r < 0)
			return st;
		if (r == KVM_EXIT_IO && v->run->io.port == PORT_COUNT && v->run->io.direction == KVM_EXIT_IO_OUT)
			return PASS;
		if (r == KVM_EXIT_MMIO && v->run->mmio.is_write && v->run->mmio.len <= 8) {
			w->reason = r;
			w->addr = v->run->mmio.phys_addr;
			w->len = v->run->mmio.len;
			memcpy(&w->data, v->run->mmio.data, w->len);
		} else if (r == KVM_EXIT_IO && v->run->io.direction == KVM_EXIT_IO_OUT) {
			w->reason = r;
			w->addr = v->run->io.port;
			w->len = v->run->io.size;
			w->data = io_u32(v);
		} else {
			return exit_fail(v, r, KVM_EXIT_IO);
		}
	}
	return failf("a second exit (%s) before the sync out", exit_name((int)v->run->exit_reason));
}

/*
 * KVM_IOEVENTFD on the MMIO and PIO buses: matching guest writes signal their eventfd and do not
 * exit (with and without DATAMATCH, any-length MMIO); a write that does not match exits as
 * usual; deassigning restores every exit; Linux's errnos for bad requests.
 */
static enum status
t_ioeventfd(void)
{
	struct vm v;
	enum status st = vm_open(&v);
	if (st != PASS)
		return st;
	int r = ioctl(v.fd, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD);
	CHECK(r > 0, "KVM_CHECK_EXTENSION(IOEVENTFD) = %d", r);
	r = ioctl(v.fd, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_ANY_LENGTH);
	CHECK(r > 0, "KVM_CHECK_EXTENSION(IOEVENTFD_ANY_LENGTH) = %d", r);

	const uint64_t A = MMIO_GPA, B = MMIO_GPA + 0x100, C = MMIO_GPA + 0x200;
	const uint16_t P = 0x600, Q = 0x50;
	const uint32_t V1 = 0x11223344, V2 = 0x55667788;
	enum { EA, EB, EC, EP, EQ, NEV };
	static const char *evname[NEV] = { "A", "B", "C", "P", "Q" };
	int ev[NEV];
	for (int i = 0; i < NEV; i++) {
		ev[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		CHECK(ev[i] >= 0, "eventfd");
	}
	const uint32_t DM = KVM_IOEVENTFD_FLAG_DATAMATCH, PIO = KVM_IOEVENTFD_FLAG_PIO,
		       DE = KVM_IOEVENTFD_FLAG_DEASSIGN;
	/* the registrations: A 4 bytes = V1; B 4 bytes; C any length; P 2 bytes = low half of V1; Q 4 bytes */
	struct { uint64_t addr; uint32_t len, flags; uint64_t dm; } reg[NEV] = {
		{ A, 4, DM, V1 }, { B, 4, 0, 0 }, { C, 0, 0, 0 }, { P, 2, PIO | DM, V1 & 0xffff }, { Q, 4, PIO, 0 },
	};
	for (int i = 0; i < NEV; i++)
		CHECK(ioev(v.fd, reg[i].addr, reg[i].len, ev[i], reg[i].flags, reg[i].dm) == 0,
		    "KVM_IOEVENTFD assign %s", evname[i]);

	/* bad requests */
	EXPECT_ERRNO(ioev(v.fd, A, 4, ev[EA], DM, V1), EEXIST, "the same ioeventfd twice");
	EXPECT_ERRNO(ioev(v.fd, A, 4, ev[EB], 0, 0), EEXIST, "a wildcard over a datamatch at the same address");
	EXPECT_ERRNO(ioev(v.fd, C, 0, ev[EB], 0, 0), EEXIST, "any-length twice at the same address");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 3, ev[EA], 0, 0), EINVAL, "len 3");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 4, ev[EA], 0x100, 0), EINVAL, "unknown flag 0x100");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 0, ev[EA], DM, 1), EINVAL, "len 0 with DATAMATCH");
	EXPECT_ERRNO(ioev(v.fd, ~0ULL - 1, 4, ev[EA], 0, 0), EINVAL, "address range wraps");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 4, -1, 0, 0), EBADF, "fd -1");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 4, v.kvm, 0, 0), EINVAL, "an fd that is not an eventfd");
	EXPECT_ERRNO(ioev(v.fd, A, 4, ev[EA], DM | DE, V2), ENOENT, "deassign with another datamatch");
	EXPECT_ERRNO(ioev(v.fd, A, 4, ev[EB], DM | DE, V1), ENOENT, "deassign with another eventfd");
	EXPECT_ERRNO(ioev(v.fd, MMIO_GPA + 0x300, 4, ev[EA], DE, 0), ENOENT, "deassign of an unknown address");
	EXPECT_ERRNO(ioev(v.fd, B, 4, ev[EB], PIO | DE, 0), ENOENT, "deassign on the other bus");

	struct kvm_regs regs = { .rdi = A, .rdx = P, .rax = V1, .rbx = V2 };
	if ((st = vm_setup(&v, CODE(g_ioev), 1, &regs)) != PASS)
		return st;
	/* per guest write: the exit it makes when nothing matches, and the eventfd that counts it */
	static const struct { int mmio; uint64_t addr; uint32_t len; uint64_t data; int ev; } op[] = {
		{ 1, MMIO_GPA, 4, 0x11223344, EA },
		{ 1, MMIO_GPA, 4, 0x55667788, -1 },
		{ 1, MMIO_GPA + 0x100, 4, 0x55667788, EB },
		{ 1, MMIO_GPA + 0x200, 1, 0x44, EC },
		{ 1, MMIO_GPA + 0x200, 8, 0x11223344, EC },
		{ 0, 0x600, 2, 0x3344, EP },
		{ 0, 0x600, 2, 0x7788, -1 },
		{ 0, 0x50, 4, 0x11223344, EQ },
	};
	enum { NOP = sizeof op / sizeof op[0] };
	unsigned long signals = 0;
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < NOP; i++) {
			struct wexit w;
			if ((st = ioev_step(&v, &w)) != PASS)
				return st;
			int registered = round == 0 && op[i].ev >= 0;
			if (registered && w.reason)
				return failf("round %d write %d: exit %s addr 0x%llx len %u data 0x%llx, want none (ioeventfd %s)",
				    round, i, exit_name(w.reason), (unsigned long long)w.addr, w.len,
				    (unsigned long long)w.data, evname[op[i].ev]);
			if (!registered) {
				int want = op[i].mmio ? KVM_EXIT_MMIO : KVM_EXIT_IO;
				if (w.reason != want || w.addr != op[i].addr || w.len != op[i].len || w.data != op[i].data)
					return failf("round %d write %d: exit %s addr 0x%llx len %u data 0x%llx, want %s addr 0x%llx len %u data 0x%llx",
					    round, i, w.reason ? exit_name(w.reason) : "none", (unsigned long long)w.addr,
					    w.len, (unsigned long long)w.data, exit_name(want),
					    (unsigned long long)op[i].addr, op[i].len, (unsigned long long)op[i].data);
			}
			for (int e = 0; e < NEV; e++) {
				uint64_t n = ev_take(ev[e]), want = registered && op[i].ev == e;
				if (n != want)
					return failf("round %d write %d: eventfd %s counted %llu, want %llu", round, i,
					    evname[e], (unsigned long long)n, (unsigned long long)want);
				signals += n;
			}
		}
		if (round == 0)
			for (int i = 0; i < NEV; i++)
				CHECK(ioev(v.fd, reg[i].addr, reg[i].len, ev[i], reg[i].flags | DE, reg[i].dm) == 0,
				    "KVM_IOEVENTFD deassign %s", evname[i]);
	}
	EXPECT_ERRNO(ioev(v.fd, A, 4, ev[EA], DM | DE, V1), ENOENT, "deassign twice");
	/* the same registration can be made again */
	CHECK(ioev(v.fd, A, 4, ev[EA], DM, V1) == 0, "KVM_IOEVENTFD assign A again");
	metric("signals", "%lu", signals);
	for (int i = 0; i < NEV; i++)
		close(ev[i]);
	vm_close(&v);
	return PASS;
}

#define IRQ_GSI 5
#define IRQ_VECTOR 0x40
#define APIC_GPA 0xfee00000UL
#define GUEST_PD_HIGH 0x5000UL /* maps the xAPIC page (4th GiB) */
#define GUEST_GDT 0x6000UL
#define GUEST_DATA 0x9000UL /* handler count, saved ISR and SVR */
#define GUEST_IDT 0xa000UL

static int
irqfd(int vm, int fd, uint32_t gsi, uint32_t flags, int resamplefd)
{
	struct kvm_irqfd a = { .fd = (uint32_t)fd, .gsi = gsi, .flags = flags, .resamplefd = (uint32_t)resamplefd };
	return ioctl(vm, KVM_IRQFD, &a);
}

/* A thread that (optionally) signals an eventfd after delay_ms, then kicks the vCPU thread with
 * SIGUSR1 (its handler sets immediate_exit) unless `done` is set within kick_ms. */
struct waker {
	pthread_t target;
	int efd;
	unsigned delay_ms, kick_ms;
	volatile int done;
	double wrote;
};

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void *
waker_main(void *arg)
{
	struct waker *w = arg;
	sleep_ms(w->delay_ms);
	w->wrote = now(); /* before the write: the woken vCPU thread may run first */
	if (w->efd >= 0) {
		uint64_t one = 1;
		if (write(w->efd, &one, sizeof one) != (ssize_t)sizeof one)
			perror("eventfd write");
	}
	for (unsigned t = 0; t < w->kick_ms && !w->done; t += 10)
		sleep_ms(10);
	if (!w->done)
		pthread_kill(w->target, SIGUSR1);
	return NULL;
}

/* KVM_RUN once with a waker; *r = its result, *e = errno; immediate_exit is clear after. */
static enum status
run_with_waker(struct vm *v, int efd, unsigned delay_ms, unsigned kick_ms, int *r, int *e, double *lat)
{
	struct waker w = { .target = pthread_self(), .efd = efd, .delay_ms = delay_ms, .kick_ms = kick_ms };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, waker_main, &w) == 0, "pthread_create");
	errno = 0;
	*r = ioctl(v->vcpu, KVM_RUN, 0);
	*e = errno;
	double end = now();
	w.done = 1;
	pthread_join(t, NULL);
	v->run->immediate_exit = 0;
	v->ran = 1;
	*lat = end - w.wrote;
	errno = *e;
	return PASS;
}

/*
 * KVM_IRQFD with the split irqchip: an MSI route to the in-kernel local APIC; signaling the
 * eventfd wakes the halted guest, whose handler runs for exactly that vector; after deassign a
 * signal does nothing; a notifier already signaled when it is assigned fires at once. Errnos:
 * no irqchip, the same eventfd twice, RESAMPLE without the full irqchip, bad flags, bad fd.
 */
static enum status
t_irqfd(void)
{
	struct vm v;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHECK(kvm >= 0, "open /dev/kvm");
	int r = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQFD);
	CHECK(r > 0, "KVM_CHECK_EXTENSION(IRQFD) = %d", r);
	int vm0 = ioctl(kvm, KVM_CREATE_VM, 0);
	CHECK(vm0 >= 0, "KVM_CREATE_VM");
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), efd2 = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	CHECK(efd >= 0 && efd2 >= 0, "eventfd");
	EXPECT_ERRNO(irqfd(vm0, efd, IRQ_GSI, 0, 0), EINVAL, "KVM_IRQFD without an in-kernel irqchip");
	close(vm0);
	close(kvm);

	enum status st = vm_open2(&v, 1);
	if (st != PASS)
		return st;
	r = ioctl(v.fd, KVM_CHECK_EXTENSION, KVM_CAP_SPLIT_IRQCHIP);
	CHECK(r > 0, "KVM_CHECK_EXTENSION(SPLIT_IRQCHIP) = %d", r);
	struct { struct kvm_irq_routing r; struct kvm_irq_routing_entry e[1]; } rt;
	memset(&rt, 0, sizeof rt);
	rt.r.nr = 1;
	rt.e[0].gsi = IRQ_GSI;
	rt.e[0].type = KVM_IRQ_ROUTING_MSI;
	rt.e[0].u.msi.address_lo = APIC_GPA; /* destination APIC ID 0, physical */
	rt.e[0].u.msi.data = IRQ_VECTOR;     /* fixed, edge */
	CHECK(ioctl(v.fd, KVM_SET_GSI_ROUTING, &rt) == 0, "KVM_SET_GSI_ROUTING (one MSI route)");
	CHECK(irqfd(v.fd, efd, IRQ_GSI, 0, 0) == 0, "KVM_IRQFD assign");
	EXPECT_ERRNO(irqfd(v.fd, efd, IRQ_GSI + 1, 0, 0), EBUSY, "KVM_IRQFD: the same eventfd for a second GSI");
	EXPECT_ERRNO(irqfd(v.fd, efd2, IRQ_GSI + 1, KVM_IRQFD_FLAG_RESAMPLE, efd2), EINVAL,
	    "KVM_IRQFD RESAMPLE with the split irqchip");
	EXPECT_ERRNO(irqfd(v.fd, efd2, IRQ_GSI + 1, 0x80, 0), EINVAL, "KVM_IRQFD unknown flag 0x80");
	EXPECT_ERRNO(irqfd(v.fd, -1, IRQ_GSI + 1, 0, 0), EBADF, "KVM_IRQFD fd -1");

	struct kvm_regs regs = { .rdi = APIC_GPA };
	if ((st = vm_setup(&v, CODE(g_irq), 1, &regs)) != PASS)
		return st;
	/* map the xAPIC page (uncached), a GDT for iretq, and an IDT with only IRQ_VECTOR present */
	((uint64_t *)(v.mem + GUEST_PDPT))[APIC_GPA >> 30] = GUEST_PD_HIGH | 3;
	((uint64_t *)(v.mem + GUEST_PD_HIGH))[(APIC_GPA >> 21) & 511] = APIC_GPA | 0x93;
	uint64_t *gdt = (uint64_t *)(v.mem + GUEST_GDT);
	gdt[1] = 0x00af9b000000ffffULL; /* 64-bit code */
	gdt[2] = 0x00cf93000000ffffULL; /* data */
	uint64_t h = GUEST_CODE + (uint64_t)(g_irq_handler - g_irq_start);
	uint8_t *gate = v.mem + GUEST_IDT + IRQ_VECTOR * 16;
	uint32_t w0 = (uint32_t)(h & 0xffff) | 8u << 16, w1 = (uint32_t)(h & 0xffff0000) | 0x8e00, w2 = (uint32_t)(h >> 32);
	memcpy(gate, &w0, 4);
	memcpy(gate + 4, &w1, 4);
	memcpy(gate + 8, &w2, 4);
	struct kvm_sregs s;
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s) == 0, "KVM_GET_SREGS");
	s.gdt.base = GUEST_GDT;
	s.gdt.limit = 23;
	s.idt.base = GUEST_IDT;
	s.idt.limit = 0xfff;
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0, "KVM_SET_SREGS (GDT, IDT)");

	kick_run = v.run;
	struct sigaction sa = { .sa_handler = on_kick };
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	volatile uint32_t *count = (volatile uint32_t *)(v.mem + GUEST_DATA);
	volatile uint32_t *isr = (volatile uint32_t *)(v.mem + GUEST_DATA + 4);
	unsigned long outs = 0;
	int e;
	double lat;

	/* 1: signal while the guest halts: the handler runs once, with the vector in service */
	RUN_TO(&v, KVM_EXIT_IO, outs);
	EXPECT_IO(&v, PORT_VALUE, KVM_EXIT_IO_OUT, 1);
	if ((st = run_with_waker(&v, efd, 200, 10000, &r, &e, &lat)) != PASS)
		return st;
	if (r < 0)
		return failf("the guest was not woken by the irqfd within 10 s: KVM_RUN %d errno %d (%s), exit %s, handler count %u",
		    r, e, strerror(e), exit_name((int)v.run->exit_reason), *count);
	if (r != 0 || v.run->exit_reason != KVM_EXIT_IO)
		return exit_fail(&v, (int)v.run->exit_reason, KVM_EXIT_IO);
	EXPECT_IO(&v, PORT_RESULT, KVM_EXIT_IO_OUT, 4);
	CHECK(io_u32(&v) == 1, "handler count %u after one signal, want 1", io_u32(&v));
	CHECK(isr[1] == 0x1ff, "SVR read in the handler = 0x%x, want 0x1ff (as the guest wrote it)", isr[1]);
	CHECK(*isr & 1, "ISR bits 64..95 in the handler = 0x%x, want vector 0x%x in service", *isr, IRQ_VECTOR);
	metric("wake_ms", "%.2f", lat * 1e3);

	/* 2: deassigned: a signal does not reach the halted guest (the waker kicks it out) */
	RUN_TO(&v, KVM_EXIT_IO, outs);
	EXPECT_IO(&v, PORT_VALUE, KVM_EXIT_IO_OUT, 1);
	CHECK(irqfd(v.fd, efd, IRQ_GSI, KVM_IRQFD_FLAG_DEASSIGN, 0) == 0, "KVM_IRQFD deassign");
	if ((st = run_with_waker(&v, efd, 100, 500, &r, &e, &lat)) != PASS)
		return st;
	CHECK(r == -1 && e == EINTR, "KVM_RUN after a signal of a deassigned irqfd returned %d (exit %s, handler count %u), want EINTR",
	    r, exit_name((int)v.run->exit_reason), *count);
	CHECK(*count == 1, "handler count %u after a deassigned signal, want 1", *count);

	/* 3: assigning a notifier that is already signaled fires once right away */
	CHECK(irqfd(v.fd, efd, IRQ_GSI, 0, 0) == 0, "KVM_IRQFD assign again (eventfd already signaled)");
	if ((st = run_with_waker(&v, -1, 0, 10000, &r, &e, &lat)) != PASS)
		return st;
	if (r < 0)
		return failf("an irqfd assigned while signaled did not fire within 10 s: KVM_RUN %d errno %d (%s), handler count %u",
		    r, e, strerror(e), *count);
	if (v.run->exit_reason != KVM_EXIT_IO)
		return exit_fail(&v, (int)v.run->exit_reason, KVM_EXIT_IO);
	EXPECT_IO(&v, PORT_RESULT, KVM_EXIT_IO_OUT, 4);
	CHECK(io_u32(&v) == 2, "handler count %u after the second interrupt, want 2", io_u32(&v));
	CHECK(irqfd(v.fd, efd, IRQ_GSI, KVM_IRQFD_FLAG_DEASSIGN, 0) == 0, "KVM_IRQFD deassign again");
	close(efd);
	close(efd2);
	vm_close(&v);
	return PASS;
}

static enum status
t_bad_input(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHECK(kvm >= 0, "open /dev/kvm");
	EXPECT_ERRNO(ioctl(kvm, _IO(KVMIO, 0xfe), 0), EINVAL, "unknown system ioctl");
	EXPECT_ERRNO(ioctl(kvm, _IO(0x55, 0x01), 0), EINVAL, "foreign system ioctl");
	EXPECT_ERRNO(ioctl(kvm, KVM_CREATE_VM, 0xdead), EINVAL, "KVM_CREATE_VM bad type");
	EXPECT_ERRNO(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, (void *)8), EFAULT, "KVM_GET_MSR_INDEX_LIST bad pointer");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	CHECK(vm >= 0, "KVM_CREATE_VM");
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, (void *)8), EFAULT, "SET_USER_MEMORY_REGION bad pointer");
	uint8_t *m = mmap(NULL, 0x4000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap");
	struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0x1000, .memory_size = 0x2000,
		.userspace_addr = (uintptr_t)m };
	r.guest_phys_addr = 0x1800;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EINVAL, "memslot gpa not page aligned");
	r.guest_phys_addr = 0x1000;
	r.memory_size = 0x1800;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EINVAL, "memslot size not page multiple");
	r.memory_size = 0x2000;
	r.userspace_addr = (uintptr_t)m + 8;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EINVAL, "memslot uaddr not page aligned");
	r.userspace_addr = (uintptr_t)m;
	r.flags = 0x80;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EINVAL, "memslot unknown flag");
	r.flags = 0;
	r.slot = 0x7fff;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EINVAL, "memslot id out of range");
	r.slot = 0;
	CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) == 0, "memslot 0");
	r.slot = 1;
	r.guest_phys_addr = 0x2000;
	EXPECT_ERRNO(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), EEXIST, "overlapping memslot");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0, "KVM_CREATE_VCPU 0");
	EXPECT_ERRNO(ioctl(vm, KVM_CREATE_VCPU, 0), EEXIST, "duplicate vCPU id");
	int maxid = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID);
	if (maxid <= 0)
		maxid = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	EXPECT_ERRNO(ioctl(vm, KVM_CREATE_VCPU, maxid), EINVAL, "vCPU id = KVM_CAP_MAX_VCPU_ID");
	EXPECT_ERRNO(ioctl(vcpu, KVM_GET_REGS, (void *)8), EFAULT, "KVM_GET_REGS bad pointer");
	EXPECT_ERRNO(ioctl(vcpu, KVM_SET_SREGS, (void *)8), EFAULT, "KVM_SET_SREGS bad pointer");
	struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[1]; } cp = { .c.nent = 0x7fffffff };
	errno = 0;
	int rr = ioctl(vcpu, KVM_SET_CPUID2, &cp);
	CHECK(rr == -1 && (errno == E2BIG || errno == EINVAL || errno == ENOMEM),
	    "KVM_SET_CPUID2 nent 0x7fffffff returned %d", rr);
	struct { struct kvm_msrs h; struct kvm_msr_entry e[1]; } ms = { .h.nmsrs = 0x7fffffff };
	errno = 0;
	rr = ioctl(vcpu, KVM_GET_MSRS, &ms);
	CHECK(rr == -1 && (errno == E2BIG || errno == EINVAL || errno == ENOMEM || errno == EFAULT),
	    "KVM_GET_MSRS nmsrs 0x7fffffff returned %d", rr);
	EXPECT_ERRNO(ioctl(vm, KVM_GET_API_VERSION, 0), ENOTTY, "system ioctl on a VM fd");
	close(vcpu);
	close(vm);
	munmap(m, 0x4000);
	close(kvm);
	return PASS;
}

/* ---- driver ---- */

static const struct test {
	const char *name;
	enum status (*fn)(void);
} tests[] = {
	{ "api", t_api },
	{ "regs", t_regs },
	{ "bad_input", t_bad_input },
	{ "pio_real", t_pio_real },
	{ "pio_long", t_pio_long },
	{ "mmio", t_mmio },
	{ "hlt", t_hlt },
	{ "cpuid", t_cpuid },
	{ "msr", t_msr },
	{ "memslot", t_memslot },
	{ "dirty_log", t_dirty_log },
	{ "immediate_exit", t_immediate_exit },
	{ "signal_kick", t_signal_kick },
	{ "many_vms", t_many_vms },
	{ "lifetime", t_lifetime },
	{ "ioeventfd", t_ioeventfd },
	{ "irqfd", t_irqfd },
};
enum { NTESTS = sizeof tests / sizeof tests[0] };

/* Run one test in a child with a time limit; prints its RESULT line; returns its status. */
static enum status
run_one(const struct test *t, unsigned timeout)
{
	printf("@@ BEGIN hv=%s name=%s\n", hv, t->name);
	fflush(stdout);
	int pfd[2];
	if (pipe(pfd) < 0) {
		perror("pipe");
		exit(1);
	}
	double t0 = now();
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		alarm(timeout);
		msg[0] = metrics[0] = 0;
		enum status st = t->fn();
		dprintf(pfd[1], "status=%s%s%s%s%s", status_name[st], metrics, msg[0] ? " msg=\"" : "", msg,
		    msg[0] ? "\"" : "");
		_exit(0);
	}
	close(pfd[1]);
	char buf[1100];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof buf - 1 && (n = read(pfd[0], buf + len, sizeof buf - 1 - len)) > 0)
		len += (size_t)n;
	buf[len] = 0;
	close(pfd[0]);
	int ws;
	waitpid(pid, &ws, 0);
	double dt = now() - t0;
	enum status st = FAIL;
	if (len == 0) {
		if (WIFSIGNALED(ws) && WTERMSIG(ws) == SIGALRM)
			snprintf(buf, sizeof buf, "status=FAIL msg=\"timeout after %u s\"", timeout);
		else if (WIFSIGNALED(ws))
			snprintf(buf, sizeof buf, "status=FAIL msg=\"test died: signal %d (%s)\"", WTERMSIG(ws),
			    strsignal(WTERMSIG(ws)));
		else
			snprintf(buf, sizeof buf, "status=FAIL msg=\"test exited %d without a result\"",
			    WEXITSTATUS(ws));
	} else if (!strncmp(buf, "status=PASS", 11)) {
		st = PASS;
	} else if (!strncmp(buf, "status=UNSUPPORTED", 18)) {
		st = UNSUPPORTED;
	}
	printf("@@ RESULT hv=%s name=%s %s wall_ms=%.1f\n", hv, t->name, buf, dt * 1e3);
	fflush(stdout);
	return st;
}

int
main(int argc, char **argv)
{
	unsigned timeout = 120;
	int first = 1, list = 0;
	while (first < argc && argv[first][0] == '-') {
		if (!strcmp(argv[first], "--list")) {
			list = 1;
			first++;
		} else if (!strcmp(argv[first], "--hv") && first + 1 < argc) {
			hv = argv[first + 1];
			first += 2;
		} else if (!strcmp(argv[first], "-n") && first + 1 < argc) {
			n_exits = strtoul(argv[first + 1], NULL, 0);
			first += 2;
		} else if (!strcmp(argv[first], "-t") && first + 1 < argc) {
			timeout = (unsigned)strtoul(argv[first + 1], NULL, 0);
			first += 2;
		} else {
			fprintf(stderr, "usage: kvmsuite [--hv TAG] [-n EXITS] [-t SECONDS] [--list] [TEST...]\n");
			return 2;
		}
	}
	if (n_exits == 0)
		n_exits = 1;
	if (list) {
		for (int i = 0; i < NTESTS; i++)
			printf("%s\n", tests[i].name);
		return 0;
	}
	int fails = 0, ran = 0;
	for (int i = 0; i < NTESTS; i++) {
		int sel = first >= argc;
		for (int a = first; a < argc; a++)
			sel |= !strcmp(argv[a], tests[i].name);
		if (!sel)
			continue;
		ran++;
		fails += run_one(&tests[i], timeout) != PASS;
	}
	for (int a = first; a < argc; a++) {
		int known = 0;
		for (int i = 0; i < NTESTS; i++)
			known |= !strcmp(argv[a], tests[i].name);
		if (!known) {
			printf("@@ RESULT hv=%s name=%s status=FAIL msg=\"no such test\"\n", hv, argv[a]);
			fails++;
		}
	}
	printf("@@ SUITE hv=%s ran=%d failed=%d\n", hv, ran, fails);
	return fails ? 1 : 0;
}
