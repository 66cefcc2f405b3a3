// Shared declarations of the multi-object program.
struct shape {
    const char *name;
    int (*area)(int);
};
extern int calls_to_b;
extern const struct shape shapes_in_b[];
extern int shape_count_b;
extern int *pointer_into_a;
extern int numbers_in_a[8];
int b_entry(int x);
int c_entry(int x);
int a_callback(int x);
const char *which_helper_a(void);
const char *which_helper_b(void);
const char *which_helper_c(void);
