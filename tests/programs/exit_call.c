// exit() called deep in JIT'd code: atexit handlers (LIFO), destructors and buffered stdout are all
// run/flushed, and the status is exit()'s argument.
// kiln-test: expect-exit=3
#include <stdio.h>
#include <stdlib.h>

static void handler_one(void) { printf("atexit handler one\n"); }
static void handler_two(void) { printf("atexit handler two\n"); }
__attribute__((destructor)) static void dtor(void) { printf("destructor after exit()\n"); }

__attribute__((noinline)) static void leave(int depth) {
    if (depth == 0) {
        printf("calling exit(3) (buffered, no newline flush yet)");
        exit(3);
    }
    leave(depth - 1);
    printf("not reached\n");
}

int main(void) {
    atexit(handler_one);
    atexit(handler_two);
    printf("main starts\n");
    leave(5);
    return 0;
}
