// kiln-test: in-archive
int rand(void) { return 31337; }
