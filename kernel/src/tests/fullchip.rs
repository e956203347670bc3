//! The full in-kernel irqchip (`KVM_CREATE_IRQCHIP`) through the ioctl interface, with the soft
//! backend as the guest: creation rules and errnos, `KVM_GET/SET_IRQCHIP` round trips, the
//! default routes and `KVM_IRQ_LINE_STATUS` values, IRQCHIP routes in `KVM_SET_GSI_ROUTING`,
//! a guest programming the PIC by port I/O and taking IRQ0 as an ExtINT vector, and a
//! level-triggered IOAPIC pin programmed by MMIO that is delivered once until the guest's EOI.

use kvm_abi::*;
use zerocopy::IntoBytes;

use crate::backend::Exit;
use crate::errno::{EEXIST, EFAULT, EINVAL, ENXIO};
use crate::fake::vmm::{zeroed, Vmm};
use crate::irqchip::lapic::reg;

fn e(x: crate::errno::Errno) -> i64 {
    -i64::from(x.0)
}

fn full_vm(v: &Vmm) -> i64 {
    let vm = v.create_vm();
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    vm
}

pub(super) fn get_chip(v: &Vmm, vm: i64, id: u32) -> (i64, kvm_irqchip) {
    let mut c: kvm_irqchip = zeroed();
    c.chip_id = id;
    let a = v.put(&c);
    let r = v.ioctl_fd(vm, KVM_GET_IRQCHIP, a);
    (r, v.get(a))
}

fn set_chip(v: &Vmm, vm: i64, c: &kvm_irqchip) -> i64 {
    let a = v.put(c);
    v.ioctl_fd(vm, KVM_SET_IRQCHIP, a)
}

/// `KVM_IRQ_LINE_STATUS`: (ioctl result, status).
fn line_status(v: &Vmm, vm: i64, gsi: u32, level: u32) -> (i64, i32) {
    let a = v.put(&kvm_irq_level { irq: gsi, level });
    let r = v.ioctl_fd(vm, KVM_IRQ_LINE_STATUS, a);
    (r, v.get::<kvm_irq_level>(a).status())
}

pub(super) fn chip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut en: kvm_irq_routing_entry = zeroed();
    en.gsi = gsi;
    en.r#type = KVM_IRQ_ROUTING_IRQCHIP;
    en.u.irqchip_mut().irqchip = chip;
    en.u.irqchip_mut().pin = pin;
    en
}

fn msi_route(gsi: u32) -> kvm_irq_routing_entry {
    let mut en: kvm_irq_routing_entry = zeroed();
    en.gsi = gsi;
    en.r#type = KVM_IRQ_ROUTING_MSI;
    en.u.msi_mut().address_lo = 0xfee0_0000;
    en.u.msi_mut().data = 0x30;
    en
}

pub(super) fn routing(v: &Vmm, vm: i64, entries: &[kvm_irq_routing_entry]) -> i64 {
    let mut b = (entries.len() as u32).to_le_bytes().to_vec();
    b.extend(0u32.to_le_bytes());
    for en in entries {
        b.extend(en.as_bytes());
    }
    let a = v.buf(b.len());
    v.host.user_write(a, &b);
    v.ioctl_fd(vm, KVM_SET_GSI_ROUTING, a)
}

pub(super) fn delivered(v: &Vmm, cpu: i64) -> Vec<u8> {
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

/// Software-enables the APIC of `cpu` with LINT0 = `lvt0`, and sets RFLAGS.IF.
pub(super) fn enable_apic(v: &Vmm, cpu: i64, lvt0: u32) {
    let a = v.buf(1024);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_LAPIC, a), 0);
    let mut p = v.host.user_read(a, 1024);
    p[reg::SPIV as usize..reg::SPIV as usize + 4].copy_from_slice(&0x1ffu32.to_le_bytes());
    p[reg::LVT0 as usize..reg::LVT0 as usize + 4].copy_from_slice(&lvt0.to_le_bytes());
    v.host.user_write(a, &p);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_LAPIC, a), 0);
    let mut r = v.regs(cpu);
    r.rflags |= 0x200;
    v.set_regs(cpu, &r);
}

