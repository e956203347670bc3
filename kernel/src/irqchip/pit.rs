//! The register model of the Intel 8254 programmable interval timer as Linux KVM exposes it
//! (`struct kvm_pit_state2`; Linux `arch/x86/kvm/i8254.c`, Intel 8254 datasheet). Pure: time
//! is an argument (host monotonic nanoseconds), nothing here touches a host or a VM; the
//! device around it (ioctls, port I/O, host timer, IRQ0) is `pitdev.rs`.
//!
//! Counting is derived from the elapsed time since `count_load_time`, at
//! [`PIT_FREQ`] Hz, in integer arithmetic only. Behaviour follows Linux, except:
//! - BCD counting (`bcd` = 1) counts in decimal (0..9999, an initial count of 0 is 10^4) and
//!   the counter reads back in BCD, as the datasheet says (Linux counts in binary whatever the
//!   BCD bit); the stored `count` stays the value the guest wrote, as in Linux.
//! - OUT follows the datasheet for a counter that starts at the count load (or at the gate's
//!   rising edge in modes 1, 2, 3, 5): mode 0/1 low until terminal count; mode 2 high except
//!   for the tick at count 1; mode 3 high for the first (N+1)/2 ticks; modes 4/5 high except
//!   for the tick at count 0 (Linux/QEMU report inverted one-tick pulses in modes 1, 2, 4, 5).
//! - Channel 0 counts from its `count_load_time` like channels 1 and 2 (Linux derives it from
//!   its host timer, the same value unless the period was clamped), and every count load
//!   (also from `KVM_SET_PIT2`) stamps `count_load_time` on all channels.
//!
//! As in Linux: a low gate does not stop counting in modes 0 and 4, modes 1 and 5 start
//! counting at the count load without waiting for a trigger, NULL COUNT (status bit 6) is
//! never set, and reading the control port gives 0.

use kvm_abi::{kvm_pit_channel_state, KVM_PIT_FLAGS_HPET_LEGACY, KVM_PIT_FLAGS_SPEAKER_DATA_ON};
use zerocopy::FromZeros;

/// The PIT input clock (Linux `KVM_PIT_FREQ`).
pub const PIT_FREQ: u64 = 1_193_182;
/// The shortest periodic IRQ0 interval (Linux `min_timer_period_us`, default 200 µs).
pub const MIN_PERIOD_NS: u64 = 200_000;
/// First I/O port of the PIT (channels 0..2 data, 3 control).
pub const PIT_BASE_PORT: u16 = 0x40;
/// The NMI status and control port; bit 0 is channel 2's gate, bit 5 its OUT.
pub const SPEAKER_PORT: u16 = 0x61;

const NS_PER_SEC: u64 = 1_000_000_000;

/// `read_state`/`write_state`/`rw_mode`/`count_latched` values (1, LSB only, is the default
/// case of every match).
const RW_MSB: u8 = 2;
const RW_WORD0: u8 = 3;
const RW_WORD1: u8 = 4;

/// PIT ticks in `ns` nanoseconds (rounded down; no 128-bit arithmetic).
pub fn ns_to_ticks(ns: u64) -> u64 {
    (ns / NS_PER_SEC) * PIT_FREQ + (ns % NS_PER_SEC) * PIT_FREQ / NS_PER_SEC
}

/// Nanoseconds of `ticks` PIT ticks (rounded down).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks / PIT_FREQ).saturating_mul(NS_PER_SEC) + (ticks % PIT_FREQ) * NS_PER_SEC / PIT_FREQ
}

/// The value of a BCD number (any nibble is weighted by its decimal position, so bad digits
/// give a defined value).
fn bcd_to_bin(v: u32) -> u64 {
    let mut r = 0u64;
    let mut w = 1u64;
    for i in 0..8 {
        r += u64::from((v >> (4 * i)) & 0xf) * w;
        w *= 10;
    }
    r
}

/// `v` (below 10 000) as four BCD digits.
fn bin_to_bcd(v: u64) -> u16 {
    let mut r = 0u16;
    let mut v = v % 10_000;
    for i in 0..4 {
        r |= ((v % 10) as u16) << (4 * i);
        v /= 10;
    }
    r
}

/// How channel 0 drives IRQ0 (Linux `create_pit_timer`): the first expiry, the interval and
/// whether it repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq0Timer {
    /// Interval in nanoseconds (periodic ones clamped to [`MIN_PERIOD_NS`]).
    pub period_ns: u64,
    /// Modes 2 and 3 repeat; modes 0, 1 and 4 fire once.
    pub periodic: bool,
}

