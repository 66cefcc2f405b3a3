long defined_elsewhere = 777;
