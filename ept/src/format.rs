//! The two entry formats behind one interface: encode and decode leaves and table references.

use crate::{ept_entry as ept, x86_entry as x86, Error};

bitflags::bitflags! {
    /// Access rights of a guest-physical translation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u8 {
        /// Reads (and, for NPT, any access: a present entry is readable).
        const READ = 1 << 0;
        /// Writes.
        const WRITE = 1 << 1;
        /// Instruction fetches.
        const EXEC = 1 << 2;
    }
}

/// Memory types (encodings shared by the EPT memory-type field and IA32_PAT entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemType {
    /// Uncacheable (UC).
    Uncacheable = 0,
    /// Write-combining (WC).
    WriteCombining = 1,
    /// Write-through (WT).
    WriteThrough = 4,
    /// Write-protected (WP).
    WriteProtected = 5,
    /// Write-back (WB).
    WriteBack = 6,
}

impl MemType {
    /// The memory type an EPT memory-type field or PAT entry encodes; `None` for reserved values
    /// and for PAT's UC-.
    pub fn from_bits(bits: u8) -> Option<MemType> {
        match bits {
            0 => Some(MemType::Uncacheable),
            1 => Some(MemType::WriteCombining),
            4 => Some(MemType::WriteThrough),
            5 => Some(MemType::WriteProtected),
            6 => Some(MemType::WriteBack),
            _ => None,
        }
    }
}

/// Attributes of a mapping: rights, memory type and (EPT only) whether the guest PAT is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// Access rights; must include [`Perms::READ`].
    pub perms: Perms,
    /// Memory type (EPT: leaf bits 5:3; NPT: the host PAT entry selected by PWT/PCD/PAT).
    pub mem_type: MemType,
    /// EPT leaf bit 6 (ignore PAT). Not available with NPT.
    pub ignore_pat: bool,
}

/// Size of the page a leaf maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB (PTE).
    Size4K,
    /// 2 MiB (PDE with the large-page bit).
    Size2M,
    /// 1 GiB (PDPTE with the large-page bit).
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// Paging-structure level whose entries map pages of this size (1 = page table).
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The page size mapped by a leaf at `level` (1..=3).
    pub const fn from_level(level: u8) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

/// Number of paging-structure levels (4-level EPT / long-mode nested paging; 5-level is unsupported).
pub const LEVELS: u8 = 4;

/// Bytes of guest-physical space one entry at `level` (1..=4) covers.
pub const fn entry_span(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// TLB invalidation the caller must perform before the change is guaranteed visible to the guest
/// and before releasing any host page or table page the change detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Invalidation {
    /// Nothing cached can be stale (only not-present entries became present, or rights were
    /// added: a stale, less permissive cached entry at worst causes one spurious EPT violation /
    /// nested page fault, which the core resolves by retrying).
    None,
    /// INVEPT single-context with this table's EPTP on every CPU that may have used it.
    InveptSingleContext,
    /// Flush the guest's ASID (VMCB TLB_CONTROL) on every CPU that may have used this table.
    NptFlushAsid,
}

/// Decoded contents of a present leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Host-physical base of the page.
    pub hpa: u64,
    /// Rights, memory type, ignore-PAT.
    pub attrs: Attrs,
    /// Hardware accessed flag.
    pub accessed: bool,
    /// Hardware dirty flag.
    pub dirty: bool,
}

/// What an entry at a given level is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Not present.
    Empty,
    /// References a lower-level table at this physical address.
    Table(u64),
    /// Maps a page.
    Leaf,
}

/// Entry format of a second-level table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Intel EPT; `accessed_dirty` when EPTP bit 6 will be set (requires IA32_VMX_EPT_VPID_CAP bit 21).
    Ept {
        /// Accessed/dirty flags enabled.
        accessed_dirty: bool,
    },
    /// AMD nested paging (long-mode format).
    Npt {
        /// Host EFER.NXE is set, so bit 63 means no-execute (otherwise it is reserved and every
        /// mapping must be executable).
        nx: bool,
        /// The host's IA32_PAT value: memory types are selected by PAT index into it.
        host_pat: u64,
    },
}

impl Format {
    /// The invalidation this format needs after a change that can leave stale cached entries.
    pub fn flush(&self) -> Invalidation {
        match self {
            Format::Ept { .. } => Invalidation::InveptSingleContext,
            Format::Npt { .. } => Invalidation::NptFlushAsid,
        }
    }