/// The three channels and the `KVM_PIT_FLAGS_*` of one PIT.
#[derive(Clone, Copy, Debug)]
pub struct Pit8254 {
    /// Channel state in the `kvm_pit_channel_state` layout.
    pub ch: [kvm_pit_channel_state; 3],
    /// `KVM_PIT_FLAGS_HPET_LEGACY` | `KVM_PIT_FLAGS_SPEAKER_DATA_ON`.
    pub flags: u32,
}

impl Pit8254 {
    /// A PIT in its reset state at time `now` (Linux `kvm_pit_reset`): no mode (0xff), gates
    /// high except channel 2's, counts 0x10000.
    pub fn new(now: u64) -> Self {
        let mut p = Pit8254 {
            ch: [kvm_pit_channel_state::new_zeroed(); 3],
            flags: 0,
        };
        for (i, c) in p.ch.iter_mut().enumerate() {
            c.mode = 0xff;
            c.gate = u8::from(i != 2);
        }
        for i in 0..3 {
            p.load_count(i, 0, now);
        }
        p
    }

    fn chan(&self, i: usize) -> kvm_pit_channel_state {
        self.ch
            .get(i)
            .copied()
            .unwrap_or_else(FromZeros::new_zeroed)
    }

    /// Loads `val` as channel `i`'s count at `now` (0 means 0x10000).
    pub fn load_count(&mut self, i: usize, val: u32, now: u64) {
        if let Some(c) = self.ch.get_mut(i) {
            c.count = if val == 0 { 0x1_0000 } else { val };
            c.count_load_time = now as i64;
        }
    }

    /// Channel `i`'s initial count in ticks (decimal value in BCD mode).
    fn initial(c: &kvm_pit_channel_state) -> u64 {
        let n = if c.bcd & 1 != 0 {
            bcd_to_bin(c.count)
        } else {
            u64::from(c.count)
        };
        n.max(1)
    }

    /// Ticks elapsed on channel `c` at `now`.
    fn elapsed(c: &kvm_pit_channel_state, now: u64) -> u64 {
        let d = (now as i64).saturating_sub(c.count_load_time);
        ns_to_ticks(d.max(0) as u64)
    }

    /// The current counter value of channel `i` as the guest reads it (16 bits; BCD digits in
    /// BCD mode), Linux `pit_get_count`.
    pub fn count(&self, i: usize, now: u64) -> u16 {
        let c = self.chan(i);
        let n = Self::initial(&c);
        let d = Self::elapsed(&c, now);
        let bcd = c.bcd & 1 != 0;
        let wrap = if bcd { 10_000 } else { 0x1_0000 };
        let v = match c.mode {
            // One-shot modes: the counter keeps counting down through zero and wraps.
            0 | 1 | 4 | 5 => (n % wrap + wrap - d % wrap) % wrap,
            // Square wave: decrements by two, twice per period.
            3 => n - (2 * (d % n)) % n,
            // Rate generator (and unprogrammed channels): reloads every n ticks.
            _ => n - d % n,
        };
        if bcd {
            bin_to_bcd(v)
        } else {
            v as u16
        }
    }

    /// OUT of channel `i` at `now` (see the module comment).
    pub fn out(&self, i: usize, now: u64) -> bool {
        let c = self.chan(i);
        let n = Self::initial(&c);
        let d = Self::elapsed(&c, now);
        match c.mode {
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            4 | 5 => d != n,
            _ => d >= n,
        }
    }

    fn latch_count(&mut self, i: usize, now: u64) {
        let v = self.count(i, now);
        if let Some(c) = self.ch.get_mut(i) {
            if c.count_latched == 0 {
                c.latched_count = v;
                c.count_latched = c.rw_mode;
            }
        }
    }

    fn latch_status(&mut self, i: usize, now: u64) {
        let out = u32::from(self.out(i, now));
        if let Some(c) = self.ch.get_mut(i) {
            if c.status_latched == 0 {
                let s = (out << 7)
                    | (u32::from(c.rw_mode) << 4)
                    | (u32::from(c.mode) << 1)
                    | u32::from(c.bcd);
                c.status = s as u8;
                c.status_latched = 1;
            }
        }
    }

