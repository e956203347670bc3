//! Instruction semantics. Every instruction does its reads first, then its one memory write
//! (RAM immediately, MMIO queued), then register and flag updates, so a fault or a userspace
//! read leaves no architectural trace.

use crate::cpu::{cr, Access, Cpu, Mem, Seg};
use crate::decode::{sign_extend, AluOp, BitOp, Form, Insn, MemOperand, Op, Rep, Rm, RIP};
use crate::emulator::{Emulator, Env, Queued, Source, Stop, IO_BUF};
use crate::flags::{self, size_mask};
use crate::mem::page_left;
use crate::outcome::{Exception, Exit};

/// Upper bound on REP work per `step`: bytes moved and loop iterations.
const REP_BYTES: u64 = 4096;
const REP_ITERS: u32 = 1024;

/// Reads GPR `n` as an operand of `size` bytes (AH..BH for byte registers 4..7 without REX).
pub(crate) fn get_reg<C: Cpu>(cpu: &C, n: u8, size: u8, rex: bool) -> u64 {
    if size == 1 && !rex && (4..8).contains(&n) {
        return (cpu.gpr(usize::from(n - 4)) >> 8) & 0xff;
    }
    cpu.gpr(usize::from(n & 15)) & size_mask(size)
}

/// Writes GPR `n` with x86 partial-register rules (8/16-bit merge, 32-bit zero-extends).
pub(crate) fn set_reg<C: Cpu>(cpu: &mut C, n: u8, size: u8, rex: bool, v: u64) {
    if size == 1 && !rex && (4..8).contains(&n) {
        let r = usize::from(n - 4);
        let old = cpu.gpr(r);
        cpu.set_gpr(r, (old & !0xff00) | ((v & 0xff) << 8));
        return;
    }
    let r = usize::from(n & 15);
    let new = match size {
        1 => (cpu.gpr(r) & !0xff) | (v & 0xff),
        2 => (cpu.gpr(r) & !0xffff) | (v & 0xffff),
        4 => v & 0xffff_ffff,
        _ => v,
    };
    cpu.set_gpr(r, new);
}

/// An operand location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Reg(u8),
    /// Effective address (already truncated to the address size), in `insn.seg`.
    Mem(u64),
}

fn effective_address<C: Cpu>(
    cpu: &C,
    env: &Env,
    insn: &Insn,
    m: &MemOperand,
    rsp_bias: u64,
) -> u64 {
    let mut a = m.disp;
    if let Some(b) = m.base {
        let v = if b == RIP {
            env.next_rip
        } else if b == 4 {
            cpu.gpr(4).wrapping_add(rsp_bias)
        } else {
            cpu.gpr(usize::from(b & 15))
        };
        a = a.wrapping_add(v);
    }
    if let Some(i) = m.index {
        a = a.wrapping_add(
            cpu.gpr(usize::from(i & 15))
                .wrapping_mul(u64::from(m.scale)),
        );
    }
    a & size_mask(insn.addr_size)
}

fn byteswap(v: u64, size: u8) -> u64 {
    match size {
        2 => u64::from((v as u16).swap_bytes()),
        4 => u64::from((v as u32).swap_bytes()),
        _ => v.swap_bytes(),
    }
}

/// Stack-pointer width: 8 in 64-bit mode, else SS.B.
fn stack_size<C: Cpu>(cpu: &C, env: &Env) -> u8 {
    if env.long {
        8
    } else if cpu.segment(Seg::Ss).db {
        4
    } else {
        2
    }
}

impl Emulator {
    fn rm_loc<C: Cpu>(&self, cpu: &C, env: &Env, insn: &Insn, rsp_bias: u64) -> Loc {
        match insn.rm {
            Rm::Reg(r) => Loc::Reg(r),
            Rm::Mem(ref m) => Loc::Mem(effective_address(cpu, env, insn, m, rsp_bias)),
        }
    }

