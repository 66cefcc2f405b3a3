/* Machine code (x86-64) and graph helpers shared by the JIT test programs. Each function is
   placed by kiln_graph_add_function at a 16-aligned address, so a field at offset 4 is
   4-aligned and one at offset 8 is 8-aligned (sites must be aligned to their width). */
#ifndef KILN_TEST_JIT_CODE_H
#define KILN_TEST_JIT_CODE_H

#include "check.h"

/* mov $v, %eax; ret (a small value, zero-extended into %rax) */
#define RETURNS(v) {0xb8, (uint8_t)(v), 0, 0, 0, 0xc3}
/* mov $-1, %rax; ret */
#define RETURNS_MINUS_1 {0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xc3}
/* mov $-2, %rax; ret */
#define RETURNS_MINUS_2 {0x48, 0xc7, 0xc0, 0xfe, 0xff, 0xff, 0xff, 0xc3}
/* 6-byte nop; movabs $imm64, %rax (imm64 at offset 8); ret */
#define MOVABS_RET {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xc3}
/* 3-byte nop; jmp rel32 (rel32 at offset 4): a tail call through a patchable site */
#define TAIL_JMP {0x0f, 0x1f, 0x00, 0xe9, 0, 0, 0, 0}
/* sub $8,%rsp; 3-byte nop; call rel32 (rel32 at offset 8); add $8,%rsp; ret */
#define CALL_RET {0x48, 0x83, 0xec, 0x08, 0x0f, 0x1f, 0x00, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xc3}

/* A graph `name` with one function `fn` of `len` bytes; its block goes to `*block` if not
   NULL. */
static inline kiln_graph_t *graph_with(const char *name, const char *fn, const uint8_t *code,
                                       size_t len, kiln_block_t *block) {
    kiln_graph_t *g;
    kiln_block_t b;
    OK(kiln_graph_new(name, &g));
    OK(kiln_graph_add_function(g, fn, code, len, &b));
    if (block)
        *block = b;
    return g;
}

/* Add function `fn` to `g`. */
static inline kiln_block_t add_fn(kiln_graph_t *g, const char *fn, const uint8_t *code,
                                  size_t len) {
    kiln_block_t b;
    OK(kiln_graph_add_function(g, fn, code, len, &b));
    return b;
}

/* The one site of zone unit `unit`. */
static inline kiln_site_t only_site(kiln_jit_t *jit, kiln_unit_t unit) {
    kiln_site_t site;
    size_t n = 0;
    OK(kiln_jit_unit_sites(jit, unit, &site, 1, &n));
    CHECK(n == 1);
    return site;
}

/* A JIT with a 1 MiB zone anywhere, in session `s` with the debug sinks off but valgrind's
   (the programs also run under valgrind, which must hear of code replaced at an address). */
static inline kiln_jit_t *new_jit(kiln_session_t *s) {
    kiln_zone_config_t config = {0};
    kiln_jit_t *jit;
    config.size = 1 << 20;
    OK(kiln_session_set_debug(s, KILN_DEBUG_VALGRIND, NULL));
    OK(kiln_jit_new(s, &config, &jit));
    return jit;
}

typedef long (*fn_l_l)(long);
typedef long (*fn_l)(void);

#endif
