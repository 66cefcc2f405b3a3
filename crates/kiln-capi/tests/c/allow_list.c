/* An allow-list refuses every outside name not on it, naming each. Usage: allow_list uses_libc.o */
#include "check.h"

int main(int argc, char **argv) {
    const char *allowed[] = {"strlen"};
    kiln_session_t *s;
    kiln_unit_t unit = 0;
    kiln_error_t *e;
    const char *m;
    size_t n;
    CHECK(argc == 2);
    OK(kiln_session_new(&s));
    OK(kiln_session_set_allow_list(s, allowed, 1));
    OK(kiln_session_add_file(s, argv[1]));
    e = kiln_session_link(s, &unit);
    CHECK(e != NULL);
    kiln_error_message(e, &m, &n);
    CHECK(strstr(m, "strlen") == NULL); /* allowed: not mentioned */
    FAILS(e, KILN_ERROR_UNRESOLVED, "not on the allow-list:\n  malloc");

    /* An empty allow-list refuses strlen too. */
    OK(kiln_session_set_allow_list(s, NULL, 0));
    FAILS(kiln_session_link(s, &unit), KILN_ERROR_UNRESOLVED, "strlen");

    OK(kiln_session_clear_allow_list(s));
    OK(kiln_session_link(s, &unit));
    CHECK(AS_FN(size_t (*)(const char *), lookup(s, "text_length"))("kiln") == 4);
    kiln_session_delete(s);
    printf("allow_list: %d checks passed\n", checks_passed);
    return 0;
}
