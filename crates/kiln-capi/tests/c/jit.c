/* kiln-jit from C: the zone and its regions, sites retargeted and set, the write window, a
   monomorphic inline cache (set at once, then pending until a reclaim), a PIC grown to
   megamorphic (targets by address, then by name), redefinition with the old code retired and reclaimed, heap references read and
   updated after a "moving GC". Each result is checked by calling the code. */
#include "jit_code.h"

static long obj_a = 111, obj_b = 222;

static void zone_and_sites(kiln_session_t *s, kiln_jit_t *jit) {
    const uint8_t one[] = RETURNS(1), two[] = RETURNS(2), answer[] = MOVABS_RET,
                  tail[] = TAIL_JMP;
    kiln_zone_info_t zone;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t fixed, method;
    kiln_region_t region;
    kiln_site_t sites[2];
    size_t n = 0;
    uint64_t one_addr, two_addr, answer_addr, value = 0;
    uint8_t bytes[8], back[8];
    kiln_write_t w;
    int i;

    OK(kiln_jit_zone(jit, &zone));
    CHECK(zone.base != 0 && zone.size >= (1 << 20));
    CHECK(zone.fixed_code == zone.base && zone.fixed_code_size > 0);
    CHECK(zone.method_code > zone.fixed_code && zone.method_code_size > 0);
    CHECK(zone.method_code + zone.method_code_size <= zone.base + zone.size);

    /* Runtime routines in the fixed region. */
    g = graph_with("runtime", "one", one, sizeof one, NULL);
    add_fn(g, "two", two, sizeof two);
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &fixed));
    kiln_graph_delete(g);
    OK(kiln_jit_unit_region(jit, fixed, &region));
    CHECK(region == KILN_REGION_FIXED);
    one_addr = lookup(s, "one");
    two_addr = lookup(s, "two");
    CHECK(one_addr >= zone.fixed_code && one_addr < zone.fixed_code + zone.fixed_code_size);

    /* Methods with a slot (movabs imm64) and a tail call through a rel32 site. */
    g = graph_with("methods", "answer", answer, sizeof answer, NULL);
    OK(kiln_graph_add_site(g, "answer", 8, KILN_SITE_ABS64));
    b = add_fn(g, "tail", tail, sizeof tail);
    OK(kiln_graph_add_edge(g, b, 4, KILN_EDGE_X86_64_BRANCH_PCREL32, "one", -4));
    OK(kiln_graph_add_site(g, "tail", 4, KILN_SITE_REL32));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &method));
    kiln_graph_delete(g);
    OK(kiln_jit_unit_region(jit, method, &region));
    CHECK(region == KILN_REGION_METHOD);
    answer_addr = lookup(s, "answer");
    CHECK(answer_addr >= zone.method_code &&
          answer_addr < zone.method_code + zone.method_code_size);
    OK(kiln_jit_unit_sites(jit, method, sites, 2, &n));
    CHECK(n == 2);
    CHECK(sites[0].unit == method && sites[0].kind == KILN_SITE_ABS64 &&
          sites[0].addr == answer_addr + 8);
    CHECK(sites[1].kind == KILN_SITE_REL32 && sites[1].addr == lookup(s, "tail") + 4);
    OK(kiln_jit_unit_sites(jit, fixed, NULL, 0, &n));
    CHECK(n == 0);

    CHECK(AS_FN(fn_l, answer_addr)() == 0);
    OK(kiln_jit_set_value(jit, &sites[0], 42));
    CHECK(AS_FN(fn_l, answer_addr)() == 42);
    CHECK(AS_FN(fn_l, lookup(s, "tail"))() == 1);
    OK(kiln_jit_retarget(jit, &sites[1], two_addr));
    CHECK(AS_FN(fn_l, lookup(s, "tail"))() == 2);
    OK(kiln_jit_retarget(jit, &sites[1], one_addr));
    CHECK(AS_FN(fn_l, lookup(s, "tail"))() == 1);
    /* The wrong operation for the kind of site: an error, nothing changed. */
    FAILS(kiln_jit_set_value(jit, &sites[1], 7), KILN_ERROR_STALE, "is a call: use kiln_jit_retarget");
    CHECK(AS_FN(fn_l, lookup(s, "tail"))() == 1);

    /* The write window: the VM's own patch of the slot, read back. */
    value = 0x1122334455667788ull;
    for (i = 0; i < 8; i++)
        bytes[i] = (uint8_t)(value >> (8 * i));
    w.addr = sites[0].addr;
    w.bytes = bytes;
    w.len = 8;
    OK(kiln_jit_write(jit, &w, 1));
    CHECK(AS_FN(fn_l, answer_addr)() == (long)value);
    OK(kiln_jit_read(jit, sites[0].addr, back, sizeof back));
    CHECK(memcmp(back, bytes, 8) == 0);
    /* A window with one write outside the zone writes nothing. */
    {
        kiln_write_t two_writes[2] = {{sites[0].addr, (const uint8_t *)"\0\0\0\0\0\0\0\0", 8},
                                      {(uint64_t)(uintptr_t)&obj_a, bytes, 8}};
        FAILS(kiln_jit_write(jit, two_writes, 2), KILN_ERROR_STALE,
              "is not inside one part of this zone's fixed or method region");
        CHECK(AS_FN(fn_l, answer_addr)() == (long)value);
    }
}

