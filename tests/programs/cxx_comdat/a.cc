// The same inline functions and template instantiations are emitted (COMDAT) in a.o and b.o.
// Global constructors of different objects run in link order (a.o before b.o), as GNU ld orders
// .init_array; destructors in the reverse order.
#include "shared.h"

struct Announcer {
    const char *who;
    explicit Announcer(const char *w) : who(w) { std::printf("global constructor in %s\n", who); }
    ~Announcer() { std::printf("global destructor in %s\n", who); }
};
static Announcer announce_a("a.o");

counter_fn counter_address_from_a() { return &inline_counter; }

int main() {
    int failures = 0;
    bump();
    b_work();          // bumps twice, registers in b.o
    bump();
    Registry<int>::add(5);
    Registry<std::string>::add("from a");
    std::printf("inline counter %d, registrations <int> %d (b.o sees %d), last <string> \"%s\"\n",
                inline_counter(), Registry<int>::registrations, b_registrations(),
                Registry<std::string>::last.c_str());
    failures += inline_counter() != 4 || Registry<int>::registrations != 2 || b_registrations() != 2;
    failures += counter_address_from_a() != counter_address_from_b();
    std::printf("twice: %d %s\n", twice(21), twice(std::string("ab")).c_str());

    Animal *dog = make_dog_in_b();
    Dog local_dog;
    std::printf("dog from b.o says %s, typeid equal %d, dynamic_cast %s\n", dog->speak().c_str(),
                typeid(*dog) == typeid(Dog), dynamic_cast<Dog *>(dog) ? "ok" : "null");
    failures += typeid(*dog) != typeid(Dog) || dynamic_cast<Dog *>(dog) == nullptr;
    failures += &dog_typeinfo_from_b() != &typeid(Dog);     // one typeinfo object after COMDAT folding
    delete dog;
    try {
        throw_from_b(17);
    } catch (const SharedError &e) {                          // typeinfo from b.o's throw matches a.o's catch
        std::printf("caught SharedError %d thrown in b.o\n", e.code);
    }
    std::printf("failures %d\n", failures);
    return failures;
}
