// Globals, .data/.rodata/.bss, pointers in data (to data, to functions, into arrays, to strings),
// string tables, and references to the host libc's own data (stdout, environ, optind).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int initialized = 1234;                      // .data
long counter;                                // .bss
static int static_zero;                      // .bss, local
static double table_d[4] = {0.5, 1.5, 2.5, 3.5};
char big_bss[1 << 20];                       // 1 MiB of .bss: must be zero
static char big_static_bss[3 << 20];         // 3 MiB more
const char greeting[] = "hello, globals";    // .rodata

int *ptr_to_initialized = &initialized;      // pointer to data (R_X86_64_64 / RELATIVE)
long *ptr_to_counter = &counter;             // pointer to .bss
double *ptr_into_array = &table_d[2];        // pointer with addend
const char *ptr_to_string = greeting + 7;    // pointer into .rodata with addend
char *ptr_to_bss_end = &big_bss[sizeof big_bss - 1];

// A string table: an array of pointers to string literals (.data.rel.ro in PIE).
static const char *const weekdays[] = {
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
};

struct node {
    const char *name;
    int value;
    struct node *next;                      // pointers between data objects
};
static struct node n3 = {"three", 3, 0};
static struct node n2 = {"two", 2, &n3};
struct node n1 = {"one", 1, &n2};
struct node *list_head = &n1;

// Host data referenced from JIT'd data and code.
FILE **stdout_slot = &stdout;
char ***environ_slot = &environ;

static int failures;
#define CHECK(cond) do { if (!(cond)) { printf("FAIL line %d: %s\n", __LINE__, #cond); failures++; } } while (0)

int main(void) {
    CHECK(initialized == 1234);
    CHECK(counter == 0 && static_zero == 0);
    for (size_t i = 0; i < sizeof big_bss; i += 4096) CHECK(big_bss[i] == 0);
    for (size_t i = 0; i < sizeof big_static_bss; i += 4093) if (big_static_bss[i]) { CHECK(0); break; }
    CHECK(*ptr_to_initialized == 1234);
    *ptr_to_initialized = 99;
    CHECK(initialized == 99);
    *ptr_to_counter += 5;
    counter += 2;
    CHECK(counter == 7);
    CHECK(*ptr_into_array == 2.5);
    CHECK(ptr_into_array - table_d == 2);
    CHECK(strcmp(ptr_to_string, "globals") == 0);
    *ptr_to_bss_end = 'z';
    CHECK(big_bss[sizeof big_bss - 1] == 'z');
    big_static_bss[sizeof big_static_bss - 1] = 1;

    printf("%s\n", greeting);
    for (int i = 0; i < 7; i++) printf("day %d: %s (%zu)\n", i, weekdays[i], strlen(weekdays[i]));
    int sum = 0;
    for (struct node *n = list_head; n; n = n->next) {
        printf("node %s=%d\n", n->name, n->value);
        sum += n->value;
    }
    CHECK(sum == 6);

    CHECK(*stdout_slot == stdout);
    CHECK(*environ_slot == environ);
    CHECK(optind == 1);                       // libc data read directly from JIT'd code
    fprintf(*stdout_slot, "through stdout_slot: %d %ld %.1f\n", initialized, counter, table_d[3]);
    printf("failures: %d\n", failures);
    return failures == 0 ? 0 : 1;
}
