//! The in-kernel PIT device (Linux `arch/x86/kvm/i8254.c` around the model in `pit.rs`):
//! `KVM_CREATE_PIT2`/`KVM_CREATE_PIT`, `KVM_GET/SET_PIT2`, `KVM_GET/SET_PIT`,
//! `KVM_REINJECT_CONTROL`, guest port I/O to 0x40-0x43 (and 0x61 with
//! `KVM_PIT_SPEAKER_DUMMY`, as Linux: QEMU's `kvm-pit` passes no flags and keeps port 0x61 in
//! userspace, driving the gate and reading OUT 2 through `KVM_GET/SET_PIT2`), and IRQ0.
//!
//! IRQ0: channel 0 in modes 0, 1, 4 (once) and 2, 3 (periodic, at least every 200 µs) arms a
//! host timer. Its callback (soft-interrupt context) only sets an atomic, posts `EV_PIT` to
//! the BSP (the vCPU at creation index 0, Linux's "owner" vCPU 0) and wakes/kicks it. The BSP,
//! in thread context before each guest entry and in its halt loop
//! ([`Vcpu::pit_service`]), counts the expirations up to now from the deadline (several if it
//! ran late), re-arms the host timer and pulses GSI 0 (level 1 then 0) with the PIT lock
//! dropped. A halted BSP also sleeps no longer than the PIT deadline.
//!
//! Lost ticks (Linux semantics): with reinjection (the default; `KVM_REINJECT_CONTROL` turns
//! it off) every expiration is counted in `pending` and injected one at a time, each only
//! after the guest acknowledged the previous one (EOI at the PIC/IOAPIC: [`irq0_acked`]);
//! unmasking IRQ0 ([`irq0_mask_changed`]) and every channel-0 count load forget the backlog.
//! Without reinjection, expirations that pile up before the BSP runs are coalesced into one
//! pulse.
//!
//! Connection to the interrupt controllers (full irqchip, `KVM_CREATE_IRQCHIP`, required:
//! Linux `pic_in_kernel`): the PIT drives GSI 0 as its own irq source
//! (`set_gsi_from(vm, source::PIT, 0, level)`, Linux `kvm_set_irq(kvm, pit->irq_source_id, 0,
//! level)`), so its level is ORed with userspace's. While reinjection is on, the PIT holds an
//! ack notifier on GSI 0 ([`super::ack`], Linux `kvm_pit_ack_irq`): the master PIC ending IRQ
//! 0 (EOI, or auto-EOI at INTA) or a local APIC's EOI of the vector of the IOAPIC pin GSI 0 is
//! routed to (pin 2 with QEMU's routes, edge-triggered or not) calls [`irq0_acked`]. The
//! guest flipping the PIC IMR bit or IOAPIC mask of a GSI-0 pin calls [`irq0_mask_changed`]
//! (Linux's mask notifier).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use kvm_abi::{kvm_pit_config, kvm_pit_state, kvm_pit_state2, kvm_reinject_control};
use zerocopy::FromZeros;

use super::ack::{register_ack_notifier, unregister_ack_notifier};
use super::pit::{Pit8254, PIT_BASE_PORT, SPEAKER_PORT};
use super::{kick, set_gsi_from, source, EV_PIT};
use crate::backend::Backend;
use crate::errno::{KResult, EEXIST, ENOENT, ENOMEM, ENXIO};
use crate::hmem::HBox;
use crate::host::{Host, RawTimer};
use crate::sync::HMutex;
use crate::user;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// The PIT's locked state.
struct PitState {
    m: Pit8254,
    /// Period and kind of the running IRQ0 timer, if any.
    irq0: Option<super::pit::Irq0Timer>,
    /// Next IRQ0 expiry (host ns), 0 = none.
    deadline: u64,
    /// Without reinjection: an expiry is waiting for its pulse.
    coalesced: bool,
    /// The ack notifier on GSI 0 (registered while reinjection is on).
    ack: Option<usize>,
}

/// One VM's PIT.
pub struct Pit<H: Host> {
    host: &'static H,
    /// [I] Port 0x61 is handled in the kernel (`KVM_PIT_SPEAKER_DUMMY`).
    speaker: bool,
    /// The model and the IRQ0 timer bookkeeping.
    st: HMutex<PitState, H>,
    /// [a] Lost ticks are reinjected (Linux default).
    reinject: AtomicBool,
    /// [a] Reinjection: expirations not injected yet.
    pending: AtomicU32,
    /// [a] Reinjection: the last injected tick was acknowledged.
    irq_ack: AtomicBool,
    /// [a] The host timer fired since the BSP last looked.
    fired: AtomicBool,
    /// [a] Mirror of `PitState::deadline` for the BSP's halt timeout.
    deadline: AtomicU64,
    /// [I] The host timer (callback argument: the VM).
    timer: Option<RawTimer>,
}

