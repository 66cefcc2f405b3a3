# The static TLS models: the unit's TLS block lives at a fixed offset below the thread
# pointer (%fs:0), in every thread. R_X86_64_TPOFF32/TPOFF64: S - TP + A; R_X86_64_GOTTPOFF
# (initial exec): G + A - P, G a GOT entry holding S - TP; TLS descriptors
# (R_X86_64_GOTPC32_TLSDESC, R_X86_64_TLSDESC_CALL) relaxed to local exec. The offset itself
# is the executor's choice (here the simulated one), so the checks relate the values to each
# other and to the block layout (.tdata, then .tbss) rather than to a number.

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# Local exec, %fs-relative loads: the displacement (operand 4) is x's offset from TP; the
# block lies below TP (variant II), so it is negative.
# jitlink-check: decode_operand(le_x, 4)[63:31] = 0x1ffffffff
# jitlink-check: decode_operand(le_y, 4) - decode_operand(le_x, 4) = 8
# jitlink-check: decode_operand(le_z, 4) - decode_operand(le_x, 4) = 16
	.globl	le_x
le_x:
	movq	%fs:x@tpoff, %rax
	.size	le_x, .-le_x
	.globl	le_y
le_y:
	movl	%fs:y@tpoff, %eax
	.size	le_y, .-le_y
	.globl	le_z
le_z:
	movq	%fs:z@tpoff, %rax
	.size	le_z, .-le_z

# Local exec as an immediate, with an addend.
# jitlink-check: decode_operand(le_imm_y, 1) = decode_operand(le_x, 4) + 8 + 4
	.globl	le_imm_y
le_imm_y:
	movq	$y@tpoff+4, %rax
	.size	le_imm_y, .-le_imm_y

# Initial exec: the GOT entry the load reaches holds the same offset.
# jitlink-check: *{8}(next_pc(ie_x) + decode_operand(ie_x, 4)) = decode_operand(le_x, 4)
# jitlink-check: *{8}(next_pc(ie_z) + decode_operand(ie_z, 4)) = decode_operand(le_z, 4)
	.globl	ie_x
ie_x:
	movq	x@gottpoff(%rip), %rax
	.size	ie_x, .-ie_x
	.globl	ie_z
ie_z:
	movq	z@gottpoff(%rip), %rcx
	.size	ie_z, .-ie_z

# A TLS descriptor sequence relaxed to local exec: `lea x@tlsdesc(%rip), %rax` becomes
# `mov $(x - TP), %rax` (48 c7 c0), `call *x@tlscall(%rax)` a two-byte nop (66 90).
# jitlink-check: (*{4}desc_y)[23:0] = 0xc0c748
# jitlink-check: decode_operand(desc_y, 1) = decode_operand(le_y, 4)
# jitlink-check: *{2}desc_y_call = 0x9066
	.globl	desc_y
desc_y:
	leaq	y@tlsdesc(%rip), %rax
desc_y_call:
	callq	*y@tlscall(%rax)
	.size	desc_y, .-desc_y

# TPOFF64 in data.
# jitlink-check: *{8}offsets = decode_operand(le_z, 4)
	.data
	.globl	offsets
offsets:
	.quad	z@tpoff
	.size	offsets, .-offsets

	.section .tdata,"awT",@progbits
	.p2align 3
	.globl	x
	.type	x, @object
x:
	.quad	1
	.size	x, 8
	.globl	y
	.type	y, @object
y:
	.long	2
	.size	y, 4

	.section .tbss,"awT",@nobits
	.p2align 3
	.globl	z
	.type	z, @object
z:
	.zero	8
	.size	z, 8
