//! `KVM_RUN`: the run loop and the `kvm_run` page contract (Linux `kvm_arch_vcpu_ioctl_run`,
//! `vcpu_run`, `post_kvm_run_save`).
//!
//! Order, as in Linux: sync-regs check, `cr8` from `kvm_run`, completion of a pending PIO-in /
//! MMIO-read (for an emulated instruction: the data goes to the emulator, which continues the
//! instruction and may need userspace again, e.g. the next REP INS/OUTS batch, which returns
//! that exit at once), `immediate_exit` (→ `-EINTR`), then loop { signal → `-EINTR` with
//! `KVM_EXIT_INTR` before entering; enter; handle the exit; `KVM_EXIT_IRQ_WINDOW_OPEN` when
//! requested and injectable }. On every return `if_flag`, `cr8`, `apic_base`,
//! `ready_for_interrupt_injection` and `flags` are refreshed.
//!
//! The `kvm_run` and PIO pages are shared with a (possibly hostile) process: they are only
//! accessed with volatile reads/writes of plain fields, and every value read is validated.

use core::ptr::{addr_of, addr_of_mut};

use kvm_abi::{
    kvm_coalesced_mmio, kvm_run, kvm_run_fail_entry, kvm_run_internal, kvm_run_io, kvm_run_mmio,
};
use zerocopy::FromZeros;

use crate::backend::{Backend, EntryGate, Exit, IoCompletion};
use crate::caps::KVM_PIO_PAGE_OFFSET;
use crate::cpuid;
use crate::emul::EmuStep;
use crate::errno::{KResult, EINTR, EINVAL};
use crate::host::{Host, PAGE_SIZE};
use crate::irqchip::{self, ApicEntry};
use crate::vcpu::{Pending, Vcpu, VcpuState};

/// Entries of the coalesced MMIO ring (Linux `KVM_COALESCED_MMIO_MAX`).
pub const KVM_COALESCED_MMIO_MAX: u32 =
    ((PAGE_SIZE - 8) / core::mem::size_of::<kvm_coalesced_mmio>()) as u32;

enum Step {
    Continue,
    ToUser,
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    fn run_ptr(&self) -> *mut kvm_run {
        self.run.va().cast()
    }

    fn set_exit(&self, reason: u32) {
        // SAFETY: the run page is a live page owned by this vCPU, large enough for kvm_run.
        unsafe { addr_of_mut!((*self.run_ptr()).exit_reason).write_volatile(reason) }
    }

    /// `KVM_EXIT_INTERNAL_ERROR` with `suberror` and up to 16 `data` words.
    pub(crate) fn set_internal_data(&self, suberror: u32, data: &[u64]) {
        let mut i = kvm_run_internal::new_zeroed();
        i.suberror = suberror;
        for (d, s) in i.data.iter_mut().zip(data) {
            *d = *s;
        }
        i.ndata = data.len().min(i.data.len()) as u32;
        self.set_exit(kvm_abi::KVM_EXIT_INTERNAL_ERROR);
        // SAFETY: as in set_exit; the union member starts at the union's offset.
        unsafe {
            addr_of_mut!((*self.run_ptr()).u)
                .cast::<kvm_run_internal>()
                .write_volatile(i)
        }
    }

    fn set_internal(&self, suberror: u32, data0: u64) {
        self.set_internal_data(suberror, &[data0]);
    }

