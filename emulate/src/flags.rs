//! Arithmetic and flag computation, exactly as the SDM defines the defined flags.
//!
//! Architecturally undefined flags: logical operations (AND/OR/XOR/TEST) clear AF (as current
//! Intel and AMD cores do); BT/BTS/BTR/BTC leave OF, SF, AF and PF unchanged (ZF is defined as
//! unchanged). Every other flag these functions produce is the SDM's defined value.

use crate::decode::AluOp;

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary-carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// I/O privilege level field.
pub const IOPL: u64 = 3 << 12;
/// Virtual-8086 mode.
pub const VM: u64 = 1 << 17;
/// Alignment check.
pub const AC: u64 = 1 << 18;
/// The six arithmetic status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// All-ones mask of an operand of `size` bytes (1, 2, 4, 8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn sign_bit(size: u8) -> u64 {
    1u64 << (u32::from(size.clamp(1, 8)) * 8 - 1)
}

/// PF, ZF and SF of a result (PF from the low byte).
pub fn szp(res: u64, size: u8) -> u64 {
    let res = res & size_mask(size);
    let mut f = 0;
    if (res as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    if res == 0 {
        f |= ZF;
    }
    if res & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

/// `a + b + carry`: result and status flags.
pub fn add(a: u64, b: u64, carry: bool, size: u8) -> (u64, u64) {
    let m = size_mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    let res = (wide as u64) & m;
    let mut f = szp(res, size);
    if wide > u128::from(m) {
        f |= CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    if (a ^ res) & (b ^ res) & sign_bit(size) != 0 {
        f |= OF;
    }
    (res, f)
}

/// `a - b - borrow`: result and status flags.
pub fn sub(a: u64, b: u64, borrow: bool, size: u8) -> (u64, u64) {
    let m = size_mask(size);
    let (a, b) = (a & m, b & m);
    let res = a.wrapping_sub(b).wrapping_sub(u64::from(borrow)) & m;
    let mut f = szp(res, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow) {
        f |= CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    if (a ^ b) & (a ^ res) & sign_bit(size) != 0 {
        f |= OF;
    }
    (res, f)
}

/// Logical result flags: CF = OF = 0, AF cleared (undefined), SF/ZF/PF from the result.
pub fn logic(res: u64, size: u8) -> (u64, u64) {
    let res = res & size_mask(size);
    (res, szp(res, size))
}

/// One ALU operation: the result and the new RFLAGS (only the status flags change).
pub fn alu(op: AluOp, a: u64, b: u64, size: u8, rflags: u64) -> (u64, u64) {
    let cf = rflags & CF != 0;
    let (res, f) = match op {
        AluOp::Add => add(a, b, false, size),
        AluOp::Adc => add(a, b, cf, size),
        AluOp::Sub | AluOp::Cmp => sub(a, b, false, size),
        AluOp::Sbb => sub(a, b, cf, size),
        AluOp::And => logic(a & b, size),
        AluOp::Or => logic(a | b, size),
        AluOp::Xor => logic(a ^ b, size),
    };
    (res, (rflags & !STATUS) | f)
}

/// INC/DEC: like ADD/SUB 1 but CF is preserved.
pub fn inc_dec(a: u64, dec: bool, size: u8, rflags: u64) -> (u64, u64) {
    let (res, f) = if dec {
        sub(a, 1, false, size)
    } else {
        add(a, 1, false, size)
    };
    (res, (rflags & !(STATUS & !CF)) | (f & !CF))
}

/// NEG: `0 - a`, CF set unless the operand is zero.
pub fn neg(a: u64, size: u8, rflags: u64) -> (u64, u64) {
    let (res, f) = sub(0, a, false, size);
    (res, (rflags & !STATUS) | f)
}

/// Evaluates condition code `cc` (the low nibble of Jcc/SETcc) against RFLAGS.
pub fn condition(cc: u8, rflags: u64) -> bool {
    let f = |m: u64| rflags & m != 0;
    let r = match cc >> 1 {
        0 => f(OF),
        1 => f(CF),
        2 => f(ZF),
        3 => f(CF) || f(ZF),
        4 => f(SF),
        5 => f(PF),
        6 => f(SF) != f(OF),
        _ => f(ZF) || (f(SF) != f(OF)),
    };
    r != (cc & 1 != 0)
}
