// Symbol visibility across objects of one link: hidden, protected and internal symbols are visible
// to every object of the link (they only stay out of a dynamic symbol table); default ones too.
// Hidden undefined references must bind to a definition in the link, never to the host process.
#include <stdio.h>

__attribute__((visibility("hidden"))) int hidden_add(int a, int b);
__attribute__((visibility("hidden"))) extern int hidden_data;
__attribute__((visibility("protected"))) int protected_mul(int a, int b);
extern int protected_data;
__attribute__((visibility("internal"))) int internal_sub(int a, int b);
__attribute__((visibility("internal"))) extern int internal_data;
int default_fn(void);
int lib_checks_addresses(int (*h)(int, int), int (*p)(int, int), int (*i)(int, int), int *hd, int *pd, int *id);

// A hidden function whose name also exists in libc: the link's own definition must win.
__attribute__((visibility("hidden"))) int rand(void);

int main(void) {
    printf("hidden_add(2,3)=%d hidden_data=%d\n", hidden_add(2, 3), hidden_data);
    printf("protected_mul(4,5)=%d protected_data=%d\n", protected_mul(4, 5), protected_data);
    printf("internal_sub(9,4)=%d internal_data=%d\n", internal_sub(9, 4), internal_data);
    printf("default_fn()=%d\n", default_fn());
    printf("rand()=%d (the link's own hidden rand, not libc's)\n", rand());
    hidden_data++, protected_data++, internal_data++;
    int same = lib_checks_addresses(hidden_add, protected_mul, internal_sub, &hidden_data,
                                    &protected_data, &internal_data);
    printf("addresses agree across objects: %d\n", same);
    return same == 6 && rand() == 4242 ? 0 : 1;
}
