/* Checks shared by the C test programs: a failed check prints where and why, and exits 1. */
#ifndef KILN_TEST_CHECK_H
#define KILN_TEST_CHECK_H

#include <kiln.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int checks_passed; /* threads.c checks from several threads */

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
            exit(1);                                                                     \
        }                                                                                \
        checks_passed++;                                                                 \
    } while (0)

/* The call must succeed. */
#define OK(call) ok_((call), #call, __FILE__, __LINE__)
static inline void ok_(kiln_error_t *e, const char *what, const char *file, int line) {
    if (e) {
        const char *m;
        size_t n;
        kiln_error_message(e, &m, &n);
        fprintf(stderr, "%s:%d: %s failed: %.*s\n", file, line, what, (int)n, m);
        exit(1);
    }
    checks_passed++;
}

/* The call must fail with an error of `kind` whose message contains `needle`. The message is
   printed (prefixed "error: ") so that the test harness and a reader see it, then the error is
   deleted. */
#define FAILS(call, kind, needle) fails_((call), #call, (kind), (needle), __FILE__, __LINE__)
static inline void fails_(kiln_error_t *e, const char *what, kiln_error_kind_t kind, const char *needle,
                   const char *file, int line) {
    const char *m;
    size_t n;
    if (!e) {
        fprintf(stderr, "%s:%d: %s succeeded but should have failed\n", file, line, what);
        exit(1);
    }
    kiln_error_message(e, &m, &n);
    if (kiln_error_kind(e) != kind || strstr(m, needle) == NULL || strlen(m) != n) {
        fprintf(stderr, "%s:%d: %s: expected kind %u containing \"%s\", got kind %u: %.*s\n",
                file, line, what, (unsigned)kind, needle, (unsigned)kiln_error_kind(e), (int)n,
                m);
        exit(1);
    }
    printf("error: %.*s\n", (int)n, m);
    kiln_error_delete(e);
    checks_passed++;
}

/* A whole file, for kiln_session_add_object. */
static inline uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long size;
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    size = ftell(f);
    CHECK(size > 0);
    rewind(f);
    buf = malloc((size_t)size);
    CHECK(buf != NULL);
    CHECK(fread(buf, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* The address of a symbol, which must be defined. */
static inline uint64_t lookup(kiln_session_t *s, const char *name) {
    uint64_t addr = 0;
    OK(kiln_session_lookup(s, name, &addr));
    CHECK(addr != 0);
    return addr;
}

#define AS_FN(type, addr) ((type)(uintptr_t)(addr))

#endif
