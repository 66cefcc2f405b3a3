/* Misuse from C: NULL, deleted, foreign and made-up handles, NULL pointers, removed units,
   undefined names, names that are not UTF-8, unknown enum values and flags, bad inputs. Each
   is an error with a readable message; nothing crashes (this program also runs under valgrind).
   Usage: misuse adder.o */
#include "check.h"

static int host_scale(int x) { return x; }

static void handles(void) {
    kiln_session_t *s, *dead;
    kiln_graph_t *g;
    kiln_unit_t u;
    kiln_block_t b;
    kiln_section_t sec;
    uint64_t addr;
    int on_stack = 0;
    const char *m = NULL;
    size_t n = 0;

    FAILS(kiln_session_link(NULL, &u), KILN_ERROR_INVALID_HANDLE, "kiln_session_link: s is NULL");
    FAILS(kiln_session_new(NULL), KILN_ERROR_INVALID_ARGUMENT, "out is NULL");
    OK(kiln_session_new(&dead));
    kiln_session_delete(dead);
    FAILS(kiln_session_lookup(dead, "x", &addr), KILN_ERROR_INVALID_HANDLE, "deleted already");
    kiln_session_delete(dead); /* twice: ignored */
    kiln_session_delete(NULL);

    OK(kiln_graph_new("g", &g));
    FAILS(kiln_session_link((kiln_session_t *)g, &u), KILN_ERROR_INVALID_HANDLE,
          "s is a kiln_graph_t, not a kiln_session_t");
    OK(kiln_session_new(&s));
    FAILS(kiln_graph_add_function((kiln_graph_t *)s, "f", NULL, 0, &b),
          KILN_ERROR_INVALID_HANDLE, "g is a kiln_session_t, not a kiln_graph_t");
    FAILS(kiln_session_link((kiln_session_t *)&on_stack, &u), KILN_ERROR_INVALID_HANDLE,
          "is not a kiln_session_t kiln returned");
    FAILS(kiln_session_link((kiln_session_t *)(uintptr_t)0x1234, &u), KILN_ERROR_INVALID_HANDLE,
          "is not a kiln_session_t kiln returned");
    kiln_graph_delete(g);
    FAILS(kiln_graph_add_section(g, ".text", KILN_PROT_READ_EXEC, &sec),
          KILN_ERROR_INVALID_HANDLE, "deleted already");
    kiln_graph_delete(g);
    kiln_session_delete(s);

    /* Errors about errors. */
    kiln_error_message(NULL, &m, &n);
    CHECK(m != NULL && strstr(m, "not a live kiln_error_t") != NULL && strlen(m) == n);
    kiln_error_message(NULL, NULL, NULL);
    CHECK(kiln_error_kind(NULL) == KILN_ERROR_INVALID_HANDLE);
    kiln_error_delete(NULL);
    {
        kiln_error_t *e = kiln_error_new(NULL);
        CHECK(kiln_error_kind(e) == KILN_ERROR_CALLBACK);
        kiln_error_delete(e);
        kiln_error_delete(e); /* twice: ignored */
        CHECK(kiln_error_kind(e) == KILN_ERROR_INVALID_HANDLE);
        e = kiln_error_new("bad \xff byte");
        kiln_error_message(e, &m, &n);
        CHECK(strstr(m, "bad ") == m && n > 5);
        kiln_error_delete(e);
    }
    FAILS(kiln_generated_address(NULL, 1), KILN_ERROR_INVALID_HANDLE, "answer is NULL");
}

