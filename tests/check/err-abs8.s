# R_X86_64_8 of a value that fits in neither a signed nor an unsigned byte.
# kiln-check: args=-abs big=0x100
# kiln-check: expect-error=Pointer8) fixup to big
# kiln-check: expect-error=does not fit in 8 bits

	.data
	.globl	main
main:
	.byte	big
