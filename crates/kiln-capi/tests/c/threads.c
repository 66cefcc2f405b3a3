/* A session shared by threads: they link and call graphs in parallel; then the session is
   deleted while they are still calling into it, and each sees an error, not a crash. */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4
#define GRAPHS_PER_THREAD 25

static kiln_session_t *shared;
static atomic_int started;

static void *link_and_call(void *arg) {
    int t = (int)(intptr_t)arg, i;
    for (i = 0; i < GRAPHS_PER_THREAD; i++) {
        char name[32];
        uint8_t code[] = {0xb8, (uint8_t)(t * GRAPHS_PER_THREAD + i), 0, 0, 0, 0xc3};
        kiln_graph_t *g;
        kiln_block_t b;
        kiln_unit_t u;
        snprintf(name, sizeof name, "fn_%d_%d", t, i);
        OK(kiln_graph_new(name, &g));
        OK(kiln_graph_add_function(g, name, code, sizeof code, &b));
        OK(kiln_session_link_graph(shared, g, &u));
        kiln_graph_delete(g);
        CHECK(AS_FN(int (*)(void), lookup(shared, name))() == t * GRAPHS_PER_THREAD + i);
    }
    return NULL;
}

/* Look a name up until the session is gone; the error must say so. */
static void *until_deleted(void *arg) {
    kiln_error_t *e;
    uint64_t addr;
    (void)arg;
    while ((e = kiln_session_lookup(shared, "fn_0_0", &addr)) == NULL)
        atomic_fetch_add(&started, 1);
    CHECK(kiln_error_kind(e) == KILN_ERROR_INVALID_HANDLE);
    kiln_error_delete(e);
    return NULL;
}

int main(void) {
    pthread_t threads[THREADS];
    kiln_unit_t units[THREADS * GRAPHS_PER_THREAD + 1];
    size_t count;
    int t;
    OK(kiln_session_new(&shared));
    OK(kiln_session_set_debug(shared, 0, NULL));
    for (t = 0; t < THREADS; t++)
        CHECK(pthread_create(&threads[t], NULL, link_and_call, (void *)(intptr_t)t) == 0);
    for (t = 0; t < THREADS; t++)
        CHECK(pthread_join(threads[t], NULL) == 0);
    /* Every unit is distinct and live: unit 1 (fn_0_0 or another) has no dependents. */
    OK(kiln_session_dependents(shared, 1, units, THREADS * GRAPHS_PER_THREAD + 1, &count));
    CHECK(count == 0);

    for (t = 0; t < THREADS; t++)
        CHECK(pthread_create(&threads[t], NULL, until_deleted, NULL) == 0);
    while (atomic_load(&started) < 1000)
        ;
    kiln_session_delete(shared);
    for (t = 0; t < THREADS; t++)
        CHECK(pthread_join(threads[t], NULL) == 0);
    printf("threads: %d checks passed\n", checks_passed);
    return 0;
}
