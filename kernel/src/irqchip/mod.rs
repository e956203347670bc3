//! The in-kernel irqchip, in Linux's two modes (`arch/x86/kvm/lapic.c`, `irq_comm.c`, `x86.c`):
//! - split (`KVM_CAP_SPLIT_IRQCHIP`, QEMU `kernel-irqchip=split`): local APICs in the kernel,
//!   IOAPIC/PIC/PIT in userspace;
//! - full (`KVM_CREATE_IRQCHIP`, QEMU's default `kernel-irqchip=on`): the same local APICs plus
//!   the 8259 pair ([`pic`]) and the IOAPIC ([`ioapic`]) in the kernel (`full.rs`).
//!
//! - [`lapic`]: the register model of one local APIC (pure, owned by its vCPU).
//! - [`ApicShared`]: the part other threads touch: posted interrupt requests (a 256-bit
//!   bitmap plus the level-trigger bits), NMI/INIT/SIPI/timer events, a destination-matching
//!   snapshot, the wait lock a halted vCPU sleeps on, and the host timer.
//! - [`IrqChip`]: per-VM mode and the GSI routing table (MSI routes; in split mode the first
//!   `args[0]` GSIs of `KVM_ENABLE_CAP` are the userspace IOAPIC's pins, whose level-triggered
//!   routes make a guest EOI exit with `KVM_EXIT_IOAPIC_EOI`; in full mode IRQCHIP routes to
//!   PIC and IOAPIC pins). [`set_gsi`] is the one place where a GSI changes level.
//! - [`ack`]: ack notifiers (the guest acknowledged a GSI's interrupt at the PIC or IOAPIC)
//!   and the mask notifier (the guest masked or unmasked a GSI's pin).
//! - [`pit`], [`pitdev`]: the in-kernel 8254 PIT (full mode), driving GSI 0 as irq source
//!   [`source::PIT`] and listening to GSI 0's acknowledgements and mask changes.
//! - `run.rs` (this directory): the vCPU side: the run-loop hook, MMIO/MSR/HLT handling, the
//!   vCPU ioctls.
//!
//! Delivery never takes another vCPU's lock: a sender sets bits in the target's
//! [`ApicShared`], takes and drops the target's wait lock (so a sleeper cannot miss the
//! wakeup), wakes it and kicks its CPU; the target merges the bits into its IRR before the
//! next entry. The host timer callback runs in soft-interrupt context and only sets a bit,
//! wakes and kicks (no lock); a halted vCPU also sleeps no longer than its timer's deadline.

pub mod ack;
mod full;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod pitdev;
mod run;

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kvm_abi::{kvm_enable_cap, kvm_irq_level, kvm_irq_routing, kvm_irq_routing_entry, kvm_msi};

use crate::backend::Backend;
use crate::errno::{KResult, EEXIST, EFAULT, EINVAL, ENXIO, EPERM};
use crate::hmem::{HBox, HSlice};
use crate::host::{Host, RawTimer};
use crate::sync::HMutex;
use crate::user;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

use lapic::{decode_msi, dm, match_dest, Irq};

pub use full::{ioapic_mmio, pio};
pub use run::ApicEntry;

/// Linux `KVM_MAX_IRQ_ROUTES`: GSIs are below this; also the most IOAPIC pins of split mode.
pub const MAX_IRQ_ROUTES: u32 = kvm_abi::KVM_MAX_IRQ_ROUTES;

const EV_NMI: u32 = 1;
const EV_INIT: u32 = 2;
const EV_SIPI: u32 = 4;
const EV_TIMER: u32 = 8;
/// The in-kernel PIC's output rose (full irqchip): look at ExtINT before the next entry.
const EV_EXTINT: u32 = 16;
/// The in-kernel PIT's host timer fired (BSP only; see `pitdev.rs`).
const EV_PIT: u32 = 32;
/// Mirror bit: software-enabled (SVR) — fixed interrupts are accepted.
const MIRROR_SW_ENABLED: u64 = 1 << 62;
/// Mirror bit: the APIC takes PIC interrupts (Linux `kvm_apic_accept_pic_intr`).
const MIRROR_PIC: u64 = 1 << 61;

