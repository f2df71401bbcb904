/* Three kernels in one `main`, as a quick research program often is: a Mandelbrot escape-time
 * loop, a trial-division prime count and a spectral-norm power iteration, with all their
 * locals in one function (a large function with many float values live). stdin: SIZE. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    int size;
    if (scanf("%d", &size) != 1 || size < 1 || size > 100000) {
        fprintf(stderr, "expected SIZE on stdin\n");
        return 2;
    }
    /* Mandelbrot over a SIZE x SIZE grid. */
    long inside = 0, iterations_total = 0;
    for (int py = 0; py < size; py++) {
        double ci = -1.25 + 2.5 * py / size;
        for (int px = 0; px < size; px++) {
            double cr = -2.0 + 2.5 * px / size;
            double zr = 0.0, zi = 0.0, zr2 = 0.0, zi2 = 0.0;
            int it = 0;
            while (it < 500 && zr2 + zi2 <= 4.0) {
                zi = 2.0 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
                zr2 = zr * zr;
                zi2 = zi * zi;
                it++;
            }
            iterations_total += it;
            if (it == 500) inside++;
        }
    }
    /* Primes below SIZE * 200 by trial division. */
    long limit = (long)size * 200, primes = 0, prime_sum = 0;
    for (long candidate = 2; candidate < limit; candidate++) {
        int prime = 1;
        for (long d = 2; d * d <= candidate; d++) {
            if (candidate % d == 0) {
                prime = 0;
                break;
            }
        }
        if (prime) {
            primes++;
            prime_sum += candidate;
        }
    }
    /* Spectral norm of the SIZE x SIZE truncation, 10 power iterations. */
    int n = size;
    double *u = malloc(sizeof(double) * n), *v = malloc(sizeof(double) * n),
           *t = malloc(sizeof(double) * n);
    if (!u || !v || !t) return 3;
    for (int i = 0; i < n; i++) u[i] = 1.0;
    for (int round = 0; round < 10; round++) {
        for (int pass = 0; pass < 2; pass++) {
            double *in = pass == 0 ? u : v, *out = pass == 0 ? v : u;
            for (int i = 0; i < n; i++) {
                double sum = 0.0;
                for (int j = 0; j < n; j++)
                    sum += in[j] / (double)((long)(i + j) * (i + j + 1) / 2 + i + 1);
                t[i] = sum;
            }
            for (int i = 0; i < n; i++) {
                double sum = 0.0;
                for (int j = 0; j < n; j++)
                    sum += t[j] / (double)((long)(i + j) * (i + j + 1) / 2 + j + 1);
                out[i] = sum;
            }
        }
    }
    double vbv = 0.0, vv = 0.0;
    for (int i = 0; i < n; i++) {
        vbv += u[i] * v[i];
        vv += v[i] * v[i];
    }
    printf("bigmain %d: mandelbrot %ld inside, %ld iterations; %ld primes, sum %ld; norm %.17g\n",
           size, inside, iterations_total, primes, prime_sum, sqrt(vbv / vv));
    return 0;
}