static void inline_cache(kiln_session_t *s, kiln_jit_t *jit) {
    /* long send(long cls): cmp $key,%edi (imm32 at 4); jne ic_miss; jmp target (rel32 at 16) */
    const uint8_t send[] = {0x66, 0x90, 0x81, 0xff, 0, 0, 0, 0, 0x0f, 0x85, 0, 0,
                            0,    0,    0x90, 0xe9, 0, 0, 0, 0},
                  miss[] = RETURNS_MINUS_1, c7[] = RETURNS(70), c8[] = RETURNS(80);
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t impls, unit;
    kiln_site_t sites[2];
    kiln_ic_t ic;
    kiln_ic_state_t st;
    kiln_reclaimed_t r;
    uint64_t epoch, cls7, cls8;
    size_t n;
    fn_l_l f;

    g = graph_with("ic_impls", "ic_miss", miss, sizeof miss, NULL);
    add_fn(g, "cls7", c7, sizeof c7);
    add_fn(g, "cls8", c8, sizeof c8);
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &impls));
    kiln_graph_delete(g);
    cls7 = lookup(s, "cls7");
    cls8 = lookup(s, "cls8");

    g = graph_with("send", "send", send, sizeof send, &b);
    OK(kiln_graph_add_edge(g, b, 10, KILN_EDGE_X86_64_BRANCH_PCREL32, "ic_miss", -4));
    OK(kiln_graph_add_edge(g, b, 16, KILN_EDGE_X86_64_BRANCH_PCREL32, "ic_miss", -4));
    OK(kiln_graph_add_site(g, "send", 4, KILN_SITE_IMM32));
    OK(kiln_graph_add_site(g, "send", 16, KILN_SITE_REL32));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    OK(kiln_jit_unit_sites(jit, unit, sites, 2, &n));
    CHECK(n == 2);
    f = AS_FN(fn_l_l, lookup(s, "send"));

    OK(kiln_jit_ic_new(jit, &sites[0], &sites[1], 0, &ic));
    OK(kiln_jit_ic_state(jit, &ic, &st));
    CHECK(st.state == KILN_IC_EMPTY);
    CHECK(f(7) == -1);
    /* Empty: set at once. */
    OK(kiln_jit_ic_set(jit, &ic, 7, cls7, &st));
    CHECK(st.state == KILN_IC_SET);
    CHECK(f(7) == 70 && f(8) == -1);
    /* Another target: emptied now, completed by a reclaim after a grace period. */
    OK(kiln_jit_ic_set(jit, &ic, 8, cls8, &st));
    CHECK(st.state == KILN_IC_PENDING);
    CHECK(f(7) == -1 && f(8) == -1);
    OK(kiln_jit_ic_state(jit, &ic, &st));
    CHECK(st.state == KILN_IC_PENDING && st.key == 8 && st.target == cls8);
    OK(kiln_jit_grace_start(jit, &epoch));
    OK(kiln_jit_reclaim(jit, epoch, &r));
    CHECK(r.ics_completed == 1 && r.ic_errors == 0);
    CHECK(f(8) == 80 && f(7) == -1);
    OK(kiln_jit_ic_state(jit, &ic, &st));
    CHECK(st.state == KILN_IC_SET && st.key == 8 && st.target == cls8);
    FAILS(kiln_jit_ic_set(jit, &ic, 0, cls7, NULL), KILN_ERROR_STALE,
          "empty key: kiln_jit_ic_clear empties it");
    OK(kiln_jit_ic_clear(jit, &ic));
    CHECK(f(8) == -1);
    /* A guard that is a call site is no inline cache key. */
    FAILS(kiln_jit_ic_new(jit, &sites[1], &sites[1], 0, &ic), KILN_ERROR_STALE,
          "an inline cache's key is an Imm32 or Abs64 site");
}

