# R_X86_64_PC32 to data more than 2 GiB away (a far absolute symbol): no stub or GOT can help a
# data reference, so the link must fail, naming the fixup and the value.
# kiln-check: args=-abs far_data=0x123456789000
# kiln-check: expect-error=Delta32) fixup to far_data
# kiln-check: expect-error=does not fit in int32

	.text
	.globl	main
	.type	main, @function
main:
	movl	far_data(%rip), %eax
	retq
	.size	main, .-main
