//! Exit round trips through `kvm_run` with scripted guest exits (the fake backend).

use kvm_abi::*;

use crate::backend::Exit;
use crate::errno::{EEXIST, EINTR, EINVAL};
use crate::fake::vmm::Vmm;

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
    fn r(&self) -> &mut kvm_run {
        // SAFETY: the run page lives as long as the vCPU; tests are single-threaded here.
        unsafe { &mut *self.run }
    }
    fn pio(&self) -> *mut u8 {
        self.v.mmap(self.cpu, 1) as *mut u8
    }
    fn done(self) {
        self.v.close(self.cpu);
        self.v.close(self.vm);
        self.v.assert_clean();
    }
}

#[test]
fn pio_out() {
    let f = Fix::new();
    f.v.script(
        0,
        &[(
            Exit::Io {
                port: 0x3f8,
                size: 1,
                out: true,
                data: 0x41,
            },
            1,
        )],
    );
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    let io = *f.r().u.io();
    assert_eq!(
        (io.direction, io.size, io.port, io.count, io.data_offset),
        (KVM_EXIT_IO_OUT, 1, 0x3f8, 1, 4096)
    );
    // SAFETY: page 1 of the mapping is the PIO page; data_offset points there.
    assert_eq!(unsafe { *f.pio() }, 0x41);
    // Like Linux, RIP moves past the OUT only when the next KVM_RUN completes it.
    assert_eq!(f.v.regs(f.cpu).rip, rip0);
    f.r().immediate_exit = 1;
    assert_eq!(f.run(), -i64::from(EINTR.0));
    assert_eq!(f.v.regs(f.cpu).rip, rip0 + 1);
    f.done();
}

#[test]
fn pio_in_with_completion() {
    let f = Fix::new();
    let mut regs = f.v.regs(f.cpu);
    regs.rax = 0xdead_beef_1234_5678;
    f.v.set_regs(f.cpu, &regs);
    f.v.script(
        0,
        &[
            (
                Exit::Io {
                    port: 0x71,
                    size: 1,
                    out: false,
                    data: 0,
                },
                2,
            ),
            (Exit::Hlt, 1),
        ],
    );
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    assert_eq!(f.r().u.io().direction, KVM_EXIT_IO_IN);
    // Userspace supplies the byte at data_offset, then re-enters.
    // SAFETY: PIO page.
    unsafe { *f.pio() = 0x5a };
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    let r = f.v.regs(f.cpu);
    assert_eq!(r.rax, 0xdead_beef_1234_565a, "IN AL keeps the upper bits");
    assert_eq!(
        r.rip,
        regs.rip + 2 + 1,
        "IN completed (2) then HLT skipped (1)"
    );
    f.done();
}

#[test]
fn mmio_write_and_read_with_completion() {
    let f = Fix::new();
    f.v.script(
        0,
        &[
            (
                Exit::Mmio {
                    gpa: 0xfed0_0000,
                    len: 4,
                    write: true,
                    data: [1, 2, 3, 4, 0, 0, 0, 0],
                },
                6,
            ),
            (
                Exit::Mmio {
                    gpa: 0xfed0_00f0,
                    len: 8,
                    write: false,
                    data: [0; 8],
                },
                7,
            ),
            (Exit::Hlt, 1),
        ],
    );
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    let m = *f.r().u.mmio();
    assert_eq!(
        (m.phys_addr, m.len, m.is_write, &m.data[..4]),
        (0xfed0_0000, 4, 1, &[1u8, 2, 3, 4][..])
    );
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    let m = *f.r().u.mmio();
    assert_eq!((m.phys_addr, m.len, m.is_write), (0xfed0_00f0, 8, 0));
    f.r().u.mmio_mut().data = 0x1122_3344_5566_7788u64.to_le_bytes();
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    let r = f.v.regs(f.cpu);
    assert_eq!(r.rax, 0x1122_3344_5566_7788);
    assert_eq!(r.rip, rip0 + 6 + 7 + 1);
    f.done();
}

