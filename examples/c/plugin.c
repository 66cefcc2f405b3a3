/* A plugin the host links at run time: it calls a function the host defines (host_log) and one
   the host generates as machine code (scale). */
extern void host_log(const char *what, int value);
extern int scale(int x);

int plugin_run(int x) {
    int y = scale(x) + 1;
    host_log("plugin_run computed", y);
    return y;
}
