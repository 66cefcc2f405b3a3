// .init and .fini fragments, as crti.o/crtn.o and old libraries (OpenSSL) use them: each object's
// .init fragment is concatenated between a prologue and an epilogue into one function, _init, which
// runs before .init_array; _fini runs after .fini_array. The fragment below is a bare `call`, so the
// stack alignment must come from the prologue (a misaligned stack crashes printf with SSE).
#include <stdio.h>

static int init_hook_ran;

void kiln_test_init_hook(void) {
    init_hook_ran++;
    printf(".init fragment ran (%d)\n", init_hook_ran);
}
void kiln_test_fini_hook(void) { printf(".fini fragment ran\n"); }

asm(".section .init,\"ax\",@progbits\n"
    " call kiln_test_init_hook\n"
    ".section .fini,\"ax\",@progbits\n"
    " call kiln_test_fini_hook\n"
    ".text");

__attribute__((constructor)) static void ctor(void) {
    printf(".init_array constructor, init hook ran %d time(s)\n", init_hook_ran);
}
__attribute__((destructor)) static void dtor(void) { printf(".fini_array destructor\n"); }

int main(void) {
    printf("main\n");
    return init_hook_ran == 1 ? 0 : 1;
}
