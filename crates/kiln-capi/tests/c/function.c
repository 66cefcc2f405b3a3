/* kiln_session_link_function: a JIT's compiled function handed over without building a graph —
   calls between such functions and into the host, scopes, removal and redefinition, and every
   bad argument refused with nothing linked. */
#include "check.h"

static const uint8_t ANSWER[] = {0xb8, 42, 0, 0, 0, 0xc3};     /* mov $42,%eax; ret */
static const uint8_t CALL_THEN_DOUBLE[] = {0xe8, 0, 0, 0, 0,   /* call <edge>       */
                                           0x01, 0xc0, 0xc3}; /* add %eax,%eax; ret */
static const uint8_t SEVEN[] = {0xb8, 7, 0, 0, 0, 0xc3};       /* mov $7,%eax; ret  */

/* What the JIT'd code calls in the host. */
static int host_value(void) { return 5; }

static kiln_edge_t call_to(const char *target) {
    kiln_edge_t e = {1, KILN_EDGE_X86_64_BRANCH_PCREL32, target, -4};
    return e;
}

static int call(kiln_session_t *s, const char *name) {
    return AS_FN(int (*)(void), lookup(s, name))();
}

static void calls(kiln_session_t *s) {
    kiln_unit_t answer = 0, twice = 0, host = 0;
    kiln_edge_t e = call_to("answer");
    OK(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "answer", ANSWER, sizeof ANSWER, NULL, 0,
                                  &answer));
    OK(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "twice", CALL_THEN_DOUBLE,
                                  sizeof CALL_THEN_DOUBLE, &e, 1, &twice));
    CHECK(answer != 0 && twice != 0 && answer != twice);
    CHECK(call(s, "answer") == 42);
    CHECK(call(s, "twice") == 84);

    /* Into the host, through a name the session was given. */
    OK(kiln_session_define(s, "host_value", (uint64_t)(uintptr_t)host_value));
    e = call_to("host_value");
    OK(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "twice_host", CALL_THEN_DOUBLE,
                                  sizeof CALL_THEN_DOUBLE, &e, 1, &host));
    CHECK(call(s, "twice_host") == 10);

    /* `twice` binds to `answer`: removing `answer` is refused until `twice` goes. */
    FAILS(kiln_session_remove(s, answer), KILN_ERROR_HAS_DEPENDENTS, "");
    OK(kiln_session_remove(s, twice));
    OK(kiln_session_remove(s, answer));
    /* The name can be defined again, by a new unit. */
    OK(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "answer", SEVEN, sizeof SEVEN, NULL, 0,
                                  &answer));
    CHECK(call(s, "answer") == 7);
    OK(kiln_session_remove(s, answer));
    OK(kiln_session_remove(s, host));
}

static void scopes(kiln_session_t *s) {
    kiln_scope_t mine;
    kiln_unit_t u = 0, v = 0;
    uint64_t addr = 0;
    OK(kiln_session_create_scope(s, "mine", &mine));
    OK(kiln_session_link_function(s, mine, "only_mine", ANSWER, sizeof ANSWER, NULL, 0, &u));
    OK(kiln_session_lookup_symbol(s, mine, "only_mine", &addr, NULL, NULL));
    CHECK(addr != 0 && AS_FN(int (*)(void), addr)() == 42);
    FAILS(kiln_session_lookup(s, "only_mine", &addr), KILN_ERROR_UNDEFINED, "only_mine");
    FAILS(kiln_session_link_function(s, 999, "x", ANSWER, sizeof ANSWER, NULL, 0, &v),
          KILN_ERROR_INVALID_ARGUMENT, "scope");
    OK(kiln_session_remove(s, u));
}

/* Each bad call is an error, and nothing of it is linked. */
static void refused(kiln_session_t *s) {
    kiln_unit_t u = 0;
    uint64_t addr = 0;
    kiln_edge_t e = call_to("answer");
    OK(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "answer", ANSWER, sizeof ANSWER, NULL, 0,
                                  &u));

    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, NULL, ANSWER, sizeof ANSWER, NULL, 0,
                                     &u),
          KILN_ERROR_INVALID_ARGUMENT, "name");
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", NULL, 6, NULL, 0, &u),
          KILN_ERROR_INVALID_ARGUMENT, "code");
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", CALL_THEN_DOUBLE,
                                     sizeof CALL_THEN_DOUBLE, NULL, 1, &u),
          KILN_ERROR_INVALID_ARGUMENT, "edges");
    e.target = NULL;
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", CALL_THEN_DOUBLE,
                                     sizeof CALL_THEN_DOUBLE, &e, 1, &u),
          KILN_ERROR_INVALID_ARGUMENT, "edges[0].target");
    e = call_to("answer");
    e.kind = 9999;
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", CALL_THEN_DOUBLE,
                                     sizeof CALL_THEN_DOUBLE, &e, 1, &u),
          KILN_ERROR_INVALID_ARGUMENT, "9999");
    e = call_to("answer");
    e.offset = 6; /* a 4-byte field at 6 of 8 bytes */
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", CALL_THEN_DOUBLE,
                                     sizeof CALL_THEN_DOUBLE, &e, 1, &u),
          KILN_ERROR_MALFORMED, "outside its block");
    e = call_to("nowhere");
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "bad", CALL_THEN_DOUBLE,
                                     sizeof CALL_THEN_DOUBLE, &e, 1, &u),
          KILN_ERROR_UNRESOLVED, "nowhere");
    /* A second strong definition of a live name. */
    FAILS(kiln_session_link_function(s, KILN_SCOPE_DEFAULT, "answer", SEVEN, sizeof SEVEN, NULL,
                                     0, &u),
          KILN_ERROR_DUPLICATE, "answer");
    FAILS(kiln_session_lookup(s, "bad", &addr), KILN_ERROR_UNDEFINED, "bad");
    CHECK(call(s, "answer") == 42);
}

int main(void) {
    kiln_session_t *s;
    OK(kiln_session_new(&s));
    OK(kiln_session_set_debug(s, 0, NULL));
    calls(s);
    scopes(s);
    refused(s);
    kiln_session_delete(s);
    printf("function: %d checks passed\n", checks_passed);
    return 0;
}
