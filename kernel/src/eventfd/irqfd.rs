//! `KVM_IRQFD`: a notifier that fires a GSI when signaled (Linux `kvm_irqfd`,
//! `kvm_irqfd_assign`, `kvm_irqfd_deassign`, `irqfd_inject`).
//!
//! # Rules (Linux's)
//! - Flags other than `DEASSIGN`/`RESAMPLE`, or a GSI at or above `KVM_MAX_IRQ_ROUTES`:
//!   `EINVAL` (both directions).
//! - Assign needs an in-kernel irqchip (`EINVAL` without); `RESAMPLE` needs the full in-kernel
//!   irqchip (`EINVAL` in split mode): [`crate::irqchip::irqfd_allowed`]. Then the notifier
//!   (`EBADF`, `EINVAL`), then `EBUSY` if that notifier is already an irqfd of this VM, whatever
//!   the GSI.
//! - Deassign removes the irqfd with that notifier and GSI; 0 even when there is none. On
//!   return the GSI is not fired by it any more.
//! - A signal fires the GSI like `KVM_IRQ_LINE` level 1 then 0 ([`crate::irqchip::set_gsi`]),
//!   through the routing table as it is at that moment.
//! - Bound: [`MAX_IRQFDS`] per VM (`ENOSPC`); Linux bounds them only by the process's
//!   descriptors (one per notifier).
//!
//! Like Linux (`kvm_vm_release`), closing the VM descriptor ends every irqfd, even while vCPU
//! descriptors keep the VM alive. Linux also drops an irqfd when its eventfd is closed
//! (POLLHUP); here the core's reference keeps the notifier alive, and the irqfd lives until
//! deassign or the VM descriptor's close (QEMU deassigns).
//!
//! # Lifetimes
//! Each irqfd is a heap object `{vm, gsi}` whose address is the watch callback's argument. The
//! host runs the callback in thread context with no okvm lock held; it only reads that object
//! and the VM. The object and the VM outlive the watch: deassign and VM teardown
//! ([`IrqFds::shutdown`], from `Vm::put` before anything is freed) unwatch first (which waits
//! for a running callback), then put the notifier and free the object. The list lock
//! serializes assign/deassign/teardown; the callback never takes it.

use core::ffi::c_void;
use core::ptr::NonNull;

use kvm_abi::{kvm_irqfd, KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE};

use super::HVec;
use crate::backend::Backend;
use crate::errno::{KResult, EBUSY, EINVAL};
use crate::hmem::HBox;
use crate::host::{Host, RawEventFd, RawEventFdWatch};
use crate::irqchip::{self, MAX_IRQ_ROUTES};
use crate::sync::HMutex;
use crate::vm::Vm;

/// Most irqfds per VM (one per GSI route on average); beyond: `ENOSPC`.
pub const MAX_IRQFDS: usize = MAX_IRQ_ROUTES as usize;

/// What the watch callback reads: immutable after creation.
struct Target {
    /// The `Vm<H, B>` (type-erased; the callback is monomorphized for `H`, `B`).
    vm: *const c_void,
    gsi: u32,
}

/// One irqfd in the list.
#[derive(Clone, Copy)]
struct Ent {
    e: RawEventFd,
    gsi: u32,
    watch: RawEventFdWatch,
    target: NonNull<Target>,
}

/// The irqfds of one VM.
pub struct IrqFds<H: Host> {
    host: &'static H,
    list: HMutex<HVec<Ent, H>, H>,
}

/// The watch callback: fires the GSI (level 1 then 0).
///
/// # Safety
/// `arg` is the `Target` of a live watch, whose VM is a `Vm<H, B>`.
unsafe extern "C" fn irqfd_fired<H: Host, B: Backend>(arg: *mut c_void) {
    // SAFETY: the target and its VM outlive the watch (module comment), and the callback
    // does not outlive the watch (unwatch waits for it).
    let t = unsafe { &*arg.cast::<Target>() };
    // SAFETY: as above; the target was created from a &Vm<H, B>.
    let vm = unsafe { &*t.vm.cast::<Vm<H, B>>() };
    irqchip::set_gsi(vm, t.gsi, true);
    irqchip::set_gsi(vm, t.gsi, false);
}

impl<H: Host> IrqFds<H> {
    /// No irqfd.
    pub fn new(host: &'static H) -> KResult<Self> {
        Ok(Self {
            host,
            list: HMutex::new(host, HVec::default())?,
        })
    }