/// Irq source ids of [`set_gsi_from`] (Linux `KVM_USERSPACE_IRQ_SOURCE_ID` = 0,
/// `KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID` = 1; further ids for in-kernel devices): a pin's line is
/// the OR of the levels its sources drive.
pub mod source {
    /// `KVM_IRQ_LINE` and plain irqfds.
    pub const USERSPACE: u32 = 0;
    /// Resampling irqfds.
    pub const IRQFD_RESAMPLE: u32 = 1;
    /// The in-kernel PIT.
    pub const PIT: u32 = 2;
}

/// The cross-thread part of one vCPU's local APIC.
pub struct ApicShared<H: Host> {
    host: &'static H,
    /// [a] Posted fixed interrupt requests.
    pir: [AtomicU64; 4],
    /// [a] Posted requests that are level-triggered (TMR).
    pir_level: [AtomicU64; 4],
    /// [a] `EV_*`.
    events: AtomicU32,
    /// [a] Vector of the last start-up IPI.
    sipi: AtomicU32,
    /// [a] [`lapic::Lapic::mirror`] plus `MIRROR_SW_ENABLED`.
    mirror: AtomicU64,
    /// Leaf lock a halted vCPU sleeps on; senders take and drop it before the wakeup.
    wait: HMutex<(), H>,
    /// [I after creation] The host timer driving the APIC timer.
    timer: Option<RawTimer>,
}

impl<H: Host> ApicShared<H> {
    fn new(host: &'static H) -> KResult<Self> {
        Ok(Self {
            host,
            pir: Default::default(),
            pir_level: Default::default(),
            events: AtomicU32::new(0),
            sipi: AtomicU32::new(0),
            mirror: AtomicU64::new(0),
            wait: HMutex::new(host, ())?,
            timer: None,
        })
    }

    fn chan(&self) -> *const c_void {
        (self as *const Self).cast()
    }

    fn has_posted(&self) -> bool {
        self.events.load(Ordering::SeqCst) != 0
            || self.pir.iter().any(|p| p.load(Ordering::SeqCst) != 0)
    }

    /// Posts `irq` (already matched to this APIC); returns whether it was accepted.
    fn post(&self, irq: &Irq) -> bool {
        match irq.mode {
            dm::FIXED | dm::LOWEST => {
                if (irq.trig_level && !irq.level)
                    || self.mirror.load(Ordering::SeqCst) & MIRROR_SW_ENABLED == 0
                {
                    return false;
                }
                let (w, bit) = (usize::from(irq.vector >> 6), 1u64 << (irq.vector & 63));
                if let (Some(p), Some(l)) = (self.pir.get(w), self.pir_level.get(w)) {
                    if irq.trig_level {
                        l.fetch_or(bit, Ordering::SeqCst);
                    } else {
                        l.fetch_and(!bit, Ordering::SeqCst);
                    }
                    p.fetch_or(bit, Ordering::SeqCst);
                }
                true
            }
            dm::NMI => {
                self.events.fetch_or(EV_NMI, Ordering::SeqCst);
                true
            }
            // INIT level de-assert is ignored (Linux).
            dm::INIT if !irq.trig_level || irq.level => {
                self.events.fetch_or(EV_INIT, Ordering::SeqCst);
                true
            }
            dm::SIPI => {
                self.sipi.store(u32::from(irq.vector), Ordering::SeqCst);
                self.events.fetch_or(EV_SIPI, Ordering::SeqCst);
                true
            }
            // SMI (no SMM), ExtINT through an IPI/MSI (Linux drops it too), reserved modes.
            _ => false,
        }
    }
}

