/* A JIT's code zone from C: a function compiled lazily by a callback on its first call, a
   caller linked into the method region, a patchable constant, and a redefinition of the caller
   that a call site in the fixed region follows.
   Build and run: make run   (with kiln installed: scripts/install-capi PREFIX, and
   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig) */
#include <kiln.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void check(kiln_error_t *err) {
    const char *msg;
    size_t len;
    if (!err)
        return;
    kiln_error_message(err, &msg, &len);
    fprintf(stderr, "kiln: %.*s\n", (int)len, msg);
    kiln_error_delete(err);
    exit(1);
}

/* The "compiler": long square(long x) { return x * x; }  as x86-64: mov %rdi,%rax;
   imul %rdi,%rax; ret. Called by kiln on square's first call. */
static kiln_error_t *compile_square(void *user, kiln_jit_t *jit, const char *name,
                                    const char *code_name, kiln_graph_t **out_graph) {
    static const uint8_t code[] = {0x48, 0x89, 0xf8, 0x48, 0x0f, 0xaf, 0xc7, 0xc3};
    kiln_block_t block;
    kiln_error_t *err;
    (void)user, (void)jit;
    printf("compiling %s\n", name);
    err = kiln_graph_new(name, out_graph);
    if (!err)
        err = kiln_graph_add_function(*out_graph, code_name, code, sizeof code, &block);
    return err; /* kiln takes the graph */
}

int main(void) {
    /* long f(long x): sub $8,%rsp; nop; call square; nop; add $N,%rax (N at offset 16:
       4-aligned, a patchable 32-bit site); add $8,%rsp; ret */
    static const uint8_t f_code[] = {0x48, 0x83, 0xec, 0x08, 0x0f, 0x1f, 0x00, 0xe8,
                                     0,    0,    0,    0,    0x66, 0x90, 0x48, 0x05,
                                     0,    0,    0,    0,    0x48, 0x83, 0xc4, 0x08, 0xc3};
    /* long g(long x) { return -x; }: mov %rdi,%rax; neg %rax; ret */
    static const uint8_t negate[] = {0x48, 0x89, 0xf8, 0x48, 0xf7, 0xd8, 0xc3};
    /* long entry(long x): 3-byte nop; jmp f (rel32 at 4: a site) */
    static const uint8_t entry_code[] = {0x0f, 0x1f, 0x00, 0xe9, 0, 0, 0, 0};
    kiln_session_t *session;
    kiln_jit_t *jit;
    kiln_zone_config_t config = {0};
    kiln_zone_info_t zone;
    kiln_graph_t *g;
    kiln_block_t block;
    kiln_unit_t unit;
    kiln_unit_t entry_unit;
    kiln_site_t site;
    size_t count;
    uint64_t square, addr, epoch;
    long (*f)(long), (*entry)(long);

    check(kiln_session_new(&session));
    config.size = 1 << 20;
    check(kiln_jit_new(session, &config, &jit));
    check(kiln_jit_zone(jit, &zone));
    printf("zone at %#llx, %llu KiB\n", (unsigned long long)zone.base,
           (unsigned long long)(zone.size >> 10));

    check(kiln_jit_declare_lazy(jit, "square", compile_square, NULL, &square));

    check(kiln_graph_new("f", &g));
    check(kiln_graph_add_function(g, "f", f_code, sizeof f_code, &block));
    check(kiln_graph_add_edge(g, block, 8, KILN_EDGE_X86_64_BRANCH_PCREL32, "square", -4));
    check(kiln_graph_add_site(g, "f", 16, KILN_SITE_IMM32));
    check(kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit));
    kiln_graph_delete(g);
    check(kiln_session_lookup(session, "f", &addr));
    f = (long (*)(long))(uintptr_t)addr;

    printf("f(7) = %ld\n", f(7)); /* compiles square */
    printf("f(8) = %ld\n", f(8)); /* calls the code directly */

    check(kiln_jit_unit_sites(jit, unit, &site, 1, &count));
    check(kiln_jit_set_value(jit, &site, 1000));
    printf("f(7) = %ld after patching the constant\n", f(7));

    /* An entry point in the fixed region whose jump to f is a site pointed at f. */
    check(kiln_graph_new("entry", &g));
    check(kiln_graph_add_function(g, "entry", entry_code, sizeof entry_code, &block));
    check(kiln_graph_add_site(g, "entry", 4, KILN_SITE_REL32));
    check(kiln_jit_link(jit, KILN_REGION_FIXED, g, &entry_unit));
    kiln_graph_delete(g);
    check(kiln_jit_unit_sites(jit, entry_unit, &site, 1, &count));
    check(kiln_jit_retarget(jit, &site, addr));
    check(kiln_session_lookup(session, "entry", &addr));
    entry = (long (*)(long))(uintptr_t)addr;
    printf("entry(3) = %ld\n", entry(3));

    /* Redefine f: the site follows; the old f is freed once no thread can be in it (here:
       now). */
    check(kiln_graph_new("f2", &g));
    check(kiln_graph_add_function(g, "f", negate, sizeof negate, &block));
    check(kiln_jit_redefine(jit, unit, g, NULL));
    kiln_graph_delete(g);
    check(kiln_jit_grace_start(jit, &epoch));
    check(kiln_jit_reclaim(jit, epoch, NULL));
    printf("entry(3) = %ld after redefining f\n", entry(3));

    kiln_jit_delete(jit);
    kiln_session_delete(session);
    return 0;
}
