//! Errors of second-level table operations.

use core::fmt;

/// Why a second-level table operation was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// [`crate::TableMemory::alloc_page`] returned `None`.
    OutOfMemory,
    /// A GPA range is not 4 KiB aligned, overflows, or reaches beyond the table's guest-physical
    /// address width.
    InvalidGpaRange,
    /// A host physical range is not 4 KiB aligned, overflows, or reaches beyond MAXPHYADDR.
    InvalidHpa,
    /// `map` found a translation already present at this GPA (4 KiB aligned) inside the range.
    AlreadyMapped(u64),
    /// A permission set the format cannot express: every translation must be readable
    /// (execute-only and write-only are not supported), and an NPT table without NX
    /// (host EFER.NXE clear) cannot express a non-executable page.
    InvalidPermissions,
    /// NPT: the host PAT has no entry with the requested memory type; or `ignore_pat` requested
    /// (nested paging always combines with the guest PAT).
    MemTypeUnavailable,
    /// Dirty harvesting needs hardware dirty flags: EPT without accessed/dirty flags has none.
    NoDirtyTracking,
    /// A bitmap too short for the range it must describe (one bit per 4 KiB page).
    BitmapTooSmall,
    /// The table was torn down; only [`crate::Table::finish_invalidation`] is still meaningful.
    TornDown,
    /// Invalid table configuration (address widths out of range).
    InvalidConfig,
    /// An entry changed in a way only software could change it while this table had exclusive
    /// software access (memory corruption); the operation stopped without touching that entry.
    Internal,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory => f.write_str("out of table pages"),
            Error::InvalidGpaRange => f.write_str("invalid guest-physical range"),
            Error::InvalidHpa => f.write_str("invalid host-physical address"),
            Error::AlreadyMapped(gpa) => write!(f, "guest-physical {gpa:#x} already mapped"),
            Error::InvalidPermissions => f.write_str("permissions not expressible"),
            Error::MemTypeUnavailable => f.write_str("memory type not available"),
            Error::NoDirtyTracking => f.write_str("no hardware dirty flags"),
            Error::BitmapTooSmall => f.write_str("dirty bitmap too small"),
            Error::TornDown => f.write_str("table torn down"),
            Error::InvalidConfig => f.write_str("invalid table configuration"),
            Error::Internal => f.write_str("table entry changed unexpectedly"),
        }
    }
}
