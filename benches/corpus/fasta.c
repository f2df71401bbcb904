/* The Computer Language Benchmarks Game's fasta: random DNA from a linear congruential
 * generator and cumulative probabilities. The text is kept in memory and summarised (length and
 * FNV-1a hash), so the kernel is measured rather than stdout. stdin: N. */
#include "fasta.h"

int main(void) {
    long n;
    if (scanf("%ld", &n) != 1 || n < 0 || n > 100000000) {
        fprintf(stderr, "expected N on stdin\n");
        return 2;
    }
    struct text t = fasta((size_t)n);
    unsigned long long hash = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < t.len; i++) hash = (hash ^ (unsigned char)t.bytes[i]) * 0x100000001b3ULL;
    printf("fasta %zu bytes, fnv1a %016llx\n", t.len, hash);
    fwrite(t.bytes, 1, t.len < 300 ? t.len : 300, stdout);
    printf("\n");
    return 0;
}
