/* Link an object from a file and one from memory, run its constructor, call into it; the
   object calls back into this program through a definition. Usage: link_call adder.o */
#include "check.h"

static int host_scale(int x) { return x * 3; }

static void check_adder(kiln_session_t *s, int constructed) {
    int (*add)(int, int) = AS_FN(int (*)(int, int), lookup(s, "add"));
    int (*bump)(void) = AS_FN(int (*)(void), lookup(s, "bump"));
    int (*scaled)(int) = AS_FN(int (*)(int), lookup(s, "scaled"));
    int *counter = AS_FN(int *, lookup(s, "counter"));
    CHECK(add(2, 40) == 42);
    CHECK(*counter == (constructed ? 100 : 0));
    CHECK(bump() == *counter);
    CHECK(scaled(5) == 30);
}

int main(int argc, char **argv) {
    kiln_session_t *s;
    kiln_unit_t unit = 0;
    size_t len;
    uint8_t *bytes;
    CHECK(argc == 2);

    OK(kiln_session_new(&s));
    OK(kiln_session_define(s, "host_scale", (uint64_t)(uintptr_t)&host_scale));
    OK(kiln_session_add_file(s, argv[1]));
    OK(kiln_session_link(s, &unit));
    CHECK(unit == 1);
    /* Before the initializers: the constructor has not run. */
    CHECK(*AS_FN(int *, lookup(s, "counter")) == 0);
    OK(kiln_session_run_initializers(s));
    check_adder(s, 1);
    kiln_session_delete(s);

    /* The same object from memory, in a second session. */
    bytes = read_file(argv[1], &len);
    OK(kiln_session_new(&s));
    OK(kiln_session_define(s, "host_scale", (uint64_t)(uintptr_t)&host_scale));
    OK(kiln_session_add_object(s, "adder-in-memory.o", bytes, len));
    free(bytes); /* kiln copied it */
    OK(kiln_session_link(s, &unit));
    OK(kiln_session_run_initializers(s));
    check_adder(s, 1);
    kiln_session_delete(s);

    printf("link_call: %d checks passed (kiln %s)\n", checks_passed, kiln_version());
    return 0;
}
