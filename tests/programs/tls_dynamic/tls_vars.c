// Thread-local storage in the dynamic models: compiled with -fPIC and -ftls-model=global-dynamic
// (R_X86_64_TLSGD + __tls_get_addr) or -ftls-model=local-dynamic (R_X86_64_TLSLD + DTPOFF32).
// Initial values come from .tdata, zeros from .tbss; every thread has its own copy.
// kiln-test: variant=global-dynamic:-fPIC -ftls-model=global-dynamic
// kiln-test: variant=local-dynamic:-fPIC -ftls-model=local-dynamic
// kiln-test: variant=pie-default:-fPIE
// kiln-test: variant=initial-exec:-fPIE -ftls-model=initial-exec
// kiln-test: variant=local-exec:-fPIE -ftls-model=local-exec
// kiln-test: variant=descriptors:-fPIC -mtls-dialect=gnu2
// kiln-test: libs=-lpthread
#include <string.h>

__thread int tdata_int = 42;                             // .tdata
__thread long tbss_long;                                 // .tbss
__thread char tdata_str[16] = "initial";                 // .tdata, array
__thread double tdata_double = 2.5;
static __thread int static_tdata = 7;                    // local symbol: LD even in the GD variant
static __thread long static_tbss[64];                    // larger .tbss
__attribute__((visibility("hidden"))) __thread int hidden_tdata = -3;

int *tls_addr_int(void) { return &tdata_int; }
long *tls_addr_static_tbss(void) { return &static_tbss[0]; }

// Reads every variable, checks its initial state, then writes thread-specific values.
// Returns the number of wrong initial values.
int tls_check_and_write(int id) {
    int bad = 0;
    bad += tdata_int != 42;
    bad += tbss_long != 0;
    bad += strcmp(tdata_str, "initial") != 0;
    bad += tdata_double != 2.5;
    bad += static_tdata != 7;
    for (int i = 0; i < 64; i++) bad += static_tbss[i] != 0;
    bad += hidden_tdata != -3;
    tdata_int = 1000 + id;
    tbss_long = 2000L + id;
    tdata_str[0] = (char)('A' + id);
    tdata_double = id * 0.5;
    static_tdata = 3000 + id;
    static_tbss[63] = 4000 + id;
    hidden_tdata = -id;
    return bad;
}

// Sum of this thread's current values (to check that other threads' writes did not land here).
long tls_sum(void) {
    return tdata_int + tbss_long + tdata_str[0] + (long)(tdata_double * 2) + static_tdata +
           static_tbss[63] + hidden_tdata;
}
