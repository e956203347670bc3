//! Proof 1: the decoder against iced-x86 on random byte strings and a corpus of MMIO instructions.
//!
//! For every instruction iced-x86 decodes to a supported form, ours must decode it with the same
//! length, operation, operand size, address size, segment, registers, memory-operand parts and
//! immediate. Everything else must be rejected (never a panic). A truncated copy must ask for more.

use emulate::cpu::Seg;
use emulate::decode::{decode, AluOp, BitOp, CodeSize, DecodeError, Insn, Op, Rep, Rm, RIP};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use std::collections::HashSet;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The iced `Code`s (exact encodings) that are in our supported set.
fn supported_codes() -> HashSet<Code> {
    let alu = [
        "Add_", "Or_", "Adc_", "Sbb_", "And_", "Sub_", "Xor_", "Cmp_",
    ];
    let exact_prefix = [
        "Test_",
        "Not_",
        "Neg_",
        "Inc_rm",
        "Dec_rm",
        "Movzx_",
        "Movsx_",
        "Movsxd_",
        "Movbe_",
        "Movnti_",
        "Xchg_rm",
        "Cmpxchg_rm",
        "Cmpxchg8b_",
        "Cmpxchg16b_",
        "Xadd_",
        "Bt_",
        "Bts_",
        "Btr_",
        "Btc_",
        "Push_rm",
        "Pop_rm",
        "Movsb_",
        "Movsw_",
        "Movsd_m",
        "Movsq_",
        "Cmpsb_",
        "Cmpsw_",
        "Cmpsd_m",
        "Cmpsq_",
        "Stosb_",
        "Stosw_",
        "Stosd_",
        "Stosq_",
        "Lodsb_",
        "Lodsw_",
        "Lodsd_",
        "Lodsq_",
        "Scasb_",
        "Scasw_",
        "Scasd_",
        "Scasq_",
        "Insb_",
        "Insw_",
        "Insd_",
        "Outsb_",
        "Outsw_",
        "Outsd_",
        "In_",
        "Out_",
        "Movups_",
        "Movupd_",
        "Movaps_",
        "Movapd_",
        "Movdqa_",
        "Movdqu_",
        "Movntdq_",
        "Movntps_",
        "Movntpd_",
        "Movd_xmm",
        "Movd_rm32_xmm",
        "Movq_xmm",
        "Movq_rm64_xmm",
        "Clflush_",
        "Clflushopt_",
    ];
    let mut set = HashSet::new();
    for code in Code::values() {
        let name = format!("{code:?}");
        let mov = name.starts_with("Mov_")
            && (name.contains("_rm") || name.contains("moffs") || name.ends_with("_Sreg"))
            && !name.starts_with("Mov_Sreg");
        let setcc = name.starts_with("Set") && name.ends_with("_rm8");
        let ok = alu.iter().any(|p| name.starts_with(p))
            || exact_prefix.iter().any(|p| name.starts_with(p))
            || mov
            || setcc;
        if ok {
            set.insert(code);
        }
    }
    set
}

fn bitness(code: CodeSize) -> u32 {
    match code {
        CodeSize::Bits16 => 16,
        CodeSize::Bits32 => 32,
        CodeSize::Bits64 => 64,
    }
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

/// GPR number and whether it is a legacy high-byte register (AH..BH).
fn gpr(reg: Register) -> (u8, bool) {
    if matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        return ((reg.number() - 4) as u8, true);
    }
    (reg.full_register().number() as u8, false)
}

fn my_reg(n: u8, size: u8, insn: &Insn) -> (u8, bool) {
    if size == 1 && !insn.rex && (4..8).contains(&n) {
        (n - 4, true)
    } else {
        (n, false)
    }
}

