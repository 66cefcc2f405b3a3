# R_X86_64_GOTPCRELX and R_X86_64_REX_GOTPCRELX: G + A - P, relaxed when the target is in
# range: `mov foo@GOTPCREL(%rip), %reg` becomes `lea foo(%rip), %reg`, `call *foo@GOTPCREL`
# becomes `addr32 call foo` and `jmp *foo@GOTPCREL` becomes `jmp foo; nop` (same lengths, the
# bytes GNU ld and lld write).
# A target out of range keeps the GOT (relaxing it would be a miscompile).
# kiln-check: args=-abs far=0x123456789000 -abs far_func=0x123456780000 -abs near=0x7ff80000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# REX_GOTPCRELX mov of a symbol of the unit: lea (48 8d), displacement to the symbol itself.
# jitlink-check: *{2}rex_mov = 0x8d48
# jitlink-check: decode_operand(rex_mov, 4) = data - next_pc(rex_mov)
	.globl	rex_mov
rex_mov:
	movq	data@GOTPCREL(%rip), %rax
	.size	rex_mov, .-rex_mov

# With an extended register (REX.R): 4c 8b -> 4c 8d.
# jitlink-check: *{2}rex_mov_r12 = 0x8d4c
# jitlink-check: decode_operand(rex_mov_r12, 4) = data - next_pc(rex_mov_r12)
	.globl	rex_mov_r12
rex_mov_r12:
	movq	data@GOTPCREL(%rip), %r12
	.size	rex_mov_r12, .-rex_mov_r12

# GOTPCRELX mov (no REX): 8b -> 8d.
# jitlink-check: *{1}mov32 = 0x8d
# jitlink-check: decode_operand(mov32, 4) = data - next_pc(mov32)
	.globl	mov32
mov32:
	movl	data@GOTPCREL(%rip), %eax
	.size	mov32, .-mov32

# An absolute symbol in range is relaxed too.
# jitlink-check: *{2}rex_mov_near = 0x8d48
# jitlink-check: decode_operand(rex_mov_near, 4) = near - next_pc(rex_mov_near)
	.globl	rex_mov_near
rex_mov_near:
	movq	near@GOTPCREL(%rip), %rax
	.size	rex_mov_near, .-rex_mov_near

# call *func@GOTPCREL(%rip) -> addr32 call func (67 e8).
# jitlink-check: *{2}call_rel = 0xe867
# jitlink-check: decode_operand(call_rel, 0) = func - next_pc(call_rel)
# jitlink-check: next_pc(call_rel) = call_rel + 6
	.globl	call_rel
call_rel:
	callq	*func@GOTPCREL(%rip)
	.size	call_rel, .-call_rel

# jmp *func@GOTPCREL(%rip) -> jmp func; nop (e9 rel32 90): the nop is the instruction's last byte.
# jitlink-check: *{1}jmp_rel = 0xe9
# jitlink-check: decode_operand(jmp_rel, 0) = func - next_pc(jmp_rel)
# jitlink-check: next_pc(jmp_rel) = jmp_rel + 5
# jitlink-check: *{1}(jmp_rel + 5) = 0x90
	.globl	jmp_rel
jmp_rel:
	jmpq	*func@GOTPCREL(%rip)
	.size	jmp_rel, .-jmp_rel

# Out of range: the mov stays a mov, through a GOT entry that holds the target.
# jitlink-check: *{2}rex_mov_far = 0x8b48
# jitlink-check: decode_operand(rex_mov_far, 4) = got_addr(gotpcrelx.o, far) - next_pc(rex_mov_far)
# jitlink-check: *{8}got_addr(gotpcrelx.o, far) = far
	.globl	rex_mov_far
rex_mov_far:
	movq	far@GOTPCREL(%rip), %rax
	.size	rex_mov_far, .-rex_mov_far

# jitlink-check: *{2}call_far = 0x15ff
# jitlink-check: decode_operand(call_far, 3) = got_addr(gotpcrelx.o, far_func) - next_pc(call_far)
# jitlink-check: *{8}got_addr(gotpcrelx.o, far_func) = far_func
	.globl	call_far
call_far:
	callq	*far_func@GOTPCREL(%rip)
	.size	call_far, .-call_far

# jitlink-check: *{2}jmp_far = 0x25ff
# jitlink-check: decode_operand(jmp_far, 3) = got_addr(gotpcrelx.o, far_func) - next_pc(jmp_far)
	.globl	jmp_far
jmp_far:
	jmpq	*far_func@GOTPCREL(%rip)
	.size	jmp_far, .-jmp_far

# An arithmetic instruction with a GOT operand (REX_GOTPCRELX too) is not rewritten: it reads
# the GOT entry. `add` has a tied operand, so the displacement is operand 5.
# jitlink-check: *{2}add_got = 0x0348
# jitlink-check: decode_operand(add_got, 5) = got_addr(gotpcrelx.o, data) - next_pc(add_got)
# jitlink-check: *{8}got_addr(gotpcrelx.o, data) = data
	.globl	add_got
add_got:
	addq	data@GOTPCREL(%rip), %rax
	.size	add_got, .-add_got

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