    /// `KVM_INTERNAL_ERROR_EMULATION` in Linux's `emulation_failure` layout
    /// (`prepare_emulation_failure_exit`): `data[0]` = flags; with instruction bytes,
    /// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES` and `data[1..3]` = `insn_size`
    /// then `insn_bytes[15]` (padded with NOPs, 0x90); then `debug` words (Linux: "arbitrary
    /// debug data", counted in `ndata`, named by no flag).
    pub(crate) fn set_emulation_failure(&self, bytes: Option<&[u8]>, debug: &[u64]) {
        let mut data = [0u64; 16];
        let mut n = 1;
        if let Some(b) = bytes.filter(|b| !b.is_empty()) {
            data[0] |= kvm_abi::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
            let mut raw = [0x90u8; 16];
            let len = b.len().min(15);
            raw[0] = len as u8;
            for (d, s) in raw.iter_mut().skip(1).zip(b.iter().take(len)) {
                *d = *s;
            }
            let (lo, hi) = raw.split_at(8);
            let mut w = [0u8; 8];
            w.copy_from_slice(lo);
            data[1] = u64::from_le_bytes(w);
            w.copy_from_slice(hi);
            data[2] = u64::from_le_bytes(w);
            n = 3;
        }
        for (d, s) in data.iter_mut().skip(n).zip(debug) {
            *d = *s;
            n += 1;
        }
        self.set_internal_data(
            kvm_abi::KVM_INTERNAL_ERROR_EMULATION,
            data.get(..n).unwrap_or(&[]),
        );
    }

    /// `KVM_EXIT_IO`: `count` elements of `size` bytes at `port`; for output the data is
    /// already in the PIO page at `data_offset`.
    fn exit_io(&self, port: u16, size: u8, out: bool, count: u32) {
        let io = kvm_run_io {
            direction: if out {
                kvm_abi::KVM_EXIT_IO_OUT
            } else {
                kvm_abi::KVM_EXIT_IO_IN
            },
            size,
            port,
            count,
            data_offset: KVM_PIO_PAGE_OFFSET * PAGE_SIZE as u64,
        };
        self.set_exit(kvm_abi::KVM_EXIT_IO);
        // SAFETY: live run page; the union member starts at the union's offset.
        unsafe {
            addr_of_mut!((*self.run_ptr()).u)
                .cast::<kvm_run_io>()
                .write_volatile(io)
        };
    }

    /// `KVM_EXIT_MMIO` of `len` (1..=8) bytes at `gpa`.
    fn exit_mmio(&self, gpa: u64, len: u8, write: bool, data: [u8; 8]) {
        let mut m = kvm_run_mmio::new_zeroed();
        m.phys_addr = gpa;
        m.len = u32::from(len);
        m.is_write = u8::from(write);
        if write {
            m.data = data;
        }
        self.set_exit(kvm_abi::KVM_EXIT_MMIO);
        // SAFETY: live run page; the union member starts at the union's offset.
        unsafe {
            addr_of_mut!((*self.run_ptr()).u)
                .cast::<kvm_run_mmio>()
                .write_volatile(m)
        };
    }

    /// Fills `kvm_run` (and the PIO page) for an access the emulator hands to userspace.
    pub(crate) fn emulated_exit(&self, emu: &emulate::Emulator, exit: emulate::Exit) {
        match exit {
            emulate::Exit::MmioRead { gpa, len } => self.exit_mmio(gpa, len, false, [0; 8]),
            emulate::Exit::MmioWrite { gpa, len, data } => self.exit_mmio(gpa, len, true, data),
            emulate::Exit::PioIn { port, size, count } => self.exit_io(port, size, false, count),
            emulate::Exit::PioOut { port, size, count } => {
                for (i, v) in emu.pio_data().iter().enumerate().take(PAGE_SIZE) {
                    // SAFETY: live PIO page of this vCPU; i < PAGE_SIZE.
                    unsafe { self.pio.va().add(i).write_volatile(*v) };
                }
                self.exit_io(port, size, true, count)
            }
        }
    }

    /// `KVM_RUN` (the caller holds the vCPU lock).
    pub fn run(&self, st: &mut VcpuState<H, B>) -> KResult<i64> {
        let r = self.run_inner(st);
        self.post_run_save(st);
        r
    }

