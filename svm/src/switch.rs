//! The world switch: one VMRUN with host and guest hidden state swapped around it.
//!
//! `svm_world_switch(vmcb_pa: u64 /* rdi */, host_vmcb_pa: u64 /* rsi */,
//! gprs: *mut GuestGprs /* rdx */)`, System V calling convention.
//!
//! Register contract:
//! - Entry: interrupts disabled (IF = 0) by the caller, GIF = 1, EFER.SVME set, VM_HSAVE_PA
//!   pointing at this CPU's host save area, `host_vmcb_pa` a 4 KiB page of this CPU for the
//!   host's VMSAVE state, `vmcb_pa` the guest VMCB, `gprs` the guest registers VMRUN does not
//!   load (layout asserted in `state.rs`).
//! - Sequence: save callee-saved RBX, RBP, R12–R15 and `gprs`/`host_vmcb_pa` on the stack;
//!   CLGI (GIF = 0: interrupts, NMIs, SMIs, INITs held); STI, so that the host IF saved by
//!   VMRUN is 1 and physical interrupts during the guest cause INTR exits; VMSAVE host (FS, GS,
//!   TR, LDTR hidden state, KernelGSbase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*); load guest RBX,
//!   RCX, RDX, RSI, RDI, RBP, R8–R15; VMLOAD guest; VMRUN; VMSAVE guest; store the guest
//!   registers to `gprs`; VMLOAD host; CLI; STGI (held NMIs are taken here, with the host's
//!   GS/TR back); clear the caller-saved registers that held guest values; restore and return.
//! - Exit: IF = 0, GIF = 1; held maskable interrupts are taken when the caller re-enables
//!   interrupts. RAX, RCX, RDX, RSI, RDI, R8–R11 are zero; RSP, RIP, RFLAGS, RAX come back from
//!   the host save area (#VMEXIT). DR7 is 0x400 after #VMEXIT; DR0–DR3 hold guest values (the
//!   caller switches them).
//! - Between VMLOAD guest and VMLOAD host the CPU runs with the guest's GS base: nothing may
//!   touch per-CPU data there, which GIF = 0 guarantees for interrupt handlers.
//!
//! It contains no indirect branch, no SSE, and starts with ENDBR64 (the object lint checks all
//! three). It cannot be executed on the development host (no SVM); the nested harness runs it.

use crate::state::GuestGprs;

core::arch::global_asm!(
    ".pushsection .text.svm_world_switch,\"ax\",@progbits",
    ".globl svm_world_switch",
    ".type svm_world_switch,@function",
    ".p2align 4",
    "svm_world_switch:",
    "endbr64",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdx", // [rsp + 8]: gprs
    "push rsi", // [rsp]: host VMSAVE page
    "clgi",
    "sti",
    "mov rax, rsi",
    "vmsave rax",
    "mov rax, rdi",
    "mov rbx, [rdx + 0x00]",
    "mov rcx, [rdx + 0x08]",
    "mov rsi, [rdx + 0x18]",
    "mov rdi, [rdx + 0x20]",
    "mov rbp, [rdx + 0x28]",
    "mov r8,  [rdx + 0x30]",
    "mov r9,  [rdx + 0x38]",
    "mov r10, [rdx + 0x40]",
    "mov r11, [rdx + 0x48]",
    "mov r12, [rdx + 0x50]",
    "mov r13, [rdx + 0x58]",
    "mov r14, [rdx + 0x60]",
    "mov r15, [rdx + 0x68]",
    "mov rdx, [rdx + 0x10]",
    "vmload rax",
    "vmrun rax",
    // #VMEXIT: RAX = guest VMCB (host RAX), RSP = host RSP, other GPRs hold guest values.
    "vmsave rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 0x00], rbx",
    "mov [rax + 0x08], rcx",
    "mov [rax + 0x10], rdx",
    "mov [rax + 0x18], rsi",
    "mov [rax + 0x20], rdi",
    "mov [rax + 0x28], rbp",
    "mov [rax + 0x30], r8",
    "mov [rax + 0x38], r9",
    "mov [rax + 0x40], r10",
    "mov [rax + 0x48], r11",
    "mov [rax + 0x50], r12",
    "mov [rax + 0x58], r13",
    "mov [rax + 0x60], r14",
    "mov [rax + 0x68], r15",
    "pop rax",
    "vmload rax",
    "cli",
    "stgi",
    "add rsp, 8",
    "xor eax, eax",
    "xor ecx, ecx",
    "xor edx, edx",
    "xor esi, esi",
    "xor edi, edi",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size svm_world_switch, . - svm_world_switch",
    ".popsection",
);

unsafe extern "C" {
    /// See the module documentation for the contract.
    pub(crate) fn svm_world_switch(vmcb_pa: u64, host_vmcb_pa: u64, gprs: *mut GuestGprs);
}
