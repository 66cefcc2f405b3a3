# R_X86_64_32 cannot reach data placed above 4 GiB: the link must fail, naming the fixup.
# kiln-check: slab-address=0x100000000
# kiln-check: expect-error=Pointer32) fixup to data
# kiln-check: expect-error=does not fit in uint32

	.text
	.globl	main
	.type	main, @function
main:
	movl	$data, %eax
	retq
	.size	main, .-main

	.data
	.globl	data
data:
	.long	0
