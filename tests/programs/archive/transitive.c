// kiln-test: in-archive
int transitive_helper(int x) { return x + 1; }
