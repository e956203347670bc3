//! A mutex over a host lock (okvm.h `okvm_host_lock*`).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use crate::errno::{KResult, ENOMEM};
use crate::host::{Host, RawLock};

/// Data protected by a host lock (sleepable; never taken from interrupt context).
pub struct HMutex<T, H: Host> {
    lock: RawLock,
    host: &'static H,
    data: UnsafeCell<T>,
}

// SAFETY: access to data is serialized by the host lock.
unsafe impl<T: Send, H: Host> Send for HMutex<T, H> {}
// SAFETY: as above; &HMutex only gives access to T while the lock is held.
unsafe impl<T: Send, H: Host> Sync for HMutex<T, H> {}

impl<T, H: Host> HMutex<T, H> {
    /// Creates a mutex around `data`; `ENOMEM` if the host has no lock to give.
    pub fn new(host: &'static H, data: T) -> KResult<Self> {
        let lock = host.lock_alloc().ok_or(ENOMEM)?;
        Ok(Self {
            lock,
            host,
            data: UnsafeCell::new(data),
        })
    }

    /// Acquires the lock (may sleep).
    pub fn lock(&self) -> HGuard<'_, T, H> {
        self.host.lock(self.lock);
        HGuard { m: self }
    }

    /// The underlying host lock (for [`Host::sleep`]).
    pub fn raw(&self) -> RawLock {
        self.lock
    }

    /// Access without locking, through exclusive ownership.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<T, H: Host> Drop for HMutex<T, H> {
    fn drop(&mut self) {
        // SAFETY: &mut self proves nobody holds or uses the lock.
        unsafe { self.host.lock_free(self.lock) };
    }
}

/// Holds an [`HMutex`] until dropped.
pub struct HGuard<'a, T, H: Host> {
    m: &'a HMutex<T, H>,
}

impl<T, H: Host> Deref for HGuard<'_, T, H> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held for the guard's lifetime.
        unsafe { &*self.m.data.get() }
    }
}

impl<T, H: Host> DerefMut for HGuard<'_, T, H> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held for the guard's lifetime, giving exclusive access.
        unsafe { &mut *self.m.data.get() }
    }
}

impl<T, H: Host> Drop for HGuard<'_, T, H> {
    fn drop(&mut self) {
        self.m.host.unlock(self.m.lock);
    }
}
