//! The in-kernel x86 instruction emulator used for MMIO and string port I/O.
//!
//! `no_std`, no allocation, no recursion. One [`Emulator`] per vCPU holds the small state of an
//! instruction in progress; [`Emulator::step`] executes the instruction at the guest's RIP against
//! a [`Cpu`] (registers, guest memory, MMIO, port I/O) and returns an [`Outcome`]. See
//! [`emulator`] for the exit/resume protocol.
//!
//! # Modes
//! Real mode (incl. "unreal" segment limits), virtual-8086, 16/32-bit protected mode,
//! compatibility mode and 64-bit mode: operand/address-size overrides, segment overrides (ES/CS/
//! SS/DS ignored in 64-bit mode), REX, LOCK (#UD where the SDM says so), REP/REPE/REPNE, segment
//! type and limit checks (expand-down included, #SS for SS), canonical checks in 64-bit mode,
//! #AC alignment checks (CPL 3, CR0.AM, RFLAGS.AC), IOPL and TSS I/O-bitmap checks for port I/O,
//! the 15-byte limit (#GP) and CS-limit checks on instruction fetch.
//!
//! # Supported instructions
//! - `MOV` r/m,r / r,r/m / r/m,imm / AL..rAX,moffs / moffs,AL..rAX (`88`-`8B`, `A0`-`A3`, `C6 /0`,
//!   `C7 /0`), `MOV r/m, Sreg` (`8C`)
//! - `MOVZX`, `MOVSX` (`0F B6/B7/BE/BF`), `MOVSXD` (`63`, 64-bit mode), `MOVBE` (`0F 38 F0/F1`),
//!   `MOVNTI` (`0F C3`)
//! - `ADD OR ADC SBB AND SUB XOR CMP` in all encodings (`00`-`3D`, `80`-`83`), `TEST` (`84`, `85`,
//!   `A8`, `A9`, `F6/F7 /0,/1`), `NOT`, `NEG` (`F6/F7 /2,/3`), `INC`, `DEC` (`FE/FF /0,/1`)
//! - `BT BTS BTR BTC` register (`0F A3/AB/B3/BB`, with the signed bit-offset addressing of memory
//!   operands) and immediate (`0F BA /4-/7`) forms
//! - `XCHG` (`86`, `87`), `CMPXCHG` (`0F B0/B1`), `CMPXCHG8B`/`CMPXCHG16B` (`0F C7 /1`), `XADD`
//!   (`0F C0/C1`), `SETcc r/m8` (`0F 90`-`9F`)
//! - `PUSH r/m` (`FF /6`), `POP r/m` (`8F /0`)
//! - `MOVS CMPS STOS LODS SCAS INS OUTS` with REP/REPE/REPNE, DF=0 and DF=1; `IN`/`OUT` (`E4`-`E7`,
//!   `EC`-`EF`)
//! - SSE moves: `MOVUPS MOVUPD MOVAPS MOVAPD` (`0F 10/11/28/29`), `MOVNTPS/PD` (`0F 2B`),
//!   `MOVDQA MOVDQU` (`66/F3 0F 6F/7F`), `MOVNTDQ` (`66 0F E7`), `MOVD/MOVQ` xmm<->r/m
//!   (`66 0F 6E/7E`), `MOVQ` (`F3 0F 7E`, `66 0F D6`); 16-byte MMIO accesses are split into
//!   8-byte ones (`kvm_run.mmio` carries at most 8)
//! - `CLFLUSH`, `CLFLUSHOPT` (`0F AE /7`, `66 0F AE /7`): translation and fault checks only
//!
//! Everything else is [`Outcome::Unsupported`] (or #UD where the CPU gives #UD).
//!
//! # Flags
//! Defined flags are exact. Architecturally undefined flags: logical operations (AND, OR, XOR,
//! TEST) clear AF; BT/BTS/BTR/BTC leave OF, SF, AF, PF and ZF unchanged.
//!
//! # Accesses
//! Accesses crossing a page are split (a write probes the second page before writing the
//! first). MMIO accesses are issued in pieces of at most 8 bytes. REP INS/OUTS do one batch per
//! exit up to the count, the page and 1 KiB (one element when DF=1); other REP string operations
//! do one element per MMIO exit and at most 4 KiB / 1024 iterations per `step`, after which the
//! guest re-executes the instruction. Locked instructions are not atomic against other vCPUs for
//! RAM operands (as in Linux's emulator, MMIO is the purpose). `CMPXCHG` with a memory operand
//! writes the old value back on failure, as the SDM specifies. RFLAGS.TF single-step and RF are
//! left to the caller.
//!
//! # Proofs (`cargo test -p emulate`, plus the fuzz target and the benchmark)
//! - `tests/decode_vs_iced.rs`: 1,000,000 random byte strings per mode (16/32/64) and an MMIO
//!   corpus against iced-x86: length, operation, operand/address size, segment, registers,
//!   memory-operand parts, immediate, LOCK/REP agree for every supported encoding; everything else
//!   is rejected; truncated input asks for more bytes.
//! - `tests/semantics_vs_host.rs`: ALU, INC/DEC/NEG/NOT, TEST, XCHG, XADD, CMPXCHG (memory in RAM,
//!   userspace MMIO, in-kernel MMIO across a page; and register forms), BT/BTS/BTR/BTC with signed
//!   bit offsets, CMPXCHG8B/16B and MOVBE, on random operands and flags, against the host CPU.
//! - `tests/guest_cases.rs`: h_mem_assist/h_io_assist-style cases in real, 16-bit, 32-bit and
//!   64-bit mode (REP string ops, DF=1, INS/OUTS batches, page crossing, segment-limit, canonical,
//!   #PF, #AC and I/O-bitmap faults, the resume protocol).
//! - `tests/random_execute.rs` and `fuzz/` (libFuzzer): decode+execute of arbitrary bytes in
//!   arbitrary guests; no panic, bounded work per `step`. Run the fuzzer from `emulate/fuzz`:
//!   `RUSTC_BOOTSTRAP=1 cargo fuzz run decode_execute --sanitizer none -- -max_total_time=60`.
//! - `benches/emulate_bench.rs` (`cargo bench -p emulate`): ns per decode+execute against
//!   iced-x86's decode-only time.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod cpu;
pub mod decode;
pub mod emulator;
mod exec;
pub mod flags;
mod mem;
pub mod outcome;

pub use cpu::{Access, Cpu, Mem, PageFault, Seg, Segment};
pub use emulator::{Emulator, IO_BUF};
pub use outcome::{Exception, Exit, Outcome};
