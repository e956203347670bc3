//! The full in-kernel irqchip (`KVM_CREATE_IRQCHIP`, QEMU's default `kernel-irqchip=on`): the
//! 8259 pair ([`super::pic`]) and the IOAPIC ([`super::ioapic`]) of a VM, behind one lock each,
//! plus the VM ioctls that reach them (`KVM_CREATE_IRQCHIP`, `KVM_GET/SET_IRQCHIP`) and the
//! hooks the run loop calls: guest port I/O to the PIC, guest MMIO to the IOAPIC, the PIC's
//! interrupt acknowledge, the local APICs' EOI broadcast.
//!
//! Locking: the PIC and IOAPIC locks are leaves except that IOAPIC delivery takes (and drops)
//! target vCPUs' wait locks, which are leaves themselves; neither is held while taking the
//! routing lock or the VM lock. `KVM_CREATE_IRQCHIP` takes the VM lock, then each of them. Ack
//! and mask notifiers ([`super::ack`]) run after the chip lock is dropped.

use core::sync::atomic::Ordering;

use kvm_abi::{kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
use zerocopy::IntoBytes;

use super::ack;
use super::ioapic::{self, Ioapic};
use super::lapic::Irq;
use super::pic::{self, Pic};
use super::{deliver, kick, Route, EV_EXTINT, MIRROR_PIC};
use crate::backend::Backend;
use crate::errno::{KResult, EEXIST, EINVAL, ENXIO};
use crate::hmem::{HBox, HSlice};
use crate::host::Host;
use crate::user;
use crate::vm::Vm;

/// GSIs of the default routing table (Linux `kvm_setup_default_irq_routing`).
const DEFAULT_GSIS: usize = 24;

/// `KVM_CREATE_IRQCHIP` (Linux `kvm_arch_vm_ioctl`): `EEXIST` if an irqchip (split or full)
/// exists, `EINVAL` once a vCPU exists; creates the PIC (Linux's initial state), the IOAPIC
/// (reset) and the default routes: GSI 0-15 to PIC pin GSI%8 of the master/slave and IOAPIC
/// pin GSI, GSI 16-23 to IOAPIC pin GSI.
pub fn create<H: Host, B: Backend>(vm: &Vm<H, B>) -> KResult<i64> {
    let host = vm.sys.host;
    let st = vm.st.lock();
    if vm.irq.lapic_in_kernel() {
        return Err(EEXIST);
    }
    if st.created_vcpus != 0 {
        return Err(EINVAL);
    }
    let mut p = HBox::<Pic, H>::new_zeroed(host)?;
    p.init();
    let mut io = HBox::<Ioapic, H>::new_zeroed(host)?;
    io.reset();
    let acks = HSlice::new_with(host, ack::MAX_ACK_NOTIFIERS, |_| ack::AckEntry::default())?;
    let mut t = HSlice::<Route, H>::new_zeroed(host, DEFAULT_GSIS)?;
    for (gsi, r) in t.iter_mut().enumerate() {
        let pin = gsi as u8;
        if gsi < 16 {
            if let Some(c) = r.chip.get_mut(gsi / 8) {
                *c = (pin & 7) + 1;
            }
        }
        if let Some(c) = r.chip.get_mut(KVM_IRQCHIP_IOAPIC as usize) {
            *c = pin + 1;
        }
    }
    *vm.irq.pic.lock() = Some(p);
    vm.irq.publish_ioapic(&io);
    *vm.irq.ioapic.lock() = Some(io);
    *vm.irq.acks.lock() = Some(acks);
    let old = vm.irq.routes.lock().replace(t);
    drop(old);
    vm.irq.ioapic_pins.store(0, Ordering::Release);
    vm.irq.full.store(true, Ordering::Release);
    drop(st);
    Ok(0)
}

/// `KVM_GET_IRQCHIP` / `KVM_SET_IRQCHIP`: the argument is read first (`EFAULT`), then
/// `ENXIO` without the full irqchip, `EINVAL` for a chip id other than 0-2.
#[inline(never)]
pub fn get_set<H: Host, B: Backend>(vm: &Vm<H, B>, arg: u64, set: bool) -> KResult<i64> {
    let host = vm.sys.host;
    let mut c = user::read_boxed::<kvm_irqchip, H>(host, arg)?;
    if !vm.irq.full() {
        return Err(ENXIO);
    }
    match c.chip_id {
        KVM_IRQCHIP_PIC_MASTER | KVM_IRQCHIP_PIC_SLAVE => {
            let slave = c.chip_id == KVM_IRQCHIP_PIC_SLAVE;
            let mut g = vm.irq.pic.lock();
            let p = g.as_mut().ok_or(ENXIO)?;
            if set {
                p.set_state(slave, c.chip.pic());
                pic_done(vm, p);
            } else {
                *c.chip.pic_mut() = p.get_state(slave);
            }
        }
        KVM_IRQCHIP_IOAPIC => {
            let mut g = vm.irq.ioapic.lock();
            let io = g.as_mut().ok_or(ENXIO)?;
            if set {
                io.set_state(c.chip.ioapic(), &mut |i: &Irq| {
                    deliver(vm, i, core::ptr::null())
                });
                vm.irq.publish_ioapic(io);
            } else {
                io.get_state(c.chip.ioapic_mut());
            }
        }
        _ => return Err(EINVAL),
    }
    if !set {
        host.copyout(arg, c.as_bytes())?;
    }
    Ok(0)
}

/// After a PIC change (PIC lock held): publishes the output and, when it rose, wakes the first
/// vCPU whose local APIC takes PIC interrupts (Linux `pic_unlock`).
fn pic_done<H: Host, B: Backend>(vm: &Vm<H, B>, p: &mut Pic) {
    vm.irq.pic_output.store(p.output, Ordering::SeqCst);
    if !p.take_wakeup() {
        return;
    }
    let mut i = 0;
    while let Some(v) = vm.vcpu(i) {
        i += 1;
        let Some(a) = v.apic.as_ref() else { continue };
        if a.mirror.load(Ordering::SeqCst) & MIRROR_PIC != 0 {
            a.events.fetch_or(EV_EXTINT, Ordering::SeqCst);
            kick(v, true);
            break;
        }
    }
}

/// Whether some local APIC takes PIC interrupts now (Linux's check in `kvm_pic_reset`).
fn pic_accepted<H: Host, B: Backend>(vm: &Vm<H, B>) -> bool {
    let mut i = 0;
    while let Some(v) = vm.vcpu(i) {
        i += 1;
        if v.apic
            .as_ref()
            .is_some_and(|a| a.mirror.load(Ordering::SeqCst) & MIRROR_PIC != 0)
        {
            return true;
        }
    }
    false
}

/// PIC pin `pin` (0-15) driven by `source`: Linux's status (-1 masked or no PIC).
pub fn pic_set<H: Host, B: Backend>(vm: &Vm<H, B>, pin: u32, source: u32, level: bool) -> i64 {
    let mut g = vm.irq.pic.lock();
    let Some(p) = g.as_mut() else { return -1 };
    let r = p.set_irq(pin, source, level);
    pic_done(vm, p);
    i64::from(r)
}

/// IOAPIC pin `pin` (0-23) driven by `source`: Linux's status.
pub fn ioapic_set<H: Host, B: Backend>(vm: &Vm<H, B>, pin: u32, source: u32, level: bool) -> i64 {
    let mut g = vm.irq.ioapic.lock();
    let Some(io) = g.as_mut() else { return -1 };
    i64::from(io.set_irq(pin, source, level, &mut |i: &Irq| {
        deliver(vm, i, core::ptr::null())
    }))
}

/// Interrupt acknowledge of the PIC by a vCPU injecting its ExtINT (Linux
/// `kvm_cpu_get_extint` → `kvm_pic_read_irq`): the vector to inject.
pub fn pic_inta<H: Host, B: Backend>(vm: &Vm<H, B>) -> Option<u8> {
    let mut g = vm.irq.pic.lock();
    let p = g.as_mut()?;
    let v = p.read_irq();
    pic_done(vm, p);
    let acked = p.take_acked();
    drop(g);
    ack::notify(vm, KVM_IRQCHIP_PIC_MASTER, u32::from(acked));
    Some(v)
}

/// A guest `IN`/`OUT` the in-kernel PIC claims (full irqchip only): `Some(value read)` when
/// handled (0 for `OUT`). Accesses wider than a byte are accepted and ignored (reads give 0),
/// as Linux's `picdev_read/write` do.
pub fn pio<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    port: u16,
    size: u8,
    out: bool,
    data: u32,
) -> Option<u32> {
    if !vm.irq.full() || !pic::claims_port(port, size) {
        return None;
    }
    if size != 1 {
        return Some(0);
    }
    let icw1 = out && (port == 0x20 || port == 0xa0) && data & 0x10 != 0;
    let accepted = icw1 && pic_accepted(vm);
    let mut g = vm.irq.pic.lock();
    let p = g.as_mut()?;
    let v = if out {
        p.write(port, data as u8, accepted);
        0
    } else {
        u32::from(p.read(port))
    };
    pic_done(vm, p);
    let acked = p.take_acked();
    let (changed, masked) = p.take_mask_changed();
    drop(g);
    ack::notify(vm, KVM_IRQCHIP_PIC_MASTER, u32::from(acked));
    ack::notify_mask(
        vm,
        KVM_IRQCHIP_PIC_MASTER,
        u32::from(changed),
        u32::from(masked),
    );
    Some(v)
}

