//! `KVM_IOEVENTFD` and `KVM_IRQFD` through the ioctl interface, with fake notifiers from the
//! fake host and the soft backend as the guest: Linux's errno tables, guest MMIO writes and
//! OUTs that hit (signal, no exit) or miss (normal exit), irqfd delivery of an MSI to the
//! in-kernel LAPIC, deassign, teardown with live ones (the fake host counts every notifier
//! reference and watch), and a pump thread racing assign/deassign/teardown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::{Errno, EBADF, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, ENOSPC};
use crate::eventfd::ioeventfd::NR_IOBUS_DEVS;
use crate::fake::vmm::{zeroed, Vmm};
use crate::irqchip::lapic::reg;

fn e(x: Errno) -> i64 {
    -i64::from(x.0)
}

fn ioev(v: &Vmm, vm: i64, fd: i32, addr: u64, len: u32, flags: u32, datamatch: u64) -> i64 {
    let a = v.put(&kvm_ioeventfd {
        datamatch,
        addr,
        len,
        fd,
        flags,
        ..zeroed()
    });
    v.ioctl_fd(vm, KVM_IOEVENTFD, a)
}

fn irqfd(v: &Vmm, vm: i64, fd: i32, gsi: u32, flags: u32) -> i64 {
    let a = v.put(&kvm_irqfd {
        fd: fd as u32,
        gsi,
        flags,
        ..zeroed()
    });
    v.ioctl_fd(vm, KVM_IRQFD, a)
}

const DM: u32 = KVM_IOEVENTFD_FLAG_DATAMATCH;
const PIO: u32 = KVM_IOEVENTFD_FLAG_PIO;
const DEASSIGN: u32 = KVM_IOEVENTFD_FLAG_DEASSIGN;

#[test]
fn ioeventfd_assign_rules_follow_linux() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let (a, b) = (v.host.eventfd_create(), v.host.eventfd_create());
    let bad = 1u64 << 40;
    // Argument checks (kvm_assign_ioeventfd), before the descriptor is looked at.
    for (what, len, flags, addr) in [
        ("len 3", 3, 0, 0x1000),
        ("len 16", 16, 0, 0x1000),
        ("len 0 with datamatch", 0, DM, 0x1000),
        ("unknown flag", 4, 1 << 5, 0x1000),
        ("addr + len overflows", 4, 0, u64::MAX - 2),
    ] {
        assert_eq!(ioev(&v, vm, 9999, addr, len, flags, 0), e(EINVAL), "{what}");
    }
    assert_eq!(v.ioctl_fd(vm, KVM_IOEVENTFD, bad), e(EFAULT));
    assert_eq!(ioev(&v, vm, 9999, 0x1000, 4, 0, 0), e(EBADF), "no such fd");
    assert_eq!(
        ioev(&v, vm, vm as i32, 0x1000, 4, 0, 0),
        e(EINVAL),
        "not a notifier"
    );
    // Collisions on one bus (ioeventfd_check_collision), whatever the notifier.
    assert_eq!(ioev(&v, vm, a, 0x1000, 4, DM, 1), 0);
    assert_eq!(ioev(&v, vm, b, 0x1000, 4, DM, 1), e(EEXIST), "same match");
    assert_eq!(ioev(&v, vm, b, 0x1000, 4, DM, 2), 0, "other datamatch");
    assert_eq!(ioev(&v, vm, b, 0x1000, 4, 0, 0), e(EEXIST), "wildcard");
    assert_eq!(ioev(&v, vm, b, 0x1000, 0, 0, 0), e(EEXIST), "any length");
    assert_eq!(ioev(&v, vm, b, 0x1000, 2, 0, 0), 0, "other length");
    assert_eq!(ioev(&v, vm, a, 0x1000, 4, PIO | DM, 1), 0, "other bus");
    assert_eq!(ioev(&v, vm, a, 0x2000, 0, 0, 0), 0);
    assert_eq!(ioev(&v, vm, b, 0x2000, 8, DM, 7), e(EEXIST), "under len 0");
    assert_eq!(
        ioev(&v, vm, a, u64::MAX, 0, 0, 0),
        0,
        "no overflow with len 0"
    );
    assert_eq!(
        ioev(&v, vm, a, 0, 4, KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY, 0),
        0,
        "ccw bus accepted (never written on x86)"
    );
    // Deassign: bus, notifier, address, length, datamatch flag and value must all agree.
    assert_eq!(
        ioev(&v, vm, b, 0x1000, 4, DM | DEASSIGN, 1),
        e(ENOENT),
        "other notifier"
    );
    assert_eq!(
        ioev(&v, vm, a, 0x1000, 4, DM | DEASSIGN, 3),
        e(ENOENT),
        "datamatch"
    );
    assert_eq!(
        ioev(&v, vm, a, 0x1000, 4, DEASSIGN, 1),
        e(ENOENT),
        "wildcard flag"
    );
    assert_eq!(
        ioev(&v, vm, a, 0x1000, 2, DM | DEASSIGN, 1),
        e(ENOENT),
        "length"
    );
    assert_eq!(
        ioev(&v, vm, a, 0x2000, 256, DEASSIGN, 0),
        e(ENOENT),
        "len 256 is not 0"
    );
    assert_eq!(
        ioev(&v, vm, a, 0x1000, 4, DM | PIO | DEASSIGN, 1),
        0,
        "PIO one"
    );
    assert_eq!(ioev(&v, vm, 9999, 0x1000, 4, DEASSIGN, 0), e(EBADF));
    // A second descriptor of the same notifier names the same eventfd.
    let a2 = v.host.eventfd_dup(a);
    assert_eq!(ioev(&v, vm, a2, 0x1000, 4, DM | DEASSIGN, 1), 0);
    assert_eq!(
        ioev(&v, vm, a, 0x1000, 4, DM | DEASSIGN, 1),
        e(ENOENT),
        "gone"
    );
    assert_eq!(ioev(&v, vm, b, 0x1000, 4, DM, 1), 0, "free again");
    assert!(v.host.counts().eventfd_refs > 0);
    // Teardown with live ioeventfds puts every reference.
    v.close(vm);
    v.assert_clean();
    for fd in [a, a2, b] {
        v.host.eventfd_close(fd);
    }
}

