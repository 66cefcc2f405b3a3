// Static initialisation: global objects with constructors (run before main, in definition order
// within the object) and destructors (reverse order, after main, registered with __cxa_atexit),
// function-local statics (guarded, initialised on first use), and a global whose initialiser calls
// a function (dynamic initialisation).
#include <cstdio>
#include <string>

struct Tracer {
    std::string name;
    explicit Tracer(const char *n) : name(n) { std::printf("construct %s\n", name.c_str()); }
    ~Tracer() { std::printf("destroy %s\n", name.c_str()); }
};

static int compute_answer() { std::printf("dynamic init of answer\n"); return 6 * 7; }

Tracer first("first global");
int answer = compute_answer();
static Tracer second("second global (static)");
std::string global_string = std::string("built ") + "at startup";

Tracer &lazy() {
    static Tracer instance("function-local static");
    return instance;
}

int main() {
    std::printf("main: answer=%d global_string=\"%s\"\n", answer, global_string.c_str());
    std::printf("calling lazy() twice: %s\n", lazy().name.c_str());
    std::printf("again: %s\n", lazy().name.c_str());
    return answer == 42 ? 0 : 1;
}
