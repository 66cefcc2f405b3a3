// backtrace() from JIT'd code walks through JIT'd frames: it needs the unit's .eh_frame to be
// registered with the unwinder. Without it, the walk stops at the first JIT'd frame.
#include <execinfo.h>
#include <stdio.h>
__attribute__((noinline)) int depth(int n) {
    if (n == 0) {
        void *frames[64];
        int got = backtrace(frames, 64);
        return got;
    }
    int r = depth(n - 1);
    __asm__ volatile("" ::: "memory"); // keep the recursion a real call chain
    return r;
}
int main(void) {
    int got = depth(6);
    // depth(0..6) and main: at least 8 frames (libc's start frames come on top).
    printf("backtrace through JIT'd frames: %s\n", got >= 8 ? "yes" : "no");
    return got >= 8 ? 0 : 1;
}
