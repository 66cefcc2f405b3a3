#include "lazy.h"

long chain_start(long n) {
    log_line("chain_start", n);
    return step_a(n) + 1;
}

long apply_twice(long (*f)(long, long), long x) {
    return f(f(x, 2), 5) + 1;
}
