//! The local APIC register model (xAPIC), as Linux's `arch/x86/kvm/lapic.c` presents it to
//! userspace: the 1 KiB register page of `KVM_GET_LAPIC`/`KVM_SET_LAPIC` (every register at
//! its MMIO offset, 32 bits per 16-byte slot) plus the timer, the MP state and the pending
//! ExtINT vector of the userspace PIC.
//!
//! This is pure state: time comes in as `now` (nanoseconds), side effects that involve other
//! vCPUs, the backend or userspace come out as an [`Effect`]. The owner vCPU changes it under
//! its vCPU lock; other vCPUs never touch it (they post interrupts through
//! [`super::ApicShared`]).
//!
//! x2APIC mode (`IA32_APIC_BASE` bits 10 and 11) is modelled as Linux does it without
//! `KVM_CAP_X2APIC_API`: the ID register holds the 32-bit x2APIC ID (= vCPU id), LDR is derived
//! from it, ICR is one 64-bit MSR, SELF IPI exists, the MMIO page is gone, and
//! `KVM_GET/SET_LAPIC` show the ID in xAPIC format.
//!
//! The timer runs one-shot, periodic or (when the guest's CPUID has it) TSC-deadline: a
//! deadline in guest TSC ticks becomes a host-time deadline through the TSC frequency.
//!
//! Not modelled (as in Linux unless noted): directed EOI, the CMCI LVT (the version register
//! reports 6 LVTs), APR (reads 0, as in Linux), arbitration priority for lowest-priority
//! delivery (the first matching software-enabled APIC is chosen; Linux compares priorities).

use kvm_abi::KVM_MP_STATE_RUNNABLE;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the register page of `KVM_GET_LAPIC` (`KVM_APIC_REG_SIZE`).
pub const APIC_REG_SIZE: usize = 1024;
/// Size of the xAPIC MMIO window.
pub const APIC_MMIO_SIZE: u64 = 4096;

/// Register offsets (Intel SDM vol. 3 table 11-1).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const LVR: u32 = 0x30;
    /// Task priority.
    pub const TASKPRI: u32 = 0x80;
    /// Arbitration priority.
    pub const ARBPRI: u32 = 0x90;
    /// Processor priority.
    pub const PROCPRI: u32 = 0xa0;
    /// End of interrupt.
    pub const EOI: u32 = 0xb0;
    /// Remote read.
    pub const RRR: u32 = 0xc0;
    /// Logical destination.
    pub const LDR: u32 = 0xd0;
    /// Destination format.
    pub const DFR: u32 = 0xe0;
    /// Spurious interrupt vector.
    pub const SPIV: u32 = 0xf0;
    /// In-service register (8 × 32 bits).
    pub const ISR: u32 = 0x100;
    /// Trigger mode register.
    pub const TMR: u32 = 0x180;
    /// Interrupt request register.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// LVT corrected machine check (not offered).
    pub const LVTCMCI: u32 = 0x2f0;
    /// Interrupt command, low half.
    pub const ICR: u32 = 0x300;
    /// Interrupt command, high half (destination).
    pub const ICR2: u32 = 0x310;
    /// LVT timer.
    pub const LVTT: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVTTHMR: u32 = 0x330;
    /// LVT performance counter.
    pub const LVTPC: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT1: u32 = 0x360;
    /// LVT error.
    pub const LVTERR: u32 = 0x370;
    /// Timer initial count.
    pub const TMICT: u32 = 0x380;
    /// Timer current count.
    pub const TMCCT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TDCR: u32 = 0x3e0;
    /// x2APIC self IPI (write-only, x2APIC mode only).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// First x2APIC MSR (`0x800 + offset / 16`).
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_MSR_LAST: u32 = 0x8ff;

/// Version register: version 0x14, 6 LVT entries (max LVT index 5), as Linux without CMCI.
pub const APIC_VERSION: u32 = 0x14 | (5 << 16);
/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// SVR software enable.
pub const SPIV_ENABLED: u32 = 1 << 8;
/// `IA32_APIC_BASE` global enable.
pub const BASE_ENABLE: u64 = 1 << 11;
/// `IA32_APIC_BASE` x2APIC enable.
pub const BASE_X2APIC: u64 = 1 << 10;
/// `IA32_APIC_BASE` bootstrap processor.
pub const BASE_BSP: u64 = 1 << 8;
/// LVT timer periodic mode.
const LVTT_PERIODIC: u32 = 1 << 17;
/// LVT timer TSC-deadline mode.
const LVTT_TSCDEADLINE: u32 = 1 << 18;
/// `IA32_TSC_DEADLINE`.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Linux's APIC bus cycle: 1 ns (1 GHz).
const BUS_CYCLE_NS: u64 = 1;
/// Shortest periodic timer period (Linux `min_timer_period_us` = 200): a guest cannot make
/// the host timer fire more often.
pub const MIN_PERIOD_NS: u64 = 200_000;

