/* Misuse of the JIT API from C: NULL, deleted and foreign JIT handles, bad zone
   configurations, unknown regions and kinds, stale units and sites, the wrong region for a
   write, bad annotations. Each is an error with a readable message; nothing crashes (this
   program also runs under valgrind). */
#include "jit_code.h"

static void handles_and_configs(kiln_session_t *s) {
    kiln_zone_config_t config = {0};
    kiln_zone_info_t info;
    kiln_jit_t *jit, *dead;
    kiln_graph_t *g;
    kiln_unit_t u;
    uint64_t epoch;
    size_t n;

    FAILS(kiln_jit_zone(NULL, &info), KILN_ERROR_INVALID_HANDLE, "kiln_jit_zone: jit is NULL");
    FAILS(kiln_jit_remove(NULL, 1), KILN_ERROR_INVALID_HANDLE, "jit is NULL");
    FAILS(kiln_jit_grace_start((kiln_jit_t *)s, &epoch), KILN_ERROR_INVALID_HANDLE,
          "jit is a kiln_session_t, not a kiln_jit_t");
    FAILS(kiln_jit_heap_refs((kiln_jit_t *)(uintptr_t)0x1234, NULL, 0, &n),
          KILN_ERROR_INVALID_HANDLE, "is not a kiln_jit_t kiln returned");

    FAILS(kiln_jit_new(s, NULL, &jit), KILN_ERROR_INVALID_ARGUMENT, "config is NULL");
    FAILS(kiln_jit_new(NULL, &config, &jit), KILN_ERROR_INVALID_HANDLE, "s is NULL");
    FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_INVALID_ARGUMENT, "config->size is 0");
    config.size = 1 << 20;
    FAILS(kiln_jit_new(s, &config, NULL), KILN_ERROR_INVALID_ARGUMENT, "out is NULL");
    config.fixed_size = 1 << 20;
    FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_USAGE,
          "the fixed region must be smaller than the zone");
    config.fixed_size = 0;
    config.placement = 9;
    FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_INVALID_ARGUMENT,
          "config->placement 9 is not a KILN_ZONE_* placement");
    config.placement = KILN_ZONE_WITHIN_REACH;
    FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_INVALID_ARGUMENT, "needs config->reach");
    config.reach_count = 2;
    FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_INVALID_ARGUMENT,
          "config->reach is NULL but its length is 2");
    {
        uint64_t far_apart[2] = {0x10000, 0x7f0000000000ull};
        config.reach = far_apart;
        FAILS(kiln_jit_new(s, &config, &jit), KILN_ERROR_USAGE,
              "reaches both 0x10000 and 0x7f0000000000");
    }
    {
        /* Near a host function: the zone is within 2 GiB of it. */
        uint64_t here = (uint64_t)(uintptr_t)&handles_and_configs;
        config.placement = KILN_ZONE_NEAR;
        config.address = here;
        OK(kiln_jit_new(s, &config, &jit));
        OK(kiln_jit_zone(jit, &info));
        CHECK(info.base + info.size - here < (1ull << 31) || here - info.base < (1ull << 31));
        kiln_jit_delete(jit);
    }

    /* A deleted JIT. */
    dead = new_jit(s);
    kiln_jit_delete(dead);
    FAILS(kiln_jit_zone(dead, &info), KILN_ERROR_INVALID_HANDLE,
          "jit is a kiln_jit_t that was deleted already");
    kiln_jit_delete(dead); /* twice: ignored */
    kiln_jit_delete(NULL);
    OK(kiln_graph_new("g", &g));
    FAILS(kiln_jit_link(dead, KILN_REGION_METHOD, g, &u), KILN_ERROR_INVALID_HANDLE,
          "deleted already");
    FAILS(kiln_jit_pic_build_named(dead, NULL, NULL, "miss", NULL, NULL, 0),
          KILN_ERROR_INVALID_HANDLE, "deleted already");
    FAILS(kiln_jit_pic_grow_named(NULL, NULL, 1, "target", NULL), KILN_ERROR_INVALID_HANDLE,
          "jit is NULL");
    kiln_graph_delete(g);
}