    /// The value the hardware is given for a table whose root (PML4) is at `root_pa`: the EPTP
    /// (write-back walks, 4 levels, A/D per format) or the VMCB nCR3 (PWT = PCD = 0, so the walk
    /// uses host PAT entry 0).
    pub fn root_pointer(&self, root_pa: u64) -> u64 {
        match self {
            Format::Ept { accessed_dirty } => ept::eptp(root_pa, *accessed_dirty),
            Format::Npt { .. } => root_pa & x86::ADDR_MASK,
        }
    }

    /// The hardware dirty flag of a leaf, if this format has one.
    pub fn dirty_bit(&self) -> Option<u64> {
        match self {
            Format::Ept { accessed_dirty: true } => Some(ept::DIRTY),
            Format::Ept { accessed_dirty: false } => None,
            Format::Npt { .. } => Some(x86::DIRTY),
        }
    }

    /// An entry referencing the lower-level table at `child_pa`: all rights granted (the leaf
    /// decides), NPT with U/S set because nested walks are user accesses.
    pub fn table_entry(&self, child_pa: u64) -> u64 {
        match self {
            Format::Ept { .. } => (child_pa & ept::ADDR_MASK) | ept::RWX,
            Format::Npt { .. } => (child_pa & x86::ADDR_MASK) | x86::PRESENT | x86::WRITABLE | x86::USER,
        }
    }

