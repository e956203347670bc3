//! The context the emulator runs against: guest registers, guest memory, MMIO and port I/O.
//!
//! The core implements [`Cpu`] for a vCPU. The shape follows Linux's `x86_emulate_ops`: the emulator
//! never touches guest memory or devices itself, it asks through these callbacks.

/// A segment register, numbered as in the ModRM `reg` field of `MOV Sreg` (ES=0 … GS=5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
    /// The task register (only read for the I/O permission bitmap).
    Tr = 6,
}

impl Seg {
    /// The segment register with number `n` (0..=5), as encoded in ModRM.reg of `MOV r/m, Sreg`.
    pub fn from_sreg(n: u8) -> Option<Seg> {
        match n {
            0 => Some(Seg::Es),
            1 => Some(Seg::Cs),
            2 => Some(Seg::Ss),
            3 => Some(Seg::Ds),
            4 => Some(Seg::Fs),
            5 => Some(Seg::Gs),
            _ => None,
        }
    }
}

/// A segment register with its hidden descriptor cache, in the units of Linux's `kvm_segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Base address (only the low 32 bits are used outside 64-bit mode).
    pub base: u64,
    /// Limit in bytes (already scaled by the G bit, as `kvm_segment.limit`).
    pub limit: u32,
    /// Descriptor type field (4 bits: for data, bit 1 = writable, bit 2 = expand-down; bit 3 = code).
    pub typ: u8,
    /// S bit: 1 for code/data, 0 for system segments.
    pub s: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Present bit.
    pub present: bool,
    /// AVL bit (unused by the emulator).
    pub avl: bool,
    /// L bit (64-bit code segment).
    pub l: bool,
    /// D/B bit (default size 32 / big).
    pub db: bool,
    /// Granularity bit (informational: `limit` is already in bytes).
    pub g: bool,
    /// The segment is unusable (null selector loaded in protected mode), as VMX's "unusable".
    pub unusable: bool,
}

/// Control register bits the emulator reads.
pub mod cr {
    /// CR0.PE: protected mode.
    pub const CR0_PE: u64 = 1 << 0;
    /// CR0.EM: x87/SSE emulation (SSE instructions #UD).
    pub const CR0_EM: u64 = 1 << 2;
    /// CR0.TS: task switched (SSE instructions #NM).
    pub const CR0_TS: u64 = 1 << 3;
    /// CR0.AM: alignment mask.
    pub const CR0_AM: u64 = 1 << 18;
    /// CR4.OSFXSR: SSE enabled by the OS.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// EFER.LMA: long mode active.
    pub const EFER_LMA: u64 = 1 << 10;
}

/// Why a linear-memory access is made; the page walk checks permissions accordingly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data read of an operand that the instruction will write back (checked as a write).
    ReadForWrite,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// Where a linear access landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    /// Ordinary guest RAM: the data was transferred.
    Ram,
    /// Not RAM: nothing was transferred; the access goes to MMIO at this guest-physical address.
    Mmio(u64),
}

/// A guest page fault raised by the page walk: error code and faulting linear address (CR2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// #PF error code (P, W/R, U/S, RSVD, I/D bits).
    pub error_code: u32,
    /// The faulting linear address (becomes CR2).
    pub address: u64,
}

/// The vCPU and guest-memory callbacks.
///
/// Contract for memory: the emulator never passes a linear range that crosses a 4 KiB page boundary
/// to `read_linear`/`write_linear` (it splits accesses itself). A zero-length `write_linear` is a
/// probe: translate and check write permission only, transfer nothing. Faults are reported, not
/// injected: the emulator turns them into [`crate::Outcome::Exception`].
pub trait Cpu {
    /// General-purpose register `n` (0 = RAX … 15 = R15), all 64 bits.
    fn gpr(&self, n: usize) -> u64;
    /// Sets general-purpose register `n` (all 64 bits; the emulator does the partial-width merging).
    fn set_gpr(&mut self, n: usize, value: u64);
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP.
    fn set_rip(&mut self, value: u64);
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// Sets RFLAGS.
    fn set_rflags(&mut self, value: u64);
    /// A segment register with its hidden part.
    fn segment(&self, seg: Seg) -> Segment;
    /// CR0.
    fn cr0(&self) -> u64;
    /// CR4.
    fn cr4(&self) -> u64;
    /// EFER.
    fn efer(&self) -> u64;
    /// Current privilege level.
    fn cpl(&self) -> u8;
    /// XMM register `n` (0..=15), little-endian bytes. Only called for SSE moves.
    fn xmm(&self, n: usize) -> [u8; 16];
    /// Sets XMM register `n`.
    fn set_xmm(&mut self, n: usize, value: [u8; 16]);
    /// Reads guest linear memory (never crossing a page). On `Ok(Mem::Ram)` `buf` is filled.
    fn read_linear(&mut self, la: u64, buf: &mut [u8], access: Access) -> Result<Mem, PageFault>;
    /// Writes guest linear memory (never crossing a page). On `Ok(Mem::Ram)` the data was written.
    fn write_linear(&mut self, la: u64, data: &[u8]) -> Result<Mem, PageFault>;
    /// An MMIO read of `buf.len()` (1..=8) bytes. Returns `false` if userspace must handle it.
    fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
    /// An MMIO write of 1..=8 bytes. Returns `false` if userspace must handle it.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool;
    /// Port input of `buf.len() / size` elements of `size` bytes. Returns `false` for userspace.
    fn pio_in(&mut self, port: u16, size: u8, buf: &mut [u8]) -> bool;
    /// Port output of `data.len() / size` elements of `size` bytes. Returns `false` for userspace.
    fn pio_out(&mut self, port: u16, size: u8, data: &[u8]) -> bool;
}
