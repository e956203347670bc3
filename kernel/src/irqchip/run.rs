//! The vCPU side of the in-kernel local APIC: the hook the run loop calls before each guest
//! entry (merge posted requests, timer, INIT/SIPI/NMI, sleep while halted, inject or request an
//! interrupt window), xAPIC MMIO, `IA32_APIC_BASE` checks, in-kernel HLT, and the vCPU ioctls
//! `KVM_GET/SET_LAPIC`, `KVM_GET/SET_MP_STATE` and `KVM_INTERRUPT` with a split irqchip.

use core::sync::atomic::Ordering;

use kvm_abi::{
    kvm_interrupt, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use zerocopy::{FromZeros, IntoBytes};

use super::lapic::{
    Effect, Lapic, APIC_MMIO_SIZE, APIC_REG_SIZE, BASE_BSP, BASE_ENABLE, BASE_X2APIC,
    MSR_IA32_TSC_DEADLINE, X2APIC_MSR_BASE, X2APIC_MSR_LAST,
};
use super::{deliver, mirror_of, ApicShared, EV_INIT, EV_NMI, EV_SIPI, EV_TIMER};
use crate::backend::Backend;
use crate::cpuid;
use crate::errno::{KResult, EEXIST, EINVAL, ENXIO};
use crate::hmem::HBox;
use crate::host::Host;
use crate::msrs::{MSR_IA32_APICBASE, MSR_IA32_TSC};
use crate::user;
use crate::vcpu::{Vcpu, VcpuState};

/// What the run loop does after [`Vcpu::apic_before_entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicEntry {
    /// Enter the guest.
    Enter,
    /// A signal ended an in-kernel halt: return `-EINTR`.
    Signal,
    /// Exit to userspace with `KVM_EXIT_IOAPIC_EOI` for this vector first.
    EoiExit(u8),
}

impl<H: Host, B: Backend> Vcpu<H, B> {
    /// Whether another thread posted an interrupt or event to this vCPU's in-kernel APIC that
    /// the run loop has not merged yet (the entry gate's last look).
    pub(crate) fn apic_posted(&self) -> bool {
        self.apic.as_ref().is_some_and(|a| a.has_posted())
    }

    /// Run-loop hook before a guest entry. With an in-kernel APIC: delivers what other threads
    /// posted, runs the timer, handles INIT/SIPI/NMI, sleeps while the vCPU is halted or
    /// waiting for SIPI, then injects the highest deliverable interrupt (the userspace PIC's
    /// ExtINT first) or requests an interrupt window. A pending EOI for the userspace IOAPIC
    /// comes first (Linux `KVM_REQ_IOAPIC_EOI_EXIT`). On [`ApicEntry::Enter`] the vCPU is
    /// marked as running on this CPU, so later senders kick it.
    pub(crate) fn apic_before_entry(&self, st: &mut VcpuState<H, B>) -> ApicEntry {
        let (Some(a), Some(l)) = (self.apic.as_ref(), st.lapic.as_mut()) else {
            self.pit_service();
            return ApicEntry::Enter;
        };
        let b = &self.vm().sys.backend;
        let host = a.host;
        let vb = &mut st.b;
        if l.eoi_exit & 0x100 != 0 {
            let v = l.eoi_exit as u8;
            l.eoi_exit = 0;
            return ApicEntry::EoiExit(v);
        }
        if l.tpr_dirty != 0 {
            l.tpr_dirty = 0;
            let _ = b.set_cr8(vb, l.cr8());
        }
        if l.tscdl_ok & 2 == 0 {
            // CPUID is frozen from the first KVM_RUN on: look it up once.
            let ecx = cpuid::lookup(st.cpuid.as_deref().unwrap_or(&[]), 1, 0).ecx;
            l.tscdl_ok = 2 | u32::from(ecx & cpuid::L1_ECX_TSC_DEADLINE != 0);
        }
        l.set_base(b.get_apic_base(vb));
        loop {
            self.pit_service();
            self.apic_process(a, l, vb);
            if l.mp_state == KVM_MP_STATE_HALTED && self.wake_event(l, vb) {
                l.mp_state = KVM_MP_STATE_RUNNABLE;
            }
            if l.mp_state != KVM_MP_STATE_RUNNABLE {
                let g = a.wait.lock();
                if !a.has_posted() {
                    if host.signal_pending() {
                        return ApicEntry::Signal;
                    }
                    let now = host.nanotime();
                    let deadline = match (l.timer.deadline, self.pit_deadline()) {
                        (0, d) | (d, 0) => d,
                        (a, b) => a.min(b),
                    };
                    let timeout = match deadline {
                        0 => 0,
                        d => d.saturating_sub(now).max(1),
                    };
                    let _ = host.sleep(a.chan(), a.wait.raw(), timeout);
                }
                drop(g);
                continue;
            }
            self.cpu.store(host.cpu_current() as i32, Ordering::SeqCst);
            if !a.has_posted() {
                break;
            }
            self.cpu.store(-1, Ordering::SeqCst);
        }
        self.apic_inject(l, vb);
        let t = &mut l.timer;
        if t.deadline != t.armed {
            if let Some(ht) = a.timer {
                if t.deadline != 0 {
                    host.timer_arm(ht, t.deadline.saturating_sub(host.nanotime()).max(1));
                }
            }
            t.armed = t.deadline;
        }
        ApicEntry::Enter
    }