impl<H: Host> Pit<H> {
    /// Makes the host timer match `s.deadline` (thread context, PIT lock held).
    fn arm(&self, s: &PitState, now: u64) {
        self.deadline.store(s.deadline, Ordering::SeqCst);
        let Some(t) = self.timer else { return };
        if s.deadline == 0 {
            self.host.timer_cancel(t);
        } else {
            self.host
                .timer_arm(t, s.deadline.saturating_sub(now).max(1));
        }
    }

    /// Channel 0's count was (re)loaded: restart IRQ0 from `now` and forget lost ticks (Linux
    /// `create_pit_timer`/`destroy_pit_timer`).
    fn reprogram(&self, s: &mut PitState, now: u64) {
        s.irq0 = s.m.irq0_timer();
        s.deadline = s.irq0.map_or(0, |t| now.saturating_add(t.period_ns));
        s.coalesced = false;
        self.pending.store(0, Ordering::SeqCst);
        self.irq_ack.store(true, Ordering::SeqCst);
        self.arm(s, now);
    }
}

impl<H: Host> Drop for Pit<H> {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            self.host.timer_cancel(t);
            // SAFETY: cancelled (a running callback finished); not used again.
            unsafe { self.host.timer_free(t) };
        }
    }
}

/// The VM's PIT slot: empty until `KVM_CREATE_PIT2`, then fixed until VM teardown.
pub struct PitSlot<H: Host> {
    host: &'static H,
    /// [m] written once, [a] read.
    pit: AtomicPtr<Pit<H>>,
}

