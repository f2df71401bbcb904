/* wordfreq: the most frequent words of a text, in plain C (integer and string work: a hash
 * table, malloc, qsort, strcmp, ctype).
 *
 * Input (stdin): any text, up to 64 MiB. A word is a run of ASCII letters, folded to lower case.
 * Output (stdout, ASCII): `words=W distinct=D`, then the 20 most frequent words, one per line as
 * `COUNT WORD`, by count (highest first) then alphabetically.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (64u << 20)
#define TOP 20

struct entry {
    char *word;
    unsigned long count;
};

static struct entry *table;
static size_t capacity = 1024, used;

/* FNV-1a: fixed, so the table's layout (and nothing else) depends only on the input. */
static uint32_t hash(const char *s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void die(const char *what) {
    fprintf(stderr, "%s\n", what);
    exit(2);
}

static void grow(void) {
    size_t old = capacity;
    struct entry *before = table;
    capacity *= 2;
    table = calloc(capacity, sizeof *table);
    if (!table) die("out of memory");
    used = 0;
    for (size_t i = 0; i < old; i++) {
        if (!before[i].word) continue;
        size_t at = hash(before[i].word, strlen(before[i].word)) & (capacity - 1);
        while (table[at].word) at = (at + 1) & (capacity - 1);
        table[at] = before[i];
        used++;
    }
    free(before);
}

static void count(const char *word, size_t len) {
    if (2 * (used + 1) > capacity) grow();
    size_t at = hash(word, len) & (capacity - 1);
    while (table[at].word) {
        if (strlen(table[at].word) == len && memcmp(table[at].word, word, len) == 0) {
            table[at].count++;
            return;
        }
        at = (at + 1) & (capacity - 1);
    }
    char *copy = malloc(len + 1);
    if (!copy) die("out of memory");
    memcpy(copy, word, len);
    copy[len] = 0;
    table[at].word = copy;
    table[at].count = 1;
    used++;
}

static int by_count_then_word(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

int main(void) {
    table = calloc(capacity, sizeof *table);
    char *text = malloc(MAX_INPUT);
    if (!table || !text) die("out of memory");
    size_t len = fread(text, 1, MAX_INPUT, stdin);
    if (len == MAX_INPUT && fgetc(stdin) != EOF) die("input over 64 MiB");
    unsigned long words = 0;
    char word[256];
    size_t w = 0;
    for (size_t i = 0; i <= len; i++) {
        int c = i < len ? (unsigned char)text[i] : ' ';
        if (isalpha(c) && c < 128) {
            if (w < sizeof word) word[w++] = (char)tolower(c);
        } else if (w > 0) {
            count(word, w);
            words++;
            w = 0;
        }
    }
    struct entry *all = malloc((used ? used : 1) * sizeof *all);
    if (!all) die("out of memory");
    size_t n = 0;
    for (size_t i = 0; i < capacity; i++)
        if (table[i].word) all[n++] = table[i];
    qsort(all, n, sizeof *all, by_count_then_word);
    printf("words=%lu distinct=%zu\n", words, n);
    for (size_t i = 0; i < n && i < TOP; i++) printf("%lu %s\n", all[i].count, all[i].word);
    return 0;
}
