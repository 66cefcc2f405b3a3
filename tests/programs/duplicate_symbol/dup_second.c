int kiln_test_duplicated(void) { return 2; }
