# R_X86_64_SIZE32 and R_X86_64_SIZE64: Z + A, the size of the symbol (its st_size).

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# jitlink-check: decode_operand(size32, 1) = 24
	.globl	size32
size32:
	movl	$table@SIZE, %eax
	.size	size32, .-size32

# jitlink-check: decode_operand(size64, 1) = 24 + 0x100000000
	.globl	size64
size64:
	movabsq	$table@SIZE + 0x100000000, %rax
	.size	size64, .-size64

	.data
	.p2align 3
	.globl	table
table:
	.quad	1, 2, 3
	.size	table, 24

# In data, with addends; the size of a function.
# jitlink-check: *{4}sizes = 24
# jitlink-check: *{4}(sizes + 4) = 20
# jitlink-check: *{8}(sizes + 8) = 24
# jitlink-check: *{8}(sizes + 16) = 3
	.globl	sizes
sizes:
	.long	table@SIZE
	.long	table@SIZE - 4
	.quad	table@SIZE
	.quad	main@SIZE
	.size	sizes, .-sizes
