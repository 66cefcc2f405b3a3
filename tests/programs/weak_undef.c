// Weak undefined symbols that nothing defines must resolve to address 0 (not to an error, not to a
// stub): functions, data, and a weak reference to a function that does exist (in libc).
#include <stdio.h>
#include <string.h>

extern int kiln_test_absent_function(int) __attribute__((weak));
extern int kiln_test_absent_variable __attribute__((weak));
extern const char kiln_test_absent_array[] __attribute__((weak));
extern size_t strlen(const char *) __attribute__((weak));    // weak, but defined by libc

// Addresses of weak undefined symbols stored in data.
int (*absent_fn_ptr)(int) = kiln_test_absent_function;
int *absent_var_ptr = &kiln_test_absent_variable;

int main(void) {
    int failures = 0;
    if (kiln_test_absent_function) {
        printf("absent function is present?! %d\n", kiln_test_absent_function(1));
        failures++;
    } else {
        printf("absent function: null\n");
    }
    if (&kiln_test_absent_variable != 0) { printf("absent variable is present?!\n"); failures++; }
    else printf("absent variable: null\n");
    if (kiln_test_absent_array != 0) { printf("absent array is present?!\n"); failures++; }
    else printf("absent array: null\n");
    if (absent_fn_ptr || absent_var_ptr) { printf("pointers in data are not null\n"); failures++; }
    else printf("pointers in data: null\n");
    if (strlen) printf("weak strlen resolved: %zu\n", strlen("four"));
    else { printf("weak strlen: null\n"); failures++; }
    return failures;
}
