//! The vCPU object, its mmap pages and the vCPU state ioctls.
//!
//! Locking: `[v]` = the vCPU lock (`Vcpu::st`), held for every vCPU ioctl including the whole of
//! `KVM_RUN` (Linux's `vcpu->mutex`); other vCPUs are never blocked by it. `[I]` immutable.

use core::ptr::NonNull;
use core::sync::atomic::AtomicI32;

use kvm_abi::{
    kvm_cpuid2, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::backend::Backend;
use crate::cpuid::{self, KVM_MAX_CPUID_ENTRIES};
use crate::emul::{EmuRegs, EMULATOR_INIT};
use crate::errno::{KResult, E2BIG, EEXIST, EFAULT, EINVAL, EIO};
use crate::hmem::{HBox, HPage, HSlice};
use crate::host::Host;
use crate::irqchip::{self, lapic::Lapic, ApicShared};
use crate::msrs::Mce;
use crate::sync::HMutex;
use crate::system::{msr_io, Head, Magic};
use crate::user;
use crate::vm::Vm;

/// `KVMIO`, the ioctl type byte of every KVM command.
pub const KVMIO: u32 = 0xae;

/// An I/O instruction waiting for userspace (completed at the next `KVM_RUN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing pending.
    None,
    /// `IN` of `size` bytes: the value is read from the PIO data page.
    PioIn { size: u8 },
    /// `OUT`: just finish the instruction.
    PioOut,
    /// MMIO read of `len` bytes: the value is read from `kvm_run.mmio.data`.
    MmioRead { len: u8 },
    /// MMIO write: just finish the instruction.
    MmioWrite,
    /// The instruction emulator handed this access to userspace; the next `KVM_RUN` gives
    /// it the read data (if any) and continues the instruction.
    Emulated(emulate::Exit),
}

/// vCPU state under the vCPU lock.
pub struct VcpuState<H: Host, B: Backend> {
    /// Backend state.
    pub b: B::Vcpu,
    /// The guest CPUID table (`KVM_SET_CPUID2`).
    pub cpuid: Option<HSlice<kvm_cpuid_entry2, H>>,
    /// Pending userspace I/O completion.
    pub pending: Pending,
    /// `KVM_RUN` was called at least once (CPUID is frozen afterwards).
    pub has_run: bool,
    /// The instruction emulator (about 2 KiB, heap: never on the kernel stack).
    pub emu: HBox<emulate::Emulator, H>,
    /// The emulator's register snapshot and I/O staging (heap).
    pub ectx: HBox<EmuRegs, H>,
    /// The in-kernel local APIC (split irqchip), else `None`.
    pub lapic: Option<HBox<Lapic, H>>,
    /// Machine-check MSRs and banks (heap: about 1 KiB).
    pub mce: HBox<Mce, H>,
    /// A #MC raised by `KVM_X86_SET_MCE` waits for the injection slot.
    pub mc_pending: bool,
    /// The next `KVM_RUN` returns `KVM_EXIT_SHUTDOWN` (Linux `KVM_REQ_TRIPLE_FAULT`).
    pub shutdown_req: bool,
}

/// A vCPU.
#[repr(C)]
pub struct Vcpu<H: Host, B: Backend> {
    head: Head,
    /// [I] The VM (kept alive by the descriptor reference or by the caller).
    vm: NonNull<Vm<H, B>>,
    /// [I] The vCPU id (`KVM_CREATE_VCPU` argument, the APIC id).
    pub id: u32,
    /// [I] `struct kvm_run` (mmap page 0).
    pub run: HPage<H>,
    /// [I] PIO data page (mmap page `KVM_PIO_PAGE_OFFSET`).
    pub pio: HPage<H>,
    /// [a] CPU the vCPU runs on, or -1 (for kicks).
    pub cpu: AtomicI32,
    /// The cross-thread part of the in-kernel local APIC (split irqchip), else `None`.
    pub apic: Option<ApicShared<H>>,
    /// [v] The locked state.
    pub st: HMutex<VcpuState<H, B>, H>,
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    /// Creates vCPU `id` of `vm` (the caller holds the VM lock).
    #[inline(never)]
    pub fn new(vm: &Vm<H, B>, id: u32) -> KResult<HBox<Self, H>> {
        let host = vm.sys.host;
        let mut b = vm.sys.backend.vcpu_create(&vm.bvm, id)?;
        let (apic, lapic) = irqchip::vcpu_parts(vm, id, &mut b)?;
        let mut mce = HBox::<Mce, H>::new_zeroed(host)?;
        mce.reset();
        let v = Vcpu {
            head: Head {
                magic: Magic::Vcpu as u32,
            },
            vm: NonNull::from(vm),
            id,
            run: HPage::new(host)?,
            pio: HPage::new(host)?,
            cpu: AtomicI32::new(-1),
            apic,
            st: HMutex::new(
                host,
                VcpuState {
                    b,
                    cpuid: None,
                    pending: Pending::None,
                    has_run: false,
                    // SAFETY: Emulator is plain data (arrays, integers, Options of Copy enums;
                    // no Drop, owns nothing): a bitwise copy of the initial value is valid.
                    emu: unsafe { HBox::new_copy(host, &EMULATOR_INIT)? },
                    ectx: HBox::new_zeroed(host)?,
                    lapic,
                    mce,
                    mc_pending: false,
                    shutdown_req: false,
                },
            )?,
        };
        let mut v = HBox::new(host, v)?;
        irqchip::attach_timer(&mut v)?;
        Ok(v)
    }

