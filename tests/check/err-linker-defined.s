# A check naming a linker-defined symbol that has no value in this unit (no TLS data, so no
# _TLS_MODULE_BASE_), or a symbol only static linkers define for a whole executable, fails
# with a message saying why, not a bare "no symbol".
# kiln-check: expect-error=`_TLS_MODULE_BASE_` (the start of the unit's thread-local block) has no address in this link: no input references it and the unit has no initialized thread-local data (.tdata)
# kiln-check: expect-error=static linkers define `_DYNAMIC` for a whole executable
# kiln-check: expect-error=static linkers define `__ehdr_start` for a whole executable
# kiln-check: expect-error=3 of 4 checks failed

	.text
	.globl	main
	.type	main, @function
main:
	xorl	%eax, %eax
	retq
	.size	main, .-main

# jitlink-check: _TLS_MODULE_BASE_ = 0
# jitlink-check: _DYNAMIC = 0
# jitlink-check: __ehdr_start = 0
# The GOT exists (empty) in every unit.
# jitlink-check: _GLOBAL_OFFSET_TABLE_ - main = _GLOBAL_OFFSET_TABLE_ - main