    /// A guest write of `val` to port `0x40 + off` (`off` 0..=3). Returns whether channel 0's
    /// count was loaded (IRQ0 must be reprogrammed).
    pub fn write(&mut self, off: u16, val: u8, now: u64) -> bool {
        if off == 3 {
            let sel = usize::from(val >> 6);
            if sel == 3 {
                // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
                for i in 0..3 {
                    if val & (2 << i) != 0 {
                        if val & 0x20 == 0 {
                            self.latch_count(i, now);
                        }
                        if val & 0x10 == 0 {
                            self.latch_status(i, now);
                        }
                    }
                }
                return false;
            }
            let access = (val >> 4) & 3;
            if access == 0 {
                self.latch_count(sel, now);
            } else if let Some(c) = self.ch.get_mut(sel) {
                c.rw_mode = access;
                c.read_state = access;
                c.write_state = access;
                let m = (val >> 1) & 7;
                c.mode = if m > 5 { m - 4 } else { m };
                c.bcd = val & 1;
            }
            return false;
        }
        let i = usize::from(off);
        let Some(c) = self.ch.get_mut(i) else {
            return false;
        };
        let v = u32::from(val);
        let load = match c.write_state {
            RW_MSB => Some(v << 8),
            RW_WORD0 => {
                c.write_latch = val;
                c.write_state = RW_WORD1;
                None
            }
            RW_WORD1 => {
                c.write_state = RW_WORD0;
                Some(u32::from(c.write_latch) | (v << 8))
            }
            // RW_LSB, and channels never programmed (Linux's default case).
            _ => Some(v),
        };
        match load {
            Some(n) => {
                self.load_count(i, n, now);
                i == 0
            }
            None => false,
        }
    }

    /// A guest read of port `0x40 + off` (`off` 0..=3): latched status, then a latched count,
    /// then the live counter byte by byte.
    pub fn read(&mut self, off: u16, now: u64) -> u8 {
        let i = usize::from(off);
        if off >= 3 {
            return 0;
        }
        let live = self.count(i, now);
        let Some(c) = self.ch.get_mut(i) else {
            return 0;
        };
        if c.status_latched != 0 {
            c.status_latched = 0;
            return c.status;
        }
        let [lo, hi] = c.latched_count.to_le_bytes();
        if c.count_latched != 0 {
            return match c.count_latched {
                RW_MSB => {
                    c.count_latched = 0;
                    hi
                }
                RW_WORD0 => {
                    c.count_latched = RW_MSB;
                    lo
                }
                _ => {
                    c.count_latched = 0;
                    lo
                }
            };
        }
        let [lo, hi] = live.to_le_bytes();
        match c.read_state {
            RW_MSB => hi,
            RW_WORD0 => {
                c.read_state = RW_WORD1;
                lo
            }
            RW_WORD1 => {
                c.read_state = RW_WORD0;
                hi
            }
            _ => lo,
        }
    }

    /// Sets channel `i`'s gate; a rising edge restarts counting in modes 1, 2, 3 and 5.
    pub fn set_gate(&mut self, i: usize, val: bool, now: u64) {
        if let Some(c) = self.ch.get_mut(i) {
            if matches!(c.mode, 1 | 2 | 3 | 5) && c.gate == 0 && val {
                c.count_load_time = now as i64;
            }
            c.gate = u8::from(val);
        }
    }

    /// A guest write to port 0x61: bit 0 is channel 2's gate, bit 1 the speaker data enable.
    pub fn speaker_write(&mut self, val: u32, now: u64) {
        if val & 2 != 0 {
            self.flags |= KVM_PIT_FLAGS_SPEAKER_DATA_ON;
        } else {
            self.flags &= !KVM_PIT_FLAGS_SPEAKER_DATA_ON;
        }
        self.set_gate(2, val & 1 != 0, now);
    }

    /// A guest read of port 0x61: gate 2 (bit 0), speaker data (bit 1), the refresh toggle
    /// (bit 4, flipping every 2^14 ns, about the 15 µs of a PC) and OUT 2 (bit 5).
    pub fn speaker_read(&self, now: u64) -> u8 {
        let data = u8::from(self.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON != 0);
        let refresh = ((now >> 14) & 1) as u8;
        (self.chan(2).gate & 1) | (data << 1) | (refresh << 4) | (u8::from(self.out(2, now)) << 5)
    }

    /// Installs channel state from userspace (Linux `kvm_vm_ioctl_set_pit2`): the fields as
    /// given, then every count reloaded at `now`.
    pub fn set_state(&mut self, ch: &[kvm_pit_channel_state; 3], now: u64) {
        self.ch = *ch;
        for i in 0..3 {
            let n = self.chan(i).count;
            self.load_count(i, n, now);
        }
    }

    /// How IRQ0 must be driven now (Linux `pit_load_count` for channel 0): `None` in HPET
    /// legacy mode and in modes without an interrupt (5, unprogrammed).
    pub fn irq0_timer(&self) -> Option<Irq0Timer> {
        if self.flags & KVM_PIT_FLAGS_HPET_LEGACY != 0 {
            return None;
        }
        let c = self.chan(0);
        let period_ns = ticks_to_ns(Self::initial(&c));
        match c.mode {
            0 | 1 | 4 => Some(Irq0Timer {
                period_ns: period_ns.max(1),
                periodic: false,
            }),
            2 | 3 => Some(Irq0Timer {
                period_ns: period_ns.max(MIN_PERIOD_NS),
                periodic: true,
            }),
            _ => None,
        }
    }
}
