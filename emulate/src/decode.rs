//! The instruction decoder: legacy prefixes, REX, one-byte, `0F` and `0F 38` maps, ModRM/SIB,
//! displacement and immediate. It recognises only the supported set (see the crate documentation)
//! and rejects everything else.

use crate::cpu::Seg;

/// Longest legal x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// The code-segment default size the decoder works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    /// Real mode, virtual-8086, 16-bit protected or compatibility mode.
    Bits16,
    /// 32-bit protected or compatibility mode.
    Bits32,
    /// 64-bit mode.
    Bits64,
}

/// ALU operations of the `00`–`3F` block and group 1, in encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    /// ADD.
    Add,
    /// OR.
    Or,
    /// ADC.
    Adc,
    /// SBB.
    Sbb,
    /// AND.
    And,
    /// SUB.
    Sub,
    /// XOR.
    Xor,
    /// CMP.
    Cmp,
}

impl AluOp {
    fn from_index(n: u8) -> AluOp {
        match n & 7 {
            0 => AluOp::Add,
            1 => AluOp::Or,
            2 => AluOp::Adc,
            3 => AluOp::Sbb,
            4 => AluOp::And,
            5 => AluOp::Sub,
            6 => AluOp::Xor,
            _ => AluOp::Cmp,
        }
    }
}

/// Bit-test operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    /// BT.
    Bt,
    /// BTS.
    Bts,
    /// BTR.
    Btr,
    /// BTC.
    Btc,
}

/// The decoded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// ADD/OR/ADC/SBB/AND/SUB/XOR/CMP.
    Alu(AluOp),
    /// TEST.
    Test,
    /// NOT.
    Not,
    /// NEG.
    Neg,
    /// INC.
    Inc,
    /// DEC.
    Dec,
    /// MOV (incl. moffs and immediate forms).
    Mov,
    /// MOV r/m, Sreg (`8C`); `reg` holds the segment number.
    MovFromSreg,
    /// MOVZX (`src_size` is 1 or 2).
    Movzx,
    /// MOVSX (`src_size` is 1 or 2).
    Movsx,
    /// MOVSXD (`src_size` is 4).
    Movsxd,
    /// MOVBE (memory operand only; direction by `form`).
    Movbe,
    /// MOVNTI m, r.
    Movnti,
    /// XCHG r/m, r.
    Xchg,
    /// CMPXCHG r/m, r.
    Cmpxchg,
    /// CMPXCHG8B (`op_size` 8) or CMPXCHG16B (`op_size` 16).
    CmpxchgNb,
    /// XADD r/m, r.
    Xadd,
    /// BT/BTS/BTR/BTC.
    Bit(BitOp),
    /// SETcc r/m8 with the condition code.
    Setcc(u8),
    /// PUSH r/m.
    Push,
    /// POP r/m.
    Pop,
    /// MOVS.
    Movs,
    /// CMPS.
    Cmps,
    /// STOS.
    Stos,
    /// LODS.
    Lods,
    /// SCAS.
    Scas,
    /// INS.
    Ins,
    /// OUTS.
    Outs,
    /// IN (port in `imm` unless `port_dx`).
    In,
    /// OUT (port in `imm` unless `port_dx`).
    Out,
    /// SSE move of `op_size` bytes into XMM `reg` from r/m (zero-extending 4/8-byte sources):
    /// MOVUPS/MOVUPD/MOVAPS/MOVAPD/MOVDQA/MOVDQU loads, MOVD/MOVQ to XMM.
    SseLoad {
        /// #GP on a memory operand not aligned to 16 bytes.
        aligned: bool,
        /// The r/m register operand is a GPR (MOVD/MOVQ xmm, r/m) rather than an XMM.
        gpr: bool,
    },
    /// SSE move of `op_size` bytes from XMM `reg` to r/m: the stores of the above, MOVNTDQ,
    /// MOVNTPS/PD, MOVD/MOVQ from XMM, `66 0F D6` MOVQ.
    SseStore {
        /// #GP on a memory operand not aligned to 16 bytes.
        aligned: bool,
        /// The r/m register operand is a GPR rather than an XMM.
        gpr: bool,
    },
    /// CLFLUSH.
    Clflush,
    /// CLFLUSHOPT.
    Clflushopt,
}

