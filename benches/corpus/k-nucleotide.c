/* The Computer Language Benchmarks Game's k-nucleotide: counts every 1-, 2-, 3-, 4-, 6-, 12- and
 * 18-mer of fasta's THREE sequence in an open-addressing hash table (hashing-heavy), then prints
 * the 1- and 2-mer frequencies and five given k-mers' counts. stdin: N (fasta's size). */
#include "fasta.h"

struct table {
    unsigned long long *keys;
    unsigned *counts;
    size_t mask;
    size_t used;
};

static unsigned long long code(char c) {
    switch (c) {
    case 'A': return 0;
    case 'C': return 1;
    case 'G': return 2;
    default: return 3;
    }
}

static size_t slot(const struct table *t, unsigned long long key) {
    unsigned long long h = (key + 1) * 0x9e3779b97f4a7c15ULL;
    size_t i = (size_t)(h >> 20) & t->mask;
    while (t->counts[i] && t->keys[i] != key) i = (i + 1) & t->mask;
    return i;
}

static void grow(struct table *t) {
    struct table bigger = {0};
    bigger.mask = t->mask * 2 + 1;
    bigger.keys = calloc(bigger.mask + 1, sizeof *bigger.keys);
    bigger.counts = calloc(bigger.mask + 1, sizeof *bigger.counts);
    if (!bigger.keys || !bigger.counts) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->counts[i]) continue;
        size_t j = slot(&bigger, t->keys[i]);
        bigger.keys[j] = t->keys[i];
        bigger.counts[j] = t->counts[i];
        bigger.used++;
    }
    free(t->keys);
    free(t->counts);
    *t = bigger;
}

static void count_kmers(struct table *t, const char *seq, size_t len, int k) {
    t->mask = 255;
    t->used = 0;
    t->keys = calloc(t->mask + 1, sizeof *t->keys);
    t->counts = calloc(t->mask + 1, sizeof *t->counts);
    if (!t->keys || !t->counts) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    unsigned long long key = 0, keep = k == 32 ? ~0ULL : (1ULL << (2 * k)) - 1;
    for (size_t i = 0; i < len; i++) {
        key = ((key << 2) | code(seq[i])) & keep;
        if (i + 1 < (size_t)k) continue;
        size_t j = slot(t, key);
        if (!t->counts[j]) {
            t->keys[j] = key;
            if (++t->used * 2 > t->mask) {
                t->counts[j] = 1;
                grow(t);
                continue;
            }
        }
        t->counts[j]++;
    }
}

static unsigned lookup(const struct table *t, const char *kmer) {
    unsigned long long key = 0;
    for (const char *c = kmer; *c; c++) key = (key << 2) | code(*c);
    size_t j = slot(t, key);
    return t->counts[j];
}

static void frequencies(const char *seq, size_t len, int k) {
    struct table t;
    count_kmers(&t, seq, len, k);
    const char *letters = "ACGT";
    int n = k == 1 ? 4 : 16;
    char names[16][3];
    unsigned counts[16];
    for (int i = 0; i < n; i++) {
        if (k == 1) {
            names[i][0] = letters[i];
            names[i][1] = 0;
        } else {
            names[i][0] = letters[i / 4];
            names[i][1] = letters[i % 4];
            names[i][2] = 0;
        }
        counts[i] = lookup(&t, names[i]);
    }
    /* By count, descending, then by name: a stable insertion sort. */
    int order[16];
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && counts[order[j]] > counts[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    size_t total = len - (size_t)k + 1;
    for (int i = 0; i < n; i++)
        printf("%s %u/%zu\n", names[order[i]], counts[order[i]], total);
    printf("\n");
    free(t.keys);
    free(t.counts);
}

int main(void) {
    long n;
    if (scanf("%ld", &n) != 1 || n < 1 || n > 100000000) {
        fprintf(stderr, "expected N on stdin\n");
        return 2;
    }
    struct text text = fasta((size_t)n);
    /* THREE's letters, upper case, without the header and the line breaks. */
    const char *three = strstr(text.bytes, ">THREE");
    three = strchr(three, '\n') + 1;
    size_t cap = (size_t)(text.bytes + text.len - three), len = 0;
    char *seq = malloc(cap);
    if (!seq) return 3;
    for (const char *c = three; c < text.bytes + text.len; c++)
        if (*c != '\n') seq[len++] = (char)(*c - 'a' + 'A');
    frequencies(seq, len, 1);
    frequencies(seq, len, 2);
    const char *kmers[] = {"GGT", "GGTA", "GGTATT", "GGTATTTTAATT", "GGTATTTTAATTTATAGT"};
    for (int i = 0; i < 5; i++) {
        struct table t;
        int k = (int)strlen(kmers[i]);
        count_kmers(&t, seq, len, k);
        printf("%u\t%s\n", lookup(&t, kmers[i]), kmers[i]);
        free(t.keys);
        free(t.counts);
    }
    return 0;
}
