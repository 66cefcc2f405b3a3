#include "lazy.h"

static long scratch[256];

long never_called(long x) {
    for (int i = 0; i < 256; i++)
        scratch[i] = x * i + op_add(i, x);
    return scratch[x & 255];
}