#[test]
fn ioeventfd_bus_limit_is_enospc() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let a = v.host.eventfd_create();
    for i in 0..NR_IOBUS_DEVS as u64 {
        assert_eq!(ioev(&v, vm, a, 0x10_0000 + 8 * i, 4, 0, 0), 0, "{i}");
    }
    assert_eq!(ioev(&v, vm, a, 0x1000, 4, 0, 0), e(ENOSPC));
    assert_eq!(v.host.counts().eventfd_refs, NR_IOBUS_DEVS as i64);
    assert_eq!(ioev(&v, vm, a, 0x1000, 4, PIO, 0), 0, "per bus");
    assert_eq!(ioev(&v, vm, a, 0x10_0000, 4, DEASSIGN, 0), 0);
    assert_eq!(ioev(&v, vm, a, 0x1000, 4, 0, 0), 0, "room again");
    // Out of memory while the table grows: ENOMEM, nothing leaked, the table unchanged.
    let vm2 = v.create_vm();
    v.host.fail_heap_after.store(0, Ordering::SeqCst);
    assert_eq!(ioev(&v, vm2, a, 0x1000, 4, 0, 0), e(ENOMEM));
    v.host.fail_heap_after.store(-1, Ordering::SeqCst);
    v.close(vm2);
    v.close(vm);
    v.assert_clean();
    v.host.eventfd_close(a);
}

struct Fix {
    v: Vmm,
    vm: i64,
    cpu: i64,
    run: *mut kvm_run,
}

