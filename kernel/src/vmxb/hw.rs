//! The hardware the VMX adapter drives, behind [`VmxHw`] so the adapter is host-tested with a
//! fake (`FakeVmx` in the tests): the VMX instructions (`vmx::hw::VmxInstr`), VMREAD/VMWRITE
//! of the current VMCS, the world switch, the host-state snapshot, and the ordinary x86
//! operations around an entry (MSRs, interrupt flag, XSAVE, TSC), which are the `svm` crate's
//! (`svm::hw::RealSvm`: one copy of that assembly for both backends).

use vmx::hw::VmxInstr;
use vmx::state::{GuestRegs, HostState};
use vmx::switch::EnterStatus;
use vmx::vmcs::{VmFail, Vmcs};

/// Everything the VMX adapter executes on the processor.
///
/// # Safety
/// Implementations execute privileged instructions; every `unsafe` method is valid only in the
/// situation its documentation (or `VmxInstr`'s) states.
pub unsafe trait VmxHw: VmxInstr {
    /// RDMSR.
    fn rdmsr(&self, msr: u32) -> u64;
    /// WRMSR.
    ///
    /// # Safety
    /// The MSR and value are valid and the host does not rely on the old value meanwhile.
    unsafe fn wrmsr(&self, msr: u32, value: u64);
    /// CR0 of this CPU.
    fn read_cr0(&self) -> u64;
    /// CR4 of this CPU.
    fn read_cr4(&self) -> u64;
    /// VMREAD of the current VMCS.
    fn vmread(&self, field: u32) -> Result<u64, VmFail>;
    /// VMWRITE to the current VMCS.
    fn vmwrite(&self, field: u32, value: u64) -> Result<(), VmFail>;
    /// The host state of this CPU and thread for the VMCS host-state area (called with
    /// interrupts disabled, just before the entry). Selectors with RPL or TI set are given as
    /// 0 (VM entry requires it); [`VmxHw::enter`] restores the real DS/ES after the exit.
    fn host_state(&self) -> HostState;
    /// VMLAUNCH (`launched` false) or VMRESUME through `vmx::switch`, restoring the host's DS
    /// and ES selectors afterwards.
    ///
    /// # Safety
    /// `vmx::switch`'s entry conditions: interrupts off, VMX root operation, the vCPU's VMCS
    /// current with host state written, no migration.
    unsafe fn enter(&self, regs: &mut GuestRegs, launched: bool) -> EnterStatus;
    /// Delivers an NMI that caused a VM exit to the host's handler (`int 2`).
    ///
    /// # Safety
    /// Called right after such an exit, interrupts disabled.
    unsafe fn host_nmi(&self);
    /// CLI; whether RFLAGS.IF was set.
    fn irq_disable(&self) -> bool;
    /// STI.
    ///
    /// # Safety
    /// Undoes [`VmxHw::irq_disable`] when nothing requires interrupts off any more.
    unsafe fn irq_enable(&self);
    /// XGETBV(0).
    fn xgetbv0(&self) -> u64;
    /// XSETBV(0).
    ///
    /// # Safety
    /// A valid XCR0 for this CPU; the host's is restored before the host uses extended state.
    unsafe fn xsetbv0(&self, value: u64);
    /// XSAVE of `mask` to the 64-byte aligned 4 KiB `area`.
    ///
    /// # Safety
    /// `area` is a valid, aligned XSAVE area.
    unsafe fn xsave(&self, area: *mut u8, mask: u64);
    /// XRSTOR of `mask` from `area`.
    ///
    /// # Safety
    /// `area` holds a valid XSAVE image.
    unsafe fn xrstor(&self, area: *const u8, mask: u64);
    /// FXSAVE.
    ///
    /// # Safety
    /// As for `xsave`.
    unsafe fn fxsave(&self, area: *mut u8);
    /// FXRSTOR.
    ///
    /// # Safety
    /// As for `xrstor`.
    unsafe fn fxrstor(&self, area: *const u8);
    /// RDTSC.
    fn rdtsc(&self) -> u64;
}

