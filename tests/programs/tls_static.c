// gcc's default `__thread` in PIE code: local-exec (R_X86_64_TPOFF32) for variables defined here,
// initial-exec (R_X86_64_GOTTPOFF) for the extern one. kiln places the unit's TLS block in every
// thread's static TLS area; initial values from .tdata and zeros from .tbss hold in each thread.
// kiln-test: libs=-lpthread
#include <pthread.h>
#include <stdio.h>
__thread int tls_counter = 5;
__thread char tls_bss[32];
extern __thread long tls_extern;
__thread long tls_extern = 1000;
static void *worker(void *arg) {
    long id = (long)arg;
    int fresh = tls_counter == 5 && tls_bss[31] == 0 && tls_extern == 1000;
    for (int i = 0; i < 100; i++) { tls_counter += (int)id; tls_bss[i % 32]++; tls_extern -= id; }
    printf("thread %ld: fresh=%d counter=%d bss=%d extern=%ld\n", id, fresh, tls_counter, tls_bss[3], tls_extern);
    return 0;
}
int main(void) {
    tls_counter = 42;
    pthread_t t;
    for (long i = 1; i <= 3; i++) { pthread_create(&t, 0, worker, (void *)i); pthread_join(t, 0); }
    printf("main: counter=%d bss=%d extern=%ld\n", tls_counter, tls_bss[3], tls_extern);
    return 0;
}