impl<H: Host> Drop for ApicShared<H> {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            self.host.timer_cancel(t);
            // SAFETY: cancelled (and any running callback finished); not used again.
            unsafe { self.host.timer_free(t) };
        }
    }
}

/// One GSI's routes: an MSI (`valid`), or up to one pin of each in-kernel irqchip (full mode;
/// `chip[id]` = pin + 1 for `KVM_IRQCHIP_PIC_MASTER/SLAVE/IOAPIC`, 0 = none).
#[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
struct Route {
    valid: u32,
    address_lo: u32,
    data: u32,
    chip: [u8; 3],
}

/// The per-VM irqchip state.
pub struct IrqChip<H: Host> {
    /// [m] written before any vCPU exists, [a] read: split irqchip enabled.
    split: AtomicBool,
    /// [m]/[a] Number of GSIs that are the userspace IOAPIC's pins.
    ioapic_pins: AtomicU32,
    /// [a] Vectors of level-triggered IOAPIC-pin routes (a quick filter for EOI exits).
    level_vectors: [AtomicU64; 4],
    /// The routing table, indexed by GSI.
    routes: HMutex<Option<HSlice<Route, H>>, H>,
    /// [m] written before any vCPU exists (after the devices), [a] read: full irqchip.
    full: AtomicBool,
    /// The in-kernel PICs (full mode).
    pic: HMutex<Option<HBox<pic::Pic, H>>, H>,
    /// The in-kernel IOAPIC (full mode).
    ioapic: HMutex<Option<HBox<ioapic::Ioapic, H>>, H>,
    /// [a] The PIC's INTR output (full mode), published under the PIC lock.
    pic_output: AtomicBool,
    /// [a] The IOAPIC's MMIO base (full mode; `u64::MAX` = none), published under the IOAPIC
    /// lock: MMIO exits elsewhere skip that lock.
    ioapic_base: AtomicU64,
    /// [a] The vectors of the IOAPIC's pins, published under the IOAPIC lock (a filter for
    /// edge-triggered EOIs, which matter only to ack notifiers).
    ioapic_vectors: [AtomicU64; 4],
    /// Ack notifiers (full mode; allocated by `KVM_CREATE_IRQCHIP`).
    acks: HMutex<Option<HSlice<ack::AckEntry, H>>, H>,
    /// [a] Number of registered ack notifiers.
    nr_acks: AtomicU32,
}

impl<H: Host> IrqChip<H> {
    /// A VM without an in-kernel irqchip.
    pub fn new(host: &'static H) -> KResult<Self> {
        Ok(Self {
            split: AtomicBool::new(false),
            ioapic_pins: AtomicU32::new(0),
            level_vectors: Default::default(),
            routes: HMutex::new(host, None)?,
            full: AtomicBool::new(false),
            pic: HMutex::new(host, None)?,
            ioapic: HMutex::new(host, None)?,
            pic_output: AtomicBool::new(false),
            ioapic_base: AtomicU64::new(u64::MAX),
            ioapic_vectors: Default::default(),
            acks: HMutex::new(host, None)?,
            nr_acks: AtomicU32::new(0),
        })
    }

    /// Whether the split irqchip is enabled (local APICs in the kernel, the rest in userspace).
    pub fn split(&self) -> bool {
        self.split.load(Ordering::Acquire)
    }