/// Operand layout of ModRM-style instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// No explicit operands (string ops, IN/OUT).
    None,
    /// Destination r/m, source reg.
    RmReg,
    /// Destination reg, source r/m.
    RegRm,
    /// Destination r/m, source immediate.
    RmImm,
    /// Single r/m operand.
    Rm,
}

/// REP prefix in effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rep {
    /// None.
    None,
    /// `F3`: REP / REPE.
    Rep,
    /// `F2`: REPNE.
    Repne,
}

/// Pseudo register number for RIP-relative addressing in [`MemOperand::base`].
pub const RIP: u8 = 16;

/// A ModRM memory operand: `seg:[base + index*scale + disp]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register (0..=15, or [`RIP`]).
    pub base: Option<u8>,
    /// Index register (0..=15).
    pub index: Option<u8>,
    /// Scale (1, 2, 4, 8).
    pub scale: u8,
    /// Displacement, sign-extended to 64 bits.
    pub disp: u64,
}

/// The r/m operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    /// Register number (GPR 0..=15, or XMM for SSE forms).
    Reg(u8),
    /// Memory.
    Mem(MemOperand),
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// The operation.
    pub op: Op,
    /// Operand layout.
    pub form: Form,
    /// Length in bytes.
    pub len: u8,
    /// Operand size in bytes (1, 2, 4, 8, or 16 for CMPXCHG16B and 128-bit SSE moves).
    pub op_size: u8,
    /// Source size of MOVZX/MOVSX/MOVSXD, otherwise equal to `op_size`.
    pub src_size: u8,
    /// Address size in bytes (2, 4, 8).
    pub addr_size: u8,
    /// Effective segment of the memory operand (source segment of string ops).
    pub seg: Seg,
    /// ModRM.reg with REX.R (register operand, group extension, or segment number).
    pub reg: u8,
    /// The r/m operand (`Reg(0)` for accumulator forms).
    pub rm: Rm,
    /// Immediate, sign- or zero-extended as the instruction defines, to 64 bits.
    pub imm: u64,
    /// IN/OUT take the port from DX.
    pub port_dx: bool,
    /// A REX prefix is present (selects SPL/BPL/SIL/DIL over AH/CH/DH/BH).
    pub rex: bool,
    /// LOCK prefix.
    pub lock: bool,
    /// REP prefix.
    pub rep: Rep,
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ended before the instruction did (fetch more bytes and retry).
    NeedMore,
    /// Longer than 15 bytes: #GP(0).
    TooLong,
    /// An encoding the CPU rejects with #UD (bad LOCK, register form of a memory-only opcode).
    Ud,
    /// Not in the supported set.
    Unsupported,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSN_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::NeedMore)?;
        self.pos += 1;
        Ok(b)
    }

    fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.byte()?) << (8 * u32::from(i));
        }
        Ok(v)
    }

    /// Reads an `n`-byte immediate and sign-extends it to 64 bits.
    fn sx(&mut self, n: u8) -> Result<u64, DecodeError> {
        let v = self.le(n)?;
        Ok(sign_extend(v, n))
    }
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
pub fn sign_extend(v: u64, size: u8) -> u64 {
    match size {
        1 => v as u8 as i8 as i64 as u64,
        2 => v as u16 as i16 as i64 as u64,
        4 => v as u32 as i32 as i64 as u64,
        _ => v,
    }
}

/// What the opcode tables say before ModRM is read.
struct Shape {
    op: Op,
    form: Form,
    /// 1 = byte operation; 0 = the prefix-selected operand size.
    byte: bool,
    modrm: bool,
    /// Immediate bytes, 0xff = Iz (2 or 4 by operand size).
    imm: u8,
}

