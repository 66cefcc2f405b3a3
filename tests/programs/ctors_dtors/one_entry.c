// One .ctors and one .dtors entry written with the section attribute.
#include <stdio.h>

extern int ctor_count;
static void ctor(void) { ctor_count++; printf("one_entry.o .ctors entry\n"); }
static void dtor(void) { printf("one_entry.o .dtors entry\n"); }
static void (*ctor_ptr)(void) __attribute__((section(".ctors"), used)) = ctor;
static void (*dtor_ptr)(void) __attribute__((section(".dtors"), used)) = dtor;
