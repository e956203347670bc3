//! The in-kernel pair of 8259A PICs (master on ports 0x20/0x21, slave on 0xa0/0xa1 cascaded on
//! the master's IR2, ELCR at 0x4d0/0x4d1), with the semantics Linux gives its in-kernel PIC
//! (`arch/x86/kvm/i8259.c`): ICW1-4, OCW1-3 (masks, specific/non-specific/rotating EOI,
//! priority rotation, poll, read-register select, special mask is recorded but, as in Linux,
//! does not change the priority logic), auto-EOI (with rotation), special fully nested mode,
//! edge/level triggering per the ELCR, spurious IRQ 7 on an acknowledge without a request.
//!
//! Pure model: no locking, no vCPU access. The owner serializes it (one lock per VM), and
//! reads [`Pic::output`] (the master's INTR line) to drive the local APICs' LINT0.
//!
//! The state round-trips with Linux's `struct kvm_pic_state` (`KVM_GET/SET_IRQCHIP`, chips 0
//! and 1) byte for byte; what Linux keeps beside it (the per-source line levels) stays here.

use kvm_abi::kvm_pic_state;
use zerocopy::FromZeros;

/// I/O ports the in-kernel PIC claims (Linux registers three 2-byte devices).
pub const PORT_RANGES: [(u16, u16); 3] = [(0x20, 2), (0xa0, 2), (0x4d0, 2)];

/// Whether an access of `size` bytes at `port` lies entirely inside one of the PIC's ranges
/// (Linux's I/O bus matches an access only if it fits inside a device's range).
pub fn claims_port(port: u16, size: u8) -> bool {
    let (p, s) = (u32::from(port), u32::from(size));
    PORT_RANGES
        .iter()
        .any(|&(base, len)| p >= u32::from(base) && p + s <= u32::from(base) + u32::from(len))
}

/// The two cascaded 8259As of a PC.
#[derive(Clone, Copy, Debug, FromZeros)]
pub struct Pic {
    /// Chip 0 (`KVM_IRQCHIP_PIC_MASTER`).
    pub master: kvm_pic_state,
    /// Chip 1 (`KVM_IRQCHIP_PIC_SLAVE`).
    pub slave: kvm_pic_state,
    /// Per pin 0-15: the irq sources (bit `source`) currently asserting the line (Linux
    /// `irq_states`); the pin's level is their OR.
    sources: [u32; 16],
    /// The master's INTR output (an interrupt is requested from the CPU).
    pub output: bool,
    /// The output rose since [`Pic::take_wakeup`] was last called.
    wakeup: bool,
    /// Pins (0-15) whose interrupt the guest ended since [`Pic::take_acked`] (Linux
    /// `pic_clear_isr` → ack notifiers).
    acked: u16,
    /// Pins (0-15) whose IMR bit an OCW1 changed since [`Pic::take_mask_changed`] (Linux
    /// `kvm_fire_mask_notifiers` from `pic_ioport_write`).
    mask_changed: u16,
}

/// Highest priority (0 = highest) of the bits of `mask`, rotated by `priority_add`; 8 if none.
fn priority(s: &kvm_pic_state, mask: u8) -> u8 {
    if mask == 0 {
        return 8;
    }
    let mut p = 0u8;
    while p < 8 && mask & (1 << (p.wrapping_add(s.priority_add) & 7)) == 0 {
        p += 1;
    }
    p
}

/// The IRQ (0-7) this chip requests, if any: the highest unmasked request whose priority is
/// above every in-service IRQ (on the master in special fully nested mode, the cascade IR2
/// does not count as in service).
fn get_irq(s: &kvm_pic_state, master: bool) -> Option<u8> {
    let p = priority(s, s.irr & !s.imr);
    if p == 8 {
        return None;
    }
    let mut isr = s.isr;
    if master && s.special_fully_nested_mode != 0 {
        isr &= !(1 << 2);
    }
    (p < priority(s, isr)).then_some(p.wrapping_add(s.priority_add) & 7)
}

