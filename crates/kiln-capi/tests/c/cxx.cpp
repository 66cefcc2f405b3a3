// kiln.h from C++ (g++ -std=c++17): handles owned by unique_ptr, errors turned into exceptions.
#include <kiln.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct SessionDelete {
    void operator()(kiln_session_t *s) const { kiln_session_delete(s); }
};
struct GraphDelete {
    void operator()(kiln_graph_t *g) const { kiln_graph_delete(g); }
};
using Session = std::unique_ptr<kiln_session_t, SessionDelete>;
using Graph = std::unique_ptr<kiln_graph_t, GraphDelete>;

struct KilnError : std::runtime_error {
    kiln_error_kind_t kind;
    KilnError(kiln_error_kind_t k, const std::string &m) : std::runtime_error(m), kind(k) {}
};

void check(kiln_error_t *e) {
    if (!e)
        return;
    const char *m;
    size_t n;
    kiln_error_message(e, &m, &n);
    KilnError err(kiln_error_kind(e), std::string(m, n));
    kiln_error_delete(e);
    throw err;
}

Graph function(const char *name, std::vector<uint8_t> code) {
    kiln_graph_t *g = nullptr;
    check(kiln_graph_new(name, &g));
    Graph owned(g);
    kiln_block_t b;
    check(kiln_graph_add_function(g, name, code.data(), code.size(), &b));
    return owned;
}

} // namespace

int main() {
    kiln_session_t *raw = nullptr;
    check(kiln_session_new(&raw));
    Session s(raw);
    check(kiln_session_set_debug(s.get(), 0, nullptr));

    kiln_unit_t unit = 0;
    auto g = function("cxx_answer", {0xb8, 42, 0, 0, 0, 0xc3});
    check(kiln_session_link_graph(s.get(), g.get(), &unit));
    uint64_t addr = 0;
    check(kiln_session_lookup(s.get(), "cxx_answer", &addr));
    auto answer = reinterpret_cast<int (*)()>(static_cast<uintptr_t>(addr));
    if (answer() != 42)
        return 1;

    try {
        check(kiln_session_lookup(s.get(), "cxx_missing", &addr));
        return 1;
    } catch (const KilnError &e) {
        if (e.kind != KILN_ERROR_UNDEFINED || std::string(e.what()).find("cxx_missing") == std::string::npos)
            return 1;
        std::printf("error: %s\n", e.what());
    }
    check(kiln_session_remove(s.get(), unit));
    std::printf("cxx: ok\n");
    return 0;
}