    /// Whether the full irqchip exists (`KVM_CREATE_IRQCHIP`: PIC and IOAPIC in the kernel).
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Whether the local APICs are in the kernel (split or full mode; Linux
    /// `irqchip_in_kernel`).
    pub fn lapic_in_kernel(&self) -> bool {
        self.split() || self.full()
    }

    /// Whether the in-kernel PIC requests an interrupt (always false outside full mode).
    pub fn pic_output(&self) -> bool {
        self.pic_output.load(Ordering::SeqCst)
    }

    /// Whether some IOAPIC pin uses `vector`.
    fn ioapic_vector(&self, vector: u8) -> bool {
        self.ioapic_vectors
            .get(usize::from(vector >> 6))
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (vector & 63)) != 0)
    }

    fn publish_ioapic(&self, io: &ioapic::Ioapic) {
        self.ioapic_base.store(io.base_address, Ordering::SeqCst);
        for (a, v) in self.ioapic_vectors.iter().zip(io.vectors()) {
            a.store(v, Ordering::SeqCst);
        }
    }

    /// Whether a guest EOI of `vector` on an APIC with mirror `m` must exit to the userspace
    /// IOAPIC (Linux `kvm_scan_ioapic_routes` + `kvm_ioapic_send_eoi` in split mode).
    fn eoi_exit(&self, m: u64, vector: u8) -> bool {
        let w = self
            .level_vectors
            .get(usize::from(vector >> 6))
            .map_or(0, |a| a.load(Ordering::Acquire));
        if w & (1 << (vector & 63)) == 0 {
            return false;
        }
        let pins = self.ioapic_pins.load(Ordering::Acquire) as usize;
        let routes = self.routes.lock();
        let Some(t) = routes.as_ref() else {
            return false;
        };
        t.iter().take(pins).any(|r| {
            let irq = decode_msi(r.address_lo, r.data);
            r.valid != 0
                && irq.trig_level
                && irq.vector == vector
                && match_dest(m, &irq, false, false)
        })
    }
}

/// `KVM_ENABLE_CAP` on the VM (Linux `kvm_vm_ioctl_enable_cap`): only `KVM_CAP_SPLIT_IRQCHIP`,
/// before any vCPU exists, at most once, with at most `KVM_MAX_IRQ_ROUTES` IOAPIC pins.
pub fn enable_cap<H: Host, B: Backend>(vm: &Vm<H, B>, c: &kvm_enable_cap) -> KResult<i64> {
    if c.flags != 0 || c.cap != kvm_abi::KVM_CAP_SPLIT_IRQCHIP {
        return Err(EINVAL);
    }
    if c.args[0] > u64::from(MAX_IRQ_ROUTES) {
        return Err(EINVAL);
    }
    let st = vm.st.lock();
    if vm.irq.lapic_in_kernel() || st.created_vcpus != 0 {
        return Err(EEXIST);
    }
    vm.irq
        .ioapic_pins
        .store(c.args[0] as u32, Ordering::Release);
    vm.irq.split.store(true, Ordering::Release);
    Ok(0)
}

/// The irqchip VM ioctls; `None` for other commands.
pub fn vm_ioctl<H: Host, B: Backend>(vm: &Vm<H, B>, cmd: u32, arg: u64) -> Option<KResult<i64>> {
    use kvm_abi::{
        KVM_CREATE_IRQCHIP, KVM_GET_IRQCHIP, KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS,
        KVM_SET_GSI_ROUTING, KVM_SET_IRQCHIP, KVM_SIGNAL_MSI,
    };
    Some(match cmd {
        KVM_SIGNAL_MSI => signal_msi(vm, arg),
        KVM_SET_GSI_ROUTING => set_gsi_routing(vm, arg),
        KVM_IRQ_LINE => irq_line(vm, arg, false),
        KVM_IRQ_LINE_STATUS => irq_line(vm, arg, true),
        KVM_CREATE_IRQCHIP => full::create(vm),
        KVM_GET_IRQCHIP => full::get_set(vm, arg, false),
        KVM_SET_IRQCHIP => full::get_set(vm, arg, true),
        _ => return None,
    })
}

