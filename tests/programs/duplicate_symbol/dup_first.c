// Negative: a symbol defined strongly in two objects. kiln must refuse, naming the symbol and both
// objects, and run nothing.
// kiln-test: expect-fail=kiln_test_duplicated
// kiln-test: expect-fail=dup_first.o
// kiln-test: expect-fail=dup_second.o
#include <stdio.h>
int kiln_test_duplicated(void) { return 1; }
int main(void) {
    printf("ERROR: this program must not run\n");
    return kiln_test_duplicated();
}
