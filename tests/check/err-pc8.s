# R_X86_64_PC8 (jrcxz) to a target more than 127 bytes away.
# kiln-check: args=-abs far=0x7ff80000
# kiln-check: expect-error=Delta8) fixup to far
# kiln-check: expect-error=does not fit in int8

	.text
	.globl	main
	.type	main, @function
main:
	jrcxz	far
	retq
	.size	main, .-main
