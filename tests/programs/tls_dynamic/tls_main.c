#include <pthread.h>
#include <stdio.h>

extern __thread int tdata_int;                 // defined in tls_vars.o: TLSGD/TLSLD across objects
extern __thread long tbss_long;
int tls_check_and_write(int id);
long tls_sum(void);
int *tls_addr_int(void);
long *tls_addr_static_tbss(void);

#define THREADS 6
static pthread_barrier_t barrier;
static struct result { int bad_initial; long sum_before_barrier, sum_after_barrier; int own_address; } results[THREADS + 1];
static int *addresses[THREADS + 1];

static void *worker(void *arg) {
    int id = (int)(long)arg;
    struct result *r = &results[id];
    r->bad_initial = tls_check_and_write(id);
    r->sum_before_barrier = tls_sum();
    addresses[id] = tls_addr_int();
    r->own_address = addresses[id] == &tdata_int;
    pthread_barrier_wait(&barrier);     // every thread has written its copy before anyone re-reads
    tdata_int += 1;                     // through the extern declaration in this object
    tbss_long += 1;
    r->sum_after_barrier = tls_sum();
    return 0;
}

int main(void) {
    pthread_t threads[THREADS];
    pthread_barrier_init(&barrier, 0, THREADS);
    for (long i = 1; i <= THREADS; i++) pthread_create(&threads[i - 1], 0, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], 0);
    int failures = 0;
    for (int i = 1; i <= THREADS; i++) {
        struct result *r = &results[i];
        printf("thread %d: bad initial values %d, sum %ld -> %ld, own address %d\n", i,
               r->bad_initial, r->sum_before_barrier, r->sum_after_barrier, r->own_address);
        failures += r->bad_initial != 0 || r->sum_after_barrier != r->sum_before_barrier + 2 || !r->own_address;
        for (int j = 1; j < i; j++) failures += addresses[i] == addresses[j];
    }
    // The main thread's copy was untouched by the workers.
    printf("main thread: tdata_int %d tbss_long %ld, tbss at %s\n", tdata_int, tbss_long,
           tls_addr_static_tbss() ? "non-null" : "null");
    failures += tdata_int != 42 || tbss_long != 0;
    failures += tls_check_and_write(0);   // main's copy still has its initial values
    printf("main thread after writing: sum %ld\n", tls_sum());
    printf("failures: %d\n", failures);
    return failures;
}
