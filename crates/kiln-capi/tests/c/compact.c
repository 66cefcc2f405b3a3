/* Compaction of the method region from C: a dropped unit's users must go too (refused before
   anything changes); survivors slide down over the dropped unit, calls between them relinked,
   a patched constant and a heap reference carried along; the move map translates addresses
   (return addresses, saved pcs) and says which lay in dropped code; pinned units stay. An
   object linked into the method region moves too, its calls out of the zone still reaching
   the host. The move map lists which units were dropped, moved and pinned (and why); the
   report times each step. Usage: compact adder.o */
#include "jit_code.h"

/* Whether `unit` is among the `n` units of `units`. */
static bool listed(const kiln_unit_t *units, size_t n, kiln_unit_t unit) {
    size_t i;
    for (i = 0; i < n; i++)
        if (units[i] == unit)
            return true;
    return false;
}

/* The step times add up to the total. */
static bool times_add_up(const kiln_compaction_t *r) {
    return r->times.verdicts_ns + r->times.drop_ns + r->times.layout_ns + r->times.moves_ns +
               r->times.finish_ns ==
           r->nanoseconds;
}

static long obj_a = 111;

static int host_scale(int x) { return 3 * x; }

struct verdicts {
    kiln_unit_t drop, pin;
    kiln_verdict_t other;
    int asked;
};

static kiln_verdict_t decide(void *user, kiln_unit_t unit) {
    struct verdicts *v = user;
    v->asked++;
    if (unit == v->drop)
        return KILN_VERDICT_DROP;
    if (unit == v->pin)
        return KILN_VERDICT_PIN;
    return v->other;
}

static kiln_unit_t link_one(kiln_jit_t *jit, kiln_graph_t *g) {
    kiln_unit_t u;
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &u));
    kiln_graph_delete(g);
    return u;
}

