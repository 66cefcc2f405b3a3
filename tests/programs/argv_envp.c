// main(argc, argv, envp): arguments after `--` reach the program; the environment is the process's.
// argv[0] differs between a native run and kiln (input name), so it is not printed.
// kiln-test: args=alpha beta --gamma=3 ""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv, char **envp) {
    printf("argc=%d\n", argc);
    for (int i = 1; i < argc; i++) printf("argv[%d]=\"%s\"\n", i, argv[i]);
    int failures = argv[argc] != NULL;
    const char *found = NULL;
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "KILN_TEST_ENV=", 14) == 0) found = *e + 14;
    printf("envp KILN_TEST_ENV=%s\n", found ? found : "(unset)");
    const char *via_getenv = getenv("KILN_TEST_ENV");
    printf("getenv KILN_TEST_ENV=%s\n", via_getenv ? via_getenv : "(unset)");
    failures += !found || !via_getenv || strcmp(found, via_getenv) != 0;
    return failures + (argc == 5 ? 0 : 10);
}
