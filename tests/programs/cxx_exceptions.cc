// Exceptions: thrown and caught in JIT'd code (with unwinding through JIT'd frames and RAII
// destructors), thrown by libstdc++ and caught in JIT'd code, and thrown by JIT'd code *through* a
// libstdc++.so frame: std::basic_streambuf<char>::xsputn is compiled into libstdc++.so (an extern
// template instantiation), and it calls our overridden overflow(), which throws; the exception
// unwinds out of overflow, through xsputn (in libstdc++.so), into our catch. The program checks
// with dladdr that overflow's caller really is in libstdc++.
#include <dlfcn.h>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <vector>

struct Guard {
    const char *name;
    explicit Guard(const char *n) : name(n) { std::printf("  enter %s\n", name); }
    ~Guard() { std::printf("  leave %s\n", name); }
};

struct MyError : std::runtime_error {
    int code;
    MyError(const char *what, int c) : std::runtime_error(what), code(c) {}
};
struct NotAnException { int value; };

__attribute__((noinline)) void level3(int kind) {
    Guard g("level3");
    if (kind == 0) throw MyError("my error", 7);
    if (kind == 1) throw NotAnException{99};
    if (kind == 2) throw 42;
    if (kind == 3) throw std::string("a string");
}
__attribute__((noinline)) void level2(int kind) { Guard g("level2"); level3(kind); }
__attribute__((noinline)) void level1(int kind) {
    Guard g("level1");
    try {
        level2(kind);
    } catch (int i) {
        std::printf("  level1 caught int %d, rethrowing as MyError\n", i);
        throw MyError("converted", i);
    }
}

struct ThrowingBuf : std::streambuf {
    int calls = 0, wrong_caller = 0;
    int_type overflow(int_type c) override {
        Dl_info info;
        bool from_libstdcxx = dladdr(__builtin_return_address(0), &info) && info.dli_fname &&
                              std::strstr(info.dli_fname, "libstdc++");
        std::printf("  overflow('%c') called from %s\n", (char)c, from_libstdcxx ? "libstdc++.so" : "elsewhere");
        wrong_caller += !from_libstdcxx;
        if (++calls == 3) throw MyError("thrown from overflow", 3);
        return c;
    }
};

int main() {
    int failures = 0;
    for (int kind = 0; kind < 5; kind++) {
        std::printf("kind %d\n", kind);
        try {
            level1(kind);
            std::printf("  no exception\n");
        } catch (const MyError &e) {
            std::printf("  caught MyError \"%s\" code %d\n", e.what(), e.code);
        } catch (const NotAnException &e) {
            std::printf("  caught NotAnException %d\n", e.value);
        } catch (...) {
            std::printf("  caught something else\n");
        }
    }

    // Thrown by libstdc++ (std::__throw_out_of_range_fmt, std::__throw_invalid_argument, ...).
    std::vector<int> v(3);
    try { v.at(10) = 1; failures++; }
    catch (const std::out_of_range &e) { std::printf("vector::at: out_of_range caught\n"); }
    try { (void)std::stoi("not a number"); failures++; }
    catch (const std::invalid_argument &e) { std::printf("stoi: invalid_argument caught: %s\n", e.what()); }
    try { (void)std::stoi("99999999999999999999"); failures++; }
    catch (const std::out_of_range &e) { std::printf("stoi: out_of_range caught: %s\n", e.what()); }
    try { (void)std::string("abc").substr(5); failures++; }
    catch (const std::exception &e) { std::printf("substr: std::exception caught\n"); }

    // Thrown in JIT'd code, through a libstdc++.so frame.
    ThrowingBuf buf;
    try {
        buf.sputn("xyz123", 6);
        std::printf("sputn returned\n");
        failures++;
    } catch (const MyError &e) {
        std::printf("caught \"%s\" through libstdc++'s xsputn, after %d calls\n", e.what(), buf.calls);
    }
    failures += buf.wrong_caller;

    // A nested exception inside a destructor during unwinding is caught locally (no terminate).
    try {
        struct Inner { ~Inner() { try { throw 1; } catch (int) { std::printf("  caught inside a destructor\n"); } } } inner;
        throw std::logic_error("outer");
    } catch (const std::logic_error &e) {
        std::printf("outer logic_error caught: %s\n", e.what());
    }
    std::printf("failures %d\n", failures);
    return failures;
}
