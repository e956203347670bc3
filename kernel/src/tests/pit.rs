//! The in-kernel 8254 PIT: the model over a fake clock (mode table, latches, read-back, BCD,
//! gate/OUT 2), the VM ioctls and their errno table, IRQ0 over simulated time with and
//! without reinjection, and guest port I/O handled without a userspace exit.

use std::sync::atomic::Ordering;

use kvm_abi::*;

use super::fullchip::{chip_route, delivered, enable_apic, get_chip, mmio_w, out, routing, MARK};
use crate::backend::Exit;
use crate::errno::{EEXIST, EFAULT, ENOENT, ENXIO};
use crate::fake::host::FakeHost;
use crate::fake::vmm::{zeroed, Vmm};
use crate::irqchip::ack::{register_ack_notifier, unregister_ack_notifier, MAX_ACK_NOTIFIERS};
use crate::irqchip::pit::{ns_to_ticks, ticks_to_ns, Pit8254, PIT_FREQ};
use crate::irqchip::pitdev;
use crate::soft::SoftBackend;
use crate::vm::Vm;

type TVm = Vm<FakeHost, SoftBackend<FakeHost>>;

const T0: u64 = 1_000_000_000_000;

/// Host time of `ticks` PIT ticks after `T0` (rounded up so exactly `ticks` have elapsed).
fn at(ticks: u64) -> u64 {
    T0 + ticks_to_ns(ticks) + 1
}

/// Programs channel `ch` with control bits `rw_mode_bcd` (bits 5..0 of the control word)
/// and a 16-bit count at `T0`.
fn program(p: &mut Pit8254, ch: u16, mode: u8, bcd: bool, count: u16) {
    let cw = ((ch as u8) << 6) | 0x30 | (mode << 1) | u8::from(bcd);
    p.write(3, cw, T0);
    let [lo, hi] = count.to_le_bytes();
    p.write(ch, lo, T0);
    p.write(ch, hi, T0);
}

/// Reads the live 16-bit counter with two byte reads (LSB then MSB).
fn read16(p: &mut Pit8254, ch: u16, now: u64) -> u16 {
    let lo = p.read(ch, now);
    let hi = p.read(ch, now);
    u16::from_le_bytes([lo, hi])
}

#[test]
fn time_conversion_is_integer_and_exact_on_whole_seconds() {
    assert_eq!(ns_to_ticks(1_000_000_000), PIT_FREQ);
    assert_eq!(ns_to_ticks(3_000_000_000), 3 * PIT_FREQ);
    assert_eq!(ns_to_ticks(838), 0);
    assert_eq!(ns_to_ticks(839), 1); // one tick is 838.095 ns
    assert_eq!(ticks_to_ns(PIT_FREQ), 1_000_000_000);
    assert_eq!(ticks_to_ns(0x10000), 54_925_401);
    // No overflow at the far end of the clock.
    assert_eq!(ns_to_ticks(u64::MAX), 22_010_322_987_356_910);
}

#[test]
fn mode0_interrupt_on_terminal_count() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 0, false, 100);
    assert_eq!(read16(&mut p, 0, at(0)), 100);
    assert!(!p.out(0, at(0)));
    assert_eq!(p.count(0, at(40)), 60);
    assert!(!p.out(0, at(99)));
    assert!(p.out(0, at(100)));
    assert_eq!(p.count(0, at(100)), 0);
    // Keeps counting down through zero (wraps to 0xffff), OUT stays high.
    assert_eq!(p.count(0, at(101)), 0xffff);
    assert!(p.out(0, at(5000)));
    assert_eq!(p.irq0_timer().map(|t| t.periodic), Some(false));
}

#[test]
fn mode1_and_mode5_one_shots() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 1, 1, false, 10);
    assert!(!p.out(1, at(3)));
    assert!(p.out(1, at(10)));
    assert_eq!(p.count(1, at(3)), 7);
    program(&mut p, 1, 5, false, 10);
    // Strobe: high, low for exactly the tick at count 0.
    assert!(p.out(1, at(9)));
    assert!(!p.out(1, at(10)));
    assert!(p.out(1, at(11)));
    assert_eq!(p.count(1, at(12)), 0xfffe);
}

#[test]
fn mode2_rate_generator() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 2, false, 5);
    let seq: Vec<u16> = (0..11).map(|t| p.count(0, at(t))).collect();
    assert_eq!(seq, [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5]);
    let out: Vec<bool> = (0..11).map(|t| p.out(0, at(t))).collect();
    // Low for the one tick at count 1.
    assert_eq!(
        out,
        [true, true, true, true, false, true, true, true, true, false, true]
    );
    let t = p.irq0_timer().unwrap();
    assert!(t.periodic);
    // 5 ticks = 4.19 µs: clamped to the 200 µs minimum.
    assert_eq!(t.period_ns, 200_000);
    program(&mut p, 0, 2, false, 11932);
    assert_eq!(p.irq0_timer().unwrap().period_ns, ticks_to_ns(11932));
    // Modes 6 and 7 alias 2 and 3.
    p.write(3, 0x3c, T0);
    assert_eq!(p.ch[0].mode, 2);
    p.write(3, 0x3e, T0);
    assert_eq!(p.ch[0].mode, 3);
}

#[test]
fn mode3_square_wave() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 2, 3, false, 6);
    let seq: Vec<u16> = (0..7).map(|t| p.count(2, at(t))).collect();
    assert_eq!(seq, [6, 4, 2, 6, 4, 2, 6]);
    let out: Vec<bool> = (0..7).map(|t| p.out(2, at(t))).collect();
    assert_eq!(out, [true, true, true, false, false, false, true]);
    // Odd count: high one tick longer than low.
    program(&mut p, 2, 3, false, 5);
    let out: Vec<bool> = (0..5).map(|t| p.out(2, at(t))).collect();
    assert_eq!(out, [true, true, true, false, false]);
}