pub(super) fn out(port: u16, val: u8) -> (Exit, u64) {
    (
        Exit::Io {
            port,
            size: 1,
            out: true,
            data: u32::from(val),
        },
        2,
    )
}

fn inb(port: u16) -> (Exit, u64) {
    (
        Exit::Io {
            port,
            size: 1,
            out: false,
            data: 0,
        },
        2,
    )
}

pub(super) fn mmio_w(gpa: u64, val: u32) -> (Exit, u64) {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&val.to_le_bytes());
    (
        Exit::Mmio {
            gpa,
            len: 4,
            write: true,
            data,
        },
        6,
    )
}

fn mmio_r(gpa: u64) -> (Exit, u64) {
    (
        Exit::Mmio {
            gpa,
            len: 4,
            write: false,
            data: [0; 8],
        },
        6,
    )
}

/// The guest's marker: an OUT to port 0x80, which exits to userspace.
pub(super) const MARK: u16 = 0x80;

#[test]
fn create_rules_and_errnos() {
    let v = Vmm::new();
    // No irqchip: GET/SET_IRQCHIP and IRQ_LINE(_STATUS) are ENXIO (after reading the argument).
    let vm = v.create_vm();
    assert_eq!(get_chip(&v, vm, 0).0, e(ENXIO));
    assert_eq!(v.ioctl_fd(vm, KVM_GET_IRQCHIP, 8), e(EFAULT));
    assert_eq!(line_status(&v, vm, 0, 1).0, e(ENXIO));
    let c = v.create_vcpu(vm, 0);
    assert_eq!(
        v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0),
        e(EINVAL),
        "after a vCPU"
    );
    v.close(c);
    v.close(vm);
    // Once only; split mode afterwards (and the reverse) is EEXIST; split VMs have no chips.
    let vm = full_vm(&v);
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), e(EEXIST));
    let mut ec: kvm_enable_cap = zeroed();
    ec.cap = KVM_CAP_SPLIT_IRQCHIP;
    ec.args[0] = 24;
    let a = v.put(&ec);
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, a), e(EEXIST));
    assert_eq!(get_chip(&v, vm, 3).0, e(EINVAL), "bad chip id");
    let mut bad: kvm_irqchip = zeroed();
    bad.chip_id = 7;
    assert_eq!(set_chip(&v, vm, &bad), e(EINVAL));
    // KVM_INTERRUPT: EINVAL for a bad vector first, then ENXIO (the PIC is in the kernel).
    let c = v.create_vcpu(vm, 0);
    let i = v.put(&kvm_interrupt { irq: 256 });
    assert_eq!(v.ioctl_fd(c, KVM_INTERRUPT, i), e(EINVAL));
    let i = v.put(&kvm_interrupt { irq: 0x20 });
    assert_eq!(v.ioctl_fd(c, KVM_INTERRUPT, i), e(ENXIO));
    // The vCPU has an in-kernel local APIC.
    let la = v.buf(1024);
    assert_eq!(v.ioctl_fd(c, KVM_GET_LAPIC, la), 0);
    v.close(c);
    v.close(vm);
    let vm = v.create_vm();
    let a = v.put(&ec);
    assert_eq!(v.ioctl_fd(vm, KVM_ENABLE_CAP, a), 0);
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), e(EEXIST));
    assert_eq!(get_chip(&v, vm, 0).0, e(ENXIO), "split: no in-kernel PIC");
    v.close(vm);
    v.assert_clean();
}

