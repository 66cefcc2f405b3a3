// The exit status is main's return value.
// kiln-test: expect-exit=42
#include <stdio.h>
int main(void) {
    printf("returning 42 from main\n");
    return 42;
}
