// Varargs (ints, doubles, strings, va_copy, forwarding a va_list to libc) and calls into libm.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

__attribute__((noinline)) static double sum_mixed(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    double total = 0;
    for (const char *p = fmt; *p; p++) {
        switch (*p) {
        case 'i': total += va_arg(ap, int); break;
        case 'l': total += (double)va_arg(ap, long); break;
        case 'd': total += va_arg(ap, double); break;
        case 's': total += strlen(va_arg(ap, const char *)); break;
        }
    }
    va_end(ap);
    return total;
}

__attribute__((noinline)) static int count_twice(int n, ...) {
    va_list ap, copy;
    va_start(ap, n);
    va_copy(copy, ap);
    int a = 0, b = 0;
    for (int i = 0; i < n; i++) a += va_arg(ap, int);
    for (int i = 0; i < n; i++) b += va_arg(copy, int) * 2;
    va_end(copy);
    va_end(ap);
    return a * 1000 + b;
}

__attribute__((format(printf, 2, 3))) static int format_into(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, 128, fmt, ap);   // a va_list handed to the host libc
    va_end(ap);
    return n;
}

__attribute__((format(printf, 1, 2))) void log_line(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("[log] ");
    vprintf(fmt, ap);
    va_end(ap);
}

int main(void) {
    // Many double arguments: more than fit in registers, so some go on the stack.
    double s = sum_mixed("idlsdddddddddi", 1, 2.25, 3L, "four", 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
                         0.5, 0.5, 100);
    printf("sum_mixed = %.3f\n", s);
    printf("count_twice = %d\n", count_twice(12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12));
    char buf[128];
    int n = format_into(buf, "%s-%05d-%.2e-%c-%lx", "fmt", 42, 12345.678, 'Q', 0xdeadbeefUL);
    printf("format_into: %s (%d)\n", buf, n);
    log_line("%d %s %.4f\n", 7, "seven", 7.0 / 3.0);

    volatile double x = 0.75;   // volatile: keep the calls into libm at run time
    printf("libm: sin=%.9f sqrt=%.9f pow=%.9f exp=%.9f atan2=%.9f\n", sin(x), sqrt(x), pow(x, 3.5),
           exp(x), atan2(x, 0.25));
    printf("libm: lround=%ld cbrt=%.6f fmod=%.6f\n", lround(x * 1000.4), cbrt(x * 8), fmod(x * 11, 2));
    return s == 114.75 ? 0 : 1;
}
