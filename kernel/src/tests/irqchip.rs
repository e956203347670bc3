//! The split irqchip through the ioctl interface, with the soft backend as the guest:
//! KVM_ENABLE_CAP rules, routing validation, MSI/IRQ_LINE delivery, injection when IF opens,
//! xAPIC MMIO, EOI exits to the userspace IOAPIC, INIT/SIPI, the timer with a fake clock,
//! KVM_INTERRUPT for the userspace PIC, and HLT sleeping in the kernel until an MSI arrives.

use std::sync::atomic::Ordering;

use kvm_abi::*;
use zerocopy::IntoBytes;

use crate::backend::Exit;
use crate::errno::{EEXIST, EFAULT, EINVAL, ENXIO, EPERM};
use crate::fake::vmm::{zeroed, Vmm};
use crate::irqchip::lapic::reg;

fn e(x: crate::errno::Errno) -> i64 {
    -i64::from(x.0)
}

fn enable_split(v: &Vmm, vm: i64, pins: u64, flags: u32) -> i64 {
    let mut c: kvm_enable_cap = zeroed();
    c.cap = KVM_CAP_SPLIT_IRQCHIP;
    c.flags = flags;
    c.args[0] = pins;
    let a = v.put(&c);
    v.ioctl_fd(vm, KVM_ENABLE_CAP, a)
}

fn split_vm(v: &Vmm) -> i64 {
    let vm = v.create_vm();
    assert_eq!(enable_split(v, vm, 24, 0), 0);
    vm
}

fn get_lapic(v: &Vmm, cpu: i64) -> Vec<u8> {
    let a = v.buf(1024);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_LAPIC, a), 0);
    v.host.user_read(a, 1024)
}

fn set_lapic(v: &Vmm, cpu: i64, page: &[u8]) {
    let a = v.buf(1024);
    v.host.user_write(a, page);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_LAPIC, a), 0);
}

fn reg32(page: &[u8], off: u32) -> u32 {
    u32::from_le_bytes(page[off as usize..off as usize + 4].try_into().unwrap())
}

fn put32(page: &mut [u8], off: u32, val: u32) {
    page[off as usize..off as usize + 4].copy_from_slice(&val.to_le_bytes());
}

fn bit(page: &[u8], base: u32, v: u8) -> bool {
    reg32(page, base + u32::from(v >> 5) * 0x10) & (1 << (v & 31)) != 0
}

/// Software-enables the APIC of `cpu` (SVR = 0x1ff) with LINT0 as `lvt0`.
fn enable_apic(v: &Vmm, cpu: i64, lvt0: u32) {
    let mut p = get_lapic(v, cpu);
    put32(&mut p, reg::SPIV, 0x1ff);
    put32(&mut p, reg::LVT0, lvt0);
    set_lapic(v, cpu, &p);
}

fn msi(v: &Vmm, vm: i64, dest: u32, data: u32) -> i64 {
    let m = kvm_msi {
        address_lo: 0xfee0_0000 | (dest << 12),
        data,
        ..zeroed()
    };
    let a = v.put(&m);
    v.ioctl_fd(vm, KVM_SIGNAL_MSI, a)
}

fn set_if(v: &Vmm, cpu: i64, on: bool) {
    let mut r = v.regs(cpu);
    r.rflags = if on {
        r.rflags | 0x200
    } else {
        r.rflags & !0x200
    };
    v.set_regs(cpu, &r);
}

fn routing(v: &Vmm, vm: i64, flags: u32, entries: &[kvm_irq_routing_entry]) -> i64 {
    let mut b = (entries.len() as u32).to_le_bytes().to_vec();
    b.extend(flags.to_le_bytes());
    for en in entries {
        b.extend(en.as_bytes());
    }
    let a = v.buf(b.len());
    v.host.user_write(a, &b);
    v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, a)
}

fn msi_route(gsi: u32, dest: u32, data: u32) -> kvm_irq_routing_entry {
    let mut en: kvm_irq_routing_entry = zeroed();
    en.gsi = gsi;
    en.r#type = KVM_IRQ_ROUTING_MSI;
    en.u.msi_mut().address_lo = 0xfee0_0000 | (dest << 12);
    en.u.msi_mut().data = data;
    en
}