    /// The VM pointer (for reference counting).
    pub fn vm_ptr(&self) -> *mut Vm<H, B> {
        self.vm.as_ptr()
    }

    /// The VM.
    pub fn vm(&self) -> &Vm<H, B> {
        // SAFETY: a vCPU is reachable only while its VM is alive (descriptor reference held
        // by whoever reaches the vCPU, or the VM itself during teardown).
        unsafe { self.vm.as_ref() }
    }

    fn host(&self) -> &'static H {
        self.vm().sys.host
    }

    fn backend(&self) -> &'static B {
        &self.vm().sys.backend
    }

    /// Physical address of mmap page `pgoff`: 0 `kvm_run`, 1 PIO data, 2 coalesced MMIO ring.
    pub fn mmap_page(&self, pgoff: u64) -> KResult<u64> {
        match pgoff {
            0 => Ok(self.run.pa()),
            1 => Ok(self.pio.pa()),
            2 => Ok(self.vm().ring.pa()),
            _ => Err(EINVAL),
        }
    }

    /// A vCPU ioctl (Linux `kvm_vcpu_ioctl` + `kvm_arch_vcpu_ioctl`; unknown commands: `EINVAL`).
    pub fn ioctl(&self, cmd: u32, arg: u64) -> KResult<i64> {
        use kvm_abi::*;
        let host = self.host();
        if !host.mm_is_current(self.vm().mm) {
            return Err(EIO);
        }
        if (cmd >> 8) & 0xff != KVMIO {
            return Err(EINVAL);
        }
        let mut st = self.st.lock();
        let st = &mut *st;
        match cmd {
            KVM_RUN => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                self.run(st)
            }
            KVM_GET_REGS => self.get_regs(st, arg),
            KVM_SET_REGS => self.set_regs(st, arg),
            KVM_GET_SREGS => self.get_sregs(st, arg),
            KVM_SET_SREGS => self.set_sregs(st, arg),
            KVM_GET_FPU => self.get_fpu(st, arg),
            KVM_SET_FPU => self.set_fpu(st, arg),
            KVM_GET_XSAVE => self.get_xsave(st, arg),
            KVM_SET_XSAVE => self.set_xsave(st, arg),
            KVM_GET_XCRS => self.get_xcrs(st, arg),
            KVM_SET_XCRS => self.set_xcrs(st, arg),
            KVM_GET_MSRS => msr_io(host, arg, true, |e| {
                self.msr_get(st, e.index, true).map(|v| e.data = v).is_ok()
            }),
            KVM_SET_MSRS => msr_io(host, arg, false, |e| {
                self.msr_set(st, e.index, e.data, true).is_ok()
            }),
            KVM_X86_SETUP_MCE => self.setup_mce(st, arg),
            KVM_X86_SET_MCE => self.set_mce(st, arg),
            KVM_GET_MP_STATE | KVM_SET_MP_STATE | KVM_GET_LAPIC | KVM_SET_LAPIC
            | KVM_SET_VAPIC_ADDR => self.apic_ioctl(st, cmd, arg),
            KVM_GET_VCPU_EVENTS => self.get_events(st, arg),
            KVM_SET_VCPU_EVENTS => self.set_events(st, arg),
            KVM_GET_DEBUGREGS => self.get_debugregs(st, arg),
            KVM_SET_DEBUGREGS => self.set_debugregs(st, arg),
            KVM_INTERRUPT => {
                if let Some(r) = self.apic_interrupt(st, arg) {
                    return r;
                }
                let irq: kvm_interrupt = user::read(host, arg)?;
                if irq.irq >= 256 {
                    return Err(EINVAL);
                }
                let b = self.backend();
                if b.interrupt_queued(&mut st.b) {
                    return Err(EEXIST);
                }
                b.queue_interrupt(&mut st.b, irq.irq as u8);
                Ok(0)
            }
            KVM_NMI => {
                self.backend().queue_nmi(&mut st.b);
                Ok(0)
            }
            KVM_SET_CPUID2 => self.set_cpuid2(st, arg),
            KVM_GET_CPUID2 => self.get_cpuid2(st, arg),
            KVM_GET_TSC_KHZ => Ok(host.tsc_khz() as i64),
            _ => Err(EINVAL),
        }
    }

    #[inline(never)]
    fn get_regs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut r = kvm_regs::new_zeroed();
        self.backend().get_regs(&mut st.b, &mut r);
        user::write(self.host(), arg, &r).map(|()| 0)
    }

    #[inline(never)]
    fn set_regs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let r: kvm_regs = user::read(self.host(), arg)?;
        if matches!(st.pending, Pending::Emulated(_)) {
            // Userspace moved RIP under an instruction the emulator was in the middle of: the
            // rest of it (a pending read, queued writes) belongs to the old instruction.
            let mut cur = kvm_regs::new_zeroed();
            self.backend().get_regs(&mut st.b, &mut cur);
            if cur.rip != r.rip {
                st.emu.reset();
                st.pending = Pending::None;
            }
        }
        self.backend().set_regs(&mut st.b, &r);
        Ok(0)
    }

    #[inline(never)]
    fn get_sregs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut r = kvm_sregs::new_zeroed();
        self.backend().get_sregs(&mut st.b, &mut r);
        user::write(self.host(), arg, &r).map(|()| 0)
    }

    #[inline(never)]
    fn set_sregs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let r: kvm_sregs = user::read(self.host(), arg)?;
        self.backend().set_sregs(&mut st.b, &r).map(|()| 0)
    }

    #[inline(never)]
    fn get_fpu(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut r = kvm_fpu::new_zeroed();
        self.backend().get_fpu(&mut st.b, &mut r);
        user::write(self.host(), arg, &r).map(|()| 0)
    }

    #[inline(never)]
    fn set_fpu(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let r: kvm_fpu = user::read(self.host(), arg)?;
        self.backend().set_fpu(&mut st.b, &r);
        Ok(0)
    }

    #[inline(never)]
    fn get_xsave(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut x = HBox::<kvm_xsave, H>::new_zeroed(self.host())?;
        self.backend().get_xsave(&mut st.b, &mut x);
        self.host().copyout(arg, x.as_bytes()).map(|()| 0)
    }

    #[inline(never)]
    fn set_xsave(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let x = user::read_boxed::<kvm_xsave, H>(self.host(), arg)?;
        self.backend().set_xsave(&mut st.b, &x).map(|()| 0)
    }

    #[inline(never)]
    fn get_xcrs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut x = kvm_xcrs::new_zeroed();
        self.backend().get_xcrs(&mut st.b, &mut x);
        user::write(self.host(), arg, &x).map(|()| 0)
    }

    #[inline(never)]
    fn set_xcrs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let x: kvm_xcrs = user::read(self.host(), arg)?;
        if x.nr_xcrs > kvm_abi::KVM_MAX_XCRS || x.flags != 0 {
            return Err(EINVAL);
        }
        self.backend().set_xcrs(&mut st.b, &x).map(|()| 0)
    }

    #[inline(never)]
    fn get_events(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        use kvm_abi::*;
        let mut e = kvm_vcpu_events::new_zeroed();
        self.backend().get_events(&mut st.b, &mut e);
        e.flags =
            KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
        e.sipi_vector = 0;
        e.smi = FromZeros::new_zeroed();
        e.triple_fault = FromZeros::new_zeroed();
        e.reserved = [0; 26];
        e.exception_has_payload = 0;
        e.exception_payload = 0;
        user::write(self.host(), arg, &e).map(|()| 0)
    }

    /// Linux's `kvm_vcpu_ioctl_x86_set_vcpu_events` checks; fields whose VALID flag is clear
    /// keep their current value.
    #[inline(never)]
    fn set_events(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        use kvm_abi::*;
        let e: kvm_vcpu_events = user::read(self.host(), arg)?;
        let known = KVM_VCPUEVENT_VALID_NMI_PENDING
            | KVM_VCPUEVENT_VALID_SIPI_VECTOR
            | KVM_VCPUEVENT_VALID_SHADOW
            | KVM_VCPUEVENT_VALID_SMM
            | KVM_VCPUEVENT_VALID_PAYLOAD
            | KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
        if e.flags & !known != 0 {
            return Err(EINVAL);
        }
        // Exception payloads and triple-fault events are not enabled (no KVM_ENABLE_CAP for them).
        if e.flags & (KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT) != 0 {
            return Err(EINVAL);
        }
        if (e.exception.injected != 0 || e.exception.pending != 0)
            && (e.exception.nr > 31 || e.exception.nr == 2)
        {
            return Err(EINVAL);
        }
        // No SMM support.
        if e.flags & KVM_VCPUEVENT_VALID_SMM != 0
            && (e.smi.smm != 0 || e.smi.pending != 0 || e.smi.smm_inside_nmi != 0)
        {
            return Err(EINVAL);
        }
        let b = self.backend();
        let mut cur = kvm_vcpu_events::new_zeroed();
        b.get_events(&mut st.b, &mut cur);
        let mut n = cur;
        // Without a payload capability, a "pending" exception is delivered as injected.
        n.exception.injected = u8::from(e.exception.injected != 0 || e.exception.pending != 0);
        n.exception.pending = 0;
        n.exception.nr = e.exception.nr;
        n.exception.has_error_code = e.exception.has_error_code;
        n.exception.error_code = e.exception.error_code;
        n.interrupt.injected = e.interrupt.injected;
        n.interrupt.nr = e.interrupt.nr;
        n.interrupt.soft = e.interrupt.soft;
        if e.flags & KVM_VCPUEVENT_VALID_SHADOW != 0 {
            n.interrupt.shadow = e.interrupt.shadow;
        }
        n.nmi.injected = e.nmi.injected;
        if e.flags & KVM_VCPUEVENT_VALID_NMI_PENDING != 0 {
            n.nmi.pending = e.nmi.pending;
        }
        n.nmi.masked = e.nmi.masked;
        if e.flags & KVM_VCPUEVENT_VALID_SIPI_VECTOR != 0 {
            // The vector a later SIPI_RECEIVED MP state starts at (in-kernel APIC only).
            self.apic_set_sipi_vector(e.sipi_vector);
        }
        b.set_events(&mut st.b, &n).map(|()| 0)
    }

    #[inline(never)]
    fn get_debugregs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let mut d = kvm_debugregs::new_zeroed();
        self.backend().get_debugregs(&mut st.b, &mut d);
        d.flags = 0;
        d.reserved = [0; 9];
        user::write(self.host(), arg, &d).map(|()| 0)
    }

    #[inline(never)]
    fn set_debugregs(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let d: kvm_debugregs = user::read(self.host(), arg)?;
        if d.flags != 0 || d.dr6 >> 32 != 0 || d.dr7 >> 32 != 0 {
            return Err(EINVAL);
        }
        self.backend().set_debugregs(&mut st.b, &d).map(|()| 0)
    }

    /// `KVM_SET_CPUID2`: `E2BIG` above 256 entries; after the first `KVM_RUN` only an identical
    /// table is accepted (Linux ≥ 5.16).
    #[inline(never)]
    fn set_cpuid2(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let host = self.host();
        let hdr: kvm_cpuid2 = user::read(host, arg)?;
        if hdr.nent as usize > KVM_MAX_CPUID_ENTRIES {
            return Err(E2BIG);
        }
        let mut t = HSlice::<kvm_cpuid_entry2, H>::new_zeroed(host, hdr.nent as usize)?;
        let at = arg
            .checked_add(core::mem::size_of::<kvm_cpuid2>() as u64)
            .ok_or(EFAULT)?;
        host.copyin(t.as_mut_bytes(), at)?;
        if !cpuid::check(&t) {
            return Err(EINVAL);
        }
        if st.has_run {
            let same = st
                .cpuid
                .as_ref()
                .is_some_and(|c| c.as_bytes() == t.as_bytes());
            return if same { Ok(0) } else { Err(EINVAL) };
        }
        self.backend().cpuid_changed(&mut st.b, &t);
        st.cpuid = Some(t);
        Ok(0)
    }

    #[inline(never)]
    fn get_cpuid2(&self, st: &mut VcpuState<H, B>, arg: u64) -> KResult<i64> {
        let host = self.host();
        let mut hdr: kvm_cpuid2 = user::read(host, arg)?;
        let cur: &[kvm_cpuid_entry2] = st.cpuid.as_deref().unwrap_or(&[]);
        if (hdr.nent as usize) < cur.len() {
            return Err(E2BIG);
        }
        let at = arg
            .checked_add(core::mem::size_of::<kvm_cpuid2>() as u64)
            .ok_or(EFAULT)?;
        host.copyout(at, cur.as_bytes())?;
        hdr.nent = cur.len() as u32;
        user::write(host, arg, &hdr).map(|()| 0)
    }
}
