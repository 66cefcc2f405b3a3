// Weak definitions: a weak default overridden by a strong definition in another object (function
// and data), and weak defaults that nothing overrides.
#include <stdio.h>

__attribute__((weak)) const char *backend_name(void) { return "weak default backend"; }
__attribute__((weak)) int tuning = 1;
__attribute__((weak)) const char *fallback_name(void) { return "weak fallback (not overridden)"; }
__attribute__((weak)) int fallback_value = 7;
int strong_uses_tuning(void);
int (*tuning_ptr_from_main) = &tuning;

int main(void) {
    printf("backend: %s\n", backend_name());
    printf("tuning: %d (via pointer %d, as seen by strong.o %d)\n", tuning, *tuning_ptr_from_main,
           strong_uses_tuning());
    printf("fallback: %s, %d\n", fallback_name(), fallback_value);
    return (tuning == 42 && fallback_value == 7) ? 0 : 1;
}
