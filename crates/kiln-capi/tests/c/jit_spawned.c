/* The JIT API with code running in a child kiln-executor: a zone there, a patched constant,
   a lazy function whose C callback runs here (in the controller) when the child first calls
   it, a heap reference read from the child's memory, redefinition. The code is run with
   kiln_session_run_main (its int result is the status). Last, a compaction of the child's
   method region: the first unit dropped, the survivors moved down and still right when
   called, the move map translating their old addresses.
   Usage: jit_spawned EXECUTOR */
#include "jit_code.h"

static int compiled;

static kiln_error_t *compile_seven(void *user, kiln_jit_t *jit, const char *name,
                                   const char *code_name, kiln_graph_t **out_graph) {
    const uint8_t code[] = RETURNS(7);
    (void)user, (void)jit, (void)name;
    compiled++;
    *out_graph = graph_with("seven", code_name, code, sizeof code, NULL);
    return NULL;
}

static kiln_unit_t dropped_unit;

static kiln_verdict_t drop_one(void *user, kiln_unit_t unit) {
    (void)user;
    return unit == dropped_unit ? KILN_VERDICT_DROP : KILN_VERDICT_KEEP;
}

static int32_t run(kiln_session_t *s, const char *entry) {
    const char *args[] = {entry};
    int32_t status = -1;
    OK(kiln_session_run_main(s, entry, args, 1, &status));
    return status;
}

int main(int argc, char **argv) {
    const uint8_t answer[] = MOVABS_RET, caller[] = CALL_RET, two[] = RETURNS(2),
                  three[] = RETURNS(3), nine[] = RETURNS(9);
    kiln_zone_config_t config = {0};
    kiln_session_t *s;
    kiln_jit_t *jit;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t unit, version, gone, units[8];
    kiln_compaction_t report;
    kiln_move_map_t *map;
    uint64_t old_gone, old_answer, old_call_version, pc;
    bool was_dropped;
    kiln_site_t site;
    kiln_heap_ref_t ref;
    kiln_lazy_status_t st;
    uint64_t lazy, epoch;
    size_t n;

    CHECK(argc == 2);
    OK(kiln_session_new_spawned(argv[1], &s));
    OK(kiln_session_set_debug(s, 0, NULL));
    config.size = 1 << 20;
    OK(kiln_jit_new(s, &config, &jit));

    /* The lowest unit of the method region, dropped by the compaction at the end. */
    g = graph_with("gone", "gone", nine, sizeof nine, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &gone));
    kiln_graph_delete(g);
    CHECK(run(s, "gone") == 9);

    g = graph_with("answer", "answer", answer, sizeof answer, NULL);
    OK(kiln_graph_add_site(g, "answer", 8, KILN_SITE_ABS64));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    site = only_site(jit, unit);
    CHECK(run(s, "answer") == 0);
    OK(kiln_jit_set_value(jit, &site, 42));
    CHECK(run(s, "answer") == 42);

    /* A heap reference in the child's code, read from here. */
    g = graph_with("obj", "obj", answer, sizeof answer, NULL);
    OK(kiln_graph_add_heap_ref(g, "obj", 8, 8));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    ref.unit = unit;
    ref.addr = lookup(s, "obj") + 8;
    ref.width = 8;
    ref.value = 0x5eed;
    OK(kiln_jit_write_heap_refs(jit, &ref, 1));
    OK(kiln_jit_heap_refs(jit, &ref, 1, &n));
    CHECK(n == 1 && ref.value == 0x5eed);
    CHECK(run(s, "obj") == 0x5eed);

    /* A lazy function: compiled here when the child first calls it. */
    OK(kiln_jit_declare_lazy(jit, "lazy_seven", compile_seven, NULL, &lazy));
    g = graph_with("caller", "call_seven", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "lazy_seven", -4));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    CHECK(compiled == 0);
    CHECK(run(s, "call_seven") == 7);
    CHECK(run(s, "call_seven") == 7);
    CHECK(compiled == 1);
    OK(kiln_jit_lazy_status(jit, "lazy_seven", &st, NULL));
    CHECK(st.state == KILN_LAZY_COMPILED);

    /* Redefinition: the caller follows. */
    g = graph_with("v2", "version", two, sizeof two, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &version));
    kiln_graph_delete(g);
    g = graph_with("vcaller", "call_version", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "version", -4));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    CHECK(run(s, "call_version") == 2);
    g = graph_with("v3", "version", three, sizeof three, NULL);
    OK(kiln_jit_redefine(jit, version, g, NULL));
    kiln_graph_delete(g);
    CHECK(run(s, "call_version") == 3);
    OK(kiln_jit_grace_start(jit, &epoch));
    OK(kiln_jit_reclaim(jit, epoch, NULL));
    CHECK(run(s, "call_version") == 3);

    /* Compaction in the child: drop `gone`; the others slide down over it. */
    old_gone = lookup(s, "gone");
    old_answer = lookup(s, "answer");
    old_call_version = lookup(s, "call_version");
    dropped_unit = gone;
    OK(kiln_jit_compact(jit, drop_one, NULL, &report, &map));
    CHECK(report.dropped == 1 && report.moved >= 4 && report.used_after < report.used_before);
    OK(kiln_move_map_dropped_units(map, units, 8, &n));
    CHECK(n == 1 && units[0] == gone);
    CHECK(lookup(s, "answer") < old_answer && lookup(s, "call_version") < old_call_version);
    FAILS(kiln_session_lookup(s, "gone", &pc), KILN_ERROR_UNDEFINED, "gone");
    /* Survivors run in the child at their new places: a patched constant, a heap reference,
       a call patched to a lazily compiled function, a call to a redefined one. */
    CHECK(run(s, "answer") == 42);
    CHECK(run(s, "obj") == 0x5eed);
    CHECK(run(s, "call_seven") == 7 && compiled == 1);
    CHECK(run(s, "call_version") == 3);
    OK(kiln_jit_heap_refs(jit, &ref, 1, &n));
    CHECK(n == 1 && ref.addr == lookup(s, "obj") + 8 && ref.value == 0x5eed);
    /* The map: a return address in call_version (after its call), the entry of answer, and
       an address in the dropped code. */
    OK(kiln_move_map_translate(map, old_call_version + 12, &pc, &was_dropped));
    CHECK(!was_dropped && pc == lookup(s, "call_version") + 12);
    OK(kiln_move_map_translate(map, old_answer, &pc, NULL));
    CHECK(pc == lookup(s, "answer"));
    OK(kiln_move_map_translate(map, old_gone + 1, &pc, &was_dropped));
    CHECK(was_dropped && pc == 0);
    /* The old site, translated, still patches the constant in the child. */
    OK(kiln_move_map_translate(map, site.addr, &site.addr, NULL));
    OK(kiln_jit_set_value(jit, &site, 43));
    CHECK(run(s, "answer") == 43);
    kiln_move_map_delete(map);

    kiln_jit_delete(jit);
    kiln_session_delete(s);
    printf("jit_spawned: %d checks passed\n", checks_passed);
    return 0;
}
