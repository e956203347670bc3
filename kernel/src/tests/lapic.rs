//! The local APIC register model (pure: explicit clock): priorities, EOI, ISR stacking, timer
//! modes and divider, MMIO access rules, state page round trip, destination matching, MSI
//! decode (Intel SDM vol. 3 ch. 11; Linux `lapic.c` behaviour).

use crate::irqchip::lapic::{
    decode_msi, dm, match_dest, reg, sh, Effect, Irq, Lapic, APIC_REG_SIZE, APIC_VERSION, BASE_BSP,
    BASE_ENABLE, LVT_MASKED, MIN_PERIOD_NS,
};

fn apic() -> Box<Lapic> {
    let mut l = Lapic::boxed();
    l.new_state(3, 0xfee0_0000 | BASE_ENABLE);
    // Software-enable with spurious vector 0xff.
    assert_eq!(l.write_reg(reg::SPIV, 0x1ff, 0), Effect::None);
    l
}

#[test]
fn reset_values_follow_linux() {
    let mut l = Lapic::boxed();
    l.new_state(3, 0xfee0_0000 | BASE_ENABLE | BASE_BSP);
    assert_eq!(l.reg(reg::ID), 3 << 24);
    assert_eq!(l.reg(reg::LVR), APIC_VERSION);
    assert_eq!(l.reg(reg::DFR), 0xffff_ffff);
    assert_eq!(l.reg(reg::SPIV), 0xff);
    for o in [reg::LVTT, reg::LVTTHMR, reg::LVTPC, reg::LVT1, reg::LVTERR] {
        assert_eq!(l.reg(o), LVT_MASKED, "LVT {o:#x}");
    }
    // KVM_X86_QUIRK_LINT0_REENABLED: the BSP's LINT0 is ExtINT, an AP's is masked.
    assert_eq!(l.reg(reg::LVT0), 0x700);
    assert!(l.accept_pic_intr());
    assert!(!l.sw_enabled());
    assert_eq!(l.mp_state, kvm_abi::KVM_MP_STATE_RUNNABLE, "BSP runs");
    let mut ap = Lapic::boxed();
    ap.new_state(1, 0xfee0_0000 | BASE_ENABLE);
    assert_eq!(ap.reg(reg::LVT0), LVT_MASKED);
    assert_eq!(ap.mp_state, kvm_abi::KVM_MP_STATE_UNINITIALIZED, "AP waits");
    // Software-disabled: fixed interrupts are dropped.
    assert!(!l.accept_fixed(0x40, false));
    assert_eq!(l.pending(), None);
}

#[test]
fn priority_ack_eoi_and_isr_stacking() {
    let mut l = apic();
    assert!(l.accept_fixed(0x31, false));
    assert!(l.accept_fixed(0x52, false));
    assert_eq!(l.pending(), Some(0x52));
    l.ack(0x52);
    assert!(l.in_service(0x52) && !l.requested(0x52));
    assert_eq!(l.ppr(), 0x50);
    // Same or lower class than PPR waits.
    assert!(l.accept_fixed(0x5f, false));
    assert_eq!(l.pending(), None);
    // A higher class nests.
    assert!(l.accept_fixed(0x80, false));
    assert_eq!(l.pending(), Some(0x80));
    l.ack(0x80);
    assert_eq!(l.ppr(), 0x80);
    // EOI retires the highest in-service vector first.
    assert_eq!(l.write_reg(reg::EOI, 0, 0), Effect::Eoi(0x80));
    assert_eq!(l.ppr(), 0x50);
    assert_eq!(l.write_reg(reg::EOI, 0, 0), Effect::Eoi(0x52));
    assert_eq!(l.ppr(), 0);
    assert_eq!(
        l.write_reg(reg::EOI, 0, 0),
        Effect::None,
        "nothing in service"
    );
    assert_eq!(l.pending(), Some(0x5f));
    // TPR masks by class: 0x5f is blocked by TPR 0x50, not by 0x4f.
    assert_eq!(l.write_reg(reg::TASKPRI, 0x50, 0), Effect::Tpr);
    assert_eq!(l.pending(), None);
    assert_eq!(l.cr8(), 5);
    l.write_reg(reg::TASKPRI, 0x4f, 0);
    assert_eq!(l.ppr(), 0x4f);
    assert_eq!(l.pending(), Some(0x5f));
    // CR8 writes by the guest become the TPR class; same class keeps the low bits.
    l.sync_cr8(4);
    assert_eq!(l.reg(reg::TASKPRI), 0x4f);
    l.sync_cr8(6);
    assert_eq!(l.reg(reg::TASKPRI), 0x60);
    assert_eq!(l.pending(), None);
    // TMR follows the trigger mode of the accepted interrupt.
    assert!(l.accept_fixed(0x90, true));
    assert!(l.level_triggered(0x90));
    assert!(l.accept_fixed(0x90, false));
    assert!(!l.level_triggered(0x90));
}

