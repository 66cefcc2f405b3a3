# R_X86_64_16 and R_X86_64_8: S + A in 16 or 8 bits, as a signed or an unsigned value.
# kiln-check: args=-abs v16=0x1234 -abs max16=0xffff -abs v8=0x5a -abs max8=0xff

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# movw $sym, %ax: the 16-bit immediate (operand 1), not sign-extended.
# jitlink-check: decode_operand(imm16, 1) = v16
	.globl	imm16
imm16:
	movw	$v16, %ax
	.size	imm16, .-imm16

# jitlink-check: decode_operand(imm16_max, 1) = 0xffff
	.globl	imm16_max
imm16_max:
	movw	$max16, %cx
	.size	imm16_max, .-imm16_max

# movb $sym, %al: an 8-bit immediate of a byte operation, which llvm-jitlink sign-extends.
# jitlink-check: decode_operand(imm8, 1) = v8 + 1
# jitlink-check: decode_operand(imm8_max, 1) = 0xffffffffffffffff
# jitlink-check: *{1}(imm8_max + 1) = max8
	.globl	imm8
imm8:
	movb	$v8+1, %al
	.size	imm8, .-imm8
	.globl	imm8_max
imm8_max:
	movb	$max8, %al
	.size	imm8_max, .-imm8_max

	.data
# In data, with addends; a negative addend that stays in range.
# jitlink-check: *{2}halves = 0x1234
# jitlink-check: *{2}(halves + 2) = 0xfffe
# jitlink-check: *{2}(halves + 4) = v16 - 0x34
# jitlink-check: *{1}(halves + 6) = 0x5a
# jitlink-check: *{1}(halves + 7) = 0xfe
# jitlink-check: *{1}(halves + 8) = 0
# The byte after the last fixup is untouched.
# jitlink-check: *{1}(halves + 9) = 0xaa
	.globl	halves
halves:
	.word	v16
	.word	max16-1
	.word	v16-0x34
	.byte	v8
	.byte	max8-1
	.byte	v8-0x5a
	.byte	0xaa
	.size	halves, .-halves
