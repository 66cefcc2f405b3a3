# R_X86_64_SIZE32 is Z + A in an unsigned 32-bit field: a negative value does not fit and is an
# error (not silently written as a large unsigned number).
# kiln-check: expect-error=Size32) fixup to table
# kiln-check: expect-error=does not fit in uint32

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

	.data
	.p2align 3
	.globl	table
table:
	.quad	1, 2, 3
	.size	table, 24

	.globl	sizes
sizes:
	.long	table@SIZE - 100
	.size	sizes, .-sizes
