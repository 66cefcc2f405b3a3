// Strong definitions overriding main.o's weak ones, and a weak definition of its own that loses to
// nothing (a second weak definition of fallback_value: the first one wins, both are 7).
const char *backend_name(void) { return "strong backend from strong.o"; }
int tuning = 42;
__attribute__((weak)) int fallback_value = 7;
int strong_uses_tuning(void) { return tuning; }