/// Delivery modes (ICR/MSI/LVT bits 10:8).
pub mod dm {
    /// Fixed.
    pub const FIXED: u8 = 0;
    /// Lowest priority.
    pub const LOWEST: u8 = 1;
    /// SMI.
    pub const SMI: u8 = 2;
    /// NMI.
    pub const NMI: u8 = 4;
    /// INIT.
    pub const INIT: u8 = 5;
    /// Start-up IPI.
    pub const SIPI: u8 = 6;
    /// External interrupt.
    pub const EXTINT: u8 = 7;
}

/// Destination shorthands (ICR bits 19:18).
pub mod sh {
    /// Use the destination field.
    pub const NONE: u8 = 0;
    /// Self.
    pub const SELF: u8 = 1;
    /// All including self.
    pub const ALL: u8 = 2;
    /// All excluding self.
    pub const OTHERS: u8 = 3;
}

/// An interrupt request to one or more local APICs (from an ICR write or a decoded MSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// Vector.
    pub vector: u8,
    /// Delivery mode (`dm::*`).
    pub mode: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// Level (1 = assert).
    pub level: bool,
    /// Level-triggered.
    pub trig_level: bool,
    /// Shorthand (`sh::*`).
    pub shorthand: u8,
    /// Destination (8 bits in xAPIC mode).
    pub dest: u32,
}

/// What a register write asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register change.
    None,
    /// Send this IPI (ICR write).
    Ipi(Irq),
    /// An EOI retired this in-service vector (the userspace IOAPIC may need to hear of it).
    Eoi(u8),
    /// TPR changed: CR8 must follow.
    Tpr,
}

/// Timer state (one-shot/periodic, in host nanoseconds).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Timer {
    /// Next expiry, 0 = not running.
    pub deadline: u64,
    /// Period for periodic mode (0 = one-shot).
    pub period: u64,
    /// Length of one count in ns (bus cycle × divider).
    pub tick_ns: u64,
    /// The deadline the host timer was last armed for (0 = none).
    pub armed: u64,
}

/// One local APIC (owned by its vCPU, changed under the vCPU lock).
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Lapic {
    /// The register page (`regs[off / 4]` holds the register at MMIO offset `off`).
    regs: [u32; APIC_REG_SIZE / 4],
    /// `IA32_APIC_BASE` as last synchronized from the backend.
    pub base: u64,
    /// Timer.
    pub timer: Timer,
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
    /// Pending ExtINT vector from the userspace PIC (`KVM_INTERRUPT`), bit 8 = valid.
    pub extint: u32,
    /// The vCPU id (xAPIC ID after reset).
    pub vcpu_id: u32,
    /// An EOI the userspace IOAPIC must hear of (`KVM_EXIT_IOAPIC_EOI` before the next
    /// entry), bit 8 = valid.
    pub eoi_exit: u32,
    /// The guest wrote the TPR through MMIO: CR8 must follow before the next entry.
    pub tpr_dirty: u32,
    /// Bit 0: the guest's CPUID offers the TSC-deadline timer (LVTT mode 2 is writable);
    /// bit 1: bit 0 was looked up (CPUID is frozen after the first `KVM_RUN`).
    pub tscdl_ok: u32,
    /// `IA32_TSC_DEADLINE` in guest TSC ticks (0 = disarmed).
    pub tscdl: u64,
}

fn slot(off: u32) -> usize {
    (off / 4) as usize
}

impl Lapic {
    /// Register at MMIO offset `off` (16-byte aligned).
    pub fn reg(&self, off: u32) -> u32 {
        self.regs.get(slot(off)).copied().unwrap_or(0)
    }

    fn set(&mut self, off: u32, v: u32) {
        if let Some(r) = self.regs.get_mut(slot(off)) {
            *r = v;
        }
    }

    fn bit(&self, base: u32, v: u8) -> bool {
        self.reg(base + u32::from(v >> 5) * 0x10) & (1 << (v & 31)) != 0
    }

