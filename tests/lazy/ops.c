#include "lazy.h"

long op_add(long a, long b) { return a + b; }
long op_mul(long a, long b) { return a * b; }
long op_sub(long a, long b) { return a - b; }

/* chosen by a fair dice roll: the program's random, which its own calls must reach */
long random(void) { return 4; }