int main(int argc, char **argv) {
    const uint8_t one[] = RETURNS(1), two[] = RETURNS(2), caller[] = CALL_RET,
                  fixed_code[] = RETURNS(5);
    uint8_t get_obj[] = MOVABS_RET, konst[] = MOVABS_RET;
    uint64_t a_obj = (uint64_t)(uintptr_t)&obj_a, old_a, old_b, old_c, old_konst, fixed, pc;
    kiln_session_t *s;
    kiln_jit_t *jit;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t ua, ub, uc, ud, uf, uo, ufc, units[16];
    kiln_pinned_t pinned[8];
    uint8_t *object;
    size_t object_len;
    uint64_t old_add;
    kiln_site_t site, old_site;
    kiln_heap_ref_t ref;
    kiln_compaction_t report;
    kiln_move_map_t *map, *dead;
    kiln_range_move_t moves[16];
    kiln_range_t dropped[4];
    struct verdicts v = {0, 0, KILN_VERDICT_KEEP, 0};
    size_t n, i;
    bool was_dropped;
    int found = 0;

    CHECK(argc == 2);
    object = read_file(argv[1], &object_len);
    for (i = 0; i < 8; i++)
        get_obj[8 + i] = (uint8_t)(a_obj >> (8 * i));
    OK(kiln_session_new(&s));
    jit = new_jit(s);
    OK(kiln_session_define(s, "host_scale", (uint64_t)(uintptr_t)&host_scale));
    g = graph_with("fixed", "fixed_five", fixed_code, sizeof fixed_code, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &uf));
    kiln_graph_delete(g);
    fixed = lookup(s, "fixed_five");

    ua = link_one(jit, graph_with("a", "dead_a", one, sizeof one, NULL));
    ub = link_one(jit, graph_with("b", "b", two, sizeof two, NULL));
    g = graph_with("c", "c", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "b", -4));
    uc = link_one(jit, g);
    g = graph_with("d", "get_obj", get_obj, sizeof get_obj, NULL);
    OK(kiln_graph_add_heap_ref(g, "get_obj", 8, 8));
    add_fn(g, "konst", konst, sizeof konst);
    OK(kiln_graph_add_site(g, "konst", 8, KILN_SITE_ABS64));
    ud = link_one(jit, g);
    site = only_site(jit, ud);
    OK(kiln_jit_set_value(jit, &site, 77));
    FAILS(kiln_jit_link_object(jit, KILN_REGION_METHOD, "garbage.o", (const uint8_t *)"\x7f" "ELF",
                               4, &uo),
          KILN_ERROR_MALFORMED, "garbage.o");
    OK(kiln_jit_link_object(jit, KILN_REGION_METHOD, "adder.o", object, object_len, &uo));
    free(object);
    old_add = lookup(s, "add");
    CHECK(AS_FN(int (*)(int, int), old_add)(2, 3) == 5);
    CHECK(AS_FN(int (*)(int), lookup(s, "scaled"))(4) == 24);
    old_a = lookup(s, "dead_a");
    old_b = lookup(s, "b");
    old_c = lookup(s, "c");
    old_konst = lookup(s, "konst");
    CHECK(AS_FN(fn_l, old_c)() == 2 && AS_FN(fn_l, old_konst)() == 77);

    /* Dropping b while c, which calls it, stays: refused, nothing changed. */
    v.drop = ub;
    FAILS(kiln_jit_compact(jit, decide, &v, &report, &map), KILN_ERROR_HAS_DEPENDENTS,
          "cannot be dropped");
    CHECK(lookup(s, "b") == old_b && lookup(s, "c") == old_c && AS_FN(fn_l, old_c)() == 2);
    /* A verdict that is none: refused before anything changes. */
    v.drop = 0;
    v.other = 9;
    FAILS(kiln_jit_compact(jit, decide, &v, NULL, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "returned 9, not a KILN_VERDICT_*");
    FAILS(kiln_jit_compact(jit, NULL, NULL, NULL, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "verdict is NULL");
    CHECK(lookup(s, "c") == old_c);

    /* Drop a: everything after it slides down. */
    v.drop = ua;
    v.other = KILN_VERDICT_KEEP;
    v.asked = 0;
    OK(kiln_jit_compact(jit, decide, &v, &report, &map));
    CHECK(v.asked == 5); /* the method units: a, b, c, d, adder.o */
    CHECK(report.dropped == 1 && report.moved == 4 && report.pinned == 0);
    CHECK(report.used_after < report.used_before);
    CHECK(times_add_up(&report));
    OK(kiln_move_map_dropped_units(map, units, 16, &n));
    CHECK(n == 1 && units[0] == ua);
    OK(kiln_move_map_moved_units(map, units, 16, &n));
    CHECK(n == 4 && listed(units, n, ub) && listed(units, n, uc) && listed(units, n, ud) &&
          listed(units, n, uo) && !listed(units, n, ua));
    OK(kiln_move_map_moved_units(map, NULL, 0, &n)); /* just the count */
    CHECK(n == 4);
    OK(kiln_move_map_pinned(map, pinned, 8, &n));
    CHECK(n == 0);
    FAILS(kiln_move_map_pinned(map, NULL, 8, &n), KILN_ERROR_INVALID_ARGUMENT,
          "out_pinned is NULL or misaligned but its capacity is 8");
    FAILS(kiln_move_map_dropped_units(map, units, 16, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "out_count");
    CHECK(lookup(s, "c") < old_c && lookup(s, "b") < old_b);
    CHECK(AS_FN(fn_l, lookup(s, "c"))() == 2);
    CHECK(AS_FN(fn_l, lookup(s, "konst"))() == 77);
    CHECK(*AS_FN(long *(*)(void), lookup(s, "get_obj"))() == 111);
    CHECK(lookup(s, "add") < old_add);
    CHECK(AS_FN(int (*)(int, int), lookup(s, "add"))(2, 3) == 5);
    CHECK(AS_FN(int (*)(int), lookup(s, "scaled"))(4) == 24);
    FAILS(kiln_session_lookup(s, "dead_a", &pc), KILN_ERROR_UNDEFINED, "dead_a");
    FAILS(kiln_jit_remove(jit, ua), KILN_ERROR_UNKNOWN_UNIT, "is not a live unit");

    /* The move map: a return address inside c, one in the dropped code, one in the fixed
       region. */
    OK(kiln_move_map_translate(map, old_c + 12, &pc, &was_dropped));
    CHECK(!was_dropped && pc == lookup(s, "c") + 12);
    OK(kiln_move_map_translate(map, old_a + 2, &pc, &was_dropped));
    CHECK(was_dropped && pc == 0);
    OK(kiln_move_map_translate(map, fixed, &pc, NULL));
    CHECK(pc == fixed);
    OK(kiln_move_map_moves(map, moves, 16, &n));
    CHECK(n >= 3 && n <= 16);
    for (i = 0; i < n; i++)
        if (moves[i].unit == uc && moves[i].from <= old_c && old_c < moves[i].from + moves[i].size)
            found = moves[i].to + (old_c - moves[i].from) == lookup(s, "c");
    CHECK(found);
    OK(kiln_move_map_dropped(map, dropped, 4, &n));
    CHECK(n >= 1 && dropped[0].start <= old_a && old_a < dropped[0].start + dropped[0].size);

    /* Site and reference values taken before are stale; translated, they work. */
    old_site = site;
    FAILS(kiln_jit_set_value(jit, &old_site, 78), KILN_ERROR_STALE, "belongs to no live unit");
    OK(kiln_move_map_translate(map, old_site.addr, &site.addr, NULL));
    CHECK(site.addr == only_site(jit, ud).addr);
    OK(kiln_jit_set_value(jit, &site, 78));
    CHECK(AS_FN(fn_l, lookup(s, "konst"))() == 78);
    OK(kiln_jit_heap_refs(jit, &ref, 1, &n));
    CHECK(n == 1 && ref.addr == lookup(s, "get_obj") + 8 && ref.value == a_obj);
    kiln_move_map_delete(map);
    dead = map;
    FAILS(kiln_move_map_translate(dead, old_c, &pc, NULL), KILN_ERROR_INVALID_HANDLE,
          "map is a kiln_move_map_t that was deleted already");
    kiln_move_map_delete(dead); /* twice: ignored */
    FAILS(kiln_move_map_translate(NULL, old_c, &pc, NULL), KILN_ERROR_INVALID_HANDLE,
          "map is NULL");
    FAILS(kiln_move_map_pinned(dead, pinned, 8, &n), KILN_ERROR_INVALID_HANDLE,
          "map is a kiln_move_map_t that was deleted already");
    FAILS(kiln_move_map_dropped_units(NULL, units, 16, &n), KILN_ERROR_INVALID_HANDLE,
          "map is NULL");
    FAILS(kiln_move_map_moved_units(NULL, units, 16, &n), KILN_ERROR_INVALID_HANDLE,
          "map is NULL");

    /* Pinned: stays where it is. */
    v.drop = 0;
    v.pin = ud;
    old_konst = lookup(s, "konst");
    OK(kiln_jit_compact(jit, decide, &v, &report, &map));
    CHECK(report.pinned == 1 && report.dropped == 0 && times_add_up(&report));
    CHECK(lookup(s, "konst") == old_konst && AS_FN(fn_l, old_konst)() == 78);
    CHECK(AS_FN(fn_l, lookup(s, "c"))() == 2);
    OK(kiln_move_map_pinned(map, pinned, 8, &n));
    CHECK(n == 1 && pinned[0].unit == ud && pinned[0].reason == KILN_PIN_VERDICT &&
          pinned[0].user == 0);
    OK(kiln_move_map_dropped_units(map, units, 16, &n));
    CHECK(n == 0);
    kiln_move_map_delete(map);

    /* A fixed-region unit calling c keeps no relink records: c is pinned, and the report names
       the user. */
    v.pin = 0;
    g = graph_with("fixed_caller", "fixed_calls_c", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "c", -4));
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &ufc));
    kiln_graph_delete(g);
    CHECK(AS_FN(fn_l, lookup(s, "fixed_calls_c"))() == 2);
    OK(kiln_jit_compact(jit, decide, &v, &report, &map));
    OK(kiln_move_map_pinned(map, pinned, 8, &n));
    CHECK(n == 1 && pinned[0].unit == uc && pinned[0].reason == KILN_PIN_USED_WITHOUT_RELINK &&
          pinned[0].user == ufc);
    CHECK(report.pinned == 1);
    CHECK(AS_FN(fn_l, lookup(s, "fixed_calls_c"))() == 2);
    kiln_move_map_delete(map);

    kiln_jit_delete(jit);
    kiln_session_delete(s);
    printf("compact: %d checks passed\n", checks_passed);
    return 0;
}