fn mnemonics(op: Op, size: u8) -> Vec<Mnemonic> {
    use Mnemonic as M;
    let by_size = |b: M, w: M, d: M, q: M| match size {
        1 => vec![b],
        2 => vec![w],
        4 => vec![d],
        _ => vec![q],
    };
    match op {
        Op::Alu(a) => vec![match a {
            AluOp::Add => M::Add,
            AluOp::Or => M::Or,
            AluOp::Adc => M::Adc,
            AluOp::Sbb => M::Sbb,
            AluOp::And => M::And,
            AluOp::Sub => M::Sub,
            AluOp::Xor => M::Xor,
            AluOp::Cmp => M::Cmp,
        }],
        Op::Test => vec![M::Test],
        Op::Not => vec![M::Not],
        Op::Neg => vec![M::Neg],
        Op::Inc => vec![M::Inc],
        Op::Dec => vec![M::Dec],
        Op::Mov | Op::MovFromSreg => vec![M::Mov],
        Op::Movzx => vec![M::Movzx],
        Op::Movsx => vec![M::Movsx],
        Op::Movsxd => vec![M::Movsxd],
        Op::Movbe => vec![M::Movbe],
        Op::Movnti => vec![M::Movnti],
        Op::Xchg => vec![M::Xchg],
        Op::Cmpxchg => vec![M::Cmpxchg],
        Op::CmpxchgNb => vec![if size == 8 {
            M::Cmpxchg8b
        } else {
            M::Cmpxchg16b
        }],
        Op::Xadd => vec![M::Xadd],
        Op::Bit(b) => vec![match b {
            BitOp::Bt => M::Bt,
            BitOp::Bts => M::Bts,
            BitOp::Btr => M::Btr,
            BitOp::Btc => M::Btc,
        }],
        Op::Setcc(cc) => vec![
            [
                M::Seto,
                M::Setno,
                M::Setb,
                M::Setae,
                M::Sete,
                M::Setne,
                M::Setbe,
                M::Seta,
                M::Sets,
                M::Setns,
                M::Setp,
                M::Setnp,
                M::Setl,
                M::Setge,
                M::Setle,
                M::Setg,
            ][cc as usize],
        ],
        Op::Push => vec![M::Push],
        Op::Pop => vec![M::Pop],
        Op::Movs => by_size(M::Movsb, M::Movsw, M::Movsd, M::Movsq),
        Op::Cmps => by_size(M::Cmpsb, M::Cmpsw, M::Cmpsd, M::Cmpsq),
        Op::Stos => by_size(M::Stosb, M::Stosw, M::Stosd, M::Stosq),
        Op::Lods => by_size(M::Lodsb, M::Lodsw, M::Lodsd, M::Lodsq),
        Op::Scas => by_size(M::Scasb, M::Scasw, M::Scasd, M::Scasq),
        Op::Ins => by_size(M::Insb, M::Insw, M::Insd, M::Insd),
        Op::Outs => by_size(M::Outsb, M::Outsw, M::Outsd, M::Outsd),
        Op::In => vec![M::In],
        Op::Out => vec![M::Out],
        Op::SseLoad { aligned: true, .. } | Op::SseStore { aligned: true, .. } => vec![
            M::Movaps,
            M::Movapd,
            M::Movdqa,
            M::Movntdq,
            M::Movntps,
            M::Movntpd,
        ],
        Op::SseLoad { aligned: false, .. } | Op::SseStore { aligned: false, .. } => {
            vec![M::Movups, M::Movupd, M::Movdqu, M::Movd, M::Movq]
        }
        Op::Clflush => vec![M::Clflush],
        Op::Clflushopt => vec![M::Clflushopt],
    }
}

fn iced_seg(r: Register) -> Seg {
    match r {
        Register::ES => Seg::Es,
        Register::CS => Seg::Cs,
        Register::SS => Seg::Ss,
        Register::DS => Seg::Ds,
        Register::FS => Seg::Fs,
        Register::GS => Seg::Gs,
        other => panic!("segment {other:?}"),
    }
}

/// In 64-bit mode the CPU ignores ES/CS/SS/DS overrides (iced still reports them): compare only
/// FS, GS or flat there.
fn seg_class(code: CodeSize, s: Seg) -> Option<Seg> {
    match (code, s) {
        (CodeSize::Bits64, Seg::Fs | Seg::Gs) | (CodeSize::Bits16 | CodeSize::Bits32, _) => Some(s),
        _ => None,
    }
}