#[test]
fn mode4_software_strobe_and_zero_count() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 4, false, 0);
    // Count 0 is 0x10000.
    assert_eq!(p.ch[0].count, 0x10000);
    assert_eq!(p.count(0, at(1)), 0xffff);
    assert!(p.out(0, at(0xffff)));
    assert!(!p.out(0, at(0x10000)));
    assert_eq!(p.irq0_timer().unwrap().period_ns, ticks_to_ns(0x10000));
}

#[test]
fn access_modes_lsb_msb_word() {
    let mut p = Pit8254::new(T0);
    // LSB only.
    p.write(3, 0x10 | (2 << 1), T0);
    p.write(0, 0x34, T0);
    assert_eq!(p.ch[0].count, 0x34);
    assert_eq!(p.read(0, at(0)), 0x34);
    assert_eq!(p.read(0, at(0)), 0x34);
    // MSB only.
    p.write(3, 0x20 | (2 << 1), T0);
    p.write(0, 0x12, T0);
    assert_eq!(p.ch[0].count, 0x1200);
    assert_eq!(p.read(0, at(0)), 0x12);
    // Word: a half-written count loads nothing yet.
    p.write(3, 0x30 | (2 << 1), T0);
    p.write(0, 0xcd, T0);
    assert_eq!(p.ch[0].count, 0x1200);
    p.write(0, 0xab, T0);
    assert_eq!(p.ch[0].count, 0xabcd);
    assert_eq!(read16(&mut p, 0, at(0x100)), 0xabcd - 0x100);
}

#[test]
fn counter_latch_freezes_the_value() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 2, false, 1000);
    p.write(3, 0x00, at(10)); // latch channel 0
                              // A second latch before the read does not overwrite the first.
    p.write(3, 0x00, at(500));
    assert_eq!(read16(&mut p, 0, at(700)), 990);
    // Then the live counter again.
    assert_eq!(read16(&mut p, 0, at(700)), 300);
    // Latch, read only the LSB, then the MSB comes from the latch, not the live count.
    p.write(3, 0x00, at(1));
    assert_eq!(p.read(0, at(900)), (999u16 & 0xff) as u8);
    assert_eq!(p.read(0, at(900)), (999u16 >> 8) as u8);
}

#[test]
fn read_back_command_latches_status_and_counts() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 0, false, 50);
    program(&mut p, 2, 3, true, 0x20);
    // Read-back status + count of channels 0 and 2 (bits 1 and 3), at tick 60.
    p.write(3, 0xc0 | 0x02 | 0x08, at(60));
    // Status first: OUT=1 (terminal count passed), RW=3, mode 0, binary.
    assert_eq!(p.read(0, at(70)), 0x80 | 0x30);
    assert_eq!(read16(&mut p, 0, at(70)), 0u16.wrapping_sub(10));
    // Channel 2: BCD 20, mode 3 at tick 60: 60 % 20 = 0 -> count 20, OUT high.
    assert_eq!(p.read(2, at(70)), 0x80 | 0x30 | (3 << 1) | 1);
    assert_eq!(read16(&mut p, 2, at(70)), 0x20);
    // Status only (bit 5 set = do not latch count) leaves the count live.
    p.write(3, 0xe2, at(80));
    assert_eq!(p.read(0, at(90)), 0x80 | 0x30);
    assert_eq!(read16(&mut p, 0, at(90)), 0u16.wrapping_sub(40));
    // Channel 1 was not selected: nothing latched there.
    assert_eq!(p.ch[1].status_latched, 0);
}

#[test]
fn bcd_counts_in_decimal() {
    let mut p = Pit8254::new(T0);
    program(&mut p, 0, 2, true, 0x1000); // 1000 decimal
    assert_eq!(p.count(0, at(1)), 0x0999);
    assert_eq!(p.count(0, at(990)), 0x0010);
    assert_eq!(p.count(0, at(1000)), 0x1000);
    assert_eq!(p.irq0_timer().unwrap().period_ns, ticks_to_ns(1000));
    // One-shot BCD wraps at 9999, and count 0 is 10^4.
    program(&mut p, 1, 0, true, 0x0005);
    assert_eq!(p.count(1, at(6)), 0x9999);
    program(&mut p, 1, 0, true, 0);
    assert_eq!(p.count(1, at(1)), 0x9999);
    assert!(!p.out(1, at(9999)));
    assert!(p.out(1, at(10000)));
}

#[test]
fn gate_and_speaker_port() {
    let mut p = Pit8254::new(T0);
    assert_eq!(p.ch.map(|c| c.gate), [1, 1, 0]);
    assert_eq!(p.ch.map(|c| c.mode), [0xff; 3]);
    program(&mut p, 2, 0, false, 100);
    // 0x61: gate 2 on, speaker data on.
    p.speaker_write(0x3, at(0));
    assert_eq!(p.ch[2].gate, 1);
    assert_ne!(p.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON, 0);
    assert_eq!(p.speaker_read(at(50)) & 0x23, 0x03);
    assert_eq!(p.speaker_read(at(100)) & 0x23, 0x23); // OUT 2 (bit 5) after terminal count
    p.speaker_write(0x0, at(0));
    assert_eq!(p.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON, 0);
    assert_eq!(p.speaker_read(at(100)) & 0x23, 0x20);
    // Mode 2: a rising gate edge restarts the count; a gate already high does not.
    program(&mut p, 2, 2, false, 100);
    p.speaker_write(1, at(30));
    assert_eq!(p.count(2, at(40)), 90);
    p.speaker_write(1, at(35));
    assert_eq!(p.count(2, at(40)), 90);
    // The refresh toggle (bit 4) flips every 2^14 ns.
    assert_ne!(
        p.speaker_read(1 << 14) & 0x10,
        p.speaker_read(2 << 14) & 0x10
    );
}