impl Fix {
    fn new() -> Self {
        let v = Vmm::new();
        let vm = v.create_vm();
        let cpu = v.create_vcpu(vm, 0);
        let run = v.run_page(cpu);
        Fix { v, vm, cpu, run }
    }
    fn run(&self) -> i64 {
        self.v.ioctl_fd(self.cpu, KVM_RUN, 0)
    }
    fn r(&self) -> &kvm_run {
        // SAFETY: the run page lives as long as the vCPU; single-threaded here.
        unsafe { &*self.run }
    }
    fn out(port: u16, size: u8, data: u32) -> (Exit, u64) {
        (
            Exit::Io {
                port,
                size,
                out: true,
                data,
            },
            1,
        )
    }
    fn mmio(gpa: u64, len: u8, write: bool, val: u64) -> (Exit, u64) {
        (
            Exit::Mmio {
                gpa,
                len,
                write,
                data: val.to_le_bytes(),
            },
            3,
        )
    }
}

#[test]
fn guest_out_that_hits_signals_without_an_exit() {
    let f = Fix::new();
    let (n, any) = (f.v.host.eventfd_create(), f.v.host.eventfd_create());
    // virtio-pci legacy notify: 2 bytes at the port, datamatch = queue index.
    assert_eq!(ioev(&f.v, f.vm, n, 0xc050, 2, PIO | DM, 1), 0);
    // Any length on the PIO bus (Linux allows it there too).
    assert_eq!(ioev(&f.v, f.vm, any, 0x510, 0, PIO, 0), 0);
    let rip0 = f.v.regs(f.cpu).rip;
    f.v.script(
        0,
        &[
            Fix::out(0xc050, 2, 1),
            Fix::out(0x510, 1, 0xff),
            Fix::out(0x510, 4, 0),
            Fix::out(0xc050, 2, 2),
        ],
    );
    assert_eq!(f.run(), 0);
    // The first three completed in the kernel; the fourth (queue 2) exits normally.
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let io = *f.r().u.io();
    assert_eq!(
        (io.port, io.size, io.direction),
        (0xc050, 2, KVM_EXIT_IO_OUT)
    );
    assert_eq!(
        f.v.regs(f.cpu).rip,
        rip0 + 3,
        "three OUTs retired in the kernel"
    );
    assert_eq!(f.v.host.eventfd_read(n), 1);
    assert_eq!(f.v.host.eventfd_read(any), 2);
    // An OUT of 1 byte at the 2-byte notify port misses too.
    f.v.script(0, &[Fix::out(0xc050, 1, 1)]);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    assert_eq!(f.r().u.io().size, 1);
    assert_eq!(f.v.host.eventfd_read(n), 0);
    f.v.close(f.cpu);
    f.v.close(f.vm);
    f.v.assert_clean();
    f.v.host.eventfd_close(n);
    f.v.host.eventfd_close(any);
}

#[test]
fn guest_mmio_write_that_hits_signals_without_an_exit() {
    let f = Fix::new();
    let (q0, q1, any) = (
        f.v.host.eventfd_create(),
        f.v.host.eventfd_create(),
        f.v.host.eventfd_create(),
    );
    const NOTIFY: u64 = 0xfebf_3000;
    assert_eq!(ioev(&f.v, f.vm, q0, NOTIFY, 2, DM, 0), 0);
    assert_eq!(ioev(&f.v, f.vm, q1, NOTIFY, 2, DM, 1), 0);
    // virtio-pci modern with KVM_CAP_IOEVENTFD_ANY_LENGTH: length 0.
    assert_eq!(ioev(&f.v, f.vm, any, NOTIFY + 4, 0, 0, 0), 0);
    f.v.script(
        0,
        &[
            Fix::mmio(NOTIFY, 2, true, 1),
            Fix::mmio(NOTIFY, 2, true, 0),
            Fix::mmio(NOTIFY + 4, 4, true, 0xdead_beef),
            Fix::mmio(NOTIFY + 4, 1, true, 0),
            Fix::mmio(NOTIFY + 4, 8, false, 0),
        ],
    );
    assert_eq!(f.run(), 0);
    // Reads never hit: the fifth exits as an MMIO read.
    let m = *f.r().u.mmio();
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    assert_eq!((m.phys_addr, m.len, m.is_write), (NOTIFY + 4, 8, 0));
    assert_eq!([q0, q1, any].map(|fd| f.v.host.eventfd_read(fd)), [1, 1, 2]);
    // Complete the read; a datamatch miss then exits with its data.
    f.v.script(0, &[Fix::mmio(NOTIFY, 2, true, 7)]);
    assert_eq!(f.run(), 0);
    let m = *f.r().u.mmio();
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    assert_eq!(
        (m.phys_addr, m.len, m.is_write, m.data[0]),
        (NOTIFY, 2, 1, 7)
    );
    // Deassigned: the same write exits.
    assert_eq!(ioev(&f.v, f.vm, q1, NOTIFY, 2, DM | DEASSIGN, 1), 0);
    f.v.script(0, &[Fix::mmio(NOTIFY, 2, true, 1)]);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    assert_eq!(f.v.host.eventfd_read(q1), 0);
    assert_eq!(f.v.host.eventfd_signals.load(Ordering::SeqCst), 4);
    f.v.close(f.cpu);
    f.v.close(f.vm);
    f.v.assert_clean();
    for fd in [q0, q1, any] {
        f.v.host.eventfd_close(fd);
    }
}

