//! Safe access to flexible-array structures (`kvm_msrs`, `kvm_cpuid2`, `kvm_irq_routing`...):
//! a fixed header followed by a count of entries, all in one byte buffer whose size userspace
//! controls.
//!
//! Every function here is bounds-checked with checked arithmetic and returns an error instead of
//! panicking, so the kernel can run it directly on a buffer copied from user memory.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Why a flexible-array buffer was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlexError {
    /// The buffer is shorter than the header plus the entries it announces.
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The entry count overflows `usize` arithmetic or exceeds the caller's limit.
    TooMany {
        /// Entries requested.
        count: usize,
        /// Largest count accepted.
        max: usize,
    },
}

/// A structure `H` followed by a flexible array of `E`, laid out as Linux does: the first entry
/// starts at `ENTRIES_OFFSET` (the C `offsetof` of the flexible member).
pub trait FlexArray: FromBytes + IntoBytes + Immutable + KnownLayout + Sized {
    /// Entry type of the flexible array.
    type Entry: FromBytes + IntoBytes + Immutable + KnownLayout + Sized;
    /// Byte offset of the first entry (equals `size_of::<Self>()` for every KVM structure).
    const ENTRIES_OFFSET: usize = core::mem::size_of::<Self>();
    /// Largest count the kernel accepts (Linux's limit for this structure where it has one).
    const MAX_ENTRIES: usize;
    /// Number of entries the header announces.
    fn count(&self) -> usize;
}

/// Bytes needed for a header plus `count` entries, or an error if `count > max` or on overflow.
pub fn byte_len<H: FlexArray>(count: usize) -> Result<usize, FlexError> {
    let too_many = FlexError::TooMany {
        count,
        max: H::MAX_ENTRIES,
    };
    if count > H::MAX_ENTRIES {
        return Err(too_many);
    }
    count
        .checked_mul(core::mem::size_of::<H::Entry>())
        .and_then(|b| b.checked_add(H::ENTRIES_OFFSET))
        .ok_or(too_many)
}

/// Reads the header at the start of `buf`.
pub fn read_header<H: FlexArray>(buf: &[u8]) -> Result<H, FlexError> {
    H::read_from_prefix(buf)
        .map(|(h, _)| h)
        .map_err(|_| FlexError::TooShort {
            needed: core::mem::size_of::<H>(),
            have: buf.len(),
        })
}

/// Reads entry `index` of the flexible array in `buf`, checking it lies inside `buf` (the count
/// in the header is not consulted: pass an index below a count you validated).
pub fn read_entry<H: FlexArray>(buf: &[u8], index: usize) -> Result<H::Entry, FlexError> {
    let start = entry_offset::<H>(index)?;
    let tail = buf.get(start..).ok_or(FlexError::TooShort {
        needed: start,
        have: buf.len(),
    })?;
    H::Entry::read_from_prefix(tail)
        .map(|(e, _)| e)
        .map_err(|_| FlexError::TooShort {
            needed: start.saturating_add(core::mem::size_of::<H::Entry>()),
            have: buf.len(),
        })
}

/// Writes entry `index` of the flexible array in `buf`.
pub fn write_entry<H: FlexArray>(
    buf: &mut [u8],
    index: usize,
    entry: &H::Entry,
) -> Result<(), FlexError> {
    let start = entry_offset::<H>(index)?;
    let have = buf.len();
    let size = core::mem::size_of::<H::Entry>();
    let end = start.checked_add(size).ok_or(FlexError::TooMany {
        count: index,
        max: H::MAX_ENTRIES,
    })?;
    let dst = buf
        .get_mut(start..end)
        .ok_or(FlexError::TooShort { needed: end, have })?;
    dst.copy_from_slice(entry.as_bytes());
    Ok(())
}

/// Writes the header at the start of `buf`.
pub fn write_header<H: FlexArray>(buf: &mut [u8], header: &H) -> Result<(), FlexError> {
    let have = buf.len();
    let size = core::mem::size_of::<H>();
    let dst = buf
        .get_mut(..size)
        .ok_or(FlexError::TooShort { needed: size, have })?;
    dst.copy_from_slice(header.as_bytes());
    Ok(())
}

/// Validates `buf` as a header announcing `count()` entries (at most `MAX_ENTRIES`) that all fit
/// in `buf`, and returns the header and that count (for [`read_entry`] / [`entries`]).
pub fn parse<H: FlexArray>(buf: &[u8]) -> Result<(H, usize), FlexError> {
    let header = read_header::<H>(buf)?;
    let count = header.count();
    let needed = byte_len::<H>(count)?;
    if buf.len() < needed {
        return Err(FlexError::TooShort {
            needed,
            have: buf.len(),
        });
    }
    Ok((header, count))
}

/// Iterates over the first `count` entries of `buf` (which [`parse`] validated); stops early and
/// yields nothing more if an entry would run past the buffer.
pub fn entries<H: FlexArray>(buf: &[u8], count: usize) -> impl Iterator<Item = H::Entry> + '_ {
    (0..count).map_while(move |i| read_entry::<H>(buf, i).ok())
}

