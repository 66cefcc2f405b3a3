// STT_GNU_IFUNC: the resolver runs in the executor before any code calls the function; direct
// calls, calls through a pointer taken in code and a pointer stored in data all reach the
// implementation it chose. (Pointer identity and how often the resolver runs are the linker's
// choice, so they are not printed.)
#include <stdio.h>
static int impl_fast(int x) { return x * 2 + 1; }
static int resolver_calls;
static void *resolve_double(void) { resolver_calls++; return (void *)impl_fast; }
int double_it(int) __attribute__((ifunc("resolve_double")));
int (*volatile fp)(int) = double_it;
__attribute__((constructor)) static void early(void) { printf("constructor: %d\n", double_it(1)); }
int main(void) {
    int (*local)(int) = double_it;
    printf("direct=%d pointer=%d data=%d resolved=%d\n", double_it(21), local(4), fp(5), resolver_calls > 0);
    return 0;
}
