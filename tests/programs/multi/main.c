// Several objects referencing each other's functions and data in both directions (calls, pointers
// in data across objects), plus static functions and static variables with the same names in every
// object: each object must bind to its own.
#include <stdio.h>
#include "multi.h"

int numbers_in_a[8] = {1, 1, 2, 3, 5, 8, 13, 21};
static int counter = 100;                       // same name in every object
static const char *helper(void) { return "helper in main.o"; }
const char *which_helper_a(void) { return helper(); }

int a_callback(int x) { return x + counter++; }

int main(void) {
    int failures = 0;
    printf("%s / %s / %s\n", which_helper_a(), which_helper_b(), which_helper_c());
    for (int i = 0; i < shape_count_b; i++)
        printf("shape %s area(3) = %d\n", shapes_in_b[i].name, shapes_in_b[i].area(3));
    int r = b_entry(5);
    printf("b_entry(5) = %d, calls_to_b = %d\n", r, calls_to_b);
    failures += r != 829 || calls_to_b != 1;
    failures += *pointer_into_a != 13;
    *pointer_into_a = 130;
    printf("numbers_in_a[6] via c.o = %d, counter in main.o %d\n", numbers_in_a[6], counter);
    return failures;
}
