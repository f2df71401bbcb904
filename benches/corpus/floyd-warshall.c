/* PolyBench/C floyd-warshall: all-pairs shortest paths on integers. stdin: N. */
#include "polybench.h"

static void kernel_floyd_warshall(int n, int path[n][n]) {
    for (int k = 0; k < n; k++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                path[i][j] = path[i][j] < path[i][k] + path[k][j] ? path[i][j]
                                                                  : path[i][k] + path[k][j];
}

int main(void) {
    int n;
    read_sizes(1, &n, "N");
    int (*path)[n] = alloc(sizeof(int) * n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            path[i][j] = i * j % 7 + 1;
            if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) path[i][j] = 999;
        }
    kernel_floyd_warshall(n, path);
    long long sum = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) sum += (long long)path[i][j] * ((i * n + j) % 7 + 1);
    printf("floyd-warshall %lld\n", sum);
    return 0;
}