fn soft_delivered(v: &Vmm, cpu: i64) -> Vec<u8> {
    let h = v.h(cpu)
        as *const crate::vcpu::Vcpu<
            crate::fake::host::FakeHost,
            crate::soft::SoftBackend<crate::fake::host::FakeHost>,
        >;
    // SAFETY: live vCPU handle; the vCPU is idle (no KVM_RUN in progress).
    let vc = unsafe { &*h };
    let st = vc.st.lock();
    st.b.delivered[..st.b.ndelivered as usize].to_vec()
}

fn mp_state(v: &Vmm, cpu: i64) -> u32 {
    let a = v.buf(4);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_MP_STATE, a), 0);
    v.get::<kvm_mp_state>(a).mp_state
}

#[test]
fn enable_cap_follows_linux_rules() {
    let v = Vmm::new();
    let vm = v.create_vm();
    assert_eq!(enable_split(&v, vm, 24, 1), e(EINVAL), "flags");
    assert_eq!(enable_split(&v, vm, 4097, 0), e(EINVAL), "too many pins");
    let mut c: kvm_enable_cap = zeroed();
    c.cap = KVM_CAP_IRQFD;
    let a = v.put(&c);
    assert_eq!(
        v.ioctl_fd(vm, KVM_ENABLE_CAP, a),
        e(EINVAL),
        "not enableable"
    );
    // Without the irqchip: Linux's answers.
    let cpu = v.create_vcpu(vm, 0);
    assert_eq!(
        enable_split(&v, vm, 24, 0),
        e(EEXIST),
        "after vCPU creation"
    );
    assert_eq!(msi(&v, vm, 0, 0x30), e(EINVAL));
    let l = v.put(&kvm_irq_level { irq: 1, level: 1 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, l), e(ENXIO));
    assert_eq!(routing(&v, vm, 0, &[]), e(EINVAL));
    let a = v.buf(1024);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_LAPIC, a), e(EINVAL));
    let va = v.put(&kvm_vapic_addr { vapic_addr: 0 });
    assert_eq!(
        v.ioctl_fd(cpu, KVM_SET_VAPIC_ADDR, va),
        e(EINVAL),
        "no in-kernel APIC"
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_LAPIC, a), e(EINVAL));
    let hm = v.put(&kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    });
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MP_STATE, hm), e(EINVAL));
    v.close(cpu);
    v.close(vm);
    // Enabled once, before vCPUs; twice is EEXIST; full KVM_CREATE_IRQCHIP then EEXIST too.
    let vm = v.create_vm();
    assert_eq!(enable_split(&v, vm, 24, 0), 0);
    assert_eq!(enable_split(&v, vm, 24, 0), e(EEXIST));
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), e(EEXIST));
    v.close(vm);
    v.assert_clean();
}

