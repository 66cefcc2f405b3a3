# R_X86_64_PC16 to a target more than 32 KiB away.
# kiln-check: args=-abs far=0x7ff80000
# kiln-check: expect-error=Delta16) fixup to far
# kiln-check: expect-error=does not fit in int16

	.text
	.globl	main
	.type	main, @function
main:
	retq
	.size	main, .-main

	.data
	.globl	word
word:
	.word	far - .
