# R_X86_64_PC64: S + A - P, 64 bits: reaches anything, including a far absolute symbol.
# kiln-check: args=-abs far=0x123456789000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

	.data
	.p2align 3
	.globl	offsets
offsets:
# jitlink-check: *{8}offsets = main - offsets
	.quad	main - .
# jitlink-check: *{8}(offsets + 8) = far - (offsets + 8)
	.quad	far - .
# An addend, and a target after the fixup.
# jitlink-check: *{8}(offsets + 16) = target + 0x20 - (offsets + 16)
	.quad	target + 0x20 - .
	.size	offsets, .-offsets

	.section .rodata,"a",@progbits
	.globl	target
target:
	.quad	0