static void arguments(const char *object) {
    const char *with_null[] = {"puts", NULL};
    const char bad_utf8[] = {'n', 'a', (char)0xff, 'e', 0};
    kiln_session_t *s;
    kiln_graph_t *g;
    kiln_unit_t u, list[2];
    kiln_block_t b;
    kiln_section_t sec;
    uint64_t addr;
    size_t count;
    int32_t status;

    OK(kiln_session_new(&s));
    OK(kiln_session_set_debug(s, 0, NULL));
    FAILS(kiln_session_add_file(s, NULL), KILN_ERROR_INVALID_ARGUMENT, "path is NULL");
    FAILS(kiln_session_add_file(s, "/nonexistent/x.o"), KILN_ERROR_IO, "/nonexistent/x.o");
    FAILS(kiln_session_add_object(s, "x.o", NULL, 10), KILN_ERROR_INVALID_ARGUMENT, "bytes is NULL but its length is 10");
    /* A missing -l library: not found, with where kiln looked. */
    FAILS(kiln_session_add_library(s, "definitely_not_a_library_kiln"), KILN_ERROR_NOT_FOUND,
          "cannot find library -ldefinitely_not_a_library_kiln");
    FAILS(kiln_session_define(s, bad_utf8, 1), KILN_ERROR_INVALID_ARGUMENT, "name is not valid UTF-8");
    FAILS(kiln_session_lookup(s, bad_utf8, &addr), KILN_ERROR_INVALID_ARGUMENT, "not valid UTF-8");
    FAILS(kiln_session_lookup(s, NULL, &addr), KILN_ERROR_INVALID_ARGUMENT, "name is NULL");
    FAILS(kiln_session_set_allow_list(s, NULL, 2), KILN_ERROR_INVALID_ARGUMENT, "names is NULL");
    FAILS(kiln_session_set_allow_list(s, with_null, 2), KILN_ERROR_INVALID_ARGUMENT, "names[1] is NULL");
    FAILS(kiln_session_set_debug(s, 0x100, NULL), KILN_ERROR_INVALID_ARGUMENT, "sinks 0x100");
    FAILS(kiln_session_set_debug(s, KILN_DEBUG_GDB, "/tmp"), KILN_ERROR_INVALID_ARGUMENT, "KILN_DEBUG_JITDUMP");
    FAILS(kiln_session_set_search_order(s, 42, NULL, 0), KILN_ERROR_INVALID_ARGUMENT, "scope 42");
    FAILS(kiln_session_create_scope(s, "p", NULL), KILN_ERROR_INVALID_ARGUMENT, "out_scope is NULL");

    /* A NULL out-pointer is reported before anything is done: the inputs stay for the next
       link, and a unit is not removed. */
    OK(kiln_session_define(s, "host_scale", (uint64_t)(uintptr_t)&host_scale));
    OK(kiln_session_add_file(s, object));
    FAILS(kiln_session_link(s, NULL), KILN_ERROR_INVALID_ARGUMENT, "out_unit is NULL");
    OK(kiln_session_link(s, &u));
    FAILS(kiln_session_remove_with_dependents(s, u, list, 2, NULL), KILN_ERROR_INVALID_ARGUMENT, "out_count is NULL");
    FAILS(kiln_session_dependents(s, u, NULL, 2, &count), KILN_ERROR_INVALID_ARGUMENT, "out_units is NULL or misaligned but its capacity is 2");
    addr = lookup(s, "add");

    /* Units and names. */
    FAILS(kiln_session_remove(s, 999), KILN_ERROR_UNKNOWN_UNIT, "unit 999 is not a live unit");
    FAILS(kiln_session_lookup(s, "not_defined_anywhere", &addr), KILN_ERROR_UNDEFINED, "not_defined_anywhere");
    FAILS(kiln_session_call_void(s, "not_defined_anywhere"), KILN_ERROR_USAGE, "not_defined_anywhere");
    FAILS(kiln_session_call_void(s, "counter"), KILN_ERROR_USAGE, "counter is not a function");
    FAILS(kiln_session_run_main(s, "add", NULL, 1, &status), KILN_ERROR_INVALID_ARGUMENT, "argv is NULL");
    FAILS(kiln_session_patch(s, 0x10, (const uint8_t *)"abcd", 4), KILN_ERROR_USAGE, "not in a slab");
    OK(kiln_session_remove(s, u));
    FAILS(kiln_session_remove(s, u), KILN_ERROR_UNKNOWN_UNIT, "unit 1 is not a live unit");
    FAILS(kiln_session_lookup(s, "add", &addr), KILN_ERROR_UNDEFINED, "add");

    /* Graph numbers and enums. */
    OK(kiln_graph_new("bad", &g));
    FAILS(kiln_graph_new(bad_utf8, &g), KILN_ERROR_INVALID_ARGUMENT, "not valid UTF-8");
    FAILS(kiln_graph_add_section(g, ".x", 0, &sec), KILN_ERROR_INVALID_ARGUMENT, "not a kiln_prot_t");
    FAILS(kiln_graph_add_block(g, 7, NULL, 0, 1, &b), KILN_ERROR_INVALID_ARGUMENT, "section 7 is not a section");
    OK(kiln_graph_add_section(g, ".text.bad", KILN_PROT_READ_EXEC, &sec));
    OK(kiln_graph_add_block(g, sec, (const uint8_t *)"\xc3", 1, 3, &b));
    FAILS(kiln_graph_add_edge(g, b, 0, 999, "x", 0), KILN_ERROR_INVALID_ARGUMENT, "999 is not a kiln_edge_kind_t");
    FAILS(kiln_graph_add_edge(g, 5, 0, KILN_EDGE_X86_64_DELTA32, "x", 0), KILN_ERROR_INVALID_ARGUMENT, "block 5");
    FAILS(kiln_graph_add_symbol(g, b, "f", 0, 1, 9, 0), KILN_ERROR_INVALID_ARGUMENT, "not a kiln_visibility_t");
    FAILS(kiln_graph_add_symbol(g, b, "f", 0, 1, KILN_VISIBILITY_DEFAULT, 0x80), KILN_ERROR_INVALID_ARGUMENT, "flags 0x80");
    FAILS(kiln_graph_set_frame_pointer(g, 3), KILN_ERROR_INVALID_ARGUMENT, "block 3");
    /* Alignment 3 is caught by kiln when linking, naming graph and section. */
    FAILS(kiln_session_link_graph(s, g, &u), KILN_ERROR_MALFORMED, "alignment 3 is not a power of two");
    kiln_graph_delete(g);
    kiln_session_delete(s);

    /* A malformed object: the link says so (in a session of its own, since failed inputs stay). */
    OK(kiln_session_new(&s));
    OK(kiln_session_add_object(s, "garbage.o", (const uint8_t *)"\x7f" "ELF garbage", 12));
    FAILS(kiln_session_link(s, &u), KILN_ERROR_MALFORMED, "garbage.o");
    kiln_session_delete(s);
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    handles();
    arguments(argv[1]);
    printf("misuse: %d checks passed\n", checks_passed);
    return 0;
}
