// Legacy .ctors/.dtors sections next to .init_array/.fini_array. A native link (GNU ld) moves .ctors
// into .init_array and .dtors into .fini_array, reversing each .ctors/.dtors section's entries (they
// were run backwards by crtstuff), and keeps input order between objects.
// Entries are single pointers (8-byte aligned): an array would be 16-byte aligned, and the padding
// before it would become a null entry in the native .init_array.
#include <stdio.h>

__attribute__((constructor)) static void main_ctor(void) { printf("main.o .init_array constructor\n"); }
__attribute__((destructor)) static void main_dtor(void) { printf("main.o .fini_array destructor\n"); }

int ctor_count, dtor_registered;

int main(void) {
    printf("main: %d constructors ran before main\n", ctor_count);
    return ctor_count == 4 ? 0 : 1;
}
