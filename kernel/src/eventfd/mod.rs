//! Event notifiers bound to a VM (Linux `virt/kvm/eventfd.c`): `KVM_IOEVENTFD` (a guest write
//! signals a notifier instead of exiting to userspace) and `KVM_IRQFD` (a notifier signaled by
//! userspace or another kernel driver fires a GSI).
//!
//! - [`ioeventfd`]: per-VM tables of (bus, address, length, datamatch) → notifier, looked up on
//!   the vCPU path for every MMIO write and port output the core would otherwise hand to
//!   userspace.
//! - [`irqfd`]: per-VM list of (notifier, GSI) with a host watch on each notifier; the watch
//!   callback fires the GSI through [`crate::irqchip::set_gsi`].
//! - [`HVec`]: the small growable array in the host heap both use.
//!
//! The notifiers themselves are the host's (okvm.h `okvm_host_eventfd_*`): the core holds a
//! reference on each one it uses and compares references to find "the same eventfd".

pub mod ioeventfd;
pub mod irqfd;

use crate::errno::{KResult, ENOSPC};
use crate::hmem::HSlice;
use crate::host::Host;

/// A growable array of `Copy` values in the host heap, bounded by a caller-given maximum
/// (never larger than what userspace is allowed to register).
pub struct HVec<T: Copy, H: Host> {
    buf: Option<HSlice<T, H>>,
    len: usize,
}

impl<T: Copy, H: Host> Default for HVec<T, H> {
    fn default() -> Self {
        Self { buf: None, len: 0 }
    }
}

impl<T: Copy, H: Host> HVec<T, H> {
    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        self.buf
            .as_deref()
            .and_then(|b| b.get(..self.len))
            .unwrap_or(&[])
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for one more element (new slots hold `fill` until written): `ENOSPC` at
    /// `max` elements, `ENOMEM` when short.
    pub fn reserve_one(&mut self, host: &'static H, max: usize, fill: T) -> KResult<()> {
        if self.len >= max {
            return Err(ENOSPC);
        }
        let cap = self.buf.as_ref().map_or(0, |b| b.len());
        if self.len < cap {
            return Ok(());
        }
        let ncap = cap.saturating_mul(2).max(4).min(max);
        let old = self.as_slice();
        let n = HSlice::new_with(host, ncap, |i| old.get(i).copied().unwrap_or(fill))?;
        self.buf = Some(n);
        Ok(())
    }

    /// Inserts `v` at `i` (clamped to the length). Needs room ([`HVec::reserve_one`]):
    /// `false` (nothing inserted) without it.
    pub fn insert_reserved(&mut self, i: usize, v: T) -> bool {
        let len = self.len;
        let Some(tail) = self.buf.as_mut().and_then(|b| b.get_mut(i.min(len)..=len)) else {
            return false;
        };
        tail.rotate_right(1);
        if let Some(s) = tail.first_mut() {
            *s = v;
        }
        self.len += 1;
        true
    }

    /// Removes and returns the element at `i`; frees the buffer when the vector empties.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let len = self.len;
        let b = self.buf.as_mut()?;
        let tail = b.get_mut(i..len)?;
        let v = *tail.first()?;
        tail.rotate_left(1);
        self.len -= 1;
        if self.len == 0 {
            self.buf = None;
        }
        Some(v)
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T> {
        self.len.checked_sub(1).and_then(|i| self.remove(i))
    }
}