#[test]
fn register_write_masks_and_mmio_access_rules() {
    let mut l = apic();
    l.write_reg(reg::ID, 0x1234_5678, 0);
    assert_eq!(l.reg(reg::ID), 0x1200_0000);
    l.write_reg(reg::LDR, 0xffff_ffff, 0);
    assert_eq!(l.reg(reg::LDR), 0xff00_0000);
    l.write_reg(reg::DFR, 0x0000_0000, 0);
    assert_eq!(l.reg(reg::DFR), 0x0fff_ffff);
    l.write_reg(reg::LVR, 0, 0);
    assert_eq!(l.reg(reg::LVR), APIC_VERSION, "read-only");
    l.write_reg(reg::LVT0, 0xffff_ffff, 0);
    assert_eq!(
        l.reg(reg::LVT0),
        0x0001_a7ff,
        "LINT0: no delivery status, no remote IRR"
    );
    l.write_reg(reg::LVTERR, 0xffff_ffff, 0);
    assert_eq!(l.reg(reg::LVTERR), 0x0001_00ff);
    l.write_reg(reg::LVTT, 0xffff_ffff, 0);
    assert_eq!(l.reg(reg::LVTT), 0x0003_00ff, "TSC-deadline bit dropped");
    l.write_reg(reg::TDCR, 0xffff_ffff, 0);
    assert_eq!(l.reg(reg::TDCR), 0xb);
    // Software disable masks every LVT and keeps them masked on writes.
    l.write_reg(reg::LVT1, 0x400, 0);
    assert_eq!(l.reg(reg::LVT1), 0x400);
    l.write_reg(reg::SPIV, 0xff, 0);
    assert_ne!(l.reg(reg::LVT1) & LVT_MASKED, 0);
    l.write_reg(reg::LVT1, 0x400, 0);
    assert_eq!(l.reg(reg::LVT1), 0x400 | LVT_MASKED);
    // MMIO: sub-word reads inside a register, zeros across or outside registers.
    let mut l = apic();
    assert_eq!(l.mmio_read(reg::ID, 4, 0), 3 << 24);
    assert_eq!(l.mmio_read(reg::ID + 3, 1, 0), 3);
    assert_eq!(l.mmio_read(reg::LVR, 2, 0), 0x14);
    assert_eq!(l.mmio_read(reg::LVR + 2, 2, 0), 5);
    assert_eq!(l.mmio_read(reg::ID + 2, 4, 0), 0, "crosses the register");
    assert_eq!(l.mmio_read(0x40, 4, 0), 0, "reserved offset");
    assert_eq!(l.mmio_read(0x1000 - 4, 4, 0), 0);
    // Writes other than aligned dwords are dropped.
    assert_eq!(l.mmio_write(reg::TASKPRI, 2, 0x30, 0), Effect::None);
    assert_eq!(l.mmio_write(reg::TASKPRI + 4, 4, 0x30, 0), Effect::None);
    assert_eq!(l.reg(reg::TASKPRI), 0);
    assert_eq!(l.mmio_write(reg::TASKPRI, 4, 0x30, 0), Effect::Tpr);
    assert_eq!(l.mmio_read(reg::PROCPRI, 4, 0), 0x30);
    // ICR: the high half gives the destination, the low half sends.
    l.mmio_write(reg::ICR2, 4, 0x0200_0000, 0);
    let e = l.mmio_write(reg::ICR, 4, 0x000c_4500 | (1 << 12), 0);
    assert_eq!(
        e,
        Effect::Ipi(Irq {
            vector: 0,
            mode: dm::INIT,
            logical: false,
            level: true,
            trig_level: false,
            shorthand: sh::OTHERS,
            dest: 2,
        })
    );
    assert_eq!(l.reg(reg::ICR) & (1 << 12), 0, "delivery status reads idle");
}