    /// Checks that `attrs` are expressible in this format (see [`Error::InvalidPermissions`],
    /// [`Error::MemTypeUnavailable`]).
    pub fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        if !attrs.perms.contains(Perms::READ) {
            return Err(Error::InvalidPermissions);
        }
        match self {
            Format::Ept { .. } => Ok(()),
            Format::Npt { nx, host_pat } => {
                if !nx && !attrs.perms.contains(Perms::EXEC) {
                    return Err(Error::InvalidPermissions);
                }
                if attrs.ignore_pat || npt_pat_index(*host_pat, attrs.mem_type).is_none() {
                    return Err(Error::MemTypeUnavailable);
                }
                Ok(())
            }
        }
    }

    /// A leaf at `level` (1..=3) mapping `hpa` (aligned to the level's page size) with `attrs`,
    /// accessed and dirty flags as given (they are set only when splitting a large leaf).
    pub fn leaf_entry(&self, level: u8, hpa: u64, attrs: &Attrs, accessed: bool, dirty: bool) -> Result<u64, Error> {
        self.check_attrs(attrs)?;
        Ok(self.encode_leaf(level, hpa, attrs, accessed, dirty))
    }

    /// [`Format::leaf_entry`] for attributes already checked with [`Format::check_attrs`] (an
    /// unavailable NPT memory type falls back to PAT index 0).
    pub(crate) fn encode_leaf(&self, level: u8, hpa: u64, attrs: &Attrs, accessed: bool, dirty: bool) -> u64 {
        let large = level > 1;
        match self {
            Format::Ept { accessed_dirty } => {
                let mut e = (hpa & ept::ADDR_MASK) | self.perm_bits(attrs.perms);
                e |= u64::from(attrs.mem_type as u8) << ept::MEMTYPE_SHIFT;
                if attrs.ignore_pat {
                    e |= ept::IGNORE_PAT;
                }
                if large {
                    e |= ept::LARGE_PAGE;
                }
                if *accessed_dirty && accessed {
                    e |= ept::ACCESSED;
                }
                if *accessed_dirty && dirty {
                    e |= ept::DIRTY;
                }
                e
            }
            Format::Npt { host_pat, .. } => {
                let index = npt_pat_index(*host_pat, attrs.mem_type).unwrap_or(0);
                let mut e = (hpa & x86::ADDR_MASK) | self.perm_bits(attrs.perms) | x86::pat_bits(index, large);
                if large {
                    e |= x86::PAGE_SIZE;
                }
                if accessed {
                    e |= x86::ACCESSED;
                }
                if dirty {
                    e |= x86::DIRTY;
                }
                e
            }
        }
    }

    /// Leaf bits encoding `perms` (READ assumed present): EPT R/W/X; NPT P|U/S, R/W, and NX when
    /// EXEC is absent and the format has NX.
    fn perm_bits(&self, perms: Perms) -> u64 {
        match self {
            Format::Ept { .. } => {
                let mut e = ept::READ;
                if perms.contains(Perms::WRITE) {
                    e |= ept::WRITE;
                }
                if perms.contains(Perms::EXEC) {
                    e |= ept::EXEC;
                }
                e
            }
            Format::Npt { nx, .. } => {
                let mut e = x86::PRESENT | x86::USER;
                if perms.contains(Perms::WRITE) {
                    e |= x86::WRITABLE;
                }
                if *nx && !perms.contains(Perms::EXEC) {
                    e |= x86::NO_EXEC;
                }
                e
            }
        }
    }

    /// Mask of every rights bit [`Format::perm_bits`] may set or clear in a leaf.
    fn perm_mask(&self) -> u64 {
        match self {
            Format::Ept { .. } => ept::RWX,
            Format::Npt { nx, .. } => {
                x86::PRESENT | x86::USER | x86::WRITABLE | if *nx { x86::NO_EXEC } else { 0 }
            }
        }
    }

    /// `leaf` with its rights replaced by `perms`, every other bit (address, memory type, A/D)
    /// kept. `perms` must have been checked with [`Format::check_attrs`].
    pub fn with_perms(&self, leaf: u64, perms: Perms) -> u64 {
        (leaf & !self.perm_mask()) | self.perm_bits(perms)
    }

    /// Classifies `raw`, an entry of a level-`level` table (4 = PML4).
    pub fn kind(&self, raw: u64, level: u8) -> Kind {
        let (present, large, addr) = match self {
            Format::Ept { .. } => (raw & ept::RWX != 0, raw & ept::LARGE_PAGE != 0, raw & ept::ADDR_MASK),
            Format::Npt { .. } => (raw & x86::PRESENT != 0, raw & x86::PAGE_SIZE != 0, raw & x86::ADDR_MASK),
        };
        if !present {
            Kind::Empty
        } else if level == 1 || (level <= 3 && large) {
            Kind::Leaf
        } else {
            Kind::Table(addr)
        }
    }

    /// Decodes a present leaf at `level` (1..=3) written by this crate.
    pub fn decode_leaf(&self, raw: u64, level: u8) -> Leaf {
        let large = level > 1;
        let size_mask = entry_span(level) - 1;
        match self {
            Format::Ept { accessed_dirty } => {
                let mut perms = Perms::empty();
                perms.set(Perms::READ, raw & ept::READ != 0);
                perms.set(Perms::WRITE, raw & ept::WRITE != 0);
                perms.set(Perms::EXEC, raw & ept::EXEC != 0);
                let mt = ((raw & ept::MEMTYPE_MASK) >> ept::MEMTYPE_SHIFT) as u8;
                Leaf {
                    hpa: raw & ept::ADDR_MASK & !size_mask,
                    attrs: Attrs {
                        perms,
                        // Only this crate writes leaves, always with a valid type.
                        mem_type: MemType::from_bits(mt).unwrap_or(MemType::Uncacheable),
                        ignore_pat: raw & ept::IGNORE_PAT != 0,
                    },
                    accessed: *accessed_dirty && raw & ept::ACCESSED != 0,
                    dirty: *accessed_dirty && raw & ept::DIRTY != 0,
                }
            }
            Format::Npt { nx, host_pat } => {
                let mut perms = Perms::READ;
                perms.set(Perms::WRITE, raw & x86::WRITABLE != 0);
                perms.set(Perms::EXEC, !(*nx && raw & x86::NO_EXEC != 0));
                let mt = x86::pat_entry_type(*host_pat, x86::pat_index(raw, large));
                Leaf {
                    // PAT_LARGE (bit 12) lies inside size_mask for large leaves.
                    hpa: raw & x86::ADDR_MASK & !size_mask,
                    attrs: Attrs {
                        perms,
                        mem_type: MemType::from_bits(mt).unwrap_or(MemType::Uncacheable),
                        ignore_pat: false,
                    },
                    accessed: raw & x86::ACCESSED != 0,
                    dirty: raw & x86::DIRTY != 0,
                }
            }
        }
    }
}

/// The lowest host PAT index whose memory type is exactly `mem_type`.
fn npt_pat_index(host_pat: u64, mem_type: MemType) -> Option<u8> {
    (0u8..8).find(|&i| x86::pat_entry_type(host_pat, i) == mem_type as u8)
}
