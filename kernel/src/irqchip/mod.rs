//! The split irqchip (`KVM_CAP_SPLIT_IRQCHIP`): local APICs in the kernel, IOAPIC/PIC/PIT in
//! userspace, as QEMU's `-machine kernel-irqchip=split` expects (Linux `arch/x86/kvm/lapic.c`,
//! `irq_comm.c`, `x86.c`).
//!
//! - [`lapic`]: the register model of one local APIC (pure, owned by its vCPU).
//! - [`ApicShared`]: the part other threads touch: posted interrupt requests (a 256-bit
//!   bitmap plus the level-trigger bits), NMI/INIT/SIPI/timer events, a destination-matching
//!   snapshot, the wait lock a halted vCPU sleeps on, and the host timer.
//! - [`IrqChip`]: per-VM mode and the GSI routing table (MSI routes; in split mode the first
//!   `args[0]` GSIs of `KVM_ENABLE_CAP` are the userspace IOAPIC's pins, whose level-triggered
//!   routes make a guest EOI exit with `KVM_EXIT_IOAPIC_EOI`).
//! - `run.rs` (this directory): the vCPU side: the run-loop hook, MMIO/MSR/HLT handling, the
//!   vCPU ioctls.
//!
//! Delivery never takes another vCPU's lock: a sender sets bits in the target's
//! [`ApicShared`], takes and drops the target's wait lock (so a sleeper cannot miss the
//! wakeup), wakes it and kicks its CPU; the target merges the bits into its IRR before the
//! next entry. The host timer callback runs in soft-interrupt context and only sets a bit,
//! wakes and kicks (no lock); a halted vCPU also sleeps no longer than its timer's deadline.

pub mod lapic;
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

pub use run::ApicEntry;

/// Linux `KVM_MAX_IRQ_ROUTES`: GSIs are below this; also the most IOAPIC pins of split mode.
pub const MAX_IRQ_ROUTES: u32 = kvm_abi::KVM_MAX_IRQ_ROUTES;

const EV_NMI: u32 = 1;
const EV_INIT: u32 = 2;
const EV_SIPI: u32 = 4;
const EV_TIMER: u32 = 8;
/// Mirror bit: software-enabled (SVR) — fixed interrupts are accepted.
const MIRROR_SW_ENABLED: u64 = 1 << 62;

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

/// One GSI route (split mode has only MSI routes).
#[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
struct Route {
    valid: u32,
    address_lo: u32,
    data: u32,
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
}

impl<H: Host> IrqChip<H> {
    /// A VM without an in-kernel irqchip.
    pub fn new(host: &'static H) -> KResult<Self> {
        Ok(Self {
            split: AtomicBool::new(false),
            ioapic_pins: AtomicU32::new(0),
            level_vectors: Default::default(),
            routes: HMutex::new(host, None)?,
        })
    }

    /// Whether the split irqchip is enabled (local APICs in the kernel).
    pub fn split(&self) -> bool {
        self.split.load(Ordering::Acquire)
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
    if vm.irq.split() || st.created_vcpus != 0 {
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
    use kvm_abi::{KVM_IRQ_LINE, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI};
    Some(match cmd {
        KVM_SIGNAL_MSI => signal_msi(vm, arg),
        KVM_SET_GSI_ROUTING => set_gsi_routing(vm, arg),
        KVM_IRQ_LINE => irq_line(vm, arg),
        _ => return None,
    })
}

/// `KVM_SIGNAL_MSI`: the number of APICs that accepted it, `EPERM` (Linux's -1) if none matched.
fn signal_msi<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64) -> KResult<i64> {
    let m: kvm_msi = user::read(vm.sys.host, arg)?;
    if !vm.irq.split() || m.flags & !kvm_abi::KVM_MSI_VALID_DEVID != 0 {
        return Err(EINVAL);
    }
    let r = deliver(vm, &decode_msi(m.address_lo, m.data), core::ptr::null());
    if r < 0 {
        Err(EPERM)
    } else {
        Ok(r)
    }
}

/// `KVM_IRQ_LINE`: GSI `irq` to `level` through [`set_gsi`]. Always 0, like Linux (the
/// delivery status is only reported by `KVM_IRQ_LINE_STATUS`, not offered).
fn irq_line<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64) -> KResult<i64> {
    let l: kvm_irq_level = user::read(vm.sys.host, arg)?;
    if !vm.irq.split() {
        return Err(ENXIO);
    }
    set_gsi(vm, l.irq, l.level != 0);
    Ok(0)
}

