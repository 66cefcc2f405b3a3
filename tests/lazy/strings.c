#include <stdio.h>
#include "lazy.h"

int greet(const char *who) {
    int n = printf("hello, %s\n", who);
    log_line("greeted", n);
    return n;
}
