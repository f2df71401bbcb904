/* PolyBench/C gemm: C = alpha*A*B + beta*C. stdin: NI NJ NK. */
#include "polybench.h"

static void kernel_gemm(int ni, int nj, int nk, double alpha, double beta, double C[ni][nj],
                        double A[ni][nk], double B[nk][nj]) {
    for (int i = 0; i < ni; i++) {
        for (int j = 0; j < nj; j++) C[i][j] *= beta;
        for (int k = 0; k < nk; k++)
            for (int j = 0; j < nj; j++) C[i][j] += alpha * A[i][k] * B[k][j];
    }
}

int main(void) {
    int s[3];
    read_sizes(3, s, "NI NJ NK");
    int ni = s[0], nj = s[1], nk = s[2];
    double (*C)[nj] = alloc(sizeof(double) * ni * nj);
    double (*A)[nk] = alloc(sizeof(double) * ni * nk);
    double (*B)[nj] = alloc(sizeof(double) * nk * nj);
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nj; j++) C[i][j] = (double)((i * j + 1) % ni) / ni;
    for (int i = 0; i < ni; i++)
        for (int k = 0; k < nk; k++) A[i][k] = (double)(i * (k + 1) % nk) / nk;
    for (int k = 0; k < nk; k++)
        for (int j = 0; j < nj; j++) B[k][j] = (double)(k * (j + 2) % nj) / nj;
    kernel_gemm(ni, nj, nk, 1.5, 1.2, C, A, B);
    print_checksum("gemm", &C[0][0], (long)ni * nj);
    return 0;
}
