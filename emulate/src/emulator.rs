//! The per-vCPU emulator state and the step protocol (execute, exit, resume).
//!
//! Protocol: the core calls [`Emulator::step`]. On [`Outcome::NeedsUserspace`] it exits to
//! userspace; for reads it hands the data back with [`Emulator::complete_read`]; in every case it
//! calls `step` again before re-entering the guest. A read that needs userspace stops the
//! instruction before any architectural effect; `step` then re-executes it from the start and
//! every MMIO/PIO read of that execution is served from the read cache in order, so each device
//! read happens exactly once. Writes that need userspace are issued after the instruction (or
//! the REP iteration) committed, one exit per fragment, and are never repeated.

use crate::cpu::{cr, Access, Cpu, Mem, Seg};
use crate::decode::{decode, CodeSize, DecodeError, MAX_INSN_LEN};
use crate::flags;
use crate::outcome::{Exception, Exit, Outcome};

/// Bytes of the read cache and of the port-output buffer (the largest REP INS/OUTS batch).
pub const IO_BUF: usize = 1024;

const QUEUE: usize = 4;

/// A deferred side effect, issued after the instruction committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    Mmio { gpa: u64, len: u8, data: [u8; 8] },
    Pio { port: u16, size: u8, count: u32 },
}

/// Where a cached read came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Mmio(u64),
    Pio { port: u16, size: u8 },
}

/// Why execution stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A read went to userspace (already recorded in `pending_read`).
    Exit(Exit),
    /// Raise this exception.
    Fault(Exception),
    /// The instruction cannot be emulated (e.g. fetched from MMIO).
    Unsupported,
}

impl From<Exception> for Stop {
    fn from(e: Exception) -> Stop {
        Stop::Fault(e)
    }
}

/// The CPU mode the instruction runs in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Env {
    pub code: CodeSize,
    /// 64-bit mode.
    pub long: bool,
    /// Protected mode (CR0.PE and not virtual-8086).
    pub prot: bool,
    /// Virtual-8086 mode.
    pub vm86: bool,
    pub cpl: u8,
    pub rflags: u64,
    pub cr0: u64,
    pub cr4: u64,
    /// RIP of the instruction and of the next one.
    pub rip: u64,
    pub next_rip: u64,
}

impl Env {
    /// Linear addresses wrap at 4 GiB outside 64-bit mode.
    pub fn la_mask(&self) -> u64 {
        if self.long {
            u64::MAX
        } else {
            0xffff_ffff
        }
    }
}

