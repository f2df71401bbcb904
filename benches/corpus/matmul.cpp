// A dense matrix multiply as a C++ newcomer writes it: std::vector, operator[], the i-j-k loop
// with a running sum. stdin: N.
#include <cstdio>
#include <vector>

int main() {
    int n;
    if (std::scanf("%d", &n) != 1 || n < 1 || n > 5000) {
        std::fprintf(stderr, "expected N on stdin\n");
        return 2;
    }
    std::vector<double> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            a[i * n + j] = static_cast<double>((i * 7 + j * 3) % 101) / 101.0;
            b[i * n + j] = static_cast<double>((i * 5 + j * 11) % 97) / 97.0;
        }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double sum = 0.0;
            for (int k = 0; k < n; k++) sum += a[i * n + k] * b[k * n + j];
            c[i * n + j] = sum;
        }
    double check = 0.0;
    for (size_t i = 0; i < c.size(); i++) check += c[i] * static_cast<double>(i % 7 + 1);
    std::printf("matmul %d %.17g\n", n, check);
    return 0;
}
