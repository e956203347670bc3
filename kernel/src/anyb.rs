//! The backend the kernel object runs: chosen at attach from CPUID (static dispatch over an
//! enum, DESIGN §1): SVM on AMD, VMX on Intel (each refuses VM creation, naming the missing
//! feature, on CPUs it cannot run guests on); the soft backend (state ioctls only, `KVM_RUN`
//! reports a failed entry) where neither can be set up.
//!
//! A vCPU or VM of one variant is only ever handed to the same variant (the system has one
//! backend for its whole life); a mismatch cannot happen and would answer as a failed call.

use crate::vmxb::{VmxBackend, VmxHw};
use kvm_abi::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use svm::hw::SvmHw;

use crate::backend::{Backend, CpuidResult, EntryGate, Exit, GuestException, IoCompletion};
use crate::errno::{KResult, EINVAL};
use crate::host::Host;
use crate::soft::SoftBackend;
use crate::svmb::SvmBackend;

/// The kernel object's backend (one static value: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend<H: Host, W: SvmHw + Sync + 'static, V: VmxHw + Sync + 'static> {
    /// No hardware backend: state only.
    Soft(SoftBackend<H>),
    /// AMD SVM.
    Svm(SvmBackend<H, W>),
    /// Intel VMX.
    Vmx(VmxBackend<H, V>),
}

/// Per-VM state of [`AnyBackend`].
pub enum AnyVm<H: Host> {
    /// Soft.
    Soft(()),
    /// SVM.
    Svm(crate::svmb::SvmVm<H>),
    /// VMX.
    Vmx(crate::vmxb::VmxVm<H>),
}

/// Per-vCPU state of [`AnyBackend`].
pub enum AnyVcpu<H: Host> {
    /// Soft.
    Soft(<SoftBackend<H> as Backend>::Vcpu),
    /// SVM.
    Svm(crate::svmb::SvmVcpu<H>),
    /// VMX.
    Vmx(crate::vmxb::VmxVcpu<H>),
}

