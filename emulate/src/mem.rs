//! Segmentation (limits, types, canonical checks, alignment checks) and guest memory access:
//! page splitting, RAM versus MMIO, the read cache and the write queue.

use crate::cpu::{cr, Access, Cpu, Mem, Seg};
use crate::emulator::{Emulator, Env, Queued, Source, Stop};
use crate::flags;
use crate::outcome::Exception;

const PAGE: u64 = 0x1000;

/// Bytes left in the page of `la`.
pub(crate) fn page_left(la: u64) -> u64 {
    PAGE - (la & (PAGE - 1))
}

fn canonical(la: u64) -> bool {
    ((la as i64) << 16 >> 16) as u64 == la
}

impl Emulator {
    /// Turns `seg:ea` into a linear address for an access of `size` bytes, with the checks of
    /// the current mode. `ea` is already truncated to the address size.
    pub(crate) fn linearize<C: Cpu>(
        &self,
        cpu: &C,
        env: &Env,
        seg: Seg,
        ea: u64,
        size: u64,
        access: Access,
    ) -> Result<u64, Stop> {
        let fault = if seg == Seg::Ss {
            Exception::ss0()
        } else {
            Exception::gp0()
        };
        let last_off = size.saturating_sub(1);
        let la = if env.long {
            let base = match seg {
                Seg::Fs | Seg::Gs => cpu.segment(seg).base,
                _ => 0,
            };
            let la = base.wrapping_add(ea);
            if !canonical(la) || !canonical(la.wrapping_add(last_off)) {
                return Err(fault.into());
            }
            la
        } else {
            let s = cpu.segment(seg);
            if env.prot {
                if s.unusable {
                    return Err(fault.into());
                }
                let code = s.typ & 8 != 0;
                let writable = !code && s.typ & 2 != 0;
                let readable = !code || s.typ & 2 != 0;
                match access {
                    Access::Write | Access::ReadForWrite if !writable => return Err(fault.into()),
                    Access::Read | Access::ReadForWrite if !readable => return Err(fault.into()),
                    _ => {}
                }
            }
            let last = ea.checked_add(last_off).ok_or(Stop::Fault(fault))?;
            let expand_down = s.typ & 0xc == 0x4;
            if expand_down {
                let upper = if s.db { 0xffff_ffff } else { 0xffff };
                if ea <= u64::from(s.limit) || last > upper {
                    return Err(fault.into());
                }
            } else if last > u64::from(s.limit) {
                return Err(fault.into());
            }
            s.base.wrapping_add(ea) & 0xffff_ffff
        };
        if access != Access::Fetch
            && matches!(size, 2 | 4 | 8)
            && la & (size - 1) != 0
            && env.cpl == 3
            && env.cr0 & cr::CR0_AM != 0
            && env.rflags & flags::AC != 0
        {
            return Err(Exception::ac0().into());
        }
        Ok(la)
    }

    /// Reads `buf.len()` bytes at `seg:ea`.
    pub(crate) fn read_mem<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        seg: Seg,
        ea: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<(), Stop> {
        let la = self.linearize(cpu, env, seg, ea, buf.len() as u64, access)?;
        self.read_la(cpu, env, la, buf, access)
    }

    /// Reads linear memory, splitting at page boundaries; MMIO parts go through the cache.
    pub(crate) fn read_la<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        la: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<(), Stop> {
        let mut off = 0usize;
        while off < buf.len() {
            let at = la.wrapping_add(off as u64) & env.la_mask();
            let n = (page_left(at) as usize).min(buf.len() - off);
            let chunk = buf.get_mut(off..off + n).ok_or(Stop::Unsupported)?;
            match cpu.read_linear(at, chunk, access) {
                Ok(Mem::Ram) => {}
                Ok(Mem::Mmio(gpa)) => {
                    let mut p = 0usize;
                    while p < n {
                        let k = (n - p).min(8);
                        let piece = chunk.get_mut(p..p + k).ok_or(Stop::Unsupported)?;
                        self.cached_read(cpu, Source::Mmio(gpa.wrapping_add(p as u64)), piece)?;
                        p += k;
                    }
                }
                Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
            }
            off += n;
        }
        Ok(())
    }

    /// Writes `data` at `seg:ea`: RAM now, MMIO queued for after the commit.
    pub(crate) fn write_mem<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        seg: Seg,
        ea: u64,
        data: &[u8],
    ) -> Result<(), Stop> {
        let la = self.linearize(cpu, env, seg, ea, data.len() as u64, Access::Write)?;
        self.write_la(cpu, env, la, data)
    }

    /// Writes linear memory. A page-crossing write probes the second page first, so a fault
    /// there leaves the first page untouched.
    pub(crate) fn write_la<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        la: u64,
        data: &[u8],
    ) -> Result<(), Stop> {
        let first = (page_left(la) as usize).min(data.len());
        if first < data.len() {
            let second = la.wrapping_add(first as u64) & env.la_mask();
            if let Err(pf) = cpu.write_linear(second, &[]) {
                return Err(Exception::pf(pf.error_code, pf.address).into());
            }
        }
        let mut off = 0usize;
        while off < data.len() {
            let at = la.wrapping_add(off as u64) & env.la_mask();
            let n = (page_left(at) as usize).min(data.len() - off);
            let chunk = data.get(off..off + n).ok_or(Stop::Unsupported)?;
            match cpu.write_linear(at, chunk) {
                Ok(Mem::Ram) => {}
                Ok(Mem::Mmio(gpa)) => {
                    let mut p = 0usize;
                    while p < n {
                        let k = (n - p).min(8);
                        let mut bytes = [0u8; 8];
                        let src = chunk.get(p..p + k).ok_or(Stop::Unsupported)?;
                        bytes
                            .get_mut(..k)
                            .ok_or(Stop::Unsupported)?
                            .copy_from_slice(src);
                        self.push_queue(Queued::Mmio {
                            gpa: gpa.wrapping_add(p as u64),
                            len: k as u8,
                            data: bytes,
                        })?;
                        p += k;
                    }
                }
                Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
            }
            off += n;
        }
        Ok(())
    }

    /// Reads a little-endian value of `size` (1..=8) bytes.
    pub(crate) fn read_val<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        seg: Seg,
        ea: u64,
        size: u8,
        access: Access,
    ) -> Result<u64, Stop> {
        let mut b = [0u8; 8];
        let buf = b.get_mut(..usize::from(size)).ok_or(Stop::Unsupported)?;
        self.read_mem(cpu, env, seg, ea, buf, access)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes the low `size` (1..=8) bytes of `v`, little-endian.
    pub(crate) fn write_val<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
        seg: Seg,
        ea: u64,
        size: u8,
        v: u64,
    ) -> Result<(), Stop> {
        let b = v.to_le_bytes();
        let data = b.get(..usize::from(size)).ok_or(Stop::Unsupported)?;
        self.write_mem(cpu, env, seg, ea, data)
    }
}