#[test]
fn coalesced_mmio_goes_to_the_ring() {
    let f = Fix::new();
    let z = f.v.put(&kvm_coalesced_mmio_zone {
        addr: 0xa0000,
        size: 0x1000,
        pad: 0,
    });
    assert_eq!(f.v.ioctl_fd(f.vm, KVM_REGISTER_COALESCED_MMIO, z), 0);
    f.v.script(
        0,
        &[
            (
                Exit::Mmio {
                    gpa: 0xa0010,
                    len: 2,
                    write: true,
                    data: [7, 8, 0, 0, 0, 0, 0, 0],
                },
                3,
            ),
            (Exit::Hlt, 1),
        ],
    );
    assert_eq!(f.run(), 0);
    assert_eq!(
        f.r().exit_reason,
        KVM_EXIT_HLT,
        "the coalesced write did not exit"
    );
    let ring = f.v.mmap(f.cpu, 2) as *const u8;
    // SAFETY: page 2 is the ring page: header then entries.
    unsafe {
        let (first, last) = (*(ring as *const u32), *(ring.add(4) as *const u32));
        assert_eq!((first, last), (0, 1));
        let e = &*(ring.add(8) as *const kvm_coalesced_mmio);
        assert_eq!(
            (e.phys_addr, e.len, e.data[0], e.data[1]),
            (0xa0010, 2, 7, 8)
        );
    }
    f.done();
}

#[test]
fn hlt_exits_with_rip_past_it() {
    let f = Fix::new();
    f.v.script(0, &[(Exit::Hlt, 1)]);
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    assert_eq!(f.v.regs(f.cpu).rip, rip0 + 1);
    f.done();
}

#[test]
fn interrupt_window_and_injection() {
    let f = Fix::new();
    // IF=0: not ready; ask for the window.
    f.r().request_interrupt_window = 1;
    f.v.script(
        0,
        &[(
            Exit::Io {
                port: 0x80,
                size: 1,
                out: true,
                data: 0,
            },
            2,
        )],
    );
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IO);
    assert_eq!((f.r().ready_for_interrupt_injection, f.r().if_flag), (0, 0));
    // The guest sets IF (QEMU would see it after the next exit).
    let mut regs = f.v.regs(f.cpu);
    regs.rflags |= 1 << 9;
    f.v.set_regs(f.cpu, &regs);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_IRQ_WINDOW_OPEN);
    assert_eq!((f.r().ready_for_interrupt_injection, f.r().if_flag), (1, 1));
    // QEMU injects with KVM_INTERRUPT; a second one before delivery is EEXIST.
    let irq = f.v.put(&kvm_interrupt { irq: 0x30 });
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_INTERRUPT, irq), 0);
    assert_eq!(
        f.v.ioctl_fd(f.cpu, KVM_INTERRUPT, irq),
        -i64::from(EEXIST.0)
    );
    let bad = f.v.put(&kvm_interrupt { irq: 256 });
    assert_eq!(
        f.v.ioctl_fd(f.cpu, KVM_INTERRUPT, bad),
        -i64::from(EINVAL.0)
    );
    f.r().request_interrupt_window = 0;
    f.v.script(0, &[(Exit::Hlt, 1)]);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    {
        let st = f.v.h(f.cpu)
            as *const crate::vcpu::Vcpu<
                crate::fake::host::FakeHost,
                crate::soft::SoftBackend<crate::fake::host::FakeHost>,
            >;
        // SAFETY: live vCPU handle; no concurrent ioctl.
        let g = unsafe { &*st }.st.lock();
        assert_eq!(&g.b.delivered[..g.b.ndelivered as usize], &[0x30]);
    }
    assert_eq!(f.r().ready_for_interrupt_injection, 1);
    f.done();
}

#[test]
fn immediate_exit_returns_eintr_without_entering() {
    let f = Fix::new();
    f.v.script(0, &[(Exit::Hlt, 1)]);
    f.r().immediate_exit = 1;
    assert_eq!(f.run(), -i64::from(EINTR.0));
    // The scripted exit is still there: the guest did not run.
    assert_eq!(f.v.sys.backend.script.lock().unwrap().len(), 1);
    f.r().immediate_exit = 0;
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    f.done();
}