fn enable_split(v: &Vmm, vm: i64) {
    let mut c: kvm_enable_cap = zeroed();
    c.cap = KVM_CAP_SPLIT_IRQCHIP;
    c.args[0] = 24;
    let a = v.put(&c);
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, a), 0);
}

/// `KVM_SET_GSI_ROUTING` with MSI routes (gsi, APIC id, vector).
fn routes(v: &Vmm, vm: i64, r: &[(u32, u32, u32)]) {
    let mut b = (r.len() as u32).to_le_bytes().to_vec();
    b.extend([0u8; 4]);
    for &(gsi, dest, vector) in r {
        let mut en: kvm_irq_routing_entry = zeroed();
        en.gsi = gsi;
        en.r#type = KVM_IRQ_ROUTING_MSI;
        en.u.msi_mut().address_lo = 0xfee0_0000 | (dest << 12);
        en.u.msi_mut().data = vector;
        b.extend(zerocopy::IntoBytes::as_bytes(&en));
    }
    let a = v.buf(b.len());
    v.host.user_write(a, &b);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, a), 0);
}

fn lapic(v: &Vmm, cpu: i64) -> Vec<u8> {
    let a = v.buf(1024);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_LAPIC, a), 0);
    v.host.user_read(a, 1024)
}

fn irr(v: &Vmm, cpu: i64, vector: u8) -> bool {
    let p = lapic(v, cpu);
    let off = (reg::IRR + u32::from(vector >> 5) * 0x10) as usize;
    u32::from_le_bytes(p[off..off + 4].try_into().unwrap()) & (1 << (vector & 31)) != 0
}

/// A split-irqchip VM with one vCPU whose APIC is software-enabled.
fn split_fix() -> Fix {
    let v = Vmm::new();
    let vm = v.create_vm();
    enable_split(&v, vm);
    let cpu = v.create_vcpu(vm, 0);
    let mut p = lapic(&v, cpu);
    p[reg::SPIV as usize..reg::SPIV as usize + 4].copy_from_slice(&0x1ffu32.to_le_bytes());
    let a = v.buf(1024);
    v.host.user_write(a, &p);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_LAPIC, a), 0);
    let run = v.run_page(cpu);
    Fix { v, vm, cpu, run }
}

