# Symbols the linker defines for the unit, named by checks although no input references them:
# _GLOBAL_OFFSET_TABLE_ (the start of the unit's GOT, the GOT that R_X86_64_GOTOFF64 and the
# other GOT-relative types measure from), __dso_handle (the unit's identity for __cxa_atexit)
# and _TLS_MODULE_BASE_ (the start of the unit's TLS block, which R_X86_64_DTPOFF32 measures
# from). Nothing here references them by name: the checks must still get the unit's values,
# not "no symbol" and not a symbol of the kiln process.
# kiln-check: mc-args=--relax-relocations=false
# kiln-check: args=-abs far=0x123456789000

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# GOTOFF64 (S + A - GOT): the offset from the GOT that the fixup used is the one the check
# computes with _GLOBAL_OFFSET_TABLE_.
# jitlink-check: decode_operand(gotoff, 1) = data - _GLOBAL_OFFSET_TABLE_
	.globl	gotoff
gotoff:
	movabsq	$data@GOTOFF, %rax
	.size	gotoff, .-gotoff

# The only GOT entry (a plain GOTPCREL, never relaxed) is the first word of the GOT.
# jitlink-check: got_addr(linker-defined.o, far) = _GLOBAL_OFFSET_TABLE_
# jitlink-check: *{8}_GLOBAL_OFFSET_TABLE_ = far
	.globl	load_far
load_far:
	movq	far@GOTPCREL(%rip), %rax
	.size	load_far, .-load_far

# DTPOFF32 (S - TLS + A): y is 8 bytes into the TLS block, which starts with .tdata.
# jitlink-check: decode_operand(dtpoff_y, 4) = y - _TLS_MODULE_BASE_
# jitlink-check: y - _TLS_MODULE_BASE_ = 8
# jitlink-check: _TLS_MODULE_BASE_ = section_addr(linker-defined.o, .tdata)
	.globl	dtpoff_y
dtpoff_y:
	leaq	y@dtpoff(%rax), %rcx
	.size	dtpoff_y, .-dtpoff_y

# __dso_handle is the unit's own zeroed word, inside the unit.
# jitlink-check: *{8}__dso_handle = 0
# jitlink-check: (__dso_handle - main)[63:32] = 0

	.data
	.p2align 3
	.globl	data
data:
	.quad	0
	.size	data, 8

	.section .tdata,"awT",@progbits
	.p2align 3
	.globl	x
x:
	.quad	1
	.size	x, 8
	.globl	y
y:
	.quad	2
	.size	y, 8