/// Sets the line of IRQ `irq` (0-7) of one chip to `level`: level-triggered pins follow the
/// line, edge-triggered pins latch a rising edge. Linux `pic_set_irq1`: -1 if the IRQ is
/// masked, 0 if the request was already pending (coalesced), 1 otherwise.
fn set_irq1(s: &mut kvm_pic_state, irq: u8, level: bool) -> i32 {
    let mask = 1u8 << (irq & 7);
    let mut ret = 1;
    if s.elcr & mask != 0 {
        if level {
            ret = i32::from(s.irr & mask == 0);
            s.irr |= mask;
            s.last_irr |= mask;
        } else {
            s.irr &= !mask;
            s.last_irr &= !mask;
        }
    } else if level {
        if s.last_irr & mask == 0 {
            ret = i32::from(s.irr & mask == 0);
            s.irr |= mask;
        }
        s.last_irr |= mask;
    } else {
        s.last_irr &= !mask;
    }
    if s.imr & mask != 0 {
        -1
    } else {
        ret
    }
}

/// Interrupt acknowledge of `irq` on one chip: into service (auto-EOI: straight out again,
/// rotating if asked); an edge request is consumed, a level one stays while the line is high.
fn intack(s: &mut kvm_pic_state, irq: u8) {
    let mask = 1u8 << (irq & 7);
    s.isr |= mask;
    if s.elcr & mask == 0 {
        s.irr &= !mask;
    }
    if s.auto_eoi != 0 {
        if s.rotate_on_auto_eoi != 0 {
            s.priority_add = (irq + 1) & 7;
        }
        s.isr &= !mask;
    }
}

impl Pic {
    /// The state Linux's `kvm_create_pic` starts from: everything zero except the ELCR masks
    /// (master 0xf8: IRQ 0-2 are always edge; slave 0xde: IRQ 8 and 13 are always edge).
    pub fn init(&mut self) {
        *self = Self::new_zeroed();
        self.master.elcr_mask = 0xf8;
        self.slave.elcr_mask = 0xde;
    }

    fn chip(&mut self, slave: bool) -> &mut kvm_pic_state {
        if slave {
            &mut self.slave
        } else {
            &mut self.master
        }
    }

    /// Recomputes the cascade and the INTR output (Linux `pic_update_irq`); must follow every
    /// change that may alter the requested IRQ.
    fn update(&mut self) {
        if get_irq(&self.slave, false).is_some() {
            // The slave's request pulses the master's IR2.
            set_irq1(&mut self.master, 2, true);
            set_irq1(&mut self.master, 2, false);
        }
        let out = get_irq(&self.master, true).is_some();
        if out && !self.output {
            self.wakeup = true;
        }
        self.output = out;
    }

    /// Whether the output rose since the last call (the owner then wakes a vCPU).
    pub fn take_wakeup(&mut self) -> bool {
        core::mem::replace(&mut self.wakeup, false)
    }

    /// Pins (bit n = pin n, slave pins 8-15) acknowledged since the last call: EOI, auto-EOI,
    /// poll, or the reinitialization that drops pending edges.
    pub fn take_acked(&mut self) -> u16 {
        core::mem::replace(&mut self.acked, 0)
    }

    /// Pins (bit n = pin n, slave pins 8-15) whose mask bit OCW1 flipped since the last call,
    /// and the current masks of all 16 pins (bit set = masked). ICW1 clearing the IMR and
    /// `KVM_SET_IRQCHIP` do not count, as in Linux.
    pub fn take_mask_changed(&mut self) -> (u16, u16) {
        let imr = u16::from(self.master.imr) | (u16::from(self.slave.imr) << 8);
        (core::mem::replace(&mut self.mask_changed, 0), imr)
    }

    fn ack(&mut self, slave: bool, irq: u8) {
        self.acked |= 1 << (u32::from(irq & 7) + if slave { 8 } else { 0 });
    }

    /// Source `source` (0-31) drives pin `pin` (0-15) to `level`; the pin's line is the OR of
    /// all sources (Linux `kvm_pic_set_irq` + `__kvm_irq_line_state`). Returns Linux's status:
    /// -1 masked (or bad pin), 0 coalesced, 1 delivered to the chip.
    pub fn set_irq(&mut self, pin: u32, source: u32, level: bool) -> i32 {
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
        let r = set_irq1(self.chip(pin >= 8), (pin & 7) as u8, line);
        self.update();
        r
    }