/// `KVM_SIGNAL_MSI`: the number of APICs that accepted it, `EPERM` (Linux's -1) if none matched.
fn signal_msi<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64) -> KResult<i64> {
    let m: kvm_msi = user::read(vm.sys.host, arg)?;
    if !vm.irq.lapic_in_kernel() || m.flags & !kvm_abi::KVM_MSI_VALID_DEVID != 0 {
        return Err(EINVAL);
    }
    let r = deliver(vm, &decode_msi(m.address_lo, m.data), core::ptr::null());
    if r < 0 {
        Err(EPERM)
    } else {
        Ok(r)
    }
}

/// `KVM_IRQ_LINE` / `KVM_IRQ_LINE_STATUS` (Linux `kvm_vm_ioctl_irq_line`): GSI `irq` to
/// `level` from the userspace source. `ENXIO` without an in-kernel irqchip; the status
/// ([`set_gsi_from`]) is written back into `irq` only for `KVM_IRQ_LINE_STATUS`.
fn irq_line<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64, status: bool) -> KResult<i64> {
    let mut l: kvm_irq_level = user::read(vm.sys.host, arg)?;
    if !vm.irq.lapic_in_kernel() {
        return Err(ENXIO);
    }
    let r = set_gsi_from(vm, source::USERSPACE, l.irq, l.level != 0);
    if status {
        l.set_status(r as i32);
        user::write(vm.sys.host, arg, &l)?;
    }
    Ok(0)
}

/// Whether `KVM_IRQFD` may assign an irqfd (Linux x86 `kvm_arch_irqfd_allowed`): any
/// in-kernel irqchip. Linux also takes `resample` with the full irqchip; okvm's irqfds do not
/// implement resampling (no `KVM_CAP_IRQFD_RESAMPLE`), so it is refused in every mode.
pub fn irqfd_allowed<H: Host, B: Backend>(vm: &Vm<H, B>, resample: bool) -> bool {
    !resample && vm.irq.lapic_in_kernel()
}

/// GSI `gsi` changes to `level`, driven by the userspace source (`KVM_IRQ_LINE`, irqfd). See
/// [`set_gsi_from`].
pub fn set_gsi<H: Host, B: Backend>(vm: &Vm<H, B>, gsi: u32, level: bool) -> i64 {
    set_gsi_from(vm, source::USERSPACE, gsi, level)
}

/// GSI `gsi` driven to `level` by irq source `src` (Linux `kvm_set_irq`): every route of the
/// GSI gets it: an MSI fires on assertion (deassertion: -1), PIC and IOAPIC pins follow the
/// OR of their sources. Returns Linux's status: -1 if no route took it (no route, masked, no
/// destination), else the sum of the routes' non-negative results (0: coalesced).
pub fn set_gsi_from<H: Host, B: Backend>(vm: &Vm<H, B>, src: u32, gsi: u32, level: bool) -> i64 {
    let route = {
        let routes = vm.irq.routes.lock();
        routes.as_ref().and_then(|t| t.get(gsi as usize).copied())
    };
    let Some(r) = route else { return -1 };
    let mut ret = -1i64;
    let mut add = |x: i64| {
        if x >= 0 {
            ret = x + ret.max(0);
        }
    };
    if r.valid != 0 {
        add(if level {
            deliver(vm, &decode_msi(r.address_lo, r.data), core::ptr::null())
        } else {
            -1
        });
    }
    for (id, &p) in r.chip.iter().enumerate() {
        let Some(pin) = u32::from(p).checked_sub(1) else {
            continue;
        };
        add(match id as u32 {
            kvm_abi::KVM_IRQCHIP_PIC_MASTER => full::pic_set(vm, pin, src, level),
            kvm_abi::KVM_IRQCHIP_PIC_SLAVE => full::pic_set(vm, pin + 8, src, level),
            _ => full::ioapic_set(vm, pin, src, level),
        });
    }
    ret
}

