/* Functions reachable indirectly without endbr64, and one that is fine without it. */
	.text
	.globl	okvm_attach
	.type	okvm_attach,@function
okvm_attach:
	endbr64
	call	direct_only
	leaq	lea_taken(%rip), %rax
	ret
	.size	okvm_attach, .-okvm_attach

	.globl	global_no_pad
	.type	global_no_pad,@function
global_no_pad:
	ret
	.size	global_no_pad, .-global_no_pad

	.type	direct_only,@function
direct_only:
	ret
	.size	direct_only, .-direct_only

	.type	lea_taken,@function
lea_taken:
	ret
	.size	lea_taken, .-lea_taken

	.type	table_taken,@function
table_taken:
	ret
	.size	table_taken, .-table_taken

	.section .data.rel.ro,"aw"
	.quad	table_taken