    /// Interrupt acknowledge from the CPU (Linux `kvm_pic_read_irq`): the vector of the
    /// highest-priority request, moved into service; the spurious IRQ 7 of the chip that has
    /// none (master: no request; slave: the master's IR2 request vanished).
    pub fn read_irq(&mut self) -> u8 {
        let vector = match get_irq(&self.master, true) {
            Some(irq) => {
                intack(&mut self.master, irq);
                if self.master.auto_eoi != 0 {
                    self.ack(false, irq);
                }
                if irq == 2 {
                    let irq2 = match get_irq(&self.slave, false) {
                        Some(i) => {
                            intack(&mut self.slave, i);
                            if self.slave.auto_eoi != 0 {
                                self.ack(true, i);
                            }
                            i
                        }
                        None => 7,
                    };
                    self.slave.irq_base.wrapping_add(irq2)
                } else {
                    self.master.irq_base.wrapping_add(irq)
                }
            }
            None => self.master.irq_base.wrapping_add(7),
        };
        self.update();
        vector
    }

    /// ICW1 (Linux `kvm_pic_reset`): pending edge requests are dropped (their in-service bits
    /// too when a local APIC takes PIC interrupts: `pic_accepted`), level requests stay; mask,
    /// rotation, special mask and read select clear; ICW2 comes next.
    fn icw1(&mut self, slave: bool, val: u8, pic_accepted: bool) {
        let s = self.chip(slave);
        s.init4 = val & 1;
        let edge_irr = s.irr & !s.elcr;
        s.last_irr = 0;
        s.irr &= s.elcr;
        s.imr = 0;
        s.priority_add = 0;
        s.special_mask = 0;
        s.read_reg_select = 0;
        if s.init4 == 0 {
            s.special_fully_nested_mode = 0;
            s.auto_eoi = 0;
        }
        s.init_state = 1;
        if pic_accepted {
            s.isr &= !edge_irr;
            self.acked |= u16::from(edge_irr) << if slave { 8 } else { 0 };
        }
    }

    /// OCW2 (EOI and rotation commands).
    fn ocw2(&mut self, slave: bool, val: u8) {
        let s = self.chip(slave);
        match val >> 5 {
            // Rotate in auto-EOI mode: clear (0) / set (4).
            0 | 4 => s.rotate_on_auto_eoi = val >> 7,
            // Non-specific EOI (5: and rotate).
            cmd @ (1 | 5) => {
                let p = priority(s, s.isr);
                if p != 8 {
                    let irq = p.wrapping_add(s.priority_add) & 7;
                    if cmd == 5 {
                        s.priority_add = (irq + 1) & 7;
                    }
                    s.isr &= !(1 << irq);
                    self.ack(slave, irq);
                    self.update();
                }
            }
            // Specific EOI.
            3 => {
                s.isr &= !(1 << (val & 7));
                self.ack(slave, val);
                self.update();
            }
            // Set priority (IRQ val&7 gets the lowest).
            6 => {
                s.priority_add = val.wrapping_add(1) & 7;
                self.update();
            }
            // Specific EOI and rotate.
            7 => {
                let irq = val & 7;
                s.priority_add = (irq + 1) & 7;
                s.isr &= !(1 << irq);
                self.ack(slave, irq);
                self.update();
            }
            // 2: no operation.
            _ => {}
        }
    }