const IZ: u8 = 0xff;

fn shape(op: Op, form: Form, byte: bool, modrm: bool, imm: u8) -> Shape {
    Shape {
        op,
        form,
        byte,
        modrm,
        imm,
    }
}

/// Decodes one instruction from `bytes` (up to 15 bytes; fewer gives `NeedMore` if it runs out).
pub fn decode(bytes: &[u8], code: CodeSize) -> Result<Insn, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let long = code == CodeSize::Bits64;
    let mut opsize_prefix = false;
    let mut addr_prefix = false;
    let mut seg_prefix: Option<Seg> = None;
    let mut lock = false;
    let mut last_f2f3: Option<u8> = None;
    let mut rex = 0u8;
    let mut b;
    loop {
        b = c.byte()?;
        match b {
            0xf0 => lock = true,
            0xf2 | 0xf3 => last_f2f3 = Some(b),
            0x26 if !long => seg_prefix = Some(Seg::Es),
            0x2e if !long => seg_prefix = Some(Seg::Cs),
            0x36 if !long => seg_prefix = Some(Seg::Ss),
            0x3e if !long => seg_prefix = Some(Seg::Ds),
            0x64 => seg_prefix = Some(Seg::Fs),
            0x65 => seg_prefix = Some(Seg::Gs),
            0x66 => opsize_prefix = true,
            0x67 => addr_prefix = true,
            // In 64-bit mode ES/CS/SS/DS overrides are ignored (they do not undo FS/GS either).
            0x26 | 0x2e | 0x36 | 0x3e => {}
            0x40..=0x4f if long => {
                rex = b;
                continue;
            }
            _ => break,
        }
        // A legacy prefix after REX cancels the REX.
        rex = 0;
    }
    let rex_w = rex & 8 != 0;
    let rex_r = (rex >> 2) & 1;
    let rex_x = (rex >> 1) & 1;
    let rex_b = rex & 1;

    let addr_size: u8 = match (code, addr_prefix) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => 2,
        (CodeSize::Bits16, true) | (CodeSize::Bits32, false) | (CodeSize::Bits64, true) => 4,
        (CodeSize::Bits64, false) => 8,
    };
    let mut op_size: u8 = match (code, opsize_prefix) {
        (_, _) if long && rex_w => 8,
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) | (CodeSize::Bits64, true) => 2,
        _ => 4,
    };
    // Mandatory prefix for the SSE opcodes: F2/F3 (the last one) win over 66.
    let mandatory: u8 = match last_f2f3 {
        Some(p) => p,
        None if opsize_prefix => 0x66,
        None => 0,
    };
    let rep = match last_f2f3 {
        Some(0xf3) => Rep::Rep,
        Some(_) => Rep::Repne,
        None => Rep::None,
    };

    let mut insn = Insn {
        op: Op::Mov,
        form: Form::None,
        len: 0,
        op_size,
        src_size: op_size,
        addr_size,
        seg: Seg::Ds,
        reg: 0,
        rm: Rm::Reg(0),
        imm: 0,
        port_dx: false,
        rex: rex != 0,
        lock,
        rep: Rep::None,
    };
    let mut stack_op = false;
    let mut mem_only = false;
    let mut lockable = false;
    let mut string = false;
    let mut sse = false;

    let sh = if b == 0x0f {
        let b2 = c.byte()?;
        match b2 {
            0x10 | 0x11 | 0x28 | 0x29 | 0x2b if mandatory == 0 || mandatory == 0x66 => {
                sse = true;
                op_size = 16;
                let aligned = b2 != 0x10 && b2 != 0x11;
                if b2 == 0x2b {
                    mem_only = true;
                }
                let op = if b2 == 0x10 || b2 == 0x28 {
                    Op::SseLoad {
                        aligned,
                        gpr: false,
                    }
                } else {
                    Op::SseStore {
                        aligned,
                        gpr: false,
                    }
                };
                let form = if b2 & 1 == 0 {
                    Form::RegRm
                } else {
                    Form::RmReg
                };
                shape(op, form, false, true, 0)
            }
            0x6e | 0x7e if mandatory == 0x66 => {
                sse = true;
                op_size = if rex_w { 8 } else { 4 };
                if b2 == 0x6e {
                    let op = Op::SseLoad {
                        aligned: false,
                        gpr: true,
                    };
                    shape(op, Form::RegRm, false, true, 0)
                } else {
                    let op = Op::SseStore {
                        aligned: false,
                        gpr: true,
                    };
                    shape(op, Form::RmReg, false, true, 0)
                }
            }
            0x7e if mandatory == 0xf3 => {
                sse = true;
                op_size = 8;
                let op = Op::SseLoad {
                    aligned: false,
                    gpr: false,
                };
                shape(op, Form::RegRm, false, true, 0)
            }
            0xd6 if mandatory == 0x66 => {
                sse = true;
                op_size = 8;
                let op = Op::SseStore {
                    aligned: false,
                    gpr: false,
                };
                shape(op, Form::RmReg, false, true, 0)
            }
            0x6f | 0x7f if mandatory == 0x66 || mandatory == 0xf3 => {
                sse = true;
                op_size = 16;
                let aligned = mandatory == 0x66;
                if b2 == 0x6f {
                    let op = Op::SseLoad {
                        aligned,
                        gpr: false,
                    };
                    shape(op, Form::RegRm, false, true, 0)
                } else {
                    let op = Op::SseStore {
                        aligned,
                        gpr: false,
                    };
                    shape(op, Form::RmReg, false, true, 0)
                }
            }
            0xe7 if mandatory == 0x66 => {
                sse = true;
                op_size = 16;
                mem_only = true;
                let op = Op::SseStore {
                    aligned: true,
                    gpr: false,
                };
                shape(op, Form::RmReg, false, true, 0)
            }
            0x90..=0x9f => shape(Op::Setcc(b2 & 0xf), Form::Rm, true, true, 0),
            0xa3 | 0xab | 0xb3 | 0xbb => {
                let bop = match b2 {
                    0xa3 => BitOp::Bt,
                    0xab => BitOp::Bts,
                    0xb3 => BitOp::Btr,
                    _ => BitOp::Btc,
                };
                lockable = bop != BitOp::Bt;
                shape(Op::Bit(bop), Form::RmReg, false, true, 0)
            }
            0xba => {
                let m = peek_reg(&c)?;
                let bop = match m {
                    4 => BitOp::Bt,
                    5 => BitOp::Bts,
                    6 => BitOp::Btr,
                    7 => BitOp::Btc,
                    _ => return Err(DecodeError::Unsupported),
                };
                lockable = bop != BitOp::Bt;
                shape(Op::Bit(bop), Form::RmImm, false, true, 1)
            }
            0xb0 | 0xb1 => {
                lockable = true;
                shape(Op::Cmpxchg, Form::RmReg, b2 == 0xb0, true, 0)
            }
            0xc0 | 0xc1 => {
                lockable = true;
                shape(Op::Xadd, Form::RmReg, b2 == 0xc0, true, 0)
            }
            0xb6 | 0xb7 | 0xbe | 0xbf => {
                insn.src_size = if b2 & 1 == 0 { 1 } else { 2 };
                let op = if b2 < 0xb8 { Op::Movzx } else { Op::Movsx };
                shape(op, Form::RegRm, false, true, 0)
            }
            0xc3 if mandatory == 0 => {
                mem_only = true;
                op_size = if rex_w { 8 } else { 4 };
                shape(Op::Movnti, Form::RmReg, false, true, 0)
            }
            0xc7 => {
                if peek_reg(&c)? != 1 {
                    return Err(DecodeError::Unsupported);
                }
                mem_only = true;
                lockable = true;
                op_size = if rex_w { 16 } else { 8 };
                shape(Op::CmpxchgNb, Form::Rm, false, true, 0)
            }
            0xae if mandatory == 0 || mandatory == 0x66 => {
                if peek_reg(&c)? != 7 || peek_mod(&c)? == 3 {
                    return Err(DecodeError::Unsupported);
                }
                let op = if mandatory == 0 {
                    Op::Clflush
                } else {
                    Op::Clflushopt
                };
                op_size = 1;
                shape(op, Form::Rm, false, true, 0)
            }
            0x38 => {
                let b3 = c.byte()?;
                match b3 {
                    0xf0 | 0xf1 if mandatory == 0 || mandatory == 0x66 => {
                        mem_only = true;
                        let form = if b3 == 0xf0 { Form::RegRm } else { Form::RmReg };
                        shape(Op::Movbe, form, false, true, 0)
                    }
                    _ => return Err(DecodeError::Unsupported),
                }
            }
            _ => return Err(DecodeError::Unsupported),
        }
    } else {
        match b {
            0x00..=0x3f if b & 7 < 6 => {
                let op = AluOp::from_index(b >> 3);
                let byte = b & 1 == 0;
                match b & 7 {
                    0 | 1 => {
                        lockable = op != AluOp::Cmp;
                        shape(Op::Alu(op), Form::RmReg, byte, true, 0)
                    }
                    2 | 3 => shape(Op::Alu(op), Form::RegRm, byte, true, 0),
                    _ => shape(
                        Op::Alu(op),
                        Form::RmImm,
                        byte,
                        false,
                        if byte { 1 } else { IZ },
                    ),
                }
            }
            0x63 if long => {
                insn.src_size = 4;
                shape(Op::Movsxd, Form::RegRm, false, true, 0)
            }
            0x80..=0x83 => {
                if b == 0x82 && long {
                    return Err(DecodeError::Unsupported);
                }
                let op = AluOp::from_index(peek_reg(&c)?);
                lockable = op != AluOp::Cmp;
                let byte = b != 0x81 && b != 0x83;
                let imm = if b == 0x81 { IZ } else { 1 };
                shape(Op::Alu(op), Form::RmImm, byte, true, imm)
            }
            0x84 | 0x85 => shape(Op::Test, Form::RmReg, b == 0x84, true, 0),
            0x86 | 0x87 => {
                lockable = true;
                shape(Op::Xchg, Form::RmReg, b == 0x86, true, 0)
            }
            0x88..=0x8b => {
                let form = if b & 2 == 0 { Form::RmReg } else { Form::RegRm };
                shape(Op::Mov, form, b & 1 == 0, true, 0)
            }
            0x8c => {
                if peek_reg(&c)? > 5 {
                    return Err(DecodeError::Unsupported);
                }
                if peek_mod(&c)? != 3 {
                    op_size = 2;
                }
                shape(Op::MovFromSreg, Form::RmReg, false, true, 0)
            }
            0x8f => {
                if peek_reg(&c)? != 0 {
                    return Err(DecodeError::Unsupported);
                }
                stack_op = true;
                shape(Op::Pop, Form::Rm, false, true, 0)
            }
            0xa0..=0xa3 => {
                // MOV AL/rAX, moffs and MOV moffs, AL/rAX: an r/m operand with only a displacement.
                let form = if b < 0xa2 { Form::RegRm } else { Form::RmReg };
                shape(Op::Mov, form, b & 1 == 0, false, 0)
            }
            0xa4 | 0xa5 => {
                string = true;
                shape(Op::Movs, Form::None, b & 1 == 0, false, 0)
            }
            0xa6 | 0xa7 => {
                string = true;
                shape(Op::Cmps, Form::None, b & 1 == 0, false, 0)
            }
            0xa8 | 0xa9 => {
                let imm = if b == 0xa8 { 1 } else { IZ };
                shape(Op::Test, Form::RmImm, b == 0xa8, false, imm)
            }
            0xaa | 0xab => {
                string = true;
                shape(Op::Stos, Form::None, b & 1 == 0, false, 0)
            }
            0xac | 0xad => {
                string = true;
                shape(Op::Lods, Form::None, b & 1 == 0, false, 0)
            }
            0xae | 0xaf => {
                string = true;
                shape(Op::Scas, Form::None, b & 1 == 0, false, 0)
            }
            0x6c | 0x6d => {
                string = true;
                shape(Op::Ins, Form::None, b & 1 == 0, false, 0)
            }
            0x6e | 0x6f => {
                string = true;
                shape(Op::Outs, Form::None, b & 1 == 0, false, 0)
            }
            0xc6 | 0xc7 => {
                if peek_reg(&c)? != 0 {
                    return Err(DecodeError::Unsupported);
                }
                let imm = if b == 0xc6 { 1 } else { IZ };
                shape(Op::Mov, Form::RmImm, b == 0xc6, true, imm)
            }
            0xe4 | 0xe5 => shape(Op::In, Form::None, b == 0xe4, false, 1),
            0xe6 | 0xe7 => shape(Op::Out, Form::None, b == 0xe6, false, 1),
            0xec | 0xed => {
                insn.port_dx = true;
                shape(Op::In, Form::None, b == 0xec, false, 0)
            }
            0xee | 0xef => {
                insn.port_dx = true;
                shape(Op::Out, Form::None, b == 0xee, false, 0)
            }
            0xf6 | 0xf7 => {
                let byte = b == 0xf6;
                match peek_reg(&c)? {
                    0 | 1 => shape(Op::Test, Form::RmImm, byte, true, if byte { 1 } else { IZ }),
                    2 => {
                        lockable = true;
                        shape(Op::Not, Form::Rm, byte, true, 0)
                    }
                    3 => {
                        lockable = true;
                        shape(Op::Neg, Form::Rm, byte, true, 0)
                    }
                    _ => return Err(DecodeError::Unsupported),
                }
            }
            0xfe | 0xff => {
                let byte = b == 0xfe;
                match peek_reg(&c)? {
                    0 => {
                        lockable = true;
                        shape(Op::Inc, Form::Rm, byte, true, 0)
                    }
                    1 => {
                        lockable = true;
                        shape(Op::Dec, Form::Rm, byte, true, 0)
                    }
                    6 if !byte => {
                        stack_op = true;
                        shape(Op::Push, Form::Rm, false, true, 0)
                    }
                    _ => return Err(DecodeError::Unsupported),
                }
            }
            _ => return Err(DecodeError::Unsupported),
        }
    };

    // Operand size adjustments.
    if stack_op && long {
        op_size = if opsize_prefix && !rex_w { 2 } else { 8 };
    }
    if matches!(sh.op, Op::In | Op::Out | Op::Ins | Op::Outs) && op_size == 8 {
        op_size = 4;
    }
    if sh.byte {
        op_size = 1;
    }
    insn.op = sh.op;
    insn.form = sh.form;
    insn.op_size = op_size;
    if sh.op == Op::Movsxd {
        insn.src_size = op_size.min(4);
    } else if !matches!(sh.op, Op::Movzx | Op::Movsx) {
        insn.src_size = op_size;
    }

    let mut default_seg = Seg::Ds;
    if sh.modrm {
        let m = c.byte()?;
        let md = m >> 6;
        insn.reg = ((m >> 3) & 7) | (rex_r << 3);
        if sh.op == Op::MovFromSreg {
            insn.reg &= 7; // REX.R does not extend segment register numbers.
        }
        let rm = m & 7;
        if md == 3 {
            if mem_only || matches!(sh.op, Op::Clflush | Op::Clflushopt) {
                return Err(DecodeError::Ud);
            }
            insn.rm = Rm::Reg(rm | (rex_b << 3));
        } else if addr_size == 2 {
            let (base, index) = match rm {
                0 => (Some(3), Some(6)),
                1 => (Some(3), Some(7)),
                2 => (Some(5), Some(6)),
                3 => (Some(5), Some(7)),
                4 => (Some(6), None),
                5 => (Some(7), None),
                6 => (if md == 0 { None } else { Some(5) }, None),
                _ => (Some(3), None),
            };
            if base == Some(5) {
                default_seg = Seg::Ss;
            }
            let disp = match md {
                0 if rm == 6 => c.sx(2)?,
                0 => 0,
                1 => c.sx(1)?,
                _ => c.sx(2)?,
            };
            insn.rm = Rm::Mem(MemOperand {
                base,
                index,
                scale: 1,
                disp,
            });
        } else {
            let mut mem = MemOperand {
                base: None,
                index: None,
                scale: 1,
                disp: 0,
            };
            let mut disp32 = md == 2;
            if rm == 4 {
                let sib = c.byte()?;
                mem.scale = 1 << (sib >> 6);
                let idx = ((sib >> 3) & 7) | (rex_x << 3);
                if idx != 4 {
                    mem.index = Some(idx);
                }
                let base = sib & 7;
                if base == 5 && md == 0 {
                    disp32 = true;
                } else {
                    mem.base = Some(base | (rex_b << 3));
                }
            } else if rm == 5 && md == 0 {
                disp32 = true;
                if long {
                    mem.base = Some(RIP);
                }
            } else {
                mem.base = Some(rm | (rex_b << 3));
            }
            if matches!(mem.base, Some(4) | Some(5)) {
                default_seg = Seg::Ss;
            }
            mem.disp = if disp32 {
                c.sx(4)?
            } else if md == 1 {
                c.sx(1)?
            } else {
                0
            };
            insn.rm = Rm::Mem(mem);
        }
    } else if matches!(b, 0xa0..=0xa3) {
        let disp = c.le(addr_size)?;
        insn.rm = Rm::Mem(MemOperand {
            base: None,
            index: None,
            scale: 1,
            disp,
        });
    }

    if string {
        insn.rep = rep;
    }
    if sse {
        insn.rep = Rep::None;
    }

    // Immediate.
    match sh.imm {
        0 => {}
        IZ => {
            let n = if op_size == 2 { 2 } else { 4 };
            insn.imm = c.sx(n)?;
        }
        n => {
            // Ib: zero-extended port numbers and bit offsets, sign-extended for group 1 (83).
            let v = c.le(n)?;
            insn.imm = if matches!(sh.op, Op::In | Op::Out | Op::Bit(_)) {
                v
            } else {
                sign_extend(v, n)
            };
        }
    }

    // Segment: FS/GS overrides always apply; the others are ignored in 64-bit mode.
    insn.seg = match seg_prefix {
        Some(s @ (Seg::Fs | Seg::Gs)) => s,
        Some(s) if !long => s,
        _ => default_seg,
    };

    // LOCK: only on lockable instructions with a memory destination.
    if lock && (!lockable || !matches!(insn.rm, Rm::Mem(_))) {
        return Err(DecodeError::Ud);
    }
    if lock && sh.form == Form::RegRm {
        return Err(DecodeError::Ud);
    }

    insn.len = c.pos as u8;
    Ok(insn)
}

fn peek(c: &Cursor<'_>) -> Result<u8, DecodeError> {
    if c.pos >= MAX_INSN_LEN {
        return Err(DecodeError::TooLong);
    }
    c.bytes.get(c.pos).copied().ok_or(DecodeError::NeedMore)
}

fn peek_reg(c: &Cursor<'_>) -> Result<u8, DecodeError> {
    Ok((peek(c)? >> 3) & 7)
}

fn peek_mod(c: &Cursor<'_>) -> Result<u8, DecodeError> {
    Ok(peek(c)? >> 6)
}