    fn read_loc<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
        loc: Loc,
        size: u8,
        access: Access,
    ) -> Result<u64, Stop> {
        match loc {
            Loc::Reg(r) => Ok(get_reg(cpu, r, size, insn.rex)),
            Loc::Mem(ea) => self.read_val(cpu, env, insn.seg, ea, size, access),
        }
    }

    fn write_loc<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
        loc: Loc,
        size: u8,
        v: u64,
    ) -> Result<(), Stop> {
        match loc {
            Loc::Reg(r) => {
                set_reg(cpu, r, size, insn.rex, v);
                Ok(())
            }
            Loc::Mem(ea) => self.write_val(cpu, env, insn.seg, ea, size, v),
        }
    }

    /// Executes a decoded instruction. `Ok(Some(exit))`: committed, a queued effect needs
    /// userspace.
    pub(crate) fn exec<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
    ) -> Result<Option<Exit>, Stop> {
        if matches!(
            insn.op,
            Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::Scas | Op::Ins | Op::Outs
        ) {
            return self.string(cpu, env, insn);
        }
        self.simple(cpu, env, insn)?;
        cpu.set_rip(env.next_rip);
        Ok(self.flush(cpu))
    }

    fn simple<C: Cpu>(&mut self, cpu: &mut C, env: &Env, insn: &Insn) -> Result<(), Stop> {
        let size = insn.op_size;
        let rm_is_mem = matches!(insn.rm, Rm::Mem(_));
        let rmw = if rm_is_mem {
            Access::ReadForWrite
        } else {
            Access::Read
        };
        match insn.op {
            Op::Alu(op) => {
                let (dst, src) = self.operands(cpu, env, insn);
                let access = if op == AluOp::Cmp || insn.form == Form::RegRm {
                    Access::Read
                } else {
                    rmw
                };
                let a = self.read_loc(cpu, env, insn, dst, size, access)?;
                let b = match src {
                    Some(l) => self.read_loc(cpu, env, insn, l, size, Access::Read)?,
                    None => insn.imm,
                };
                let (res, fl) = flags::alu(op, a, b, size, env.rflags);
                if op != AluOp::Cmp {
                    self.write_loc(cpu, env, insn, dst, size, res)?;
                }
                cpu.set_rflags(fl);
            }
            Op::Test => {
                let (dst, src) = self.operands(cpu, env, insn);
                let a = self.read_loc(cpu, env, insn, dst, size, Access::Read)?;
                let b = match src {
                    Some(l) => self.read_loc(cpu, env, insn, l, size, Access::Read)?,
                    None => insn.imm,
                };
                let (_, f) = flags::logic(a & b, size);
                cpu.set_rflags((env.rflags & !flags::STATUS) | f);
            }
            Op::Not | Op::Neg | Op::Inc | Op::Dec => {
                let dst = self.rm_loc(cpu, env, insn, 0);
                let a = self.read_loc(cpu, env, insn, dst, size, rmw)?;
                let (res, fl) = match insn.op {
                    Op::Not => (!a, env.rflags),
                    Op::Neg => flags::neg(a, size, env.rflags),
                    Op::Inc => flags::inc_dec(a, false, size, env.rflags),
                    _ => flags::inc_dec(a, true, size, env.rflags),
                };
                self.write_loc(cpu, env, insn, dst, size, res)?;
                cpu.set_rflags(fl);
            }
            Op::Mov | Op::Movnti => {
                let (dst, src) = self.operands(cpu, env, insn);
                let v = match src {
                    Some(l) => self.read_loc(cpu, env, insn, l, size, Access::Read)?,
                    None => insn.imm,
                };
                self.write_loc(cpu, env, insn, dst, size, v)?;
            }
            Op::MovFromSreg => {
                let seg = Seg::from_sreg(insn.reg & 7).ok_or(Stop::Fault(Exception::ud()))?;
                let v = u64::from(cpu.segment(seg).selector);
                let dst = self.rm_loc(cpu, env, insn, 0);
                self.write_loc(cpu, env, insn, dst, size, v)?;
            }
            Op::Movzx | Op::Movsx | Op::Movsxd => {
                let src = self.rm_loc(cpu, env, insn, 0);
                let v = self.read_loc(cpu, env, insn, src, insn.src_size, Access::Read)?;
                let v = if insn.op == Op::Movzx {
                    v
                } else {
                    sign_extend(v, insn.src_size)
                };
                set_reg(cpu, insn.reg, size, insn.rex, v);
            }
            Op::Movbe => {
                let mem = self.rm_loc(cpu, env, insn, 0);
                if insn.form == Form::RegRm {
                    let v = self.read_loc(cpu, env, insn, mem, size, Access::Read)?;
                    set_reg(cpu, insn.reg, size, insn.rex, byteswap(v, size));
                } else {
                    let v = get_reg(cpu, insn.reg, size, insn.rex);
                    self.write_loc(cpu, env, insn, mem, size, byteswap(v, size))?;
                }
            }
            Op::Xchg => {
                let dst = self.rm_loc(cpu, env, insn, 0);
                let a = self.read_loc(cpu, env, insn, dst, size, rmw)?;
                let b = get_reg(cpu, insn.reg, size, insn.rex);
                self.write_loc(cpu, env, insn, dst, size, b)?;
                set_reg(cpu, insn.reg, size, insn.rex, a);
            }
            Op::Cmpxchg => {
                let dst = self.rm_loc(cpu, env, insn, 0);
                let d = self.read_loc(cpu, env, insn, dst, size, rmw)?;
                let acc = get_reg(cpu, 0, size, insn.rex);
                let src = get_reg(cpu, insn.reg, size, insn.rex);
                let (_, f) = flags::sub(acc, d, false, size);
                if acc == d {
                    self.write_loc(cpu, env, insn, dst, size, src)?;
                } else {
                    // The SDM's locked read-modify-write writes the old value back to memory; a
                    // register destination is left alone.
                    if rm_is_mem {
                        self.write_loc(cpu, env, insn, dst, size, d)?;
                    }
                    set_reg(cpu, 0, size, insn.rex, d);
                }
                cpu.set_rflags((env.rflags & !flags::STATUS) | f);
            }
            Op::CmpxchgNb => self.cmpxchg_nb(cpu, env, insn)?,
            Op::Xadd => {
                let dst = self.rm_loc(cpu, env, insn, 0);
                let d = self.read_loc(cpu, env, insn, dst, size, rmw)?;
                let s = get_reg(cpu, insn.reg, size, insn.rex);
                let (sum, f) = flags::add(d, s, false, size);
                if rm_is_mem {
                    self.write_loc(cpu, env, insn, dst, size, sum)?;
                    set_reg(cpu, insn.reg, size, insn.rex, d);
                } else {
                    set_reg(cpu, insn.reg, size, insn.rex, d);
                    self.write_loc(cpu, env, insn, dst, size, sum)?;
                }
                cpu.set_rflags((env.rflags & !flags::STATUS) | f);
            }
            Op::Bit(op) => self.bit(cpu, env, insn, op)?,
            Op::Setcc(cc) => {
                let dst = self.rm_loc(cpu, env, insn, 0);
                let v = u64::from(flags::condition(cc, env.rflags));
                self.write_loc(cpu, env, insn, dst, 1, v)?;
            }
            Op::Push => {
                let src = self.rm_loc(cpu, env, insn, 0);
                let v = self.read_loc(cpu, env, insn, src, size, Access::Read)?;
                let ss = stack_size(cpu, env);
                let rsp = cpu.gpr(4);
                let new = rsp.wrapping_sub(u64::from(size)) & size_mask(ss);
                self.write_val(cpu, env, Seg::Ss, new, size, v)?;
                set_reg(cpu, 4, ss, true, new);
            }
            Op::Pop => {
                let ss = stack_size(cpu, env);
                let rsp = cpu.gpr(4) & size_mask(ss);
                let v = self.read_val(cpu, env, Seg::Ss, rsp, size, Access::Read)?;
                let new = rsp.wrapping_add(u64::from(size)) & size_mask(ss);
                // An RSP-based destination address uses the incremented RSP.
                let dst = self.rm_loc(cpu, env, insn, u64::from(size));
                match dst {
                    Loc::Mem(_) => {
                        self.write_loc(cpu, env, insn, dst, size, v)?;
                        set_reg(cpu, 4, ss, true, new);
                    }
                    Loc::Reg(_) => {
                        set_reg(cpu, 4, ss, true, new);
                        self.write_loc(cpu, env, insn, dst, size, v)?;
                    }
                }
            }
            Op::In | Op::Out => {
                let port = if insn.port_dx {
                    (cpu.gpr(2) & 0xffff) as u16
                } else {
                    (insn.imm & 0xff) as u16
                };
                self.check_io(cpu, env, port, size)?;
                let n = usize::from(size);
                if insn.op == Op::In {
                    let mut b = [0u8; 8];
                    let buf = b.get_mut(..n).ok_or(Stop::Unsupported)?;
                    self.cached_read(cpu, Source::Pio { port, size }, buf)?;
                    set_reg(cpu, 0, size, true, u64::from_le_bytes(b));
                } else {
                    let v = cpu.gpr(0).to_le_bytes();
                    let src = v.get(..n).ok_or(Stop::Unsupported)?;
                    self.out
                        .get_mut(..n)
                        .ok_or(Stop::Unsupported)?
                        .copy_from_slice(src);
                    self.push_queue(Queued::Pio {
                        port,
                        size,
                        count: 1,
                    })?;
                }
            }
            Op::SseLoad { aligned, gpr } => {
                check_sse(env)?;
                let n = usize::from(size);
                let mut v = [0u8; 16];
                match insn.rm {
                    Rm::Mem(ref m) => {
                        let ea = effective_address(cpu, env, insn, m, 0);
                        let la =
                            self.linearize(cpu, env, insn.seg, ea, u64::from(size), Access::Read)?;
                        if aligned && la & 15 != 0 {
                            return Err(Exception::gp0().into());
                        }
                        let buf = v.get_mut(..n).ok_or(Stop::Unsupported)?;
                        self.read_la(cpu, env, la, buf, Access::Read)?;
                    }
                    Rm::Reg(r) if gpr => {
                        let x = get_reg(cpu, r, size, true).to_le_bytes();
                        v.get_mut(..n)
                            .ok_or(Stop::Unsupported)?
                            .copy_from_slice(x.get(..n).ok_or(Stop::Unsupported)?);
                    }
                    Rm::Reg(r) => {
                        let x = cpu.xmm(usize::from(r & 15));
                        v.get_mut(..n)
                            .ok_or(Stop::Unsupported)?
                            .copy_from_slice(x.get(..n).ok_or(Stop::Unsupported)?);
                    }
                }
                cpu.set_xmm(usize::from(insn.reg & 15), v);
            }
            Op::SseStore { aligned, gpr } => {
                check_sse(env)?;
                let n = usize::from(size);
                let x = cpu.xmm(usize::from(insn.reg & 15));
                let src = x.get(..n).ok_or(Stop::Unsupported)?;
                match insn.rm {
                    Rm::Mem(ref m) => {
                        let ea = effective_address(cpu, env, insn, m, 0);
                        let la =
                            self.linearize(cpu, env, insn.seg, ea, u64::from(size), Access::Write)?;
                        if aligned && la & 15 != 0 {
                            return Err(Exception::gp0().into());
                        }
                        self.write_la(cpu, env, la, src)?;
                    }
                    Rm::Reg(r) if gpr => {
                        let mut b = [0u8; 8];
                        b.get_mut(..n)
                            .ok_or(Stop::Unsupported)?
                            .copy_from_slice(src);
                        set_reg(cpu, r, size, true, u64::from_le_bytes(b));
                    }
                    Rm::Reg(r) => {
                        let mut v = [0u8; 16];
                        v.get_mut(..n)
                            .ok_or(Stop::Unsupported)?
                            .copy_from_slice(src);
                        cpu.set_xmm(usize::from(r & 15), v);
                    }
                }
            }
            Op::Clflush | Op::Clflushopt => {
                let Rm::Mem(ref m) = insn.rm else {
                    return Err(Exception::ud().into());
                };
                let ea = effective_address(cpu, env, insn, m, 0);
                let la = self.linearize(cpu, env, insn.seg, ea, 1, Access::Read)?;
                // Translate only (a page fault is reported); there is nothing to flush for MMIO.
                if let Err(pf) = cpu.read_linear(la, &mut [], Access::Read) {
                    return Err(Exception::pf(pf.error_code, pf.address).into());
                }
            }
            Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::Scas | Op::Ins | Op::Outs => {
                return Err(Stop::Unsupported)
            }
        }
        Ok(())
    }

    /// Destination and source locations of a two-operand form (`None` = the immediate).
    fn operands<C: Cpu>(&self, cpu: &C, env: &Env, insn: &Insn) -> (Loc, Option<Loc>) {
        let rm = self.rm_loc(cpu, env, insn, 0);
        match insn.form {
            Form::RmReg => (rm, Some(Loc::Reg(insn.reg))),
            Form::RegRm => (Loc::Reg(insn.reg), Some(rm)),
            Form::RmImm | Form::Rm | Form::None => (rm, None),
        }
    }

    fn cmpxchg_nb<C: Cpu>(&mut self, cpu: &mut C, env: &Env, insn: &Insn) -> Result<(), Stop> {
        let Rm::Mem(ref m) = insn.rm else {
            return Err(Exception::ud().into());
        };
        let size = insn.op_size;
        let half = size / 2;
        let ea = effective_address(cpu, env, insn, m, 0);
        let la = self.linearize(
            cpu,
            env,
            insn.seg,
            ea,
            u64::from(size),
            Access::ReadForWrite,
        )?;
        if size == 16 && la & 15 != 0 {
            return Err(Exception::gp0().into());
        }
        let mut b = [0u8; 16];
        let buf = b.get_mut(..usize::from(size)).ok_or(Stop::Unsupported)?;
        self.read_la(cpu, env, la, buf, Access::ReadForWrite)?;
        let (lo, hi) = if size == 16 {
            let v = u128::from_le_bytes(b);
            (v as u64, (v >> 64) as u64)
        } else {
            let v =
                u64::from_le_bytes(b.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
            (v & 0xffff_ffff, v >> 32)
        };
        let hm = size_mask(half);
        let eq = lo == cpu.gpr(0) & hm && hi == cpu.gpr(2) & hm;
        let (wlo, whi) = if eq {
            (cpu.gpr(3) & hm, cpu.gpr(1) & hm)
        } else {
            (lo, hi)
        };
        let mut w = [0u8; 16];
        if size == 16 {
            w = (u128::from(wlo) | (u128::from(whi) << 64)).to_le_bytes();
        } else if let Some(p) = w.get_mut(..8) {
            p.copy_from_slice(&(wlo | (whi << 32)).to_le_bytes());
        }
        self.write_la(
            cpu,
            env,
            la,
            w.get(..usize::from(size)).ok_or(Stop::Unsupported)?,
        )?;
        if !eq {
            set_reg(cpu, 0, half, true, lo);
            set_reg(cpu, 2, half, true, hi);
        }
        let fl = if eq {
            env.rflags | flags::ZF
        } else {
            env.rflags & !flags::ZF
        };
        cpu.set_rflags(fl);
        Ok(())
    }

    fn bit<C: Cpu>(&mut self, cpu: &mut C, env: &Env, insn: &Insn, op: BitOp) -> Result<(), Stop> {
        let size = insn.op_size;
        let bits = u64::from(size) * 8;
        let mut loc = self.rm_loc(cpu, env, insn, 0);
        let bit = if insn.form == Form::RmImm {
            insn.imm & (bits - 1)
        } else {
            let raw = sign_extend(get_reg(cpu, insn.reg, size, insn.rex), size);
            if let Loc::Mem(ea) = loc {
                // The register bit offset is signed and may select any operand-sized word.
                let word = (raw as i64) >> bits.trailing_zeros();
                let delta = (word as u64).wrapping_mul(u64::from(size));
                loc = Loc::Mem(ea.wrapping_add(delta) & size_mask(insn.addr_size));
            }
            raw & (bits - 1)
        };
        let access = if op == BitOp::Bt {
            Access::Read
        } else if matches!(loc, Loc::Mem(_)) {
            Access::ReadForWrite
        } else {
            Access::Read
        };
        let v = self.read_loc(cpu, env, insn, loc, size, access)?;
        let cf = (v >> bit) & 1;
        let new = match op {
            BitOp::Bt => v,
            BitOp::Bts => v | (1 << bit),
            BitOp::Btr => v & !(1 << bit),
            BitOp::Btc => v ^ (1 << bit),
        };
        if op != BitOp::Bt {
            self.write_loc(cpu, env, insn, loc, size, new)?;
        }
        cpu.set_rflags((env.rflags & !flags::CF) | cf);
        Ok(())
    }

    /// The I/O permission check of IN/OUT/INS/OUTS (IOPL, then the TSS I/O bitmap).
    fn check_io<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        port: u16,
        size: u8,
    ) -> Result<(), Stop> {
        let iopl = (env.rflags & flags::IOPL) >> 12;
        if env.cr0 & cr::CR0_PE == 0 || (!env.vm86 && u64::from(env.cpl) <= iopl) {
            return Ok(());
        }
        let tr = cpu.segment(Seg::Tr);
        if tr.unusable || !(tr.typ == 9 || tr.typ == 11) || tr.limit < 0x67 {
            return Err(Exception::gp0().into());
        }
        let mut b = [0u8; 2];
        let la = tr.base.wrapping_add(0x66) & env.la_mask();
        self.read_la(cpu, env, la, &mut b, Access::Read)?;
        let off = u64::from(u16::from_le_bytes(b)) + u64::from(port / 8);
        if off + 1 > u64::from(tr.limit) {
            return Err(Exception::gp0().into());
        }
        let la = tr.base.wrapping_add(off) & env.la_mask();
        self.read_la(cpu, env, la, &mut b, Access::Read)?;
        let bits = u16::from_le_bytes(b) >> (port & 7);
        if bits & ((1u16 << size) - 1) != 0 {
            return Err(Exception::gp0().into());
        }
        Ok(())
    }

    /// How many elements a REP INS/OUTS does in one batch at `seg:ea`: up to the count, the
    /// page, the buffer and the address-size wrap; 1 with DF=1 or without REP.
    #[allow(clippy::too_many_arguments)]
    fn batch<C: Cpu>(
        &self,
        cpu: &C,
        env: &Env,
        insn: &Insn,
        seg: Seg,
        ea: u64,
        rcx: u64,
        access: Access,
    ) -> Result<u64, Stop> {
        let sz = u64::from(insn.op_size);
        let la = self.linearize(cpu, env, seg, ea, sz, access)?;
        if insn.rep == Rep::None || env.rflags & flags::DF != 0 {
            return Ok(1);
        }
        let amask = size_mask(insn.addr_size);
        let n = rcx
            .min(page_left(la) / sz)
            .min(IO_BUF as u64 / sz)
            .min(((amask - (ea & amask)) / sz).saturating_add(1));
        if n <= 1 || self.linearize(cpu, env, seg, ea, n * sz, access).is_err() {
            return Ok(1);
        }
        Ok(n)
    }

    fn string<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
    ) -> Result<Option<Exit>, Stop> {
        let size = insn.op_size;
        let sz = u64::from(size);
        let amask = size_mask(insn.addr_size);
        let rep = insn.rep != Rep::None;
        let df = env.rflags & flags::DF != 0;
        let mut rflags = env.rflags;
        let mut bytes = 0u64;
        let mut iters = 0u32;
        let (uses_si, uses_di) = match insn.op {
            Op::Movs | Op::Cmps => (true, true),
            Op::Lods | Op::Outs => (true, false),
            _ => (false, true),
        };
        loop {
            let rcx = cpu.gpr(1) & amask;
            if rep && rcx == 0 {
                cpu.set_rip(env.next_rip);
                return Ok(None);
            }
            let rsi = cpu.gpr(6) & amask;
            let rdi = cpu.gpr(7) & amask;
            let mut n = 1u64;
            match insn.op {
                Op::Movs => {
                    let v = self.read_val(cpu, env, insn.seg, rsi, size, Access::Read)?;
                    self.write_val(cpu, env, Seg::Es, rdi, size, v)?;
                }
                Op::Cmps | Op::Scas => {
                    let a = if insn.op == Op::Cmps {
                        self.read_val(cpu, env, insn.seg, rsi, size, Access::Read)?
                    } else {
                        get_reg(cpu, 0, size, true)
                    };
                    let b = self.read_val(cpu, env, Seg::Es, rdi, size, Access::Read)?;
                    let (_, f) = flags::sub(a, b, false, size);
                    rflags = (rflags & !flags::STATUS) | f;
                }
                Op::Stos => {
                    let v = get_reg(cpu, 0, size, true);
                    self.write_val(cpu, env, Seg::Es, rdi, size, v)?;
                }
                Op::Lods => {
                    let v = self.read_val(cpu, env, insn.seg, rsi, size, Access::Read)?;
                    set_reg(cpu, 0, size, true, v);
                }
                Op::Ins => n = self.ins(cpu, env, insn, rdi, rcx)?,
                _ => n = self.outs(cpu, env, insn, rsi, rcx)?,
            }
            // Commit this iteration (or batch).
            let delta = n * sz;
            let step = |v: u64| {
                if df {
                    v.wrapping_sub(delta)
                } else {
                    v.wrapping_add(delta)
                }
            };
            if uses_si {
                set_reg(cpu, 6, insn.addr_size, true, step(rsi));
            }
            if uses_di {
                set_reg(cpu, 7, insn.addr_size, true, step(rdi));
            }
            let left = rcx.wrapping_sub(n) & amask;
            if rep {
                set_reg(cpu, 1, insn.addr_size, true, left);
            }
            if matches!(insn.op, Op::Cmps | Op::Scas) {
                cpu.set_rflags(rflags);
            }
            self.consume_cache();
            let zf = rflags & flags::ZF != 0;
            let finished = !rep
                || left == 0
                || (matches!(insn.op, Op::Cmps | Op::Scas)
                    && ((insn.rep == Rep::Rep && !zf) || (insn.rep == Rep::Repne && zf)));
            if finished {
                cpu.set_rip(env.next_rip);
            }
            if let Some(exit) = self.flush(cpu) {
                self.restart = !finished;
                return Ok(Some(exit));
            }
            bytes += delta;
            iters += 1;
            if finished || bytes >= REP_BYTES || iters >= REP_ITERS {
                // Unfinished: RIP stays on the instruction and the guest runs it again.
                return Ok(None);
            }
        }
    }

    fn ins<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
        rdi: u64,
        rcx: u64,
    ) -> Result<u64, Stop> {
        let size = insn.op_size;
        let sz = u64::from(size);
        let port = (cpu.gpr(2) & 0xffff) as u16;
        self.check_io(cpu, env, port, size)?;
        let mut n = self.batch(cpu, env, insn, Seg::Es, rdi, rcx, Access::Write)?;
        // Check the destination before reading the port, so a fault has no device effect.
        let la = self.linearize(cpu, env, Seg::Es, rdi, n * sz, Access::Write)?;
        match cpu.write_linear(la, &[]) {
            Ok(Mem::Ram) => {}
            Ok(Mem::Mmio(_)) => n = 1,
            Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
        }
        let total = (n * sz) as usize;
        let at = self.cache_fetch(cpu, Source::Pio { port, size }, total)?;
        if n > 1 {
            let data = self.cache.get(at..at + total).ok_or(Stop::Unsupported)?;
            match cpu.write_linear(la, data) {
                Ok(Mem::Ram) => {}
                Ok(Mem::Mmio(_)) => return Err(Stop::Unsupported),
                Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
            }
        } else {
            let mut b = [0u8; 8];
            b.get_mut(..total)
                .ok_or(Stop::Unsupported)?
                .copy_from_slice(self.cache.get(at..at + total).ok_or(Stop::Unsupported)?);
            self.write_la(cpu, env, la, b.get(..total).ok_or(Stop::Unsupported)?)?;
        }
        Ok(n)
    }

    fn outs<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        insn: &Insn,
        rsi: u64,
        rcx: u64,
    ) -> Result<u64, Stop> {
        let size = insn.op_size;
        let sz = u64::from(size);
        let port = (cpu.gpr(2) & 0xffff) as u16;
        self.check_io(cpu, env, port, size)?;
        let mut n = self.batch(cpu, env, insn, insn.seg, rsi, rcx, Access::Read)?;
        if n > 1 {
            let total = (n * sz) as usize;
            let la = self.linearize(cpu, env, insn.seg, rsi, n * sz, Access::Read)?;
            let buf = self.out.get_mut(..total).ok_or(Stop::Unsupported)?;
            match cpu.read_linear(la, buf, Access::Read) {
                Ok(Mem::Ram) => {}
                Ok(Mem::Mmio(_)) => n = 1,
                Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
            }
        }
        if n == 1 {
            let v = self.read_val(cpu, env, insn.seg, rsi, size, Access::Read)?;
            let b = v.to_le_bytes();
            self.out
                .get_mut(..usize::from(size))
                .ok_or(Stop::Unsupported)?
                .copy_from_slice(b.get(..usize::from(size)).ok_or(Stop::Unsupported)?);
        }
        self.push_queue(Queued::Pio {
            port,
            size,
            count: n as u32,
        })?;
        Ok(n)
    }
}

/// SSE availability: CR0.EM or !CR4.OSFXSR give #UD, CR0.TS gives #NM.
fn check_sse(env: &Env) -> Result<(), Stop> {
    if env.cr0 & cr::CR0_EM != 0 || env.cr4 & cr::CR4_OSFXSR == 0 {
        return Err(Exception::ud().into());
    }
    if env.cr0 & cr::CR0_TS != 0 {
        return Err(Exception::nm().into());
    }
    Ok(())
}
