# The dynamic TLS models. R_X86_64_TLSGD and R_X86_64_TLSLD: GD(S) + A - P and LD + A - P, 32
# bits, where GD(S) is a GOT pair {module, offset of S} that __tls_get_addr reads and LD the
# unit's pair {module, 0}; R_X86_64_DTPOFF32 and R_X86_64_DTPOFF64: S - TLS + A, the offset
# of S in the unit's TLS block (.tdata, then .tbss).

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# General dynamic, the padded sequence compilers emit: the lea's displacement (operand 4)
# reaches the pair; the pair's second word is x's offset in the block.
# jitlink-check: *{8}(next_pc(gd_x) + decode_operand(gd_x, 4) + 8) = x - section_addr(tls-dynamic.o, .tdata)
# jitlink-check: *{8}(next_pc(gd_y) + decode_operand(gd_y, 4) + 8) = 8
# jitlink-check: *{8}(next_pc(gd_z) + decode_operand(gd_z, 4) + 8) = 16
# Each symbol has a pair of its own.
# jitlink-check: decode_operand(gd_y, 4) + next_pc(gd_y) - (decode_operand(gd_x, 4) + next_pc(gd_x)) = 16
# The first word is the unit's module id; kiln's carry the tag 0x4b4c in their top bits.
# jitlink-check: (*{8}(next_pc(gd_x) + decode_operand(gd_x, 4)))[63:48] = 0x4b4c
# The call goes straight to the runtime's __tls_get_addr (prefixed: 66 66 48 e8).
# jitlink-check: *{4}gd_x_call = 0xe8486666
# jitlink-check: decode_operand(gd_x_call, 0) = __tls_get_addr - next_pc(gd_x_call)
	.globl	gd_x
gd_x:
	.byte	0x66
	leaq	x@tlsgd(%rip), %rdi
gd_x_call:
	.value	0x6666
	rex64
	callq	__tls_get_addr@PLT
	.size	gd_x, .-gd_x

	.globl	gd_y
gd_y:
	.byte	0x66
	leaq	y@tlsgd(%rip), %rdi
	.value	0x6666
	rex64
	callq	__tls_get_addr@PLT
	.size	gd_y, .-gd_y

	.globl	gd_z
gd_z:
	.byte	0x66
	leaq	z@tlsgd(%rip), %rdi
	.value	0x6666
	rex64
	callq	__tls_get_addr@PLT
	.size	gd_z, .-gd_z

# Local dynamic: one pair {module, 0} for the unit, then DTPOFF32/64 offsets from the block.
# jitlink-check: *{8}(next_pc(ld_base) + decode_operand(ld_base, 4) + 8) = 0
# jitlink-check: *{8}(next_pc(ld_base) + decode_operand(ld_base, 4)) = \
# jitlink-check:     *{8}(next_pc(gd_x) + decode_operand(gd_x, 4))
# jitlink-check: decode_operand(next_pc(ld_base), 0) = __tls_get_addr - next_pc(next_pc(ld_base))
	.globl	ld_base
ld_base:
	leaq	x@tlsld(%rip), %rdi
	callq	__tls_get_addr@PLT
	.size	ld_base, .-ld_base

# The second local-dynamic sequence shares the pair.
# jitlink-check: next_pc(ld_again) + decode_operand(ld_again, 4) = \
# jitlink-check:     next_pc(ld_base) + decode_operand(ld_base, 4)
	.globl	ld_again
ld_again:
	leaq	z@tlsld(%rip), %rdi
	callq	__tls_get_addr@PLT
	.size	ld_again, .-ld_again

# DTPOFF32 in an address computation, with an addend; DTPOFF64 in a movabs.
# jitlink-check: decode_operand(dtpoff32_y, 4) = y - section_addr(tls-dynamic.o, .tdata) + 4
# jitlink-check: decode_operand(dtpoff32_z, 4) = 16
# jitlink-check: decode_operand(dtpoff64_y, 1) = 8
	.globl	dtpoff32_y
dtpoff32_y:
	leaq	y@dtpoff+4(%rax), %rcx
	.size	dtpoff32_y, .-dtpoff32_y
	.globl	dtpoff32_z
dtpoff32_z:
	movl	z@dtpoff(%rax), %ecx
	.size	dtpoff32_z, .-dtpoff32_z
	.globl	dtpoff64_y
dtpoff64_y:
	movabsq	$y@dtpoff, %rdx
	.size	dtpoff64_y, .-dtpoff64_y

# In data (as DWARF for TLS variables has it): DTPOFF64 and DTPOFF32.
# jitlink-check: *{8}offsets = 8
# jitlink-check: *{4}(offsets + 8) = 16 + 2
	.data
	.globl	offsets
offsets:
	.quad	y@dtpoff
	.long	z@dtpoff + 2
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
