/* A foreign undefined symbol, a thunk the kernel does not have (only r11 exists), an export okvm.h does not
 * declare, a host service defined by the core, and okvm_attach (declared) missing. */
	.text
	.globl	okvm_secret
	.type	okvm_secret,@function
okvm_secret:
	endbr64
	call	printf
	call	__x86_indirect_thunk_rax
	ret
	.size	okvm_secret, .-okvm_secret

	.globl	okvm_host_panic
	.type	okvm_host_panic,@function
okvm_host_panic:
	endbr64
	ret
	.size	okvm_host_panic, .-okvm_host_panic