/// `KVM_SET_GSI_ROUTING` (Linux `kvm_set_irq_routing` + x86 `kvm_set_routing_entry`): at most
/// `KVM_MAX_IRQ_ROUTES` entries, no flags; entries: GSI below the maximum, MSI routes, and in
/// full mode IRQCHIP routes (PIC pins 0-7, IOAPIC pins 0-23; refused in split mode); a GSI has
/// either one MSI route or at most one pin per irqchip; `KVM_MSI_VALID_DEVID` is the only entry
/// flag and only on MSI routes. Any error leaves the old table in place.
#[inline(never)]
fn set_gsi_routing<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64) -> KResult<i64> {
    use kvm_abi::{KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID};
    let host = vm.sys.host;
    if !vm.irq.lapic_in_kernel() {
        return Err(EINVAL);
    }
    let full = vm.irq.full();
    let hdr: kvm_irq_routing = user::read(host, arg)?;
    if hdr.nr > MAX_IRQ_ROUTES || hdr.flags != 0 {
        return Err(EINVAL);
    }
    let n = hdr.nr as usize;
    let mut table = None;
    let mut level: [u64; 4] = [0; 4];
    if n != 0 {
        let mut ents = HSlice::<kvm_irq_routing_entry, H>::new_zeroed(host, n)?;
        let at = arg
            .checked_add(core::mem::size_of::<kvm_irq_routing>() as u64)
            .ok_or(EFAULT)?;
        host.copyin(zerocopy::IntoBytes::as_mut_bytes(&mut *ents), at)?;
        let max = ents.iter().map(|e| e.gsi).max().unwrap_or(0);
        if max >= MAX_IRQ_ROUTES {
            return Err(EINVAL);
        }
        let mut t = HSlice::<Route, H>::new_zeroed(host, max as usize + 1)?;
        let pins = vm.irq.ioapic_pins.load(Ordering::Acquire);
        for e in ents.iter() {
            let slot = t.get_mut(e.gsi as usize).ok_or(EINVAL)?;
            if e.r#type == kvm_abi::KVM_IRQ_ROUTING_IRQCHIP && full && e.flags == 0 {
                let c = e.u.irqchip();
                let pins = if c.irqchip == kvm_abi::KVM_IRQCHIP_IOAPIC {
                    ioapic::NUM_PINS as u32
                } else {
                    8
                };
                let (Some(s), true) = (slot.chip.get_mut(c.irqchip as usize), c.pin < pins) else {
                    return Err(EINVAL);
                };
                if *s != 0 || slot.valid != 0 {
                    return Err(EINVAL);
                }
                *s = c.pin as u8 + 1;
                continue;
            }
            // Otherwise only MSI routes (IRQCHIP routes are EINVAL in split mode, as are
            // unknown types); KVM_MSI_VALID_DEVID is the only entry flag.
            if e.flags & !KVM_MSI_VALID_DEVID != 0 || e.r#type != KVM_IRQ_ROUTING_MSI {
                return Err(EINVAL);
            }
            let msi = e.u.msi();
            if slot.valid != 0 || slot.chip != [0; 3] {
                return Err(EINVAL);
            }
            *slot = Route {
                valid: 1,
                address_lo: msi.address_lo,
                data: msi.data,
                chip: [0; 3],
            };
            let irq = decode_msi(msi.address_lo, msi.data);
            if e.gsi < pins && irq.trig_level {
                if let Some(w) = level.get_mut(usize::from(irq.vector >> 6)) {
                    *w |= 1 << (irq.vector & 63);
                }
            }
        }
        table = Some(t);
    }
    let mut routes = vm.irq.routes.lock();
    for (a, v) in vm.irq.level_vectors.iter().zip(level) {
        a.store(v, Ordering::Release);
    }
    let old = core::mem::replace(&mut *routes, table);
    drop(routes);
    drop(old);
    Ok(0)
}

