# R_X86_64_32 (S + A, zero-extended: 0 to 4 GiB - 1) and R_X86_64_32S (S + A, sign-extended:
# -2 GiB to 2 GiB - 1), as -fno-pie code uses them. The slab lies below 2 GiB.
# kiln-check: args=-abs high=0xfffff000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# movl $sym, %eax (R_X86_64_32): operand 1 is the immediate.
# jitlink-check: decode_operand(imm32, 1) = data
	.globl	imm32
imm32:
	movl	$data, %eax
	.size	imm32, .-imm32

# Between 2 and 4 GiB: fits R_X86_64_32 (not 32S).
# jitlink-check: decode_operand(imm32_high, 1) = high + 0xf00
	.globl	imm32_high
imm32_high:
	movl	$high+0xf00, %ecx
	.size	imm32_high, .-imm32_high

# movq $sym, %rax (R_X86_64_32S): the immediate, sign-extended by the CPU.
# jitlink-check: decode_operand(imm32s, 1) = data + 8
	.globl	imm32s
imm32s:
	movq	$data+8, %rax
	.size	imm32s, .-imm32s

# A negative value (an address in the top 2 GiB, here by a negative addend) fits 32S.
# jitlink-check: decode_operand(imm32s_neg, 1) = data - 0x7ff00000 - 0x10000000
	.globl	imm32s_neg
imm32s_neg:
	movq	$data-0x8ff00000, %rax
	.size	imm32s_neg, .-imm32s_neg

# An absolute address in a memory operand (R_X86_64_32S): the displacement is operand 4.
# jitlink-check: decode_operand(table_load, 4) = table
# jitlink-check: decode_operand(table_load, 2) = 8
	.globl	table_load
table_load:
	movq	table(,%rdi,8), %rax
	.size	table_load, .-table_load

	.data
	.p2align 3
	.globl	data
data:
	.quad	0
	.size	data, 8

	.globl	table
table:
	.quad	1, 2, 3
	.size	table, .-table

# In data: .long is R_X86_64_32; .long with a negative addend too.
# jitlink-check: *{4}words = data
# jitlink-check: *{4}(words + 4) = data - 4
# jitlink-check: *{4}(words + 8) = main
# jitlink-check: *{4}(words + 12) = 0xfffff000
	.globl	words
words:
	.long	data
	.long	data-4
	.long	main
	.long	high
	.size	words, .-words
