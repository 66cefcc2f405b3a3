// Two entries in one .ctors section and two in one .dtors section, in a fixed order (top-level asm,
// so the order does not depend on how gcc orders variables at each -O level).
#include <stdio.h>

extern int ctor_count;
void two_entries_ctor_first(void) { ctor_count++; printf("two_entries.o .ctors first entry\n"); }
void two_entries_ctor_second(void) { ctor_count++; printf("two_entries.o .ctors second entry\n"); }
void two_entries_dtor_first(void) { printf("two_entries.o .dtors first entry\n"); }
void two_entries_dtor_second(void) { printf("two_entries.o .dtors second entry\n"); }

asm(".section .ctors,\"aw\",@progbits\n"
    " .p2align 3\n"
    " .quad two_entries_ctor_first\n"
    " .quad two_entries_ctor_second\n"
    ".section .dtors,\"aw\",@progbits\n"
    " .p2align 3\n"
    " .quad two_entries_dtor_first\n"
    " .quad two_entries_dtor_second\n"
    ".text");

__attribute__((constructor)) static void init_array_ctor(void) {
    ctor_count++;
    printf("two_entries.o .init_array constructor\n");
}
