#include "multi.h"

static int counter = 300;
static const char *helper(void) { return "helper in c.o"; }
const char *which_helper_c(void) { return helper(); }

int *pointer_into_a = &numbers_in_a[6];      // a pointer in c.o's data to main.o's data

int c_entry(int x) { return a_callback(x) + numbers_in_a[x] + counter; }
