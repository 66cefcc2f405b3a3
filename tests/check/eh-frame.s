# .eh_frame: kiln splits it into CIEs and FDEs, keeps the FDEs of live functions (a KeepAlive
# edge from each FDE to its function), and rewrites each FDE's CIE pointer with a NegDelta32
# edge (P - S: the distance back from the pointer to its CIE). The FDE's initial location is
# an R_X86_64_PC32.
#
# Layout checked: the CIE first (length, id 0, ...), then main's FDE:
#   fde = cie + 4 + cie_length;  *{4}(fde + 4) = fde + 4 - cie;  pc_begin at fde + 8.

	.text
	.globl	main
	.type	main, @function
main:
	.cfi_startproc
	xorl	%eax, %eax
	retq
	.cfi_endproc
	.size	main, .-main

# The CIE id is 0.
# jitlink-check: *{4}(section_addr(eh-frame.o, .eh_frame) + 4) = 0
# main's FDE: its CIE pointer leads back to the CIE ...
# jitlink-check: *{4}(section_addr(eh-frame.o, .eh_frame) + 8 + (*{4}section_addr(eh-frame.o, .eh_frame))) = \
# jitlink-check:     8 + (*{4}section_addr(eh-frame.o, .eh_frame))
# ... and its initial location (PC-relative, 32 bits) is main.
# jitlink-check: *{4}(section_addr(eh-frame.o, .eh_frame) + 12 + (*{4}section_addr(eh-frame.o, .eh_frame))) = \
# jitlink-check:     (main - (section_addr(eh-frame.o, .eh_frame) + 12 + (*{4}section_addr(eh-frame.o, .eh_frame))))[31:0]
# The FDE covers main's 3 bytes.
# jitlink-check: *{4}(section_addr(eh-frame.o, .eh_frame) + 16 + (*{4}section_addr(eh-frame.o, .eh_frame))) = 3
