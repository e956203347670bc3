//! What one emulation step reports to the core.

use crate::decode::MAX_INSN_LEN;

/// x86 exception vectors the emulator raises.
pub mod vector {
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available (SSE with CR0.TS).
    pub const NM: u8 = 7;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// Alignment check.
    pub const AC: u8 = 17;
}

/// A guest exception for the core to inject. The instruction had no architectural effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Vector (see [`vector`]).
    pub vector: u8,
    /// Error code, for the vectors that push one.
    pub error_code: Option<u32>,
    /// New CR2, for #PF.
    pub cr2: Option<u64>,
}

impl Exception {
    /// #UD.
    pub const fn ud() -> Exception {
        Exception {
            vector: vector::UD,
            error_code: None,
            cr2: None,
        }
    }

    /// #GP(0).
    pub const fn gp0() -> Exception {
        Exception {
            vector: vector::GP,
            error_code: Some(0),
            cr2: None,
        }
    }

    /// #SS(0).
    pub const fn ss0() -> Exception {
        Exception {
            vector: vector::SS,
            error_code: Some(0),
            cr2: None,
        }
    }

    /// #NM.
    pub const fn nm() -> Exception {
        Exception {
            vector: vector::NM,
            error_code: None,
            cr2: None,
        }
    }

    /// #AC(0).
    pub const fn ac0() -> Exception {
        Exception {
            vector: vector::AC,
            error_code: Some(0),
            cr2: None,
        }
    }

    /// #PF with its error code and faulting address.
    pub const fn pf(error_code: u32, address: u64) -> Exception {
        Exception {
            vector: vector::PF,
            error_code: Some(error_code),
            cr2: Some(address),
        }
    }
}

/// An access that must go to userspace (`KVM_EXIT_MMIO` / `KVM_EXIT_IO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// MMIO read of `len` (1..=8) bytes: complete it with [`crate::Emulator::complete_read`].
    MmioRead {
        /// Guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: u8,
    },
    /// MMIO write of `len` (1..=8) bytes of `data`.
    MmioWrite {
        /// Guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: u8,
        /// The bytes (the first `len` are valid).
        data: [u8; 8],
    },
    /// Port input of `count` elements of `size` bytes: complete it with
    /// [`crate::Emulator::complete_read`] (`size * count` bytes).
    PioIn {
        /// Port.
        port: u16,
        /// Element size (1, 2, 4).
        size: u8,
        /// Element count (REP INS batches).
        count: u32,
    },
    /// Port output of `count` elements of `size` bytes; the data is [`crate::Emulator::pio_data`].
    PioOut {
        /// Port.
        port: u16,
        /// Element size (1, 2, 4).
        size: u8,
        /// Element count (REP OUTS batches).
        count: u32,
    },
}

/// The result of [`crate::Emulator::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The instruction (or a bounded batch of REP iterations) executed; registers and RIP are
    /// updated. Re-enter the guest.
    Done,
    /// Userspace must perform this access; then call `step` again (after `complete_read` for
    /// reads) before re-entering the guest.
    NeedsUserspace(Exit),
    /// Inject this exception; the instruction had no effect.
    Exception(Exception),
    /// Not emulated: report `KVM_INTERNAL_ERROR_EMULATION` with these bytes.
    Unsupported {
        /// The fetched instruction bytes (`len` valid).
        bytes: [u8; MAX_INSN_LEN],
        /// How many bytes are valid.
        len: u8,
    },
}
