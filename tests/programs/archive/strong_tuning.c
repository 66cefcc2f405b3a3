// kiln-test: in-archive
// Defines tuning_level strongly; main.o's weak definition means the symbol is not undefined, so
// (as with GNU ld) this member is not pulled in and its constructor does not run.
#include <stdio.h>
#include <stdlib.h>
int tuning_level = 2;
__attribute__((constructor)) static void strong_tuning_ctor(void) {
    printf("ERROR: member strong_tuning.o was loaded\n");
    exit(98);
}