#[test]
fn hpet_legacy_and_mode5_stop_irq0() {
    let mut p = Pit8254::new(T0);
    assert_eq!(p.irq0_timer(), None); // reset state: no mode
    program(&mut p, 0, 2, false, 1000);
    assert!(p.irq0_timer().is_some());
    p.flags |= KVM_PIT_FLAGS_HPET_LEGACY;
    assert_eq!(p.irq0_timer(), None);
    p.flags = 0;
    program(&mut p, 0, 5, false, 1000);
    assert_eq!(p.irq0_timer(), None);
}

// ----- the VM device -----

struct Fix {
    v: Vmm,
    vm: i64,
    /// Rising edges of GSI 0 seen at the PIC so far (see [`Fix::edges`]).
    seen: std::cell::Cell<u32>,
}

impl Fix {
    /// A VM with the full in-kernel irqchip (`chip`) or none.
    fn new(chip: bool) -> Self {
        let v = Vmm::new();
        v.host.clock.store(T0, Ordering::SeqCst);
        let vm = v.create_vm();
        if chip {
            assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
        }
        Fix {
            v,
            vm,
            seen: std::cell::Cell::new(0),
        }
    }
    fn vmref(&self) -> &TVm {
        // SAFETY: the VM handle stays live until `done`.
        unsafe { &*(self.v.h(self.vm) as *const TVm) }
    }
    fn ioctl(&self, cmd: u32, arg: u64) -> i64 {
        self.v.ioctl_fd(self.vm, cmd, arg)
    }
    fn create(&self) {
        let a = self.v.put(&zeroed::<kvm_pit_config>());
        assert_eq!(self.ioctl(KVM_CREATE_PIT2, a), 0);
    }
    fn get2(&self) -> kvm_pit_state2 {
        let a = self.v.put(&zeroed::<kvm_pit_state2>());
        assert_eq!(self.ioctl(KVM_GET_PIT2, a), 0);
        self.v.get(a)
    }
    fn set2(&self, s: &kvm_pit_state2) {
        let a = self.v.put(s);
        assert_eq!(self.ioctl(KVM_SET_PIT2, a), 0);
    }
    fn reinject(&self, on: bool) {
        let mut c = zeroed::<kvm_reinject_control>();
        c.pit_reinject = u8::from(on);
        let a = self.v.put(&c);
        assert_eq!(self.ioctl(KVM_REINJECT_CONTROL, a), 0);
    }
    fn clock(&self, ns: u64) {
        self.v.host.clock.store(ns, Ordering::SeqCst);
    }
    /// IRQ0 work as the BSP does it, then a look at the PIC ([`Fix::edges`]).
    fn service(&self) {
        pitdev::service_now(self.vmref());
        self.edges();
    }
    /// Rising edges of GSI 0 so far, as the real master PIC latched them: IRR bit 0 (pin 0 is
    /// edge-triggered and unmasked after creation) is counted and cleared, as an interrupt
    /// acknowledge would, so the next pulse latches again. Call it after every pulse.
    fn edges(&self) -> u32 {
        let mut c: kvm_irqchip = zeroed();
        c.chip_id = KVM_IRQCHIP_PIC_MASTER;
        let a = self.v.put(&c);
        assert_eq!(self.ioctl(KVM_GET_IRQCHIP, a), 0);
        let mut c: kvm_irqchip = self.v.get(a);
        if c.chip.pic().irr & 1 != 0 {
            self.seen.set(self.seen.get() + 1);
            c.chip.pic_mut().irr &= !1;
            let a = self.v.put(&c);
            assert_eq!(self.ioctl(KVM_SET_IRQCHIP, a), 0);
        }
        self.seen.get()
    }
    fn done(self) {
        self.v.close(self.vm);
        self.v.assert_clean();
    }
}

/// `KVM_GET_IRQCHIP` of the master PIC.
fn pic_master(v: &Vmm, vm: i64) -> kvm_pic_state {
    let mut c: kvm_irqchip = zeroed();
    c.chip_id = KVM_IRQCHIP_PIC_MASTER;
    let a = v.put(&c);
    assert_eq!(v.ioctl_fd(vm, KVM_GET_IRQCHIP, a), 0);
    *v.get::<kvm_irqchip>(a).chip.pic()
}

fn err(e: crate::errno::Errno) -> i64 {
    -i64::from(e.0)
}