#[test]
fn irqfd_rules_follow_linux() {
    let v = Vmm::new();
    let vm = v.create_vm();
    let (a, b) = (v.host.eventfd_create(), v.host.eventfd_create());
    assert_eq!(irqfd(&v, vm, a, 5, 0), e(EINVAL), "no in-kernel irqchip");
    assert_eq!(v.ioctl_fd(vm, KVM_IRQFD, 1 << 40), e(EFAULT));
    enable_split(&v, vm);
    assert_eq!(irqfd(&v, vm, a, 5, 1 << 2), e(EINVAL), "unknown flag");
    assert_eq!(
        irqfd(&v, vm, a, 4096, 0),
        e(EINVAL),
        "GSI >= KVM_MAX_IRQ_ROUTES"
    );
    assert_eq!(
        irqfd(&v, vm, a, 4096, KVM_IRQFD_FLAG_DEASSIGN),
        e(EINVAL),
        "also for deassign"
    );
    assert_eq!(
        irqfd(&v, vm, a, 5, KVM_IRQFD_FLAG_RESAMPLE),
        e(EINVAL),
        "resample needs the full irqchip"
    );
    assert_eq!(irqfd(&v, vm, 9999, 5, 0), e(EBADF));
    assert_eq!(irqfd(&v, vm, vm as i32, 5, 0), e(EINVAL), "not a notifier");
    assert_eq!(irqfd(&v, vm, a, 5, 0), 0);
    assert_eq!(irqfd(&v, vm, a, 6, 0), e(EBUSY), "one GSI per notifier");
    let a2 = v.host.eventfd_dup(a);
    assert_eq!(irqfd(&v, vm, a2, 7, 0), e(EBUSY), "the same notifier");
    assert_eq!(irqfd(&v, vm, b, 5, 0), 0, "two notifiers on one GSI");
    assert_eq!(v.host.eventfd_watchers(a), 1);
    // Deassign by (notifier, GSI); nothing matching is still 0.
    assert_eq!(irqfd(&v, vm, a, 6, KVM_IRQFD_FLAG_DEASSIGN), 0);
    assert_eq!(v.host.eventfd_watchers(a), 1);
    assert_eq!(irqfd(&v, vm, 9999, 5, KVM_IRQFD_FLAG_DEASSIGN), e(EBADF));
    assert_eq!(irqfd(&v, vm, a2, 5, KVM_IRQFD_FLAG_DEASSIGN), 0);
    assert_eq!(v.host.eventfd_watchers(a), 0);
    assert_eq!(irqfd(&v, vm, a, 6, 0), 0, "free again");
    // Out of memory: the target allocation, then the watch.
    v.host.fail_heap_after.store(0, Ordering::SeqCst);
    assert_eq!(irqfd(&v, vm, a2, 9, KVM_IRQFD_FLAG_DEASSIGN), 0);
    v.host.fail_heap_after.store(-1, Ordering::SeqCst);
    let c = v.host.eventfd_create();
    v.host.fail_heap_after.store(0, Ordering::SeqCst);
    assert_eq!(irqfd(&v, vm, c, 9, 0), e(ENOMEM));
    v.host.fail_heap_after.store(-1, Ordering::SeqCst);
    v.host.fail_watch.store(true, Ordering::SeqCst);
    assert_eq!(irqfd(&v, vm, c, 9, 0), e(ENOMEM));
    v.host.fail_watch.store(false, Ordering::SeqCst);
    assert_eq!(v.host.counts().eventfd_refs, 2, "a and b only");
    // Teardown with live irqfds unwatches and puts them.
    v.close(vm);
    v.assert_clean();
    assert_eq!(v.host.eventfd_watchers(b), 0);
    for fd in [a, a2, b, c] {
        v.host.eventfd_close(fd);
    }
}