    fn run_inner(&self, st: &mut VcpuState<H, B>) -> KResult<i64> {
        let host = self.vm().sys.host;
        let b = &self.vm().sys.backend;
        let run = self.run_ptr();
        st.has_run = true;
        // SAFETY (all reads of `run` below): live page of this vCPU, volatile plain-field reads.
        let (valid, dirty) = unsafe {
            (
                addr_of!((*run).kvm_valid_regs).read_volatile(),
                addr_of!((*run).kvm_dirty_regs).read_volatile(),
            )
        };
        // KVM_CAP_SYNC_REGS is not offered: no sync-register class is valid.
        if valid != 0 || dirty != 0 {
            return Err(EINVAL);
        }
        // SAFETY: as above.
        let cr8 = unsafe { addr_of!((*run).cr8).read_volatile() };
        // With an in-kernel APIC, CR8 is the APIC's TPR and kvm_run.cr8 is ignored (Linux).
        if st.lapic.is_none() {
            b.set_cr8(&mut st.b, cr8)?;
        }
        // Like Linux's complete_userspace_io: finishing an emulated instruction may itself need
        // userspace again (the next batch of a REP INS/OUTS), before immediate_exit is looked at.
        if let Step::ToUser = self.complete_pending(st)? {
            return Ok(0);
        }
        // SAFETY: as above.
        if unsafe { addr_of!((*run).immediate_exit).read_volatile() } != 0 {
            return Err(EINTR);
        }
        self.set_exit(kvm_abi::KVM_EXIT_UNKNOWN);
        loop {
            if core::mem::take(&mut st.shutdown_req) {
                // A machine check the guest could not take (KVM_X86_SET_MCE).
                self.set_exit(kvm_abi::KVM_EXIT_SHUTDOWN);
                return Ok(0);
            }
            // SAFETY: as above.
            // With the in-kernel PIC, userspace never injects: no window requests (Linux
            // `dm_request_for_irq_injection`).
            let want_window = unsafe { addr_of!((*run).request_interrupt_window).read_volatile() }
                != 0
                && !self.vm().irq.full();
            let step = if host.signal_pending() {
                Step::Continue
            } else {
                // With a split irqchip only while LINT0 takes PIC interrupts (Linux
                // `kvm_cpu_accept_dm_intr`): a masked LINT0 would reopen the window forever.
                if want_window && self.apic_accepts_extint(st) && !self.ready_for_injection(st) {
                    b.set_irq_window(&mut st.b, true);
                }
                match self.apic_before_entry(st) {
                    ApicEntry::Enter => {}
                    ApicEntry::Signal => continue,
                    ApicEntry::EoiExit(vector) => {
                        self.set_eoi_exit(vector);
                        return Ok(0);
                    }
                }
                self.deliver_mc(st);
                host.fpu_enter();
                let exit = b.run(&self.vm().bvm, &mut st.b, &Gate(self));
                host.fpu_leave();
                self.cpu.store(-1, core::sync::atomic::Ordering::SeqCst);
                self.handle_exit(st, exit)?
            };
            if let Step::ToUser = step {
                return Ok(0);
            }
            if want_window && self.ready_for_injection(st) {
                self.set_exit(kvm_abi::KVM_EXIT_IRQ_WINDOW_OPEN);
                return Ok(0);
            }
            if host.signal_pending() {
                self.set_exit(kvm_abi::KVM_EXIT_INTR);
                return Err(EINTR);
            }
            if host.should_yield() {
                host.yield_now();
            }
        }
    }

    /// Linux `kvm_vcpu_ready_for_interrupt_injection` with a userspace irqchip.
    fn ready_for_injection(&self, st: &mut VcpuState<H, B>) -> bool {
        let b = &self.vm().sys.backend;
        b.interrupt_allowed(&mut st.b)
            && !b.interrupt_queued(&mut st.b)
            && self.apic_accepts_extint(st)
    }

    fn post_run_save(&self, st: &mut VcpuState<H, B>) {
        let b = &self.vm().sys.backend;
        let run = self.run_ptr();
        let if_flag = u8::from(b.if_flag(&mut st.b));
        let cr8 = b.get_cr8(&mut st.b);
        let apic_base = b.get_apic_base(&mut st.b);
        // Always 1 with the in-kernel PIC (Linux `post_kvm_run_save`).
        let ready = u8::from(self.vm().irq.full() || self.ready_for_injection(st));
        // SAFETY: live run page of this vCPU; volatile plain-field writes.
        unsafe {
            addr_of_mut!((*run).if_flag).write_volatile(if_flag);
            addr_of_mut!((*run).cr8).write_volatile(cr8);
            addr_of_mut!((*run).apic_base).write_volatile(apic_base);
            addr_of_mut!((*run).ready_for_interrupt_injection).write_volatile(ready);
            addr_of_mut!((*run).flags).write_volatile(0);
        }
    }

