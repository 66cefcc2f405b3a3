/* Lazy functions with C compile callbacks: compiled on the first call (from C and from JIT'd
   code) by a callback that builds the graph with the C graph API, once; callbacks that fail
   (an error, a graph without the code, nothing at all) reach the VM's error handler, whose
   fallback the calls then take; misuse. Also run with several threads making the first call
   at once: the callback runs once and every thread gets the answer. A compiled lazy function
   is redefined. */
#include "jit_code.h"
#include <pthread.h>

struct vm {
    kiln_jit_t *jit;
    _Atomic int compiled;
    _Atomic int handled;
    char last_name[64];
    char last_message[512];
};

static long fallback(long x) { return -x; }

/* long NAME.code(long a) { return a + 1; }: lea 1(%rdi), %rax; ret */
static kiln_error_t *compile_inc(void *user, kiln_jit_t *jit, const char *name,
                                 const char *code_name, kiln_graph_t **out_graph) {
    const uint8_t code[] = {0x48, 0x8d, 0x47, 0x01, 0xc3};
    struct vm *vm = user;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_error_t *e;
    CHECK(jit == vm->jit);
    CHECK(strcmp(code_name, "lazy_inc.code") == 0 && strcmp(name, "lazy_inc") == 0);
    vm->compiled++;
    e = kiln_graph_new(name, &g);
    if (!e)
        e = kiln_graph_add_function(g, code_name, code, sizeof code, &b);
    if (e)
        return e;
    *out_graph = g; /* kiln takes it */
    return NULL;
}

static kiln_error_t *refuse(void *user, kiln_jit_t *jit, const char *name, const char *code_name,
                            kiln_graph_t **out_graph) {
    char msg[128];
    (void)user, (void)jit, (void)code_name, (void)out_graph;
    snprintf(msg, sizeof msg, "the VM has no code for %s", name);
    return kiln_error_new(msg);
}

/* A graph that defines another name than the code name (it is deleted unused). */
static kiln_error_t *wrong_name(void *user, kiln_jit_t *jit, const char *name,
                                const char *code_name, kiln_graph_t **out_graph) {
    const uint8_t code[] = RETURNS(9);
    (void)user, (void)jit, (void)name, (void)code_name;
    *out_graph = graph_with("wrong", "not_the_code", code, sizeof code, NULL);
    return NULL;
}

static kiln_error_t *nothing(void *user, kiln_jit_t *jit, const char *name,
                             const char *code_name, kiln_graph_t **out_graph) {
    (void)user, (void)jit, (void)name, (void)code_name, (void)out_graph;
    return NULL;
}

static uint64_t on_error(void *user, const char *name, uint64_t key, const char *message) {
    struct vm *vm = user;
    (void)key;
    vm->handled++;
    snprintf(vm->last_name, sizeof vm->last_name, "%s", name ? name : "(null)");
    snprintf(vm->last_message, sizeof vm->last_message, "%s", message);
    printf("handler: %s: %s\n", vm->last_name, message);
    return (uint64_t)(uintptr_t)&fallback; /* the "interpreter" */
}