    /// A guest byte write to port 0x20/0x21/0xa0/0xa1/0x4d0/0x4d1 (other ports: ignored).
    /// `pic_accepted`: some local APIC currently takes PIC interrupts (ICW1 then also ends
    /// pending edges).
    pub fn write(&mut self, port: u16, val: u8, pic_accepted: bool) {
        match port {
            0x4d0 | 0x4d1 => {
                let s = self.chip(port & 1 != 0);
                s.elcr = val & s.elcr_mask;
            }
            0x20 | 0xa0 => {
                let slave = port == 0xa0;
                if val & 0x10 != 0 {
                    self.icw1(slave, val, pic_accepted);
                } else if val & 0x08 != 0 {
                    // OCW3: poll, read-register select, special mask.
                    let s = self.chip(slave);
                    if val & 0x04 != 0 {
                        s.poll = 1;
                    }
                    if val & 0x02 != 0 {
                        s.read_reg_select = val & 1;
                    }
                    if val & 0x40 != 0 {
                        s.special_mask = (val >> 5) & 1;
                    }
                } else {
                    self.ocw2(slave, val);
                }
            }
            0x21 | 0xa1 => {
                let s = self.chip(port == 0xa1);
                match s.init_state {
                    // OCW1: the interrupt mask.
                    0 => {
                        let diff = s.imr ^ val;
                        s.imr = val;
                        self.mask_changed |= u16::from(diff) << if port == 0xa1 { 8 } else { 0 };
                        self.update();
                    }
                    // ICW2: vector base.
                    1 => {
                        s.irq_base = val & 0xf8;
                        s.init_state = 2;
                    }
                    // ICW3 (cascade wiring: fixed on a PC).
                    2 => s.init_state = if s.init4 != 0 { 3 } else { 0 },
                    // ICW4: special fully nested mode, auto-EOI.
                    3 => {
                        s.special_fully_nested_mode = (val >> 4) & 1;
                        s.auto_eoi = (val >> 1) & 1;
                        s.init_state = 0;
                    }
                    // Other values (only from KVM_SET_IRQCHIP): ignored, as in Linux.
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Poll command read (Linux `pic_poll_read`): the requested IRQ with bit 7 set, acknowledged
    /// and ended at once; 0x07 if none.
    fn poll_read(&mut self, slave: bool) -> u8 {
        let Some(irq) = get_irq(if slave { &self.slave } else { &self.master }, !slave) else {
            self.update();
            return 0x07;
        };
        if slave {
            self.master.isr &= !(1 << 2);
            self.master.irr &= !(1 << 2);
        }
        let s = self.chip(slave);
        s.irr &= !(1 << irq);
        s.isr &= !(1 << irq);
        self.ack(slave, irq);
        if slave || irq != 2 {
            self.update();
        }
        irq | 0x80
    }

    /// A guest byte read from port 0x20/0x21/0xa0/0xa1/0x4d0/0x4d1 (other ports: 0).
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            0x4d0 | 0x4d1 => self.chip(port & 1 != 0).elcr,
            0x20 | 0x21 | 0xa0 | 0xa1 => {
                let slave = port & 0x80 != 0;
                let s = self.chip(slave);
                if s.poll != 0 {
                    s.poll = 0;
                    return self.poll_read(slave);
                }
                if port & 1 != 0 {
                    s.imr
                } else if s.read_reg_select != 0 {
                    s.isr
                } else {
                    s.irr
                }
            }
            _ => 0,
        }
    }

    /// `KVM_GET_IRQCHIP` of chip 0 (master) or 1 (slave).
    pub fn get_state(&self, slave: bool) -> kvm_pic_state {
        if slave {
            self.slave
        } else {
            self.master
        }
    }

    /// `KVM_SET_IRQCHIP` of chip 0 or 1: the state as given (Linux copies it whole, ELCR mask
    /// included), then the output is recomputed.
    pub fn set_state(&mut self, slave: bool, s: &kvm_pic_state) {
        *self.chip(slave) = *s;
        self.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic() -> Box<Pic> {
        let mut p = Box::new(Pic::new_zeroed());
        p.init();
        p
    }

    /// The sequence Linux (`init_8259A`) and SeaBIOS (`pic_setup`) program: ICW1 0x11 (edge,
    /// cascade, ICW4), ICW2 base, ICW3 cascade, ICW4 (8086 mode, `auto` = 0x03), then masks.
    fn program(p: &mut Pic, base0: u8, base1: u8, icw4: u8) {
        p.write(0x20, 0x11, true);
        p.write(0x21, base0, true);
        p.write(0x21, 0x04, true);
        p.write(0x21, icw4, true);
        p.write(0xa0, 0x11, true);
        p.write(0xa1, base1, true);
        p.write(0xa1, 0x02, true);
        p.write(0xa1, icw4, true);
    }

    #[test]
    fn ocw1_reports_mask_changes() {
        let mut p = pic();
        program(&mut p, 0x20, 0x28, 0x01);
        assert_eq!(
            p.take_mask_changed(),
            (0, 0),
            "ICW1 clearing the IMR does not count"
        );
        p.write(0x21, 0xfe, true);
        p.write(0xa1, 0x01, true);
        assert_eq!(p.take_mask_changed(), (0x01fe, 0x01fe));
        assert_eq!(p.take_mask_changed().0, 0);
        // Unmasking IRQ0 of an all-masked master: only pin 0 flips.
        p.write(0x21, 0xff, true);
        p.write(0x21, 0xfe, true);
        assert_eq!(p.take_mask_changed(), (0x0001, 0x01fe));
        let st = p.get_state(false);
        p.set_state(false, &kvm_pic_state { imr: 0, ..st });
        assert_eq!(p.take_mask_changed().0, 0, "KVM_SET_IRQCHIP does not count");
    }

    #[test]
    fn init_and_ports() {
        let mut p = pic();
        assert_eq!(p.master.elcr_mask, 0xf8);
        assert_eq!(p.slave.elcr_mask, 0xde);
        program(&mut p, 0x20, 0x28, 0x01);
        assert_eq!(p.master.irq_base, 0x20);
        assert_eq!(p.slave.irq_base, 0x28);
        assert_eq!(p.master.init_state, 0);
        p.write(0x21, 0xfb, true);
        p.write(0xa1, 0xff, true);
        assert_eq!(p.read(0x21), 0xfb);
        assert_eq!(p.read(0xa1), 0xff);
        // ELCR: masked to the chips' writable bits.
        p.write(0x4d0, 0xff, true);
        p.write(0x4d1, 0xff, true);
        assert_eq!(p.read(0x4d0), 0xf8);
        assert_eq!(p.read(0x4d1), 0xde);
        assert!(claims_port(0x20, 1) && claims_port(0x20, 2) && claims_port(0x4d1, 1));
        assert!(!claims_port(0x21, 2) && !claims_port(0x20, 4) && !claims_port(0x22, 1));
    }

    #[test]
    fn edge_irq_eoi_and_priority() {
        let mut p = pic();
        program(&mut p, 0x08, 0x70, 0x01);
        assert!(!p.output);
        assert_eq!(p.set_irq(0, 0, true), 1);
        assert!(p.output && p.take_wakeup() && !p.take_wakeup());
        // Still high: a second assertion is no new edge.
        assert_eq!(p.set_irq(0, 0, true), 1);
        assert_eq!(p.set_irq(1, 0, true), 1);
        // IRR reads back through OCW3.
        p.write(0x20, 0x0a, true);
        assert_eq!(p.read(0x20), 0x03);
        assert_eq!(p.read_irq(), 0x08, "IRQ0 first");
        // IRQ1 has lower priority than IRQ0 in service: no output.
        assert!(!p.output);
        p.write(0x20, 0x0b, true);
        assert_eq!(p.read(0x20), 0x01, "ISR");
        // A new edge of IRQ0 while it is in service: coalesced? No, IRR was consumed.
        p.set_irq(0, 0, false);
        assert_eq!(p.set_irq(0, 0, true), 1);
        assert_eq!(p.set_irq(0, 0, false), 1);
        // Non-specific EOI: IRQ0 (the new edge) is requested again first.
        p.write(0x20, 0x20, true);
        assert!(p.output);
        assert_eq!(p.read_irq(), 0x08);
        p.write(0x20, 0x60, true); // specific EOI of IRQ0
        assert_eq!(p.read_irq(), 0x09);
        p.write(0x20, 0x20, true);
        assert!(!p.output);
        // Nothing requested: spurious IRQ 7.
        assert_eq!(p.read_irq(), 0x0f);
        // Masked: -1, and no output until unmasked.
        p.write(0x21, 0x10, true);
        assert_eq!(p.set_irq(4, 0, true), -1);
        assert!(!p.output);
        p.write(0x21, 0x00, true);
        assert!(p.output);
        // Edge latched while masked is coalesced with a second edge: 0.
        p.set_irq(4, 0, false);
        assert_eq!(p.set_irq(4, 0, true), 0);
    }

    #[test]
    fn cascade_and_level() {
        let mut p = pic();
        program(&mut p, 0x20, 0x28, 0x01);
        // IRQ 10 level-triggered (ELCR bit 2 of the slave).
        p.write(0x4d1, 0x04, true);
        assert_eq!(p.set_irq(10, 0, true), 1);
        assert!(p.output);
        assert_eq!(p.read_irq(), 0x2a, "slave base + 2");
        assert_eq!(p.take_acked(), 0, "no auto-EOI");
        assert_eq!(p.slave.isr, 0x04);
        assert_eq!(p.master.isr, 0x04, "cascade IR2 in service");
        // Level line still high: EOI to both chips re-requests it.
        p.write(0xa0, 0x20, true);
        p.write(0x20, 0x20, true);
        assert_eq!(
            p.take_acked(),
            1 << 10 | 1 << 2,
            "slave pin 2 = IRQ 10, cascade"
        );
        assert!(p.output);
        assert_eq!(p.read_irq(), 0x2a);
        // The line drops before the EOIs: nothing more.
        assert_eq!(p.set_irq(10, 0, false), 1);
        p.write(0xa0, 0x20, true);
        p.write(0x20, 0x20, true);
        assert!(!p.output);
        // Two sources share a line: it stays high until both drop (irq_states).
        p.set_irq(10, 0, true);
        p.set_irq(10, 1, true);
        p.set_irq(10, 0, false);
        assert!(p.slave.irr & 0x04 != 0);
        p.set_irq(10, 1, false);
        assert!(p.slave.irr & 0x04 == 0);
        // The slave's request vanishes before INTA: the slave's spurious IRQ 15.
        p.set_irq(10, 0, true);
        assert!(p.output);
        p.set_irq(10, 0, false);
        // The master's IR2 latched the pulse; the slave has nothing.
        assert!(p.output);
        assert_eq!(p.read_irq(), 0x2f);
    }

    #[test]
    fn auto_eoi_rotation_and_poll() {
        let mut p = pic();
        program(&mut p, 0x20, 0x28, 0x03);
        assert_eq!(p.master.auto_eoi, 1);
        p.set_irq(3, 0, true);
        assert_eq!(p.read_irq(), 0x23);
        assert_eq!(p.master.isr, 0, "auto-EOI");
        assert_eq!(p.take_acked(), 1 << 3);
        // Rotate in auto-EOI mode: IRQ3 becomes lowest after service.
        p.write(0x20, 0x80, true);
        assert_eq!(p.master.rotate_on_auto_eoi, 1);
        p.set_irq(3, 0, false);
        p.set_irq(3, 0, true);
        assert_eq!(p.read_irq(), 0x23);
        assert_eq!(p.master.priority_add, 4);
        p.set_irq(1, 0, true);
        p.set_irq(5, 0, true);
        assert_eq!(
            p.read_irq(),
            0x25,
            "IRQ5 has the highest priority after rotation"
        );
        // Set priority: IRQ7 lowest → IRQ0 highest again.
        p.write(0x20, 0xc7, true);
        assert_eq!(p.master.priority_add, 0);
        assert_eq!(p.read_irq(), 0x21);
        // Poll: OCW3 0x0c, then a read returns 0x80 | irq and ends it.
        p.write(0x20, 0x0c, true);
        assert_eq!(p.read(0x20), 0x07, "nothing requested");
        p.set_irq(6, 0, true);
        p.write(0x20, 0x0c, true);
        assert_eq!(p.read(0x20), 0x86);
        assert!(!p.output);
        assert_eq!(p.master.poll, 0);
    }

    #[test]
    fn any_set_state_is_safe() {
        let mut p = pic();
        for b in [0u8, 1, 7, 0x80, 0xf9, 0xff] {
            let s = kvm_pic_state {
                last_irr: b,
                irr: b,
                imr: !b,
                isr: b,
                priority_add: b,
                irq_base: b,
                read_reg_select: b,
                poll: b,
                special_mask: b,
                init_state: b,
                auto_eoi: b,
                rotate_on_auto_eoi: b,
                special_fully_nested_mode: b,
                init4: b,
                elcr: b,
                elcr_mask: b,
            };
            p.set_state(false, &s);
            p.set_state(true, &s);
            for port in [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1] {
                p.write(port, b, true);
                p.read(port);
            }
            p.set_irq(3, 31, true);
            p.read_irq();
        }
    }

    #[test]
    fn special_fully_nested_and_reinit() {
        let mut p = pic();
        // ICW4 0x11: special fully nested mode on the master.
        program(&mut p, 0x20, 0x28, 0x11);
        p.set_irq(12, 0, true);
        assert_eq!(p.read_irq(), 0x2c);
        // A higher-priority slave IRQ while IR2 is in service still interrupts.
        p.set_irq(9, 0, true);
        assert!(p.output);
        assert_eq!(p.read_irq(), 0x29);
        // ICW1 again: edge requests and their in-service bits go, the state restarts.
        p.set_irq(1, 0, true);
        p.write(0x20, 0x11, true);
        assert_eq!(p.master.irr, 0);
        assert_eq!(p.master.init_state, 1);
        assert_eq!(p.master.imr, 0);
        // Round trip of the ABI state.
        let s = p.get_state(true);
        let mut q = pic();
        q.set_state(true, &s);
        assert_eq!(q.get_state(true), s);
    }
}