    fn set_bit(&mut self, base: u32, v: u8, on: bool) {
        let off = base + u32::from(v >> 5) * 0x10;
        let r = self.reg(off);
        let m = 1u32 << (v & 31);
        self.set(off, if on { r | m } else { r & !m });
    }

    fn highest(&self, base: u32) -> Option<u8> {
        (0..8u32).rev().find_map(|i| {
            let r = self.reg(base + i * 0x10);
            (r != 0).then(|| (i * 32 + 31 - r.leading_zeros()) as u8)
        })
    }

    /// A fresh, reset APIC for vCPU `id` with `IA32_APIC_BASE` = `base`.
    pub fn new_state(&mut self, id: u32, base: u64) {
        self.vcpu_id = id;
        self.base = base;
        self.timer = Timer::default();
        self.extint = 0;
        self.mp_state = if base & BASE_BSP != 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            kvm_abi::KVM_MP_STATE_UNINITIALIZED
        };
        self.reset(true);
    }

    /// Power-on/INIT reset of the registers (Linux `kvm_lapic_reset`); `set_id` resets the ID.
    pub fn reset(&mut self, set_id: bool) {
        let id = if set_id {
            self.vcpu_id << 24
        } else {
            self.reg(reg::ID)
        };
        self.regs = [0; APIC_REG_SIZE / 4];
        self.set(reg::ID, id);
        self.set(reg::LVR, APIC_VERSION);
        for off in [
            reg::LVTT,
            reg::LVTTHMR,
            reg::LVTPC,
            reg::LVT0,
            reg::LVT1,
            reg::LVTERR,
        ] {
            self.set(off, LVT_MASKED);
        }
        // Linux's default KVM_X86_QUIRK_LINT0_REENABLED: the BSP's LINT0 takes PIC (ExtINT)
        // interrupts after reset and INIT.
        if self.base & BASE_BSP != 0 {
            self.set(reg::LVT0, u32::from(dm::EXTINT) << 8);
        }
        self.set(reg::DFR, 0xffff_ffff);
        self.set(reg::SPIV, 0xff);
        self.timer.deadline = 0;
        self.timer.period = 0;
        self.timer.tick_ns = 2 * BUS_CYCLE_NS;
    }

    /// Global (hardware) enable from `IA32_APIC_BASE`.
    pub fn hw_enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0
    }

    /// Software enable (SVR bit 8).
    pub fn sw_enabled(&self) -> bool {
        self.reg(reg::SPIV) & SPIV_ENABLED != 0
    }

    /// Physical base of the MMIO window when it decodes accesses (enabled, xAPIC mode).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.hw_enabled() && self.base & BASE_X2APIC == 0)
            .then_some(self.base & 0x000f_ffff_ffff_f000)
    }

    /// Takes a new `IA32_APIC_BASE` value (Linux `kvm_lapic_set_base`): enabling the APIC
    /// again resets the xAPIC ID to the vCPU id.
    pub fn set_base(&mut self, base: u64) {
        let old = self.base;
        self.base = base;
        let was_x2 = old & (BASE_ENABLE | BASE_X2APIC) == BASE_ENABLE | BASE_X2APIC;
        if self.x2apic() && !was_x2 {
            // Entering x2APIC mode: the ID is the vCPU id, the LDR follows from it.
            let id = self.vcpu_id;
            self.set(reg::ID, id);
            self.set(reg::LDR, ((id >> 4) << 16) | (1 << (id & 0xf)));
        } else if (old ^ base) & BASE_ENABLE != 0 && base & BASE_ENABLE != 0 {
            self.set(reg::ID, self.vcpu_id << 24);
        }
    }

    /// x2APIC mode (enabled, EXTD set).
    pub fn x2apic(&self) -> bool {
        self.base & (BASE_ENABLE | BASE_X2APIC) == BASE_ENABLE | BASE_X2APIC
    }

    /// The APIC ID: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub fn id(&self) -> u32 {
        if self.x2apic() {
            self.reg(reg::ID)
        } else {
            self.reg(reg::ID) >> 24
        }
    }

    /// TPR >> 4, as CR8 reads it.
    pub fn cr8(&self) -> u64 {
        u64::from((self.reg(reg::TASKPRI) >> 4) & 0xf)
    }

    /// The guest changed CR8 (MOV to CR8): the TPR follows (low bits kept if the class is the same).
    pub fn sync_cr8(&mut self, cr8: u64) {
        if self.cr8() != cr8 & 0xf {
            self.set(reg::TASKPRI, ((cr8 & 0xf) as u32) << 4);
            self.update_ppr();
        }
    }

    fn update_ppr(&mut self) {
        let tpr = self.reg(reg::TASKPRI) & 0xff;
        let isrv = self.highest(reg::ISR).map_or(0, u32::from);
        let ppr = if (tpr & 0xf0) >= (isrv & 0xf0) {
            tpr
        } else {
            isrv & 0xf0
        };
        self.set(reg::PROCPRI, ppr);
    }

    /// Processor priority.
    pub fn ppr(&self) -> u32 {
        self.reg(reg::PROCPRI)
    }

    /// Accepts a fixed interrupt (IRR, TMR per trigger mode). Dropped while software-disabled
    /// (Linux `__apic_accept_irq`); returns whether it was accepted.
    pub fn accept_fixed(&mut self, vector: u8, trig_level: bool) -> bool {
        if !self.sw_enabled() || !self.hw_enabled() {
            return false;
        }
        self.set_bit(reg::TMR, vector, trig_level);
        self.set_bit(reg::IRR, vector, true);
        true
    }

    /// Highest requested vector whose class is above PPR (deliverable now), if enabled.
    pub fn pending(&self) -> Option<u8> {
        if !self.hw_enabled() || !self.sw_enabled() {
            return None;
        }
        let v = self.highest(reg::IRR)?;
        (u32::from(v & 0xf0) > self.ppr()).then_some(v)
    }

    /// Interrupt acknowledge of `vector`: IRR → ISR, PPR raised.
    pub fn ack(&mut self, vector: u8) {
        self.set_bit(reg::IRR, vector, false);
        self.set_bit(reg::ISR, vector, true);
        self.update_ppr();
    }

    /// Whether `vector` is in service (tests).
    pub fn in_service(&self, vector: u8) -> bool {
        self.bit(reg::ISR, vector)
    }

    /// Whether `vector` is requested (tests).
    pub fn requested(&self, vector: u8) -> bool {
        self.bit(reg::IRR, vector)
    }

    /// Whether `vector` was accepted level-triggered.
    pub fn level_triggered(&self, vector: u8) -> bool {
        self.bit(reg::TMR, vector)
    }

    /// Whether PIC (ExtINT) interrupts reach the CPU (Linux `kvm_apic_accept_pic_intr`):
    /// APIC globally disabled, or LINT0 unmasked in ExtINT mode.
    pub fn accept_pic_intr(&self) -> bool {
        let lvt0 = self.reg(reg::LVT0);
        !self.hw_enabled() || (lvt0 & LVT_MASKED == 0 && (lvt0 >> 8) & 7 == u32::from(dm::EXTINT))
    }

    /// The pending ExtINT vector from `KVM_INTERRUPT`.
    pub fn extint(&self) -> Option<u8> {
        (self.extint & 0x100 != 0).then_some(self.extint as u8)
    }

    /// Divide configuration → ns per count.
    fn update_divide(&mut self) {
        let t = self.reg(reg::TDCR) & 0xf;
        let shift = (((t & 3) | ((t & 8) >> 1)) + 1) & 7;
        self.timer.tick_ns = BUS_CYCLE_NS << shift;
    }

    /// A running count-down timer keeps its remaining count when the divider changes (Linux
    /// `update_target_expiration`): the remaining time and the period scale with it.
    fn rescale_timer(&mut self, old_tick: u64, now: u64) {
        let new_tick = self.timer.tick_ns;
        if old_tick == new_tick || old_tick == 0 || self.timer.deadline == 0 {
            return;
        }
        if self.tsc_deadline_mode() {
            return;
        }
        let left = self.timer.deadline.saturating_sub(now) / old_tick;
        self.timer.deadline = now.saturating_add(left.saturating_mul(new_tick)).max(1);
        if self.timer.period != 0 {
            self.timer.period = (self.timer.period / old_tick)
                .saturating_mul(new_tick)
                .max(MIN_PERIOD_NS);
        }
    }

    /// Starts the timer from `count` counts at `now` (0 stops it).
    fn start_timer(&mut self, count: u32, now: u64) {
        self.timer.deadline = 0;
        self.timer.period = 0;
        if count == 0 {
            return;
        }
        let mut len = u64::from(count).saturating_mul(self.timer.tick_ns);
        if self.reg(reg::LVTT) & LVTT_PERIODIC != 0 {
            len = len.max(MIN_PERIOD_NS);
            self.timer.period = len;
        }
        self.timer.deadline = now.saturating_add(len).max(1);
    }

    /// LVTT selects the TSC-deadline mode.
    pub fn tsc_deadline_mode(&self) -> bool {
        self.reg(reg::LVTT) & (LVTT_PERIODIC | LVTT_TSCDEADLINE) == LVTT_TSCDEADLINE
    }

    /// `WRMSR IA32_TSC_DEADLINE` (Linux `kvm_set_lapic_tscdeadline_msr`): ignored outside
    /// TSC-deadline mode; 0 disarms; a deadline at or before `guest_tsc` fires at once. The
    /// guest TSC runs at `tsc_khz` (0 = unknown: fire at once rather than never).
    pub fn set_tsc_deadline(&mut self, data: u64, guest_tsc: u64, tsc_khz: u64, now: u64) {
        if !self.hw_enabled() || !self.tsc_deadline_mode() {
            return;
        }
        self.tscdl = data;
        self.timer.period = 0;
        if data == 0 {
            self.timer.deadline = 0;
            return;
        }
        let ticks = data.saturating_sub(guest_tsc);
        let ns = match tsc_khz {
            0 => 0,
            k => (ticks / k)
                .saturating_mul(1_000_000)
                .saturating_add((ticks % k) * 1_000_000 / k),
        };
        self.timer.deadline = now.saturating_add(ns).max(1);
    }

    /// `RDMSR IA32_TSC_DEADLINE`: the armed deadline in TSC-deadline mode, else 0 (Linux).
    pub fn tsc_deadline(&self) -> u64 {
        if self.hw_enabled() && self.tsc_deadline_mode() {
            self.tscdl
        } else {
            0
        }
    }

    /// Current count (Linux `apic_get_tmcct`).
    fn tmcct(&self, now: u64) -> u32 {
        if self.timer.deadline == 0 || self.timer.tick_ns == 0 || self.tsc_deadline_mode() {
            return 0;
        }
        let left = self.timer.deadline.saturating_sub(now);
        let left = if self.timer.period != 0 {
            left % self.timer.period
        } else {
            left
        };
        (left / self.timer.tick_ns).min(u64::from(self.reg(reg::TMICT))) as u32
    }

    /// Expires the timer if its deadline passed: raises the LVTT vector unless masked, re-arms
    /// a periodic timer. Returns whether it expired.
    pub fn timer_poll(&mut self, now: u64) -> bool {
        let d = self.timer.deadline;
        if d == 0 || now < d {
            return false;
        }
        let lvtt = self.reg(reg::LVTT);
        if lvtt & LVT_MASKED == 0 {
            self.accept_fixed(lvtt as u8, false);
        }
        if self.timer.period != 0 {
            let next = d.saturating_add(self.timer.period);
            self.timer.deadline = if next <= now {
                now.saturating_add(self.timer.period)
            } else {
                next
            };
        } else {
            self.timer.deadline = 0;
            self.tscdl = 0;
        }
        true
    }

    /// Reads a register (Linux `kvm_lapic_reg_read`: `None` for an offset that is no register).
    pub fn read_reg(&self, off: u32, now: u64) -> Option<u32> {
        let valid = matches!(
            off,
            reg::ID | reg::LVR | reg::TASKPRI | reg::PROCPRI | reg::LDR | reg::SPIV | reg::ESR
                | reg::ICR | reg::LVTT | reg::LVTTHMR | reg::LVTPC | reg::LVT0 | reg::LVT1
                | reg::LVTERR | reg::TMICT | reg::TMCCT | reg::TDCR
        ) || (reg::ISR..reg::ESR).contains(&off) && off & 0xf == 0
            // ARBPRI, DFR and ICR2 do not exist in x2APIC mode.
            || !self.x2apic() && matches!(off, reg::ARBPRI | reg::DFR | reg::ICR2);
        if !valid {
            return None;
        }
        Some(match off {
            reg::TMCCT => self.tmcct(now),
            reg::ARBPRI => 0,
            _ => self.reg(off),
        })
    }

    /// An MMIO read of `len` bytes at page offset `off` (misaligned or invalid: zeros).
    pub fn mmio_read(&self, off: u32, len: u32, now: u64) -> u32 {
        let align = off & 0xf;
        if align + len > 4 {
            return 0;
        }
        let v = self.read_reg(off & !0xf, now).unwrap_or(0) >> (align * 8);
        match len {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// An MMIO write: only aligned 32-bit writes take effect (Linux `apic_mmio_write`).
    pub fn mmio_write(&mut self, off: u32, len: u32, val: u32, now: u64) -> Effect {
        if len != 4 || off & 0xf != 0 {
            return Effect::None;
        }
        self.write_reg(off, val, now)
    }

    /// Writes a register (Linux `kvm_lapic_reg_write`, xAPIC mode).
    pub fn write_reg(&mut self, off: u32, val: u32, now: u64) -> Effect {
        let lvt_common = 0x0001_10ff; // masked, delivery status, vector
        match off {
            reg::ID => self.set(reg::ID, val & 0xff00_0000),
            reg::TASKPRI => {
                self.set(reg::TASKPRI, val & 0xff);
                self.update_ppr();
                return Effect::Tpr;
            }
            reg::EOI => {
                if let Some(v) = self.highest(reg::ISR) {
                    self.set_bit(reg::ISR, v, false);
                    self.update_ppr();
                    return Effect::Eoi(v);
                }
            }
            reg::LDR => self.set(reg::LDR, val & 0xff00_0000),
            reg::DFR => self.set(reg::DFR, val | 0x0fff_ffff),
            reg::SPIV => {
                self.set(reg::SPIV, val & 0x3ff);
                if val & SPIV_ENABLED == 0 {
                    for o in [
                        reg::LVTT,
                        reg::LVTTHMR,
                        reg::LVTPC,
                        reg::LVT0,
                        reg::LVT1,
                        reg::LVTERR,
                    ] {
                        let r = self.reg(o);
                        self.set(o, r | LVT_MASKED);
                    }
                }
            }
            reg::ICR => {
                let icr = val & !(1 << 12);
                self.set(reg::ICR, icr);
                return Effect::Ipi(Irq {
                    vector: icr as u8,
                    mode: ((icr >> 8) & 7) as u8,
                    logical: icr & (1 << 11) != 0,
                    level: icr & (1 << 14) != 0,
                    trig_level: icr & (1 << 15) != 0,
                    shorthand: ((icr >> 18) & 3) as u8,
                    dest: if self.x2apic() {
                        self.reg(reg::ICR2)
                    } else {
                        self.reg(reg::ICR2) >> 24
                    },
                });
            }
            reg::ICR2 => self.set(reg::ICR2, val & 0xff00_0000),
            reg::LVT0 | reg::LVT1 => self.write_lvt(off, val & (lvt_common | 0xa700)),
            reg::LVTTHMR | reg::LVTPC => self.write_lvt(off, val & (lvt_common | 0x700)),
            reg::LVTERR => self.write_lvt(off, val & lvt_common),
            reg::LVTT => {
                // TSC-deadline mode (bit 18) only with the CPUID bit (Linux); entering or
                // leaving it stops the timer. One-shot <-> periodic keeps it running.
                let modes = if self.tscdl_ok & 1 != 0 {
                    LVTT_PERIODIC | LVTT_TSCDEADLINE
                } else {
                    LVTT_PERIODIC
                };
                let v = val & (lvt_common | modes);
                let was_dl = self.tsc_deadline_mode();
                self.write_lvt(off, v);
                if was_dl != self.tsc_deadline_mode() {
                    self.set(reg::TMICT, 0);
                    self.timer.deadline = 0;
                    self.timer.period = 0;
                    self.tscdl = 0;
                } else if self.timer.deadline != 0 && !was_dl {
                    self.timer.period = if v & LVTT_PERIODIC != 0 {
                        u64::from(self.reg(reg::TMICT))
                            .saturating_mul(self.timer.tick_ns)
                            .max(MIN_PERIOD_NS)
                    } else {
                        0
                    };
                }
            }
            // TMICT is ignored in TSC-deadline mode.
            reg::TMICT if !self.tsc_deadline_mode() => {
                self.set(reg::TMICT, val);
                self.start_timer(val, now);
            }
            reg::TDCR => {
                let old = self.timer.tick_ns;
                self.set(reg::TDCR, val & 0xb);
                self.update_divide();
                self.rescale_timer(old, now);
            }
            // ESR writes re-arm error latching; no errors are ever recorded (as in Linux).
            reg::ESR => {}
            // Read-only or reserved registers: ignored.
            _ => {}
        }
        Effect::None
    }

    /// `RDMSR` of x2APIC MSR `msr` (Linux `kvm_x2apic_msr_read`): `None` → #GP (not in x2APIC
    /// mode, or no readable register there).
    pub fn x2apic_read(&self, msr: u32, now: u64) -> Option<u64> {
        if !self.x2apic() {
            return None;
        }
        let off = msr.checked_sub(X2APIC_MSR_BASE)? << 4;
        if off == reg::ICR {
            return Some(u64::from(self.reg(reg::ICR2)) << 32 | u64::from(self.reg(reg::ICR)));
        }
        self.read_reg(off, now).map(u64::from)
    }

    /// `WRMSR` of x2APIC MSR `msr` (Linux `kvm_x2apic_msr_write`): `None` → #GP (not in x2APIC
    /// mode, reserved upper bits, read-only or absent register).
    pub fn x2apic_write(&mut self, msr: u32, data: u64, now: u64) -> Option<Effect> {
        if !self.x2apic() {
            return None;
        }
        let off = msr.checked_sub(X2APIC_MSR_BASE)? << 4;
        if off == reg::ICR {
            self.set(reg::ICR2, (data >> 32) as u32);
            return Some(self.write_reg(reg::ICR, data as u32, now));
        }
        if data >> 32 != 0 {
            return None;
        }
        let val = data as u32;
        match off {
            reg::SELF_IPI => {
                if val & !0xff != 0 {
                    return None;
                }
                Some(Effect::Ipi(Irq {
                    vector: val as u8,
                    mode: dm::FIXED,
                    logical: false,
                    level: true,
                    trig_level: false,
                    shorthand: sh::SELF,
                    dest: 0,
                }))
            }
            reg::ESR if val != 0 => None,
            reg::TASKPRI
            | reg::EOI
            | reg::SPIV
            | reg::ESR
            | reg::LVTT
            | reg::LVTTHMR
            | reg::LVTPC
            | reg::LVT0
            | reg::LVT1
            | reg::LVTERR
            | reg::TMICT
            | reg::TDCR => Some(self.write_reg(off, val, now)),
            _ => None,
        }
    }

    fn write_lvt(&mut self, off: u32, mut v: u32) {
        v &= !(1 << 12);
        if !self.sw_enabled() {
            v |= LVT_MASKED;
        }
        self.set(off, v);
    }

    /// The `KVM_GET_LAPIC` page (TMCCT computed at `now`).
    pub fn get_state(&self, now: u64, out: &mut [u8; APIC_REG_SIZE]) {
        out.copy_from_slice(self.regs.as_bytes());
        let mut put = |off: u32, v: u32| {
            if let Some(d) = out.get_mut(off as usize..off as usize + 4) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        };
        put(reg::TMCCT, self.tmcct(now));
        if self.x2apic() {
            // Without KVM_CAP_X2APIC_API userspace sees the x2APIC ID in xAPIC format.
            put(reg::ID, self.reg(reg::ID) << 24);
        }
    }

    /// `KVM_SET_LAPIC` (Linux `kvm_apic_set_state`): takes the page, keeps KVM's version
    /// register, recomputes PPR and the divider, and restarts the timer from the page's TMCCT.
    pub fn set_state(&mut self, page: &[u8; APIC_REG_SIZE], now: u64) {
        for (i, r) in self.regs.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            if let Some(s) = page.get(i * 4..i * 4 + 4) {
                b.copy_from_slice(s);
            }
            *r = u32::from_le_bytes(b);
        }
        self.set(reg::LVR, APIC_VERSION);
        if self.x2apic() {
            // The x2APIC ID is read-only (the page's is ignored), the LDR follows from it.
            let id = self.vcpu_id;
            self.set(reg::ID, id);
            self.set(reg::LDR, ((id >> 4) << 16) | (1 << (id & 0xf)));
        }
        self.update_ppr();
        self.update_divide();
        let count = self.reg(reg::TMCCT);
        self.set(reg::TMCCT, 0);
        self.tscdl = 0;
        if self.tsc_deadline_mode() {
            // The deadline itself is an MSR (IA32_TSC_DEADLINE), not part of the page.
            self.timer.deadline = 0;
            self.timer.period = 0;
            return;
        }
        self.start_timer(count, now);
        if self.timer.period != 0 {
            // A periodic timer reloads from TMICT after the first expiry.
            self.timer.period = u64::from(self.reg(reg::TMICT))
                .saturating_mul(self.timer.tick_ns)
                .max(MIN_PERIOD_NS);
        }
    }

    /// Snapshot of what other vCPUs need for destination matching: bits 0-31 the APIC ID
    /// (8 or 32 bits), 32-39 the xAPIC logical ID (LDR[31:24]), 40-43 the DFR model, 44
    /// present (hardware-enabled), 45 x2APIC mode; in x2APIC mode bits 32-63 are instead the
    /// 32-bit LDR and bits 44/45 are implied (an x2APIC LDR never reaches bit 44 for ids < 256,
    /// see `MIRROR_X2APIC`).
    pub fn mirror(&self) -> u64 {
        if self.x2apic() {
            return u64::from(self.id()) | (u64::from(self.reg(reg::LDR)) << 32) | MIRROR_X2APIC;
        }
        u64::from(self.id())
            | (u64::from(self.reg(reg::LDR) >> 24) << 32)
            | (u64::from(self.reg(reg::DFR) >> 28) << 40)
            | (u64::from(self.hw_enabled()) << 44)
    }
}