static void compiled_on_first_call(kiln_session_t *s, struct vm *vm) {
    const uint8_t caller[] = CALL_RET;
    kiln_graph_t *g;
    kiln_block_t b;
    kiln_unit_t unit;
    kiln_lazy_status_t st;
    kiln_error_t *failure = (kiln_error_t *)1;
    uint64_t stub;

    OK(kiln_jit_declare_lazy(vm->jit, "lazy_inc", compile_inc, vm, &stub));
    CHECK(stub != 0 && lookup(s, "lazy_inc") == stub);
    OK(kiln_jit_lazy_status(vm->jit, "lazy_inc", &st, &failure));
    CHECK(st.state == KILN_LAZY_NOT_COMPILED && failure == NULL);
    CHECK(vm->compiled == 0);

    /* JIT'd code calls it by name. */
    g = graph_with("caller", "call_inc", caller, sizeof caller, &b);
    OK(kiln_graph_add_edge(g, b, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "lazy_inc", -4));
    OK(kiln_jit_link(vm->jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    CHECK(vm->compiled == 0);

    CHECK(AS_FN(fn_l_l, lookup(s, "call_inc"))(41) == 42);
    CHECK(vm->compiled == 1);
    OK(kiln_jit_lazy_status(vm->jit, "lazy_inc", &st, NULL));
    CHECK(st.state == KILN_LAZY_COMPILED && st.code != 0 && st.code != stub);
    CHECK(st.redirected >= 1); /* the entering call now calls the code directly */
    CHECK(lookup(s, "lazy_inc.code") == st.code);
    /* Later calls, through the stub and the caller: no second compilation. */
    CHECK(AS_FN(fn_l_l, stub)(1) == 2);
    CHECK(AS_FN(fn_l_l, lookup(s, "call_inc"))(2) == 3);
    CHECK(vm->compiled == 1);
    /* Its stub and code live as long as the JIT; the message names the unit by its C
       number. */
    {
        char needle[64];
        snprintf(needle, sizeof needle, "unit %llu is its stub or its compiled code",
                 (unsigned long long)st.unit);
        FAILS(kiln_jit_remove(vm->jit, st.unit), KILN_ERROR_USAGE, needle);
    }
}

/* Redefining a lazy function's compiled code: the stub and the patched caller follow, and the
   old code is freed by a reclaim. */
static void redefined(kiln_session_t *s, struct vm *vm) {
    const uint8_t plus100[] = {0x48, 0x8d, 0x47, 0x64, 0xc3}; /* lea 100(%rdi), %rax; ret */
    kiln_graph_t *g = graph_with("inc2", "lazy_inc.code", plus100, sizeof plus100, NULL);
    kiln_lazy_status_t st;
    kiln_reclaimed_t r;
    uint64_t epoch;
    OK(kiln_jit_redefine_name(vm->jit, "lazy_inc.code", g, NULL));
    kiln_graph_delete(g);
    CHECK(AS_FN(fn_l_l, lookup(s, "call_inc"))(1) == 101);
    CHECK(AS_FN(fn_l_l, lookup(s, "lazy_inc"))(1) == 101);
    OK(kiln_jit_grace_start(vm->jit, &epoch));
    OK(kiln_jit_reclaim(vm->jit, epoch, &r));
    CHECK(r.freed == 1 && r.kept == 0);
    OK(kiln_jit_lazy_status(vm->jit, "lazy_inc", &st, NULL));
    CHECK(st.state == KILN_LAZY_COMPILED && st.code == lookup(s, "lazy_inc.code"));
    CHECK(AS_FN(fn_l_l, lookup(s, "call_inc"))(2) == 102);
    CHECK(vm->compiled == 1);
}

static void failures_reach_the_handler(struct vm *vm) {
    kiln_lazy_status_t st;
    kiln_error_t *failure = NULL;
    const char *m;
    size_t n;
    uint64_t broken, wrong, none;

    OK(kiln_jit_set_lazy_error_handler(vm->jit, on_error, vm));
    OK(kiln_jit_declare_lazy(vm->jit, "lazy_broken", refuse, NULL, &broken));
    CHECK(AS_FN(fn_l_l, broken)(5) == -5);
    CHECK(vm->handled == 1);
    CHECK(strcmp(vm->last_name, "lazy_broken") == 0);
    CHECK(strstr(vm->last_message, "the VM has no code for lazy_broken") != NULL);
    /* The handler chose where every later call goes, and is not asked again. */
    CHECK(AS_FN(fn_l_l, broken)(6) == -6);
    CHECK(vm->handled == 1);
    OK(kiln_jit_lazy_status(vm->jit, "lazy_broken", &st, &failure));
    CHECK(st.state == KILN_LAZY_FAILED && failure != NULL);
    CHECK(kiln_error_kind(failure) == KILN_ERROR_CALLBACK);
    kiln_error_message(failure, &m, &n);
    CHECK(strstr(m, "the compile callback failed: the VM has no code for lazy_broken") != NULL);
    printf("status: %.*s\n", (int)n, m);
    kiln_error_delete(failure);

    OK(kiln_jit_declare_lazy(vm->jit, "lazy_wrong", wrong_name, NULL, &wrong));
    CHECK(AS_FN(fn_l_l, wrong)(7) == -7);
    CHECK(vm->handled == 2);
    CHECK(strstr(vm->last_message, "defines no function lazy_wrong.code") != NULL);

    OK(kiln_jit_declare_lazy(vm->jit, "lazy_none", nothing, NULL, &none));
    CHECK(AS_FN(fn_l_l, none)(8) == -8);
    CHECK(vm->handled == 3);
    CHECK(strstr(vm->last_message, "returned neither a graph nor an error") != NULL);
}

static void misuse(struct vm *vm) {
    kiln_lazy_status_t st;
    uint64_t addr;
    FAILS(kiln_jit_declare_lazy(vm->jit, "lazy_x", NULL, NULL, &addr), KILN_ERROR_INVALID_ARGUMENT,
          "callback is NULL");
    FAILS(kiln_jit_declare_lazy(vm->jit, "lazy_x", compile_inc, vm, NULL),
          KILN_ERROR_INVALID_ARGUMENT, "out_addr is NULL");
    FAILS(kiln_jit_declare_lazy(NULL, "lazy_x", compile_inc, vm, &addr), KILN_ERROR_INVALID_HANDLE,
          "jit is NULL");
    FAILS(kiln_jit_declare_lazy(vm->jit, "lazy_inc", compile_inc, vm, &addr),
          KILN_ERROR_DUPLICATE, "lazy_inc");
    FAILS(kiln_jit_lazy_status(vm->jit, "never_declared", &st, NULL), KILN_ERROR_NOT_FOUND,
          "never_declared is not a lazy function of this JIT");
    OK(kiln_jit_set_lazy_error_handler(vm->jit, NULL, NULL));
}

/* Threads making the first call at once. */
struct racer {
    uint64_t addr;
    long arg, got;
};

static void *race(void *p) {
    struct racer *r = p;
    r->got = AS_FN(fn_l_l, r->addr)(r->arg);
    return NULL;
}

static kiln_error_t *compile_twice(void *user, kiln_jit_t *jit, const char *name,
                                   const char *code_name, kiln_graph_t **out_graph) {
    /* lea (%rdi,%rdi), %rax; ret */
    const uint8_t code[] = {0x48, 0x8d, 0x04, 0x3f, 0xc3};
    struct vm *vm = user;
    (void)jit, (void)name;
    vm->compiled++;
    *out_graph = graph_with("twice", code_name, code, sizeof code, NULL);
    return NULL;
}

static void first_calls_race(struct vm *vm) {
    enum { N = 8 };
    pthread_t t[N];
    struct racer r[N];
    uint64_t addr;
    int i;
    vm->compiled = 0;
    OK(kiln_jit_declare_lazy(vm->jit, "lazy_twice", compile_twice, vm, &addr));
    for (i = 0; i < N; i++) {
        r[i].addr = addr;
        r[i].arg = i + 1;
        CHECK(pthread_create(&t[i], NULL, race, &r[i]) == 0);
    }
    for (i = 0; i < N; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(r[i].got == 2 * (i + 1));
    }
    CHECK(vm->compiled == 1);
}

int main(void) {
    struct vm vm = {0};
    kiln_session_t *s;
    OK(kiln_session_new(&s));
    vm.jit = new_jit(s);
    compiled_on_first_call(s, &vm);
    redefined(s, &vm);
    failures_reach_the_handler(&vm);
    misuse(&vm);
    first_calls_race(&vm);
    kiln_jit_delete(vm.jit);
    kiln_session_delete(s);
    printf("lazy: %d checks passed\n", checks_passed);
    return 0;
}
