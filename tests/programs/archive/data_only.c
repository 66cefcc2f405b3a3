// kiln-test: in-archive
int data_only_value = 555;
