// kiln-test: in-archive
#include <stdio.h>
int transitive_helper(int x);
__attribute__((constructor)) static void used_ctor(void) { printf("constructor of loaded member used.o\n"); }
int used_entry(int x) { return transitive_helper(x) * 10; }
