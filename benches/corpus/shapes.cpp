// Virtual calls in a hot loop: a scene of shapes behind a base class, each asked for its area and
// perimeter every step as it is moved and scaled (indirect calls through vtables, small hot
// functions). stdin: SHAPES STEPS.
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

namespace {

struct Shape {
    virtual ~Shape() = default;
    virtual double area() const = 0;
    virtual double perimeter() const = 0;
    virtual void scale(double factor) = 0;
};

struct Circle final : Shape {
    double r;
    explicit Circle(double r) : r(r) {}
    double area() const override { return 3.141592653589793 * r * r; }
    double perimeter() const override { return 2 * 3.141592653589793 * r; }
    void scale(double f) override { r *= f; }
};

struct Rect final : Shape {
    double w, h;
    Rect(double w, double h) : w(w), h(h) {}
    double area() const override { return w * h; }
    double perimeter() const override { return 2 * (w + h); }
    void scale(double f) override {
        w *= f;
        h /= f;
    }
};

struct Triangle final : Shape {
    double a, b, c;
    Triangle(double a, double b, double c) : a(a), b(b), c(c) {}
    double area() const override {
        double s = (a + b + c) / 2;
        return std::sqrt(s * (s - a) * (s - b) * (s - c));
    }
    double perimeter() const override { return a + b + c; }
    void scale(double f) override {
        a *= f;
        b *= f;
        c *= f;
    }
};

}  // namespace

int main() {
    int count, steps;
    if (std::scanf("%d %d", &count, &steps) != 2 || count < 1 || steps < 0 || count > 1000000) {
        std::fprintf(stderr, "expected SHAPES STEPS on stdin\n");
        return 2;
    }
    std::vector<std::unique_ptr<Shape>> scene;
    for (int i = 0; i < count; i++) {
        double x = 1.0 + (i % 13) / 13.0;
        switch (i % 3) {
        case 0: scene.push_back(std::make_unique<Circle>(x)); break;
        case 1: scene.push_back(std::make_unique<Rect>(x, 2.0 - x / 2)); break;
        default: scene.push_back(std::make_unique<Triangle>(x + 1, x + 1.5, x + 2)); break;
        }
    }
    double total = 0.0;
    for (int s = 0; s < steps; s++) {
        double factor = s % 2 == 0 ? 1.001 : 1.0 / 1.001;
        for (auto &shape : scene) {
            total += shape->area() - 0.5 * shape->perimeter();
            shape->scale(factor);
        }
    }
    std::printf("shapes %d %d %.17g\n", count, steps, total);
    return 0;
}