#[test]
fn signal_pending_completes_pio_in_then_eintr() {
    let f = Fix::new();
    f.v.script(
        0,
        &[
            (
                Exit::Io {
                    port: 0x60,
                    size: 2,
                    out: false,
                    data: 0,
                },
                1,
            ),
            (
                Exit::Mmio {
                    gpa: 0xfee0_0030,
                    len: 4,
                    write: false,
                    data: [0; 8],
                },
                6,
            ),
        ],
    );
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run(), 0);
    // SAFETY: PIO page.
    unsafe { std::ptr::copy_nonoverlapping([0x34u8, 0x12].as_ptr(), f.pio(), 2) };
    f.v.host
        .signal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(f.run(), -i64::from(EINTR.0));
    assert_eq!(f.r().exit_reason, KVM_EXIT_INTR);
    let r = f.v.regs(f.cpu);
    assert_eq!(
        (r.rax & 0xffff, r.rip),
        (0x1234, rip0 + 1),
        "the IN completed before -EINTR"
    );
    // Same for an MMIO read.
    f.v.host
        .signal
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_MMIO);
    f.r().u.mmio_mut().data = [0x14, 0, 0, 0, 0, 0, 0, 0];
    f.v.host
        .signal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(f.run(), -i64::from(EINTR.0));
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rax, r.rip), (0x14, rip0 + 1 + 6));
    f.v.host
        .signal
        .store(false, std::sync::atomic::Ordering::SeqCst);
    f.done();
}

#[test]
fn cpuid_and_msr_exits_are_handled_in_kernel() {
    let f = Fix::new();
    // Guest CPUID table with one leaf.
    let mut e: kvm_cpuid_entry2 = crate::fake::vmm::zeroed();
    e.function = 0x4000_0000;
    e.eax = 0x1234;
    let mut b = 1u32.to_le_bytes().to_vec();
    b.extend([0u8; 4]);
    b.extend(zerocopy::IntoBytes::as_bytes(&e));
    let a = f.v.buf(b.len());
    f.v.host.user_write(a, &b);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_CPUID2, a), 0);
    f.v.script(
        0,
        &[
            (
                Exit::Cpuid {
                    leaf: 0x4000_0000,
                    subleaf: 0,
                },
                2,
            ),
            (
                Exit::Wrmsr {
                    index: 0xc000_0082,
                    data: 0xffff_ffff_8100_0000,
                },
                2,
            ),
            (Exit::Rdmsr { index: 0xc000_0082 }, 2),
            (Exit::Hlt, 1),
        ],
    );
    let rip0 = f.v.regs(f.cpu).rip;
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    let r = f.v.regs(f.cpu);
    assert_eq!((r.rax, r.rdx), (0x8100_0000, 0xffff_ffff), "RDMSR result");
    assert_eq!(r.rip, rip0 + 7);
    // CPUID may not change after KVM_RUN unless identical (Linux ≥ 5.16).
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_CPUID2, a), 0);
    e.eax = 1;
    let mut b2 = 1u32.to_le_bytes().to_vec();
    b2.extend([0u8; 4]);
    b2.extend(zerocopy::IntoBytes::as_bytes(&e));
    f.v.host.user_write(a, &b2);
    assert_eq!(f.v.ioctl_fd(f.cpu, KVM_SET_CPUID2, a), -i64::from(EINVAL.0));
    f.done();
}

#[test]
fn soft_backend_without_script_fails_entry_like_the_kernel_object() {
    let f = Fix::new();
    assert_eq!(f.run(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_FAIL_ENTRY);
    f.done();
}

#[test]
fn a_running_vcpu_blocks_neither_the_vm_nor_other_vcpus() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = Fix::new();
    let other = f.v.create_vcpu(f.vm, 1);
    let b = &f.v.sys.backend;
    b.hold_id.store(0, SeqCst);
    b.hold.store(true, SeqCst);
    f.v.script(0, &[(Exit::Hlt, 1)]);
    let (sys, h0) = (f.v.sys as *const _ as usize, f.v.h(f.cpu) as usize);
    let t = std::thread::spawn(move || {
        // SAFETY: the system is leaked ('static) and the handle stays live until joined.
        let sys = unsafe { &*(sys as *const crate::fake::vmm::TSystem) };
        unsafe { sys.ioctl(h0 as *mut std::ffi::c_void, KVM_RUN, 0) }
    });
    while !b.holding.load(SeqCst) {
        std::thread::yield_now();
    }
    // vCPU 0 is "in the guest" holding its own lock: VM and other vCPU ioctls still complete.
    let r = f.v.regs(other);
    assert_eq!(r.rip, 0xfff0);
    f.v.add_slot(f.vm, 0, 0, 1 << 20, 0);
    let third = f.v.create_vcpu(f.vm, 2);
    assert!(b.hold.load(SeqCst), "vCPU 0 still running");
    b.hold.store(false, SeqCst);
    assert_eq!(t.join().unwrap(), 0);
    assert_eq!(f.r().exit_reason, KVM_EXIT_HLT);
    f.v.close(third);
    f.v.close(other);
    f.done();
}
