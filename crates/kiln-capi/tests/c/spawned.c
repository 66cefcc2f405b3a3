/* A session whose code runs in a child kiln-executor: link there, run main and a void function
   there (their output is the child's, on our standard output).
   Usage: spawned EXECUTOR|- hello.o      ("-": let kiln find the executor)
          spawned --expect-not-found       (kiln must report that it cannot find one) */
#include "check.h"

int main(int argc, char **argv) {
    const char *args[] = {"hello", "one", "two"};
    kiln_session_t *s;
    kiln_unit_t unit;
    uint64_t addr;
    int32_t status = -1;

    if (argc == 2 && strcmp(argv[1], "--expect-not-found") == 0) {
        FAILS(kiln_session_new_spawned(NULL, &s), KILN_ERROR_NOT_FOUND, "cannot find kiln-executor");
        printf("spawned: %d checks passed\n", checks_passed);
        return 0;
    }
    CHECK(argc == 3);
    FAILS(kiln_session_new_spawned("/nonexistent/kiln-executor", &s), KILN_ERROR_EXECUTOR,
          "cannot start /nonexistent/kiln-executor");
    OK(kiln_session_new_spawned(strcmp(argv[1], "-") == 0 ? NULL : argv[1], &s));
    OK(kiln_session_add_file(s, argv[2]));
    OK(kiln_session_link(s, &unit));
    OK(kiln_session_run_initializers(s));
    OK(kiln_session_lookup(s, "main", &addr));
    CHECK(addr != 0);
    OK(kiln_session_run_main(s, "main", args, 3, &status));
    CHECK(status == 7);
    OK(kiln_session_call_void(s, "poke"));
    FAILS(kiln_session_call_void(s, "no_such_fn"), KILN_ERROR_USAGE, "no_such_fn");
    OK(kiln_session_remove(s, unit));
    kiln_session_delete(s);
    printf("spawned: %d checks passed\n", checks_passed);
    return 0;
}
