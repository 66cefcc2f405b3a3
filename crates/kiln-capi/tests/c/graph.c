/* Graphs built from C: functions calling each other through edges, data pointing at code, zero
   fill, local symbols, a frame-pointer function, patching running code, scopes, debug sinks, a
   batch of graphs linked as one unit. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include "check.h"
#include <unistd.h>

static const uint8_t ANSWER[] = {0xb8, 42, 0, 0, 0, 0xc3};          /* mov $42,%eax; ret */
static const uint8_t CALL_THEN_DOUBLE[] = {0xe8, 0, 0, 0, 0,        /* call <edge>       */
                                           0x01, 0xc0, 0xc3};      /* add %eax,%eax; ret */

static kiln_unit_t link_graph(kiln_session_t *s, kiln_graph_t *g) {
    kiln_unit_t u = 0;
    OK(kiln_session_link_graph(s, g, &u));
    kiln_graph_delete(g);
    return u;
}

static void calls_and_data(kiln_session_t *s) {
    kiln_graph_t *g;
    kiln_section_t data, bss;
    kiln_block_t b;
    static const uint8_t zero8[8] = {0};

    OK(kiln_graph_new("answer", &g));
    OK(kiln_graph_add_function(g, "answer", ANSWER, sizeof ANSWER, &b));
    link_graph(s, g);

    OK(kiln_graph_new("twice", &g));
    OK(kiln_graph_add_function(g, "twice", CALL_THEN_DOUBLE, sizeof CALL_THEN_DOUBLE, &b));
    OK(kiln_graph_add_edge(g, b, 1, KILN_EDGE_X86_64_BRANCH_PCREL32, "answer", -4));
    link_graph(s, g);
    CHECK(AS_FN(int (*)(void), lookup(s, "twice"))() == 84);

    /* Sections, blocks and symbols one by one: a pointer to `answer`, and zero fill. */
    OK(kiln_graph_new("tables", &g));
    OK(kiln_graph_add_section(g, ".data.table", KILN_PROT_READ_WRITE, &data));
    OK(kiln_graph_add_block(g, data, zero8, sizeof zero8, 8, &b));
    OK(kiln_graph_add_symbol(g, b, "table", 0, 8, KILN_VISIBILITY_DEFAULT, 0));
    OK(kiln_graph_add_edge(g, b, 0, KILN_EDGE_X86_64_POINTER64, "answer", 0));
    OK(kiln_graph_add_section(g, ".bss.scratch", KILN_PROT_READ_WRITE, &bss));
    OK(kiln_graph_add_zero_block(g, bss, 64, 16, &b));
    OK(kiln_graph_add_symbol(g, b, "scratch", 0, 64, KILN_VISIBILITY_DEFAULT, 0));
    link_graph(s, g);
    CHECK(*AS_FN(uint64_t *, lookup(s, "table")) == lookup(s, "answer"));
    CHECK(lookup(s, "scratch") % 16 == 0);
    AS_FN(uint8_t *, lookup(s, "scratch"))[63] = 1;
}

static void local_symbols(kiln_session_t *s) {
    /* pair_helper: mov $5,%eax; ret  pair_public: call pair_helper; add $1,%eax; ret */
    static const uint8_t code[] = {0xb8, 5, 0, 0, 0, 0xc3, 0xe8, 0, 0, 0, 0, 0x83, 0xc0, 1, 0xc3};
    kiln_graph_t *g;
    kiln_section_t text;
    kiln_block_t b;
    uint64_t addr;
    OK(kiln_graph_new("pair", &g));
    OK(kiln_graph_add_section(g, ".text.pair", KILN_PROT_READ_EXEC, &text));
    OK(kiln_graph_add_block(g, text, code, sizeof code, 16, &b));
    OK(kiln_graph_add_symbol(g, b, "pair_helper", 0, 6, KILN_VISIBILITY_LOCAL, KILN_SYMBOL_CALLABLE));
    OK(kiln_graph_add_symbol(g, b, "pair_public", 6, 9, KILN_VISIBILITY_DEFAULT, KILN_SYMBOL_CALLABLE));
    OK(kiln_graph_add_edge(g, b, 7, KILN_EDGE_X86_64_BRANCH_PCREL32, "pair_helper", -4));
    link_graph(s, g);
    CHECK(AS_FN(int (*)(void), lookup(s, "pair_public"))() == 6);
    FAILS(kiln_session_lookup(s, "pair_helper", &addr), KILN_ERROR_UNDEFINED, "pair_helper");
}

