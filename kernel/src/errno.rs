//! Error numbers the core returns, with Linux's values (the KVM ABI is Linux's).
//!
//! Entry points return `-errno` with these numbers; okvm.h repeats them as `OKVM_E*` so a glue on
//! an OS with different numbers (OpenBSD: `EAGAIN` 35, `ENOSYS` 78, ...) can translate them.

/// A Linux errno value (positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

/// Operation not permitted.
pub const EPERM: Errno = Errno(1);
/// No such file or directory (used by KVM for "no such slot / entry").
pub const ENOENT: Errno = Errno(2);
/// Interrupted system call (a signal is pending).
pub const EINTR: Errno = Errno(4);
/// I/O error (used by KVM when the caller is not the VM's process).
pub const EIO: Errno = Errno(5);
/// No such device or address.
pub const ENXIO: Errno = Errno(6);
/// Argument list too long (the buffer userspace passed is too small).
pub const E2BIG: Errno = Errno(7);
/// Bad file descriptor.
pub const EBADF: Errno = Errno(9);
/// Try again.
pub const EAGAIN: Errno = Errno(11);
/// Out of memory.
pub const ENOMEM: Errno = Errno(12);
/// Bad user address.
pub const EFAULT: Errno = Errno(14);
/// Device or resource busy.
pub const EBUSY: Errno = Errno(16);
/// Already exists (overlapping memslots, duplicate vCPU id).
pub const EEXIST: Errno = Errno(17);
/// No such device (no usable virtualization hardware).
pub const ENODEV: Errno = Errno(19);
/// Invalid argument.
pub const EINVAL: Errno = Errno(22);
/// Too many open files (descriptor installation failed).
pub const EMFILE: Errno = Errno(24);
/// Inappropriate ioctl for the descriptor.
pub const ENOTTY: Errno = Errno(25);
/// No space left (dirty ring, coalesced MMIO zones).
pub const ENOSPC: Errno = Errno(28);
/// Function not implemented.
pub const ENOSYS: Errno = Errno(38);
/// Operation not supported.
pub const EOPNOTSUPP: Errno = Errno(95);
/// Timer expired (host sleep with timeout).
pub const ETIMEDOUT: Errno = Errno(110);

/// Every errno value the core can return; okvm.h documents exactly this set.
pub const ALL: [(&str, Errno); 20] = [
    ("EPERM", EPERM),
    ("ENOENT", ENOENT),
    ("EINTR", EINTR),
    ("EIO", EIO),
    ("ENXIO", ENXIO),
    ("E2BIG", E2BIG),
    ("EBADF", EBADF),
    ("EAGAIN", EAGAIN),
    ("ENOMEM", ENOMEM),
    ("EFAULT", EFAULT),
    ("EBUSY", EBUSY),
    ("EEXIST", EEXIST),
    ("ENODEV", ENODEV),
    ("EINVAL", EINVAL),
    ("EMFILE", EMFILE),
    ("ENOTTY", ENOTTY),
    ("ENOSPC", ENOSPC),
    ("ENOSYS", ENOSYS),
    ("EOPNOTSUPP", EOPNOTSUPP),
    ("ETIMEDOUT", ETIMEDOUT),
];

/// Result type of core operations.
pub type KResult<T> = Result<T, Errno>;

/// Converts a result to the entry-point convention: a non-negative value or `-errno`.
pub fn to_ret(r: KResult<i64>) -> i64 {
    match r {
        Ok(v) => v,
        Err(e) => -i64::from(e.0),
    }
}

/// Converts a host return value (`0`/positive or `-errno`) to a result.
pub fn from_host(r: i64) -> KResult<i64> {
    if r < 0 {
        // Host errors outside i32 cannot occur; clamp to EINVAL rather than wrap.
        Err(Errno(i32::try_from(-r).unwrap_or(EINVAL.0)))
    } else {
        Ok(r)
    }
}
