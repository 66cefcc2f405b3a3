#include <stdio.h>
#include "lazy.h"

int log_count;

void log_line(const char *what, long v) {
    log_count++;
    printf("%s = %ld\n", what, v);
}

static long (*const ops[])(long, long) = {op_add, op_mul, op_sub};

/* long sub_via_aligned_call(long a, long b) { return op_sub(a, b); }, with the call's rel32
 * 4-byte aligned whatever the compiler does: a call site kiln --lazy can always patch. */
long sub_via_aligned_call(long a, long b);
__asm__(".text\n"
        ".globl sub_via_aligned_call\n"
        ".type sub_via_aligned_call, @function\n"
        ".p2align 4\n"
        "sub_via_aligned_call:\n"
        "    sub $8, %rsp\n"
        "    nopl (%rax)\n"
        "    call op_sub\n"
        "    add $8, %rsp\n"
        "    ret\n"
        ".size sub_via_aligned_call, .-sub_via_aligned_call\n");

int main(void) {
    long acc = chain_start(6);
    log_line("chain", acc);
    for (int i = 0; i < 3; i++)
        log_line("op", ops[i](acc, i + 2));
    log_line("apply_twice", apply_twice(op_mul, 3));
    log_line("table", lookup_table[3] + table_size);
    for (long i = 0; i < 1000; i++)
        acc = op_add(acc, i) % 100003;
    log_line("loop", acc);
    log_line("greeting", greet("lazy"));
    log_line("random", random());
    for (long i = 0; i < 3; i++)
        acc = sub_via_aligned_call(acc, i);
    log_line("aligned", acc);
    printf("log lines: %d\n", log_count);
    return (int)(acc % 7) + 3;
}