#[test]
fn ioctl_errno_table() {
    let f = Fix::new(false);
    let cfg = f.v.put(&zeroed::<kvm_pit_config>());
    let s2 = f.v.put(&zeroed::<kvm_pit_state2>());
    let s1 = f.v.put(&zeroed::<kvm_pit_state>());
    let rc = f.v.put(&zeroed::<kvm_reinject_control>());
    let bad = 8u64; // unmapped user address
                    // Without an in-kernel PIC (Linux: ENOENT), and nothing to get/set.
    assert_eq!(f.ioctl(KVM_CREATE_PIT2, cfg), err(ENOENT));
    assert_eq!(f.ioctl(KVM_CREATE_PIT, 0), err(ENOENT));
    assert_eq!(f.ioctl(KVM_CREATE_PIT2, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_GET_PIT2, s2), err(ENXIO));
    assert_eq!(f.ioctl(KVM_SET_PIT2, s2), err(ENXIO));
    assert_eq!(f.ioctl(KVM_GET_PIT, s1), err(ENXIO));
    assert_eq!(f.ioctl(KVM_SET_PIT, s1), err(ENXIO));
    assert_eq!(f.ioctl(KVM_REINJECT_CONTROL, rc), err(ENXIO));
    // Copy-in comes first where Linux copies in first; GET_PIT2 checks the PIT first.
    assert_eq!(f.ioctl(KVM_SET_PIT2, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_GET_PIT, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_SET_PIT, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_REINJECT_CONTROL, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_GET_PIT2, bad), err(ENXIO));
    // The split irqchip has no PIC: still ENOENT.
    let split = f.v.create_vm();
    let ec = f.v.put(&kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        args: [24, 0, 0, 0],
        ..zeroed()
    });
    assert_eq!(f.v.ioctl_fd(split, KVM_ENABLE_CAP, ec), 0);
    assert_eq!(f.v.ioctl_fd(split, KVM_CREATE_PIT2, cfg), err(ENOENT));
    f.v.close(split);
    // With the full irqchip: created once, then EEXIST (for both creation ioctls).
    assert_eq!(f.ioctl(KVM_CREATE_IRQCHIP, 0), 0);
    assert_eq!(f.ioctl(KVM_CREATE_PIT2, cfg), 0);
    assert_eq!(f.ioctl(KVM_CREATE_PIT2, cfg), err(EEXIST));
    assert_eq!(f.ioctl(KVM_CREATE_PIT, 0), err(EEXIST));
    assert_eq!(f.ioctl(KVM_GET_PIT2, bad), err(EFAULT));
    assert_eq!(f.ioctl(KVM_GET_PIT2, s2), 0);
    assert_eq!(f.ioctl(KVM_SET_PIT2, s2), 0);
    assert_eq!(f.ioctl(KVM_GET_PIT, s1), 0);
    assert_eq!(f.ioctl(KVM_SET_PIT, s1), 0);
    assert_eq!(f.ioctl(KVM_REINJECT_CONTROL, rc), 0);
    assert_eq!(f.v.host.counts().timers, 1);
    f.done();
}

#[test]
fn reset_state_and_get_set_round_trip() {
    let f = Fix::new(true);
    f.create();
    let s = f.get2();
    for (i, c) in s.channels.iter().enumerate() {
        assert_eq!(
            (c.count, c.mode, c.gate, c.count_load_time),
            (0x10000, 0xff, u8::from(i != 2), T0 as i64)
        );
    }
    assert_eq!((s.flags, s.reserved), (0, [0; 9]));
    let mut w = zeroed::<kvm_pit_state2>();
    for (i, c) in w.channels.iter_mut().enumerate() {
        *c = kvm_pit_channel_state {
            count: 1000 + i as u32,
            latched_count: 0x1234,
            count_latched: 3,
            status_latched: 1,
            status: 0xb4,
            read_state: 4,
            write_state: 3,
            write_latch: 0x56,
            rw_mode: 3,
            mode: 2,
            bcd: 0,
            gate: 1,
            count_load_time: 42,
        };
    }
    w.flags = KVM_PIT_FLAGS_HPET_LEGACY;
    w.reserved = [7; 9];
    f.clock(T0 + 5000);
    f.set2(&w);
    let r = f.get2();
    // Everything as written, except that counts were reloaded now (Linux
    // `kvm_pit_load_count`) and reserved reads back as zero.
    let mut want = w;
    for c in want.channels.iter_mut() {
        c.count_load_time = (T0 + 5000) as i64;
    }
    want.reserved = [0; 9];
    assert_eq!(r.channels, want.channels);
    assert_eq!(r.flags, KVM_PIT_FLAGS_HPET_LEGACY);
    // HPET legacy: channel 0 raises no IRQ0.
    assert_eq!(f.vmref().pit.get().unwrap().debug_irq().2, 0);
    // The old KVM_SET_PIT leaves the flags alone.
    let mut old = zeroed::<kvm_pit_state>();
    old.channels = w.channels;
    old.channels[1].count = 0;
    let a = f.v.put(&old);
    assert_eq!(f.ioctl(KVM_SET_PIT, a), 0);
    let r = f.get2();
    assert_eq!(
        (r.flags, r.channels[1].count),
        (KVM_PIT_FLAGS_HPET_LEGACY, 0x10000)
    );
    let b = f.v.put(&zeroed::<kvm_pit_state>());
    assert_eq!(f.ioctl(KVM_GET_PIT, b), 0);
    let g: kvm_pit_state = f.v.get(b);
    assert_eq!(g.channels, r.channels);
    f.done();
}

/// Mode 2 with a 10 ms period on channel 0 through KVM_SET_PIT2.
fn periodic_10ms(f: &Fix) -> u64 {
    let mut s = f.get2();
    s.channels[0].mode = 2;
    s.channels[0].count = 11932;
    s.channels[0].rw_mode = 3;
    f.set2(&s);
    ticks_to_ns(11932)
}

