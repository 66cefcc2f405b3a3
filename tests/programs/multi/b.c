#include "multi.h"

int calls_to_b;
static int counter = 200;
static const char *helper(void) { return "helper in b.o"; }
const char *which_helper_b(void) { return helper(); }

static int square(int x) { return x * x + counter - 200; }
static int triangle(int x) { return x * x / 2; }
const struct shape shapes_in_b[] = {{"square", square}, {"triangle", triangle}, {"c-shape", c_entry}};
int shape_count_b = sizeof shapes_in_b / sizeof shapes_in_b[0];

int b_entry(int x) {
    calls_to_b++;
    counter++;
    return c_entry(x) * 2 + 1;
}
