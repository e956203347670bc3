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

/*
 * ioeventfd: eight guest writes, each followed by the sync `out 0x10` (so the host sees, per
 * write, either its own exit or none before the sync), then again from the start. rdi = MMIO
 * base A (B = A + 0x100, C = A + 0x200), dx = port P, eax = value V1, ebx = value V2.
 */
SNIPPET(g_ioev)
1:	movl	%eax, (%rdi)		/* 0: A, 4 bytes, V1 */
	outb	%al, $0x10
	movl	%ebx, (%rdi)		/* 1: A, 4 bytes, V2 */
	outb	%al, $0x10
	movl	%ebx, 0x100(%rdi)	/* 2: B, 4 bytes, V2 */
	outb	%al, $0x10
	movb	%al, 0x200(%rdi)	/* 3: C, 1 byte */
	outb	%al, $0x10
	movq	%rax, 0x200(%rdi)	/* 4: C, 8 bytes */
	outb	%al, $0x10
	outw	%ax, %dx		/* 5: P, 2 bytes, V1 */
	outb	%al, $0x10
	xchgl	%eax, %ebx		/* 6: P, 2 bytes, V2 */
	outw	%ax, %dx
	xchgl	%eax, %ebx
	outb	%al, $0x10
	outl	%eax, $0x50		/* 7: port 0x50, 4 bytes, V1 */
	outb	%al, $0x10
	jmp	1b
END(g_ioev)

/*
 * irqfd: rdi = xAPIC base. Software-enable the local APIC (spurious vector 0xff), TPR 0; then
 * loop: `out 0x13` (about to halt), `sti; hlt`, `cli`, report the handler count (dword at
 * 0x9000) with `out 0x12`. The handler (g_irq_handler, the only IDT entry the host fills in)
 * counts, saves ISR bits 64..95 (APIC offset 0x120) at 0x9004 and the SVR at 0x9008, sends
 * EOI, returns.
 */
SNIPPET(g_irq)
	movl	$0x1ff, 0xf0(%rdi)
	movl	$0, 0x80(%rdi)
1:	outb	%al, $0x13
	sti
	hlt
	cli
	movl	0x9000, %eax
	outl	%eax, $0x12
	jmp	1b
	.globl	g_irq_handler
g_irq_handler:
	pushq	%rax
	incl	0x9000
	movl	0x120(%rdi), %eax
	movl	%eax, 0x9004
	movl	0xf0(%rdi), %eax
	movl	%eax, 0x9008
	movl	$0, 0xb0(%rdi)
	popq	%rax
	iretq
END(g_irq)

	.section .note.GNU-stack, "", @progbits
