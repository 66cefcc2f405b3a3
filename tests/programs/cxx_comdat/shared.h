// Included by every object: inline functions, templates, and a class whose vtable, typeinfo and
// inline members are emitted in each object as COMDAT groups (vague linkage). The link keeps one
// copy of each: one address, one static local, one vtable.
#pragma once
#include <cstdio>
#include <string>
#include <typeinfo>

inline int &inline_counter() {
    static int counter = 0;          // one counter for the whole program, not one per object
    return counter;
}
inline int bump() { return ++inline_counter(); }

template <typename T> struct Registry {
    static int registrations;        // template static data member: COMDAT, one instance
    static T last;
    static void add(const T &v) { registrations++; last = v; }
};
template <typename T> int Registry<T>::registrations = 0;
template <typename T> T Registry<T>::last{};

template <typename T> T twice(T v) { return v + v; }

struct Animal {
    virtual ~Animal() = default;
    virtual std::string speak() const { return "..."; }     // inline virtual: vtable in every object
};
struct Dog : Animal {
    std::string speak() const override { return "woof"; }
};

struct SharedError {
    int code;
};

using counter_fn = int &(*)();
counter_fn counter_address_from_a();
counter_fn counter_address_from_b();
const std::type_info &dog_typeinfo_from_b();
Animal *make_dog_in_b();
void throw_from_b(int code);
int b_registrations();
void b_work();
