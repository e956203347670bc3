/* Indirect branches that bypass the retpoline thunks. */
	.text
	.globl	okvm_attach
	.type	okvm_attach,@function
okvm_attach:
	endbr64
	call	*%rax
	call	*8(%rdi)
	jmp	*%r11
	.size	okvm_attach, .-okvm_attach
