# R_X86_64_32S to an absolute symbol in the top 2 GiB of the address space: S + A =
# 0xffffffffffff8000 truncates to 0xffff8000, which sign-extends back to it, so it fits
# (psABI: "the value, truncated to 32 bits, must sign-extend to the original 64-bit value").
# kiln-check: args=-abs neg=0xffffffffffff8000 -abs neg16=0xffffffffffffff80

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# jitlink-check: decode_operand(imm32s_neg, 1) = neg
# jitlink-check: *{4}(imm32s_neg + 3) = 0xffff8000
	.globl	imm32s_neg
imm32s_neg:
	movq	$neg, %rax
	.size	imm32s_neg, .-imm32s_neg

# R_X86_64_16 and R_X86_64_8 of a small negative value.
# jitlink-check: *{2}halves = 0xff80
# jitlink-check: *{1}(halves + 2) = 0x80
	.data
	.globl	halves
halves:
	.word	neg16
	.byte	neg16
	.size	halves, .-halves