/// GSI `gsi` changes to `level`: the one entry point for every source of GSI levels
/// (`KVM_IRQ_LINE`, irqfd), Linux `kvm_set_irq`. Each route of the GSI gets the level; a route
/// to an MSI fires on assertion only (Linux `kvm_set_msi`). Returns Linux's value: -1 when the
/// interrupt was ignored (no route, de-assertion of an MSI, no APIC matched), else the number
/// of APICs that accepted it (0: coalesced). Callable from thread context with no okvm lock
/// held (the irqfd callback) or from an ioctl; takes the routing lock and the targets' wait
/// locks (leaf locks).
pub fn set_gsi<H: Host, B: Backend>(vm: &Vm<H, B>, gsi: u32, level: bool) -> i64 {
    let route = {
        let routes = vm.irq.routes.lock();
        routes
            .as_ref()
            .and_then(|t| t.get(gsi as usize).copied())
            .filter(|r| r.valid != 0)
    };
    match route {
        Some(r) if level => deliver(vm, &decode_msi(r.address_lo, r.data), core::ptr::null()),
        _ => -1,
    }
}

/// Whether `KVM_IRQFD` may assign an irqfd (Linux x86 `kvm_arch_irqfd_allowed`): any
/// in-kernel irqchip; with `resample` only the full one (PIC/IOAPIC in the kernel), which does
/// not exist yet, so `RESAMPLE` is refused in split mode as Linux does.
pub fn irqfd_allowed<H: Host, B: Backend>(vm: &Vm<H, B>, resample: bool) -> bool {
    !resample && vm.irq.split()
}

/// `KVM_SET_GSI_ROUTING` (Linux `kvm_set_irq_routing` + x86 `kvm_set_routing_entry`): at most
/// `KVM_MAX_IRQ_ROUTES` entries, no flags; entries: GSI below the maximum, only MSI routes
/// (IRQCHIP routes are refused in split mode), one route per GSI, `KVM_MSI_VALID_DEVID` the
/// only entry flag and only on MSI routes. Any error leaves the old table in place.
#[inline(never)]
fn set_gsi_routing<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64) -> KResult<i64> {
    use kvm_abi::{KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID};
    let host = vm.sys.host;
    if !vm.irq.split() {
        return Err(EINVAL);
    }
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
            // Only MSI routes exist in split mode (IRQCHIP routes are EINVAL there, as are
            // unknown types); KVM_MSI_VALID_DEVID is the only entry flag.
            if e.flags & !KVM_MSI_VALID_DEVID != 0 || e.r#type != KVM_IRQ_ROUTING_MSI {
                return Err(EINVAL);
            }
            let msi = e.u.msi();
            let slot = t.get_mut(e.gsi as usize).ok_or(EINVAL)?;
            if slot.valid != 0 {
                return Err(EINVAL);
            }
            *slot = Route {
                valid: 1,
                address_lo: msi.address_lo,
                data: msi.data,
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
/// VM lock held, which orders it after `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)`.
pub fn vcpu_parts<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    id: u32,
    b: &mut B::Vcpu,
) -> KResult<VcpuParts<H>> {
    if !vm.irq.split() {
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
    l.mirror() | if l.sw_enabled() { MIRROR_SW_ENABLED } else { 0 }
}
