/*
 * Guest code snippets for kvmsuite. Each snippet is position independent and is copied by the
 * suite to guest-physical GUEST_CODE (0x1000); inputs come in registers set with KVM_SET_REGS.
 * Ports: 0x10 counted out, 0x11 in, 0x12 result out (4 bytes), 0x13 value out (4 bytes).
 */
	.section .rodata.guest, "a"

#define SNIPPET(name) .globl name##_start, name##_end; name##_start:
#define END(name) name##_end:

/* Real mode: ecx times `out 0x10, al`, then `in al, 0x11`, `out 0x12, eax`, hlt. */
	.code16
SNIPPET(g_pio_real)
1:	outb	%al, $0x10
	decl	%ecx
	jnz	1b
	xorl	%eax, %eax
	inb	$0x11, %al
	outl	%eax, $0x12
	hlt
END(g_pio_real)

	.code64
/* Long mode: the same loop. */
SNIPPET(g_pio_long)
1:	outb	%al, $0x10
	decl	%ecx
	jnz	1b
	xorl	%eax, %eax
	inb	$0x11, %al
	outl	%eax, $0x12
	hlt
END(g_pio_long)

/* ecx times `mov %eax, (%rdi)` (MMIO write), then one MMIO read `mov (%rdi), %eax` echoed to 0x12. */
SNIPPET(g_mmio)
1:	movl	%eax, (%rdi)
	decl	%ecx
	jnz	1b
	movl	(%rdi), %eax
	outl	%eax, $0x12
	hlt
END(g_mmio)

/* r8 times cpuid(leaf esi), then cpuid(0): ebx, edx, ecx, eax out to 0x13, hlt. */
SNIPPET(g_cpuid)
1:	movl	%esi, %eax
	xorl	%ecx, %ecx
	cpuid
	decq	%r8
	jnz	1b
	xorl	%eax, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%eax, %r9d
	movl	%ebx, %eax
	outl	%eax, $0x13
	movl	%edx, %eax
	outl	%eax, $0x13
	movl	%ecx, %eax
	outl	%eax, $0x13
	movl	%r9d, %eax
	outl	%eax, $0x13
	hlt
END(g_cpuid)

/* hlt, then out 0x10 (proves rip moved past the hlt), hlt. */
SNIPPET(g_hlt)
	hlt
	outb	%al, $0x10
	hlt
END(g_hlt)

/*
 * MSRs: wrmsr(KERNEL_GS_BASE, rdx:rax as given in r9), rdmsr it back and out both halves to 0x13;
 * rdmsr(SYSENTER_EIP) (set by the host) out both halves to 0x13; then rdmsr(ecx = r10), which
 * the host makes a nonexistent MSR: #GP without an IDT, i.e. a triple fault (KVM_EXIT_SHUTDOWN).
 */
SNIPPET(g_msr)
	movl	$0xc0000102, %ecx
	movq	%r9, %rax
	movq	%r9, %rdx
	shrq	$32, %rdx
	wrmsr
	xorl	%eax, %eax
	xorl	%edx, %edx
	rdmsr
	outl	%eax, $0x13
	movl	%edx, %eax
	outl	%eax, $0x13
	movl	$0x176, %ecx
	rdmsr
	outl	%eax, $0x13
	movl	%edx, %eax
	outl	%eax, $0x13
	movl	%r10d, %ecx
	rdmsr
	hlt
END(g_msr)

/* Write one byte to rdi + k * 8192 for k < ecx (every other page), out 0x10, hlt. */
SNIPPET(g_dirty)
1:	movb	%cl, (%rdi)
	addq	$8192, %rdi
	decl	%ecx
	jnz	1b
	outb	%al, $0x10
	hlt
END(g_dirty)

/* Read the qword at rdi, out low then high half to 0x13, hlt. */
SNIPPET(g_read)
	movq	(%rdi), %rax
	movq	%rax, %rdx
	outl	%eax, $0x13
	movq	%rdx, %rax
	shrq	$32, %rax
	outl	%eax, $0x13
	hlt
END(g_read)

/* out 0x13 once, then spin forever (for kicks). */
SNIPPET(g_spin)
	outb	%al, $0x13
1:	jmp	1b
END(g_spin)

	.section .note.GNU-stack, "", @progbits
