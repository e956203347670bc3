/* GOT use, a 32-bit zero-extended absolute relocation, TLS and a constructor. */
	.text
	.globl	okvm_attach
	.type	okvm_attach,@function
okvm_attach:
	endbr64
	movq	memcpy@GOTPCREL(%rip), %rax
	movl	$okvm_attach, %eax
	ret
	.size	okvm_attach, .-okvm_attach

	.section .tbss,"awT",@nobits
	.zero	8

	.section .init_array,"aw",@init_array
	.quad	okvm_attach
