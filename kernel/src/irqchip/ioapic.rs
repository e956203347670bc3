//! The in-kernel IOAPIC (an 82093AA as Linux's `arch/x86/kvm/ioapic.c` exposes it): 24 pins,
//! version 0x11 (no EOI register), IOREGSEL at offset 0x00 and IOWIN at 0x10 of a 256-byte
//! MMIO window at `base_address` (0xfec00000 after reset), a redirection table whose entries
//! deliver through the local APICs, remote IRR for level-triggered pins (set on delivery,
//! cleared by the local APIC's EOI broadcast, which re-delivers a line that is still high).
//!
//! Pure model: the owner serializes it (one lock per VM) and passes a delivery function (the
//! VM's `deliver`, returning Linux's `kvm_irq_delivery_to_apic` value: -1 no destination,
//! else the number of APICs that accepted).
//!
//! The state round-trips with Linux's `struct kvm_ioapic_state` (`KVM_GET/SET_IRQCHIP` chip
//! 2). Not modelled: the RTC (GSI 8) EOI tracking Linux uses to report coalesced RTC
//! interrupts to `KVM_IRQ_LINE_STATUS` (GSI 8 reports by the plain edge rules), and the
//! delayed re-injection Linux applies after 10000 successive EOIs of a still-asserted line
//! (re-delivery here is always immediate).

use kvm_abi::kvm_ioapic_state;
use zerocopy::FromZeros;

use super::lapic::{sh, Irq};

/// Number of pins (`KVM_IOAPIC_NUM_PINS`).
pub const NUM_PINS: usize = 24;
/// Base address after reset.
pub const DEFAULT_BASE: u64 = 0xfec0_0000;
/// Size of the MMIO window Linux registers (`IOAPIC_MEM_LENGTH`).
pub const MEM_LENGTH: u64 = 0x100;
/// IOAPIC version register value (version 0x11, max redirection entry 23).
pub const VERSION: u32 = 0x11 | ((NUM_PINS as u32 - 1) << 16);

/// Redirection entry bits.
pub mod rte {
    /// Delivery status (read-only, never set here: delivery is immediate).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Destination mode: logical.
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Remote IRR (level-triggered: delivered and not yet EOIed).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode: level.
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASK: u64 = 1 << 16;
}

/// The IOAPIC.
#[derive(Clone, Copy, Debug, FromZeros)]
pub struct Ioapic {
    /// Guest-physical base of the MMIO window.
    pub base_address: u64,
    /// IOREGSEL.
    pub ioregsel: u32,
    /// The 4-bit IOAPIC ID.
    pub id: u32,
    /// Line state: level pins are high, edge pins saw a rising edge since they last went low.
    pub irr: u32,
    /// Edge pins whose latest edge was delivered (hidden from `KVM_GET_IRQCHIP`'s `irr`).
    irr_delivered: u32,
    /// The redirection table.
    pub redirtbl: [u64; NUM_PINS],
    /// Per pin: the irq sources (bit `source`) asserting the line (Linux `irq_states`).
    sources: [u32; NUM_PINS],
    /// Pins whose mask bit a guest write flipped since [`Ioapic::take_mask_changed`] (Linux
    /// `kvm_fire_mask_notifiers` from `ioapic_write_indirect`).
    mask_changed: u32,
}

impl Ioapic {
    /// Linux `kvm_ioapic_reset`: every pin masked, base 0xfec00000, ID 0.
    pub fn reset(&mut self) {
        *self = Self::new_zeroed();
        self.base_address = DEFAULT_BASE;
        for e in self.redirtbl.iter_mut() {
            *e = rte::MASK;
        }
    }

