/* A frame over the kernel's 2047-byte limit, recorded the way -Zemit-stack-sizes does. */
	.text
	.globl	okvm_attach
	.type	okvm_attach,@function
okvm_attach:
	endbr64
	subq	$4096, %rsp
	addq	$4096, %rsp
	ret
	.size	okvm_attach, .-okvm_attach

	.section .stack_sizes,"",@progbits
	.quad	okvm_attach
	.uleb128 4096