#[test]
fn irq0_periodic_with_reinjection() {
    let f = Fix::new(true);
    f.create();
    let vm = f.vmref();
    let period = periodic_10ms(&f);
    let arms = f.v.host.timer_arms.load(Ordering::SeqCst);
    assert_eq!(vm.pit.get().unwrap().debug_irq(), (0, true, T0 + period));
    // Nothing due before the deadline.
    f.clock(T0 + period - 1);
    f.service();
    assert_eq!(f.edges(), 0);
    // One period, the host timer fires: one pulse, timer re-armed for the next period.
    f.clock(T0 + period);
    pitdev::fire_timer(vm);
    f.service();
    assert_eq!(f.edges(), 1);
    assert_eq!(
        vm.pit.get().unwrap().debug_irq(),
        (0, false, T0 + 2 * period)
    );
    assert!(f.v.host.timer_arms.load(Ordering::SeqCst) > arms);
    // The BSP did not run for 4 more periods: 4 ticks pending, none injected before the
    // guest acknowledges the last one.
    f.clock(T0 + 5 * period + 10);
    f.service();
    assert_eq!(f.edges(), 1);
    assert_eq!(
        vm.pit.get().unwrap().debug_irq(),
        (4, false, T0 + 6 * period)
    );
    // Each acknowledgement lets exactly one more through: all 5 ticks arrive.
    for n in 2..=5 {
        pitdev::irq0_acked(vm);
        f.service();
        f.service();
        assert_eq!(f.edges(), n);
    }
    pitdev::irq0_acked(vm);
    f.service();
    assert_eq!(f.edges(), 5);
    // A backlog is forgotten when the guest unmasks IRQ0.
    f.clock(T0 + 9 * period + 10);
    f.service();
    assert_eq!(f.edges(), 6);
    pitdev::irq0_mask_changed(vm, false);
    assert_eq!(vm.pit.get().unwrap().debug_irq().0, 0);
    f.done();
}

fn no_ack(_arg: usize, _gsi: u32) {}

/// Free slots of the VM's ack notifier registry (filled, then emptied again).
fn free_ack_slots(vm: &TVm) -> usize {
    let mut h = Vec::new();
    while let Ok(x) = register_ack_notifier(vm, 7, no_ack, 0) {
        h.push(x);
    }
    for x in &h {
        unregister_ack_notifier(vm, *x);
    }
    h.len()
}

#[test]
fn irq0_periodic_without_reinjection_coalesces() {
    let f = Fix::new(true);
    f.create();
    f.reinject(false);
    let vm = f.vmref();
    let period = periodic_10ms(&f);
    // One pulse per service while on time (no acknowledgement needed).
    for k in 1..=3 {
        f.clock(T0 + k * period);
        f.service();
        assert_eq!(f.edges(), k as u32);
    }
    // Five periods late: one pulse, the rest are dropped.
    f.clock(T0 + 8 * period);
    f.service();
    f.service();
    assert_eq!(f.edges(), 4);
    // Without reinjection the PIT holds no ack notifier (Linux unregisters it).
    assert_eq!(free_ack_slots(vm), MAX_ACK_NOTIFIERS);
    // Reinjection back on: starts from an empty backlog, the notifier listens again.
    f.reinject(true);
    assert_eq!(vm.pit.get().unwrap().debug_irq().0, 0);
    assert_eq!(free_ack_slots(vm), MAX_ACK_NOTIFIERS - 1);
    f.reinject(true);
    assert_eq!(
        free_ack_slots(vm),
        MAX_ACK_NOTIFIERS - 1,
        "switching on twice: one"
    );
    f.done();
}

#[test]
fn irq0_one_shot_fires_once() {
    let f = Fix::new(true);
    f.create();
    let vm = f.vmref();
    let mut s = f.get2();
    s.channels[0].mode = 0;
    s.channels[0].count = 1193; // ~1 ms
    f.set2(&s);
    f.clock(T0 + 50_000_000);
    f.service();
    pitdev::irq0_acked(vm);
    f.service();
    assert_eq!(f.edges(), 1);
    assert_eq!(vm.pit.get().unwrap().debug_irq().2, 0);
    f.done();
}