/// Per-vCPU emulator state. Keep one per vCPU (about 2 KiB: not on the kernel stack) and pass it
/// to every `step` of that vCPU.
pub struct Emulator {
    /// Device reads of the current instruction or REP iteration, in order.
    pub(crate) cache: [u8; IO_BUF],
    pub(crate) cache_start: usize,
    pub(crate) cache_end: usize,
    pub(crate) cache_pos: usize,
    /// The read that went to userspace and waits for `complete_read`.
    pending_read: Option<Exit>,
    /// Side effects queued by the committed instruction/iteration.
    pub(crate) queue: [Option<Queued>; QUEUE],
    pub(crate) queue_len: usize,
    queue_next: usize,
    /// A queued effect went to userspace; the instruction is committed.
    draining: bool,
    /// After draining, run the (unfinished REP) instruction again instead of returning Done.
    pub(crate) restart: bool,
    /// Port-output data.
    pub(crate) out: [u8; IO_BUF],
    /// Fetched bytes of the instruction being re-executed.
    insn: [u8; MAX_INSN_LEN],
    insn_len: usize,
    insn_rip: u64,
    insn_valid: bool,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Emulator {
    /// A fresh, idle emulator.
    pub const fn new() -> Emulator {
        Emulator {
            cache: [0; IO_BUF],
            cache_start: 0,
            cache_end: 0,
            cache_pos: 0,
            pending_read: None,
            queue: [None; QUEUE],
            queue_len: 0,
            queue_next: 0,
            draining: false,
            restart: false,
            out: [0; IO_BUF],
            insn: [0; MAX_INSN_LEN],
            insn_len: 0,
            insn_rip: 0,
            insn_valid: false,
        }
    }

    /// Forgets any instruction in progress (vCPU reset, or the core abandons the emulation).
    pub fn reset(&mut self) {
        self.cache_start = 0;
        self.cache_end = 0;
        self.cache_pos = 0;
        self.pending_read = None;
        self.queue = [None; QUEUE];
        self.queue_len = 0;
        self.queue_next = 0;
        self.draining = false;
        self.restart = false;
        self.insn_valid = false;
    }

    /// True while an instruction is in progress (a `step` must follow before guest entry).
    pub fn in_progress(&self) -> bool {
        self.pending_read.is_some() || self.draining
    }

    /// Hands back the data of the userspace read reported by the last `step`
    /// (`len` bytes for MMIO, `size * count` for port input). Returns `false` (and changes
    /// nothing) if no read is pending or the length does not match.
    pub fn complete_read(&mut self, data: &[u8]) -> bool {
        let want = match self.pending_read {
            Some(Exit::MmioRead { len, .. }) => usize::from(len),
            Some(Exit::PioIn { size, count, .. }) => usize::from(size) * count as usize,
            _ => return false,
        };
        if data.len() != want {
            return false;
        }
        let end = self.cache_end + want;
        match self.cache.get_mut(self.cache_end..end) {
            Some(slot) => slot.copy_from_slice(data),
            None => return false,
        }
        self.cache_end = end;
        self.pending_read = None;
        true
    }

    /// The data of the last [`Exit::PioOut`] (`size * count` bytes).
    pub fn pio_data(&self) -> &[u8] {
        for q in self.queue.iter().flatten() {
            if let Queued::Pio { size, count, .. } = *q {
                let n = usize::from(size) * count as usize;
                return self.out.get(..n).unwrap_or(&[]);
            }
        }
        &[]
    }

    /// Emulates the instruction at the guest's RIP (or continues the one in progress).
    pub fn step<C: Cpu>(&mut self, cpu: &mut C) -> Outcome {
        if let Some(exit) = self.pending_read {
            return Outcome::NeedsUserspace(exit);
        }
        if self.draining {
            if let Some(exit) = self.drain(cpu) {
                return Outcome::NeedsUserspace(exit);
            }
            self.draining = false;
            if !self.restart {
                self.reset();
                return Outcome::Done;
            }
            self.restart = false;
            self.cache_start = 0;
            self.cache_end = 0;
        }
        let outcome = self.execute(cpu);
        if !matches!(outcome, Outcome::NeedsUserspace(_)) {
            self.reset();
        }
        outcome
    }

    /// Issues queued side effects in order; returns the first one userspace must do.
    pub(crate) fn drain<C: Cpu>(&mut self, cpu: &mut C) -> Option<Exit> {
        while self.queue_next < self.queue_len {
            let item = self.queue.get(self.queue_next).copied().flatten();
            self.queue_next += 1;
            let exit = match item {
                Some(Queued::Mmio { gpa, len, data }) => {
                    let bytes = data.get(..usize::from(len)).unwrap_or(&[]);
                    if cpu.mmio_write(gpa, bytes) {
                        continue;
                    }
                    Exit::MmioWrite { gpa, len, data }
                }
                Some(Queued::Pio { port, size, count }) => {
                    let n = usize::from(size) * count as usize;
                    let bytes = self.out.get(..n).unwrap_or(&[]);
                    if cpu.pio_out(port, size, bytes) {
                        continue;
                    }
                    Exit::PioOut { port, size, count }
                }
                None => continue,
            };
            return Some(exit);
        }
        self.queue = [None; QUEUE];
        self.queue_len = 0;
        self.queue_next = 0;
        None
    }

    /// Runs the queued effects after a commit: `Some` if one needs userspace (then the step
    /// must return it and keep the state).
    pub(crate) fn flush<C: Cpu>(&mut self, cpu: &mut C) -> Option<Exit> {
        let exit = self.drain(cpu);
        if exit.is_some() {
            self.draining = true;
        }
        exit
    }

    pub(crate) fn push_queue(&mut self, q: Queued) -> Result<(), Stop> {
        let slot = self
            .queue
            .get_mut(self.queue_len)
            .ok_or(Stop::Unsupported)?;
        *slot = Some(q);
        self.queue_len += 1;
        Ok(())
    }

    /// A device read through the cache: served from the cache when this execution already read
    /// it, else performed (in the kernel if the core can, else recorded for userspace).
    pub(crate) fn cached_read<C: Cpu>(
        &mut self,
        cpu: &mut C,
        src: Source,
        buf: &mut [u8],
    ) -> Result<(), Stop> {
        let at = self.cache_fetch(cpu, src, buf.len())?;
        let cached = self
            .cache
            .get(at..at + buf.len())
            .ok_or(Stop::Unsupported)?;
        buf.copy_from_slice(cached);
        Ok(())
    }

    /// Like `cached_read`, but leaves the `len` bytes in the cache and returns their offset.
    pub(crate) fn cache_fetch<C: Cpu>(
        &mut self,
        cpu: &mut C,
        src: Source,
        len: usize,
    ) -> Result<usize, Stop> {
        let at = self.cache_pos;
        if at + len <= self.cache_end {
            self.cache_pos += len;
            return Ok(at);
        }
        // A re-execution that diverged (guest memory changed under it): drop the stale tail.
        self.cache_end = at;
        let end = at + len;
        let slot = self.cache.get_mut(at..end).ok_or(Stop::Unsupported)?;
        let done = match src {
            Source::Mmio(gpa) => cpu.mmio_read(gpa, slot),
            Source::Pio { port, size } => cpu.pio_in(port, size, slot),
        };
        if !done {
            let exit = match src {
                Source::Mmio(gpa) => Exit::MmioRead {
                    gpa,
                    len: len as u8,
                },
                Source::Pio { port, size } => Exit::PioIn {
                    port,
                    size,
                    count: (len / usize::from(size.max(1))) as u32,
                },
            };
            self.pending_read = Some(exit);
            return Err(Stop::Exit(exit));
        }
        self.cache_end = end;
        self.cache_pos = end;
        Ok(at)
    }

    /// A REP iteration committed: its cached reads are consumed.
    pub(crate) fn consume_cache(&mut self) {
        self.cache_start = self.cache_pos;
        if self.cache_start == self.cache_end {
            self.cache_start = 0;
            self.cache_end = 0;
            self.cache_pos = 0;
        }
    }

    fn execute<C: Cpu>(&mut self, cpu: &mut C) -> Outcome {
        self.cache_pos = self.cache_start;
        let cr0 = cpu.cr0();
        let rflags = cpu.rflags();
        let cs = cpu.segment(Seg::Cs);
        let (code, long, prot, vm86) = if cr0 & cr::CR0_PE == 0 {
            let code = if cs.db {
                CodeSize::Bits32
            } else {
                CodeSize::Bits16
            };
            (code, false, false, false)
        } else if rflags & flags::VM != 0 {
            (CodeSize::Bits16, false, false, true)
        } else if cpu.efer() & cr::EFER_LMA != 0 && cs.l {
            (CodeSize::Bits64, true, true, false)
        } else {
            let code = if cs.db {
                CodeSize::Bits32
            } else {
                CodeSize::Bits16
            };
            (code, false, true, false)
        };
        let rip = cpu.rip();
        let mut env = Env {
            code,
            long,
            prot,
            vm86,
            cpl: if vm86 { 3 } else { cpu.cpl() },
            rflags,
            cr0,
            cr4: cpu.cr4(),
            rip,
            next_rip: rip,
        };
        let insn = match self.fetch_decode(cpu, &env) {
            Ok(i) => i,
            Err(stop) => return self.stop_outcome(stop),
        };
        let ip_mask = match code {
            CodeSize::Bits16 => 0xffff,
            CodeSize::Bits32 => 0xffff_ffff,
            CodeSize::Bits64 => u64::MAX,
        };
        env.next_rip = rip.wrapping_add(u64::from(insn.len)) & ip_mask;
        match self.exec(cpu, &env, &insn) {
            Ok(Some(exit)) => Outcome::NeedsUserspace(exit),
            Ok(None) => Outcome::Done,
            Err(stop) => self.stop_outcome(stop),
        }
    }

    fn stop_outcome(&mut self, stop: Stop) -> Outcome {
        match stop {
            Stop::Exit(exit) => Outcome::NeedsUserspace(exit),
            Stop::Fault(e) => Outcome::Exception(e),
            Stop::Unsupported => Outcome::Unsupported {
                bytes: self.insn,
                len: self.insn_len as u8,
            },
        }
    }

    /// Fetches (through CS, honouring its limit) and decodes the instruction at RIP. The bytes
    /// are kept while the instruction is in progress so re-execution decodes the same thing.
    fn fetch_decode<C: Cpu>(
        &mut self,
        cpu: &mut C,
        env: &Env,
    ) -> Result<crate::decode::Insn, Stop> {
        if !(self.insn_valid && self.insn_rip == env.rip) {
            self.insn_valid = false;
            self.insn = [0; MAX_INSN_LEN];
            self.insn_len = 0;
        }
        loop {
            let bytes = self.insn.get(..self.insn_len).ok_or(Stop::Unsupported)?;
            match decode(bytes, env.code) {
                Ok(insn) => {
                    self.insn_valid = true;
                    self.insn_rip = env.rip;
                    return Ok(insn);
                }
                Err(DecodeError::NeedMore) => {}
                Err(DecodeError::TooLong) => return Err(Exception::gp0().into()),
                Err(DecodeError::Ud) => return Err(Exception::ud().into()),
                Err(DecodeError::Unsupported) => return Err(Stop::Unsupported),
            }
            if self.insn_len >= MAX_INSN_LEN {
                return Err(Exception::gp0().into());
            }
            // Fetch up to the end of the page (and of the 15-byte window).
            let off = self.insn_len as u64;
            let ea = env.rip.wrapping_add(off);
            let ea = match env.code {
                CodeSize::Bits64 => ea,
                _ => ea & 0xffff_ffff,
            };
            let la = self.linearize(cpu, env, Seg::Cs, ea, 1, Access::Fetch)?;
            let page_left = 0x1000 - (la & 0xfff) as usize;
            let mut want = (MAX_INSN_LEN - self.insn_len).min(page_left);
            if !env.long {
                // Stop at the CS limit: bytes past it fault only if the decoder needs them.
                let limit = u64::from(cpu.segment(Seg::Cs).limit);
                let room = limit.saturating_sub(ea) as usize + 1;
                want = want.min(room);
            }
            let start = self.insn_len;
            let dst = self
                .insn
                .get_mut(start..start + want)
                .ok_or(Stop::Unsupported)?;
            match cpu.read_linear(la, dst, Access::Fetch) {
                Ok(Mem::Ram) => self.insn_len += want,
                Ok(Mem::Mmio(_)) => return Err(Stop::Unsupported),
                Err(pf) => return Err(Exception::pf(pf.error_code, pf.address).into()),
            }
        }
    }
}