fn is_string(op: Op) -> bool {
    matches!(
        op,
        Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::Scas | Op::Ins | Op::Outs
    )
}

/// Compares one supported instruction; returns a description of the first disagreement.
fn compare(bytes: &[u8], code: CodeSize, i: &Instruction, m: &Insn) -> Result<(), String> {
    macro_rules! check {
        ($what:expr, $ours:expr, $theirs:expr) => {
            if $ours != $theirs {
                return Err(format!("{}: ours {:?} iced {:?}", $what, $ours, $theirs));
            }
        };
    }
    check!("length", m.len as usize, i.len());
    let names = mnemonics(m.op, m.op_size);
    if !names.contains(&i.mnemonic()) {
        return Err(format!("mnemonic: ours {:?} iced {:?}", m.op, i.mnemonic()));
    }
    let has_mem = (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory);
    let sse = matches!(m.op, Op::SseLoad { .. } | Op::SseStore { .. });

    // Operand size.
    let expected_size: u32 = if is_string(m.op)
        || matches!(m.op, Op::CmpxchgNb | Op::Clflush | Op::Clflushopt)
    {
        i.memory_size().size() as u32
    } else if sse {
        if has_mem {
            i.memory_size().size() as u32
        } else {
            let gp = (0..i.op_count())
                .filter(|&k| i.op_kind(k) == OpKind::Register)
                .map(|k| i.op_register(k))
                .find(|r| r.is_gpr());
            match gp {
                Some(r) => r.size() as u32,
                None if i.code() == Code::Movq_xmm_xmmm64 || i.code() == Code::Movq_xmmm64_xmm => 8,
                None => 16,
            }
        }
    } else if m.op == Op::Out {
        i.op_register(1).size() as u32
    } else if i.op_kind(0) == OpKind::Register {
        i.op_register(0).size() as u32
    } else if i.op_kind(0) == OpKind::Memory {
        i.memory_size().size() as u32
    } else if i.op_count() > 1 && i.op_kind(1) == OpKind::Register {
        i.op_register(1).size() as u32
    } else {
        return Err("no operand size found".into());
    };
    check!("operand size", u32::from(m.op_size), expected_size);
    if matches!(m.op, Op::Movzx | Op::Movsx | Op::Movsxd) {
        let src = if i.op_kind(1) == OpKind::Register {
            i.op_register(1).size()
        } else {
            i.memory_size().size()
        };
        check!("source size", m.src_size as usize, src);
    }

    // Register operands (ModRM.reg and register r/m).
    for k in 0..i.op_count() {
        if i.op_kind(k) != OpKind::Register {
            continue;
        }
        let r = i.op_register(k);
        if r.is_segment_register() {
            check!("sreg", m.reg as usize, iced_seg(r) as usize);
            continue;
        }
        if matches!(m.op, Op::In | Op::Out | Op::Ins | Op::Outs) {
            continue; // AL/AX/EAX and DX are implicit.
        }
        let (n, high) = if r.is_xmm() {
            (r.number() as u8, false)
        } else {
            gpr(r)
        };
        let size = r.size() as u8;
        let ours = match (k, m.form) {
            // First operand is r/m for RmReg/RmImm/Rm, the reg operand for RegRm.
            (0, emulate::decode::Form::RegRm) | (1, emulate::decode::Form::RmReg) => {
                if r.is_xmm() {
                    (m.reg, false)
                } else {
                    my_reg(m.reg, size, m)
                }
            }
            _ => match m.rm {
                Rm::Reg(x) if r.is_xmm() => (x, false),
                Rm::Reg(x) => my_reg(x, size, m),
                Rm::Mem(_) => return Err(format!("register operand {k} but ours is memory")),
            },
        };
        check!(format!("register operand {k}"), ours, (n, high));
    }

    // Memory operand.
    if has_mem {
        let Rm::Mem(mem) = m.rm else {
            return Err("iced has a memory operand, ours none".into());
        };
        let amask = mask(m.addr_size);
        let ib = i.memory_base();
        let ii = i.memory_index();
        match mem.base {
            Some(RIP) => {
                let disp = (u64::from(m.len).wrapping_add(mem.disp)) & amask;
                check!("rip base", true, ib == Register::RIP || ib == Register::EIP);
                check!("rip disp", disp, i.memory_displacement64());
                check!("addr size", m.addr_size as usize, ib.size());
            }
            b => {
                check!("base", b, (ib != Register::None).then(|| gpr(ib).0));
                check!("disp", mem.disp & amask, i.memory_displacement64() & amask);
                if ib != Register::None {
                    check!("addr size", m.addr_size as usize, ib.size());
                }
            }
        }
        check!(
            "index",
            mem.index,
            (ii != Register::None).then(|| gpr(ii).0)
        );
        if ii != Register::None {
            check!("scale", mem.scale as u32, i.memory_index_scale());
            check!("addr size", m.addr_size as usize, ii.size());
        }
        if ib == Register::None
            && ii == Register::None
            && matches!(bytes_opcode(bytes, code), 0xa0..=0xa3)
        {
            check!("moffs size", m.addr_size as u32, i.memory_displ_size());
        }
        check!(
            "segment",
            seg_class(code, m.seg),
            seg_class(code, iced_seg(i.memory_segment()))
        );
    } else if let Rm::Mem(_) = m.rm {
        return Err("ours has a memory operand, iced none".into());
    }

    // String operands: address size and source segment.
    if is_string(m.op) {
        for k in 0..i.op_count() {
            let a = match i.op_kind(k) {
                OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => 2,
                OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => 4,
                OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => 8,
                _ => continue,
            };
            check!("string addr size", m.addr_size, a);
            if matches!(
                i.op_kind(k),
                OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI
            ) {
                check!(
                    "string segment",
                    seg_class(code, m.seg),
                    seg_class(code, iced_seg(i.memory_segment()))
                );
            }
        }
        let rep = if i.has_repe_prefix() {
            Rep::Rep
        } else if i.has_repne_prefix() {
            Rep::Repne
        } else {
            Rep::None
        };
        check!("rep", m.rep, rep);
    }

    // Immediate.
    for k in 0..i.op_count() {
        let kind = i.op_kind(k);
        let is_imm = matches!(
            kind,
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        );
        if is_imm {
            let theirs = i.immediate(k);
            let msize = if kind == OpKind::Immediate8 {
                1
            } else {
                m.op_size
            };
            check!("immediate", m.imm & mask(msize), theirs & mask(msize));
        }
    }
    check!("lock", m.lock, i.has_lock_prefix());
    Ok(())
}