/// The current VMCS as `vmx::vmcs::Vmcs`, through a [`VmxHw`].
pub struct Cur<'a, W: VmxHw>(pub &'a W);

impl<W: VmxHw> Vmcs for Cur<'_, W> {
    fn read(&self, field: u32) -> Result<u64, VmFail> {
        self.0.vmread(field)
    }
    fn write(&mut self, field: u32, value: u64) -> Result<(), VmFail> {
        self.0.vmwrite(field, value)
    }
}

/// The real processor, for the kernel object.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealVmxHw;

#[cfg(target_arch = "x86_64")]
mod real {
    use super::*;
    use svm::hw::{RealSvm, SvmHw};
    use vmx::hw::{InveptType, InvvpidType, RealVmx};
    use vmx::vmcs::CurrentVmcs;

    // SAFETY: forwards to the vmx crate's instruction wrappers.
    unsafe impl VmxInstr for RealVmxHw {
        unsafe fn vmxon(&self, pa: u64) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.vmxon(pa) }
        }
        unsafe fn vmxoff(&self) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.vmxoff() }
        }
        unsafe fn vmclear(&self, pa: u64) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.vmclear(pa) }
        }
        unsafe fn vmptrld(&self, pa: u64) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.vmptrld(pa) }
        }
        unsafe fn invept(&self, kind: InveptType, eptp: u64) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.invept(kind, eptp) }
        }
        unsafe fn invvpid(&self, kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail> {
            // SAFETY: forwarded contract.
            unsafe { RealVmx.invvpid(kind, vpid, addr) }
        }
    }

    fn sel(s: u16) -> u16 {
        if s & 7 != 0 {
            0
        } else {
            s
        }
    }

    #[repr(C, packed)]
    struct DescPtr {
        limit: u16,
        base: u64,
    }

    // SAFETY: every method executes the instruction it names in ring 0.
    unsafe impl VmxHw for RealVmxHw {
        fn rdmsr(&self, msr: u32) -> u64 {
            RealSvm.rdmsr(msr)
        }
        unsafe fn wrmsr(&self, msr: u32, value: u64) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.wrmsr(msr, value) }
        }
        fn read_cr0(&self) -> u64 {
            let v: u64;
            // SAFETY: reading CR0 in ring 0 has no side effect.
            unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
            v
        }
        fn read_cr4(&self) -> u64 {
            let v: u64;
            // SAFETY: reading CR4 in ring 0 has no side effect.
            unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
            v
        }
        fn vmread(&self, field: u32) -> Result<u64, VmFail> {
            // SAFETY: the adapter calls this only with its VMCS current on this CPU
            // (preemption disabled); a VMREAD without one fails cleanly (VMfailInvalid).
            unsafe { CurrentVmcs::new() }.read(field)
        }
        fn vmwrite(&self, field: u32, value: u64) -> Result<(), VmFail> {
            // SAFETY: as for `vmread`.
            unsafe { CurrentVmcs::new() }.write(field, value)
        }
        fn host_state(&self) -> HostState {
            let (cr0, cr3, cr4): (u64, u64, u64);
            let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
            let mut gdt = DescPtr { limit: 0, base: 0 };
            let mut idt = DescPtr { limit: 0, base: 0 };
            // SAFETY: reads of control, segment and descriptor-table registers; the two
            // stores go to the local descriptor-pointer buffers.
            unsafe {
                core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
                core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
                core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
                core::arch::asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack));
                core::arch::asm!("mov {:x}, ss", out(reg) ss, options(nomem, nostack));
                core::arch::asm!("mov {:x}, ds", out(reg) ds, options(nomem, nostack));
                core::arch::asm!("mov {:x}, es", out(reg) es, options(nomem, nostack));
                core::arch::asm!("mov {:x}, fs", out(reg) fs, options(nomem, nostack));
                core::arch::asm!("mov {:x}, gs", out(reg) gs, options(nomem, nostack));
                core::arch::asm!("str {:x}", out(reg) tr, options(nomem, nostack));
                core::arch::asm!("sgdt [{}]", in(reg) core::ptr::addr_of_mut!(gdt), options(nostack));
                core::arch::asm!("sidt [{}]", in(reg) core::ptr::addr_of_mut!(idt), options(nostack));
            }
            let gdt_base = gdt.base;
            let idx = u64::from(tr & !7);
            // The TSS descriptor (16 bytes in long mode): base 15:0 at bytes 2-3, 23:16 at 4,
            // 31:24 at 7, 63:32 at 8-11.
            // SAFETY: TR selects a present TSS descriptor in the live GDT (the host runs on it).
            let (lo, hi) = unsafe {
                let p = (gdt_base + idx) as *const u64;
                (p.read_unaligned(), p.add(1).read_unaligned())
            };
            let tr_base =
                ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32);
            HostState {
                cr0,
                cr3,
                cr4,
                cs: sel(cs),
                ss: sel(ss),
                ds: sel(ds),
                es: sel(es),
                fs: sel(fs),
                gs: sel(gs),
                tr,
                fs_base: self.rdmsr(0xc000_0100),
                gs_base: self.rdmsr(0xc000_0101),
                tr_base,
                gdtr_base: gdt_base,
                idtr_base: idt.base,
                sysenter_cs: self.rdmsr(0x174) as u32,
                sysenter_esp: self.rdmsr(0x175),
                sysenter_eip: self.rdmsr(0x176),
                efer: self.rdmsr(0xc000_0080),
                pat: self.rdmsr(0x277),
            }
        }
        unsafe fn enter(&self, regs: &mut GuestRegs, launched: bool) -> EnterStatus {
            let (ds, es): (u16, u16);
            // SAFETY: reading segment selectors.
            unsafe {
                core::arch::asm!("mov {:x}, ds", out(reg) ds, options(nomem, nostack));
                core::arch::asm!("mov {:x}, es", out(reg) es, options(nomem, nostack));
            }
            // SAFETY: forwarded contract.
            let r = unsafe { vmx::switch::enter(regs, launched) };
            // SAFETY: reloading the selectors the host had (valid descriptors of its GDT); the
            // exit loaded the host-state values (0 for selectors with RPL/TI set).
            unsafe {
                core::arch::asm!("mov ds, {:x}", in(reg) ds, options(nomem, nostack));
                core::arch::asm!("mov es, {:x}", in(reg) es, options(nomem, nostack));
            }
            r
        }
        unsafe fn host_nmi(&self) {
            // SAFETY: the caller consumed an NMI by a VM exit; the host's NMI handler takes it.
            unsafe { core::arch::asm!("int 2", options(nomem, nostack)) };
        }
        fn irq_disable(&self) -> bool {
            RealSvm.irq_disable()
        }
        unsafe fn irq_enable(&self) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.irq_enable() }
        }
        fn xgetbv0(&self) -> u64 {
            RealSvm.xgetbv0()
        }
        unsafe fn xsetbv0(&self, value: u64) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.xsetbv0(value) }
        }
        unsafe fn xsave(&self, area: *mut u8, mask: u64) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.xsave(area, mask) }
        }
        unsafe fn xrstor(&self, area: *const u8, mask: u64) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.xrstor(area, mask) }
        }
        unsafe fn fxsave(&self, area: *mut u8) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.fxsave(area) }
        }
        unsafe fn fxrstor(&self, area: *const u8) {
            // SAFETY: forwarded contract.
            unsafe { RealSvm.fxrstor(area) }
        }
        fn rdtsc(&self) -> u64 {
            RealSvm.rdtsc()
        }
    }
}
