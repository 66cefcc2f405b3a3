// Static archives: members are loaded only when they define a symbol that is still undefined
// (transitively), an unreferenced member is not loaded (its constructor never runs), a weak
// definition in an object does not pull a member that defines the symbol strongly, and an archive
// member's definition wins over the host libc's.
// Files marked `kiln-test: in-archive` go into libarchive.a, linked after the objects.
#include <stdio.h>

int used_entry(int x);                 // in member used.o, which needs transitive.o
extern int data_only_value;            // in member data_only.o (data, no code)
__attribute__((weak)) int tuning_level = 1;   // weak here; a member defines it strongly
int rand(void);                        // defined by member libc_shadow.o and by libc

int main(void) {
    printf("used_entry(4) = %d\n", used_entry(4));
    printf("data_only_value = %d\n", data_only_value);
    printf("tuning_level = %d (weak definition kept: member not pulled)\n", tuning_level);
    printf("rand() = %d (from the archive, not libc)\n", rand());
    return tuning_level == 1 && rand() == 31337 ? 0 : 1;
}
