// Negative: undefined symbols (a function and a variable, referenced from two objects). kiln must
// refuse, report every undefined symbol (not just the first) with the object that references it,
// and run nothing.
// kiln-test: expect-fail=kiln_test_missing_function
// kiln-test: expect-fail=kiln_test_missing_variable
// kiln-test: expect-fail=undef_main.o
// kiln-test: expect-fail=undef_user.o
#include <stdio.h>
int kiln_test_missing_function(int);
int user(void);
int main(void) {
    printf("ERROR: this program must not run\n");
    return kiln_test_missing_function(1) + user();
}
