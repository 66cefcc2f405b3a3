# R_X86_64_NONE: no fixup; the bytes stay as assembled.

	.text
	.globl	main
	.type	main, @function
main:
	.reloc	., R_X86_64_NONE, data
	xorl	%eax, %eax
	retq
	.size	main, .-main

# jitlink-check: *{2}main = 0xc031
# jitlink-check: *{8}data = 0x0123456789abcdef
	.data
	.globl	data
data:
	.reloc	., R_X86_64_NONE, main
	.quad	0x0123456789abcdef
