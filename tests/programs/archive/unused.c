// kiln-test: in-archive
// Nothing references this member: it must not be loaded, so its constructor must not run.
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void unused_ctor(void) {
    printf("ERROR: constructor of unreferenced member unused.o ran\n");
    exit(99);
}
int unused_function(void) { return 1; }
