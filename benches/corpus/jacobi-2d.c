/* PolyBench/C jacobi-2d: a 5-point stencil, two arrays in turn. stdin: TSTEPS N. */
#include "polybench.h"

static void kernel_jacobi_2d(int tsteps, int n, double A[n][n], double B[n][n]) {
    for (int t = 0; t < tsteps; t++) {
        for (int i = 1; i < n - 1; i++)
            for (int j = 1; j < n - 1; j++)
                B[i][j] = 0.2 * (A[i][j] + A[i][j - 1] + A[i][1 + j] + A[1 + i][j] + A[i - 1][j]);
        for (int i = 1; i < n - 1; i++)
            for (int j = 1; j < n - 1; j++)
                A[i][j] = 0.2 * (B[i][j] + B[i][j - 1] + B[i][1 + j] + B[1 + i][j] + B[i - 1][j]);
    }
}

int main(void) {
    int s[2];
    read_sizes(2, s, "TSTEPS N");
    int tsteps = s[0], n = s[1];
    double (*A)[n] = alloc(sizeof(double) * n * n);
    double (*B)[n] = alloc(sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            A[i][j] = ((double)i * (j + 2) + 2) / n;
            B[i][j] = ((double)i * (j + 3) + 3) / n;
        }
    kernel_jacobi_2d(tsteps, n, A, B);
    print_checksum("jacobi-2d", &A[0][0], (long)n * n);
    return 0;
}
