// Negative (for now): gcc's default `__thread` in PIE code is the local-exec model (R_X86_64_TPOFF32,
// a fixed offset from %fs). JIT'd code has no place in the static TLS block, so kiln must refuse with
// an error that mentions TLS, and never run with wrong values.
// kiln-test: expect-fail=TLS|thread-local
#include <stdio.h>
__thread int tls_counter = 5;
__thread char tls_bss[32];
int main(void) {
    printf("ERROR: local-exec TLS ran: %d %d\n", tls_counter++, tls_bss[0]);
    return 0;
}