    /// Finishes the instruction that exited to userspace (Linux `complete_userspace_io`).
    fn complete_pending(&self, st: &mut VcpuState<H, B>) -> KResult<Step> {
        let c = match core::mem::replace(&mut st.pending, Pending::None) {
            Pending::None => return Ok(Step::Continue),
            Pending::Emulated(exit) => {
                return Ok(match self.emulate_resume(st, exit)? {
                    EmuStep::Continue => Step::Continue,
                    EmuStep::ToUser => Step::ToUser,
                })
            }
            Pending::PioOut | Pending::MmioWrite => IoCompletion::Write,
            Pending::PioIn { size } => {
                let mut v = [0u8; 4];
                for (i, d) in v.iter_mut().enumerate().take(usize::from(size).min(4)) {
                    // SAFETY: the PIO page is a live page of this vCPU; i < 4.
                    *d = unsafe { self.pio.va().add(i).read_volatile() };
                }
                IoCompletion::PioIn {
                    size,
                    value: u32::from_le_bytes(v),
                }
            }
            Pending::MmioRead { len } => {
                // SAFETY: live run page; the union member starts at the union's offset.
                let m = unsafe {
                    addr_of!((*self.run_ptr()).u)
                        .cast::<kvm_run_mmio>()
                        .read_volatile()
                };
                IoCompletion::MmioRead { len, data: m.data }
            }
        };
        self.retire(st, |b, v| b.complete_io(v, c))?;
        Ok(Step::Continue)
    }

    fn emulate(&self, st: &mut VcpuState<H, B>, gpa: u64) -> KResult<Step> {
        Ok(match self.emulate_exit(st, gpa)? {
            EmuStep::Continue => Step::Continue,
            EmuStep::ToUser => Step::ToUser,
        })
    }