impl<H: Host> PitSlot<H> {
    /// An empty slot.
    pub fn new(host: &'static H) -> Self {
        Self {
            host,
            pit: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The PIT, if created.
    pub fn get(&self) -> Option<&Pit<H>> {
        let p = self.pit.load(Ordering::Acquire);
        // SAFETY: a published PIT lives until `shutdown`, which runs at VM teardown when no
        // other reference to the VM (hence to this slot) exists.
        unsafe { p.as_ref() }
    }

    /// Stops the PIT's timer and frees it. VM teardown calls this before freeing the vCPUs
    /// (the timer callback looks up vCPU 0).
    pub fn shutdown(&self) {
        let p = self.pit.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if let Some(p) = core::ptr::NonNull::new(p) {
            // SAFETY: published from HBox::into_raw; unpublished above, nobody else uses it.
            drop(unsafe { HBox::from_raw(self.host, p) });
        }
    }
}

impl<H: Host> Drop for PitSlot<H> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Posts `EV_PIT` to the BSP and wakes/kicks it (`locked_wake`: thread context).
fn wake_bsp<H: Host, B: Backend>(vm: &Vm<H, B>, locked_wake: bool) {
    if let Some(v) = vm.vcpu(0) {
        if let Some(a) = v.apic.as_ref() {
            a.events.fetch_or(EV_PIT, Ordering::SeqCst);
        }
        kick(v, locked_wake);
    }
}

/// The host timer callback (soft-interrupt context): no lock, no allocation.
unsafe extern "C" fn timer_fired<H: Host, B: Backend>(arg: *mut c_void) {
    // SAFETY: arg is the VM owning the PIT; VM teardown cancels the timer (waiting for a
    // running callback) before the PIT and the vCPUs are freed.
    let vm = unsafe { &*arg.cast::<Vm<H, B>>() };
    if let Some(p) = vm.pit.get() {
        p.fired.store(true, Ordering::SeqCst);
    }
    wake_bsp(vm, false);
}

/// The in-kernel PIC/IOAPIC acknowledged (EOI) the interrupt GSI 0 is routed to (Linux
/// `kvm_pit_ack_irq`): with reinjection the next pending tick may go.
pub fn irq0_acked<H: Host, B: Backend>(vm: &Vm<H, B>) {
    let Some(p) = vm.pit.get() else { return };
    p.irq_ack.store(true, Ordering::SeqCst);
    if p.reinject.load(Ordering::SeqCst) && p.pending.load(Ordering::SeqCst) > 0 {
        wake_bsp(vm, true);
    }
}

/// The PIT's ack notifier on GSI 0 (`arg`: the VM).
fn ack_notifier<H: Host, B: Backend>(arg: usize, _gsi: u32) {
    // SAFETY: arg is the VM whose ack registry holds this notifier; the registry is part of
    // the VM, so the VM is live whenever the notifier runs.
    let vm = unsafe { &*(arg as *const Vm<H, B>) };
    irq0_acked(vm);
}

/// Registers the PIT's ack notifier on GSI 0 (VM or PIT lock held by the caller).
fn register_ack<H: Host, B: Backend>(vm: &Vm<H, B>) -> KResult<usize> {
    let arg = vm as *const Vm<H, B> as usize;
    register_ack_notifier(vm, 0, ack_notifier::<H, B>, arg)
}

/// The guest masked or unmasked the pin GSI 0 is routed to (Linux `pit_mask_notifer`):
/// unmasking forgets the ticks lost while masked.
pub fn irq0_mask_changed<H: Host, B: Backend>(vm: &Vm<H, B>, masked: bool) {
    let Some(p) = vm.pit.get() else { return };
    if !masked {
        p.pending.store(0, Ordering::SeqCst);
        p.irq_ack.store(true, Ordering::SeqCst);
    }
}

/// IRQ0 work in thread context: account expirations up to now, re-arm, pulse GSI 0 if a
/// tick is due (see the module comment for the policy).
fn service<H: Host, B: Backend>(vm: &Vm<H, B>, p: &Pit<H>) {
    let now = p.host.nanotime();
    // Fast path (every BSP entry): nothing expired, the timer did not fire, and no
    // reinjected tick can go.
    let d = p.deadline.load(Ordering::SeqCst);
    if (d == 0 || now < d)
        && !p.fired.load(Ordering::SeqCst)
        && !(p.reinject.load(Ordering::SeqCst)
            && p.pending.load(Ordering::SeqCst) > 0
            && p.irq_ack.load(Ordering::SeqCst))
    {
        return;
    }
    let pulse = {
        let mut s = p.st.lock();
        let mut due = 0u64;
        if s.deadline != 0 && now >= s.deadline {
            match s.irq0 {
                Some(t) if t.periodic => {
                    let k = (now - s.deadline) / t.period_ns + 1;
                    s.deadline = s.deadline.saturating_add(k.saturating_mul(t.period_ns));
                    due = k;
                }
                _ => {
                    s.deadline = 0;
                    due = 1;
                }
            }
        }
        let reinject = p.reinject.load(Ordering::SeqCst);
        if due > 0 {
            if reinject {
                let add = u32::try_from(due).unwrap_or(u32::MAX);
                let _ = p
                    .pending
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                        Some(v.saturating_add(add))
                    });
            } else {
                s.coalesced = true;
            }
        }
        if p.fired.swap(false, Ordering::SeqCst) || due > 0 {
            p.arm(&s, now);
        }
        if reinject {
            p.pending.load(Ordering::SeqCst) > 0 && p.irq_ack.swap(false, Ordering::SeqCst) && {
                p.pending.fetch_sub(1, Ordering::SeqCst);
                true
            }
        } else {
            core::mem::replace(&mut s.coalesced, false)
        }
    };
    if pulse {
        set_gsi_from(vm, source::PIT, 0, true);
        set_gsi_from(vm, source::PIT, 0, false);
    }
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    fn pit_bsp(&self) -> Option<&Pit<H>> {
        let vm = self.vm();
        let p = vm.pit.get()?;
        core::ptr::eq(vm.vcpu(0)?, self).then_some(p)
    }

    /// Run-loop hook (thread context, before each guest entry and in the halt loop): the BSP
    /// drives IRQ0.
    pub(crate) fn pit_service(&self) {
        if let Some(p) = self.pit_bsp() {
            service(self.vm(), p);
        }
    }

    /// The next IRQ0 expiry (host ns) a halted BSP must wake up for; 0 if none.
    pub(crate) fn pit_deadline(&self) -> u64 {
        self.pit_bsp()
            .map_or(0, |p| p.deadline.load(Ordering::SeqCst))
    }

    /// The PIT and whether the access is to 0x40-0x43 (else 0x61), if the in-kernel PIT
    /// handles an access of `size` bytes at `port`.
    fn pit_claims(&self, port: u16, size: u8) -> Option<(&Pit<H>, bool)> {
        let p = self.vm().pit.get()?;
        let end = u32::from(port) + u32::from(size);
        let pit = port >= PIT_BASE_PORT && end <= u32::from(PIT_BASE_PORT) + 4;
        (pit || (p.speaker && port == SPEAKER_PORT)).then_some((p, pit))
    }