static void units_sites_regions(kiln_session_t *s) {
    const uint8_t answer[] = MOVABS_RET, one[] = RETURNS(1), tail[] = TAIL_JMP;
    kiln_jit_t *jit = new_jit(s);
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t u, fixed;
    kiln_region_t region;
    kiln_site_t site, sites[2], made_up;
    kiln_ic_t ic;
    kiln_pic_config_t pc = {0};
    kiln_write_t w;
    uint8_t buf[8] = {0};
    int on_stack = 0;
    size_t n;

    /* Annotations. */
    g = graph_with("bad", "answer", answer, sizeof answer, NULL);
    FAILS(kiln_graph_add_site(g, "answer", 8, 7), KILN_ERROR_INVALID_ARGUMENT,
          "7 is not a kiln_site_kind_t");
    FAILS(kiln_graph_add_heap_ref(g, "answer", 8, 3), KILN_ERROR_INVALID_ARGUMENT,
          "4 or 8 bytes wide, not 3");
    FAILS(kiln_graph_add_site(g, NULL, 8, KILN_SITE_ABS64), KILN_ERROR_INVALID_ARGUMENT,
          "symbol is NULL");
    FAILS(kiln_jit_link(jit, 9, g, &u), KILN_ERROR_INVALID_ARGUMENT,
          "9 is not a kiln_region_t");
    FAILS(kiln_jit_link(jit, KILN_REGION_METHOD, g, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "out_unit is NULL");
    OK(kiln_graph_add_site(g, "answer", 40, KILN_SITE_ABS64)); /* past its end */
    FAILS(kiln_jit_link(jit, KILN_REGION_METHOD, g, &u), KILN_ERROR_MALFORMED,
          "lies past its end");
    kiln_graph_delete(g);
    g = graph_with("bad2", "answer", answer, sizeof answer, NULL);
    OK(kiln_graph_add_site(g, "answer", 6, KILN_SITE_ABS64)); /* not 8-aligned */
    FAILS(kiln_jit_link(jit, KILN_REGION_METHOD, g, &u), KILN_ERROR_MALFORMED,
          "is not aligned to 8");
    kiln_graph_delete(g);
    g = graph_with("bad3", "answer", answer, sizeof answer, NULL);
    OK(kiln_graph_add_heap_ref(g, "nobody", 0, 8));
    FAILS(kiln_jit_link(jit, KILN_REGION_METHOD, g, &u), KILN_ERROR_MALFORMED,
          "annotation names nobody, which the graph does not define");
    kiln_graph_delete(g);

    /* A good unit, and a fixed one. */
    g = graph_with("good", "answer", answer, sizeof answer, NULL);
    OK(kiln_graph_add_site(g, "answer", 8, KILN_SITE_ABS64));
    b = add_fn(g, "tail", tail, sizeof tail);
    OK(kiln_graph_add_edge(g, b, 4, KILN_EDGE_X86_64_BRANCH_PCREL32, "one", -4));
    OK(kiln_graph_add_site(g, "tail", 4, KILN_SITE_REL32));
    add_fn(g, "one", one, sizeof one);
    OK(kiln_jit_link(jit, KILN_REGION_METHOD, g, &u));
    kiln_graph_delete(g);
    g = graph_with("fixed", "fixed_one", one, sizeof one, NULL);
    OK(kiln_jit_link(jit, KILN_REGION_FIXED, g, &fixed));
    kiln_graph_delete(g);
    OK(kiln_jit_unit_sites(jit, u, sites, 2, &n));
    CHECK(n == 2);
    site = sites[0];

    FAILS(kiln_jit_unit_sites(jit, u, NULL, 2, &n), KILN_ERROR_INVALID_ARGUMENT,
          "out_sites is NULL or misaligned but its capacity is 2");
    FAILS(kiln_jit_unit_sites(jit, 999, sites, 2, &n), KILN_ERROR_UNKNOWN_UNIT,
          "unit 999 is not a live unit");
    FAILS(kiln_jit_retarget(jit, NULL, 0), KILN_ERROR_INVALID_ARGUMENT, "site is NULL");
    /* A call site cannot reach beyond 2 GiB: refused, the site unchanged. */
    FAILS(kiln_jit_retarget(jit, &sites[1], sites[1].addr + (1ull << 33)), KILN_ERROR_STALE,
          "is out of reach of the rel32");
    CHECK(AS_FN(fn_l, lookup(s, "tail"))() == 1);
    /* An Imm32 value that does not fit, an unknown kind, a made-up site. */
    made_up = site;
    made_up.kind = 5;
    FAILS(kiln_jit_set_value(jit, &made_up, 1), KILN_ERROR_INVALID_ARGUMENT,
          "5 is not a kiln_site_kind_t");
    made_up.kind = KILN_SITE_ABS64;
    made_up.addr += 8;
    FAILS(kiln_jit_set_value(jit, &made_up, 1), KILN_ERROR_STALE,
          "belongs to no live unit of this zone");
    /* Sites and writes never go to memory outside the zone. */
    made_up.addr = (uint64_t)(uintptr_t)&on_stack;
    FAILS(kiln_jit_set_value(jit, &made_up, 1), KILN_ERROR_STALE, "belongs to no live unit");
    CHECK(on_stack == 0);
    /* The wrong region: a write must lie inside the zone's fixed or method region. */
    w.addr = (uint64_t)(uintptr_t)&on_stack;
    w.bytes = (const uint8_t *)"\1\0\0\0";
    w.len = 4;
    FAILS(kiln_jit_write(jit, &w, 1), KILN_ERROR_STALE,
          "is not inside one part of this zone's fixed or method region");
    CHECK(on_stack == 0);
    w.addr = site.addr + 4;
    w.len = 64; /* past the end of the unit's segment */
    w.bytes = buf; /* (never read: refused first) */
    FAILS(kiln_jit_write(jit, &w, 1), KILN_ERROR_STALE, "");
    FAILS(kiln_jit_write(jit, NULL, 1), KILN_ERROR_INVALID_ARGUMENT, "writes is NULL");
    FAILS(kiln_jit_read(jit, site.addr, NULL, 8), KILN_ERROR_INVALID_ARGUMENT,
          "buf is NULL but its length is 8");
    OK(kiln_jit_read(jit, site.addr, buf, 8));

    /* Inline caches and PICs of the wrong kinds of sites. */
    made_up = site;
    made_up.kind = KILN_SITE_IMM32;
    FAILS(kiln_jit_ic_new(jit, &site, &made_up, 0, &ic), KILN_ERROR_STALE,
          "an inline cache's target is a Rel32 or Abs64 site");
    FAILS(kiln_jit_ic_new(jit, &sites[1], &sites[1], 0, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "out_ic is NULL");
    pc.key_register = KILN_PIC_KEY_RDI;
    pc.key_width = KILN_PIC_KEY_32;
    FAILS(kiln_jit_pic_build(jit, &sites[1], &pc, NULL, 0), KILN_ERROR_INVALID_ARGUMENT,
          "config->miss is 0");
    pc.miss = lookup(s, "one");
    pc.key_register = 4; /* %rsp */
    FAILS(kiln_jit_pic_build(jit, &sites[1], &pc, NULL, 0), KILN_ERROR_INVALID_ARGUMENT,
          "4 is not a KILN_PIC_KEY_* register");
    pc.key_register = KILN_PIC_KEY_RDI;
    FAILS(kiln_jit_pic_grow(jit, &sites[1], 1, pc.miss, NULL), KILN_ERROR_STALE,
          "has no PIC (kiln_jit_pic_build makes one)");
    FAILS(kiln_jit_update_heap_refs(jit, NULL, NULL, NULL), KILN_ERROR_INVALID_ARGUMENT,
          "forward is NULL");

    /* A stale unit: removed, then everything about it is refused. */
    OK(kiln_jit_unit_region(jit, fixed, &region));
    CHECK(region == KILN_REGION_FIXED);
    OK(kiln_jit_remove(jit, u));
    FAILS(kiln_jit_remove(jit, u), KILN_ERROR_UNKNOWN_UNIT, "is not a live unit");
    FAILS(kiln_jit_unit_region(jit, u, &region), KILN_ERROR_UNKNOWN_UNIT, "is not a live unit");
    FAILS(kiln_jit_unit_sites(jit, u, sites, 2, &n), KILN_ERROR_UNKNOWN_UNIT,
          "is not a live unit");
    FAILS(kiln_jit_set_value(jit, &site, 1), KILN_ERROR_STALE, "which is not live");
    FAILS(kiln_jit_retarget(jit, &sites[1], lookup(s, "fixed_one")), KILN_ERROR_STALE,
          "which is not live");
    FAILS(kiln_jit_pic_build_named(jit, &sites[1], &pc, "fixed_one", NULL, NULL, 0),
          KILN_ERROR_STALE, "which is not live");
    FAILS(kiln_jit_pic_grow_named(jit, &sites[1], 1, "fixed_one", NULL), KILN_ERROR_STALE,
          "which is not live");
    FAILS(kiln_jit_pic_build_named(jit, NULL, &pc, "fixed_one", NULL, NULL, 0),
          KILN_ERROR_INVALID_ARGUMENT, "site is NULL");
    FAILS(kiln_jit_read(jit, (uint64_t)(uintptr_t)&on_stack, buf, 4), KILN_ERROR_STALE,
          "is not inside one part of this zone's fixed or method region");
    /* A session unit that is not in the zone is not a zone unit. */
    g = graph_with("outside", "outside_fn", one, sizeof one, NULL);
    OK(kiln_session_link_graph(s, g, &u));
    kiln_graph_delete(g);
    FAILS(kiln_jit_unit_region(jit, u, &region), KILN_ERROR_UNKNOWN_UNIT,
          "is not a live unit of this zone");
    FAILS(kiln_jit_redefine(jit, u, NULL, NULL), KILN_ERROR_UNKNOWN_UNIT, "of this zone");
    FAILS(kiln_jit_redefine_name(jit, "nothing_defines_this", NULL, NULL),
          KILN_ERROR_INVALID_HANDLE, "g is NULL");
    OK(kiln_session_remove(s, u));
    kiln_jit_delete(jit);
}

int main(void) {
    kiln_session_t *s;
    OK(kiln_session_new(&s));
    OK(kiln_session_set_debug(s, 0, NULL));
    handles_and_configs(s);
    units_sites_regions(s);
    kiln_session_delete(s);
    printf("jit_misuse: %d checks passed\n", checks_passed);
    return 0;
}