static void pic(kiln_session_t *s, kiln_jit_t *jit) {
    const uint8_t psend[] = TAIL_JMP, i1[] = RETURNS(10), i2[] = RETURNS(20),
                  i3[] = RETURNS(30), mega[] = RETURNS_MINUS_2, miss[] = RETURNS_MINUS_1;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t impls, unit;
    kiln_site_t site;
    kiln_pic_config_t config = {0};
    kiln_pic_case_t first;
    kiln_pic_state_t st;
    kiln_reclaimed_t r;
    uint64_t epoch;
    fn_l_l f;

    g = graph_with("pic_impls", "impl1", i1, sizeof i1, NULL);
    add_fn(g, "impl2", i2, sizeof i2);
    add_fn(g, "impl3", i3, sizeof i3);
    add_fn(g, "mega", mega, sizeof mega);
    add_fn(g, "pic_miss", miss, sizeof miss);
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &impls));
    kiln_graph_delete(g);

    g = graph_with("psend", "psend", psend, sizeof psend, &b);
    OK(kiln_graph_add_edge(g, b, 4, KILN_EDGE_X86_64_BRANCH_PCREL32, "pic_miss", -4));
    OK(kiln_graph_add_site(g, "psend", 4, KILN_SITE_REL32));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    site = only_site(jit, unit);
    f = AS_FN(fn_l_l, lookup(s, "psend"));
    CHECK(f(1) == -1);

    config.key_register = KILN_PIC_KEY_RDI;
    config.key_width = KILN_PIC_KEY_32;
    config.max_cases = 2;
    config.miss = lookup(s, "pic_miss");
    config.megamorphic = lookup(s, "mega");
    first.key = 1;
    first.target = lookup(s, "impl1");
    OK(kiln_jit_pic_build(jit, &site, &config, &first, 1));
    CHECK(f(1) == 10 && f(2) == -1);
    OK(kiln_jit_pic_state(jit, &site, &st));
    CHECK(!st.megamorphic && st.cases == 1 && st.stub != 0 && st.entry != 0);
    FAILS(kiln_jit_pic_grow(jit, &site, 1, lookup(s, "impl2"), &st), KILN_ERROR_USAGE,
          "cached already");
    OK(kiln_jit_pic_grow(jit, &site, 2, lookup(s, "impl2"), &st));
    CHECK(!st.megamorphic && st.cases == 2);
    CHECK(f(1) == 10 && f(2) == 20 && f(3) == -1);
    /* Past max_cases: the megamorphic handler. */
    OK(kiln_jit_pic_grow(jit, &site, 3, lookup(s, "impl3"), &st));
    CHECK(st.megamorphic);
    CHECK(f(1) == -2 && f(3) == -2);
    /* The two replaced stubs are retired until reclaimed. */
    {
        size_t n = 0;
        OK(kiln_jit_retired(jit, NULL, 0, &n));
        CHECK(n >= 2);
    }
    OK(kiln_jit_grace_start(jit, &epoch));
    OK(kiln_jit_reclaim(jit, epoch, &r));
    CHECK(r.freed == 2 && r.kept == 0);
}

static long host_forty(long key) { return 40 + 0 * key; }

