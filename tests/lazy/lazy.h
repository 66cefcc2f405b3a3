/* A program in several objects for `kiln run --lazy` (crates/kiln-cli/tests/lazy.rs): calls
 * across objects, a call chain, function pointers to functions of other objects, references to
 * another object's data, a function named like a libc one, and objects never called. */
extern int log_count;
void log_line(const char *what, long v);

long chain_start(long n);                       /* chain.c */
long apply_twice(long (*f)(long, long), long x);
long step_a(long n);                            /* steps.c */
long step_b(long n);
long op_add(long a, long b);                    /* ops.c, in libextra.a */
long op_mul(long a, long b);
long op_sub(long a, long b);
long random(void);                              /* ops.c too: the program's, not libc's */
extern const long lookup_table[8];              /* data.c: data only */
extern int table_size;
int greet(const char *who);                     /* strings.c */
long never_called(long x);                      /* unused.c */
long never_called_either(long x);               /* more_unused.c, in libextra.a */
