/* An undefined symbol fails the link with a message naming it and who references it; the
   inputs stay added, so defining it and linking again works. Usage: undefined needs_missing.o */
#include "check.h"

static int host_missing(int x) { return x * 10; }

int main(int argc, char **argv) {
    kiln_session_t *s;
    kiln_unit_t unit = 0;
    CHECK(argc == 2);
    OK(kiln_session_new(&s));
    OK(kiln_session_add_file(s, argv[1]));
    FAILS(kiln_session_link(s, &unit), KILN_ERROR_UNRESOLVED, "missing_fn");
    FAILS(kiln_session_link(s, &unit), KILN_ERROR_UNRESOLVED, "needs_missing.o");
    CHECK(unit == 0); /* not written on failure */
    OK(kiln_session_define(s, "missing_fn", (uint64_t)(uintptr_t)&host_missing));
    OK(kiln_session_link(s, &unit));
    CHECK(AS_FN(int (*)(int), lookup(s, "use_missing"))(4) == 41);
    kiln_session_delete(s);
    printf("undefined: %d checks passed\n", checks_passed);
    return 0;
}