    fn handle_exit(&self, st: &mut VcpuState<H, B>, exit: Exit) -> KResult<Step> {
        let b = &self.vm().sys.backend;
        let vm = self.vm();
        Ok(match exit {
            Exit::Continue => Step::Continue,
            Exit::Io {
                port,
                size,
                out,
                data,
            } => {
                if !matches!(size, 1 | 2 | 4) {
                    self.set_emulation_failure(None, &[u64::from(port)]);
                    return Ok(Step::ToUser);
                }
                if let Some(value) = self
                    .pit_pio(port, size, out, data)
                    .or_else(|| irqchip::pio(vm, port, size, out, data))
                {
                    let c = if out {
                        IoCompletion::Write
                    } else {
                        IoCompletion::PioIn { size, value }
                    };
                    self.retire(st, |b, v| b.complete_io(v, c))?;
                    return Ok(Step::Continue);
                }
                let bytes = data.to_le_bytes();
                let bytes = bytes.get(..usize::from(size)).unwrap_or(&[]);
                if out && vm.ioeventfds.write(true, u64::from(port), bytes) {
                    self.retire(st, |b, v| b.complete_io(v, IoCompletion::Write))?;
                    return Ok(Step::Continue);
                }
                if out
                    && vm.coalesced(u64::from(port), u32::from(size), true)
                    && self.ring_push_n(u64::from(port), bytes, size, 1, true)
                {
                    self.retire(st, |b, v| b.complete_io(v, IoCompletion::Write))?;
                    return Ok(Step::Continue);
                }
                if out {
                    for (i, v) in bytes.iter().enumerate() {
                        // SAFETY: live PIO page of this vCPU; i < 4.
                        unsafe { self.pio.va().add(i).write_volatile(*v) };
                    }
                }
                self.exit_io(port, size, out, 1);
                st.pending = if out {
                    Pending::PioOut
                } else {
                    Pending::PioIn { size }
                };
                Step::ToUser
            }
            // String I/O: the emulator decodes the instruction at RIP (batches of REP INS/OUTS).
            Exit::IoString { port, .. } => self.emulate(st, u64::from(port))?,
            Exit::Mmio {
                gpa,
                len,
                write,
                mut data,
            } => {
                if !(1..=8).contains(&len) {
                    self.set_emulation_failure(None, &[gpa]);
                    return Ok(Step::ToUser);
                }
                if let Some(l) = st.lapic.as_mut() {
                    let n = usize::from(len);
                    if self.apic_access(l, gpa, data.get_mut(..n).unwrap_or(&mut []), write) {
                        let c = if write {
                            IoCompletion::Write
                        } else {
                            IoCompletion::MmioRead { len, data }
                        };
                        self.retire(st, |b, v| b.complete_io(v, c))?;
                        return Ok(Step::Continue);
                    }
                }
                let n = usize::from(len);
                if irqchip::ioapic_mmio(vm, gpa, data.get_mut(..n).unwrap_or(&mut []), write) {
                    let c = if write {
                        IoCompletion::Write
                    } else {
                        IoCompletion::MmioRead { len, data }
                    };
                    self.retire(st, |b, v| b.complete_io(v, c))?;
                    return Ok(Step::Continue);
                }
                let written = data.get(..n).unwrap_or(&[]);
                if write && vm.ioeventfds.write(false, gpa, written) {
                    self.retire(st, |b, v| b.complete_io(v, IoCompletion::Write))?;
                    return Ok(Step::Continue);
                }
                if write
                    && vm.coalesced(gpa, u32::from(len), false)
                    && self.ring_push_n(
                        gpa,
                        data.get(..usize::from(len)).unwrap_or(&[]),
                        len,
                        1,
                        false,
                    )
                {
                    self.retire(st, |b, v| b.complete_io(v, IoCompletion::Write))?;
                    return Ok(Step::Continue);
                }
                self.exit_mmio(gpa, len, write, data);
                st.pending = if write {
                    Pending::MmioWrite
                } else {
                    Pending::MmioRead { len }
                };
                Step::ToUser
            }
            Exit::PageFault {
                gpa,
                write,
                fetch: _,
            } => {
                // Memslot memory the process no longer maps fails KVM_RUN with EFAULT (Linux).
                if vm.map_guest_page(gpa, write)? {
                    Step::Continue
                } else {
                    // MMIO, or a write to a read-only slot: emulate the instruction at RIP.
                    self.emulate(st, gpa)?
                }
            }
            Exit::Hlt => {
                if st.lapic.is_some() && self.exception_queued(st) {
                    // An exception (the single-step #DB over this HLT) makes the vCPU runnable
                    // at once (Linux `kvm_vcpu_has_events`).
                    return Ok(Step::Continue);
                }
                if self.apic_halt(st) {
                    return Ok(Step::Continue);
                }
                self.set_exit(kvm_abi::KVM_EXIT_HLT);
                Step::ToUser
            }
            Exit::IrqWindow => {
                b.set_irq_window(&mut st.b, false);
                Step::Continue
            }
            Exit::Cpuid { leaf, subleaf } => {
                let r = cpuid::lookup(st.cpuid.as_deref().unwrap_or(&[]), leaf, subleaf);
                self.retire(st, |b, v| b.complete_cpuid(v, r))?;
                Step::Continue
            }
            Exit::Rdmsr { index } => {
                let v = match self.apic_rdmsr(st, index) {
                    Some(v) => v,
                    None => self.msr_get(st, index, false).ok(),
                };
                self.retire(st, |b, bv| b.complete_rdmsr(bv, v))?;
                Step::Continue
            }
            Exit::Wrmsr { index, data } => {
                let ok = match self.apic_wrmsr(st, index, data) {
                    Some(ok) => ok,
                    None => self.msr_set(st, index, data, false).is_ok(),
                };
                self.retire(st, |b, v| b.complete_wrmsr(v, ok))?;
                Step::Continue
            }
            Exit::Shutdown => {
                self.set_exit(kvm_abi::KVM_EXIT_SHUTDOWN);
                Step::ToUser
            }
            Exit::FailEntry { reason } => {
                let f = kvm_run_fail_entry {
                    hardware_entry_failure_reason: reason,
                    cpu: vm.sys.host.cpu_current(),
                    ..FromZeros::new_zeroed()
                };
                self.set_exit(kvm_abi::KVM_EXIT_FAIL_ENTRY);
                // SAFETY: live run page; the union member starts at the union's offset.
                unsafe {
                    addr_of_mut!((*self.run_ptr()).u)
                        .cast::<kvm_run_fail_entry>()
                        .write_volatile(f)
                };
                Step::ToUser
            }
            Exit::Internal { suberror } => {
                self.set_internal(suberror, 0);
                Step::ToUser
            }
        })
    }

