// COMMON symbols (-fcommon): `int x;` in several objects is one variable; the largest size wins;
// a COMMON symbol with an initialized definition elsewhere becomes that definition.
// kiln-test: cflags=-fcommon
#include <stdio.h>
#include <string.h>

int shared_counter;          // COMMON here and in other.c
char sized_buffer[16];       // COMMON, 16 bytes here, 64 in other.c: 64 bytes
long defined_elsewhere;      // COMMON here, initialized (strong) in init.c
double aligned_common;       // COMMON with 8-byte alignment

void other_bump(void);
int other_buffer_size(void);
void other_fill(char c);
extern char *other_buffer_ptr;

int main(void) {
    shared_counter = 10;
    other_bump();
    other_bump();
    printf("shared_counter = %d\n", shared_counter);
    other_fill('x');
    printf("buffer size seen by other.o: %d, same object: %d, strlen: %zu\n", other_buffer_size(),
           other_buffer_ptr == sized_buffer, strlen(sized_buffer));
    printf("defined_elsewhere = %ld\n", defined_elsewhere);
    printf("aligned_common aligned: %d\n", ((unsigned long)&aligned_common % 8) == 0);
    return (shared_counter == 12 && defined_elsewhere == 777) ? 0 : 1;
}
