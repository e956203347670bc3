//! The guest page-table walker (SDM Vol. 3 chapter 4; APM Vol. 2 §5).
//!
//! One iterative walk serves every paging mode. The walk reads entries top-down, stops at the
//! first non-present entry (#PF, P=0) or reserved-bit violation (#PF, P=1 RSVD=1), accumulates
//! U/S, R/W and XD over all levels, checks the access rights of §4.6 (CR0.WP, SMEP, SMAP with
//! RFLAGS.AC and implicit accesses, NX, protection keys) and, only when the access is allowed,
//! sets the accessed flags of every entry used and the dirty flag of the leaf for writes with
//! compare-exchange on guest memory (as KVM does; a failed exchange restarts the walk).

use crate::guest_memory::{GuestMemory, NotRam};
use crate::pfec::{PageFault, PFEC_I, PFEC_P, PFEC_PK, PFEC_RSVD, PFEC_U, PFEC_W};
use crate::regs::{
    CpuModel, PagingMode, PagingRegs, CR0_WP, CR4_PKE, CR4_PKS, CR4_PSE, CR4_SMAP, CR4_SMEP,
    EFER_NXE,
};

/// Entry bit: present.
pub const PTE_P: u64 = 1 << 0;
/// Entry bit: read/write.
pub const PTE_RW: u64 = 1 << 1;
/// Entry bit: user/supervisor.
pub const PTE_US: u64 = 1 << 2;
/// Entry bit: page-level write-through.
pub const PTE_PWT: u64 = 1 << 3;
/// Entry bit: page-level cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// Entry bit: accessed.
pub const PTE_A: u64 = 1 << 5;
/// Entry bit: dirty (leaf entries).
pub const PTE_D: u64 = 1 << 6;
/// Entry bit: page size (PDE/PDPTE), or PAT in a 4 KiB PTE.
pub const PTE_PS: u64 = 1 << 7;
/// Entry bit: PAT in a 4 KiB PTE.
pub const PTE_PAT_4K: u64 = 1 << 7;
/// Entry bit: global (leaf entries).
pub const PTE_G: u64 = 1 << 8;
/// Entry bit: PAT in a 2 MiB / 4 MiB / 1 GiB leaf.
pub const PTE_PAT_LARGE: u64 = 1 << 12;
/// Entry bit: execute-disable (PAE-format entries with EFER.NXE = 1).
pub const PTE_XD: u64 = 1 << 63;

/// How many times a walk restarts after losing an A/D compare-exchange race before giving up.
const MAX_AD_RETRIES: u32 = 8;

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// One access to a linear address, with the state that decides its access rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// Current privilege level (0..=3).
    pub cpl: u8,
    /// An implicit supervisor-mode access (GDT/LDT/IDT/TSS, ...): supervisor regardless of CPL,
    /// and SMAP blocks it from user pages regardless of RFLAGS.AC.
    pub implicit: bool,
    /// RFLAGS.AC at the time of the access.
    pub ac: bool,
    /// Set accessed/dirty flags as the CPU would (false for debugger-style lookups such as
    /// `KVM_TRANSLATE`).
    pub update_ad: bool,
}

impl Access {
    /// An explicit access at `cpl` with RFLAGS.AC = `ac`, updating A/D flags.
    pub fn new(kind: AccessKind, cpl: u8, ac: bool) -> Self {
        Access {
            kind,
            cpl,
            implicit: false,
            ac,
            update_ad: true,
        }
    }

    /// An implicit supervisor-mode access (descriptor tables, TSS), updating A/D flags.
    pub fn implicit(kind: AccessKind) -> Self {
        Access {
            kind,
            cpl: 0,
            implicit: true,
            ac: false,
            update_ad: true,
        }
    }

    /// True for a user-mode access: CPL 3 and not implicit (SDM §4.6.1).
    pub fn is_user(&self) -> bool {
        self.cpl == 3 && !self.implicit
    }
}

/// Size of the page a translation lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB page (also reported when paging is off).
    Size4K,
    /// 2 MiB page (PAE/4-level/5-level PDE with PS = 1).
    Size2M,
    /// 4 MiB page (32-bit PDE with PS = 1 and CR4.PSE = 1).
    Size4M,
    /// 1 GiB page (4-level/5-level PDPTE with PS = 1).
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size4M => 1 << 22,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// The access rights the paging structures give a translation (combined over all levels),
/// before CPL, CR0.WP, SMEP, SMAP and protection keys are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// U/S = 1 in every entry: a user-mode address.
    pub user: bool,
    /// R/W = 1 in every entry.
    pub writable: bool,
    /// XD = 0 in every entry (or execute-disable not in effect).
    pub executable: bool,
}

