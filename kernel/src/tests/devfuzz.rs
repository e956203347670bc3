//! Hostile-guest fuzz of the in-kernel PIC, IOAPIC and PIT models: long random sequences of
//! the port, MMIO, line, EOI and state-restore operations a guest or its VMM can cause. No
//! sequence may panic (index or arithmetic), and a few invariants must hold throughout: state
//! saved with `get_state` restores to the same state, a masked IOAPIC pin never delivers, an
//! IOAPIC read returns what the register file holds, the PIT's counter and IRQ0 plan stay in
//! range.

use kvm_abi::{kvm_ioapic_state, kvm_pic_state, kvm_pit_channel_state};
use zerocopy::{FromZeros, IntoBytes};

use crate::irqchip::ioapic::{Ioapic, NUM_PINS};
use crate::irqchip::lapic::Irq;
use crate::irqchip::pic::Pic;
use crate::irqchip::pit::Pit8254;

/// xorshift64: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STEPS: usize = 300_000;

#[test]
fn pic_survives_any_guest_and_vmm_sequence() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut p = Pic::new_zeroed();
    p.init();
    let ports = [0x20u16, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
    for _ in 0..STEPS {
        match r.below(8) {
            0..=2 => {
                let port = ports[r.below(6) as usize];
                p.write(port, r.next() as u8, r.below(2) == 0);
            }
            3 => {
                let port = ports[r.below(6) as usize];
                let _ = p.read(port);
            }
            4 => {
                let _ = p.set_irq(r.below(20) as u32, r.below(40) as u32, r.below(2) == 0);
            }
            5 => {
                // INTA when the output is up (what the vCPU does), sometimes regardless.
                if p.output || r.below(4) == 0 {
                    let _ = p.read_irq();
                }
            }
            6 => {
                // KVM_SET_IRQCHIP with arbitrary bytes for either chip.
                let mut s = kvm_pic_state::new_zeroed();
                for b in s.as_mut_bytes() {
                    *b = r.next() as u8;
                }
                p.set_state(r.below(2) == 0, &s);
            }
            _ => {
                // Save/restore is the identity on the saved state, except that restoring
                // recomputes the cascade: a slave with a pending interrupt raises the
                // master's IR2 and its edge memory (Linux `pic_update_irq`), which an arbitrary state restored
                // earlier may not have shown.
                let (m, s) = (p.get_state(false), p.get_state(true));
                let mut q = p;
                q.set_state(false, &m);
                q.set_state(true, &s);
                let mut qm = q.get_state(false);
                assert_eq!(q.get_state(true).as_bytes(), s.as_bytes());
                assert_eq!(qm.irr & !4, m.irr & !4);
                assert_eq!(qm.last_irr & !4, m.last_irr & !4);
                qm.irr = m.irr;
                qm.last_irr = m.last_irr;
                assert_eq!(qm.as_bytes(), m.as_bytes());
            }
        }
        let _ = (p.take_wakeup(), p.take_acked(), p.take_mask_changed());
    }
}