#[test]
fn get_set_irqchip_round_trips() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    // Linux's initial PIC state: zero but the ELCR masks.
    let (r, m) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    assert_eq!(r, 0);
    assert_eq!(m.chip.pic().elcr_mask, 0xf8);
    assert_eq!(m.chip.pic().imr, 0);
    assert_eq!(
        get_chip(&v, vm, KVM_IRQCHIP_PIC_SLAVE)
            .1
            .chip
            .pic()
            .elcr_mask,
        0xde
    );
    // The IOAPIC after reset: base 0xfec00000, every pin masked.
    let (r, io) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    assert_eq!(r, 0);
    assert_eq!(io.chip.ioapic().base_address, 0xfec0_0000);
    assert!(io
        .chip
        .ioapic()
        .redirtbl
        .iter()
        .all(|e| *e.bits() == 1 << 16));
    // SET then GET gives the same bytes back (QEMU's kvm_pic_put / kvm_ioapic_put).
    let mut s = m;
    let p = s.chip.pic_mut();
    p.irq_base = 0x08;
    p.imr = 0xfa;
    p.elcr = 0x08;
    p.isr = 0x01;
    p.priority_add = 3;
    p.auto_eoi = 1;
    assert_eq!(set_chip(&v, vm, &s), 0);
    assert_eq!(get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER).1, s);
    let mut t = io;
    let st = t.chip.ioapic_mut();
    st.id = 2;
    st.ioregsel = 0x12;
    st.redirtbl[4].raw = 0x0100_0000_0001_8034;
    assert_eq!(set_chip(&v, vm, &t), 0);
    assert_eq!(get_chip(&v, vm, KVM_IRQCHIP_IOAPIC).1, t);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn default_routes_and_line_status() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    assert_eq!(
        v.ioctl(
            v.kvm,
            KVM_CHECK_EXTENSION,
            u64::from(KVM_CAP_IRQ_INJECT_STATUS)
        ),
        1
    );
    // GSI 0: PIC pin 0 (unmasked in the initial state: 1) + IOAPIC pin 0 (masked: -1) = 1.
    assert_eq!(line_status(&v, vm, 0, 1), (0, 1));
    // Still high: the PIC says 1 again (Linux computes "coalesced" only on an edge), the
    // IOAPIC's edge pin 0 coalesces (0): 1.
    assert_eq!(line_status(&v, vm, 0, 1), (0, 1));
    // Deassertion: PIC 1 + IOAPIC 1 = 2 (Linux sums the routes).
    assert_eq!(line_status(&v, vm, 0, 0), (0, 2));
    // GSI 20 reaches only the (masked) IOAPIC; GSI 30 has no route.
    assert_eq!(line_status(&v, vm, 20, 1), (0, -1));
    assert_eq!(line_status(&v, vm, 30, 1), (0, -1));
    // Mask PIC pin 1 (IOAPIC pin 1 is masked too): -1 overall.
    let (_, mut m) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    m.chip.pic_mut().imr = 0x02;
    assert_eq!(set_chip(&v, vm, &m), 0);
    assert_eq!(line_status(&v, vm, 1, 1), (0, -1));
    // KVM_IRQ_LINE leaves the argument alone.
    let a = v.put(&kvm_irq_level { irq: 3, level: 1 });
    assert_eq!(v.ioctl_fd(vm, KVM_IRQ_LINE, a), 0);
    assert_eq!(v.get::<kvm_irq_level>(a).irq, 3);
    // The PIC latched pins 0 (edge, then dropped: still requested), 1 (masked, but
    // requested) and 3.
    let (_, m) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    assert_eq!(m.chip.pic().irr, 0x0b);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn irqchip_routes_follow_linux_rules() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    use KVM_IRQCHIP_IOAPIC as IO;
    use KVM_IRQCHIP_PIC_MASTER as M;
    use KVM_IRQCHIP_PIC_SLAVE as S;
    // QEMU's kvm_pc_setup_irq_routing: PIC pins for GSI 0-15 (not 2), IOAPIC pin 2 for GSI 0.
    let mut t = Vec::new();
    for i in 0..8 {
        if i != 2 {
            t.push(chip_route(i, M, i));
        }
    }
    for i in 8..16 {
        t.push(chip_route(i, S, i - 8));
    }
    for i in 0..24 {
        if i == 0 {
            t.push(chip_route(0, IO, 2));
        } else if i != 2 {
            t.push(chip_route(i, IO, i));
        }
    }
    t.push(msi_route(30));
    assert_eq!(routing(&v, vm, &t), 0);
    assert_eq!(
        routing(&v, vm, &[chip_route(1, M, 8)]),
        e(EINVAL),
        "PIC pin"
    );
    assert_eq!(
        routing(&v, vm, &[chip_route(1, IO, 24)]),
        e(EINVAL),
        "IOAPIC pin"
    );
    assert_eq!(
        routing(&v, vm, &[chip_route(1, 3, 0)]),
        e(EINVAL),
        "chip id"
    );
    assert_eq!(
        routing(&v, vm, &[chip_route(1, IO, 1), chip_route(1, IO, 3)]),
        e(EINVAL),
        "same chip twice"
    );
    assert_eq!(
        routing(
            &v,
            vm,
            &[
                chip_route(1, M, 1),
                chip_route(1, S, 1),
                chip_route(1, IO, 1)
            ]
        ),
        0,
        "one pin per chip"
    );
    assert_eq!(
        routing(&v, vm, &[chip_route(1, M, 1), msi_route(1)]),
        e(EINVAL)
    );
    assert_eq!(
        routing(&v, vm, &[msi_route(1), chip_route(1, M, 1)]),
        e(EINVAL)
    );
    let mut f = chip_route(1, M, 1);
    f.flags = KVM_MSI_VALID_DEVID;
    assert_eq!(
        routing(&v, vm, &[f]),
        e(EINVAL),
        "flags on an IRQCHIP route"
    );
    // GSI 0 → PIC pin 0 (unmasked: 1) and IOAPIC pin 2 (masked: -1) now.
    assert_eq!(routing(&v, vm, &t), 0);
    assert_eq!(line_status(&v, vm, 0, 1), (0, 1));
    let (_, io) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    assert_eq!(io.chip.ioapic().irr, 1 << 2, "IOAPIC pin 2 saw it");
    assert_eq!(line_status(&v, vm, 2, 1), (0, -1), "GSI 2 has no route");
    v.close(vm);
    v.assert_clean();
}