/// Delivers `irq` to every matching local APIC of `vm` (`source`: the sending vCPU, for the
/// self/others shorthands; lowest priority goes to the first matching software-enabled APIC,
/// the only candidates Linux considers). Returns Linux's `kvm_irq_delivery_to_apic` value: -1
/// if no APIC matched, else the number that accepted.
pub fn deliver<H: Host, B: Backend>(vm: &Vm<H, B>, irq: &Irq, source: *const Vcpu<H, B>) -> i64 {
    let mut r = -1i64;
    let mut i = 0;
    while let Some(v) = vm.vcpu(i) {
        i += 1;
        let Some(a) = v.apic.as_ref() else { continue };
        let m = a.mirror.load(Ordering::SeqCst);
        if !match_dest(m, irq, core::ptr::eq(v, source), !source.is_null())
            || (irq.mode == dm::LOWEST && m & MIRROR_SW_ENABLED == 0)
        {
            continue;
        }
        r = r.max(0);
        if a.post(irq) {
            r += 1;
            kick(v, true);
        }
        if irq.mode == dm::LOWEST {
            break;
        }
    }
    r
}

/// Wakes `v` if it sleeps in the kernel and forces it out of guest mode if it runs.
/// `locked_wake`: take the wait lock first (thread context; the timer callback cannot).
fn kick<H: Host, B: Backend>(v: &Vcpu<H, B>, locked_wake: bool) {
    let Some(a) = v.apic.as_ref() else { return };
    if locked_wake {
        drop(a.wait.lock());
    }
    a.host.wakeup(a.chan());
    let cpu = v.cpu.load(Ordering::SeqCst);
    if cpu >= 0 {
        a.host.cpu_kick(cpu as u32);
    }
}

/// The host timer callback (soft-interrupt context): marks the timer event, wakes, kicks.
unsafe extern "C" fn timer_fired<H: Host, B: Backend>(arg: *mut c_void) {
    // SAFETY: arg is the vCPU the timer belongs to; ApicShared::drop cancels the timer (waiting
    // for a running callback) before the vCPU's memory is freed.
    let v = unsafe { &*arg.cast::<Vcpu<H, B>>() };
    if let Some(a) = v.apic.as_ref() {
        a.events.fetch_or(EV_TIMER, Ordering::SeqCst);
    }
    kick(v, false);
}

/// The cross-thread and the owned part of a vCPU's local APIC.
pub type VcpuParts<H> = (Option<ApicShared<H>>, Option<HBox<lapic::Lapic, H>>);

/// The irqchip parts of a new vCPU (`None`s without an in-kernel irqchip). Called with the
/// VM lock held, which orders it after `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)` and
/// `KVM_CREATE_IRQCHIP`.
pub fn vcpu_parts<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    id: u32,
    b: &mut B::Vcpu,
) -> KResult<VcpuParts<H>> {
    if !vm.irq.lapic_in_kernel() {
        return Ok((None, None));
    }
    let host = vm.sys.host;
    let shared = ApicShared::new(host)?;
    let mut l = HBox::<lapic::Lapic, H>::new_zeroed(host)?;
    l.new_state(id, vm.sys.backend.get_apic_base(b));
    shared.mirror.store(mirror_of(&l), Ordering::SeqCst);
    Ok((Some(shared), Some(l)))
}

/// Allocates the APIC timer of a vCPU now at its final address.
pub fn attach_timer<H: Host, B: Backend>(v: &mut HBox<Vcpu<H, B>, H>) -> KResult<()> {
    let arg = (&**v as *const Vcpu<H, B>).cast_mut().cast::<c_void>();
    if let Some(a) = v.apic.as_mut() {
        let t = a
            .host
            .timer_alloc(timer_fired::<H, B>, arg)
            .ok_or(crate::errno::ENOMEM)?;
        a.timer = Some(t);
    }
    Ok(())
}

fn mirror_of(l: &lapic::Lapic) -> u64 {
    l.mirror()
        | if l.sw_enabled() { MIRROR_SW_ENABLED } else { 0 }
        | if l.accept_pic_intr() { MIRROR_PIC } else { 0 }
}
