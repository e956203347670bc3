//! How the walker reads and updates guest paging structures.

/// A guest-physical address that is not backed by guest RAM (no memslot). The caller turns it into
/// an exit (KVM hardware does the same for page tables outside memslots: it is not a #PF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRam {
    /// The offending guest-physical address.
    pub gpa: u64,
}

/// Guest-physical memory as the page walker sees it.
///
/// Addresses passed are always 8-byte aligned: 32-bit entries are read and updated through the
/// aligned 64-bit word that contains them. Implementations must perform the accesses atomically
/// (other vCPUs update the same entries concurrently).
pub trait GuestMemory {
    /// Reads the aligned 64-bit word at `gpa`.
    fn read_u64(&self, gpa: u64) -> Result<u64, NotRam>;

    /// Atomically replaces the word at `gpa` with `new` if it still equals `old`.
    /// Returns `Ok(true)` on success, `Ok(false)` if the word had changed.
    fn cmpxchg_u64(&self, gpa: u64, old: u64, new: u64) -> Result<bool, NotRam>;
}