/* A PIC whose targets are symbol names, resolved in the JIT's scope: functions of a fixed
   unit, a host function defined with kiln_session_define, a method-region function that is
   then redefined (the stub follows the name). Undefined names are refused before anything
   changes, naming the name. Uses pic()'s functions. */
static void pic_named(kiln_session_t *s, kiln_jit_t *jit) {
    const uint8_t nsend[] = TAIL_JMP, fifty[] = RETURNS(50), fifty_five[] = RETURNS(55);
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t unit, nimpl;
    kiln_site_t site;
    kiln_pic_config_t config = {0};
    kiln_pic_named_case_t cases[3] = {{1, "impl1"}, {4, "host_forty"}, {5, "nimpl"}},
                          bad[2] = {{1, "impl1"}, {2, "no_such_impl"}};
    kiln_pic_state_t st;
    kiln_reclaimed_t r;
    uint64_t epoch;
    fn_l_l f;

    OK(kiln_session_define(s, "host_forty", (uint64_t)(uintptr_t)&host_forty));
    g = graph_with("nimpl", "nimpl", fifty, sizeof fifty, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &nimpl));
    kiln_graph_delete(g);
    g = graph_with("nsend", "nsend", nsend, sizeof nsend, &b);
    OK(kiln_graph_add_edge(g, b, 4, KILN_EDGE_X86_64_BRANCH_PCREL32, "pic_miss", -4));
    OK(kiln_graph_add_site(g, "nsend", 4, KILN_SITE_REL32));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    site = only_site(jit, unit);
    f = AS_FN(fn_l_l, lookup(s, "nsend"));
    config.key_register = KILN_PIC_KEY_RDI;
    config.key_width = KILN_PIC_KEY_32;
    config.max_cases = 4;

    /* Refused, naming the name; the site has no PIC after. */
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, "pic_miss", NULL, bad, 2),
          KILN_ERROR_UNRESOLVED, "undefined symbols:\n  no_such_impl (a target of this PIC)");
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, "no_miss", NULL, cases, 3),
          KILN_ERROR_UNRESOLVED, "no_miss (a target of this PIC)");
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, "pic_miss", "no_mega", cases, 3),
          KILN_ERROR_UNDEFINED,
          "the PIC's megamorphic handler no_mega is not defined by a live unit");
    /* A host function given by kiln_session_define is a link's to bind, not a live unit's:
       no megamorphic handler (kiln-jit looks that up when the PIC overflows). */
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, "pic_miss", "host_forty", cases, 3),
          KILN_ERROR_UNDEFINED, "host_forty");
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, NULL, NULL, cases, 3),
          KILN_ERROR_INVALID_ARGUMENT, "miss is NULL");
    bad[1].target = NULL;
    FAILS(kiln_jit_pic_build_named(jit, &site, &config, "pic_miss", NULL, bad, 2),
          KILN_ERROR_INVALID_ARGUMENT, "cases[1].target is NULL");
    FAILS(kiln_jit_pic_state(jit, &site, &st), KILN_ERROR_STALE, "has no PIC");
    CHECK(f(1) == -1);

    OK(kiln_jit_pic_build_named(jit, &site, &config, "pic_miss", "mega", cases, 3));
    CHECK(f(1) == 10 && f(4) == 40 && f(5) == 50 && f(2) == -1);
    /* The name follows a redefinition of its unit. */
    g = graph_with("nimpl2", "nimpl", fifty_five, sizeof fifty_five, NULL);
    OK(kiln_jit_redefine(jit, nimpl, g, NULL));
    kiln_graph_delete(g);
    CHECK(f(5) == 55 && f(1) == 10);

    FAILS(kiln_jit_pic_grow_named(jit, &site, 2, "no_such_impl", &st), KILN_ERROR_UNRESOLVED,
          "no_such_impl (a target of this PIC)");
    FAILS(kiln_jit_pic_grow_named(jit, &site, 2, NULL, &st), KILN_ERROR_INVALID_ARGUMENT,
          "target is NULL");
    OK(kiln_jit_pic_state(jit, &site, &st));
    CHECK(!st.megamorphic && st.cases == 3);
    OK(kiln_jit_pic_grow_named(jit, &site, 2, "impl2", &st));
    CHECK(!st.megamorphic && st.cases == 4 && f(2) == 20 && f(3) == -1);
    OK(kiln_jit_pic_grow_named(jit, &site, 3, "impl3", &st));
    CHECK(st.megamorphic && f(3) == -2 && f(1) == -2);
    /* The replaced stubs and nimpl's first version are retired until reclaimed. */
    OK(kiln_jit_grace_start(jit, &epoch));
    OK(kiln_jit_reclaim(jit, epoch, &r));
    CHECK(r.freed >= 3 && r.kept == 0);
}

