/* PolyBench/C fdtd-2d: 2-D finite-difference time domain, three fields. stdin: TMAX NX NY. */
#include "polybench.h"

static void kernel_fdtd_2d(int tmax, int nx, int ny, double ex[nx][ny], double ey[nx][ny],
                           double hz[nx][ny], const double *fict) {
    for (int t = 0; t < tmax; t++) {
        for (int j = 0; j < ny; j++) ey[0][j] = fict[t];
        for (int i = 1; i < nx; i++)
            for (int j = 0; j < ny; j++) ey[i][j] = ey[i][j] - 0.5 * (hz[i][j] - hz[i - 1][j]);
        for (int i = 0; i < nx; i++)
            for (int j = 1; j < ny; j++) ex[i][j] = ex[i][j] - 0.5 * (hz[i][j] - hz[i][j - 1]);
        for (int i = 0; i < nx - 1; i++)
            for (int j = 0; j < ny - 1; j++)
                hz[i][j] = hz[i][j] - 0.7 * (ex[i][j + 1] - ex[i][j] + ey[i + 1][j] - ey[i][j]);
    }
}

int main(void) {
    int s[3];
    read_sizes(3, s, "TMAX NX NY");
    int tmax = s[0], nx = s[1], ny = s[2];
    double (*ex)[ny] = alloc(sizeof(double) * nx * ny);
    double (*ey)[ny] = alloc(sizeof(double) * nx * ny);
    double (*hz)[ny] = alloc(sizeof(double) * nx * ny);
    double *fict = alloc(sizeof(double) * tmax);
    for (int t = 0; t < tmax; t++) fict[t] = (double)t;
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < ny; j++) {
            ex[i][j] = ((double)i * (j + 1)) / nx;
            ey[i][j] = ((double)i * (j + 2)) / ny;
            hz[i][j] = ((double)i * (j + 3)) / nx;
        }
    kernel_fdtd_2d(tmax, nx, ny, ex, ey, hz, fict);
    print_checksum("fdtd-2d", &hz[0][0], (long)nx * ny);
    return 0;
}