static void frame_pointer_and_patch(kiln_session_t *s) {
    /* push %rbp; mov %rsp,%rbp; mov $7,%eax; pop %rbp; ret */
    static const uint8_t framed[] = {0x55, 0x48, 0x89, 0xe5, 0xb8, 7, 0, 0, 0, 0x5d, 0xc3};
    /* nopl (%rax); mov $42,%eax; ret — the immediate is 4-byte aligned (functions are 16) */
    static const uint8_t patchable[] = {0x0f, 0x1f, 0x00, 0xb8, 42, 0, 0, 0, 0xc3};
    static const uint8_t ninety_nine[4] = {99, 0, 0, 0};
    kiln_graph_t *g;
    kiln_block_t b;
    uint64_t at;
    kiln_error_t *e;
    OK(kiln_graph_new("framed", &g));
    OK(kiln_graph_add_function(g, "framed", framed, sizeof framed, &b));
    OK(kiln_graph_set_frame_pointer(g, b));
    OK(kiln_graph_add_function(g, "patchable", patchable, sizeof patchable, &b));
    link_graph(s, g);
    CHECK(AS_FN(int (*)(void), lookup(s, "framed"))() == 7);

    at = lookup(s, "patchable");
    CHECK(AS_FN(int (*)(void), at)() == 42);
    OK(kiln_session_patch(s, at + 4, ninety_nine, 4));
    CHECK(AS_FN(int (*)(void), at)() == 99);
    /* Three bytes, or a misaligned word: refused, and the code is as it was. */
    e = kiln_session_patch(s, at + 4, ninety_nine, 3);
    CHECK(e != NULL);
    kiln_error_delete(e);
    e = kiln_session_patch(s, at + 3, ninety_nine, 4);
    CHECK(e != NULL);
    kiln_error_delete(e);
    CHECK(AS_FN(int (*)(void), at)() == 99);
}

static void scopes(kiln_session_t *s) {
    /* plugin_fn: call answer; add $5,%eax; ret */
    static const uint8_t code[] = {0xe8, 0, 0, 0, 0, 0x83, 0xc0, 5, 0xc3};
    kiln_scope_t plugin, found;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t unit, owner = 0;
    uint64_t addr, size = 0;
    OK(kiln_session_create_scope(s, "plugin", &plugin));
    CHECK(plugin == 1);
    FAILS(kiln_session_create_scope(s, "plugin", &found), KILN_ERROR_USAGE, "exists already");
    OK(kiln_session_scope_by_name(s, "plugin", &found));
    CHECK(found == plugin);
    FAILS(kiln_session_scope_by_name(s, "nope", &found), KILN_ERROR_NOT_FOUND, "nope");

    OK(kiln_graph_new("plugin", &g));
    OK(kiln_graph_add_function(g, "plugin_fn", code, sizeof code, &b));
    OK(kiln_graph_add_edge(g, b, 1, KILN_EDGE_X86_64_BRANCH_PCREL32, "answer", -4));
    OK(kiln_session_link_graph_in(s, plugin, g, &unit));
    kiln_graph_delete(g);
    OK(kiln_session_lookup_symbol(s, plugin, "plugin_fn", &addr, &size, &owner));
    CHECK(size == sizeof code && owner == unit);
    CHECK(AS_FN(int (*)(void), addr)() == 47);
    /* The default scope does not search the plugin scope ... */
    FAILS(kiln_session_lookup(s, "plugin_fn", &addr), KILN_ERROR_UNDEFINED, "plugin_fn");
    /* ... until told to. */
    OK(kiln_session_set_search_order(s, KILN_SCOPE_DEFAULT, &plugin, 1));
    OK(kiln_session_lookup_symbol(s, KILN_SCOPE_DEFAULT, "plugin_fn", &addr, NULL, NULL));
    CHECK(AS_FN(int (*)(void), addr)() == 47);
}

/* The GDB JIT interface's descriptor (libkiln.so defines it; gdb reads it). */
struct jit_code_entry;
extern struct {
    uint32_t version, action_flag;
    struct jit_code_entry *relevant_entry, *first_entry;
} __jit_debug_descriptor;