/// Mirror flag of an x2APIC-mode APIC (always present). Bit 63: x2APIC LDRs of vCPU ids below
/// 256 use at most bits 0-19 (cluster 0-15 in bits 16-19, member bit 0-15), so mirror bits
/// 61-63 are free in both formats (62: software-enabled, 61: takes PIC interrupts, added by the
/// owner vCPU).
pub const MIRROR_X2APIC: u64 = 1 << 63;

/// Whether an APIC with mirror `m` (see [`Lapic::mirror`]) is a target of `irq` sent by
/// `is_source`; `ipi` for an IPI (vs. an MSI or IOAPIC message). Linux
/// `kvm_apic_match_dest`, with its quirk that a non-IPI message to 0xff is a broadcast for
/// x2APIC targets too.
pub fn match_dest(m: u64, irq: &Irq, is_source: bool, ipi: bool) -> bool {
    let x2 = m & MIRROR_X2APIC != 0;
    if !x2 && m & (1 << 44) == 0 {
        return false;
    }
    match irq.shorthand {
        sh::SELF => return is_source,
        sh::ALL => return true,
        sh::OTHERS => return !is_source,
        _ => {}
    }
    let id = m as u32;
    if x2 {
        let mda = if !ipi && irq.dest == 0xff {
            u32::MAX
        } else {
            irq.dest
        };
        if mda == u32::MAX {
            return true;
        }
        if !irq.logical {
            return mda == id;
        }
        // Mirror bits 61-63 are flags (see `MIRROR_X2APIC`), not LDR bits.
        let ldr = ((m >> 32) as u32) & 0x1fff_ffff;
        return ldr >> 16 == mda >> 16 && ldr & mda & 0xffff != 0;
    }
    let dest = irq.dest;
    if dest == 0xff {
        return true;
    }
    if !irq.logical {
        return dest == id;
    }
    let lid = ((m >> 32) & 0xff) as u32;
    match (m >> 40) & 0xf {
        // Flat model.
        0xf => lid & dest != 0,
        // Cluster model: cluster in the high nibble, members in the low one.
        0x0 => (lid >> 4) == (dest >> 4) && (lid & dest & 0xf) != 0,
        _ => false,
    }
}

/// Decodes an MSI (Intel SDM 11.11; Linux `kvm_set_msi_irq` without x2APIC format): address
/// bits 19:12 destination, bit 2 logical; data bits 7:0 vector, 10:8 delivery mode, 15 level
/// trigger. MSIs always assert.
pub fn decode_msi(address_lo: u32, data: u32) -> Irq {
    Irq {
        vector: data as u8,
        mode: ((data >> 8) & 7) as u8,
        logical: address_lo & (1 << 2) != 0,
        level: true,
        trig_level: data & (1 << 15) != 0,
        shorthand: sh::NONE,
        dest: (address_lo >> 12) & 0xff,
    }
}

#[cfg(test)]
impl Lapic {
    /// A zeroed model on the heap (call [`Lapic::new_state`] next).
    pub fn boxed() -> Box<Self> {
        // SAFETY: Lapic is FromZeros: all-zero bytes are a valid value.
        unsafe { Box::<Self>::new_zeroed().assume_init() }
    }
}
