// std::exit() from deep inside JIT'd C++ code: destructors of globals and of constructed
// function-local statics run (registered with __cxa_atexit), interleaved in reverse order of
// construction with atexit handlers; automatic objects on the stack are not destroyed.
// kiln-test: expect-exit=5
#include <cstdio>
#include <cstdlib>

struct Noisy {
    const char *name;
    explicit Noisy(const char *n) : name(n) { std::printf("construct %s\n", name); }
    ~Noisy() { std::printf("destroy %s\n", name); }
};

Noisy global_one("global one");
static void handler() { std::printf("atexit handler (registered in main)\n"); }
Noisy global_two("global two");

__attribute__((noinline)) void deep(int n) {
    Noisy automatic("automatic (never destroyed)");
    if (n == 0) {
        static Noisy local_static("function-local static");
        std::printf("calling std::exit(5)\n");
        std::exit(5);
    }
    deep(n - 1);
}

int main() {
    std::atexit(handler);
    deep(3);
    return 0;
}