#[test]
fn timer_one_shot_periodic_divider_and_mask() {
    let mut l = apic();
    // Divider table (SDM 11.5.4): TDCR → divide by.
    for (tdcr, div) in [
        (0x0, 2),
        (0x1, 4),
        (0x2, 8),
        (0x3, 16),
        (0x8, 32),
        (0x9, 64),
        (0xa, 128),
        (0xb, 1),
    ] {
        l.write_reg(reg::TDCR, tdcr, 0);
        assert_eq!(l.timer.tick_ns, div, "TDCR {tdcr:#x}");
    }
    // One-shot, divide by 1 (1 ns per count), vector 0xec.
    l.write_reg(reg::TDCR, 0xb, 0);
    l.write_reg(reg::LVTT, 0xec, 0);
    l.write_reg(reg::TMICT, 1000, 5000);
    assert_eq!(l.timer.deadline, 6000);
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 5400), 600);
    assert!(!l.timer_poll(5999));
    assert!(l.timer_poll(6000));
    assert!(l.requested(0xec));
    assert_eq!(l.timer.deadline, 0, "one-shot stops");
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 7000), 0);
    assert!(!l.timer_poll(100_000));
    // Divide by 2: 1000 counts = 2000 ns.
    l.write_reg(reg::TDCR, 0x0, 0);
    l.write_reg(reg::TMICT, 1000, 0);
    assert_eq!(l.timer.deadline, 2000);
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 1000), 500);
    // A divider change keeps the remaining count: 500 counts left at /2 become 500 at /8.
    l.write_reg(reg::TDCR, 0x2, 1000);
    assert_eq!(l.timer.deadline, 5000);
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 1000), 500);
    // TMICT = 0 stops the timer.
    l.write_reg(reg::TMICT, 0, 10);
    assert_eq!(l.timer.deadline, 0);
    // Periodic: reloads; a too-short period is raised to the minimum.
    l.write_reg(reg::EOI, 0, 0);
    l.ack(0xec);
    l.write_reg(reg::EOI, 0, 0);
    l.write_reg(reg::LVTT, 0xed | (1 << 17), 0);
    l.write_reg(reg::TDCR, 0xb, 0);
    l.write_reg(reg::TMICT, 10, 0);
    assert_eq!(l.timer.period, MIN_PERIOD_NS);
    assert!(l.timer_poll(MIN_PERIOD_NS));
    assert_eq!(l.timer.deadline, 2 * MIN_PERIOD_NS);
    assert!(l.requested(0xed));
    // Far behind: the next deadline is a period after now, not a burst of catch-up ticks.
    assert!(l.timer_poll(10 * MIN_PERIOD_NS + 5));
    assert_eq!(l.timer.deadline, 11 * MIN_PERIOD_NS + 5);
    // Periodic with a longer count and the current count wrapping per period.
    l.write_reg(reg::TMICT, 1_000_000, 0);
    assert_eq!(l.timer.period, 1_000_000);
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 250_000), 750_000);
    assert!(l.timer_poll(1_000_000));
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 1_250_000), 750_000, "reloaded");
    // Masked LVTT: expiry raises nothing but the timer keeps running.
    let mut m = apic();
    m.write_reg(reg::TDCR, 0xb, 0);
    m.write_reg(reg::LVTT, 0xee | LVT_MASKED, 0);
    m.write_reg(reg::TMICT, 5, 0);
    assert!(m.timer_poll(5));
    assert!(!m.requested(0xee));
}