/// Maximum number of paging-structure pages a walk reads (5-level paging).
pub const MAX_WALK_TABLES: usize = 5;

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address of the access.
    pub gpa: u64,
    /// Size of the page mapping it.
    pub page_size: PageSize,
    /// Rights given by the paging structures.
    pub perms: Permissions,
    /// Protection key of the leaf (bits 62:59; 0 outside IA-32e mode).
    pub pkey: u8,
    /// Leaf PAT/PCD/PWT memory-type selector, as PAT:PCD:PWT (0..=7).
    pub pat_index: u8,
    /// Leaf G flag.
    pub global: bool,
    /// Leaf D flag after the walk's own update (always true when paging is off: no D flag).
    pub dirty: bool,
    /// Guest-physical addresses of the paging-structure pages read, top-down (the PAE PDPT is
    /// not among them: its entries were cached at CR3 load). Empty when paging is off.
    pub tables: [u64; MAX_WALK_TABLES],
    /// Number of valid entries in `tables`.
    pub table_count: u8,
}

impl Translation {
    /// The paging-structure pages read, top-down.
    pub fn tables(&self) -> &[u64] {
        self.tables
            .get(..usize::from(self.table_count))
            .unwrap_or(&[])
    }
}

/// Why a walk did not produce a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The access faults: deliver #PF with this error code (CR2 = the linear address).
    PageFault(PageFault),
    /// A paging-structure entry lies outside guest RAM.
    NotRam(NotRam),
    /// Other writers kept changing the entries while A/D flags were being set; re-execute the
    /// instruction (the guest makes progress once the race ends).
    Contended,
}

/// Why PDPTEs could not be loaded (SDM §4.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdpteError {
    /// A present PDPTE has a reserved bit set: the CR3/CR0/CR4 write raises #GP(0).
    ReservedBit,
    /// The PDPT lies outside guest RAM.
    NotRam(NotRam),
}

/// Geometry of one paging-structure level.
#[derive(Clone, Copy)]
struct Level {
    /// Bit position of the lowest linear-address bit this level's index uses.
    shift: u32,
    /// Index mask (entries - 1).
    index_mask: u64,
    /// Entry size in bytes (4 or 8).
    entry_bytes: u64,
    /// Level number: 1 = PT, 2 = PD, 3 = PDPT, 4 = PML4, 5 = PML5.
    number: u8,
}

/// Levels walked in memory for a mode, top-down (the PAE PDPT comes from the cache).
fn levels(mode: PagingMode) -> &'static [Level] {
    const fn l64(number: u8) -> Level {
        Level {
            shift: 12 + 9 * (number as u32 - 1),
            index_mask: 511,
            entry_bytes: 8,
            number,
        }
    }
    const L32: [Level; 2] = [
        Level {
            shift: 22,
            index_mask: 1023,
            entry_bytes: 4,
            number: 2,
        },
        Level {
            shift: 12,
            index_mask: 1023,
            entry_bytes: 4,
            number: 1,
        },
    ];
    const L5: [Level; 5] = [l64(5), l64(4), l64(3), l64(2), l64(1)];
    match mode {
        PagingMode::Off => &[],
        PagingMode::Bits32 => &L32,
        PagingMode::Pae => L5.get(3..).unwrap_or(&[]),
        PagingMode::Level4 => L5.get(1..).unwrap_or(&[]),
        PagingMode::Level5 => &L5,
    }
}

/// Linear-address index and shift facts of each guest level, for callers tracking dependencies:
/// `(shift, index_mask, entry_bytes)` top-down, in the same order as [`Translation::tables`].
pub fn level_geometry(mode: PagingMode) -> impl Iterator<Item = (u32, u64, u64)> {
    levels(mode)
        .iter()
        .map(|l| (l.shift, l.index_mask, l.entry_bytes))
}

/// Reads the entry of `bytes` (4 or 8) at `gpa` through the aligned 64-bit word containing it.
fn read_entry(mem: &dyn GuestMemory, gpa: u64, bytes: u64) -> Result<u64, NotRam> {
    let word = mem.read_u64(gpa & !7).map_err(|_| NotRam { gpa })?;
    Ok(if bytes == 4 {
        (word >> ((gpa & 4) * 8)) & 0xFFFF_FFFF
    } else {
        word
    })
}

