# R_X86_64_32S of a value between 2 and 4 GiB: it would sign-extend to a different address.
# kiln-check: args=-abs high=0x80000000
# kiln-check: expect-error=Pointer32Signed) fixup to high
# kiln-check: expect-error=does not fit in int32
# kiln-check: expect-error=R_X86_64_32S

	.text
	.globl	main
	.type	main, @function
main:
	movq	$high, %rax
	retq
	.size	main, .-main