    /// Merges posted requests and events into the APIC (Linux `kvm_apic_accept_events` and
    /// the IRR sync of posted interrupts).
    fn apic_process(&self, a: &ApicShared<H>, l: &mut Lapic, vb: &mut B::Vcpu) {
        let b = &self.vm().sys.backend;
        for (w, (p, lv)) in a.pir.iter().zip(a.pir_level.iter()).enumerate() {
            let bits = p.swap(0, Ordering::SeqCst);
            if bits == 0 {
                continue;
            }
            let level = lv.fetch_and(!bits, Ordering::SeqCst) & bits;
            for i in 0..64u32 {
                if bits & (1 << i) != 0 {
                    l.accept_fixed((w as u32 * 64 + i) as u8, level & (1 << i) != 0);
                }
            }
        }
        let ev = a.events.swap(0, Ordering::SeqCst);
        if ev & EV_TIMER != 0 {
            // The host timer fired: arm it again if the deadline is still ahead.
            l.timer.armed = 0;
        }
        l.timer_poll(a.host.nanotime());
        if ev & EV_INIT != 0 {
            self.apic_init(l, vb);
        }
        if ev & EV_SIPI != 0 && l.mp_state == KVM_MP_STATE_INIT_RECEIVED {
            self.apic_sipi(a.sipi.load(Ordering::SeqCst) as u8, l, vb);
        }
        if ev & EV_NMI != 0 {
            b.queue_nmi(vb);
        }
        a.mirror.store(mirror_of(l), Ordering::SeqCst);
    }

    /// Whether a halted vCPU has something to do (Linux `kvm_vcpu_has_events`).
    fn wake_event(&self, l: &Lapic, vb: &mut B::Vcpu) -> bool {
        let b = &self.vm().sys.backend;
        let mut ev = kvm_vcpu_events::new_zeroed();
        b.get_events(vb, &mut ev);
        if ev.nmi.pending != 0 || b.interrupt_queued(vb) {
            return true;
        }
        b.interrupt_allowed(vb) && (l.pending().is_some() || self.extint_pending(l))
    }

    /// Whether an ExtINT waits for this vCPU (Linux `kvm_cpu_has_extint`): LINT0 takes PIC
    /// interrupts and the userspace PIC's `KVM_INTERRUPT` vector (split mode) or the in-kernel
    /// PIC's output (full mode) is there.
    fn extint_pending(&self, l: &Lapic) -> bool {
        l.accept_pic_intr() && (l.extint().is_some() || self.vm().irq.pic_output())
    }