#[test]
fn ioapic_survives_any_guest_and_vmm_sequence() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut io = Ioapic::new_zeroed();
    io.reset();
    let mut checked = 0u32;
    for _ in 0..STEPS {
        // Which pins were masked before this step: none of them may deliver during it unless
        // the step itself rewrote the table.
        let masked: Vec<bool> = io
            .redirtbl
            .iter()
            .map(|e| e & crate::irqchip::ioapic::rte::MASK != 0)
            .collect();
        let before = io.redirtbl;
        let mut delivered: Vec<u8> = Vec::new();
        // Whether the local APICs accept (1) or nobody matches (-1), varied per step.
        let accepted = if r.next() & 1 == 0 { 1 } else { -1 };
        let mut deliver = |i: &Irq| {
            delivered.push(i.vector);
            accepted
        };
        match r.below(7) {
            0..=1 => {
                let off = [0u64, 0x10, 0x40, r.below(0x100)][r.below(4) as usize];
                let len = [1usize, 2, 4, 8][r.below(4) as usize];
                let data = r.next().to_le_bytes();
                io.mmio_write(off, &data[..len], &mut deliver);
            }
            2 => {
                let off = [0u64, 0x10, r.below(0x100)][r.below(3) as usize];
                let len = [1usize, 2, 4, 8][r.below(4) as usize];
                let v = io.mmio_read(off, len);
                if off == 0 && len == 4 {
                    assert_eq!(v, u64::from(io.ioregsel), "IOREGSEL reads back");
                }
            }
            3 => {
                let _ = io.set_irq(
                    r.below(NUM_PINS as u64 + 4) as u32,
                    r.below(40) as u32,
                    r.below(2) == 0,
                    &mut deliver,
                );
            }
            4 => {
                let _ = io.eoi(r.next() as u8, r.below(2) == 0, &mut deliver);
            }
            5 => {
                let mut s = kvm_ioapic_state::new_zeroed();
                for b in s.as_mut_bytes() {
                    *b = r.next() as u8;
                }
                io.set_state(&s, &mut deliver);
            }
            _ => {
                let mut s = kvm_ioapic_state::new_zeroed();
                io.get_state(&mut s);
                let mut q = io;
                let mut t = kvm_ioapic_state::new_zeroed();
                q.set_state(&s, &mut |_: &Irq| 1);
                q.get_state(&mut t);
                // Restoring re-asserts saved lines, which may deliver and set remote IRR; the
                // programmed table and the addressing survive unchanged.
                assert_eq!(
                    (t.base_address, t.ioregsel, t.id),
                    (s.base_address, s.ioregsel, s.id)
                );
                for (a, b) in q.redirtbl.iter().zip(io.redirtbl) {
                    assert_eq!(
                        a & !(1 << 14),
                        b & !(1 << 14),
                        "redirection entries survive"
                    );
                }
            }
        }
        if io.redirtbl == before && !delivered.is_empty() {
            // The table did not change: every delivery came from an unmasked pin's vector.
            let unmasked: Vec<u8> = before
                .iter()
                .zip(&masked)
                .filter(|(_, m)| !**m)
                .map(|(e, _)| *e as u8)
                .collect();
            for v in &delivered {
                assert!(unmasked.contains(v), "vector {v:#x} from a masked pin");
            }
            checked += 1;
        }
        let _ = (io.take_mask_changed(), io.vectors());
    }
    assert!(
        checked > 1000,
        "the sequence delivers often enough to check masking: {checked}"
    );
}

#[test]
fn pit_survives_any_guest_and_vmm_sequence() {
    let mut r = Rng(0xd1b5_4a32_d192_ed03);
    let mut now = 1_000_000u64;
    let mut p = Pit8254::new(now);
    for _ in 0..STEPS {
        // Time moves forward by anything from nothing to minutes, or jumps far.
        now = now.saturating_add(match r.below(10) {
            0 => r.next() >> 20,
            1..=3 => 0,
            _ => r.below(5_000_000),
        });
        match r.below(7) {
            0..=2 => {
                let _ = p.write(r.below(4) as u16, r.next() as u8, now);
            }
            3 => {
                let _ = p.read(r.below(4) as u16, now);
            }
            4 => {
                p.speaker_write(r.next() as u32, now);
                let _ = p.speaker_read(now);
            }
            5 => {
                p.set_gate(r.below(3) as usize, r.below(2) == 0, now);
            }
            _ => {
                let mut ch = [kvm_pit_channel_state::new_zeroed(); 3];
                for c in ch.iter_mut() {
                    for b in c.as_mut_bytes() {
                        *b = r.next() as u8;
                    }
                }
                p.set_state(&ch, now);
            }
        }
        for i in 0..3 {
            let _ = (p.count(i, now), p.out(i, now));
        }
        if let Some(t) = p.irq0_timer() {
            assert!(t.period_ns > 0, "an IRQ0 timer never has a zero period");
        }
    }
}
