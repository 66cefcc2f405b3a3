/* Definition generators with C callbacks: answering with an address, a graph, an object, or
   an address of code the callback links itself; "not mine"; a callback's error failing the
   link. Usage: generator gen_user.o gen_object.o */
#include "check.h"

struct vm {
    kiln_session_t *session;
    uint8_t *object;
    size_t object_len;
    int asked;
    int second_answer_refused;
    kiln_scope_t scope_seen;
    kiln_generated_t *kept;
};

static int host_triple(int x) { return 3 * x; }

/* A graph with one function returning `value`. */
static kiln_graph_t *returning(const char *name, int value) {
    uint8_t code[] = {0xb8, (uint8_t)value, 0, 0, 0, 0xc3};
    kiln_graph_t *g;
    kiln_block_t b;
    OK(kiln_graph_new(name, &g));
    OK(kiln_graph_add_function(g, name, code, sizeof code, &b));
    return g;
}

static kiln_error_t *generate(void *user, const char *name, size_t len, kiln_scope_t scope,
                              kiln_generated_t *answer) {
    struct vm *vm = user;
    kiln_error_t *e;
    vm->asked++;
    vm->scope_seen = scope;
    vm->kept = answer;
    CHECK(strlen(name) == len);
    if (strcmp(name, "host_triple") == 0) {
        e = kiln_generated_address(answer, (uint64_t)(uintptr_t)&host_triple);
        if (e)
            return e;
        e = kiln_generated_address(answer, 1); /* one answer per question */
        vm->second_answer_refused = e && kiln_error_kind(e) == KILN_ERROR_INVALID_ARGUMENT;
        kiln_error_delete(e);
        return NULL;
    }
    if (strcmp(name, "gen_graph_fn") == 0) {
        kiln_graph_t *g = returning("gen_graph_fn", 11);
        e = kiln_generated_graph(answer, g);
        kiln_graph_delete(g); /* kiln took a copy */
        return e;
    }
    if (strcmp(name, "gen_object_fn") == 0)
        return kiln_generated_object(answer, "gen_object.o", vm->object, vm->object_len);
    if (strcmp(name, "gen_linked_fn") == 0) {
        /* No kiln lock is held during a callback: link into the same session, answer the
           address. */
        kiln_graph_t *g = returning("gen_linked_fn", 17);
        kiln_unit_t u;
        uint64_t addr;
        e = kiln_session_link_graph(vm->session, g, &u);
        kiln_graph_delete(g);
        if (!e)
            e = kiln_session_lookup(vm->session, "gen_linked_fn", &addr);
        return e ? e : kiln_generated_address(answer, addr);
    }
    return NULL; /* not mine */
}

static kiln_error_t *refuse(void *user, const char *name, size_t len, kiln_scope_t scope,
                            kiln_generated_t *answer) {
    char msg[128];
    (void)user, (void)len, (void)scope, (void)answer;
    snprintf(msg, sizeof msg, "the VM has no function named %s", name);
    return kiln_error_new(msg);
}

static kiln_error_t *not_mine(void *user, const char *name, size_t len, kiln_scope_t scope,
                              kiln_generated_t *answer) {
    (void)name, (void)len, (void)scope, (void)answer;
    ++*(int *)user;
    return NULL;
}

int main(int argc, char **argv) {
    struct vm vm = {0};
    kiln_session_t *s;
    kiln_unit_t unit;
    int asked = 0;
    CHECK(argc == 3);
    vm.object = read_file(argv[2], &vm.object_len);

    /* Answers of every kind. */
    OK(kiln_session_new(&s));
    vm.session = s;
    OK(kiln_session_add_generator(s, KILN_SCOPE_DEFAULT, generate, &vm));
    OK(kiln_session_add_file(s, argv[1]));
    OK(kiln_session_link(s, &unit));
    CHECK(AS_FN(int (*)(void), lookup(s, "use_generated"))() == 3 + 11 + 13 + 17);
    CHECK(vm.asked == 4);
    CHECK(vm.second_answer_refused);
    CHECK(vm.scope_seen == KILN_SCOPE_DEFAULT);
    /* An answer kept past its callback is a stale handle. */
    FAILS(kiln_generated_address(vm.kept, 1), KILN_ERROR_INVALID_HANDLE, "deleted already");
    FAILS(kiln_session_add_generator(s, KILN_SCOPE_DEFAULT, NULL, NULL), KILN_ERROR_INVALID_ARGUMENT, "callback is NULL");
    FAILS(kiln_session_add_generator(s, 9, generate, &vm), KILN_ERROR_INVALID_ARGUMENT, "scope 9");
    kiln_session_delete(s);

    /* A callback's error fails the link, with its message. */
    OK(kiln_session_new(&s));
    OK(kiln_session_add_generator(s, KILN_SCOPE_DEFAULT, refuse, NULL));
    OK(kiln_session_add_file(s, argv[1]));
    FAILS(kiln_session_link(s, &unit), KILN_ERROR_CALLBACK,
          "failed: the VM has no function named ");
    kiln_session_delete(s);

    /* Generators that answer nothing: the link fails as if there were none, naming all four. */
    OK(kiln_session_new(&s));
    OK(kiln_session_add_generator(s, KILN_SCOPE_DEFAULT, not_mine, &asked));
    OK(kiln_session_add_file(s, argv[1]));
    FAILS(kiln_session_link(s, &unit), KILN_ERROR_UNRESOLVED, "gen_linked_fn");
    CHECK(asked == 4);
    kiln_session_delete(s);

    free(vm.object);
    printf("generator: %d checks passed\n", checks_passed);
    return 0;
}
