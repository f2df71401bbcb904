/* spectral: the spectral norm of the infinite matrix A(i,j) = 1/((i+j)(i+j+1)/2 + i + 1),
 * truncated to n x n, by power iteration (the Benchmarks Game's spectral-norm), in plain C.
 *
 * Input (stdin, ASCII): `n iterations` (1 <= n <= 20000, 1 <= iterations <= 1000).
 * Output (stdout, ASCII): `norm=N bits=B n=... iterations=...`: the norm to 12 decimals and its
 * IEEE-754 bits in hex, so a difference in the last bit shows.
 *
 * Floating point only (+, *, /, sqrt), no fused multiply-add: built with -ffp-contract=off, the
 * native and the WebAssembly builds give the same bits. Exit code 2 on bad input.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double a(long i, long j) { return 1.0 / (double)((i + j) * (i + j + 1) / 2 + i + 1); }

/* out = A v */
static void times(const double *v, double *out, long n) {
    for (long i = 0; i < n; i++) {
        double sum = 0.0;
        for (long j = 0; j < n; j++) sum += a(i, j) * v[j];
        out[i] = sum;
    }
}

/* out = A^T v */
static void times_transposed(const double *v, double *out, long n) {
    for (long i = 0; i < n; i++) {
        double sum = 0.0;
        for (long j = 0; j < n; j++) sum += a(j, i) * v[j];
        out[i] = sum;
    }
}

/* out = A^T A v, through tmp */
static void times_ata(const double *v, double *out, double *tmp, long n) {
    times(v, tmp, n);
    times_transposed(tmp, out, n);
}

int main(void) {
    long n = 0, iterations = 0;
    if (scanf("%ld %ld", &n, &iterations) != 2 || n < 1 || n > 20000 || iterations < 1 ||
        iterations > 1000) {
        fprintf(stderr, "expected `n iterations` with 1 <= n <= 20000, 1 <= iterations <= 1000\n");
        return 2;
    }
    double *u = malloc(n * sizeof *u), *v = malloc(n * sizeof *v), *tmp = malloc(n * sizeof *tmp);
    if (!u || !v || !tmp) {
        fprintf(stderr, "out of memory for n = %ld\n", n);
        return 2;
    }
    for (long i = 0; i < n; i++) u[i] = 1.0;
    for (long k = 0; k < iterations; k++) {
        times_ata(u, v, tmp, n);
        times_ata(v, u, tmp, n);
    }
    double vbv = 0.0, vv = 0.0;
    for (long i = 0; i < n; i++) {
        vbv += u[i] * v[i];
        vv += v[i] * v[i];
    }
    double norm = sqrt(vbv / vv);
    uint64_t bits;
    memcpy(&bits, &norm, sizeof bits);
    printf("norm=%.12f bits=%016llx n=%ld iterations=%ld\n", norm, (unsigned long long)bits, n,
           iterations);
    free(u);
    free(v);
    free(tmp);
    return 0;
}
