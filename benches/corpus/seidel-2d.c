/* PolyBench/C seidel-2d: a 9-point Gauss-Seidel stencil, in place. stdin: TSTEPS N. */
#include "polybench.h"

static void kernel_seidel_2d(int tsteps, int n, double A[n][n]) {
    for (int t = 0; t <= tsteps - 1; t++)
        for (int i = 1; i <= n - 2; i++)
            for (int j = 1; j <= n - 2; j++)
                A[i][j] = (A[i - 1][j - 1] + A[i - 1][j] + A[i - 1][j + 1] + A[i][j - 1] + A[i][j] +
                           A[i][j + 1] + A[i + 1][j - 1] + A[i + 1][j] + A[i + 1][j + 1]) /
                          9.0;
}

int main(void) {
    int s[2];
    read_sizes(2, s, "TSTEPS N");
    int tsteps = s[0], n = s[1];
    double (*A)[n] = alloc(sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) A[i][j] = ((double)i * (j + 2) + 2) / n;
    kernel_seidel_2d(tsteps, n, A);
    print_checksum("seidel-2d", &A[0][0], (long)n * n);
    return 0;
}
