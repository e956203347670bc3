//! The world switch: VMLAUNCH/VMRESUME with the guest's general-purpose registers and CR2.
//!
//! `vmx_world_switch(regs: *mut GuestRegs /* rdi */, launched: u64 /* rsi */) -> u64 /* rax */`,
//! System V calling convention.
//!
//! Register contract:
//! - Entry: interrupts disabled by the caller; this CPU in VMX root operation with the vCPU's
//!   VMCS current; host-state fields written (`state::write_host_state`) with HOST_RIP =
//!   `vmx_host_rip`; `launched` non-zero selects VMRESUME (the VMCS was launched on this CPU
//!   since its last VMCLEAR), zero VMLAUNCH.
//! - Sequence: push RBP, RBX, R12–R15 and `regs`; VMWRITE HOST_RSP = RSP (it then points at the
//!   saved `regs`); load guest CR2 and the 15 GPRs from `regs` (RDI last); VMLAUNCH or VMRESUME.
//! - VMfail: execution falls through with CF (VMfailInvalid) or ZF (VMfailValid) set; the
//!   function returns 1 or 2 (a failed VMWRITE of HOST_RSP likewise). The caller reads the
//!   VM-instruction error field for 2.
//! - VM exit: the processor loads the host state and jumps to `vmx_host_rip` with RSP =
//!   HOST_RSP; the guest GPRs are still in the registers. They are stored to `regs` (RAX via the
//!   stack), guest CR2 as well, the caller-saved registers that held guest values are cleared,
//!   the callee-saved ones restored, and the function returns 0. RFLAGS is 0x2 (IF = 0) after
//!   the exit; DR7 = 0x400 and IA32_DEBUGCTL = 0 (host state); DR0–DR3 and DR6 still hold what
//!   the guest left there (the caller switches them).
//!
//! It contains no indirect branch, no SSE, and starts each global symbol with ENDBR64 (the
//! kernel object lint checks all three). It cannot run on the development host (no VMX); the
//! nested harness runs it.

use crate::state::GuestRegs;

core::arch::global_asm!(
    ".pushsection .text.vmx_world_switch,\"ax\",@progbits",
    ".globl vmx_world_switch",
    ".type vmx_world_switch,@function",
    ".p2align 4",
    "vmx_world_switch:",
    "endbr64",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",        // [rsp]: regs, found again through HOST_RSP after the exit
    "mov eax, 0x6c14", // HOST_RSP
    "vmwrite rax, rsp",
    "jc 3f",
    "jz 4f",
    "mov rax, [rdi + 0x80]",
    "mov cr2, rax",
    "test rsi, rsi", // MOVs below leave the flags alone
    "mov rax, [rdi + 0x00]",
    "mov rcx, [rdi + 0x08]",
    "mov rdx, [rdi + 0x10]",
    "mov rbx, [rdi + 0x18]",
    "mov rbp, [rdi + 0x28]",
    "mov rsi, [rdi + 0x30]",
    "mov r8,  [rdi + 0x40]",
    "mov r9,  [rdi + 0x48]",
    "mov r10, [rdi + 0x50]",
    "mov r11, [rdi + 0x58]",
    "mov r12, [rdi + 0x60]",
    "mov r13, [rdi + 0x68]",
    "mov r14, [rdi + 0x70]",
    "mov r15, [rdi + 0x78]",
    "mov rdi, [rdi + 0x38]",
    "jnz 1f",
    "vmlaunch",
    "jmp 2f",
    "1:",
    "vmresume",
    "2:",
    // VMfail: CF = VMfailInvalid, ZF = VMfailValid. Guest values are in the registers.
    "jc 3f",
    "4:",
    "mov eax, 2",
    "jmp 5f",
    "3:",
    "mov eax, 1",
    "5:",
    "xor ecx, ecx",
    "xor edx, edx",
    "xor esi, esi",
    "xor edi, edi",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size vmx_world_switch, . - vmx_world_switch",
    // HOST_RIP. Reached by VM exit only; RSP = HOST_RSP points at the saved `regs`.
    ".globl vmx_host_rip",
    ".type vmx_host_rip,@function",
    ".p2align 4",
    "vmx_host_rip:",
    "endbr64",
    "push rax",
    "mov rax, [rsp + 8]",
    "pop qword ptr [rax + 0x00]",
    "mov [rax + 0x08], rcx",
    "mov [rax + 0x10], rdx",
    "mov [rax + 0x18], rbx",
    "mov [rax + 0x28], rbp",
    "mov [rax + 0x30], rsi",
    "mov [rax + 0x38], rdi",
    "mov [rax + 0x40], r8",
    "mov [rax + 0x48], r9",
    "mov [rax + 0x50], r10",
    "mov [rax + 0x58], r11",
    "mov [rax + 0x60], r12",
    "mov [rax + 0x68], r13",
    "mov [rax + 0x70], r14",
    "mov [rax + 0x78], r15",
    "mov rcx, cr2",
    "mov [rax + 0x80], rcx",
    "xor eax, eax",
    "jmp 5b",
    ".size vmx_host_rip, . - vmx_host_rip",
    ".popsection",
);

unsafe extern "C" {
    /// See the module documentation for the contract.
    fn vmx_world_switch(regs: *mut GuestRegs, launched: u64) -> u64;
    /// The VM-exit entry point (HOST_RIP); never called.
    fn vmx_host_rip();
}

/// The value for the HOST_RIP field.
pub fn host_rip() -> u64 {
    vmx_host_rip as *const () as usize as u64
}

/// Outcome of one entry attempt, before the VM-instruction error is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterStatus {
    /// The guest ran and exited: the exit fields are valid.
    Exited,
    /// VMfailInvalid.
    FailInvalid,
    /// VMfailValid: read the VM-instruction error field.
    FailValid,
}

/// Runs the guest once.
///
/// # Safety
/// The entry conditions of the module documentation hold.
pub unsafe fn enter(regs: &mut GuestRegs, launched: bool) -> EnterStatus {
    // SAFETY: forwarded from the caller; `regs` is a valid exclusive reference.
    match unsafe { vmx_world_switch(regs, u64::from(launched)) } {
        0 => EnterStatus::Exited,
        1 => EnterStatus::FailInvalid,
        _ => EnterStatus::FailValid,
    }
}
