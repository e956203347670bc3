//! Copies between userspace and the core for `kvm_abi` types (never large values on the stack).

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::KResult;
use crate::hmem::HBox;
use crate::host::Host;

/// Largest struct [`read`] may return by value (the kernel stack is small).
pub const MAX_STACK_COPY: usize = 512;

/// Reads a small `T` from user address `uaddr` (`EFAULT` if unmapped).
pub fn read<T: FromBytes + IntoBytes, H: Host>(host: &H, uaddr: u64) -> KResult<T> {
    const { assert!(core::mem::size_of::<T>() <= MAX_STACK_COPY) };
    let mut v = T::new_zeroed();
    host.copyin(v.as_mut_bytes(), uaddr)?;
    Ok(v)
}

/// Reads a `T` of any size into the host heap.
pub fn read_boxed<T: FromBytes + IntoBytes, H: Host>(
    host: &'static H,
    uaddr: u64,
) -> KResult<HBox<T, H>> {
    let mut b = HBox::<T, H>::new_zeroed(host)?;
    host.copyin(b.as_mut_bytes(), uaddr)?;
    Ok(b)
}

/// Writes `v` to user address `uaddr` (`EFAULT` if unmapped or read-only).
pub fn write<T: IntoBytes + Immutable, H: Host>(host: &H, uaddr: u64, v: &T) -> KResult<()> {
    host.copyout(uaddr, v.as_bytes())
}