    /// [`IrqFds::new`] in the host heap (out of line: keeps `Vm::alloc`'s frame small).
    #[inline(never)]
    pub fn boxed(host: &'static H) -> KResult<HBox<Self, H>> {
        HBox::new(host, Self::new(host)?)
    }

    /// `KVM_IRQFD` on `vm` (whose field `self` is).
    pub fn ioctl<B: Backend>(&self, vm: &Vm<H, B>, a: &kvm_irqfd) -> KResult<i64> {
        if a.flags & !(KVM_IRQFD_FLAG_DEASSIGN | KVM_IRQFD_FLAG_RESAMPLE) != 0
            || a.gsi >= MAX_IRQ_ROUTES
        {
            return Err(EINVAL);
        }
        // Linux passes the descriptor as an int.
        let fd = a.fd as i32;
        if a.flags & KVM_IRQFD_FLAG_DEASSIGN != 0 {
            return self.deassign(fd, a.gsi).map(|()| 0);
        }
        if !irqchip::irqfd_allowed(vm, a.flags & KVM_IRQFD_FLAG_RESAMPLE != 0) {
            return Err(EINVAL);
        }
        let e = self.host.eventfd_get(fd)?;
        let r = self.assign::<B>(vm, e, a.gsi);
        if r.is_err() {
            // SAFETY: our reference from eventfd_get, stored nowhere.
            unsafe { self.host.eventfd_put(e) };
        }
        r.map(|()| 0)
    }

    fn assign<B: Backend>(&self, vm: &Vm<H, B>, e: RawEventFd, gsi: u32) -> KResult<()> {
        let host = self.host;
        let mut l = self.list.lock();
        if l.as_slice().iter().any(|o| o.e == e) {
            return Err(EBUSY);
        }
        let target = HBox::new(
            host,
            Target {
                vm: (vm as *const Vm<H, B>).cast(),
                gsi,
            },
        )?
        .into_raw();
        let free_target = || {
            // SAFETY: from into_raw above; no watch refers to it.
            drop(unsafe { HBox::from_raw(host, target) });
        };
        // SAFETY: the list keeps `e` referenced and `target` alive until after the unwatch.
        let watch =
            match unsafe { host.eventfd_watch(e, irqfd_fired::<H, B>, target.as_ptr().cast()) } {
                Ok(w) => w,
                Err(err) => {
                    free_target();
                    return Err(err);
                }
            };
        let ent = Ent {
            e,
            gsi,
            watch,
            target,
        };
        if let Err(err) = l
            .reserve_one(host, MAX_IRQFDS, ent)
            .map(|()| l.insert_reserved(usize::MAX, ent))
        {
            drop(l);
            // SAFETY: the watch was never published.
            unsafe { host.eventfd_unwatch(watch) };
            free_target();
            return Err(err);
        }
        Ok(())
    }

    fn deassign(&self, fd: i32, gsi: u32) -> KResult<()> {
        let e = self.host.eventfd_get(fd)?;
        let removed = {
            let mut l = self.list.lock();
            let i = l.as_slice().iter().position(|o| o.e == e && o.gsi == gsi);
            i.and_then(|i| l.remove(i))
        };
        // SAFETY: the reference from eventfd_get above.
        unsafe { self.host.eventfd_put(e) };
        if let Some(o) = removed {
            self.destroy(o);
        }
        Ok(())
    }

    /// Unwatches (waiting for a running callback), drops the notifier and frees the target.
    fn destroy(&self, o: Ent) {
        // SAFETY: the entry left the list, so nobody else unwatches or puts it.
        unsafe {
            self.host.eventfd_unwatch(o.watch);
            self.host.eventfd_put(o.e);
            drop(HBox::from_raw(self.host, o.target));
        }
    }

    /// Removes every irqfd (close of the VM descriptor, VM teardown): on return no callback
    /// runs for this VM any more. Idempotent.
    pub fn shutdown(&self) {
        loop {
            let o = self.list.lock().pop();
            match o {
                Some(o) => self.destroy(o),
                None => break,
            }
        }
    }

    /// Number of irqfds.
    pub fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Whether there is no irqfd.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<H: Host> Drop for IrqFds<H> {
    fn drop(&mut self) {
        // Normally empty already (Vm::put calls shutdown while the VM is intact).
        self.shutdown();
    }
}
