#include "lazy.h"

long step_a(long n) {
    long r = step_b(n * 2);
    return op_mul(r, 3) + 3;
}

long step_b(long n) {
    if (n > 100)
        return op_sub(n, 1);
    return step_a(n) - lookup_table[n % 8];
}
