// util.c: the checked wrappers of util.h. Each failure names the call site and gives a hint.
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void msd_fatal(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "msdiff: fatal at %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *msd_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        msd_fatal(file, line, "malloc of %zu bytes failed (hint: a smaller --batch needs less memory)",
                  bytes);
    return p;
}

void *msd_calloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        msd_fatal(file, line, "calloc of %zu x %zu bytes failed (hint: a smaller --batch needs less memory)",
                  count, size);
    return p;
}

FILE *msd_fopen_at(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f)
        msd_fatal(file, line, "cannot open '%s' (mode %s): %s (hint: check the path and permissions)",
                  path, mode, strerror(errno));
    return f;
}

void msd_fread_at(void *dst, size_t size, size_t count, FILE *f, const char *file, int line) {
    size_t got = fread(dst, size, count, f);
    if (got != count)
        msd_fatal(file, line, "read %zu of %zu items of %zu bytes (%s) (hint: the file may be truncated)",
                  got, count, size, feof(f) ? "end of file" : "read error");
}

void msd_fwrite_at(const void *src, size_t size, size_t count, FILE *f, const char *file, int line) {
    size_t put = fwrite(src, size, count, f);
    if (put != count)
        msd_fatal(file, line, "wrote %zu of %zu items of %zu bytes: %s (hint: is the disk full?)", put,
                  count, size, strerror(errno));
}

char *msd_strdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *d = msd_malloc_at(n, file, line);
    memcpy(d, s, n);
    return d;
}

long msd_json_nul_escape(const char *text) {
    for (long i = 0; text[i]; i++) {
        if (text[i] != '\\') continue;
        if (text[i + 1] == 'u' && !strncmp(text + i + 2, "0000", 4)) return i;
        if (text[i + 1]) i++; // the escaped character: "\\u0000" is a backslash, then the text u0000
    }
    return -1;
}
