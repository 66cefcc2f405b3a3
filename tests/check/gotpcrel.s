# R_X86_64_GOTPCREL: G + A - P, signed 32 bits, always through the GOT (this type promises
# nothing about the instruction, so it is never relaxed). Assembled without relaxable types.
# kiln-check: mc-args=--relax-relocations=false
# kiln-check: args=-abs far=0x123456789000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# A load of a local symbol's address from the GOT: the instruction stays a mov (8b).
# jitlink-check: *{1}(load_data + 1) = 0x8b
# jitlink-check: decode_operand(load_data, 4) = got_addr(gotpcrel.o, data) - next_pc(load_data)
# jitlink-check: *{8}got_addr(gotpcrel.o, data) = data
	.globl	load_data
load_data:
	movq	data@GOTPCREL(%rip), %rax
	.size	load_data, .-load_data

# A far symbol.
# jitlink-check: decode_operand(load_far, 4) = got_addr(gotpcrel.o, far) - next_pc(load_far)
# jitlink-check: *{8}got_addr(gotpcrel.o, far) = far
	.globl	load_far
load_far:
	movq	far@GOTPCREL(%rip), %rcx
	.size	load_far, .-load_far

# An indirect call through the GOT: stays `call *` (ff 15), displacement is operand 3.
# jitlink-check: *{2}call_func = 0x15ff
# jitlink-check: decode_operand(call_func, 3) = got_addr(gotpcrel.o, func) - next_pc(call_func)
# jitlink-check: *{8}got_addr(gotpcrel.o, func) = func
	.globl	call_func
call_func:
	callq	*func@GOTPCREL(%rip)
	.size	call_func, .-call_func

	.globl	func
	.type	func, @function
func:
	retq
	.size	func, .-func

	.data
	.p2align 3
	.globl	data
data:
	.quad	0
	.size	data, 8

# In data: a GOTPCREL with an addend (G + A - P).
# jitlink-check: *{4}gotrefs = (got_addr(gotpcrel.o, data) + 4 - gotrefs)[31:0]
	.globl	gotrefs
gotrefs:
	.long	data@GOTPCREL + 4
	.size	gotrefs, .-gotrefs
