# The relocations of -mcmodel=large -fPIC code, where nothing is assumed to be within 2 GiB:
# R_X86_64_GOTPC64 (GOT + A - P), R_X86_64_GOTPC32 (GOT + A - P, 32 bits), R_X86_64_GOT64
# (G - GOT + A), R_X86_64_GOTOFF64 (S + A - GOT), R_X86_64_PLTOFF64 (L - GOT + A) and
# R_X86_64_GOTPCREL64 (G + A - P). GOT is _GLOBAL_OFFSET_TABLE_, the unit's GOT.
# kiln-check: args=-abs far=0x123456789000 -abs far_func=0x123456780000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# The large-model prologue: %rbx = the GOT, from a 64-bit offset to it (GOTPC64).
# jitlink-check: decode_operand(got_base + 7, 1) = _GLOBAL_OFFSET_TABLE_ - got_base
	.globl	got_base
got_base:
	leaq	got_base(%rip), %rbx
	movabsq	$_GLOBAL_OFFSET_TABLE_-got_base, %r11
	addq	%r11, %rbx
	.size	got_base, .-got_base

# GOTPC32: leaq _GLOBAL_OFFSET_TABLE_(%rip) (small-model PIC code, same idea in 32 bits).
# jitlink-check: decode_operand(got_base32, 4) = _GLOBAL_OFFSET_TABLE_ - next_pc(got_base32)
	.globl	got_base32
got_base32:
	leaq	_GLOBAL_OFFSET_TABLE_(%rip), %rbx
	.size	got_base32, .-got_base32

# GOT64: the offset of the symbol's GOT entry from the GOT.
# jitlink-check: decode_operand(got_offset, 1) = got_addr(large-model.o, data) - _GLOBAL_OFFSET_TABLE_
# jitlink-check: *{8}got_addr(large-model.o, data) = data
	.globl	got_offset
got_offset:
	movabsq	$data@GOT, %rax
	.size	got_offset, .-got_offset

# A far symbol's GOT entry.
# jitlink-check: decode_operand(got_offset_far, 1) = got_addr(large-model.o, far) - _GLOBAL_OFFSET_TABLE_
# jitlink-check: *{8}got_addr(large-model.o, far) = far
	.globl	got_offset_far
got_offset_far:
	movabsq	$far@GOT, %rax
	.size	got_offset_far, .-got_offset_far

# GOTOFF64: the symbol's own offset from the GOT (negative when it lies below), and with an
# addend.
# jitlink-check: decode_operand(gotoff, 1) = data - _GLOBAL_OFFSET_TABLE_
# jitlink-check: decode_operand(gotoff_addend, 1) = data + 0x10 - _GLOBAL_OFFSET_TABLE_
	.globl	gotoff
gotoff:
	movabsq	$data@GOTOFF, %rax
	.size	gotoff, .-gotoff
	.globl	gotoff_addend
gotoff_addend:
	movabsq	$data@GOTOFF+0x10, %rax
	.size	gotoff_addend, .-gotoff_addend

# PLTOFF64: the function's offset from the GOT: a 64-bit offset reaches anything, so no stub.
# jitlink-check: decode_operand(pltoff, 1) = func - _GLOBAL_OFFSET_TABLE_
# jitlink-check: decode_operand(pltoff_far, 1) = far_func - _GLOBAL_OFFSET_TABLE_
	.globl	pltoff
pltoff:
	movabsq	$func@PLTOFF, %rax
	.size	pltoff, .-pltoff
	.globl	pltoff_far
pltoff_far:
	movabsq	$far_func@PLTOFF, %rax
	.size	pltoff_far, .-pltoff_far

	.globl	func
	.type	func, @function
func:
	retq
	.size	func, .-func

	.data
	.p2align 3
	.globl	data
data:
	.quad	0, 0, 0
	.size	data, 24

# In data: GOTPCREL64 (G + A - P; llvm-mc has no operator for it, hence .reloc), and 64-bit
# GOTOFF64 and GOT64.
# jitlink-check: *{8}words = got_addr(large-model.o, data) - words
# jitlink-check: *{8}(words + 8) = data + 8 - _GLOBAL_OFFSET_TABLE_
# jitlink-check: *{8}(words + 16) = got_addr(large-model.o, data) - _GLOBAL_OFFSET_TABLE_
	.globl	words
words:
	.reloc	., R_X86_64_GOTPCREL64, data
	.quad	0
	.quad	data@GOTOFF + 8
	.quad	data@GOT
	.size	words, .-words
