//! Proof 2: every ALU, bit and exchange operation, at every operand size, on random operands and
//! random incoming flags, against the same instruction run on the host CPU (inline asm). The
//! emulated instruction has a memory destination (in RAM, and in MMIO through userspace exits)
//! and a register source, so the full decode/read/modify/write/flags path is exercised.
#![cfg(target_arch = "x86_64")]

mod common;
use common::{run, Mode, TestCpu, MMIO};
use emulate::flags::{AF, CF, STATUS, ZF};
use emulate::{Emulator, Outcome};
use std::arch::asm;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Random values biased toward the edges (0, all-ones, sign boundaries).
    fn operand(&mut self) -> u64 {
        match self.next() % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << (self.next() % 64),
            3 => (1 << (self.next() % 64)) - 1,
            4 => self.next() & 0xff,
            _ => self.next(),
        }
    }
}

/// Host execution of `insn dst, src` at one size: returns (dst, src, flags).
macro_rules! host_binop {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut b: u64 = $b;
        let mut f: u64 = $f;
        // SAFETY: register-only arithmetic; the flags are saved and restored through the stack.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                b = inout(reg) b,
                f = inout(reg) f,
            );
        }
        (a, b, f)
    }};
}

macro_rules! host_unop {
    ($insn:literal, $m:literal, $a:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut f: u64 = $f;
        // SAFETY: register-only arithmetic; the flags go through the stack.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {a:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                f = inout(reg) f,
            );
        }
        (a, f)
    }};
}

macro_rules! host_cmpxchg {
    ($m:literal, $acc:expr, $a:expr, $b:expr, $f:expr) => {{
        let mut acc: u64 = $acc;
        let mut a: u64 = $a;
        let b: u64 = $b;
        let mut f: u64 = $f;
        // SAFETY: register-only compare-exchange; flags go through the stack.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!("cmpxchg {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                b = in(reg) b,
                f = inout(reg) f,
                inout("rax") acc,
            );
        }
        (acc, a, f)
    }};
}

/// Host bit-test on a memory bit string (exercises the signed bit-offset addressing).
macro_rules! host_bitmem {
    ($insn:literal, $ptr:literal, $m:literal, $buf:expr, $off:expr, $f:expr) => {{
        let p: *mut u8 = $buf;
        let off: u64 = $off;
        let mut f: u64 = $f;
        // SAFETY: `p` points into the middle of a 64-byte buffer and the offsets stay within it.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{p}], {o:", $m, "}"),
                "pushfq",
                "pop {f}",
                p = in(reg) p,
                o = in(reg) off,
                f = inout(reg) f,
            );
        }
        f
    }};
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Binary op writing dst: opcode (byte form; +1 for the others).
    Alu(u8),
    Cmp,
    Test,
    Xchg,
    Xadd,
    Cmpxchg,
    Inc,
    Dec,
    Neg,
    Not,
}

fn host(
    kind: Kind,
    name: &str,
    size: u8,
    a: u64,
    b: u64,
    acc: u64,
    f: u64,
) -> (u64, u64, u64, u64) {
    // Returns (dst, src register, rax, flags).
    macro_rules! bin {
        ($i:literal) => {
            match size {
                1 => host_binop!($i, "l", a, b, f),
                2 => host_binop!($i, "x", a, b, f),
                4 => host_binop!($i, "e", a, b, f),
                _ => host_binop!($i, "r", a, b, f),
            }
        };
    }
    macro_rules! un {
        ($i:literal) => {
            match size {
                1 => host_unop!($i, "l", a, f),
                2 => host_unop!($i, "x", a, f),
                4 => host_unop!($i, "e", a, f),
                _ => host_unop!($i, "r", a, f),
            }
        };
    }
    let (d, s, fl) = match (kind, name) {
        (_, "add") => bin!("add"),
        (_, "or") => bin!("or"),
        (_, "adc") => bin!("adc"),
        (_, "sbb") => bin!("sbb"),
        (_, "and") => bin!("and"),
        (_, "sub") => bin!("sub"),
        (_, "xor") => bin!("xor"),
        (_, "cmp") => bin!("cmp"),
        (_, "test") => bin!("test"),
        (_, "xchg") => bin!("xchg"),
        (_, "xadd") => bin!("xadd"),
        (_, "inc") => {
            let (d, f) = un!("inc");
            (d, b, f)
        }
        (_, "dec") => {
            let (d, f) = un!("dec");
            (d, b, f)
        }
        (_, "neg") => {
            let (d, f) = un!("neg");
            (d, b, f)
        }
        (_, "not") => {
            let (d, f) = un!("not");
            (d, b, f)
        }
        (_, "cmpxchg") => {
            let (acc2, d, f) = match size {
                1 => host_cmpxchg!("l", acc, a, b, f),
                2 => host_cmpxchg!("x", acc, a, b, f),
                4 => host_cmpxchg!("e", acc, a, b, f),
                _ => host_cmpxchg!("r", acc, a, b, f),
            };
            return (d, b, acc2, f);
        }
        _ => unreachable!(),
    };
    (d, s, acc, fl)
}