/// A guest MMIO access to the IOAPIC window (full irqchip only): `true` when handled (read
/// data filled in).
pub fn ioapic_mmio<H: Host, B: Backend>(
    vm: &Vm<H, B>,
    gpa: u64,
    data: &mut [u8],
    write: bool,
) -> bool {
    let base = vm.irq.ioapic_base.load(Ordering::SeqCst);
    if !vm.irq.full() || gpa.wrapping_sub(base) >= ioapic::MEM_LENGTH {
        return false;
    }
    let mut g = vm.irq.ioapic.lock();
    let Some(io) = g.as_mut() else { return false };
    let Some(off) = io.offset(gpa) else {
        return false;
    };
    if write {
        io.mmio_write(off, data, &mut |i: &Irq| deliver(vm, i, core::ptr::null()));
        vm.irq.publish_ioapic(io);
        let (changed, masked) = io.take_mask_changed();
        drop(g);
        ack::notify_mask(vm, KVM_IRQCHIP_IOAPIC, changed, masked);
    } else {
        let v = io.mmio_read(off, data.len()).to_le_bytes();
        for (d, s) in data.iter_mut().zip(v) {
            *d = s;
        }
    }
    true
}

/// A local APIC's EOI of `vector` broadcast to the IOAPIC (Linux `kvm_ioapic_update_eoi`):
/// a level-triggered one re-delivers lines that are still asserted; either kind notifies the
/// ack notifiers of the pins with that vector.
pub fn ioapic_eoi<H: Host, B: Backend>(vm: &Vm<H, B>, vector: u8, level: bool) {
    let mut g = vm.irq.ioapic.lock();
    let Some(io) = g.as_mut() else { return };
    let pins = io.eoi(vector, level, &mut |i: &Irq| {
        deliver(vm, i, core::ptr::null())
    });
    drop(g);
    ack::notify(vm, KVM_IRQCHIP_IOAPIC, pins);
}