static int file_has(const char *path, const char *needle) {
    char line[512];
    int found = 0;
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    while (fgets(line, sizeof line, f))
        found |= strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* Every sink, for one unit: gdb sees it registered (and unregistered when it is removed), perf's
   map names it, the jitdump file is written in the directory given. */
static void debug_sinks(kiln_session_t *s) {
    char map[64], dir[] = "/tmp/kiln-capi-jitdump-XXXXXX", dump[128];
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t u;
    FILE *f;
    CHECK(mkdtemp(dir) != NULL);
    CHECK(__jit_debug_descriptor.first_entry == NULL); /* debug was off until now */
    OK(kiln_session_set_debug(s, KILN_DEBUG_GDB | KILN_DEBUG_PERF_MAP | KILN_DEBUG_JITDUMP, dir));
    OK(kiln_graph_new("debugged", &g));
    OK(kiln_graph_add_function(g, "debugged_fn", ANSWER, sizeof ANSWER, &b));
    u = link_graph(s, g);
    CHECK(__jit_debug_descriptor.first_entry != NULL);

    snprintf(map, sizeof map, "/tmp/perf-%d.map", (int)getpid());
    CHECK(file_has(map, "debugged_fn"));
    unlink(map);
    snprintf(dump, sizeof dump, "%s/jit-%d.dump", dir, (int)getpid());
    f = fopen(dump, "rb");
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0 && ftell(f) > 40); /* a header and records */
    fclose(f);
    unlink(dump);
    rmdir(dir);

    OK(kiln_session_remove(s, u));
    CHECK(__jit_debug_descriptor.first_entry == NULL);
    OK(kiln_session_set_debug(s, 0, NULL));
}

static void malformed(kiln_session_t *s) {
    static const uint8_t ret[] = {0xc3};
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t u;
    OK(kiln_graph_new("short", &g));
    OK(kiln_graph_add_function(g, "short_fn", ret, sizeof ret, &b));
    OK(kiln_graph_add_edge(g, b, 0, KILN_EDGE_X86_64_POINTER64, "answer", 0));
    FAILS(kiln_session_link_graph(s, g, &u), KILN_ERROR_MALFORMED, "lies outside its block");
    kiln_graph_delete(g);
}

/* Two graphs calling each other (each defined by the other graph of the batch), linked as one
   unit; bad batches refused. */
static void batch_as_unit(kiln_session_t *s) {
    /* NAME(n) = n == 0 ? 0 : OTHER(n - 1) + 1 */
    static const uint8_t countdown[] = {
        0x85, 0xff, 0x74, 0x14, 0x83, 0xef, 0x01, 0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0,
        0x48, 0x83, 0xc4, 0x08, 0x83, 0xc0, 0x01, 0xc3, 0x31, 0xc0, 0xc3};
    kiln_graph_t *g[2];
    kiln_block_t b;
    kiln_unit_t u = 0;
    OK(kiln_graph_new("ping", &g[0]));
    OK(kiln_graph_add_function(g[0], "ping", countdown, sizeof countdown, &b));
    OK(kiln_graph_add_edge(g[0], b, 12, KILN_EDGE_X86_64_BRANCH_PCREL32, "pong", -4));
    OK(kiln_graph_new("pong", &g[1]));
    OK(kiln_graph_add_function(g[1], "pong", countdown, sizeof countdown, &b));
    OK(kiln_graph_add_edge(g[1], b, 12, KILN_EDGE_X86_64_BRANCH_PCREL32, "ping", -4));
    /* One at a time, the first cannot link: pong is not defined yet. */
    FAILS(kiln_session_link_graph(s, g[0], &u), KILN_ERROR_UNRESOLVED, "pong");
    FAILS(kiln_session_link_graphs_as_unit(s, KILN_SCOPE_DEFAULT, g, 0, &u),
          KILN_ERROR_INVALID_ARGUMENT, "no graphs");
    FAILS(kiln_session_link_graphs_as_unit(s, KILN_SCOPE_DEFAULT, NULL, 2, &u),
          KILN_ERROR_INVALID_ARGUMENT, "graphs is NULL");
    OK(kiln_session_link_graphs_as_unit(s, KILN_SCOPE_DEFAULT, g, 2, &u));
    CHECK(AS_FN(int (*)(int), lookup(s, "ping"))(9) == 9);
    CHECK(AS_FN(int (*)(int), lookup(s, "pong"))(4) == 4);
    OK(kiln_session_remove(s, u));
    uint64_t addr;
    FAILS(kiln_session_lookup(s, "ping", &addr), KILN_ERROR_UNDEFINED, "ping");
    kiln_graph_delete(g[0]);
    kiln_graph_delete(g[1]);
}

int main(void) {
    kiln_session_t *s;
    OK(kiln_session_new(&s));
    OK(kiln_session_set_debug(s, 0, NULL));
    calls_and_data(s);
    local_symbols(s);
    frame_pointer_and_patch(s);
    scopes(s);
    debug_sinks(s);
    malformed(s);
    batch_as_unit(s);
    kiln_session_delete(s);
    printf("graph: %d checks passed\n", checks_passed);
    return 0;
}
