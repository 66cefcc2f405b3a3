// .init_array/.fini_array with priorities: constructors run by ascending priority, then the ones
// without; destructors in the opposite order. atexit and __cxa_atexit handlers registered during
// construction and in main run before the .fini_array destructors (as glibc runs them: LIFO, and the
// object's destructors were registered first).
#include <stdio.h>
#include <stdlib.h>

extern void *__dso_handle __attribute__((visibility("hidden")));   // as g++ declares it
int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);

static int step;
static int seen[8];
#define STEP(name, slot)                                                                 \
    do {                                                                                 \
        seen[slot] = ++step;                                                             \
        printf("%s (step %d)\n", name, step);                                            \
    } while (0)

__attribute__((constructor)) static void ctor_default(void) { STEP("constructor default", 4); }
__attribute__((constructor(200))) static void ctor_200(void) { STEP("constructor 200", 3); }
__attribute__((constructor(101))) static void ctor_101(void) { STEP("constructor 101", 1); }
__attribute__((constructor(102))) static void ctor_102(void) { STEP("constructor 102", 2); }

__attribute__((destructor)) static void dtor_default(void) { printf("destructor default\n"); }
__attribute__((destructor(200))) static void dtor_200(void) { printf("destructor 200\n"); }
__attribute__((destructor(101))) static void dtor_101(void) { printf("destructor 101\n"); }
__attribute__((destructor(102))) static void dtor_102(void) { printf("destructor 102\n"); }

static void atexit_from_ctor(void) { printf("atexit handler registered by a constructor\n"); }
static void atexit_from_main(void) { printf("atexit handler registered by main\n"); }
static void cxa_handler(void *arg) { printf("__cxa_atexit handler, arg \"%s\"\n", (const char *)arg); }

__attribute__((constructor(150))) static void ctor_150_registers(void) {
    STEP("constructor 150 registers atexit", 5);
    atexit(atexit_from_ctor);
}

int main(void) {
    printf("main: constructor order %d %d %d %d\n", seen[1], seen[2], seen[3], seen[4]);
    atexit(atexit_from_main);
    __cxa_atexit(cxa_handler, "payload", &__dso_handle);
    int ok = seen[1] == 1 && seen[2] == 2 && seen[5] == 3 && seen[3] == 4 && seen[4] == 5;
    return ok ? 0 : 1;
}