/// The opcode byte after the prefixes (approximate: for the moffs check only).
fn bytes_opcode(bytes: &[u8], code: CodeSize) -> u8 {
    for &b in bytes {
        match b {
            0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 => {}
            0x40..=0x4f if code == CodeSize::Bits64 => {}
            _ => return b,
        }
    }
    0
}

#[derive(Default, Debug)]
struct Stats {
    supported: u64,
    rejected: u64,
}

fn check_one(bytes: &[u8], code: CodeSize, supported: &HashSet<Code>, stats: &mut Stats) {
    let mut dec = Decoder::with_ip(bitness(code), bytes, 0, DecoderOptions::NONE);
    let i = dec.decode();
    let ours = decode(bytes, code);
    let supp = !i.is_invalid() && supported.contains(&i.code());
    match (&ours, supp) {
        (Ok(m), true) => {
            if let Err(e) = compare(bytes, code, &i, m) {
                panic!("{code:?} {bytes:02x?} ({:?}): {e}\nours {m:?}", i.code());
            }
            // Truncated input must ask for more bytes, never decode something else.
            let short = decode(&bytes[..i.len() - 1], code);
            assert_eq!(
                short,
                Err(DecodeError::NeedMore),
                "{code:?} {bytes:02x?} truncated"
            );
            stats.supported += 1;
        }
        (Ok(m), false) => panic!(
            "{code:?} {bytes:02x?}: ours accepts {m:?}, iced says {:?} (invalid={})",
            i.code(),
            i.is_invalid()
        ),
        (Err(e), true) => panic!(
            "{code:?} {bytes:02x?}: ours rejects ({e:?}) supported {:?}",
            i.code()
        ),
        (Err(_), false) => stats.rejected += 1,
    }
}

