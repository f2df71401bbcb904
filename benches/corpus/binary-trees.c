/* The Computer Language Benchmarks Game's binary-trees: allocation-heavy (malloc and free of
 * many small nodes). stdin: MAX_DEPTH. */
#include <stdio.h>
#include <stdlib.h>

struct node {
    struct node *left, *right;
};

static struct node *make(int depth) {
    struct node *n = malloc(sizeof *n);
    if (!n) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    if (depth > 0) {
        n->left = make(depth - 1);
        n->right = make(depth - 1);
    } else {
        n->left = n->right = NULL;
    }
    return n;
}

static long check(const struct node *n) {
    return n->left ? 1 + check(n->left) + check(n->right) : 1;
}

static void release(struct node *n) {
    if (n->left) {
        release(n->left);
        release(n->right);
    }
    free(n);
}

int main(void) {
    int max_depth;
    if (scanf("%d", &max_depth) != 1 || max_depth < 0 || max_depth > 24) {
        fprintf(stderr, "expected MAX_DEPTH in 0..=24 on stdin\n");
        return 2;
    }
    const int min_depth = 4;
    if (max_depth < min_depth + 2) max_depth = min_depth + 2;
    struct node *stretch = make(max_depth + 1);
    printf("stretch tree of depth %d\t check: %ld\n", max_depth + 1, check(stretch));
    release(stretch);
    struct node *long_lived = make(max_depth);
    for (int depth = min_depth; depth <= max_depth; depth += 2) {
        long iterations = 1L << (max_depth - depth + min_depth);
        long sum = 0;
        for (long i = 0; i < iterations; i++) {
            struct node *t = make(depth);
            sum += check(t);
            release(t);
        }
        printf("%ld\t trees of depth %d\t check: %ld\n", iterations, depth, sum);
    }
    printf("long lived tree of depth %d\t check: %ld\n", max_depth, check(long_lived));
    release(long_lived);
    return 0;
}