    /// A guest `IN`/`OUT` of `size` bytes at `port`: handled by the in-kernel PIT when it
    /// falls inside 0x40-0x43, or is at 0x61 with the speaker port in the kernel (Linux's
    /// I/O bus: the whole access inside one device). Returns the value read (zero-extended;
    /// 0 for a write), `None` when userspace handles the port.
    pub(crate) fn pit_pio(&self, port: u16, size: u8, out: bool, data: u32) -> Option<u32> {
        let (p, pit) = self.pit_claims(port, size)?;
        let now = p.host.nanotime();
        let mut s = p.st.lock();
        Some(if pit {
            let off = port - PIT_BASE_PORT;
            if out {
                if s.m.write(off, data as u8, now) {
                    p.reprogram(&mut s, now);
                }
                0
            } else {
                u32::from(s.m.read(off, now))
            }
        } else if out {
            s.m.speaker_write(data, now);
            0
        } else {
            u32::from(s.m.speaker_read(now))
        })
    }

    /// `INS` through the emulator: fills `buf` element by element (`size` bytes each) when
    /// the in-kernel PIT handles the port; `false` for userspace.
    pub(crate) fn pit_pio_in_string(&self, port: u16, size: u8, buf: &mut [u8]) -> bool {
        if !matches!(size, 1 | 2 | 4) || self.pit_claims(port, size).is_none() {
            return false;
        }
        for e in buf.chunks_mut(usize::from(size)) {
            let v = self.pit_pio(port, size, false, 0).unwrap_or(0);
            for (d, s) in e.iter_mut().zip(v.to_le_bytes()) {
                *d = s;
            }
        }
        true
    }

    /// `OUTS` through the emulator: writes `data` element by element when the in-kernel PIT
    /// handles the port; `false` for userspace.
    pub(crate) fn pit_pio_out_string(&self, port: u16, size: u8, data: &[u8]) -> bool {
        if !matches!(size, 1 | 2 | 4) || self.pit_claims(port, size).is_none() {
            return false;
        }
        for e in data.chunks(usize::from(size)) {
            let mut w = [0u8; 4];
            for (d, s) in w.iter_mut().zip(e) {
                *d = *s;
            }
            let _ = self.pit_pio(port, size, true, u32::from_le_bytes(w));
        }
        true
    }
}

/// The PIT VM ioctls; `None` for other commands. Errno order as Linux `kvm_arch_vm_ioctl`.
pub fn vm_ioctl<H: Host, B: Backend>(vm: &Vm<H, B>, cmd: u32, arg: u64) -> Option<KResult<i64>> {
    use kvm_abi::{
        KVM_CREATE_PIT, KVM_CREATE_PIT2, KVM_GET_PIT, KVM_GET_PIT2, KVM_PIT_SPEAKER_DUMMY,
        KVM_REINJECT_CONTROL, KVM_SET_PIT, KVM_SET_PIT2,
    };
    let host = vm.sys.host;
    Some(match cmd {
        KVM_CREATE_PIT => create(vm, KVM_PIT_SPEAKER_DUMMY),
        KVM_CREATE_PIT2 => {
            user::read::<kvm_pit_config, H>(host, arg).and_then(|c| create(vm, c.flags))
        }
        KVM_GET_PIT => (|| {
            let _: kvm_pit_state = user::read(host, arg)?;
            let p = vm.pit.get().ok_or(ENXIO)?;
            let mut ps = kvm_pit_state::new_zeroed();
            ps.channels = p.st.lock().m.ch;
            user::write(host, arg, &ps).map(|()| 0)
        })(),
        KVM_SET_PIT => (|| {
            let ps: kvm_pit_state = user::read(host, arg)?;
            let p = vm.pit.get().ok_or(ENXIO)?;
            set_channels(p, &ps.channels, None);
            Ok(0)
        })(),
        KVM_GET_PIT2 => (|| {
            let p = vm.pit.get().ok_or(ENXIO)?;
            let mut ps = kvm_pit_state2::new_zeroed();
            {
                let s = p.st.lock();
                ps.channels = s.m.ch;
                ps.flags = s.m.flags;
            }
            user::write(host, arg, &ps).map(|()| 0)
        })(),
        KVM_SET_PIT2 => (|| {
            let ps: kvm_pit_state2 = user::read(host, arg)?;
            let p = vm.pit.get().ok_or(ENXIO)?;
            set_channels(p, &ps.channels, Some(ps.flags));
            Ok(0)
        })(),
        KVM_REINJECT_CONTROL => (|| {
            let c: kvm_reinject_control = user::read(host, arg)?;
            let p = vm.pit.get().ok_or(ENXIO)?;
            let mut s = p.st.lock();
            let on = c.pit_reinject != 0;
            if on == p.reinject.load(Ordering::SeqCst) {
                return Ok(0);
            }
            // Linux `kvm_pit_set_reinject`: the ack notifier listens only while reinjection is
            // on, and the backlog starts empty whenever it is switched on.
            if on {
                s.ack = Some(register_ack(vm)?);
                p.pending.store(0, Ordering::SeqCst);
                p.irq_ack.store(true, Ordering::SeqCst);
            } else if let Some(h) = s.ack.take() {
                unregister_ack_notifier(vm, h);
            }
            p.reinject.store(on, Ordering::SeqCst);
            Ok(0)
        })(),
        _ => return None,
    })
}

