/* PolyBench/C cholesky: in-place Cholesky decomposition (sqrt is correctly rounded everywhere).
 * stdin: N. */
#include <math.h>

#include "polybench.h"

static void kernel_cholesky(int n, double A[n][n]) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[j][k];
            A[i][j] /= A[j][j];
        }
        for (int k = 0; k < i; k++) A[i][i] -= A[i][k] * A[i][k];
        A[i][i] = sqrt(A[i][i]);
    }
}

int main(void) {
    int n;
    read_sizes(1, &n, "N");
    double (*A)[n] = alloc(sizeof(double) * n * n);
    init_spd(n, A);
    kernel_cholesky(n, A);
    print_checksum("cholesky", &A[0][0], (long)n * n);
    return 0;
}