    /// `KVM_EXIT_IOAPIC_EOI`: the guest's EOI of `vector`, for the userspace IOAPIC.
    fn set_eoi_exit(&self, vector: u8) {
        self.set_exit(kvm_abi::KVM_EXIT_IOAPIC_EOI);
        // SAFETY: live run page; the union member starts at the union's offset.
        unsafe {
            addr_of_mut!((*self.run_ptr()).u)
                .cast::<kvm_abi::kvm_run_eoi>()
                .write_volatile(kvm_abi::kvm_run_eoi { vector })
        };
    }

    /// Appends `count` writes of `size` bytes (`data` holds them back to back) at `addr` to the
    /// VM's coalesced ring, all or none: false when the ring lacks room (then the access exits
    /// to userspace normally). The header indices come from userspace and are validated.
    pub(crate) fn ring_push_n(
        &self,
        addr: u64,
        data: &[u8],
        size: u8,
        count: usize,
        pio: bool,
    ) -> bool {
        let sz = usize::from(size);
        if sz == 0 || sz > 8 || count == 0 || data.len() != sz * count {
            return false;
        }
        let vm = self.vm();
        // Serialize producers (all vCPUs of the VM) with the VM lock.
        let _g = vm.st.lock();
        let ring = vm.ring.va();
        // SAFETY: the ring page is live for the VM's lifetime; header fields are plain u32s.
        let (first, last) = unsafe {
            (
                ring.cast::<u32>().read_volatile(),
                ring.add(4).cast::<u32>().read_volatile(),
            )
        };
        if first >= KVM_COALESCED_MMIO_MAX || last >= KVM_COALESCED_MMIO_MAX {
            return false;
        }
        // Free entries: one slot always stays empty (next == first means full).
        let used = (last + KVM_COALESCED_MMIO_MAX - first) % KVM_COALESCED_MMIO_MAX;
        let free = (KVM_COALESCED_MMIO_MAX - 1 - used) as usize;
        if count > free {
            return false;
        }
        let mut last = last;
        for chunk in data.chunks_exact(sz) {
            let mut e = kvm_coalesced_mmio::new_zeroed();
            e.phys_addr = addr;
            e.len = u32::from(size);
            e.pad = u32::from(pio);
            for (d, s) in e.data.iter_mut().zip(chunk) {
                *d = *s;
            }
            // SAFETY: last < KVM_COALESCED_MMIO_MAX, so the entry lies inside the page.
            unsafe {
                ring.add(8 + last as usize * core::mem::size_of::<kvm_coalesced_mmio>())
                    .cast::<kvm_coalesced_mmio>()
                    .write_volatile(e);
            }
            last = (last + 1) % KVM_COALESCED_MMIO_MAX;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        // SAFETY: as above.
        unsafe { ring.add(4).cast::<u32>().write_volatile(last) };
        true
    }
}

/// The run loop's [`EntryGate`]: publishes the CPU for kicks, then looks for a signal or a
/// posted APIC event one last time with interrupts off.
struct Gate<'a, H: Host, B: Backend>(&'a Vcpu<H, B>);

impl<H: Host, B: Backend> EntryGate for Gate<'_, H, B> {
    fn enter(&self, cpu: u32) -> bool {
        let v = self.0;
        v.cpu
            .store(cpu as i32, core::sync::atomic::Ordering::SeqCst);
        let stay_out = v.vm().sys.host.signal_pending() || v.apic_posted();
        if stay_out {
            v.cpu.store(-1, core::sync::atomic::Ordering::SeqCst);
        }
        stay_out
    }
}