#[test]
fn state_page_round_trip_and_linux_fixups() {
    let mut a = apic();
    a.write_reg(reg::TASKPRI, 0x20, 0);
    a.write_reg(reg::LDR, 0x0800_0000, 0);
    a.write_reg(reg::LVT0, 0x700, 0);
    a.write_reg(reg::TDCR, 0xb, 0);
    a.write_reg(reg::LVTT, 0x30, 0);
    a.write_reg(reg::TMICT, 5000, 1000);
    a.accept_fixed(0x61, true);
    a.accept_fixed(0x45, false);
    a.ack(0x61);
    let mut page = [0u8; APIC_REG_SIZE];
    a.get_state(3000, &mut page);
    let at =
        |off: u32| u32::from_le_bytes(page[off as usize..off as usize + 4].try_into().unwrap());
    assert_eq!(at(reg::TMCCT), 3000, "current count computed at read time");
    assert_eq!(at(reg::ISR + 0x30), 1 << 1, "ISR bit 0x61");
    assert_eq!(at(reg::IRR + 0x20), 1 << 5, "IRR bit 0x45");
    assert_eq!(at(reg::TMR + 0x30), 1 << 1, "TMR bit 0x61");
    assert_eq!(at(reg::PROCPRI), 0x60);
    // Load it into another APIC later: the timer continues from TMCCT.
    let mut b = Lapic::boxed();
    b.new_state(3, 0xfee0_0000 | BASE_ENABLE);
    let mut p2 = page;
    p2[reg::LVR as usize..reg::LVR as usize + 4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    p2[reg::PROCPRI as usize..reg::PROCPRI as usize + 4].copy_from_slice(&0u32.to_le_bytes());
    b.set_state(&p2, 10_000);
    assert_eq!(
        b.reg(reg::LVR),
        APIC_VERSION,
        "KVM's version register is kept"
    );
    assert_eq!(b.ppr(), 0x60, "PPR recomputed from ISR/TPR");
    assert_eq!(b.timer.deadline, 13_000);
    assert_eq!(b.reg(reg::TMCCT), 0);
    let mut back = [0u8; APIC_REG_SIZE];
    b.get_state(10_000, &mut back);
    assert_eq!(back[..], page[..], "same page back");
    assert_eq!(b.pending(), None, "0x45 is below PPR 0x60");
    b.write_reg(reg::EOI, 0, 0);
    assert_eq!(b.pending(), Some(0x45));
}

fn phys(dest: u32) -> Irq {
    Irq {
        vector: 0x40,
        mode: dm::FIXED,
        logical: false,
        level: true,
        trig_level: false,
        shorthand: sh::NONE,
        dest,
    }
}

#[test]
fn destination_matching() {
    let mut l = apic();
    let m = l.mirror();
    assert!(match_dest(m, &phys(3), false, false));
    assert!(!match_dest(m, &phys(4), false, false));
    assert!(match_dest(m, &phys(0xff), false, false), "broadcast");
    // Flat logical: LDR bit set in the destination mask.
    l.write_reg(reg::LDR, 0x0400_0000, 0);
    let m = l.mirror();
    let log = |dest| Irq {
        logical: true,
        ..phys(dest)
    };
    assert!(match_dest(m, &log(0x06), false, false));
    assert!(!match_dest(m, &log(0x03), false, false));
    // Cluster: high nibble cluster, low nibble members.
    l.write_reg(reg::DFR, 0x0fff_ffff, 0);
    l.write_reg(reg::LDR, 0x2100_0000, 0);
    let m = l.mirror();
    assert!(match_dest(m, &log(0x23), false, false));
    assert!(!match_dest(m, &log(0x13), false, false));
    assert!(!match_dest(m, &log(0x22), false, false));
    // Shorthands.
    let s = |shorthand| Irq {
        shorthand,
        ..phys(0)
    };
    assert!(match_dest(m, &s(sh::SELF), true, false) && !match_dest(m, &s(sh::SELF), false, false));
    assert!(match_dest(m, &s(sh::ALL), true, false) && match_dest(m, &s(sh::ALL), false, false));
    assert!(
        !match_dest(m, &s(sh::OTHERS), true, false) && match_dest(m, &s(sh::OTHERS), false, false)
    );
    // A globally disabled APIC is no target.
    l.set_base(0xfee0_0000);
    assert!(!match_dest(l.mirror(), &phys(0xff), false, false));
    // Enabling it again resets the xAPIC ID to the vCPU id (Linux kvm_lapic_set_base).
    l.write_reg(reg::ID, 0x0900_0000, 0);
    l.set_base(0xfee0_0000 | BASE_ENABLE);
    assert_eq!(l.id(), 3);
}

#[test]
fn msi_decode() {
    // Physical destination 5, vector 0x41, fixed, edge.
    assert_eq!(
        decode_msi(0xfee0_5000, 0x0041),
        phys(5).with(0x41, dm::FIXED, false)
    );
    // Logical, lowest priority, level-triggered, NMI / INIT modes.
    let i = decode_msi(0xfee0_3004, 0xc125);
    assert!(i.logical && i.trig_level && i.level);
    assert_eq!((i.vector, i.mode, i.dest), (0x25, dm::LOWEST, 3));
    assert_eq!(decode_msi(0xfee0_0000, 0x400).mode, dm::NMI);
    assert_eq!(decode_msi(0xfee0_0000, 0x500).mode, dm::INIT);
}

trait With {
    fn with(self, vector: u8, mode: u8, trig_level: bool) -> Irq;
}

impl With for Irq {
    fn with(self, vector: u8, mode: u8, trig_level: bool) -> Irq {
        Irq {
            vector,
            mode,
            trig_level,
            ..self
        }
    }
}

#[test]
fn x2apic_mode_msrs_and_state() {
    use crate::irqchip::lapic::{BASE_X2APIC, MIRROR_X2APIC};
    let mut l = Lapic::boxed();
    l.new_state(0x23, 0xfee0_0000 | BASE_ENABLE);
    l.write_reg(reg::SPIV, 0x1ff, 0);
    // Not in x2APIC mode: the MSRs raise #GP.
    assert_eq!(l.x2apic_read(0x802, 0), None);
    assert_eq!(l.x2apic_write(0x808, 0, 0), None);
    l.set_base(0xfee0_0000 | BASE_ENABLE | BASE_X2APIC);
    assert!(l.x2apic());
    assert_eq!(l.mmio_base(), None, "no MMIO page in x2APIC mode");
    assert_eq!(l.x2apic_read(0x802, 0), Some(0x23), "32-bit x2APIC ID");
    assert_eq!(
        l.x2apic_read(0x80d, 0),
        Some((2 << 16) | (1 << 3)),
        "LDR from the ID"
    );
    assert_eq!(l.x2apic_read(0x803, 0), Some(u64::from(APIC_VERSION)));
    // Registers that do not exist in x2APIC mode, write-only and read-only ones.
    for msr in [0x809, 0x80e, 0x831, 0x80b, 0x83f] {
        assert_eq!(l.x2apic_read(msr, 0), None, "read {msr:#x}");
    }
    for msr in [0x802, 0x803, 0x80a, 0x80d, 0x80e, 0x810, 0x839] {
        assert_eq!(l.x2apic_write(msr, 0, 0), None, "write {msr:#x}");
    }
    assert_eq!(
        l.x2apic_write(0x808, 1 << 32, 0),
        None,
        "reserved upper half"
    );
    assert_eq!(l.x2apic_write(0x828, 1, 0), None, "ESR: only 0");
    assert_eq!(
        l.x2apic_write(0x83f, 0x100, 0),
        None,
        "SELF IPI: vector only"
    );
    // TPR, EOI through MSRs.
    assert_eq!(l.x2apic_write(0x808, 0x20, 0), Some(Effect::Tpr));
    assert!(l.accept_fixed(0x51, false));
    l.ack(0x51);
    assert_eq!(l.x2apic_write(0x80b, 0, 0), Some(Effect::Eoi(0x51)));
    // ICR is one 64-bit MSR with a 32-bit destination.
    let e = l.x2apic_write(0x830, (0x1234_5678u64 << 32) | 0x0000_4031, 0);
    assert_eq!(
        e,
        Some(Effect::Ipi(Irq {
            vector: 0x31,
            mode: dm::FIXED,
            logical: false,
            level: true,
            trig_level: false,
            shorthand: sh::NONE,
            dest: 0x1234_5678,
        }))
    );
    assert_eq!(
        l.x2apic_read(0x830, 0),
        Some((0x1234_5678u64 << 32) | 0x4031)
    );
    assert_eq!(
        l.x2apic_write(0x83f, 0x44, 0),
        Some(Effect::Ipi(Irq {
            vector: 0x44,
            mode: dm::FIXED,
            logical: false,
            level: true,
            trig_level: false,
            shorthand: sh::SELF,
            dest: 0,
        }))
    );
    // KVM_GET_LAPIC shows the ID in xAPIC format (no KVM_CAP_X2APIC_API); SET ignores it.
    let mut page = [0u8; APIC_REG_SIZE];
    l.get_state(0, &mut page);
    assert_eq!(
        u32::from_le_bytes(page[0x20..0x24].try_into().unwrap()),
        0x23 << 24
    );
    page[0x20..0x24].copy_from_slice(&0x0700_0000u32.to_le_bytes());
    page[0xd0..0xd4].copy_from_slice(&0u32.to_le_bytes());
    l.set_state(&page, 0);
    assert_eq!(l.id(), 0x23);
    assert_eq!(l.x2apic_read(0x80d, 0), Some((2 << 16) | (1 << 3)));
    // Matching in x2APIC mode: 32-bit physical, cluster logical, broadcasts.
    let m = l.mirror();
    assert_ne!(m & MIRROR_X2APIC, 0);
    assert!(match_dest(m, &phys(0x23), false, true));
    assert!(!match_dest(m, &phys(0x123), false, true));
    let log = |dest| Irq {
        logical: true,
        ..phys(dest)
    };
    assert!(match_dest(m, &log((2 << 16) | 0x18), false, true));
    assert!(!match_dest(m, &log((3 << 16) | 0x8), false, true));
    assert!(match_dest(m, &phys(0xffff_ffff), false, true));
    // An MSI/IOAPIC message to 0xff reaches x2APIC targets (Linux's broadcast quirk), an IPI
    // to 0xff does not.
    assert!(match_dest(m, &phys(0xff), false, false));
    assert!(!match_dest(m, &phys(0xff), false, true));
}

#[test]
fn tsc_deadline_mode() {
    let mut l = apic();
    // Without the CPUID bit the mode cannot be selected.
    l.write_reg(reg::LVTT, 0x4_00e0, 0);
    assert!(!l.tsc_deadline_mode());
    l.tscdl_ok = 3;
    l.write_reg(reg::LVTT, 0x4_00e0, 0);
    assert!(l.tsc_deadline_mode());
    // TMICT is ignored, TMCCT reads 0.
    l.write_reg(reg::TMICT, 1000, 0);
    assert_eq!((l.reg(reg::TMICT), l.timer.deadline), (0, 0));
    // 2 GHz TSC: 3000 ticks ahead = 1500 ns.
    l.set_tsc_deadline(13_000, 10_000, 2_000_000, 100);
    assert_eq!((l.timer.deadline, l.tsc_deadline()), (1600, 13_000));
    assert_eq!(l.mmio_read(reg::TMCCT, 4, 200), 0);
    assert!(!l.timer_poll(1599));
    assert!(l.timer_poll(1600));
    assert!(l.requested(0xe0));
    assert_eq!(l.tsc_deadline(), 0, "disarmed after it fired");
    // A deadline in the past fires at the next poll; 0 disarms; huge deltas saturate.
    l.set_tsc_deadline(5, 10_000, 2_000_000, 7);
    assert_eq!(l.timer.deadline, 7);
    l.set_tsc_deadline(0, 10_000, 2_000_000, 7);
    assert_eq!(l.timer.deadline, 0);
    l.set_tsc_deadline(u64::MAX, 0, 1, 7);
    assert_eq!(l.timer.deadline, u64::MAX);
    // Leaving TSC-deadline mode stops the timer; the MSR then reads 0 and writes are ignored.
    l.write_reg(reg::LVTT, 0xe0, 0);
    assert_eq!((l.timer.deadline, l.tsc_deadline()), (0, 0));
    l.set_tsc_deadline(13_000, 10_000, 2_000_000, 100);
    assert_eq!(l.timer.deadline, 0);
}
