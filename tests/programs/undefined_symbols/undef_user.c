extern int kiln_test_missing_variable;
int user(void) { return kiln_test_missing_variable; }
