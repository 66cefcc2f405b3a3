// The host libc calling back into JIT'd code: qsort, bsearch, and a host function pointer (strcmp)
// passed from data to qsort.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rec { int key; const char *name; };

static int by_key(const void *a, const void *b) {
    const struct rec *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}
static int by_name(const void *a, const void *b) {
    return strcmp(((const struct rec *)a)->name, ((const struct rec *)b)->name);
}
static int cmp_str(const void *a, const void *b) {
    int (*cmp)(const char *, const char *) = strcmp;   // host function called through a pointer
    return cmp(*(char *const *)a, *(char *const *)b);
}
static int desc_int(const void *a, const void *b) { return *(const int *)b - *(const int *)a; }

int main(void) {
    struct rec recs[] = {{5, "eel"}, {3, "cat"}, {9, "ibis"}, {1, "ant"}, {7, "gnu"},
                         {2, "bee"}, {8, "hen"}, {4, "dog"}, {6, "fox"}, {0, "aardvark"}};
    size_t n = sizeof recs / sizeof recs[0];
    qsort(recs, n, sizeof recs[0], by_key);
    for (size_t i = 0; i < n; i++) printf("%d:%s ", recs[i].key, recs[i].name);
    printf("\n");
    struct rec probe = {7, 0};
    struct rec *hit = bsearch(&probe, recs, n, sizeof recs[0], by_key);
    printf("bsearch 7 -> %s\n", hit ? hit->name : "(none)");
    qsort(recs, n, sizeof recs[0], by_name);
    for (size_t i = 0; i < n; i++) printf("%s ", recs[i].name);
    printf("\n");

    const char *words[] = {"linker", "jit", "relocation", "symbol", "archive", "object", "got"};
    qsort(words, 7, sizeof words[0], cmp_str);
    for (int i = 0; i < 7; i++) printf("%s ", words[i]);
    printf("\n");

    int big[5000];
    unsigned seed = 12345;
    for (int i = 0; i < 5000; i++) { seed = seed * 1103515245u + 12345u; big[i] = (int)(seed >> 8) % 100000; }
    qsort(big, 5000, sizeof big[0], desc_int);
    int sorted = 1;
    for (int i = 1; i < 5000; i++) sorted &= big[i - 1] >= big[i];
    printf("big sorted: %d first %d last %d\n", sorted, big[0], big[4999]);
    return sorted ? 0 : 1;
}
