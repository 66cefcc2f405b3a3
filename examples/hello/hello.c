/* A small program for `kiln run`: constructors, globals, host calls, atexit, exit status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int calls;
static const char *greeting = "hello from JIT'd code";

__attribute__((constructor)) static void setup(void) { calls = 1; }

static void goodbye(void) { printf("goodbye (atexit handler ran, calls=%d)\n", calls); }

static int cmp(const void *a, const void *b) { calls++; return *(const int *)a - *(const int *)b; }

int main(int argc, char **argv) {
    atexit(goodbye);
    int v[] = {5, 3, 9, 1, 7};
    qsort(v, 5, sizeof v[0], cmp);
    printf("%s: argv[0]=%s, %d argument(s), sorted: %d %d %d %d %d\n", greeting, argv[0], argc - 1,
           v[0], v[1], v[2], v[3], v[4]);
    return (int)strlen(greeting) % 7;
}