    /// Injects the highest-priority deliverable interrupt or asks for an interrupt window.
    fn apic_inject(&self, l: &mut Lapic, vb: &mut B::Vcpu) {
        let b = &self.vm().sys.backend;
        if b.interrupt_queued(vb) {
            return;
        }
        l.sync_cr8(b.get_cr8(vb));
        let want = if self.extint_pending(l) {
            Some((0, true))
        } else {
            l.pending().map(|v| (v, false))
        };
        let Some((v, ext)) = want else { return };
        if !b.interrupt_allowed(vb) {
            b.set_irq_window(vb, true);
            return;
        }
        let v = if !ext {
            l.ack(v);
            v
        } else if let Some(x) = l.extint() {
            l.extint = 0;
            x
        } else {
            // The in-kernel PIC's interrupt acknowledge (its spurious IRQ 7 if the request
            // vanished meanwhile, as on hardware).
            match super::full::pic_inta(self.vm()) {
                Some(x) => x,
                None => return,
            }
        };
        b.queue_interrupt(vb, v);
    }

    /// INIT: registers to their INIT values (Intel SDM table 10-1), APIC registers reset
    /// except the ID; the BSP runs again, an AP waits for a SIPI.
    #[inline(never)]
    fn apic_init(&self, l: &mut Lapic, vb: &mut B::Vcpu) {
        let b = &self.vm().sys.backend;
        l.reset(false);
        l.extint = 0;
        l.mp_state = if l.base & BASE_BSP != 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_INIT_RECEIVED
        };
        let mut r = kvm_regs::new_zeroed();
        r.rflags = 2;
        r.rip = 0xfff0;
        r.rdx = 0x600;
        b.set_regs(vb, &r);
        let mut s = kvm_sregs::new_zeroed();
        b.get_sregs(vb, &mut s);
        let seg = |selector: u16, base: u64, ty: u8, code_data: u8| kvm_segment {
            base,
            limit: 0xffff,
            selector,
            r#type: ty,
            present: 1,
            s: code_data,
            ..FromZeros::new_zeroed()
        };
        s.cs = seg(0xf000, 0xffff_0000, 0xb, 1);
        for d in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
            *d = seg(0, 0, 3, 1);
        }
        s.tr = seg(0, 0, 0xb, 0);
        s.ldt = seg(0, 0, 2, 0);
        s.gdt.base = 0;
        s.gdt.limit = 0xffff;
        s.idt.base = 0;
        s.idt.limit = 0xffff;
        s.cr0 = 0x6000_0010;
        s.cr2 = 0;
        s.cr3 = 0;
        s.cr4 = 0;
        s.cr8 = 0;
        s.efer = 0;
        s.interrupt_bitmap = [0; 4];
        let _ = b.set_sregs(vb, &s);
        let _ = b.set_cr8(vb, 0);
    }

    /// Start-up IPI to a vCPU waiting for one: real mode at `vector << 12`.
    fn apic_sipi(&self, vector: u8, l: &mut Lapic, vb: &mut B::Vcpu) {
        let b = &self.vm().sys.backend;
        let mut s = kvm_sregs::new_zeroed();
        b.get_sregs(vb, &mut s);
        s.cs.selector = u16::from(vector) << 8;
        s.cs.base = u64::from(vector) << 12;
        let _ = b.set_sregs(vb, &s);
        let mut r = kvm_regs::new_zeroed();
        b.get_regs(vb, &mut r);
        r.rip = 0;
        b.set_regs(vb, &r);
        l.mp_state = KVM_MP_STATE_RUNNABLE;
    }

    /// `HLT` with an in-kernel APIC: the vCPU halts in the kernel (the next
    /// [`Vcpu::apic_before_entry`] sleeps until an event). `false` without an in-kernel APIC.
    pub(crate) fn apic_halt(&self, st: &mut VcpuState<H, B>) -> bool {
        match st.lapic.as_mut() {
            Some(l) => {
                l.mp_state = KVM_MP_STATE_HALTED;
                true
            }
            None => false,
        }
    }

    /// A guest access of `data.len()` bytes (1..=8) at guest-physical `gpa`, from a decoded
    /// MMIO exit or the instruction emulator: handled (`true`, read data filled in) when it
    /// falls in this vCPU's enabled xAPIC page (Linux `apic_mmio_in_range`). Effects that need
    /// the backend or userspace (CR8 after a TPR write, `KVM_EXIT_IOAPIC_EOI`) are recorded in
    /// `l` and carried out by [`Vcpu::apic_before_entry`]; IPIs are sent at once.
    pub fn apic_access(&self, l: &mut Lapic, gpa: u64, data: &mut [u8], write: bool) -> bool {
        let Some(a) = self.apic.as_ref() else {
            return false;
        };
        let Some(base) = l.mmio_base() else {
            return false;
        };
        if gpa < base || gpa - base >= APIC_MMIO_SIZE {
            return false;
        }
        let off = (gpa - base) as u32;
        let len = data.len() as u32;
        let now = a.host.nanotime();
        if !write {
            let v = u64::from(l.mmio_read(off, len, now)).to_le_bytes();
            for (d, s) in data.iter_mut().zip(v) {
                *d = s;
            }
            return true;
        }
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(data.iter()) {
            *d = *s;
        }
        let effect = l.mmio_write(off, len, u32::from_le_bytes(v), now);
        self.apic_effect(l, effect);
        true
    }

    /// Carries out the effect of a register write (see [`Vcpu::apic_access`]).
    fn apic_effect(&self, l: &mut Lapic, effect: Effect) {
        let vm = self.vm();
        let m = mirror_of(l);
        if let Some(a) = self.apic.as_ref() {
            a.mirror.store(m, Ordering::SeqCst);
        }
        match effect {
            Effect::None => {}
            Effect::Tpr => l.tpr_dirty = 1,
            Effect::Ipi(irq) => {
                deliver(vm, &irq, self);
            }
            Effect::Eoi(v) => {
                if vm.irq.full() {
                    // EOI broadcast of a level-triggered vector to the in-kernel IOAPIC; an
                    // edge-triggered one of an IOAPIC pin's vector goes there only for the
                    // ack notifiers (Linux `kvm_ioapic_handles_vector`).
                    let level = l.level_triggered(v);
                    if level || (super::ack::any(vm) && vm.irq.ioapic_vector(v)) {
                        super::full::ioapic_eoi(vm, v, level);
                    }
                } else if vm.irq.eoi_exit(m, v) {
                    l.eoi_exit = 0x100 | u32::from(v);
                }
            }
        }
    }

    /// A guest `RDMSR` the in-kernel APIC owns (the x2APIC MSRs): `None` when it is not an
    /// APIC MSR (or there is no in-kernel APIC), `Some(None)` for #GP.
    pub(crate) fn apic_rdmsr(&self, st: &mut VcpuState<H, B>, index: u32) -> Option<Option<u64>> {
        if index != MSR_IA32_TSC_DEADLINE && !(X2APIC_MSR_BASE..=X2APIC_MSR_LAST).contains(&index) {
            return None;
        }
        let (a, l) = (self.apic.as_ref()?, st.lapic.as_mut()?);
        l.set_base(self.vm().sys.backend.get_apic_base(&mut st.b));
        if index == MSR_IA32_TSC_DEADLINE {
            return Some(Some(l.tsc_deadline()));
        }
        Some(l.x2apic_read(index, a.host.nanotime()))
    }

    /// A guest `WRMSR` the in-kernel APIC owns or checks: the x2APIC MSRs (`Some(ok)`, `false`
    /// → #GP), and `IA32_APIC_BASE`, refused (`Some(false)`) for what Linux's
    /// `kvm_apic_set_base` refuses: reserved bits, x2APIC without CPUID x2APIC, EXTD without
    /// EN, x2APIC → xAPIC and disabled → x2APIC. `None`: the backend handles it.
    pub(crate) fn apic_wrmsr(
        &self,
        st: &mut VcpuState<H, B>,
        index: u32,
        data: u64,
    ) -> Option<bool> {
        let a = self.apic.as_ref()?;
        let b = &self.vm().sys.backend;
        let cpuid_x2 =
            cpuid::lookup(st.cpuid.as_deref().unwrap_or(&[]), 1, 0).ecx & cpuid::L1_ECX_X2APIC != 0;
        let l = st.lapic.as_mut()?;
        l.set_base(b.get_apic_base(&mut st.b));
        if index == MSR_IA32_APICBASE {
            let both = BASE_ENABLE | BASE_X2APIC;
            let (old, new) = (l.base & both, data & both);
            let reserved = 0x2ff | (!0u64 << 52) | if cpuid_x2 { 0 } else { BASE_X2APIC };
            let bad = data & reserved != 0
                || new == BASE_X2APIC
                || (old == both && new == BASE_ENABLE)
                || (old == 0 && new == both);
            return if bad || data == l.base {
                Some(!bad)
            } else {
                None
            };
        }
        if index == MSR_IA32_TSC_DEADLINE {
            let tsc = b.get_msr(&mut st.b, MSR_IA32_TSC, false).unwrap_or(0);
            l.set_tsc_deadline(data, tsc, a.host.tsc_khz(), a.host.nanotime());
            return Some(true);
        }
        if !(X2APIC_MSR_BASE..=X2APIC_MSR_LAST).contains(&index) {
            return None;
        }
        let Some(effect) = l.x2apic_write(index, data, a.host.nanotime()) else {
            return Some(false);
        };
        self.apic_effect(l, effect);
        Some(true)
    }

    /// `ready_for_interrupt_injection` extra condition with a split irqchip (Linux
    /// `kvm_cpu_accept_dm_intr`): no ExtINT waiting, and LINT0 takes PIC interrupts.
    pub(crate) fn apic_accepts_extint(&self, st: &VcpuState<H, B>) -> bool {
        st.lapic
            .as_ref()
            .is_none_or(|l| l.extint().is_none() && l.accept_pic_intr())
    }

    /// `KVM_INTERRUPT` with a split irqchip: the userspace PIC's vector, delivered when LINT0
    /// accepts ExtINT and the guest can take it. `None` without an in-kernel APIC.
    pub(crate) fn apic_interrupt(
        &self,
        st: &mut VcpuState<H, B>,
        arg: u64,
    ) -> Option<KResult<i64>> {
        let l = st.lapic.as_mut()?;
        Some((|| {
            let irq: kvm_interrupt = user::read(self.vm().sys.host, arg)?;
            if irq.irq >= 256 {
                return Err(EINVAL);
            }
            // With the in-kernel PIC, userspace never injects (Linux).
            if self.vm().irq.full() {
                return Err(ENXIO);
            }
            if l.extint().is_some() {
                return Err(EEXIST);
            }
            l.extint = 0x100 | irq.irq;
            Ok(0)
        })())
    }

    /// `KVM_SET_VCPU_EVENTS` with `KVM_VCPUEVENT_VALID_SIPI_VECTOR` (Linux keeps it in the APIC;
    /// ignored without one).
    pub(crate) fn apic_set_sipi_vector(&self, vector: u32) {
        if let Some(a) = self.apic.as_ref() {
            a.sipi.store(vector & 0xff, Ordering::SeqCst);
        }
    }

    /// `KVM_GET_LAPIC`, `KVM_SET_LAPIC`, `KVM_GET_MP_STATE`, `KVM_SET_MP_STATE`,
    /// `KVM_SET_VAPIC_ADDR`.
    #[inline(never)]
    pub(crate) fn apic_ioctl(&self, st: &mut VcpuState<H, B>, cmd: u32, arg: u64) -> KResult<i64> {
        use kvm_abi::{
            kvm_vapic_addr, KVM_GET_LAPIC, KVM_GET_MP_STATE, KVM_SET_LAPIC, KVM_SET_MP_STATE,
            KVM_SET_VAPIC_ADDR,
        };
        let host = self.vm().sys.host;
        let b = &self.vm().sys.backend;
        let vb = &mut st.b;
        let (a, l) = match (self.apic.as_ref(), st.lapic.as_mut()) {
            (Some(a), Some(l)) => (a, l),
            _ => {
                // No in-kernel APIC: LAPIC ioctls fail, only RUNNABLE exists (Linux).
                return match cmd {
                    KVM_GET_MP_STATE => user::write(
                        host,
                        arg,
                        &kvm_mp_state {
                            mp_state: KVM_MP_STATE_RUNNABLE,
                        },
                    )
                    .map(|()| 0),
                    KVM_SET_MP_STATE => {
                        let m: kvm_mp_state = user::read(host, arg)?;
                        if m.mp_state == KVM_MP_STATE_RUNNABLE {
                            Ok(0)
                        } else {
                            Err(EINVAL)
                        }
                    }
                    _ => Err(EINVAL),
                };
            }
        };
        l.set_base(b.get_apic_base(vb));
        match cmd {
            KVM_GET_LAPIC => {
                self.apic_process(a, l, vb);
                let mut page = HBox::<kvm_lapic_state, H>::new_zeroed(host)?;
                l.get_state(host.nanotime(), &mut page.regs);
                host.copyout(arg, page.as_bytes()).map(|()| 0)
            }
            KVM_SET_LAPIC => {
                let page = user::read_boxed::<kvm_lapic_state, H>(host, arg)?;
                l.set_state(&page.regs, host.nanotime());
                l.timer.armed = 0;
                a.mirror.store(mirror_of(l), Ordering::SeqCst);
                b.set_cr8(vb, l.cr8()).map(|()| 0)
            }
            KVM_SET_VAPIC_ADDR => {
                // QEMU's APIC reset clears the TPR-patching "vapic" page with address 0 and
                // aborts if that fails. A nonzero page is only ever set up after TPR-access
                // reports (KVM_EXIT_TPR_ACCESS), which okvm never produces: refused.
                let va: kvm_vapic_addr = user::read(host, arg)?;
                if va.vapic_addr != 0 {
                    return Err(EINVAL);
                }
                Ok(0)
            }
            KVM_GET_MP_STATE => {
                self.apic_process(a, l, vb);
                user::write(
                    host,
                    arg,
                    &kvm_mp_state {
                        mp_state: l.mp_state,
                    },
                )
                .map(|()| 0)
            }
            KVM_SET_MP_STATE => {
                let m: kvm_mp_state = user::read(host, arg)?;
                match m.mp_state {
                    KVM_MP_STATE_RUNNABLE
                    | KVM_MP_STATE_UNINITIALIZED
                    | KVM_MP_STATE_INIT_RECEIVED
                    | KVM_MP_STATE_HALTED => l.mp_state = m.mp_state,
                    KVM_MP_STATE_SIPI_RECEIVED => {
                        // Linux: wait for INIT, with the SIPI already pending.
                        l.mp_state = KVM_MP_STATE_INIT_RECEIVED;
                        a.events.fetch_or(EV_SIPI, Ordering::SeqCst);
                    }
                    _ => return Err(EINVAL),
                }
                Ok(0)
            }
            _ => Err(EINVAL),
        }
    }
}

const _: () = assert!(core::mem::size_of::<kvm_lapic_state>() == APIC_REG_SIZE);
