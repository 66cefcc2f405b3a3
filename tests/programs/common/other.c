#include <string.h>

int shared_counter;
char sized_buffer[64];
char *other_buffer_ptr = sized_buffer;
void other_bump(void) { shared_counter++; }
int other_buffer_size(void) { return (int)sizeof sized_buffer; }
void other_fill(char c) { memset(sized_buffer, c, sizeof sized_buffer - 1); }