#[test]
fn irqfd_delivers_the_msi_route_to_the_lapic() {
    let f = split_fix();
    let v = &f.v;
    let n = v.host.eventfd_create();
    routes(v, f.vm, &[(24, 0, 0x51)]);
    // Signaled before the assignment: delivered once the watch is set.
    v.host.eventfd_write(n);
    assert_eq!(irqfd(v, f.vm, n, 24, 0), 0);
    assert!(!irr(v, f.cpu, 0x51), "only from the host's callback");
    assert_eq!(v.host.eventfd_pump(), 1);
    assert!(irr(v, f.cpu, 0x51), "MSI vector 0x51 requested");
    assert_eq!(v.host.eventfd_read(n), 0, "the signal was consumed");
    // The route in force at signal time is used.
    routes(v, f.vm, &[(24, 0, 0x52)]);
    v.host.eventfd_write(n);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 1, "coalesced");
    assert!(irr(v, f.cpu, 0x52));
    // A GSI without a route fires nothing.
    routes(v, f.vm, &[]);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 1);
    // Deassigned: no callback, no interrupt.
    routes(v, f.vm, &[(24, 0, 0x53)]);
    assert_eq!(irqfd(v, f.vm, n, 24, KVM_IRQFD_FLAG_DEASSIGN), 0);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 0);
    assert!(!irr(v, f.cpu, 0x53));
    // And the guest takes an irqfd interrupt like any other (IF=1, next entry).
    assert_eq!(irqfd(v, f.vm, n, 24, 0), 0);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 1);
    let mut r = v.regs(f.cpu);
    r.rflags |= 0x200;
    v.set_regs(f.cpu, &r);
    v.script(0, &[Fix::out(0x80, 1, 0)]);
    assert_eq!(f.run(), 0);
    let p = lapic(v, f.cpu);
    let isr = (reg::ISR + (0x53 >> 5) * 0x10) as usize;
    assert_ne!(
        u32::from_le_bytes(p[isr..isr + 4].try_into().unwrap()) & (1 << (0x53 & 31)),
        0,
        "injected: in service"
    );
    v.close(f.cpu);
    v.close(f.vm);
    v.assert_clean();
    v.host.eventfd_close(n);
}