fn entry_offset<H: FlexArray>(index: usize) -> Result<usize, FlexError> {
    index
        .checked_mul(core::mem::size_of::<H::Entry>())
        .and_then(|o| o.checked_add(H::ENTRIES_OFFSET))
        .ok_or(FlexError::TooMany {
            count: index,
            max: H::MAX_ENTRIES,
        })
}

impl FlexArray for crate::kvm_msrs {
    type Entry = crate::kvm_msr_entry;
    /// Linux rejects `nmsrs >= MAX_IO_MSRS` (256) with `E2BIG`.
    const MAX_ENTRIES: usize = crate::MAX_IO_MSRS as usize - 1;
    fn count(&self) -> usize {
        self.nmsrs as usize
    }
}

impl FlexArray for crate::kvm_msr_list {
    type Entry = u32;
    /// Generous bound on the MSR index list.
    const MAX_ENTRIES: usize = 4096;
    fn count(&self) -> usize {
        self.nmsrs as usize
    }
}

impl FlexArray for crate::kvm_cpuid2 {
    type Entry = crate::kvm_cpuid_entry2;
    const MAX_ENTRIES: usize = crate::KVM_MAX_CPUID_ENTRIES as usize;
    fn count(&self) -> usize {
        self.nent as usize
    }
}

impl FlexArray for crate::kvm_cpuid {
    type Entry = crate::kvm_cpuid_entry;
    const MAX_ENTRIES: usize = crate::KVM_MAX_CPUID_ENTRIES as usize;
    fn count(&self) -> usize {
        self.nent as usize
    }
}

impl FlexArray for crate::kvm_irq_routing {
    type Entry = crate::kvm_irq_routing_entry;
    /// Linux's `KVM_MAX_IRQ_ROUTES`.
    const MAX_ENTRIES: usize = crate::KVM_MAX_IRQ_ROUTES as usize;
    fn count(&self) -> usize {
        self.nr as usize
    }
}

impl FlexArray for crate::kvm_signal_mask {
    type Entry = u8;
    /// A sigset is at most 128 bytes on any Unix.
    const MAX_ENTRIES: usize = 128;
    fn count(&self) -> usize {
        self.len as usize
    }
}

impl FlexArray for crate::kvm_pmu_event_filter {
    type Entry = u64;
    /// Linux's `KVM_PMU_EVENT_FILTER_MAX_EVENTS`.
    const MAX_ENTRIES: usize = crate::KVM_PMU_EVENT_FILTER_MAX_EVENTS as usize;
    fn count(&self) -> usize {
        self.nevents as usize
    }
}

impl FlexArray for crate::kvm_reg_list {
    type Entry = u64;
    /// Generous bound on the register list.
    const MAX_ENTRIES: usize = 4096;
    fn count(&self) -> usize {
        usize::try_from(self.n).unwrap_or(usize::MAX)
    }
}

/// `kvm_xsave` as transferred by `KVM_GET_XSAVE2`/`KVM_SET_XSAVE`: the 4 KiB `region` followed by
/// `extra` 32-bit words, `xsave2_size` bytes in all (`KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`).
/// Returns the number of `extra` words for a total size, or an error if the size is below 4096,
/// not a multiple of 4, or above `max`.
pub fn xsave_extra_words(xsave2_size: usize, max: usize) -> Result<usize, FlexError> {
    let base = core::mem::size_of::<crate::kvm_xsave>();
    if xsave2_size < base {
        return Err(FlexError::TooShort {
            needed: base,
            have: xsave2_size,
        });
    }
    if xsave2_size > max || !xsave2_size.is_multiple_of(4) {
        return Err(FlexError::TooMany {
            count: xsave2_size,
            max,
        });
    }
    Ok((xsave2_size - base) / 4)
}

/// Size in bytes of a `kvm_nested_state` blob of `format` with or without its data part
/// (`KVM_STATE_NESTED_FORMAT_VMX`: header + 8 KiB; SVM: header + 4 KiB), or `None` for an
/// unknown format.
pub fn nested_state_size(format: u16, with_data: bool) -> Option<usize> {
    let hdr = core::mem::size_of::<crate::kvm_nested_state>();
    let data = match format {
        crate::KVM_STATE_NESTED_FORMAT_VMX => {
            core::mem::size_of::<crate::kvm_vmx_nested_state_data>()
        }
        crate::KVM_STATE_NESTED_FORMAT_SVM => {
            core::mem::size_of::<crate::kvm_svm_nested_state_data>()
        }
        _ => return None,
    };
    Some(if with_data { hdr + data } else { hdr })
}

impl FlexArray for crate::kvm_coalesced_mmio_ring {
    type Entry = crate::kvm_coalesced_mmio;
    /// Entries that fit in one 4 KiB page after the header (Linux's `KVM_COALESCED_MMIO_MAX`).
    const MAX_ENTRIES: usize =
        (4096 - core::mem::size_of::<Self>()) / core::mem::size_of::<crate::kvm_coalesced_mmio>();
    fn count(&self) -> usize {
        Self::MAX_ENTRIES
    }
}