static void redefinition(kiln_session_t *s, kiln_jit_t *jit) {
    const uint8_t v1[] = RETURNS(1), v2[] = RETURNS(2), v3[] = RETURNS(3), caller[] = CALL_RET;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t version, user, old_unit;
    kiln_redefined_t rd;
    kiln_reclaimed_t r;
    kiln_range_t ranges[8];
    kiln_region_t region;
    uint64_t old_addr, epoch;
    size_t n = 0;
    fn_l call;

    g = graph_with("version1", "version", v1, sizeof v1, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &version));
    kiln_graph_delete(g);
    g = graph_with("user", "call_version", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "version", -4));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &user));
    kiln_graph_delete(g);
    call = AS_FN(fn_l, lookup(s, "call_version"));
    CHECK(call() == 1);
    old_addr = lookup(s, "version");

    /* By unit. */
    g = graph_with("version2", "version", v2, sizeof v2, NULL);
    OK(kiln_jit_redefine(jit, version, g, &rd));
    kiln_graph_delete(g);
    CHECK(rd.old_unit == version && rd.new_unit != version);
    CHECK(rd.unreached == 0 && rd.unmapped == 0);
    CHECK(call() == 2);
    CHECK(lookup(s, "version") != old_addr);
    /* The old code stays for threads still in it, until reclaimed. */
    CHECK(AS_FN(fn_l, old_addr)() == 1);
    OK(kiln_jit_retired(jit, ranges, 8, &n));
    CHECK(n >= 1 && ranges[0].unit == version);
    CHECK(ranges[0].start <= old_addr && old_addr < ranges[0].start + ranges[0].size);
    OK(kiln_jit_grace_start(jit, &epoch));
    OK(kiln_jit_reclaim(jit, epoch, &r));
    CHECK(r.freed == 1 && r.kept == 0);
    OK(kiln_jit_retired(jit, NULL, 0, &n));
    CHECK(n == 0);
    FAILS(kiln_jit_unit_region(jit, version, &region), KILN_ERROR_UNKNOWN_UNIT,
          "is not a live unit");

    /* By name. */
    old_unit = rd.new_unit;
    g = graph_with("version3", "version", v3, sizeof v3, NULL);
    OK(kiln_jit_redefine_name(jit, "version", g, NULL));
    kiln_graph_delete(g);
    CHECK(call() == 3);
    OK(kiln_jit_grace_start(jit, &epoch));
    FAILS(kiln_jit_reclaim(jit, epoch + 5, NULL), KILN_ERROR_STALE, "has not begun");
    OK(kiln_jit_reclaim(jit, epoch, &r));
    CHECK(r.freed == 1);
    FAILS(kiln_jit_remove(jit, old_unit), KILN_ERROR_UNKNOWN_UNIT, "is not a live unit");
    OK(kiln_jit_remove(jit, user));
}

struct gc {
    int asked;
};

/* The "moving GC": obj_a moved to obj_b; the small reference's object moved too. */
static uint64_t forward(void *user, const kiln_heap_ref_t *r) {
    struct gc *gc = user;
    gc->asked++;
    if (r->width == 8 && r->value == (uint64_t)(uintptr_t)&obj_a)
        return (uint64_t)(uintptr_t)&obj_b;
    if (r->width == 4 && r->value == 0x1234)
        return 0x5678;
    return r->value;
}