impl<H: Host, W: SvmHw + Sync + 'static, V: VmxHw + Sync + 'static> Backend
    for AnyBackend<H, W, V>
{
    type Vm = AnyVm<H>;
    type Vcpu = AnyVcpu<H>;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Soft(b) => b.name(),
            AnyBackend::Svm(b) => b.name(),
            AnyBackend::Vmx(b) => b.name(),
        }
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        match self {
            AnyBackend::Soft(b) => b.host_cpuid(leaf, subleaf),
            AnyBackend::Svm(b) => b.host_cpuid(leaf, subleaf),
            AnyBackend::Vmx(b) => b.host_cpuid(leaf, subleaf),
        }
    }
    fn vm_create(&self) -> KResult<Self::Vm> {
        match self {
            AnyBackend::Soft(b) => b.vm_create().map(AnyVm::Soft),
            AnyBackend::Svm(b) => b.vm_create().map(AnyVm::Svm),
            AnyBackend::Vmx(b) => b.vm_create().map(AnyVm::Vmx),
        }
    }
    fn vcpu_create(&self, vm: &Self::Vm, id: u32) -> KResult<Self::Vcpu> {
        match (self, vm) {
            (AnyBackend::Soft(b), AnyVm::Soft(vm)) => b.vcpu_create(vm, id).map(AnyVcpu::Soft),
            (AnyBackend::Svm(b), AnyVm::Svm(vm)) => b.vcpu_create(vm, id).map(AnyVcpu::Svm),
            (AnyBackend::Vmx(b), AnyVm::Vmx(vm)) => b.vcpu_create(vm, id).map(AnyVcpu::Vmx),
            _ => Err(EINVAL),
        }
    }
    fn get_regs(&self, v: &mut Self::Vcpu, out: &mut kvm_regs) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_regs(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_regs(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_regs(v, out),
            _ => (),
        }
    }
    fn set_regs(&self, v: &mut Self::Vcpu, regs: &kvm_regs) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_regs(v, regs),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_regs(v, regs),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_regs(v, regs),
            _ => (),
        }
    }
    fn get_sregs(&self, v: &mut Self::Vcpu, out: &mut kvm_sregs) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_sregs(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_sregs(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_sregs(v, out),
            _ => (),
        }
    }
    fn set_sregs(&self, v: &mut Self::Vcpu, sregs: &kvm_sregs) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_sregs(v, sregs),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_sregs(v, sregs),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_sregs(v, sregs),
            _ => Err(EINVAL),
        }
    }
    fn get_fpu(&self, v: &mut Self::Vcpu, out: &mut kvm_fpu) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_fpu(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_fpu(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_fpu(v, out),
            _ => (),
        }
    }
    fn set_fpu(&self, v: &mut Self::Vcpu, fpu: &kvm_fpu) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_fpu(v, fpu),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_fpu(v, fpu),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_fpu(v, fpu),
            _ => (),
        }
    }
    fn get_xsave(&self, v: &mut Self::Vcpu, out: &mut kvm_xsave) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_xsave(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_xsave(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_xsave(v, out),
            _ => (),
        }
    }
    fn set_xsave(&self, v: &mut Self::Vcpu, xsave: &kvm_xsave) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_xsave(v, xsave),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_xsave(v, xsave),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_xsave(v, xsave),
            _ => Err(EINVAL),
        }
    }
    fn get_xcrs(&self, v: &mut Self::Vcpu, out: &mut kvm_xcrs) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_xcrs(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_xcrs(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_xcrs(v, out),
            _ => (),
        }
    }
    fn set_xcrs(&self, v: &mut Self::Vcpu, xcrs: &kvm_xcrs) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_xcrs(v, xcrs),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_xcrs(v, xcrs),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_xcrs(v, xcrs),
            _ => Err(EINVAL),
        }
    }
    fn get_msr(&self, v: &mut Self::Vcpu, index: u32, host: bool) -> KResult<u64> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_msr(v, index, host),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_msr(v, index, host),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_msr(v, index, host),
            _ => Err(EINVAL),
        }
    }
    fn set_msr(&self, v: &mut Self::Vcpu, index: u32, data: u64, host: bool) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_msr(v, index, data, host),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_msr(v, index, data, host),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_msr(v, index, data, host),
            _ => Err(EINVAL),
        }
    }
    fn get_events(&self, v: &mut Self::Vcpu, out: &mut kvm_vcpu_events) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_events(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_events(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_events(v, out),
            _ => (),
        }
    }
    fn set_events(&self, v: &mut Self::Vcpu, ev: &kvm_vcpu_events) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_events(v, ev),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_events(v, ev),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_events(v, ev),
            _ => Err(EINVAL),
        }
    }
    fn get_debugregs(&self, v: &mut Self::Vcpu, out: &mut kvm_debugregs) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_debugregs(v, out),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_debugregs(v, out),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_debugregs(v, out),
            _ => (),
        }
    }
    fn set_debugregs(&self, v: &mut Self::Vcpu, dr: &kvm_debugregs) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_debugregs(v, dr),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_debugregs(v, dr),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_debugregs(v, dr),
            _ => Err(EINVAL),
        }
    }
    fn cpuid_changed(&self, v: &mut Self::Vcpu, entries: &[kvm_cpuid_entry2]) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.cpuid_changed(v, entries),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.cpuid_changed(v, entries),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.cpuid_changed(v, entries),
            _ => (),
        }
    }
    fn queue_interrupt(&self, v: &mut Self::Vcpu, vector: u8) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.queue_interrupt(v, vector),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.queue_interrupt(v, vector),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.queue_interrupt(v, vector),
            _ => (),
        }
    }
    fn interrupt_queued(&self, v: &mut Self::Vcpu) -> bool {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.interrupt_queued(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.interrupt_queued(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.interrupt_queued(v),
            _ => false,
        }
    }
    fn queue_nmi(&self, v: &mut Self::Vcpu) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.queue_nmi(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.queue_nmi(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.queue_nmi(v),
            _ => (),
        }
    }
    fn interrupt_allowed(&self, v: &mut Self::Vcpu) -> bool {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.interrupt_allowed(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.interrupt_allowed(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.interrupt_allowed(v),
            _ => false,
        }
    }
    fn if_flag(&self, v: &mut Self::Vcpu) -> bool {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.if_flag(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.if_flag(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.if_flag(v),
            _ => false,
        }
    }
    fn set_irq_window(&self, v: &mut Self::Vcpu, on: bool) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_irq_window(v, on),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_irq_window(v, on),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_irq_window(v, on),
            _ => (),
        }
    }
    fn get_cr8(&self, v: &mut Self::Vcpu) -> u64 {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_cr8(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_cr8(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_cr8(v),
            _ => 0,
        }
    }
    fn set_cr8(&self, v: &mut Self::Vcpu, cr8: u64) -> KResult<()> {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.set_cr8(v, cr8),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.set_cr8(v, cr8),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.set_cr8(v, cr8),
            _ => Err(EINVAL),
        }
    }
    fn get_apic_base(&self, v: &mut Self::Vcpu) -> u64 {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.get_apic_base(v),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.get_apic_base(v),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.get_apic_base(v),
            _ => 0,
        }
    }
    fn complete_io(&self, v: &mut Self::Vcpu, c: IoCompletion) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.complete_io(v, c),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.complete_io(v, c),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.complete_io(v, c),
            _ => (),
        }
    }
    fn complete_cpuid(&self, v: &mut Self::Vcpu, r: CpuidResult) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.complete_cpuid(v, r),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.complete_cpuid(v, r),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.complete_cpuid(v, r),
            _ => (),
        }
    }
    fn complete_rdmsr(&self, v: &mut Self::Vcpu, value: Option<u64>) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.complete_rdmsr(v, value),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.complete_rdmsr(v, value),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.complete_rdmsr(v, value),
            _ => (),
        }
    }
    fn complete_wrmsr(&self, v: &mut Self::Vcpu, ok: bool) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.complete_wrmsr(v, ok),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.complete_wrmsr(v, ok),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.complete_wrmsr(v, ok),
            _ => (),
        }
    }
    fn queue_exception(&self, v: &mut Self::Vcpu, e: GuestException) {
        match (self, v) {
            (AnyBackend::Soft(b), AnyVcpu::Soft(v)) => b.queue_exception(v, e),
            (AnyBackend::Svm(b), AnyVcpu::Svm(v)) => b.queue_exception(v, e),
            (AnyBackend::Vmx(b), AnyVcpu::Vmx(v)) => b.queue_exception(v, e),
            _ => (),
        }
    }
    fn run<G: EntryGate>(&self, vm: &Self::Vm, v: &mut Self::Vcpu, gate: &G) -> Exit {
        match (self, vm, v) {
            (AnyBackend::Soft(b), AnyVm::Soft(vm), AnyVcpu::Soft(v)) => b.run(vm, v, gate),
            (AnyBackend::Svm(b), AnyVm::Svm(vm), AnyVcpu::Svm(v)) => b.run(vm, v, gate),
            (AnyBackend::Vmx(b), AnyVm::Vmx(vm), AnyVcpu::Vmx(v)) => b.run(vm, v, gate),
            _ => Exit::FailEntry { reason: 0 },
        }
    }
    fn map_gfn(&self, vm: &Self::Vm, gfn: u64, hpa: u64, writable: bool) -> KResult<()> {
        match (self, vm) {
            (AnyBackend::Soft(b), AnyVm::Soft(vm)) => b.map_gfn(vm, gfn, hpa, writable),
            (AnyBackend::Svm(b), AnyVm::Svm(vm)) => b.map_gfn(vm, gfn, hpa, writable),
            (AnyBackend::Vmx(b), AnyVm::Vmx(vm)) => b.map_gfn(vm, gfn, hpa, writable),
            _ => Err(EINVAL),
        }
    }
    fn unmap_gfns(&self, vm: &Self::Vm, gfn: u64, npages: u64) {
        match (self, vm) {
            (AnyBackend::Soft(b), AnyVm::Soft(vm)) => b.unmap_gfns(vm, gfn, npages),
            (AnyBackend::Svm(b), AnyVm::Svm(vm)) => b.unmap_gfns(vm, gfn, npages),
            (AnyBackend::Vmx(b), AnyVm::Vmx(vm)) => b.unmap_gfns(vm, gfn, npages),
            _ => {}
        }
    }
}
