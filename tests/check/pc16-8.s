# R_X86_64_PC16 and R_X86_64_PC8: S + A - P in 16 or 8 signed bits. The targets lie in other
# sections of the same segment (differences within one section are resolved by the
# assembler), a few bytes away.

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# jrcxz and loop take an 8-bit displacement: operand 0 is target - next_pc.
# jitlink-check: decode_operand(short_jumps, 0) = other_code - next_pc(short_jumps)
# jitlink-check: decode_operand(next_pc(short_jumps), 0) = other_code - next_pc(next_pc(short_jumps))
	.globl	short_jumps
short_jumps:
	jrcxz	other_code
	loop	other_code
	retq
	.size	short_jumps, .-short_jumps

	.section .text.other,"ax",@progbits
	.globl	other_code
other_code:
	retq

	.section .data.a,"aw",@progbits
	.globl	words
words:
# jitlink-check: *{2}words = (target - words)[15:0]
	.word	target - .
# jitlink-check: *{2}(words + 2) = (target + 6 - (words + 2))[15:0]
	.word	target + 6 - .
# jitlink-check: *{1}(words + 4) = (target - (words + 4))[7:0]
	.byte	target - .
# A negative 8-bit distance.
# jitlink-check: *{1}(words + 5) = (target - 0x40 - (words + 5))[7:0]
	.byte	target - 0x40 - .

	.section .data.b,"aw",@progbits
	.globl	target
target:
	.quad	0
