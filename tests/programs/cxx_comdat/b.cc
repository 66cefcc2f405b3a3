#include "shared.h"

struct Announcer {
    const char *who;
    explicit Announcer(const char *w) : who(w) { std::printf("global constructor in %s\n", who); }
    ~Announcer() { std::printf("global destructor in %s\n", who); }
};
static Announcer announce_b("b.o");

counter_fn counter_address_from_b() { return &inline_counter; }
const std::type_info &dog_typeinfo_from_b() { return typeid(Dog); }
Animal *make_dog_in_b() { return new Dog; }
void throw_from_b(int code) { throw SharedError{code}; }
int b_registrations() { return Registry<int>::registrations; }
void b_work() {
    bump();
    bump();
    Registry<int>::add(7);
    Registry<std::string>::add("from b");
}