fn mask(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

/// Encodes `op [rbx], rcx`-style instructions (r/m = [rbx], reg = rcx) at `size`.
fn encode(kind: Kind, size: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if size == 2 {
        v.push(0x66);
    }
    if size == 8 {
        v.push(0x48);
    }
    let w = u8::from(size != 1);
    match kind {
        Kind::Alu(op) => v.extend([op + w, 0x0b]),
        Kind::Cmp => v.extend([0x38 + w, 0x0b]),
        Kind::Test => v.extend([0x84 + w, 0x0b]),
        Kind::Xchg => v.extend([0x86 + w, 0x0b]),
        Kind::Xadd => v.extend([0x0f, 0xc0 + w, 0x0b]),
        Kind::Cmpxchg => v.extend([0x0f, 0xb0 + w, 0x0b]),
        Kind::Inc => v.extend([0xfe + w, 0x03]),
        Kind::Dec => v.extend([0xfe + w, 0x0b]),
        Kind::Not => v.extend([0xf6 + w, 0x13]),
        Kind::Neg => v.extend([0xf6 + w, 0x1b]),
    }
    v
}

fn defined(kind: Kind, name: &str) -> u64 {
    match (kind, name) {
        (_, "and" | "or" | "xor" | "test") => STATUS & !AF,
        (Kind::Xchg, _) => STATUS,
        _ => STATUS,
    }
}

/// Emulates one instruction with the destination at `at` (RAM or MMIO); returns
/// (dst, rcx, rax, flags).
#[allow(clippy::too_many_arguments)]
fn emulate_one(
    code: &[u8],
    at: u64,
    size: u8,
    a: u64,
    b: u64,
    acc: u64,
    f: u64,
    in_kernel: bool,
) -> (u64, u64, u64, u64) {
    let mut cpu = TestCpu::new(Mode::Long64);
    cpu.in_kernel = in_kernel;
    cpu.code(code);
    cpu.gpr[3] = at;
    cpu.gpr[1] = b;
    cpu.gpr[0] = acc;
    cpu.rflags = f;
    let bytes = a.to_le_bytes();
    if at >= MMIO {
        let off = (at - MMIO) as usize;
        cpu.mmio[off..off + 8].copy_from_slice(&bytes);
    } else {
        cpu.ram[at as usize..at as usize + 8].copy_from_slice(&bytes);
    }
    let mut emu = Emulator::new();
    let out = run(&mut emu, &mut cpu);
    assert_eq!(out, Outcome::Done, "{code:02x?}");
    assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
    let d = if at >= MMIO {
        cpu.mmio_u64(at - MMIO)
    } else {
        cpu.ram_u64(at)
    };
    (d & mask(size), cpu.gpr[1], cpu.gpr[0], cpu.rflags)
}

const ITER: usize = 3000;

#[test]
fn alu_bit_exchange_vs_host() {
    let ops: &[(Kind, &str)] = &[
        (Kind::Alu(0x00), "add"),
        (Kind::Alu(0x08), "or"),
        (Kind::Alu(0x10), "adc"),
        (Kind::Alu(0x18), "sbb"),
        (Kind::Alu(0x20), "and"),
        (Kind::Alu(0x28), "sub"),
        (Kind::Alu(0x30), "xor"),
        (Kind::Cmp, "cmp"),
        (Kind::Test, "test"),
        (Kind::Xchg, "xchg"),
        (Kind::Xadd, "xadd"),
        (Kind::Cmpxchg, "cmpxchg"),
        (Kind::Inc, "inc"),
        (Kind::Dec, "dec"),
        (Kind::Neg, "neg"),
        (Kind::Not, "not"),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for &(kind, name) in ops {
        for size in [1u8, 2, 4, 8] {
            let code = encode(kind, size);
            for i in 0..ITER {
                let m = mask(size);
                let a = rng.operand() & m;
                let b = rng.operand();
                // Half of the CMPXCHGs take the equal path.
                let acc = if i % 2 == 0 {
                    a | (rng.next() & !m)
                } else {
                    rng.operand()
                };
                let f = 2 | (rng.next() & STATUS);
                let (hd, hs, hacc, hf) = host(kind, name, size, a, b, acc, f);
                // Every 8th case goes to MMIO through userspace exits, every 8th in-kernel.
                let (at, ink) = match i % 8 {
                    0 => (MMIO + 0x100, false),
                    1 => (MMIO + 0x1000 - u64::from(size.max(2)) / 2, true), // crosses into the next MMIO page
                    _ => (0x3000, false),
                };
                let (ed, es, eacc, ef) = emulate_one(&code, at, size, a, b, acc, f, ink);
                let ctx = format!("{name} size {size} a={a:#x} b={b:#x} rax={acc:#x} flags={f:#x}");
                assert_eq!(ed, hd & m, "dst: {ctx}");
                assert_eq!(es, hs, "src register: {ctx}");
                assert_eq!(eacc, hacc, "rax: {ctx}");
                let dm = defined(kind, name);
                assert_eq!(ef & dm, hf & dm, "flags: {ctx} (emu {ef:#x} host {hf:#x})");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, ops.len() * 4 * ITER);
}

#[test]
fn bit_ops_vs_host() {
    // BT/BTS/BTR/BTC m, r with signed offsets reaching neighbouring words, and m, imm8.
    let mut rng = Rng(0x1357_9bdf_2468_ace0);
    for (op, name) in [(0xa3u8, "bt"), (0xab, "bts"), (0xb3, "btr"), (0xbb, "btc")] {
        for size in [2u8, 4, 8] {
            for _ in 0..ITER {
                let mut buf = [0u8; 64];
                for b in buf.iter_mut() {
                    *b = rng.next() as u8;
                }
                // Bit offsets in [-128, 128): up to 16 bytes either side of the middle.
                let off = (rng.next() % 256) as i64 - 128;
                let f = 2 | (rng.next() & STATUS);
                let mut host_buf = buf;
                let p = unsafe { host_buf.as_mut_ptr().add(32) };
                let hf = match (name, size) {
                    ("bt", 2) => host_bitmem!("bt", "word", "x", p, off as u64, f),
                    ("bt", 4) => host_bitmem!("bt", "dword", "e", p, off as u64, f),
                    ("bt", _) => host_bitmem!("bt", "qword", "r", p, off as u64, f),
                    ("bts", 2) => host_bitmem!("bts", "word", "x", p, off as u64, f),
                    ("bts", 4) => host_bitmem!("bts", "dword", "e", p, off as u64, f),
                    ("bts", _) => host_bitmem!("bts", "qword", "r", p, off as u64, f),
                    ("btr", 2) => host_bitmem!("btr", "word", "x", p, off as u64, f),
                    ("btr", 4) => host_bitmem!("btr", "dword", "e", p, off as u64, f),
                    ("btr", _) => host_bitmem!("btr", "qword", "r", p, off as u64, f),
                    ("btc", 2) => host_bitmem!("btc", "word", "x", p, off as u64, f),
                    ("btc", 4) => host_bitmem!("btc", "dword", "e", p, off as u64, f),
                    (_, _) => host_bitmem!("btc", "qword", "r", p, off as u64, f),
                };
                // Emulate with the buffer in MMIO (userspace exits).
                let mut cpu = TestCpu::new(Mode::Long64);
                let mut code = vec![];
                if size == 2 {
                    code.push(0x66);
                }
                if size == 8 {
                    code.push(0x48);
                }
                code.extend([0x0f, op, 0x0b]);
                cpu.code(&code);
                cpu.mmio[0x200..0x240].copy_from_slice(&buf);
                cpu.gpr[3] = MMIO + 0x220;
                cpu.gpr[1] = off as u64;
                cpu.rflags = f;
                let mut emu = Emulator::new();
                assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
                let ctx = format!("{name} size {size} off {off}");
                assert_eq!(&cpu.mmio[0x200..0x240], &host_buf[..], "memory: {ctx}");
                assert_eq!(cpu.rflags & (CF | ZF), hf & (CF | ZF), "flags: {ctx}");
            }
        }
    }
    // Immediate forms: the offset is taken modulo the operand size, no address adjustment.
    for size in [2u8, 4, 8] {
        for imm in [0u8, 1, 7, 15, 31, 33, 63, 64, 200, 255] {
            let mut cpu = TestCpu::new(Mode::Long64);
            let mut code = vec![];
            if size == 2 {
                code.push(0x66);
            }
            if size == 8 {
                code.push(0x48);
            }
            code.extend([0x0f, 0xba, 0x2b, imm]); // bts [rbx], imm
            cpu.code(&code);
            cpu.gpr[3] = MMIO + 0x300;
            cpu.mmio[0x300..0x310].fill(0);
            let mut emu = Emulator::new();
            assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
            let bit = u32::from(imm) % (u32::from(size) * 8);
            assert_eq!(
                cpu.mmio_u64(0x300),
                1u64 << bit,
                "bts imm {imm} size {size}"
            );
            assert_eq!(cpu.mmio_u64(0x308), 0);
        }
    }
}

#[test]
fn cmpxchg8b_16b_and_movbe_vs_host() {
    let mut rng = Rng(0x0bad_c0de_1234_5678);
    for i in 0..ITER {
        // cmpxchg16b: memory operand on the host (16-byte aligned), MMIO in the emulator.
        #[repr(align(16))]
        struct A16([u64; 2]);
        let mut m = A16([rng.operand(), rng.operand()]);
        let orig = m.0;
        let (mut rax, mut rdx) = if i % 2 == 0 {
            (orig[0], orig[1])
        } else {
            (rng.operand(), rng.operand())
        };
        let (rbx, rcx) = (rng.next(), rng.next());
        let (rax0, rdx0) = (rax, rdx);
        let f0 = 2 | (rng.next() & STATUS);
        let mut f = f0;
        // SAFETY: `m` is a live, 16-byte aligned 16-byte buffer; rbx is saved around the use (the
        // other operands are pinned away from rbx: `f` in rdi, `b` in rsi).
        unsafe {
            asm!(
                "xchg rsi, rbx",
                "push rdi",
                "popfq",
                "cmpxchg16b xmmword ptr [r8]",
                "pushfq",
                "pop rdi",
                "xchg rsi, rbx",
                in("r8") m.0.as_mut_ptr(),
                inout("rsi") rbx => _,
                inout("rdi") f,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") rcx,
            );
        }
        let mut cpu = TestCpu::new(Mode::Long64);
        cpu.code(&[0x48, 0x0f, 0xc7, 0x0e]); // cmpxchg16b [rsi]
        cpu.gpr[6] = MMIO + 0x200;
        cpu.mmio[0x200..0x208].copy_from_slice(&orig[0].to_le_bytes());
        cpu.mmio[0x208..0x210].copy_from_slice(&orig[1].to_le_bytes());
        cpu.gpr[0] = rax0;
        cpu.gpr[2] = rdx0;
        cpu.gpr[3] = rbx;
        cpu.gpr[1] = rcx;
        cpu.rflags = f0;
        let mut emu = Emulator::new();
        assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
        assert_eq!(
            [cpu.mmio_u64(0x200), cpu.mmio_u64(0x208)],
            m.0,
            "cmpxchg16b memory"
        );
        assert_eq!((cpu.gpr[0], cpu.gpr[2]), (rax, rdx), "cmpxchg16b rdx:rax");
        assert_eq!(cpu.rflags & ZF, f & ZF);

        // cmpxchg8b in 64-bit mode (32-bit halves, zero-extended on failure).
        let mut m8: u64 = rng.operand();
        let orig8 = m8;
        let (mut eax, mut edx) = if i % 2 == 0 {
            (orig8 & 0xffff_ffff, orig8 >> 32)
        } else {
            (rng.operand(), rng.operand())
        };
        let (eax0, edx0) = (eax, edx);
        let (ebx, ecx) = (rng.next(), rng.next());
        let mut f = f0;
        // SAFETY: `m8` is a live 8-byte buffer; rbx is saved around the use.
        unsafe {
            asm!(
                "xchg rsi, rbx",
                "push rdi",
                "popfq",
                "cmpxchg8b qword ptr [r8]",
                "pushfq",
                "pop rdi",
                "xchg rsi, rbx",
                in("r8") &mut m8 as *mut u64,
                inout("rsi") ebx => _,
                inout("rdi") f,
                inout("rax") eax,
                inout("rdx") edx,
                in("rcx") ecx,
            );
        }
        let mut cpu = TestCpu::new(Mode::Long64);
        cpu.code(&[0x0f, 0xc7, 0x0e]); // cmpxchg8b [rsi]
        cpu.gpr[6] = MMIO + 0x300;
        cpu.mmio[0x300..0x308].copy_from_slice(&orig8.to_le_bytes());
        cpu.gpr[0] = eax0;
        cpu.gpr[2] = edx0;
        cpu.gpr[3] = ebx;
        cpu.gpr[1] = ecx;
        cpu.rflags = f0;
        let mut emu = Emulator::new();
        assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
        assert_eq!(cpu.mmio_u64(0x300), m8, "cmpxchg8b memory");
        assert_eq!((cpu.gpr[0], cpu.gpr[2]), (eax, edx), "cmpxchg8b edx:eax");
        assert_eq!(cpu.rflags & ZF, f & ZF);

        // movbe load at 2/4/8 bytes.
        let v = rng.operand();
        for (size, code) in [
            (2u8, &[0x66, 0x0f, 0x38, 0xf0, 0x06][..]),
            (4, &[0x0f, 0x38, 0xf0, 0x06]),
            (8, &[0x48, 0x0f, 0x38, 0xf0, 0x06]),
        ] {
            let dst0 = rng.next();
            let host = match size {
                2 => {
                    let mut r = dst0;
                    let src = v as u16;
                    // SAFETY: reads a live local.
                    unsafe {
                        asm!("movbe {r:x}, word ptr [{p}]", r = inout(reg) r, p = in(reg) &src as *const u16)
                    };
                    r
                }
                4 => {
                    let mut r = dst0;
                    let src = v as u32;
                    // SAFETY: reads a live local.
                    unsafe {
                        asm!("movbe {r:e}, dword ptr [{p}]", r = inout(reg) r, p = in(reg) &src as *const u32)
                    };
                    r
                }
                _ => {
                    let mut r = dst0;
                    // SAFETY: reads a live local.
                    unsafe {
                        asm!("movbe {r}, qword ptr [{p}]", r = inout(reg) r, p = in(reg) &v as *const u64)
                    };
                    r
                }
            };
            let mut cpu = TestCpu::new(Mode::Long64);
            cpu.code(code);
            cpu.gpr[6] = MMIO + 0x400;
            cpu.mmio[0x400..0x408].copy_from_slice(&v.to_le_bytes());
            cpu.gpr[0] = dst0;
            let mut emu = Emulator::new();
            assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
            assert_eq!(cpu.gpr[0], host, "movbe size {size}");
        }
    }
}

/// The register-register forms (`op edx, ecx` style: r/m = RDX, reg = RCX) with full 64-bit
/// register contents: partial-register merging and 32-bit zero-extension against the host.
#[test]
fn register_forms_vs_host() {
    let ops: &[(Kind, &str)] = &[
        (Kind::Alu(0x00), "add"),
        (Kind::Alu(0x18), "sbb"),
        (Kind::Alu(0x30), "xor"),
        (Kind::Cmp, "cmp"),
        (Kind::Test, "test"),
        (Kind::Xchg, "xchg"),
        (Kind::Xadd, "xadd"),
        (Kind::Cmpxchg, "cmpxchg"),
        (Kind::Inc, "inc"),
        (Kind::Neg, "neg"),
        (Kind::Not, "not"),
    ];
    let mut rng = Rng(0x7777_1234_abcd_0001);
    for &(kind, name) in ops {
        for size in [1u8, 2, 4, 8] {
            // Same encodings with mod=3 and r/m=RDX instead of [rbx].
            let mut code = encode(kind, size);
            let last = code.len() - 1;
            code[last] = 0xc0 | (code[last] & 0x38) | 2;
            for i in 0..ITER / 3 {
                let a = rng.next();
                let b = rng.next();
                let acc = if i % 2 == 0 { a } else { rng.next() };
                let f = 2 | (rng.next() & STATUS);
                let (hd, hs, hacc, hf) = host(kind, name, size, a, b, acc, f);
                let mut cpu = TestCpu::new(Mode::Long64);
                cpu.code(&code);
                cpu.gpr[2] = a;
                cpu.gpr[1] = b;
                cpu.gpr[0] = acc;
                cpu.rflags = f;
                let mut emu = Emulator::new();
                assert_eq!(run(&mut emu, &mut cpu), Outcome::Done);
                let ctx = format!("{name} reg size {size} a={a:#x} b={b:#x} rax={acc:#x}");
                assert_eq!(cpu.gpr[2], hd, "dst: {ctx}");
                assert_eq!(cpu.gpr[1], hs, "src: {ctx}");
                assert_eq!(cpu.gpr[0], hacc, "rax: {ctx}");
                let dm = defined(kind, name);
                assert_eq!(cpu.rflags & dm, hf & dm, "flags: {ctx}");
                assert!(cpu.log.is_empty());
            }
        }
    }
}