#[test]
fn guest_port_io_programs_the_pit_without_exits() {
    let v = Vmm::new();
    v.host.clock.store(T0, Ordering::SeqCst);
    let vm = v.create_vm();
    // SAFETY: the VM handle stays live until it is closed below.
    let vmr = unsafe { &*(v.h(vm) as *const TVm) };
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    let cfg = v.put(&kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..zeroed()
    });
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT2, cfg), 0);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    let io = |port, out, data| {
        (
            Exit::Io {
                port,
                size: 1,
                out,
                data,
            },
            2,
        )
    };
    v.script(
        0,
        &[
            io(0x43, true, 0x34), // channel 0, LSB+MSB, mode 2, binary
            io(0x40, true, 0x9c),
            io(0x40, true, 0x2e), // 11932: 10 ms
            io(0x61, true, 0x01), // gate 2 up (speaker port in the kernel)
            io(0x40, false, 0),   // counter LSB
            io(MARK, true, 0),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(
        unsafe { ((*run).exit_reason, (*run).u.io().port) },
        (KVM_EXIT_IO, MARK)
    );
    assert_eq!(v.regs(cpu).rax & 0xff, 0x9c);
    let m = vmr.pit.get().unwrap().model();
    assert_eq!((m.ch[0].mode, m.ch[0].count, m.ch[2].gate), (2, 11932, 1));
    assert_eq!(
        vmr.pit.get().unwrap().debug_irq().2,
        T0 + ticks_to_ns(11932)
    );
    // A port outside the PIT still exits to userspace.
    v.script(0, &[io(0x44, true, 0x1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(unsafe { (*run).exit_reason }, KVM_EXIT_IO);
    // 10 ms later the BSP pulses IRQ0 before its next entry.
    v.host
        .clock
        .store(T0 + ticks_to_ns(11932), Ordering::SeqCst);
    // The guest runs with IF=0: the tick waits in the PIC's IRR.
    assert_eq!(pic_master(&v, vm).irr & 1, 0);
    v.script(0, &[io(MARK, true, 1)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    assert_eq!(pic_master(&v, vm).irr & 1, 1);
    assert_eq!(
        vmr.pit.get().unwrap().debug_irq().0,
        0,
        "nothing left pending"
    );
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn speaker_port_stays_in_userspace_without_speaker_dummy() {
    let v = Vmm::new();
    let vm = v.create_vm();
    // SAFETY: the VM handle stays live until it is closed below.
    let vmr = unsafe { &*(v.h(vm) as *const TVm) };
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    let cfg = v.put(&zeroed::<kvm_pit_config>()); // what QEMU's kvm-pit passes
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT2, cfg), 0);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    v.script(
        0,
        &[(
            Exit::Io {
                port: 0x61,
                size: 1,
                out: true,
                data: 1,
            },
            2,
        )],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(unsafe { (*run).exit_reason }, KVM_EXIT_IO);
    assert_eq!(vmr.pit.get().unwrap().model().ch[2].gate, 0);
    // A word access straddling 0x43/0x44 is not the PIT's either (Linux's I/O bus).
    v.script(
        0,
        &[(
            Exit::Io {
                port: 0x43,
                size: 2,
                out: true,
                data: 0x34,
            },
            2,
        )],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(
        unsafe { ((*run).exit_reason, (*run).u.io().port) },
        (KVM_EXIT_IO, 0x43)
    );
    assert_eq!(vmr.pit.get().unwrap().model().ch[0].mode, 0xff);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn rep_outsb_and_insb_reach_the_pit_through_the_emulator() {
    let v = Vmm::new();
    v.host.clock.store(T0, Ordering::SeqCst);
    let vm = v.create_vm();
    // SAFETY: the VM handle stays live until it is closed below.
    let vmr = unsafe { &*(v.h(vm) as *const TVm) };
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT, 0), 0);
    let cpu = v.create_vcpu(vm, 0);
    let run = v.run_page(cpu);
    let ram = v.add_slot(vm, 0, 0, 0x10000, 0);
    // Real mode, CS = DS = ES = 0. At 0x1000: rep outsb to 0x43 (SI = 0x2000, CX = 1); out
    // 0x80 (the marker); rep outsb to 0x42 (the count bytes); out 0x80; rep insb from 0x42 (DI
    // = 0x3000); out 0x80. The test sets DX and CX at each marker (the marker's OUT completes,
    // and RIP moves past it, at the next KVM_RUN).
    let a = v.buf(size_of::<kvm_sregs>());
    assert_eq!(v.ioctl_fd(cpu, KVM_GET_SREGS, a), 0);
    let mut s: kvm_sregs = v.get(a);
    for seg in [&mut s.cs, &mut s.ds, &mut s.es, &mut s.ss] {
        seg.selector = 0;
        seg.base = 0;
    }
    let a = v.put(&s);
    assert_eq!(v.ioctl_fd(cpu, KVM_SET_SREGS, a), 0);
    v.host.user_write(ram + 0x2000, &[0xb4, 0x34, 0x12]); // ch 2, word, mode 2; 0x1234
    v.host.user_write(
        ram + 0x1000,
        &[
            0xf3, 0x6e, 0xe6, 0x80, 0xf3, 0x6e, 0xe6, 0x80, 0xf3, 0x6c, 0xe6, 0x80,
        ],
    );
    let mut r = v.regs(cpu);
    (r.rip, r.rsi, r.rcx, r.rdx, r.rdi) = (0x1000, 0x2000, 1, 0x43, 0x3000);
    v.set_regs(cpu, &r);
    let mark = || Exit::Io {
        port: MARK,
        size: 1,
        out: true,
        data: 0,
    };
    let outs = |port| Exit::IoString {
        port,
        size: 1,
        out: true,
    };
    v.script(0, &[(outs(0x43), 0), (mark(), 2)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(
        unsafe { ((*run).exit_reason, (*run).u.io().port) },
        (KVM_EXIT_IO, MARK)
    );
    assert_eq!(v.regs(cpu).rip, 0x1002, "REP OUTSB done, at the marker");
    // The two count bytes in one REP OUTSB.
    let mut r = v.regs(cpu);
    (r.rcx, r.rdx) = (2, 0x42);
    v.set_regs(cpu, &r);
    v.script(0, &[(outs(0x42), 0), (mark(), 2)]);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(
        unsafe { ((*run).exit_reason, (*run).u.io().port) },
        (KVM_EXIT_IO, MARK)
    );
    let m = vmr.pit.get().unwrap().model();
    assert_eq!((m.ch[2].mode, m.ch[2].count), (2, 0x1234));
    // REP INSB of the live counter, 0x10 ticks later: LSB then MSB.
    v.host.clock.store(at(0x10), Ordering::SeqCst);
    let mut r = v.regs(cpu);
    assert_eq!(r.rip, 0x1006);
    (r.rcx, r.rdx) = (2, 0x42);
    v.set_regs(cpu, &r);
    v.script(
        0,
        &[
            (
                Exit::IoString {
                    port: 0x42,
                    size: 1,
                    out: false,
                },
                0,
            ),
            (mark(), 2),
        ],
    );
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: live run page.
    assert_eq!(
        unsafe { ((*run).exit_reason, (*run).u.io().port) },
        (KVM_EXIT_IO, MARK)
    );
    assert_eq!(
        v.host.user_read(ram + 0x3000, 2),
        (0x1234u16 - 0x10).to_le_bytes()
    );
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn timer_callback_wakes_only_the_bsp_which_owns_irq0() {
    // The full irqchip puts the local APICs in the kernel: the vCPUs have an event word.
    let f = Fix::new(true);
    f.create();
    let c0 = f.v.create_vcpu(f.vm, 0);
    let c1 = f.v.create_vcpu(f.vm, 1);
    let vm = f.vmref();
    let period = periodic_10ms(&f);
    // SAFETY: vCPU handles stay live until closed below.
    let (v0, v1) = unsafe {
        (
            &*(f.v.h(c0) as *const crate::vcpu::Vcpu<FakeHost, SoftBackend<FakeHost>>),
            &*(f.v.h(c1) as *const crate::vcpu::Vcpu<FakeHost, SoftBackend<FakeHost>>),
        )
    };
    // A halted BSP sleeps at most until the PIT deadline; other vCPUs ignore the PIT.
    assert_eq!((v0.pit_deadline(), v1.pit_deadline()), (T0 + period, 0));
    assert!(!pitdev::bsp_pit_event(vm));
    pitdev::fire_timer(vm);
    assert!(pitdev::bsp_pit_event(vm));
    // Only the BSP services IRQ0.
    f.clock(T0 + period);
    v1.pit_service();
    assert_eq!(f.edges(), 0);
    v0.pit_service();
    assert_eq!(f.edges(), 1);
    assert_eq!(f.edges(), 1, "one pulse, one edge");
    f.v.close(c0);
    f.v.close(c1);
    f.done();
}

// ----- end to end: a guest takes the ticks through the real PIC and IOAPIC -----

/// A VM with the full irqchip, the PIT (QEMU's flags: 0) and vCPU 0 with its local APIC
/// software-enabled, LINT0 = `lvt0`, IF = 1; the fake clock at `T0`. Returns (VM, vCPU).
fn guest_vm(v: &Vmm, lvt0: u32) -> (i64, i64) {
    v.host.clock.store(T0, Ordering::SeqCst);
    let vm = v.create_vm();
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_IRQCHIP, 0), 0);
    let cfg = v.put(&zeroed::<kvm_pit_config>());
    assert_eq!(v.ioctl_fd(vm, KVM_CREATE_PIT2, cfg), 0);
    let cpu = v.create_vcpu(vm, 0);
    enable_apic(v, cpu, lvt0);
    (vm, cpu)
}

/// Runs the guest through `steps` up to its marker OUT `m` (asserted); returns the vectors
/// delivered so far.
fn run_to(v: &Vmm, cpu: i64, steps: &[(Exit, u64)], m: u8) -> Vec<u8> {
    let mut s = steps.to_vec();
    s.push(out(MARK, m));
    v.script(0, &s);
    assert_eq!(v.ioctl_fd(cpu, KVM_RUN, 0), 0);
    // SAFETY: the run page lives as long as the vCPU.
    let r = unsafe { &*v.run_page(cpu) };
    assert_eq!((r.exit_reason, r.u.io().port), (KVM_EXIT_IO, MARK));
    delivered(v, cpu)
}

/// The guest's PIT programming: channel 0, LSB+MSB, mode 2, 11932 (10 ms).
const PIT_10MS: [(u16, u8); 3] = [(0x43, 0x34), (0x40, 0x9c), (0x40, 0x2e)];

#[test]
fn guest_takes_pit_ticks_through_the_pic_one_per_eoi() {
    let v = Vmm::new();
    let (vm, cpu) = guest_vm(&v, 0x700); // LINT0: ExtINT
    let vmr = {
        // SAFETY: the VM handle stays live until it is closed below.
        unsafe { &*(v.h(vm) as *const TVm) }
    };
    let p = ticks_to_ns(11932);
    let eoi = out(0x20, 0x20);
    // The guest programs the PIC as Linux's init_8259A does (vectors 0x20/0x28, normal EOI),
    // unmasks only IRQ0, and starts the PIT: all in the kernel.
    let init: Vec<_> = [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, 0x28),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ]
    .iter()
    .chain(PIT_10MS.iter())
    .map(|&(port, val)| out(port, val))
    .collect();
    assert_eq!(run_to(&v, cpu, &init, 0), vec![]);
    // On time: the first tick arrives as the PIC's vector 0x20 through LINT0.
    v.host.clock.store(T0 + p, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 1), vec![0x20]);
    // The guest falls 4 periods behind before it EOIs: nothing more until it does ...
    v.host.clock.store(T0 + 5 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 2), vec![0x20]);
    assert_eq!(vmr.pit.get().unwrap().debug_irq().0, 4);
    // ... then each EOI (the PIC's ack notifier on GSI 0) lets exactly one late tick through.
    for n in 2..=5 {
        assert_eq!(run_to(&v, cpu, &[eoi], n as u8 + 1).len(), n);
        assert_eq!(run_to(&v, cpu, &[], 9).len(), n, "only one per EOI");
    }
    assert_eq!(run_to(&v, cpu, &[eoi], 10).len(), 5, "backlog empty");
    // 7 periods late: one tick now, 6 pending. The guest masks IRQ0 (OCW1), EOIs (the next
    // tick latches in the masked PIC), unmasks (the mask notifier drops the backlog; the
    // latched tick arrives) and EOIs: nothing follows.
    v.host.clock.store(T0 + 12 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 11).len(), 6);
    assert_eq!(vmr.pit.get().unwrap().debug_irq().0, 6);
    let d = run_to(&v, cpu, &[out(0x21, 0xff), eoi, out(0x21, 0xfe), eoi], 12);
    assert_eq!(d.len(), 7);
    assert_eq!(vmr.pit.get().unwrap().debug_irq().0, 0);
    assert_eq!(run_to(&v, cpu, &[eoi], 13).len(), 7);
    // The next period's tick comes on time again.
    v.host.clock.store(T0 + 13 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 14), vec![0x20; 8]);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn guest_takes_pit_ticks_through_an_edge_ioapic_pin_one_per_lapic_eoi() {
    ioapic_ticks(false);
}

#[test]
fn guest_takes_pit_ticks_through_a_level_ioapic_pin_one_per_lapic_eoi() {
    ioapic_ticks(true);
}

/// QEMU's routes (GSI 0 → IOAPIC pin 2), the PIC masked: the ticks arrive as pin 2's vector,
/// one per local APIC EOI (which reaches the IOAPIC: level-triggered for remote IRR, edge
/// only for the ack notifier); masking and unmasking the pin drops the backlog.
fn ioapic_ticks(level: bool) {
    let v = Vmm::new();
    let (vm, cpu) = guest_vm(&v, 0x10700); // LINT0 masked: the PIC is not used
    let vmr = {
        // SAFETY: the VM handle stays live until it is closed below.
        unsafe { &*(v.h(vm) as *const TVm) }
    };
    // QEMU's routes: GSI 0 to PIC pin 0 and IOAPIC pin 2.
    let mut t: Vec<_> = (0..8)
        .filter(|&i| i != 2)
        .map(|i| chip_route(i, KVM_IRQCHIP_PIC_MASTER, i))
        .collect();
    t.extend((8..16).map(|i| chip_route(i, KVM_IRQCHIP_PIC_SLAVE, i - 8)));
    t.push(chip_route(0, KVM_IRQCHIP_IOAPIC, 2));
    t.extend(
        (1..24)
            .filter(|&i| i != 2)
            .map(|i| chip_route(i, KVM_IRQCHIP_IOAPIC, i)),
    );
    assert_eq!(routing(&v, vm, &t), 0);
    let p = ticks_to_ns(11932);
    let io = 0xfec0_0000u64;
    let lapic_eoi = mmio_w(0xfee0_00b0, 0);
    // IOAPIC pin 2: low dword (vector 0x30, fixed, edge, `mask` bit 16) by IOREGSEL 0x14.
    let trig = if level { 1 << 15 } else { 0 };
    let pin2 = |low: u32| [mmio_w(io, 0x14), mmio_w(io + 0x10, low | trig)];
    // The guest masks the PICs, points pin 2 at APIC 0 (high dword 0) with vector 0x30,
    // unmasked, and starts the PIT.
    let mut init = vec![
        out(0x21, 0xff),
        out(0xa1, 0xff),
        mmio_w(io, 0x15),
        mmio_w(io + 0x10, 0),
    ];
    init.extend(pin2(0x30));
    init.extend(PIT_10MS.iter().map(|&(port, val)| out(port, val)));
    assert_eq!(run_to(&v, cpu, &init, 0), vec![]);
    v.host.clock.store(T0 + p, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 1), vec![0x30]);
    let remote_irr = || {
        *get_chip(&v, vm, KVM_IRQCHIP_IOAPIC)
            .1
            .chip
            .ioapic()
            .redirtbl[2]
            .bits()
            & (1 << 14)
            != 0
    };
    assert_eq!(remote_irr(), level, "level pin: waiting for the EOI");
    // Four periods late: one more tick per local APIC EOI of vector 0x30.
    v.host.clock.store(T0 + 5 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 2).len(), 1);
    for n in 2..=5 {
        assert_eq!(run_to(&v, cpu, &[lapic_eoi], n as u8 + 1).len(), n);
        assert_eq!(run_to(&v, cpu, &[], 9).len(), n, "only one per EOI");
    }
    assert_eq!(run_to(&v, cpu, &[lapic_eoi], 10).len(), 5, "backlog empty");
    assert!(!remote_irr());
    assert_eq!(vmr.pit.get().unwrap().debug_irq(), (0, true, T0 + 6 * p));
    // 7 periods late: one tick, 6 pending. The guest masks pin 2, EOIs (the next tick hits
    // the masked pin: lost, and nobody will acknowledge it), then unmasks:
    // the mask notifier drops the backlog and re-arms the acknowledgement, so the next
    // period's tick arrives (without it the PIT would wait for an ack forever).
    v.host.clock.store(T0 + 12 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 11).len(), 6);
    let mut s = pin2(0x1_0030).to_vec();
    s.push(lapic_eoi);
    assert_eq!(run_to(&v, cpu, &s, 12).len(), 6);
    assert_eq!(vmr.pit.get().unwrap().debug_irq().0, 5);
    assert_eq!(run_to(&v, cpu, &pin2(0x30), 13).len(), 6);
    assert_eq!(vmr.pit.get().unwrap().debug_irq().0, 0);
    v.host.clock.store(T0 + 13 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 14), vec![0x30; 7]);
    assert_eq!(run_to(&v, cpu, &[lapic_eoi], 15).len(), 7);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}

#[test]
fn auto_eoi_acknowledges_each_tick_at_inta() {
    let v = Vmm::new();
    let (vm, cpu) = guest_vm(&v, 0x700);
    let p = ticks_to_ns(11932);
    // ICW4 0x03: 8086 mode with auto-EOI; only IRQ0 unmasked.
    let init: Vec<_> = [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x03),
        (0x21, 0xfe),
    ]
    .iter()
    .chain(PIT_10MS.iter())
    .map(|&(port, val)| out(port, val))
    .collect();
    assert_eq!(run_to(&v, cpu, &init, 0), vec![]);
    v.host.clock.store(T0 + p, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[], 1), vec![0x20]);
    // Four periods late: the interrupt acknowledge itself ends each tick, so the backlog
    // drains one tick per guest entry with no EOI from the guest.
    v.host.clock.store(T0 + 5 * p + 10, Ordering::SeqCst);
    assert_eq!(run_to(&v, cpu, &[(Exit::Continue, 0); 4], 2), vec![0x20; 5]);
    assert_eq!(run_to(&v, cpu, &[(Exit::Continue, 0); 2], 3).len(), 5);
    v.close(cpu);
    v.close(vm);
    v.assert_clean();
}
