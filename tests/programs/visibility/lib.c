#include <stdio.h>

__attribute__((visibility("hidden"))) int hidden_data = 10;
__attribute__((visibility("protected"))) int protected_data = 20;
__attribute__((visibility("internal"))) int internal_data = 30;

__attribute__((visibility("hidden"))) int hidden_add(int a, int b) { return a + b; }
__attribute__((visibility("protected"))) int protected_mul(int a, int b) { return a * b; }
__attribute__((visibility("internal"))) int internal_sub(int a, int b) { return a - b; }
__attribute__((visibility("hidden"))) int rand(void) { return 4242; }
int default_fn(void) { return hidden_data + protected_data + internal_data; }

int lib_checks_addresses(int (*h)(int, int), int (*p)(int, int), int (*i)(int, int), int *hd, int *pd, int *id) {
    printf("values seen by lib.o after main's increments: %d %d %d\n", hidden_data, protected_data,
           internal_data);
    return (h == hidden_add) + (p == protected_mul) + (i == internal_sub) + (hd == &hidden_data) +
           (pd == &protected_data) + (id == &internal_data);
}
