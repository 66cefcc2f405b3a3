# R_X86_64_16 of a value that fits in neither a signed nor an unsigned 16-bit field.
# kiln-check: args=-abs big=0x10000
# kiln-check: expect-error=Pointer16) fixup to big
# kiln-check: expect-error=does not fit in 16 bits

	.text
	.globl	main
	.type	main, @function
main:
	movw	$big, %ax
	retq
	.size	main, .-main