#[test]
fn irqfd_callbacks_race_deassign_and_teardown_safely() {
    let f = split_fix();
    let v = &f.v;
    routes(v, f.vm, &[(1, 0, 0x41), (2, 0, 0x42)]);
    let fds: Vec<i32> = (0..4).map(|_| v.host.eventfd_create()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let host = v.host;
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pump = {
        let (stop, ran) = (stop.clone(), ran.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                ran.fetch_add(host.eventfd_pump(), Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    for i in 0..300u32 {
        let fd = fds[(i % 4) as usize];
        let gsi = 1 + i % 2;
        assert_eq!(irqfd(v, f.vm, fd, gsi, 0), 0);
        v.host.eventfd_write(fd);
        v.host.eventfd_write(fds[((i + 1) % 4) as usize]);
        assert_eq!(irqfd(v, f.vm, fd, gsi, KVM_IRQFD_FLAG_DEASSIGN), 0);
        if i % 3 == 0 {
            // Reassigned at once after the deassign, and signaled again.
            assert_eq!(irqfd(v, f.vm, fd, gsi, 0), 0);
            v.host.eventfd_write(fd);
            assert_eq!(irqfd(v, f.vm, fd, gsi, KVM_IRQFD_FLAG_DEASSIGN), 0);
        }
    }
    for (i, &fd) in fds.iter().enumerate() {
        assert_eq!(irqfd(v, f.vm, fd, 1 + (i as u32 % 2), 0), 0);
        v.host.eventfd_write(fd);
    }
    // Wait until the pump thread has run callbacks, then keep signaling and close while it
    // may be running more of them.
    while ran.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    for &fd in &fds {
        v.host.eventfd_write(fd);
    }
    v.close(f.cpu);
    v.close(f.vm);
    stop.store(true, Ordering::SeqCst);
    pump.join().unwrap();
    v.assert_clean();
    assert!(fds.iter().all(|&fd| v.host.eventfd_watchers(fd) == 0));
    for fd in fds {
        v.host.eventfd_close(fd);
    }
}

#[test]
fn many_ioeventfds_are_found_by_address_in_any_registration_order() {
    let f = Fix::new();
    let (a, b) = (f.v.host.eventfd_create(), f.v.host.eventfd_create());
    // 300 addresses registered in a scrambled order (a permutation of 0..300), two entries
    // (datamatch 0 → a, 1 → b) at each, plus deassigns that punch holes.
    let base = 0xe000_0000u64;
    for i in 0..300u64 {
        let k = (i * 7919) % 300;
        assert_eq!(ioev(&f.v, f.vm, a, base + 16 * k, 4, DM, 0), 0);
        assert_eq!(ioev(&f.v, f.vm, b, base + 16 * k, 4, DM, 1), 0);
    }
    for k in (0..300u64).step_by(3) {
        assert_eq!(ioev(&f.v, f.vm, a, base + 16 * k, 4, DM | DEASSIGN, 0), 0);
    }
    let mut steps = Vec::new();
    let (mut want_a, mut want_b) = (0, 0);
    for k in (0..300u64).rev() {
        steps.push(Fix::mmio(base + 16 * k, 4, true, 1));
        want_b += 1;
        if k % 3 != 0 {
            steps.push(Fix::mmio(base + 16 * k, 4, true, 0));
            want_a += 1;
        }
    }
    // Then a write at a registered address with a value nobody matches: the exit.
    steps.push(Fix::mmio(base + 16 * 42, 4, true, 2));
    f.v.script(0, &steps);
    assert_eq!(f.run(), 0);
    let m = *f.r().u.mmio();
    assert_eq!(
        (f.r().exit_reason, m.phys_addr),
        (KVM_EXIT_MMIO, base + 16 * 42)
    );
    assert_eq!(f.v.host.eventfd_read(a), want_a);
    assert_eq!(f.v.host.eventfd_read(b), want_b);
    // A write between two registered addresses misses too.
    f.v.script(0, &[Fix::mmio(base + 8, 4, true, 0)]);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().u.mmio().phys_addr, base + 8);
    f.v.close(f.cpu);
    f.v.close(f.vm);
    f.v.assert_clean();
    f.v.host.eventfd_close(a);
    f.v.host.eventfd_close(b);
}

/// Figures, not assertions: the cost of the ioeventfd check on the vCPU path (fake host: its
/// locks are std mutexes), against the coalesced-zone check every MMIO write already makes.
#[test]
fn ioeventfd_lookup_cost_figures() {
    type TVm = crate::vm::Vm<
        crate::fake::host::FakeHost,
        crate::soft::SoftBackend<crate::fake::host::FakeHost>,
    >;
    let v = Vmm::new();
    let vm = v.create_vm();
    // SAFETY: a live VM handle; the VM outlives this borrow (closed at the end).
    let obj = unsafe { &*(v.h(vm) as *const TVm) };
    let a = v.host.eventfd_create();
    const N: u32 = 100_000;
    let time = |f: &dyn Fn(u32)| {
        let t = std::time::Instant::now();
        for i in 0..N {
            f(i);
        }
        t.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let data = 1u32.to_le_bytes();
    let coalesced = time(&|i| {
        std::hint::black_box(obj.coalesced(0xe000_0000 + u64::from(i % 64) * 16, 4, false));
    });
    let empty = time(&|i| {
        std::hint::black_box(obj.ioeventfds.write(
            false,
            0xe000_0000 + u64::from(i % 64) * 16,
            &data,
        ));
    });
    for k in 0..NR_IOBUS_DEVS as u64 {
        assert_eq!(ioev(&v, vm, a, 0xe000_0000 + 16 * k, 4, DM, 7), 0);
    }
    let miss = time(&|i| {
        std::hint::black_box(obj.ioeventfds.write(
            false,
            0xe000_0000 + u64::from(i % 64) * 16,
            &data,
        ));
    });
    let hit_data = 7u32.to_le_bytes();
    let hit = time(&|i| {
        assert!(obj
            .ioeventfds
            .write(false, 0xe000_0000 + u64::from(i % 64) * 16, &hit_data));
    });
    assert_eq!(v.host.eventfd_read(a), u64::from(N));
    eprintln!(
        "ioeventfd check per guest MMIO write (fake host): none registered {empty:.0} ns, \
         {NR_IOBUS_DEVS} registered miss {miss:.0} ns, hit+signal {hit:.0} ns; \
         coalesced-zone check {coalesced:.0} ns (ratios {:.2} / {:.2} / {:.2})",
        empty / coalesced,
        miss / coalesced,
        hit / coalesced
    );
    v.close(vm);
    v.assert_clean();
    v.host.eventfd_close(a);
}

#[test]
fn closing_the_vm_descriptor_ends_irqfds_while_vcpus_live_on() {
    let f = split_fix();
    let v = &f.v;
    let n = v.host.eventfd_create();
    routes(v, f.vm, &[(3, 0, 0x71)]);
    assert_eq!(irqfd(v, f.vm, n, 3, 0), 0);
    assert_eq!(v.host.eventfd_watchers(n), 1);
    v.close(f.vm);
    assert_eq!(v.host.eventfd_watchers(n), 0, "Linux kvm_vm_release");
    assert_eq!(v.host.counts().eventfd_refs, 0);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 0);
    assert!(!irr(v, f.cpu, 0x71));
    v.close(f.cpu);
    v.assert_clean();
    v.host.eventfd_close(n);
}

#[test]
fn the_in_kernel_apic_page_comes_before_ioeventfds() {
    // Linux vcpu_mmio_write: the local APIC first, then the MMIO bus.
    let f = split_fix();
    let n = f.v.host.eventfd_create();
    assert_eq!(ioev(&f.v, f.vm, n, 0xfee0_0080, 4, 0, 0), 0);
    assert_eq!(ioev(&f.v, f.vm, n, 0xfee1_0000, 4, 0, 0), 0);
    f.v.script(
        0,
        &[
            Fix::mmio(0xfee0_0080, 4, true, 0x20),
            Fix::mmio(0xfee1_0000, 4, true, 0),
            Fix::out(0x80, 1, 0),
        ],
    );
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let p = lapic(&f.v, f.cpu);
    let tpr = reg::TASKPRI as usize;
    assert_eq!(p[tpr], 0x20, "the TPR write reached the APIC");
    assert_eq!(
        f.v.host.eventfd_read(n),
        1,
        "only the write outside the APIC page"
    );
    f.v.close(f.cpu);
    f.v.close(f.vm);
    f.v.assert_clean();
    f.v.host.eventfd_close(n);
}

#[test]
fn one_notifier_as_ioeventfd_and_irqfd_loops_a_guest_out_back_as_an_msi() {
    // Hostile wiring (review): the same notifier is an ioeventfd and an irqfd of one VM, so a
    // guest OUT signals the notifier the irqfd watches. The vCPU signals under the ioeventfd
    // lock; the watch callback must run later, from the host, and fire the GSI once.
    let f = split_fix();
    let v = &f.v;
    let n = v.host.eventfd_create();
    routes(v, f.vm, &[(30, 0, 0x61)]);
    assert_eq!(ioev(v, f.vm, n, 0x600, 1, PIO, 0), 0);
    assert_eq!(irqfd(v, f.vm, n, 30, 0), 0);
    v.script(
        0,
        &[
            Fix::out(0x600, 1, 7),
            Fix::out(0x600, 1, 8),
            Fix::out(0x80, 1, 0),
        ],
    );
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    assert_eq!(
        f.r().u.io().port,
        0x80,
        "both OUTs to the ioeventfd stayed in the kernel"
    );
    assert!(!irr(v, f.cpu, 0x61), "no callback on the vCPU path");
    assert_eq!(
        v.host.eventfd_pump(),
        1,
        "the two signals coalesce into one call"
    );
    assert!(irr(v, f.cpu, 0x61));
    assert_eq!(v.host.eventfd_read(n), 0, "the watch consumed the signals");
    // Deassigning the ioeventfd leaves the irqfd; userspace signals still fire it.
    assert_eq!(ioev(v, f.vm, n, 0x600, 1, PIO | DEASSIGN, 0), 0);
    assert_eq!(v.host.eventfd_watchers(n), 1);
    v.host.eventfd_write(n);
    assert_eq!(v.host.eventfd_pump(), 1);
    // Teardown with a pending signal: no callback afterwards, every reference put.
    v.host.eventfd_write(n);
    v.close(f.cpu);
    v.close(f.vm);
    assert_eq!(v.host.eventfd_pump(), 0);
    v.assert_clean();
    assert_eq!(v.host.eventfd_watchers(n), 0);
    v.host.eventfd_close(n);
}
