//! Irq ack notifiers of the full irqchip (Linux `kvm_register_irq_ack_notifier`,
//! `kvm_notify_acked_irq`): in-kernel consumers (the PIT's reinjection, resampling irqfds)
//! hear when the guest acknowledges an interrupt of a GSI: an EOI (or auto-EOI, or poll) ends
//! it at the PIC, or a local APIC's EOI reaches an IOAPIC pin.
//!
//! A notification for (irqchip, pin) goes to the GSI whose IRQCHIP route targets that pin
//! (with several, the lowest such GSI; Linux keeps the last one configured). Notifiers run in
//! the acknowledging vCPU's thread with the registry lock held and no irqchip lock: they may
//! raise GSIs ([`super::set_gsi_from`]) but must not (un)register notifiers.
//!
//! The same GSI lookup serves the mask notifier ([`notify_mask`]): the guest masked or
//! unmasked a PIC or IOAPIC pin.

use core::sync::atomic::Ordering;

use super::Route;
use crate::backend::Backend;
use crate::errno::{KResult, ENOSPC, ENXIO};
use crate::host::Host;
use crate::vm::Vm;

/// Most notifiers per VM.
pub const MAX_ACK_NOTIFIERS: usize = 32;

/// A notifier: called with the registered `arg` and the acknowledged GSI.
pub type AckFn = fn(arg: usize, gsi: u32);

/// One registry slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct AckEntry {
    gsi: u32,
    f: Option<AckFn>,
    arg: usize,
}

/// Registers `f(arg, gsi)` for acknowledgements of `gsi` (full irqchip only: `ENXIO`
/// otherwise; `ENOSPC` past [`MAX_ACK_NOTIFIERS`]). Returns the handle for
/// [`unregister_ack_notifier`].
pub fn register_ack_notifier<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    gsi: u32,
    f: AckFn,
    arg: usize,
) -> KResult<usize> {
    if !vm.irq.full() {
        return Err(ENXIO);
    }
    let mut g = vm.irq.acks.lock();
    let t = g.as_mut().ok_or(ENXIO)?;
    let (i, e) = t
        .iter_mut()
        .enumerate()
        .find(|(_, e)| e.f.is_none())
        .ok_or(ENOSPC)?;
    *e = AckEntry {
        gsi,
        f: Some(f),
        arg,
    };
    vm.irq.nr_acks.fetch_add(1, Ordering::SeqCst);
    Ok(i)
}

/// Removes notifier `handle`; on return it is not running and will not be called again.
/// Never call it from a notifier.
pub fn unregister_ack_notifier<H: Host, B: Backend>(vm: &Vm<H, B>, handle: usize) {
    let mut g = vm.irq.acks.lock();
    if let Some(e) = g.as_mut().and_then(|t| t.get_mut(handle)) {
        if e.f.take().is_some() {
            vm.irq.nr_acks.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether any notifier is registered (then edge-triggered EOIs reach the IOAPIC too).
pub(super) fn any<H: Host, B: Backend>(vm: &Vm<H, B>) -> bool {
    vm.irq.nr_acks.load(Ordering::SeqCst) != 0
}

/// The GSI whose IRQCHIP route targets pin `pin` of irqchip `chip` (`KVM_IRQCHIP_*`; PIC pins
/// 0-15 with the slave's as 8-15), the lowest if several (Linux `kvm_irq_map_chip_pin`).
fn gsi_of<H: Host, B: Backend>(vm: &Vm<H, B>, chip: u32, pin: u32) -> Option<u32> {
    let (id, p) = match chip {
        kvm_abi::KVM_IRQCHIP_IOAPIC => (chip, pin),
        _ if pin >= 8 => (kvm_abi::KVM_IRQCHIP_PIC_SLAVE, pin - 8),
        _ => (kvm_abi::KVM_IRQCHIP_PIC_MASTER, pin),
    };
    let routes = vm.irq.routes.lock();
    routes.as_ref().and_then(|t| {
        t.iter()
            .position(|r: &Route| r.chip.get(id as usize) == Some(&(p as u8 + 1)))
            .map(|g| g as u32)
    })
}

/// The guest acknowledged pins `pins` (bit n = pin n) of irqchip `chip` (`KVM_IRQCHIP_*`;
/// PIC pins 0-15 with the slave's as 8-15, as Linux numbers them). Called with no irqchip
/// lock held.
pub(super) fn notify<H: Host, B: Backend>(vm: &Vm<H, B>, chip: u32, pins: u32) {
    if pins == 0 || !any(vm) {
        return;
    }
    for pin in (0..32u32).filter(|p| pins & (1 << p) != 0) {
        let Some(gsi) = gsi_of(vm, chip, pin) else {
            continue;
        };
        let g = vm.irq.acks.lock();
        for e in g.as_ref().map_or(&[][..], |t| &t[..]) {
            if let (Some(f), true) = (e.f, e.gsi == gsi) {
                f(e.arg, e.gsi);
            }
        }
    }
}

/// Irq mask notifiers (Linux `kvm_fire_mask_notifiers`): the guest flipped the mask of pins
/// `changed` of irqchip `chip` (numbered as for [`notify`]); `masked` holds their new masks.
/// Linux's only in-kernel listener is the PIT on GSI 0 (`pit_mask_notifer`), so instead of a
/// registry the GSI-0 pins go straight to [`super::pitdev::irq0_mask_changed`]. Called with no
/// irqchip lock held.
pub(super) fn notify_mask<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    chip: u32,
    changed: u32,
    masked: u32,
) {
    if changed == 0 || vm.pit.get().is_none() {
        return;
    }
    for pin in (0..32u32).filter(|p| changed & (1 << p) != 0) {
        if gsi_of(vm, chip, pin) == Some(0) {
            super::pitdev::irq0_mask_changed(vm, masked & (1 << pin) != 0);
        }
    }
}
