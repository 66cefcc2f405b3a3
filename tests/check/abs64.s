# R_X86_64_64: S + A, 64 bits, any value.
# kiln-check: args=-abs far=0x123456789abc -abs top=0xffffffffffffff00

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# movabs with a 64-bit immediate: operand 1 is the immediate.
# jitlink-check: decode_operand(load_abs, 1) = data
	.globl	load_abs
load_abs:
	movabsq	$data, %rax
	.size	load_abs, .-load_abs

# An addend, and a far absolute symbol.
# jitlink-check: decode_operand(load_far, 1) = far + 0x10
	.globl	load_far
load_far:
	movabsq	$far+0x10, %rax
	.size	load_far, .-load_far

	.data
	.globl	data
	.p2align 3
data:
	.quad	0x1122334455667788
	.size	data, 8

# Pointers in data, with addends (negative too) and to code.
# jitlink-check: *{8}ptrs = data
# jitlink-check: *{8}(ptrs + 8) = data + 4
# jitlink-check: *{8}(ptrs + 16) = data - 8
# jitlink-check: *{8}(ptrs + 24) = main
# jitlink-check: *{8}(ptrs + 32) = far
# Wraps around at 64 bits: top + 0x200.
# jitlink-check: *{8}(ptrs + 40) = 0x100
# The bytes around the fixups are left alone.
# jitlink-check: *{8}(ptrs + 48) = 0xaaaaaaaaaaaaaaaa
	.globl	ptrs
ptrs:
	.quad	data
	.quad	data+4
	.quad	data-8
	.quad	main
	.quad	far
	.quad	top+0x200
	.quad	0xaaaaaaaaaaaaaaaa
	.size	ptrs, .-ptrs
