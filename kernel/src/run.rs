//! `KVM_RUN`: the run loop and the `kvm_run` page contract (Linux `kvm_arch_vcpu_ioctl_run`,
//! `vcpu_run`, `post_kvm_run_save`).
//!
//! Order, as in Linux: sync-regs check, `cr8` from `kvm_run`, completion of a pending PIO-in /
//! MMIO-read, `immediate_exit` (→ `-EINTR`), then loop { signal → `-EINTR` with
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

use crate::backend::{Backend, Exit, IoCompletion};
use crate::caps::KVM_PIO_PAGE_OFFSET;
use crate::cpuid;
use crate::errno::{KResult, EINTR, EINVAL};
use crate::host::{Host, PAGE_SIZE};
use crate::irqchip::ApicEntry;
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

    fn set_internal(&self, suberror: u32, data0: u64) {
        let mut i = kvm_run_internal::new_zeroed();
        i.suberror = suberror;
        i.ndata = 1;
        i.data[0] = data0;
        self.set_exit(kvm_abi::KVM_EXIT_INTERNAL_ERROR);
        // SAFETY: as in set_exit; the union member starts at the union's offset.
        unsafe {
            addr_of_mut!((*self.run_ptr()).u)
                .cast::<kvm_run_internal>()
                .write_volatile(i)
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
        self.complete_pending(st);
        // SAFETY: as above.
        if unsafe { addr_of!((*run).immediate_exit).read_volatile() } != 0 {
            return Err(EINTR);
        }
        self.set_exit(kvm_abi::KVM_EXIT_UNKNOWN);
        loop {
            // SAFETY: as above.
            let want_window =
                unsafe { addr_of!((*run).request_interrupt_window).read_volatile() } != 0;
            let step = if host.signal_pending() {
                Step::Continue
            } else {
                if want_window && !self.ready_for_injection(st) {
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
                self.cpu.store(
                    host.cpu_current() as i32,
                    core::sync::atomic::Ordering::Relaxed,
                );
                host.fpu_enter();
                let exit = b.run(&self.vm().bvm, &mut st.b);
                host.fpu_leave();
                self.cpu.store(-1, core::sync::atomic::Ordering::Relaxed);
                self.handle_exit(st, exit)
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
        let ready = u8::from(self.ready_for_injection(st));
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
    fn complete_pending(&self, st: &mut VcpuState<H, B>) {
        let b = &self.vm().sys.backend;
        let c = match core::mem::replace(&mut st.pending, Pending::None) {
            Pending::None => return,
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
        b.complete_io(&mut st.b, c);
    }

    fn handle_exit(&self, st: &mut VcpuState<H, B>, exit: Exit) -> Step {
        let b = &self.vm().sys.backend;
        let vm = self.vm();
        match exit {
            Exit::Continue => Step::Continue,
            Exit::Io {
                port,
                size,
                out,
                data,
            } => {
                if !matches!(size, 1 | 2 | 4) {
                    self.set_internal(kvm_abi::KVM_INTERNAL_ERROR_EMULATION, u64::from(port));
                    return Step::ToUser;
                }
                let mut bytes = [0u8; 8];
                for (d, s) in bytes.iter_mut().zip(data.to_le_bytes()) {
                    *d = s;
                }
                if out
                    && vm.coalesced(u64::from(port), u32::from(size), true)
                    && self.ring_push(u64::from(port), &bytes, size, true)
                {
                    b.complete_io(&mut st.b, IoCompletion::Write);
                    return Step::Continue;
                }
                if out {
                    for (i, v) in bytes.iter().enumerate().take(usize::from(size)) {
                        // SAFETY: live PIO page of this vCPU; i < 4.
                        unsafe { self.pio.va().add(i).write_volatile(*v) };
                    }
                }
                let io = kvm_run_io {
                    direction: if out {
                        kvm_abi::KVM_EXIT_IO_OUT
                    } else {
                        kvm_abi::KVM_EXIT_IO_IN
                    },
                    size,
                    port,
                    count: 1,
                    data_offset: KVM_PIO_PAGE_OFFSET * PAGE_SIZE as u64,
                };
                self.set_exit(kvm_abi::KVM_EXIT_IO);
                // SAFETY: live run page; the union member starts at the union's offset.
                unsafe {
                    addr_of_mut!((*self.run_ptr()).u)
                        .cast::<kvm_run_io>()
                        .write_volatile(io)
                };
                st.pending = if out {
                    Pending::PioOut
                } else {
                    Pending::PioIn { size }
                };
                Step::ToUser
            }
            Exit::IoString { port, .. } => {
                // String I/O needs the instruction emulator (emulate/), not wired in yet.
                self.set_internal(kvm_abi::KVM_INTERNAL_ERROR_EMULATION, u64::from(port));
                Step::ToUser
            }
            Exit::Mmio {
                gpa,
                len,
                write,
                mut data,
            } => {
                if !(1..=8).contains(&len) {
                    self.set_internal(kvm_abi::KVM_INTERNAL_ERROR_EMULATION, gpa);
                    return Step::ToUser;
                }
                if let Some(l) = st.lapic.as_mut() {
                    let n = usize::from(len);
                    if self.apic_access(l, gpa, data.get_mut(..n).unwrap_or(&mut []), write) {
                        let c = if write {
                            IoCompletion::Write
                        } else {
                            IoCompletion::MmioRead { len, data }
                        };
                        b.complete_io(&mut st.b, c);
                        return Step::Continue;
                    }
                }
                if write
                    && vm.coalesced(gpa, u32::from(len), false)
                    && self.ring_push(gpa, &data, len, false)
                {
                    b.complete_io(&mut st.b, IoCompletion::Write);
                    return Step::Continue;
                }
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
            } => match vm.map_guest_page(gpa, write) {
                Ok(()) => Step::Continue,
                Err(_) => {
                    // MMIO (or a write to a read-only slot): the instruction must be decoded by
                    // the emulator (emulate/), which is not wired in yet.
                    self.set_internal(kvm_abi::KVM_INTERNAL_ERROR_EMULATION, gpa);
                    Step::ToUser
                }
            },
            Exit::Hlt => {
                if self.apic_halt(st) {
                    return Step::Continue;
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
                b.complete_cpuid(&mut st.b, r);
                Step::Continue
            }
            Exit::Rdmsr { index } => {
                let v = match self.apic_rdmsr(st, index) {
                    Some(v) => v,
                    None => b.get_msr(&mut st.b, index, false).ok(),
                };
                b.complete_rdmsr(&mut st.b, v);
                Step::Continue
            }
            Exit::Wrmsr { index, data } => {
                let ok = match self.apic_wrmsr(st, index, data) {
                    Some(ok) => ok,
                    None => b.set_msr(&mut st.b, index, data, false).is_ok(),
                };
                b.complete_wrmsr(&mut st.b, ok);
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
        }
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

    /// Appends a write to the VM's coalesced ring; false when the ring is full (then the access
    /// exits to userspace normally). `first` comes from userspace and is validated.
    fn ring_push(&self, addr: u64, data: &[u8; 8], len: u8, pio: bool) -> bool {
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
        let next = (last + 1) % KVM_COALESCED_MMIO_MAX;
        if next == first {
            return false;
        }
        let mut e = kvm_coalesced_mmio::new_zeroed();
        e.phys_addr = addr;
        e.len = u32::from(len);
        e.pad = u32::from(pio);
        e.data = *data;
        // SAFETY: last < KVM_COALESCED_MMIO_MAX, so the entry lies inside the page.
        unsafe {
            ring.add(8 + last as usize * core::mem::size_of::<kvm_coalesced_mmio>())
                .cast::<kvm_coalesced_mmio>()
                .write_volatile(e);
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            ring.add(4).cast::<u32>().write_volatile(next);
        }
        true
    }
}