    /// The offset of `gpa` in the MMIO window, if it lies there.
    pub fn offset(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.base_address)?;
        (off < MEM_LENGTH).then_some(off)
    }

    fn entry(&self, pin: usize) -> u64 {
        self.redirtbl.get(pin).copied().unwrap_or(rte::MASK)
    }

    /// Delivers pin `pin` if it is unmasked and (level-triggered) not awaiting an EOI (Linux
    /// `ioapic_service`); sets remote IRR unless the message was dropped by every destination.
    fn service(&mut self, pin: usize, deliver: &mut impl FnMut(&Irq) -> i64) -> i32 {
        let e = self.entry(pin);
        let level = e & rte::LEVEL != 0;
        if e & rte::MASK != 0 || (level && e & rte::REMOTE_IRR != 0) {
            return -1;
        }
        let irq = Irq {
            vector: e as u8,
            mode: ((e >> 8) & 7) as u8,
            logical: e & rte::DEST_LOGICAL != 0,
            level: true,
            trig_level: level,
            shorthand: sh::NONE,
            dest: (e >> 56) as u32,
        };
        if !level {
            self.irr_delivered |= 1 << pin;
        }
        let ret = deliver(&irq);
        if ret != 0 && level {
            if let Some(x) = self.redirtbl.get_mut(pin) {
                *x |= rte::REMOTE_IRR;
            }
        }
        ret.clamp(-1, i64::from(i32::MAX)) as i32
    }

    /// The line of `pin` is now `line` (Linux `ioapic_set_irq`): low clears the request (1);
    /// high requests delivery, 0 if it coalesces with an undelivered edge, else the delivery
    /// status (-1 masked / waiting for EOI / no destination).
    fn set_line(&mut self, pin: usize, line: bool, deliver: &mut impl FnMut(&Irq) -> i64) -> i32 {
        if pin >= NUM_PINS {
            return -1;
        }
        let mask = 1u32 << pin;
        if !line {
            self.irr &= !mask;
            return 1;
        }
        let edge = self.entry(pin) & rte::LEVEL == 0;
        let old = self.irr;
        self.irr |= mask;
        if edge {
            self.irr_delivered &= !mask;
            if old == self.irr {
                return 0;
            }
        }
        self.service(pin, deliver)
    }

    /// Source `source` (0-31) drives pin `pin` to `level`; the line is the OR of all sources
    /// (Linux `kvm_ioapic_set_irq`). Returns Linux's status (see `set_line`).
    pub fn set_irq(
        &mut self,
        pin: u32,
        source: u32,
        level: bool,
        deliver: &mut impl FnMut(&Irq) -> i64,
    ) -> i32 {
        let Some(st) = self.sources.get_mut(pin as usize) else {
            return -1;
        };
        let bit = 1u32 << (source & 31);
        if level {
            *st |= bit;
        } else {
            *st &= !bit;
        }
        let line = *st != 0;
        self.set_line(pin as usize, line, deliver)
    }

    /// A local APIC's EOI of `vector` (Linux `kvm_ioapic_update_eoi`): returns the pins with
    /// that vector (their interrupts were acknowledged). For a level-triggered EOI each of
    /// them leaves remote IRR and is delivered again if its line is still high and it is
    /// unmasked.
    pub fn eoi(&mut self, vector: u8, level: bool, deliver: &mut impl FnMut(&Irq) -> i64) -> u32 {
        let mut pins = 0;
        for pin in 0..NUM_PINS {
            let e = self.entry(pin);
            if e as u8 != vector {
                continue;
            }
            pins |= 1 << pin;
            if !level {
                continue;
            }
            if let Some(x) = self.redirtbl.get_mut(pin) {
                *x &= !rte::REMOTE_IRR;
            }
            if e & rte::MASK == 0 && self.irr & (1 << pin) != 0 {
                self.service(pin, deliver);
            }
        }
        pins
    }

    /// Pins whose mask bit a guest write flipped since the last call, and the current masks
    /// (bit n = pin n masked). `KVM_SET_IRQCHIP` does not count, as in Linux.
    pub fn take_mask_changed(&mut self) -> (u32, u32) {
        let masked = self
            .redirtbl
            .iter()
            .enumerate()
            .filter(|(_, e)| *e & rte::MASK != 0)
            .fold(0u32, |m, (i, _)| m | 1 << i);
        (core::mem::replace(&mut self.mask_changed, 0), masked)
    }

    /// The register IOWIN shows for the current IOREGSEL.
    fn read_indirect(&self) -> u32 {
        match self.ioregsel {
            0 => (self.id & 0xf) << 24,
            1 => VERSION,
            2 => (self.id & 0xf) << 24,
            sel => {
                let e = ((sel.wrapping_sub(0x10)) >> 1) as usize;
                let v = self.redirtbl.get(e).copied().unwrap_or(!0);
                if sel & 1 != 0 {
                    (v >> 32) as u32
                } else {
                    v as u32
                }
            }
        }
    }

    /// A write to IOWIN (Linux `ioapic_write_indirect`): ID, or half a redirection entry (remote
    /// IRR and delivery status are read-only; an edge-triggered entry has no remote IRR). A
    /// level pin that becomes deliverable with its line high is delivered at once.
    fn write_indirect(&mut self, val: u32, deliver: &mut impl FnMut(&Irq) -> i64) {
        let sel = self.ioregsel;
        match sel {
            0 => self.id = (val >> 24) & 0xf,
            1 | 2 => {}
            _ => {
                let pin = ((sel.wrapping_sub(0x10)) >> 1) as usize;
                let Some(e) = self.redirtbl.get_mut(pin) else {
                    return;
                };
                let old = *e;
                let mut new = if sel & 1 != 0 {
                    (old & 0xffff_ffff) | (u64::from(val) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(val)
                };
                let ro = rte::REMOTE_IRR | rte::DELIVERY_STATUS;
                new = (new & !ro) | (old & ro);
                if new & rte::LEVEL == 0 {
                    new &= !rte::REMOTE_IRR;
                }
                *e = new;
                if (old ^ new) & rte::MASK != 0 {
                    self.mask_changed |= 1 << pin;
                }
                if new & rte::LEVEL != 0
                    && self.irr & (1 << pin) != 0
                    && new & (rte::MASK | rte::REMOTE_IRR) == 0
                {
                    self.service(pin, deliver);
                }
            }
        }
    }

    /// A guest MMIO read of `len` bytes at window offset `off` (Linux `ioapic_mmio_read`:
    /// IOREGSEL at 0x00, IOWIN at 0x10, anything else reads 0; lengths other than 1, 2, 4, 8
    /// read 0).
    pub fn mmio_read(&self, off: u64, len: usize) -> u64 {
        let r = match off & 0xff {
            0x00 => self.ioregsel,
            0x10 => self.read_indirect(),
            _ => 0,
        };
        match len {
            1 => u64::from(r & 0xff),
            2 => u64::from(r & 0xffff),
            4 | 8 => u64::from(r),
            _ => 0,
        }
    }

    /// A guest MMIO write of `data` (1, 2, 4 or 8 bytes; other sizes are ignored) at window
    /// offset `off` (Linux `ioapic_mmio_write`: only the low 32 bits of an 8-byte write count).
    pub fn mmio_write(&mut self, off: u64, data: &[u8], deliver: &mut impl FnMut(&Irq) -> i64) {
        let mut b = [0u8; 4];
        let n = match data.len() {
            1 | 2 | 4 => data.len(),
            8 => 4,
            _ => return,
        };
        for (d, s) in b.iter_mut().zip(data.iter().take(n)) {
            *d = *s;
        }
        let val = u32::from_le_bytes(b);
        match off & 0xff {
            0x00 => self.ioregsel = val & 0xff,
            0x10 => self.write_indirect(val, deliver),
            _ => {}
        }
    }

    /// `KVM_GET_IRQCHIP` (Linux `kvm_get_ioapic`): delivered edges are not reported in `irr`.
    pub fn get_state(&self, out: &mut kvm_ioapic_state) {
        out.base_address = self.base_address;
        out.ioregsel = self.ioregsel;
        out.id = self.id;
        out.irr = self.irr & !self.irr_delivered;
        out.pad = 0;
        for (o, e) in out.redirtbl.iter_mut().zip(self.redirtbl.iter()) {
            o.raw = *e;
        }
    }

    /// `KVM_SET_IRQCHIP` (Linux `kvm_set_ioapic`): the state as given, then every pin in `irr`
    /// is asserted again (delivered if deliverable).
    pub fn set_state(&mut self, s: &kvm_ioapic_state, deliver: &mut impl FnMut(&Irq) -> i64) {
        self.base_address = s.base_address;
        self.ioregsel = s.ioregsel;
        self.id = s.id;
        self.irr = 0;
        self.irr_delivered = 0;
        for (e, o) in self.redirtbl.iter_mut().zip(s.redirtbl.iter()) {
            *e = o.raw;
        }
        for pin in 0..NUM_PINS {
            if s.irr & (1 << pin) != 0 {
                self.set_line(pin, true, deliver);
            }
        }
    }

    /// The vectors of all pins (a filter for EOIs that may concern the IOAPIC).
    pub fn vectors(&self) -> [u64; 4] {
        let mut v = [0u64; 4];
        for e in self.redirtbl.iter() {
            let vec = *e as u8;
            if let Some(w) = v.get_mut(usize::from(vec >> 6)) {
                *w |= 1 << (vec & 63);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ioapic() -> Box<Ioapic> {
        let mut a = Box::new(Ioapic::new_zeroed());
        a.reset();
        a
    }

    fn wr(a: &mut Ioapic, reg: u32, val: u32, log: &mut Vec<Irq>) {
        a.mmio_write(0, &reg.to_le_bytes(), &mut |_: &Irq| 0);
        a.mmio_write(0x10, &val.to_le_bytes(), &mut |i: &Irq| {
            log.push(*i);
            1
        });
    }

    fn rd(a: &mut Ioapic, reg: u32) -> u32 {
        a.mmio_write(0, &reg.to_le_bytes(), &mut |_: &Irq| 0);
        a.mmio_read(0x10, 4) as u32
    }

    #[test]
    fn mask_flips_are_reported() {
        let mut a = ioapic();
        let mut log = Vec::new();
        assert_eq!(a.take_mask_changed(), (0, 0x00ff_ffff));
        // Pin 2 unmasked (vector 0x30), its high half, then the same low value again.
        wr(&mut a, 0x14, 0x30, &mut log);
        wr(&mut a, 0x15, 0, &mut log);
        assert_eq!(a.take_mask_changed(), (1 << 2, 0x00ff_fffb));
        wr(&mut a, 0x14, 0x30, &mut log);
        assert_eq!(a.take_mask_changed().0, 0);
        wr(&mut a, 0x14, 0x1_0030, &mut log);
        assert_eq!(a.take_mask_changed(), (1 << 2, 0x00ff_ffff));
        let mut st = kvm_ioapic_state::new_zeroed();
        a.get_state(&mut st);
        st.redirtbl[2].raw = 0x30;
        a.set_state(&st, &mut |_: &Irq| 0);
        assert_eq!(a.take_mask_changed().0, 0, "KVM_SET_IRQCHIP does not count");
        assert!(log.is_empty());
    }

    #[test]
    fn registers() {
        let mut a = ioapic();
        let mut log = Vec::new();
        assert_eq!(a.offset(0xfec0_0010), Some(0x10));
        assert_eq!(a.offset(0xfec0_0100), None);
        assert_eq!(a.offset(0xfebf_ffff), None);
        assert_eq!(rd(&mut a, 1), 0x0017_0011);
        wr(&mut a, 0, 0x0f00_0000, &mut log);
        assert_eq!(rd(&mut a, 0), 0x0f00_0000);
        assert_eq!(rd(&mut a, 2), 0x0f00_0000);
        wr(&mut a, 1, 0, &mut log);
        assert_eq!(rd(&mut a, 1), 0x0017_0011, "version is read-only");
        assert_eq!(rd(&mut a, 0x10), 0x0001_0000, "reset: masked");
        wr(&mut a, 0x10 + 2 * 5, 0x0000_a031, &mut log);
        wr(&mut a, 0x11 + 2 * 5, 0x0300_0000, &mut log);
        assert_eq!(a.redirtbl[5], 0x0300_0000_0000_a031);
        assert_eq!(rd(&mut a, 0x11 + 2 * 5), 0x0300_0000);
        assert_eq!(rd(&mut a, 0x10 + 2 * 24), 0xffff_ffff, "past the table");
        assert_eq!(rd(&mut a, 3), 0xffff_ffff);
        // Remote IRR is read-only.
        wr(&mut a, 0x10 + 2 * 5, 0x0000_e031, &mut log);
        assert_eq!(a.redirtbl[5] & rte::REMOTE_IRR, 0);
        // IOREGSEL is 8 bits, reads back; byte reads of IOWIN.
        a.mmio_write(0, &0x1234u32.to_le_bytes(), &mut |_: &Irq| 0);
        assert_eq!(a.mmio_read(0, 4), 0x34);
        assert!(log.is_empty());
    }

    #[test]
    fn level_pin_remote_irr_and_eoi() {
        let mut a = ioapic();
        let mut log = Vec::new();
        // Pin 9: level, active high, vector 0x39, physical dest 1, unmasked.
        wr(&mut a, 0x11 + 18, 0x0100_0000, &mut log);
        wr(&mut a, 0x10 + 18, 0x0000_8039, &mut log);
        let n = std::cell::Cell::new(0);
        let mut d = |i: &Irq| {
            assert!(i.trig_level && i.vector == 0x39 && i.dest == 1 && !i.logical);
            n.set(n.get() + 1);
            1
        };
        assert_eq!(a.set_irq(9, 0, true, &mut d), 1);
        assert_ne!(a.redirtbl[9] & rte::REMOTE_IRR, 0);
        // Asserted again while awaiting EOI: not delivered.
        assert_eq!(a.set_irq(9, 0, true, &mut d), -1);
        // EOI with the line still high: delivered again once.
        assert_eq!(
            a.eoi(0x39, false, &mut d),
            1 << 9,
            "edge EOI: only reported"
        );
        assert_eq!(n.get(), 1);
        assert_eq!(a.eoi(0x39, true, &mut d), 1 << 9);
        assert_ne!(a.redirtbl[9] & rte::REMOTE_IRR, 0);
        // Line drops, EOI: remote IRR clears, nothing delivered.
        assert_eq!(a.set_irq(9, 0, false, &mut d), 1);
        a.eoi(0x39, true, &mut d);
        assert_eq!(a.redirtbl[9] & rte::REMOTE_IRR, 0);
        assert_eq!(n.get(), 2);
        // Masked while high; unmasking delivers.
        wr(&mut a, 0x10 + 18, 0x0001_8039, &mut log);
        let mut m = 0;
        assert_eq!(
            a.set_irq(9, 0, true, &mut |_: &Irq| {
                m += 1;
                1
            }),
            -1
        );
        assert_eq!(m, 0);
        wr(&mut a, 0x10 + 18, 0x0000_8039, &mut log);
        assert_eq!(log.len(), 1);
        // No destination accepted it (-1) still sets remote IRR (Linux: ret != 0).
        let mut b = ioapic();
        b.redirtbl[3] = 0x0000_8041;
        assert_eq!(b.set_irq(3, 0, true, &mut |_: &Irq| -1), -1);
        assert_ne!(b.redirtbl[3] & rte::REMOTE_IRR, 0);
        // Accepted by nobody but matched (0): no remote IRR.
        let mut c = ioapic();
        c.redirtbl[3] = 0x0000_8041;
        assert_eq!(c.set_irq(3, 0, true, &mut |_: &Irq| 0), 0);
        assert_eq!(c.redirtbl[3] & rte::REMOTE_IRR, 0);
    }

    #[test]
    fn edge_pin_and_state_round_trip() {
        let mut a = ioapic();
        a.redirtbl[2] = 0x0000_0030 | (0xffu64 << 56) | rte::DEST_LOGICAL;
        let n = std::cell::Cell::new(0);
        let mut d = |i: &Irq| {
            assert!(!i.trig_level && i.logical && i.dest == 0xff);
            n.set(n.get() + 1);
            1
        };
        assert_eq!(a.set_irq(2, 0, true, &mut d), 1);
        assert_eq!(a.set_irq(2, 0, true, &mut d), 0, "no new edge");
        // A second source holding the line: deassert by one is no edge.
        assert_eq!(a.set_irq(2, 1, true, &mut d), 0);
        a.set_irq(2, 0, false, &mut d);
        assert_eq!(a.irr & 4, 4);
        a.set_irq(2, 1, false, &mut d);
        assert_eq!(a.set_irq(2, 0, true, &mut d), 1);
        assert_eq!(n.get(), 2);
        // Delivered edges are hidden from the saved irr; level lines are shown.
        a.redirtbl[7] = rte::LEVEL | rte::MASK | 0x47;
        a.set_irq(7, 0, true, &mut d);
        let mut s = kvm_ioapic_state::new_zeroed();
        a.get_state(&mut s);
        assert_eq!(s.irr, 1 << 7);
        assert_eq!(s.base_address, DEFAULT_BASE);
        assert_eq!(*s.redirtbl[2].bits(), a.redirtbl[2]);
        // SET re-asserts the saved lines: unmasked level pin 7 is delivered.
        s.redirtbl[7].raw = rte::LEVEL | 0x47;
        let mut b = ioapic();
        let mut got = Vec::new();
        b.set_state(&s, &mut |i: &Irq| {
            got.push(i.vector);
            1
        });
        assert_eq!(got, vec![0x47]);
        let mut t = kvm_ioapic_state::new_zeroed();
        b.get_state(&mut t);
        assert_eq!(t.irr, s.irr);
        assert_ne!(*t.redirtbl[7].bits() & rte::REMOTE_IRR, 0);
        assert_eq!(b.vectors()[1], 1 << 7);
        assert_eq!(
            b.vectors()[0],
            1 << 0x30 | 1,
            "pin 2's vector, vector 0 of the others"
        );
    }
}