#[test]
fn gsi_routing_validation() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    assert_eq!(routing(&v, vm, 0, &[]), 0, "empty table");
    assert_eq!(routing(&v, vm, 1, &[]), e(EINVAL), "flags");
    assert_eq!(
        routing(&v, vm, 0, &[msi_route(0, 0, 0x30), msi_route(23, 1, 0x31)]),
        0
    );
    let mut chip: kvm_irq_routing_entry = zeroed();
    chip.gsi = 2;
    chip.r#type = KVM_IRQ_ROUTING_IRQCHIP;
    chip.u.irqchip_mut().irqchip = 2;
    chip.u.irqchip_mut().pin = 2;
    assert_eq!(
        routing(&v, vm, 0, &[chip]),
        e(EINVAL),
        "no in-kernel IOAPIC/PIC in split mode"
    );
    assert_eq!(
        routing(&v, vm, 0, &[msi_route(5, 0, 0x30), msi_route(5, 0, 0x31)]),
        e(EINVAL),
        "one MSI route per GSI"
    );
    assert_eq!(
        routing(&v, vm, 0, &[msi_route(4096, 0, 0x30)]),
        e(EINVAL),
        "GSI range"
    );
    let mut hv = msi_route(3, 0, 0x30);
    hv.r#type = KVM_IRQ_ROUTING_HV_SINT;
    assert_eq!(routing(&v, vm, 0, &[hv]), e(EINVAL), "unknown type");
    let mut dev = msi_route(3, 0, 0x30);
    dev.flags = KVM_MSI_VALID_DEVID;
    assert_eq!(routing(&v, vm, 0, &[dev]), 0, "devid on MSI");
    dev.flags = 2;
    assert_eq!(routing(&v, vm, 0, &[dev]), e(EINVAL), "unknown entry flag");
    // nr above KVM_MAX_IRQ_ROUTES and unreadable entries.
    let big = v.put(&[4097u32, 0]);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, big), e(EINVAL));
    // Entries past the end of mapped user memory.
    let page = v.buf(4096);
    v.host.user_write(page + 4088, &[2u8, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, page + 4088), e(EFAULT));
    v.close(vm);
    v.assert_clean();
}