/// `KVM_SET_PIT`/`KVM_SET_PIT2`: the channels (and flags) as given, counts reloaded now.
fn set_channels<H: Host>(p: &Pit<H>, ch: &[kvm_abi::kvm_pit_channel_state; 3], flags: Option<u32>) {
    let now = p.host.nanotime();
    let mut s = p.st.lock();
    if let Some(f) = flags {
        s.m.flags = f;
    }
    s.m.set_state(ch, now);
    p.reprogram(&mut s, now);
}

/// `KVM_CREATE_PIT2` (`KVM_CREATE_PIT`: with `KVM_PIT_SPEAKER_DUMMY`): `EEXIST` if the VM has
/// a PIT, `ENOENT` without the full in-kernel irqchip (the split one has no PIC); the PIT
/// starts in its reset state with reinjection on (its ack notifier on GSI 0 registered).
/// Unknown flags are ignored, as in Linux.
#[inline(never)]
fn create<H: Host, B: Backend>(vm: &Vm<H, B>, flags: u32) -> KResult<i64> {
    let host = vm.sys.host;
    let _g = vm.st.lock();
    if vm.pit.get().is_some() {
        return Err(EEXIST);
    }
    if !vm.irq.full() {
        return Err(ENOENT);
    }
    let now = host.nanotime();
    let st = PitState {
        m: Pit8254::new(now),
        irq0: None,
        deadline: 0,
        coalesced: false,
        ack: None,
    };
    let mut pit = HBox::new(
        host,
        Pit {
            host,
            speaker: flags & kvm_abi::KVM_PIT_SPEAKER_DUMMY != 0,
            st: HMutex::new(host, st)?,
            reinject: AtomicBool::new(true),
            pending: AtomicU32::new(0),
            irq_ack: AtomicBool::new(true),
            fired: AtomicBool::new(false),
            deadline: AtomicU64::new(0),
            timer: None,
        },
    )?;
    let arg = (vm as *const Vm<H, B>).cast_mut().cast::<c_void>();
    pit.timer = Some(host.timer_alloc(timer_fired::<H, B>, arg).ok_or(ENOMEM)?);
    // Reinjection starts on (Linux `kvm_create_pit` → `kvm_pit_set_reinject(pit, true)`).
    pit.st.get_mut().ack = Some(register_ack(vm)?);
    vm.pit.pit.store(pit.into_raw().as_ptr(), Ordering::Release);
    Ok(0)
}

#[cfg(test)]
impl<H: Host> Pit<H> {
    /// Test view: (pending, irq_ack, deadline).
    pub fn debug_irq(&self) -> (u32, bool, u64) {
        (
            self.pending.load(Ordering::SeqCst),
            self.irq_ack.load(Ordering::SeqCst),
            self.deadline.load(Ordering::SeqCst),
        )
    }

    /// Test view: a copy of the model.
    pub fn model(&self) -> Pit8254 {
        self.st.lock().m
    }
}

/// Test hook: runs the timer callback as the host would.
#[cfg(test)]
pub fn fire_timer<H: Host, B: Backend>(vm: &Vm<H, B>) {
    // SAFETY: vm is live; the callback only reads it.
    unsafe { timer_fired::<H, B>((vm as *const Vm<H, B>).cast_mut().cast()) }
}

/// Test hook: IRQ0 work as the BSP does it, without a vCPU.
#[cfg(test)]
pub fn service_now<H: Host, B: Backend>(vm: &Vm<H, B>) {
    if let Some(p) = vm.pit.get() {
        service(vm, p);
    }
}

/// Test view: whether `EV_PIT` is posted to the BSP's local APIC.
#[cfg(test)]
pub fn bsp_pit_event<H: Host, B: Backend>(vm: &Vm<H, B>) -> bool {
    vm.vcpu(0)
        .and_then(|v| v.apic.as_ref())
        .is_some_and(|a| a.events.load(Ordering::SeqCst) & EV_PIT != 0)
}
