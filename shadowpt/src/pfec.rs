//! Page-fault error codes (SDM Vol. 3 §4.7, Figure 4-12).

/// P: 0 = non-present page, 1 = protection violation (or reserved bit).
pub const PFEC_P: u32 = 1 << 0;
/// W/R: the access was a write.
pub const PFEC_W: u32 = 1 << 1;
/// U/S: the access was a user-mode access (CPL 3 and not an implicit supervisor access).
pub const PFEC_U: u32 = 1 << 2;
/// RSVD: a reserved bit was set in a paging-structure entry.
pub const PFEC_RSVD: u32 = 1 << 3;
/// I/D: instruction fetch (only reported when CR4.SMEP = 1 or CR4.PAE = EFER.NXE = 1).
pub const PFEC_I: u32 = 1 << 4;
/// PK: protection-key violation.
pub const PFEC_PK: u32 = 1 << 5;

/// A #PF to deliver to the guest: the error code (CR2 is the linear address the caller walked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The error code pushed by the #PF.
    pub error_code: u32,
}
