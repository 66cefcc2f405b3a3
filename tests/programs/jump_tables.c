// Jump tables (a big dense switch: gcc emits a table of offsets in .rodata) and function-pointer
// tables (arrays and structs of pointers to JIT'd and to host functions, in .data and .data.rel.ro).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Cases do different work (not just return constants), so gcc cannot turn the switch into a lookup
// table: it emits an indirect jump through a table of offsets.
__attribute__((noinline)) static int acc(int a, int b) { return a * 31 + b; }
__attribute__((noinline)) static int big_switch(int x) {
    int r;
    switch (x) {
    case 0: r = x * 17 + 3; break;
    case 1: r = x ^ 0x55; break;
    case 2: r = x << 3; break;
    case 3: r = x - 1000; break;
    case 4: r = x * x; break;
    case 5: r = acc(x, 5); break;
    case 6: r = ~x; break;
    case 7: r = x / 3 + 70; break;
    case 8: r = x % 7 * 8; break;
    case 9: r = acc(x, 909); break;
    case 10: r = x + x + x; break;
    case 11: r = x - 11 * x; break;
    case 12: r = acc(x * 2, 121); break;
    case 13: r = x | 0x130; break;
    case 14: r = x & 0x1e; break;
    case 15: r = x * 1414; break;
    case 16: r = acc(x, -x); break;
    case 17: r = 7 - x; break;
    case 18: r = x * 18 + 1; break;
    case 19: r = acc(191, x); break;
    case 20: r = x * 17 + 3; break;
    case 21: r = x ^ 0x55; break;
    case 22: r = x << 3; break;
    case 23: r = x - 1000; break;
    case 24: r = x * x; break;
    case 25: r = acc(x, 5); break;
    case 26: r = ~x; break;
    case 27: r = x / 3 + 70; break;
    case 28: r = x % 7 * 8; break;
    case 29: r = acc(x, 909); break;
    case 30: r = x + x + x; break;
    case 31: r = x - 11 * x; break;
    case 32: r = acc(x * 2, 121); break;
    case 33: r = x | 0x130; break;
    case 34: r = x & 0x1e; break;
    case 35: r = x * 1414; break;
    case 36: r = acc(x, -x); break;
    case 37: r = 7 - x; break;
    case 38: r = x * 18 + 1; break;
    case 39: r = acc(191, x); break;
    default: r = -1; break;
    }
    return r + x;
}

// A switch whose cases call functions and fall through, to mix jumps and calls.
__attribute__((noinline)) static const char *classify(int c) {
    switch (c) {
    case 'a': case 'e': case 'i': case 'o': case 'u': return "vowel";
    case 'b': case 'c': case 'd': case 'f': case 'g': case 'h': case 'j': case 'k':
    case 'l': case 'm': case 'n': case 'p': case 'q': case 'r': case 's': case 't':
    case 'v': case 'w': case 'x': case 'y': case 'z': return "consonant";
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return "digit";
    case ' ': return "space";
    default: return "other";
    }
}

static int op_add(int a, int b) { return a + b; }
static int op_sub(int a, int b) { return a - b; }
static int op_mul(int a, int b) { return a * b; }
int op_div(int a, int b) { return b ? a / b : 0; }
int op_mod(int a, int b) { return b ? a % b : 0; }

typedef int (*binop)(int, int);
static binop ops[] = {op_add, op_sub, op_mul, op_div, op_mod};   // writable table
static const struct {
    const char *name;
    binop fn;
} named_ops[] = {                                                  // relro table
    {"add", op_add}, {"sub", op_sub}, {"mul", op_mul}, {"div", op_div}, {"mod", op_mod},
};

// Pointers to host (libc) functions stored in data.
static size_t (*const host_strlen)(const char *) = strlen;
static int (*host_table[])(int) = {abs, 0};

int main(void) {
    long total = 0;
    for (int i = -2; i < 42; i++) total += big_switch(i) * (i + 3);
    printf("switch total %ld\n", total);
    const char *text = "jit linker 42!";
    for (const char *p = text; *p; p++) printf("%c:%s ", *p, classify(*p));
    printf("\n");

    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        printf("%s(17, 5) = %d\n", named_ops[i].name, ops[i](17, 5));
    int failures = 0;
    for (size_t i = 0; i < 5; i++) failures += named_ops[i].fn != ops[i];
    failures += ops[3] != op_div;                 // address equality of a global function
    ops[0] = op_mul;                              // tables in .data are writable
    printf("patched: %d\n", ops[0](6, 7));
    printf("host strlen: %zu, host abs: %d\n", host_strlen(text), host_table[0](-5));
    failures += host_strlen != strlen;
    printf("failures: %d\n", failures);
    return failures;
}
