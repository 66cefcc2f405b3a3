const long lookup_table[8] = {3, 1, 4, 1, 5, 9, 2, 6};
int table_size = 8;
