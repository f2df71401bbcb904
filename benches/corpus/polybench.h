/* Shared by the PolyBench-shaped kernels of Herd's benchmark corpus: reading the problem size
 * from stdin and printing a checksum of a result array. Each kernel is written from PolyBench/C
 * 4.2's published definition (the same loops, initialisation and constants); the size comes from
 * stdin so that one build runs the benchmark's size and the test suite's tiny one. */
#include <stdio.h>
#include <stdlib.h>

/* Reads `count` positive integers from stdin, or exits 2 naming what was expected. */
static inline void read_sizes(int count, int *sizes, const char *names) {
    for (int i = 0; i < count; i++) {
        if (scanf("%d", &sizes[i]) != 1 || sizes[i] <= 0 || sizes[i] > 100000) {
            fprintf(stderr, "expected %s on stdin\n", names);
            exit(2);
        }
    }
}

/* Allocates `bytes` or exits 3. */
static inline void *alloc(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    return p;
}

/* A position-weighted sum of `n` doubles, printed exactly (17 significant digits). */
static inline void print_checksum(const char *name, const double *values, long n) {
    double sum = 0.0;
    for (long i = 0; i < n; i++) sum += values[i] * (double)(i % 7 + 1);
    printf("%s %.17g\n", name, sum);
}

/* PolyBench's init_array for lu and cholesky: a lower-triangular L with a unit diagonal, then
 * A = L * L^T, which is positive definite. */
static inline void init_spd(int n, double A[n][n]) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) A[i][j] = (double)(-j % n) / n + 1;
        for (int j = i + 1; j < n; j++) A[i][j] = 0;
        A[i][i] = 1;
    }
    double (*B)[n] = alloc(sizeof(double) * n * n);
    for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) B[r][s] = 0;
    for (int t = 0; t < n; ++t)
        for (int r = 0; r < n; ++r)
            for (int s = 0; s < n; ++s) B[r][s] += A[r][t] * A[s][t];
    for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) A[r][s] = B[r][s];
    free(B);
}

