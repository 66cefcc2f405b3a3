# R_X86_64_PLT32: L + A - P, signed 32 bits. A call to a function in range is direct; a call
# to one more than 2 GiB away goes through a stub (`jmp *GOT(%rip)`) whose GOT entry holds
# the target.
# kiln-check: args=-abs far_func=0x123456789000 -abs near_func=0x7ff80000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# A call to a function of the unit: direct.
# jitlink-check: decode_operand(call_local, 0) = callee - next_pc(call_local)
	.globl	call_local
call_local:
	callq	callee
	.size	call_local, .-call_local

# A tail call (jmp) to a function of the unit.
# jitlink-check: decode_operand(jump_local, 0) = callee - next_pc(jump_local)
	.globl	jump_local
jump_local:
	jmp	callee
	.size	jump_local, .-jump_local

# An absolute function within reach: direct, no stub.
# jitlink-check: decode_operand(call_near, 0) = near_func - next_pc(call_near)
	.globl	call_near
call_near:
	callq	near_func@PLT
	.size	call_near, .-call_near

# A far function: through the stub, whose GOT entry holds the target.
# jitlink-check: decode_operand(call_far, 0) = stub_addr(plt32.o, far_func) - next_pc(call_far)
# jitlink-check: *{8}got_addr(plt32.o, far_func) = far_func
	.globl	call_far
call_far:
	callq	far_func@PLT
	.size	call_far, .-call_far

# The stub itself: jmp *disp(%rip), a memory operand whose displacement (operand 3) reaches
# the GOT entry.
# jitlink-check: *{2}stub_addr(plt32.o, far_func) = 0x25ff
# jitlink-check: decode_operand(stub_addr(plt32.o, far_func), 3) = \
# jitlink-check:     got_addr(plt32.o, far_func) - next_pc(stub_addr(plt32.o, far_func))

# A tail call to the far function uses the same stub.
# jitlink-check: decode_operand(jump_far, 0) = stub_addr(plt32.o, far_func) - next_pc(jump_far)
	.globl	jump_far
jump_far:
	jmp	far_func@PLT
	.size	jump_far, .-jump_far

	.section .text.callee,"ax",@progbits
	.globl	callee
	.type	callee, @function
callee:
	retq
	.size	callee, .-callee
