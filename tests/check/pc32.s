# R_X86_64_PC32: S + A - P, signed 32 bits: RIP-relative operands and `.long sym - .`.
# kiln-check: args=-abs near=0x7ff80000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# leaq sym(%rip): the displacement (operand 4) is the distance from the next instruction.
# jitlink-check: decode_operand(lea_data, 4) = data - next_pc(lea_data)
	.globl	lea_data
lea_data:
	leaq	data(%rip), %rax
	.size	lea_data, .-lea_data

# An addend: sym+8.
# jitlink-check: decode_operand(load_data8, 4) = data + 8 - next_pc(load_data8)
	.globl	load_data8
load_data8:
	movl	data+8(%rip), %eax
	.size	load_data8, .-load_data8

# A store (memory operand first): the displacement is operand 3. The immediate that follows
# the displacement (`movl $imm, sym(%rip)`) makes the addend -8 rather than -4.
# jitlink-check: decode_operand(store_data, 3) = data - next_pc(store_data)
# jitlink-check: decode_operand(store_data, 5) = 0x1234
	.globl	store_data
store_data:
	movl	$0x1234, data(%rip)
	.size	store_data, .-store_data

# Backwards, to code before it (a negative displacement).
# jitlink-check: decode_operand(lea_main, 4) = main - next_pc(lea_main)
# jitlink-check: decode_operand(lea_main, 4)[63:31] = 0x1ffffffff
	.globl	lea_main
lea_main:
	leaq	main(%rip), %rcx
	.size	lea_main, .-lea_main

# An absolute symbol within 2 GiB of the slab.
# jitlink-check: decode_operand(lea_near, 4) = near - next_pc(lea_near)
	.globl	lea_near
lea_near:
	leaq	near(%rip), %rdx
	.size	lea_near, .-lea_near

	.data
	.p2align 3
	.globl	data
data:
	.quad	0, 0
	.size	data, 16

# In data: 32-bit offsets to code, the second with an addend.
# jitlink-check: *{4}offsets = (main - offsets)[31:0]
# jitlink-check: *{4}(offsets + 4) = (lea_data + 0x10 - (offsets + 4))[31:0]
	.globl	offsets
offsets:
	.long	main - .
	.long	lea_data + 0x10 - .
	.size	offsets, .-offsets
