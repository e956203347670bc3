/* A clean object: landing pads where needed, calls only to allowed symbols, small frames. */
	.text
	.globl	okvm_attach
	.type	okvm_attach,@function
okvm_attach:
	endbr64
	subq	$56, %rsp
	call	helper
	leaq	(%rsp), %rdi
	xorl	%esi, %esi
	movl	$8, %edx
	call	memset
	movq	table(%rip), %r11
	call	__x86_indirect_thunk_r11
	addq	$56, %rsp
	ret
	.size	okvm_attach, .-okvm_attach

	/* Local and only called directly: needs no landing pad. */
	.type	helper,@function
helper:
	movl	$1, %eax
	lfence
	pause
	ret
	.size	helper, .-helper

	/* Local but its address is stored: has its landing pad. */
	.type	callback,@function
callback:
	endbr64
	jmp	okvm_host_panic
	.size	callback, .-callback

	.section .rodata
table:	.quad	callback

	.section .stack_sizes,"",@progbits
	.quad	okvm_attach
	.uleb128 64
	.quad	helper
	.uleb128 8