static void heap_refs(kiln_session_t *s, kiln_jit_t *jit) {
    uint8_t get_obj[] = MOVABS_RET;
    /* 3-byte nop; mov $imm32, %eax (imm32 at 4); ret */
    uint8_t get_small[] = {0x0f, 0x1f, 0x00, 0xb8, 0x34, 0x12, 0, 0, 0xc3};
    uint64_t a = (uint64_t)(uintptr_t)&obj_a;
    kiln_graph_t *g;
    kiln_unit_t unit;
    kiln_heap_ref_t refs[4];
    struct gc gc = {0};
    size_t n = 0, changed = 0;
    int i;

    for (i = 0; i < 8; i++)
        get_obj[8 + i] = (uint8_t)(a >> (8 * i));
    g = graph_with("heap", "get_obj", get_obj, sizeof get_obj, NULL);
    add_fn(g, "get_small", get_small, sizeof get_small);
    OK(kiln_graph_add_heap_ref(g, "get_obj", 8, 8));
    OK(kiln_graph_add_heap_ref(g, "get_small", 4, 4));
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    CHECK(*AS_FN(long *(*)(void), lookup(s, "get_obj"))() == 111);

    OK(kiln_jit_heap_refs(jit, refs, 4, &n));
    CHECK(n == 2);
    if (refs[0].width == 4) { /* listed by address: put the 64-bit one first */
        kiln_heap_ref_t t = refs[0];
        refs[0] = refs[1];
        refs[1] = t;
    }
    CHECK(refs[0].unit == unit && refs[0].addr == lookup(s, "get_obj") + 8 &&
          refs[0].width == 8 && refs[0].value == a);
    CHECK(refs[1].addr == lookup(s, "get_small") + 4 && refs[1].width == 4 &&
          refs[1].value == 0x1234);

    OK(kiln_jit_update_heap_refs(jit, forward, &gc, &changed));
    CHECK(gc.asked == 2 && changed == 2);
    CHECK(*AS_FN(long *(*)(void), lookup(s, "get_obj"))() == 222);
    CHECK(AS_FN(fn_l, lookup(s, "get_small"))() == 0x5678);
    OK(kiln_jit_heap_refs(jit, refs, 4, &n));
    CHECK(n == 2);
    if (refs[0].width == 4) {
        kiln_heap_ref_t t = refs[0];
        refs[0] = refs[1];
        refs[1] = t;
    }
    CHECK(refs[0].value == (uint64_t)(uintptr_t)&obj_b && refs[1].value == 0x5678);

    /* Writing a list of values: all or nothing. */
    refs[1].value = 0x9abc;
    OK(kiln_jit_write_heap_refs(jit, &refs[1], 1));
    CHECK(AS_FN(fn_l, lookup(s, "get_small"))() == 0x9abc);
    refs[0].value = a;
    refs[1].value = 0x100000000ull; /* does not fit 32 bits */
    FAILS(kiln_jit_write_heap_refs(jit, refs, 2), KILN_ERROR_INVALID_ARGUMENT,
          "does not fit the 32-bit heap reference");
    CHECK(*AS_FN(long *(*)(void), lookup(s, "get_obj"))() == 222);
    refs[1].addr += 1;
    refs[1].value = 1;
    FAILS(kiln_jit_write_heap_refs(jit, refs, 2), KILN_ERROR_STALE,
          "is not a heap reference of a live unit");

    /* Removed with its unit. */
    OK(kiln_jit_remove(jit, unit));
    OK(kiln_jit_heap_refs(jit, NULL, 0, &n));
    CHECK(n == 0);
}

int main(void) {
    kiln_session_t *s;
    kiln_jit_t *jit;
    OK(kiln_session_new(&s));
    jit = new_jit(s);
    zone_and_sites(s, jit);
    inline_cache(s, jit);
    pic(s, jit);
    pic_named(s, jit);
    redefinition(s, jit);
    heap_refs(s, jit);
    kiln_jit_delete(jit);
    /* The JIT's units went with it. */
    FAILS(kiln_session_lookup(s, "answer", &(uint64_t){0}), KILN_ERROR_UNDEFINED, "answer");
    kiln_session_delete(s);
    printf("jit: %d checks passed\n", checks_passed);
    return 0;
}
