/* Embedding kiln in a C program: link a plugin object into this process, give it a function of
   ours and a function generated as machine code, and call it.
   Build and run: make run   (with kiln installed: scripts/install-capi PREFIX, and
   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig) */
#include <kiln.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Print a kiln error and exit. */
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

static void host_log(const char *what, int value) { printf("host_log: %s %d\n", what, value); }

/* int scale(int x) { return x * factor; }  as x86-64: imul $factor, %edi, %eax; ret */
static kiln_graph_t *scale_function(int32_t factor) {
    uint8_t code[] = {0x69, 0xc7, 0, 0, 0, 0, 0xc3};
    kiln_graph_t *g;
    kiln_block_t block;
    code[2] = (uint8_t)factor, code[3] = (uint8_t)(factor >> 8);
    code[4] = (uint8_t)(factor >> 16), code[5] = (uint8_t)(factor >> 24);
    check(kiln_graph_new("scale", &g));
    check(kiln_graph_add_function(g, "scale", code, sizeof code, &block));
    return g;
}

int main(int argc, char **argv) {
    kiln_session_t *session;
    kiln_graph_t *scale;
    kiln_unit_t scale_unit, plugin_unit;
    uint64_t addr;
    int (*plugin_run)(int);

    if (argc != 2) {
        fprintf(stderr, "usage: %s plugin.o\n", argv[0]);
        return 2;
    }
    check(kiln_session_new(&session));
    check(kiln_session_define(session, "host_log", (uint64_t)(uintptr_t)&host_log));

    scale = scale_function(10);
    check(kiln_session_link_graph(session, scale, &scale_unit));
    kiln_graph_delete(scale);

    check(kiln_session_add_file(session, argv[1]));
    check(kiln_session_link(session, &plugin_unit));
    check(kiln_session_run_initializers(session));

    check(kiln_session_lookup(session, "plugin_run", &addr));
    plugin_run = (int (*)(int))(uintptr_t)addr;
    printf("plugin_run(4) = %d\n", plugin_run(4));

    /* The plugin binds to `scale`: removing it alone is refused, with a reason. */
    kiln_error_t *err = kiln_session_remove(session, scale_unit);
    if (err) {
        const char *msg;
        size_t len;
        kiln_error_message(err, &msg, &len);
        printf("as expected: %.*s\n", (int)len, msg);
        kiln_error_delete(err);
    }
    kiln_session_delete(session); /* removes both units */
    return 0;
}
