/* wc: count lines, words and bytes of the files named on the command line, like wc(1).
 *
 * The point of the example: a file tool compiled once to WASI runs in place of a native subprocess,
 * and it sees only the directory it is granted (`-v DIR:/data:ro`), nothing else of the host.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

static int count(const char *path, long totals[3]) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "wc: %s: %s\n", path, strerror(errno)); return 1; }
    long lines = 0, words = 0, bytes = 0; int c, in_word = 0;
    while ((c = fgetc(f)) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isspace(c)) in_word = 0; else if (!in_word) { in_word = 1; words++; }
    }
    fclose(f);
    printf("%7ld %7ld %7ld %s\n", lines, words, bytes, path);
    totals[0] += lines; totals[1] += words; totals[2] += bytes;
    return 0;
}

int main(int argc, char **argv) {
    long totals[3] = {0, 0, 0}; int failed = 0;
    if (argc < 2) { fprintf(stderr, "usage: wc FILE...\n"); return 2; }
    for (int i = 1; i < argc; i++) failed |= count(argv[i], totals);
    if (argc > 2) printf("%7ld %7ld %7ld total\n", totals[0], totals[1], totals[2]);
    return failed;
}
