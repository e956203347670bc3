//! The VM clock (`KVM_CAP_ADJUST_CLOCK`): `KVM_GET_CLOCK` / `KVM_SET_CLOCK`.
//!
//! Linux defines the clock as the VM's kvmclock: host monotonic time plus a per-VM offset,
//! 0 at VM creation; `KVM_SET_CLOCK` moves the offset so that the clock reads the given value
//! now and keeps counting from there (`kvm_vm_ioctl_set_clock` without a master clock). okvm
//! gives guests no kvmclock (no KVM paravirtual CPUID leaves, kvmclock MSRs only accept 0), so
//! this clock is what userspace saves and restores; it comes from one VM-wide monotonic source
//! (`Host::nanotime`), the same for every vCPU, which is what `KVM_CLOCK_TSC_STABLE` tells
//! userspace (QEMU then trusts `KVM_GET_CLOCK` instead of reading a guest pvclock page).
//!
//! Not offered: `KVM_CLOCK_REALTIME` (needs a wall-clock host service) and `KVM_CLOCK_HOST_TSC`
//! (needs a TSC read taken with the clock read); `KVM_SET_CLOCK` refuses them with `EINVAL`.

use core::sync::atomic::{AtomicU64, Ordering};

use kvm_abi::kvm_clock_data;
use zerocopy::FromZeros;

use crate::errno::{KResult, EINVAL};
use crate::host::Host;
use crate::user;

/// `KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK)`: the `kvm_clock_data.flags` bits supported.
pub const CLOCK_FLAGS: u32 = kvm_abi::KVM_CLOCK_TSC_STABLE;

/// A VM's clock offset (`[a]`: read and written atomically, no lock needed).
pub struct VmClock {
    /// Clock value minus host monotonic time, modulo 2^64 (Linux `kvmclock_offset`).
    offset: AtomicU64,
}

impl VmClock {
    /// A clock reading 0 at `now` (host monotonic nanoseconds).
    pub fn new(now: u64) -> Self {
        Self {
            offset: AtomicU64::new(0u64.wrapping_sub(now)),
        }
    }

    /// The clock at host time `now`.
    pub fn read(&self, now: u64) -> u64 {
        now.wrapping_add(self.offset.load(Ordering::Relaxed))
    }

    /// Makes the clock read `clock` at host time `now`.
    pub fn set(&self, clock: u64, now: u64) {
        self.offset
            .store(clock.wrapping_sub(now), Ordering::Relaxed);
    }

    /// `KVM_GET_CLOCK`.
    pub fn get_ioctl<H: Host>(&self, host: &'static H, arg: u64) -> KResult<i64> {
        let mut d = kvm_clock_data::new_zeroed();
        d.clock = self.read(host.nanotime());
        d.flags = kvm_abi::KVM_CLOCK_TSC_STABLE;
        user::write(host, arg, &d).map(|()| 0)
    }

    /// `KVM_SET_CLOCK`: `EINVAL` for flags outside [`CLOCK_FLAGS`] (`KVM_CLOCK_TSC_STABLE` is
    /// accepted and ignored, so `KVM_GET_CLOCK`'s result can be passed back, as in Linux).
    pub fn set_ioctl<H: Host>(&self, host: &'static H, arg: u64) -> KResult<i64> {
        let d: kvm_clock_data = user::read(host, arg)?;
        if d.flags & !CLOCK_FLAGS != 0 {
            return Err(EINVAL);
        }
        self.set(d.clock, host.nanotime());
        Ok(0)
    }
}
