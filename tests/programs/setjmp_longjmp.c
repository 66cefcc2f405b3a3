// setjmp/longjmp across several JIT'd frames (and through a host frame: qsort's comparator jumps out).
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

static jmp_buf env;
static int depth_reached;

__attribute__((noinline)) static void dive(int depth, int target) {
    volatile char pad[64];                  // give each frame some stack
    pad[0] = (char)depth;
    depth_reached = depth + pad[0] - depth;
    if (depth == target) longjmp(env, depth * 10 + 1);
    dive(depth + 1, target);
    printf("not reached %d\n", pad[0]);
}

static jmp_buf cmp_env;
static int compares;
static int bailing_cmp(const void *a, const void *b) {
    if (++compares == 5) longjmp(cmp_env, 7);   // leaves through libc's qsort frames
    return *(const int *)a - *(const int *)b;
}

int main(void) {
    int failures = 0;
    for (int target = 0; target < 5; target++) {
        volatile int local = 100 + target;
        int r = setjmp(env);
        if (r == 0) {
            dive(0, target * 3);
            printf("dive returned?!\n");
            failures++;
        } else {
            printf("longjmp from depth %d returned %d, local %d\n", depth_reached, r, local);
            if (r != target * 30 + 1 || local != 100 + target) failures++;
        }
    }
    int values[64];
    for (int i = 0; i < 64; i++) values[i] = (i * 37) % 64;
    int r = setjmp(cmp_env);
    if (r == 0) {
        qsort(values, 64, sizeof values[0], bailing_cmp);
        printf("qsort finished?!\n");
        failures++;
    } else {
        printf("left qsort by longjmp: %d after %d compares\n", r, compares);
    }
    // sigsetjmp/siglongjmp as well.
    sigjmp_buf senv;
    volatile int count = 0;
    if (sigsetjmp(senv, 1) < 3) {
        count++;
        siglongjmp(senv, count);
    }
    printf("siglongjmp loop count %d\n", count);
    return failures + (count != 3);
}
