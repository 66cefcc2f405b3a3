// Virtual functions (single and multiple inheritance, virtual bases, pure virtual, virtual
// destructors) and RTTI (typeid, dynamic_cast up, down and across).
#include <cstdio>
#include <memory>
#include <typeinfo>
#include <vector>

struct Shape {
    virtual ~Shape() { std::printf("~Shape\n"); }
    virtual double area() const = 0;
    virtual const char *name() const { return "shape"; }
};
struct Square : Shape {
    double s;
    explicit Square(double s) : s(s) {}
    ~Square() override { std::printf("~Square(%g)\n", s); }
    double area() const override { return s * s; }
    const char *name() const override { return "square"; }
};
struct Circle : Shape {
    double r;
    explicit Circle(double r) : r(r) {}
    double area() const override { return 3.0 * r * r; }
};
struct Printable {
    virtual ~Printable() = default;
    virtual void print() const = 0;
};
struct Labelled final : Square, Printable {
    const char *label;
    Labelled(double s, const char *l) : Square(s), label(l) {}
    void print() const override { std::printf("Labelled %s area %g\n", label, area()); }
    const char *name() const override { return "labelled square"; }
};
// Diamond with a virtual base.
struct Base { int v = 1; virtual int get() const { return v; } virtual ~Base() = default; };
struct Left : virtual Base { int get() const override { return v * 10; } };
struct Right : virtual Base { };
struct Diamond : Left, Right { };

int main() {
    std::vector<std::unique_ptr<Shape>> shapes;
    shapes.emplace_back(new Square(2));
    shapes.emplace_back(new Circle(1));
    shapes.emplace_back(new Labelled(3, "L"));
    int failures = 0;
    for (auto &s : shapes) {
        std::printf("%s: area %g, typeid %s\n", s->name(), s->area(), typeid(*s).name());
        if (auto *p = dynamic_cast<Printable *>(s.get())) p->print();   // cross cast
        if (auto *sq = dynamic_cast<Square *>(s.get())) std::printf("  is a Square, side %g\n", sq->s);
        else std::printf("  not a Square\n");
    }
    failures += typeid(*shapes[0]) != typeid(Square);
    failures += typeid(*shapes[2]) == typeid(Square);
    failures += dynamic_cast<Circle *>(shapes[0].get()) != nullptr;
    try {
        Shape &s = *shapes[1];
        (void)dynamic_cast<Square &>(s);
        failures++;
    } catch (const std::bad_cast &e) {
        std::printf("bad_cast caught: %s\n", typeid(e).name());
    }
    Diamond d;
    Base *b = &d;
    std::printf("diamond get %d, dynamic_cast<Right*> %s\n", b->get(),
                dynamic_cast<Right *>(b) ? "ok" : "null");
    failures += b->get() != 10;
    shapes.clear();
    std::printf("failures %d\n", failures);
    return failures;
}