/// Sets `bits` in the entry at `gpa` if it still equals `old`. Ok(false) when it changed.
fn set_entry_bits(
    mem: &dyn GuestMemory,
    gpa: u64,
    bytes: u64,
    old: u64,
    bits: u64,
) -> Result<bool, NotRam> {
    let aligned = gpa & !7;
    if bytes == 4 {
        let shift = (gpa & 4) * 8;
        let word = mem.read_u64(aligned)?;
        if (word >> shift) & 0xFFFF_FFFF != old {
            return Ok(false);
        }
        mem.cmpxchg_u64(aligned, word, word | (bits << shift))
    } else {
        mem.cmpxchg_u64(aligned, old, old | bits)
    }
}

/// Mask of bits `hi..=lo` (inclusive), empty when `hi < lo`.
fn bits(hi: u32, lo: u32) -> u64 {
    if hi < lo {
        0
    } else {
        (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
    }
}

/// Reserved bits of a PAE PDPTE (SDM Table 4-8).
fn pae_pdpte_reserved(cpu: &CpuModel) -> u64 {
    bits(2, 1) | bits(8, 5) | bits(63, cpu.maxphyaddr())
}

/// Loads the four PDPTEs for PAE paging from the PDPT that `cr3` points to, as MOV to CR3 (and
/// the CR0/CR4 writes that enter PAE paging) do. A present PDPTE with a reserved bit → #GP.
pub fn load_pdptes(
    mem: &dyn GuestMemory,
    cr3: u64,
    cpu: &CpuModel,
) -> Result<[u64; 4], PdpteError> {
    let base = cr3 & 0xFFFF_FFE0;
    let mut out = [0u64; 4];
    for (i, slot) in (0u64..).zip(out.iter_mut()) {
        let e = mem.read_u64(base + i * 8).map_err(PdpteError::NotRam)?;
        if e & PTE_P != 0 && e & pae_pdpte_reserved(cpu) != 0 {
            return Err(PdpteError::ReservedBit);
        }
        *slot = e;
    }
    Ok(out)
}

/// Reserved bits of a present entry at `level`, given whether it is a large leaf (PS = 1).
/// `None` means the entry's PS bit itself is reserved (it would map a page size the mode or CPU
/// does not have).
fn reserved_bits(mode: PagingMode, level: u8, ps: bool, nxe: bool, cpu: &CpuModel) -> Option<u64> {
    let m = cpu.maxphyaddr();
    if mode == PagingMode::Bits32 {
        // 32-bit paging: only a 4 MiB PDE has reserved bits (bit 21 and address bits 39:32
        // beyond MAXPHYADDR, which PSE-36 stores in bits 20:13).
        if level == 2 && ps {
            let m40 = m.min(40);
            return Some(bits(21, 21) | bits(20, 13 + (m40 - 32)));
        }
        return Some(0);
    }
    let high = if mode == PagingMode::Pae {
        bits(62, m)
    } else {
        bits(51, m)
    };
    let xd = if nxe { 0 } else { PTE_XD };
    let large = match (level, ps) {
        (_, false) => 0,
        (2, true) => bits(20, 13),
        (3, true) if mode.is_long() && cpu.gbpages => bits(29, 13),
        _ => return None,
    };
    Some(high | xd | large)
}

/// The walk state of one attempt, before permission checks.
struct Walked {
    gpa: u64,
    page_size: PageSize,
    perms: Permissions,
    leaf: u64,
    /// (entry gpa, entry value, entry bytes) of every entry used, top-down.
    used: [(u64, u64, u64); MAX_WALK_TABLES],
    used_count: usize,
    tables: [u64; MAX_WALK_TABLES],
}

/// Translates `la` for `access` under `regs`, setting A/D flags in guest memory.
///
/// The linear address is taken as the CPU's page walk takes it: bits 31:0 outside IA-32e mode,
/// bits 47:0 (4-level) or 56:0 (5-level) otherwise. Canonicality and segmentation are the
/// caller's business (#GP/#SS come before paging).
pub fn walk(
    mem: &dyn GuestMemory,
    regs: &PagingRegs,
    cpu: &CpuModel,
    access: &Access,
    la: u64,
) -> Result<Translation, WalkError> {
    let mode = regs.mode();
    if mode == PagingMode::Off {
        return Ok(Translation {
            gpa: la & 0xFFFF_FFFF,
            page_size: PageSize::Size4K,
            perms: Permissions {
                user: true,
                writable: true,
                executable: true,
            },
            pkey: 0,
            pat_index: 0,
            global: false,
            dirty: true,
            tables: [0; MAX_WALK_TABLES],
            table_count: 0,
        });
    }
    let base_ec = base_error_code(regs, access);
    for _ in 0..MAX_AD_RETRIES {
        let w = walk_once(mem, regs, cpu, la, base_ec)?;
        let (pkey, pk_fault) = protection_key(regs, mode, access, &w);
        if let Some(ec) = rights_violation(regs, access, &w.perms) {
            let pk = if pk_fault { PFEC_PK } else { 0 };
            return Err(WalkError::PageFault(PageFault {
                error_code: ec | base_ec | pk,
            }));
        }
        if pk_fault {
            return Err(WalkError::PageFault(PageFault {
                error_code: PFEC_P | PFEC_PK | base_ec,
            }));
        }
        let write = access.kind == AccessKind::Write;
        if access.update_ad && !set_accessed_dirty(mem, &w, write).map_err(WalkError::NotRam)? {
            continue;
        }
        let leaf = w.leaf;
        let large = w.page_size != PageSize::Size4K;
        let pat = if large {
            leaf & PTE_PAT_LARGE != 0
        } else {
            leaf & PTE_PAT_4K != 0
        };
        return Ok(Translation {
            gpa: w.gpa,
            page_size: w.page_size,
            perms: w.perms,
            pkey,
            pat_index: (u8::from(pat) << 2) | ((leaf >> 3) & 3) as u8,
            global: leaf & PTE_G != 0,
            dirty: leaf & PTE_D != 0 || (write && access.update_ad),
            tables: w.tables,
            table_count: w.used_count as u8,
        });
    }
    Err(WalkError::Contended)
}

/// The error-code bits that describe the access itself: W/R, U/S and I/D (§4.7).
fn base_error_code(regs: &PagingRegs, access: &Access) -> u32 {
    let mut ec = 0;
    if access.kind == AccessKind::Write {
        ec |= PFEC_W;
    }
    if access.is_user() {
        ec |= PFEC_U;
    }
    let nx_pae = regs.mode().is_pae_format() && regs.efer & EFER_NXE != 0;
    if access.kind == AccessKind::Fetch && (regs.cr4 & CR4_SMEP != 0 || nx_pae) {
        ec |= PFEC_I;
    }
    ec
}

/// Walks the paging structures once: the leaf, the accumulated rights and the entries used.
fn walk_once(
    mem: &dyn GuestMemory,
    regs: &PagingRegs,
    cpu: &CpuModel,
    la: u64,
    base_ec: u32,
) -> Result<Walked, WalkError> {
    let mode = regs.mode();
    let nxe = regs.nx_enabled();
    let not_present = WalkError::PageFault(PageFault {
        error_code: base_ec,
    });
    let rsvd = WalkError::PageFault(PageFault {
        error_code: base_ec | PFEC_P | PFEC_RSVD,
    });
    let addr_mask = cpu.addr_mask();
    let mut table = match mode {
        PagingMode::Bits32 => regs.cr3 & 0xFFFF_F000,
        PagingMode::Pae => {
            let idx = ((la >> 30) & 3) as usize;
            let pdpte = regs.pdptes.get(idx).copied().unwrap_or(0);
            if pdpte & PTE_P == 0 {
                return Err(not_present);
            }
            if pdpte & pae_pdpte_reserved(cpu) != 0 {
                return Err(rsvd);
            }
            pdpte & addr_mask
        }
        _ => regs.cr3 & addr_mask,
    };
    let mut w = Walked {
        gpa: 0,
        page_size: PageSize::Size4K,
        perms: Permissions {
            user: true,
            writable: true,
            executable: true,
        },
        leaf: 0,
        used: [(0, 0, 0); MAX_WALK_TABLES],
        used_count: 0,
        tables: [0; MAX_WALK_TABLES],
    };
    for lv in levels(mode) {
        let entry_gpa = table + ((la >> lv.shift) & lv.index_mask) * lv.entry_bytes;
        let e = read_entry(mem, entry_gpa, lv.entry_bytes).map_err(WalkError::NotRam)?;
        if e & PTE_P == 0 {
            return Err(not_present);
        }
        let ps_allowed = lv.number == 2 || lv.number == 3;
        let ps = ps_allowed
            && e & PTE_PS != 0
            && (mode != PagingMode::Bits32 || regs.cr4 & CR4_PSE != 0);
        let ps_bit_reserved = lv.number >= 4 && e & PTE_PS != 0;
        match reserved_bits(mode, lv.number, ps, nxe, cpu) {
            Some(r) if e & r == 0 && !ps_bit_reserved => {}
            _ => return Err(rsvd),
        }
        w.perms.user &= e & PTE_US != 0;
        w.perms.writable &= e & PTE_RW != 0;
        w.perms.executable &= !(nxe && e & PTE_XD != 0);
        if let (Some(slot), Some(t)) =
            (w.used.get_mut(w.used_count), w.tables.get_mut(w.used_count))
        {
            *slot = (entry_gpa, e, lv.entry_bytes);
            *t = table;
        }
        w.used_count += 1;
        if lv.number == 1 || ps {
            w.leaf = e;
            let (size, frame) = leaf_frame(mode, lv.number, e, addr_mask);
            w.page_size = size;
            w.gpa = frame | (la & (size.bytes() - 1));
            return Ok(w);
        }
        table = e & addr_mask;
        if mode == PagingMode::Bits32 {
            table &= 0xFFFF_F000;
        }
    }
    // Every mode's last level is a PT, which always ends the loop above.
    Err(not_present)
}

/// Page size and frame base of a leaf entry found at `level`.
fn leaf_frame(mode: PagingMode, level: u8, e: u64, addr_mask: u64) -> (PageSize, u64) {
    match (mode, level) {
        (PagingMode::Bits32, 1) => (PageSize::Size4K, e & 0xFFFF_F000),
        (PagingMode::Bits32, _) => {
            // PSE-36: bits 20:13 hold physical-address bits 39:32 (bits beyond MAXPHYADDR
            // are reserved and already rejected).
            (
                PageSize::Size4M,
                (e & 0xFFC0_0000) | (((e >> 13) & 0xFF) << 32),
            )
        }
        (_, 1) => (PageSize::Size4K, e & addr_mask),
        (_, 2) => (PageSize::Size2M, e & addr_mask & !((1 << 21) - 1)),
        _ => (PageSize::Size1G, e & addr_mask & !((1 << 30) - 1)),
    }
}

/// If the access violates the rights of §4.6.1 (ignoring protection keys), the P flag to report.
fn rights_violation(regs: &PagingRegs, access: &Access, perms: &Permissions) -> Option<u32> {
    let wp = regs.cr0 & CR0_WP != 0;
    let smep = regs.cr4 & CR4_SMEP != 0;
    let smap_blocks = regs.cr4 & CR4_SMAP != 0 && (access.implicit || !access.ac);
    let user = access.is_user();
    let allowed = match access.kind {
        AccessKind::Fetch => {
            let mode_ok = if user {
                perms.user
            } else {
                !(smep && perms.user)
            };
            mode_ok && perms.executable
        }
        AccessKind::Read => {
            if user {
                perms.user
            } else {
                !(perms.user && smap_blocks)
            }
        }
        AccessKind::Write => {
            if user {
                perms.user && perms.writable
            } else {
                !(perms.user && smap_blocks) && (perms.writable || !wp)
            }
        }
    };
    if allowed {
        None
    } else {
        Some(PFEC_P)
    }
}

/// The leaf's protection key and whether it forbids the access (§4.6.2). Keys exist only in
/// IA-32e mode; they never apply to instruction fetches.
fn protection_key(regs: &PagingRegs, mode: PagingMode, access: &Access, w: &Walked) -> (u8, bool) {
    if !mode.is_long() {
        return (0, false);
    }
    let pkey = ((w.leaf >> 59) & 0xF) as u8;
    if access.kind == AccessKind::Fetch {
        return (pkey, false);
    }
    let reg = if w.perms.user {
        (regs.cr4 & CR4_PKE != 0).then_some(regs.pkru)
    } else {
        (regs.cr4 & CR4_PKS != 0).then_some(regs.pkrs)
    };
    let Some(reg) = reg else {
        return (pkey, false);
    };
    let rights = reg >> (2 * u32::from(pkey));
    let access_disabled = rights & 1 != 0;
    let write_disabled = rights & 2 != 0;
    let write_checked =
        access.kind == AccessKind::Write && (access.is_user() || regs.cr0 & CR0_WP != 0);
    (pkey, access_disabled || (write_disabled && write_checked))
}

/// Sets A in every entry used and D in the leaf for writes. Ok(false) when an entry changed
/// under us (the walk must restart).
fn set_accessed_dirty(mem: &dyn GuestMemory, w: &Walked, write: bool) -> Result<bool, NotRam> {
    let used = w.used.get(..w.used_count).unwrap_or(&[]);
    for (i, &(gpa, e, bytes)) in used.iter().enumerate() {
        let is_leaf = i + 1 == w.used_count;
        let mut set = PTE_A;
        if is_leaf && write {
            set |= PTE_D;
        }
        if e & set != set && !set_entry_bits(mem, gpa, bytes, e, set)? {
            return Ok(false);
        }
    }
    Ok(true)
}