/// Opcode starts that lead into the supported set, to bias random strings toward it.
const OPCODES: &[&[u8]] = &[
    &[0x00],
    &[0x01],
    &[0x02],
    &[0x03],
    &[0x04],
    &[0x05],
    &[0x08],
    &[0x09],
    &[0x0a],
    &[0x0b],
    &[0x10],
    &[0x11],
    &[0x13],
    &[0x18],
    &[0x19],
    &[0x1b],
    &[0x20],
    &[0x21],
    &[0x23],
    &[0x25],
    &[0x28],
    &[0x29],
    &[0x2b],
    &[0x30],
    &[0x31],
    &[0x33],
    &[0x38],
    &[0x39],
    &[0x3b],
    &[0x3d],
    &[0x63],
    &[0x6c],
    &[0x6d],
    &[0x6e],
    &[0x6f],
    &[0x80],
    &[0x81],
    &[0x82],
    &[0x83],
    &[0x84],
    &[0x85],
    &[0x86],
    &[0x87],
    &[0x88],
    &[0x89],
    &[0x8a],
    &[0x8b],
    &[0x8c],
    &[0x8f],
    &[0xa0],
    &[0xa1],
    &[0xa2],
    &[0xa3],
    &[0xa4],
    &[0xa5],
    &[0xa6],
    &[0xa7],
    &[0xa8],
    &[0xa9],
    &[0xaa],
    &[0xab],
    &[0xac],
    &[0xad],
    &[0xae],
    &[0xaf],
    &[0xc6],
    &[0xc7],
    &[0xe4],
    &[0xe5],
    &[0xe6],
    &[0xe7],
    &[0xec],
    &[0xed],
    &[0xee],
    &[0xef],
    &[0xf6],
    &[0xf7],
    &[0xfe],
    &[0xff],
    &[0x0f, 0x10],
    &[0x0f, 0x11],
    &[0x0f, 0x28],
    &[0x0f, 0x29],
    &[0x0f, 0x2b],
    &[0x0f, 0x6e],
    &[0x0f, 0x6f],
    &[0x0f, 0x7e],
    &[0x0f, 0x7f],
    &[0x0f, 0xd6],
    &[0x0f, 0xe7],
    &[0x0f, 0x94],
    &[0x0f, 0x9f],
    &[0x0f, 0xa3],
    &[0x0f, 0xab],
    &[0x0f, 0xb3],
    &[0x0f, 0xbb],
    &[0x0f, 0xba],
    &[0x0f, 0xb0],
    &[0x0f, 0xb1],
    &[0x0f, 0xc0],
    &[0x0f, 0xc1],
    &[0x0f, 0xb6],
    &[0x0f, 0xb7],
    &[0x0f, 0xbe],
    &[0x0f, 0xbf],
    &[0x0f, 0xc3],
    &[0x0f, 0xc7],
    &[0x0f, 0xae],
    &[0x0f, 0x38, 0xf0],
    &[0x0f, 0x38, 0xf1],
    &[0x0f, 0x38, 0xf2],
];
const PREFIXES: &[u8] = &[
    0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0x40, 0x41, 0x44, 0x48, 0x4c,
    0x4f,
];

fn random_bytes(rng: &mut Rng, buf: &mut [u8; 15]) {
    for b in buf.iter_mut() {
        *b = rng.next() as u8;
    }
    if rng.below(4) == 0 {
        return; // fully random
    }
    let mut pos = 0;
    let npre = [0, 0, 1, 1, 2, 3, 4, 6][rng.below(8)];
    for _ in 0..npre {
        buf[pos] = PREFIXES[rng.below(PREFIXES.len())];
        pos += 1;
    }
    let op = OPCODES[rng.below(OPCODES.len())];
    buf[pos..pos + op.len()].copy_from_slice(op);
}

