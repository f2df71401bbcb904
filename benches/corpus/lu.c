/* PolyBench/C lu: in-place LU decomposition of a positive-definite matrix. stdin: N. */
#include "polybench.h"

static void kernel_lu(int n, double A[n][n]) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[k][j];
            A[i][j] /= A[j][j];
        }
        for (int j = i; j < n; j++)
            for (int k = 0; k < i; k++) A[i][j] -= A[i][k] * A[k][j];
    }
}

int main(void) {
    int n;
    read_sizes(1, &n, "N");
    double (*A)[n] = alloc(sizeof(double) * n * n);
    init_spd(n, A);
    kernel_lu(n, A);
    print_checksum("lu", &A[0][0], (long)n * n);
    return 0;
}
