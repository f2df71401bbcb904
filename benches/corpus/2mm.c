/* PolyBench/C 2mm: D = alpha*A*B*C + beta*D. stdin: NI NJ NK NL. */
#include "polybench.h"

static void kernel_2mm(int ni, int nj, int nk, int nl, double alpha, double beta,
                       double tmp[ni][nj], double A[ni][nk], double B[nk][nj], double C[nj][nl],
                       double D[ni][nl]) {
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nj; j++) {
            tmp[i][j] = 0.0;
            for (int k = 0; k < nk; ++k) tmp[i][j] += alpha * A[i][k] * B[k][j];
        }
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nl; j++) {
            D[i][j] *= beta;
            for (int k = 0; k < nj; ++k) D[i][j] += tmp[i][k] * C[k][j];
        }
}

int main(void) {
    int s[4];
    read_sizes(4, s, "NI NJ NK NL");
    int ni = s[0], nj = s[1], nk = s[2], nl = s[3];
    double (*tmp)[nj] = alloc(sizeof(double) * ni * nj);
    double (*A)[nk] = alloc(sizeof(double) * ni * nk);
    double (*B)[nj] = alloc(sizeof(double) * nk * nj);
    double (*C)[nl] = alloc(sizeof(double) * nj * nl);
    double (*D)[nl] = alloc(sizeof(double) * ni * nl);
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nk; j++) A[i][j] = (double)((i * j + 1) % ni) / ni;
    for (int i = 0; i < nk; i++)
        for (int j = 0; j < nj; j++) B[i][j] = (double)(i * (j + 1) % nj) / nj;
    for (int i = 0; i < nj; i++)
        for (int j = 0; j < nl; j++) C[i][j] = (double)((i * (j + 3) + 1) % nl) / nl;
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nl; j++) D[i][j] = (double)(i * (j + 2) % nk) / nk;
    kernel_2mm(ni, nj, nk, nl, 1.5, 1.2, tmp, A, B, C, D);
    print_checksum("2mm", &D[0][0], (long)ni * nl);
    return 0;
}