fn run_mode(code: CodeSize, n: u64, seed: u64) -> Stats {
    let supported = supported_codes();
    let mut rng = Rng(seed);
    let mut stats = Stats::default();
    let mut buf = [0u8; 15];
    for _ in 0..n {
        random_bytes(&mut rng, &mut buf);
        check_one(&buf, code, &supported, &mut stats);
    }
    stats
}

const N: u64 = 1_000_000;

#[test]
fn random_16() {
    let s = run_mode(CodeSize::Bits16, N, 0x1234_5678_9abc_def1);
    println!("16-bit: {s:?}");
    assert!(
        s.supported > N / 4,
        "too few supported instructions exercised: {s:?}"
    );
}

#[test]
fn random_32() {
    let s = run_mode(CodeSize::Bits32, N, 0x0fed_cba9_8765_4321);
    println!("32-bit: {s:?}");
    assert!(
        s.supported > N / 4,
        "too few supported instructions exercised: {s:?}"
    );
}

#[test]
fn random_64() {
    let s = run_mode(CodeSize::Bits64, N, 0x5555_aaaa_3333_cccc);
    println!("64-bit: {s:?}");
    assert!(
        s.supported > N / 4,
        "too few supported instructions exercised: {s:?}"
    );
}

/// Instructions real guests use on MMIO (Linux readl/writel and friends, virtio, e1000, AHCI,
/// VGA, Windows HAL, OVMF/SeaBIOS), in the mode they appear in.
#[test]
fn mmio_corpus() {
    let corpus: &[(CodeSize, &[u8])] = &[
        (CodeSize::Bits64, &[0x8b, 0x00]),             // mov eax,[rax]
        (CodeSize::Bits64, &[0x89, 0x10]),             // mov [rax],edx
        (CodeSize::Bits64, &[0x89, 0x34, 0x24]),       // mov [rsp],esi
        (CodeSize::Bits64, &[0x41, 0x89, 0x45, 0x14]), // mov [r13+0x14],eax
        (CodeSize::Bits64, &[0x8b, 0x87, 0x00, 0x01, 0x00, 0x00]), // mov eax,[rdi+0x100]
        (
            CodeSize::Bits64,
            &[0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0xe0, 0xfe],
        ), // mov rax,[0xfee00000]
        (CodeSize::Bits64, &[0x0f, 0xb7, 0x47, 0x02]), // movzx eax,word [rdi+2]
        (CodeSize::Bits64, &[0x0f, 0xb6, 0x06]),       // movzx eax,byte [rsi]
        (CodeSize::Bits64, &[0x66, 0x89, 0x50, 0x10]), // mov [rax+0x10],dx
        (CodeSize::Bits64, &[0x88, 0x50, 0x10]),       // mov [rax+0x10],dl
        (
            CodeSize::Bits64,
            &[0xc7, 0x40, 0x04, 0x01, 0x00, 0x00, 0x00],
        ), // mov dword [rax+4],1
        (CodeSize::Bits64, &[0x48, 0x89, 0x02]),       // mov [rdx],rax
        (CodeSize::Bits64, &[0x8b, 0x05, 0x10, 0x00, 0x00, 0x00]), // mov eax,[rip+0x10]
        (CodeSize::Bits64, &[0xf0, 0x83, 0x08, 0x01]), // lock or dword [rax],1
        (CodeSize::Bits64, &[0x87, 0x07]),             // xchg [rdi],eax
        (CodeSize::Bits64, &[0xf0, 0x0f, 0xb1, 0x0a]), // lock cmpxchg [rdx],ecx
        (CodeSize::Bits64, &[0xf3, 0x48, 0xa5]),       // rep movsq
        (CodeSize::Bits64, &[0xf3, 0xaa]),             // rep stosb
        (CodeSize::Bits64, &[0x66, 0x0f, 0x6f, 0x06]), // movdqa xmm0,[rsi]
        (CodeSize::Bits64, &[0xf3, 0x0f, 0x7f, 0x07]), // movdqu [rdi],xmm0
        (CodeSize::Bits64, &[0x0f, 0x29, 0x07]),       // movaps [rdi],xmm0
        (CodeSize::Bits64, &[0x66, 0x0f, 0xe7, 0x07]), // movntdq [rdi],xmm0
        (CodeSize::Bits64, &[0x0f, 0xc3, 0x07]),       // movnti [rdi],eax
        (CodeSize::Bits64, &[0x66, 0x0f, 0x7e, 0x07]), // movd [rdi],xmm0
        (CodeSize::Bits64, &[0x66, 0x48, 0x0f, 0x6e, 0x07]), // movq xmm0,[rdi]
        (CodeSize::Bits64, &[0x0f, 0xae, 0x38]),       // clflush [rax]
        (CodeSize::Bits64, &[0x66, 0x0f, 0xae, 0x38]), // clflushopt [rax]
        (CodeSize::Bits64, &[0x0f, 0x38, 0xf1, 0x07]), // movbe [rdi],eax
        (CodeSize::Bits64, &[0x0f, 0xba, 0x20, 0x03]), // bt dword [rax],3
        (CodeSize::Bits64, &[0xf0, 0x0f, 0xab, 0x07]), // lock bts [rdi],eax
        (CodeSize::Bits64, &[0x85, 0x07]),             // test [rdi],eax
        (CodeSize::Bits64, &[0x0f, 0xc7, 0x0f]),       // cmpxchg8b [rdi]
        (CodeSize::Bits64, &[0x48, 0x0f, 0xc7, 0x0f]), // cmpxchg16b [rdi]
        (CodeSize::Bits64, &[0x65, 0x8b, 0x04, 0x25, 0x10, 0, 0, 0]), // mov eax,gs:[0x10]
        (CodeSize::Bits32, &[0x8b, 0x02]),             // mov eax,[edx]
        (CodeSize::Bits32, &[0xa1, 0x00, 0x00, 0xe0, 0xfe]), // mov eax,[0xfee00000]
        (CodeSize::Bits32, &[0xa3, 0xb0, 0x00, 0xe0, 0xfe]), // mov [0xfee000b0],eax
        (CodeSize::Bits32, &[0x89, 0x44, 0x8b, 0x08]), // mov [ebx+ecx*4+8],eax
        (CodeSize::Bits32, &[0xf3, 0xa5]),             // rep movsd
        (CodeSize::Bits32, &[0xf3, 0x6d]),             // rep insd
        (CodeSize::Bits32, &[0xf3, 0x6e]),             // rep outsb
        (CodeSize::Bits32, &[0xec]),                   // in al,dx
        (CodeSize::Bits32, &[0xe7, 0x70]),             // out 0x70,eax
        (CodeSize::Bits32, &[0x26, 0x89, 0x07]),       // mov es:[edi],eax
        (CodeSize::Bits16, &[0x26, 0x89, 0x05]),       // mov es:[di],ax
        (CodeSize::Bits16, &[0x88, 0x46, 0xfe]),       // mov [bp-2],al
        (CodeSize::Bits16, &[0xa0, 0x34, 0x12]),       // mov al,[0x1234]
        (CodeSize::Bits16, &[0x66, 0x67, 0x89, 0x03]), // mov [ebx],eax
        (CodeSize::Bits16, &[0xf3, 0xab]),             // rep stosw
        (CodeSize::Bits16, &[0x64, 0xf3, 0xa4]),       // rep movsb fs:
        (CodeSize::Bits16, &[0xc6, 0x06, 0x00, 0x80, 0x55]), // mov byte [0x8000],0x55
    ];
    let supported = supported_codes();
    let mut stats = Stats::default();
    for (code, bytes) in corpus {
        let mut buf = [0x90u8; 15];
        buf[..bytes.len()].copy_from_slice(bytes);
        check_one(&buf, *code, &supported, &mut stats);
        assert!(
            decode(&buf, *code).is_ok(),
            "{bytes:02x?} must be supported"
        );
    }
    assert_eq!(stats.supported, corpus.len() as u64);
}
