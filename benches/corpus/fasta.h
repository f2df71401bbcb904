/* The Benchmarks Game's fasta generator, shared by fasta.c and k-nucleotide.c (which counts in
 * the sequence this makes, as the Benchmarks Game's k-nucleotide reads fasta's output). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IM 139968
#define IA 3877
#define IC 29573
#define LINE 60

struct amino {
    char c;
    double p;
};

static unsigned random_state = 42;

static inline double gen_random(double max) {
    random_state = (random_state * IA + IC) % IM;
    return max * random_state / IM;
}

/* Output kept in memory: the text fasta would write. */
struct text {
    char *bytes;
    size_t len, cap;
};

static inline void put(struct text *t, const char *s, size_t n) {
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2 + 4096;
        t->bytes = realloc(t->bytes, t->cap);
        if (!t->bytes) {
            fprintf(stderr, "out of memory\n");
            exit(3);
        }
    }
    memcpy(t->bytes + t->len, s, n);
    t->len += n;
}

static inline void repeat_fasta(struct text *t, const char *s, size_t n) {
    size_t len = strlen(s), pos = 0;
    char line[LINE + 1];
    while (n > 0) {
        size_t l = n < LINE ? n : LINE;
        for (size_t i = 0; i < l; i++) {
            line[i] = s[pos++];
            if (pos == len) pos = 0;
        }
        line[l] = '\n';
        put(t, line, l + 1);
        n -= l;
    }
}

static inline void random_fasta(struct text *t, struct amino *genelist, int count, size_t n) {
    double cp = 0.0;
    for (int i = 0; i < count; i++) {
        cp += genelist[i].p;
        genelist[i].p = cp;
    }
    char line[LINE + 1];
    while (n > 0) {
        size_t l = n < LINE ? n : LINE;
        for (size_t i = 0; i < l; i++) {
            double r = gen_random(1.0);
            int k = 0;
            while (genelist[k].p < r && k < count - 1) k++;
            line[i] = genelist[k].c;
        }
        line[l] = '\n';
        put(t, line, l + 1);
        n -= l;
    }
}

static const char *alu =
    "GGCCGGGCGCGGTGGCTCACGCCTGTAATCCCAGCACTTTGGGAGGCCGAGGCGGGCGGATCACCTGAGGTCAGGAGTTCGAGACCAGCCT"
    "GGCCAACATGGTGAAACCCCGTCTCTACTAAAAATACAAAAATTAGCCGGGCGTGGTGGCGCGCGCCTGTAATCCCAGCTACTCGGGAGGCT"
    "GAGGCAGGAGAATCGCTTGAACCCGGGAGGCGGAGGTTGCAGTGAGCCGAGATCGCGCCACTGCACTCCAGCCTGGGCGACAGAGCGAGACT"
    "CCGTCTCAAAAA";

/* fasta's whole output for N: ONE (ALU repeated, 2N), TWO (IUB codes, 3N), THREE (Homo sapiens
 * frequencies, 5N). */
static inline struct text fasta(size_t n) {
    struct amino iub[] = {{'a', 0.27}, {'c', 0.12}, {'g', 0.12}, {'t', 0.27}, {'B', 0.02},
                          {'D', 0.02}, {'H', 0.02}, {'K', 0.02}, {'M', 0.02}, {'N', 0.02},
                          {'R', 0.02}, {'S', 0.02}, {'V', 0.02}, {'W', 0.02}, {'Y', 0.02}};
    struct amino homosapiens[] = {{'a', 0.3029549426680},
                                  {'c', 0.1979883004921},
                                  {'g', 0.1975473066391},
                                  {'t', 0.3015094502008}};
    struct text t = {0};
    const char *one = ">ONE Homo sapiens alu\n";
    put(&t, one, strlen(one));
    repeat_fasta(&t, alu, n * 2);
    const char *two = ">TWO IUB ambiguity codes\n";
    put(&t, two, strlen(two));
    random_fasta(&t, iub, sizeof iub / sizeof iub[0], n * 3);
    const char *three = ">THREE Homo sapiens frequency\n";
    put(&t, three, strlen(three));
    random_fasta(&t, homosapiens, sizeof homosapiens / sizeof homosapiens[0], n * 5);
    return t;
}