#[test]
fn msi_irq_line_and_lapic_round_trip() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let c0 = v.create_vcpu(vm, 0);
    let c1 = v.create_vcpu(vm, 1);
    // Reset state as Linux has it; the AP waits for INIT/SIPI.
    let p = get_lapic(&v, c1);
    assert_eq!(reg32(&p, reg::ID), 1 << 24);
    assert_eq!(reg32(&p, reg::LVR), 0x0005_0014);
    assert_eq!(mp_state(&v, c0), KVM_MP_STATE_RUNNABLE);
    assert_eq!(mp_state(&v, c1), KVM_MP_STATE_UNINITIALIZED);
    // Software-disabled APIC: matched but not accepted (0); nobody at id 7: Linux's -1.
    assert_eq!(msi(&v, vm, 1, 0x41), 0);
    assert_eq!(msi(&v, vm, 7, 0x41), e(EPERM));
    enable_apic(&v, c1, 0x10000);
    assert_eq!(msi(&v, vm, 1, 0x41), 1);
    assert_eq!(
        msi(&v, vm, 0xff, 0x42),
        1,
        "broadcast: only c1 is software-enabled"
    );
    let p = get_lapic(&v, c1);
    assert!(bit(&p, reg::IRR, 0x41) && bit(&p, reg::IRR, 0x42));
    // Lowest priority to both (broadcast): only software-enabled APICs compete, one takes it.
    assert_eq!(msi(&v, vm, 0xff, 0x143), 1);
    assert!(bit(&get_lapic(&v, c1), reg::IRR, 0x43));
    assert!(!bit(&get_lapic(&v, c0), reg::IRR, 0x43));
    // KVM_IRQ_LINE through an MSI route: level-triggered (data bit 15) sets TMR.
    assert_eq!(routing(&v, vm, 0, &[msi_route(9, 1, 0x8051)]), 0);
    let l = v.put(&kvm_irq_level { irq: 9, level: 1 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, l), 0);
    let low = v.put(&kvm_irq_level { irq: 9, level: 0 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, low), 0);
    let none = v.put(&kvm_irq_level { irq: 10, level: 1 });
    assert_eq!(
        v.ioctl_fd(vm, KVM_IRQ_LINE, none),
        0,
        "unrouted GSI: 0 like Linux"
    );
    let p = get_lapic(&v, c1);
    assert!(bit(&p, reg::IRR, 0x51) && bit(&p, reg::TMR, 0x51));
    // SET_LAPIC/GET_LAPIC round trip; the version register stays KVM's.
    let mut q = p.clone();
    put32(&mut q, reg::TASKPRI, 0x30);
    put32(&mut q, reg::LVR, 0);
    set_lapic(&v, c1, &q);
    let back = get_lapic(&v, c1);
    put32(&mut q, reg::LVR, 0x0005_0014);
    put32(&mut q, reg::PROCPRI, 0x30);
    assert_eq!(back, q);
    // QEMU's APIC reset: KVM_SET_VAPIC_ADDR(0) must succeed; a TPR-patching page is refused.
    let va = v.put(&kvm_vapic_addr { vapic_addr: 0 });
    assert_eq!(v.ioctl_fd(c1, KVM_SET_VAPIC_ADDR, va), 0);
    let vb = v.put(&kvm_vapic_addr {
        vapic_addr: 0xf_0000,
    });
    assert_eq!(v.ioctl_fd(c1, KVM_SET_VAPIC_ADDR, vb), e(EINVAL));
    // MP state: SIPI_RECEIVED means "INIT received, SIPI pending" (Linux); bad values EINVAL.
    let bad = v.put(&kvm_mp_state { mp_state: 42 });
    assert_eq!(v.ioctl_fd(c1, KVM_SET_MP_STATE, bad), e(EINVAL));
    let h = v.put(&kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    });
    assert_eq!(v.ioctl_fd(c1, KVM_SET_MP_STATE, h), 0);
    assert_eq!(mp_state(&v, c1), KVM_MP_STATE_HALTED);
    // Migration of an AP between INIT and SIPI: the SIPI vector comes with the vCPU events.
    let mut ev: kvm_vcpu_events = zeroed();
    ev.flags = KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    ev.sipi_vector = 0x12;
    let ea = v.put(&ev);
    assert_eq!(v.ioctl_fd(c1, KVM_SET_VCPU_EVENTS, ea), 0);
    let sr = v.put(&kvm_mp_state {
        mp_state: KVM_MP_STATE_SIPI_RECEIVED,
    });
    assert_eq!(v.ioctl_fd(c1, KVM_SET_MP_STATE, sr), 0);
    assert_eq!(mp_state(&v, c1), KVM_MP_STATE_RUNNABLE);
    let sa = v.buf(size_of::<kvm_sregs>());
    assert_eq!(v.ioctl_fd(c1, KVM_GET_SREGS, sa), 0);
    assert_eq!(v.get::<kvm_sregs>(sa).cs.selector, 0x1200);
    v.close(c0);
    v.close(c1);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn interrupt_is_injected_when_the_guest_opens_if() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    set_if(&v, cpu, false);
    assert_eq!(msi(&v, vm, 0, 0x61), 1);
    let out = Exit::Io {
        port: 0x80,
        size: 1,
        out: true,
        data: 0,
    };
    v.script(0, &[(out, 1), (out, 1)]);
    let run = v.run_page(cpu);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert!(soft_delivered(&v, cpu).is_empty(), "IF=0: nothing injected");
    let p = get_lapic(&v, cpu);
    assert!(bit(&p, reg::IRR, 0x61) && !bit(&p, reg::ISR, 0x61));
    // The guest executes STI (IF=1): the next entry injects and moves IRR to ISR.
    set_if(&v, cpu, true);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, cpu), vec![0x61]);
    let p = get_lapic(&v, cpu);
    assert!(!bit(&p, reg::IRR, 0x61) && bit(&p, reg::ISR, 0x61));
    assert_eq!(reg32(&p, reg::PROCPRI), 0x60);
    // kvm_run.cr8 is the TPR; QEMU's stale cr8 in kvm_run is ignored on entry.
    assert_eq!(r.cr8, 0);
    // SAFETY: as above; QEMU writes run->cr8 before KVM_RUN.
    unsafe { (*run).cr8 = 0xf };
    v.script(0, &[(out, 1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(reg32(&get_lapic(&v, cpu), reg::TASKPRI), 0);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn xapic_mmio_eoi_exit_and_ipis() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let c0 = v.create_vcpu(vm, 0);
    let c1 = v.create_vcpu(vm, 1);
    set_if(&v, c0, true);
    let w = |off: u32, val: u32| {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&val.to_le_bytes());
        (
            Exit::Mmio {
                gpa: 0xfee0_0000 + u64::from(off),
                len: 4,
                write: true,
                data,
            },
            3,
        )
    };
    let rd = |off: u32| {
        (
            Exit::Mmio {
                gpa: 0xfee0_0000 + u64::from(off),
                len: 4,
                write: false,
                data: [0; 8],
            },
            3,
        )
    };
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    // Route GSI 4 (an IOAPIC pin, < 24) level-triggered to APIC 0, vector 0x34.
    assert_eq!(routing(&v, vm, 0, &[msi_route(4, 0, 0x8034)]), 0);
    // The guest enables its APIC by MMIO, reads its ID (no exit to userspace for either).
    v.script(0, &[w(reg::SPIV, 0x1ff), rd(reg::ID), out]);
    let run = v.run_page(c0);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(v.regs(c0).rax, 0, "APIC ID 0 read into RAX");
    assert_eq!(reg32(&get_lapic(&v, c0), reg::SPIV), 0x1ff);
    // The userspace IOAPIC raises the pin; the guest takes the interrupt and EOIs it.
    let l = v.put(&kvm_irq_level { irq: 4, level: 1 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, l), 0);
    v.script(0, &[w(reg::EOI, 0)]);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, c0), vec![0x34]);
    assert_eq!(r.exit_reason, KVM_EXIT_IOAPIC_EOI);
    assert_eq!(r.u.eoi().vector, 0x34);
    // An edge-triggered vector's EOI stays in the kernel.
    assert_eq!(msi(&v, vm, 0, 0x45), 1);
    v.script(0, &[w(reg::EOI, 0), out]);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(soft_delivered(&v, c0), vec![0x34, 0x45]);
    // INIT, then SIPI 0x9a to APIC 1, a fixed IPI to self, NMI to APIC 1.
    v.script(
        0,
        &[
            w(reg::ICR2, 1 << 24),
            w(reg::ICR, 0x4500),
            w(reg::ICR, 0x469a),
            w(reg::ICR, 0x0004_4055),
            out,
        ],
    );
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(
        soft_delivered(&v, c0),
        vec![0x34, 0x45, 0x55],
        "self IPI taken at the next entry"
    );
    assert_eq!(mp_state(&v, c1), KVM_MP_STATE_RUNNABLE, "INIT then SIPI");
    let sa = v.buf(size_of::<kvm_sregs>());
    assert_eq!(v.ioctl_fd(c1, KVM_GET_SREGS, sa), 0);
    let s: kvm_sregs = v.get(sa);
    assert_eq!((s.cs.selector, s.cs.base), (0x9a00, 0x9a000));
    assert_eq!(v.regs(c1).rip, 0);
    // NMI IPI to APIC 1 reaches its backend at its next entry.
    v.script(0, &[w(reg::ICR, 0x0400), out]);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    v.script(1, &[out]);
    assert_eq!(v.ioctl_fd(c1, KVM_RUN, 0), 0);
    let ea = v.buf(size_of::<kvm_vcpu_events>());
    assert_eq!(v.ioctl_fd(c1, KVM_GET_VCPU_EVENTS, ea), 0);
    let h = v.h(c1)
        as *const crate::vcpu::Vcpu<
            crate::fake::host::FakeHost,
            crate::soft::SoftBackend<crate::fake::host::FakeHost>,
        >;
    // SAFETY: live idle vCPU.
    assert_eq!(unsafe { &*h }.st.lock().b.nmis, 1);
    // x2APIC mode is refused (#GP injected, RIP not advanced).
    let rip = v.regs(c0).rip;
    v.script(
        0,
        &[
            (
                Exit::Wrmsr {
                    index: 0x1b,
                    data: 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8),
                },
                2,
            ),
            out,
        ],
    );
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(v.regs(c0).rip, rip + 1, "only the OUT advanced");
    v.close(c0);
    v.close(c1);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn timer_fires_with_the_fake_clock() {
    let v = Vmm::new();
    v.host.clock.store(1_000_000, Ordering::SeqCst);
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    set_if(&v, cpu, true);
    let mut p = get_lapic(&v, cpu);
    put32(&mut p, reg::SPIV, 0x1ff);
    put32(&mut p, reg::TDCR, 0xb);
    put32(&mut p, reg::LVTT, 0xec);
    put32(&mut p, reg::TMICT, 50_000);
    put32(&mut p, reg::TMCCT, 50_000);
    set_lapic(&v, cpu, &p);
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    v.script(0, &[out, out]);
    let arms = v.host.timer_arms.load(Ordering::SeqCst);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(
        v.host.timer_arms.load(Ordering::SeqCst),
        arms + 1,
        "host timer armed"
    );
    assert!(soft_delivered(&v, cpu).is_empty());
    assert_eq!(reg32(&get_lapic(&v, cpu), reg::TMCCT), 50_000);
    v.host.clock.store(1_030_000, Ordering::SeqCst);
    assert_eq!(reg32(&get_lapic(&v, cpu), reg::TMCCT), 20_000);
    v.host.clock.store(1_050_000, Ordering::SeqCst);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, cpu), vec![0xec]);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn userspace_pic_interrupt_goes_through_lint0() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    set_if(&v, cpu, true);
    let run = v.run_page(cpu);
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    // LINT0 masked (reset): the PIC cannot interrupt; not ready for injection.
    enable_apic(&v, cpu, 0x10700);
    v.script(0, &[out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    assert_eq!(r.ready_for_interrupt_injection, 0);
    // LINT0 in ExtINT mode: ready; KVM_INTERRUPT queues one vector (EEXIST for a second).
    enable_apic(&v, cpu, 0x700);
    v.script(0, &[out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(r.ready_for_interrupt_injection, 1);
    set_if(&v, cpu, false);
    let i = v.put(&kvm_interrupt { irq: 0x08 });
    assert_eq!(v.ioctl_fd(cpu, KVM_INTERRUPT, i), 0);
    assert_eq!(v.ioctl_fd(cpu, KVM_INTERRUPT, i), e(EEXIST));
    let bad = v.put(&kvm_interrupt { irq: 256 });
    assert_eq!(v.ioctl_fd(cpu, KVM_INTERRUPT, bad), e(EINVAL));
    v.script(0, &[out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(
        r.ready_for_interrupt_injection, 0,
        "IF=0 and an ExtINT waits"
    );
    assert!(soft_delivered(&v, cpu).is_empty());
    set_if(&v, cpu, true);
    v.script(0, &[out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, cpu), vec![0x08]);
    assert!(
        !bit(&get_lapic(&v, cpu), reg::ISR, 0x08),
        "ExtINT bypasses the ISR"
    );
    // QEMU's interrupt-window request for its PIC exits once injection is possible.
    // SAFETY: as above.
    unsafe { (*run).request_interrupt_window = 1 };
    v.script(0, &[(Exit::Continue, 0)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IRQ_WINDOW_OPEN);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn hlt_sleeps_in_the_kernel_until_an_msi_arrives() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    set_if(&v, cpu, true);
    v.script(0, &[(Exit::Hlt, 1)]);
    let run = v.run_page(cpu) as usize;
    let h = v.h(cpu) as usize;
    let sys = v.sys;
    let t = std::thread::spawn(move || {
        // SAFETY: the handle stays live until the test closes it after join.
        let r = unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) };
        // SAFETY: as above.
        (r, unsafe { (*(run as *const kvm_run)).exit_reason })
    });
    // Whether the MSI comes before or after the HLT, the vCPU must take it and go on.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(msi(&v, vm, 0, 0x71), 1);
    let (r, reason) = t.join().unwrap();
    assert_eq!(r, 0);
    assert_eq!(
        reason, KVM_EXIT_FAIL_ENTRY,
        "script ended after the wakeup: back in the guest"
    );
    assert_eq!(soft_delivered(&v, cpu), vec![0x71]);
    assert_eq!(mp_state(&v, cpu), KVM_MP_STATE_RUNNABLE);
    // HLT with a signal pending: -EINTR, still halted for the next KVM_RUN.
    v.script(0, &[(Exit::Hlt, 1)]);
    let t = std::thread::spawn(move || {
        // SAFETY: as above.
        unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) }
    });
    // Once the HLT was played the vCPU halts (sleeps) in the kernel; then the signal comes.
    while !v.sys.backend.script.lock().unwrap().is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    v.host.signal.store(true, Ordering::SeqCst);
    assert_eq!(t.join().unwrap(), -4);
    v.host.signal.store(false, Ordering::SeqCst);
    assert_eq!(mp_state(&v, cpu), KVM_MP_STATE_HALTED);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn x2apic_through_msr_exits() {
    let v = Vmm::new();
    let vm = split_vm(&v);
    let c0 = v.create_vcpu(vm, 0);
    let c1 = v.create_vcpu(vm, 1);
    // CPUID with x2APIC (from KVM_GET_SUPPORTED_CPUID, as QEMU builds it).
    let mut n = 64u32;
    let a = v.buf(8 + 40 * 64);
    v.host.user_write(a, &n.to_le_bytes());
    assert_eq!(v.ioctl(v.kvm, KVM_GET_SUPPORTED_CPUID, a), 0);
    n = u32::from_le_bytes(v.host.user_read(a, 4).try_into().unwrap());
    assert!(n > 0);
    assert_eq!(v.ioctl_fd(c0, KVM_SET_CPUID2, a), 0);
    enable_apic(&v, c1, 0x10000);
    set_if(&v, c1, true);
    let wr = |index: u32, data: u64| (Exit::Wrmsr { index, data }, 2);
    let rd = |index: u32| (Exit::Rdmsr { index }, 2);
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    // x2APIC MSRs before x2APIC mode: #GP (RIP stays).
    v.script(0, &[rd(0x802), out]);
    let rip = v.regs(c0).rip;
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(
        v.regs(c0).rip,
        rip,
        "#GP; the OUT completes at the next KVM_RUN"
    );
    let run = v.run_page(c0);
    // Enable the APIC in x2APIC mode, software-enable it, read the ID, send an IPI to APIC 1.
    v.script(
        0,
        &[
            wr(0x1b, 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8)),
            wr(0x80f, 0x1ff),
            rd(0x80d),
            wr(0x830, (1u64 << 32) | 0x4066),
            out,
        ],
    );
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    assert_eq!(unsafe { &*run }.exit_reason, KVM_EXIT_IO);
    assert_eq!(v.regs(c0).rip, rip + 1 + 8, "every WRMSR/RDMSR completed");
    assert_eq!(v.regs(c0).rax, 1, "LDR of x2APIC ID 0: cluster 0, bit 0");
    let p = get_lapic(&v, c1);
    assert!(bit(&p, reg::IRR, 0x66), "the IPI reached APIC 1");
    assert_eq!(
        reg32(&get_lapic(&v, c0), reg::ID),
        0,
        "x2APIC ID 0 in xAPIC format"
    );
    // x2APIC → xAPIC directly is refused (#GP), x2APIC → disabled is allowed.
    v.script(0, &[wr(0x1b, 0xfee0_0000 | (1 << 11) | (1 << 8)), out]);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(
        v.regs(c0).rip,
        rip + 1 + 8 + 1,
        "refused: only the previous OUT completed"
    );
    v.script(0, &[wr(0x1b, 0xfee0_0000 | (1 << 8)), out]);
    assert_eq!(v.ioctl_fd(c0, KVM_RUN, 0), 0);
    assert_eq!(v.regs(c0).rip, rip + 1 + 8 + 1 + 1 + 2);
    v.close(c0);
    v.close(c1);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn an_msi_kicks_a_running_target_out_of_the_guest() {
    use std::sync::atomic::Ordering::SeqCst;
    let v = Vmm::new();
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    set_if(&v, cpu, true);
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    v.script(0, &[out, out]);
    let b = &v.sys.backend;
    b.hold_id.store(0, SeqCst);
    b.hold.store(true, SeqCst);
    let (sys, h) = (v.sys, v.h(cpu) as usize);
    let t = std::thread::spawn(move || {
        // SAFETY: the vCPU is closed only after the join.
        unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) }
    });
    while !b.holding.load(SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The vCPU is "in the guest": the MSI is posted and its CPU kicked.
    let kicks = v.host.kicks.load(SeqCst);
    assert_eq!(msi(&v, vm, 0, 0x5a), 1);
    assert_eq!(v.host.kicks.load(SeqCst), kicks + 1, "target CPU kicked");
    b.hold.store(false, SeqCst);
    b.hold_id.store(u32::MAX, SeqCst);
    assert_eq!(t.join().unwrap(), 0);
    assert!(
        soft_delivered(&v, cpu).is_empty(),
        "posted while in the guest"
    );
    // The next entry takes it.
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, cpu), vec![0x5a]);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn tsc_deadline_timer_through_the_msr() {
    let v = Vmm::new();
    v.host.clock.store(1_000_000, Ordering::SeqCst);
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    // QEMU's CPUID with TSC_DEADLINE added (KVM_CAP_TSC_DEADLINE_TIMER).
    let mut n = 64u32;
    let a = v.buf(8 + 40 * 64);
    v.host.user_write(a, &n.to_le_bytes());
    assert_eq!(v.ioctl(v.kvm, KVM_GET_SUPPORTED_CPUID, a), 0);
    n = u32::from_le_bytes(v.host.user_read(a, 4).try_into().unwrap());
    for i in 0..n as u64 {
        let at = a + 8 + 40 * i;
        let mut e: kvm_cpuid_entry2 = v.get(at);
        if e.function == 1 {
            e.ecx |= 1 << 24;
            v.host.user_write(at, e.as_bytes());
        }
    }
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_CPUID2, a), 0);
    enable_apic(&v, cpu, 0x700);
    set_if(&v, cpu, true);
    // Guest TSC at 4_000_000; the fake host's TSC runs at 2 GHz.
    let mut m = [0u8; 24];
    m[..4].copy_from_slice(&1u32.to_le_bytes());
    m[8..12].copy_from_slice(&0x10u32.to_le_bytes());
    m[16..24].copy_from_slice(&4_000_000u64.to_le_bytes());
    let ma = v.put(&m);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_MSRS, ma), 1);
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&0x4_00d0u32.to_le_bytes());
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    v.script(
        0,
        &[
            (
                Exit::Mmio {
                    gpa: 0xfee0_0320,
                    len: 4,
                    write: true,
                    data,
                },
                6,
            ),
            (
                Exit::Wrmsr {
                    index: 0x6e0,
                    data: 4_020_000,
                },
                2,
            ),
            (Exit::Rdmsr { index: 0x6e0 }, 2),
            out,
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(v.regs(cpu).rax, 4_020_000, "IA32_TSC_DEADLINE reads back");
    assert!(soft_delivered(&v, cpu).is_empty());
    // 20_000 ticks at 2 GHz = 10 µs later.
    v.host.clock.store(1_010_000, Ordering::SeqCst);
    v.script(0, &[(Exit::Rdmsr { index: 0x6e0 }, 2), out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(soft_delivered(&v, cpu), vec![0xd0]);
    assert_eq!(v.regs(cpu).rax, 0, "disarmed once it fired");
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn pic_window_request_is_ignored_while_lint0_is_masked() {
    // QEMU keeps request_interrupt_window set while its PIC has an interrupt; once the guest
    // masks LINT0 (APIC mode) no window may be requested, or the vCPU would exit for ever.
    let v = Vmm::new();
    let vm = split_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x10700);
    set_if(&v, cpu, true);
    let run = v.run_page(cpu);
    // SAFETY: the run page lives as long as the vCPU.
    unsafe { (*run).request_interrupt_window = 1 };
    let out = (
        Exit::Io {
            port: 0x80,
            size: 1,
            out: true,
            data: 0,
        },
        1,
    );
    v.script(0, &[out]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: as above.
    let r = unsafe { &*run };
    assert_eq!(
        r.exit_reason, KVM_EXIT_IO,
        "the guest ran to its OUT, no window loop"
    );
    assert_eq!(r.ready_for_interrupt_injection, 0);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