#[test]
fn pic_irq0_reaches_the_guest_as_extint() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    let run = v.run_page(cpu);
    // The guest programs the PIC as Linux's init_8259A does (vectors 0x30/0x38), unmasks
    // IRQ0 and the cascade, reads the mask back, and signals: none of it leaves the kernel.
    v.script(
        0,
        &[
            out(0x21, 0xff),
            out(0xa1, 0xff),
            out(0x20, 0x11),
            out(0x21, 0x30),
            out(0x21, 0x04),
            out(0x21, 0x01),
            out(0xa0, 0x11),
            out(0xa1, 0x38),
            out(0xa1, 0x02),
            out(0xa1, 0x01),
            out(0x21, 0xfa),
            out(0xa1, 0xff),
            inb(0x21),
            out(MARK, 0),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(r.u.io().port, MARK);
    assert_eq!(v.regs(cpu).rax & 0xff, 0xfa, "IN 0x21 read the mask");
    assert_eq!(
        r.ready_for_interrupt_injection, 1,
        "always 1 with the in-kernel PIC"
    );
    // The timer's IRQ0 (GSI 0 → PIC pin 0 + IOAPIC pin 0, which is masked): 1.
    assert_eq!(line_status(&v, vm, 0, 1), (0, 1));
    assert_eq!(line_status(&v, vm, 0, 0), (0, 2));
    v.script(0, &[out(MARK, 1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x30], "ExtINT vector base + 0");
    let (_, m) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    assert_eq!(
        (m.chip.pic().isr, m.chip.pic().irr),
        (0x01, 0x00),
        "acknowledged"
    );
    // Not in the APIC's ISR (ExtINT bypasses it).
    let la = v.buf(1024);
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_LAPIC, la), 0);
    assert_eq!(v.host.user_read(la + 0x100 + 0x10, 4), vec![0; 4]);
    // The guest EOIs the PIC; a slave IRQ (12, GSI 12) then arrives through the cascade.
    assert_eq!(line_status(&v, vm, 12, 1).1, -1, "slave pin 4 masked");
    v.script(0, &[out(0x20, 0x20), out(0xa1, 0xef), out(MARK, 2)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    v.script(0, &[out(MARK, 3)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x30, 0x3c]);
    // QEMU's interrupt-window request is ignored with the in-kernel PIC: the run goes on.
    // SAFETY: as above.
    unsafe { (*run).request_interrupt_window = 1 };
    v.script(0, &[(Exit::Continue, 0), out(MARK, 4)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    // LINT0 masked: the PIC's request waits.
    enable_apic(&v, cpu, 0x10700);
    v.script(0, &[out(0xa0, 0x20), out(0x20, 0x20), out(MARK, 5)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(line_status(&v, vm, 0, 1).1, 1);
    v.script(0, &[out(MARK, 6)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu).len(), 2);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn ioapic_level_irq_is_delivered_once_until_eoi() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x10700);
    let io = 0xfec0_0000u64;
    // The guest masks the PICs, then programs IOAPIC pin 10: level, vector 0x3a, APIC 0.
    v.script(
        0,
        &[
            out(0x21, 0xff),
            out(0xa1, 0xff),
            mmio_w(io, 0x10 + 2 * 10 + 1),
            mmio_w(io + 0x10, 0),
            mmio_w(io, 0x10 + 2 * 10),
            mmio_w(io + 0x10, 0x0000_803a),
            mmio_w(io, 1),
            mmio_r(io + 0x10),
            out(MARK, 0),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    let run = v.run_page(cpu);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    assert_eq!(r.u.io().port, MARK);
    assert_eq!(
        v.regs(cpu).rax,
        0x0017_0011,
        "IOAPIC version read in the kernel"
    );
    // Level high: PIC -1 (masked) + IOAPIC 1 (one APIC accepted) = 1.
    assert_eq!(line_status(&v, vm, 10, 1), (0, 1));
    assert_eq!(line_status(&v, vm, 10, 1), (0, -1), "remote IRR: not again");
    let (_, c) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    assert_ne!(*c.chip.ioapic().redirtbl[10].bits() & (1 << 14), 0);
    // The guest takes 0x3a and EOIs it with the line still high: delivered again.
    v.script(0, &[mmio_w(0xfee0_00b0, 0), out(MARK, 1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(
        r.exit_reason, KVM_EXIT_IO,
        "no KVM_EXIT_IOAPIC_EOI in full mode"
    );
    v.script(0, &[out(MARK, 2)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x3a, 0x3a]);
    // The device drops the line; the EOI clears remote IRR and nothing follows.
    // Deassertion: PIC slave pin 2 masked (-1) + IOAPIC 1.
    assert_eq!(line_status(&v, vm, 10, 0).1, 1);
    v.script(0, &[mmio_w(0xfee0_00b0, 0), out(MARK, 3)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    v.script(0, &[out(MARK, 4)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x3a, 0x3a]);
    let (_, c) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    assert_eq!(*c.chip.ioapic().redirtbl[10].bits() & (1 << 14), 0);
    // Outside the 256-byte window: an ordinary MMIO exit to userspace.
    v.script(0, &[mmio_r(io + 0x100)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_MMIO);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn halted_vcpu_wakes_for_pic_and_ioapic_interrupts() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    // PIC: vectors 0x20/0x28, only IRQ0 and the cascade unmasked (state as QEMU would SET it).
    for (id, base, imr) in [(0u32, 0x20u8, 0xfau8), (1, 0x28, 0xff)] {
        let (_, mut c) = get_chip(&v, vm, id);
        c.chip.pic_mut().irq_base = base;
        c.chip.pic_mut().imr = imr;
        assert_eq!(set_chip(&v, vm, &c), 0);
    }
    // IOAPIC pin 5: edge, vector 0x45, APIC 0.
    let (_, mut c) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    c.chip.ioapic_mut().redirtbl[5].raw = 0x45;
    assert_eq!(set_chip(&v, vm, &c), 0);
    let run = v.run_page(cpu) as usize;
    let h = v.h(cpu) as usize;
    let sys = v.sys;
    for (gsi, vector) in [(0u32, 0x20u8), (5, 0x45)] {
        v.script(0, &[(Exit::Hlt, 1)]);
        let t = std::thread::spawn(move || {
            // SAFETY: the handle stays live until the test closes it after join.
            let r = unsafe { sys.ioctl(h as *mut std::ffi::c_void, KVM_RUN, 0) };
            // SAFETY: as above.
            (r, unsafe { (*(run as *const kvm_run)).exit_reason })
        });
        // Once the HLT was played the vCPU sleeps in the kernel; then the device interrupts.
        while !v.sys.backend.script.lock().unwrap().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(line_status(&v, vm, gsi, 1).1 >= 1);
        assert_eq!(line_status(&v, vm, gsi, 0).0, 0);
        let (r, reason) = t.join().unwrap();
        assert_eq!(r, 0);
        assert_eq!(reason, KVM_EXIT_FAIL_ENTRY, "script ended after the wakeup");
        assert_eq!(delivered(&v, cpu).last(), Some(&vector));
    }
    assert_eq!(delivered(&v, cpu), vec![0x20, 0x45]);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn bsp_lint0_takes_pic_interrupts_after_reset() {
    // Linux's default LINT0_REENABLED quirk: a VMM that never touches the local APIC still gets
    // PIC interrupts on the BSP (its APIC is software-disabled, LINT0 = ExtINT).
    let v = Vmm::new();
    let vm = full_vm(&v);
    let bsp = v.create_vcpu(vm, 0);
    let ap = v.create_vcpu(vm, 1);
    let (_, mut c) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    c.chip.pic_mut().irq_base = 0x20;
    c.chip.pic_mut().imr = 0xfe;
    assert_eq!(set_chip(&v, vm, &c), 0);
    let mut r = v.regs(bsp);
    r.rflags |= 0x200;
    v.set_regs(bsp, &r);
    assert_eq!(line_status(&v, vm, 0, 1).1, 1);
    v.script(0, &[out(MARK, 0)]);
    assert_eq!(v.ioctl_fd(bsp, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, bsp), vec![0x20]);
    let la = v.buf(1024);
    assert_eq!(v.ioctl_fd(ap, KVM_GET_LAPIC, la), 0);
    assert_eq!(
        v.host.user_read(la + u64::from(reg::LVT0), 4),
        vec![0, 0, 1, 0],
        "AP: masked"
    );
    v.close(ap);
    v.close(bsp);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn ioapic_window_follows_the_base_address() {
    let v = Vmm::new();
    let vm = full_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*run };
    let (_, mut c) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    c.chip.ioapic_mut().base_address = 0xfed0_0000;
    c.chip.ioapic_mut().ioregsel = 1;
    assert_eq!(set_chip(&v, vm, &c), 0);
    v.script(0, &[mmio_r(0xfed0_0010), out(MARK, 0)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(r.exit_reason, KVM_EXIT_IO);
    assert_eq!(v.regs(cpu).rax, 0x0017_0011);
    v.script(0, &[mmio_r(0xfec0_0010)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(
        r.exit_reason, KVM_EXIT_MMIO,
        "the old window is ordinary MMIO"
    );
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

type TVm = crate::vm::Vm<
    crate::fake::host::FakeHost,
    crate::soft::SoftBackend<crate::fake::host::FakeHost>,
>;

fn count_ack(arg: usize, gsi: u32) {
    // SAFETY: arg is the address of the test's leaked counter.
    let c = unsafe { &*(arg as *const std::sync::atomic::AtomicU32) };
    assert_eq!(gsi, 0);
    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn ack_notifiers_hear_pic_and_ioapic_eois() {
    use crate::irqchip::ack::{register_ack_notifier, unregister_ack_notifier};
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let v = Vmm::new();
    let split = v.create_vm();
    let mut ec: kvm_enable_cap = zeroed();
    ec.cap = KVM_CAP_SPLIT_IRQCHIP;
    let a = v.put(&ec);
    assert_eq!(v.ioctl_fd(split, KVM_ENABLE_CAP, a), 0);
    // SAFETY: live VM handle.
    let svm = unsafe { &*(v.h(split) as *const TVm) };
    assert_eq!(register_ack_notifier(svm, 0, count_ack, 0), Err(ENXIO));
    v.close(split);
    let vm = full_vm(&v);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(&v, cpu, 0x700);
    // SAFETY: live VM handle, closed at the end of the test.
    let kvm = unsafe { &*(v.h(vm) as *const TVm) };
    let count: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let arg = count as *const AtomicU32 as usize;
    let h = register_ack_notifier(kvm, 0, count_ack, arg).unwrap();
    let other = register_ack_notifier(kvm, 5, count_ack, arg).unwrap();
    // PIC: IRQ0 (vector 0x20), the guest's EOI acknowledges GSI 0.
    let (_, mut c) = get_chip(&v, vm, KVM_IRQCHIP_PIC_MASTER);
    c.chip.pic_mut().irq_base = 0x20;
    c.chip.pic_mut().imr = 0xfe;
    assert_eq!(set_chip(&v, vm, &c), 0);
    assert_eq!(line_status(&v, vm, 0, 1).1, 1);
    assert_eq!(line_status(&v, vm, 0, 0).1, 2);
    v.script(0, &[out(MARK, 0)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(count.load(SeqCst), 0, "delivered, not yet acknowledged");
    v.script(0, &[out(0x20, 0x20), out(MARK, 1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(count.load(SeqCst), 1);
    // IOAPIC: QEMU's GSI 0 → pin 2, edge, vector 0x30; the PIC masked. The local APIC's EOI
    // of the edge vector reaches the IOAPIC because a notifier listens.
    c.chip.pic_mut().imr = 0xff;
    assert_eq!(set_chip(&v, vm, &c), 0);
    let mut t = vec![chip_route(0, KVM_IRQCHIP_IOAPIC, 2)];
    t.extend(
        (1..24)
            .filter(|&i| i != 2)
            .map(|i| chip_route(i, KVM_IRQCHIP_IOAPIC, i)),
    );
    assert_eq!(routing(&v, vm, &t), 0);
    let (_, mut io) = get_chip(&v, vm, KVM_IRQCHIP_IOAPIC);
    io.chip.ioapic_mut().redirtbl[2].raw = 0x30;
    assert_eq!(set_chip(&v, vm, &io), 0);
    assert_eq!(line_status(&v, vm, 0, 1).1, 1);
    assert_eq!(line_status(&v, vm, 0, 0).1, 1);
    v.script(0, &[mmio_w(0xfee0_00b0, 0), out(MARK, 2)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x20, 0x30]);
    assert_eq!(count.load(SeqCst), 2);
    // Unregistered: no more calls; the other notifier (GSI 5) never heard anything.
    unregister_ack_notifier(kvm, h);
    unregister_ack_notifier(kvm, other);
    assert_eq!(line_status(&v, vm, 0, 1).1, 1);
    v.script(0, &[mmio_w(0xfee0_00b0, 0), out(MARK, 3)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(delivered(&v, cpu), vec![0x20, 0x30, 0x30]);
    assert_eq!(count.load(SeqCst), 2);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
