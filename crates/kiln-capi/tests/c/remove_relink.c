/* Units depend on units; removal is refused while dependents live, removes them with it on
   request, and a removed unit's number is an error from then on; a new version links in its
   place. Usage: remove_relink version1.o version_user.o version2.o */
#include "check.h"

int main(int argc, char **argv) {
    kiln_session_t *s;
    kiln_unit_t v1, user, v2, list[4];
    size_t count = 99;
    CHECK(argc == 4);
    OK(kiln_session_new(&s));
    OK(kiln_session_add_file(s, argv[1]));
    OK(kiln_session_link(s, &v1));
    OK(kiln_session_add_file(s, argv[2]));
    OK(kiln_session_link(s, &user));
    CHECK(AS_FN(int (*)(void), lookup(s, "twice_version"))() == 2);

    OK(kiln_session_dependents(s, v1, NULL, 0, &count));
    CHECK(count == 1);
    OK(kiln_session_dependents(s, v1, list, 4, &count));
    CHECK(count == 1 && list[0] == user);
    OK(kiln_session_dependencies(s, user, list, 4, &count));
    CHECK(count == 1 && list[0] == v1);
    OK(kiln_session_dependents(s, user, list, 4, &count));
    CHECK(count == 0);

    FAILS(kiln_session_remove(s, v1), KILN_ERROR_HAS_DEPENDENTS, "unit 1 cannot be removed: unit 2 binds to it");
    OK(kiln_session_remove_with_dependents(s, v1, list, 4, &count));
    CHECK(count == 2 && list[0] == user && list[1] == v1);
    FAILS(kiln_session_lookup(s, "version", list), KILN_ERROR_UNDEFINED, "version");
    FAILS(kiln_session_remove(s, v1), KILN_ERROR_UNKNOWN_UNIT, "unit 1 is not a live unit");
    FAILS(kiln_session_dependents(s, user, list, 4, &count), KILN_ERROR_UNKNOWN_UNIT, "unit 2");

    /* Version 2 in its place, and the user again (which now binds to version 2). */
    OK(kiln_session_add_file(s, argv[3]));
    OK(kiln_session_link(s, &v2));
    CHECK(v2 == 3);
    CHECK(AS_FN(int (*)(void), lookup(s, "version"))() == 2);
    OK(kiln_session_add_file(s, argv[2]));
    OK(kiln_session_link(s, &user));
    CHECK(AS_FN(int (*)(void), lookup(s, "twice_version"))() == 4);
    OK(kiln_session_remove(s, user));
    OK(kiln_session_remove(s, v2));
    kiln_session_delete(s);
    printf("remove_relink: %d checks passed\n", checks_passed);
    return 0;
}
